//! Circuit-breaker thresholds and states: what the runtime hands a driver (its
//! `breaker_*` keys, [`crate::DriverInit::breaker`]) and what a driver reports about the
//! endpoints it calls ([`crate::EndpointCircuit`]). The breakers themselves are the
//! runtime's.

use std::time::Duration;

/// Circuit-breaker thresholds (the `breaker_*` keys of a driver line).
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// How many of the latest outcomes are considered.
    pub window: usize,
    /// The circuit cannot open before this many outcomes are in the window.
    pub min: usize,
    /// Failure ratio (0, 1] at which the circuit opens.
    pub ratio: f64,
    /// How long an open circuit waits before a half-open probe.
    pub open: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            window: 20,
            min: 5,
            ratio: 0.5,
            open: Duration::from_secs(30),
        }
    }
}

/// Circuit state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half-open",
        }
    }

    /// The metrics encoding: 0 closed, 1 open, 2 half-open.
    pub fn as_gauge(self) -> u8 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::Open => 1,
            CircuitState::HalfOpen => 2,
        }
    }
}
