//! METADATA: keys as doveadm checks them, and the tab-escaped values ox reads its
//! `user=` from. Never a panic; a normalized key normalizes to itself; tab-unescaping
//! never grows a value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailpush_core::metadata::normalize_key;
use mailpush_ox_wire::{metadata_user, tab_unescape};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(k) = normalize_key(text) {
        assert_eq!(normalize_key(&k).as_deref(), Ok(k.as_str()));
    }
    assert!(tab_unescape(text).len() <= text.len());
    if let Some(u) = metadata_user(text) {
        assert!(u.len() <= text.len());
    }
});
