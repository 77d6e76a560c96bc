//! Delivery policy per driver: the retry schedule and the circuit breaker. Set with
//! generic keys on any driver line, taken out before the driver sees its args:
//!
//! - `retry=5s,30s,2m,10m,1h` — delays before the 1st, 2nd, … retry (± 20 % jitter);
//! - `retry_max_age=24h` — give up on a transaction older than this;
//! - `breaker_ratio=0.5 breaker_window=20 breaker_min=5 breaker_open=30s` — open the
//!   circuit when at least `breaker_min` of the last `breaker_window` outcomes exist and
//!   the failure ratio reaches `breaker_ratio`; probe again after `breaker_open`.
//!   The same thresholds apply to the driver's per-endpoint breakers (wasm drivers:
//!   one per `scheme://host:port` they call; see `mailpush_core::breaker`).

use std::time::Duration;

pub use mailpush_core::breaker::{BreakerConfig, CircuitBreaker, CircuitState};
use mailpush_core::{DriverArgs, InitError};

/// Keys this module takes from driver lines.
pub const POLICY_KEYS: &[&str] = &[
    "retry",
    "retry_max_age",
    "breaker_ratio",
    "breaker_window",
    "breaker_min",
    "breaker_open",
];

/// Parses `5s`, `30s`, `2m`, `10m`, `1h`, `1d`, `250ms`.
pub fn parse_duration(v: &str) -> Option<Duration> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = v.split_at(split);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86400),
        _ => return None,
    })
}

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
            schedule: ["5s", "30s", "2m", "10m", "1h"]
                .iter()
                .filter_map(|s| parse_duration(s))
                .collect(),
            max_age: Duration::from_secs(24 * 3600),
            retry_after_cap: Duration::from_secs(3600),
        }
    }
}

/// Takes the `breaker_*` keys out of args (tenant handlers' `.conf` files use them for
/// their endpoint breakers).
pub fn breaker_from_args(args: &mut DriverArgs) -> Result<BreakerConfig, InitError> {
    let mut b = BreakerConfig::default();
    let dur = |k: &str, v: &str| {
        parse_duration(v)
            .ok_or_else(|| InitError(format!("{k}={v}: expected a duration such as 30s, 2m, 1h")))
    };
    if let Some(v) = args.take("breaker_ratio") {
        b.ratio = v
            .parse::<f64>()
            .ok()
            .filter(|r| *r > 0.0 && *r <= 1.0)
            .ok_or_else(|| {
                InitError(format!(
                    "breaker_ratio={v}: expected a ratio in (0, 1], e.g. 0.5"
                ))
            })?;
    }
    if let Some(v) = args.take("breaker_window") {
        b.window = v
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| InitError(format!("breaker_window={v}: expected a count")))?;
    }
    if let Some(v) = args.take("breaker_min") {
        b.min = v
            .parse()
            .map_err(|_| InitError(format!("breaker_min={v}: expected a count")))?;
    }
    if let Some(v) = args.take("breaker_open") {
        b.open = dur("breaker_open", &v)?;
    }
    Ok(b)
}

/// Both, for one driver.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeliveryPolicy {
    pub retry: RetryPolicy,
    pub breaker: BreakerConfig,
    /// `concurrency=N`: most transactions (of different users) delivered at once; `None`
    /// for the driver's own default ([`mailpush_core::Driver::concurrency`]).
    pub concurrency: Option<usize>,
}

impl DeliveryPolicy {
    /// Takes the policy keys out of a driver's args.
    pub fn from_args(args: &mut DriverArgs) -> Result<Self, InitError> {
        let mut p = DeliveryPolicy::default();
        let dur = |k: &str, v: &str| {
            parse_duration(v).ok_or_else(|| {
                InitError(format!("{k}={v}: expected a duration such as 30s, 2m, 1h"))
            })
        };
        if let Some(v) = args.take("retry") {
            p.retry.schedule = if v == "none" {
                Vec::new()
            } else {
                v.split(',')
                    .map(|s| dur("retry", s))
                    .collect::<Result<_, _>>()?
            };
        }
        if let Some(v) = args.take("retry_max_age") {
            p.retry.max_age = dur("retry_max_age", &v)?;
        }
        p.breaker = breaker_from_args(args)?;
        if let Some(v) = args.take("concurrency") {
            p.concurrency = Some(match v.parse::<usize>() {
                Ok(n) if (1..=1024).contains(&n) => n,
                _ => {
                    return Err(InitError(format!(
                        "concurrency={v}: expected a number of transactions from 1 to 1024"
                    )))
                }
            });
        }
        Ok(p)
    }

    /// The delay before retry number `attempt` (1-based), with ±20 % jitter; `None`
    /// when the schedule is exhausted. A server's `Retry-After` wins within the cap.
    pub fn backoff(
        &self,
        attempt: usize,
        retry_after: Option<Duration>,
        seed: u64,
    ) -> Option<Duration> {
        let base = *self.retry.schedule.get(attempt.checked_sub(1)?)?;
        if let Some(ra) = retry_after {
            return Some(ra.min(self.retry.retry_after_cap));
        }
        // ±20 % jitter from a cheap hash of the seed.
        let x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
        let frac = (x % 4001) as f64 / 10_000.0 - 0.2; // -0.2 ..= +0.2
        Some(base.mul_f64(1.0 + frac))
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
        for seed in 0..100 {
            let d = p.backoff(1, None, seed).unwrap();
            assert!(
                d >= Duration::from_millis(800) && d <= Duration::from_millis(1200),
                "{d:?}"
            );
        }
        assert_eq!(p.backoff(3, None, 1), None);
        assert_eq!(
            p.backoff(1, Some(Duration::from_secs(7)), 1),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            p.backoff(1, Some(Duration::from_secs(99999)), 1),
            Some(Duration::from_secs(3600))
        );
        assert!(DeliveryPolicy::from_args(&mut DriverArgs::parse("retry=5x")).is_err());
    }
}
