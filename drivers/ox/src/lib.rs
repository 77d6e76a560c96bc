//! The `ox` driver: OX App Suite HTTP push, request for request as Dovecot 2.3's ox driver
//! sends it (`dovecot-push.md` §7), and better where Dovecot is weak: a request never
//! blocks anything but this driver's own lane, one keep-alive pool serves all users,
//! retries back off briefly, failures tell the spool whether to try again, counters are
//! exposed, and the URL's password never reaches a log.
//!
//! - [`config`]: the arguments (`url`, `cache_lifetime`, `max_retries`, `timeout_msecs`,
//!   `user_from_metadata`, `ssl_ca_file`);
//! - [`activation`]: METADATA `/private/vendor/vendor.dovecot/http-notify`, read for
//!   every transaction;
//! - [`body`]: the JSON body, byte for byte;
//! - [`client`]: HTTP (the request head as Dovecot writes it), Dovecot's retry rules and
//!   log wording, counters; its connections are a keep-alive pool (`pool`);
//! - `resend`: the pushes a transaction already sent, which its retry does not send again.

pub mod activation;
pub mod body;
pub mod client;
pub mod config;
mod pool;
mod resend;

use std::sync::Arc;

use async_trait::async_trait;
use mailpush_core::{
    Begin, Driver, DriverFactory, DriverInit, DriverTxn, Event, EventName, EventSet, Failure,
    InitError, Initialised, MessageRecord, MetadataLookup, Transaction,
};

pub use activation::METADATA_KEY;
pub use client::OxStats;
pub use config::{BasicAuth, OxConfig};

use activation::{activation_value, INTERNAL_KEY};
use client::OxClient;
use mailpush_ox_wire::metadata_user;

/// The only mailbox ox watches (exact, case-sensitive vname).
pub const WATCHED_MAILBOX: &str = "INBOX";

/// Creates `ox` drivers.
#[derive(Debug, Default)]
pub struct OxFactory;

#[async_trait]
impl DriverFactory for OxFactory {
    fn name(&self) -> &'static str {
        "ox"
    }

    async fn init(&self, init: &DriverInit) -> Result<Initialised, InitError> {
        let (config, warnings) = OxConfig::parse(&init.args)?;
        let ca_pem =
            match &config.ssl_ca_file {
                Some(path) => {
                    let path = init.resolve_path(&path.to_string_lossy());
                    Some(std::fs::read(&path).map_err(|e| {
                        InitError::new(format!("ssl_ca_file {}: {e}", path.display()))
                    })?)
                }
                None => None,
            };
        tracing::debug!(
            target: "mailpush::ox",
            driver = init.number,
            "push-notification-ox: Using URL {}",
            config.url_display
        );
        tracing::debug!(
            target: "mailpush::ox",
            driver = init.number,
            "push-notification-ox: Using cache lifetime: {}",
            config.cache_lifetime.as_secs()
        );
        let timeout = match config.timeout {
            Some(t) => format!("{} ms per attempt", t.as_millis()),
            None => "none".to_string(),
        };
        let mut details = vec![
            format!("url: {}", config.url_display),
            format!(
                "cache_lifetime: {}s, max_retries: {} ({} attempts), timeout: {timeout}, \
                 user_from_metadata: {}",
                config.cache_lifetime.as_secs(),
                config.max_retries,
                u64::from(config.max_retries) + 1,
                if config.user_from_metadata {
                    "yes"
                } else {
                    "no"
                }
            ),
        ];
        if let Some(ca) = &config.ssl_ca_file {
            details.push(format!("ssl_ca_file: {}", ca.display()));
            // (A reload compares it: a renewed CA bundle restarts the driver.)
            if let Some(pem) = &ca_pem {
                use sha2::Digest;
                details.push(format!(
                    "sha256: {} (ssl_ca_file)",
                    hex::encode(sha2::Sha256::digest(pem))
                ));
            }
        }
        let inner = OxInner {
            number: init.number,
            sent: resend::SentRecently::new(FRESH_FOR),
            user_from_metadata: config.user_from_metadata,
            client: OxClient::new(config, init.number, ca_pem.as_deref())
                .map_err(InitError::new)?,
            metadata: init.metadata.clone(),
        };
        let mut out = Initialised::new(Arc::new(OxDriver(Arc::new(inner))));
        out.warnings = warnings;
        out.details = details;
        Ok(out)
    }
}

struct OxInner {
    number: u32,
    /// The pushes sent for transactions that may be retried.
    sent: resend::SentRecently,
    user_from_metadata: bool,
    client: OxClient,
    metadata: Arc<dyn MetadataLookup>,
}

/// The ox driver (one per config line, shared by all users).
pub struct OxDriver(Arc<OxInner>);

impl OxDriver {
    /// The counters (also reported through [`Driver::counters`]).
    pub fn stats(&self) -> &OxStats {
        self.0.client.stats()
    }

    /// The parsed arguments.
    pub fn config(&self) -> &OxConfig {
        self.0.client.config()
    }
}

/// How long an ox notification stays worth sending, unless `retry_max_age=` says.
pub const FRESH_FOR: std::time::Duration = std::time::Duration::from_secs(120);

/// Transactions the ox driver has in flight at once by default (of different users; one
/// user's go in order). Dovecot sends from every mail process at once; a slow OX must not
/// make each user wait for all the others.
pub const DEFAULT_CONCURRENCY: usize = 16;

#[async_trait]
impl Driver for OxDriver {
    fn concurrency(&self) -> usize {
        DEFAULT_CONCURRENCY
    }

    /// A new-mail push minutes late is worthless, and Dovecot gives up within seconds:
    /// a notification older than [`FRESH_FOR`] is not sent (dead letter, "expired"), and
    /// a user's next notification never waits behind one that failed (that one becomes
    /// a dead letter, "skipped"). `retry_max_age=` and `hold_max=` on the line override.
    fn freshness(&self) -> mailpush_core::Freshness {
        mailpush_core::Freshness {
            max_age: Some(FRESH_FOR),
            hold_max: Some(std::time::Duration::ZERO),
        }
    }

    /// Dovecot's `push_notification_driver_ox_begin_txn`, in its order: METADATA,
    /// then the mailbox, then the `user=` in the value.
    async fn begin_txn(&self, txn: &Arc<Transaction>) -> Result<Begin, Failure> {
        let inner = &self.0;
        let n = inner.number;
        let value = match activation_value(txn, inner.metadata.as_ref()) {
            Ok(Some(v)) => v,
            Ok(None) => {
                tracing::debug!(
                    target: "mailpush::ox",
                    driver = n,
                    user = %txn.user,
                    "push-notification-ox: Skipped because not active ({INTERNAL_KEY} METADATA not set)"
                );
                return Ok(Begin::Skip);
            }
            Err(e) => {
                tracing::error!(
                    target: "mailpush::ox",
                    driver = n,
                    user = %txn.user,
                    "push-notification-ox: Skipped because unable to get attribute: {e}"
                );
                // Dovecot skips the transaction. mailpush lets the spool try again one
                // that ox could push (a MessageNew in INBOX); any other is skipped, as
                // there, rather than retried for nothing.
                let pushable = txn
                    .events
                    .iter()
                    .any(|e| matches!(e, Event::MessageNew(_)) && e.mailbox() == WATCHED_MAILBOX);
                if !pushable {
                    return Ok(Begin::Skip);
                }
                return Err(Failure::retryable(format!(
                    "unable to get attribute {METADATA_KEY}: {e}"
                )));
            }
        };
        if !txn.events.iter().any(|e| e.mailbox() == WATCHED_MAILBOX) {
            let vname = txn.events.first().map_or("", |e| e.mailbox());
            tracing::debug!(
                target: "mailpush::ox",
                driver = n,
                user = %txn.user,
                "push-notification-ox: Skipped because {vname} is not a watched mailbox"
            );
            return Ok(Begin::Skip);
        }
        let Some(meta_user) = metadata_user(&value) else {
            tracing::error!(
                target: "mailpush::ox",
                driver = n,
                user = %txn.user,
                "push-notification-ox: No user provided in config"
            );
            return Ok(Begin::Skip);
        };
        tracing::debug!(target: "mailpush::ox", driver = n, "push-notification-ox: User ({meta_user})");
        tracing::debug!(target: "mailpush::ox", driver = n, "push-notification-ox: Handling MessageNew event");
        let user = if inner.user_from_metadata {
            meta_user
        } else {
            txn.user.clone()
        };
        Ok(Begin::Join {
            events: EventSet::empty().with(EventName::MessageNew),
            txn: Box::new(OxTxn {
                inner: inner.clone(),
                id: txn.id.clone(),
                user,
            }),
        })
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        self.stats().snapshot()
    }
}

struct OxTxn {
    inner: Arc<OxInner>,
    /// The transaction's id: a retry of it sends only the pushes not sent before.
    id: String,
    user: String,
}

#[async_trait]
impl DriverTxn for OxTxn {
    /// One PUT per MessageNew message in INBOX.
    async fn process_msg(&mut self, record: &MessageRecord<'_>) -> Result<(), Failure> {
        if record.mailbox != WATCHED_MAILBOX {
            return Ok(());
        }
        let mut result = Ok(());
        for event in &record.events {
            if let Event::MessageNew(m) = event {
                let sent = &self.inner.sent;
                if sent.contains(&self.id, m.uid_validity, m.uid) {
                    tracing::debug!(
                        target: "mailpush::ox",
                        driver = self.inner.number,
                        "push-notification-ox: UID {} already sent in an earlier attempt of this transaction",
                        m.uid
                    );
                    continue;
                }
                let body = body::request_body(&self.user, m);
                tracing::debug!(
                    target: "mailpush::ox",
                    driver = self.inner.number,
                    "push-notification-ox: Sending notification: {body}"
                );
                match self.inner.client.send(&body).await {
                    Ok(()) => sent.insert(&self.id, m.uid_validity, m.uid),
                    Err(f) => result = Err(f),
                }
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use mailpush_core::{DriverArgs, NoMetadata};

    use super::*;

    fn init(args: &str) -> DriverInit {
        DriverInit {
            number: 1,
            name: "ox".into(),
            args: DriverArgs::parse(args),
            raw: Some(args.into()),
            config_dir: PathBuf::from("/nonexistent"),
            state_dir: PathBuf::from("/nonexistent"),
            metadata: Arc::new(NoMetadata),
            breaker: Default::default(),
            plugin_env: Default::default(),
            background_load: false,
            check_only: false,
        }
    }

    #[tokio::test]
    async fn init_errors_and_details() {
        let err =
            |a: &'static str| async move { OxFactory.init(&init(a)).await.err().unwrap().message };
        assert_eq!(err("").await, "Driver requires the url parameter");
        assert!(err("url=http://h/ ssl_ca_file=missing.pem")
            .await
            .starts_with("ssl_ca_file /nonexistent/missing.pem: "));
        // ssl_ca_file: a PEM bundle is added to the system roots; anything else fails.
        let dir = std::env::temp_dir().join(format!("mailpush-ox-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let e = OxFactory
            .init(&init(&format!(
                "url=https://h/ ssl_ca_file={}",
                garbage.display()
            )))
            .await
            .err()
            .unwrap()
            .message;
        assert!(e.starts_with("ssl_ca_file: "), "{e}");
        let bundle = "/etc/ssl/certs/ca-certificates.crt";
        if std::path::Path::new(bundle).exists() {
            let i = OxFactory
                .init(&init(&format!("url=https://h/ ssl_ca_file={bundle}")))
                .await
                .unwrap();
            assert_eq!(i.details[2], format!("ssl_ca_file: {bundle}"));
        }
        let _ = std::fs::remove_dir_all(&dir);
        let i = OxFactory
            .init(&init("url=http://h/ max_retries=3 timeout_msecs=x"))
            .await
            .unwrap();
        assert_eq!(i.warnings.len(), 1);
        assert_eq!(
            i.details[1],
            "cache_lifetime: 60s, max_retries: 3 (4 attempts), timeout: 2000 ms per attempt, \
             user_from_metadata: no"
        );
    }
}
