//! The Dovecot-syntax config reader: any text parses to a config or to errors with
//! their places, never a panic. Includes resolve below a folder that does not exist;
//! inputs including absolute paths or `..` are skipped (they would read the fuzzing
//! machine's files, e.g. /dev/zero).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let escapes = text.lines().any(|l| {
        let l = l.trim_start();
        l.starts_with('!') && (l.contains('/') || l.contains(".."))
    });
    if escapes {
        return;
    }
    let path = Path::new("/nonexistent-mailpush-fuzz/mailpush.conf");
    match mailpush_config::Config::parse(path, text) {
        Ok(c) => {
            for d in &c.drivers {
                assert!(d.number >= 1);
                let _ = d.args.redacted();
            }
        }
        Err(errors) => {
            assert!(!errors.0.is_empty());
            let _ = errors.to_string();
        }
    }
});
