//! Tools for driver authors: `mailpush driver test` (a driver over sample transactions,
//! with a recording endpoint) and `mailpush driver new` (a project that builds and tests
//! itself), run as the real binary.

use std::path::Path;
use std::process::Command;

use mailpush_e2e::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn driver_test(component: &Path, extra: &[&str]) -> (bool, String, String) {
    let out = Command::new(mailpush_bin())
        .args(["driver", "test", "--no-cache"])
        .arg(component)
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn sample_count() -> usize {
    include_str!("../../examples/events.ndjson")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

#[test]
fn driver_test_shows_what_a_driver_logged_requested_and_returned() {
    let (ok, out, err) = driver_test(&guest("webhook"), &["--arg", &format!("secret={SECRET}")]);
    assert!(ok, "{out}\n{err}");
    let n = sample_count();
    assert!(
        out.contains(&format!(
            "{n} transactions: {n} delivered, 0 skipped, 0 failed"
        )),
        "{out}"
    );
    assert_eq!(out.matches("  http  POST / (").count(), n, "{out}");
    assert!(out.contains("webhook-signature: v1,"), "{out}");
    assert!(
        out.contains("log   DEBUG delivered "),
        "the driver's own log lines: {out}"
    );
    assert!(out.contains("args: "), "{out}");
    assert!(out.contains("secret=***"), "the secret is not shown: {out}");
    assert!(!out.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), "{out}");
}

#[test]
fn driver_test_fails_when_the_driver_fails() {
    let (ok, out, _) = driver_test(&guest("webhook"), &["--reply", "503"]);
    assert!(!ok, "a failing driver fails the test: {out}");
    assert!(out.contains("→ 503"), "{out}");
    assert!(
        out.contains("=> FAILED (retryable): webhook answered 503"),
        "{out}"
    );
}

/// A skip says who decided it: here the answer `fixed-begin` gave at load, since
/// `begin-txn` is never called.
#[test]
fn driver_test_says_why_a_transaction_was_skipped() {
    let n = sample_count();
    let (ok, out, err) = driver_test(
        &guest("hostile"),
        &["--arg", "mode=ok", "--arg", "fixed=skip"],
    );
    assert!(ok, "{out}\n{err}");
    assert_eq!(
        out.matches("=> skipped (its fixed-begin answer)").count(),
        n,
        "{out}"
    );
    assert!(!out.contains("skipped (begin-txn)"), "{out}");
    assert!(
        out.contains(&format!(
            "{n} transactions: 0 delivered, {n} skipped, 0 failed"
        )),
        "{out}"
    );
}

#[test]
fn driver_test_shows_what_a_trapping_driver_printed() {
    let (ok, out, _) = driver_test(&guest("hostile"), &["--arg", "mode=stderr-trap"]);
    assert!(!ok);
    assert!(out.contains("log   INFO  progress: about to fail"), "{out}");
    assert!(
        out.contains("log   WARN  TypeError: cannot read property 'x' of undefined"),
        "{out}"
    );
    assert!(
        out.contains("=> FAILED (permanent): TypeError: cannot read property 'x' of undefined"),
        "{out}"
    );
}

#[test]
fn driver_test_reads_a_file_of_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("one.ndjson");
    std::fs::write(
        &file,
        mailbox_txn("a@example.com", "only-one").to_json() + "\n",
    )
    .unwrap();
    let (ok, out, err) = driver_test(&guest("webhook"), &[file.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("[1/1] only-one a@example.com: MailboxCreate INBOX"),
        "{out}"
    );
    std::fs::write(&file, "{not json}\n").unwrap();
    let (ok, _, err) = driver_test(&guest("webhook"), &[file.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("events, line 1"), "{err}");
}

/// `mailpush driver new NAME --lang rust|js|python` makes a project that builds outside
/// mailpush's tree with its own ./build.sh (cargo, componentize-js, componentize-py) and
/// passes its own ./test.sh.
fn new_project_passes_its_test(lang: &str) {
    // JavaScript and Python need the toolchains tests/build.rs used (installed by
    // examples/toolchains.sh).
    let guest = match lang {
        "js" => Some("js-raw"),
        "python" => Some("py-raw"),
        _ => None,
    };
    if guest.is_some_and(|g| language_guest(g).is_none()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(mailpush_bin())
        .args(["driver", "new", "hello-push", "--lang", lang, "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("./test.sh"));
    let project = dir.path().join("hello-push");
    let env_or = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    // The toolchain mailpush pins (it has the wasm32-wasip2 target .ci/run installed),
    // not the project's `stable`, which a fresh machine would first download.
    let pinned = include_str!("../../rust-toolchain.toml")
        .lines()
        .find_map(|l| l.strip_prefix("channel = "))
        .map(|v| v.trim_matches('"').to_string())
        .expect("rust-toolchain.toml names a channel");
    let run = Command::new(project.join("test.sh"))
        .env("MAILPUSH", mailpush_bin())
        // Rust: shares a target dir, so the SDK's dependencies are built once.
        .env(
            "CARGO_TARGET_DIR",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guest-scaffold"),
        )
        .env_remove("RUSTFLAGS")
        .env("RUSTUP_TOOLCHAIN", &pinned)
        .env(
            "MAILPUSH_JS_PREFIX",
            env_or("MAILPUSH_JS_PREFIX", "/opt/mailpush-ci/js"),
        )
        .env(
            "MAILPUSH_PY_VENV",
            env_or("MAILPUSH_PY_VENV", "/opt/mailpush-ci/py"),
        )
        .args(["--cache-dir"])
        .arg(language_state_dir().join("wasm-cache"))
        .output()
        .unwrap();
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.status.success(), "{log}");
    let n = sample_count();
    assert!(
        log.contains(&format!("{n} transactions: {n} delivered")),
        "{log}"
    );
    assert!(
        log.contains("log   INFO  demo-1: 1 event(s) for alice@example.com"),
        "{log}"
    );
    assert!(log.contains("http  POST / ("), "{log}");

    // And `mailpush run` runs it, configured as the project's README says.
    let component = match lang {
        "rust" => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/guest-scaffold/wasm32-wasip2/release/hello_push.wasm"),
        _ => project.join("hello-push.wasm"),
    };
    let readme = std::fs::read_to_string(project.join("README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.trim_start().starts_with("push_notification_driver"))
        .expect("the README shows the config line");
    let server = tokio_runtime().block_on(RecordingServer::start());
    let line = line
        .replace(
            &format!(
                "/etc/mailpush/drivers/{}",
                component.file_name().unwrap().to_string_lossy()
            ),
            &component.display().to_string(),
        )
        .replace("https://hooks.example.com/mail", &server.url("/mail"))
        .replace(
            "allow_hosts=hooks.example.com",
            "allow_hosts=127.0.0.1 allow_private",
        );
    assert!(line.contains(&component.display().to_string()), "{line}");
    let conf = dir.path().join("mailpush.conf");
    // The state dir whose AOT cache ./test.sh filled (--cache-dir above); shared by the
    // three languages' tests, which run at once: no spool (delivery = memory), so none
    // of them leaves transactions there for another to deliver.
    std::fs::write(
        &conf,
        format!(
            "mailpush {{\n state_dir = {}\n listen = 127.0.0.1:0\n delivery = memory\n}}\nplugin {{\n push_notification_driver = dlog\n{line}\n}}\n",
            language_state_dir().display()
        ),
    )
    .unwrap();
    let daemon = RunningDaemon::start(&conf);
    let txn = r#"{"id":"scaffold-1","user":"alice@example.com","events":[{"name":"MailboxCreate","mailbox":"Projects"}]}"#;
    tokio_runtime().block_on(async {
        let (code, _, answer) = http_request(
            daemon.addr,
            "POST",
            "/v1/transactions",
            &[("content-type", "application/x-ndjson")],
            format!("{txn}\n").as_bytes(),
        )
        .await;
        assert_eq!(code, 202, "{answer}");
        let reqs = server
            .wait_for(1, std::time::Duration::from_secs(300))
            .await;
        assert_eq!(reqs[0].method, "POST");
        assert_eq!(reqs[0].target, "/mail");
        assert_eq!(
            mailpush_core::Transaction::from_json(&reqs[0].body_text()).unwrap(),
            mailpush_core::Transaction::from_json(txn).unwrap()
        );
    });
    let line = "scaffold-1: 1 event(s) for alice@example.com";
    let log = daemon.wait_for_log(line, std::time::Duration::from_secs(60));
    assert!(log.contains(line), "{log}");
}

fn tokio_runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Runtime::new().unwrap())
}

#[test]
fn a_new_rust_driver_builds_and_passes_its_own_test() {
    new_project_passes_its_test("rust");
}

#[test]
fn a_new_javascript_driver_builds_and_passes_its_own_test() {
    new_project_passes_its_test("js");
}

#[test]
fn a_new_python_driver_builds_and_passes_its_own_test() {
    new_project_passes_its_test("python");
}
