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

/// With the spool and queues of 2: the slow driver's queue overflows into the spool, so
/// ingest refuses nothing and the good driver gets every transaction at once; the slow
/// one reads its backlog from the spool and gets every transaction too, in order, once.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_driver_overflows_into_the_spool_and_holds_back_nothing() {
    use mailpush::spool::{sqlite::SqliteSpool, Spool};
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "mailpush {\n state_dir = state\n}\nplugin {\n push_notification_driver = slow:msecs=20 label=slow\n push_notification_driver2 = panic:every=2\n push_notification_driver3 = record:label=good\n}\n",
    );
    let drivers = TestDrivers::new();
    let loaded = load_drivers(&drivers.registry(), &config).await;
    let spool = SqliteSpool::open(&dir.path().join("spool.db"), 1 << 30).unwrap();
    let d = Dispatcher::start_with_spool(loaded, 2, None, Some(spool.clone() as Arc<dyn Spool>));
    let n = 40;
    let seen = |label: &str| -> Vec<String> {
        drivers
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(l, _, _)| l == label)
            .map(|(_, id, _)| id.clone())
            .collect()
    };
    for i in 0..n {
        let txn = mailbox_txn(&format!("u{}@example.com", i % 3), &format!("t{i:02}"));
        d.accept(vec![txn]).await.expect("nothing is refused");
        // The queues never hold more than their capacity.
        assert!(
            d.reports().iter().all(|r| r.queued <= 2),
            "{:?}",
            d.reports()
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen("good").len() < n {
        assert!(
            Instant::now() < deadline,
            "good driver got {:?}",
            seen("good")
        );
        tokio::task::yield_now().await;
    }
    assert!(
        seen("slow").len() < n,
        "the slow driver (40 × 20 ms) is still working"
    );
    while seen("slow").len() < n {
        assert!(
            Instant::now() < deadline,
            "slow driver got {:?}",
            seen("slow")
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let reports = d.shutdown().await;
    let expected: Vec<String> = (0..n).map(|i| format!("t{i:02}")).collect();
    assert_eq!(seen("good"), expected);
    // Every transaction once, in ingest order (so in order per user).
    assert_eq!(seen("slow"), expected);
    assert_eq!(reports[0].delivered, n as u64);
    assert_eq!(reports[2].delivered, n as u64);
    spool.append(&[], &[]).unwrap();
    // Only the panicking driver's failures are still owed (memory of the lane: retried
    // until dead-lettered); the slow and good drivers owe nothing.
    assert!(spool
        .pending()
        .unwrap()
        .iter()
        .all(|p| p.drivers == vec![2]));
}
