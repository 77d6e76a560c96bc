//! Activation through METADATA (`dovecot-push.md` §7.2): the driver is active for a user
//! only while `/private/vendor/vendor.dovecot/http-notify` is set. Values read from the
//! store are cached per user for `cache_lifetime` — successful reads only, as in Dovecot;
//! "not set" is read again every time. Time comes from a [`Clock`] so tests can move it.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use mailpush_core::{MetadataError, MetadataLookup, Transaction};

/// The METADATA key (server metadata, as clients set it).
pub use mailpush_ox_wire::METADATA_KEY;

/// Dovecot's internal name for the key, used in its log lines.
pub const INTERNAL_KEY: &str =
    "/private/vendor/vendor.dovecot/pvt/server/vendor/vendor.dovecot/http-notify";

/// Time source.
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to (for tests).
#[derive(Debug)]
pub struct ManualClock(Mutex<Instant>);

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock(Mutex::new(Instant::now()))
    }
}

impl ManualClock {
    /// A clock standing at the current instant.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves time forward.
    pub fn advance(&self, d: Duration) {
        *self.0.lock() += d;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.0.lock()
    }
}

/// Above this many cached users, expired entries are dropped on insert.
const PRUNE_ABOVE: usize = 4096;

/// Per-user cache of successful METADATA reads (Dovecot keeps one per user's driver
/// instance; mailpush has one driver for all users, hence the map).
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

    /// The value for the transaction's user: the transaction's own `metadata` first (it
    /// is fresh: never cached), then the cache while `cached_at + lifetime > now`
    /// (strict, so lifetime 0 never caches), then the store.
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
        let lock = || self.entries.lock();
        if let Some((v, at)) = lock().get(&txn.user) {
            if *at + self.lifetime > now {
                return Ok(Some(v.clone()));
            }
        }
        // Read the store without holding the cache lock.
        let value = store.get(&txn.user, METADATA_KEY)?;
        let mut entries = lock();
        match &value {
            Some(v) if !self.lifetime.is_zero() => {
                if entries.len() >= PRUNE_ABOVE {
                    let lifetime = self.lifetime;
                    entries.retain(|_, (_, at)| *at + lifetime > now);
                }
                entries.insert(txn.user.clone(), (v.clone(), now));
            }
            _ => {
                entries.remove(&txn.user);
            }
        }
        Ok(value)
    }

    /// Number of cached users (for tests and status).
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    struct Counting(AtomicUsize, Mutex<Option<String>>);

    impl MetadataLookup for Counting {
        fn get(&self, _user: &str, key: &str) -> Result<Option<String>, MetadataError> {
            assert_eq!(key, METADATA_KEY);
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(self.1.lock().clone())
        }
    }

    fn txn(metadata: &[(&str, &str)]) -> Transaction {
        Transaction {
            id: "t".into(),
            user: "u@x".into(),
            events: Vec::new(),
            metadata: metadata
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            encoded: Default::default(),
        }
    }

    #[test]
    fn cache_keeps_successful_reads_for_the_lifetime_only() {
        let store = Counting(AtomicUsize::new(0), Mutex::new(None));
        let clock = ManualClock::new();
        let cache = MetadataCache::new(Duration::from_secs(60));
        let t = txn(&[]);
        // "Not set" is never cached.
        assert_eq!(cache.lookup(&t, &store, &clock).unwrap(), None);
        assert_eq!(cache.lookup(&t, &store, &clock).unwrap(), None);
        assert_eq!(store.0.load(Ordering::SeqCst), 2);
        *store.1.lock() = Some("user=1".into());
        assert_eq!(
            cache.lookup(&t, &store, &clock).unwrap().as_deref(),
            Some("user=1")
        );
        *store.1.lock() = Some("user=2".into());
        clock.advance(Duration::from_secs(59));
        assert_eq!(
            cache.lookup(&t, &store, &clock).unwrap().as_deref(),
            Some("user=1")
        );
        assert_eq!(store.0.load(Ordering::SeqCst), 3);
        // Strict: at exactly cached_at + lifetime the entry is stale.
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            cache.lookup(&t, &store, &clock).unwrap().as_deref(),
            Some("user=2")
        );
        // The transaction's own metadata wins and is not cached.
        let own = txn(&[(METADATA_KEY, "user=own")]);
        assert_eq!(
            cache.lookup(&own, &store, &clock).unwrap().as_deref(),
            Some("user=own")
        );
        assert_eq!(
            cache.lookup(&t, &store, &clock).unwrap().as_deref(),
            Some("user=2")
        );
        // Unset in the store after expiry: the entry goes.
        *store.1.lock() = None;
        clock.advance(Duration::from_secs(61));
        assert_eq!(cache.lookup(&t, &store, &clock).unwrap(), None);
        assert!(cache.is_empty());
    }

    #[test]
    fn lifetime_zero_never_caches() {
        let store = Counting(AtomicUsize::new(0), Mutex::new(Some("user=1".into())));
        let cache = MetadataCache::new(Duration::ZERO);
        let clock = ManualClock::new();
        for _ in 0..3 {
            cache.lookup(&txn(&[]), &store, &clock).unwrap();
        }
        assert_eq!(store.0.load(Ordering::SeqCst), 3);
        assert!(cache.is_empty());
    }
}
