//! The `ox` driver: OX App Suite HTTP push, request for request as Dovecot 2.3 sends it
//! (`../shared/dovecot-push.md` §7), and better where Dovecot is weak: requests never block
//! the caller (each driver runs on its own lane), one keep-alive pool is shared by all
//! users, retries back off, the password never reaches a log.
//!
//! - [`config`]: arguments (`url`, `cache_lifetime`, `max_retries`, `timeout_msecs`,
//!   `user_from_metadata`, `ssl_ca_file`);
//! - [`activation`]: METADATA `/private/vendor/vendor.dovecot/http-notify` and its cache;
//! - [`body`]: the JSON body, byte for byte;
//! - [`client`]: HTTP, retries, Dovecot's log wording.

pub mod activation;
pub mod body;
pub mod client;
pub mod config;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use mailpush_core::{
    Begin, Driver, DriverFactory, DriverInit, DriverTxn, Event, EventName, EventSet, Failure,
    InitError, Initialised, MessageRecord, MetadataLookup, Transaction,
};

use activation::{metadata_user, Clock, MetadataCache, SystemClock, METADATA_KEY};
use client::{OxClient, OxStats};
use config::OxConfig;

/// Registers `ox`.
pub struct OxFactory {
    clock: Arc<dyn Clock>,
}

impl Default for OxFactory {
    fn default() -> Self {
        OxFactory {
            clock: Arc::new(SystemClock),
        }
    }
}

impl OxFactory {
    /// A factory whose drivers read time from `clock` (tests move it by hand).
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        OxFactory { clock }
    }
}

#[async_trait]
impl DriverFactory for OxFactory {
    fn name(&self) -> &'static str {
        "ox"
    }

    async fn init(&self, init: &DriverInit) -> Result<Initialised, InitError> {
        let (config, warnings) = OxConfig::parse(&init.args).map_err(InitError)?;
        tracing::debug!(
            driver = init.number,
            "push-notification-ox: Using URL {}",
            config.url_display
        );
        tracing::debug!(
            driver = init.number,
            "push-notification-ox: Using cache lifetime: {}",
            config.cache_lifetime.as_secs()
        );
        let details = vec![
            format!("url: {}", config.url_display),
            format!(
                "cache_lifetime: {}s, max_retries: {} ({} attempts), timeout_msecs: {} per attempt, user_from_metadata: {}",
                config.cache_lifetime.as_secs(),
                config.max_retries,
                config.max_retries + 1,
                config.timeout.as_millis(),
                if config.user_from_metadata { "yes" } else { "no" }
            ),
        ];
        let driver = OxDriver(Arc::new(OxInner {
            number: init.number,
            cache: MetadataCache::new(config.cache_lifetime),
            user_from_metadata: config.user_from_metadata,
            client: OxClient::new(config).map_err(InitError)?,
            metadata: init.metadata.clone(),
            clock: self.clock.clone(),
            stats: OxStats::default(),
        }));
        let mut out = Initialised::new(Arc::new(driver));
        out.warnings = warnings;
        out.details = details;
        Ok(out)
    }
}

struct OxInner {
    number: u32,
    cache: MetadataCache,
    user_from_metadata: bool,
    client: OxClient,
    metadata: Arc<dyn MetadataLookup>,
    clock: Arc<dyn Clock>,
    stats: OxStats,
}

/// The ox driver.
pub struct OxDriver(Arc<OxInner>);

#[async_trait]
impl Driver for OxDriver {
    async fn begin_txn(&self, txn: &Arc<Transaction>) -> Result<Begin, Failure> {
        let inner = &self.0;
        let value = match inner
            .cache
            .lookup(txn, inner.metadata.as_ref(), inner.clock.as_ref())
        {
            Ok(Some(v)) => v,
            Ok(None) => {
                tracing::debug!(driver = inner.number, "push-notification-ox: Skipped because not active (/private/vendor/vendor.dovecot/pvt/server/vendor/vendor.dovecot/http-notify METADATA not set)");
                return Ok(Begin::Skip);
            }
            Err(e) => {
                tracing::error!(
                    driver = inner.number,
                    "push-notification-ox: Skipped because unable to get attribute: {e}"
                );
                return Err(Failure::retryable(format!(
                    "unable to get attribute {METADATA_KEY}: {e}"
                )));
            }
        };
        let Some(meta_user) = metadata_user(&value) else {
            tracing::error!(driver = inner.number, user = %txn.user, "push-notification-ox: No user provided in config");
            return Ok(Begin::Skip);
        };
        tracing::debug!(
            driver = inner.number,
            "push-notification-ox: User ({meta_user})"
        );
        let user = if inner.user_from_metadata {
            meta_user
        } else {
            txn.user.clone()
        };
        Ok(Begin::Join {
            events: EventSet::empty().with(EventName::MessageNew),
            txn: Box::new(OxTxn {
                inner: inner.clone(),
                user,
            }),
        })
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let s = &self.0.stats;
        vec![
            ("ox_sent", s.sent.load(Ordering::Relaxed)),
            ("ox_failed", s.failed.load(Ordering::Relaxed)),
            ("ox_retried", s.retried.load(Ordering::Relaxed)),
        ]
    }
}

struct OxTxn {
    inner: Arc<OxInner>,
    user: String,
}

#[async_trait]
impl DriverTxn for OxTxn {
    async fn process_msg(&mut self, record: &MessageRecord<'_>) -> Result<(), Failure> {
        // Only INBOX (exact, case-sensitive), only MessageNew; one PUT per message.
        if record.mailbox != "INBOX" {
            tracing::debug!(
                driver = self.inner.number,
                "push-notification-ox: Skipped because {} is not a watched mailbox",
                record.mailbox
            );
            return Ok(());
        }
        let mut result = Ok(());
        for event in &record.events {
            if let Event::MessageNew(m) = event {
                let body = body::request_body(&self.user, m);
                tracing::debug!(
                    driver = self.inner.number,
                    "push-notification-ox: Sending notification: {body}"
                );
                if let Err(f) = self.inner.client.send(&body, &self.inner.stats).await {
                    result = Err(f);
                }
            }
        }
        result
    }
}
