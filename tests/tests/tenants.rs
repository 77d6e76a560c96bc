//! Tenant handlers: a tenant_drivers directory changed while transactions flow — none
//! lost, none delivered to the wrong tenant, none delivered twice; and one tenant's dead
//! endpoint opens only that endpoint's circuit, never holding back other tenants.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailpush::pipeline::Backpressure;
use mailpush::pipeline::{deliver, Dispatcher, Outcome};
use mailpush::spool::sqlite::SqliteSpool;
use mailpush::spool::Spool;
use mailpush_core::CircuitState;
use mailpush_core::Transaction;
use mailpush_e2e::*;

fn put_tenant(dir: &std::path::Path, domain: &str, url: &str) {
    put_tenant_with(dir, domain, url, "");
}

fn put_tenant_with(dir: &std::path::Path, domain: &str, url: &str, extra: &str) {
    // Atomic replacement: write beside, then rename.
    let tmp = dir.join(format!(".{domain}.tmp"));
    std::fs::copy(guest("webhook"), &tmp).unwrap();
    std::fs::write(
        dir.join(format!(".{domain}.conf.tmp")),
        format!("# tenant {domain}\nurl={url}\nallow_hosts=127.0.0.1 allow_private\n{extra}\n"),
    )
    .unwrap();
    std::fs::rename(
        dir.join(format!(".{domain}.conf.tmp")),
        dir.join(format!("{domain}.conf")),
    )
    .unwrap();
    std::fs::rename(&tmp, dir.join(format!("{domain}.wasm"))).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn tenant_directory_changes_while_transactions_flow() {
    let server = RecordingServer::start().await;
    let root = tempfile::tempdir().unwrap();
    let tenants = root.path().join("tenants");
    std::fs::create_dir(&tenants).unwrap();
    put_tenant(&tenants, "a.example", &server.url("/a.example/v1"));
    put_tenant(&tenants, "b.example", &server.url("/b.example/v1"));
    let config = write_config(
        root.path(),
        "mailpush {\n state_dir = state\n tenant_drivers = tenants\n}\n",
    );
    let loaded = load_drivers(&TestDrivers::new().registry(), &config).await;
    assert_eq!(loaded.len(), 1);
    assert!(
        loaded[0]
            .details
            .iter()
            .any(|l| l.contains("tenant a.example")),
        "{:?}",
        loaded[0].details
    );
    // Each request takes a while, so the first round is still flowing when the
    // directory changes.
    // (The tenant lane delivers up to 16 at once: 200 ms makes the 30 transactions of a
    // round take at least two waves.)
    server.set_default(Reply::Status {
        status: 200,
        headers: Vec::new(),
        delay: Duration::from_millis(200),
    });
    let d = Dispatcher::start(loaded, 1024, None);
    let batch = |round: usize| -> Vec<Transaction> {
        let mut out = Vec::new();
        for i in 0..10 {
            for domain in ["a.example", "b.example", "c.example"] {
                out.push(mailbox_txn(
                    &format!("user{i}@{domain}"),
                    &format!("r{round}-{i}-{domain}"),
                ));
            }
        }
        out
    };
    let mut sent = batch(0);
    for t in &sent {
        d.accept(vec![t.clone()], Backpressure::Wait).await.unwrap();
    }
    // While those flow (a.example's first version has answered at least once): remove
    // b, add c, re-point a.
    let mut n = 1;
    while !server
        .wait_for(n, Duration::from_secs(20))
        .await
        .iter()
        .any(|r| r.target == "/a.example/v1")
    {
        n += 1;
    }
    let before_swap = server.requests().len();
    std::fs::remove_file(tenants.join("b.example.wasm")).unwrap();
    put_tenant(&tenants, "c.example", &server.url("/c.example/v1"));
    put_tenant(&tenants, "a.example", &server.url("/a.example/v2"));
    let second = batch(1);
    for t in &second {
        d.accept(vec![t.clone()], Backpressure::Wait).await.unwrap();
    }
    sent.extend(second);
    let reports = d.shutdown().await;
    assert_eq!(reports[0].failed, 0, "{reports:?}");

    let reqs = server.requests();
    // The lane's wasm counters are its tenants' summed, the replaced (a's first version)
    // and the removed (b) included: at least one instance per request sent.
    let instances = reports[0]
        .counters
        .iter()
        .find(|(n, _)| n == "wasm_instances")
        .map(|(_, n)| *n);
    assert!(
        instances >= Some(reqs.len() as u64),
        "{} requests, counters {:?}",
        reqs.len(),
        reports[0].counters
    );
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut a_paths = Vec::new();
    for r in &reqs {
        let txn = Transaction::from_json(&r.body_text()).unwrap();
        *seen.entry(txn.id.clone()).or_default() += 1;
        let domain = txn.user.rsplit_once('@').unwrap().1.to_string();
        assert!(
            r.target.starts_with(&format!("/{domain}/")),
            "{} delivered to {}",
            txn.user,
            r.target
        );
        if domain == "a.example" {
            a_paths.push(r.target.clone());
        }
    }
    assert!(
        seen.values().all(|&c| c == 1),
        "no transaction delivered twice"
    );
    // a.example's file was present throughout: every one of its transactions arrived,
    // each user's in order, first to v1 and then (after the swap) only to v2.
    for i in 0..10 {
        let user = format!("user{i}@a.example");
        let a_sent: Vec<_> = sent
            .iter()
            .filter(|t| t.user == user)
            .map(|t| t.id.clone())
            .collect();
        let (a_got, paths): (Vec<_>, Vec<_>) = reqs
            .iter()
            .map(|r| (Transaction::from_json(&r.body_text()).unwrap(), &r.target))
            .filter(|(t, _)| t.user == user)
            .map(|(t, p)| (t.id, p.clone()))
            .unzip();
        assert_eq!(a_got, a_sent, "{user}");
        let first_v2 = paths
            .iter()
            .position(|p| p.ends_with("/v2"))
            .expect("the replacement took effect");
        assert!(
            paths[first_v2..].iter().all(|p| p.ends_with("/v2")),
            "{user}: {paths:?}"
        );
    }
    assert!(a_paths.iter().any(|p| p.ends_with("/v2")));
    // The swap happened while transactions flowed: the old version handled some of the
    // first round, the new one the rest of it.
    assert!(before_swap < 30, "{before_swap} requests before the swap");
    let a_round0: Vec<&String> = reqs
        .iter()
        .filter(|r| r.target.starts_with("/a.example/"))
        .filter(|r| {
            Transaction::from_json(&r.body_text())
                .unwrap()
                .id
                .starts_with("r0-")
        })
        .map(|r| &r.target)
        .collect();
    assert!(
        a_round0.iter().any(|p| p.ends_with("/v1")) && a_round0.iter().any(|p| p.ends_with("/v2")),
        "first round of a.example went to {a_round0:?}"
    );
    // The second round was dispatched after the directory changes: b gets none of it,
    // c gets all of it.
    for t in sent.iter().filter(|t| t.id.starts_with("r1-")) {
        let got = seen.contains_key(&t.id);
        if t.user.ends_with("@b.example") {
            assert!(!got, "{} delivered after b was removed", t.id);
        } else {
            assert!(got, "{} lost", t.id);
        }
    }
}

/// Per-endpoint circuit breakers in the tenant lane: a.example's endpoint fails, its
/// circuit opens after `breaker_min` failures and stops the requests to it, while
/// b.example's transactions flow on through the same lane (which has no driver-wide
/// breaker). When the endpoint recovers, the probe closes the circuit and a.example's
/// transactions arrive, in order per user, none dead-lettered.
#[tokio::test(flavor = "multi_thread")]
async fn one_tenants_dead_endpoint_does_not_hold_back_the_others() {
    let bad = RecordingServer::start().await;
    // Retry-After: 0 makes the lane retry at once (the default schedule is seconds).
    bad.set_default(Reply::with_header(503, "retry-after", "0"));
    let good = RecordingServer::start().await;
    let root = tempfile::tempdir().unwrap();
    let tenants = root.path().join("tenants");
    std::fs::create_dir(&tenants).unwrap();
    put_tenant_with(
        &tenants,
        "a.example",
        &bad.url("/a"),
        "breaker_min=2 breaker_window=4 breaker_open=300ms",
    );
    put_tenant(&tenants, "b.example", &good.url("/b"));
    let config = write_config(
        root.path(),
        "mailpush {\n state_dir = state\n tenant_drivers = tenants\n}\n",
    );
    let loaded = load_drivers(&TestDrivers::new().registry(), &config).await;
    let spool = SqliteSpool::open(&root.path().join("spool.db"), 1 << 30).unwrap();
    let d = Dispatcher::start_with_spool(loaded, 64, None, Some(spool.clone() as Arc<dyn Spool>));

    let a: Vec<Transaction> = (0..6)
        .map(|i| mailbox_txn(&format!("u{}@a.example", i % 3), &format!("a{i}")))
        .collect();
    d.accept(a.clone(), Backpressure::Refuse).await.unwrap();
    // a.example's endpoint circuit opens; the lane's own circuit stays closed.
    let deadline = Instant::now() + Duration::from_secs(10);
    let endpoint = bad.url("").trim_end_matches('/').to_string();
    loop {
        let r = &d.reports()[0];
        if r.endpoints.iter().any(|e| e.state == CircuitState::Open) {
            assert_eq!(r.endpoints.len(), 1, "{:?}", r.endpoints);
            assert_eq!(r.endpoints[0].endpoint, endpoint);
            assert_eq!(r.endpoints[0].scope.as_deref(), Some("a.example"));
            assert_eq!(r.circuit, CircuitState::Closed);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the endpoint circuit never opened: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The circuit opened after breaker_min=2 failures; the lane delivers for several users
    // at once, so a few more requests (of other users, or immediate retries) may have
    // been out already when it opened.
    let at_open = bad.requests().len();
    assert!((2..=6).contains(&at_open), "{at_open} requests");
    // b.example flows on while a.example's circuit is open.
    let b: Vec<Transaction> = (0..6)
        .map(|i| mailbox_txn(&format!("u{i}@b.example"), &format!("b{i}")))
        .collect();
    d.accept(b, Backpressure::Refuse).await.unwrap();
    good.wait_for(6, Duration::from_secs(10)).await;
    assert_eq!(
        bad.requests().len(),
        at_open,
        "no requests reach an endpoint whose circuit is open"
    );
    // Recovery: the half-open probe succeeds and everything of a.example arrives.
    bad.set_default(Reply::status(200));
    let got = bad
        .wait_for(at_open + a.len(), Duration::from_secs(20))
        .await;
    let users: Vec<String> = ["u0@a.example", "u1@a.example", "u2@a.example"]
        .map(String::from)
        .to_vec();
    assert_each_users_order(&a, &got[at_open..], &users);
    let r = &d.reports()[0];
    assert_eq!(r.dead_lettered, 0, "{r:?}");
    assert!(
        r.endpoints.iter().all(|e| e.state == CircuitState::Closed),
        "{:?}",
        r.endpoints
    );
    d.shutdown().await;
}

/// `bytes` with a custom section appended so that it is `len` bytes long (a component
/// that behaves the same).
fn padded(mut bytes: Vec<u8>, len: usize) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    let gap = len - bytes.len();
    // id (1) + size (LEB) + name length (1) + "pad" (3) + payload
    let payload = (0..gap)
        .rev()
        .find(|&p| {
            let mut size = Vec::new();
            leb(4 + p, &mut size);
            1 + size.len() + 4 + p == gap
        })
        .expect("a padding length fits");
    bytes.push(0);
    leb(4 + payload, &mut bytes);
    bytes.push(3);
    bytes.extend_from_slice(b"pad");
    bytes.extend(std::iter::repeat_n(0u8, payload));
    assert_eq!(bytes.len(), len);
    bytes
}

/// A tenant's component replaced by one of the same size and mtime (`cp -p`, `rsync
/// -t`) is still seen: by rename (new inode) and by rewriting in place (new ctime).
#[tokio::test(flavor = "multi_thread")]
async fn replacement_keeping_size_and_mtime_is_seen() {
    let server = RecordingServer::start().await;
    let root = tempfile::tempdir().unwrap();
    let tenants = root.path().join("tenants");
    std::fs::create_dir(&tenants).unwrap();
    let webhook = std::fs::read(guest("webhook")).unwrap();
    let hostile = std::fs::read(guest("hostile")).unwrap();
    let len = webhook.len().max(hostile.len()) + 64;
    let (webhook, hostile) = (padded(webhook, len), padded(hostile, len));
    let wasm = tenants.join("a.example.wasm");
    std::fs::write(&wasm, &webhook).unwrap();
    // Both components accept these args: the webhook posts, the hostile one fails.
    std::fs::write(
        tenants.join("a.example.conf"),
        format!(
            "url={} mode=fail-retryable allow_hosts=127.0.0.1 allow_private\n",
            server.url("/a")
        ),
    )
    .unwrap();
    let mtime = std::fs::metadata(&wasm).unwrap().modified().unwrap();
    let config = write_config(
        root.path(),
        "mailpush {\n state_dir = state\n tenant_drivers = tenants\n}\n",
    );
    let loaded = load_drivers(&TestDrivers::new().registry(), &config).await;
    let d = loaded[0].driver.as_ref();
    let txn = Arc::new(mailbox_txn("u@a.example", "t1"));
    assert_eq!(deliver(d, &txn).await, Outcome::Delivered);
    assert_eq!(server.requests().len(), 1);

    // Replaced by rename with a file of the same size and mtime.
    let tmp = tenants.join(".a.example.tmp");
    std::fs::write(&tmp, &hostile).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&tmp)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    std::fs::rename(&tmp, &wasm).unwrap();
    let Outcome::Failed(f) = deliver(d, &txn).await else {
        panic!("the replacement was not seen")
    };
    assert!(f.reason.contains("failing on purpose"), "{f:?}");

    // Rewritten in place (same inode), size and mtime kept.
    let mut file = std::fs::File::options()
        .write(true)
        .truncate(true)
        .open(&wasm)
        .unwrap();
    std::io::Write::write_all(&mut file, &webhook).unwrap();
    file.set_modified(mtime).unwrap();
    drop(file);
    assert_eq!(deliver(d, &txn).await, Outcome::Delivered);
    assert_eq!(server.requests().len(), 2);
}

/// A bad or half-written `<domain>.conf` fails that domain's transactions retryably
/// (they wait for the fix, like with a bad `.wasm`), never permanently; other domains
/// are unaffected.
#[tokio::test(flavor = "multi_thread")]
async fn a_bad_tenant_conf_fails_retryably() {
    let server = RecordingServer::start().await;
    let root = tempfile::tempdir().unwrap();
    let tenants = root.path().join("tenants");
    std::fs::create_dir(&tenants).unwrap();
    put_tenant(&tenants, "a.example", &server.url("/a"));
    put_tenant(&tenants, "b.example", &server.url("/b"));
    let config = write_config(
        root.path(),
        "mailpush {\n state_dir = state\n tenant_drivers = tenants\n}\n",
    );
    let loaded = load_drivers(&TestDrivers::new().registry(), &config).await;
    let d = loaded[0].driver.as_ref();
    let a = Arc::new(mailbox_txn("u@a.example", "a1"));
    let b = Arc::new(mailbox_txn("u@b.example", "b1"));
    let conf = tenants.join("a.example.conf");
    let good = std::fs::read(&conf).unwrap();
    for (bad, why) in [
        // A bad sandbox value, at its line.
        (
            b"# limits\nmemory=lots\n".to_vec(),
            "a.example.conf:2: memory=lots",
        ),
        // Cut off in the middle of a value (`memory=32M` half written).
        (b"memory=3".to_vec(), "memory=3"),
        // Cut off in the middle of a UTF-8 sequence.
        (
            [&good[..], "# \u{e4}".as_bytes()].concat()[..good.len() + 3].to_vec(),
            "a.example.conf",
        ),
    ] {
        std::fs::write(&conf, &bad).unwrap();
        let Outcome::Failed(f) = deliver(d, &a).await else {
            panic!("a bad conf must fail: {}", String::from_utf8_lossy(&bad))
        };
        assert!(f.retryable, "{f:?}");
        assert!(
            f.reason.contains("tenant a.example") && f.reason.contains(why),
            "{f:?}"
        );
        assert_eq!(deliver(d, &b).await, Outcome::Delivered);
    }
    std::fs::write(&conf, &good).unwrap();
    assert_eq!(deliver(d, &a).await, Outcome::Delivered);
    let targets: Vec<String> = server.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/b", "/b", "/b", "/a"]);
}

/// The tenant-filter example forwards exactly the new messages matching all its rules
/// (folder, sender domain, flags), each event's JSON POSTed with the transaction id.
#[tokio::test(flavor = "multi_thread")]
async fn tenant_filter_forwards_only_matching_messages() {
    let server = RecordingServer::start().await;
    let root = tempfile::tempdir().unwrap();
    let tenants = root.path().join("tenants");
    std::fs::create_dir(&tenants).unwrap();
    std::fs::copy(guest("tenant-filter"), tenants.join("a.example.wasm")).unwrap();
    std::fs::write(
        tenants.join("a.example.conf"),
        format!(
            "# forward flagged mail from example.org into INBOX or Work\nurl={}\nfolders=INBOX,Work from_domains=example.org,Example.NET flags=\\Flagged\nallow_hosts=127.0.0.1 allow_private\n",
            server.url("/filter")
        ),
    )
    .unwrap();
    // A second tenant with only a folder rule.
    std::fs::copy(guest("tenant-filter"), tenants.join("b.example.wasm")).unwrap();
    std::fs::write(
        tenants.join("b.example.conf"),
        format!(
            "url={} folders=Work allow_hosts=127.0.0.1 allow_private\n",
            server.url("/b")
        ),
    )
    .unwrap();
    let config = write_config(
        root.path(),
        "mailpush {\n state_dir = state\n tenant_drivers = tenants\n}\n",
    );
    let loaded = load_drivers(&TestDrivers::new().registry(), &config).await;
    let d = loaded[0].driver.as_ref();
    let msg = |name: &str, mailbox: &str, from: Option<&str>, flags: &[&str]| {
        let mut e = format!(
            r#"{{"name":"{name}","mailbox":"{mailbox}","uid":7,"uid_validity":1,"flags":{}"#,
            serde_json::to_string(flags).unwrap()
        );
        if let Some(f) = from {
            e.push_str(&format!(r#","from_address":"{f}""#));
        }
        e.push('}');
        e
    };
    let cases: Vec<(&str, &str, String, bool)> = vec![
        ("hit-inbox", "u@a.example", msg("MessageNew", "INBOX", Some("x@example.org"), &["\\Flagged"]), true),
        ("hit-work-append", "u@a.example", msg("MessageAppend", "Work", Some("y@EXAMPLE.NET"), &["\\Seen", "\\Flagged"]), true),
        ("wrong-folder", "u@a.example", msg("MessageNew", "Spam", Some("x@example.org"), &["\\Flagged"]), false),
        ("wrong-domain", "u@a.example", msg("MessageNew", "INBOX", Some("x@example.com"), &["\\Flagged"]), false),
        ("subdomain", "u@a.example", msg("MessageNew", "INBOX", Some("x@mail.example.org"), &["\\Flagged"]), false),
        ("no-sender", "u@a.example", msg("MessageNew", "INBOX", None, &["\\Flagged"]), false),
        ("not-flagged", "u@a.example", msg("MessageNew", "INBOX", Some("x@example.org"), &["\\Seen"]), false),
        ("not-a-new-message", "u@a.example", r#"{"name":"FlagsSet","mailbox":"INBOX","uid":7,"uid_validity":1,"flags":["\\Flagged"]}"#.to_string(), false),
        ("b-work", "u@b.example", msg("MessageNew", "Work", None, &[]), true),
        ("b-inbox", "u@b.example", msg("MessageNew", "INBOX", Some("x@example.org"), &["\\Flagged"]), false),
        ("no-tenant", "u@c.example", msg("MessageNew", "INBOX", Some("x@example.org"), &["\\Flagged"]), false),
    ];
    for (id, user, event, _) in &cases {
        let txn = Arc::new(
            Transaction::from_json(&format!(
                r#"{{"id":"{id}","user":"{user}","events":[{event}]}}"#
            ))
            .unwrap(),
        );
        let out = deliver(d, &txn).await;
        assert!(
            matches!(out, Outcome::Delivered | Outcome::Skipped),
            "{id}: {out:?}"
        );
    }
    let reqs = server.requests();
    let forwarded: Vec<(&str, &str)> = reqs
        .iter()
        .map(|r| (r.header("webhook-id").unwrap_or("?"), r.target.as_str()))
        .collect();
    assert_eq!(
        forwarded,
        [
            ("hit-inbox", "/filter"),
            ("hit-work-append", "/filter"),
            ("b-work", "/b")
        ]
    );
    for r in &reqs {
        assert_eq!(r.method, "POST");
        assert_eq!(r.header("content-type"), Some("application/json"));
        // The body is the matching event's canonical JSON.
        let case = cases
            .iter()
            .find(|c| Some(c.0) == r.header("webhook-id"))
            .unwrap();
        let sent: serde_json::Value = serde_json::from_str(&case.2).unwrap();
        let got: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(got["name"], sent["name"]);
        assert_eq!(got["mailbox"], sent["mailbox"]);
    }
    assert!(cases.iter().filter(|c| c.3).count() == reqs.len());
}

/// A tenant whose files fail to load is not loaded again for each transaction (each
/// would repeat the instrumenting, a snapshot's `init`, the compile): its transactions
/// fail retryably, with a retry delay, until its files change; then it loads at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_that_fails_to_load_is_not_reloaded_per_transaction() {
    let server = RecordingServer::start().await;
    let root = tempfile::tempdir().unwrap();
    let tenants = root.path().join("tenants");
    std::fs::create_dir(&tenants).unwrap();
    // No url: the webhook's init refuses its arguments.
    std::fs::copy(guest("webhook"), tenants.join("c.example.wasm")).unwrap();
    std::fs::write(tenants.join("c.example.conf"), "allow_hosts=127.0.0.1\n").unwrap();
    let config = write_config(
        root.path(),
        "mailpush {\n state_dir = state\n tenant_drivers = tenants\n}\n",
    );
    let loaded = load_drivers(&TestDrivers::new().registry(), &config).await;
    let d = loaded[0].driver.as_ref();
    let txn = |id: &str| Arc::new(mailbox_txn("u@c.example", id));
    let Outcome::Failed(first) = deliver(d, &txn("c1")).await else {
        panic!("the load must fail")
    };
    assert!(
        first.retryable && first.reason.contains("cannot load"),
        "{first:?}"
    );
    let Outcome::Failed(again) = deliver(d, &txn("c2")).await else {
        panic!("still failing")
    };
    assert!(
        again.retryable
            && again.reason.contains("not loaded again for")
            && again
                .retry_after
                .is_some_and(|r| r <= Duration::from_secs(30)),
        "{again:?}"
    );
    put_tenant(&tenants, "c.example", &server.url("/c"));
    assert_eq!(deliver(d, &txn("c3")).await, Outcome::Delivered);
}

/// `mailpush check` with a tenant handler that does not load: mailpush would start (the
/// other tenants are served), but the check says which tenant failed and exits 3, so a
/// deployment script stops on it; once the file is fixed, it exits 0.
#[test]
fn check_exits_3_when_a_tenant_handler_does_not_load() {
    let root = tempfile::tempdir().unwrap();
    let tenants = root.path().join("tenants");
    std::fs::create_dir(&tenants).unwrap();
    put_tenant(&tenants, "good.example", "http://127.0.0.1:9/good");
    std::fs::write(tenants.join("broken.example.wasm"), b"not a component").unwrap();
    let config = write_config(
        root.path(),
        "mailpush {\n state_dir = state\n tenant_drivers = tenants\n}\n",
    );
    let check = || run_check(&config.path);
    let (code, all) = check();
    assert_eq!(code, Some(3), "{all}");
    assert!(all.contains("broken.example"), "{all}");
    assert!(all.contains("1 tenant handler problem(s)"), "{all}");
    assert!(all.contains("tenant good.example"), "{all}");
    std::fs::remove_file(tenants.join("broken.example.wasm")).unwrap();
    let (code, all) = check();
    assert_eq!(code, Some(0), "{all}");
    assert!(all.contains("OK: 1 driver(s) ready"), "{all}");
    // A sandbox key mistyped in a tenant's .conf is said, as on a wasm: line (it went
    // to the component without a word, the sandbox keeping its default).
    put_tenant_with(
        &tenants,
        "typo.example",
        "http://127.0.0.1:9/t",
        "memmory=8M",
    );
    // A warning under the tenant, not a tenant that failed to load: exit 0.
    let (code, all) = check();
    assert_eq!(code, Some(0), "{all}");
    assert!(
        all.contains(
            "warning: tenant typo.example: typo.example.conf:4: `memmory` is not a mailpush key"
        ) && all.contains("Did you mean memory?"),
        "{all}"
    );
}
