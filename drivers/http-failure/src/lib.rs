//! The one classification of HTTP failures in mailpush, shared by the host (whose
//! endpoint circuit breakers count failures), the native ox driver and the Rust SDK
//! for wasm drivers (and through it the example drivers), so that a lost connection
//! means the same everywhere:
//!
//! | what happened | [`Class`] |
//! |---|---|
//! | 2xx | success (no class) |
//! | 408, 429, 5xx (with `Retry-After`, if the server said) | [`Class::Retry`] |
//! | other 1xx, 3xx, 4xx | [`Class::GiveUp`] |
//! | connection refused, reset or closed; protocol error; timeout; DNS failure; TLS handshake failure | [`Class::Retry`] |
//! | TLS certificate not trusted | [`Class::GiveUp`] |
//! | refused by the sandbox's policy: host not allowed, private address, egress budget | [`Class::Refused`] |
//! | the endpoint's circuit is open | [`Class::Deferred`] |

use std::time::{Duration, SystemTime};

/// What a failed request means for the transaction that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A later attempt may succeed: retry on the driver's schedule, or after the
    /// server's `Retry-After` when it gave one.
    Retry { after: Option<Duration> },
    /// No retry will help (the endpoint refused the request itself).
    GiveUp,
    /// The sandbox's policy refused the request before it went out: no retry will help;
    /// the reason names the policy.
    Refused,
    /// Not tried: the endpoint's circuit is open. Not an attempt; retried when the
    /// circuit lets a probe through.
    Deferred,
}

impl Class {
    /// Whether the transaction may be tried again (later).
    pub fn retryable(self) -> bool {
        matches!(self, Class::Retry { .. } | Class::Deferred)
    }

    /// Whether the outcome counts against the endpoint's health (its circuit breaker):
    /// the endpoint was reached and was unwell, or could not be reached. Policy
    /// refusals, deferrals and a refusing 4xx do not.
    pub fn counts_against_endpoint(self) -> bool {
        matches!(self, Class::Retry { .. })
    }
}

/// The class of a response status; `None` for success (2xx). `retry_after` is the
/// response's `Retry-After` header, read at `now`.
pub fn status(status: u16, retry_after: Option<&str>, now: SystemTime) -> Option<Class> {
    match status {
        200..=299 => None,
        408 | 429 | 500..=599 => Some(Class::Retry {
            after: retry_after.and_then(|v| parse_retry_after(v, now)),
        }),
        _ => Some(Class::GiveUp),
    }
}

/// How a request failed without a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The connection was refused (or could not be made).
    ConnectRefused,
    /// The connection was reset or closed before the response was complete.
    ConnectionLost,
    /// The response could not be read as HTTP.
    Protocol,
    /// Connecting or waiting for the response timed out.
    Timeout,
    /// The name did not resolve.
    Dns,
    /// The TLS handshake failed (other than an untrusted certificate).
    Tls,
    /// The server's certificate is not trusted.
    TlsCertificate,
    /// The sandbox's policy refused the request (host not allowed, private address,
    /// egress budget).
    Policy,
    /// The endpoint's circuit is open.
    CircuitOpen,
}

/// The class of a transport failure.
pub fn transport(t: Transport) -> Class {
    match t {
        Transport::ConnectRefused
        | Transport::ConnectionLost
        | Transport::Protocol
        | Transport::Timeout
        | Transport::Dns
        | Transport::Tls => Class::Retry { after: None },
        Transport::TlsCertificate => Class::GiveUp,
        Transport::Policy => Class::Refused,
        Transport::CircuitOpen => Class::Deferred,
    }
}

/// A `Retry-After` value: delay-seconds or an HTTP date (a date in the past is no delay).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    // Digits only: `parse` would take a sign ("+5") too.
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return v.parse::<u64>().ok().map(Duration::from_secs);
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row of the table.
    #[test]
    fn the_table() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let retry = Some(Class::Retry { after: None });
        for s in [200, 201, 204, 299] {
            assert_eq!(status(s, None, now), None, "{s}");
        }
        for s in [408, 429, 500, 502, 503, 504, 599] {
            assert_eq!(status(s, None, now), retry, "{s}");
        }
        for s in [100, 301, 302, 304, 400, 401, 403, 404, 409, 413, 422] {
            assert_eq!(status(s, None, now), Some(Class::GiveUp), "{s}");
        }
        assert_eq!(
            status(503, Some("7"), now),
            Some(Class::Retry {
                after: Some(Duration::from_secs(7))
            })
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            status(429, Some(&date), now),
            Some(Class::Retry {
                after: Some(Duration::from_secs(30))
            })
        );
        // Not a delay: a word, a sign, more seconds than a u64 holds (as the JavaScript
        // and Python SDKs read them).
        for v in ["soon", "+5", "-1", "18446744073709551616"] {
            assert_eq!(
                status(503, Some(v), now),
                Some(Class::Retry { after: None }),
                "{v}"
            );
        }
        for t in [
            Transport::ConnectRefused,
            Transport::ConnectionLost,
            Transport::Protocol,
            Transport::Timeout,
            Transport::Dns,
            Transport::Tls,
        ] {
            assert_eq!(transport(t), Class::Retry { after: None }, "{t:?}");
            assert!(transport(t).retryable() && transport(t).counts_against_endpoint());
        }
        assert_eq!(transport(Transport::TlsCertificate), Class::GiveUp);
        assert_eq!(transport(Transport::Policy), Class::Refused);
        assert!(!Class::Refused.retryable() && !Class::Refused.counts_against_endpoint());
        assert_eq!(transport(Transport::CircuitOpen), Class::Deferred);
        assert!(Class::Deferred.retryable() && !Class::Deferred.counts_against_endpoint());
        assert!(!Class::GiveUp.retryable() && !Class::GiveUp.counts_against_endpoint());
    }
}
