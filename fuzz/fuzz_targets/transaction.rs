//! Canonical JSON and NDJSON ingest: never a panic, and what parses writes out as
//! canonical JSON that parses back to the same transaction.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailpush_core::{parse_ndjson, parse_stream, Transaction};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = Transaction::from_json(text) {
        let again = Transaction::from_json(&t.to_json()).expect("canonical JSON parses");
        assert_eq!(again, t);
    }
    if let Ok(batch) = parse_ndjson(text) {
        for t in batch {
            assert_eq!(Transaction::from_json(&t.to_json()).as_ref(), Ok(&t));
        }
    }
    for item in parse_stream(text) {
        if let Err(e) = item {
            let _ = e.to_string();
        }
    }
});
