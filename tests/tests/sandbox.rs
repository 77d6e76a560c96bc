//! Hostile components beside a well-behaved driver: each is stopped as configured with a
//! clear reason, the process survives, and the good driver receives every transaction.

use std::sync::{Arc, Mutex};

use mailpush::dispatch::{Delivery, DeliveryObserver, Dispatcher, Outcome};
use mailpush_e2e::*;

#[derive(Default)]
struct Outcomes(Mutex<Vec<(u32, String, Outcome)>>);

impl DeliveryObserver for Outcomes {
    fn delivered(&self, d: &Delivery) {
        self.0
            .lock()
            .unwrap()
            .push((d.driver, d.txn.id.clone(), d.outcome.clone()));
    }
}

/// Runs `n` transactions through [hostile wasm driver with `args`] + [recording driver];
/// returns the hostile driver's outcomes.
async fn run_hostile(args: &str, n: usize) -> (Vec<Outcome>, TestDrivers) {
    let dir = tempfile::tempdir().unwrap();
    let conf = format!(
        "mailpush {{\n state_dir = state\n}}\nplugin {{\n push_notification_driver = wasm:file={} {args}\n push_notification_driver2 = record:label=good\n}}\n",
        guest("hostile").display()
    );
    let config = write_config(dir.path(), &conf);
    let drivers = TestDrivers::new();
    let loaded = load_drivers(&drivers.registry(), &config).await;
    let outcomes = Arc::new(Outcomes::default());
    let d = Dispatcher::start(loaded, 64, Some(outcomes.clone()));
    for i in 0..n {
        d.dispatch(Arc::new(mailbox_txn(
            &format!("u{i}@example.com"),
            &format!("t{i}"),
        )))
        .await
        .unwrap();
    }
    d.shutdown().await;
    let seen = drivers.seen.lock().unwrap().clone();
    let ids: Vec<_> = seen.iter().map(|(_, id, _)| id.clone()).collect();
    let expected: Vec<_> = (0..n).map(|i| format!("t{i}")).collect();
    assert_eq!(
        ids, expected,
        "the good driver must receive every transaction, in order"
    );
    let hostile = outcomes
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|(d, _, _)| *d == 1)
        .map(|(_, _, o)| o.clone())
        .collect();
    (hostile, drivers)
}

fn reasons(outcomes: &[Outcome]) -> Vec<String> {
    outcomes
        .iter()
        .map(|o| match o {
            Outcome::Failed(f) => f.reason.clone(),
            other => format!("{other:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn infinite_loop_hits_the_deadline() {
    let (out, _) = run_hostile("mode=loop timeout_msecs=50", 3).await;
    assert_eq!(out.len(), 3);
    for r in reasons(&out) {
        assert!(
            r.contains("deadline exceeded") && r.contains("timeout_msecs=50"),
            "{r}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_bomb_hits_the_memory_cap() {
    let (out, _) = run_hostile("mode=memory memory=8M", 2).await;
    for r in reasons(&out) {
        assert!(
            r.contains("memory limit reached") && r.contains("memory=8M"),
            "{r}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unbounded_recursion_is_a_stack_overflow() {
    let (out, _) = run_hostile("mode=recursion", 2).await;
    for r in reasons(&out) {
        assert!(r.contains("stack overflow"), "{r}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn immediate_trap_is_contained() {
    let (out, _) = run_hostile("mode=trap", 3).await;
    for r in reasons(&out) {
        assert!(r.contains("trap"), "{r}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn log_flood_is_capped() {
    let (out, _) = run_hostile("mode=logflood max_log_lines=10 timeout_msecs=5000", 2).await;
    assert!(out.iter().all(|o| *o == Outcome::Delivered), "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn http_to_a_host_not_allowed_is_refused() {
    let (out, _) = run_hostile(
        "mode=http url=http://hooks.example.com/x allow_hosts=other.example.com",
        1,
    )
    .await;
    let r = &reasons(&out)[0];
    assert!(r.contains("not in allow_hosts"), "{r}");
    assert!(r.contains("refused"), "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn http_without_grant_is_refused() {
    let (out, _) = run_hostile("mode=http url=http://hooks.example.com/x", 1).await;
    let r = &reasons(&out)[0];
    assert!(r.contains("no hosts granted"), "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn http_to_loopback_and_metadata_service_refused_without_allow_private() {
    let server = RecordingServer::start().await;
    let url = server.url("/hook");
    let (out, _) = run_hostile(&format!("mode=http url={url} allow_hosts=127.0.0.1"), 1).await;
    let r = &reasons(&out)[0];
    assert!(r.contains("private") && r.contains("allow_private"), "{r}");
    let (out, _) = run_hostile(
        "mode=http url=http://169.254.169.254/latest/meta-data allow_hosts=*",
        1,
    )
    .await;
    let r = &reasons(&out)[0];
    assert!(
        r.contains("private") && r.contains("169.254.169.254"),
        "{r}"
    );
    assert!(
        server.requests().is_empty(),
        "no request may reach the server"
    );
    // With the grant, the same request goes through (the driver then reports it was not refused).
    let (out, _) = run_hostile(
        &format!("mode=http url={url} allow_hosts=127.0.0.1 allow_private"),
        1,
    )
    .await;
    let r = &reasons(&out)[0];
    assert!(r.contains("NOT refused: status 200"), "{r}");
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn opening_a_file_is_denied() {
    let (out, _) = run_hostile("mode=file", 1).await;
    let r = &reasons(&out)[0];
    assert!(r.contains("file access denied"), "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn huge_returned_string_is_truncated() {
    let (out, _) = run_hostile("mode=huge", 1).await;
    let r = &reasons(&out)[0];
    assert!(
        r.len() < 2048 && r.ends_with("[truncated]"),
        "{} bytes",
        r.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn panic_in_init_is_reported_with_number_and_name() {
    let dir = tempfile::tempdir().unwrap();
    let conf = format!(
        "mailpush {{\n state_dir = state\n}}\nplugin {{\n push_notification_driver = record\n push_notification_driver2 = wasm:file={} mode=panic-init\n}}\n",
        guest("hostile").display()
    );
    let config = write_config(dir.path(), &conf);
    let drivers = TestDrivers::new();
    let Err((loaded, errors)) = drivers
        .registry()
        .init_all(&config, Arc::new(mailpush_core::NoMetadata))
        .await
    else {
        panic!("init must fail");
    };
    assert_eq!(loaded.len(), 1, "the good driver still initialised");
    let e = errors[0].to_string();
    assert!(
        e.contains("driver 2 (wasm)") && e.contains("init failed"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fuel_limit_stops_a_loop() {
    let (out, _) = run_hostile("mode=loop fuel=1000000 timeout_msecs=10000", 1).await;
    let r = &reasons(&out)[0];
    assert!(r.contains("fuel exhausted"), "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn event_data_beyond_max_event_bytes_is_refused() {
    let (out, _) = run_hostile("mode=ok max_event_bytes=64", 2).await;
    for r in reasons(&out) {
        assert!(r.contains("max_event_bytes=64"), "{r}");
    }
}
