//! Prometheus text exposition of a running instance's [`Status`].

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::pipeline::{DriverReport, LATENCY_BUCKETS};
use crate::status::{IngestReport, Status, CUT_REASONS, REJECT_REASONS};

/// Ingest-side counters.
#[derive(Debug, Default)]
pub struct IngestMetrics {
    pub received: AtomicU64,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
}

impl IngestMetrics {
    /// Counts rejected transactions (or requests, when nothing was parsed) by reason.
    pub fn reject(&self, reason: &'static str, n: u64) {
        *self.rejected.lock().entry(reason).or_default() += n;
    }

    /// The counters now, with the request-body bytes in flight and the connections.
    pub fn report(
        &self,
        body_bytes_in_flight: u64,
        connections: &super::connections::ConnectionTable,
    ) -> IngestReport {
        IngestReport {
            connections_open: connections.open() as u64,
            connections_cut: connections
                .cuts()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            received: self.received.load(Ordering::Relaxed),
            rejected: self
                .rejected
                .lock()
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            body_bytes_in_flight,
        }
    }
}

/// A per-driver metric: name, type, help, value.
type PerDriver = (
    &'static str,
    &'static str,
    &'static str,
    fn(&DriverReport) -> u64,
);

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Renders every metric in the Prometheus text format (version 0.0.4).
pub fn render(status: &Status) -> String {
    let (ingest, drivers) = (&status.ingest, &status.drivers);
    let mut out = String::new();
    header(
        &mut out,
        "mailpush_ingest_body_bytes_in_flight",
        "gauge",
        "Request-body bytes being read by ingest (charged as they arrive, of max_inflight).",
    );
    let _ = writeln!(
        out,
        "mailpush_ingest_body_bytes_in_flight {}",
        ingest.body_bytes_in_flight
    );
    header(
        &mut out,
        "mailpush_ingest_connections_open",
        "gauge",
        "Ingest connections open (of max_connections).",
    );
    let _ = writeln!(
        out,
        "mailpush_ingest_connections_open {}",
        ingest.connections_open
    );
    header(
        &mut out,
        "mailpush_ingest_connections_cut_total",
        "counter",
        "Ingest connections cut (timeouts, replaced while idle, shutdown) or refused (caps), by reason.",
    );
    for reason in CUT_REASONS {
        let n = ingest.connections_cut.get(*reason).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "mailpush_ingest_connections_cut_total{{reason=\"{reason}\"}} {n}"
        );
    }
    header(
        &mut out,
        "mailpush_transactions_received_total",
        "counter",
        "Transactions accepted by ingest.",
    );
    let _ = writeln!(
        out,
        "mailpush_transactions_received_total {}",
        ingest.received
    );
    header(
        &mut out,
        "mailpush_transactions_rejected_total",
        "counter",
        "Transactions (or requests) rejected by ingest, by reason.",
    );
    for reason in REJECT_REASONS {
        let n = ingest.rejected.get(*reason).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "mailpush_transactions_rejected_total{{reason=\"{reason}\"}} {n}"
        );
    }
    let labels = |d: &DriverReport| format!("driver=\"{}\",name=\"{}\"", d.number, label(&d.name));
    let per_driver: [PerDriver; 15] = [
        (
            "mailpush_driver_retried_total",
            "counter",
            "Failed attempts scheduled for a retry.",
            |d| d.retried,
        ),
        (
            "mailpush_driver_dropped_total",
            "counter",
            "Transactions given up on (dead-lettered, or failed in memory mode).",
            |d| d.failed,
        ),
        (
            "mailpush_driver_circuit_open",
            "gauge",
            "Circuit breaker state: 0 closed, 1 open, 2 half-open.",
            |d| u64::from(d.circuit.as_gauge()),
        ),
        (
            "mailpush_driver_expired_total",
            "counter",
            "Transactions dead-lettered because they grew older than retry_max_age before delivery.",
            |d| d.expired,
        ),
        (
            "mailpush_driver_skipped_ahead_total",
            "counter",
            "Transactions dead-lettered because a later transaction of their user waited longer than hold_max behind them.",
            |d| d.skipped_ahead,
        ),
        (
            "mailpush_driver_delivered_total",
            "counter",
            "Transactions a driver handled successfully.",
            |d| d.delivered,
        ),
        (
            "mailpush_driver_failed_total",
            "counter",
            "Transactions that failed at a driver.",
            |d| d.failed,
        ),
        (
            "mailpush_driver_skipped_total",
            "counter",
            "Transactions a driver chose not to take part in.",
            |d| d.skipped,
        ),
        (
            "mailpush_driver_queue_depth",
            "gauge",
            "Transactions waiting in a driver's queue.",
            |d| d.queued as u64,
        ),
        (
            "mailpush_driver_held",
            "gauge",
            "Transactions a driver's lane holds: being delivered or waiting for a retry.",
            |d| d.held as u64,
        ),
        (
            "mailpush_driver_diverted",
            "gauge",
            "Transactions left in the spool because their user (or tenant) has its share of a driver's lane; read back in order as that share frees up.",
            |d| d.diverted as u64,
        ),
        (
            "mailpush_driver_loading",
            "gauge",
            "1 while a driver loads in the background (a big component compiling); its transactions wait.",
            |d| (d.loading.is_some() && !d.load_failed) as u64,
        ),
        (
            "mailpush_driver_load_failed",
            "gauge",
            "1 after a driver's background load failed (mailpush status says why); its transactions are retried until a reload replaces it.",
            |d| d.load_failed as u64,
        ),
        (
            "mailpush_driver_overflowing",
            "gauge",
            "1 while a driver reads a backlog from the spool (its queue overflowed).",
            |d| d.overflowing as u64,
        ),
        (
            "mailpush_driver_queue_capacity",
            "gauge",
            "Capacity of a driver's queue.",
            |d| d.capacity as u64,
        ),
    ];
    for (name, kind, help, get) in per_driver {
        header(&mut out, name, kind, help);
        for d in drivers {
            let _ = writeln!(out, "{name}{{{}}} {}", labels(d), get(d));
        }
    }
    header(
        &mut out,
        "mailpush_endpoint_circuit_state",
        "gauge",
        "Circuit breaker state per endpoint a driver calls (endpoints seen failing): 0 closed, 1 open, 2 half-open.",
    );
    for d in drivers {
        for e in &d.endpoints {
            let scope = e
                .scope
                .as_deref()
                .map(|s| format!(",scope=\"{}\"", label(s)))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "mailpush_endpoint_circuit_state{{{},endpoint=\"{}\"{scope}}} {}",
                labels(d),
                label(&e.endpoint),
                e.state.as_gauge()
            );
        }
    }
    header(
        &mut out,
        "mailpush_driver_processing_seconds",
        "histogram",
        "Time a driver took per transaction.",
    );
    for d in drivers {
        let l = labels(d);
        let bucket = |i: usize| d.latency_buckets.get(i).copied().unwrap_or(0);
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "mailpush_driver_processing_seconds_bucket{{{l},le=\"{bound}\"}} {}",
                bucket(i)
            );
        }
        let count = bucket(LATENCY_BUCKETS.len());
        let _ = writeln!(
            out,
            "mailpush_driver_processing_seconds_bucket{{{l},le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "mailpush_driver_processing_seconds_sum{{{l}}} {}",
            d.latency_sum_us as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "mailpush_driver_processing_seconds_count{{{l}}} {count}"
        );
    }
    if let Some(c) = &status.cluster {
        cluster(&mut out, c);
    }
    // Driver-specific counters (wasm traps, timeouts, memory-limit hits, fuel, …).
    let mut names: Vec<&str> = drivers
        .iter()
        .flat_map(|d| d.counters.iter().map(|(n, _)| n.as_str()))
        .collect();
    names.sort_unstable();
    names.dedup();
    for counter in names {
        let name = format!("mailpush_{counter}_total");
        header(
            &mut out,
            &name,
            "counter",
            &format!("Driver counter {counter}."),
        );
        for d in drivers {
            if let Some((_, v)) = d.counters.iter().find(|(n, _)| n == counter) {
                let _ = writeln!(out, "{name}{{{}}} {v}", labels(d));
            }
        }
    }
    out
}

/// Cluster mode: nodes, ownership, rebalances, drift, lag.
fn cluster(out: &mut String, c: &crate::cluster::ownership::ClusterReport) {
    let gauges: [(&str, &str, u64); 5] = [
        (
            "mailpush_cluster_nodes",
            "Live nodes of the cluster.",
            c.nodes.len() as u64,
        ),
        (
            "mailpush_cluster_partitions",
            "Partitions users hash to.",
            u64::from(c.partitions),
        ),
        (
            "mailpush_cluster_partitions_owned",
            "Partitions this node delivers.",
            c.owned.len() as u64,
        ),
        (
            "mailpush_cluster_connected",
            "1 while NATS is reachable.",
            u64::from(c.connected),
        ),
        (
            "mailpush_cluster_config_drift",
            "1 while this node's drivers differ from the other nodes'.",
            u64::from(c.drift.contains(&c.node)),
        ),
    ];
    for (name, help, v) in gauges {
        header(out, name, "gauge", help);
        let _ = writeln!(out, "{name} {v}");
    }
    header(
        out,
        "mailpush_cluster_rebalances_total",
        "counter",
        "Partitions this node took or gave up since it started.",
    );
    let _ = writeln!(out, "mailpush_cluster_rebalances_total {}", c.rebalances);
    header(
        out,
        "mailpush_cluster_node_partitions",
        "gauge",
        "Partitions each live node delivers, as it reports.",
    );
    for n in &c.nodes {
        let _ = writeln!(
            out,
            "mailpush_cluster_node_partitions{{node=\"{}\"}} {}",
            label(&n.name),
            n.owned
        );
    }
    header(
        out,
        "mailpush_cluster_lag",
        "gauge",
        "Transactions not yet delivered, per driver and partition this node delivers.",
    );
    for (d, p, lag) in &c.lag {
        let _ = writeln!(
            out,
            "mailpush_cluster_lag{{driver=\"{d}\",partition=\"{p}\"}} {lag}"
        );
    }
}
