//! The native ox driver against a real HTTP/1.1 server on 127.0.0.1 that records each
//! request (`RecordingServer`), driven through `mailpush::pipeline::deliver`.
//!
//! The expected requests are Dovecot 2.3's ox driver's (`dovecot-push.md` §7.3–7.4). For a
//! delivery to INBOX of a user whose METADATA `/private/vendor/vendor.dovecot/http-notify`
//! is `user=11@3`, with `push_notification_driver = ox:url=http://login:pass@host:8009/preliminary/http-notify/v1/notify`:
//!
//! ```text
//! PUT /preliminary/http-notify/v1/notify HTTP/1.1
//! Host: host:8009
//! Date: Sat, 28 Nov 2026 12:00:00 GMT
//! Authorization: Basic bG9naW46cGFzcw==        (only with login:password@ in the url)
//! Content-Length: 205
//! Connection: Keep-Alive
//! Content-Type: application/json; charset=utf-8
//!
//! {"user":"alice@example.com","event":"messageNew","folder":"INBOX","imap-uidvalidity":1700000000,"imap-uid":42,"from":"Bob <bob@example.com>","subject":"Hello","snippet":"Hi there","unseen":3}
//! ```
//!
//! `from`, `subject`, `snippet` and `unseen` only when known; `user` is the login name, or
//! `11@3` with `user_from_metadata`. 2xx is success; retried (attempts = max_retries + 1)
//! only on a per-attempt timeout, a lost connection, 408, and 503 with a Retry-After
//! within the attempt timeout; never on other statuses or a refused connection; redirects
//! are refused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailpush::config::Config;
use mailpush::metadata_store::MetadataStore;
use mailpush::pipeline::{deliver, Outcome};
use mailpush::registry::DriverRegistry;
use mailpush_core::{Driver, Failure, MetadataError, MetadataLookup, Transaction};
use mailpush_e2e::*;

const KEY: &str = "/private/vendor/vendor.dovecot/http-notify";
const USER: &str = "alice@example.com";

/// METADATA kept by the test (`user → value` of KEY).
#[derive(Default)]
struct Meta(Mutex<HashMap<String, String>>);

impl Meta {
    fn set(&self, user: &str, v: &str) {
        self.0
            .lock()
            .unwrap()
            .insert(user.to_string(), v.to_string());
    }
    fn clear(&self) {
        self.0.lock().unwrap().clear();
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
    warnings: Vec<String>,
    details: Vec<String>,
    _dir: tempfile::TempDir,
}

fn config_with(args: &str) -> (tempfile::TempDir, Config) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "mailpush {{\n state_dir = st\n}}\nplugin {{\n push_notification_driver = ox:{args}\n}}\n"
        ),
    );
    (dir, config)
}

/// An ox driver from a config line, METADATA from a `Meta` (alice → `user=11@3`).
async fn ox(args: &str) -> Ox {
    ox_with_meta(args, Arc::new(Meta::default()), true).await
}

async fn ox_with_meta(args: &str, meta: Arc<Meta>, active: bool) -> Ox {
    let (dir, config) = config_with(args);
    let mut registry = DriverRegistry::default();
    registry.register(Arc::new(mailpush_ox::OxFactory));
    if active {
        meta.set(USER, "user=11@3");
    }
    let Ok(mut loaded) = registry.init_all(&config, meta.clone()).await else {
        panic!("ox init failed for {args}")
    };
    let d = loaded.remove(0);
    Ox {
        driver: d.driver,
        meta,
        warnings: d.warnings,
        details: d.details,
        _dir: dir,
    }
}

fn txn(events: &str) -> Arc<Transaction> {
    Arc::new(
        Transaction::from_json(&format!(r#"{{"user":"{USER}","events":[{events}]}}"#)).unwrap(),
    )
}

fn new_msg(extra: &str) -> String {
    format!(
        r#"{{"name":"MessageNew","mailbox":"INBOX","uid":42,"uid_validity":1700000000{extra}}}"#
    )
}

const PREFIX: &str = r#"{"user":"alice@example.com","event":"messageNew","folder":"INBOX","imap-uidvalidity":1700000000,"imap-uid":42"#;

fn failure(out: Outcome) -> Failure {
    match out {
        Outcome::Failed(f) => f,
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn body_user(r: &Recorded) -> String {
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    v["user"].as_str().unwrap().to_string()
}

/// Whether `d` is an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the Date format
/// Dovecot sends.
fn is_imf_fixdate(d: &str) -> bool {
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let b = d.as_bytes();
    let num = |r: std::ops::Range<usize>, max: u32| {
        d.get(r)
            .filter(|s| s.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|s| s.parse::<u32>().ok())
            .is_some_and(|n| n <= max)
    };
    b.len() == 29
        && DAYS.contains(&&d[..3])
        && &d[3..5] == ", "
        && num(5..7, 31)
        && b[7] == b' '
        && MONTHS.contains(&&d[8..11])
        && b[11] == b' '
        && num(12..16, 9999)
        && b[16] == b' '
        && num(17..19, 23)
        && b[19] == b':'
        && num(20..22, 59)
        && b[22] == b':'
        && num(23..25, 60)
        && &d[25..] == " GMT"
}

/// The request is exactly what Dovecot's ox driver sends: PUT, these headers in this
/// order and case and no others, the body byte for byte (the raw bytes against Dovecot's
/// own: `requests_are_dovecots_bytes`).
fn assert_exact_request(r: &Recorded, server: &RecordingServer, auth: Option<&str>, body: &str) {
    assert_eq!(r.method, "PUT");
    assert_eq!(r.body, body.as_bytes(), "{}", r.body_text());
    let date = r.header("date").expect("Date header, as Dovecot sends");
    assert!(is_imf_fixdate(date), "{date}");
    let host = server.addr.to_string();
    let length = body.len().to_string();
    let mut expected = vec![("Host", host.as_str()), ("Date", date)];
    if let Some(auth) = auth {
        expected.push(("Authorization", auth));
    }
    expected.extend([
        ("Content-Length", length.as_str()),
        ("Connection", "Keep-Alive"),
        ("Content-Type", "application/json; charset=utf-8"),
    ]);
    let got: Vec<(&str, &str)> = r
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(got, expected);
}

/// A request Dovecot 2.3.19.1's own ox driver sent, byte for byte
/// (`drivers/ox/tests/dovecot-requests/README.md` says how it was captured).
fn dovecot_request(name: &str) -> String {
    let path = format!(
        "{}/../drivers/ox/tests/dovecot-requests/{name}.http",
        env!("CARGO_MANIFEST_DIR")
    );
    String::from_utf8(std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))).unwrap()
}

/// `raw` with the value of its Date header replaced by `date`.
fn with_date(raw: &str, date: &str) -> String {
    let start = raw.find("\r\nDate: ").expect("a Date header") + "\r\nDate: ".len();
    let end = start + raw[start..].find("\r\n").expect("CRLF after Date");
    format!("{}{date}{}", &raw[..start], &raw[end..])
}

/// The bytes mailpush sends are the bytes Dovecot 2.3's ox driver sent for the same URL
/// and message (captured from Dovecot itself), all but the Date value, which must still
/// be an IMF-fixdate: request line, header names, order and values, CRLFs, body. With
/// and without `login:pass@`, a user without a password, a query, http and https, and a
/// second request over the kept-alive connection.
#[tokio::test(flavor = "multi_thread")]
async fn requests_are_dovecots_bytes() {
    // The message of the capture: alice's 8th mail, as Dovecot's ox driver saw it.
    let event = r#"{"name":"MessageNew","mailbox":"INBOX","uid":8,"uid_validity":1795955367,"from":"Bob <bob@example.com>","subject":"Hello","snippet":"Hi there","unseen":8}"#;
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    for (fixture, tls, userinfo, path, captured_host) in [
        (
            "http-login-pass",
            false,
            "login:pass@",
            "/preliminary/http-notify/v1/notify",
            "127.0.0.1:33389",
        ),
        (
            "http-query",
            false,
            "",
            "/preliminary/http-notify/v1/notify?a=b",
            "127.0.0.1:33389",
        ),
        ("http-user-only", false, "login@", "/n", "127.0.0.1:33389"),
        (
            "https-login-pass",
            true,
            "login:pass@",
            "/n",
            "127.0.0.1:59915",
        ),
    ] {
        let server = if tls {
            RecordingServer::start_tls(&ca).await
        } else {
            RecordingServer::start().await
        };
        let url = server
            .url(path)
            .replacen("://", &format!("://{userinfo}"), 1);
        let o = ox(&format!("url={url} ssl_ca_file={}", ca_file.display())).await;
        for _ in 0..2 {
            assert_eq!(
                deliver(o.driver.as_ref(), &txn(event)).await,
                Outcome::Delivered,
                "{fixture}"
            );
        }
        let r = server.requests();
        assert_eq!(r.len(), 2, "{fixture}");
        assert_eq!(r[0].conn, r[1].conn, "{fixture}: one kept-alive connection");
        let expected = dovecot_request(fixture).replace(captured_host, &server.addr.to_string());
        for req in &r {
            let sent = String::from_utf8(req.raw.clone()).unwrap();
            let date = req.header("date").expect("a Date header");
            assert!(is_imf_fixdate(date), "{fixture}: {date}");
            assert_eq!(sent, with_date(&expected, date), "{fixture}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ascii_message_exact_request() {
    let server = RecordingServer::start().await;
    let url = server
        .url("/preliminary/http-notify/v1/notify?a=b")
        .replace("http://", "http://login:pass@");
    let o = ox(&format!("url={url}")).await;
    let event = new_msg(
        r#","from":"Bob <bob@example.com>","subject":"Hello","snippet":"Hi there","unseen":3"#,
    );
    assert_eq!(
        deliver(o.driver.as_ref(), &txn(&event)).await,
        Outcome::Delivered
    );
    let r = &server.requests()[0];
    let expected = format!(
        r#"{PREFIX},"from":"Bob <bob@example.com>","subject":"Hello","snippet":"Hi there","unseen":3}}"#
    );
    assert_exact_request(r, &server, Some("Basic bG9naW46cGFzcw=="), &expected);
    assert_eq!(r.target, "/preliminary/http-notify/v1/notify?a=b");
    // Like Dovecot: no User-Agent, no Accept, no chunking, no Expect.
    for absent in ["user-agent", "accept", "transfer-encoding", "expect"] {
        assert_eq!(r.header(absent), None, "{absent}");
    }
    assert!(o.driver.counters().contains(&("ox_sent", 1)));
}

#[tokio::test(flavor = "multi_thread")]
async fn mime_encoded_from_and_subject_are_sent_raw() {
    let server = RecordingServer::start().await;
    let o = ox(&format!("url={}", server.url("/n"))).await;
    // Raw header values: encoded words stay encoded; a folded header keeps "\n\t".
    let event = new_msg(
        r#","from":"=?utf-8?q?J=C3=B6rg?= <j@example.org>","subject":"=?UTF-8?B?SMOkbGxv?=\n\t=?UTF-8?Q?W=C3=B6rld?=","subject_utf8":"Hällo Wörld""#,
    );
    deliver(o.driver.as_ref(), &txn(&event)).await;
    assert_exact_request(
        &server.requests()[0],
        &server,
        None,
        &format!(
            r#"{PREFIX},"from":"=?utf-8?q?J=C3=B6rg?= <j@example.org>","subject":"=?UTF-8?B?SMOkbGxv?=\n\t=?UTF-8?Q?W=C3=B6rld?="}}"#
        )
        .replace("\n\t", "\\n\\t"),
    );
    // Only the decoded subject known: it is sent.
    deliver(
        o.driver.as_ref(),
        &txn(&new_msg(r#","subject_utf8":"Hällo""#)),
    )
    .await;
    assert_exact_request(
        &server.requests()[1],
        &server,
        None,
        &format!(r#"{PREFIX},"subject":"Hällo"}}"#),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn snippet_escaping_is_dovecots_byte_for_byte() {
    let server = RecordingServer::start().await;
    let o = ox(&format!("url={}", server.url("/n"))).await;
    // quotes, backslash, \n \t \r \b \f, other controls, DEL, '/', non-ASCII, U+2028/9.
    let snippet_json =
        r#""say \"hi\" C:\\dir\nline2\ttab\r\b\f\u0001\u001f\u007f/ä€😀\u2028\u2029""#;
    deliver(
        o.driver.as_ref(),
        &txn(&new_msg(&format!(r#","snippet":{snippet_json}"#))),
    )
    .await;
    let expected = format!(
        "{PREFIX},\"snippet\":\"say \\\"hi\\\" C:\\\\dir\\nline2\\ttab\\r\\b\\f\\u0001\\u001f\u{7f}/ä€😀\\u2028\\u2029\"}}"
    );
    assert_exact_request(&server.requests()[0], &server, None, &expected);
    // An empty snippet (no text part) is still sent.
    deliver(o.driver.as_ref(), &txn(&new_msg(r#","snippet":"""#))).await;
    assert_exact_request(
        &server.requests()[1],
        &server,
        None,
        &format!(r#"{PREFIX},"snippet":""}}"#),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unseen_only_when_known() {
    let server = RecordingServer::start().await;
    let o = ox(&format!("url={}", server.url("/n"))).await;
    deliver(o.driver.as_ref(), &txn(&new_msg(r#","unseen":0"#))).await;
    deliver(o.driver.as_ref(), &txn(&new_msg(""))).await;
    let r = server.requests();
    assert_exact_request(&r[0], &server, None, &format!(r#"{PREFIX},"unseen":0}}"#));
    assert_exact_request(&r[1], &server, None, &format!("{PREFIX}}}"));
    // One kept-alive connection carried both (the pool is shared by all users: see
    // `one_connection_serves_every_user`).
    assert_eq!(r[0].conn, r[1].conn);
}

/// The keep-alive pool is the driver's, shared by all users: their PUTs reuse one
/// connection.
#[tokio::test(flavor = "multi_thread")]
async fn one_connection_serves_every_user() {
    let server = RecordingServer::start().await;
    let meta = Arc::new(Meta::default());
    meta.set("bob@example.com", "user=12@3");
    let o = ox_with_meta(&format!("url={}", server.url("/n")), meta, true).await;
    for user in [USER, "bob@example.com", USER] {
        let t = Arc::new(
            Transaction::from_json(&format!(
                r#"{{"user":"{user}","events":[{}]}}"#,
                new_msg("")
            ))
            .unwrap(),
        );
        assert_eq!(deliver(o.driver.as_ref(), &t).await, Outcome::Delivered);
    }
    let r = server.requests();
    assert_eq!(r.len(), 3);
    assert_eq!(body_user(&r[1]), "bob@example.com");
    assert!(
        r.iter().all(|x| x.conn == r[0].conn),
        "{:?}",
        r.iter().map(|x| x.conn).collect::<Vec<_>>()
    );
}

/// A kept-alive connection the server closed while idle is not used again: the next
/// notification goes out on a new connection, in one attempt.
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_closed_while_idle_is_not_reused() {
    let server = RecordingServer::start().await;
    // Answer, then close the connection (no `Connection: close` announced).
    server.script([Reply::Raw(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")]);
    let o = ox(&format!("url={} max_retries=0", server.url("/n"))).await;
    for _ in 0..2 {
        assert_eq!(
            deliver(o.driver.as_ref(), &txn(&new_msg(""))).await,
            Outcome::Delivered
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = server.requests();
    assert_eq!(r.len(), 2);
    assert_ne!(r[0].conn, r[1].conn);
    let counters = o.driver.counters();
    assert!(counters.contains(&("ox_attempts", 2)), "{counters:?}");
    assert!(counters.contains(&("ox_sent", 2)), "{counters:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_auth_from_the_url() {
    let server = RecordingServer::start().await;
    let with = |userinfo: &str| {
        server
            .url("/n")
            .replace("http://", &format!("http://{userinfo}@"))
    };
    for (userinfo, expected) in [
        ("login:pass", Some("Basic bG9naW46cGFzcw==")),
        // Percent-decoded: "a@b:p:s".
        ("a%40b:p%3As", Some("Basic YUBiOnA6cw==")),
        // An empty password is a password.
        ("login:", Some("Basic bG9naW46")),
        // user@ without a password: no Authorization.
        ("login", None),
    ] {
        let o = ox(&format!("url={}", with(userinfo))).await;
        assert_eq!(
            deliver(o.driver.as_ref(), &txn(&new_msg(""))).await,
            Outcome::Delivered
        );
        assert_eq!(
            server.requests().last().unwrap().header("authorization"),
            expected,
            "{userinfo}"
        );
        // The password is masked in what `check` shows.
        assert!(o.details[0].starts_with("url: http://"), "{:?}", o.details);
        assert!(!o.details[0].contains(":pass@"), "{:?}", o.details);
    }
}

/// (reply, max_retries) → attempts, as Dovecot 2.3.19.1 on the wire: retries only on a
/// timeout, a lost connection and 408 (not on a 503, even with Retry-After); the
/// timeout is per attempt.
#[tokio::test(flavor = "multi_thread")]
async fn attempts_follow_dovecots_retry_rules() {
    let ra0 = Reply::with_header(503, "Retry-After", "0");
    let mut cases = Vec::new();
    for retries in [0u32, 1, 3] {
        for reply in [Reply::Hang, Reply::status(408), Reply::Close, Reply::Reset] {
            cases.push((reply, retries, retries as usize + 1));
        }
        for reply in [
            Reply::status(503),
            ra0.clone(),
            Reply::status(500),
            Reply::status(404),
        ] {
            cases.push((reply, retries, 1));
        }
    }
    for (reply, retries, expected) in cases {
        let server = RecordingServer::start().await;
        server.set_default(reply.clone());
        let o = ox(&format!(
            "url={} max_retries={retries} timeout_msecs=200",
            server.url("/n")
        ))
        .await;
        let start = Instant::now();
        let f = failure(deliver(o.driver.as_ref(), &txn(&new_msg(""))).await);
        let elapsed = start.elapsed();
        let what = format!("{reply:?} with max_retries={retries}: {}", f.reason);
        assert_eq!(server.requests().len(), expected, "{what}");
        assert!(
            o.driver
                .counters()
                .contains(&("ox_retried", expected as u64 - 1)),
            "{what}"
        );
        if expected > 1 {
            let suffix = format!(" ({} retries in ", expected - 1);
            assert!(f.reason.contains(&suffix), "{what}");
        } else {
            assert!(!f.reason.contains("retries in"), "{what}");
        }
        match reply {
            Reply::Hang => {
                // 200 ms per attempt (plus a short backoff), not 200 ms in total.
                let floor = Duration::from_millis(200 * expected as u64);
                assert!(
                    elapsed >= floor && elapsed < floor + Duration::from_millis(3000),
                    "{what}: {elapsed:?}"
                );
                assert!(
                    f.reason
                        .starts_with("Error when sending notification: Request timed out"),
                    "{what}"
                );
                assert!(f.retryable, "{what}");
            }
            Reply::Close | Reply::Reset => {
                assert!(f.reason.contains("Connection lost"), "{what}");
                assert!(f.retryable, "{what}");
            }
            Reply::Raw(_) => unreachable!("not among the cases"),
            Reply::Status { status, .. } => {
                // The server's reason phrase (RecordingServer sends "X").
                assert!(
                    f.reason
                        .starts_with(&format!("Error when sending notification: {status} X")),
                    "{what}"
                );
                // Later deliveries by mailpush's one classification: 408, 429, 5xx.
                assert_eq!(
                    f.retryable,
                    status == 408 || status == 429 || status >= 500,
                    "{what}"
                );
            }
        }
    }
}

/// A 503 with Retry-After is not retried within the delivery (as Dovecot 2.3.19.1 does
/// on the wire, whatever the delay); the delay is passed on for the later delivery. A
/// retry (after a 408) resends the first attempt's Date, as Dovecot does.
#[tokio::test(flavor = "multi_thread")]
async fn a_503_is_passed_on_and_a_retry_keeps_its_date() {
    for value in ["0", "1", "3"] {
        let server = RecordingServer::start().await;
        server.set_default(Reply::with_header(503, "Retry-After", value));
        let o = ox(&format!(
            "url={} max_retries=3 timeout_msecs=3000",
            server.url("/n")
        ))
        .await;
        let f = failure(deliver(o.driver.as_ref(), &txn(&new_msg(""))).await);
        assert_eq!(server.requests().len(), 1, "Retry-After: {value}");
        assert!(f.retryable);
        assert_eq!(
            f.retry_after,
            Some(Duration::from_secs(value.parse().unwrap()))
        );
    }

    let server = RecordingServer::start().await;
    server.script([Reply::status(408)]);
    let o = ox(&format!(
        "url={} max_retries=1 timeout_msecs=1000",
        server.url("/n")
    ))
    .await;
    assert_eq!(
        deliver(o.driver.as_ref(), &txn(&new_msg(""))).await,
        Outcome::Delivered
    );
    let r = server.requests();
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].header("date"), r[1].header("date"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_connection_is_tried_once() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let o = ox(&format!(
        "url=http://127.0.0.1:{port}/n max_retries=3 timeout_msecs=200"
    ))
    .await;
    let f = failure(deliver(o.driver.as_ref(), &txn(&new_msg(""))).await);
    assert_eq!(
        f.reason,
        format!(
            "Error when sending notification: connect(127.0.0.1:{port}) failed: Connection refused"
        )
    );
    // Tried once in this delivery (as Dovecot); a later delivery may succeed (mailpush's
    // one classification: a refused connection is retried on the driver's schedule).
    assert!(f.retryable);
    let counters = o.driver.counters();
    assert!(counters.contains(&("ox_attempts", 1)), "{counters:?}");
    assert!(counters.contains(&("ox_retried", 0)), "{counters:?}");
    assert!(counters.contains(&("ox_failed", 1)), "{counters:?}");
}

/// https to an endpoint whose certificate an internal CA signed: trusted through
/// `ssl_ca_file` (added to the system roots), refused without it — one attempt, nothing
/// reaches the server, and the request over TLS is byte for byte the http one.
#[tokio::test(flavor = "multi_thread")]
async fn https_with_an_internal_ca_from_ssl_ca_file() {
    let ca = TestCa::new();
    let server = RecordingServer::start_tls(&ca).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("internal-ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let url = server.url("/n").replace("https://", "https://login:pass@");
    assert!(url.starts_with("https://login:pass@127.0.0.1:"), "{url}");

    // Without the CA the certificate is unknown: a failure, not retried, no request.
    let o = ox(&format!("url={url} max_retries=3")).await;
    let f = failure(deliver(o.driver.as_ref(), &txn(&new_msg(""))).await);
    assert!(
        f.reason.starts_with("Error when sending notification: "),
        "{}",
        f.reason
    );
    assert!(!f.reason.contains("pass"), "{}", f.reason);
    assert!(f.reason.contains("UnknownIssuer"), "{}", f.reason);
    assert!(!f.retryable, "{}", f.reason);
    assert!(o.driver.counters().contains(&("ox_attempts", 1)));
    assert!(server.requests().is_empty());

    // With ssl_ca_file: delivered, same request as over http.
    let o = ox(&format!(
        "url={url} ssl_ca_file={} max_retries=3",
        ca_file.display()
    ))
    .await;
    assert_eq!(
        deliver(o.driver.as_ref(), &txn(&new_msg(r#","unseen":3"#))).await,
        Outcome::Delivered
    );
    let r = server.requests();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].method, "PUT");
    assert_eq!(r[0].target, "/n");
    assert_eq!(r[0].header("authorization"), Some("Basic bG9naW46cGFzcw=="));
    assert_eq!(
        r[0].header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(r[0].body_text(), format!(r#"{PREFIX},"unseen":3}}"#));
}

#[tokio::test(flavor = "multi_thread")]
async fn redirects_are_refused_not_followed() {
    let server = RecordingServer::start().await;
    let target = server.url("/elsewhere");
    server.set_default(Reply::with_header(302, "Location", &target));
    let o = ox(&format!("url={} max_retries=3", server.url("/n"))).await;
    let f = failure(deliver(o.driver.as_ref(), &txn(&new_msg(""))).await);
    assert_eq!(
        f.reason,
        "Error when sending notification: Redirect refused"
    );
    assert!(!f.retryable);
    let r = server.requests();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].target, "/n");
}

#[tokio::test(flavor = "multi_thread")]
async fn any_2xx_is_success() {
    let server = RecordingServer::start().await;
    server.script([Reply::status(204), Reply::status(202)]);
    let o = ox(&format!("url={}", server.url("/n"))).await;
    for _ in 0..2 {
        assert_eq!(
            deliver(o.driver.as_ref(), &txn(&new_msg(""))).await,
            Outcome::Delivered
        );
    }
    assert!(o.driver.counters().contains(&("ox_sent", 2)));
}

#[tokio::test(flavor = "multi_thread")]
async fn no_request_unless_active_inbox_message_new() {
    let server = RecordingServer::start().await;
    // cache_lifetime=0: every transaction reads METADATA.
    let o = ox(&format!("url={} cache_lifetime=0", server.url("/n"))).await;
    // Not active: METADATA unset.
    o.meta.clear();
    assert_eq!(
        deliver(o.driver.as_ref(), &txn(&new_msg(""))).await,
        Outcome::Skipped
    );
    o.meta.set(USER, "user=11@3");
    // Another folder (the name is case-sensitive): skipped.
    for mailbox in ["Work", "inbox", "INBOX/sub"] {
        let e =
            format!(r#"{{"name":"MessageNew","mailbox":"{mailbox}","uid":1,"uid_validity":1}}"#);
        assert_eq!(
            deliver(o.driver.as_ref(), &txn(&e)).await,
            Outcome::Skipped,
            "{mailbox}"
        );
    }
    // INBOX, but not MessageNew.
    for e in [
        r#"{"name":"MessageAppend","mailbox":"INBOX","uid":1,"uid_validity":1,"subject":"s"}"#,
        r#"{"name":"MessageRead","mailbox":"INBOX","uid":1,"uid_validity":1}"#,
        r#"{"name":"MessageExpunge","mailbox":"INBOX","uid":1,"uid_validity":1}"#,
        r#"{"name":"FlagsSet","mailbox":"INBOX","uid":1,"uid_validity":1,"flags":["\\Seen"]}"#,
        r#"{"name":"MailboxSubscribe","mailbox":"INBOX"}"#,
    ] {
        assert_eq!(
            deliver(o.driver.as_ref(), &txn(e)).await,
            Outcome::Delivered,
            "{e}"
        );
    }
    // No user= in the value: Dovecot's error, no request.
    for value in ["foo=bar", "", "user"] {
        o.meta.set(USER, value);
        assert_eq!(
            deliver(o.driver.as_ref(), &txn(&new_msg(""))).await,
            Outcome::Skipped,
            "{value:?}"
        );
    }
    assert!(server.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn one_put_per_message_new_in_inbox() {
    let server = RecordingServer::start().await;
    let o = ox(&format!("url={}", server.url("/n"))).await;
    let events = [
        r#"{"name":"MessageNew","mailbox":"INBOX","uid":7,"uid_validity":1}"#,
        r#"{"name":"MessageNew","mailbox":"Work","uid":8,"uid_validity":1}"#,
        r#"{"name":"MessageRead","mailbox":"INBOX","uid":7,"uid_validity":1}"#,
        r#"{"name":"MessageNew","mailbox":"INBOX","uid":9,"uid_validity":1,"unseen":2}"#,
    ]
    .join(",");
    assert_eq!(
        deliver(o.driver.as_ref(), &txn(&events)).await,
        Outcome::Delivered
    );
    let bodies: Vec<String> = server.requests().iter().map(Recorded::body_text).collect();
    assert_eq!(
        bodies,
        [
            r#"{"user":"alice@example.com","event":"messageNew","folder":"INBOX","imap-uidvalidity":1,"imap-uid":7}"#,
            r#"{"user":"alice@example.com","event":"messageNew","folder":"INBOX","imap-uidvalidity":1,"imap-uid":9,"unseen":2}"#,
        ]
    );
}

/// A transaction with two new messages whose second push fails: its retry sends only
/// the second (Dovecot sends each push once; the spool retries the transaction).
#[tokio::test(flavor = "multi_thread")]
async fn a_retry_sends_only_the_pushes_that_failed() {
    let server = RecordingServer::start().await;
    server.script([Reply::status(200), Reply::status(503)]);
    let o = ox(&format!("url={} max_retries=0", server.url("/n"))).await;
    let events = [
        r#"{"name":"MessageNew","mailbox":"INBOX","uid":7,"uid_validity":1}"#,
        r#"{"name":"MessageNew","mailbox":"INBOX","uid":9,"uid_validity":1}"#,
    ]
    .join(",");
    let t = txn(&events);
    assert!(matches!(deliver(o.driver.as_ref(), &t).await, Outcome::Failed(f) if f.retryable));
    assert_eq!(deliver(o.driver.as_ref(), &t).await, Outcome::Delivered);
    let uids: Vec<String> = server
        .requests()
        .iter()
        .map(|r| {
            r.body_text()
                .split("\"imap-uid\":")
                .nth(1)
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(uids, ["7}", "9}", "9}"]);
    // Another transaction with the same message is its own: sent.
    deliver(o.driver.as_ref(), &txn(&events)).await;
    assert_eq!(server.requests().len(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn user_or_user_from_metadata() {
    let server = RecordingServer::start().await;
    let plain = ox(&format!("url={}", server.url("/n"))).await;
    let from_meta = ox(&format!("url={} user_from_metadata", server.url("/n"))).await;
    // Presence-only, as in Dovecot.
    let from_meta_no = ox(&format!("url={} user_from_metadata=no", server.url("/n"))).await;
    for o in [&plain, &from_meta, &from_meta_no] {
        deliver(o.driver.as_ref(), &txn(&new_msg(""))).await;
    }
    // The last user= wins; tab-escaped values are unescaped; an empty user is a user.
    from_meta
        .meta
        .set(USER, "user=first\tother=x\tuser=a\u{1}tb");
    deliver(from_meta.driver.as_ref(), &txn(&new_msg(""))).await;
    from_meta.meta.set(USER, "user=");
    deliver(from_meta.driver.as_ref(), &txn(&new_msg(""))).await;
    let users: Vec<String> = server.requests().iter().map(body_user).collect();
    assert_eq!(users, [USER, "11@3", "11@3", "a\tb", ""]);
}

/// METADATA is read for every transaction, whatever `cache_lifetime` says: Dovecot
/// caches it per `mail_user`, which lives for one delivery, so a change (or an unset)
/// reaches the next delivery there too.
#[tokio::test(flavor = "multi_thread")]
async fn metadata_is_read_for_every_transaction() {
    let server = RecordingServer::start().await;
    let o = ox(&format!(
        "url={} user_from_metadata cache_lifetime=1h",
        server.url("/n")
    ))
    .await;
    deliver(o.driver.as_ref(), &txn(&new_msg(""))).await;
    o.meta.set(USER, "user=22@3");
    deliver(o.driver.as_ref(), &txn(&new_msg(""))).await;
    let users: Vec<String> = server.requests().iter().map(body_user).collect();
    assert_eq!(users, ["11@3", "22@3"]);

    // A transaction's own metadata wins over the store, its key in any case.
    for key in [KEY, "/Private/Vendor/vendor.dovecot/HTTP-Notify"] {
        let own = Arc::new(
            Transaction::from_json(&format!(
                r#"{{"user":"{USER}","events":[{}],"metadata":{{"{key}":"user=33@3"}}}}"#,
                new_msg("")
            ))
            .unwrap(),
        );
        deliver(o.driver.as_ref(), &own).await;
        assert_eq!(body_user(server.requests().last().unwrap()), "33@3");
    }

    // Unset: the next transaction is skipped.
    o.meta.clear();
    assert_eq!(
        deliver(o.driver.as_ref(), &txn(&new_msg(""))).await,
        Outcome::Skipped
    );
    assert_eq!(server.requests().len(), 4);
}

/// A METADATA store that cannot be read: a transaction ox could push (a MessageNew in
/// INBOX) fails retryably, so the spool tries it again; any other is skipped (Dovecot
/// skips them all), not retried for nothing.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_store_fails_only_what_ox_could_push() {
    struct Broken;
    impl MetadataLookup for Broken {
        fn get(&self, _: &str, _: &str) -> Result<Option<String>, MetadataError> {
            Err(MetadataError("database is locked".into()))
        }
    }
    let server = RecordingServer::start().await;
    let (_dir, config) = config_with(&format!("url={}", server.url("/n")));
    let Ok(loaded) = DriverRegistry::default()
        .init_all(&config, Arc::new(Broken))
        .await
    else {
        panic!("init")
    };
    let driver = loaded[0].driver.clone();
    match deliver(driver.as_ref(), &txn(&new_msg(""))).await {
        Outcome::Failed(f) => assert!(
            f.retryable && f.reason.contains("database is locked"),
            "{f:?}"
        ),
        other => panic!("{other:?}"),
    }
    for e in [
        r#"{"name":"MessageNew","mailbox":"Work","uid":1,"uid_validity":1}"#,
        r#"{"name":"FlagsSet","mailbox":"INBOX","uid":1,"uid_validity":1,"flags":["\\Seen"]}"#,
    ] {
        assert_eq!(
            deliver(driver.as_ref(), &txn(e)).await,
            Outcome::Skipped,
            "{e}"
        );
    }
    assert!(server.requests().is_empty());
}

/// Activation through mailpush's own METADATA store, written as `mailpush metadata set`
/// writes it (any key case).
#[tokio::test(flavor = "multi_thread")]
async fn activation_through_the_metadata_store() {
    let server = RecordingServer::start().await;
    let (dir, config) = config_with(&format!("url={} cache_lifetime=0", server.url("/n")));
    let store = Arc::new(MetadataStore::open(&dir.path().join("metadata.db")).unwrap());
    let Ok(loaded) = DriverRegistry::default()
        .init_all(&config, store.clone())
        .await
    else {
        panic!("init")
    };
    let driver = loaded[0].driver.clone();
    assert_eq!(
        deliver(driver.as_ref(), &txn(&new_msg(""))).await,
        Outcome::Skipped
    );
    store
        .set(
            USER,
            "/private/vendor/vendor.dovecot/HTTP-NOTIFY",
            "user=11@3",
        )
        .unwrap();
    assert_eq!(
        deliver(driver.as_ref(), &txn(&new_msg(""))).await,
        Outcome::Delivered
    );
    store.unset(USER, KEY).unwrap();
    assert_eq!(
        deliver(driver.as_ref(), &txn(&new_msg(""))).await,
        Outcome::Skipped
    );
    assert_eq!(server.requests().len(), 1);
}

/// Wasm drivers read the same store through the host import: ox-wasm activates from the
/// store (the transaction carries no `metadata`), for the transaction's user only.
#[tokio::test(flavor = "multi_thread")]
async fn wasm_drivers_read_the_same_metadata_store() {
    let server = RecordingServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let conf = format!(
        "mailpush {{\n state_dir = state\n}}\nplugin {{\n push_notification_driver = wasm:file={} url={} allow_hosts=127.0.0.1 allow_private user_from_metadata\n}}\n",
        guest("ox-wasm").display(),
        server.url("/n")
    );
    let config = write_config(dir.path(), &conf);
    let store = mailpush::metadata_store::open_for(&config.settings).unwrap();
    let Ok(loaded) = TestDrivers::new()
        .registry()
        .init_all(&config, store.clone())
        .await
    else {
        panic!("init")
    };
    let driver = loaded[0].driver.clone();
    // Not set for alice (only for someone else): no request.
    store.set("bob@example.com", KEY, "user=12@3").unwrap();
    assert_eq!(
        deliver(driver.as_ref(), &txn(&new_msg(""))).await,
        Outcome::Skipped
    );
    store.set(USER, KEY, "user=11@3").unwrap();
    assert_eq!(
        deliver(driver.as_ref(), &txn(&new_msg(""))).await,
        Outcome::Delivered
    );
    let r = server.requests();
    assert_eq!(r.len(), 1);
    assert_eq!(body_user(&r[0]), "11@3");
}

#[tokio::test(flavor = "multi_thread")]
async fn config_errors_and_fallback_warnings() {
    let o = ox("url=http://h/ max_retries=x timeout_msecs=y").await;
    assert_eq!(o.warnings.len(), 2, "{:?}", o.warnings);
    assert!(
        o.warnings[0].starts_with(
            "max_retries=x is not an unsigned number; using the default max_retries=1"
        ),
        "{:?}",
        o.warnings
    );
    assert!(
        o.warnings[1].starts_with(
            "timeout_msecs=y is not an unsigned number; using the default timeout_msecs=2000"
        ),
        "{:?}",
        o.warnings
    );
    assert_eq!(
        o.details,
        [
            "url: http://h/",
            "cache_lifetime: 60s, max_retries: 1 (2 attempts), timeout: 2000 ms per attempt, user_from_metadata: no",
        ]
    );
    for (args, expected) in [
        ("cache_lifetime=60s", "Driver requires the url parameter".to_string()),
        (
            "url=http://h/ cache_lifetime=60",
            "Failed to parse OX cache_lifetime 60: Time interval '60' is missing units (add e.g. 's' for seconds); use e.g. cache_lifetime=60s".to_string(),
        ),
        // (Quoted: unquoted, the `#x` is a comment, as in Dovecot.)
        (
            "\"ox:url=http://login:s3cret@h/#x\"",
            "Failed to parse OX REST URL http://login:***@h/#x: URL fragment not allowed for HTTP URL in this context".to_string(),
        ),
    ] {
        let (_dir, config) = match args.strip_prefix('"') {
            Some(_) => {
                let dir = tempfile::tempdir().unwrap();
                let config = write_config(
                    dir.path(),
                    &format!("mailpush {{\n state_dir = st\n}}\nplugin {{\n push_notification_driver = {args}\n}}\n"),
                );
                (dir, config)
            }
            None => config_with(args),
        };
        let Err((_, errors)) = DriverRegistry::default()
            .init_all(&config, Arc::new(mailpush_core::NoMetadata))
            .await
        else {
            panic!("{args} should fail")
        };
        let text = errors[0].to_string();
        assert!(text.contains(&expected), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
    }
}

/// ox-wasm (the component) and the native ox driver send the same body, method, target
/// and header values. The head is not Dovecot's in ox-wasm: the wasm host writes header
/// names in lower case, the guest's headers in its order and then `host` and
/// `content-length`; only the native driver matches Dovecot byte for byte
/// (`requests_are_dovecots_bytes`).
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
    let t = Arc::new(
        Transaction::from_json(&format!(
            r#"{{"user":"{USER}","events":[{event}],"metadata":{{"{KEY}":"user=11@3"}}}}"#
        ))
        .unwrap(),
    );
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
