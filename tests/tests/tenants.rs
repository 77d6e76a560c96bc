//! Tenant handlers: a tenant_drivers directory changed while transactions flow — none
//! lost, none delivered to the wrong tenant, none delivered twice; and one tenant's dead
//! endpoint opens only that endpoint's circuit, never holding back other tenants.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailpush::dispatch::Dispatcher;
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
        d.dispatch(Arc::new(t.clone())).await.unwrap();
    }
    // While those flow: remove b, add c, re-point a.
    std::fs::remove_file(tenants.join("b.example.wasm")).unwrap();
    put_tenant(&tenants, "c.example", &server.url("/c.example/v1"));
    put_tenant(&tenants, "a.example", &server.url("/a.example/v2"));
    let second = batch(1);
    for t in &second {
        d.dispatch(Arc::new(t.clone())).await.unwrap();
    }
    sent.extend(second);
    let reports = d.shutdown().await;
    assert_eq!(reports[0].failed, 0, "{reports:?}");

    let reqs = server.requests();
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
    // in order, first to v1 and then (after the swap) only to v2.
    let a_sent: Vec<_> = sent
        .iter()
        .filter(|t| t.user.ends_with("@a.example"))
        .map(|t| t.id.clone())
        .collect();
    let a_got: Vec<_> = reqs
        .iter()
        .map(|r| Transaction::from_json(&r.body_text()).unwrap())
        .filter(|t| t.user.ends_with("@a.example"))
        .map(|t| t.id)
        .collect();
    assert_eq!(a_got, a_sent);
    let first_v2 = a_paths
        .iter()
        .position(|p| p.ends_with("/v2"))
        .expect("the replacement took effect");
    assert!(
        a_paths[first_v2..].iter().all(|p| p.ends_with("/v2")),
        "{a_paths:?}"
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
    d.accept(a.clone()).await.unwrap();
    // a.example's endpoint circuit opens; the lane's own circuit stays closed.
    let deadline = Instant::now() + Duration::from_secs(10);
    let endpoint = bad.url("").trim_end_matches('/').to_string();
    loop {
        let r = &d.reports()[0];
        if r.endpoints.iter().any(|e| e.state == CircuitState::Open) {
            assert_eq!(r.endpoints.len(), 1, "{:?}", r.endpoints);
            assert_eq!(r.endpoints[0].endpoint, endpoint);
            assert_eq!(r.endpoints[0].scope.as_deref(), Some("a.example"));
            assert_eq!(r.circuit, "closed");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the endpoint circuit never opened: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        bad.requests().len(),
        2,
        "the circuit opened after breaker_min=2 failures"
    );
    // b.example flows on while a.example's circuit is open.
    let b: Vec<Transaction> = (0..6)
        .map(|i| mailbox_txn(&format!("u{i}@b.example"), &format!("b{i}")))
        .collect();
    d.accept(b).await.unwrap();
    good.wait_for(6, Duration::from_secs(10)).await;
    assert_eq!(
        bad.requests().len(),
        2,
        "no requests reach an endpoint whose circuit is open"
    );
    // Recovery: the half-open probe succeeds and everything of a.example arrives.
    bad.set_default(Reply::status(200));
    let got = bad.wait_for(2 + a.len(), Duration::from_secs(20)).await;
    let delivered: Vec<Transaction> = got[2..]
        .iter()
        .map(|r| Transaction::from_json(&r.body_text()).unwrap())
        .collect();
    for user in ["u0@a.example", "u1@a.example", "u2@a.example"] {
        let sent: Vec<_> = a.iter().filter(|t| t.user == user).map(|t| &t.id).collect();
        let arrived: Vec<_> = delivered
            .iter()
            .filter(|t| t.user == user)
            .map(|t| &t.id)
            .collect();
        assert_eq!(arrived, sent, "{user}: in order, each once");
    }
    let r = &d.reports()[0];
    assert_eq!(r.dead_lettered, 0, "{r:?}");
    assert!(
        r.endpoints.iter().all(|e| e.state == CircuitState::Closed),
        "{:?}",
        r.endpoints
    );
    d.shutdown().await;
}
