//! Backoff and jitter, the one implementation every retry in mailpush uses: the
//! runtime's retry schedule and deferrals, the ox driver's retries within a delivery,
//! and the pause of a failing wasm driver.
//!
//! Jitter is deterministic: it comes from a hash of a seed (a transaction id and an
//! attempt number, [`seed`]), so the transactions held back by one failure spread out
//! without a random source, and a test can assert exact bounds.

use std::time::Duration;

/// Exponential backoff: `first` for step 0, doubled for each further step, never more
/// than `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exponential {
    pub first: Duration,
    pub max: Duration,
}

impl Exponential {
    /// The delay of step `step` (0-based).
    pub fn delay(&self, step: u32) -> Duration {
        let factor = 1u32.checked_shl(step.min(31)).unwrap_or(u32::MAX);
        self.first.saturating_mul(factor).min(self.max)
    }
}

/// A seed for [`jitter`] from an identifier and an attempt number (FNV-1a).
pub fn seed(id: &str, attempt: u64) -> u64 {
    id.bytes().fold(attempt ^ 0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// `d` scaled by a factor in `[1 + low, 1 + high]` chosen by `seed` (e.g. `-0.2, 0.2`
/// for ±20 %, `0.0, 0.1` for up to +10 %).
pub fn jitter(d: Duration, low: f64, high: f64, seed: u64) -> Duration {
    // Mix the seed so that neighbouring seeds land far apart, then take a fraction in
    // [0, 1] with a resolution of 1/10000.
    let x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
    let unit = (x % 10_001) as f64 / 10_000.0;
    d.mul_f64(1.0 + low + (high - low) * unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_doubles_up_to_the_cap() {
        let b = Exponential {
            first: Duration::from_millis(50),
            max: Duration::from_secs(1),
        };
        let ms: Vec<u128> = (0..7).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(ms, [50, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_within_its_bounds_and_spreads() {
        let d = Duration::from_secs(10);
        let mut seen = std::collections::BTreeSet::new();
        for n in 0..1000 {
            let j = jitter(d, -0.2, 0.2, seed("txn", n));
            assert!(
                j >= Duration::from_secs(8) && j <= Duration::from_secs(12),
                "{j:?}"
            );
            seen.insert(j.as_millis() / 100);
        }
        assert!(seen.len() > 30, "jitter spreads: {} buckets", seen.len());
        for n in 0..100 {
            let j = jitter(d, 0.0, 0.1, n);
            assert!(j >= d && j <= Duration::from_secs(11));
        }
    }
}
