//! The HTTP side (`dovecot-push.md` §7.3–7.4): one keep-alive connection pool per driver,
//! shared by all users; Dovecot's retry rules; Dovecot's log wording.
//!
//! Retry policy, as Dovecot 2.3's HTTP client applies it with `max_attempts =
//! max_retries + 1` (the decision is [`judge`], a pure function):
//! - retried: a per-attempt timeout, a connection lost while the request was pending,
//!   408;
//! - not retried: any other status — 503 too, with or without `Retry-After` (checked
//!   against Dovecot 2.3.19.1, which did not retry a 503 with `Retry-After: 0`, `1` or
//!   `3` at `timeout_msecs=3000 max_retries=3`, although its source reads as if it
//!   would); a failed connect (refused, unreachable, TLS, connect timeout — Dovecot's
//!   `max_connect_attempts` is unset); a redirect (refused).
//!
//! On the wire the request is Dovecot's byte for byte except the Date value (see
//! `OxClient::request`; captured bytes in `drivers/ox/tests/dovecot-requests/`), with one
//! Date per notification, kept across its retries as Dovecot does.
//!
//! Beyond Dovecot: a short exponential backoff between attempts, a `Failure` that tells
//! the spool whether a later retry may help, counters, and the password never logged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Uri};
use mailpush_core::backoff::Exponential;
use mailpush_core::Failure;

use crate::config::OxConfig;
use crate::pool::{Conn, Pool};

/// Counters (exposed as driver metrics by [`crate::OxDriver`]).
#[derive(Debug, Default)]
pub struct OxStats {
    /// Notifications answered with 2xx.
    pub sent: AtomicU64,
    /// Notifications given up on (after any retries).
    pub failed: AtomicU64,
    /// Retries (attempts beyond the first).
    pub retried: AtomicU64,
    /// HTTP attempts made.
    pub attempts: AtomicU64,
}

impl OxStats {
    /// `(name, value)` pairs, as [`mailpush_core::Driver::counters`] reports them.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("ox_sent", self.sent.load(Ordering::Relaxed)),
            ("ox_failed", self.failed.load(Ordering::Relaxed)),
            ("ox_retried", self.retried.load(Ordering::Relaxed)),
            ("ox_attempts", self.attempts.load(Ordering::Relaxed)),
        ]
    }
}

/// A `Retry-After` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAfter {
    Seconds(u64),
    Date(SystemTime),
}

impl RetryAfter {
    /// Parses delta-seconds or an HTTP-date; `None` for anything else (ignored, like
    /// Dovecot does).
    pub fn parse(v: &str) -> Option<RetryAfter> {
        let v = v.trim();
        if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
            return v.parse().ok().map(RetryAfter::Seconds);
        }
        httpdate::parse_http_date(v).ok().map(RetryAfter::Date)
    }

    /// Seconds from `now` (negative when in the past), counted in whole seconds as
    /// Dovecot does with `time_t`.
    pub fn delay_secs(self, now: SystemTime) -> i64 {
        let secs = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        };
        match self {
            RetryAfter::Seconds(d) => i64::try_from(d).unwrap_or(i64::MAX),
            RetryAfter::Date(t) => secs(t).saturating_sub(secs(now)),
        }
    }
}

/// What one attempt produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// An HTTP response.
    Response {
        status: u16,
        /// The reason phrase as the server sent it.
        reason: String,
        /// Whether a `Location` header came with it.
        location: bool,
        retry_after: Option<RetryAfter>,
    },
    /// No response within the per-attempt timeout.
    TimedOut,
    /// The connection could not be set up (refused, unreachable, TLS); `certificate`:
    /// the server's certificate was not trusted.
    ConnectFailed { cause: String, certificate: bool },
    /// The connect itself timed out (`target` is `host:port`).
    ConnectTimedOut { target: String, after: Duration },
    /// The connection broke while the request was pending.
    ConnectionLost { cause: String },
}

/// The decision about one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Dovecot's `<msg>`: `200 OK`, `500 Internal Server Error`, `Request timed out`, …
    pub message: String,
    /// 2xx.
    pub success: bool,
    /// Retry within this delivery (attempts permitting), no earlier than after this delay.
    pub retry_in: Option<Duration>,
    /// Whether a later delivery attempt may succeed (the spool's decision input), by
    /// mailpush's one classification of HTTP failures ([`mailpush_http_failure`]).
    pub retryable: bool,
    /// The server's Retry-After, as a delay.
    pub retry_after: Option<Duration>,
}

/// Dovecot's `http_client_request_delay_from_response`: -1 delay too long, 0 none or
/// expired, 1 a valid delay (until `retry_after`); the maximum is the per-attempt
/// timeout in whole seconds (`max_auto_retry_delay` is unset for ox).
fn delay_from_response(retry_after: Option<RetryAfter>, timeout_msecs: u32, now: SystemTime) -> i8 {
    match retry_after {
        None => 0,
        Some(ra) => {
            let d = ra.delay_secs(now);
            if d < 0 {
                0
            } else if d > i64::from(timeout_msecs / 1000) {
                -1
            } else {
                1
            }
        }
    }
}

/// Whether a later delivery may help, by mailpush's one classification of HTTP failures
/// (Dovecot's own within-delivery retries are `Verdict::retry_in`).
fn later(attempt: &Attempt, now: SystemTime) -> bool {
    use mailpush_http_failure::{status, transport, Transport};
    match attempt {
        Attempt::Response {
            status: s,
            location,
            ..
        } if (300..400).contains(s) && *location => false,
        Attempt::Response { status: s, .. } => status(*s, None, now).is_some_and(|c| c.retryable()),
        Attempt::TimedOut | Attempt::ConnectTimedOut { .. } => {
            transport(Transport::Timeout).retryable()
        }
        Attempt::ConnectionLost { .. } => transport(Transport::ConnectionLost).retryable(),
        Attempt::ConnectFailed {
            certificate: true, ..
        } => transport(Transport::TlsCertificate).retryable(),
        Attempt::ConnectFailed { .. } => transport(Transport::ConnectRefused).retryable(),
    }
}

/// Dovecot 2.3's decision for one attempt (see the module docs); whether a later
/// delivery may help is mailpush's one classification ([`later`]).
pub fn judge(attempt: &Attempt, timeout_msecs: u32, now: SystemTime) -> Verdict {
    let mut v = judge_dovecot(attempt, timeout_msecs, now);
    v.retryable = !v.success && later(attempt, now);
    v
}

fn judge_dovecot(attempt: &Attempt, timeout_msecs: u32, now: SystemTime) -> Verdict {
    let failed = |message: String, retry_in: Option<Duration>, retryable: bool| Verdict {
        message,
        success: false,
        retry_in,
        retryable,
        retry_after: None,
    };
    match attempt {
        Attempt::Response {
            status,
            reason,
            location,
            retry_after,
        } => {
            let status = *status;
            let message = format!("{status} {reason}");
            let delay = retry_after.map(|ra| ra.delay_secs(now));
            let mut v = if (200..300).contains(&status) {
                Verdict {
                    message,
                    success: true,
                    retry_in: None,
                    retryable: false,
                    retry_after: None,
                }
            } else if (300..400).contains(&status)
                && status != 304
                && *location
                && delay_from_response(*retry_after, timeout_msecs, now) >= 0
            {
                // max_redirects = 0.
                failed("Redirect refused".into(), None, false)
            } else if status == 408 {
                failed(message, Some(Duration::ZERO), true)
            } else {
                failed(message, None, false)
            };
            v.retry_after = delay.map(|d| Duration::from_secs(d.max(0) as u64));
            v
        }
        Attempt::TimedOut => failed("Request timed out".into(), Some(Duration::ZERO), true),
        Attempt::ConnectionLost { cause } => failed(
            format!("Connection lost: {cause}"),
            Some(Duration::ZERO),
            true,
        ),
        Attempt::ConnectFailed { cause, .. } => failed(cause.clone(), None, false),
        Attempt::ConnectTimedOut { target, after } => failed(
            format!(
                "connect({target}) failed: Connection timed out in {}.{:03} secs",
                after.as_secs(),
                after.subsec_millis()
            ),
            None,
            true,
        ),
    }
}

/// Backoff before retry `n` (1-based): 50 ms, 100 ms, 200 ms, … up to 1 s.
pub fn backoff(n: u32) -> Duration {
    Exponential {
        first: Duration::from_millis(50),
        max: Duration::from_secs(1),
    }
    .delay(n.saturating_sub(1))
}

/// Largest response body read (and discarded) to keep a connection reusable.
const MAX_DRAIN: usize = 64 * 1024;

/// The pooled client of one driver.
pub struct OxClient {
    pool: Pool,
    /// The request target (path and query), the `Host` and the `Authorization` values.
    target: Uri,
    host: HeaderValue,
    authorization: Option<HeaderValue>,
    /// Connects that take longer fail as Dovecot's connect timeout.
    connect_timeout: Option<Duration>,
    config: OxConfig,
    number: u32,
    stats: OxStats,
}

impl OxClient {
    /// Builds the pool. `ca_pem` is the content of `ssl_ca_file`, if any.
    pub fn new(config: OxConfig, number: u32, ca_pem: Option<&[u8]>) -> Result<Self, String> {
        let invalid =
            |what: &str| format!("Failed to parse OX REST URL {}: {what}", config.url_display);
        let target = Uri::try_from(config.target.as_str())
            .map_err(|_| invalid("Invalid character in URL path or query"))?;
        let host = HeaderValue::try_from(config.host_header.as_str())
            .map_err(|_| invalid("Invalid host name in URL"))?;
        let authorization = match &config.basic_auth {
            Some(auth) => {
                let token = base64::engine::general_purpose::STANDARD.encode(auth.credentials());
                let mut v = HeaderValue::try_from(format!("Basic {token}"))
                    .map_err(|_| invalid("Invalid userinfo"))?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        // Slightly shorter than the request timeout so a connect that hangs reports as a
        // connect failure (not retried, as in Dovecot) rather than as a request timeout.
        let connect_timeout = config
            .timeout
            .map(|t| t.saturating_sub((t / 10).min(Duration::from_millis(10))));
        Ok(OxClient {
            pool: Pool::new(&config, ca_pem)?,
            target,
            host,
            authorization,
            connect_timeout,
            config,
            number,
            stats: OxStats::default(),
        })
    }

    /// The counters.
    pub fn stats(&self) -> &OxStats {
        &self.stats
    }

    /// The configuration in use.
    pub fn config(&self) -> &OxConfig {
        &self.config
    }

    /// The request as Dovecot 2.3's ox driver sends it, captured from Dovecot 2.3.19.1
    /// (`drivers/ox/tests/dovecot-requests/`): `PUT <path?query> HTTP/1.1`, then exactly
    /// these headers, in this order and (written title-cased by hyper) this case:
    /// `Host`, `Date`, `Authorization: Basic …` (URL with a user and a password),
    /// `Content-Length`, `Connection: Keep-Alive`,
    /// `Content-Type: application/json; charset=utf-8`; then the body.
    fn request(&self, body: &str, date: &HeaderValue) -> Request<String> {
        let mut req = Request::new(body.to_string());
        *req.method_mut() = Method::PUT;
        *req.uri_mut() = self.target.clone();
        let h = req.headers_mut();
        h.insert(header::HOST, self.host.clone());
        h.insert(header::DATE, date.clone());
        if let Some(auth) = &self.authorization {
            h.insert(header::AUTHORIZATION, auth.clone());
        }
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        h.insert(header::CONNECTION, HeaderValue::from_static("Keep-Alive"));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        req
    }

    /// A new connection within the connect timeout.
    async fn connect(&self) -> Result<Conn, Attempt> {
        let started = Instant::now();
        let open = self.pool.connect();
        let result = match self.connect_timeout {
            Some(t) => match tokio::time::timeout(t, open).await {
                Ok(r) => r,
                Err(_) => {
                    return Err(Attempt::ConnectTimedOut {
                        target: self.config.authority.clone(),
                        after: started.elapsed(),
                    })
                }
            },
            None => open.await,
        };
        result.map_err(|e| Attempt::ConnectFailed {
            cause: format!(
                "connect({}) failed: {}",
                self.config.authority,
                root_cause(&e)
            ),
            certificate: untrusted_certificate(&e),
        })
    }

    /// Sends the request on an idle connection or a new one; the response head, and the
    /// connection with the response body still to read.
    async fn exchange(
        &self,
        body: &str,
        date: &HeaderValue,
    ) -> (Attempt, Option<(Conn, Incoming)>) {
        loop {
            let (mut conn, reused) = match self.pool.take() {
                Some(c) => (c, true),
                None => match self.connect().await {
                    Ok(c) => (c, false),
                    Err(a) => return (a, None),
                },
            };
            match conn.sender.try_send_request(self.request(body, date)).await {
                Ok(resp) => {
                    let (parts, incoming) = resp.into_parts();
                    return (response_attempt(&parts), Some((conn, incoming)));
                }
                // An idle connection the server closed meanwhile, nothing sent: not an
                // attempt; take another.
                Err(e) if reused && e.message().is_some() => continue,
                Err(e) => {
                    return (
                        Attempt::ConnectionLost {
                            cause: root_cause(e.error()),
                        },
                        None,
                    )
                }
            }
        }
    }

    /// Reads the (ignored) response body, then keeps the connection if it can carry the
    /// next request.
    async fn finish(&self, mut conn: Conn, mut body: Incoming) {
        let mut drained = 0;
        loop {
            match body.frame().await {
                None => break,
                Some(Ok(frame)) => {
                    drained += frame.data_ref().map_or(0, |d| d.len());
                    if drained > MAX_DRAIN {
                        return;
                    }
                }
                Some(Err(_)) => return,
            }
        }
        drop(body);
        if conn.sender.ready().await.is_ok() {
            self.pool.put(conn);
        }
    }

    /// One attempt, bounded by the per-attempt timeout.
    async fn attempt(&self, body: &str, date: &HeaderValue) -> Attempt {
        let deadline = self.config.timeout.map(|t| tokio::time::Instant::now() + t);
        let exchange = self.exchange(body, date);
        let (attempt, rest) = match deadline {
            Some(d) => match tokio::time::timeout_at(d, exchange).await {
                Ok(r) => r,
                Err(_) => return Attempt::TimedOut,
            },
            None => exchange.await,
        };
        if let Some((conn, incoming)) = rest {
            let finish = self.finish(conn, incoming);
            match deadline {
                Some(d) => {
                    let _ = tokio::time::timeout_at(d, finish).await;
                }
                None => finish.await,
            }
        }
        attempt
    }

    /// Sends one notification: attempts = max_retries + 1, retrying only where Dovecot
    /// does; logs with Dovecot's wording (`push-notification-ox: `), the URL's password
    /// masked.
    pub async fn send(&self, body: &str) -> Result<(), Failure> {
        let started = Instant::now();
        // One Date per notification: Dovecot's retries resend the first attempt's Date
        // (seen on the wire: a retry 2 s later carried the same Date).
        let date = HeaderValue::try_from(httpdate::fmt_http_date(SystemTime::now()))
            .unwrap_or_else(|_| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"));
        let timeout_msecs = u32::try_from(self.config.timeout_msecs()).unwrap_or(u32::MAX);
        let mut retries = 0u32;
        loop {
            self.stats.attempts.fetch_add(1, Ordering::Relaxed);
            let attempt = self.attempt(body, &date).await;
            let v = judge(&attempt, timeout_msecs, SystemTime::now());
            if let Some(delay) = v.retry_in.filter(|_| retries < self.config.max_retries) {
                retries += 1;
                self.stats.retried.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    target: "mailpush::ox",
                    driver = self.number,
                    url = %self.config.url_display,
                    "push-notification-ox: Retrying notification ({}, retry {retries} of {})",
                    v.message,
                    self.config.max_retries
                );
                tokio::time::sleep(delay.max(backoff(retries))).await;
                continue;
            }
            let mut msg = v.message;
            if retries > 0 {
                let t = started.elapsed();
                msg.push_str(&format!(
                    " ({retries} retries in {}.{:03} secs)",
                    t.as_secs(),
                    t.subsec_millis()
                ));
            }
            if v.success {
                self.stats.sent.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    target: "mailpush::ox",
                    driver = self.number,
                    "push-notification-ox: Notification sent successfully: {msg}"
                );
                return Ok(());
            }
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                target: "mailpush::ox",
                driver = self.number,
                url = %self.config.url_display,
                "push-notification-ox: Error when sending notification: {msg}"
            );
            return Err(Failure {
                reason: format!("Error when sending notification: {msg}"),
                retryable: v.retryable,
                retry_after: v.retry_after,
                deferred: false,
            });
        }
    }
}

/// The attempt a response head makes: status, reason phrase as sent, `Location` and
/// `Retry-After`.
fn response_attempt(parts: &hyper::http::response::Parts) -> Attempt {
    let reason = parts
        .extensions
        .get::<hyper::ext::ReasonPhrase>()
        .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
        .or_else(|| parts.status.canonical_reason().map(str::to_string))
        .unwrap_or_default();
    Attempt::Response {
        status: parts.status.as_u16(),
        reason,
        location: parts.headers.contains_key(header::LOCATION),
        retry_after: parts
            .headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(RetryAfter::parse),
    }
}

/// Whether a connect error is the server's certificate not being trusted. The rustls
/// error sits inside nested `io::Error`s, whose `source()` skips the wrapped error
/// itself: those are unwrapped with `get_ref`.
fn untrusted_certificate(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if matches!(
            err.downcast_ref::<rustls::Error>(),
            Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented)
        ) {
            return true;
        }
        cur = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    false
}

/// The innermost error's text, without the ` (os error N)` suffix (Dovecot's `%m`).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    let text = cur.to_string();
    match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => text[..i].to_string(),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, retry_after: Option<RetryAfter>) -> Attempt {
        Attempt::Response {
            status,
            reason: "R".into(),
            location: false,
            retry_after,
        }
    }

    #[test]
    fn dovecots_retry_rules() {
        let now = SystemTime::now();
        let j = |a: &Attempt| judge(a, 2000, now);
        let ok = j(&resp(204, None));
        assert!(ok.success && ok.retry_in.is_none());
        assert_eq!(ok.message, "204 R");
        // Dovecot retries within the delivery only 408 (not 503, as seen on the wire); a
        // later delivery is tried by mailpush's one classification (408, 429, 5xx).
        for (status, retry, retryable) in [
            (500, false, true),
            (502, false, true),
            (404, false, false),
            (429, false, true),
            (408, true, true),
            (503, false, true),
        ] {
            let v = j(&resp(status, None));
            assert_eq!(
                (v.success, v.retry_in.is_some(), v.retryable),
                (false, retry, retryable),
                "{status}"
            );
        }
        // 503 with Retry-After: not retried within the delivery; the server's delay is
        // passed on for the later one.
        let s = |n| Some(RetryAfter::Seconds(n));
        for n in [0, 1, 2, 3] {
            assert_eq!(j(&resp(503, s(n))).retry_in, None, "{n}");
        }
        assert_eq!(
            j(&resp(503, s(3))).retry_after,
            Some(Duration::from_secs(3))
        );
        let past = Some(RetryAfter::Date(now - Duration::from_secs(10)));
        assert_eq!(j(&resp(503, past)).retry_in, None);
        // Redirects are refused, not followed.
        let redirect = Attempt::Response {
            status: 302,
            reason: "Found".into(),
            location: true,
            retry_after: None,
        };
        let v = j(&redirect);
        assert_eq!(
            (v.message.as_str(), v.retry_in, v.retryable),
            ("Redirect refused", None, false)
        );
        assert_eq!(j(&resp(304, None)).message, "304 R");
        // Transport.
        assert_eq!(j(&Attempt::TimedOut).message, "Request timed out");
        assert!(j(&Attempt::TimedOut).retry_in.is_some());
        let lost = j(&Attempt::ConnectionLost {
            cause: "reset".into(),
        });
        assert_eq!(
            (lost.message.as_str(), lost.retryable),
            ("Connection lost: reset", true)
        );
        assert!(lost.retry_in.is_some());
        let refused = j(&Attempt::ConnectFailed {
            cause: "connect(h:1) failed: Connection refused".into(),
            certificate: false,
        });
        assert_eq!((refused.retry_in, refused.retryable), (None, true));
        let untrusted = j(&Attempt::ConnectFailed {
            cause: "connect(h:1) failed: invalid peer certificate: UnknownIssuer".into(),
            certificate: true,
        });
        assert_eq!((untrusted.retry_in, untrusted.retryable), (None, false));
        let ct = j(&Attempt::ConnectTimedOut {
            target: "h:1".into(),
            after: Duration::from_millis(1990),
        });
        assert_eq!(
            ct.message,
            "connect(h:1) failed: Connection timed out in 1.990 secs"
        );
        assert_eq!((ct.retry_in, ct.retryable), (None, true));
    }

    #[test]
    fn retry_after_values() {
        assert_eq!(RetryAfter::parse(" 120 "), Some(RetryAfter::Seconds(120)));
        assert_eq!(RetryAfter::parse("-1"), None);
        assert_eq!(RetryAfter::parse("soon"), None);
        let t = RetryAfter::parse("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert!(t.delay_secs(SystemTime::now()) < 0);
        let now = SystemTime::now();
        let later =
            RetryAfter::parse(&httpdate::fmt_http_date(now + Duration::from_secs(5))).unwrap();
        assert!((4..=5).contains(&later.delay_secs(now)));
    }

    #[test]
    fn backoff_is_short_and_bounded() {
        assert_eq!(backoff(1), Duration::from_millis(50));
        assert_eq!(backoff(2), Duration::from_millis(100));
        assert_eq!(backoff(5), Duration::from_millis(800));
        assert_eq!(backoff(60), Duration::from_secs(1));
    }

    /// hyper writes the request target with the `Uri`'s Display: it must give back the
    /// URL's path and query as written, as Dovecot sends them (`/upper?` included).
    #[test]
    fn targets_are_written_as_configured() {
        for target in [
            "/preliminary/http-notify/v1/notify",
            "/preliminary/http-notify/v1/notify?a=b",
            "/x%20y?q=%41&r",
            "/upper?",
            "/?a=b",
            "/",
        ] {
            assert_eq!(Uri::try_from(target).unwrap().to_string(), target);
        }
    }

    #[test]
    fn root_cause_drops_os_error() {
        let e = std::io::Error::from_raw_os_error(111);
        assert_eq!(root_cause(&e), "Connection refused");
    }
}
