//! Dispatch isolation: a driver that panics and one that sleeps, beside a good one — the
//! good one gets every transaction, in order, and neither the caller nor the good driver
//! waits for the slow one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mailpush::dispatch::Dispatcher;
use mailpush_e2e::*;

#[tokio::test(flavor = "multi_thread")]
async fn panicking_and_slow_drivers_never_disturb_a_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "mailpush {\n state_dir = state\n}\nplugin {\n push_notification_driver = panic:every=2\n push_notification_driver2 = slow:msecs=50 label=slow\n push_notification_driver3 = record:label=good\n}\n",
    );
    let drivers = TestDrivers::new();
    let loaded = load_drivers(&drivers.registry(), &config).await;
    // Queues large enough that the caller never waits for the slow driver.
    let d = Dispatcher::start(loaded, 64, None);
    let n = 40;
    let start = Instant::now();
    for i in 0..n {
        d.dispatch(Arc::new(mailbox_txn(
            &format!("u{}@example.com", i % 3),
            &format!("t{i:02}"),
        )))
        .await
        .unwrap();
    }
    assert!(
        start.elapsed() < Duration::from_millis(200),
        "the caller waited: {:?}",
        start.elapsed()
    );
    // The good driver has everything long before the slow one (40 × 50 ms) is done.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let good = drivers
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(l, _, _)| l == "good")
            .count();
        if good == n {
            break;
        }
        assert!(Instant::now() < deadline, "good driver got {good} of {n}");
        tokio::task::yield_now().await;
    }
    let slow_so_far = drivers
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(l, _, _)| l == "slow")
        .count();
    assert!(
        slow_so_far < n,
        "the slow driver is still working ({slow_so_far} done)"
    );
    let reports = d.shutdown().await;
    // Every transaction, in order, at the good driver.
    let good: Vec<String> = drivers
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(l, _, _)| l == "good")
        .map(|(_, id, _)| id.clone())
        .collect();
    let expected: Vec<String> = (0..n).map(|i| format!("t{i:02}")).collect();
    assert_eq!(good, expected);
    // The panicking driver's panics were contained and counted as failures.
    assert_eq!(reports[0].failed, n as u64 / 2);
    assert_eq!(reports[0].delivered, n as u64 / 2);
    assert_eq!(reports[1].delivered, n as u64);
    assert_eq!(reports[2].delivered, n as u64);
}
