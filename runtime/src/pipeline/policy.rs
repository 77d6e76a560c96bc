//! Delivery policy per driver: the retry schedule, the circuit breaker's thresholds and
//! the concurrency. Set with generic keys on any driver line, taken out before the
//! driver sees its args (one typed reading, [`DeliveryPolicy::from_args`]):
//!
//! - `retry=5s,30s,2m,10m,1h` — delays before the 1st, 2nd, … retry (± 20 % jitter);
//!   `retry=none` for no retries;
//! - `retry_max_age=24h` — give up on a transaction older than this (dead letter,
//!   "expired"), whatever holds it;
//! - `hold_max=DURATION` — the longest a user's later transaction waits behind an
//!   earlier one that failed and waits for a retry; then the earlier one is given up
//!   (dead letter, "skipped") and the later goes. Unset: strict order, no skipping;
//! - `breaker_ratio=0.5 breaker_window=20 breaker_min=5 breaker_open=30s` — see
//!   [`crate::breaker::from_args`]; the same thresholds apply to the driver's
//!   per-endpoint breakers (wasm drivers: one per `scheme://host:port` they call);
//! - `concurrency=N` — transactions (of different users) delivered at once.

use std::time::Duration;

use mailpush_core::backoff::{jitter, seed};
use mailpush_core::{units, BreakerConfig, DriverArgs, InitError};

/// Retry schedule and bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub schedule: Vec<Duration>,
    pub max_age: Duration,
    /// Longest `Retry-After` honoured.
    pub retry_after_cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            schedule: [5, 30, 120, 600, 3600]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            max_age: Duration::from_secs(24 * 3600),
            retry_after_cap: Duration::from_secs(3600),
        }
    }
}

/// The delivery policy of one driver.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeliveryPolicy {
    pub retry: RetryPolicy,
    pub breaker: BreakerConfig,
    /// `concurrency=N`: most transactions (of different users) delivered at once; `None`
    /// for the driver's own default ([`mailpush_core::Driver::concurrency`]).
    pub concurrency: Option<usize>,
    /// `hold_max=`: how long a user's later transaction may wait behind a failing one;
    /// `None`: strict order.
    pub hold_max: Option<Duration>,
    /// Which of the freshness keys the config line set (the driver's own defaults,
    /// [`mailpush_core::Driver::freshness`], fill the others).
    pub set_by_config: SetByConfig,
    /// Delivered once ([`DeliveryPolicy::once`], `mailpush send`): nothing waits, not
    /// even for an open endpoint circuit.
    pub once: bool,
}

/// Which freshness keys a driver's config line set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SetByConfig {
    pub max_age: bool,
    pub hold_max: bool,
}

impl DeliveryPolicy {
    /// Takes the policy keys out of a driver's args.
    pub fn from_args(args: &mut DriverArgs) -> Result<Self, InitError> {
        let mut p = DeliveryPolicy::default();
        if let Some(schedule) =
            args.take_with("retry", "`none` or durations such as 5s,30s,2m,1h", |v| {
                if v == "none" {
                    return Some(Vec::new());
                }
                v.split(',').map(units::parse_duration).collect()
            })?
        {
            p.retry.schedule = schedule;
        }
        if let Some(d) = args.take_with(
            "retry_max_age",
            "a duration from 1s to 8760h (a year), e.g. 24h",
            |v| {
                units::parse_duration(v).filter(|d| {
                    (Duration::from_secs(1)..=Duration::from_secs(8760 * 3600)).contains(d)
                })
            },
        )? {
            p.retry.max_age = d;
            p.set_by_config.max_age = true;
        }
        if let Some(d) =
            args.take_with("hold_max", "a duration up to 8760h, e.g. 0s or 30s", |v| {
                units::parse_duration(v).filter(|d| *d <= Duration::from_secs(8760 * 3600))
            })?
        {
            p.hold_max = Some(d);
            p.set_by_config.hold_max = true;
        }
        p.breaker = crate::breaker::from_args(args)?;
        p.concurrency = args.take_with(
            "concurrency",
            "a number of transactions from 1 to 1024",
            |v| v.parse::<usize>().ok().filter(|n| (1..=1024).contains(n)),
        )?;
        Ok(p)
    }

    /// Fills what the config line did not set from the driver's own defaults.
    pub fn with_driver_defaults(mut self, f: mailpush_core::Freshness) -> Self {
        if !self.set_by_config.max_age {
            if let Some(d) = f.max_age {
                self.retry.max_age = d;
            }
        }
        if !self.set_by_config.hold_max {
            self.hold_max = f.hold_max;
        }
        self
    }

    /// The same policy with nothing retried and no waiting: a failure is final (a dead
    /// letter, with the spool), the breakers never open (so nothing is deferred). What
    /// `mailpush send` uses: it delivers once and reports. (`retry_max_age` stays: a
    /// transaction is delivered at once, long before it could expire.)
    pub fn once(mut self) -> Self {
        self.retry.schedule.clear();
        self.breaker.min = usize::MAX;
        self.once = true;
        self
    }

    /// The delay before retry number `attempt` (1-based) of the transaction `id`, with
    /// ±20 % jitter; `None` when the schedule is exhausted. A server's `Retry-After` wins
    /// within the cap.
    pub fn backoff(
        &self,
        attempt: usize,
        retry_after: Option<Duration>,
        id: &str,
    ) -> Option<Duration> {
        let base = *self.retry.schedule.get(attempt.checked_sub(1)?)?;
        if let Some(ra) = retry_after {
            return Some(ra.min(self.retry.retry_after_cap));
        }
        Some(jitter(base, -0.2, 0.2, seed(id, attempt as u64)))
    }

    /// Whether a transaction an open endpoint circuit refused waits for the circuit (as
    /// under `mailpush run`, `retry=none` included) or fails like any refused delivery
    /// (delivered [`Self::once`]: `mailpush send` reports it at once rather than waiting
    /// out the circuit's open time per transaction).
    pub fn defers(&self) -> bool {
        !self.once
    }

    /// How long a transaction deferred by an open endpoint circuit waits: the circuit's
    /// own wait (within the cap), plus up to 10 % so that the transactions one circuit
    /// held back do not all come back in the same instant.
    pub fn deferral(&self, wait: Option<Duration>, id: &str, attempt: usize) -> Duration {
        let wait = wait.unwrap_or_default().min(self.retry.retry_after_cap);
        jitter(wait, 0.0, 0.1, seed(id, attempt as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_and_jitter() {
        let mut args = DriverArgs::parse("retry=1s,10s retry_max_age=1h other=x");
        let p = DeliveryPolicy::from_args(&mut args).unwrap();
        assert_eq!(args.get("other"), Some("x"));
        assert!(!args.has("retry"));
        for n in 0..100 {
            let d = p.backoff(1, None, &format!("txn{n}")).unwrap();
            assert!(
                d >= Duration::from_millis(800) && d <= Duration::from_millis(1200),
                "{d:?}"
            );
        }
        assert_eq!(p.backoff(3, None, "t"), None);
        assert_eq!(
            p.backoff(1, Some(Duration::from_secs(7)), "t"),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            p.backoff(1, Some(Duration::from_secs(99999)), "t"),
            Some(Duration::from_secs(3600))
        );
        assert!(DeliveryPolicy::from_args(&mut DriverArgs::parse("retry=5x")).is_err());
    }

    #[test]
    fn bad_values_name_the_key() {
        for (line, key) in [
            ("retry=5x", "retry=5x: expected"),
            (
                "retry_max_age=soon",
                "retry_max_age=soon: expected a duration",
            ),
            ("breaker_ratio=2", "breaker_ratio=2: expected a ratio"),
            ("breaker_open=30", "breaker_open=30: expected a duration"),
            (
                "concurrency=0",
                "concurrency=0: expected a number of transactions",
            ),
        ] {
            let e = DeliveryPolicy::from_args(&mut DriverArgs::parse(line)).unwrap_err();
            assert!(e.message.starts_with(key), "{line}: {}", e.message);
        }
    }

    #[test]
    fn once_retries_nothing_and_never_breaks() {
        let p = DeliveryPolicy::default().once();
        assert_eq!(p.backoff(1, None, "t"), None);
        assert_eq!(p.breaker.min, usize::MAX);
        assert!(!p.defers());
        assert!(DeliveryPolicy::default().defers());
        let mut args = DriverArgs::parse("retry=none");
        assert!(
            DeliveryPolicy::from_args(&mut args).unwrap().defers(),
            "retry=none under `run` still waits for an open circuit"
        );
        assert!(
            p.retry.max_age > Duration::ZERO,
            "nothing may expire at once"
        );
    }
}
