//! Per-driver statistics: the counters a lane keeps, and the snapshot of them the
//! daemon serves as status and metrics ([`crate::status`]).

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mailpush_core::{CircuitState, Driver, EndpointCircuit, Loading};

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
    /// Of those, transactions that grew older than `retry_max_age` before delivery.
    pub expired: AtomicU64,
    /// Of those, transactions a later one of their user skipped ahead of (`hold_max`).
    pub skipped_ahead: AtomicU64,
    /// Circuit state ([`CircuitState::as_gauge`]).
    pub circuit: AtomicU8,
    /// Transactions the lane holds: being delivered or waiting for a retry.
    pub held: AtomicUsize,
}

impl DriverStats {
    /// Records the circuit breaker's state.
    pub fn set_circuit(&self, state: CircuitState) {
        self.circuit.store(state.as_gauge(), Ordering::Relaxed);
    }

    /// The circuit breaker's state.
    pub fn circuit(&self) -> CircuitState {
        match self.circuit.load(Ordering::Relaxed) {
            1 => CircuitState::Open,
            2 => CircuitState::HalfOpen,
            _ => CircuitState::Closed,
        }
    }

    /// Records one delivery's processing latency.
    pub(crate) fn observe(&self, d: Duration) {
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

/// A snapshot of one driver's counters: the driver part of the status contract the
/// daemon serves and the CLI reads ([`crate::status::Status`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
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
    /// Transactions left in the spool because their user (or tenant) had its share of
    /// the lane's room; read back as that room frees up ([`super::overflow`]).
    #[serde(default)]
    pub diverted: usize,
    /// The driver reads a backlog from the spool ([`super::overflow`]).
    pub overflowing: bool,
    /// The queue's capacity.
    pub capacity: usize,
    /// Driver-specific counters ([`Driver::counters`]).
    pub counters: Vec<(String, u64)>,
    /// Retries scheduled.
    pub retried: u64,
    /// Dead letters.
    pub dead_lettered: u64,
    /// Of those, expired ones (older than `retry_max_age`).
    #[serde(default)]
    pub expired: u64,
    /// Of those, ones a later transaction of their user skipped ahead of (`hold_max`).
    #[serde(default)]
    pub skipped_ahead: u64,
    /// Circuit breaker state.
    pub circuit: CircuitState,
    /// Per-endpoint circuits of endpoints seen failing ([`Driver::endpoint_circuits`]).
    pub endpoints: Vec<EndpointCircuit>,
    /// Cumulative latency histogram counts per [`LATENCY_BUCKETS`] bound, +Inf last.
    pub latency_buckets: Vec<u64>,
    /// Sum of processing latencies in microseconds.
    pub latency_sum_us: u64,
    /// While the driver loads in the background, what it is doing; a load that failed,
    /// why ([`Driver::loading`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loading: Option<String>,
    /// Its background load failed (`loading` says why).
    #[serde(default)]
    pub load_failed: bool,
}

/// What a driver's lane is doing, as `mailpush status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LaneState {
    /// Delivering; its queue has room.
    Running,
    /// Its queue is full (with the spool, it then overflows).
    Saturated,
    /// Reading a backlog from the spool.
    Overflowing,
    /// Still loading (a big component compiling in the background), or its load
    /// failed: see [`DriverReport::loading`]. Its transactions wait.
    Loading,
}

impl LaneState {
    pub fn as_str(self) -> &'static str {
        match self {
            LaneState::Running => "running",
            LaneState::Saturated => "saturated",
            LaneState::Overflowing => "overflowing",
            LaneState::Loading => "loading",
        }
    }
}

impl DriverReport {
    /// The lane's state.
    pub fn state(&self) -> LaneState {
        if self.loading.is_some() {
            LaneState::Loading
        } else if self.overflowing {
            LaneState::Overflowing
        } else if self.queued >= self.capacity {
            LaneState::Saturated
        } else {
            LaneState::Running
        }
    }

    /// The report of a driver with `queued` transactions in a queue of `capacity`.
    pub fn new(
        number: u32,
        name: String,
        (queued, overflowing): (usize, bool),
        capacity: usize,
        driver: &dyn Driver,
        stats: &Arc<DriverStats>,
    ) -> Self {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let loading = driver.loading();
        DriverReport {
            number,
            name,
            held: stats.held.load(Ordering::Relaxed),
            diverted: 0,
            overflowing,
            delivered: get(&stats.delivered),
            skipped: get(&stats.skipped),
            failed: get(&stats.failed),
            queued,
            capacity,
            counters: driver
                .counters()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            retried: get(&stats.retried),
            dead_lettered: get(&stats.dead_lettered),
            expired: get(&stats.expired),
            skipped_ahead: get(&stats.skipped_ahead),
            circuit: stats.circuit(),
            endpoints: driver.endpoint_circuits(),
            latency_buckets: stats.latency_buckets.iter().map(get).collect(),
            latency_sum_us: get(&stats.latency_sum_us),
            load_failed: matches!(loading, Some(Loading::Failed(_))),
            loading: loading.map(|l| l.to_string()),
        }
    }
}
