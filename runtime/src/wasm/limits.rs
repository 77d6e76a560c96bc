//! Capability: the limits every call into a driver runs under — guest CPU time, linear
//! memory, optional fuel, the event data handed to one call, the wall time of a whole
//! transaction — and where each is enforced:
//!
//! | key | bound | enforced by |
//! |---|---|---|
//! | `timeout_msecs=100` | guest time per call (wall time minus host calls) | [`CallClock`], checked on each epoch tick ([`CallClock::on_epoch`]) |
//! | `memory=32M` | linear memory | [`MemoryLimiter`] (the store's resource limiter) and the pool's slot size ([`MAX_MEMORY`]) |
//! | `fuel=N` | instructions per call | wasmtime's fuel, set before each call |
//! | `max_event_bytes=1M` | event JSON handed to one `deliver` | checked before the call (`driver.rs`) |
//! | `max_txn_msecs=30000` | wall time of a transaction, host calls included | a timeout around the calls (`driver.rs`) |
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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_millis(100),
            memory: 32 << 20,
            fuel: None,
            max_event_bytes: 1 << 20,
            max_txn: Duration::from_secs(30),
        }
    }
}

impl Limits {
    /// Takes the limit keys out of a driver's args.
    pub fn from_args(args: &mut DriverArgs) -> Result<Self, InitError> {
        let mut s = Limits::default();
        if let Some(d) = args.take_msecs("timeout_msecs", "100")? {
            if d.is_zero() {
                return Err(InitError("timeout_msecs must be at least 1".into()));
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
        Ok(s)
    }

    /// The line for `mailpush check`.
    pub fn describe(&self) -> String {
        format!(
            "limits: timeout_msecs={} memory={}M fuel={} max_event_bytes={} max_txn_msecs={}",
            self.timeout.as_millis(),
            self.memory >> 20,
            self.fuel
                .map(|f| f.to_string())
                .unwrap_or_else(|| "off".into()),
            self.max_event_bytes,
            self.max_txn.as_millis()
        )
    }
}

/// Linear-memory cap; records whether a growth was refused (reported as "memory limit").
pub struct MemoryLimiter {
    pub limit: usize,
    pub hit: bool,
}

impl MemoryLimiter {
    pub fn new(limit: usize) -> Self {
        MemoryLimiter { limit, hit: false }
    }
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

    /// The epoch-deadline decision: interrupt once guest time reaches the budget,
    /// otherwise yield to the executor and check again after the next slice.
    pub fn on_epoch(&mut self) -> UpdateDeadline {
        let used = self.guest_time();
        if used >= self.budget {
            self.expired = true;
            return UpdateDeadline::Interrupt;
        }
        UpdateDeadline::Yield(slice(self.budget - used))
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
    fn keys_and_their_errors() {
        let mut args = DriverArgs::parse("timeout_msecs=250 memory=8M fuel=1000 url=x");
        let l = Limits::from_args(&mut args).unwrap();
        assert_eq!(l.timeout, Duration::from_millis(250));
        assert_eq!(l.memory, 8 << 20);
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
