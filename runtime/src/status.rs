//! The status contract of a running instance: what `GET /v1/status` serves, what
//! `mailpush status` reads back, and what `GET /metrics` renders — one typed struct,
//! serialised both ways.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::pipeline::{DriverReport, LaneState};

/// A running instance's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// mailpush's version.
    pub version: String,
    /// The config file it runs.
    pub config: String,
    pub ingest: IngestReport,
    pub drivers: Vec<DriverReport>,
    /// Cluster mode: the nodes, who delivers what, lag, drift.
    #[serde(default)]
    pub cluster: Option<crate::cluster::ownership::ClusterReport>,
}

/// Ingest's counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IngestReport {
    /// Transactions accepted.
    pub received: u64,
    /// Transactions (or requests, when nothing was parsed) rejected, by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Request-body bytes being read (charged to `max_inflight`).
    pub body_bytes_in_flight: u64,
    /// Ingest connections open.
    #[serde(default)]
    pub connections_open: u64,
    /// Ingest connections cut or refused, by reason (see [`CUT_REASONS`]).
    #[serde(default)]
    pub connections_cut: BTreeMap<String, u64>,
}

/// The reasons ingest rejects for, as counted in [`IngestReport::rejected`].
pub const REJECT_REASONS: &[&str] = &[
    "invalid",
    "unauthorized",
    "too_large",
    "overloaded",
    "spool_full",
    "spool_error",
    "shutting_down",
    "body_timeout",
];

/// The reasons ingest cuts or refuses connections for, as counted in
/// [`IngestReport::connections_cut`].
pub const CUT_REASONS: &[&str] = &[
    "header_timeout",
    "idle_timeout",
    "body_timeout",
    "replaced_idle",
    "max_connections",
    "max_connections_per_peer",
    "shutdown",
];

#[cfg(test)]
mod tests {
    use super::*;
    use mailpush_core::{CircuitState, EndpointCircuit};

    /// What the daemon serialises, the CLI reads back unchanged.
    #[test]
    fn round_trips_through_json() {
        let status = Status {
            version: "0.1.0".into(),
            config: "/etc/mailpush/mailpush.conf".into(),
            ingest: IngestReport {
                received: 7,
                rejected: [("invalid".to_string(), 2)].into_iter().collect(),
                body_bytes_in_flight: 1024,
                connections_open: 3,
                connections_cut: [("idle_timeout".to_string(), 5)].into_iter().collect(),
            },
            drivers: vec![DriverReport {
                number: 1,
                name: "wasm".into(),
                delivered: 5,
                skipped: 1,
                failed: 1,
                queued: 2,
                held: 3,
                diverted: 4,
                overflowing: false,
                capacity: 1024,
                counters: vec![("wasm_traps".into(), 1)],
                retried: 4,
                dead_lettered: 1,
                expired: 0,
                skipped_ahead: 0,
                circuit: CircuitState::HalfOpen,
                endpoints: vec![EndpointCircuit {
                    endpoint: "https://hooks.example.com:443".into(),
                    scope: Some("example.com".into()),
                    state: CircuitState::Open,
                }],
                latency_buckets: vec![1; 13],
                latency_sum_us: 1234,
                loading: None,
                load_failed: false,
            }],
            cluster: Some(crate::cluster::ownership::ClusterReport {
                node: "mp1".into(),
                owned: vec![0, 3],
                partitions: 4,
                connected: true,
                lag: vec![(1, 0, 5)],
                ..Default::default()
            }),
        };
        let json = serde_json::to_string(&status).unwrap();
        assert!(json.contains(r#""circuit":"half-open""#), "{json}");
        let back: Status = serde_json::from_str(&json).unwrap();
        assert_eq!(back, status);
        assert_eq!(back.drivers[0].state(), LaneState::Running);
    }
}
