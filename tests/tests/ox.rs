//! The native ox driver against a real HTTP server on 127.0.0.1 that records each
//! request. Expected requests come from Dovecot 2.3's ox driver (dovecot-push.md §7.3):
//!
//! ```text
//! PUT /preliminary/http-notify/v1/notify HTTP/1.1
//! Authorization: Basic bG9naW46cGFzcw==        (only with login:password@ in the url)
//! Content-Type: application/json; charset=utf-8
//!
//! {"user":"…","event":"messageNew","folder":"INBOX","imap-uidvalidity":N,"imap-uid":N[,"from":"…"][,"subject":"…"][,"snippet":"…"][,"unseen":N]}
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailpush::config::Config;
use mailpush::dispatch::{deliver, Outcome};
use mailpush::registry::DriverRegistry;
use mailpush_core::{Driver, MetadataError, MetadataLookup, Transaction};
use mailpush_e2e::*;
use mailpush_ox::activation::ManualClock;

const KEY: &str = "/private/vendor/vendor.dovecot/http-notify";

#[derive(Default)]
struct Meta(Mutex<HashMap<String, String>>);

impl Meta {
    fn set(&self, user: &str, v: &str) {
        self.0
            .lock()
            .unwrap()
            .insert(user.to_string(), v.to_string());
    }
}

impl MetadataLookup for Meta {
    fn get(&self, user: &str, key: &str) -> Result<Option<String>, MetadataError> {
        assert_eq!(key, KEY);
        Ok(self.0.lock().unwrap().get(user).cloned())
    }
}

struct Ox {
    driver: Arc<dyn Driver>,
    meta: Arc<Meta>,
    clock: Arc<ManualClock>,
    warnings: Vec<String>,
    _dir: tempfile::TempDir,
}

async fn ox(args: &str) -> Ox {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.conf");
    std::fs::write(&path, format!("mailpush {{\n state_dir = st\n}}\nplugin {{\n push_notification_driver = ox:{args}\n}}\n")).unwrap();
    let config = Config::load(&path).unwrap();
    let clock = Arc::new(ManualClock::default());
    let mut registry = DriverRegistry::default();
    registry.register(Arc::new(mailpush_ox::OxFactory::with_clock(clock.clone())));
    let meta = Arc::new(Meta::default());
    meta.set("alice@example.com", "user=11@3");
    let Ok(mut loaded) = registry.init_all(&config, meta.clone()).await else {
        panic!("ox init")
    };
    let d = loaded.remove(0);
    Ox {
        driver: d.driver,
        meta,
        clock,
        warnings: d.warnings,
        _dir: dir,
    }
}

fn txn(events: &str) -> Arc<Transaction> {
    Arc::new(
        Transaction::from_json(&format!(
            r#"{{"user":"alice@example.com","events":[{events}]}}"#
        ))
        .unwrap(),
    )
}

fn new_msg(extra: &str) -> String {
    format!(
        r#"{{"name":"MessageNew","mailbox":"INBOX","uid":42,"uid_validity":1700000000{extra}}}"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn exact_bodies_and_headers() {
    let server = RecordingServer::start().await;
    let url = server
        .url("/preliminary/http-notify/v1/notify")
        .replace("http://", "http://login:pass@");
    let o = ox(&format!("url={url}")).await;
    let cases = [
        (new_msg(r#","from":"Bob <bob@example.com>","subject":"Hello","snippet":"Hi there","unseen":3"#),
         r#"{"user":"alice@example.com","event":"messageNew","folder":"INBOX","imap-uidvalidity":1700000000,"imap-uid":42,"from":"Bob <bob@example.com>","subject":"Hello","snippet":"Hi there","unseen":3}"#.to_string()),
        (new_msg(r#","from":"=?utf-8?q?=C3=84?= <a@b.org>","subject":"Test =?utf-8?q?p=C3=A4iv=C3=A4=C3=A4?=""#),
         r#"{"user":"alice@example.com","event":"messageNew","folder":"INBOX","imap-uidvalidity":1700000000,"imap-uid":42,"from":"=?utf-8?q?=C3=84?= <a@b.org>","subject":"Test =?utf-8?q?p=C3=A4iv=C3=A4=C3=A4?="}"#.to_string()),
        (new_msg(r#","snippet":"q\"b\\n\nt\tc\u0001\u001f/ä€\u2028""#),
         "{\"user\":\"alice@example.com\",\"event\":\"messageNew\",\"folder\":\"INBOX\",\"imap-uidvalidity\":1700000000,\"imap-uid\":42,\"snippet\":\"q\\\"b\\\\n\\nt\\tc\\u0001\\u001f/ä€\\u2028\"}".to_string()),
        (new_msg(r#","subject_utf8":"Only decoded""#),
         r#"{"user":"alice@example.com","event":"messageNew","folder":"INBOX","imap-uidvalidity":1700000000,"imap-uid":42,"subject":"Only decoded"}"#.to_string()),
    ];
    for (i, (event, expected)) in cases.iter().enumerate() {
        assert_eq!(
            deliver(o.driver.as_ref(), &txn(event)).await,
            Outcome::Delivered
        );
        let r = &server.requests()[i];
        assert_eq!(r.method, "PUT");
        assert_eq!(r.target, "/preliminary/http-notify/v1/notify");
        assert_eq!(
            r.header("content-type"),
            Some("application/json; charset=utf-8")
        );
        assert_eq!(r.header("authorization"), Some("Basic bG9naW46cGFzcw=="));
        assert_eq!(&r.body_text(), expected, "case {i}");
    }
    // user@ without a password: no Authorization.
    let o = ox(&format!(
        "url={}",
        server.url("/x").replace("http://", "http://login@")
    ))
    .await;
    deliver(o.driver.as_ref(), &txn(&new_msg(""))).await;
    assert_eq!(
        server.requests().last().unwrap().header("authorization"),
        None
    );
}

/// (reply, max_retries) → attempts, as Dovecot: retries only on timeout, 408 and 503 with Retry-After.
#[tokio::test(flavor = "multi_thread")]
async fn attempts_follow_dovecots_retry_rules() {
    for (reply, retries, expected) in [
        (Reply::Hang, 0, 1),
        (Reply::Hang, 1, 2),
        (Reply::Hang, 3, 4),
        (Reply::status(408), 0, 1),
        (Reply::status(408), 1, 2),
        (Reply::status(408), 3, 4),
        (Reply::with_header(503, "Retry-After", "0"), 0, 1),
        (Reply::with_header(503, "Retry-After", "0"), 1, 2),
        (Reply::with_header(503, "Retry-After", "0"), 3, 4),
        (Reply::status(503), 3, 1),
        (Reply::status(500), 3, 1),
    ] {
        let server = RecordingServer::start().await;
        server.set_default(reply.clone());
        let o = ox(&format!(
            "url={} max_retries={retries} timeout_msecs=200",
            server.url("/n")
        ))
        .await;
        let start = Instant::now();
        let out = deliver(o.driver.as_ref(), &txn(&new_msg(""))).await;
        assert!(matches!(out, Outcome::Failed(_)), "{out:?}");
        assert_eq!(
            server.requests().len(),
            expected,
            "{reply:?} with max_retries={retries}"
        );
        if matches!(reply, Reply::Hang) {
            // The timeout is per attempt.
            let e = start.elapsed();
            assert!(
                e >= Duration::from_millis(200 * expected as u64)
                    && e < Duration::from_millis(200 * expected as u64 + 1500),
                "{e:?}"
            );
            let Outcome::Failed(f) = out else {
                unreachable!()
            };
            assert!(f.reason.contains("Request timed out"), "{}", f.reason);
        }
    }
    // A refused connection: one attempt, no retry.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let o = ox(&format!("url=http://127.0.0.1:{port}/n max_retries=3")).await;
    let Outcome::Failed(f) = deliver(o.driver.as_ref(), &txn(&new_msg(""))).await else {
        panic!()
    };
    assert!(
        f.reason.contains("Connection failed") && !f.reason.contains("retries"),
        "{}",
        f.reason
    );
    assert!(o.driver.counters().contains(&("ox_retried", 0)));
}

#[tokio::test(flavor = "multi_thread")]
async fn no_request_unless_active_inbox_message_new() {
    let server = RecordingServer::start().await;
    // cache_lifetime=0: every transaction reads METADATA.
    let o = ox(&format!("url={} cache_lifetime=0", server.url("/n"))).await;
    // Not active: METADATA unset.
    o.meta.0.lock().unwrap().clear();
    assert_eq!(
        deliver(o.driver.as_ref(), &txn(&new_msg(""))).await,
        Outcome::Skipped
    );
    // Active, but another folder; another event.
    o.meta.set("alice@example.com", "user=11@3");
    let work = r#"{"name":"MessageNew","mailbox":"Work","uid":1,"uid_validity":1}"#;
    let append = r#"{"name":"MessageAppend","mailbox":"INBOX","uid":1,"uid_validity":1}"#;
    let read = r#"{"name":"MessageRead","mailbox":"INBOX","uid":1,"uid_validity":1}"#;
    for e in [work, append, read] {
        assert_eq!(
            deliver(o.driver.as_ref(), &txn(e)).await,
            Outcome::Delivered
        );
    }
    // No user= in the value: Dovecot's error, no request.
    o.meta.set("alice@example.com", "foo=bar");
    assert_eq!(
        deliver(o.driver.as_ref(), &txn(&new_msg(""))).await,
        Outcome::Skipped
    );
    assert!(server.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn user_or_user_from_metadata() {
    let server = RecordingServer::start().await;
    let plain = ox(&format!("url={}", server.url("/n"))).await;
    let from_meta = ox(&format!("url={} user_from_metadata", server.url("/n"))).await;
    deliver(plain.driver.as_ref(), &txn(&new_msg(""))).await;
    deliver(from_meta.driver.as_ref(), &txn(&new_msg(""))).await;
    let r = server.requests();
    assert!(r[0]
        .body_text()
        .starts_with(r#"{"user":"alice@example.com","#));
    assert!(r[1].body_text().starts_with(r#"{"user":"11@3","#));
}

#[tokio::test(flavor = "multi_thread")]
async fn metadata_is_cached_for_cache_lifetime() {
    let server = RecordingServer::start().await;
    let o = ox(&format!(
        "url={} user_from_metadata cache_lifetime=60s",
        server.url("/n")
    ))
    .await;
    deliver(o.driver.as_ref(), &txn(&new_msg(""))).await;
    o.meta.set("alice@example.com", "user=22@3");
    o.clock.advance(Duration::from_secs(59));
    deliver(o.driver.as_ref(), &txn(&new_msg(""))).await;
    o.clock.advance(Duration::from_secs(2));
    deliver(o.driver.as_ref(), &txn(&new_msg(""))).await;
    let users: Vec<String> = server
        .requests()
        .iter()
        .map(|r| r.body_text()[9..13].to_string())
        .collect();
    assert_eq!(users, ["11@3", "11@3", "22@3"]);
    // A transaction's own metadata wins over store and cache.
    let t = Arc::new(
        Transaction::from_json(&format!(
            r#"{{"user":"alice@example.com","events":[{}],"metadata":{{"{KEY}":"user=33@3"}}}}"#,
            new_msg("")
        ))
        .unwrap(),
    );
    deliver(o.driver.as_ref(), &t).await;
    assert!(server
        .requests()
        .last()
        .unwrap()
        .body_text()
        .starts_with(r#"{"user":"33@3""#));
}

#[tokio::test(flavor = "multi_thread")]
async fn config_errors_and_fallback_warnings() {
    let o = ox("url=http://h/ max_retries=x timeout_msecs=y").await;
    assert_eq!(o.warnings.len(), 2, "{:?}", o.warnings);
    for (args, expected) in [
        ("cache_lifetime=60s", "Driver requires the url parameter"),
        (
            "url=http://h/ cache_lifetime=60",
            "Time interval '60' is missing units",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.conf");
        std::fs::write(&path, format!("mailpush {{\n state_dir = st\n}}\nplugin {{\n push_notification_driver = ox:{args}\n}}\n")).unwrap();
        let config = Config::load(&path).unwrap();
        let Err((_, errors)) = DriverRegistry::default()
            .init_all(&config, Arc::new(mailpush_core::NoMetadata))
            .await
        else {
            panic!()
        };
        assert!(errors[0].to_string().contains(expected), "{}", errors[0]);
    }
}

/// ox-wasm (the component) and the native ox driver send the same request.
#[tokio::test(flavor = "multi_thread")]
async fn ox_wasm_matches_the_native_driver_byte_for_byte() {
    let server = RecordingServer::start().await;
    let url = server
        .url("/preliminary/http-notify/v1/notify")
        .replace("http://", "http://login:pass@");
    let native = ox(&format!("url={url}")).await;
    let dir = tempfile::tempdir().unwrap();
    let conf = format!(
        "mailpush {{\n state_dir = state\n}}\nplugin {{\n push_notification_driver = wasm:file={} url={url} allow_hosts=127.0.0.1 allow_private\n}}\n",
        guest("ox-wasm").display()
    );
    let config = write_config(dir.path(), &conf);
    let loaded = load_drivers(&TestDrivers::new().registry(), &config).await;
    let event = new_msg(
        r#","from":"=?utf-8?q?=C3=84?= <a@b>","subject":"S \"q\"","snippet":"x\ny\u0002ä","unseen":5"#,
    );
    let t = Arc::new(Transaction::from_json(&format!(r#"{{"user":"alice@example.com","events":[{event}],"metadata":{{"{KEY}":"user=11@3"}}}}"#)).unwrap());
    assert_eq!(
        deliver(native.driver.as_ref(), &t).await,
        Outcome::Delivered
    );
    assert_eq!(
        deliver(loaded[0].driver.as_ref(), &t).await,
        Outcome::Delivered
    );
    let r = server.requests();
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].body, r[1].body);
    assert_eq!(r[0].method, r[1].method);
    assert_eq!(r[0].target, r[1].target);
    for h in ["content-type", "authorization", "content-length"] {
        assert_eq!(r[0].header(h), r[1].header(h), "{h}");
    }
}
