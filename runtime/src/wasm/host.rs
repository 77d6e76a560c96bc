//! The state a component's store holds — everything one instance may touch lives here —
//! and the `mailpush:driver/host` imports (log, METADATA).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailpush_core::{MetadataLookup, Transaction};
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreContextMut, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::bindings::mailpush::driver::host::{self, Level};
use super::engine::EPOCH_TICK;
use super::outbound_http::OutboundHttp;

/// Who is running: for log tags.
#[derive(Debug, Clone)]
pub struct DriverTag {
    pub number: u32,
    pub name: String,
}

/// Per-instance host state.
pub struct HostState {
    pub tag: Arc<DriverTag>,
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    pub outbound: OutboundHttp,
    pub limiter: MemoryLimiter,
    pub metadata: Arc<dyn MetadataLookup>,
    /// The transaction being handled (METADATA reads are confined to its user).
    pub txn: Option<Arc<Transaction>>,
    pub clock: CallClock,
    /// The current transaction's log budget, shared with [`OutboundHttp`] (whose
    /// refusal warnings count against it).
    pub log: SharedLog,
    /// A Rust panic message the guest logged during the current call ("panicked at …",
    /// as the SDK's panic hook writes it): the reason given when the call then traps.
    pub panic: Option<String>,
}

impl HostState {
    /// State with no WASI grants at all: no preopened directories, no environment, no
    /// arguments, stdio closed, sockets denied. Random and clocks work. `log` is the
    /// budget `outbound` was made with.
    pub fn new(
        tag: Arc<DriverTag>,
        memory: usize,
        outbound: OutboundHttp,
        metadata: Arc<dyn MetadataLookup>,
        log: SharedLog,
    ) -> Self {
        let wasi = WasiCtx::builder()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        HostState {
            tag,
            table: ResourceTable::new(),
            wasi,
            http: WasiHttpCtx::new(),
            outbound,
            limiter: MemoryLimiter {
                limit: memory,
                hit: false,
            },
            metadata,
            txn: None,
            clock: CallClock::default(),
            log,
            panic: None,
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

/// Linear-memory cap; records whether a growth was refused (reported as "memory limit").
pub struct MemoryLimiter {
    pub limit: usize,
    pub hit: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// Measures guest time of one call: wall time minus time spent in host calls, so that
/// waiting on HTTP is bounded by its own timeouts, not charged to `timeout_msecs`.
#[derive(Debug, Default)]
pub struct CallClock {
    started: Option<Instant>,
    in_host_since: Option<Instant>,
    host_time: Duration,
    pub budget: Duration,
    /// Set when the deadline interrupted the guest.
    pub expired: bool,
}

impl CallClock {
    /// Re-arms the clock before a call.
    pub fn arm(&mut self, budget: Duration) {
        *self = CallClock {
            started: Some(Instant::now()),
            budget,
            ..Default::default()
        };
    }

    /// Guest time used so far in this call.
    pub fn guest_time(&self) -> Duration {
        let Some(start) = self.started else {
            return Duration::ZERO;
        };
        let mut host = self.host_time;
        if let Some(since) = self.in_host_since {
            host += since.elapsed();
        }
        start.elapsed().saturating_sub(host)
    }

    pub fn entering_host(&mut self) {
        self.in_host_since = Some(Instant::now());
    }

    pub fn leaving_host(&mut self) {
        if let Some(since) = self.in_host_since.take() {
            self.host_time += since.elapsed();
        }
    }
}

/// Ticks for `d` (at least one).
pub fn ticks(d: Duration) -> u64 {
    (d.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64
}

/// How long a guest may run before it yields to the async executor, so a busy guest
/// never holds a runtime thread away from ingest and other drivers.
pub const YIELD_EVERY: Duration = Duration::from_millis(5);

/// Ticks until the next deadline check: the remaining budget, at most [`YIELD_EVERY`].
pub fn slice(remaining: Duration) -> u64 {
    ticks(remaining.min(YIELD_EVERY))
}

/// The epoch-deadline callback: interrupt once guest time reaches the budget, otherwise
/// yield to the executor and check again after the next slice.
pub fn on_deadline(mut store: StoreContextMut<'_, HostState>) -> wasmtime::Result<UpdateDeadline> {
    let clock = &mut store.data_mut().clock;
    let used = clock.guest_time();
    if used >= clock.budget {
        clock.expired = true;
        return Ok(UpdateDeadline::Interrupt);
    }
    Ok(UpdateDeadline::Yield(slice(clock.budget - used)))
}

/// The driver-wide rate limit of log lines (all its instances and transactions): a
/// token bucket holding up to `burst` lines, refilled at `per_sec` lines per second.
#[derive(Debug)]
pub struct LogRate {
    burst: f64,
    per_sec: f64,
    state: Mutex<(f64, Instant)>,
}

impl LogRate {
    /// A full bucket.
    pub fn new(burst: u32, per_sec: u32) -> Self {
        LogRate {
            burst: f64::from(burst),
            per_sec: f64::from(per_sec),
            state: Mutex::new((f64::from(burst), Instant::now())),
        }
    }

    /// Takes one line's token at `now`; false when the bucket is empty.
    pub fn take_at(&self, now: Instant) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = &mut *state;
        let elapsed = now.saturating_duration_since(*last).as_secs_f64();
        *tokens = (*tokens + elapsed * self.per_sec).min(self.burst);
        *last = now.max(*last);
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Takes one line's token now.
    pub fn take(&self) -> bool {
        self.take_at(Instant::now())
    }
}

/// Log lines one transaction may write: at most `max`, and only while the driver's
/// [`LogRate`] has tokens. Guest lines and the host's warnings about the transaction
/// (refused requests) both count; the rest are counted and dropped.
#[derive(Debug)]
pub struct LogBudget {
    pub max: u32,
    pub written: u32,
    pub dropped: u32,
    pub rate: Arc<LogRate>,
}

/// A log budget shared by an instance's host state and its outbound HTTP hooks.
pub type SharedLog = Arc<Mutex<LogBudget>>;

impl LogBudget {
    /// A fresh budget of `max` lines per transaction under the driver's `rate`.
    pub fn shared(max: u32, rate: Arc<LogRate>) -> SharedLog {
        Arc::new(Mutex::new(LogBudget {
            max,
            written: 0,
            dropped: 0,
            rate,
        }))
    }

    /// Whether one more line may be written (counting it either way).
    pub fn admit(&mut self) -> bool {
        if self.written >= self.max || !self.rate.take() {
            self.dropped += 1;
            return false;
        }
        self.written += 1;
        true
    }
}

/// Whether one more line may be written under `log` (counting it either way).
pub fn admit(log: &SharedLog) -> bool {
    log.lock().unwrap_or_else(|p| p.into_inner()).admit()
}

impl host::Host for HostState {
    async fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        if matches!(level, Level::Error) && message.starts_with("panicked at ") {
            // Kept even when the log budget is spent: it explains the trap that follows.
            let mut m: String = message.chars().take(1024).collect();
            m = m.replace('\n', " ");
            self.panic = Some(m);
        }
        if !admit(&self.log) {
            return Ok(());
        }
        // Cap one line's size; a driver must not be able to flood the log with one call.
        let mut message = message;
        if message.len() > 4096 {
            let mut cut = 4096;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str("…[truncated]");
        }
        let txn = self.txn.as_ref().map(|t| t.id.as_str()).unwrap_or("-");
        let (n, name) = (self.tag.number, self.tag.name.as_str());
        match level {
            Level::Trace => {
                tracing::trace!(target: "mailpush::wasm::guest", driver = n, name, txn, "{message}")
            }
            Level::Debug => {
                tracing::debug!(target: "mailpush::wasm::guest", driver = n, name, txn, "{message}")
            }
            Level::Info => {
                tracing::info!(target: "mailpush::wasm::guest", driver = n, name, txn, "{message}")
            }
            Level::Warn => {
                tracing::warn!(target: "mailpush::wasm::guest", driver = n, name, txn, "{message}")
            }
            Level::Error => {
                tracing::error!(target: "mailpush::wasm::guest", driver = n, name, txn, "{message}")
            }
        }
        Ok(())
    }

    async fn metadata_get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        // Only the current transaction's user is readable; outside a transaction
        // (during init) nothing is.
        let Some(txn) = &self.txn else {
            return Ok(None);
        };
        match mailpush_core::metadata::lookup(txn, self.metadata.as_ref(), &key) {
            Ok(v) => Ok(v),
            Err(e) => {
                tracing::warn!(driver = self.tag.number, txn = %txn.id, "{e}");
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_rate_is_a_token_bucket() {
        let rate = LogRate::new(3, 10);
        let t0 = Instant::now();
        assert!((0..3).all(|_| rate.take_at(t0)), "the burst");
        assert!(!rate.take_at(t0), "then empty");
        // 10 lines per second: one token back after 100 ms, never more than the burst.
        assert!(!rate.take_at(t0 + Duration::from_millis(50)));
        assert!(rate.take_at(t0 + Duration::from_millis(100)));
        assert!(!rate.take_at(t0 + Duration::from_millis(100)));
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| rate.take_at(later)).count(), 3);
    }

    #[test]
    fn budget_counts_what_it_drops() {
        let log = LogBudget::shared(2, Arc::new(LogRate::new(100, 0)));
        let kept = (0..5).filter(|_| admit(&log)).count();
        assert_eq!(kept, 2);
        let b = log.lock().unwrap();
        assert_eq!((b.written, b.dropped), (2, 3));
    }
}
