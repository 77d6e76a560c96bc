//! mailpush's own settings: the `mailpush { }` block of the config file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mailpush_core::units;

use super::error::{ConfigError, Location};

/// Every key of the `mailpush { }` block with its default and meaning (documented in
/// README.md; `mailpush check --settings` prints each with the value it takes).
pub const SETTINGS: &[(&str, &str, &str)] = &[
    (
        "state_dir",
        "/var/lib/mailpush",
        "where mailpush keeps its data (METADATA store, compiled wasm cache, spool); relative paths resolve against the config file's folder",
    ),
    (
        "listen",
        "127.0.0.1:8025",
        "ingest address of `mailpush run` (HTTP)",
    ),
    (
        "tenant_drivers",
        "(none)",
        "folder of tenant handlers: DIR/<domain>.wasm receives only transactions of users *@<domain>, with args and limits from DIR/<domain>.conf; files may be added, replaced (atomically) or removed while running",
    ),
    (
        "listen_unix",
        "(none)",
        "also accept ingest on this unix socket path",
    ),
    (
        "handoff_dir",
        "(none)",
        "directory Dovecot's forwarder (examples/dovecot/mailpush.lua) writes transactions into, one file each; `mailpush run` reads, persists and removes them, oldest first, also those written while it was stopped; it creates the directory (mode 1733, a default ACL letting itself read what others write) — put it where mailpush may create it, e.g. /var/lib/mailpush/handoff",
    ),
    (
        "handoff_owners",
        "(any)",
        "users (names or uids, comma-separated) whose files in handoff_dir are read — Dovecot's mail user(s), e.g. `vmail`; files of other owners are set aside as `.rejected`",
    ),
    (
        "ingest_token_file",
        "(none)",
        "file holding a bearer token; when set, ingest and control requests must send `Authorization: Bearer TOKEN` (or HTTP Basic with the token as password, for Dovecot's ox driver)",
    ),
    (
        "max_body",
        "10M",
        "largest ingest request body; larger ones get 413",
    ),
    (
        "max_inflight",
        "256M",
        "most memory ingest holds for requests at once: body bytes as they arrive, and before a body is parsed what parsing takes (an NDJSON batch: its bytes again plus 2 KiB per line; any body: 64 bytes per JSON value if more); beyond it 503 with Retry-After: 1 (413 for a body that could never fit: send smaller ones)",
    ),
    (
        "header_timeout_msecs",
        "10000",
        "an ingest connection that has begun a request must send its whole request head (line and headers) within this long, else it is cut",
    ),
    (
        "idle_timeout_msecs",
        "60000",
        "an ingest connection that sends nothing for this long between requests (keep-alive, or right after connecting) is closed",
    ),
    (
        "body_timeout_msecs",
        "30000",
        "a request body must arrive whole within this long of its request head; a slower one gets 408 and its connection is cut",
    ),
    (
        "max_connections",
        "1024",
        "most ingest connections open at once (lowered to fit the open-files limit); at the cap a new connection replaces the longest-idle one, or is refused when every connection is busy",
    ),
    (
        "max_connections_per_peer",
        "512",
        "most ingest connections open at once from one IP address (the unix socket is not limited), with the same replacement rule",
    ),
    (
        "shutdown_timeout_msecs",
        "30000",
        "on SIGTERM, how long queued work may take to drain before mailpush exits",
    ),
    (
        "delivery",
        "spool",
        "`spool`: at-least-once — a transaction is acknowledged only once persisted in state_dir/spool.db, retried, dead-lettered; `memory`: fire-and-forget like Dovecot (faster, lost on crash, no retries)",
    ),
    (
        "spool_quota",
        "1G",
        "most bytes of transactions the spool holds; when full, ingest answers 503 with Retry-After",
    ),
    (
        "dead_letter_max_age",
        "30d",
        "dead letters older than this are deleted, freeing their part of spool_quota (looked at every minute; in cluster mode the dead-letter stream's max age); `0`: kept until `mailpush dlq purge`",
    ),
    (
        "queue_capacity",
        "1024",
        "transactions each driver may have waiting in memory; with the spool, a driver whose queue is full reads its backlog from the spool; with `delivery = memory`, a full queue makes ingest answer 503 (run)",
    ),
    (
        "cluster",
        "(none)",
        "NATS servers (nats://host:4222[,nats://…]; tls://… for TLS; user:password@ in the URL) whose JetStream replaces the SQLite spool: transactions, driver progress, dead letters and METADATA live there, and every node delivers the users of the partitions it owns (README: Running more than one node)",
    ),
    (
        "cluster_node",
        "(host name:listen port)",
        "this node's name in the cluster: unique and stable across restarts",
    ),
    (
        "cluster_stream",
        "MAILPUSH",
        "prefix of the JetStream stream, consumer and bucket names",
    ),
    (
        "cluster_replicas",
        "1",
        "JetStream replicas of the stream and buckets (3 on a three-server NATS cluster)",
    ),
    (
        "cluster_partitions",
        "32",
        "partitions users hash to (each delivered by one node at a time); fixed for the life of the stream",
    ),
    (
        "cluster_lease_msecs",
        "6000",
        "how long a node's hold on a partition lasts without renewal: a dead node's partitions are taken over about this plus a quarter of it later",
    ),
    (
        "cluster_creds_file",
        "(none)",
        "NATS credentials file (JWT and NKey seed, as `nats` tools use)",
    ),
    (
        "cluster_token_file",
        "(none)",
        "file holding a NATS token",
    ),
    (
        "cluster_tls_ca",
        "(system roots)",
        "CA certificate (PEM) for the NATS servers' TLS",
    ),
    (
        "cluster_tls_cert",
        "(none)",
        "client certificate (PEM) for NATS TLS; needs cluster_tls_key",
    ),
    (
        "cluster_tls_key",
        "(none)",
        "client key (PEM) for NATS TLS",
    ),
    (
        "wasm_host_memory",
        "(a quarter of the machine's memory)",
        "host memory all wasm instances together may hold on their guests' behalf (each instance reserves its driver's host_memory); beyond it no new instance is made and its transaction is retried later",
    ),
];

/// The `mailpush { }` block, typed, with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeSettings {
    pub state_dir: PathBuf,
    pub listen: SocketAddr,
    pub queue_capacity: usize,
    pub tenant_drivers: Option<PathBuf>,
    pub listen_unix: Option<PathBuf>,
    pub ingest_token_file: Option<PathBuf>,
    /// `handoff_dir`: where Dovecot's forwarder hands transactions off.
    pub handoff_dir: Option<PathBuf>,
    /// `handoff_owners`: the users (names or uids) whose hand-off files are read; empty
    /// for any.
    pub handoff_owners: Vec<String>,
    pub max_body: usize,
    /// Most bytes of request bodies being read at once.
    pub max_inflight: usize,
    pub shutdown_timeout: std::time::Duration,
    /// Timeouts and caps on ingest connections.
    pub connections: ConnectionLimits,
    /// Durable spool (true, default) or memory-only delivery.
    pub durable: bool,
    pub spool_quota: u64,
    /// `dead_letter_max_age`: dead letters older than this are deleted; `None`: kept
    /// until purged.
    pub dead_letter_max_age: Option<Duration>,
    /// `wasm_host_memory`: the host memory of all wasm instances; `None` for the default.
    pub wasm_host_memory: Option<usize>,
    /// `cluster = …`: cluster mode on NATS JetStream.
    pub cluster: Option<ClusterSettings>,
    /// Where each `mailpush { }` key was set (for errors found later, at start).
    pub at: SettingLines,
}

/// Cluster mode: NATS servers and how mailpush uses their JetStream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// Server URLs (`nats://`, `tls://`), tried in turn.
    pub servers: Vec<String>,
    /// This node's name; `None`: host name and listen port.
    pub node: Option<String>,
    /// Prefix of stream, consumer and bucket names.
    pub stream: String,
    pub replicas: usize,
    pub partitions: u32,
    /// A partition lease's lifetime without renewal.
    pub lease: Duration,
    pub creds_file: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl ClusterSettings {
    fn new(servers: Vec<String>) -> Self {
        ClusterSettings {
            servers,
            node: None,
            stream: "MAILPUSH".into(),
            replicas: 1,
            partitions: 32,
            lease: Duration::from_secs(6),
            creds_file: None,
            token_file: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        RuntimeSettings {
            state_dir: PathBuf::from("/var/lib/mailpush"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8025)),
            queue_capacity: 1024,
            tenant_drivers: None,
            listen_unix: None,
            ingest_token_file: None,
            handoff_dir: None,
            handoff_owners: Vec::new(),
            max_body: 10 << 20,
            max_inflight: 256 << 20,
            shutdown_timeout: std::time::Duration::from_secs(30),
            connections: ConnectionLimits::default(),
            durable: true,
            spool_quota: 1 << 30,
            dead_letter_max_age: Some(Duration::from_secs(30 * 24 * 3600)),
            wasm_host_memory: None,
            cluster: None,
            at: SettingLines::default(),
        }
    }
}

/// Where each `mailpush { }` key was set. Not part of the settings' value: two configs
/// that differ only in where their settings are written have equal settings (a reload
/// compares them).
#[derive(Debug, Clone, Default)]
pub struct SettingLines(std::collections::BTreeMap<String, Location>);

impl SettingLines {
    /// Where `key` was set, if it was.
    pub fn get(&self, key: &str) -> Option<&Location> {
        self.0.get(key)
    }

    fn insert(&mut self, key: String, at: Location) {
        self.0.insert(key, at);
    }
}

impl PartialEq for SettingLines {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for SettingLines {}

/// Timeouts and caps on ingest connections: what keeps stalled, idle or too many
/// clients from holding ingest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// From a request's first byte to its complete head.
    pub header_timeout: Duration,
    /// Silence allowed between requests (and before the first).
    pub idle_timeout: Duration,
    /// From a request's head to its complete body.
    pub body_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_peer: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            max_connections: 1024,
            max_connections_per_peer: 512,
        }
    }
}

/// One key of the `mailpush { }` block as it takes effect ([`RuntimeSettings::effective`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveSetting {
    pub key: &'static str,
    /// The value, written as the block takes it (credentials in URLs masked); for a
    /// default that depends on the machine, the default's description.
    pub value: String,
    /// Where it was set; `None`: the default.
    pub at: Option<Location>,
}

impl RuntimeSettings {
    /// Every key of [`SETTINGS`] with the value it takes, in that order (what `mailpush
    /// check` prints, like `doveconf -n`); the `cluster_*` keys only in cluster mode.
    pub fn effective(&self) -> Vec<EffectiveSetting> {
        let path = |p: &Option<PathBuf>, none: &str| {
            p.as_ref()
                .map_or_else(|| none.to_string(), |p| p.display().to_string())
        };
        let msecs = |d: Duration| d.as_millis().to_string();
        let c = &self.connections;
        let mut out = Vec::with_capacity(SETTINGS.len());
        for (key, default, _) in SETTINGS {
            let value = match *key {
                "state_dir" => self.state_dir.display().to_string(),
                "listen" => self.listen.to_string(),
                "tenant_drivers" => path(&self.tenant_drivers, default),
                "listen_unix" => path(&self.listen_unix, default),
                "handoff_dir" => path(&self.handoff_dir, default),
                "handoff_owners" if self.handoff_owners.is_empty() => default.to_string(),
                "handoff_owners" => self.handoff_owners.join(","),
                "ingest_token_file" => path(&self.ingest_token_file, default),
                "max_body" => units::format_size(self.max_body as u64),
                "max_inflight" => units::format_size(self.max_inflight as u64),
                "header_timeout_msecs" => msecs(c.header_timeout),
                "idle_timeout_msecs" => msecs(c.idle_timeout),
                "body_timeout_msecs" => msecs(c.body_timeout),
                "max_connections" => c.max_connections.to_string(),
                "max_connections_per_peer" => c.max_connections_per_peer.to_string(),
                "shutdown_timeout_msecs" => msecs(self.shutdown_timeout),
                "delivery" => if self.durable { "spool" } else { "memory" }.to_string(),
                "spool_quota" => units::format_size(self.spool_quota),
                "dead_letter_max_age" => self
                    .dead_letter_max_age
                    .map_or_else(|| "0".to_string(), units::format_duration),
                "queue_capacity" => self.queue_capacity.to_string(),
                "wasm_host_memory" => self
                    .wasm_host_memory
                    .map_or_else(|| default.to_string(), |n| units::format_size(n as u64)),
                "cluster" => match &self.cluster {
                    Some(cl) => cl
                        .servers
                        .iter()
                        .map(|u| mailpush_core::args::redact_url(u))
                        .collect::<Vec<_>>()
                        .join(","),
                    None => default.to_string(),
                },
                k => match (&self.cluster, k) {
                    (None, _) => continue,
                    (Some(cl), "cluster_node") => {
                        cl.node.clone().unwrap_or_else(|| default.to_string())
                    }
                    (Some(cl), "cluster_stream") => cl.stream.clone(),
                    (Some(cl), "cluster_replicas") => cl.replicas.to_string(),
                    (Some(cl), "cluster_partitions") => cl.partitions.to_string(),
                    (Some(cl), "cluster_lease_msecs") => msecs(cl.lease),
                    (Some(cl), "cluster_creds_file") => path(&cl.creds_file, default),
                    (Some(cl), "cluster_token_file") => path(&cl.token_file, default),
                    (Some(cl), "cluster_tls_ca") => path(&cl.tls_ca, default),
                    (Some(cl), "cluster_tls_cert") => path(&cl.tls_cert, default),
                    (Some(cl), "cluster_tls_key") => path(&cl.tls_key, default),
                    // A key added to SETTINGS without a line here: shown as unknown,
                    // not left out (a test lists every key).
                    _ => "?".to_string(),
                },
            };
            out.push(EffectiveSetting {
                key,
                value,
                at: self.at.get(key).cloned(),
            });
        }
        out
    }

    /// The spool database path.
    pub fn spool_path(&self) -> PathBuf {
        self.state_dir.join("spool.db")
    }

    /// Builds the settings from the block's `key = value` lines.
    pub fn from_block(
        entries: Vec<(String, String, Location)>,
        config_dir: &Path,
    ) -> Result<Self, Vec<ConfigError>> {
        let mut s = RuntimeSettings::default();
        let resolve = |v: &str| {
            let p = PathBuf::from(v);
            if p.is_absolute() {
                p
            } else {
                config_dir.join(p)
            }
        };
        let mut errors = Vec::new();
        // The cluster_* keys, applied once `cluster` is known.
        let mut cluster_keys: Vec<(String, String, Location)> = Vec::new();
        for (key, value, location) in entries {
            s.at.insert(key.clone(), location.clone());
            // (A mistyped one is an unknown setting, below, not one needing `cluster`.)
            if key.starts_with("cluster") && SETTINGS.iter().any(|(k, _, _)| *k == key) {
                cluster_keys.push((key, value, location));
                continue;
            }
            let mut fail = |message: String| {
                errors.push(ConfigError {
                    location: Some(location.clone()),
                    text: format!("{key} = {value}"),
                    message,
                })
            };
            match key.as_str() {
                "state_dir" if value.is_empty() => fail("state_dir needs a path".into()),
                "state_dir" => {
                    let p = PathBuf::from(&value);
                    s.state_dir = if p.is_absolute() {
                        p
                    } else {
                        config_dir.join(p)
                    };
                }
                "tenant_drivers" if value.is_empty() => {
                    fail("tenant_drivers needs a folder".into())
                }
                "tenant_drivers" => {
                    let p = PathBuf::from(&value);
                    s.tenant_drivers = Some(if p.is_absolute() {
                        p
                    } else {
                        config_dir.join(p)
                    });
                }
                "listen_unix" | "ingest_token_file" | "handoff_dir" if value.is_empty() => {
                    fail(format!("{key} needs a path"))
                }
                "handoff_dir" => s.handoff_dir = Some(resolve(&value)),
                "handoff_owners" => {
                    let owners: Vec<String> = value
                        .split(',')
                        .map(|o| o.trim().to_string())
                        .filter(|o| !o.is_empty())
                        .collect();
                    if owners.is_empty() || owners.iter().any(|o| o.contains(char::is_whitespace)) {
                        fail("expected user names or uids separated by commas, e.g. `vmail` or `vmail,5000`".into())
                    } else {
                        s.handoff_owners = owners;
                    }
                }
                "listen_unix" => s.listen_unix = Some(resolve(&value)),
                "ingest_token_file" => s.ingest_token_file = Some(resolve(&value)),
                "max_body" => match units::parse_size(&value).and_then(|n| usize::try_from(n).ok())
                {
                    Some(n) if n > 0 => s.max_body = n,
                    _ => fail("expected a size, e.g. `10M`".into()),
                },
                "max_inflight" => {
                    match units::parse_size(&value).and_then(|n| usize::try_from(n).ok()) {
                        Some(n) if n > 0 => s.max_inflight = n,
                        _ => fail("expected a size, e.g. `64M`".into()),
                    }
                }
                "header_timeout_msecs" | "idle_timeout_msecs" | "body_timeout_msecs" => {
                    match units::parse_msecs(&value) {
                        Some(d) if !d.is_zero() => {
                            let c = &mut s.connections;
                            *match key.as_str() {
                                "header_timeout_msecs" => &mut c.header_timeout,
                                "idle_timeout_msecs" => &mut c.idle_timeout,
                                _ => &mut c.body_timeout,
                            } = d;
                        }
                        _ => {
                            fail("expected a positive number of milliseconds, e.g. `10000`".into())
                        }
                    }
                }
                "max_connections" | "max_connections_per_peer" => match value.parse::<usize>() {
                    Ok(n @ 1..=1_000_000) => {
                        if key == "max_connections" {
                            s.connections.max_connections = n;
                        } else {
                            s.connections.max_connections_per_peer = n;
                        }
                    }
                    _ => fail(
                        "expected a number of connections from 1 to 1000000, e.g. `1024`".into(),
                    ),
                },
                "shutdown_timeout_msecs" => match units::parse_msecs(&value) {
                    Some(d) => s.shutdown_timeout = d,
                    None => fail("expected milliseconds, e.g. `30000`".into()),
                },
                "delivery" => match value.as_str() {
                    "spool" => s.durable = true,
                    "memory" => s.durable = false,
                    _ => fail(
                        "expected `spool` (at-least-once, default) or `memory` (fire-and-forget)"
                            .into(),
                    ),
                },
                "spool_quota" => match units::parse_size(&value) {
                    Some(n) if n > 0 => s.spool_quota = n,
                    _ => fail("expected a size, e.g. `1G`".into()),
                },
                "dead_letter_max_age" => match units::parse_duration(&value) {
                    _ if value.trim() == "0" => s.dead_letter_max_age = None,
                    Some(d) if d >= Duration::from_secs(60) => s.dead_letter_max_age = Some(d),
                    _ => fail(
                        "expected a duration of at least 1m, e.g. `30d` or `12h`, or `0` to keep dead letters until `mailpush dlq purge`"
                            .into(),
                    ),
                },
                "listen" => match value.parse::<SocketAddr>() {
                    Ok(a) => s.listen = a,
                    Err(_) => {
                        fail("expected IP:PORT, e.g. `127.0.0.1:8025` or `[::1]:8025`".into())
                    }
                },
                "wasm_host_memory" => {
                    match units::parse_size(&value).and_then(|n| usize::try_from(n).ok()) {
                        Some(n) if n >= 1 << 20 => s.wasm_host_memory = Some(n),
                        _ => fail("expected a size of at least 1M, e.g. `4G`".into()),
                    }
                }
                // (A channel of that many slots is made per driver: an absurd number
                // must be refused here, not panic at start.)
                "queue_capacity" => match value.parse::<usize>() {
                    Ok(n @ 1..=10_000_000) => s.queue_capacity = n,
                    _ => fail(
                        "expected a number of transactions from 1 to 10000000, e.g. `1024`".into(),
                    ),
                },
                _ => fail(unknown_setting(&key)),
            }
        }
        s.cluster = cluster_settings(cluster_keys, &resolve, &mut errors);
        if errors.is_empty() {
            Ok(s)
        } else {
            Err(errors)
        }
    }
}

/// The error for a `mailpush { }` key that is not a setting: the one probably meant,
/// then every known one.
fn unknown_setting(key: &str) -> String {
    let known: Vec<&str> = SETTINGS.iter().map(|(k, _, _)| *k).collect();
    // A typo, or a name given without its prefix (`token_file`: `ingest_token_file`).
    let hint = crate::suggest::nearest(key, &known)
        .or_else(|| {
            known
                .iter()
                .find(|k| k.ends_with(&format!("_{key}")) || k.starts_with(&format!("{key}_")))
                .copied()
        })
        .map(|k| format!(" Did you mean {k}?"))
        .unwrap_or_default();
    format!(
        "unknown mailpush setting `{key}`.{hint} Known settings: {}",
        known.join(", ")
    )
}

/// `value` with the `user:password@` of every URL in it replaced by `***@`.
fn without_userinfo(value: &str) -> String {
    value
        .split(',')
        .map(|u| match (u.find("://"), u.rfind('@')) {
            (Some(s), Some(at)) if at > s => format!("{}***{}", &u[..s + 3], &u[at..]),
            _ => u.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Reads the `cluster` and `cluster_*` keys.
fn cluster_settings(
    keys: Vec<(String, String, Location)>,
    resolve: &dyn Fn(&str) -> PathBuf,
    errors: &mut Vec<ConfigError>,
) -> Option<ClusterSettings> {
    let mut fail = |location: &Location, key: &str, value: &str, message: String| {
        errors.push(ConfigError {
            location: Some(location.clone()),
            // A server URL may carry a password: never in an error.
            text: format!("{key} = {}", without_userinfo(value)),
            message,
        })
    };
    let servers = keys.iter().find(|(k, _, _)| k == "cluster");
    let Some((_, value, location)) = servers else {
        if let Some((k, v, l)) = keys.first() {
            fail(
                l,
                k,
                v,
                format!("{k} needs `cluster = nats://host:4222` in the same block"),
            );
        }
        return None;
    };
    let urls: Vec<String> = value
        .split(',')
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .collect();
    let bad = urls.iter().find(|u| {
        !(u.starts_with("nats://") || u.starts_with("tls://")) || u.contains(char::is_whitespace)
    });
    if urls.is_empty() || bad.is_some() {
        fail(
            location,
            "cluster",
            value,
            "expected NATS server URLs, e.g. `nats://10.0.0.1:4222` (several: separated by commas; tls:// for TLS)".into(),
        );
        return None;
    }
    let mut c = ClusterSettings::new(urls);
    for (key, value, location) in &keys {
        let mut bad = |message: &str| fail(location, key, value, message.to_string());
        match key.as_str() {
            "cluster" => {}
            "cluster_node" => {
                if value.is_empty() || value.contains(char::is_whitespace) {
                    bad("expected a name without spaces, e.g. `mp1`");
                } else {
                    c.node = Some(value.clone());
                }
            }
            "cluster_stream" => {
                if !value.is_empty()
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                {
                    c.stream = value.clone();
                } else {
                    bad("expected letters, digits, `_` or `-`, e.g. `MAILPUSH`");
                }
            }
            "cluster_replicas" => match value.parse::<usize>() {
                Ok(n @ 1..=5) => c.replicas = n,
                _ => bad("expected 1 to 5 (3 on a three-server NATS cluster)"),
            },
            "cluster_partitions" => match value.parse::<u32>() {
                Ok(n @ 1..=1024) => c.partitions = n,
                _ => bad("expected 1 to 1024, e.g. `32`"),
            },
            "cluster_lease_msecs" => match units::parse_msecs(value) {
                Some(d) if d >= Duration::from_secs(1) && d <= Duration::from_secs(600) => {
                    c.lease = d
                }
                _ => bad("expected milliseconds from 1000 to 600000, e.g. `6000`"),
            },
            "cluster_creds_file" | "cluster_token_file" | "cluster_tls_ca" | "cluster_tls_cert"
            | "cluster_tls_key"
                if value.is_empty() =>
            {
                bad("needs a path")
            }
            "cluster_creds_file" => c.creds_file = Some(resolve(value)),
            "cluster_token_file" => c.token_file = Some(resolve(value)),
            "cluster_tls_ca" => c.tls_ca = Some(resolve(value)),
            "cluster_tls_cert" => c.tls_cert = Some(resolve(value)),
            "cluster_tls_key" => c.tls_key = Some(resolve(value)),
            _ => bad(&unknown_setting(key)),
        }
    }
    if c.tls_cert.is_some() != c.tls_key.is_some() {
        fail(
            location,
            "cluster",
            value,
            "cluster_tls_cert and cluster_tls_key go together".into(),
        );
    }
    Some(c)
}

#[cfg(test)]
mod cluster_tests {
    use super::without_userinfo;

    #[test]
    fn a_servers_password_never_reaches_an_error() {
        assert_eq!(
            without_userinfo("nats://mp:s3cret@10.0.0.1:4222, nats://10.0.0.2:4222,tls://u:p@h:1"),
            "nats://***@10.0.0.1:4222, nats://10.0.0.2:4222,tls://***@h:1"
        );
    }
}
