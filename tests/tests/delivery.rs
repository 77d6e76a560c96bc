//! At-least-once delivery: endpoint faults and retries, dead letters, replay and purge,
//! per-user ordering, the circuit breaker, the spool quota, and SIGKILL crash tests.
//! Retry schedules are compressed (milliseconds) to keep the tests fast.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailpush::pipeline::Backpressure;
use mailpush::pipeline::Dispatcher;
use mailpush::spool::sqlite::SqliteSpool;
use mailpush::spool::Spool;
use mailpush_core::CircuitState;
use mailpush_core::Transaction;
use mailpush_e2e::*;

struct Setup {
    _dir: tempfile::TempDir,
    spool: Arc<SqliteSpool>,
    dispatcher: Dispatcher,
}

/// An in-process dispatcher with a spool and the webhook driver(s) given as
/// `(url, extra args)`, allowed to call 127.0.0.1.
async fn setup(drivers: &[(String, &str)]) -> Setup {
    let lines: Vec<String> = drivers
        .iter()
        .map(|(url, extra)| {
            format!("url={url} allow_hosts=127.0.0.1 allow_private timeout_msecs=1000 {extra}")
        })
        .collect();
    setup_webhooks(&lines).await
}

/// An in-process dispatcher with a spool and one webhook driver per line of args.
async fn setup_webhooks(lines: &[String]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut conf = String::from("mailpush {\n state_dir = state\n}\nplugin {\n");
    for (i, args) in lines.iter().enumerate() {
        let key = if i == 0 {
            "push_notification_driver".to_string()
        } else {
            format!("push_notification_driver{}", i + 1)
        };
        conf.push_str(&format!(
            " {key} = wasm:file={} {args}\n",
            guest("webhook").display()
        ));
    }
    conf.push_str("}\n");
    let config = write_config(dir.path(), &conf);
    let loaded = load_drivers(&TestDrivers::new().registry(), &config).await;
    let spool = SqliteSpool::open(&dir.path().join("spool.db"), 1 << 30).unwrap();
    let dispatcher =
        Dispatcher::start_with_spool(loaded, 64, None, Some(spool.clone() as Arc<dyn Spool>));
    Setup {
        _dir: dir,
        spool,
        dispatcher,
    }
}

/// Progress and dead letters are recorded asynchronously; an (empty) append is a round
/// trip through the spool's writer, after which everything sent before is committed.
fn settle(spool: &SqliteSpool) {
    spool.append(&[], &[]).unwrap();
}

fn txn(user: &str, id: &str) -> Transaction {
    mailbox_txn(user, id)
}

fn ids(reqs: &[Recorded]) -> Vec<String> {
    reqs.iter()
        .map(|r| r.header("webhook-id").unwrap_or("").to_string())
        .collect()
}

/// Waits until the dispatcher's driver `n` has finished (delivered or failed) `count`.
async fn finished(d: &Dispatcher, n: usize, count: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = &d.reports()[n];
        if r.delivered + r.failed >= count {
            return;
        }
        assert!(Instant::now() < deadline, "timed out: {r:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_500_is_retried_until_the_endpoint_recovers() {
    let server = RecordingServer::start().await;
    server.script([Reply::status(500), Reply::status(502)]);
    let s = setup(&[(server.url("/h"), "retry=20ms,20ms,20ms")]).await;
    s.dispatcher
        .accept(vec![txn("a@x", "t1")], Backpressure::Refuse)
        .await
        .unwrap();
    finished(&s.dispatcher, 0, 1).await;
    let r = &s.dispatcher.reports()[0];
    assert_eq!((r.delivered, r.retried, r.failed), (1, 2, 0));
    assert_eq!(
        ids(&server.requests()),
        ["t1", "t1", "t1"],
        "the same webhook-id on every attempt"
    );
    settle(&s.spool);
    assert!(s.spool.pending().unwrap().is_empty(), "done in the spool");
}

#[tokio::test(flavor = "multi_thread")]
async fn timeouts_slow_responses_and_refused_connections() {
    // Hanging twice (past the 300 ms timeout), then slow but in time.
    let server = RecordingServer::start().await;
    server.script([
        Reply::Hang,
        Reply::Hang,
        Reply::Status {
            status: 200,
            headers: vec![],
            delay: Duration::from_millis(150),
        },
    ]);
    // The sandbox bounds the wait for the first response byte at 300 ms.
    let s = setup(&[(
        server.url("/h"),
        "first_byte_timeout_msecs=300 retry=10ms,10ms,10ms",
    )])
    .await;
    s.dispatcher
        .accept(vec![txn("a@x", "slow")], Backpressure::Refuse)
        .await
        .unwrap();
    finished(&s.dispatcher, 0, 1).await;
    let r = &s.dispatcher.reports()[0];
    assert_eq!((r.delivered, r.retried), (1, 2), "{r:?}");

    // Connection refused: a port with nobody listening. Retried, then dead-lettered.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = setup(&[(format!("http://127.0.0.1:{port}/h"), "retry=10ms,10ms")]).await;
    s.dispatcher
        .accept(vec![txn("a@x", "refused")], Backpressure::Refuse)
        .await
        .unwrap();
    finished(&s.dispatcher, 0, 1).await;
    settle(&s.spool);
    let dead = s.spool.dead_letters(None).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts.len(), 3, "{:?}", dead[0].attempts);
    assert!(
        dead[0]
            .attempts
            .iter()
            .all(|a| a.error.contains("connection")),
        "{:?}",
        dead[0].attempts
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_delays_the_next_attempt() {
    let server = RecordingServer::start().await;
    server.script([Reply::with_header(503, "retry-after", "1")]);
    let s = setup(&[(server.url("/h"), "retry=10ms")]).await;
    let start = Instant::now();
    s.dispatcher
        .accept(vec![txn("a@x", "ra2")], Backpressure::Refuse)
        .await
        .unwrap();
    server.wait_for(2, Duration::from_secs(10)).await;
    assert!(
        start.elapsed() >= Duration::from_millis(950),
        "{:?}",
        start.elapsed()
    );
    finished(&s.dispatcher, 0, 1).await;
    assert_eq!(s.dispatcher.reports()[0].delivered, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_replay_and_purge() {
    let server = RecordingServer::start().await;
    // A 400 is not retryable: straight to the dead letters; 500s exhaust the schedule.
    server.script([Reply::status(400), Reply::status(500), Reply::status(500)]);
    let s = setup(&[(server.url("/h"), "retry=10ms")]).await;
    s.dispatcher
        .accept(vec![txn("a@x", "bad-request")], Backpressure::Refuse)
        .await
        .unwrap();
    finished(&s.dispatcher, 0, 1).await;
    s.dispatcher
        .accept(vec![txn("b@x", "exhausted")], Backpressure::Refuse)
        .await
        .unwrap();
    finished(&s.dispatcher, 0, 2).await;
    settle(&s.spool);
    let dead = s.spool.dead_letters(Some(1)).unwrap();
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].txn.id, "bad-request");
    assert_eq!(dead[0].attempts.len(), 1);
    assert!(dead[0].attempts[0].error.contains("400"));
    assert_eq!(dead[1].attempts.len(), 2);
    assert!(dead[1]
        .attempts
        .iter()
        .all(|a| a.error.contains("500") && a.at > 0));
    // Replay one: the endpoint is fine now.
    assert_eq!(s.spool.replay(Some(dead[0].id), None).unwrap(), 1);
    assert_eq!(s.dispatcher.take_replays().await.unwrap(), 1);
    finished(&s.dispatcher, 0, 3).await;
    assert_eq!(ids(&server.requests()).last().unwrap(), "bad-request");
    // Purge the other.
    assert_eq!(s.spool.purge(None, Some(1)).unwrap(), 1);
    assert!(s.spool.dead_letters(None).unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_transaction_holds_back_only_its_user() {
    let server = RecordingServer::start().await;
    // a1 fails once; everything else succeeds.
    server.script([Reply::status(500)]);
    let s = setup(&[(server.url("/h"), "retry=200ms")]).await;
    s.dispatcher
        .accept(
            vec![
                txn("a@x", "a1"),
                txn("b@x", "b1"),
                txn("a@x", "a2"),
                txn("b@x", "b2"),
            ],
            Backpressure::Refuse,
        )
        .await
        .unwrap();
    finished(&s.dispatcher, 0, 4).await;
    let order = ids(&server.requests());
    assert_eq!(
        order,
        ["a1", "b1", "b2", "a1", "a2"],
        "b flows on while a waits; a stays in order"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn circuit_breaker_opens_probes_and_closes_beside_a_healthy_driver() {
    let bad = RecordingServer::start().await;
    bad.set_default(Reply::status(500));
    let good = RecordingServer::start().await;
    let s = setup(&[
        (bad.url("/bad"), "retry=10ms,10ms,10ms,10ms,10ms,10ms,10ms,10ms breaker_window=4 breaker_min=3 breaker_ratio=0.5 breaker_open=400ms"),
        (good.url("/good"), ""),
    ])
    .await;
    let batch: Vec<_> = (0..10)
        .map(|i| txn(&format!("u{i}@x"), &format!("c{i}")))
        .collect();
    s.dispatcher
        .accept(batch, Backpressure::Refuse)
        .await
        .unwrap();
    // The healthy driver is unaffected.
    good.wait_for(10, Duration::from_secs(10)).await;
    // The bad one opens after 3 failures and stops hammering the endpoint.
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.dispatcher.reports()[0].circuit != CircuitState::Open {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The next request, the half-open probe, is answered slowly, so the report can be
    // seen half-open.
    bad.script([Reply::Status {
        status: 200,
        headers: Vec::new(),
        delay: Duration::from_millis(500),
    }]);
    let while_open = bad.requests().len();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        bad.requests().len(),
        while_open,
        "no requests while the circuit is open"
    );
    // Recovery: the half-open probe succeeds and the circuit closes; everything arrives.
    bad.set_default(Reply::status(200));
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.dispatcher.reports()[0].circuit != CircuitState::HalfOpen {
        assert!(
            Instant::now() < deadline,
            "the report never showed half-open"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    finished(&s.dispatcher, 0, 10).await;
    let r = &s.dispatcher.reports()[0];
    assert_eq!(
        (r.delivered, r.circuit),
        (10, CircuitState::Closed),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn spool_full_answers_503_and_acceptance_resumes() {
    let server = RecordingServer::start().await;
    server.set_default(Reply::status(500));
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mailpush.conf");
    std::fs::write(
        &conf,
        format!(
            "mailpush {{\n state_dir = state\n listen = 127.0.0.1:0\n spool_quota = 1K\n}}\nplugin {{\n push_notification_driver = wasm:file={} url={} allow_hosts=127.0.0.1 allow_private retry=50ms,50ms,50ms,50ms,50ms,50ms,50ms,50ms,50ms,50ms breaker_min=1000\n}}\n",
            guest("webhook").display(),
            server.url("/h")
        ),
    )
    .unwrap();
    let d = RunningDaemon::start(&conf);
    let line = |i: usize| {
        format!("{{\"id\":\"q{i}\",\"user\":\"u{i}@x\",\"events\":[{{\"name\":\"MailboxCreate\",\"mailbox\":\"INBOX\"}}]}}")
    };
    let mut i = 0;
    let retry_after = loop {
        let (s, h, body) =
            http_request(d.addr, "POST", "/v1/transactions", &[], line(i).as_bytes()).await;
        i += 1;
        if s == 503 {
            assert!(
                body.contains("the spool is full") && body.matches("retry later").count() == 1,
                "{body}"
            );
            break h
                .iter()
                .find(|(k, _)| k == "retry-after")
                .map(|(_, v)| v.clone());
        }
        assert_eq!(s, 202);
        assert!(i < 100, "the quota never filled");
    };
    assert_eq!(retry_after.as_deref(), Some("30"));
    // The endpoint recovers; retries drain the spool; ingest accepts again.
    server.set_default(Reply::status(200));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (s, _, _) = http_request(
            d.addr,
            "POST",
            "/v1/transactions",
            &[],
            line(1000).as_bytes(),
        )
        .await;
        if s == 202 {
            break;
        }
        assert!(Instant::now() < deadline, "acceptance did not resume");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_points_loses_nothing_acknowledged() {
    let server = RecordingServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = dir.path().join("mailpush.conf");
    std::fs::write(
        &conf,
        format!(
            "mailpush {{\n state_dir = state\n listen = 127.0.0.1:{port}\n}}\nplugin {{\n push_notification_driver = wasm:file={} url={} allow_hosts=127.0.0.1 allow_private retry=20ms\n}}\n",
            guest("webhook").display(),
            server.url("/h")
        ),
    )
    .unwrap();
    let users = 25;
    let total = 400;
    let mut acked: Vec<Transaction> = Vec::new();
    let mut next = 0;
    // Kill points: after a pseudo-random number of batches, three times.
    let mut seed: u64 = std::process::id() as u64 ^ 0x5eed;
    for round in 0..4 {
        let d = RunningDaemon::start(&conf);
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let batches = if round == 3 {
            usize::MAX
        } else {
            3 + (seed >> 33) as usize % 8
        };
        let mut sent = 0;
        while next < total && sent < batches {
            let batch: Vec<Transaction> = (next..(next + 10).min(total))
                .map(|i| mailbox_txn(&format!("user{}@x", i % users), &format!("k{i:04}")))
                .collect();
            let body: String = batch.iter().map(|t| t.to_json() + "\n").collect();
            let (s, _, _) = http_request(
                d.addr,
                "POST",
                "/v1/transactions",
                &[("content-type", "application/x-ndjson")],
                body.as_bytes(),
            )
            .await;
            if s == 202 {
                acked.extend(batch);
                next += 10;
            }
            sent += 1;
        }
        if round < 3 {
            d.signal("KILL");
        } else {
            // Last life: wait until every acknowledged transaction arrived.
            let want: HashSet<String> = acked.iter().map(|t| t.id.clone()).collect();
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let got: HashSet<String> = ids(&server.requests()).into_iter().collect();
                if want.is_subset(&got) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} acknowledged transactions never arrived",
                    want.difference(&got).count()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        drop(d);
    }
    assert_eq!(acked.len(), total);
    // Per user, first deliveries are in ingest order.
    let mut first_seen: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    for id in ids(&server.requests()) {
        if seen.insert(id.clone()) {
            first_seen.push(id);
        }
    }
    let user_of: HashMap<String, String> = acked
        .iter()
        .map(|t| (t.id.clone(), t.user.clone()))
        .collect();
    let mut per_user: HashMap<String, Vec<String>> = HashMap::new();
    for id in first_seen {
        if let Some(u) = user_of.get(&id) {
            per_user.entry(u.clone()).or_default().push(id);
        }
    }
    for (user, got) in per_user {
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(got, sorted, "{user}: out of order");
    }
}

/// A failure deferred by an open endpoint circuit costs no attempt and no outcome for
/// the driver's breaker: twelve deferrals of a driver with one retry (and a breaker
/// that opens after two failures) still end in delivery, in order, with nothing
/// retried or dead-lettered.
#[tokio::test(flavor = "multi_thread")]
async fn deferred_failures_cost_no_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "mailpush {\n state_dir = state\n}\nplugin {\n push_notification_driver = defer:times=12 msecs=2 retry=10ms breaker_min=2 breaker_window=4 breaker_open=1h\n}\n",
    );
    let drivers = TestDrivers::new();
    let loaded = load_drivers(&drivers.registry(), &config).await;
    let spool = SqliteSpool::open(&dir.path().join("spool.db"), 1 << 30).unwrap();
    let d = Dispatcher::start_with_spool(loaded, 64, None, Some(spool.clone() as Arc<dyn Spool>));
    d.accept(
        vec![txn("u@x", "d1"), txn("u@x", "d2")],
        Backpressure::Refuse,
    )
    .await
    .unwrap();
    finished(&d, 0, 2).await;
    let r = &d.reports()[0];
    assert_eq!(
        (r.delivered, r.retried, r.dead_lettered, r.circuit),
        (2, 0, 0, CircuitState::Closed),
        "{r:?}"
    );
    let seen: Vec<String> = drivers
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.1.clone())
        .collect();
    assert_eq!(seen, ["d1", "d2"]);
    d.shutdown().await;
}

/// Every row of docs/delivery.md's failure table, through the webhook example driver
/// (the Rust SDK's classification) and the host: one driver per row, each against its
/// own endpoint that fails once in that way and then answers 200. Retryable rows are
/// delivered on the retry; the others are dead letters after one attempt, their reason
/// naming the status or the policy.
#[tokio::test(flavor = "multi_thread")]
async fn every_row_of_the_failure_table() {
    let retry: Vec<(&str, Reply)> = vec![
        ("500", Reply::status(500)),
        ("502", Reply::status(502)),
        ("503", Reply::status(503)),
        ("504", Reply::status(504)),
        ("408", Reply::status(408)),
        ("429", Reply::with_header(429, "retry-after", "0")),
        ("closed", Reply::Close),
        ("reset", Reply::Reset),
        ("protocol error", Reply::Raw(b"NOT HTTP AT ALL\r\n\r\n")),
        (
            "incomplete",
            Reply::Raw(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"),
        ),
        ("timeout", Reply::Hang),
    ];
    let give_up: Vec<(&str, Reply)> = vec![
        ("400", Reply::status(400)),
        ("404", Reply::status(404)),
        ("410", Reply::status(410)),
        ("301", Reply::with_header(301, "location", "/elsewhere")),
    ];
    let mut servers = Vec::new();
    let mut lines = Vec::new();
    for (_, reply) in retry.iter().chain(&give_up) {
        let server = RecordingServer::start().await;
        server.script([reply.clone()]);
        lines.push(format!(
            "url={} allow_hosts=127.0.0.1 allow_private timeout_msecs=1000 first_byte_timeout_msecs=300 retry=10ms",
            server.url("/h")
        ));
        servers.push(server);
    }
    // Refused by policy: a host not granted; a private address without allow_private.
    let policy = RecordingServer::start().await;
    lines.push(format!(
        "url={} allow_hosts=push.example.com retry=10ms",
        policy.url("/h")
    ));
    lines.push(format!(
        "url={} allow_hosts=127.0.0.1 retry=10ms",
        policy.url("/h")
    ));
    let s = setup_webhooks(&lines).await;
    s.dispatcher
        .accept(vec![txn("a@x", "t1")], Backpressure::Refuse)
        .await
        .unwrap();
    for n in 0..lines.len() {
        finished(&s.dispatcher, n, 1).await;
    }
    settle(&s.spool);
    let reports = s.dispatcher.reports();
    for (i, (row, _)) in retry.iter().enumerate() {
        let r = &reports[i];
        assert_eq!(
            (r.delivered, r.retried, r.dead_lettered),
            (1, 1, 0),
            "{row}: retried, then delivered: {r:?}"
        );
        assert_eq!(servers[i].requests().len(), 2, "{row}");
    }
    let dead = s.spool.dead_letters(None).unwrap();
    for (j, (row, _)) in give_up.iter().enumerate() {
        let number = (retry.len() + j + 1) as u32;
        let r = &reports[number as usize - 1];
        assert_eq!((r.delivered, r.dead_lettered), (0, 1), "{row}: {r:?}");
        let d = dead.iter().find(|d| d.driver == number).unwrap();
        assert_eq!(d.attempts.len(), 1, "{row}: given up at once");
        assert!(
            d.attempts[0]
                .error
                .contains(&format!("webhook answered {row}")),
            "{row}: {:?}",
            d.attempts
        );
    }
    let host_number = (retry.len() + give_up.len() + 1) as u32;
    for (number, names) in [
        (host_number, "is not in allow_hosts"),
        (host_number + 1, "grant allow_private to permit"),
    ] {
        let d = dead.iter().find(|d| d.driver == number).unwrap();
        assert_eq!(d.attempts.len(), 1, "refused by policy: given up at once");
        assert!(d.attempts[0].error.contains(names), "{:?}", d.attempts);
        assert!(
            !d.attempts[0].error.contains("HttpProtocolError"),
            "{:?}",
            d.attempts
        );
    }
    assert!(policy.requests().is_empty(), "nothing reached the endpoint");
}

/// An endpoint that resets or closes its first connections, then answers 200: every
/// transaction is delivered, in order per user, none dead-lettered.
#[tokio::test(flavor = "multi_thread")]
async fn dropped_connections_are_retried_not_dead_lettered() {
    let server = RecordingServer::start().await;
    server.script((0..12).map(|i| {
        if i % 2 == 0 {
            Reply::Reset
        } else {
            Reply::Close
        }
    }));
    let s = setup(&[(
        server.url("/h"),
        "retry=10ms,20ms,40ms,80ms,160ms,320ms breaker_open=200ms concurrency=4",
    )])
    .await;
    let batch: Vec<_> = (0..40)
        .map(|i| txn(&format!("u{}@x", i % 8), &format!("d{i}")))
        .collect();
    s.dispatcher
        .accept(batch.clone(), Backpressure::Refuse)
        .await
        .unwrap();
    finished(&s.dispatcher, 0, 40).await;
    settle(&s.spool);
    let r = &s.dispatcher.reports()[0];
    assert_eq!((r.delivered, r.dead_lettered), (40, 0), "{r:?}");
    assert!(r.retried >= 1, "{r:?}");
    assert!(s.spool.dead_letters(None).unwrap().is_empty());
    // Each user's transactions arrived in order (a retried one holds its user's later
    // ones back).
    let users: Vec<String> = (0..8).map(|u| format!("u{u}@x")).collect();
    assert_each_users_order(&batch, &server.requests()[12..], &users);
}

/// One burst of 16 concurrent 503s is one signal: the circuit opens once, and once the
/// endpoint is healthy delivery resumes within one probe interval (`breaker_open`), not
/// after an escalating pause.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_503s_pauses_delivery_for_one_probe_interval_at_most() {
    let server = RecordingServer::start().await;
    server.script((0..16).map(|_| Reply::status(503)));
    let s = setup(&[(
        server.url("/h"),
        "retry=1s,1s,1s breaker_open=2s concurrency=16",
    )])
    .await;
    let batch: Vec<_> = (0..48)
        .map(|i| txn(&format!("u{i}@x"), &format!("b{i}")))
        .collect();
    s.dispatcher
        .accept(batch, Backpressure::Refuse)
        .await
        .unwrap();
    // The burst: 16 requests at once, all 503; from now on the endpoint is healthy.
    server.wait_for(16, Duration::from_secs(10)).await;
    let healthy_since = Instant::now();
    server.wait_for(17, Duration::from_secs(10)).await;
    let resumed_after = healthy_since.elapsed();
    assert!(
        resumed_after <= Duration::from_secs(3),
        "delivery resumed {resumed_after:?} after the endpoint became healthy (breaker_open=2s)"
    );
    finished(&s.dispatcher, 0, 48).await;
    let r = &s.dispatcher.reports()[0];
    assert_eq!((r.delivered, r.dead_lettered), (48, 0), "{r:?}");
    assert_eq!(r.circuit, CircuitState::Closed);
}

/// `mailpush` with the arguments, run to completion: (success, stdout).
fn cli(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(mailpush_bin())
        .args(args)
        .output()
        .expect("run mailpush");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        // What went wrong is on stderr.
        text.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    (out.status.success(), text)
}

/// `retry_max_age` applies to whatever holds a transaction — here an open circuit and
/// retry waits while the endpoint refuses: once 10 s old, every transaction is a dead
/// letter whose reason says it expired; `mailpush dlq replay` delivers them, in order per
/// user, once the endpoint is back.
#[tokio::test(flavor = "multi_thread")]
async fn held_transactions_expire_into_the_dlq_and_replay_delivers_them() {
    let server = RecordingServer::start().await;
    server.set_default(Reply::status(503));
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mailpush.conf");
    std::fs::write(
        &conf,
        format!(
            "mailpush {{\n state_dir = state\n listen = 127.0.0.1:0\n}}\nplugin {{\n push_notification_driver = wasm:file={} url={} allow_hosts=127.0.0.1 allow_private retry=1s,2s,4s,8s,16s retry_max_age=10s breaker_open=3s\n}}\n",
            guest("webhook").display(),
            server.url("/h")
        ),
    )
    .unwrap();
    let conf_arg = conf.to_str().unwrap();
    let d = RunningDaemon::start(&conf);
    let batch: Vec<Transaction> = (0..20)
        .map(|i| txn(&format!("u{}@x", i % 5), &format!("e{i}")))
        .collect();
    let body: String = batch.iter().map(|t| t.to_json() + "\n").collect();
    let sent_at = Instant::now();
    let (status, _, answer) = http_request(
        d.addr,
        "POST",
        "/v1/transactions",
        &[("content-type", "application/x-ndjson")],
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 202, "{answer}");

    // Every transaction expires once 10 s old (not before), within a retry interval.
    let dead_letters = || {
        let (ok, out) = cli(&["dlq", "list", "-c", conf_arg]);
        assert!(ok, "{out}");
        out.lines().skip(1).map(str::to_string).collect::<Vec<_>>()
    };
    let rows = loop {
        let rows = dead_letters();
        if rows.len() == 20 {
            break rows;
        }
        assert!(
            sent_at.elapsed() < Duration::from_secs(10 + 3),
            "{} of 20 dead-lettered after {:?}:\n{}",
            rows.len(),
            sent_at.elapsed(),
            rows.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(sent_at.elapsed() >= Duration::from_secs(10));
    for row in &rows {
        assert!(
            row.contains("expired: not delivered within retry_max_age=10s"),
            "{row}"
        );
    }

    // The endpoint is back: replay delivers them all, in order per user.
    server.set_default(Reply::status(200));
    let before = server.requests().len();
    let (ok, out) = cli(&["dlq", "replay", "--all", "-c", conf_arg]);
    assert!(ok && out.starts_with("20 dead letter(s) queued"), "{out}");
    let got = server.wait_for(before + 20, Duration::from_secs(30)).await;
    let users: Vec<String> = (0..5).map(|u| format!("u{u}@x")).collect();
    assert_each_users_order(&batch, &got[before..], &users);
    assert!(dead_letters().is_empty());
    let status = d.stop();
    assert!(status.success(), "{status:?}");
}

/// `hold_max`: a user's later transaction waits at most this long behind an earlier one
/// that failed and waits for a retry; then the earlier one is a dead letter ("skipped")
/// and the later one goes — other users are untouched, and without `hold_max` the order
/// is strict.
#[tokio::test(flavor = "multi_thread")]
async fn hold_max_lets_a_later_transaction_skip_ahead() {
    let server = RecordingServer::start().await;
    server.script([Reply::status(500)]);
    let s = setup(&[(server.url("/h"), "retry=1h hold_max=200ms")]).await;
    s.dispatcher
        .accept(vec![txn("u@x", "first")], Backpressure::Refuse)
        .await
        .unwrap();
    server.wait_for(1, Duration::from_secs(10)).await;
    let sent = Instant::now();
    s.dispatcher
        .accept(vec![txn("u@x", "second")], Backpressure::Refuse)
        .await
        .unwrap();
    let got = server.wait_for(2, Duration::from_secs(10)).await;
    assert!(
        sent.elapsed() >= Duration::from_millis(200),
        "not before hold_max"
    );
    assert_eq!(ids(&got), ["first", "second"]);
    finished(&s.dispatcher, 0, 2).await;
    settle(&s.spool);
    let r = &s.dispatcher.reports()[0];
    assert_eq!(
        (r.delivered, r.dead_lettered, r.skipped_ahead),
        (1, 1, 1),
        "{r:?}"
    );
    let dead = s.spool.dead_letters(None).unwrap();
    assert_eq!(dead[0].txn.id, "first");
    let last = &dead[0].attempts.last().unwrap().error;
    assert!(
        last.starts_with("skipped: a later transaction of the user waited hold_max=200ms behind it (last attempt: webhook answered 500"),
        "{last}"
    );
}

/// ox's freshness (its defaults: `hold_max=0s`, `retry_max_age=2m`): a notification
/// whose push timed out does not hold back the user's next one — that one is pushed at
/// once, and the stale one is a dead letter ("skipped"), counted.
#[tokio::test(flavor = "multi_thread")]
async fn ox_pushes_the_next_notification_past_one_that_timed_out() {
    let server = RecordingServer::start().await;
    server.script([Reply::Hang]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "mailpush {{\n state_dir = state\n}}\nplugin {{\n push_notification_driver = ox:url={} timeout_msecs=300 max_retries=0\n}}\n",
            server.url("/preliminary/http-notify/v1/notify")
        ),
    );
    let loaded = load_drivers(&TestDrivers::new().registry(), &config).await;
    assert_eq!(loaded[0].policy.hold_max, Some(Duration::ZERO));
    assert_eq!(loaded[0].policy.retry.max_age, Duration::from_secs(120));
    let spool = SqliteSpool::open(&dir.path().join("spool.db"), 1 << 30).unwrap();
    let d = Dispatcher::start_with_spool(loaded, 64, None, Some(spool.clone() as Arc<dyn Spool>));
    let new_mail = |id: &str, uid: u32| {
        Transaction::from_json(&format!(
            r#"{{"id":"{id}","user":"u@x","events":[{{"name":"MessageNew","mailbox":"INBOX","uid":{uid},"uid_validity":7}}],"metadata":{{"/private/vendor/vendor.dovecot/http-notify":"user=u@x"}}}}"#
        ))
        .unwrap()
    };
    d.accept(vec![new_mail("stale", 1)], Backpressure::Refuse)
        .await
        .unwrap();
    // The first push hangs and times out (300 ms): a retry would come in 5 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.reports()[0].retried == 0 {
        assert!(Instant::now() < deadline, "{:?}", d.reports()[0]);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sent = Instant::now();
    d.accept(vec![new_mail("fresh", 2)], Backpressure::Refuse)
        .await
        .unwrap();
    let got = server.wait_for(2, Duration::from_secs(10)).await;
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "the next push waited {:?}",
        sent.elapsed()
    );
    assert!(
        got[1].body_text().contains("\"imap-uid\":2"),
        "{}",
        got[1].body_text()
    );
    finished(&d, 0, 2).await;
    settle(&spool);
    let r = &d.reports()[0];
    assert_eq!((r.delivered, r.skipped_ahead), (1, 1), "{r:?}");
    let dead = spool.dead_letters(None).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].txn.id, "stale");
    let last = &dead[0].attempts.last().unwrap().error;
    assert!(
        last.starts_with("skipped: a later transaction of the user waited hold_max=0s behind it (last attempt: Error when sending notification: Request timed out"),
        "{last}"
    );
    d.shutdown().await;
}

/// What the spool owes to a driver number the config no longer has (removed, or
/// renumbered by Dovecot's gap rule) is named at start: it stays in the spool, and a
/// driver configured under that number again receives it.
#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_owed_to_a_driver_the_config_no_longer_has_is_named_at_start() {
    let dir = tempfile::tempdir().unwrap();
    {
        let spool = SqliteSpool::open(&dir.path().join("state/spool.db"), 1 << 30).unwrap();
        spool
            .append(&[txn("u@x", "o1"), txn("u@x", "o2")], &[1, 2])
            .unwrap();
        settle(&spool);
    }
    let conf = dir.path().join("mailpush.conf");
    std::fs::write(
        &conf,
        format!(
            "mailpush {{\n state_dir = state\n listen = 127.0.0.1:0\n}}\nplugin {{\n push_notification_driver = dlog:file={}\n}}\n",
            dir.path().join("dlog.log").display()
        ),
    )
    .unwrap();
    let d = RunningDaemon::start(&conf);
    let log = d.wait_for_log(
        "the spool owes 2 transaction(s) to driver 2, which this config does not have",
        Duration::from_secs(20),
    );
    assert!(
        log.contains("the spool owes 2 transaction(s) to driver 2"),
        "{log}"
    );
    assert!(
        !log.contains("to driver 1,"),
        "driver 1 is configured: {log}"
    );
}
