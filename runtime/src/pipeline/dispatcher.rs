//! `Dispatcher`: the topology's one way in and its fan-out. [`Dispatcher::accept`] is
//! the accept path every source uses (HTTP ingest, the OX-compatible endpoint,
//! `mailpush send`): with the spool it persists the batch, then offers it to every
//! driver's lane. Each driver has its own bounded queue and lane, so a driver that fails,
//! panics or is slow never delays or breaks another driver or the caller: with the
//! spool, a driver whose queue is full reads its backlog from the spool
//! ([`super::overflow`]); without one, ingest refuses what does not fit (503) or, for
//! `send`, waits. Start-up recovery ([`Dispatcher::recover`]) and replayed dead letters
//! ([`Dispatcher::replay`]) enter the lanes here too. Each lane processes its queue in
//! order, so one user's transactions reach its driver in arrival order.

use std::sync::Arc;

use futures::FutureExt;
use mailpush_core::{Driver, Loading, Transaction};
use parking_lot::RwLock;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::hooks::panic_message;
use super::lane::{self, LaneContext};
use super::lane_thread::{self, LaneThread};
use super::observer::DeliveryObserver;
use super::overflow::Overflow;
use super::policy::DeliveryPolicy;
use super::queued::Queued;
use super::stats::{DriverReport, DriverStats};
use crate::spool::{Spool, SpoolError};
use mailpush_config::Location;

/// An initialised, numbered driver: what the registry builds from a config line and the
/// dispatcher runs.
pub struct LoadedDriver {
    pub number: u32,
    /// Name as typed in the config.
    pub name: String,
    /// `native` or `wasm`.
    pub kind: &'static str,
    /// Arguments with secrets redacted, for display.
    pub args_display: String,
    pub location: Location,
    pub driver: Arc<dyn Driver>,
    pub warnings: Vec<String>,
    /// Extra lines for `check` (file, sha256, limits, grants, …).
    pub details: Vec<String>,
    /// Identity for reloads: the config line plus the content hash of driver files. A
    /// reload keeps the running lane (and its queue) of a driver whose fingerprint did
    /// not change.
    pub fingerprint: String,
    /// Retry schedule, circuit breaker, concurrency (generic keys of the driver line).
    pub policy: DeliveryPolicy,
}

/// What [`Dispatcher::accept`] does when a driver's queue is full and there is no spool
/// to overflow into (`delivery = memory`). With the spool a full queue never refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backpressure {
    /// Refuse the whole batch ([`Refused::QueueFull`]): ingest answers 503.
    Refuse,
    /// Wait for room, each driver's queue fed on its own, so a slow driver holds back
    /// only its own feeding (`mailpush send`).
    Wait,
}

struct Lane {
    number: u32,
    name: String,
    fingerprint: String,
    driver: Arc<dyn Driver>,
    tx: mpsc::Sender<Queued>,
    stats: Arc<DriverStats>,
    overflow: Arc<Overflow>,
    task: LaneTask,
    /// Set when the lane is taken out of the running set to be finished (a reload
    /// replaced it, or the process stops): a dispatch waiting for room in its queue gives
    /// up on it ([`Dispatcher::queue_for`]) rather than hold it, which would keep its
    /// queue from closing and the lane from finishing.
    stopping: watch::Sender<bool>,
}

/// A lane runs on its own thread ([`super::lane_thread`]), or as a task of the caller's
/// runtime if no thread could be started.
enum LaneTask {
    Thread(LaneThread<Vec<Arc<Transaction>>>),
    Task(JoinHandle<Vec<Arc<Transaction>>>),
}

impl LaneTask {
    /// What the lane still had when it stopped ([`super::lane::run`]).
    async fn join(self) -> Result<Vec<Arc<Transaction>>, String> {
        match self {
            LaneTask::Thread(t) => t.join().await,
            LaneTask::Task(t) => t.await.map_err(|e| e.to_string()),
        }
    }
}

impl Lane {
    fn report(&self) -> DriverReport {
        let queued = self.tx.max_capacity() - self.tx.capacity();
        DriverReport {
            diverted: self.overflow.diverted_count(),
            ..DriverReport::new(
                self.number,
                self.name.clone(),
                (queued, self.overflow.active()),
                self.tx.max_capacity(),
                self.driver.as_ref(),
                &self.stats,
            )
        }
    }

    /// Closes the queue, waits for the task to finish what was due, calls deinit;
    /// returns the counters and what the lane still had.
    async fn finish(self) -> (DriverReport, Vec<Arc<Transaction>>) {
        self.stop().await.deinit().await
    }

    /// Closes the queue and waits for the task to finish what was due (the driver is
    /// told it is stopping); the driver's deinit is left to [`Stopped::deinit`].
    async fn stop(self) -> Stopped {
        let Lane {
            number,
            name,
            driver,
            tx,
            stats,
            task,
            ..
        } = self;
        let capacity = tx.max_capacity();
        drop(tx);
        driver.stopping();
        let left = match task.join().await {
            Ok(left) => left,
            Err(e) => {
                tracing::error!(driver = number, "driver task ended abnormally: {e}");
                Vec::new()
            }
        };
        Stopped {
            number,
            name,
            driver,
            stats,
            capacity,
            left,
        }
    }
}

/// A lane whose task has ended ([`Lane::stop`]): its driver is still to be deinitialised.
struct Stopped {
    number: u32,
    name: String,
    driver: Arc<dyn Driver>,
    stats: Arc<DriverStats>,
    capacity: usize,
    /// What the lane still had.
    left: Vec<Arc<Transaction>>,
}

impl Stopped {
    /// Calls the driver's deinit (a panic in it is logged); returns the counters and
    /// what the lane still had.
    async fn deinit(self) -> (DriverReport, Vec<Arc<Transaction>>) {
        if let Err(p) = std::panic::AssertUnwindSafe(self.driver.deinit())
            .catch_unwind()
            .await
        {
            tracing::error!(
                driver = self.number,
                "driver panicked in deinit: {}",
                panic_message(&p)
            );
        }
        let report = DriverReport::new(
            self.number,
            self.name,
            (0, false),
            self.capacity,
            self.driver.as_ref(),
            &self.stats,
        );
        (report, self.left)
    }
}

/// A full queue: the transaction was not accepted by any driver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("driver {driver} ({name}) queue is full")]
pub struct QueueFull {
    pub driver: u32,
    pub name: String,
}

/// Why ingest could not take a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(transparent)]
    QueueFull(QueueFull),
    #[error("the dispatcher has shut down")]
    ShutDown,
    #[error(transparent)]
    Spool(SpoolError),
}

/// The dispatcher was shut down.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the dispatcher has shut down")]
pub struct ShutDown;

/// Per-driver queues and tasks.
pub struct Dispatcher {
    lanes: RwLock<Vec<Arc<Lane>>>,
    capacity: usize,
    observer: Option<Arc<dyn DeliveryObserver>>,
    spool: Option<Arc<dyn Spool>>,
    /// Shut down ([`Dispatcher::shutdown_shared`]; set under the lanes' lock as they are
    /// taken): a batch accepted afterwards would be owed to no driver, and the spool
    /// drops what no driver is owed.
    shut: std::sync::atomic::AtomicBool,
}

/// Starts a lane; `overflow` is the backlog state of the lane it replaces, if any (the
/// new lane reads what the old one left in the spool).
fn start_lane(
    d: LoadedDriver,
    capacity: usize,
    observer: Option<Arc<dyn DeliveryObserver>>,
    spool: Option<Arc<dyn Spool>>,
    overflow: Option<Arc<Overflow>>,
) -> Lane {
    d.driver.started();
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let stats = Arc::new(DriverStats::default());
    let overflow = overflow.unwrap_or_default();
    let gate = spool.as_ref().and_then(|s| s.gate());
    let ctx = LaneContext {
        number: d.number,
        name: d.name.clone(),
        driver: d.driver.clone(),
        stats: stats.clone(),
        observer,
        spool,
        policy: d.policy.clone(),
        capacity,
        overflow: overflow.clone(),
        gate,
        concurrency: d
            .policy
            .concurrency
            .unwrap_or_else(|| d.driver.concurrency()),
    };
    let number = d.number;
    let task = match lane_thread::spawn(format!("mailpush-lane-{number}"), lane::run(ctx, rx)) {
        Ok(t) => LaneTask::Thread(t),
        Err((e, lane)) => {
            tracing::warn!(
                driver = number,
                "cannot start a thread for the driver's lane ({e}); running it on the shared runtime"
            );
            LaneTask::Task(tokio::spawn(lane))
        }
    };
    Lane {
        number: d.number,
        name: d.name,
        fingerprint: d.fingerprint,
        driver: d.driver,
        tx,
        stats,
        overflow,
        task,
        stopping: watch::Sender::new(false),
    }
}

/// What a [`Dispatcher::reconfigure`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reconfigured {
    /// Drivers whose running lane (and queue) was kept.
    pub kept: Vec<u32>,
    /// Drivers started anew.
    pub started: Vec<u32>,
    /// Drivers whose old lane was drained and stopped.
    pub stopped: Vec<u32>,
    /// What the reload did not apply (changed `mailpush { }` settings need a restart).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl Dispatcher {
    /// Starts one task per driver with a queue of `capacity` transactions. Must be called
    /// inside a tokio runtime.
    pub fn start(
        drivers: Vec<LoadedDriver>,
        capacity: usize,
        observer: Option<Arc<dyn DeliveryObserver>>,
    ) -> Self {
        Dispatcher::start_with_spool(drivers, capacity, observer, None)
    }

    /// Like [`Dispatcher::start`], with at-least-once delivery through `spool` (retries,
    /// dead letters, circuit breakers) when one is given.
    pub fn start_with_spool(
        drivers: Vec<LoadedDriver>,
        capacity: usize,
        observer: Option<Arc<dyn DeliveryObserver>>,
        spool: Option<Arc<dyn Spool>>,
    ) -> Self {
        let lanes = drivers
            .into_iter()
            .map(|d| {
                Arc::new(start_lane(
                    d,
                    capacity,
                    observer.clone(),
                    spool.clone(),
                    None,
                ))
            })
            .collect();
        Dispatcher {
            lanes: RwLock::new(lanes),
            capacity,
            observer,
            spool,
            shut: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The spool, when delivery is durable.
    pub fn spool(&self) -> Option<&Arc<dyn Spool>> {
        self.spool.as_ref()
    }

    /// The accept path. With the spool: persists the batch (one group commit), then
    /// queues it for every driver; a driver whose queue is full reads the rest from the
    /// spool ([`super::overflow`]), so only a full spool refuses. Without a spool: as
    /// `backpressure` says, either reserves room in every driver's queue first and
    /// refuses the whole batch if one is full (nothing is queued then), or waits for room.
    /// Returns how many transactions were taken: with the spool, an id already stored (a
    /// client's retry) is stored, and delivered, once.
    pub async fn accept(
        &self,
        txns: Vec<Transaction>,
        backpressure: Backpressure,
    ) -> Result<usize, Refused> {
        self.accept_received(txns, Vec::new(), backpressure).await
    }

    /// [`Dispatcher::accept`] of transactions that arrived at `received` (one per
    /// transaction; now where missing or in the future), as a Dovecot hand-off file's
    /// modification time says: their age (`retry_max_age`, `hold_max`) counts from then,
    /// so that what waited while mailpush was stopped is not taken as new. (In cluster
    /// mode the age counts from when the delivering node took it in.)
    pub async fn accept_received(
        &self,
        txns: Vec<Transaction>,
        received: Vec<std::time::SystemTime>,
        backpressure: Backpressure,
    ) -> Result<usize, Refused> {
        let lanes = self.snapshot();
        // (After the snapshot: a shutdown that took the lanes before it is seen here, and
        // what a shutdown after it leaves owed is delivered at the next start.)
        if self.shut.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Refused::ShutDown);
        }
        if let Some(spool) = &self.spool {
            let spool = spool.clone();
            let numbers: Vec<u32> = lanes.iter().map(|l| l.number).collect();
            // Persist, then queue, in one blocking task: it runs to the end even when
            // the request that brought the batch goes away in between.
            return tokio::task::spawn_blocking(move || {
                let positions = spool.append_received(&txns, &numbers, &received)?;
                // A repeated id (a client's retry) was stored, and is delivered, once.
                let mut arrived = Vec::new();
                let stored: Vec<(Arc<Transaction>, i64)> = txns
                    .into_iter()
                    .zip(positions)
                    .enumerate()
                    .filter_map(|(i, (t, p))| {
                        let p = p?;
                        if let Some(r) = received.get(i) {
                            arrived.push(super::queued::arrived_at(*r));
                        }
                        Some((Arc::new(t), p))
                    })
                    .collect();
                if spool.feeds_lanes() {
                    // Cluster mode: the partitions' owners read it from the spool.
                    return Ok(stored.len());
                }
                // (All or none have an arrival: `received` covers the batch or is empty.)
                if arrived.len() != stored.len() {
                    arrived.clear();
                }
                for lane in &lanes {
                    lane.overflow
                        .offer_arrived(&lane.tx, &stored, &arrived, lane.number);
                }
                Ok(stored.len())
            })
            .await
            .map_err(|e| Refused::Spool(SpoolError::Storage(e.to_string())))?
            .map_err(Refused::Spool);
        }
        let txns: Vec<Arc<Transaction>> = txns.into_iter().map(Arc::new).collect();
        let arrived: Vec<tokio::time::Instant> = received
            .iter()
            .map(|r| super::queued::arrived_at(*r))
            .collect();
        let queued = |i: usize, txn: &Arc<Transaction>| Queued {
            at: arrived
                .get(i)
                .copied()
                .unwrap_or_else(tokio::time::Instant::now),
            ..Queued::new(txn.clone())
        };
        if backpressure == Backpressure::Wait {
            let feeds = lanes.iter().map(|lane| {
                let txns = &txns;
                let queued = &queued;
                async move {
                    for (i, txn) in txns.iter().enumerate() {
                        lane.tx.send(queued(i, txn)).await.map_err(|_| ShutDown)?;
                    }
                    Ok::<(), ShutDown>(())
                }
            });
            for fed in futures::future::join_all(feeds).await {
                fed.map_err(|_| Refused::ShutDown)?;
            }
            return Ok(txns.len());
        }
        let mut permits = Vec::with_capacity(lanes.len());
        for lane in &lanes {
            match lane.tx.try_reserve_many(txns.len()) {
                Ok(p) => permits.push(p),
                Err(_) => {
                    return Err(Refused::QueueFull(QueueFull {
                        driver: lane.number,
                        name: lane.name.clone(),
                    }))
                }
            }
        }
        for p in permits {
            for (i, (permit, txn)) in p.zip(&txns).enumerate() {
                permit.send(queued(i, txn));
            }
        }
        Ok(txns.len())
    }

    fn snapshot(&self) -> Vec<Arc<Lane>> {
        self.lanes.read().clone()
    }

    /// Start-up recovery, with the spool: every driver reads everything the spool owes
    /// it, in ingest order, before what arrives from now on (see [`super::overflow`]).
    /// Replay marks left from before are covered by that reading and cleared.
    pub async fn recover(&self) -> Result<(), SpoolError> {
        let Some(spool) = self.spool.clone() else {
            return Ok(());
        };
        let owed = tokio::task::spawn_blocking(move || {
            spool.reset_replays()?;
            spool.owed_per_driver()
        })
        .await
        .map_err(|e| SpoolError::Storage(e.to_string()))??;
        let numbers: Vec<u32> = self.snapshot().iter().map(|l| l.number).collect();
        for (number, n) in owed.into_iter().filter(|(d, _)| !numbers.contains(d)) {
            tracing::warn!(
                driver = number,
                "the spool owes {n} transaction(s) to driver {number}, which this config does not have (removed, or renumbered: Dovecot's numbering moves later drivers down). They stay in the spool, counted against spool_quota; a driver configured as number {number} again receives them at the next start"
            );
        }
        for lane in self.snapshot() {
            lane.overflow.read_all_owed();
        }
        Ok(())
    }

    /// Queues the dead letters `mailpush dlq replay` marked since the last call, each for
    /// the drivers it is owed to (a lane's reading of the backlog passes over them);
    /// returns how many.
    pub async fn take_replays(&self) -> Result<usize, SpoolError> {
        let Some(spool) = self.spool.clone() else {
            return Ok(0);
        };
        let items = tokio::task::spawn_blocking(move || spool.take_replayed())
            .await
            .map_err(|e| SpoolError::Storage(e.to_string()))??;
        let n = items.len();
        if n > 0 {
            tracing::info!("replaying {n} transaction(s) from the spool");
        }
        for p in items {
            tracing::debug!(txn = %p.txn.id, drivers = ?p.drivers, "replayed from the spool");
            if self.replay(Arc::new(p.txn), &p.drivers).await.is_err() {
                break;
            }
        }
        Ok(n)
    }

    /// Queues a transaction the spool hands over (cluster mode) for driver `number`'s
    /// lane, waiting for room; `false`: no such driver (any more), nothing taken.
    pub async fn feed(&self, number: u32, txn: Arc<Transaction>) -> Result<bool, ShutDown> {
        self.queue_for(number, txn).await
    }

    /// The numbers of the running drivers.
    pub fn numbers(&self) -> Vec<u32> {
        self.snapshot().iter().map(|l| l.number).collect()
    }

    /// A hash of the running drivers (numbers, names, arguments, component files): nodes
    /// of a cluster compare it to find configuration drift.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for l in self.snapshot().iter() {
            h.update(l.fingerprint.as_bytes());
            h.update(b"\n");
        }
        hex::encode(&h.finalize()[..8])
    }

    /// Current counters of every driver.
    pub fn reports(&self) -> Vec<DriverReport> {
        self.snapshot().iter().map(|l| l.report()).collect()
    }

    /// Whether ingest would refuse for lack of room: without a spool, a full queue (with
    /// the spool a full queue overflows into it; only a full spool refuses).
    pub fn saturated(&self) -> bool {
        self.spool.is_none() && self.snapshot().iter().any(|l| l.tx.capacity() == 0)
    }

    /// Swaps in a new driver list: drivers whose fingerprint is unchanged keep their
    /// running lane and queue (the newly initialised duplicate is dropped after its
    /// deinit); other old lanes stop taking new transactions and are deinitialised; new
    /// drivers start. With the spool an old lane only finishes its deliveries in flight
    /// and hands what it holds and has queued to its successor (which takes it first),
    /// or leaves it owed in the spool (a removed driver); without one it finishes its
    /// queue. Nothing queued is lost.
    pub async fn reconfigure(&self, drivers: Vec<LoadedDriver>) -> Reconfigured {
        let mut result = Reconfigured::default();
        let mut retired = Vec::new();
        let mut duplicates = Vec::new();
        // Every overflow whose hand-over this reload starts: ended by the drop of this
        // guard, whatever happens (a panic below must not leave a new lane waiting for a
        // hand-over that never comes).
        struct HandOvers(Vec<Arc<Overflow>>);
        impl Drop for HandOvers {
            fn drop(&mut self) {
                for o in &self.0 {
                    o.set_handing_over(false);
                }
            }
        }
        let mut hand_overs = HandOvers(Vec::new());
        {
            let mut lanes = self.lanes.write();
            let mut old: Vec<Arc<Lane>> = std::mem::take(&mut *lanes);
            for d in drivers {
                // Same fingerprint: the running lane stays — unless its driver failed to
                // load in the background: the new one (loaded now) replaces it.
                let same = old.iter().position(|l| {
                    l.fingerprint == d.fingerprint
                        && !matches!(l.driver.loading(), Some(Loading::Failed(_)))
                });
                if let Some(i) = same {
                    result.kept.push(d.number);
                    lanes.push(old.remove(i));
                    duplicates.push(d.driver);
                } else {
                    result.started.push(d.number);
                    // A replaced driver's backlog in the spool is owed to its number: the
                    // new lane reads it on.
                    let overflow = old
                        .iter()
                        .find(|l| l.number == d.number)
                        .map(|l| l.overflow.clone());
                    // The new lane reads back nothing left in the spool until it has
                    // what the old one held (older), below.
                    if let Some(o) = &overflow {
                        o.set_handing_over(true);
                        hand_overs.0.push(o.clone());
                    }
                    lanes.push(Arc::new(start_lane(
                        d,
                        self.capacity,
                        self.observer.clone(),
                        self.spool.clone(),
                        overflow,
                    )));
                }
            }
            for l in old {
                result.stopped.push(l.number);
                // With the spool, a retired lane only finishes its deliveries in flight:
                // what it holds and has queued goes to its successor, or (a removed
                // driver) stays owed to its number in the spool, as at a stop.
                if self.spool.is_some() {
                    l.overflow.set_handing_over(true);
                    hand_overs.0.push(l.overflow.clone());
                }
                retired.push(l);
            }
        }
        for d in duplicates {
            if let Err(p) = std::panic::AssertUnwindSafe(d.deinit())
                .catch_unwind()
                .await
            {
                tracing::error!(
                    "a driver's deinit panicked (its duplicate, loaded by the reload): {}",
                    panic_message(&p)
                );
            }
        }
        // All at once: a slow driver finishing its deliveries in flight does not keep the
        // successors of the others waiting for their hand-over.
        let started = &result.started;
        let finishing = retired.into_iter().map(|lane| async move {
            let number = lane.number;
            let overflow = lane.overflow.clone();
            let (_, left) = unshared(lane).await.finish().await;
            // The old lane may have taken the wake-up of an overflow it then left: the
            // new one (sharing the overflow) looks again.
            overflow.wake_lane();
            // What the old lane still had (waiting for a retry or behind an open circuit,
            // or still queued) is owed to its number: with the spool, the lane that
            // replaced it delivers it now rather than at the next start, before that
            // user's newer transactions.
            let Some(spool) = &self.spool else {
                // Nothing is handed on: nothing of theirs is kept for a successor.
                for t in &left {
                    overflow.take_carried(&t.id);
                }
                overflow.set_handing_over(false);
                return;
            };
            if started.contains(&number) {
                // The new lane takes them before anything queued since (it waits for
                // this hand-over): each user's order holds across the reload.
                if !left.is_empty() {
                    tracing::info!(
                        driver = number,
                        "{} transaction(s) handed to the reloaded driver",
                        left.len()
                    );
                }
                overflow.hand_on(left);
                overflow.set_handing_over(false);
                return;
            }
            // What no lane of this process will deliver (its driver was removed, or the
            // process is stopping) is let go: in cluster mode its acknowledgement handle
            // is released and it no longer counts as in flight, which a hand-over of its
            // partition waits for; the partition's owner reads it again. The SQLite
            // spool keeps it owed to its number.
            for t in left {
                overflow.take_carried(&t.id);
                spool.abandon(&t, number);
            }
            overflow.set_handing_over(false);
        });
        futures::future::join_all(finishing).await;
        result
    }

    /// A replayed dead letter: queued for the listed drivers (the backlog reading of an
    /// overflowing lane passes over it, [`Spool::take_replayed`]).
    async fn replay(&self, txn: Arc<Transaction>, drivers: &[u32]) -> Result<(), ShutDown> {
        for &number in drivers {
            // A driver no longer configured: the replay stays owed to its number in the
            // spool (read with the rest at a start with such a driver).
            self.queue_for(number, txn.clone()).await?;
        }
        Ok(())
    }

    /// Queues `txn` for driver `number`'s lane, waiting for room. A lane finished while
    /// this waits (replaced by a reload, or stopping) is given up: the transaction goes
    /// to its successor, or (none: the driver was removed, or the process stops) is not
    /// queued — `false`, as for a number no lane has. What was given up is still owed in
    /// the spool.
    async fn queue_for(&self, number: u32, txn: Arc<Transaction>) -> Result<bool, ShutDown> {
        loop {
            let Some(lane) = self.snapshot().into_iter().find(|l| l.number == number) else {
                return Ok(false);
            };
            let mut stopping = lane.stopping.subscribe();
            tokio::select! {
                sent = lane.tx.send(Queued::new(txn.clone())) => {
                    return sent.map(|()| true).map_err(|_| ShutDown);
                }
                // Out of the running set once this is set: the next look finds its
                // successor, or nothing.
                _ = stopping.wait_for(|s| *s) => {}
            }
        }
    }

    /// Stops accepting, lets every driver finish its queue, calls each driver's deinit
    /// (in number order) and returns the final counters.
    pub async fn shutdown(self) -> Vec<DriverReport> {
        self.shutdown_shared().await
    }

    /// [`Dispatcher::shutdown`] through a shared reference: afterwards the dispatcher
    /// has no drivers.
    pub async fn shutdown_shared(&self) -> Vec<DriverReport> {
        let lanes = {
            let mut lanes = self.lanes.write();
            self.shut.store(true, std::sync::atomic::Ordering::SeqCst);
            std::mem::take(&mut *lanes)
        };
        // Every lane stops at once (one finishing a slow delivery in flight does not keep
        // the others taking more from their queues meanwhile); then the drivers are
        // deinitialised in number order, as Dovecot does. What a lane still had stays in
        // the spool for the next start.
        let stopped = futures::future::join_all(
            lanes
                .into_iter()
                .map(|l| async { unshared(l).await.stop().await }),
        )
        .await;
        let mut reports = Vec::new();
        for lane in stopped {
            reports.push(lane.deinit().await.0);
        }
        // Every progress record committed: a later start does not deliver these again.
        if let Some(spool) = self.spool.clone() {
            let flushed = tokio::task::spawn_blocking(move || spool.flush()).await;
            if let Ok(Err(e)) = flushed {
                tracing::error!("cannot record the last progress in the spool: {e}");
            }
        }
        reports
    }
}

/// A lane (already out of the running set) once no in-flight dispatch holds it any
/// more.
async fn unshared(mut lane: Arc<Lane>) -> Lane {
    // A dispatch waiting for room in its queue lets go of it now.
    lane.stopping.send_replace(true);
    loop {
        match Arc::try_unwrap(lane) {
            Ok(l) => return l,
            Err(shared) => {
                // A dispatch call still holds a snapshot: storing a batch in the spool,
                // or giving up its wait. Look again shortly, without spinning.
                lane = shared;
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
    }
}
