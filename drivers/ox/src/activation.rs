//! Activation through METADATA (`dovecot-push.md` §7.2): the driver is active for a user
//! only while `/private/vendor/vendor.dovecot/http-notify` is set.
//!
//! The value is read for every transaction: the transaction's own `metadata` first (a
//! forwarder read it from Dovecot), then mailpush's METADATA store. Dovecot keeps a read
//! value for `cache_lifetime` in the driver's context of one `mail_user`, which lives for
//! one session: LMTP makes one per recipient of each delivery, so every delivery (the
//! only source of the MessageNew events ox pushes) reads METADATA afresh. mailpush sees
//! transactions, not sessions; reading the store each time is what a delivery does in
//! Dovecot, and it makes `mailpush metadata unset` stop the pushes at once.
//! `cache_lifetime` is still accepted and checked as Dovecot checks it.

use mailpush_core::{MetadataError, MetadataLookup, Transaction};

/// The METADATA key (server metadata, as clients set it).
pub use mailpush_ox_wire::METADATA_KEY;

/// Dovecot's internal name for the key, used in its log lines.
pub const INTERNAL_KEY: &str =
    "/private/vendor/vendor.dovecot/pvt/server/vendor/vendor.dovecot/http-notify";

/// The activation value for the transaction's user, `None` when not set.
pub fn activation_value(
    txn: &Transaction,
    store: &dyn MetadataLookup,
) -> Result<Option<String>, MetadataError> {
    mailpush_core::metadata::lookup(txn, store, METADATA_KEY)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use parking_lot::Mutex;

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
    fn every_transaction_reads_the_store_unless_it_brings_the_value() {
        let store = Counting(AtomicUsize::new(0), Mutex::new(None));
        let t = txn(&[]);
        assert_eq!(activation_value(&t, &store).unwrap(), None);
        *store.1.lock() = Some("user=1".into());
        assert_eq!(
            activation_value(&t, &store).unwrap().as_deref(),
            Some("user=1")
        );
        // Unset: the next transaction sees it at once.
        *store.1.lock() = None;
        assert_eq!(activation_value(&t, &store).unwrap(), None);
        assert_eq!(store.0.load(Ordering::SeqCst), 3);
        // The transaction's own value wins, its key in any case (METADATA entry names
        // are case-insensitive), and the store is not read.
        for key in [METADATA_KEY, "/Private/Vendor/vendor.dovecot/HTTP-notify"] {
            let own = txn(&[(key, "user=own")]);
            assert_eq!(
                activation_value(&own, &store).unwrap().as_deref(),
                Some("user=own")
            );
        }
        assert_eq!(store.0.load(Ordering::SeqCst), 3);
    }
}
