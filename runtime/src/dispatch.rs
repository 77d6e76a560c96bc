//! `Dispatcher`: hands every transaction to every driver independently. Each driver has
//! its own bounded queue and task, so a driver that fails, panics or is slow never
//! delays or breaks another driver or the caller (beyond back-pressure on its own full
//! queue). Each driver processes its queue in order, so one user's transactions reach
//! it in arrival order.

use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::FutureExt;
use mailpush_core::{group, Begin, Driver, Failure, Record, Transaction};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::registry::LoadedDriver;

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

/// Counters of one driver.
#[derive(Debug, Default)]
pub struct DriverStats {
    pub delivered: AtomicU64,
    pub skipped: AtomicU64,
    pub failed: AtomicU64,
}

/// A snapshot of one driver's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverReport {
    pub number: u32,
    pub name: String,
    pub delivered: u64,
    pub skipped: u64,
    pub failed: u64,
    /// Transactions waiting in the driver's queue.
    pub queued: usize,
}

struct Lane {
    number: u32,
    name: String,
    driver: Arc<dyn Driver>,
    tx: mpsc::Sender<Arc<Transaction>>,
    stats: Arc<DriverStats>,
    task: JoinHandle<()>,
}

/// A full queue: the transaction was not accepted by any driver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("driver {driver} ({name}) queue is full")]
pub struct QueueFull {
    pub driver: u32,
    pub name: String,
}

/// The dispatcher was shut down.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the dispatcher has shut down")]
pub struct ShutDown;

/// Per-driver queues and tasks.
pub struct Dispatcher {
    lanes: Vec<Lane>,
}

impl Dispatcher {
    /// Starts one task per driver with a queue of `capacity` transactions. Must be called
    /// inside a tokio runtime.
    pub fn start(
        drivers: Vec<LoadedDriver>,
        capacity: usize,
        observer: Option<Arc<dyn DeliveryObserver>>,
    ) -> Self {
        let lanes = drivers
            .into_iter()
            .map(|d| {
                let (tx, rx) = mpsc::channel(capacity.max(1));
                let stats = Arc::new(DriverStats::default());
                let task = tokio::spawn(run_lane(
                    d.number,
                    d.name.clone(),
                    d.driver.clone(),
                    rx,
                    stats.clone(),
                    observer.clone(),
                ));
                Lane {
                    number: d.number,
                    name: d.name,
                    driver: d.driver,
                    tx,
                    stats,
                    task,
                }
            })
            .collect();
        Dispatcher { lanes }
    }

    /// Queues a transaction for every driver, waiting while a queue is full.
    pub async fn dispatch(&self, txn: Arc<Transaction>) -> Result<(), ShutDown> {
        for lane in &self.lanes {
            lane.tx.send(txn.clone()).await.map_err(|_| ShutDown)?;
        }
        Ok(())
    }

    /// Queues a transaction for every driver, or for none when any queue is full.
    pub fn try_dispatch(&self, txn: Arc<Transaction>) -> Result<(), QueueFull> {
        let mut permits = Vec::with_capacity(self.lanes.len());
        for lane in &self.lanes {
            match lane.tx.try_reserve() {
                Ok(p) => permits.push(p),
                Err(_) => {
                    return Err(QueueFull {
                        driver: lane.number,
                        name: lane.name.clone(),
                    })
                }
            }
        }
        for p in permits {
            p.send(txn.clone());
        }
        Ok(())
    }

    /// Current counters of every driver.
    pub fn reports(&self) -> Vec<DriverReport> {
        self.lanes
            .iter()
            .map(|l| DriverReport {
                number: l.number,
                name: l.name.clone(),
                delivered: l.stats.delivered.load(Ordering::Relaxed),
                skipped: l.stats.skipped.load(Ordering::Relaxed),
                failed: l.stats.failed.load(Ordering::Relaxed),
                queued: l.tx.max_capacity() - l.tx.capacity(),
            })
            .collect()
    }

    /// Stops accepting, lets every driver finish its queue, calls each driver's deinit
    /// (in number order) and returns the final counters.
    pub async fn shutdown(self) -> Vec<DriverReport> {
        let mut reports = Vec::new();
        let mut finishing = Vec::new();
        for lane in self.lanes {
            drop(lane.tx);
            finishing.push((lane.number, lane.name, lane.driver, lane.stats, lane.task));
        }
        for (number, name, driver, stats, task) in finishing {
            if let Err(e) = task.await {
                tracing::error!(driver = number, "driver task ended abnormally: {e}");
            }
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
            reports.push(DriverReport {
                number,
                name,
                delivered: stats.delivered.load(Ordering::Relaxed),
                skipped: stats.skipped.load(Ordering::Relaxed),
                failed: stats.failed.load(Ordering::Relaxed),
                queued: 0,
            });
        }
        reports
    }
}

async fn run_lane(
    number: u32,
    name: String,
    driver: Arc<dyn Driver>,
    mut rx: mpsc::Receiver<Arc<Transaction>>,
    stats: Arc<DriverStats>,
    observer: Option<Arc<dyn DeliveryObserver>>,
) {
    while let Some(txn) = rx.recv().await {
        let span = tracing::info_span!("deliver", txn = %txn.id, driver = number, name = %name);
        let outcome = deliver(driver.as_ref(), &txn)
            .instrument(span.clone())
            .await;
        let _entered = span.enter();
        match &outcome {
            Outcome::Delivered => {
                stats.delivered.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(user = %txn.user, "delivered");
            }
            Outcome::Skipped => {
                stats.skipped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(user = %txn.user, "skipped by driver");
            }
            Outcome::Failed(f) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(user = %txn.user, retryable = f.retryable, "delivery failed: {}", f.reason);
            }
        }
        if let Some(o) = &observer {
            o.delivered(&Delivery {
                driver: number,
                txn,
                outcome,
            });
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
