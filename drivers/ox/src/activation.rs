//! Activation through METADATA: the driver is active for a user only while
//! `/private/vendor/vendor.dovecot/http-notify` is set; values read from the store are
//! cached per user for `cache_lifetime` (successful reads only, like Dovecot).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mailpush_core::{MetadataError, MetadataLookup, Transaction};

/// The METADATA key (server metadata, as clients set it).
pub const METADATA_KEY: &str = "/private/vendor/vendor.dovecot/http-notify";

/// Time source, so tests can move time without sleeping.
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
}

/// The real clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock(Mutex<Instant>);

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock(Mutex::new(Instant::now()))
    }
}

impl ManualClock {
    /// Moves time forward.
    pub fn advance(&self, d: Duration) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) += d;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Per-user cache of successful METADATA reads.
pub struct MetadataCache {
    lifetime: Duration,
    entries: Mutex<HashMap<String, (String, Instant)>>,
}

impl MetadataCache {
    pub fn new(lifetime: Duration) -> Self {
        MetadataCache {
            lifetime,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The value for the transaction's user: the transaction's own `metadata` first (not
    /// cached: it is fresh), then the cache while `cached_at + lifetime > now`, then the
    /// store.
    pub fn lookup(
        &self,
        txn: &Transaction,
        store: &dyn MetadataLookup,
        clock: &dyn Clock,
    ) -> Result<Option<String>, MetadataError> {
        if let Some(v) = txn.metadata.get(METADATA_KEY) {
            return Ok(Some(v.clone()));
        }
        let now = clock.now();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((v, at)) = entries.get(&txn.user) {
            if *at + self.lifetime > now {
                return Ok(Some(v.clone()));
            }
        }
        let value = store.get(&txn.user, METADATA_KEY)?;
        match &value {
            Some(v) if !self.lifetime.is_zero() => {
                entries.insert(txn.user.clone(), (v.clone(), now));
            }
            _ => {
                entries.remove(&txn.user);
            }
        }
        Ok(value)
    }
}

/// Dovecot's tab-unescape (escape character \x01).
pub fn tab_unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\u{1}' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('0') => out.push('\0'),
            Some('1') => out.push('\u{1}'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('n') => out.push('\n'),
            Some(x) => out.push(x),
            None => {}
        }
    }
    out
}

/// The `user=` of a METADATA value (tab-separated `key=value`, last one wins).
pub fn metadata_user(value: &str) -> Option<String> {
    value
        .split('\t')
        .map(tab_unescape)
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .filter(|(k, _)| k == "user")
        .map(|(_, v)| v)
        .last()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_from_value() {
        assert_eq!(metadata_user("user=11@3"), Some("11@3".into()));
        assert_eq!(metadata_user("a=b\tuser=x\tuser=y"), Some("y".into()));
        assert_eq!(metadata_user("user="), Some("".into()));
        assert_eq!(metadata_user("nouser\ta=b"), None);
        assert_eq!(metadata_user("user=a\u{1}tb"), Some("a\tb".into()));
    }
}
