//! The HTTP side: one keep-alive connection pool per driver, shared by all users;
//! Dovecot's retry rules; Dovecot's log wording.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mailpush_core::Failure;

use crate::config::OxConfig;

/// Counters (exposed as driver metrics).
#[derive(Debug, Default)]
pub struct OxStats {
    pub sent: AtomicU64,
    pub failed: AtomicU64,
    pub retried: AtomicU64,
}

/// The pooled client.
pub struct OxClient {
    http: reqwest::Client,
    config: OxConfig,
}

/// Why one attempt failed, and whether Dovecot would retry it.
struct AttemptError {
    message: String,
    retry: bool,
    retry_after: Option<Duration>,
}

impl OxClient {
    pub fn new(config: OxConfig) -> Result<Self, String> {
        let mut b = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.timeout)
            .pool_idle_timeout(Duration::from_secs(90));
        if let Some(path) = &config.ssl_ca_file {
            let pem = std::fs::read(path).map_err(|e| format!("ssl_ca_file {path}: {e}"))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| format!("ssl_ca_file {path}: {e}"))?;
            b = b.add_root_certificate(cert);
        }
        let http = b
            .build()
            .map_err(|e| format!("Unable to initialize the HTTP client: {e}"))?;
        Ok(OxClient { http, config })
    }

    async fn attempt(&self, body: &str) -> Result<(), AttemptError> {
        let mut req = self
            .http
            .put(&self.config.url)
            .timeout(self.config.timeout)
            .header("Content-Type", "application/json; charset=utf-8")
            .body(body.to_string());
        if let Some((user, pass)) = &self.config.basic_auth {
            req = req.basic_auth(user, Some(pass));
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status();
                if status.is_success() {
                    return Ok(());
                }
                let retry_after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let has_retry_after = resp.headers().contains_key("retry-after");
                let message = if status.is_redirection() {
                    "Redirect refused".to_string()
                } else {
                    format!(
                        "{} {}",
                        status.as_u16(),
                        status.canonical_reason().unwrap_or("")
                    )
                };
                Err(AttemptError {
                    message,
                    retry: status.as_u16() == 408 || (status.as_u16() == 503 && has_retry_after),
                    retry_after,
                })
            }
            Err(e) => {
                let (message, retry) = if e.is_timeout() {
                    ("Request timed out".to_string(), true)
                } else if e.is_connect() {
                    // Dovecot does not retry failed connects (max_connect_attempts unset).
                    (format!("Connection failed: {}", root_cause(&e)), false)
                } else {
                    // The connection was lost or closed while the request was pending.
                    (format!("Connection lost: {}", root_cause(&e)), true)
                };
                Err(AttemptError {
                    message,
                    retry,
                    retry_after: None,
                })
            }
        }
    }

    /// Sends one notification: attempts = max_retries + 1, retrying only where Dovecot
    /// does, with a short backoff.
    pub async fn send(&self, body: &str, stats: &OxStats) -> Result<(), Failure> {
        let started = Instant::now();
        let mut retries = 0u32;
        loop {
            match self.attempt(body).await {
                Ok(()) => {
                    stats.sent.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(target: "push-notification-ox", "Notification sent successfully");
                    return Ok(());
                }
                Err(e) if e.retry && retries < self.config.max_retries => {
                    retries += 1;
                    stats.retried.fetch_add(1, Ordering::Relaxed);
                    // A short backoff, or the server's Retry-After up to one second.
                    let pause = e
                        .retry_after
                        .map(|ra| ra.min(Duration::from_secs(1)))
                        .unwrap_or(Duration::from_millis(50 * retries as u64));
                    tokio::time::sleep(pause).await;
                }
                Err(e) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    let mut msg = e.message;
                    if retries > 0 {
                        let t = started.elapsed();
                        msg.push_str(&format!(
                            " ({retries} retries in {}.{:03} secs)",
                            t.as_secs(),
                            t.subsec_millis()
                        ));
                    }
                    tracing::error!(target: "push-notification-ox", url = %self.config.url_display, "Error when sending notification: {msg}");
                    return Err(Failure {
                        reason: format!("Error when sending notification: {msg}"),
                        retryable: e.retry,
                        retry_after: e.retry_after,
                    });
                }
            }
        }
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
