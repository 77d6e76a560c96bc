//! Tenant handlers: a tenant_drivers directory changed while transactions flow — none
//! lost, none delivered to the wrong tenant, none delivered twice.

use std::collections::HashMap;
use std::sync::Arc;

use mailpush::dispatch::Dispatcher;
use mailpush_core::Transaction;
use mailpush_e2e::*;

fn put_tenant(dir: &std::path::Path, domain: &str, url: &str) {
    // Atomic replacement: write beside, then rename.
    let tmp = dir.join(format!(".{domain}.tmp"));
    std::fs::copy(guest("webhook"), &tmp).unwrap();
    std::fs::write(
        dir.join(format!(".{domain}.conf.tmp")),
        format!("# tenant {domain}\nurl={url}\nallow_hosts=127.0.0.1 allow_private\n"),
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
