//! Dispatch isolation: a driver that panics and one that sleeps, beside a good one — the
//! good one gets every transaction, in order, and neither the caller nor the good driver
//! waits for the slow one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mailpush::pipeline::Backpressure;
use mailpush::pipeline::Dispatcher;
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
        d.accept(
            vec![mailbox_txn(
                &format!("u{}@example.com", i % 3),
                &format!("t{i:02}"),
            )],
            Backpressure::Wait,
        )
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
        d.accept(vec![txn], Backpressure::Refuse)
            .await
            .expect("nothing is refused");
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

/// `concurrency=N`: up to N transactions at once, never two of one user, each user's in
/// order; the default is one at a time.
#[tokio::test(flavor = "multi_thread")]
async fn concurrency_runs_different_users_at_once_and_one_user_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "mailpush {\n state_dir = state\n}\nplugin {\n push_notification_driver = slow:msecs=30 label=four concurrency=4\n push_notification_driver2 = slow:msecs=5 label=one\n}\n",
    );
    let drivers = TestDrivers::new();
    let loaded = load_drivers(&drivers.registry(), &config).await;
    let d = Dispatcher::start(loaded, 64, None);
    // 6 users, 4 transactions each.
    let txns: Vec<mailpush_core::Transaction> = (0..24)
        .map(|i| mailbox_txn(&format!("u{}@x", i % 6), &format!("t{i:02}")))
        .collect();
    d.accept(txns, Backpressure::Wait).await.unwrap();
    let reports = d.shutdown().await;
    let counter = |r: &mailpush::pipeline::DriverReport, name: &str| {
        r.counters.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    };
    assert_eq!(reports[0].delivered, 24);
    assert_eq!(counter(&reports[0], "max_at_once"), Some(4));
    assert_eq!(counter(&reports[0], "same_user_at_once"), Some(0));
    assert_eq!(counter(&reports[1], "max_at_once"), Some(1));
    // Each user's transactions in order at both drivers.
    let seen = drivers.seen.lock().unwrap().clone();
    for label in ["four", "one"] {
        for u in 0..6 {
            let ids: Vec<&str> = seen
                .iter()
                .filter(|(l, _, user)| l == label && *user == format!("u{u}@x"))
                .map(|(_, id, _)| id.as_str())
                .collect();
            let mut sorted = ids.clone();
            sorted.sort_unstable();
            assert_eq!(ids.len(), 4, "{label} u{u}");
            assert_eq!(ids, sorted, "{label} u{u}");
        }
    }
}

/// The ox driver sends for several users at once (16 by default): with an OX that never
/// answers, every user's request is still out.
#[tokio::test(flavor = "multi_thread")]
async fn ox_sends_for_several_users_at_once() {
    let server = RecordingServer::start().await;
    server.set_default(Reply::Hang);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!("mailpush {{\n state_dir = state\n delivery = memory\n}}\nplugin {{\n push_notification_driver = ox:url={} timeout_msecs=20000 max_retries=0\n}}\n", server.url("/n")),
    );
    let loaded = load_drivers(&TestDrivers::new().registry(), &config).await;
    let d = Dispatcher::start(loaded, 64, None);
    let txns: Vec<mailpush_core::Transaction> = (0..5)
        .map(|i| {
            mailpush_core::Transaction::from_json(&format!(
                r#"{{"id":"o{i}","user":"u{i}@x","events":[{{"name":"MessageNew","mailbox":"INBOX","uid":1,"uid_validity":1}}],"metadata":{{"/private/vendor/vendor.dovecot/http-notify":"user=u{i}"}}}}"#
            ))
            .unwrap()
        })
        .collect();
    d.accept(txns, Backpressure::Wait).await.unwrap();
    // One at a time, the second request would come only after the first timed out (20 s).
    let got = server.wait_for(5, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 5);
}
