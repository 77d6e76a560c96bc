//! Circuit breakers: one over a driver's transaction outcomes (kept by its delivery
//! lane, [`crate::pipeline`]) and, for wasm drivers that call HTTP endpoints, one per
//! endpoint ([`EndpointBreakers`]) so that one dead endpoint is not hammered while the
//! driver's other endpoints keep working. The thresholds ([`BreakerConfig`]) and the
//! states drivers report ([`CircuitState`]) are part of the driver contract
//! (`mailpush_core::circuit`); the machinery is the runtime's.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

pub use mailpush_core::circuit::{BreakerConfig, CircuitState};
use mailpush_core::{DriverArgs, InitError};
use parking_lot::Mutex;

/// The keys [`from_args`] reads.
pub const BREAKER_KEYS: &[&str] = &[
    "breaker_ratio",
    "breaker_window",
    "breaker_min",
    "breaker_open",
];

/// Takes the `breaker_*` keys out of a driver's args (or a tenant handler's `.conf`):
/// `breaker_ratio=0.5 breaker_window=20 breaker_min=5 breaker_open=30s` — open the circuit
/// when at least `breaker_min` of the last `breaker_window` outcomes exist and the failure
/// ratio reaches `breaker_ratio`; probe again after `breaker_open`.
pub fn from_args(args: &mut DriverArgs) -> Result<BreakerConfig, InitError> {
    let mut b = BreakerConfig::default();
    if let Some(r) = args.take_with("breaker_ratio", "a ratio in (0, 1], e.g. 0.5", |v| {
        v.parse::<f64>().ok().filter(|r| *r > 0.0 && *r <= 1.0)
    })? {
        b.ratio = r;
    }
    if let Some(n) = args.take_with("breaker_window", "a count", |v| {
        v.parse::<usize>().ok().filter(|n| *n > 0)
    })? {
        b.window = n;
    }
    if let Some(n) = args.take_with("breaker_min", "a count", |v| v.parse().ok())? {
        b.min = n;
    }
    if let Some(d) = args.take_duration("breaker_open")? {
        b.open = d;
    }
    Ok(b)
}

/// A circuit breaker over the latest outcomes of one driver or endpoint.
#[derive(Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    outcomes: VecDeque<bool>,
    state: CircuitState,
    opened_at: Option<Instant>,
}

impl CircuitBreaker {
    pub fn new(config: BreakerConfig) -> Self {
        CircuitBreaker {
            config,
            outcomes: VecDeque::new(),
            state: CircuitState::Closed,
            opened_at: None,
        }
    }

    /// The state now (an open circuit turns half-open when its time is up).
    pub fn state(&mut self, now: Instant) -> CircuitState {
        if self.state == CircuitState::Open
            && self
                .opened_at
                .is_some_and(|t| now.duration_since(t) >= self.config.open)
        {
            self.state = CircuitState::HalfOpen;
        }
        self.state
    }

    /// When an open circuit turns half-open.
    pub fn reopens_at(&self) -> Option<Instant> {
        match self.state {
            CircuitState::Open => self.opened_at.map(|t| t + self.config.open),
            _ => None,
        }
    }

    /// Records an outcome; returns the new state if it changed.
    pub fn record(&mut self, ok: bool, now: Instant) -> Option<CircuitState> {
        let before = self.state(now);
        match before {
            CircuitState::HalfOpen => {
                if ok {
                    self.state = CircuitState::Closed;
                    self.outcomes.clear();
                } else {
                    self.state = CircuitState::Open;
                    self.opened_at = Some(now);
                }
            }
            _ => {
                self.outcomes.push_back(ok);
                while self.outcomes.len() > self.config.window {
                    self.outcomes.pop_front();
                }
                let failures = self.outcomes.iter().filter(|o| !**o).count();
                if self.outcomes.len() >= self.config.min
                    && failures as f64 / self.outcomes.len() as f64 >= self.config.ratio
                {
                    self.state = CircuitState::Open;
                    self.opened_at = Some(now);
                }
            }
        }
        (self.state != before).then_some(self.state)
    }
}

/// Most endpoints tracked per driver; beyond it, closed circuits are forgotten first.
const MAX_ENDPOINTS: usize = 1024;

struct Endpoint {
    breaker: CircuitBreaker,
    /// When the single half-open probe was let through (a probe whose outcome never
    /// arrives, because its caller was cancelled, is abandoned after the open time).
    probe_started: Option<Instant>,
}

/// Whether a request to an endpoint may go out now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Send it. `probe`: the circuit is half-open and this request is its one probe —
    /// record its outcome with `probe = true`, or [`EndpointBreakers::abandon_probe`] if
    /// it never reaches the endpoint.
    Send { probe: bool },
    /// The circuit is open: do not contact the endpoint; try again after this long.
    Refuse { retry_in: Duration },
}

/// While a probe is out, other requests are told to come back after at most this long
/// (the probe's outcome decides for them).
const PROBE_POLL: Duration = Duration::from_secs(1);

/// One circuit breaker per endpoint (`scheme://host:port`) of one driver, all with the
/// driver's thresholds. While an endpoint's circuit is open its requests fail at once
/// without touching the network; when the open time is up, one request is let through
/// as the probe and its outcome closes or re-opens the circuit. Outcomes of requests
/// that were already out when the circuit opened are ignored, as are outcomes other
/// than the probe's while it is half-open.
pub struct EndpointBreakers {
    config: BreakerConfig,
    endpoints: Mutex<HashMap<String, Endpoint>>,
}

impl EndpointBreakers {
    pub fn new(config: BreakerConfig) -> Self {
        EndpointBreakers {
            config,
            endpoints: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, HashMap<String, Endpoint>> {
        self.endpoints.lock()
    }

    /// Asks to send a request to `endpoint`.
    pub fn admit(&self, endpoint: &str, now: Instant) -> Admission {
        let mut map = self.lock();
        let Some(e) = map.get_mut(endpoint) else {
            return Admission::Send { probe: false };
        };
        match e.breaker.state(now) {
            CircuitState::Closed => Admission::Send { probe: false },
            CircuitState::Open => Admission::Refuse {
                retry_in: e
                    .breaker
                    .reopens_at()
                    .map(|t| t.saturating_duration_since(now))
                    .unwrap_or_default(),
            },
            CircuitState::HalfOpen => match e.probe_started {
                Some(t) if now.duration_since(t) < self.config.open => Admission::Refuse {
                    retry_in: (t + self.config.open)
                        .saturating_duration_since(now)
                        .min(PROBE_POLL),
                },
                _ => {
                    e.probe_started = Some(now);
                    Admission::Send { probe: true }
                }
            },
        }
    }

    /// Records the outcome of a request to `endpoint` (`probe` as [`Admission::Send`]
    /// said); returns the new state when it changed.
    pub fn record(
        &self,
        endpoint: &str,
        ok: bool,
        now: Instant,
        probe: bool,
    ) -> Option<CircuitState> {
        let mut map = self.lock();
        if !map.contains_key(endpoint) {
            if ok {
                return None; // nothing to remember about a healthy endpoint
            }
            if map.len() >= MAX_ENDPOINTS {
                map.retain(|_, e| e.breaker.state(now) != CircuitState::Closed);
                if map.len() >= MAX_ENDPOINTS {
                    return None;
                }
            }
            map.insert(
                endpoint.to_string(),
                Endpoint {
                    breaker: CircuitBreaker::new(self.config.clone()),
                    probe_started: None,
                },
            );
        }
        let e = map.get_mut(endpoint)?;
        match e.breaker.state(now) {
            // A request that was out before the circuit opened: no news.
            CircuitState::Open => None,
            CircuitState::HalfOpen if !probe => None,
            CircuitState::HalfOpen => {
                e.probe_started = None;
                e.breaker.record(ok, now)
            }
            CircuitState::Closed => e.breaker.record(ok, now),
        }
    }

    /// The probe let through by [`Self::admit`] never reached the endpoint (refused by
    /// policy, cancelled): the next request may probe.
    pub fn abandon_probe(&self, endpoint: &str) {
        if let Some(e) = self.lock().get_mut(endpoint) {
            e.probe_started = None;
        }
    }

    /// Every endpoint seen failing, with its state now, sorted by endpoint.
    pub fn states(&self, now: Instant) -> Vec<(String, CircuitState)> {
        let mut out: Vec<_> = self
            .lock()
            .iter_mut()
            .map(|(k, e)| (k.clone(), e.breaker.state(now)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

impl std::fmt::Debug for EndpointBreakers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointBreakers")
            .field("config", &self.config)
            .field("endpoints", &self.lock().len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            window: 4,
            min: 3,
            ratio: 0.5,
            open: Duration::from_secs(10),
        }
    }

    #[test]
    fn breaker_opens_probes_and_closes() {
        let mut b = CircuitBreaker::new(config());
        let t = Instant::now();
        assert_eq!(b.record(false, t), None);
        assert_eq!(b.record(true, t), None);
        assert_eq!(b.record(false, t), Some(CircuitState::Open));
        assert_eq!(b.state(t + Duration::from_secs(5)), CircuitState::Open);
        assert_eq!(b.state(t + Duration::from_secs(10)), CircuitState::HalfOpen);
        assert_eq!(
            b.record(false, t + Duration::from_secs(10)),
            Some(CircuitState::Open)
        );
        let t2 = t + Duration::from_secs(20);
        assert_eq!(b.state(t2), CircuitState::HalfOpen);
        assert_eq!(b.record(true, t2), Some(CircuitState::Closed));
    }

    #[test]
    fn endpoints_have_their_own_circuits_and_one_probe() {
        let b = EndpointBreakers::new(config());
        let t = Instant::now();
        let (bad, good) = ("http://127.0.0.1:1", "http://localhost:2");
        let send = Admission::Send { probe: false };
        for _ in 0..2 {
            assert_eq!(b.admit(bad, t), send);
            assert_eq!(b.record(bad, false, t, false), None);
        }
        assert_eq!(b.record(bad, false, t, false), Some(CircuitState::Open));
        assert_eq!(
            b.admit(bad, t + Duration::from_secs(4)),
            Admission::Refuse {
                retry_in: Duration::from_secs(6)
            }
        );
        // A late success of a request sent before the circuit opened changes nothing.
        assert_eq!(b.record(bad, true, t + Duration::from_secs(4), false), None);
        // The other endpoint of the same driver is unaffected.
        assert_eq!(b.admit(good, t), send);
        assert_eq!(b.record(good, true, t, false), None);
        assert_eq!(b.states(t), vec![(bad.to_string(), CircuitState::Open)]);
        // Half-open: exactly one probe goes; the others come back soon (≤ 1 s) and only
        // the probe's outcome counts.
        let t1 = t + Duration::from_secs(10);
        assert_eq!(b.admit(bad, t1), Admission::Send { probe: true });
        assert_eq!(
            b.admit(bad, t1),
            Admission::Refuse {
                retry_in: PROBE_POLL
            }
        );
        assert_eq!(b.record(bad, false, t1, false), None);
        assert_eq!(b.record(bad, true, t1, true), Some(CircuitState::Closed));
        assert_eq!(b.admit(bad, t1), send);
    }

    #[test]
    fn an_abandoned_probe_does_not_block() {
        let b = EndpointBreakers::new(config());
        let t = Instant::now();
        for _ in 0..3 {
            b.record("e", false, t, false);
        }
        let t1 = t + Duration::from_secs(10);
        // A probe whose outcome never arrives is given up after the open time…
        assert_eq!(b.admit("e", t1), Admission::Send { probe: true });
        assert!(matches!(
            b.admit("e", t1 + Duration::from_secs(9)),
            Admission::Refuse { .. }
        ));
        assert_eq!(
            b.admit("e", t1 + Duration::from_secs(10)),
            Admission::Send { probe: true }
        );
        // …and one known never to have reached the endpoint frees the slot at once.
        b.abandon_probe("e");
        assert_eq!(
            b.admit("e", t1 + Duration::from_secs(10)),
            Admission::Send { probe: true }
        );
    }
}
