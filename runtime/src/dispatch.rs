//! `Dispatcher`: hands every transaction to every driver independently. Each driver has
//! its own bounded queue and task, so a driver that fails, panics or is slow never
//! delays or breaks another driver or the caller: with the spool, a driver whose queue
//! is full reads its backlog from the spool ([`crate::overflow`]); without one, ingest
//! refuses what does not fit (503). Each driver processes its queue in order, so one
//! user's transactions reach it in arrival order.

use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::FutureExt;
use mailpush_core::{group, Begin, Driver, Failure, Record, Transaction};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::registry::LoadedDriver;
use crate::spool::Spool;

/// What happened to one transaction at one driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every hook call succeeded.
    Delivered,
    /// The driver's begin_txn chose not to take part.
    Skipped,
    /// A hook failed (or panicked).
    Failed(Failure),
}

/// One delivery result, as reported to a [`DeliveryObserver`].
#[derive(Debug, Clone)]
pub struct Delivery {
    pub driver: u32,
    pub txn: Arc<Transaction>,
    pub outcome: Outcome,
}

/// Receives every delivery result (progress display, spool bookkeeping, tests).
pub trait DeliveryObserver: Send + Sync {
    fn delivered(&self, delivery: &Delivery);
}

/// Upper bounds (seconds) of the processing-latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Counters of one driver.
#[derive(Debug, Default)]
pub struct DriverStats {
    pub delivered: AtomicU64,
    pub skipped: AtomicU64,
    pub failed: AtomicU64,
    /// Cumulative counts per [`LATENCY_BUCKETS`] bound (plus +Inf last).
    pub latency_buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Sum of processing latencies in microseconds.
    pub latency_sum_us: AtomicU64,
    /// Failed attempts that were scheduled for a retry.
    pub retried: AtomicU64,
    /// Transactions given up on (dead letters).
    pub dead_lettered: AtomicU64,
    /// Circuit state: 0 closed, 1 open, 2 half-open.
    pub circuit: std::sync::atomic::AtomicU8,
    /// Transactions the lane holds: being delivered or waiting for a retry.
    pub held: std::sync::atomic::AtomicUsize,
}

impl DriverStats {
    /// Records the circuit breaker's state.
    pub fn set_circuit(&self, state: crate::delivery::CircuitState) {
        use crate::delivery::CircuitState::*;
        let v = match state {
            Closed => 0,
            Open => 1,
            HalfOpen => 2,
        };
        self.circuit.store(v, Ordering::Relaxed);
    }

    /// The circuit breaker's state name.
    pub fn circuit_name(&self) -> &'static str {
        match self.circuit.load(Ordering::Relaxed) {
            1 => "open",
            2 => "half-open",
            _ => "closed",
        }
    }

    pub(crate) fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_buckets[LATENCY_BUCKETS.len()].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }
}

/// A snapshot of one driver's counters.
#[derive(Debug, Clone)]
pub struct DriverReport {
    pub number: u32,
    pub name: String,
    pub delivered: u64,
    pub skipped: u64,
    pub failed: u64,
    /// Transactions waiting in the driver's queue.
    pub queued: usize,
    /// Transactions the driver's lane holds (being delivered or waiting for a retry).
    pub held: usize,
    /// The driver reads a backlog from the spool ([`crate::overflow`]).
    pub overflowing: bool,
    /// The queue's capacity.
    pub capacity: usize,
    /// Driver-specific counters ([`Driver::counters`]).
    pub counters: Vec<(&'static str, u64)>,
    /// Retries scheduled.
    pub retried: u64,
    /// Dead letters.
    pub dead_lettered: u64,
    /// Circuit breaker state: closed, open or half-open.
    pub circuit: &'static str,
    /// Per-endpoint circuits of endpoints seen failing ([`Driver::endpoint_circuits`]).
    pub endpoints: Vec<mailpush_core::EndpointCircuit>,
    pub stats: Arc<DriverStats>,
}

struct Lane {
    number: u32,
    name: String,
    fingerprint: String,
    driver: Arc<dyn Driver>,
    tx: mpsc::Sender<Arc<Transaction>>,
    stats: Arc<DriverStats>,
    overflow: Arc<crate::overflow::Overflow>,
    task: LaneTask,
}

/// A lane runs on its own thread ([`crate::lane_thread`]), or as a task of the caller's
/// runtime if no thread could be started.
enum LaneTask {
    Thread(crate::lane_thread::LaneThread<Vec<Arc<Transaction>>>),
    Task(JoinHandle<Vec<Arc<Transaction>>>),
}

impl LaneTask {
    /// What the lane still had when it stopped ([`crate::lane::run`]).
    async fn join(self) -> Result<Vec<Arc<Transaction>>, String> {
        match self {
            LaneTask::Thread(t) => t.join().await,
            LaneTask::Task(t) => t.await.map_err(|e| e.to_string()),
        }
    }
}

impl DriverReport {
    fn new(
        number: u32,
        name: String,
        (queued, overflowing): (usize, bool),
        capacity: usize,
        driver: &dyn Driver,
        stats: &Arc<DriverStats>,
    ) -> Self {
        DriverReport {
            number,
            name,
            held: stats.held.load(Ordering::Relaxed),
            overflowing,
            delivered: stats.delivered.load(Ordering::Relaxed),
            skipped: stats.skipped.load(Ordering::Relaxed),
            failed: stats.failed.load(Ordering::Relaxed),
            queued,
            capacity,
            counters: driver.counters(),
            retried: stats.retried.load(Ordering::Relaxed),
            dead_lettered: stats.dead_lettered.load(Ordering::Relaxed),
            circuit: stats.circuit_name(),
            endpoints: driver.endpoint_circuits(),
            stats: stats.clone(),
        }
    }
}

impl Lane {
    fn report(&self) -> DriverReport {
        let queued = self.tx.max_capacity() - self.tx.capacity();
        DriverReport::new(
            self.number,
            self.name.clone(),
            (queued, self.overflow.active()),
            self.tx.max_capacity(),
            self.driver.as_ref(),
            &self.stats,
        )
    }

    /// Closes the queue, waits for the task to finish what was due, calls deinit;
    /// returns the counters and what the lane still had.
    async fn finish(self) -> (DriverReport, Vec<Arc<Transaction>>) {
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
        let left = match task.join().await {
            Ok(left) => left,
            Err(e) => {
                tracing::error!(driver = number, "driver task ended abnormally: {e}");
                Vec::new()
            }
        };
        if let Err(p) = std::panic::AssertUnwindSafe(driver.deinit())
            .catch_unwind()
            .await
        {
            tracing::error!(
                driver = number,
                "driver panicked in deinit: {}",
                panic_message(&p)
            );
        }
        (
            DriverReport::new(number, name, (0, false), capacity, driver.as_ref(), &stats),
            left,
        )
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
    #[error(transparent)]
    Spool(crate::spool::SpoolError),
}

/// The dispatcher was shut down.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the dispatcher has shut down")]
pub struct ShutDown;

/// Per-driver queues and tasks.
pub struct Dispatcher {
    lanes: std::sync::RwLock<Vec<Arc<Lane>>>,
    capacity: usize,
    observer: Option<Arc<dyn DeliveryObserver>>,
    spool: Option<Arc<dyn Spool>>,
}

/// Starts a lane; `overflow` is the backlog state of the lane it replaces, if any (the
/// new lane reads what the old one left in the spool).
fn start_lane(
    d: LoadedDriver,
    capacity: usize,
    observer: Option<Arc<dyn DeliveryObserver>>,
    spool: Option<Arc<dyn Spool>>,
    overflow: Option<Arc<crate::overflow::Overflow>>,
) -> Lane {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let stats = Arc::new(DriverStats::default());
    let overflow = overflow.unwrap_or_default();
    let ctx = crate::lane::LaneContext {
        number: d.number,
        name: d.name.clone(),
        driver: d.driver.clone(),
        stats: stats.clone(),
        observer,
        spool,
        policy: d.policy.clone(),
        capacity,
        overflow: overflow.clone(),
        concurrency: d
            .policy
            .concurrency
            .unwrap_or_else(|| d.driver.concurrency()),
    };
    let number = d.number;
    let task = match crate::lane_thread::spawn(
        format!("mailpush-lane-{number}"),
        crate::lane::run(ctx, rx),
    ) {
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
    }
}

/// What a [`Dispatcher::reconfigure`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconfigured {
    /// Drivers whose running lane (and queue) was kept.
    pub kept: Vec<u32>,
    /// Drivers started anew.
    pub started: Vec<u32>,
    /// Drivers whose old lane was drained and stopped.
    pub stopped: Vec<u32>,
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
            lanes: std::sync::RwLock::new(lanes),
            capacity,
            observer,
            spool,
        }
    }

    /// The spool, when delivery is durable.
    pub fn spool(&self) -> Option<&Arc<dyn Spool>> {
        self.spool.as_ref()
    }

    /// Queues a transaction for the listed drivers only (recovery and replay), waiting
    /// while a queue is full. Drivers no longer configured are skipped.
    pub async fn dispatch_to(
        &self,
        txn: Arc<Transaction>,
        drivers: &[u32],
    ) -> Result<(), ShutDown> {
        let mut lanes = self.snapshot();
        lanes.retain(|l| drivers.contains(&l.number));
        send_to(&lanes, txn).await
    }

    /// Ingest. With the spool: persists the batch (one group commit), then queues it for
    /// every driver; a driver whose queue is full reads the rest from the spool
    /// ([`crate::overflow`]), so only a full spool refuses. Without a spool: reserves
    /// room in every driver's queue first and refuses the whole batch if one is full.
    /// Nothing is queued or persisted when the batch is refused.
    pub async fn accept(&self, txns: Vec<Transaction>) -> Result<(), Refused> {
        let lanes = self.snapshot();
        if let Some(spool) = &self.spool {
            let spool = spool.clone();
            let numbers: Vec<u32> = lanes.iter().map(|l| l.number).collect();
            // Persist, then queue, in one blocking task: it runs to the end even when
            // the request that brought the batch goes away in between.
            return tokio::task::spawn_blocking(move || {
                let positions = spool.append(&txns, &numbers)?;
                // A repeated id (a client's retry) was stored, and is delivered, once.
                let stored: Vec<(Arc<Transaction>, i64)> = txns
                    .into_iter()
                    .zip(positions)
                    .filter_map(|(t, p)| p.map(|p| (Arc::new(t), p)))
                    .collect();
                for lane in &lanes {
                    lane.overflow.offer(&lane.tx, &stored, lane.number);
                }
                Ok(())
            })
            .await
            .map_err(|e| Refused::Spool(crate::spool::SpoolError::Storage(e.to_string())))?
            .map_err(Refused::Spool);
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
        let txns: Vec<Arc<Transaction>> = txns.into_iter().map(Arc::new).collect();
        for p in permits {
            for (permit, txn) in p.zip(&txns) {
                permit.send(txn.clone());
            }
        }
        Ok(())
    }

    fn snapshot(&self) -> Vec<Arc<Lane>> {
        self.lanes.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Queues a transaction for every driver, waiting while a queue is full.
    pub async fn dispatch(&self, txn: Arc<Transaction>) -> Result<(), ShutDown> {
        send_to(&self.snapshot(), txn).await
    }

    /// With the spool: every driver reads everything the spool owes it, in ingest order,
    /// before what arrives from now on (after a restart; see [`crate::overflow`]).
    pub fn read_all_owed(&self) {
        if self.spool.is_some() {
            for lane in self.snapshot() {
                lane.overflow.read_all_owed();
            }
        }
    }

    /// Queues all of `txns`, in order, for every driver, each driver's queue fed on its
    /// own: a driver whose queue is full holds back only its own feeding.
    pub async fn dispatch_all(&self, txns: &[Arc<Transaction>]) -> Result<(), ShutDown> {
        let lanes = self.snapshot();
        let feeds = lanes.iter().map(|lane| async move {
            for txn in txns {
                lane.tx.send(txn.clone()).await.map_err(|_| ShutDown)?;
            }
            Ok::<(), ShutDown>(())
        });
        futures::future::join_all(feeds)
            .await
            .into_iter()
            .collect::<Result<Vec<()>, ShutDown>>()
            .map(|_| ())
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
    /// deinit); other old lanes stop taking new transactions, finish what they have
    /// queued and are deinitialised; new drivers start. Nothing queued is lost.
    pub async fn reconfigure(&self, drivers: Vec<LoadedDriver>) -> Reconfigured {
        let mut result = Reconfigured::default();
        let mut retired = Vec::new();
        let mut duplicates = Vec::new();
        {
            let mut lanes = self.lanes.write().unwrap_or_else(|p| p.into_inner());
            let mut old: Vec<Arc<Lane>> = std::mem::take(&mut *lanes);
            for d in drivers {
                if let Some(i) = old.iter().position(|l| l.fingerprint == d.fingerprint) {
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
                retired.push(l);
            }
        }
        for d in duplicates {
            d.deinit().await;
        }
        for lane in retired {
            let number = lane.number;
            let overflow = lane.overflow.clone();
            let Some((_, left)) = finish_shared(lane).await else {
                continue;
            };
            // The old lane may have taken the wake-up of an overflow it then left: the
            // new one (sharing the overflow) looks again.
            overflow.wake_lane();
            // What the old lane still had (waiting for a retry or behind an open circuit,
            // or still queued) is owed to its number: with the spool, the lane that
            // replaced it delivers it now rather than at the next start. (After that
            // user's newer transactions, which the new lane may already have sent.)
            if self.spool.is_some() && result.started.contains(&number) && !left.is_empty() {
                tracing::info!(
                    driver = number,
                    "{} transaction(s) handed to the reloaded driver",
                    left.len()
                );
                for t in left {
                    if self.dispatch_to(t, &[number]).await.is_err() {
                        break;
                    }
                }
            }
        }
        result
    }

    /// Queues a replayed dead letter (stored at `position`) for the listed drivers,
    /// except those that will read it from the spool anyway (overflowing).
    pub async fn dispatch_replay(
        &self,
        txn: Arc<Transaction>,
        drivers: &[u32],
        position: i64,
    ) -> Result<(), ShutDown> {
        let mut lanes = self.snapshot();
        lanes.retain(|l| drivers.contains(&l.number) && !l.overflow.will_read(position));
        send_to(&lanes, txn).await
    }

    /// Stops accepting, lets every driver finish its queue, calls each driver's deinit
    /// (in number order) and returns the final counters.
    pub async fn shutdown(self) -> Vec<DriverReport> {
        self.shutdown_shared().await
    }

    /// [`Dispatcher::shutdown`] through a shared reference: afterwards the dispatcher
    /// has no drivers.
    pub async fn shutdown_shared(&self) -> Vec<DriverReport> {
        let lanes = std::mem::take(&mut *self.lanes.write().unwrap_or_else(|p| p.into_inner()));
        let mut reports = Vec::new();
        for lane in lanes {
            // What a lane still had stays in the spool for the next start.
            if let Some((r, _)) = finish_shared(lane).await {
                reports.push(r);
            }
        }
        reports
    }
}

/// Queues `txn` on each lane, waiting while a queue is full.
async fn send_to(lanes: &[Arc<Lane>], txn: Arc<Transaction>) -> Result<(), ShutDown> {
    for lane in lanes {
        lane.tx.send(txn.clone()).await.map_err(|_| ShutDown)?;
    }
    Ok(())
}

/// Finishes a lane once no in-flight dispatch holds it any more.
async fn finish_shared(mut lane: Arc<Lane>) -> Option<(DriverReport, Vec<Arc<Transaction>>)> {
    loop {
        match Arc::try_unwrap(lane) {
            Ok(l) => return Some(l.finish().await),
            Err(shared) => {
                // A dispatch call still holds a snapshot; it finishes quickly.
                lane = shared;
                tokio::task::yield_now().await;
            }
        }
    }
}

/// Runs Dovecot's hook sequence for one transaction at one driver: begin_txn, then
/// process_mbox/process_msg per record, then end_txn. A panic anywhere is contained
/// and reported as a failure.
pub async fn deliver(driver: &dyn Driver, txn: &Arc<Transaction>) -> Outcome {
    let run = async {
        let (events, mut dtxn) = match driver.begin_txn(txn).await? {
            Begin::Skip => return Ok(Outcome::Skipped),
            Begin::Join { events, txn } => (events, txn),
        };
        let mut result = Ok(());
        for record in group(txn, events) {
            result = match &record {
                Record::Mailbox(m) => dtxn.process_mbox(m).await,
                Record::Message(m) => dtxn.process_msg(m).await,
            };
            if result.is_err() {
                break;
            }
        }
        let end = dtxn.end_txn(result.is_ok()).await;
        result.and(end).map(|_| Outcome::Delivered)
    };
    match std::panic::AssertUnwindSafe(run).catch_unwind().await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(failure)) => Outcome::Failed(failure),
        Err(panic) => Outcome::Failed(Failure::permanent(format!(
            "driver panicked: {}",
            panic_message(&panic)
        ))),
    }
}

/// The text of a panic payload.
pub fn panic_message(panic: &Box<dyn Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_string()
    }
}
