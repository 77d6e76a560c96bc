//! The synchronous path (runtime/src/wasm/synchronous.rs): a driver that imports nothing
//! it could wait on is called without a fiber. The hostile driver built without its
//! waiting modes (`hostile-no-wait`) is such a driver. sandbox.rs runs its bounds
//! (deadline, fuel, memory, stack, traps, log flood, files) against it and the async
//! build alike; here is what is particular to this path.

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

/// A config with the no-wait hostile driver as driver 1, with `args`.
fn no_wait_config(dir: &std::path::Path, args: &str) -> mailpush::config::Config {
    let conf = format!(
        "mailpush {{\n state_dir = state\n}}\nplugin {{\n push_notification_driver = wasm:file={} {args}\n}}\n",
        guest(NO_WAIT).display()
    );
    write_config(dir, &conf)
}

#[tokio::test(flavor = "multi_thread")]
async fn only_a_driver_that_cannot_wait_is_called_synchronously() {
    let dir = tempfile::tempdir().unwrap();
    let conf = format!(
        "mailpush {{\n state_dir = state\n}}\nplugin {{\n push_notification_driver = wasm:file={} mode=ok\n push_notification_driver2 = wasm:file={} mode=ok\n push_notification_driver3 = wasm:file={} key=k\n push_notification_driver4 = wasm:file={} url=http://127.0.0.1:9/ secret=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n push_notification_driver5 = wasm:file={} mode=ok calls=async\n}}\n",
        guest(NO_WAIT).display(),
        guest("hostile").display(),
        guest("bench-handler").display(),
        guest("webhook").display(),
        guest(NO_WAIT).display(),
    );
    let config = write_config(dir.path(), &conf);
    let loaded = load_drivers(&TestDrivers::new().registry(), &config).await;
    let calls: Vec<&str> = loaded.iter().map(|d| calls_line(&d.details)).collect();
    assert!(calls[0].starts_with("calls: synchronous"), "{calls:?}");
    assert!(calls[1].starts_with("calls: async (imports"), "{calls:?}");
    assert!(calls[2].starts_with("calls: synchronous"), "{calls:?}");
    assert!(calls[3].starts_with("calls: async (imports"), "{calls:?}");
    assert_eq!(calls[4], "calls: async (calls=async)", "{calls:?}");
    // And they deliver.
    for d in loaded.iter().filter(|d| d.number != 4) {
        let txn = std::sync::Arc::new(mailbox_txn("a@example.com", "t1"));
        let outcome = mailpush::pipeline::deliver(d.driver.as_ref(), &txn).await;
        assert_eq!(outcome, Outcome::Delivered, "driver {}", d.number);
    }
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
    let config = no_wait_config(dir.path(), "mode=panic-init init=per-instance");
    let e = first_init_error(&config).await;
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
    let config = no_wait_config(
        dir.path(),
        "mode=init-loop init=per-instance timeout_msecs=20000 init_timeout_msecs=200",
    );
    let e = first_init_error(&config).await;
    assert!(e.contains("init did not finish within 200 ms"), "{e}");
}

/// Loading a synchronous driver runs its `init` (and `fixed-begin`) off the async
/// workers, as compiling does: one that spins until `init_timeout_msecs` does not hold
/// the runtime meanwhile. On a single-threaded runtime, a timer set while it loads fires
/// before the load ends; were the spin on the runtime's only thread, it could not.
#[tokio::test(flavor = "current_thread")]
async fn a_spinning_synchronous_init_holds_no_async_worker() {
    let dir = tempfile::tempdir().unwrap();
    // Compiled once first (the AOT cache in the same state_dir), so that below the
    // timer runs out while init spins, not while the component compiles.
    load_drivers(
        &TestDrivers::new().registry(),
        &no_wait_config(dir.path(), "mode=ok init=per-instance"),
    )
    .await;
    let config = no_wait_config(
        dir.path(),
        "mode=init-loop init=per-instance timeout_msecs=20000 init_timeout_msecs=3000",
    );
    let timer = async {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        std::time::Instant::now()
    };
    let load = async {
        let e = first_init_error(&config).await;
        (e, std::time::Instant::now())
    };
    let (fired, (e, loaded)) = tokio::join!(timer, load);
    assert!(e.contains("init did not finish within 3000 ms"), "{e}");
    assert!(
        fired < loaded,
        "the timer fired only when the load had ended: the spin held the runtime"
    );
}
