//! Example wasm drivers end to end, the AOT cache, instance models and pausing.

use std::sync::Arc;

use mailpush::pipeline::{deliver, Outcome};
use mailpush::wasm::engine::{CacheOutcome, Engines, Source, WasmEngine};
use mailpush::wasm::log::DriverTag;
use mailpush::wasm::sandbox::Sandbox;
use mailpush::wasm::WasmDriver;
use mailpush_core::{Driver, DriverArgs, NoMetadata, Transaction};
use mailpush_e2e::*;

#[tokio::test(flavor = "multi_thread")]
async fn webhook_posts_signed_canonical_json() {
    assert_webhook_posts_signed_canonical_json(&guest("webhook"), None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_refuses_a_key_the_host_cannot_sign_with() {
    assert_webhook_refuses_a_key_the_host_cannot_sign_with(&guest("webhook"), None, true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_failures_are_retryable_on_5xx_and_carry_retry_after() {
    assert_webhook_failures_are_classified(&guest("webhook"), None).await;
}

/// A reused instance makes many more requests than it may hold resources: each
/// transaction's `request-options` (kept by wasmtime-wasi-http after `handle`) are
/// dropped between transactions, so the 129th request does not fail.
#[tokio::test(flavor = "multi_thread")]
async fn a_reused_webhook_instance_outlives_its_resource_limit() {
    let server = RecordingServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let conf = format!(
        "mailpush {{\n state_dir = state\n}}\nplugin {{\n push_notification_driver = wasm:file={} url={} allow_hosts=127.0.0.1 allow_private instance=reuse host_memory=2M\n}}\n",
        guest("webhook").display(),
        server.url("/h")
    );
    let config = write_config(dir.path(), &conf);
    let loaded = load_drivers(&TestDrivers::new().registry(), &config).await;
    // host_memory=2M: at most 16 resources at once.
    for i in 0..100 {
        let txn = Arc::new(mailbox_txn("a@example.com", &format!("r{i}")));
        let outcome = deliver(loaded[0].driver.as_ref(), &txn).await;
        assert_eq!(outcome, Outcome::Delivered, "transaction {i}");
    }
    assert_eq!(server.requests().len(), 100);
    let counters: std::collections::HashMap<_, _> =
        loaded[0].driver.counters().into_iter().collect();
    assert_eq!(
        counters.get("wasm_instances").copied(),
        Some(1),
        "one warm instance did it all: {counters:?}"
    );
}

async fn load(
    path: &std::path::Path,
    engines: &Arc<Engines>,
    args: &str,
) -> Result<WasmDriver, String> {
    load_read(path, None, engines, args).await
}

/// [`load`], from `source` if given (the file as already read) instead of the file.
async fn load_read(
    path: &std::path::Path,
    source: Option<Source>,
    engines: &Arc<Engines>,
    args: &str,
) -> Result<WasmDriver, String> {
    let mut args = DriverArgs::parse(args);
    let sandbox = Sandbox::from_args(&mut args).unwrap();
    let tag = Arc::new(DriverTag {
        number: 1,
        name: "wasm".into(),
    });
    WasmDriver::load_read(
        tag,
        path,
        source,
        sandbox,
        args,
        engines,
        Arc::new(NoMetadata),
    )
    .await
    .map_err(|e| e.message)
}

/// A driver loads from the file as it was already read (a big component's file is read
/// once, to tell whether its compile is long, and that copy is what loads): the path is
/// not read again, with a snapshot or without.
#[tokio::test(flavor = "multi_thread")]
async fn a_driver_loads_from_the_file_already_read() {
    for args in ["mode=ok", "mode=ok init=per-instance"] {
        let dir = tempfile::tempdir().unwrap();
        let engines = Arc::new(Engines::new(Some(dir.path().join("cache"))));
        let source = WasmEngine::read(&guest("hostile")).unwrap();
        // No file at this path: only what was read can load.
        let gone = dir.path().join("moved-away.wasm");
        let d = load_read(&gone, Some(source), &engines, args)
            .await
            .unwrap_or_else(|e| panic!("{args}: {e}"));
        let txn = Arc::new(mailbox_txn("alice@example.com", "t1"));
        assert_eq!(deliver(&d, &txn).await, Outcome::Delivered, "{args}");
    }
}

/// The AOT cache, for a snapshotted driver (the default: the artifact is the snapshot)
/// and for one whose `init` runs in every instance (the component's own artifact).
#[tokio::test(flavor = "multi_thread")]
async fn aot_cache_hits_on_second_start_and_rejects_tampering() {
    for (args, snapshot) in [("mode=ok", true), ("mode=ok init=per-instance", false)] {
        let cache = tempfile::tempdir().unwrap();
        let wasm = guest("hostile");
        let first = Arc::new(Engines::new(Some(cache.path().to_path_buf())));
        let d = load(&wasm, &first, args).await.unwrap();
        assert_eq!(d.cache_outcome(), CacheOutcome::Miss, "{args}");
        assert_eq!(d.snapshotted(), snapshot, "{args}");
        // A new process: fresh engines over the same state dir.
        let second = Arc::new(Engines::new(Some(cache.path().to_path_buf())));
        let d = load(&wasm, &second, args).await.unwrap();
        assert_eq!(d.cache_outcome(), CacheOutcome::Hit, "{args}");
        // Tamper with the artifact the driver runs: it must be rejected, recompiled,
        // and still work.
        let artifact = std::fs::read_dir(cache.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                name.ends_with(".cwasm")
                    && !name.contains("-instrumented")
                    && !name.contains("-functions")
                    && name.contains("-snap") == snapshot
            })
            .expect("artifact written");
        let mut bytes = std::fs::read(&artifact).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&artifact, &bytes).unwrap();
        let third = Arc::new(Engines::new(Some(cache.path().to_path_buf())));
        let d = load(&wasm, &third, args).await.unwrap();
        assert_eq!(d.cache_outcome(), CacheOutcome::Rejected, "{args}");
        let txn = Arc::new(mailbox_txn("a@example.com", "t"));
        assert_eq!(deliver(&d, &txn).await, Outcome::Delivered);
        // And the rewritten artifact is good again.
        let fourth = Arc::new(Engines::new(Some(cache.path().to_path_buf())));
        assert_eq!(
            load(&wasm, &fourth, args).await.unwrap().cache_outcome(),
            CacheOutcome::Hit,
            "{args}"
        );
    }
}

/// Issue 15's isolation test for snapshots: `init` leaves `init:TAG` in a global, every
/// transaction records its id there and fails unless it found exactly what `init` left.
/// From a snapshot (made now, and loaded from the cache) every transaction finds it; a
/// reused instance (the control) finds the previous transaction's id.
#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_holds_what_init_left_and_nothing_from_other_transactions() {
    let cache = tempfile::tempdir().unwrap();
    let wasm = guest("hostile");
    let txn = |i: usize| Arc::new(mailbox_txn("a@example.com", &format!("t{i}")));
    for (start, args) in [
        ("made now", "mode=remember tag=abc"),
        ("from the cache", "mode=remember tag=abc"),
        ("other arguments, another snapshot", "mode=remember tag=xyz"),
    ] {
        let engines = Arc::new(Engines::new(Some(cache.path().to_path_buf())));
        let d = load(&wasm, &engines, args).await.unwrap();
        assert!(d.snapshotted(), "{start}");
        assert!(
            d.details()
                .contains(&"init: snapshot made at load".to_string())
                || d.details()
                    .contains(&"init: snapshot made at load (AOT cache hit)".to_string()),
            "{start}: {:?}",
            d.details()
        );
        for i in 0..4 {
            assert_eq!(deliver(&d, &txn(i)).await, Outcome::Delivered, "{start}");
        }
    }
    // A snapshot per set of arguments and memory limit (its memory is what init left).
    let snapshots = || {
        std::fs::read_dir(cache.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("-snap") && n.ends_with(".cwasm"))
            .count()
    };
    assert_eq!(snapshots(), 2);
    let engines = Arc::new(Engines::new(Some(cache.path().to_path_buf())));
    let bigger = load(&wasm, &engines, "mode=remember tag=abc memory=64M")
        .await
        .unwrap();
    assert!(bigger.snapshotted());
    assert_eq!(deliver(&bigger, &txn(0)).await, Outcome::Delivered);
    assert_eq!(snapshots(), 3);
    let per_instance = load(&wasm, &engines, "mode=remember tag=abc init=per-instance")
        .await
        .unwrap();
    assert!(!per_instance.snapshotted());
    for i in 0..3 {
        assert_eq!(deliver(&per_instance, &txn(i)).await, Outcome::Delivered);
    }
    // The control: the test can fail.
    let reused = load(&wasm, &engines, "mode=remember tag=abc instance=reuse")
        .await
        .unwrap();
    assert!(reused.snapshotted());
    assert_eq!(deliver(&reused, &txn(0)).await, Outcome::Delivered);
    assert_eq!(
        reasons(&[deliver(&reused, &txn(1)).await]),
        [r#"saw Some("t0")"#]
    );
}

/// The compiles of one component share their functions through the AOT cache: a
/// snapshot made for new arguments takes most of them from the last compile (and
/// still holds only what its own `init` left: `remember` fails a transaction that finds
/// another tag). The stored functions are private and signed: tampered ones are not used.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_snapshot_reuses_the_functions_compiled_before() {
    use std::os::unix::fs::PermissionsExt;
    let cache = tempfile::tempdir().unwrap();
    let wasm = guest("hostile");
    let txn = Arc::new(mailbox_txn("a@example.com", "t0"));
    let reuse = |d: &WasmDriver| function_reuse(&d.details());
    // Rust components are small and compile without the stored functions: this
    // test makes the engine reuse them for every size.
    let load_fresh = |args: &'static str| {
        let engines =
            Arc::new(Engines::new(Some(cache.path().to_path_buf())).reusing_functions_from(0));
        let wasm = wasm.clone();
        async move { load(&wasm, &engines, args).await.unwrap() }
    };
    // The first snapshot shares what it can with the instrumented component.
    let first = load_fresh("mode=remember tag=abc").await;
    let (reused, functions) = reuse(&first);
    assert!(functions > 50 && reused > 0, "{reused} of {functions}");
    assert_eq!(deliver(&first, &txn).await, Outcome::Delivered);
    let stored = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("-functions-"))
        .expect("the functions are stored");
    assert_eq!(
        std::fs::metadata(&stored).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // New arguments: a new snapshot, most of it from the last compile (about 90 %; some
    // of the functions wasmtime generates for a component differ between compiles).
    let second = load_fresh("mode=remember tag=xyz").await;
    let (reused, functions) = reuse(&second);
    assert!(reused * 5 >= functions * 4, "{reused} of {functions}");
    assert_eq!(deliver(&second, &txn).await, Outcome::Delivered);
    // Tampered: not used; the snapshot compiles whole, works, and stores them anew.
    let mut bytes = std::fs::read(&stored).unwrap();
    let end = bytes.len() - 1;
    bytes[end] ^= 0xff;
    std::fs::write(&stored, &bytes).unwrap();
    let third = load_fresh("mode=remember tag=uvw").await;
    assert_eq!(reuse(&third).0, 0);
    assert_eq!(deliver(&third, &txn).await, Outcome::Delivered);
    let fourth = load_fresh("mode=remember tag=rst").await;
    let (reused, functions) = reuse(&fourth);
    assert!(reused * 5 >= functions * 4, "{reused} of {functions}");
    assert_eq!(deliver(&fourth, &txn).await, Outcome::Delivered);
}

/// A hostile `init` cannot make the host copy, compile and cache an arbitrary amount of
/// memory per set of arguments: a snapshot that would grow the component by more than
/// 64 MiB is not made (and the decision is recorded); the driver runs with `init` in
/// every instance, and works. Under the bound, the same driver is snapshotted.
#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_is_not_made_of_an_init_that_hoards_memory() {
    let cache = tempfile::tempdir().unwrap();
    let wasm = guest("hostile");
    let txn = Arc::new(mailbox_txn("a@example.com", "t"));
    let engines = Arc::new(Engines::new(Some(cache.path().to_path_buf())));
    let d = load(
        &wasm,
        &engines,
        "mode=init-hoard mib=80 memory=128M timeout_msecs=5000",
    )
    .await
    .unwrap();
    assert!(!d.snapshotted());
    assert!(
        d.details()
            .iter()
            .any(|l| l.contains("init left 80 MiB in memory, more than a snapshot keeps (64 MiB)")),
        "{:?}",
        d.details()
    );
    assert_eq!(deliver(&d, &txn).await, Outcome::Delivered);
    let records = std::fs::read_dir(cache.path())
        .unwrap()
        .filter(|e| {
            let name = e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .into_owned();
            name.ends_with(".declined") || (name.contains("-snap") && name.ends_with(".cwasm"))
        })
        .count();
    assert_eq!(
        records, 1,
        "the decline is recorded, and no snapshot written"
    );
    let small = load(
        &wasm,
        &engines,
        "mode=init-hoard mib=8 memory=128M timeout_msecs=5000",
    )
    .await
    .unwrap();
    assert!(small.snapshotted());
    assert_eq!(deliver(&small, &txn).await, Outcome::Delivered);
}

/// A driver whose `init` calls an import is not snapshotted: `check` says which import,
/// the next start knows without trying again, and its instances call `init` as before.
/// A snapshot, which holds what `init` made of the arguments (a secret), is readable by
/// the owner only, and no argument appears in a file name.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn init_that_calls_an_import_is_not_snapshotted_and_snapshots_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let cache = tempfile::tempdir().unwrap();
    let wasm = guest("hostile");
    let why = "init: called in every instance (init calls `mailpush:driver/host@0.1.1#metadata-get`, which a snapshot cannot keep)";
    for _ in 0..2 {
        let engines = Arc::new(Engines::new(Some(cache.path().to_path_buf())));
        let d = load(&wasm, &engines, "mode=metadata key=/private/k")
            .await
            .unwrap();
        assert!(!d.snapshotted());
        assert!(d.details().contains(&why.to_string()), "{:?}", d.details());
    }
    let declined: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".declined"))
        .collect();
    assert_eq!(declined.len(), 1, "{declined:?}");
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let engines = Arc::new(Engines::new(Some(cache.path().to_path_buf())));
    let d = load(
        &guest("webhook"),
        &engines,
        &format!("url=http://127.0.0.1:9/x secret={secret}"),
    )
    .await
    .unwrap();
    assert!(d.snapshotted());
    let mut snapshots = 0;
    for e in std::fs::read_dir(cache.path()).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            !name.contains("whsec") && !name.contains("/private"),
            "{name}"
        );
        if name.contains("-snap") && name.ends_with(".cwasm") {
            snapshots += 1;
            assert_eq!(
                e.metadata().unwrap().permissions().mode() & 0o777,
                0o600,
                "{name}"
            );
        }
    }
    assert_eq!(snapshots, 1, "the webhook's");
}

#[tokio::test(flavor = "multi_thread")]
async fn refuses_non_components_and_wrong_worlds() {
    let dir = tempfile::tempdir().unwrap();
    let engines = Arc::new(Engines::new(None));
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let e = load(&core, &engines, "").await.err().unwrap();
    assert!(
        e.contains("core WebAssembly module, not a component"),
        "{e}"
    );
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"hello").unwrap();
    let e = load(&junk, &engines, "").await.err().unwrap();
    assert!(e.contains("not a WebAssembly component"), "{e}");
    // An empty component exports nothing of the mailpush world.
    let empty = dir.path().join("empty.wasm");
    std::fs::write(&empty, b"\0asm\x0d\0\x01\0").unwrap();
    let e = load(&empty, &engines, "").await.err().unwrap();
    assert!(e.contains("does not export mailpush:driver/driver"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wit_version_mismatch_names_both_versions() {
    let engines = Arc::new(Engines::new(None));
    // It imports host@0.2.0: the version is checked before linking, on every load path.
    for args in ["", "init=per-instance"] {
        let e = load(&guest("future-version"), &engines, args)
            .await
            .err()
            .unwrap();
        assert!(
            e.contains("built against mailpush:driver@0.2.0")
                && e.contains("provides mailpush:driver@0.1.1"),
            "{args}: {e}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn init_refusal_is_reported() {
    let engines = Arc::new(Engines::new(None));
    let e = load(&guest("webhook"), &engines, "").await.err().unwrap();
    assert!(e.contains("missing required argument url"), "{e}");
}

/// The wasm-only pause of earlier versions is gone (a failing driver is held back by its
/// circuit breaker, like every driver): its keys are taken off the line, never reach the
/// component, and are warned about.
#[test]
fn retired_pause_keys_are_taken_and_warned_about() {
    let mut args = DriverArgs::parse("mode=trap pause_after=2 pause_msecs=50");
    let sandbox = Sandbox::from_args(&mut args).unwrap();
    assert_eq!(sandbox.retired, ["pause_after", "pause_msecs"]);
    assert!(!args.has("pause_after") && !args.has("pause_msecs"));
    assert!(sandbox.warnings()[0].1.contains("pause_after is ignored"));
}

#[tokio::test(flavor = "multi_thread")]
async fn fresh_instance_per_transaction_vs_reuse() {
    let engines = Arc::new(Engines::new(None));
    let fresh = load(&guest("hostile"), &engines, "mode=ok").await.unwrap();
    let reuse = load(
        &guest("hostile"),
        &engines,
        "mode=ok instance=reuse recycle_after=3",
    )
    .await
    .unwrap();
    let txn = Arc::new(mailbox_txn("a@example.com", "t"));
    for _ in 0..6 {
        assert_eq!(deliver(&fresh, &txn).await, Outcome::Delivered);
        assert_eq!(deliver(&reuse, &txn).await, Outcome::Delivered);
    }
    let n = |d: &WasmDriver| {
        d.stats()
            .instances
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(n(&fresh), 1 + 6, "probe + one per transaction");
    assert_eq!(
        n(&reuse),
        2,
        "the probe serves 3 transactions, then one new instance the next 3"
    );
    // After a trap a reused instance is discarded.
    let trap = load(&guest("hostile"), &engines, "mode=trap instance=reuse")
        .await
        .unwrap();
    let _ = deliver(&trap, &txn).await;
    let _ = deliver(&trap, &txn).await;
    assert_eq!(
        n(&trap),
        2,
        "the warm probe trapped and was discarded; a fresh one followed"
    );
}

/// ox-wasm sends the request Dovecot's ox driver sends (dovecot-push.md §7.3): PUT, the
/// JSON body byte for byte in Dovecot's key order and escaping, Content-Type, Basic auth.
#[tokio::test(flavor = "multi_thread")]
async fn ox_wasm_sends_dovecots_request() {
    let server = RecordingServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let url = server
        .url("/preliminary/http-notify/v1/notify")
        .replace("http://", "http://login:pass@");
    let conf = format!(
        "mailpush {{\n state_dir = state\n}}\nplugin {{\n push_notification_driver = wasm:file={} url={url} allow_hosts=127.0.0.1 allow_private\n}}\n",
        guest("ox-wasm").display()
    );
    let config = write_config(dir.path(), &conf);
    let loaded = load_drivers(&TestDrivers::new().registry(), &config).await;
    let meta = r#""metadata":{"/private/vendor/vendor.dovecot/http-notify":"user=11@3"}"#;
    let txn = |events: &str, with_meta: bool| {
        Arc::new(
            Transaction::from_json(&format!(
                r#"{{"id":"x","user":"alice@example.com","events":[{events}]{}}}"#,
                if with_meta {
                    format!(",{meta}")
                } else {
                    String::new()
                }
            ))
            .unwrap(),
        )
    };
    let new = r#"{"name":"MessageNew","mailbox":"INBOX","uid":42,"uid_validity":1700000000,"from":"=?utf-8?q?=C3=84?= <alice@barfoo.org>","subject":"Test \"q\" \\ x","snippet":"Hey\tguys\nÄ\u0001","unseen":2}"#;
    let d = loaded[0].driver.as_ref();
    // Not active without METADATA; nothing for other folders or events.
    assert_eq!(deliver(d, &txn(new, false)).await, Outcome::Skipped);
    let other = r#"{"name":"MessageNew","mailbox":"Work","uid":1,"uid_validity":1}"#;
    assert_eq!(deliver(d, &txn(other, true)).await, Outcome::Delivered);
    let read = r#"{"name":"MessageRead","mailbox":"INBOX","uid":1,"uid_validity":1}"#;
    assert_eq!(deliver(d, &txn(read, true)).await, Outcome::Delivered);
    assert!(server.requests().is_empty());
    assert_eq!(deliver(d, &txn(new, true)).await, Outcome::Delivered);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, "PUT");
    assert_eq!(r.target, "/preliminary/http-notify/v1/notify");
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(r.header("authorization"), Some("Basic bG9naW46cGFzcw=="));
    assert_eq!(
        r.body_text(),
        "{\"user\":\"alice@example.com\",\"event\":\"messageNew\",\"folder\":\"INBOX\",\"imap-uidvalidity\":1700000000,\"imap-uid\":42,\"from\":\"=?utf-8?q?=C3=84?= <alice@barfoo.org>\",\"subject\":\"Test \\\"q\\\" \\\\ x\",\"snippet\":\"Hey\\tguys\\nÄ\\u0001\",\"unseen\":2}"
    );
}

/// Seconds of the day of an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn time_of_day(date: &str) -> i64 {
    let hms = date.split(' ').nth(4).expect("hh:mm:ss");
    hms.split(':')
        .map(|p| p.parse::<i64>().expect("a number"))
        .fold(0, |acc, n| acc * 60 + n)
}

/// ox-wasm and the native ox driver (one config, both drivers) put the same request on
/// the wire: method, target, body bytes, and Dovecot's six headers with the same values —
/// only the Date value may differ by the second or so between the two requests. (The
/// head's bytes differ: the wasm host's HTTP client writes names in lower case and
/// `host`, `content-length` last; the native driver writes Dovecot's exact bytes.)
#[tokio::test(flavor = "multi_thread")]
async fn ox_wasm_and_native_ox_send_identical_requests() {
    let server = RecordingServer::start().await;
    let url = server
        .url("/preliminary/http-notify/v1/notify?a=b")
        .replace("http://", "http://login:pass@");
    let dir = tempfile::tempdir().unwrap();
    let conf = format!(
        "mailpush {{\n state_dir = state\n}}\nplugin {{\n push_notification_driver = ox:url={url}\n push_notification_driver2 = wasm:file={} url={url} allow_hosts=127.0.0.1 allow_private\n}}\n",
        guest("ox-wasm").display()
    );
    let config = write_config(dir.path(), &conf);
    let loaded = load_drivers(&TestDrivers::new().registry(), &config).await;
    assert_eq!(loaded[0].name, "ox");
    let t = Arc::new(
        Transaction::from_json(
            r#"{"id":"x","user":"alice@example.com","events":[{"name":"MessageNew","mailbox":"INBOX","uid":42,"uid_validity":1700000000,"from":"=?utf-8?q?=C3=84?= <a@b>","subject":"S \"q\"","snippet":"x\ny\u0002ä","unseen":5}],"metadata":{"/private/vendor/vendor.dovecot/http-notify":"user=11@3"}}"#,
        )
        .unwrap(),
    );
    for d in &loaded {
        assert_eq!(deliver(d.driver.as_ref(), &t).await, Outcome::Delivered);
    }
    let r = server.requests();
    assert_eq!(r.len(), 2);
    let (native, wasm) = (&r[0], &r[1]);
    assert_eq!(wasm.method, native.method);
    assert_eq!(wasm.target, native.target);
    assert_eq!(wasm.body, native.body);
    let (nd, wd) = (native.header("date").unwrap(), wasm.header("date").unwrap());
    let apart = (time_of_day(nd) - time_of_day(wd)).rem_euclid(86_400);
    assert!(
        nd == wd || apart.min(86_400 - apart) <= 2,
        "native {nd}, wasm {wd}"
    );
    let comparable = |req: &Recorded| -> std::collections::BTreeSet<(String, String)> {
        req.headers
            .iter()
            .map(|(k, v)| {
                let v = if k.eq_ignore_ascii_case("date") {
                    // Same format (IMF-fixdate), value not compared.
                    assert!(v.ends_with(" GMT") && v.len() == 29, "{v}");
                    "<date>".to_string()
                } else {
                    v.clone()
                };
                (k.to_ascii_lowercase(), v)
            })
            .collect()
    };
    let names: Vec<String> = comparable(wasm).into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        names,
        [
            "authorization",
            "connection",
            "content-length",
            "content-type",
            "date",
            "host"
        ]
    );
    assert_eq!(
        comparable(wasm),
        comparable(native),
        "\nnative:\n{}\nwasm:\n{}",
        String::from_utf8_lossy(&native.raw),
        String::from_utf8_lossy(&wasm.raw)
    );
}

fn failed(out: Outcome) -> mailpush_core::Failure {
    match out {
        Outcome::Failed(f) => f,
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// A POST the sandbox refuses (host not granted; a private address without
/// `allow_private`, literal or resolved from a name) is a permanent failure of the
/// webhook with the refusal in the reason — not a retryable broken body stream.
#[tokio::test(flavor = "multi_thread")]
async fn webhook_policy_refusals_are_permanent() {
    let server = RecordingServer::start().await;
    let engines = Arc::new(Engines::new(None));
    let txn = Arc::new(mailbox_txn("a@example.com", "t1"));
    let port = server.addr.port();
    for (args, why) in [
        (
            "url=http://hooks.example.com/x allow_hosts=other.example.com".to_string(),
            "not in allow_hosts".to_string(),
        ),
        (
            format!("url=http://127.0.0.1:{port}/x allow_hosts=127.0.0.1"),
            "127.0.0.1: loopback, private".to_string(),
        ),
        (
            format!("url=http://localhost:{port}/x allow_hosts=localhost"),
            "localhost resolves to".to_string(),
        ),
    ] {
        let d = load(&guest("webhook"), &engines, &args).await.unwrap();
        let f = failed(deliver(&d, &txn).await);
        assert!(!f.retryable, "{args}: {f:?}");
        assert!(
            f.reason.contains("refused by the sandbox") && f.reason.contains(&why),
            "{args}: {}",
            f.reason
        );
    }
    assert!(server.requests().is_empty(), "nothing reached the server");
}

/// The webhook's HTTP timeout is `http_timeout_msecs` (the sandbox takes
/// `timeout_msecs`): 100 ms against a server answering after 500 ms times out
/// (retryably); the default waits long enough.
#[tokio::test(flavor = "multi_thread")]
async fn webhook_http_timeout_msecs_bounds_the_wait() {
    let server = RecordingServer::start().await;
    server.set_default(Reply::Status {
        status: 200,
        headers: Vec::new(),
        delay: std::time::Duration::from_millis(500),
    });
    let engines = Arc::new(Engines::new(None));
    let txn = Arc::new(mailbox_txn("a@example.com", "t1"));
    let base = format!(
        "url={} allow_hosts=127.0.0.1 allow_private",
        server.url("/h")
    );
    let d = load(
        &guest("webhook"),
        &engines,
        &format!("{base} http_timeout_msecs=100"),
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let f = failed(deliver(&d, &txn).await);
    assert!(f.retryable && f.reason.contains("timeout"), "{f:?}");
    assert!(
        started.elapsed() < std::time::Duration::from_millis(450),
        "{:?}",
        started.elapsed()
    );
    let d = load(&guest("webhook"), &engines, &base).await.unwrap();
    assert_eq!(deliver(&d, &txn).await, Outcome::Delivered);
}

/// Waiting for an HTTP response is not guest CPU time: a 20 ms `timeout_msecs` does
/// not fail a webhook whose server takes 300 ms to answer.
#[tokio::test(flavor = "multi_thread")]
async fn http_wait_is_not_charged_to_the_cpu_deadline() {
    let server = RecordingServer::start().await;
    server.set_default(Reply::Status {
        status: 200,
        headers: Vec::new(),
        delay: std::time::Duration::from_millis(300),
    });
    let engines = Arc::new(Engines::new(None));
    let d = load(
        &guest("webhook"),
        &engines,
        &format!(
            "url={} allow_hosts=127.0.0.1 allow_private timeout_msecs=20",
            server.url("/h")
        ),
    )
    .await
    .unwrap();
    let txn = Arc::new(mailbox_txn("a@example.com", "t1"));
    assert_eq!(deliver(&d, &txn).await, Outcome::Delivered);
    assert_eq!(server.requests().len(), 1);
}

/// With `instance=reuse`, an instance whose transaction failed — an error result from
/// the guest, or a transaction refused for `max_event_bytes` — is discarded: the next
/// transaction gets a fresh instance.
#[tokio::test(flavor = "multi_thread")]
async fn reuse_discards_the_instance_after_a_failed_transaction() {
    let engines = Arc::new(Engines::new(None));
    let txn = Arc::new(mailbox_txn("a@example.com", "t"));
    let n = |d: &WasmDriver| {
        d.stats()
            .instances
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    for args in [
        "mode=fail-retryable instance=reuse",
        "mode=ok instance=reuse max_event_bytes=64",
    ] {
        let d = load(&guest("hostile"), &engines, args).await.unwrap();
        assert_eq!(n(&d), 1, "the probe, kept warm");
        for _ in 0..3 {
            assert!(matches!(deliver(&d, &txn).await, Outcome::Failed(_)));
        }
        assert_eq!(
            n(&d),
            3,
            "{args}: the probe served the first transaction, a new instance each later one"
        );
    }
}

/// `fuel=` drivers report the fuel they burn: `init` in every instance with
/// `init=per-instance` (in the probe, at load); with a snapshot, `init` ran before the
/// driver existed, and transactions still burn fuel.
#[tokio::test(flavor = "multi_thread")]
async fn fuel_used_is_reported() {
    let engines = Arc::new(Engines::new(None));
    for (args, init_burns) in [
        ("mode=ok fuel=100000000 init=per-instance", true),
        ("mode=ok fuel=100000000", false),
    ] {
        let d = load(&guest("hostile"), &engines, args).await.unwrap();
        let fuel = |d: &WasmDriver| {
            d.counters()
                .into_iter()
                .find(|(k, _)| *k == "wasm_fuel_used")
                .map(|(_, v)| v)
                .expect("wasm_fuel_used counter")
        };
        let after_init = fuel(&d);
        assert_eq!(after_init > 0, init_burns, "{args}: {after_init}");
        let txn = Arc::new(mailbox_txn("a@example.com", "t"));
        assert_eq!(deliver(&d, &txn).await, Outcome::Delivered);
        assert!(
            fuel(&d) > after_init,
            "{args}: {} <= {after_init}",
            fuel(&d)
        );
        // Without fuel, nothing is counted.
        let d = load(&guest("hostile"), &engines, "mode=ok").await.unwrap();
        assert_eq!(deliver(&d, &txn).await, Outcome::Delivered);
        assert_eq!(fuel(&d), 0);
    }
}

/// METADATA as the guest sees it: its own user's only (the transaction's embedded
/// METADATA or the store's entry for that user), never another user's, and nothing
/// during init.
#[tokio::test(flavor = "multi_thread")]
async fn metadata_is_limited_to_the_transactions_user() {
    use mailpush_core::{MetadataError, MetadataLookup};
    const KEY: &str = "/private/vendor/vendor.dovecot/http-notify";
    #[derive(Default)]
    struct Store(std::sync::Mutex<Vec<String>>);
    impl MetadataLookup for Store {
        fn get(&self, user: &str, key: &str) -> Result<Option<String>, MetadataError> {
            self.0.lock().unwrap().push(user.to_string());
            Ok((user == "bob@example.com" && key == KEY).then(|| "bob-secret".to_string()))
        }
    }
    let store = Arc::new(Store::default());
    let engines = Arc::new(Engines::new(None));
    let d = load_wasm(
        &guest("hostile"),
        &format!("mode=metadata key={KEY} instance=reuse"),
        &engines,
        store.clone(),
    )
    .await;
    let seen = |txn: &str| {
        let t = Arc::new(Transaction::from_json(txn).unwrap());
        let d = &d;
        async move { failed(deliver(d, &t).await).reason }
    };
    let alice = seen(&format!(
        r#"{{"id":"1","user":"alice@example.com","events":[{{"name":"MailboxCreate","mailbox":"X"}}],"metadata":{{"{KEY}":"alice-own"}}}}"#
    ))
    .await;
    assert_eq!(
        alice,
        r#"metadata for alice@example.com: init=None deliver=Some("alice-own")"#
    );
    let carol = seen(r#"{"id":"2","user":"carol@example.com","events":[{"name":"MailboxCreate","mailbox":"X"}]}"#).await;
    assert_eq!(
        carol, "metadata for carol@example.com: init=None deliver=None",
        "neither bob's entry nor alice's transaction METADATA"
    );
    let bob = seen(
        r#"{"id":"3","user":"bob@example.com","events":[{"name":"MailboxCreate","mailbox":"X"}]}"#,
    )
    .await;
    assert_eq!(
        bob,
        r#"metadata for bob@example.com: init=None deliver=Some("bob-secret")"#
    );
    assert_eq!(
        *store.0.lock().unwrap(),
        ["carol@example.com", "bob@example.com"],
        "the store is asked only for the transaction's own user"
    );
}

/// `mailpush check` compiles the config's components into the AOT cache; with
/// `--prune-cache` it also deletes the artifacts of components no driver of the config
/// uses, and the snapshots made for arguments it no longer has, and keeps its own.
#[test]
fn check_prune_cache_keeps_only_what_the_config_uses() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mailpush.conf");
    let configure = |url: &str| {
        std::fs::write(
            &conf,
            format!(
                "mailpush {{\n state_dir = state\n}}\nplugin {{\n push_notification_driver = wasm:file={} url={url} allow_hosts=127.0.0.1 allow_private\n}}\n",
                guest("webhook").display()
            ),
        )
        .unwrap();
    };
    configure("http://127.0.0.1:9/x");
    let cache = dir.path().join("state/wasm-cache");
    std::fs::create_dir_all(&cache).unwrap();
    let stale = cache.join(format!("{}-0000000000000000.cwasm", "ab".repeat(32)));
    std::fs::write(&stale, vec![0u8; 2 << 20]).unwrap();
    let check = |extra: &[&str]| {
        let out = std::process::Command::new(mailpush_bin())
            .arg("check")
            .args(extra)
            .arg("-c")
            .arg(&conf)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        text
    };
    // A plain check prunes nothing, and caches the driver.
    check(&[]);
    assert!(stale.exists());
    use sha2::Digest as _;
    let sha = hex::encode(sha2::Sha256::digest(
        std::fs::read(guest("webhook")).unwrap(),
    ));
    let ours = || {
        std::fs::read_dir(&cache)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(&sha))
            .count()
    };
    // The component instrumented for snapshots, and its snapshot.
    assert_eq!(ours(), 2);
    let snapshots = || {
        std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("-snap"))
            .collect::<Vec<_>>()
    };
    let old = snapshots();
    // Other arguments: another snapshot; the first one no driver uses any more.
    configure("http://127.0.0.1:9/y");
    let text = check(&["--prune-cache"]);
    assert!(
        text.contains("removed 2 compiled artifact(s) no driver of this config uses"),
        "{text}"
    );
    assert!(!stale.exists());
    let new = snapshots();
    assert_eq!(new.len(), 1, "{new:?}");
    assert_ne!(new, old);
    assert_eq!(ours(), 2, "the config's own artifacts stay");
    // A check that loads the snapshot from the cache keeps it.
    check(&["--prune-cache"]);
    assert_eq!(snapshots(), new);
    assert!(cache.join("cache.key").exists());
}

/// Every event kind reaches a component with every field where it belongs: the hostile
/// driver's `echo` mode answers with the typed events it received (their `Debug`, which
/// the guest's and the host's generated bindings print alike) and whether each event's
/// JSON is part of the transaction's. A second wanted-events shape (one event of three)
/// checks the transaction JSON made for a subset.
#[tokio::test(flavor = "multi_thread")]
async fn every_event_kind_reaches_the_component_field_for_field() {
    use mailpush::wasm::bindings::mailpush::driver::types as wit;
    use mailpush_core::event as ev;
    use mailpush_core::Event;

    let engines = Arc::new(Engines::new(None));
    let d = load(&guest("hostile"), &engines, "mode=echo instance=reuse")
        .await
        .unwrap();
    let new_message = ev::NewMessage {
        mailbox: "INBOX".into(),
        uid: 7,
        uid_validity: 99,
        date: Some(1_700_000_000),
        tz: Some(-120),
        from: Some("Bob <b@x>".into()),
        to: Some("a@x".into()),
        subject: Some("Hi".into()),
        subject_utf8: Some("Hé".into()),
        from_address: Some("b@x".into()),
        from_display_name: Some("Bob".into()),
        to_address: Some("a2@x".into()),
        to_display_name: Some("Al".into()),
        message_id: Some("<m@x>".into()),
        snippet: Some("snip".into()),
        flags: Some(vec!["\\Seen".into()]),
        keywords: Some(vec!["$Junk".into()]),
        unseen: Some(3),
        ..Default::default()
    };
    let msg = ev::MessageRef {
        mailbox: "Work".into(),
        uid: 11,
        uid_validity: 12,
    };
    let wit_msg = wit::MessageRef {
        mailbox: "Work".into(),
        uid: 11,
        uid_validity: 12,
    };
    let wit_new = wit::NewMessage {
        message: wit::MessageRef {
            mailbox: "INBOX".into(),
            uid: 7,
            uid_validity: 99,
        },
        date: Some(1_700_000_000),
        tz: Some(-120),
        from: Some("Bob <b@x>".into()),
        to: Some("a@x".into()),
        subject: Some("Hi".into()),
        subject_utf8: Some("Hé".into()),
        from_address: Some("b@x".into()),
        from_display_name: Some("Bob".into()),
        to_address: Some("a2@x".into()),
        to_display_name: Some("Al".into()),
        message_id: Some("<m@x>".into()),
        snippet: Some("snip".into()),
        flags: Some(vec!["\\Seen".into()]),
        keywords: Some(vec!["$Junk".into()]),
        unseen: Some(3),
    };
    let mailbox = |name: &str| ev::MailboxRef {
        mailbox: name.into(),
    };
    let cases: Vec<(Event, wit::Event)> = vec![
        (
            Event::MessageNew(new_message.clone()),
            wit::Event::MessageNew(wit_new.clone()),
        ),
        (
            Event::MessageAppend(ev::NewMessage {
                flags: None,
                keywords: None,
                date: None,
                ..new_message.clone()
            }),
            wit::Event::MessageAppend(wit::NewMessage {
                flags: None,
                keywords: None,
                date: None,
                ..wit_new.clone()
            }),
        ),
        (
            Event::MessageExpunge(msg.clone()),
            wit::Event::MessageExpunge(wit_msg.clone()),
        ),
        (
            Event::MessageRead(msg.clone()),
            wit::Event::MessageRead(wit_msg.clone()),
        ),
        (
            Event::MessageTrash(msg.clone()),
            wit::Event::MessageTrash(wit_msg.clone()),
        ),
        (
            Event::FlagsSet(ev::FlagsSet {
                mailbox: "Work".into(),
                uid: 11,
                uid_validity: 12,
                flags: vec!["\\Flagged".into()],
                keywords: vec!["a".into(), "b".into()],
            }),
            wit::Event::FlagsSet(wit::FlagsSet {
                message: wit_msg.clone(),
                flags: vec!["\\Flagged".into()],
                keywords: vec!["a".into(), "b".into()],
            }),
        ),
        (
            Event::FlagsClear(ev::FlagsClear {
                mailbox: "Work".into(),
                uid: 11,
                uid_validity: 12,
                flags: vec!["\\Seen".into()],
                keywords: vec![],
                flags_old: Some(vec!["\\Seen".into(), "\\Answered".into()]),
                keywords_old: None,
            }),
            wit::Event::FlagsClear(wit::FlagsClear {
                message: wit_msg.clone(),
                flags: vec!["\\Seen".into()],
                keywords: vec![],
                flags_old: Some(vec!["\\Seen".into(), "\\Answered".into()]),
                keywords_old: None,
            }),
        ),
        (
            Event::MailboxCreate(mailbox("New")),
            wit::Event::MailboxCreate("New".into()),
        ),
        (
            Event::MailboxDelete(mailbox("Old")),
            wit::Event::MailboxDelete("Old".into()),
        ),
        (
            Event::MailboxRename(ev::MailboxRename {
                mailbox: "To".into(),
                mailbox_old: "From".into(),
            }),
            wit::Event::MailboxRename(wit::MailboxRename {
                mailbox: "To".into(),
                mailbox_old: "From".into(),
            }),
        ),
        (
            Event::MailboxSubscribe(mailbox("S")),
            wit::Event::MailboxSubscribe("S".into()),
        ),
        (
            Event::MailboxUnsubscribe(mailbox("U")),
            wit::Event::MailboxUnsubscribe("U".into()),
        ),
    ];
    assert_eq!(cases.len(), 12, "every event kind");
    for (event, expected) in cases {
        let t = Arc::new(Transaction::new("alice@example.com", vec![event]));
        let got = failed(deliver(&d, &t).await).reason;
        assert_eq!(got, format!("json ok|{:?}", vec![&expected]));
    }
    // The transaction's JSON: all of its events (the encoding shared between drivers),
    // or only the wanted ones (made for this driver).
    let t = Arc::new(Transaction::new(
        "alice@example.com",
        vec![
            Event::MailboxCreate(mailbox("A")),
            Event::MessageRead(msg.clone()),
            Event::MailboxDelete(mailbox("B")),
        ],
    ));
    let only = |events: Vec<Event>| {
        let mut w = (*t).clone();
        w.events = events;
        w.to_json()
    };
    for (args, json) in [
        ("mode=echo-json", t.to_json()),
        (
            "mode=echo-json want=mailbox-delete",
            only(vec![Event::MailboxDelete(mailbox("B"))]),
        ),
    ] {
        let d = load(&guest("hostile"), &engines, args).await.unwrap();
        assert_eq!(failed(deliver(&d, &t).await).reason, json, "{args}");
    }
}

/// A driver's snapshot is kept from eviction while a driver loaded with it lives, not
/// for the life of the process: a tenant replaced with other arguments gives its old
/// snapshot back (else a long-running process kept every snapshot it ever made, past
/// the cache's size bound). Two drivers with the same arguments share one hold each.
#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_is_held_only_while_a_driver_uses_it() {
    let dir = tempfile::tempdir().unwrap();
    let engines = Arc::new(Engines::new(Some(dir.path().join("cache"))));
    // The snapshots held (a hold covers a snapshot's artifact and its `.declined`
    // record, whichever there is): by name without the extension.
    let snapshots = || {
        let mut s: Vec<String> = engines
            .in_use()
            .into_iter()
            .filter(|n| n.contains("-snap"))
            .filter_map(|n| n.rsplit_once('.').map(|(stem, _)| stem.to_string()))
            .collect();
        s.sort();
        s.dedup();
        s
    };
    let one = load(&guest("hostile"), &engines, "mode=ok tag=one")
        .await
        .unwrap();
    let held_by_one = snapshots();
    assert_eq!(held_by_one.len(), 1, "{held_by_one:?}");
    let again = load(&guest("hostile"), &engines, "mode=ok tag=one")
        .await
        .unwrap();
    let two = load(&guest("hostile"), &engines, "mode=ok tag=two")
        .await
        .unwrap();
    assert_eq!(snapshots().len(), 2);
    drop(one);
    assert_eq!(snapshots().len(), 2, "`again` still uses tag=one's");
    drop(again);
    let left = snapshots();
    assert_eq!(left.len(), 1);
    assert_ne!(left, held_by_one);
    drop(two);
    assert!(snapshots().is_empty());
    // Nor the instrumented component the snapshots were made with.
    assert!(engines.in_use().is_empty(), "{:?}", engines.in_use());
}

/// A component's compiled code is held the same way: while a driver loaded with it
/// lives. Else a long-running process whose tenants change their component kept every
/// one it ever compiled from eviction, past the cache's size bound.
#[tokio::test(flavor = "multi_thread")]
async fn a_components_compiled_code_is_held_only_while_a_driver_uses_it() {
    let dir = tempfile::tempdir().unwrap();
    let engines = Arc::new(Engines::new(Some(dir.path().join("cache"))));
    let one = load(&guest("hostile"), &engines, "mode=ok init=per-instance")
        .await
        .unwrap();
    let held = engines.in_use();
    let compiled: Vec<&String> = held
        .iter()
        .filter(|n| n.ends_with(".cwasm") && !n.contains("-snap") && !n.contains("-instrumented"))
        .collect();
    assert!(
        compiled
            .iter()
            .any(|n| dir.path().join("cache").join(n).is_file()),
        "{held:?}"
    );
    let two = load(
        &guest("hostile"),
        &engines,
        "mode=ok init=per-instance tag=2",
    )
    .await
    .unwrap();
    drop(one);
    assert_eq!(engines.in_use(), held, "the second driver still uses it");
    drop(two);
    assert!(engines.in_use().is_empty(), "{:?}", engines.in_use());
}

/// A wasm line's key one typo from a sandbox key (or cut short) goes to the component,
/// and the sandbox keeps its default: `check` says so, and names a `url=` host that
/// `allow_hosts` does not grant. The component's own keys (`url`, `secret`) pass quietly.
#[test]
fn check_warns_about_sandbox_keys_given_to_the_component() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mailpush.conf");
    std::fs::write(
        &conf,
        format!("mailpush {{\n state_dir = state\n}}\nplugin {{\n push_notification_driver = wasm:file={} url=http://h.example/x secret=whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ= allow_host=h.example memmory=1M timeout_ms=5\n}}\n", guest("webhook").display()),
    )
    .unwrap();
    let (code, all) = run_check(&conf);
    assert_eq!(code, Some(0), "{all}");
    for (typed, meant) in [
        ("allow_host", "allow_hosts"),
        ("memmory", "memory"),
        ("timeout_ms", "timeout_msecs"),
    ] {
        assert!(
            all.contains(&format!("`{typed}` is not a mailpush key: it goes to the component as its own argument, and the sandbox keeps its default. Did you mean {meant}?")),
            "{typed}\n{all}"
        );
    }
    assert!(
        all.contains("url's host h.example is not in allow_hosts"),
        "{all}"
    );
    assert!(
        !all.contains("`url` is not") && !all.contains("`secret` is not"),
        "{all}"
    );
}
