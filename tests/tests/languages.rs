//! Drivers in JavaScript (componentize-js) and Python (componentize-py), built from source
//! by tests/build.rs: the webhook examples sign as the Rust one does, refused requests
//! reject inside the guest (its catch runs), uncaught exceptions and console output reach
//! the failure reason and the log.

use std::path::Path;
use std::sync::Arc;

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

/// Runs `n` MailboxCreate transactions through `component` with `args`; returns the
/// outcomes in order.
async fn outcomes(component: &Path, args: &str, n: usize) -> Vec<Outcome> {
    let dir = tempfile::tempdir().unwrap();
    let conf = format!(
        "mailpush {{\n state_dir = {}\n}}\nplugin {{\n push_notification_driver = wasm:file={} {args} retry=none timeout_msecs=5000\n}}\n",
        language_state_dir().display(),
        component.display()
    );
    let config = write_config(dir.path(), &conf);
    let loaded = load_drivers(&TestDrivers::new().registry(), &config).await;
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
