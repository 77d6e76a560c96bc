//! A wasm driver's sandbox: limits and capability grants, parsed from mailpush's own
//! keys on the driver line (`wasm:file=… timeout_msecs=200 allow_hosts=…`). Every other
//! key goes to the component's `init`.

use std::time::Duration;

use mailpush_core::{DriverArgs, InitError};

/// How instances are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceModel {
    /// A fresh instance per transaction (default): nothing survives between
    /// transactions.
    Fresh,
    /// One instance kept per driver for warm state; recycled after a trap and after
    /// `recycle_after` transactions.
    Reuse,
}

/// Limits and grants of one wasm driver.
#[derive(Debug, Clone, PartialEq)]
pub struct Sandbox {
    /// Guest CPU time per call (host-call time excluded). Key `timeout_msecs`.
    pub timeout: Duration,
    /// Linear memory cap in bytes. Key `memory` (`32M`, `64MiB`, `1048576`).
    pub memory: usize,
    /// Instruction budget per call, if any. Key `fuel`.
    pub fuel: Option<u64>,
    /// Key `instance` = `fresh` | `reuse`.
    pub instance: InstanceModel,
    /// With `instance=reuse`: transactions before the instance is recycled. Key
    /// `recycle_after`.
    pub recycle_after: u64,
    /// Log lines a transaction may write; the rest are counted and dropped. Key
    /// `max_log_lines`.
    pub max_log_lines: u32,
    /// Driver-wide rate of log lines (all instances and transactions together): a
    /// token bucket refilled at this many lines per second. Key `log_lines_per_sec`.
    pub log_lines_per_sec: u32,
    /// The most log lines the driver may write in a burst. Key `log_burst`.
    pub log_burst: u32,
    /// Bytes of event JSON handed to one `deliver` call. Key `max_event_bytes`.
    pub max_event_bytes: usize,
    /// Wall-clock bound of a whole transaction, host calls included. Key
    /// `max_txn_msecs`.
    pub max_txn: Duration,
    /// Host patterns outbound HTTP may reach (`hooks.example.com`, `*.example.net`).
    /// Empty: no HTTP. Key `allow_hosts` (comma separated).
    pub allow_hosts: Vec<String>,
    /// Allow loopback, private, link-local and metadata-service addresses. Key
    /// `allow_private` (flag).
    pub allow_private: bool,
    /// Concurrent outbound connections. Key `max_connections`.
    pub max_connections: usize,
    /// Key `connect_timeout_msecs`.
    pub connect_timeout: Duration,
    /// Key `first_byte_timeout_msecs`.
    pub first_byte_timeout: Duration,
    /// Consecutive failures before the driver is paused. Key `pause_after`.
    pub pause_after: u32,
    /// First pause; doubles per further failure up to 5 minutes. Key `pause_msecs`.
    pub pause: Duration,
    /// Answer every outbound request with an empty 200 without touching the network.
    /// Not settable from config: benchmarks use it to measure the host alone.
    pub http_stub: bool,
    /// Thresholds of the per-endpoint circuit breakers: the driver's `breaker_*` keys
    /// (taken by the runtime's delivery policy, then handed over through `DriverInit`).
    pub endpoint_breaker: mailpush_core::BreakerConfig,
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox {
            timeout: Duration::from_millis(100),
            memory: 32 << 20,
            fuel: None,
            instance: InstanceModel::Fresh,
            recycle_after: 1000,
            max_log_lines: 100,
            log_lines_per_sec: 100,
            log_burst: 1000,
            max_event_bytes: 1 << 20,
            max_txn: Duration::from_secs(30),
            allow_hosts: Vec::new(),
            allow_private: false,
            max_connections: 16,
            connect_timeout: Duration::from_secs(5),
            first_byte_timeout: Duration::from_secs(10),
            pause_after: 5,
            pause: Duration::from_secs(1),
            http_stub: false,
            endpoint_breaker: mailpush_core::BreakerConfig::default(),
        }
    }
}

/// The largest `memory=` accepted (the pooling allocator reserves this much per slot).
pub const MAX_MEMORY: usize = 1 << 30;

/// mailpush's own keys on a wasm driver line; these never reach the component.
pub const SANDBOX_KEYS: &[&str] = &[
    "file",
    "timeout_msecs",
    "memory",
    "fuel",
    "instance",
    "recycle_after",
    "max_log_lines",
    "log_lines_per_sec",
    "log_burst",
    "max_event_bytes",
    "max_txn_msecs",
    "allow_hosts",
    "allow_private",
    "max_connections",
    "connect_timeout_msecs",
    "first_byte_timeout_msecs",
    "pause_after",
    "pause_msecs",
];

fn number<T: std::str::FromStr>(key: &str, v: &str, example: &str) -> Result<T, InitError> {
    v.parse().map_err(|_| {
        InitError(format!(
            "{key}={v}: expected a number, e.g. {key}={example}"
        ))
    })
}

/// Parses a size: bytes, or with a `K`/`M`/`G` (or `KiB`/`MiB`/`GiB`) suffix.
pub fn parse_size(v: &str) -> Option<usize> {
    let lower = v.to_ascii_lowercase();
    let (num, mult) = [
        ("kib", 1 << 10),
        ("mib", 1 << 20),
        ("gib", 1 << 30),
        ("k", 1 << 10),
        ("m", 1 << 20),
        ("g", 1 << 30),
    ]
    .into_iter()
    .find_map(|(s, m)| lower.strip_suffix(s).map(|n| (n.to_string(), m)))
    .unwrap_or((lower, 1));
    num.trim().parse::<usize>().ok()?.checked_mul(mult)
}

impl Sandbox {
    /// Takes mailpush's sandbox keys out of `args` (leaving the component's own).
    pub fn from_args(args: &mut DriverArgs) -> Result<Sandbox, InitError> {
        let mut s = Sandbox::default();
        if let Some(v) = args.take("timeout_msecs") {
            let ms: u64 = number("timeout_msecs", &v, "100")?;
            if ms == 0 {
                return Err(InitError("timeout_msecs must be at least 1".into()));
            }
            s.timeout = Duration::from_millis(ms);
        }
        if let Some(v) = args.take("memory") {
            s.memory = parse_size(&v)
                .filter(|m| *m >= 64 << 10 && *m <= MAX_MEMORY)
                .ok_or_else(|| {
                    InitError(format!(
                        "memory={v}: expected a size between 64K and 1G, e.g. memory=32M"
                    ))
                })?;
        }
        if let Some(v) = args.take("fuel") {
            s.fuel = Some(number("fuel", &v, "10000000")?);
        }
        if let Some(v) = args.take("instance") {
            s.instance = match v.as_str() {
                "fresh" => InstanceModel::Fresh,
                "reuse" => InstanceModel::Reuse,
                _ => {
                    return Err(InitError(format!(
                        "instance={v}: expected `fresh` (default) or `reuse`"
                    )))
                }
            };
        }
        if let Some(v) = args.take("recycle_after") {
            s.recycle_after = number::<u64>("recycle_after", &v, "1000")?.max(1);
        }
        if let Some(v) = args.take("max_log_lines") {
            s.max_log_lines = number("max_log_lines", &v, "100")?;
        }
        if let Some(v) = args.take("log_lines_per_sec") {
            s.log_lines_per_sec = number("log_lines_per_sec", &v, "100")?;
        }
        if let Some(v) = args.take("log_burst") {
            s.log_burst = number("log_burst", &v, "1000")?;
        }
        if let Some(v) = args.take("max_event_bytes") {
            s.max_event_bytes = parse_size(&v).ok_or_else(|| {
                InitError(format!("max_event_bytes={v}: expected a size, e.g. 1M"))
            })?;
        }
        if let Some(v) = args.take("max_txn_msecs") {
            s.max_txn = Duration::from_millis(number("max_txn_msecs", &v, "30000")?);
        }
        if let Some(v) = args.take("allow_hosts") {
            for pattern in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                validate_host_pattern(pattern)?;
                s.allow_hosts.push(pattern.to_ascii_lowercase());
            }
        }
        s.allow_private = args.take("allow_private").is_some();
        if let Some(v) = args.take("max_connections") {
            s.max_connections = number::<usize>("max_connections", &v, "16")?.max(1);
        }
        if let Some(v) = args.take("connect_timeout_msecs") {
            s.connect_timeout = Duration::from_millis(number("connect_timeout_msecs", &v, "5000")?);
        }
        if let Some(v) = args.take("first_byte_timeout_msecs") {
            s.first_byte_timeout =
                Duration::from_millis(number("first_byte_timeout_msecs", &v, "10000")?);
        }
        if let Some(v) = args.take("pause_after") {
            s.pause_after = number::<u32>("pause_after", &v, "5")?.max(1);
        }
        if let Some(v) = args.take("pause_msecs") {
            s.pause = Duration::from_millis(number("pause_msecs", &v, "1000")?);
        }
        Ok(s)
    }

    /// Lines for `mailpush check`.
    pub fn describe(&self) -> Vec<String> {
        vec![
            format!(
                "limits: timeout_msecs={} memory={}M fuel={} max_log_lines={} log_lines_per_sec={} log_burst={} max_event_bytes={} max_txn_msecs={}",
                self.timeout.as_millis(),
                self.memory >> 20,
                self.fuel.map(|f| f.to_string()).unwrap_or_else(|| "off".into()),
                self.max_log_lines,
                self.log_lines_per_sec,
                self.log_burst,
                self.max_event_bytes,
                self.max_txn.as_millis()
            ),
            format!(
                "instance: {}",
                match self.instance {
                    InstanceModel::Fresh => "fresh per transaction".to_string(),
                    InstanceModel::Reuse => format!("reuse (recycled after a trap or {} transactions)", self.recycle_after),
                }
            ),
            format!(
                "grants: http={} private_addresses={} max_connections={} connect_timeout_msecs={} first_byte_timeout_msecs={}; metadata=read-only (own user); filesystem, environment, sockets, stdio: none",
                if self.allow_hosts.is_empty() { "none".to_string() } else { self.allow_hosts.join(",") },
                if self.allow_private { "allowed" } else { "refused" },
                self.max_connections,
                self.connect_timeout.as_millis(),
                self.first_byte_timeout.as_millis()
            ),
        ]
    }

    /// Whether a host name matches `allow_hosts` (`*.example.net` matches subdomains,
    /// not `example.net` itself; `*` alone matches any host).
    pub fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.allow_hosts.iter().any(|p| {
            if p == "*" {
                true
            } else if let Some(suffix) = p.strip_prefix("*.") {
                host.len() > suffix.len() + 1
                    && host.ends_with(suffix)
                    && host[..host.len() - suffix.len()].ends_with('.')
            } else {
                *p == host
            }
        })
    }
}

fn validate_host_pattern(p: &str) -> Result<(), InitError> {
    let body = p.strip_prefix("*.").unwrap_or(p);
    let ok = p == "*"
        || (!body.is_empty()
            && body
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']')));
    if ok {
        Ok(())
    } else {
        Err(InitError(format!(
            "allow_hosts: `{p}` is not a host pattern; expected names like hooks.example.com or *.example.net, comma separated"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_removes_sandbox_keys() {
        let mut args = DriverArgs::parse("file=x.wasm url=https://h/ timeout_msecs=250 memory=8M fuel=1000 allow_hosts=a.example.com,*.example.net allow_private secret=s");
        let s = Sandbox::from_args(&mut args).unwrap();
        assert_eq!(s.timeout, Duration::from_millis(250));
        assert_eq!(s.memory, 8 << 20);
        assert_eq!(s.fuel, Some(1000));
        assert!(s.allow_private);
        assert_eq!(args.get("url"), Some("https://h/"));
        assert_eq!(args.get("secret"), Some("s"));
        assert!(!args.has("timeout_msecs"));
        // `file` is taken by the factory, not here
        assert!(args.has("file"));
    }

    #[test]
    fn host_patterns() {
        let mut args = DriverArgs::parse("allow_hosts=hooks.example.com,*.example.net");
        let s = Sandbox::from_args(&mut args).unwrap();
        assert!(s.host_allowed("hooks.example.com"));
        assert!(s.host_allowed("HOOKS.example.com."));
        assert!(s.host_allowed("a.example.net"));
        assert!(s.host_allowed("a.b.example.net"));
        assert!(!s.host_allowed("example.net"));
        assert!(!s.host_allowed("badexample.net"));
        assert!(!s.host_allowed("other.example.com"));
        assert!(!Sandbox::default().host_allowed("hooks.example.com"));
    }

    #[test]
    fn rejects_bad_values() {
        for bad in [
            "memory=lots",
            "memory=1G5",
            "timeout_msecs=0",
            "instance=shared",
            "allow_hosts=a/b",
            "fuel=-1",
            "log_lines_per_sec=fast",
            "log_burst=-5",
        ] {
            let mut args = DriverArgs::parse(bad);
            assert!(Sandbox::from_args(&mut args).is_err(), "{bad}");
        }
    }
}
