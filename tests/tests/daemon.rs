//! `mailpush run` end to end: ingest error paths, overload, reload while transactions
//! flow, graceful shutdown, /metrics, the OX-compatible endpoint, status and reload.

use std::time::{Duration, Instant};

use mailpush_e2e::*;

fn txn_line(user: &str, id: &str) -> String {
    format!("{{\"id\":\"{id}\",\"user\":\"{user}\",\"events\":[{{\"name\":\"MailboxCreate\",\"mailbox\":\"M-{id}\"}}]}}\n")
}

fn count(path: &std::path::Path, needle: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .matches(needle)
        .count()
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

const NDJSON: (&str, &str) = ("content-type", "application/x-ndjson");

#[tokio::test(flavor = "multi_thread")]
async fn ingest_error_paths() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "s3cret-token\n").unwrap();
    let conf = dir.path().join("mailpush.conf");
    std::fs::write(&conf, "mailpush {\n state_dir = state\n listen = 127.0.0.1:0\n ingest_token_file = token\n max_body = 2K\n}\nplugin {\n push_notification_driver = dlog:file=dlog.log\n}\n").unwrap();
    let d = RunningDaemon::start(&conf);
    let auth = ("authorization", "Bearer s3cret-token");

    // 401: no token, wrong token.
    let (s, h, _) = http_request(
        d.addr,
        "POST",
        "/v1/transactions",
        &[],
        txn_line("a@b", "1").as_bytes(),
    )
    .await;
    assert_eq!(s, 401);
    assert!(header(&h, "www-authenticate").is_some());
    let (s, _, _) = http_request(
        d.addr,
        "POST",
        "/v1/transactions",
        &[("authorization", "Bearer nope")],
        b"{}",
    )
    .await;
    assert_eq!(s, 401);
    // The token changed on disk: `reload` (which reads the new one) is refused, and says
    // that the instance keeps the token it read at start.
    std::fs::write(dir.path().join("token"), "n3w-token\n").unwrap();
    let cli_conf = dir.path().join("cli.conf");
    std::fs::write(&cli_conf, format!("mailpush {{\n state_dir = state\n listen = {}\n ingest_token_file = token\n}}\nplugin {{\n push_notification_driver = dlog:file=dlog.log\n}}\n", d.addr)).unwrap();
    let out = std::process::Command::new(mailpush_bin())
        .args(["reload", "-c"])
        .arg(&cli_conf)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("401") && err.contains("restart it"),
        "{err}"
    );
    std::fs::write(dir.path().join("token"), "s3cret-token\n").unwrap();
    // A status request without the token is refused too, and, like the refused reload,
    // is no refused transaction: only the two ingest requests count.
    let (s, _, _) = http_request(d.addr, "GET", "/v1/status", &[], b"").await;
    assert_eq!(s, 401);
    let (_, _, metrics) = http_request(d.addr, "GET", "/metrics", &[], b"").await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "mailpush_transactions_rejected_total{reason=\"unauthorized\"} 2"),
        "{metrics}"
    );

    // 400 for JSON: the path and what was expected.
    let (s, _, b) = http_request(d.addr, "POST", "/v1/transactions", &[auth], br#"{"user":"a@b","events":[{"name":"MessageRead","mailbox":"INBOX","uid":"7","uid_validity":1}]}"#).await;
    assert_eq!(s, 400, "{b}");
    let v: serde_json::Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["path"], "$.events[0].uid", "{b}");

    // 400 for NDJSON: the line number; nothing of the batch accepted.
    let batch = format!(
        "{}{}{}",
        txn_line("a@b", "ok1"),
        "{\"user\":\"a@b\",\"events\":[{\"name\":\"Nope\",\"mailbox\":\"X\"}]}\n",
        txn_line("a@b", "ok2")
    );
    let (s, _, b) = http_request(
        d.addr,
        "POST",
        "/v1/transactions",
        &[auth, NDJSON],
        batch.as_bytes(),
    )
    .await;
    assert_eq!(s, 400, "{b}");
    let v: serde_json::Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["line"], 2);
    assert_eq!(v["path"], "$.events[0].name");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("expected one of: FlagsClear"),
        "{b}"
    );

    // 400 for a body that is not UTF-8, and for an NDJSON body without transactions.
    let (s, _, b) = http_request(d.addr, "POST", "/v1/transactions", &[auth], b"\xff\xfe{").await;
    assert_eq!(s, 400, "{b}");
    assert!(b.contains("not UTF-8"), "{b}");
    let (s, _, b) = http_request(
        d.addr,
        "POST",
        "/v1/transactions",
        &[auth, NDJSON],
        b"\n  \n",
    )
    .await;
    assert_eq!(s, 400, "{b}");
    assert!(b.contains("no transactions"), "{b}");
    // /readyz: ready (drivers initialised, queues not saturated).
    let (s, _, _) = http_request(d.addr, "GET", "/readyz", &[], b"").await;
    assert_eq!(s, 200);

    // 413 above max_body.
    let big = "x".repeat(4096);
    let (s, _, _) = http_request(d.addr, "POST", "/v1/transactions", &[auth], big.as_bytes()).await;
    assert_eq!(s, 413);

    // 202 with ids.
    let ok = format!("{}{}", txn_line("a@b", "good1"), txn_line("a@b", "good2"));
    let (s, _, b) = http_request(
        d.addr,
        "POST",
        "/v1/transactions",
        &[auth, NDJSON],
        ok.as_bytes(),
    )
    .await;
    assert_eq!(s, 202, "{b}");
    let v: serde_json::Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["ids"], serde_json::json!(["good1", "good2"]));
    // Media types are case-insensitive, parameters allowed.
    let ok = format!("{}{}", txn_line("a@b", "good3"), txn_line("a@b", "good4"));
    let (s, _, b) = http_request(
        d.addr,
        "POST",
        "/v1/transactions",
        &[
            auth,
            ("content-type", "Application/X-NDJSON; charset=utf-8"),
        ],
        ok.as_bytes(),
    )
    .await;
    assert_eq!(s, 202, "{b}");

    let status = d.stop();
    assert!(status.success());
    let log = dir.path().join("dlog.log");
    assert_eq!(
        count(&log, "Called begin_txn"),
        4,
        "only the good batches were delivered"
    );
    assert_eq!(count(&log, "Mailbox data: Mailbox [M-ok1]"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn overload_answers_503_and_queues_stay_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mailpush.conf");
    // A driver that takes 3 s per transaction behind a queue of 2, without a spool (with
    // one, a full queue overflows into the spool: `a_slow_driver_overflows_into_the_spool`).
    std::fs::write(&conf, format!("mailpush {{\n state_dir = state\n listen = 127.0.0.1:0\n delivery = memory\n queue_capacity = 2\n shutdown_timeout_msecs = 0\n}}\nplugin {{\n push_notification_driver = wasm:file={} mode=loop timeout_msecs=3000\n}}\n", guest("hostile").display())).unwrap();
    let d = RunningDaemon::start(&conf);
    // A batch larger than a whole queue can never fit: 413, not an endless 503.
    let batch: String = (0..3).map(|i| txn_line("a@b", &format!("b{i}"))).collect();
    let (s, _, b) = http_request(
        d.addr,
        "POST",
        "/v1/transactions",
        &[NDJSON],
        batch.as_bytes(),
    )
    .await;
    assert_eq!(s, 413, "{b}");
    let mut codes = Vec::new();
    let mut retry_after = None;
    for i in 0..6 {
        let (s, h, _) = http_request(
            d.addr,
            "POST",
            "/v1/transactions",
            &[],
            txn_line("a@b", &format!("o{i}")).as_bytes(),
        )
        .await;
        if s == 503 {
            retry_after = header(&h, "retry-after").map(str::to_string);
        }
        codes.push(s);
    }
    assert!(codes.contains(&202) && codes.contains(&503), "{codes:?}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    // Full queue: readyz says so. The lane may still take one more into its own hold
    // (the transaction waiting behind the one in delivery) and free a place: then fill
    // it again; it stays full once the lane holds all it may.
    let mut ready = Vec::new();
    for i in 0..20 {
        let (s, _, _) = http_request(d.addr, "GET", "/readyz", &[], b"").await;
        ready.push(s);
        if s == 503 {
            break;
        }
        http_request(
            d.addr,
            "POST",
            "/v1/transactions",
            &[],
            txn_line("a@b", &format!("r{i}")).as_bytes(),
        )
        .await;
    }
    assert_eq!(
        ready.last(),
        Some(&503),
        "readyz reports saturation: {ready:?}"
    );
    let (_, _, metrics) = http_request(d.addr, "GET", "/metrics", &[], b"").await;
    let depth: u64 = metrics
        .lines()
        .find(|l| l.starts_with("mailpush_driver_queue_depth{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(depth <= 2, "queue depth {depth} exceeds its capacity");
    let rejected = metrics
        .lines()
        .find(|l| l.starts_with("mailpush_transactions_rejected_total{reason=\"overloaded\"}"))
        .unwrap();
    assert!(!rejected.ends_with(" 0"), "{rejected}");
}

/// Request bodies being read are bounded by `max_inflight`, charged by the bytes that
/// have arrived: clients that have sent big bodies but not finished them make further
/// requests get 503 (not memory); once they are gone, ingest accepts again.
#[tokio::test(flavor = "multi_thread")]
async fn bodies_in_flight_are_bounded() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mailpush.conf");
    std::fs::write(&conf, "mailpush {\n state_dir = state\n listen = 127.0.0.1:0\n max_body = 1M\n max_inflight = 2M\n}\nplugin {\n push_notification_driver = dlog:file=dlog.log\n}\n").unwrap();
    let d = RunningDaemon::start(&conf);
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut c = tokio::net::TcpStream::connect(d.addr).await.unwrap();
        c.write_all(
            b"POST /v1/transactions HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n",
        )
        .await
        .unwrap();
        // All but the last byte.
        c.write_all(&vec![b' '; 1048575]).await.unwrap();
        slow.push(c);
    }
    let line = txn_line("a@b", "small");
    // The two unfinished bodies hold the whole budget once their handlers have read
    // what was sent: wait until /metrics shows it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, _, m) = http_request(d.addr, "GET", "/metrics", &[], b"").await;
        if m.contains("mailpush_ingest_body_bytes_in_flight 2097152") {
            break;
        }
        assert!(Instant::now() < deadline, "{m}");
        tokio::task::yield_now().await;
    }
    let (s, h, b) = http_request(d.addr, "POST", "/v1/transactions", &[], line.as_bytes()).await;
    assert_eq!(s, 503, "{b}");
    assert!(b.contains("max_inflight"), "{b}");
    assert_eq!(header(&h, "retry-after"), Some("1"));
    drop(slow);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, _, _) =
            http_request(d.addr, "POST", "/v1/transactions", &[], line.as_bytes()).await;
        if s == 202 {
            break;
        }
        assert!(Instant::now() < deadline, "ingest did not recover");
        tokio::task::yield_now().await;
    }
}

/// `--log-format json`: every line is a JSON object, and every line logged while a driver
/// handles a transaction carries the transaction id and the driver's number and name.
#[tokio::test(flavor = "multi_thread")]
async fn json_logs_carry_transaction_and_driver() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mailpush.conf");
    std::fs::write(&conf, format!("mailpush {{\n state_dir = state\n listen = 127.0.0.1:0\n delivery = memory\n}}\nplugin {{\n push_notification_driver = wasm:file={} mode=trap\n push_notification_driver2 = dlog\n push_notification_driver3 = wasm:file={} mode=logflood max_log_lines=2\n}}\n", guest("hostile").display(), guest("hostile").display())).unwrap();
    let d = RunningDaemon::start_with(&conf, &["--log-format", "json", "--log-level", "debug"]);
    let (s, _, _) = http_request(
        d.addr,
        "POST",
        "/v1/transactions",
        &[],
        txn_line("a@b", "J-1").as_bytes(),
    )
    .await;
    assert_eq!(s, 202);
    let log = d.log.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(log.lock().unwrap().contains("delivery failed")
        && log.lock().unwrap().contains("Called end_txn"))
    {
        assert!(Instant::now() < deadline, "{}", log.lock().unwrap());
        tokio::task::yield_now().await;
    }
    assert!(d.stop().success());
    let log = log.lock().unwrap().clone();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let in_delivery: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["span"]["name"] == "deliver")
        .collect();
    for l in &in_delivery {
        assert_eq!(l["span"]["txn"], "J-1", "{l}");
        assert!(l["span"]["driver"].is_u64(), "{l}");
        assert!(l["span"]["driver_name"].is_string(), "{l}");
    }
    let failed = in_delivery
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("delivery failed"))
        })
        .unwrap_or_else(|| panic!("no failure line:\n{log}"));
    assert_eq!(failed["span"]["driver"], 1);
    assert_eq!(failed["span"]["driver_name"], "wasm");
    let dlog = in_delivery
        .iter()
        .find(|l| l["message"] == "Called end_txn push_notification plugin hook.")
        .unwrap_or_else(|| panic!("no dlog line:\n{log}"));
    assert_eq!(dlog["span"]["driver"], 2);
    // A wasm driver's own log lines are tagged with its number, name and the transaction.
    let guest_lines: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["target"] == "mailpush::wasm::guest")
        .collect();
    assert_eq!(guest_lines.len(), 2, "max_log_lines=2:\n{log}");
    for l in guest_lines {
        assert_eq!(l["driver"], 3, "{l}");
        assert_eq!(l["name"], "wasm", "{l}");
        assert_eq!(l["txn"], "J-1", "{l}");
        assert!(
            l["message"].as_str().unwrap().starts_with("flood line"),
            "{l}"
        );
    }
    // Ingest lines name the transactions they are about.
    assert!(lines
        .iter()
        .any(|l| l["message"] == "accepted" && l["txns"].as_str() == Some("[\"J-1\"]")));
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_parse_as_prometheus_text() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mailpush.conf");
    std::fs::write(&conf, format!("mailpush {{\n state_dir = state\n listen = 127.0.0.1:0\n}}\nplugin {{\n push_notification_driver = dlog\n push_notification_driver2 = wasm:file={} mode=trap\n}}\n", guest("hostile").display())).unwrap();
    let d = RunningDaemon::start(&conf);
    let (s, _, _) = http_request(
        d.addr,
        "POST",
        "/v1/transactions",
        &[],
        txn_line("a@b", "m1").as_bytes(),
    )
    .await;
    assert_eq!(s, 202);
    // Wait until both drivers processed it (an event we can observe via /metrics).
    let text = loop {
        let (_, _, text) = http_request(d.addr, "GET", "/metrics", &[], b"").await;
        if text.contains("mailpush_driver_failed_total{driver=\"2\",name=\"wasm\"} 1")
            && text.contains("mailpush_driver_delivered_total{driver=\"1\",name=\"dlog\"} 1")
        {
            break text;
        }
        tokio::task::yield_now().await;
    };
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    let find = |name: &str| scrape.samples.iter().filter(|s| s.metric == name).count();
    assert!(find("mailpush_transactions_received_total") == 1);
    assert!(find("mailpush_ingest_body_bytes_in_flight") == 1);
    assert!(find("mailpush_wasm_traps_total") == 1);
    assert!(find("mailpush_driver_processing_seconds_count") == 2);
    // Every family the issue lists: per driver (both drivers) ...
    for family in [
        "mailpush_driver_delivered_total",
        "mailpush_driver_failed_total",
        "mailpush_driver_retried_total",
        "mailpush_driver_dropped_total",
        "mailpush_driver_skipped_total",
        "mailpush_driver_queue_depth",
        "mailpush_driver_held",
        "mailpush_driver_diverted",
        "mailpush_driver_overflowing",
        "mailpush_driver_loading",
        "mailpush_driver_queue_capacity",
        "mailpush_driver_circuit_open",
        "mailpush_driver_processing_seconds_sum",
    ] {
        assert_eq!(find(family), 2, "{family}");
    }
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("mailpush_driver_processing_seconds_bucket{"))
            .count(),
        2 * 13
    );
    // ... and the wasm driver's own counters.
    for family in [
        "mailpush_wasm_traps_total",
        "mailpush_wasm_timeouts_total",
        "mailpush_wasm_memory_limit_hits_total",
        "mailpush_wasm_fuel_used_total",
    ] {
        assert_eq!(find(family), 1, "{family}");
    }
    // Rejections by reason.
    let (s, _, _) = http_request(d.addr, "POST", "/v1/transactions", &[], b"{").await;
    assert_eq!(s, 400);
    let (_, _, text) = http_request(d.addr, "GET", "/metrics", &[], b"").await;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("valid Prometheus text");
    let invalid = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "mailpush_transactions_rejected_total"
                && s.labels.get("reason") == Some("invalid")
        })
        .expect("rejected{reason=invalid}");
    assert!(matches!(invalid.value, prometheus_parse::Value::Counter(v) if v == 1.0));
    let received = scrape
        .samples
        .iter()
        .find(|s| s.metric == "mailpush_transactions_received_total")
        .unwrap();
    assert!(
        matches!(received.value, prometheus_parse::Value::Counter(v) if v == 1.0),
        "{:?}",
        received.value
    );
    let (s, _, _) = http_request(d.addr, "GET", "/healthz", &[], b"").await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_shutdown_drains_work_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mailpush.conf");
    // Driver 1 is slow (each transaction spins to its 50 ms deadline); driver 2 records.
    // Memory mode: a failure is final, so draining means delivering (or failing) all 20.
    std::fs::write(&conf, format!("mailpush {{\n state_dir = state\n listen = 127.0.0.1:0\n delivery = memory\n shutdown_timeout_msecs = 5000\n}}\nplugin {{\n push_notification_driver = wasm:file={} mode=loop timeout_msecs=50\n push_notification_driver2 = dlog:file=dlog.log\n}}\n", guest("hostile").display())).unwrap();
    let d = RunningDaemon::start(&conf);
    let batch: String = (0..20).map(|i| txn_line("a@b", &format!("g{i}"))).collect();
    let (s, _, _) = http_request(
        d.addr,
        "POST",
        "/v1/transactions",
        &[NDJSON],
        batch.as_bytes(),
    )
    .await;
    assert_eq!(s, 202);
    // A client that stalls in the middle of its request does not hold the shutdown: the
    // connection is cut at the shutdown deadline (5 s here; the drain takes about 1 s
    // meanwhile), where it would otherwise keep the process forever.
    let mut stalled = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut stalled,
        b"POST /v1/transactions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"user\"",
    )
    .await
    .unwrap();
    // Stop only once the daemon holds it open (status's own connection is the other);
    // one still in the listen backlog at shutdown would just be reset.
    let deadline = Instant::now() + Duration::from_secs(30);
    while daemon_status(d.addr).await.ingest.connections_open < 2 {
        assert!(Instant::now() < deadline, "never accepted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let log = d.log.clone();
    let status = d.stop();
    assert!(status.success(), "{}", log.lock().unwrap());
    let log = log.lock().unwrap().clone();
    assert!(log.contains("cutting 1 connection(s) still open"), "{log}");
    assert!(log.contains("shutdown complete"), "{log}");
    assert!(
        log.contains("driver=1") && log.contains("failed=20"),
        "the slow driver finished all 20: {log}"
    );
    assert_eq!(count(&dir.path().join("dlog.log"), "Called end_txn"), 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_swaps_drivers_while_transactions_flow() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mailpush.conf");
    let v1 = "mailpush {\n state_dir = state\n listen = 127.0.0.1:0\n}\nplugin {\n push_notification_driver = dlog:file=one.log\n}\n";
    std::fs::write(&conf, v1).unwrap();
    let d = RunningDaemon::start(&conf);
    // The running config's listen is 127.0.0.1:0; control commands need the real port.
    let with_port = |extra: &str| {
        format!("mailpush {{\n state_dir = state\n listen = {}\n}}\nplugin {{\n push_notification_driver = dlog:file=one.log\n{extra}}}\n", d.addr)
    };
    std::fs::write(&conf, with_port("")).unwrap();
    let sender = {
        let addr = d.addr;
        tokio::spawn(async move {
            for i in 0..200 {
                let (s, _, _) = http_request(
                    addr,
                    "POST",
                    "/v1/transactions",
                    &[],
                    txn_line("a@b", &format!("r{i}")).as_bytes(),
                )
                .await;
                assert_eq!(s, 202);
            }
        })
    };
    // While that flows: add a driver (mailpush reload), then break the config (refused),
    // then remove the new driver again (SIGHUP).
    std::fs::write(
        &conf,
        with_port(" push_notification_driver2 = dlog:file=two.log\n"),
    )
    .unwrap();
    let out = std::process::Command::new(mailpush_bin())
        .args(["reload", "-c"])
        .arg(&conf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("kept [1] started [2]"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The listen setting changed too (0 → the port): not applied, and said so.
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "warning: the mailpush { } block changed: reload applies the driver list only"
        ),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&conf, with_port(" push_notification_driver2 = nosuch\n")).unwrap();
    let out = std::process::Command::new(mailpush_bin())
        .args(["reload", "-c"])
        .arg(&conf)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown push notification driver `nosuch`")
    );
    let status = std::process::Command::new(mailpush_bin())
        .args(["status", "-c"])
        .arg(&conf)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&status.stdout);
    let driver_rows = table
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
        .count();
    assert!(
        table.contains("dlog") && driver_rows == 2,
        "still two drivers after the refused reload:\n{table}"
    );
    sender.await.unwrap();
    // Driver 2 is running: what arrives now reaches both.
    for i in 0..5 {
        let (s, _, _) = http_request(
            d.addr,
            "POST",
            "/v1/transactions",
            &[],
            txn_line("a@b", &format!("s{i}")).as_bytes(),
        )
        .await;
        assert_eq!(s, 202);
    }
    // A SIGHUP with a config that does not parse has no one to answer: it is logged
    // (once more than the refusal above; waiting for that one's line raced the config
    // being written again below).
    let refused = "reload refused, keeping the running configuration";
    let before = d.logged_times(refused);
    std::fs::write(&conf, "mailpush {\n state_dir = state\n").unwrap();
    d.signal("HUP");
    let log = d.wait_for_logged_times(refused, before + 1, Duration::from_secs(20));
    assert_eq!(log.matches(refused).count(), before + 1, "{log}");
    std::fs::write(&conf, with_port("")).unwrap();
    d.signal("HUP");
    // Wait for the reload to be logged.
    let log = d.wait_for_log("stopped=[2]", Duration::from_secs(30));
    assert!(log.contains("stopped=[2]"), "{log}");
    assert!(d.stop().success());
    // Driver 1 was kept throughout: it saw every transaction exactly once, and the
    // reloads' duplicates of it wrote nothing to its file (one init, one deinit).
    assert_eq!(count(&dir.path().join("one.log"), "Called begin_txn"), 205);
    assert_eq!(count(&dir.path().join("one.log"), "Called init"), 1);
    assert_eq!(count(&dir.path().join("one.log"), "Called deinit"), 1);
    // Driver 2 saw a suffix (at least the last 5), and finished everything it had queued
    // before it stopped.
    let two = count(&dir.path().join("two.log"), "Called begin_txn");
    assert!(two >= 5, "driver 2 saw {two}");
    assert_eq!(two, count(&dir.path().join("two.log"), "Called end_txn"));
    assert!(count(&dir.path().join("two.log"), "Called deinit") == 1);
}

/// A driver changed by a reload while a transaction waits for its retry: the new driver
/// delivers it at once (not only after a restart), once.
#[tokio::test(flavor = "multi_thread")]
async fn reload_delivers_what_the_replaced_driver_left_waiting() {
    let bad = RecordingServer::start().await;
    bad.set_default(Reply::status(500));
    let good = RecordingServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mailpush.conf");
    let config = |url: &str, listen: &str| {
        format!("mailpush {{\n state_dir = state\n listen = {listen}\n}}\nplugin {{\n push_notification_driver = wasm:file={} url={url} allow_hosts=127.0.0.1 allow_private retry=1h breaker_min=1000\n}}\n", guest("webhook").display())
    };
    std::fs::write(&conf, config(&bad.url("/h"), "127.0.0.1:0")).unwrap();
    let d = RunningDaemon::start(&conf);
    let post = |id: &'static str| {
        let addr = d.addr;
        async move {
            let (s, _, b) = http_request(
                addr,
                "POST",
                "/v1/transactions",
                &[],
                txn_line("a@b", id).as_bytes(),
            )
            .await;
            assert_eq!(s, 202, "{b}");
        }
    };
    post("R-1").await;
    // R-1 failed once and waits an hour for its retry.
    bad.wait_for(1, Duration::from_secs(20)).await;
    std::fs::write(&conf, config(&good.url("/h"), &d.addr.to_string())).unwrap();
    let out = std::process::Command::new(mailpush_bin())
        .args(["reload", "-c"])
        .arg(&conf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    post("R-2").await;
    let got = good.wait_for(2, Duration::from_secs(20)).await;
    let mut ids: Vec<&str> = got.iter().filter_map(|r| r.header("webhook-id")).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["R-1", "R-2"]);
    assert_eq!(bad.requests().len(), 1);
    assert!(d.stop().success());
}

/// After a restart, ingest accepts at once, and each driver delivers what the spool still
/// owes before what arrived after the restart (one user's order holds).
#[tokio::test(flavor = "multi_thread")]
async fn after_a_restart_the_backlog_goes_first_and_ingest_accepts_at_once() {
    let server = RecordingServer::start().await;
    server.set_default(Reply::status(500));
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mailpush.conf");
    std::fs::write(&conf, format!("mailpush {{\n state_dir = state\n listen = 127.0.0.1:0\n shutdown_timeout_msecs = 0\n}}\nplugin {{\n push_notification_driver = wasm:file={} url={} allow_hosts=127.0.0.1 allow_private retry=1h breaker_min=1000\n}}\n", guest("webhook").display(), server.url("/h"))).unwrap();
    let post = |addr, id: &'static str| async move {
        let (s, _, b) = http_request(
            addr,
            "POST",
            "/v1/transactions",
            &[],
            txn_line("u@x", id).as_bytes(),
        )
        .await;
        assert_eq!(s, 202, "{b}");
    };
    let d = RunningDaemon::start(&conf);
    for id in ["A-1", "A-2"] {
        post(d.addr, id).await;
    }
    // A-1 failed and waits an hour; A-2 waits behind it (same user).
    server.wait_for(1, Duration::from_secs(20)).await;
    assert!(d.stop().success());
    server.set_default(Reply::status(200));
    let d = RunningDaemon::start(&conf);
    post(d.addr, "A-3").await;
    let got = server.wait_for(4, Duration::from_secs(20)).await;
    let ids: Vec<&str> = got[1..]
        .iter()
        .filter_map(|r| r.header("webhook-id"))
        .collect();
    assert_eq!(ids, ["A-1", "A-2", "A-3"]);
    assert!(d.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn ox_compatible_endpoint_makes_a_message_new() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mailpush.conf");
    std::fs::write(&conf, "mailpush {\n state_dir = state\n listen = 127.0.0.1:0\n}\nplugin {\n push_notification_driver = dlog:file=dlog.log\n}\n").unwrap();
    let d = RunningDaemon::start(&conf);
    let body = r#"{"user":"11@3","event":"messageNew","folder":"INBOX","imap-uidvalidity":1700000000,"imap-uid":42,"from":"Alice <a@example.com>","subject":"Hi","snippet":"Hello there","unseen":3}"#;
    let (s, _, b) = http_request(
        d.addr,
        "PUT",
        "/preliminary/http-notify/v1/notify",
        &[("content-type", "application/json; charset=utf-8")],
        body.as_bytes(),
    )
    .await;
    assert_eq!(s, 202, "{b}");
    let (s, _, _) = http_request(
        d.addr,
        "PUT",
        "/preliminary/http-notify/v1/notify",
        &[],
        b"{\"user\":\"u\"}",
    )
    .await;
    assert_eq!(s, 400);
    assert!(d.stop().success());
    let log = std::fs::read_to_string(dir.path().join("dlog.log")).unwrap();
    assert!(log.contains("Message data: Mailbox [INBOX], UID [42], UIDVALIDITY [1700000000]\nMessageNew: From [Alice <a@example.com>]\nMessageNew: Snippet [Hello there]\nMessageNew: Subject [Hi]\n"), "{log}");
    let _ = Duration::ZERO;
}

#[tokio::test(flavor = "multi_thread")]
async fn unix_socket_ingest_and_basic_auth_for_dovecots_ox_driver() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "tok\n").unwrap();
    let conf = dir.path().join("mailpush.conf");
    std::fs::write(&conf, "mailpush {\n state_dir = state\n listen = 127.0.0.1:0\n listen_unix = ingest.sock\n ingest_token_file = token\n}\nplugin {\n push_notification_driver = dlog:file=dlog.log\n}\n").unwrap();
    let d = RunningDaemon::start(&conf);
    let sock = dir.path().join("ingest.sock");
    while !sock.exists() {
        tokio::task::yield_now().await;
    }
    let mut s = tokio::net::UnixStream::connect(&sock).await.unwrap();
    let body = txn_line("a@b", "unix1");
    s.write_all(format!("POST /v1/transactions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer tok\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}", body.len()).as_bytes()).await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 202"), "{resp}");
    // Dovecot's ox driver sends HTTP Basic from `login:password@` in its url: the token as password.
    let ox =
        r#"{"user":"u","event":"messageNew","folder":"INBOX","imap-uidvalidity":1,"imap-uid":2}"#;
    let (s, _, _) = http_request(
        d.addr,
        "PUT",
        "/preliminary/http-notify/v1/notify",
        &[("authorization", "Basic bG9naW46dG9r")],
        ox.as_bytes(),
    )
    .await;
    assert_eq!(s, 202);
    let (s, _, _) = http_request(
        d.addr,
        "PUT",
        "/preliminary/http-notify/v1/notify",
        &[("authorization", "Basic bG9naW46bm9wZQ==")],
        ox.as_bytes(),
    )
    .await;
    assert_eq!(s, 401);
    // A second instance on the same socket is refused, and leaves the socket alone.
    let second = dir.path().join("second.conf");
    std::fs::write(&second, "mailpush {\n state_dir = state2\n delivery = memory\n listen = 127.0.0.1:0\n listen_unix = ingest.sock\n}\nplugin {\n push_notification_driver = dlog\n}\n").unwrap();
    let refused_with = |why: &str| {
        let out = std::process::Command::new(mailpush_bin())
            .args(["run", "-c"])
            .arg(&second)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(why), "{stderr}");
    };
    refused_with("another process answers on that socket");
    assert!(sock.exists());
    assert!(d.stop().success());
    assert_eq!(count(&dir.path().join("dlog.log"), "Called end_txn"), 2);
    // `listen_unix` naming a file that is not a socket: refused, and the file kept.
    std::fs::write(dir.path().join("ingest.sock"), "not a socket").unwrap();
    refused_with("is not a socket");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("ingest.sock")).unwrap(),
        "not a socket"
    );
}

/// A dead endpoint's circuit shows in `mailpush status` (the driver's CIRCUIT column and
/// the endpoint list) and in /metrics (`mailpush_endpoint_circuit_state`, valid
/// Prometheus text).
#[tokio::test(flavor = "multi_thread")]
async fn endpoint_circuits_show_in_status_and_metrics() {
    let server = RecordingServer::start().await;
    server.set_default(Reply::status(500));
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mailpush.conf");
    let config = |listen: &str| {
        format!(
            "mailpush {{\n state_dir = state\n listen = {listen}\n}}\nplugin {{\n push_notification_driver = wasm:file={} url={} allow_hosts=127.0.0.1 allow_private retry=10ms,10ms,10ms,10ms breaker_min=2 breaker_window=4 breaker_open=60s\n}}\n",
            guest("webhook").display(),
            server.url("/h")
        )
    };
    std::fs::write(&conf, config("127.0.0.1:0")).unwrap();
    let d = RunningDaemon::start(&conf);
    // `status` finds the daemon through the config's listen address.
    std::fs::write(&conf, config(&d.addr.to_string())).unwrap();
    let (s, _, _) = http_request(
        d.addr,
        "POST",
        "/v1/transactions",
        &[],
        txn_line("a@b", "c1").as_bytes(),
    )
    .await;
    assert_eq!(s, 202);
    let endpoint = server.url("");
    let sample = format!(
        "mailpush_endpoint_circuit_state{{driver=\"1\",name=\"wasm\",endpoint=\"{endpoint}\"}} 1"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let text = loop {
        let (_, _, text) = http_request(d.addr, "GET", "/metrics", &[], b"").await;
        // Both circuits: the endpoint's, and the driver's (its lane counts transactions).
        if text.contains(&sample)
            && text.contains("mailpush_driver_circuit_open{driver=\"1\",name=\"wasm\"} 1")
        {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let lines = text.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    assert_eq!(
        server.requests().len(),
        2,
        "not contacted once the circuit opened"
    );
    let status = std::process::Command::new(mailpush_bin())
        .args(["status", "-c"])
        .arg(&conf)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{out}");
    let row = out.lines().nth(1).unwrap_or_default();
    assert!(
        row.contains("wasm") && row.contains(" open "),
        "the driver's circuit:\n{out}"
    );
    assert!(out.contains("endpoint circuits"), "{out}");
    assert!(out.contains(&format!("{endpoint} open")), "{out}");
    assert!(d.stop().success());
}

/// Whether the process `pid` handles `signal` itself (`SigCgt` in /proc/PID/status).
fn catches(pid: u32, signal: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (signal - 1)) != 0)
}

/// Whether the process `pid` has a listening TCP socket (one of its descriptors is a
/// socket that /proc/net/tcp lists in state LISTEN).
fn listens(pid: u32) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let sockets: Vec<String> = fds
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let tcp = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    tcp.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 9 && f[3] == "0A" && sockets.iter().any(|s| s == f[9])
    })
}

/// A SIGTERM that arrives while the daemon is still starting (here: compiling and
/// snapshotting a driver with an empty cache) is not the default action's hard kill: the
/// daemon finishes starting, then shuts down cleanly. Before, it took over the signals only
/// after "listening on", when it was already accepting transactions.
#[test]
fn a_sigterm_during_start_up_shuts_down_cleanly() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mailpush.conf");
    std::fs::write(&conf, format!("mailpush {{\n state_dir = state\n listen = 127.0.0.1:0\n delivery = memory\n}}\nplugin {{\n push_notification_driver = wasm:file={} mode=ok\n}}\n", guest("hostile").display())).unwrap();
    let mut child = std::process::Command::new(mailpush_bin())
        .args(["run", "--log-level", "info", "-c"])
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !catches(child.id(), 15) {
        assert!(Instant::now() < deadline, "SIGTERM never taken over");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        !listens(child.id()),
        "SIGTERM was taken over only once the daemon listened"
    );
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(exit.success(), "{exit:?}: {log}");
    assert!(log.contains("shutdown complete"), "{log}");
}

/// A different transaction with an id the spool still holds is not a retry: it is
/// dropped (ids are the idempotency key) but said in the log, so that a sender whose id
/// scheme repeats is found. A true retry (the same transaction) says nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_reused_id_with_different_content_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mailpush.conf");
    std::fs::write(
        &conf,
        "mailpush {\n state_dir = state\n listen = 127.0.0.1:0\n}\nplugin {\n push_notification_driver = dlog\n}\n",
    )
    .unwrap();
    let d = RunningDaemon::start(&conf);
    let retry = format!("{}{}", txn_line("a@b", "same"), txn_line("a@b", "same"));
    let (s, _, body) = http_request(
        d.addr,
        "POST",
        "/v1/transactions",
        &[("content-type", "application/x-ndjson")],
        retry.as_bytes(),
    )
    .await;
    assert_eq!(s, 202, "{body}");
    let reused = format!("{}{}", txn_line("a@b", "d1"), txn_line("other@b", "d1"));
    let (s, _, body) = http_request(
        d.addr,
        "POST",
        "/v1/transactions",
        &[("content-type", "application/x-ndjson")],
        reused.as_bytes(),
    )
    .await;
    assert_eq!(s, 202, "{body}");
    let log = d.wait_for_log(
        "a different transaction came with an id",
        Duration::from_secs(10),
    );
    assert!(
        log.contains("txn=d1") || log.contains("txn=\"d1\""),
        "{log}"
    );
    assert_eq!(
        log.matches("a different transaction came with an id")
            .count(),
        1,
        "the retry of `same` is not one: {log}"
    );
}

/// `max_inflight` bounds what a batch takes once parsed, not only its bytes: before an
/// NDJSON batch is parsed, its bytes again and 2 KiB per line are charged. A batch of
/// many small transactions that could never fit is refused with 413 and what to do; a
/// smaller one is accepted.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_is_charged_for_what_it_takes_parsed() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mailpush.conf");
    std::fs::write(&conf, "mailpush {\n state_dir = state\n listen = 127.0.0.1:0\n max_body = 1M\n max_inflight = 1M\n}\nplugin {\n push_notification_driver = dlog:file=dlog.log\n}\n").unwrap();
    let d = RunningDaemon::start(&conf);
    let batch = |n: usize| {
        (0..n)
            .map(|i| txn_line("a@b", &format!("b{n}-{i}")))
            .collect::<String>()
    };
    let ndjson = [("content-type", "application/x-ndjson")];
    let big = batch(600);
    assert!(big.len() < 100 << 10, "far under max_body");
    let (s, _, b) = http_request(d.addr, "POST", "/v1/transactions", &ndjson, big.as_bytes()).await;
    assert_eq!(s, 413, "{b}");
    assert!(
        b.contains("max_inflight") && b.contains("send smaller batches"),
        "{b}"
    );
    let (s, _, b) = http_request(
        d.addr,
        "POST",
        "/v1/transactions",
        &ndjson,
        batch(300).as_bytes(),
    )
    .await;
    assert_eq!(s, 202, "{b}");
    // One transaction (not NDJSON) of many tiny JSON values: some 60 bytes each once
    // parsed into a tree, 30 times its bytes, which alone were charged (the tree was
    // built, then refused as a bad event). Refused before it is parsed.
    let values = format!(
        "{{\"id\":\"v\",\"user\":\"a@b\",\"events\":[{}0]}}",
        "0,".repeat(400_000)
    );
    assert!(values.len() < 1 << 20, "under max_body");
    let json = [("content-type", "application/json")];
    let (s, _, b) =
        http_request(d.addr, "POST", "/v1/transactions", &json, values.as_bytes()).await;
    assert_eq!(s, 413, "{b}");
    assert!(
        b.contains("JSON values") && b.contains("max_inflight"),
        "{b}"
    );
}

/// One `mailpush run` per state_dir: a second one (another port, the same spool) is
/// refused, naming the first one's pid — two would deliver what the spool owes twice.
/// So is a `mailpush send` beside it: its lanes would read, and deliver once with its
/// own driver lines, what the running instance acknowledged. Once the first stops, the
/// state_dir is free again.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_instance_on_one_state_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mailpush.conf");
    std::fs::write(&conf, "mailpush {\n state_dir = state\n listen = 127.0.0.1:0\n}\nplugin {\n push_notification_driver = dlog:file=dlog.log\n}\n").unwrap();
    let first = RunningDaemon::start(&conf);
    let out = std::process::Command::new(mailpush_bin())
        .args(["run", "-c"])
        .arg(&conf)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("another mailpush (pid {}", first.child.id())),
        "{err}"
    );
    let events = dir.path().join("events.ndjson");
    std::fs::write(&events, txn_line("a@b", "s1")).unwrap();
    let out = std::process::Command::new(mailpush_bin())
        .args(["send", "-c"])
        .arg(&conf)
        .arg(&events)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains(&format!(
                "refusing to send: another mailpush (pid {}",
                first.child.id()
            ))
            && err.contains("POST /v1/transactions"),
        "{err}"
    );
    assert!(first.stop().success());
    let again = RunningDaemon::start(&conf);
    assert!(again.stop().success());
}

/// `mailpush check` exits 3 when mailpush would start without a driver the config
/// names (numbering stops at a gap, as in Dovecot; `push_notification_driver1` is never
/// read) or without any driver; an empty setting where the numbering ends loses nothing
/// more and exits 0.
#[test]
fn check_exits_3_when_the_config_loses_drivers() {
    let dir = tempfile::tempdir().unwrap();
    let check = |plugin: &str| {
        let conf = dir.path().join("mailpush.conf");
        std::fs::write(
            &conf,
            format!("mailpush {{\n state_dir = state\n}}\nplugin {{\n{plugin}}}\n"),
        )
        .unwrap();
        run_check(&conf)
    };
    for plugin in [
        " push_notification_driver = dlog:file=a.log\n push_notification_driver3 = dlog:file=c.log\n",
        " push_notification_driver1 = dlog:file=a.log\n",
        "",
    ] {
        let (code, all) = check(plugin);
        assert_eq!(code, Some(3), "{plugin}\n{all}");
        assert!(
            all.contains("but the config names drivers that would not run, or none"),
            "{all}"
        );
    }
    let (code, all) =
        check(" push_notification_driver = dlog:file=a.log\n push_notification_driver2 =\n");
    assert_eq!(code, Some(0), "{all}");
    assert!(all.contains("OK: 1 driver(s) ready"), "{all}");
}

/// The Dovecot hand-off directory with a spool nearly full of transactions its driver
/// keeps failing: a batch that does not fit is tried again with half its bytes, and
/// what fits is stored (before, the same batch was refused every second, for good, and
/// every later hand-off waited behind it). What does not fit stays.
#[tokio::test(flavor = "multi_thread")]
async fn a_hand_off_batch_the_spool_refuses_is_tried_again_smaller() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mailpush.conf");
    std::fs::write(
        dir.path().join("down.lua"),
        "function dovecot_lua_notify_begin_txn(user) return {} end\nfunction dovecot_lua_notify_event_mailbox_create(ctx, e) end\nfunction dovecot_lua_notify_end_txn(ctx, success) return false, \"down\" end\n",
    )
    .unwrap();
    std::fs::write(&conf, "mailpush {\n state_dir = state\n listen = 127.0.0.1:0\n handoff_dir = handoff\n spool_quota = 40000\n}\nplugin {\n push_notification_driver = lua:file=down.lua retry=1h\n}\n").unwrap();
    let handoff = dir.path().join("handoff");
    std::fs::create_dir(&handoff).unwrap();
    // 3000 bytes each, stored as written (canonical JSON).
    let publish = |i: usize| {
        let head = format!(
            r#"{{"id":"h{i:02}","user":"u@x","events":[{{"name":"MailboxCreate","mailbox":""#
        );
        let tail = r#""}]}"#;
        let text = format!("{head}{}{tail}", "m".repeat(3000 - head.len() - tail.len()));
        assert_eq!(
            mailpush_core::Transaction::from_json(&text)
                .unwrap()
                .to_json(),
            text
        );
        let tmp = handoff.join(format!(".tmp-h{i:02}"));
        std::fs::write(&tmp, &text).unwrap();
        std::fs::rename(&tmp, handoff.join(format!("h{i:02}.json"))).unwrap();
    };
    let published = || {
        std::fs::read_dir(&handoff)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json"))
            .collect::<Vec<_>>()
    };
    // All there before mailpush starts, so that the batches are known: a quarter of the
    // quota (10000 bytes) holds three files. Four batches store 36000 bytes (each fails
    // and waits an hour for its retry); the fifth, h12 and h13 (6000), does not fit:
    // h12 alone (3000) does, h13 then does not.
    for i in 0..14 {
        publish(i);
    }
    let d = RunningDaemon::start(&conf);
    let log = d.wait_for_log("waits: the spool is full", Duration::from_secs(30));
    assert!(log.contains("hand-off of 1 transaction(s) waits"), "{log}");
    assert_eq!(published(), ["h13.json"], "{log}");
    d.stop();
}

/// A transaction handed off while mailpush was stopped is as old as its file: its age
/// (`retry_max_age`) counts from when Dovecot wrote it, not from when mailpush read it,
/// so a stale one is a dead letter (`expired`) instead of a late push; a fresh one goes.
#[tokio::test(flavor = "multi_thread")]
async fn a_hand_off_file_is_as_old_as_its_modification_time() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("log.lua"),
        "function dovecot_lua_notify_begin_txn(user) return {} end\nfunction dovecot_lua_notify_event_mailbox_create(ctx, e) dovecot.i_info('delivered ' .. e.mailbox) end\nfunction dovecot_lua_notify_end_txn(ctx, success) end\n",
    )
    .unwrap();
    let handoff = dir.path().join("handoff");
    std::fs::create_dir(&handoff).unwrap();
    let publish = |id: &str, age: Duration| {
        let text = format!(
            r#"{{"id":"{id}","user":"u@x","events":[{{"name":"MailboxCreate","mailbox":"{id}"}}]}}"#
        );
        let tmp = handoff.join(format!(".tmp-{id}"));
        let f = std::fs::File::create(&tmp).unwrap();
        std::io::Write::write_all(&mut &f, text.as_bytes()).unwrap();
        f.set_modified(std::time::SystemTime::now() - age).unwrap();
        drop(f);
        std::fs::rename(&tmp, handoff.join(format!("{id}.json"))).unwrap();
    };
    // Written while mailpush was stopped: an hour ago, and a minute ago.
    publish("stale", Duration::from_secs(3600));
    publish("fresh", Duration::from_secs(60));
    let conf = dir.path().join("mailpush.conf");
    std::fs::write(&conf, "mailpush {\n state_dir = state\n listen = 127.0.0.1:0\n handoff_dir = handoff\n}\nplugin {\n push_notification_driver = lua:file=log.lua retry_max_age=10m\n}\n").unwrap();
    let d = RunningDaemon::start(&conf);
    let log = d.wait_for_log("delivered fresh", Duration::from_secs(20));
    assert!(log.contains("delivered fresh"), "{log}");
    let log = d.wait_for_log("expired: not delivered within", Duration::from_secs(20));
    assert!(
        log.lines()
            .any(|l| l.contains("stale") && l.contains("expired: not delivered within")),
        "{log}"
    );
    assert!(!log.contains("delivered stale"), "{log}");
    d.stop();
}

/// `dead_letter_max_age`: the daemon deletes dead letters older than it (at start, then
/// every minute), freeing their part of `spool_quota`; younger ones stay.
#[tokio::test(flavor = "multi_thread")]
async fn old_dead_letters_are_deleted() {
    use mailpush::spool::Spool;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state").join("spool.db");
    {
        let spool = mailpush::spool::sqlite::SqliteSpool::open(&db, 1 << 30).unwrap();
        let txns = ["old", "young"].map(|id| mailbox_txn("u@x", id));
        spool.append(&txns, &[1]).unwrap();
        for t in &txns {
            spool.dead_letter(t, 1, &[]).unwrap();
        }
        // A round trip through the writer: the dead letters are committed.
        spool.append(&[], &[]).unwrap();
    }
    // Recorded 40 days ago.
    let at = mailpush::spool::now() - 40 * 24 * 3600;
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute(
            "UPDATE dead SET at = ?1 WHERE seq = (SELECT seq FROM txns WHERE id = 'old')",
            [at as i64],
        )
        .unwrap();
    let conf = dir.path().join("mailpush.conf");
    std::fs::write(&conf, "mailpush {\n state_dir = state\n listen = 127.0.0.1:0\n dead_letter_max_age = 30d\n}\nplugin {\n push_notification_driver = dlog\n}\n").unwrap();
    let d = RunningDaemon::start(&conf);
    let log = d.wait_for_log(
        "deleted 1 dead letter(s) older than dead_letter_max_age=30days",
        Duration::from_secs(20),
    );
    assert!(log.contains("deleted 1 dead letter(s)"), "{log}");
    d.stop();
    let spool = mailpush::spool::sqlite::SqliteSpool::open(&db, 1 << 30).unwrap();
    let left: Vec<String> = spool
        .dead_letters(None)
        .unwrap()
        .into_iter()
        .map(|d| d.txn.id)
        .collect();
    assert_eq!(left, ["young"]);
}
