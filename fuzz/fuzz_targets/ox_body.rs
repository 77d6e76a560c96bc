//! The body Dovecot's ox driver PUTs to mailpush's OX-compatible endpoint: never a
//! panic; what is accepted is a valid MessageNew transaction.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailpush_core::ox_body::ox_transaction;
use mailpush_core::Transaction;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(t) = ox_transaction(&value) {
        assert!(!t.user.is_empty());
        assert_eq!(t.events.len(), 1);
        assert_eq!(Transaction::from_json(&t.to_json()).as_ref(), Ok(&t));
    }
});
