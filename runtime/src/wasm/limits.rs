//! Capability: the limits every call into a driver runs under — guest CPU time, linear
//! memory, optional fuel, the event data handed to one call, the wall time of a whole
//! transaction — and where each is enforced:
//!
//! | key | bound | enforced by |
//! |---|---|---|
//! | `timeout_msecs=100` | CPU time per call: guest code and host work for it, not waiting, nor other calls run while it is suspended | [`CallClock`] over [`PollTime`], checked on each epoch tick ([`CallClock::on_epoch`]) |
//! | `memory=32M` | linear memory | [`MemoryLimiter`] (the store's resource limiter) and the pool's slot size ([`MAX_MEMORY`]) |
//! | `fuel=N` | instructions per call | wasmtime's fuel, set before each call |
//! | `max_event_bytes=1M` | event JSON handed to one `deliver` | checked before the call (`driver.rs`) |
//! | `max_txn_msecs=30000` | wall time of a transaction, host calls included | a timeout around the calls (`driver.rs`) |
//! | `init_timeout_msecs=5000` | wall time of loading: instance and `init` | a timeout around the load (`driver.rs`) |
//! | `host_memory=memory/2` | what the host holds for an instance (HTTP fields, bodies, streams, …) | the resource table's capacity ([`Limits::max_resources`]), per-resource caps ([`FIELD_SIZE_LIMIT`], [`OUTGOING_CHUNK`]), and [`HostMemory`] for all instances together |
//!
//! The engine these run on (pooling allocator, epoch interruption) is `engine.rs`.

use std::time::{Duration, Instant};

use mailpush_core::{DriverArgs, InitError};
use wasmtime::{ResourceLimiter, UpdateDeadline};

/// How often the epoch advances; per-call deadlines are measured in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// The largest `memory=` accepted (the pooling allocator reserves this much per slot).
pub const MAX_MEMORY: usize = 1 << 30;

/// How long a guest may run before it yields to the async executor, so a busy guest
/// never holds a runtime thread away from ingest and other drivers.
pub const YIELD_EVERY: Duration = Duration::from_millis(5);

/// The smallest `host_memory`.
pub const MIN_HOST_MEMORY: usize = 2 << 20;

/// The most bytes of one `wasi:http` fields resource (headers or trailers).
pub const FIELD_SIZE_LIMIT: usize = 32 << 10;

/// The most bytes one write to an outgoing body may carry; a body buffers at most two.
pub const OUTGOING_CHUNK: usize = 64 << 10;

/// The most host memory one resource holds: an outgoing body's buffered chunks (fields
/// hold at most [`FIELD_SIZE_LIMIT`], an incoming body one read buffer).
pub const MAX_PER_RESOURCE: usize = 2 * OUTGOING_CHUNK;

/// The limits of one driver.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Guest CPU time per call (host-call time excluded). Key `timeout_msecs`.
    pub timeout: Duration,
    /// Linear memory cap in bytes. Key `memory` (`32M`, `64MiB`, `1048576`).
    pub memory: usize,
    /// Instruction budget per call, if any. Key `fuel`.
    pub fuel: Option<u64>,
    /// Bytes of event JSON handed to one `deliver` call. Key `max_event_bytes`.
    pub max_event_bytes: usize,
    /// Wall-clock bound of a whole transaction, host calls included. Key
    /// `max_txn_msecs`.
    pub max_txn: Duration,
    /// Wall-clock bound of making an instance and running its `init` when the driver is
    /// loaded (start, reload, a tenant's files changing). Key `init_timeout_msecs`.
    pub init_timeout: Duration,
    /// Host memory one instance may hold on the guest's behalf (HTTP fields, requests,
    /// bodies, streams, pollables): it bounds how many host resources the instance may
    /// have at once ([`Limits::max_resources`]). Key `host_memory`; default half of
    /// `memory`, at least 2M.
    pub host_memory: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_millis(100),
            memory: 32 << 20,
            fuel: None,
            max_event_bytes: 1 << 20,
            max_txn: Duration::from_secs(30),
            init_timeout: Duration::from_secs(5),
            host_memory: 16 << 20,
        }
    }
}

impl Limits {
    /// Takes the limit keys out of a driver's args.
    pub fn from_args(args: &mut DriverArgs) -> Result<Self, InitError> {
        let mut s = Limits::default();
        if let Some(d) = args.take_msecs("timeout_msecs", "100")? {
            if d.is_zero() {
                return Err(InitError::of_arg(
                    "timeout_msecs",
                    "timeout_msecs must be at least 1",
                ));
            }
            s.timeout = d;
        }
        if let Some(m) = args.take_size(
            "memory",
            64 << 10..=MAX_MEMORY as u64,
            "a size between 64K and 1G, e.g. memory=32M",
        )? {
            s.memory = m as usize;
        }
        s.fuel = args.take_number("fuel", "10000000")?;
        if let Some(n) = args.take_size("max_event_bytes", 0..=u64::MAX, "a size, e.g. 1M")? {
            s.max_event_bytes = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(d) = args.take_msecs("max_txn_msecs", "30000")? {
            s.max_txn = d;
        }
        if let Some(d) = args.take_msecs("init_timeout_msecs", "5000")? {
            s.init_timeout = d;
        }
        s.host_memory = (s.memory / 2).max(MIN_HOST_MEMORY);
        if let Some(n) = args.take_size(
            "host_memory",
            MIN_HOST_MEMORY as u64..=MAX_MEMORY as u64,
            "a size between 2M and 1G, e.g. host_memory=16M",
        )? {
            s.host_memory = n as usize;
        }
        Ok(s)
    }

    /// How many resources (HTTP fields, requests, bodies, streams, pollables, …) one
    /// instance may hold at once: `host_memory` over the most one resource can hold
    /// ([`MAX_PER_RESOURCE`]).
    pub fn max_resources(&self) -> usize {
        (self.host_memory / MAX_PER_RESOURCE).max(16)
    }

    /// The line for `mailpush check`.
    pub fn describe(&self) -> String {
        format!(
            "limits: timeout_msecs={} memory={}M host_memory={}M ({} host resources) fuel={} max_event_bytes={} max_txn_msecs={} init_timeout_msecs={}",
            self.timeout.as_millis(),
            self.memory >> 20,
            self.host_memory >> 20,
            self.max_resources(),
            self.fuel
                .map(|f| f.to_string())
                .unwrap_or_else(|| "off".into()),
            self.max_event_bytes,
            self.max_txn.as_millis(),
            self.init_timeout.as_millis()
        )
    }
}

/// The host memory all wasm instances of the process may hold together: each instance
/// reserves its `host_memory` while it lives; when the total would be exceeded, no new
/// instance is made (its transaction fails, retryably). `mailpush { wasm_host_memory }`,
/// by default a quarter of the machine's memory.
pub struct HostMemory {
    /// KiB units.
    units: std::sync::Arc<tokio::sync::Semaphore>,
    total_kib: parking_lot::Mutex<usize>,
}

/// One instance's share of [`HostMemory`], given back when it is dropped.
pub struct HostReservation(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

/// No share of [`HostMemory`] is left.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the host memory for all wasm instances is spent (wasm_host_memory={total_mib}M, {want_kib} KiB wanted): too many instances at once; retry later")]
pub struct HostMemorySpent {
    pub total_mib: usize,
    pub want_kib: usize,
}

impl HostMemory {
    /// The process-wide budget.
    pub fn global() -> &'static HostMemory {
        static GLOBAL: std::sync::OnceLock<HostMemory> = std::sync::OnceLock::new();
        GLOBAL.get_or_init(|| {
            let kib = default_host_memory() >> 10;
            HostMemory {
                units: std::sync::Arc::new(tokio::sync::Semaphore::new(kib)),
                total_kib: parking_lot::Mutex::new(kib),
            }
        })
    }

    /// Sets the total (instances already made keep their share).
    pub fn set_total(&self, bytes: usize) {
        let want = (bytes >> 10).clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        let mut total = self.total_kib.lock();
        if want > *total {
            self.units.add_permits(want - *total);
        } else {
            self.units.forget_permits(*total - want);
        }
        *total = want;
    }

    /// Reserves `bytes` for one instance.
    pub fn reserve(&self, bytes: usize) -> Result<HostReservation, HostMemorySpent> {
        let want_kib = bytes.div_ceil(1024).max(1);
        let spent = || HostMemorySpent {
            total_mib: *self.total_kib.lock() >> 10,
            want_kib,
        };
        let n = u32::try_from(want_kib).map_err(|_| spent())?;
        self.units
            .clone()
            .try_acquire_many_owned(n)
            .map(HostReservation)
            .map_err(|_| spent())
    }
}

/// A quarter of the machine's memory (1 GiB where it cannot be read).
pub fn default_host_memory() -> usize {
    // SAFETY: sysconf only reads configuration values.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages > 0 && page > 0 {
        (pages as usize).saturating_mul(page as usize) / 4
    } else {
        1 << 30
    }
}

/// Linear-memory cap, for all of an instance's memories together (a component may hold
/// many core instances, each with a memory of its own: a cap per memory would let it
/// hold that many times `memory=`); records whether a growth was refused (reported as
/// "memory limit").
pub struct MemoryLimiter {
    pub limit: usize,
    pub hit: bool,
    /// The size a memory asked for when it was created, if that alone was over the
    /// limit (the component's *initial* memory, not a growth).
    pub initial_over: Option<usize>,
    /// The bytes of every memory of the store, as grown so far (a growth allowed here
    /// that then fails stays counted: wasmtime reports failures this limiter did not
    /// allow too, so giving back would let a guest grow past the limit).
    total: usize,
}

impl MemoryLimiter {
    pub fn new(limit: usize) -> Self {
        MemoryLimiter {
            limit,
            hit: false,
            initial_over: None,
            total: 0,
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Past the memory's own maximum the growth fails anyway: not charged.
        if maximum.is_some_and(|m| desired > m) {
            return Ok(false);
        }
        let growth = desired.saturating_sub(current);
        let total = self.total.saturating_add(growth);
        if total > self.limit {
            self.hit = true;
            if current == 0 && desired > self.limit {
                self.initial_over = Some(desired);
            }
            return Ok(false);
        }
        self.total = total;
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

/// The time the lane thread has spent on one call: the call's future is polled (by
/// [`charged`]) or, on the synchronous path, runs from [`CallClock::arm`] on. A call
/// suspended — waiting on the network or a clock, or having yielded so the lane's
/// other calls run (tenant handlers share one lane) — is not being polled, so neither
/// its waits nor the other calls' time count; host work done inside a call (logging,
/// building headers, writing to a stream, hashing) does.
#[derive(Debug, Default)]
pub struct PollTime(parking_lot::Mutex<PollState>);

#[derive(Debug, Default, Clone, Copy)]
struct PollState {
    /// Time spent in earlier polls of the call.
    before: Duration,
    /// When the current poll began (`None`: not being polled).
    since: Option<Instant>,
}

impl PollTime {
    /// A new call, running from now.
    fn restart(&self) {
        *self.0.lock() = PollState {
            before: Duration::ZERO,
            since: Some(Instant::now()),
        };
    }

    fn enter(&self) {
        self.0.lock().since = Some(Instant::now());
    }

    fn leave(&self) {
        let mut s = self.0.lock();
        if let Some(t) = s.since.take() {
            s.before += t.elapsed();
        }
    }

    /// The time spent on the call so far.
    pub fn so_far(&self) -> Duration {
        let s = *self.0.lock();
        s.before + s.since.map_or(Duration::ZERO, |t| t.elapsed())
    }
}

/// Runs `call` (a call into a guest on a fiber), charging the time spent polling it to
/// `poll` — nothing while it is suspended.
pub async fn charged<F: std::future::Future>(poll: &PollTime, call: F) -> F::Output {
    let mut call = std::pin::pin!(call);
    std::future::poll_fn(|cx| {
        poll.enter();
        let r = call.as_mut().poll(cx);
        poll.leave();
        r
    })
    .await
}

/// The CPU deadline of one call: the time charged ([`PollTime`]) against its budget.
/// Guest code and host work done for the guest (logging, building headers, copying,
/// hashing) are charged to `timeout_msecs`; waiting on the network or a clock is bounded
/// by the HTTP timeouts and `max_txn_msecs` instead.
#[derive(Debug, Default)]
pub struct CallClock {
    pub poll: std::sync::Arc<PollTime>,
    pub budget: Duration,
    /// Set when the deadline interrupted the guest.
    pub expired: bool,
    /// The store's calls are synchronous ([`super::synchronous`]): at a deadline check
    /// the guest runs on (it cannot yield to the executor) until its budget is spent.
    pub synchronous: bool,
}

impl CallClock {
    /// Re-arms the clock before a call.
    pub fn arm(&mut self, budget: Duration) {
        self.poll.restart();
        self.budget = budget;
        self.expired = false;
    }

    /// Time charged so far in this call.
    pub fn guest_time(&self) -> Duration {
        self.poll.so_far()
    }

    /// The epoch-deadline decision: interrupt once guest time reaches the budget,
    /// otherwise yield to the executor (continue, on the synchronous path) and check
    /// again after the next slice.
    pub fn on_epoch(&mut self) -> UpdateDeadline {
        let used = self.guest_time();
        if used >= self.budget {
            self.expired = true;
            return UpdateDeadline::Interrupt;
        }
        let next = slice(self.budget - used);
        if self.synchronous {
            UpdateDeadline::Continue(next)
        } else {
            UpdateDeadline::Yield(next)
        }
    }
}

/// Ticks for `d` (at least one).
pub fn ticks(d: Duration) -> u64 {
    (d.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64
}

/// Ticks until the next deadline check: the remaining budget, at most [`YIELD_EVERY`].
pub fn slice(remaining: Duration) -> u64 {
    ticks(remaining.min(YIELD_EVERY))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_memory_budget_is_shared_and_given_back() {
        let budget = HostMemory {
            units: std::sync::Arc::new(tokio::sync::Semaphore::new(4096)),
            total_kib: parking_lot::Mutex::new(4096),
        };
        let a = budget.reserve(3 << 20).unwrap();
        let e = budget.reserve(2 << 20).err().unwrap();
        assert_eq!(e.total_mib, 4);
        drop(a);
        let _b = budget.reserve(2 << 20).unwrap();
        budget.set_total(8 << 20);
        let _c = budget.reserve(5 << 20).unwrap();
    }

    /// `memory=` bounds an instance's memories together: a component of several core
    /// instances, each with a memory growing to just under the limit, is refused once
    /// their sum would pass it (each alone was allowed before).
    #[test]
    fn the_memory_limit_counts_every_memory_of_the_instance() {
        let mut l = MemoryLimiter::new(10 << 20);
        assert!(l.memory_growing(0, 6 << 20, None).unwrap(), "one memory");
        assert!(
            !l.memory_growing(0, 6 << 20, None).unwrap(),
            "a second memory"
        );
        assert!(l.hit);
        assert_eq!(l.initial_over, None, "neither alone is over");
        assert!(
            l.memory_growing(0, 3 << 20, None).unwrap(),
            "within the rest"
        );
        assert!(
            !l.memory_growing(3 << 20, 5 << 20, None).unwrap(),
            "grown past it"
        );
        assert!(
            l.memory_growing(6 << 20, 7 << 20, None).unwrap(),
            "the last MiB"
        );
        // Past a memory's own maximum: refused, not charged (and not the limit's doing).
        let mut l = MemoryLimiter::new(10 << 20);
        assert!(!l.memory_growing(0, 6 << 20, Some(1 << 20)).unwrap());
        assert!(!l.hit);
        assert!(
            l.memory_growing(0, 6 << 20, None).unwrap(),
            "nothing was charged"
        );
        let mut l = MemoryLimiter::new(10 << 20);
        assert!(!l.memory_growing(0, 11 << 20, None).unwrap());
        assert_eq!(l.initial_over, Some(11 << 20));
    }

    #[test]
    fn keys_and_their_errors() {
        let mut args = DriverArgs::parse("timeout_msecs=250 memory=8M fuel=1000 url=x");
        let l = Limits::from_args(&mut args).unwrap();
        assert_eq!(l.timeout, Duration::from_millis(250));
        assert_eq!(l.memory, 8 << 20);
        assert_eq!(l.host_memory, 4 << 20, "half of memory");
        assert_eq!(l.max_resources(), 32);
        assert_eq!(l.fuel, Some(1000));
        assert_eq!(args.get("url"), Some("x"));
        for bad in [
            "memory=lots",
            "memory=1G5",
            "memory=2G",
            "timeout_msecs=0",
            "fuel=-1",
        ] {
            assert!(
                Limits::from_args(&mut DriverArgs::parse(bad)).is_err(),
                "{bad}"
            );
        }
    }
}
