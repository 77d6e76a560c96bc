//! METADATA in cluster mode: a JetStream key-value bucket (`<prefix>_metadata`), so
//! `mailpush metadata set` on any node is seen by every node's drivers. Each node keeps
//! the whole bucket in memory, fed by a watch (drivers look values up synchronously,
//! often); writes go to the bucket.
//!
//! Bucket keys allow only `[-/_=.a-zA-Z0-9]`: a key is `u.<user>.<entry>`, each part
//! base64url-encoded (lower-cased first: users and METADATA entry names are
//! case-insensitive here as in Dovecot).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_nats::jetstream::kv::{Operation, Store};
use base64::Engine as _;
use futures::StreamExt;
use mailpush_core::{MetadataError, MetadataLookup};
use parking_lot::RwLock;

use crate::metadata_store::normalize_key;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s.as_bytes())
}

fn unb64(s: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// The longest bucket key: it goes into a NATS subject, and a protocol line longer than
/// the server's `max_control_line` (4 KiB by default) closes the connection.
const MAX_KV_KEY: usize = 3072;

fn kv_key(user: &str, key: &str) -> Result<String, MetadataError> {
    let k = format!("u.{}.{}", b64(&user.to_lowercase()), b64(key));
    if k.len() > MAX_KV_KEY {
        return Err(MetadataError(format!(
            "user '{}…' ({} bytes) is too long for METADATA in cluster mode: with the entry name, \
             at most {} bytes fit a NATS subject (base64url-encoded)",
            &user[..mailpush_core::text::prefix_len(user, 64)],
            user.len(),
            (MAX_KV_KEY - 3) / 4 * 3
        )));
    }
    Ok(k)
}

fn parse_key(k: &str) -> Option<(String, String)> {
    let rest = k.strip_prefix("u.")?;
    let (u, e) = rest.split_once('.')?;
    Some((unb64(u)?, unb64(e)?))
}

fn err(e: impl std::fmt::Display) -> MetadataError {
    MetadataError(format!("METADATA in NATS JetStream: {e}"))
}

/// Writes and lists (for `mailpush metadata` and the daemon).
pub struct KvMetadata {
    store: Store,
}

impl KvMetadata {
    pub fn new(store: Store) -> Self {
        KvMetadata { store }
    }

    pub async fn set(&self, user: &str, key: &str, value: &str) -> Result<(), MetadataError> {
        if user.is_empty() {
            return Err(MetadataError("a user is required (-u USER)".into()));
        }
        let key = normalize_key(key)?;
        self.store
            .put(kv_key(user, &key)?, value.to_string().into())
            .await
            .map_err(err)?;
        Ok(())
    }

    pub async fn unset(&self, user: &str, key: &str) -> Result<bool, MetadataError> {
        let key = normalize_key(key)?;
        let k = kv_key(user, &key)?;
        let existed = self.store.get(&k).await.map_err(err)?.is_some();
        if existed {
            self.store.delete(&k).await.map_err(err)?;
        }
        Ok(existed)
    }

    pub async fn get(&self, user: &str, key: &str) -> Result<Option<String>, MetadataError> {
        let key = normalize_key(key)?;
        let v = self.store.get(kv_key(user, &key)?).await.map_err(err)?;
        Ok(v.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// (user, key, value), of one user or all, sorted.
    pub async fn list(
        &self,
        user: Option<&str>,
    ) -> Result<Vec<(String, String, String)>, MetadataError> {
        let mut keys = self.store.keys().await.map_err(err)?;
        let mut out = Vec::new();
        while let Some(k) = keys.next().await {
            let k = k.map_err(err)?;
            let Some((u, e)) = parse_key(&k) else {
                continue;
            };
            if user.is_some_and(|want| want.to_lowercase() != u) {
                continue;
            }
            if let Some(v) = self.store.get(&k).await.map_err(err)? {
                out.push((u, e, String::from_utf8_lossy(&v).into_owned()));
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Every node's in-memory copy of the bucket, for the drivers' lookups.
#[derive(Default)]
pub struct MetadataCache {
    /// Sorted by user then key: one user's entries (and its mailboxes', `USER#…`) are a
    /// range, not a scan of every user's.
    entries: RwLock<BTreeMap<(String, String), String>>,
    /// Set once the bucket's values up to the start were read.
    loaded: tokio::sync::Notify,
    is_loaded: std::sync::atomic::AtomicBool,
    /// Where drivers' writes (Lua scripts' `metadata_set`) go, and the runtime to run
    /// them on (the caller is a script's worker thread).
    writer: Option<(KvMetadata, tokio::runtime::Handle)>,
}

impl MetadataCache {
    /// Starts the copy: the bucket's current values, then every change, until the
    /// process ends (the watch is re-made after an error).
    pub fn start(store: Store) -> Arc<Self> {
        let cache = Arc::new(MetadataCache {
            writer: Some((
                KvMetadata::new(store.clone()),
                tokio::runtime::Handle::current(),
            )),
            ..MetadataCache::default()
        });
        let c = cache.clone();
        tokio::spawn(async move {
            // An empty bucket has nothing to read first.
            if store.status().await.is_ok_and(|s| s.values() == 0) {
                c.mark_loaded();
            }
            loop {
                match store.watch_with_history(">").await {
                    Ok(mut watch) => {
                        while let Some(entry) = watch.next().await {
                            let Ok(entry) = entry else {
                                break;
                            };
                            if entry.delta == 0 || entry.seen_current {
                                c.mark_loaded();
                            }
                            let Some(k) = parse_key(&entry.key) else {
                                continue;
                            };
                            let mut map = c.entries.write();
                            match entry.operation {
                                Operation::Put => {
                                    map.insert(
                                        k,
                                        String::from_utf8_lossy(&entry.value).into_owned(),
                                    );
                                }
                                Operation::Delete | Operation::Purge => {
                                    map.remove(&k);
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!("NATS: cannot watch METADATA ({e}); retrying"),
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        });
        cache
    }
}

impl MetadataCache {
    fn mark_loaded(&self) {
        self.is_loaded
            .store(true, std::sync::atomic::Ordering::Release);
        self.loaded.notify_waiters();
    }

    /// Waits until the values the bucket held at the start were read, for at most
    /// `limit`; whether they were. Lookups before that could answer "not set" for a user
    /// who has a value.
    pub async fn wait_loaded(&self, limit: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.loaded.notified();
            if self.is_loaded.load(std::sync::atomic::Ordering::Acquire) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.is_loaded.load(std::sync::atomic::Ordering::Acquire);
            }
        }
    }
}

/// How long a driver's METADATA write may wait for the bucket.
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl MetadataCache {
    /// Runs a bucket write from a thread outside the runtime (a script's worker) or
    /// inside it, and waits for it (at most [`WRITE_TIMEOUT`]).
    fn blocking<T: Send>(
        &self,
        op: impl std::future::Future<Output = Result<T, MetadataError>> + Send,
    ) -> Result<T, MetadataError> {
        let Some((_, handle)) = &self.writer else {
            return Err(MetadataError("METADATA writes need the cluster".into()));
        };
        let run = || {
            handle.block_on(async {
                tokio::time::timeout(WRITE_TIMEOUT, op)
                    .await
                    .unwrap_or_else(|_| Err(err("the write timed out")))
            })
        };
        // A thread of its own: `block_on` cannot run on a runtime thread.
        std::thread::scope(|s| {
            s.spawn(run)
                .join()
                .unwrap_or_else(|_| Err(err("the write panicked")))
        })
    }
}

impl MetadataLookup for MetadataCache {
    fn get(&self, user: &str, key: &str) -> Result<Option<String>, MetadataError> {
        let key = normalize_key(key)?;
        Ok(self
            .entries
            .read()
            .get(&(user.to_lowercase(), key))
            .cloned())
    }

    fn write(&self, user: &str, key: &str, value: &str) -> Result<(), MetadataError> {
        let normalized = normalize_key(key)?;
        let kv = &self.writer.as_ref().ok_or_else(|| err("read-only"))?.0;
        self.blocking(kv.set(user, key, value))?;
        // Read your own write before the watch brings it back.
        self.entries
            .write()
            .insert((user.to_lowercase(), normalized), value.to_string());
        Ok(())
    }

    fn remove(&self, user: &str, key: &str) -> Result<bool, MetadataError> {
        let normalized = normalize_key(key)?;
        let kv = &self.writer.as_ref().ok_or_else(|| err("read-only"))?.0;
        let existed = self.blocking(kv.unset(user, key))?;
        self.entries
            .write()
            .remove(&(user.to_lowercase(), normalized));
        Ok(existed)
    }

    fn entries(&self, user: &str, prefix: &str) -> Result<Vec<(String, String)>, MetadataError> {
        let (user, prefix) = (user.to_lowercase(), prefix.to_ascii_lowercase());
        let from = (user.clone(), prefix.clone());
        Ok(self
            .entries
            .read()
            .range(from..)
            .take_while(|((u, k), _)| *u == user && k.starts_with(&prefix))
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }

    fn count_with_mailboxes(&self, user: &str) -> Result<usize, MetadataError> {
        let user = user.to_lowercase();
        let (from, to) = (
            (user.clone(), String::new()),
            (format!("{user}$"), String::new()),
        );
        // `USER`, then the users between `USER#` and `USER$` (its mailboxes); others
        // sort between them (`USER!…`, `USER"…`) and are passed over.
        let mailboxes = format!("{user}#");
        Ok(self
            .entries
            .read()
            .range(from..to)
            .filter(|((u, _), _)| *u == user || u.starts_with(&mailboxes))
            .count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One user's entries and its mailboxes' are read as ranges of the sorted copy.
    #[test]
    fn a_users_entries_and_mailboxes_are_ranges() {
        let cache = MetadataCache::default();
        for (u, k) in [
            ("a@x", "/private/k1"),
            ("a@x", "/private/k2"),
            ("a@x", "/shared/k"),
            ("a@x#inbox", "/private/k"),
            ("a@x#chat", "/private/k"),
            ("a@x!other", "/private/k"),
            ("a@xy", "/private/k"),
            ("b@x", "/private/k"),
        ] {
            cache
                .entries
                .write()
                .insert((u.to_string(), k.to_string()), "v".to_string());
        }
        let keys: Vec<String> = cache
            .entries("A@x", "/private/")
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["/private/k1", "/private/k2"]);
        assert_eq!(cache.count_with_mailboxes("a@x").unwrap(), 5);
        assert_eq!(cache.count_with_mailboxes("b@x").unwrap(), 1);
    }

    #[test]
    fn keys_round_trip_and_fit_the_bucket_alphabet() {
        let k = kv_key(
            "Alice@Example.com",
            "/private/vendor/vendor.dovecot/http-notify",
        )
        .unwrap();
        assert!(k
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b)));
        assert_eq!(
            parse_key(&k),
            Some((
                "alice@example.com".to_string(),
                "/private/vendor/vendor.dovecot/http-notify".to_string()
            ))
        );
        assert_eq!(parse_key("other"), None);
    }

    /// A user too long for a NATS subject is refused with the reason, before anything is
    /// sent (the server would close the connection on the long protocol line); the
    /// longest key allowed is accepted.
    #[test]
    fn a_key_too_long_for_a_subject_is_refused() {
        let key = format!("/private/{}", "k".repeat(1015));
        assert_eq!(key.len(), 1024);
        let e = kv_key(&"u".repeat(2000), &key).unwrap_err().to_string();
        assert!(
            e.contains("(2000 bytes) is too long for METADATA in cluster mode")
                && e.contains(&format!("at most {} bytes", (MAX_KV_KEY - 3) / 4 * 3)),
            "{e}"
        );
        assert!(e.len() < 300, "{e}");
        let fits = kv_key(&"u".repeat(1000), &key).unwrap();
        assert!(fits.len() <= MAX_KV_KEY, "{}", fits.len());
    }
}
