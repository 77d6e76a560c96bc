//! Capability: METADATA, read-only. `mailpush:driver/host.metadata-get` reads the
//! current transaction's user's entries: the transaction's own `metadata` object first
//! (sent by a forwarder that already knows it), then mailpush's METADATA store. Other
//! users' entries and reads outside a transaction (during `init`) return nothing.

use std::sync::Arc;

use mailpush_core::{MetadataLookup, Transaction};

use super::log::{self, DriverTag, SharedLog, MAX_LINE};

/// One instance's METADATA access.
pub struct MetadataAccess {
    store: Arc<dyn MetadataLookup>,
}

impl MetadataAccess {
    pub fn new(store: Arc<dyn MetadataLookup>) -> Self {
        MetadataAccess { store }
    }

    /// The value of `key` for the user of `txn`, the transaction being handled (none
    /// outside a transaction). A failed lookup (a key the store refuses) is warned about
    /// within the transaction's log budget (`log`), escaped and capped like the driver's
    /// own lines.
    pub fn get(
        &self,
        tag: &DriverTag,
        txn: Option<&Arc<Transaction>>,
        log: &SharedLog,
        key: &str,
    ) -> Option<String> {
        let txn = txn?;
        match mailpush_core::metadata::lookup(txn, self.store.as_ref(), key) {
            Ok(v) => v,
            Err(e) => {
                if log::admit(log) {
                    let e = log::escape_controls(&log::cap(e.to_string(), MAX_LINE));
                    tracing::warn!(driver = tag.number, name = %tag.name, txn = %txn.id, "{e}");
                }
                None
            }
        }
    }
}
