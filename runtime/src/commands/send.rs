//! `mailpush send`: canonical transactions from a file or standard input, delivered
//! in-process through the same pipeline as `mailpush run` — persisted in the spool (when
//! delivery is durable), then offered to every driver — except that each delivery is
//! tried once: a failure is final (a dead letter with the spool), nothing waits for a
//! retry schedule or a circuit breaker (a delivery a driver's open endpoint circuit
//! refuses fails at once with the circuit's reason).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use mailpush_core::{LineError, MetadataError, Transaction};
use tokio::sync::Notify;

use crate::pipeline::{
    Backpressure, Delivery, DeliveryObserver, Dispatcher, DriverReport, LoadedDriver, Refused,
};
use crate::registry::{shutdown_drivers, DriverRegistry};
use crate::spool::SpoolError;
use mailpush_config::{Config, ConfigError};

/// Why `send` could not run.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Drivers(Vec<ConfigError>),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("cannot open the spool: {0}")]
    Spool(#[from] SpoolError),
    /// Another process delivers from this spool.
    #[error(transparent)]
    Busy(#[from] crate::spool::lock::LockError),
    #[error("{0}")]
    Refused(#[from] Refused),
    #[error("mailpush send delivers in this process from the local spool; in cluster mode (cluster = …) post the transactions to a node's ingest instead, e.g. curl --data-binary @events.ndjson -H 'content-type: application/x-ndjson' http://NODE:8025/v1/transactions")]
    Cluster,
}

/// Transactions read and drivers initialised, ready to deliver.
pub struct Prepared {
    txns: Vec<Transaction>,
    /// Lines that did not parse (`line N: $.path: message`).
    pub rejected: Vec<LineError>,
    loaded: Vec<LoadedDriver>,
    config: Config,
}

/// The outcome of a send.
#[derive(Debug, Clone)]
pub struct SendReport {
    /// Transactions read.
    pub accepted: usize,
    /// Lines that did not parse.
    pub rejected: usize,
    /// Transactions whose id the spool already held (not yet delivered everywhere, or
    /// dead-lettered): stored and delivered once, as by ingest; not delivered again.
    pub repeated: usize,
    pub drivers: Vec<DriverReport>,
}

impl SendReport {
    /// Whether every transaction parsed and every delivery succeeded (or was skipped).
    pub fn ok(&self) -> bool {
        self.rejected == 0 && self.drivers.iter().all(|r| r.failed == 0)
    }
}

/// Parses `input` (NDJSON, or JSON objects one after another; a line that is not UTF-8
/// is rejected on its own) and initialises the config's drivers.
pub async fn prepare(
    config: Config,
    registry: &DriverRegistry,
    input: &[u8],
) -> Result<Prepared, SendError> {
    let mut txns = Vec::new();
    let mut rejected = Vec::new();
    for item in mailpush_core::parse_stream_bytes(input) {
        match item {
            Ok(t) => txns.push(t),
            Err(e) => rejected.push(e),
        }
    }
    if config.settings.cluster.is_some() {
        return Err(SendError::Cluster);
    }
    if let Some(total) = config.settings.wasm_host_memory {
        crate::wasm::limits::HostMemory::global().set_total(total);
    }
    let metadata = crate::metadata_store::open_for(&config.settings)?;
    let loaded = match registry.init_all(&config, metadata).await {
        Ok(l) => l,
        Err((loaded, errors)) => {
            shutdown_drivers(loaded).await;
            return Err(SendError::Drivers(errors));
        }
    };
    Ok(Prepared {
        txns,
        rejected,
        loaded,
        config,
    })
}

/// Counts final delivery results and wakes [`Tally::all_done`] when `expected` arrived;
/// passes each on to `next` (a progress display).
struct Tally {
    done: AtomicU64,
    /// Deliveries to wait for (set once the transactions are taken).
    expected: AtomicU64,
    notify: Notify,
    next: Option<Arc<dyn DeliveryObserver>>,
}

impl DeliveryObserver for Tally {
    fn delivered(&self, d: &Delivery) {
        if let Some(n) = &self.next {
            n.delivered(d);
        }
        if self.done.fetch_add(1, Ordering::SeqCst) + 1 >= self.expected.load(Ordering::SeqCst) {
            self.notify.notify_one();
        }
    }
}

impl Tally {
    async fn all_done(&self, expected: u64) {
        self.expected.store(expected, Ordering::SeqCst);
        loop {
            let notified = self.notify.notified();
            if self.done.load(Ordering::SeqCst) >= expected {
                return;
            }
            notified.await;
        }
    }
}

impl Prepared {
    /// How many deliveries there will be (transactions × drivers).
    pub fn deliveries(&self) -> u64 {
        self.txns.len() as u64 * self.loaded.len() as u64
    }

    /// Delivers every transaction to every driver once and reports; `progress` sees
    /// each final result.
    pub async fn run(
        self,
        progress: Option<Arc<dyn DeliveryObserver>>,
    ) -> Result<SendReport, SendError> {
        let Prepared {
            txns,
            rejected,
            loaded,
            config,
        } = self;
        let accepted = txns.len();
        let drivers = loaded.len() as u64;
        let tally = Arc::new(Tally {
            done: AtomicU64::new(0),
            expected: AtomicU64::new(u64::MAX),
            notify: Notify::new(),
            next: progress,
        });
        // Not beside `mailpush run` (or another send) on this spool: its lanes would read
        // what the spool owes their driver numbers, the other process's too.
        let _one_process =
            crate::spool::lock::DeliveryLock::for_settings(&config.settings, "send")?;
        let spool = crate::spool::open(&config.settings)?;
        let loaded: Vec<LoadedDriver> = loaded
            .into_iter()
            .map(|mut d| {
                d.policy = d.policy.once();
                d
            })
            .collect();
        let dispatcher = Dispatcher::start_with_spool(
            loaded,
            config.settings.queue_capacity,
            Some(tally.clone() as Arc<dyn DeliveryObserver>),
            spool,
        );
        // Durable first (one commit): if this process dies, `mailpush run` delivers the
        // rest. A driver whose queue is full reads on from the spool, or (without one)
        // holds back only its own feeding.
        let accept = dispatcher.accept(txns, Backpressure::Wait).await;
        if let Ok(taken) = &accept {
            tally.all_done(*taken as u64 * drivers).await;
        }
        let reports = dispatcher.shutdown().await;
        let taken = accept?;
        Ok(SendReport {
            accepted,
            rejected: rejected.len(),
            repeated: accepted - taken,
            drivers: reports,
        })
    }
}
