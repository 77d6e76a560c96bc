//! Read-only access to per-user METADATA (RFC 5464 server annotations such as
//! `/private/vendor/vendor.dovecot/http-notify`).

use crate::transaction::Transaction;

/// A METADATA lookup failed (the store could not be read).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("METADATA lookup failed: {0}")]
pub struct MetadataError(pub String);

/// Read access to METADATA values by user and key.
pub trait MetadataLookup: Send + Sync {
    /// The value of `key` for `user`, `None` when not set.
    fn get(&self, user: &str, key: &str) -> Result<Option<String>, MetadataError>;
}

/// A lookup with no entries (used where no store is configured).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoMetadata;

impl MetadataLookup for NoMetadata {
    fn get(&self, _user: &str, _key: &str) -> Result<Option<String>, MetadataError> {
        Ok(None)
    }
}

/// Looks up `key` for the transaction's user: the transaction's own `metadata` object
/// (sent by a forwarder that already knows it) takes precedence over the store.
pub fn lookup(
    txn: &Transaction,
    store: &dyn MetadataLookup,
    key: &str,
) -> Result<Option<String>, MetadataError> {
    if let Some(v) = txn.metadata.get(key) {
        return Ok(Some(v.clone()));
    }
    store.get(&txn.user, key)
}
