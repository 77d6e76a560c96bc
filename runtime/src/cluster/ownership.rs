//! Who delivers which partition. Every node, every quarter of the lease time:
//!
//! 1. writes its entry in the nodes bucket (expiring after the lease time: a dead node
//!    drops out) with its configuration fingerprint;
//! 2. computes the same assignment as every other node ([`assign`]) — rendezvous hashing
//!    of the partitions over the live nodes, bounded so that each node gets an equal
//!    share (within one), and moving little when a node joins or leaves;
//! 3. renews the leases it holds (compare-and-set on the revision it wrote), releases
//!    those assigned to another node, and tries to take the free ones assigned to it
//!    (create-if-absent: at most one node holds a lease);
//! 4. stops delivering a partition at once when its lease is lost or could not be
//!    renewed for the lease time less two rounds — before it expires on the server and
//!    another node may take it (self-fencing; bounded clock rate, not synchronised
//!    clocks, is assumed).
//!
//! A dead node's partitions are free once its leases expire (the lease time after its
//! last renewal) and taken within a round after that.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::Store;
use async_nats::jetstream::Context;
use futures::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::feed::Feeder;
use super::nats::Names;
use super::spool::Acks;
use super::{user_hash, Ownership};
use crate::pipeline::Dispatcher;

/// The newest way of assigning partitions to nodes this release knows
/// ([`assign_as`]): 1, plain rendezvous hashing; 2, rendezvous hashing with bounded
/// loads ([`assign`]). Each node announces it in its [`NodeRecord`], and every node uses
/// the oldest one announced: nodes of two releases (a rolling upgrade) compute the same
/// assignment, and no partition is left to a node that thinks it is another's.
pub const ASSIGNMENT: u32 = 2;

/// What a node says about itself in the nodes bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    /// Hash of its drivers (numbers, names, arguments, component files).
    pub fingerprint: String,
    /// How many partitions it delivers.
    pub owned: u32,
    /// The newest assignment it can compute ([`ASSIGNMENT`]; absent from the records of
    /// releases before it: 1).
    #[serde(default = "first_assignment")]
    pub assignment: u32,
}

fn first_assignment() -> u32 {
    1
}

/// The assignment the live nodes agree on: the oldest any of them announces (and none
/// newer than this release knows).
pub fn agreed_assignment(live: &[NodeRecord]) -> u32 {
    live.iter()
        .map(|n| n.assignment)
        .min()
        .unwrap_or(ASSIGNMENT)
        .min(ASSIGNMENT)
}

/// The cluster as this node sees it (for `mailpush status`, `/metrics`, `/readyz`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterReport {
    /// This node.
    pub node: String,
    /// Live nodes, by name.
    pub nodes: Vec<NodeRecord>,
    /// Partitions this node delivers.
    pub owned: Vec<u32>,
    pub partitions: u32,
    /// Partitions gained or lost by this node since it started.
    pub rebalances: u64,
    /// Nodes whose drivers differ from the majority's (this one included, if so).
    pub drift: Vec<String>,
    /// Whether NATS is reachable now.
    pub connected: bool,
    /// Transactions not yet delivered, per (driver, partition) this node delivers.
    pub lag: Vec<(u32, u32, u64)>,
}

/// A 64-bit finaliser (splitmix64's): every input bit moves every output bit, so
/// similar names ("n1", "n2") get unrelated scores.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The assignment `version` ([`ASSIGNMENT`]) of `partitions` over `nodes`.
pub fn assign_as(version: u32, partitions: u32, nodes: &[String]) -> BTreeMap<u32, String> {
    if version <= 1 {
        rendezvous(partitions, nodes)
    } else {
        assign(partitions, nodes)
    }
}

/// Plain rendezvous hashing (assignment 1): each partition to the node with the best
/// score for it. Only a joining or leaving node's share moves, but the shares are uneven.
fn rendezvous(partitions: u32, nodes: &[String]) -> BTreeMap<u32, String> {
    (0..partitions)
        .filter_map(|p| {
            nodes
                .iter()
                .max_by_key(|n| (score(user_hash(n), p), (*n).clone()))
                .map(|n| (p, n.clone()))
        })
        .collect()
}

/// The rendezvous score of partition `p` for the node whose name hashes to `node`.
fn score(node: u64, p: u32) -> u64 {
    mix64(node ^ mix64(u64::from(p) + 1))
}

/// Rendezvous hashing with bounded loads (assignment 2): every (partition, node) pair
/// has a score, and the pairs are taken from the highest score down, a partition going
/// to the first node that still has room. Each node gets `partitions / nodes` partitions, some one more, so
/// no node carries more than its share (plain rendezvous hashing, the best score per
/// partition alone, gave 14 and 18 of 32 to two nodes and 7, 10 and 15 to three). The
/// scores keep moves small: a joining node takes the partitions it scores highest on, and
/// a leaving node's partitions go where they score next best, with few others moving to
/// even out. Every node computes the same, whatever the order of `nodes`.
pub fn assign(partitions: u32, nodes: &[String]) -> BTreeMap<u32, String> {
    let mut names: Vec<&String> = nodes.iter().collect();
    names.sort();
    names.dedup();
    let mut out = BTreeMap::new();
    if names.is_empty() {
        return out;
    }
    let n = names.len() as u32;
    let (base, extra) = (partitions / n, partitions % n);
    let hashes: Vec<u64> = names.iter().map(|name| user_hash(name)).collect();
    let mut pairs: Vec<(u64, u32, usize)> = (0..partitions)
        .flat_map(|p| {
            hashes
                .iter()
                .enumerate()
                .map(move |(i, h)| (score(*h, p), p, i))
        })
        .collect();
    // Highest score first; equal scores (next to impossible) in partition, then name order.
    pairs.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut held = vec![0u32; names.len()];
    let mut extras_given = 0;
    for (_, p, i) in pairs {
        if out.len() == partitions as usize {
            break;
        }
        if out.contains_key(&p) {
            continue;
        }
        // Room: below the share, or at it while some of the remainder is still to give.
        if held[i] == base && extras_given < extra {
            extras_given += 1;
        } else if held[i] >= base {
            continue;
        }
        held[i] += 1;
        out.insert(p, names[i].clone());
    }
    out
}

fn lease_key(p: u32) -> String {
    format!("p{p}")
}

fn node_key(name: &str) -> String {
    format!(
        "n.{}",
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            name.as_bytes()
        )
    )
}

/// A lease handed over by its owner (the lease's value; a held lease's value is the
/// holder's name).
#[derive(Debug, Serialize, Deserialize)]
struct Released {
    released_by: String,
    /// Per driver, the stream sequences acknowledged above the consumer's ack floor.
    done: BTreeMap<u32, Vec<u64>>,
}

/// A partition this node holds.
struct Held {
    revision: u64,
    last_renewed: Instant,
    /// Feeders by driver: each stops when its sender is set.
    feeders: HashMap<u32, watch::Sender<bool>>,
}

/// The ownership loop's state.
pub struct Membership {
    pub js: Context,
    pub names: Names,
    pub node: String,
    pub lease: Duration,
    pub ownership: Arc<Ownership>,
    pub acks: Arc<Acks>,
    pub dispatcher: Arc<Dispatcher>,
    pub client: async_nats::Client,
    pub report: Arc<Mutex<ClusterReport>>,
}

impl Membership {
    /// Runs until `stop` turns true, then releases every lease (another node takes over
    /// at once, not after the lease time).
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let round = self.lease / 4;
        let (nodes, leases) = loop {
            match (
                self.js.get_key_value(self.names.nodes_bucket()).await,
                self.js.get_key_value(self.names.leases_bucket()).await,
            ) {
                (Ok(n), Ok(l)) => break (n, l),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!("NATS: cannot open the cluster buckets ({e}); retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(round) => {}
                        _ = stop.changed() => return,
                    }
                }
            }
        };
        let live = LiveNodes::start(nodes.clone(), self.lease);
        let mut held: BTreeMap<u32, Held> = BTreeMap::new();
        let mut rebalances = 0u64;
        let mut lag_at = Instant::now();
        let mut consumers_for: Vec<u32> = self.dispatcher.numbers();
        loop {
            self.round(
                &nodes,
                &live,
                &leases,
                &mut held,
                &mut rebalances,
                &mut consumers_for,
            )
            .await;
            if lag_at.elapsed() >= Duration::from_secs(5) {
                // In its own task: a slow NATS must not delay the round (and fencing).
                let pairs: Vec<(u32, u32)> = held
                    .iter()
                    .flat_map(|(p, h)| h.feeders.keys().map(move |d| (*d, *p)))
                    .collect();
                tokio::spawn(measure_lag(
                    self.js.clone(),
                    self.names.clone(),
                    pairs,
                    self.acks.clone(),
                    self.report.clone(),
                ));
                lag_at = Instant::now();
            }
            tokio::select! {
                _ = tokio::time::sleep(round) => {}
                _ = stop.changed() => break,
            }
        }
        // Hand every partition over (another node takes over at once, not after the
        // lease time), letting what is being delivered finish for a short while.
        let releases = std::mem::take(&mut held)
            .into_iter()
            .map(|(p, h)| self.release(leases.clone(), p, h, Duration::from_secs(2)));
        futures::future::join_all(releases).await;
        let _ = nodes.delete(node_key(&self.node)).await;
    }

    async fn round(
        &self,
        nodes: &Store,
        live_view: &LiveNodes,
        leases: &Store,
        held: &mut BTreeMap<u32, Held>,
        rebalances: &mut u64,
        consumers_for: &mut Vec<u32>,
    ) {
        let round = self.lease / 4;
        // Fence first: a partition not renewed for the lease time less two rounds stops
        // now, whatever NATS does next.
        let fence_after = self.lease.saturating_sub(2 * round);
        let stale: Vec<u32> = held
            .iter()
            .filter(|(_, h)| h.last_renewed.elapsed() >= fence_after)
            .map(|(p, _)| *p)
            .collect();
        for p in stale {
            if let Some(h) = held.remove(&p) {
                self.drop_partition(p, h.feeders);
                *rebalances += 1;
                tracing::warn!(
                    partition = p,
                    "stopped delivering partition {p}: its lease could not be renewed in time"
                );
            }
        }
        let fingerprint = self.dispatcher.fingerprint();
        let me = NodeRecord {
            name: self.node.clone(),
            fingerprint: fingerprint.clone(),
            owned: held.len() as u32,
            assignment: ASSIGNMENT,
        };
        let connected = matches!(
            self.client.connection_state(),
            async_nats::connection::State::Connected
        );
        let written = async {
            let v = serde_json::to_vec(&me).ok()?;
            nodes.put(node_key(&self.node), v.into()).await.ok()
        };
        let written = tokio::time::timeout(round, written).await.ok().flatten();
        // This node is live by definition (its own entry may not have come back yet).
        let live = written.and(live_view.get()).map(|mut live| {
            if !live.iter().any(|n| n.name == self.node) {
                live.push(me.clone());
                live.sort_by(|a, b| a.name.cmp(&b.name));
            }
            live
        });
        // Without a view of the cluster, keep what is held while the leases can be
        // renewed; fence below when they cannot.
        let targets = live.as_ref().map(|live| {
            let names: Vec<String> = live.iter().map(|n| n.name.clone()).collect();
            assign_as(agreed_assignment(live), self.ownership.partitions(), &names)
        });
        let drivers = self.dispatcher.numbers();

        // Release what moved away.
        let parts: Vec<u32> = held.keys().copied().collect();
        for p in parts {
            let assigned_here = targets
                .as_ref()
                .is_none_or(|t| t.get(&p) == Some(&self.node));
            if !assigned_here {
                // Another node's now: stop, let what is being delivered finish, then hand
                // it over.
                if let Some(h) = held.remove(&p) {
                    *rebalances += 1;
                    tracing::info!(
                        partition = p,
                        "releasing partition {p}: assigned to another node"
                    );
                    tokio::spawn(self.release(leases.clone(), p, h, fence_after));
                }
            }
        }
        // Renew the rest, all at once (one at a time, a slow NATS would make the last
        // ones miss their deadline).
        let me: bytes::Bytes = self.node.clone().into_bytes().into();
        let renewals = held.iter().map(|(&p, h)| {
            let (leases, me, revision) = (leases.clone(), me.clone(), h.revision);
            async move {
                let started = Instant::now();
                let renewed =
                    tokio::time::timeout(round, leases.update(lease_key(p), me.clone(), revision))
                        .await
                        .unwrap_or_else(|_| {
                            Err(async_nats::jetstream::kv::UpdateError::new(
                                async_nats::jetstream::kv::UpdateErrorKind::TimedOut,
                            ))
                        });
                // A renewal that timed out here may have been written there: the lease is
                // still ours at a newer revision. Take that revision (not a new renewal
                // time: when it was written is not known) and renew it next round.
                let adopted = match &renewed {
                    Err(e)
                        if matches!(
                            e.kind(),
                            async_nats::jetstream::kv::UpdateErrorKind::WrongLastRevision
                        ) =>
                    {
                        tokio::time::timeout(round, leases.entry(lease_key(p)))
                            .await
                            .ok()
                            .and_then(Result::ok)
                            .flatten()
                            .filter(|e| {
                                e.value == me
                                    && e.operation == async_nats::jetstream::kv::Operation::Put
                            })
                            .map(|e| e.revision)
                    }
                    _ => None,
                };
                (p, started, renewed, adopted)
            }
        });
        for (p, started, renewed, adopted) in futures::future::join_all(renewals).await {
            let Some(h) = held.get_mut(&p) else { continue };
            if let Some(rev) = adopted {
                h.revision = rev;
                continue;
            }
            match renewed {
                Ok(rev) => {
                    h.revision = rev;
                    // From the start of the call: the server's expiry counts from its
                    // write, which came after.
                    h.last_renewed = started;
                    if !self.ownership.renew(p, started + fence_after) {
                        // The deadline passed before this renewal came back: meanwhile
                        // the gate refused the partition, so lanes may have let some of
                        // its transactions go (unacknowledged) while the feeders went on
                        // with later ones. Admitting it again as it is would deliver
                        // those later ones first: start it over instead, as if just
                        // taken (a new epoch: the lanes drop every copy they hold; the
                        // feeders reset to the ack floor; what was acknowledged here is
                        // still skipped).
                        self.drop_partition(p, std::mem::take(&mut h.feeders));
                        self.ownership.hold(p, started + fence_after);
                        h.feeders = drivers
                            .iter()
                            .map(|&d| (d, self.start_feeder(d, p, true)))
                            .collect();
                        *rebalances += 1;
                        tracing::warn!(
                            partition = p,
                            "partition {p} starts over: its lease was renewed after its deadline had passed"
                        );
                    }
                }
                Err(e) => {
                    let lost = matches!(
                        e.kind(),
                        async_nats::jetstream::kv::UpdateErrorKind::WrongLastRevision
                    );
                    if lost || h.last_renewed.elapsed() >= fence_after {
                        if let Some(h) = held.remove(&p) {
                            self.drop_partition(p, h.feeders);
                        }
                        *rebalances += 1;
                        tracing::warn!(
                            partition = p,
                            "stopped delivering partition {p}: its lease {} ({e})",
                            if lost {
                                "was lost"
                            } else {
                                "could not be renewed"
                            }
                        );
                    }
                    continue;
                }
            }
            // Feeders for drivers added by a reload; gone for removed ones.
            h.feeders.retain(|d, stop| {
                let keep = drivers.contains(d);
                if !keep {
                    let _ = stop.send(true);
                }
                keep
            });
            for &d in &drivers {
                h.feeders
                    .entry(d)
                    .or_insert_with(|| self.start_feeder(d, p, true));
            }
        }

        // Take the free partitions assigned here.
        if let (Some(targets), true) = (&targets, connected) {
            if *consumers_for != drivers {
                // A reload changed the drivers: their consumers first.
                if let Err(e) = super::nats::ensure_consumers(
                    &self.js,
                    &self.names,
                    &drivers,
                    self.ownership.partitions(),
                )
                .await
                {
                    tracing::warn!("{e}");
                    return;
                }
                *consumers_for = drivers.clone();
            }
            let free: Vec<u32> = targets
                .iter()
                .filter(|(p, node)| *node == &self.node && !held.contains_key(p))
                .map(|(p, _)| *p)
                .collect();
            let takes = free.into_iter().map(|p| async move {
                let started = Instant::now();
                let taken = tokio::time::timeout(round, self.take(leases, p)).await;
                (p, started, taken.ok().flatten())
            });
            for (p, started, taken) in futures::future::join_all(takes).await {
                let Some((revision, handed)) = taken else {
                    continue; // still held by its previous owner: free after its lease
                };
                if let Some(done) = handed {
                    self.acks.take_over(p, done);
                }
                self.ownership.hold(p, started + fence_after);
                let feeders = drivers
                    .iter()
                    .map(|&d| (d, self.start_feeder(d, p, true)))
                    .collect();
                held.insert(
                    p,
                    Held {
                        revision,
                        last_renewed: started,
                        feeders,
                    },
                );
                *rebalances += 1;
                tracing::info!(partition = p, "took partition {p}");
            }
        }

        // The report.
        let live = live.unwrap_or_default();
        let drift = drift(&live);
        if drift.contains(&self.node) {
            tracing::warn!(
                "this node's drivers differ from the other nodes' (config drift): {}",
                fingerprint
            );
        }
        let mut r = self.report.lock();
        r.node = self.node.clone();
        r.nodes = live;
        r.owned = held.keys().copied().collect();
        r.partitions = self.ownership.partitions();
        r.rebalances = *rebalances;
        r.drift = drift;
        r.connected = connected;
    }

    fn start_feeder(&self, driver: u32, partition: u32, reset: bool) -> watch::Sender<bool> {
        let (stop, stopped) = watch::channel(false);
        let f = Feeder {
            js: self.js.clone(),
            names: self.names.clone(),
            acks: self.acks.clone(),
            dispatcher: self.dispatcher.clone(),
            driver,
            partition,
            reset,
            generation: self.acks.generation(partition),
        };
        tokio::spawn(f.run(stopped));
        stop
    }

    /// Stops delivering partition `p`: the lanes drop what they hold of it, its feeders
    /// stop, its acknowledgement handles are retired. What was acknowledged here above
    /// the consumers' ack floors is kept: when this node reads `p` again (it retakes the
    /// lease once it expires, or at once when `p` starts over) those are not delivered
    /// twice.
    fn drop_partition(&self, p: u32, feeders: HashMap<u32, watch::Sender<bool>>) {
        self.ownership.release(p);
        for stop in feeders.values() {
            let _ = stop.send(true);
        }
        let done = self.acks.hand_over(p);
        self.acks.take_over(p, done);
    }

    /// Hands partition `p` over: stops it (lanes let go of what they hold of it and do
    /// not start more), waits up to `drain` (bounded by the lease) for what is being
    /// delivered to finish and be acknowledged, then writes the lease as released,
    /// with what this node acknowledged above the consumers' ack floors. The next owner
    /// takes it at once and skips those after its reset: a move delivers nothing twice
    /// that finished here.
    fn release(
        &self,
        leases: Store,
        p: u32,
        h: Held,
        drain: Duration,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.ownership.release(p);
        for stop in h.feeders.values() {
            let _ = stop.send(true);
        }
        // Nothing more from its feeders, even from one that has not seen its stop yet.
        self.acks.fence(p);
        let acks = self.acks.clone();
        let client = self.client.clone();
        let node = self.node.clone();
        // Before the lease could expire (the next owner would then not wait).
        let until = (h.last_renewed + self.lease.saturating_sub(self.lease / 4))
            .min(Instant::now() + drain);
        let revision = h.revision;
        async move {
            while acks.in_flight(p) > 0 && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if acks.in_flight(p) > 0 {
                // Still delivering: no hand-over. The lease expires and the next owner
                // starts from the ack floor then, after what runs here has had the
                // lease's time to finish (what it finishes may come again).
                acks.hand_over(p);
                tracing::warn!(
                    partition = p,
                    "partition {p} left to expire: deliveries still running"
                );
                return;
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), client.flush()).await;
            let record = Released {
                released_by: node,
                done: acks.hand_over(p),
            };
            let written = match serde_json::to_vec(&record) {
                Ok(v) => tokio::time::timeout(
                    Duration::from_secs(2),
                    leases.update(lease_key(p), v.into(), revision),
                )
                .await
                .is_ok_and(|r| r.is_ok()),
                Err(_) => false,
            };
            if !written {
                let _ = leases
                    .delete_expect_revision(lease_key(p), Some(revision))
                    .await;
            }
            tracing::info!(partition = p, "released partition {p}");
        }
    }

    /// Takes the lease of partition `p` if it is free or was handed over; with what the
    /// previous owner acknowledged above the floors, if it handed it over.
    async fn take(&self, leases: &Store, p: u32) -> Option<(u64, Option<BTreeMap<u32, Vec<u64>>>)> {
        let me: bytes::Bytes = self.node.clone().into_bytes().into();
        if let Ok(rev) = leases.create(lease_key(p), me.clone()).await {
            return Some((rev, None));
        }
        let entry = leases.entry(lease_key(p)).await.ok()??;
        let released = serde_json::from_slice::<Released>(&entry.value).ok()?;
        let rev = leases.update(lease_key(p), me, entry.revision).await.ok()?;
        Some((rev, Some(released.done)))
    }
}

/// Reads how much each (driver, partition) consumer this node reads has not yet had
/// delivered, into the report.
async fn measure_lag(
    js: Context,
    names: Names,
    pairs: Vec<(u32, u32)>,
    acks: Arc<Acks>,
    report: Arc<Mutex<ClusterReport>>,
) {
    let Ok(stream) = js.get_stream(names.txn_stream()).await else {
        return;
    };
    let mut lag = Vec::new();
    for (d, p) in pairs {
        let name = names.consumer(d, p);
        if let Ok(mut c) = stream
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&name)
            .await
        {
            if let Ok(info) = c.info().await {
                acks.floor(d, p, info.ack_floor.stream_sequence);
                lag.push((d, p, info.num_pending + info.num_ack_pending as u64));
            }
        }
    }
    lag.sort_unstable();
    report.lock().lag = lag;
}

/// The live nodes, kept by a watch on the nodes bucket (an entry that expires leaves a
/// marker the watch sees): one subscription for the node's life, not a listing per
/// round.
#[derive(Default)]
struct LiveNodes {
    records: Mutex<BTreeMap<String, NodeRecord>>,
    /// Whether the watch is up (else the view may be stale).
    watching: std::sync::atomic::AtomicBool,
}

impl LiveNodes {
    /// Watches the nodes bucket. Every live node writes its entry each round, so a watch
    /// that yields nothing for `quiet` is stale (an ordered consumer on a server that
    /// went away): it is made again.
    fn start(nodes: Store, quiet: Duration) -> Arc<Self> {
        let view = Arc::new(LiveNodes::default());
        let v = view.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(mut watch) = nodes.watch_with_history(">").await {
                    v.records.lock().clear();
                    v.watching.store(true, std::sync::atomic::Ordering::Release);
                    while let Ok(Some(Ok(entry))) = tokio::time::timeout(quiet, watch.next()).await
                    {
                        let mut records = v.records.lock();
                        match entry.operation {
                            async_nats::jetstream::kv::Operation::Put => {
                                if let Ok(r) = serde_json::from_slice::<NodeRecord>(&entry.value) {
                                    records.insert(entry.key.clone(), r);
                                }
                            }
                            _ => {
                                records.remove(&entry.key);
                            }
                        }
                    }
                }
                v.watching
                    .store(false, std::sync::atomic::Ordering::Release);
                if Arc::strong_count(&v) == 1 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        view
    }

    /// The live nodes' records, sorted by name; `None` while the watch is down.
    fn get(&self) -> Option<Vec<NodeRecord>> {
        if !self.watching.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        let mut out: Vec<NodeRecord> = self.records.lock().values().cloned().collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Some(out)
    }
}

/// The nodes whose fingerprint is not the most common one (all nodes of a tie).
pub fn drift(nodes: &[NodeRecord]) -> Vec<String> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for n in nodes {
        *counts.entry(n.fingerprint.as_str()).or_default() += 1;
    }
    if counts.len() <= 1 {
        return Vec::new();
    }
    let max = counts.values().copied().max().unwrap_or(0);
    let winners: Vec<&str> = counts
        .iter()
        .filter(|(_, c)| **c == max)
        .map(|(f, _)| *f)
        .collect();
    nodes
        .iter()
        .filter(|n| winners.len() > 1 || !winners.contains(&n.fingerprint.as_str()))
        .map(|n| n.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize, prefix: &str) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i}")).collect()
    }

    /// How many partitions each node gets.
    fn shares(a: &BTreeMap<u32, String>, nodes: &[String]) -> Vec<u32> {
        nodes
            .iter()
            .map(|n| a.values().filter(|v| *v == n).count() as u32)
            .collect()
    }

    #[test]
    fn every_node_gets_an_equal_share() {
        for prefix in ["n", "mp-", "mail.example.com:80"] {
            for nodes in 1..=7 {
                let nodes = names(nodes, prefix);
                for partitions in [1, 7, 32, 64, 100] {
                    let a = assign(partitions, &nodes);
                    assert_eq!(a.len(), partitions as usize, "every partition assigned");
                    let s = shares(&a, &nodes);
                    let (lo, hi) = (*s.iter().min().unwrap(), *s.iter().max().unwrap());
                    assert!(
                        hi - lo <= 1 && hi <= partitions.div_ceil(nodes.len() as u32),
                        "{partitions} partitions over {nodes:?}: {s:?}"
                    );
                }
            }
        }
        // The bench's and the tests' names, which plain rendezvous hashing split 14/18
        // and 12/12/8.
        let two = vec!["n0".to_string(), "n1".to_string()];
        assert_eq!(shares(&assign(32, &two), &two), [16, 16]);
        let three = names(3, "n");
        let mut s = shares(&assign(32, &three), &three);
        s.sort_unstable();
        assert_eq!(s, [10, 11, 11]);
        assert!(assign(32, &[]).is_empty());
    }

    #[test]
    fn a_joining_or_leaving_node_moves_little() {
        for prefix in ["n", "mp-", "node-"] {
            for before in 1..=5 {
                let old = names(before, prefix);
                let mut new = old.clone();
                new.push(format!("{prefix}new"));
                for partitions in [32, 64] {
                    let a = assign(partitions, &old);
                    let b = assign(partitions, &new);
                    // Joining: the new node's share moves to it, and at most a few
                    // more between the old nodes to even out.
                    let share = partitions / new.len() as u32;
                    let moved = (0..partitions).filter(|p| a[p] != b[p]).count() as u32;
                    let between_old = (0..partitions)
                        .filter(|p| a[p] != b[p] && b[p] != format!("{prefix}new"))
                        .count() as u32;
                    assert!(
                        moved <= share + 1 + partitions / 8 && between_old <= partitions / 8,
                        "{partitions} partitions, {old:?} + 1: {moved} moved, {between_old} between old nodes"
                    );
                    // Leaving (the reverse): the leaver's share, and a few more.
                    let leaver_share =
                        b.values().filter(|v| **v == format!("{prefix}new")).count() as u32;
                    assert!(moved <= leaver_share + partitions / 8);
                }
            }
        }
    }

    #[test]
    fn every_node_computes_the_same_assignment() {
        let three = names(3, "n");
        let mut shuffled = three.clone();
        shuffled.reverse();
        assert_eq!(assign(64, &shuffled), assign(64, &three));
        let mut doubled = three.clone();
        doubled.extend(three.clone());
        assert_eq!(assign(64, &doubled), assign(64, &three));
    }

    #[test]
    fn nodes_of_two_releases_agree_on_the_older_assignment() {
        // A record from a release before assignments were announced.
        let old: NodeRecord =
            serde_json::from_str(r#"{"name":"n0","fingerprint":"x","owned":14}"#).unwrap();
        assert_eq!(old.assignment, 1);
        let new = NodeRecord {
            name: "n1".into(),
            fingerprint: "x".into(),
            owned: 18,
            assignment: ASSIGNMENT,
        };
        assert_eq!(agreed_assignment(&[old.clone(), new.clone()]), 1);
        assert_eq!(agreed_assignment(std::slice::from_ref(&new)), ASSIGNMENT);
        // A newer release than this one: this one's newest.
        let newer = NodeRecord {
            assignment: ASSIGNMENT + 1,
            ..new.clone()
        };
        assert_eq!(agreed_assignment(&[newer]), ASSIGNMENT);
        // Assignment 1 is the old one: the uneven 14 + 18 the bench's names got.
        let two = names(2, "n");
        assert_eq!(shares(&assign_as(1, 32, &two), &two), [14, 18]);
        assert_eq!(assign_as(2, 32, &two), assign(32, &two));
    }

    #[test]
    fn drift_names_the_odd_ones_out() {
        let n = |name: &str, fp: &str| NodeRecord {
            name: name.into(),
            fingerprint: fp.into(),
            owned: 0,
            assignment: ASSIGNMENT,
        };
        assert!(drift(&[n("a", "x"), n("b", "x")]).is_empty());
        assert_eq!(drift(&[n("a", "x"), n("b", "x"), n("c", "y")]), ["c"]);
        assert_eq!(drift(&[n("a", "x"), n("b", "y")]), ["a", "b"]);
    }
}
