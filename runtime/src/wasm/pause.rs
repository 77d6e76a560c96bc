//! The pause of a failing driver: after `pause_after` consecutive failed transactions
//! the driver waits `pause_msecs`, doubling per further failure up to 5 minutes, so a
//! broken driver does not burn CPU on every transaction. Keys: `pause_after=5`,
//! `pause_msecs=1000`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mailpush_core::backoff::Exponential;
use mailpush_core::{DriverArgs, InitError};
use parking_lot::Mutex;

use super::log::DriverTag;
use super::stats::WasmStats;

/// The longest pause.
pub const MAX_PAUSE: Duration = Duration::from_secs(300);

/// The pause keys of one driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PauseSettings {
    /// Consecutive failures before the driver is paused. Key `pause_after`.
    pub pause_after: u32,
    /// First pause; doubles per further failure up to [`MAX_PAUSE`]. Key `pause_msecs`.
    pub pause: Duration,
}

impl Default for PauseSettings {
    fn default() -> Self {
        PauseSettings {
            pause_after: 5,
            pause: Duration::from_secs(1),
        }
    }
}

impl PauseSettings {
    /// Takes the pause keys out of a driver's args.
    pub fn from_args(args: &mut DriverArgs) -> Result<Self, InitError> {
        let mut s = PauseSettings::default();
        if let Some(n) = args.take_number::<u32>("pause_after", "5")? {
            s.pause_after = n.max(1);
        }
        if let Some(d) = args.take_msecs("pause_msecs", "1000")? {
            s.pause = d;
        }
        Ok(s)
    }

    /// The line for `mailpush check`.
    pub fn describe(&self) -> String {
        format!(
            "pause: after {} consecutive failures, {} ms doubling up to {} s",
            self.pause_after,
            self.pause.as_millis(),
            MAX_PAUSE.as_secs()
        )
    }
}

struct PauseState {
    consecutive: u32,
    paused_until: Option<Instant>,
}

/// One driver's pause.
pub struct Pause {
    settings: PauseSettings,
    state: Mutex<PauseState>,
}

impl Pause {
    pub fn new(settings: PauseSettings) -> Self {
        Pause {
            settings,
            state: Mutex::new(PauseState {
                consecutive: 0,
                paused_until: None,
            }),
        }
    }

    /// Waits out a pause, if one is on.
    pub async fn wait_if_paused(&self, tag: &DriverTag) {
        let until = self.state.lock().paused_until;
        if let Some(until) = until {
            let now = Instant::now();
            if until > now {
                tokio::time::sleep(until - now).await;
            }
            tracing::info!(driver = tag.number, name = %tag.name, "driver resumed after pause");
            self.state.lock().paused_until = None;
        }
    }

    /// Records a transaction's outcome; a failure may start a pause.
    pub fn record(&self, ok: bool, tag: &DriverTag, stats: &WasmStats) {
        let mut p = self.state.lock();
        if ok {
            p.consecutive = 0;
            return;
        }
        p.consecutive += 1;
        let k = self.settings.pause_after;
        if p.consecutive >= k {
            let backoff = Exponential {
                first: self.settings.pause,
                max: MAX_PAUSE,
            };
            let pause = backoff.delay((p.consecutive - k).min(16));
            p.paused_until = Some(Instant::now() + pause);
            stats.pauses.fetch_add(1, Ordering::Relaxed);
            stats
                .last_pause_ms
                .store(pause.as_millis() as u64, Ordering::Relaxed);
            tracing::warn!(
                driver = tag.number,
                name = %tag.name,
                "driver paused for {:?} after {} consecutive failures",
                pause,
                p.consecutive
            );
        }
    }
}
