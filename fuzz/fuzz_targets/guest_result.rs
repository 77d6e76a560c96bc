//! What a guest returns from `deliver` (a failure with a reason, whether to retry, a
//! delay): the host's reading of it. wasmtime lifts and validates the raw values; this
//! is what mailpush then makes of them. Never a panic; the reason is bounded and has no
//! control character; the delay is at most an hour.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailpush_core::Failure;

#[derive(Debug, arbitrary::Arbitrary)]
struct GuestFailure {
    reason: String,
    retryable: bool,
    retry_after_ms: Option<u64>,
}

fuzz_target!(|g: GuestFailure| {
    let f = Failure::from_driver(&g.reason, g.retryable, g.retry_after_ms);
    assert!(f.reason.len() <= 12 * Failure::MAX_REASON, "{}", f.reason.len());
    assert!(!f.reason.chars().any(|c| c.is_control()), "{:?}", f.reason);
    assert!(f.retry_after.is_none_or(|d| d <= Failure::MAX_RETRY_AFTER));
    assert_eq!(f.retryable, g.retryable);
    assert!(!f.deferred);
});
