//! The sandbox holes an attacker found, each reproduced with a hostile component
//! (`tests/guests/hostile`) and shown contained: init that never ends, host work not
//! charged to the CPU deadline, log bypass and forging, SSRF to the host itself, one
//! tenant holding up the others, reasons that hide their cause, unbounded egress.
//! (Host memory is `host_memory.rs`: it measures the process's peak RSS.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use mailpush::pipeline::{Backpressure, Dispatcher, Outcome};
use mailpush_e2e::*;

fn conf_with(dir: &std::path::Path, drivers: &str) -> std::path::PathBuf {
    let conf = dir.join("mailpush.conf");
    std::fs::write(
        &conf,
        format!(
            "mailpush {{\n state_dir = state\n listen = 127.0.0.1:0\n}}\nplugin {{\n{drivers}}}\n"
        ),
    )
    .unwrap();
    conf
}

fn hostile_line(n: u32, args: &str) -> String {
    let key = if n == 1 {
        "push_notification_driver".to_string()
    } else {
        format!("push_notification_driver{n}")
    };
    format!(" {key} = wasm:file={} {args}\n", guest("hostile").display())
}

// ------------------------------------------------------------------- init bounds

/// `mailpush check` with a driver whose init sleeps for an hour ends within its
/// `init_timeout_msecs`, naming the driver and the bound.
#[test]
fn check_ends_when_an_init_never_returns() {
    let dir = tempfile::tempdir().unwrap();
    let conf = conf_with(
        dir.path(),
        &(hostile_line(1, "mode=init-sleep init_timeout_msecs=500")
            + " push_notification_driver2 = dlog\n"),
    );
    let start = Instant::now();
    let out = std::process::Command::new(mailpush_bin())
        .args(["check", "-c"])
        .arg(&conf)
        .output()
        .unwrap();
    let took = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("driver 1 (wasm) failed to initialise")
            && stderr.contains("init did not finish within 500 ms"),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(30), "{took:?}");
}

/// `mailpush run` refuses to start within the bound (instead of never listening).
#[test]
fn run_refuses_to_start_when_an_init_never_returns() {
    let dir = tempfile::tempdir().unwrap();
    let conf = conf_with(
        dir.path(),
        &hostile_line(1, "mode=init-sleep init_timeout_msecs=500"),
    );
    let out = std::process::Command::new(mailpush_bin())
        .args(["run", "-c"])
        .arg(&conf)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("refusing to start")
            && stderr.contains("init did not finish within 500 ms"),
        "{stderr}"
    );
}

/// An init that burns CPU in host calls is stopped by the CPU deadline, not by the
/// wall-time bound: the host work is charged.
#[test]
fn an_init_burning_cpu_in_host_calls_hits_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let conf = conf_with(
        dir.path(),
        &hostile_line(
            1,
            "mode=init-burn timeout_msecs=100 init_timeout_msecs=60000",
        ),
    );
    let start = Instant::now();
    let out = std::process::Command::new(mailpush_bin())
        .args(["check", "-c"])
        .arg(&conf)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("deadline exceeded") && stderr.contains("timeout_msecs=100"),
        "{stderr}"
    );
    assert!(start.elapsed() < Duration::from_secs(30));
}

/// A reload that loads a driver whose init never returns is refused within the bound;
/// meanwhile `/readyz` says a reload is stuck, the running drivers keep delivering, and
/// SIGTERM is heard at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_with_a_hanging_init_is_bounded_and_sigterm_still_works() {
    let dir = tempfile::tempdir().unwrap();
    let dlog = dir.path().join("dlog.log");
    let dlog_line = format!(" push_notification_driver = dlog:file={}\n", dlog.display());
    let conf = conf_with(dir.path(), &dlog_line);
    let daemon = RunningDaemon::start(&conf);
    // The new config adds a driver whose init sleeps; its bound is 4 s.
    std::fs::write(
        &conf,
        format!(
            "mailpush {{\n state_dir = state\n listen = {}\n}}\nplugin {{\n{dlog_line}{}}}\n",
            daemon.addr,
            hostile_line(2, "mode=init-sleep init_timeout_msecs=4000")
        ),
    )
    .unwrap();
    daemon.signal("HUP");
    // /readyz tells the truth while the reload is stuck.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _, body) = http_request(daemon.addr, "GET", "/readyz", &[], b"").await;
        if status == 503 && body.contains("reloading") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readyz never said reloading: {status} {body}"
        );
        // Polled, not flooded: a connection per yield can reach the per-peer limit.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The running driver still delivers.
    let txn = mailbox_txn("a@example.com", "during-reload").to_json();
    let (status, _, _) =
        http_request(daemon.addr, "POST", "/v1/transactions", &[], txn.as_bytes()).await;
    assert_eq!(status, 202);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&dlog)
        .unwrap_or_default()
        .contains("MailboxCreate: Mailbox was created")
    {
        assert!(
            Instant::now() < deadline,
            "dlog did not deliver during the reload"
        );
        tokio::task::yield_now().await;
    }
    // SIGTERM now: heard although the reload is still loading.
    let start = Instant::now();
    let log = daemon.log.clone();
    let status = daemon.stop();
    assert!(status.success(), "{}", log.lock().unwrap());
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "shutdown took {:?}",
        start.elapsed()
    );
}

/// `mailpush reload` answers within the bound with the reason, and the running config
/// is kept.
#[tokio::test(flavor = "multi_thread")]
async fn mailpush_reload_reports_a_hanging_init_within_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let conf = conf_with(dir.path(), " push_notification_driver = dlog\n");
    let daemon = RunningDaemon::start(&conf);
    std::fs::write(
        &conf,
        format!(
            "mailpush {{\n state_dir = state\n listen = {}\n}}\nplugin {{\n push_notification_driver = dlog\n{}}}\n",
            daemon.addr,
            hostile_line(2, "mode=init-sleep init_timeout_msecs=500")
        ),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(mailpush_bin())
            .args(["reload", "-c"])
            .arg(&conf)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("init did not finish within 500 ms"),
        "{stderr}"
    );
    let (status, _, body) = http_request(daemon.addr, "GET", "/readyz", &[], b"").await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    daemon.stop();
}

/// A tenant handler replaced by one whose init never returns holds back only its own
/// tenant: another tenant's transactions are delivered meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_stuck_in_init_holds_back_no_other_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants");
    std::fs::create_dir(&tenants).unwrap();
    for t in ["a.example", "b.example"] {
        std::fs::copy(guest("hostile"), tenants.join(format!("{t}.wasm"))).unwrap();
        std::fs::write(tenants.join(format!("{t}.conf")), "mode=ok\n").unwrap();
    }
    let conf = format!(
        "mailpush {{\n state_dir = state\n tenant_drivers = {}\n}}\n",
        tenants.display()
    );
    let config = write_config(dir.path(), &conf);
    let drivers = TestDrivers::new();
    let loaded = load_drivers(&drivers.registry(), &config).await;
    let outcomes = Arc::new(TimedOutcomes::default());
    let d = Dispatcher::start(loaded, 64, Some(outcomes.clone()));
    // Tenant a's handler is replaced by one whose init sleeps (bounded at 30 s).
    std::fs::write(
        tenants.join("a.example.conf"),
        "mode=init-sleep init_timeout_msecs=30000\n",
    )
    .unwrap();
    d.accept(vec![mailbox_txn("u@a.example", "a1")], Backpressure::Wait)
        .await
        .unwrap();
    let start = Instant::now();
    for i in 0..5 {
        d.accept(
            vec![mailbox_txn(&format!("u{i}@b.example"), &format!("b{i}"))],
            Backpressure::Wait,
        )
        .await
        .unwrap();
    }
    // All five of tenant b delivered, long before a's init gives up.
    outcomes
        .wait(|seen| seen.iter().filter(|(id, _)| id.starts_with('b')).count() == 5)
        .await;
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "tenant b waited {:?}",
        start.elapsed()
    );
    assert!(outcomes
        .outcomes()
        .iter()
        .filter(|(id, _)| id.starts_with('b'))
        .all(|(_, o)| *o == Outcome::Delivered));
    drop(d);
}

// ------------------------------------------------------------ charging host work

/// Host calls in a loop (logging 8 MiB strings; making and dropping fields; writing
/// zeroes with a blocking write, which the host builds and scans) are charged to
/// `timeout_msecs`: the deadline fires long before `max_txn_msecs`. (The zeroes were
/// once counted as waiting: 5 s of CPU passed a 100 ms deadline.)
#[tokio::test(flavor = "multi_thread")]
async fn host_call_loops_hit_the_cpu_deadline() {
    for mode in ["log-loop", "fields-loop", "zeroes bytes=4096"] {
        let start = Instant::now();
        let (out, _) = run_hostile(
            &format!("mode={mode} timeout_msecs=100 max_txn_msecs=3000"),
            1,
        )
        .await;
        let r = &reasons(&out)[0];
        assert!(
            r.contains("deadline exceeded") && r.contains("timeout_msecs=100"),
            "{mode}: {r}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{mode}: {:?}",
            start.elapsed()
        );
    }
}

/// Waiting for a slow response body is not charged to the CPU deadline: a body dripped
/// over more than a second arrives within `timeout_msecs=100`.
#[tokio::test(flavor = "multi_thread")]
async fn waiting_for_a_slow_body_is_not_charged() {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n")
                    .await;
                for _ in 0..10 {
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    let _ = s.write_all(b"x").await;
                }
            });
        }
    });
    let (out, _) = run_hostile(
        &format!(
            "mode=get url=http://{addr}/slow allow_hosts=127.0.0.1 allow_private timeout_msecs=100"
        ),
        1,
    )
    .await;
    assert_eq!(out, [Outcome::Delivered], "{:?}", reasons(&out));
}

// ----------------------------------------------------------------------- logging

/// METADATA lookups with huge invalid keys: their warnings go through the log budget
/// (`max_log_lines`), each line capped and without a raw newline.
#[test]
fn metadata_warnings_are_budgeted_capped_and_escaped() {
    let log = send_logged("mode=metadata-flood max_log_lines=5 timeout_msecs=10000", 2);
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Invalid metadata key"))
        .collect();
    assert_eq!(
        warnings.len(),
        10,
        "5 per transaction:\n{}",
        &log[..log.len().min(4000)]
    );
    for l in &warnings {
        assert!(l.len() < 4096 + 400, "{} bytes", l.len());
        assert!(l.contains("/bad\\n"), "the newline is escaped");
    }
    assert!(log.len() < 200 << 10, "{} bytes of log", log.len());
}

/// A driver's lines cannot pass for mailpush's own: newlines, carriage returns and
/// terminal escapes are escaped, also in a panic message it logs before trapping.
#[test]
fn guest_lines_and_reasons_cannot_forge_log_records() {
    let (_, log) = send_hostile("mode=forge", 1);
    assert!(
        !log.lines()
            .any(|l| l.starts_with("2026-11-29T10:00:00.000000Z")),
        "a forged record starts a line:\n{log}"
    );
    assert!(!log.contains('\u{1b}'), "a raw terminal escape:\n{log}");
    let guest = log
        .lines()
        .find(|l| l.contains("innocent"))
        .expect("the guest line is logged");
    assert!(
        guest.contains("innocent\\n2026-11-29T10:00:00.000000Z"),
        "{guest}"
    );
    let failure = log
        .lines()
        .find(|l| l.contains("the driver panicked"))
        .expect("the failure is logged");
    assert!(
        failure
            .contains("the driver panicked: panicked at forged.rs:1:1:\\nthe host is compromised"),
        "{failure}"
    );
}

// ---------------------------------------------------------------------- reasons

/// A driver that calls `exit`: one line, the cause first, no wasm backtrace.
#[tokio::test(flavor = "multi_thread")]
async fn exit_reasons_lead_with_the_cause() {
    let (out, _) = run_hostile("mode=exit", 1).await;
    let r = &reasons(&out)[0];
    assert!(
        r.starts_with("driver error: Exited with i32 exit status"),
        "{r}"
    );
    assert!(!r.contains('\n') && !r.contains("backtrace"), "{r}");
    assert!(r.len() < 200, "{r}");
}

/// With `instance=reuse`, a memory growth the driver handled does not make a later trap
/// of the same instance look like a memory-limit hit.
#[tokio::test(flavor = "multi_thread")]
async fn a_handled_memory_refusal_does_not_mislabel_a_later_trap() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "mailpush {{\n state_dir = state\n}}\nplugin {{\n{}}}\n",
            hostile_line(1, "mode=grow-then-trap instance=reuse memory=8M")
        ),
    );
    let drivers = TestDrivers::new();
    let loaded = load_drivers(&drivers.registry(), &config).await;
    let driver = loaded[0].driver.clone();
    let first = mailpush::pipeline::deliver(
        driver.as_ref(),
        &Arc::new(mailbox_txn("a@example.com", "t1")),
    )
    .await;
    assert_eq!(first, Outcome::Delivered);
    let second = mailpush::pipeline::deliver(
        driver.as_ref(),
        &Arc::new(mailbox_txn("a@example.com", "t2")),
    )
    .await;
    let r = &reasons(&[second])[0];
    assert!(r.contains("trap") && !r.contains("memory limit"), "{r}");
}

// ------------------------------------------------------------------------ egress

/// Request-body bytes are budgeted per transaction (`max_egress_bytes`): a driver
/// sending 20 MiB in one request is cut off near 1 MiB, with the budget in the reason.
#[tokio::test(flavor = "multi_thread")]
async fn egress_is_budgeted_per_transaction() {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let r2 = received.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let r = r2.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    r.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
                }
            });
        }
    });
    let (out, _) = run_hostile(
        &format!("mode=egress bytes=20971520 url=http://{addr}/x allow_hosts=127.0.0.1 allow_private max_egress_bytes=1M timeout_msecs=5000"),
        1,
    )
    .await;
    let r = &reasons(&out)[0];
    assert!(r.contains("max_egress_bytes=1048576"), "{r}");
    let got = received.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        got < (1 << 20) + (256 << 10),
        "{got} bytes reached the server"
    );
}

/// A request's head counts against `max_egress_bytes` too: requests with empty bodies
/// and 30 KB of headers each, without end, stop at the budget (they were not counted at
/// all: a thousand of them sent 30 MB past a 1 MiB budget).
#[tokio::test(flavor = "multi_thread")]
async fn request_heads_count_against_the_egress_budget() {
    let server = RecordingServer::start().await;
    let (out, _) = run_hostile(
        &format!(
            "mode=head-flood bytes=30000 url={} allow_hosts=127.0.0.1 allow_private max_egress_bytes=1M timeout_msecs=10000",
            server.url("/x")
        ),
        1,
    )
    .await;
    let r = &reasons(&out)[0];
    assert!(
        r.contains("max_egress_bytes=1048576 bytes of requests (heads and bodies)"),
        "{r}"
    );
    let sent = server.requests().len();
    assert!(
        (30..=35).contains(&sent),
        "{sent} requests reached the server"
    );
}

// ------------------------------------------------------------------------- SSRF

/// The host's own interface addresses are refused with `allow_hosts=*`, also those
/// outside the private ranges, and also where a server listens on 0.0.0.0.
#[tokio::test(flavor = "multi_thread")]
async fn the_hosts_own_addresses_are_refused() {
    let server = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = server.local_addr().unwrap().port();
    let reached = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let r = reached.clone();
    tokio::spawn(async move {
        while server.accept().await.is_ok() {
            r.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let own: Vec<std::net::IpAddr> = mailpush::wasm::http::address::LocalAddresses::global()
        .all()
        .into_iter()
        .filter(|a| a.is_ipv4())
        .collect();
    assert!(!own.is_empty());
    for ip in own {
        let (out, _) = run_hostile(
            &format!("mode=http url=http://{ip}:{port}/x allow_hosts=*"),
            1,
        )
        .await;
        let r = &reasons(&out)[0];
        assert!(
            r.contains("special-purpose addresses are refused"),
            "{ip}: {r}"
        );
    }
    assert!(!reached.load(std::sync::atomic::Ordering::SeqCst));
}

// ---------------------------------------------------------------------- tenants

/// Tenant a's 20 users each take 1.5 s per delivery (within limits); tenant b's
/// transactions, arriving behind them, are not held up: a tenant gets at most a quarter
/// of the lane's slots.
#[tokio::test(flavor = "multi_thread")]
async fn one_tenant_cannot_take_every_slot_of_the_lane() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants");
    std::fs::create_dir(&tenants).unwrap();
    std::fs::copy(guest("hostile"), tenants.join("a.example.wasm")).unwrap();
    std::fs::write(
        tenants.join("a.example.conf"),
        "mode=sleep msecs=1500 max_txn_msecs=60000\n",
    )
    .unwrap();
    std::fs::copy(guest("hostile"), tenants.join("b.example.wasm")).unwrap();
    std::fs::write(tenants.join("b.example.conf"), "mode=ok\n").unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "mailpush {{\n state_dir = state\n tenant_drivers = {}\n}}\n",
            tenants.display()
        ),
    );
    let drivers = TestDrivers::new();
    let loaded = load_drivers(&drivers.registry(), &config).await;
    let outcomes = Arc::new(TimedOutcomes::default());
    let d = Dispatcher::start(loaded, 1024, Some(outcomes.clone()));
    let start = Instant::now();
    let mut batch: Vec<_> = (0..20)
        .map(|i| mailbox_txn(&format!("u{i}@a.example"), &format!("a{i}")))
        .collect();
    batch.extend((0..5).map(|i| mailbox_txn(&format!("u{i}@b.example"), &format!("b{i}"))));
    d.accept(batch, Backpressure::Wait).await.unwrap();
    let b_done = outcomes
        .wait(|seen| seen.iter().filter(|(id, _)| id.starts_with('b')).count() == 5)
        .await;
    let mut b: Vec<Duration> = b_done
        .iter()
        .filter(|(id, _)| id.starts_with('b'))
        .map(|(_, at)| *at - start)
        .collect();
    b.sort();
    let median = b[2];
    assert!(
        median < Duration::from_millis(1000),
        "tenant b's median latency {median:?} (a's deliveries take 1.5 s each)"
    );
    drop(d);
}

/// A request the policy refuses, with its body streamed after `handle` as JavaScript's
/// `fetch` and the SDKs do: the writes succeed and the refusal comes in the response,
/// where the guest can catch it (a closed body stream traps a JavaScript guest). For a
/// host not granted, a private address (literal, and by name), and an open circuit.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_request_takes_its_streamed_body_and_answers_with_the_refusal() {
    for (args, want) in [
        (
            "url=http://example.invalid/x allow_hosts=other.example",
            "HttpRequestDenied",
        ),
        (
            "url=http://127.0.0.1:9/x allow_hosts=*",
            "DestinationIpProhibited",
        ),
        (
            "url=http://localhost:9/x allow_hosts=*",
            "DestinationIpProhibited",
        ),
    ] {
        let (out, _) = run_hostile(&format!("mode=post-streamed bytes=200000 {args}"), 1).await;
        let r = &reasons(&out)[0];
        assert!(
            r.contains("write: ok; response: error") && r.contains(want),
            "{args}: {r}"
        );
    }
    // A closed port fails a few times, then the endpoint's circuit opens and refuses.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let (out, _) = run_hostile(
        &format!(
            "mode=post-streamed bytes=200000 url=http://127.0.0.1:{port}/x allow_hosts=* allow_private breaker_min=2 breaker_window=2"
        ),
        6,
    )
    .await;
    let by_circuit: Vec<String> = reasons(&out)
        .into_iter()
        .filter(|r| r.contains("circuit open"))
        .collect();
    assert!(!by_circuit.is_empty(), "{:?}", reasons(&out));
    for r in by_circuit {
        assert!(r.contains("write: ok; response: error"), "{r}");
    }
}

/// Writing without end into a refused request's body (which mailpush reads and throws
/// away) is bounded like any other guest work: the CPU deadline ends it, and the
/// bystander driver still gets every transaction (`run_hostile` asserts that).
#[tokio::test(flavor = "multi_thread")]
async fn endless_writes_to_a_refused_body_run_into_the_deadline() {
    let started = Instant::now();
    let (out, _) = run_hostile(
        "mode=post-streamed bytes=4000000000 url=http://127.0.0.1:9/x allow_hosts=* timeout_msecs=200 max_txn_msecs=10000",
        1,
    )
    .await;
    let r = &reasons(&out)[0];
    assert!(r.contains("timeout_msecs=200"), "{r}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

/// A call is charged for the time it runs, not for the time the lane's other calls run
/// while it has yielded: eight transactions of about 25 ms of CPU each (measured first),
/// delivered at once on one lane (`concurrency=8`, as tenant handlers share theirs), all
/// pass a 100 ms deadline. (Charged by wall time, each took about 200 ms.)
#[tokio::test(flavor = "multi_thread")]
async fn calls_are_not_charged_for_each_others_time() {
    let probe = 20_000_000u64;
    let (out, _) = run_hostile(
        &format!("mode=spin-measure iters={probe} timeout_msecs=10000"),
        1,
    )
    .await;
    let r = &reasons(&out)[0];
    let ns: u64 = r
        .split("spun ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{r}"));
    let iters = (probe as u128 * 25_000_000 / ns.max(1) as u128) as u64;
    let (out, _) = run_hostile(
        &format!("mode=spin iters={iters} timeout_msecs=100 concurrency=8"),
        8,
    )
    .await;
    assert_eq!(
        out,
        vec![Outcome::Delivered; 8],
        "{iters} rounds ({ns} ns for {probe}): {:?}",
        reasons(&out)
    );
}

/// wasmtime keeps a request's authority and method as the guest gives them, of any
/// length: longer than 1 KiB (authority) or 64 bytes (method), the host refuses them as
/// invalid values, so an instance cannot make the host hold more than its resources
/// allow. (Once 128 requests of 12 MB authorities held 1.5 GB.)
#[tokio::test(flavor = "multi_thread")]
async fn a_request_authority_and_method_have_a_bounded_length() {
    for (mode, bytes) in [("authority", 2000), ("method", 100)] {
        let (out, _) = run_hostile(&format!("mode={mode} bytes={bytes}"), 1).await;
        let r = &reasons(&out)[0];
        assert!(r.contains("refused at 0"), "{mode}: {r}");
    }
    // Within the bound, the requests are made (until the instance's host resources end).
    let (out, _) = run_hostile("mode=authority bytes=1000", 1).await;
    assert!(
        !reasons(&out)[0].contains("refused at 0"),
        "{:?}",
        reasons(&out)
    );
}
