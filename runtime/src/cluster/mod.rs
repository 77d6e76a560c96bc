//! Cluster mode (`mailpush { cluster = nats://… }`): several mailpush nodes share one NATS
//! JetStream, which replaces the embedded SQLite spool behind the [`crate::spool::Spool`]
//! boundary. Design and failure cases: docs/design.md, "Cluster mode".
//!
//! - Ingest on any node publishes each transaction to the stream, on the subject of its
//!   user's partition, with its id as the de-duplication id, and answers 202 once
//!   JetStream stored it with the configured replicas ([`spool::JetStreamSpool`]).
//! - Users hash to a fixed number of partitions ([`partition_of`]); each partition is
//!   delivered by the one node holding its lease ([`ownership`]); partitions are spread
//!   evenly over the live nodes by rendezvous hashing with bounded loads
//!   ([`ownership::assign`]) and move when nodes come and go.
//! - Each driver reads each partition through its own durable pull consumer
//!   ([`feed`]): progress per (driver, partition), so a slow driver holds back only
//!   itself; a new owner resets the consumer to its ack floor, so a user's transactions
//!   reach each driver in order across a move (at-least-once: what the old owner had in
//!   flight is delivered again).
//! - Dead letters ([`dlq`]) and METADATA ([`metadata`]) live in JetStream too, for every
//!   node and for `mailpush dlq` / `mailpush metadata` on any node.

pub mod dlq;
pub mod feed;
pub mod metadata;
pub mod nats;
pub mod ownership;
pub mod spool;

use std::sync::atomic::{AtomicU64, Ordering};

/// A stable hash of a user (FNV-1a, 64 bit, over the lower-cased name): the same on
/// every node and every release.
pub fn user_hash(user: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in user.bytes() {
        h ^= u64::from(b.to_ascii_lowercase());
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The partition a user's transactions go to.
pub fn partition_of(user: &str, partitions: u32) -> u32 {
    (user_hash(user) % u64::from(partitions.max(1))) as u32
}

/// A held partition whose deadline the gate saw pass (a deadline at `origin`: always
/// passed). Only taking the partition again ([`Ownership::hold`]) moves it on.
const LAPSED: u64 = 1;

/// Which partitions this node may deliver now, read by every lane before it starts a
/// delivery ([`crate::spool::Gate`]). Each held partition carries a deadline: the lease
/// renewal that set it, plus the lease time less two rounds. Past it the partition is not
/// delivered any more, whether or not the ownership loop has caught up (it may be stuck
/// on an unreachable NATS): that is what keeps two nodes from delivering one user at
/// once. Losing a partition bumps the epoch: lanes then drop what they hold of it
/// (without acknowledging it: its new owner delivers it).
pub struct Ownership {
    /// Per partition: 0 when not held, else 1 + the deadline in ms since `origin`.
    until: Vec<AtomicU64>,
    origin: std::time::Instant,
    epoch: AtomicU64,
}

impl Ownership {
    pub fn new(partitions: u32) -> Self {
        Ownership {
            until: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            origin: std::time::Instant::now(),
            epoch: AtomicU64::new(0),
        }
    }

    pub fn partitions(&self) -> u32 {
        self.until.len() as u32
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// Whether this node delivers partition `p` now. A deadline seen passed is marked
    /// so ([`LAPSED`]): no renewal racing with this check can revive it afterwards.
    pub fn owns(&self, p: u32) -> bool {
        let Some(u) = self.until.get(p as usize) else {
            return false;
        };
        let cur = u.load(Ordering::Acquire);
        if cur > self.now_ms() + 1 {
            return true;
        }
        if cur > LAPSED {
            let _ = u.compare_exchange(cur, LAPSED, Ordering::AcqRel, Ordering::Acquire);
        }
        false
    }

    /// The partitions this node delivers now.
    pub fn owned(&self) -> Vec<u32> {
        (0..self.partitions()).filter(|p| self.owns(*p)).collect()
    }

    /// This node holds `p` until `until` (a renewal extends it). Gaining a partition
    /// changes the epoch too: lanes then drop what they still hold from an earlier
    /// ownership of it.
    pub(crate) fn hold(&self, p: u32, until: std::time::Instant) {
        if let Some(u) = self.until.get(p as usize) {
            let ms = until.saturating_duration_since(self.origin).as_millis() as u64;
            if u.swap(ms + 1, Ordering::AcqRel) == 0 {
                self.epoch.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    /// A renewal: extends this node's hold on `p` to `until`, unless the deadline it had
    /// already passed (or `p` is not held): then nothing changes and `false` says so. Past
    /// its deadline the lanes' gate refused `p`'s transactions, and lanes may have let
    /// some of them go while the feeders went on; the partition has to start over (see
    /// `ownership`), not simply be admitted again.
    pub(crate) fn renew(&self, p: u32, until: std::time::Instant) -> bool {
        let Some(u) = self.until.get(p as usize) else {
            return false;
        };
        let ms = until.saturating_duration_since(self.origin).as_millis() as u64 + 1;
        let mut cur = u.load(Ordering::Acquire);
        loop {
            // The same test as `owns`: a deadline the gate may have seen passed is passed.
            if cur == 0 || cur <= self.now_ms() + 1 {
                return false;
            }
            match u.compare_exchange(cur, ms.max(cur), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// This node no longer holds `p`.
    pub(crate) fn release(&self, p: u32) {
        if let Some(u) = self.until.get(p as usize) {
            if u.swap(0, Ordering::AcqRel) != 0 {
                self.epoch.fetch_add(1, Ordering::AcqRel);
            }
        }
    }
}

impl Ownership {
    /// Whether this node delivers `user`'s partition now.
    pub fn admits_user(&self, user: &str) -> bool {
        self.owns(partition_of(user, self.partitions()))
    }

    /// Grows whenever a partition is gained or lost.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }
}

/// The lanes' gate in cluster mode: a transaction is delivered here while its partition
/// is owned here and the lane's copy is the one this node read under the current
/// ownership ([`spool::Acks::holds`]): a copy from before a partition left and came back
/// is stale (the consumer was reset since; its message comes again, in order).
pub struct ClusterGate {
    pub ownership: std::sync::Arc<Ownership>,
    pub acks: std::sync::Arc<spool::Acks>,
}

impl crate::spool::Gate for ClusterGate {
    fn admits(&self, driver: u32, txn: &mailpush_core::Transaction) -> bool {
        self.ownership.admits_user(&txn.user) && self.acks.holds(driver, txn)
    }

    fn epoch(&self) -> u64 {
        self.ownership.epoch()
    }
}

/// One node of a cluster: its connection, the spool and METADATA it uses, and what it
/// reports.
pub struct Node {
    pub name: String,
    pub settings: mailpush_config::ClusterSettings,
    pub client: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    pub names: nats::Names,
    pub ownership: std::sync::Arc<Ownership>,
    pub acks: std::sync::Arc<spool::Acks>,
    pub spool: std::sync::Arc<spool::JetStreamSpool>,
    pub metadata: std::sync::Arc<metadata::MetadataCache>,
    pub report: std::sync::Arc<parking_lot::Mutex<ownership::ClusterReport>>,
}

impl Node {
    /// Connects, creates the streams and buckets if needed, and starts the METADATA copy.
    /// `listen` names the node when `cluster_node` does not; `dead_letter_max_age` is the
    /// dead-letter stream's max age (`None`: unlimited).
    pub async fn start(
        settings: &mailpush_config::ClusterSettings,
        listen: std::net::SocketAddr,
        dead_letter_max_age: Option<std::time::Duration>,
    ) -> Result<Node, crate::spool::SpoolError> {
        let name = settings
            .node
            .clone()
            .unwrap_or_else(|| format!("{}:{}", host_name(), listen.port()));
        let client = nats::connect(settings, &name).await?;
        let js = nats::jetstream(&client);
        let names = nats::Names::new(&settings.stream);
        // Before and after setup: the server's version is known once connected.
        nats::check_version(&client.server_info().version)?;
        nats::setup(&js, &names, settings, dead_letter_max_age).await?;
        nats::check_version(&client.server_info().version)?;
        let ownership = std::sync::Arc::new(Ownership::new(settings.partitions));
        let acks = std::sync::Arc::new(spool::Acks::default());
        let spool = spool::JetStreamSpool::start(
            js.clone(),
            names.clone(),
            ownership.clone(),
            acks.clone(),
            client.clone(),
        );
        let store = js
            .get_key_value(names.metadata_bucket())
            .await
            .map_err(|e| nats::storage("cannot open the METADATA bucket", e))?;
        let metadata = metadata::MetadataCache::start(store);
        // No partition is taken (nothing delivered) before the drivers can see METADATA.
        if !metadata
            .wait_loaded(std::time::Duration::from_secs(30))
            .await
        {
            return Err(crate::spool::SpoolError::Storage(
                "the METADATA bucket could not be read within 30 s".into(),
            ));
        }
        Ok(Node {
            name,
            settings: settings.clone(),
            client,
            js,
            names,
            ownership,
            acks,
            spool,
            metadata,
            report: Default::default(),
        })
    }

    /// Makes sure every (driver, partition) consumer exists: before ingest opens, so
    /// nothing accepted is published before its consumers exist.
    pub async fn ensure_consumers(&self, drivers: &[u32]) -> Result<(), crate::spool::SpoolError> {
        nats::ensure_consumers(&self.js, &self.names, drivers, self.settings.partitions).await
    }

    /// Starts taking part in partition ownership until `stop` turns true.
    pub fn run(
        &self,
        dispatcher: std::sync::Arc<crate::pipeline::Dispatcher>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let m = ownership::Membership {
            js: self.js.clone(),
            names: self.names.clone(),
            node: self.name.clone(),
            lease: self.settings.lease,
            ownership: self.ownership.clone(),
            acks: self.acks.clone(),
            dispatcher,
            client: self.client.clone(),
            report: self.report.clone(),
        };
        tokio::spawn(m.run(stop))
    }
}

/// This machine's host name (`localhost` if it cannot be read).
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into our buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_and_case_insensitive() {
        // Fixed values: a change here moves every user to another partition.
        assert_eq!(user_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(user_hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(
            partition_of("Alice@Example.com", 32),
            partition_of("alice@example.com", 32)
        );
        let spread: std::collections::HashSet<u32> = (0..1000)
            .map(|i| partition_of(&format!("user{i}@example.com"), 32))
            .collect();
        assert_eq!(spread.len(), 32, "a thousand users reach every partition");
    }

    #[test]
    fn losing_a_partition_bumps_the_epoch_and_a_deadline_fences() {
        let o = Ownership::new(4);
        let p = partition_of("u@x", 4);
        assert!(!o.admits_user("u@x"));
        let later = std::time::Instant::now() + std::time::Duration::from_secs(60);
        o.hold(p, later);
        assert!(o.admits_user("u@x"));
        assert_eq!(o.epoch(), 1, "gaining changes the epoch");
        o.hold(p, later);
        assert_eq!(o.epoch(), 1, "a renewal does not");
        o.release(p);
        assert!(!o.admits_user("u@x"));
        assert_eq!(o.epoch(), 2);
        assert_eq!(o.owned(), Vec::<u32>::new());
        // A deadline in the past: not delivered, before any release.
        o.hold(p, std::time::Instant::now());
        assert!(!o.owns(p));
    }

    /// A renewal does not bring back a partition whose deadline passed: lanes may have
    /// let some of its transactions go meanwhile (the gate refused them) while its
    /// feeders went on with later ones, so it must start over (a new epoch, a reset).
    #[test]
    fn a_renewal_does_not_revive_a_lapsed_deadline() {
        let o = Ownership::new(4);
        let p = partition_of("u@x", 4);
        let later = std::time::Instant::now() + std::time::Duration::from_secs(60);
        assert!(!o.renew(p, later), "not held: nothing to renew");
        assert!(!o.owns(p));
        o.hold(p, later);
        assert!(o.renew(p, later + std::time::Duration::from_secs(1)));
        assert!(o.owns(p));
        assert_eq!(o.epoch(), 1, "a renewal does not change the epoch");
        o.hold(p, std::time::Instant::now());
        assert!(!o.owns(p), "lapsed");
        assert!(!o.renew(p, later), "a lapsed deadline is not extended");
        assert!(!o.owns(p), "and the gate still refuses the partition");
        assert_eq!(o.epoch(), 1);
    }
}
