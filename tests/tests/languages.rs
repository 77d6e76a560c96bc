//! Drivers in JavaScript (componentize-js) and Python (componentize-py), built from source
//! by tests/build.rs: the webhook examples sign as the Rust one does, refused requests
//! reject inside the guest (its catch runs), uncaught exceptions and console output reach
//! the failure reason and the log.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mailpush::pipeline::{Backpressure, Dispatcher, Outcome};
use mailpush_e2e::*;

#[tokio::test(flavor = "multi_thread")]
async fn the_javascript_webhook_signs_like_the_rust_one() {
    let Some(component) = language_guest("webhook-js") else {
        return;
    };
    assert_webhook_posts_signed_canonical_json(&component, Some(&language_state_dir())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_webhook_signs_like_the_rust_one() {
    let Some(component) = language_guest("webhook-py") else {
        return;
    };
    assert_webhook_posts_signed_canonical_json(&component, Some(&language_state_dir())).await;
}

/// The JavaScript SDK's own logic (fixed answers, `wants`, `init` and `deliver` results,
/// webhook secrets and signatures) under node, with the host's imports stood in for
/// (drivers/sdk-js/test/): what no component built here exercises, such as a
/// `fixedWants()` that returns `null`. Runs where the JavaScript toolchain (and so node)
/// is installed.
#[test]
fn the_javascript_sdk_passes_its_own_tests_under_node() {
    if language_guest("js-sdk").is_none() {
        return;
    }
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../drivers/sdk-js");
    let out = std::process::Command::new("node")
        .args([
            "--import",
            "./test/register.mjs",
            "--test",
            "test/sdk.test.mjs",
        ])
        .current_dir(&sdk)
        .output()
        .expect("node (the JavaScript toolchain needs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("# fail 0") && !stdout.contains("# pass 0"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Python SDK's own logic (wants and fixed_wants, retry delays, webhook secrets) under
/// CPython, with the generated bindings stood in for (drivers/sdk-python/tests/). Runs
/// where the Python toolchain is installed.
#[test]
fn the_python_sdk_passes_its_own_tests() {
    if language_guest("py-raw").is_none() {
        return;
    }
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../drivers/sdk-python");
    let out = std::process::Command::new("python3")
        .args(["-B", "-m", "unittest", "discover", "-v", "-s", "tests"])
        .current_dir(&sdk)
        .output()
        .expect("python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.contains("\nOK") && !stderr.contains("Ran 0 tests"),
        "{stderr}"
    );
}

/// A secret the host's HMAC could not take is refused at init, as the Rust webhook does.
#[tokio::test(flavor = "multi_thread")]
async fn the_javascript_webhook_refuses_a_key_the_host_cannot_sign_with() {
    let Some(component) = language_guest("webhook-js") else {
        return;
    };
    let state = language_state_dir();
    assert_webhook_refuses_a_key_the_host_cannot_sign_with(&component, Some(&state), false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_webhook_refuses_a_key_the_host_cannot_sign_with() {
    let Some(component) = language_guest("webhook-py") else {
        return;
    };
    let state = language_state_dir();
    assert_webhook_refuses_a_key_the_host_cannot_sign_with(&component, Some(&state), false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_javascript_webhook_classifies_failures_like_the_rust_one() {
    let Some(component) = language_guest("webhook-js") else {
        return;
    };
    assert_webhook_failures_are_classified(&component, Some(&language_state_dir())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_webhook_classifies_failures_like_the_rust_one() {
    let Some(component) = language_guest("webhook-py") else {
        return;
    };
    assert_webhook_failures_are_classified(&component, Some(&language_state_dir())).await;
}

/// Snapshots (issue 15) in the two languages: the JavaScript runtime's first call reads
/// only the monotonic clock, which a snapshot keeps, so a JavaScript driver starts from
/// its snapshot; the Python runtime draws random bytes, so a Python driver calls `init` in
/// every instance and says why (the other tests here deliver through both).
#[tokio::test(flavor = "multi_thread")]
async fn javascript_drivers_are_snapshotted_and_python_says_why_not() {
    for (name, expected) in [
        ("webhook-js", "init: snapshot made at load"),
        (
            "webhook-py",
            "init: called in every instance (init calls `wasi:random/random@",
        ),
    ] {
        let Some(component) = language_guest(name) else {
            return;
        };
        let args = format!("url=http://127.0.0.1:9/snapshot secret={WEBHOOK_SECRET}");
        let loaded = load_one(&component, &args).await;
        assert!(
            loaded[0].details.iter().any(|d| d.starts_with(expected)),
            "{name}: {:?}",
            loaded[0].details
        );
        if name == "webhook-js" {
            // Arguments never seen: a new snapshot, whose compile takes much of its code
            // from the component's earlier compiles (the stored functions; without them
            // it reuses none).
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let args = format!("url=http://127.0.0.1:9/new-{now} secret={WEBHOOK_SECRET}");
            let loaded = load_one(&component, &args).await;
            let (reused, functions) = function_reuse(&loaded[0].details);
            assert!(
                functions > 10_000 && reused * 5 >= functions * 2,
                "{reused} of {functions}"
            );
        }
    }
}

/// Loads `component` with `args` as the one driver of a config whose state dir (and AOT
/// cache) the language tests share.
async fn load_one(component: &Path, args: &str) -> Vec<mailpush::pipeline::LoadedDriver> {
    let dir = tempfile::tempdir().unwrap();
    let conf = format!(
        "mailpush {{\n state_dir = {}\n}}\nplugin {{\n push_notification_driver = wasm:file={} {args} retry=none timeout_msecs=5000\n}}\n",
        language_state_dir().display(),
        component.display()
    );
    let config = write_config(dir.path(), &conf);
    load_drivers(&TestDrivers::new().registry(), &config).await
}

/// Runs `n` MailboxCreate transactions through `component` with `args`; returns the
/// outcomes in order.
async fn outcomes(component: &Path, args: &str, n: usize) -> Vec<Outcome> {
    let loaded = load_one(component, args).await;
    let seen = Arc::new(Outcomes::default());
    let d = Dispatcher::start(loaded, 16, Some(seen.clone()));
    for i in 0..n {
        d.accept(
            vec![mailbox_txn(&format!("u{i}@example.com"), &format!("t{i}"))],
            Backpressure::Wait,
        )
        .await
        .unwrap();
    }
    d.shutdown().await;
    let mut all = seen.0.lock().unwrap().clone();
    all.sort_by(|a, b| a.1.cmp(&b.1));
    all.into_iter().map(|(_, _, o)| o).collect()
}

/// A `fetch` the sandbox refuses rejects its promise: the driver's own catch runs, for a
/// GET, for a POST with a body, and when the endpoint's circuit is open.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_fetch_rejects_in_the_guest() {
    let Some(js) = language_guest("js-raw") else {
        return;
    };
    for mode in ["fetch-get", "fetch-post"] {
        for (target, grant) in [
            ("http://hooks.example.net/x", "allow_hosts=127.0.0.1"),
            ("http://127.0.0.1:9/x", "allow_hosts=127.0.0.1"),
        ] {
            let r = reasons(&outcomes(&js, &format!("mode={mode} url={target} {grant}"), 1).await);
            assert!(r[0].starts_with("caught: "), "{mode} {target}: {r:?}");
            assert!(!r[0].contains("trap"), "{mode} {target}: {r:?}");
        }
    }
    // An open circuit: the first request is refused at the port and opens it (one failure
    // of one is enough here); the second never leaves the host.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = reasons(
        &outcomes(
            &js,
            &format!("mode=fetch-post url=http://127.0.0.1:{closed}/x allow_hosts=127.0.0.1 allow_private breaker_min=1 breaker_window=1 breaker_open=60s"),
            3,
        )
        .await,
    );
    assert_eq!(r.len(), 3, "{r:?}");
    for reason in &r {
        assert!(reason.starts_with("caught: "), "{r:?}");
    }
    assert!(
        r[2].contains("circuit open"),
        "the circuit was open for the third: {r:?}"
    );
}

/// On the SDK, an Error deliver does not catch is logged (message and stack) before the
/// call traps: the reason carries the message. (Without the SDK, componentize-js's
/// bindings take the thrown Error for the WIT `failure` and trap on its missing `reason`:
/// that is what the reason then says — see docs/writing-drivers.md.)
#[tokio::test(flavor = "multi_thread")]
async fn an_uncaught_javascript_exception_is_the_failure_reason() {
    let Some(js) = language_guest("js-sdk") else {
        return;
    };
    let r = reasons(&outcomes(&js, "", 2).await);
    for (i, reason) in r.iter().enumerate() {
        assert!(
            reason.contains(&format!("boom in deliver for u{i}@example.com")),
            "{r:?}"
        );
        let message = reason.find("boom").unwrap();
        let trap = reason.find("trap").unwrap_or(usize::MAX);
        assert!(
            message < trap,
            "the message comes before the trap: {reason}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_uncaught_python_exception_is_the_failure_reason() {
    let Some(py) = language_guest("py-raw") else {
        return;
    };
    let r = reasons(&outcomes(&py, "", 2).await);
    for (i, reason) in r.iter().enumerate() {
        assert!(
            reason.contains(&format!("ValueError: boom in deliver for u{i}@example.com")),
            "{r:?}"
        );
    }
}

/// Without the SDK: what a raw componentize-js driver's stderr said is the reason.
#[tokio::test(flavor = "multi_thread")]
async fn a_raw_javascript_drivers_stderr_explains_its_trap() {
    let Some(js) = language_guest("js-raw") else {
        return;
    };
    let r = reasons(&outcomes(&js, "mode=throw", 1).await);
    assert!(
        r[0].contains("expected a string, received [undefined]"),
        "{r:?}"
    );
    assert!(r[0].contains("(then: trap"), "{r:?}");
}

/// console.log / console.error and print reach the log.
#[test]
fn console_output_reaches_the_log() {
    let Some(js) = language_guest("js-raw") else {
        return;
    };
    let out = std::process::Command::new(mailpush_bin())
        .args(["driver", "test"])
        .arg(&js)
        .args(["--arg", "mode=log", "--cache-dir"])
        .arg(language_state_dir().join("wasm-cache"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("log   INFO  console.log: demo-1"), "{text}");
    assert!(text.contains("log   WARN  console.error: demo-1"), "{text}");
}

/// `mailpush run` opens ingest while a big component (not in the AOT cache) compiles:
/// transactions are accepted meanwhile, wait, and reach the driver in each user's order
/// once it is ready. A component that fails its load in the background is shown by
/// status and its transactions are kept for retries, not lost.
#[tokio::test(flavor = "multi_thread")]
async fn run_serves_while_a_big_component_compiles() {
    let Some(js) = language_guest("webhook-js") else {
        return;
    };
    let server = RecordingServer::start().await;
    let small = RecordingServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mailpush.conf");
    // A fresh state dir: nothing in the AOT cache. Driver 2 lacks the url= its init
    // requires: its load fails after the compile. Driver 3, a small Rust component,
    // compiles before ingest opens, without waiting for the big ones. (The JavaScript
    // drivers get timeout_msecs=2000: a first call into a just-compiled JavaScript
    // component, on a machine busy compiling the other, can take more than the default
    // 100 ms, and this test is not about that bound.)
    std::fs::write(
        &conf,
        format!(
            "mailpush {{\n state_dir = state\n listen = 127.0.0.1:0\n}}\nplugin {{\n push_notification_driver = wasm:file={js} url={url} secret={WEBHOOK_SECRET} allow_hosts=127.0.0.1 allow_private timeout_msecs=2000\n push_notification_driver2 = wasm:file={js} allow_hosts=127.0.0.1 allow_private timeout_msecs=2000\n push_notification_driver3 = wasm:file={rust} url={small_url} allow_hosts=127.0.0.1 allow_private\n}}\n",
            js = js.display(),
            url = server.url("/hooks/mail"),
            rust = guest("webhook").display(),
            small_url = small.url("/small"),
        ),
    )
    .unwrap();
    let d = RunningDaemon::start(&conf);
    // Ingest is open and the compile goes on: status says so (driver 3 is loaded).
    let s = daemon_status(d.addr).await;
    assert!(s.drivers[2].loading.is_none(), "{s:?}");
    for n in 0..2 {
        let loading = s.drivers[n].loading.as_deref().unwrap_or_default();
        assert!(
            loading.starts_with("compiling ") && loading.contains("in the background"),
            "driver {}: {s:?}",
            n + 1
        );
    }
    let users: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|u| format!("{u}@example.com"))
        .collect();
    let sent: Vec<_> = (0..12)
        .map(|i| mailbox_txn(&users[i % users.len()], &format!("t{i}")))
        .collect();
    let body: String = sent.iter().map(|t| t.to_json() + "\n").collect();
    let (code, _, answer) = http_request(
        d.addr,
        "POST",
        "/v1/transactions",
        &[("content-type", "application/x-ndjson")],
        body.as_bytes(),
    )
    .await;
    assert_eq!(code, 202, "{answer}");
    let reqs = server.wait_for(sent.len(), Duration::from_secs(600)).await;
    assert_eq!(reqs.len(), sent.len());
    assert_each_users_order(&sent, &reqs, &users);
    // Driver 3 never waited for the big compile, and delivered everything too.
    let small_reqs = small.wait_for(sent.len(), Duration::from_secs(60)).await;
    assert_eq!(small_reqs.len(), sent.len());
    // Driver 2: its load failed after the compile; status says why, and its
    // transactions wait for retries.
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    let s = loop {
        let s = daemon_status(d.addr).await;
        if s.drivers[1]
            .loading
            .as_deref()
            .is_some_and(|l| l.starts_with("failed to load"))
            && s.drivers[1].retried > 0
            // The endpoint saw driver 1's last request just before the lane counted it.
            && s.drivers[0].delivered == 12
        {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "{s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let failed = &s.drivers[1];
    assert!(
        failed.load_failed && failed.loading.as_deref().unwrap().contains("url"),
        "{failed:?}"
    );
    assert_eq!(failed.delivered, 0, "{failed:?}");
    assert_eq!(failed.dead_lettered, 0, "{failed:?}");
    assert!(s.drivers[0].loading.is_none(), "{s:?}");
    assert_eq!(s.drivers[0].delivered, 12, "{s:?}");
    // Logged around the status change just seen: the lines may still be on their way.
    d.wait_for_log("compiled and loaded", Duration::from_secs(60));
    let log = d.wait_for_log(
        "driver 2 (wasm) failed to load in the background",
        Duration::from_secs(60),
    );
    let listening = log.find("listening on").unwrap();
    let loaded = log.find("compiled and loaded").expect("the load is logged");
    assert!(
        listening < loaded,
        "ingest opened before the compile ended:\n{log}"
    );
    assert!(
        log.contains("driver 2 (wasm) failed to load in the background"),
        "{log}"
    );

    // Fixed and reloaded: driver 2's transactions, kept meanwhile, are delivered.
    let fixed = RecordingServer::start().await;
    std::fs::write(
        &conf,
        format!(
            "mailpush {{\n state_dir = state\n listen = 127.0.0.1:0\n}}\nplugin {{\n push_notification_driver = wasm:file={js} url={url} secret={WEBHOOK_SECRET} allow_hosts=127.0.0.1 allow_private\n push_notification_driver2 = wasm:file={js} url={fixed_url} allow_hosts=127.0.0.1 allow_private\n push_notification_driver3 = wasm:file={rust} url={small_url} allow_hosts=127.0.0.1 allow_private\n}}\n",
            js = js.display(),
            url = server.url("/hooks/mail"),
            fixed_url = fixed.url("/fixed"),
            rust = guest("webhook").display(),
            small_url = small.url("/small"),
        ),
    )
    .unwrap();
    let (code, _, answer) = http_request(d.addr, "POST", "/v1/reload", &[], b"").await;
    assert_eq!(code, 200, "{answer}");
    let reqs = fixed.wait_for(sent.len(), Duration::from_secs(600)).await;
    let mut ids: Vec<String> = reqs
        .iter()
        .filter_map(|r| r.header("webhook-id").map(str::to_string))
        .collect();
    ids.sort();
    let mut want: Vec<String> = sent.iter().map(|t| t.id.clone()).collect();
    want.sort();
    assert_eq!(ids, want);
    assert_eq!(
        server.requests().len(),
        sent.len(),
        "driver 1 delivered each once"
    );
}

/// Stopped while a big component compiles in the background, `mailpush run` shuts down
/// cleanly at once: it does not wait for the compile it no longer needs (which would
/// have ended by writing the compiled artifact into the AOT cache).
#[tokio::test(flavor = "multi_thread")]
async fn a_shutdown_does_not_wait_for_a_background_compile() {
    let Some(js) = language_guest("webhook-js") else {
        return;
    };
    let server = RecordingServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mailpush.conf");
    std::fs::write(
        &conf,
        format!(
            "mailpush {{\n state_dir = state\n listen = 127.0.0.1:0\n}}\nplugin {{\n push_notification_driver = wasm:file={js} url={url} secret={WEBHOOK_SECRET} allow_hosts=127.0.0.1 allow_private\n}}\n",
            js = js.display(),
            url = server.url("/hooks/mail"),
        ),
    )
    .unwrap();
    let d = RunningDaemon::start(&conf);
    let s = daemon_status(d.addr).await;
    let loading = s.drivers[0].loading.clone().unwrap_or_default();
    assert!(loading.contains("in the background"), "{s:?}");
    // The compile is under way once the process has used a second of CPU (an idle
    // daemon uses next to none): the tokio task that drives the load is past its start
    // and a compile runs on a blocking thread.
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while cpu_seconds(d.child.id()) < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the compile never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = d.log.clone();
    let status = d.stop();
    let log = log.lock().unwrap().clone();
    assert!(status.success(), "{status:?}\n{log}");
    assert!(log.contains("shutdown complete"), "{log}");
    let state = dir.path().join("state");
    let compiled: Vec<String> = walk(&state)
        .into_iter()
        .filter(|n| n.ends_with(".cwasm"))
        .collect();
    assert!(
        compiled.is_empty(),
        "the compile ran on after the shutdown and wrote {compiled:?}"
    );
    assert!(server.requests().is_empty());
}

/// The names of the files under `dir`, at any depth.
fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    out
}
