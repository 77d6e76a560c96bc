//! The outbound-HTTP keys of one driver: what it may reach and how long it may wait.
//!
//! - `allow_hosts=hooks.example.com,*.example.net` — host patterns (empty: no HTTP);
//! - `allow_private` — also loopback, private, link-local and metadata addresses;
//! - `max_connections=16` — concurrent outbound connections;
//! - `connect_timeout_msecs=5000`, `first_byte_timeout_msecs=10000`;
//! - `max_egress_bytes=16M` — bytes of requests (heads and bodies) one transaction may send.
//!
//! The endpoint breakers' thresholds come from the driver's `breaker_*` keys, read by
//! the runtime's delivery policy and handed over through `DriverInit`.

use std::time::Duration;

use mailpush_core::{BreakerConfig, DriverArgs, InitError};

/// What one driver may reach over HTTP.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpSettings {
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
    /// Bytes of requests (heads and bodies) one transaction may send in all. Key
    /// `max_egress_bytes`.
    pub max_egress_bytes: u64,
    /// Answer every outbound request with an empty 200 without touching the network.
    /// Not settable from config: benchmarks use it to measure the host alone.
    pub http_stub: bool,
    /// Thresholds of the per-endpoint circuit breakers.
    pub endpoint_breaker: BreakerConfig,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            allow_hosts: Vec::new(),
            allow_private: false,
            max_connections: 16,
            connect_timeout: Duration::from_secs(5),
            first_byte_timeout: Duration::from_secs(10),
            max_egress_bytes: 16 << 20,
            http_stub: false,
            endpoint_breaker: BreakerConfig::default(),
        }
    }
}

/// The most outbound connections one driver may be given (a semaphore of that many
/// permits is made at load: an absurd number must be refused, not panic).
const MAX_CONNECTIONS: usize = 65_536;

impl HttpSettings {
    /// Takes the outbound-HTTP keys out of a driver's args.
    pub fn from_args(args: &mut DriverArgs) -> Result<Self, InitError> {
        let mut s = HttpSettings::default();
        if let Some(v) = args.take("allow_hosts") {
            for pattern in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                validate_host_pattern(pattern)?;
                s.allow_hosts.push(pattern.to_ascii_lowercase());
            }
        }
        s.allow_private = args.take_flag("allow_private");
        if let Some(n) = args.take_number::<usize>("max_connections", "16")? {
            if n > MAX_CONNECTIONS {
                return Err(InitError::new(format!(
                    "max_connections={n} is more than {MAX_CONNECTIONS}; expected a number of connections to the driver's endpoints, e.g. max_connections=16"
                )));
            }
            s.max_connections = n.max(1);
        }
        if let Some(d) = args.take_msecs("connect_timeout_msecs", "5000")? {
            s.connect_timeout = d;
        }
        if let Some(d) = args.take_msecs("first_byte_timeout_msecs", "10000")? {
            s.first_byte_timeout = d;
        }
        if let Some(n) = args.take_size(
            "max_egress_bytes",
            0..=u64::MAX,
            "a size, e.g. max_egress_bytes=16M",
        )? {
            s.max_egress_bytes = n;
        }
        Ok(s)
    }

    /// The part of `mailpush check`'s grants line about HTTP.
    pub fn describe(&self) -> String {
        format!(
            "http={} private_addresses={} max_connections={} connect_timeout_msecs={} first_byte_timeout_msecs={} max_egress_bytes={}",
            if self.allow_hosts.is_empty() {
                "none".to_string()
            } else {
                self.allow_hosts.join(",")
            },
            if self.allow_private { "allowed" } else { "refused" },
            self.max_connections,
            self.connect_timeout.as_millis(),
            self.first_byte_timeout.as_millis(),
            self.max_egress_bytes
        )
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
        Err(InitError::of_arg(
            "allow_hosts",
            format!(
            "allow_hosts: `{p}` is not a host pattern; expected names like hooks.example.com or *.example.net, comma separated"
        ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns() {
        let mut args = DriverArgs::parse("allow_hosts=hooks.example.com,*.example.net");
        let s = HttpSettings::from_args(&mut args).unwrap();
        assert!(s.host_allowed("hooks.example.com"));
        assert!(s.host_allowed("HOOKS.example.com."));
        assert!(s.host_allowed("a.example.net"));
        assert!(s.host_allowed("a.b.example.net"));
        assert!(!s.host_allowed("example.net"));
        assert!(!s.host_allowed("badexample.net"));
        assert!(!s.host_allowed("other.example.com"));
        assert!(!HttpSettings::default().host_allowed("hooks.example.com"));
        assert!(HttpSettings::from_args(&mut DriverArgs::parse("allow_hosts=a/b")).is_err());
    }

    /// A number of connections that would make the driver's semaphore panic is refused.
    #[test]
    fn max_connections_is_bounded() {
        let s = HttpSettings::from_args(&mut DriverArgs::parse("max_connections=65536")).unwrap();
        assert_eq!(s.max_connections, 65536);
        let e = HttpSettings::from_args(&mut DriverArgs::parse(
            "max_connections=2305843009213693952",
        ))
        .unwrap_err();
        assert!(e.message.contains("is more than 65536"), "{}", e.message);
    }
}
