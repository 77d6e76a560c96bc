//! Driver arguments (`key=value flag …`) and the typed readers every driver's keys go
//! through: never a panic; an error always names the key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailpush_core::{units, DriverArgs};

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let mut args = DriverArgs::parse(raw);
    let _ = args.redacted();
    let keys: Vec<String> = args.iter().map(|(k, _)| k.to_string()).collect();
    for (i, key) in keys.iter().enumerate() {
        let result = match i % 5 {
            0 => args.take_msecs(key, "100").map(|_| ()),
            1 => args.take_duration(key).map(|_| ()),
            2 => args.take_size(key, 0..=u64::MAX, "a size").map(|_| ()),
            3 => args.take_number::<u32>(key, "5").map(|_| ()),
            _ => {
                args.take_flag(key);
                Ok(())
            }
        };
        if let Err(e) = result {
            assert!(e.message.starts_with(&format!("{key}=")), "{}", e.message);
            assert_eq!(e.arg.as_deref(), Some(key.as_str()), "{}", e.message);
        }
    }
    for (_, v) in DriverArgs::parse(raw).iter() {
        let _ = units::parse_duration(v);
        let _ = units::parse_msecs(v);
        let _ = units::parse_size(v);
        let _ = mailpush_core::args::redact_url(v);
    }
});
