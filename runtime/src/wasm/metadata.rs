//! Capability: METADATA, read-only. `mailpush:driver/host.metadata-get` reads the
//! current transaction's user's entries: the transaction's own `metadata` object first
//! (sent by a forwarder that already knows it), then mailpush's METADATA store. Other
//! users' entries and reads outside a transaction (during `init`) return nothing.

use std::sync::Arc;

use mailpush_core::{MetadataLookup, Transaction};

use super::log::DriverTag;

/// One instance's METADATA access.
pub struct MetadataAccess {
    store: Arc<dyn MetadataLookup>,
}

impl MetadataAccess {
    pub fn new(store: Arc<dyn MetadataLookup>) -> Self {
        MetadataAccess { store }
    }

    /// The value of `key` for the user of `txn`, the transaction being handled (none
    /// outside a transaction).
    pub fn get(
        &self,
        tag: &DriverTag,
        txn: Option<&Arc<Transaction>>,
        key: &str,
    ) -> Option<String> {
        let txn = txn?;
        match mailpush_core::metadata::lookup(txn, self.store.as_ref(), key) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(driver = tag.number, txn = %txn.id, "{e}");
                None
            }
        }
    }
}
