//! Host memory a driver makes mailpush hold is bounded by its `memory=`: a driver
//! creating `wasi:http` fields or request bodies without end is refused once it holds
//! its share (`host_memory`, half of `memory` by default), and the process's peak
//! resident set stays within the configured bounds. Measured on `mailpush send`
//! children (their peak RSS from getrusage), alone in this test binary.

use mailpush_e2e::*;

/// The largest peak RSS of the children waited for so far, in bytes.
fn children_peak_rss() -> u64 {
    // SAFETY: getrusage writes into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    assert_eq!(rc, 0);
    usage.ru_maxrss as u64 * 1024
}

#[test]
fn host_resources_are_bounded_by_memory() {
    // A well-behaved driver first: the process's own footprint.
    send_logged("mode=ok memory=32M", 4);
    let baseline = children_peak_rss();
    for attack in ["mode=fields-flood kib=30", "mode=body-hoard"] {
        let (ok, log) = send_hostile(&format!("{attack} memory=32M"), 4);
        assert!(!ok, "{attack}: the transactions fail");
        assert!(
            count(&log, "host resources exhausted") >= 1,
            "{attack}:\n{}",
            &log[..log.len().min(4000)]
        );
    }
    // Fields whose entries all point at the same 8 MiB of the guest's memory: the host
    // adds up their lengths before it copies any, and traps the guest (a copy of each
    // entry, as wasmtime's bindings made, was 1.6 GiB for one call).
    for attack in ["mode=fields-alias", "mode=set-alias"] {
        let (ok, log) = send_hostile(&format!("{attack} bytes=8388608 memory=32M"), 1);
        assert!(!ok, "{attack}: the transaction fails");
        assert!(
            count(&log, "HTTP fields larger than") >= 1,
            "{attack}:\n{}",
            &log[..log.len().min(4000)]
        );
    }
    // One poll naming one pollable 100,000 times: refused before it is lifted, on the
    // async path and on the synchronous one.
    for guest in ["hostile", "hostile-no-wait"] {
        let (ok, log) = send_guest(guest, "mode=poll-dup memory=32M", 1);
        assert!(!ok, "{guest}: the transaction fails");
        assert!(
            count(
                &log,
                "poll over 100000 pollables, more than the sandbox's 4096"
            ) >= 1,
            "{guest}:\n{}",
            &log[..log.len().min(4000)]
        );
    }
    let peak = children_peak_rss();
    // The guest's 32 MiB, its host share (16 MiB), and some slack for the allocator.
    let bound = baseline + (32 << 20) + (16 << 20) + (32 << 20);
    assert!(
        peak <= bound,
        "peak RSS {} MiB, baseline {} MiB, bound {} MiB",
        peak >> 20,
        baseline >> 20,
        bound >> 20
    );
}
