//! The synchronous path (runtime/src/wasm/synchronous.rs): a driver that imports nothing
//! it could wait on is called without a fiber, and every sandbox bound holds there as on
//! the async path. The hostile driver built without its waiting modes
//! (`hostile-no-wait`) is such a driver; each test here is one of sandbox.rs's against it.

use std::sync::Arc;

use mailpush::pipeline::Outcome;
use mailpush_e2e::*;

const NO_WAIT: &str = "hostile-no-wait";

/// The line `mailpush check` shows for a driver's calls.
fn calls_line(details: &[String]) -> &str {
    details
        .iter()
        .find(|l| l.starts_with("calls: "))
        .map(String::as_str)
        .unwrap_or_else(|| panic!("no calls line in {details:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn only_a_driver_that_cannot_wait_is_called_synchronously() {
    let dir = tempfile::tempdir().unwrap();
    let conf = format!(
        "mailpush {{\n state_dir = state\n}}\nplugin {{\n push_notification_driver = wasm:file={} mode=ok\n push_notification_driver2 = wasm:file={} mode=ok\n push_notification_driver3 = wasm:file={} key=k\n push_notification_driver4 = wasm:file={} url=http://127.0.0.1:9/ secret=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n}}\n",
        guest(NO_WAIT).display(),
        guest("hostile").display(),
        guest("bench-handler").display(),
        guest("webhook").display(),
    );
    let config = write_config(dir.path(), &conf);
    let loaded = load_drivers(&TestDrivers::new().registry(), &config).await;
    let calls: Vec<&str> = loaded.iter().map(|d| calls_line(&d.details)).collect();
    assert!(calls[0].starts_with("calls: synchronous"), "{calls:?}");
    assert!(calls[1].starts_with("calls: async"), "{calls:?}");
    assert!(calls[2].starts_with("calls: synchronous"), "{calls:?}");
    assert!(calls[3].starts_with("calls: async"), "{calls:?}");
    // And they deliver.
    for d in &loaded[..3] {
        let txn = Arc::new(mailbox_txn("a@example.com", "t1"));
        let outcome = mailpush::pipeline::deliver(d.driver.as_ref(), &txn).await;
        assert_eq!(outcome, Outcome::Delivered, "driver {}", d.number);
    }
}

/// The epoch deadline interrupts a synchronous guest (it cannot yield, so the deadline
/// callback lets it run on until its budget is spent, then stops it), and the lane of
/// the other driver goes on (`run_guest` checks it got every transaction).
#[tokio::test(flavor = "multi_thread")]
async fn a_synchronous_infinite_loop_hits_the_deadline() {
    let (out, _) = run_guest(NO_WAIT, "mode=loop timeout_msecs=50", 3).await;
    assert_eq!(out.len(), 3);
    for r in reasons(&out) {
        assert!(
            r.contains("deadline exceeded") && r.contains("timeout_msecs=50"),
            "{r}"
        );
    }
}

/// Work longer than one deadline slice is not cut short: the guest runs on at each check
/// while it is within its budget.
#[tokio::test(flavor = "multi_thread")]
async fn a_synchronous_driver_runs_on_within_its_budget() {
    let (out, _) = run_guest(
        NO_WAIT,
        "mode=logflood max_log_lines=10 timeout_msecs=5000",
        2,
    )
    .await;
    assert!(out.iter().all(|o| *o == Outcome::Delivered), "{out:?}");
    let log = {
        let (ok, log) = send_guest(
            NO_WAIT,
            "mode=logflood max_log_lines=10 timeout_msecs=5000",
            2,
        );
        assert!(ok, "{log}");
        log
    };
    assert_eq!(count(&log, "flood line"), 20, "{log}");
    assert_eq!(
        count(&log, "99990 log lines dropped (max_log_lines=10"),
        2,
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_synchronous_fuel_limit_stops_a_loop() {
    let (out, _) = run_guest(NO_WAIT, "mode=loop fuel=1000000 timeout_msecs=10000", 1).await;
    let r = &reasons(&out)[0];
    assert!(r.contains("fuel exhausted"), "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn synchronous_memory_recursion_and_traps_are_contained() {
    let (out, _) = run_guest(NO_WAIT, "mode=memory memory=8M", 2).await;
    for r in reasons(&out) {
        assert!(
            r.contains("memory limit reached") && r.contains("memory=8M"),
            "{r}"
        );
    }
    let (out, _) = run_guest(NO_WAIT, "mode=recursion", 2).await;
    for r in reasons(&out) {
        assert!(r.contains("stack overflow"), "{r}");
    }
    let (out, _) = run_guest(NO_WAIT, "mode=trap", 2).await;
    for r in reasons(&out) {
        assert!(r.contains("trap"), "{r}");
    }
    // What it printed on stderr before trapping is the reason (stdio is linked
    // synchronously too).
    let (out, _) = run_guest(NO_WAIT, "mode=stderr-trap", 2).await;
    for r in reasons(&out) {
        assert!(
            r.starts_with("TypeError: cannot read property 'x' of undefined"),
            "{r}"
        );
    }
    let (out, _) = run_guest(NO_WAIT, "mode=file", 1).await;
    assert!(reasons(&out)[0].contains("file access denied"), "{out:?}");
    let (out, _) = run_guest(NO_WAIT, "mode=huge", 1).await;
    assert!(reasons(&out)[0].ends_with("[truncated]"), "{out:?}");
}

/// A fresh instance per transaction on the synchronous path sees exactly what `init`
/// left, from a snapshot or from its own `init`, never another transaction's id.
#[tokio::test(flavor = "multi_thread")]
async fn synchronous_fresh_instances_share_nothing() {
    for args in [
        "mode=remember tag=a",
        "mode=remember tag=a init=per-instance",
    ] {
        let (out, _) = run_guest(NO_WAIT, args, 4).await;
        assert!(
            out.iter().all(|o| *o == Outcome::Delivered),
            "{args}: {out:?}"
        );
    }
    // A reused instance keeps its state: the second transaction sees the first's id.
    let (out, _) = run_guest(NO_WAIT, "mode=remember tag=a instance=reuse", 2).await;
    assert_eq!(out[0], Outcome::Delivered, "{out:?}");
    assert!(
        reasons(&out[1..])[0].contains("saw Some(\"t0\")"),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_synchronous_panic_in_init_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let conf = format!(
        "mailpush {{\n state_dir = state\n}}\nplugin {{\n push_notification_driver = wasm:file={} mode=panic-init init=per-instance\n}}\n",
        guest(NO_WAIT).display()
    );
    let config = write_config(dir.path(), &conf);
    let Err((_, errors)) = TestDrivers::new()
        .registry()
        .init_all(&config, Arc::new(mailpush_core::NoMetadata))
        .await
    else {
        panic!("init must fail");
    };
    let e = errors[0].to_string();
    assert!(
        e.contains("init failed") && e.contains("hostile driver panics in init on purpose"),
        "{e}"
    );
}

/// The transaction reaches a synchronous driver as it reaches an async one: the JSON it
/// was handed is the transaction's canonical JSON.
#[tokio::test(flavor = "multi_thread")]
async fn a_synchronous_driver_receives_the_transaction() {
    let (out, _) = run_guest(NO_WAIT, "mode=echo-json", 1).await;
    let sent = mailbox_txn("u0@example.com", "t0");
    assert_eq!(reasons(&out)[0], sent.to_json(), "{out:?}");
}

/// A synchronous call cannot be stopped by a wall-clock timeout around it: its deadline
/// is the tighter of `timeout_msecs` and what is left of `max_txn_msecs` (or of
/// `init_timeout_msecs` while loading), and the reason names the bound that was hit.
#[tokio::test(flavor = "multi_thread")]
async fn a_synchronous_call_is_bounded_by_max_txn_msecs_and_init_timeout_msecs() {
    let started = std::time::Instant::now();
    let (out, _) = run_guest(
        NO_WAIT,
        "mode=loop timeout_msecs=20000 max_txn_msecs=100",
        2,
    )
    .await;
    for r in reasons(&out) {
        assert_eq!(r, "transaction exceeded max_txn_msecs=100");
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "stopped by max_txn_msecs, not timeout_msecs: {:?}",
        started.elapsed()
    );
    let dir = tempfile::tempdir().unwrap();
    let conf = format!(
        "mailpush {{\n state_dir = state\n}}\nplugin {{\n push_notification_driver = wasm:file={} mode=init-loop init=per-instance timeout_msecs=20000 init_timeout_msecs=200\n}}\n",
        guest(NO_WAIT).display()
    );
    let config = write_config(dir.path(), &conf);
    let Err((_, errors)) = TestDrivers::new()
        .registry()
        .init_all(&config, Arc::new(mailpush_core::NoMetadata))
        .await
    else {
        panic!("init never returns");
    };
    let e = errors[0].to_string();
    assert!(e.contains("init did not finish within 200 ms"), "{e}");
}
