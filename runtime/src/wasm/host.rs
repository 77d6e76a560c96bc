//! The state a component's store holds — everything one instance may touch lives here —
//! and the `mailpush:driver/host` imports (log, METADATA).

use std::sync::Arc;
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
    pub log: LogBudget,
}

impl HostState {
    /// State with no WASI grants at all: no preopened directories, no environment, no
    /// arguments, stdio closed, sockets denied. Random and clocks work.
    pub fn new(
        tag: Arc<DriverTag>,
        memory: usize,
        outbound: OutboundHttp,
        metadata: Arc<dyn MetadataLookup>,
        max_log_lines: u32,
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
            log: LogBudget {
                max: max_log_lines,
                written: 0,
                dropped: 0,
            },
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

/// Log lines one transaction may write.
#[derive(Debug)]
pub struct LogBudget {
    pub max: u32,
    pub written: u32,
    pub dropped: u32,
}

impl host::Host for HostState {
    async fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        if self.log.written >= self.log.max {
            self.log.dropped += 1;
            return Ok(());
        }
        self.log.written += 1;
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
