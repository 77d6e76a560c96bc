//! Capability: the log. A driver writes lines through `mailpush:driver/host.log`; the
//! host's warnings about its calls count against the same budget. Keys:
//!
//! - `max_log_lines=100` — lines one transaction may write; the rest are counted and
//!   dropped;
//! - `log_lines_per_sec=100`, `log_burst=1000` — the driver-wide rate (all its
//!   instances and transactions): a token bucket.
//!
//! A line is capped at [`MAX_LINE`] bytes. Guest lines go to the `mailpush::wasm::guest`
//! target with the driver's number, name and the transaction id.

use std::sync::Arc;
use std::time::Instant;

pub use mailpush_core::text::{cap, escape_controls};
use mailpush_core::{DriverArgs, InitError};
use parking_lot::Mutex;

use super::bindings::mailpush::driver::host::Level;

/// The longest line a driver can write; longer ones are cut.
pub const MAX_LINE: usize = 4096;

/// Who is running: for log tags.
#[derive(Debug, Clone)]
pub struct DriverTag {
    pub number: u32,
    pub name: String,
}

/// The log keys of one driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// Log lines a transaction may write; the rest are counted and dropped. Key
    /// `max_log_lines`.
    pub max_log_lines: u32,
    /// Driver-wide rate of log lines (all instances and transactions together): a
    /// token bucket refilled at this many lines per second. Key `log_lines_per_sec`.
    pub log_lines_per_sec: u32,
    /// The most log lines the driver may write in a burst. Key `log_burst`.
    pub log_burst: u32,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            max_log_lines: 100,
            log_lines_per_sec: 100,
            log_burst: 1000,
        }
    }
}

impl LogSettings {
    /// Takes the log keys out of a driver's args.
    pub fn from_args(args: &mut DriverArgs) -> Result<Self, InitError> {
        let mut s = LogSettings::default();
        if let Some(n) = args.take_number("max_log_lines", "100")? {
            s.max_log_lines = n;
        }
        if let Some(n) = args.take_number("log_lines_per_sec", "100")? {
            s.log_lines_per_sec = n;
        }
        if let Some(n) = args.take_number("log_burst", "1000")? {
            s.log_burst = n;
        }
        Ok(s)
    }

    /// The line for `mailpush check`.
    pub fn describe(&self) -> String {
        format!(
            "log: max_log_lines={} per transaction, log_lines_per_sec={} log_burst={} per driver, lines cut at {MAX_LINE} bytes",
            self.max_log_lines, self.log_lines_per_sec, self.log_burst
        )
    }
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
        let mut state = self.state.lock();
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

    /// Ends a transaction: returns how many lines it had dropped and starts afresh.
    pub fn end_transaction(&mut self) -> u32 {
        let dropped = self.dropped;
        self.written = 0;
        self.dropped = 0;
        dropped
    }
}

/// Whether one more line may be written under `log` (counting it either way).
pub fn admit(log: &SharedLog) -> bool {
    log.lock().admit()
}

/// Writes one line the guest logged, if its budget admits it.
pub fn guest_line(
    tag: &DriverTag,
    txn: Option<&str>,
    log: &SharedLog,
    level: Level,
    message: String,
) {
    if !admit(log) {
        return;
    }
    let message = escape_controls(&cap(message, MAX_LINE));
    let txn = txn.unwrap_or("-");
    let (n, name) = (tag.number, tag.name.as_str());
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
        let mut b = log.lock();
        assert_eq!((b.written, b.dropped), (2, 3));
        assert_eq!(b.end_transaction(), 3);
        assert_eq!((b.written, b.dropped), (0, 0));
    }

    #[test]
    fn keys_and_their_errors() {
        let mut args = DriverArgs::parse("max_log_lines=5 log_burst=7 other=x");
        let s = LogSettings::from_args(&mut args).unwrap();
        assert_eq!(
            (s.max_log_lines, s.log_lines_per_sec, s.log_burst),
            (5, 100, 7)
        );
        assert_eq!(args.get("other"), Some("x"));
        for bad in ["log_lines_per_sec=fast", "log_burst=-5", "max_log_lines=x"] {
            assert!(
                LogSettings::from_args(&mut DriverArgs::parse(bad)).is_err(),
                "{bad}"
            );
        }
    }
}
