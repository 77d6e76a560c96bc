//! A real Dovecot 2.3 (Debian's packages) feeding mailpush: the Lua forwarder
//! (examples/dovecot/mailpush.lua) and Dovecot's own ox driver pointed at mailpush's
//! OX-compatible endpoint. Mail is delivered over LMTP, then changed over IMAP; every one
//! of the 12 event kinds must reach mailpush's drivers with the right fields, as many as
//! Dovecot 2.3 gives. More users (one Dovecot, to keep the run short) check that the
//! script forwards the user's METADATA, and that a stalled or down mailpush neither fails
//! nor holds up delivery (the script logs the error and the mail goes on).
//!
//! Needs root and `dovecot`; `.ci/run` installs it. Outside CI the test is skipped (with
//! a message) when Dovecot is missing; under CI (`CI=true`) a missing Dovecot fails.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailpush_core::{Event, Transaction};
use mailpush_e2e::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn have_dovecot() -> bool {
    Path::new("/usr/sbin/dovecot").exists() && unsafe_is_root()
}

fn unsafe_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false)
}

/// The uid and gid of `vmail`, Dovecot's mail user here and mailpush's `handoff_owners`;
/// creates the user first on a machine without it (a fresh CI machine). The tests run in
/// parallel: one creates it, the others wait and find it.
fn vmail_ids() -> (String, String) {
    static CREATING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = CREATING.lock().unwrap_or_else(|e| e.into_inner());
    if Command::new("id")
        .arg("vmail")
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        let s = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "vmail",
            ])
            .status()
            .unwrap();
        assert!(s.success(), "useradd vmail");
    }
    let id = |flag: &str| {
        String::from_utf8(
            Command::new("id")
                .args([flag, "vmail"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
        .trim()
        .to_string()
    };
    (id("-u"), id("-g"))
}

struct Dovecot {
    conf: std::path::PathBuf,
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let _ = Command::new("doveadm")
            .arg("-c")
            .arg(&self.conf)
            .arg("stop")
            .status();
    }
}

/// Reads IMAP lines until the tagged response; panics unless it is OK.
async fn imap(
    r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    tag: &str,
    cmd: &str,
) -> String {
    w.write_all(format!("{tag} {cmd}\r\n").as_bytes())
        .await
        .unwrap();
    read_tagged(r, tag).await
}

async fn read_tagged(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>, tag: &str) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        assert!(
            r.read_line(&mut line).await.unwrap() > 0,
            "IMAP connection closed: {all}"
        );
        all.push_str(&line);
        if line.starts_with(&format!("{tag} ")) {
            assert!(
                line.starts_with(&format!("{tag} OK")),
                "IMAP {tag} failed: {all}"
            );
            return all;
        }
    }
}

async fn smtp_line(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> String {
    let mut out = String::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        out.push_str(&line);
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            return out;
        }
    }
}

/// A TCP listener on 127.0.0.1 that accepts connections and reads them, but never
/// answers: a stalled mailpush. Keeps what it received.
struct Stalled {
    addr: SocketAddr,
    received: Arc<Mutex<String>>,
}

impl Stalled {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(String::new()));
        let rec = received.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let rec = rec.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = sock.read(&mut buf).await {
                        rec.lock()
                            .unwrap()
                            .push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                });
            }
        });
        Stalled { addr, received }
    }
}

/// One request as the Lua script sent it.
#[derive(Debug, Clone)]
struct Posted {
    /// Request line and headers, CRLF-separated.
    head: String,
    body: String,
}

/// A minimal HTTP/1.1 server on 127.0.0.1 standing in for mailpush's ingest: records
/// each request and answers 202. Unlike `RecordingServer` it answers `Expect:
/// 100-continue`, which Dovecot's HTTP client sends for every request with a payload.
async fn start_tap() -> (SocketAddr, Arc<Mutex<Vec<Posted>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let posted = Arc::new(Mutex::new(Vec::new()));
    let rec = posted.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let rec = rec.clone();
            tokio::spawn(async move {
                let (r, mut w) = sock.into_split();
                let mut r = BufReader::new(r);
                loop {
                    let mut head = String::new();
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        head.push_str(&line);
                    }
                    let header = |name: &str| {
                        head.lines().find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                        })
                    };
                    if header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
                        w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.unwrap();
                    }
                    let len = header("content-length").map_or(0, |v| v.parse().unwrap());
                    let mut body = vec![0; len];
                    if r.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    rec.lock().unwrap().push(Posted {
                        head,
                        // What mailpush would refuse (400) shows in the test's failure.
                        body: String::from_utf8(body)
                            .unwrap_or_else(|e| format!("not UTF-8: {:?}", e.as_bytes())),
                    });
                    let reply = "HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n";
                    w.write_all(reply.as_bytes()).await.unwrap();
                }
            });
        }
    });
    (addr, posted)
}

/// Connects to a Dovecot listener, waiting for it to come up.
async fn connect(port: u16) -> TcpStream {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect(addr).await {
            Ok(s) => return s,
            Err(e) => assert!(
                Instant::now() < deadline,
                "cannot connect to Dovecot on {addr}: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Delivers `mail` to `rcpt` over LMTP; returns the reply to the final `.` and how long
/// Dovecot took to give it (delivery, push-notification drivers included). Fails after
/// `limit` instead of hanging.
async fn lmtp_deliver(
    port: u16,
    rcpt: &str,
    mail: impl AsRef<[u8]>,
    limit: Duration,
) -> (String, Duration) {
    lmtp_deliver_to(port, &[rcpt], mail, limit).await
}

/// Delivers `mail` to every one of `rcpts` in one LMTP transaction; returns the replies
/// to the final `.` (one per recipient) and how long Dovecot took to give them all.
async fn lmtp_deliver_to(
    port: u16,
    rcpts: &[&str],
    mail: impl AsRef<[u8]>,
    limit: Duration,
) -> (String, Duration) {
    let (r, mut w) = connect(port).await.into_split();
    let mut r = BufReader::new(r);
    assert!(smtp_line(&mut r).await.starts_with("220"));
    let mut commands = vec![
        ("LHLO test".to_string(), "250"),
        ("MAIL FROM:<alice@barfoo.org>".to_string(), "250"),
    ];
    for rcpt in rcpts {
        commands.push((format!("RCPT TO:<{rcpt}>"), "250"));
    }
    commands.push(("DATA".to_string(), "354"));
    for (cmd, code) in commands {
        w.write_all(format!("{cmd}\r\n").as_bytes()).await.unwrap();
        let resp = smtp_line(&mut r).await;
        assert!(resp.starts_with(code), "{cmd}: {resp}");
    }
    w.write_all(mail.as_ref()).await.unwrap();
    w.write_all(b".\r\n").await.unwrap();
    let started = Instant::now();
    let mut resp = String::new();
    for rcpt in rcpts {
        let line = tokio::time::timeout(limit, smtp_line(&mut r))
            .await
            .unwrap_or_else(|_| panic!("LMTP delivery to {rcpt}: no reply within {limit:?}"));
        resp.push_str(&line);
    }
    let took = started.elapsed();
    w.write_all(b"QUIT\r\n").await.unwrap();
    (resp, took)
}

/// A private Dovecot on high ports, as root with the mail processes as `vmail`:
/// passwd-file users (name, extra userdb fields) with homes under `root/home`, the
/// forwarder script at `root/mailpush.lua`, `mail_plugins` and `plugin` as the plugin
/// block's body. Returns it (stopped when dropped) with its IMAP and LMTP ports.
fn start_dovecot(
    root: &Path,
    users: &[(&str, String)],
    mail_plugins: &str,
    plugin: &str,
) -> (Dovecot, u16, u16) {
    let (uid, gid) = vmail_ids();
    let (imap_port, lmtp_port) = (free_port(), free_port());
    let home = |user: &str| root.join("home").join(user);
    for (user, _) in users {
        std::fs::create_dir_all(home(user)).unwrap();
    }
    Command::new("chown")
        .args(["-R", &format!("{uid}:{gid}")])
        .arg(root.join("home"))
        .status()
        .unwrap();
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/dovecot/mailpush.lua"
        ),
        root.join("mailpush.lua"),
    )
    .unwrap();
    std::fs::write(
        root.join("users"),
        users
            .iter()
            .map(|(user, extra)| {
                format!(
                    "{user}@example.com:{{PLAIN}}secret:{uid}:{gid}::{}::{extra}\n",
                    home(user).display()
                )
            })
            .collect::<String>(),
    )
    .unwrap();
    let conf = root.join("dovecot.conf");
    std::fs::write(
        &conf,
        format!(
            r#"base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap lmtp
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = 1
first_valid_gid = 1
mail_location = maildir:~/Maildir
postmaster_address = postmaster@example.com
mail_debug = yes
mail_plugins = {mail_plugins}
mail_attribute_dict = file:%h/dovecot-attributes
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {root}/users
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {lmtp_port}
  }}
}}
protocol imap {{
  imap_metadata = yes
}}
plugin {{
{plugin}
}}
"#,
            root = root.display(),
        ),
    )
    .unwrap();
    let status = Command::new("dovecot")
        .arg("-c")
        .arg(&conf)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "dovecot failed to start: {}",
        std::fs::read_to_string(root.join("dovecot.log")).unwrap_or_default()
    );
    (Dovecot { conf }, imap_port, lmtp_port)
}

/// `doveadm -c CONF ARGS`, which must succeed.
fn doveadm(d: &Dovecot, args: &[&str]) {
    let out = Command::new("doveadm")
        .arg("-c")
        .arg(&d.conf)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "doveadm {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The plugins the forwarder needs.
const PUSH_PLUGINS: &str = "notify push_notification mail_lua push_notification_lua";

/// A temporary root for a Dovecot and a mailpush, traversable by the mail user.
fn test_root() -> tempfile::TempDir {
    let root = tempfile::Builder::new()
        .prefix("mailpush-dovecot")
        .tempdir()
        .unwrap();
    Command::new("chmod")
        .args(["755"])
        .arg(root.path())
        .status()
        .unwrap();
    root
}

/// Whether the test can run here (Dovecot installed, root); under CI it must.
fn dovecot_or_skip() -> bool {
    if have_dovecot() {
        return true;
    }
    assert!(
        std::env::var("CI").is_err(),
        "CI must install Dovecot (see .ci/run) and run as root"
    );
    eprintln!("SKIPPED: Dovecot is not installed or not root (apt-get install dovecot-core dovecot-imapd dovecot-lmtpd)");
    false
}

/// Waits until Dovecot's log has a line containing every one of `needles`; returns it.
async fn wait_for_log_line(log: &Path, needles: &[&str], limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no line with {needles:?} in Dovecot's log within {limit:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const MAIL: &str = "From: =?utf-8?q?=C3=84lice?= <alice@barfoo.org>\r\nTo: bob@example.com\r\nSubject: Test =?utf-8?q?p=C3=A4iv=C3=A4=C3=A4?=\r\nMessage-ID: <1@barfoo.org>\r\nDate: Tue, 1 Jan 2019 12:00:00 +0200\r\n\r\nHey guys\r\nThis is only a test...\r\n";

#[tokio::test(flavor = "multi_thread")]
async fn dovecot_events_reach_mailpush() {
    if !dovecot_or_skip() {
        return;
    }
    let root = test_root();
    let root_path = root.path().to_path_buf();

    // mailpush: reads Dovecot's hand-offs; the webhook driver records every transaction
    // as canonical JSON; its ox driver pushes to a stand-in OX endpoint. Ingest needs a
    // token (Dovecot's own ox driver sends it as the Basic password).
    let server = RecordingServer::start().await;
    let oxapp = RecordingServer::start().await;
    let token = "t0ken-for-dovecot";
    std::fs::write(root_path.join("token"), format!("{token}\n")).unwrap();
    // handoff_owners = vmail: the user must exist before mailpush starts.
    vmail_ids();
    let mp_conf = root_path.join("mailpush.conf");
    std::fs::write(
        &mp_conf,
        format!(
            "mailpush {{\n state_dir = mp-state\n listen = 127.0.0.1:0\n ingest_token_file = token\n handoff_dir = handoff\n handoff_owners = vmail\n}}\nplugin {{\n push_notification_driver = wasm:file={} url={} allow_hosts=127.0.0.1 allow_private timeout_msecs=1000\n push_notification_driver2 = dlog:file=dlog.log\n push_notification_driver3 = ox:url={} user_from_metadata\n}}\n",
            guest("webhook").display(),
            server.url("/events"),
            oxapp.url("/preliminary/http-notify/v1/notify"),
        ),
    )
    .unwrap();
    let mp = RunningDaemon::start(&mp_conf);

    // Stand-ins for a mailpush reached over HTTP (the forwarder's POST, for users whose
    // userdb sets mailpush_handoff_dir=none and a mailpush_url): one that accepts and
    // never answers, one whose port refuses connections, and one that records what the
    // Lua script POSTs.
    let stalled = Stalled::start().await;
    let stall_url = format!("http://{}/v1/transactions", stalled.addr);
    let down_url = format!("http://127.0.0.1:{}/v1/transactions", free_port());
    let (tap_addr, tap) = start_tap().await;
    let post = |url: &str| format!("userdb_mailpush_handoff_dir=none userdb_mailpush_url={url}");
    let users = [
        ("alice", String::new()),
        (
            "stall",
            format!("{} userdb_mailpush_timeout_msecs=500", post(&stall_url)),
        ),
        ("down", post(&down_url)),
        ("tap", post(&format!("http://{tap_addr}/v1/transactions"))),
    ];
    let plugin = format!(
        "  push_notification_driver = lua:file={root}/mailpush.lua\n  push_notification_driver2 = ox:url=http://dovecot:{token}@127.0.0.1:{port}/preliminary/http-notify/v1/notify user_from_metadata\n  mailpush_handoff_dir = {root}/handoff\n  mailpush_timeout_msecs = 2000\n",
        root = root_path.display(),
        port = mp.addr.port(),
    );
    let (dovecot, imap_port, lmtp_port) = start_dovecot(&root_path, &users, PUSH_PLUGINS, &plugin);
    // Activate the ox driver for alice (Dovecot's METADATA); tap has it too, for the Lua
    // script to forward.
    for (user, value) in [
        ("alice@example.com", "user=11@3"),
        ("tap@example.com", "user=22@3"),
    ] {
        doveadm(
            &dovecot,
            &[
                "mailbox",
                "metadata",
                "set",
                "-u",
                user,
                "-s",
                "",
                "/private/vendor/vendor.dovecot/http-notify",
                value,
            ],
        );
    }
    let dovecot_log = root_path.join("dovecot.log");

    // LMTP delivery → MessageNew.
    let limit = Duration::from_secs(30);
    let (resp, _) = lmtp_deliver(lmtp_port, "alice@example.com", MAIL, limit).await;
    assert!(resp.starts_with("250"), "DATA: {resp}");

    // mailpush stalled (accepts, never answers) or down (connection refused): the mail
    // is still delivered, promptly, and the script logs why the POST failed. The Lua
    // HTTP client's submit() blocks delivery, so only its timeouts bound the wait (the
    // stalled user has mailpush_timeout_msecs=500, for two transactions: autocreating
    // INBOX and the delivery; without a working timeout it is a minute each).
    let bound = Duration::from_secs(10);
    let (resp, took) = lmtp_deliver(lmtp_port, "stall@example.com", MAIL, bound).await;
    assert!(resp.starts_with("250"), "stalled mailpush: {resp}");
    assert!(
        took < bound,
        "stalled mailpush delayed delivery by {took:?}"
    );
    let deadline = Instant::now() + limit;
    while !stalled
        .received
        .lock()
        .unwrap()
        .starts_with("POST /v1/transactions HTTP/1.1\r\n")
    {
        assert!(
            Instant::now() < deadline,
            "the script never reached the stalled mailpush: {:?}\ndovecot log:\n{}",
            stalled.received.lock().unwrap(),
            std::fs::read_to_string(&dovecot_log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Dovecot: "… failed: Absolute request timeout expired (Request queued 0.501 secs ago, …)"
    wait_for_log_line(
        &dovecot_log,
        &[
            "lmtp(stall@example.com)",
            "Error: ",
            &format!("mailpush: POST {stall_url} failed: "),
            "timeout",
        ],
        limit,
    )
    .await;
    let (resp, took) = lmtp_deliver(lmtp_port, "down@example.com", MAIL, bound).await;
    assert!(resp.starts_with("250"), "mailpush down: {resp}");
    assert!(took < bound, "mailpush down delayed delivery by {took:?}");
    wait_for_log_line(
        &dovecot_log,
        &[
            "lmtp(down@example.com)",
            "Error: ",
            &format!("mailpush: POST {down_url} failed: "),
            "Connection refused",
        ],
        limit,
    )
    .await;

    // What the script POSTs: canonical JSON with the user's METADATA.
    let (resp, _) = lmtp_deliver(lmtp_port, "tap@example.com", MAIL, limit).await;
    assert!(resp.starts_with("250"), "DATA: {resp}");
    let deadline = Instant::now() + limit;
    let (head, txn) = loop {
        let found = tap.lock().unwrap().iter().find_map(|p| {
            let txn = Transaction::from_json(&p.body).expect("canonical JSON");
            let new = txn
                .events
                .iter()
                .any(|e| e.name().to_string() == "MessageNew");
            new.then(|| (p.head.clone(), txn))
        });
        if let Some(found) = found {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "no MessageNew POSTed for tap: {:?}",
            tap.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        head.starts_with("POST /v1/transactions HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(
        head.contains("\r\nContent-Type: application/json\r\n"),
        "{head}"
    );
    assert_eq!(txn.user, "tap@example.com");
    assert_eq!(
        txn.metadata,
        BTreeMap::from([(
            "/private/vendor/vendor.dovecot/http-notify".to_string(),
            "user=22@3".to_string()
        )])
    );

    // Raw 8-bit headers (Latin-1 from a legacy mailer): the script still sends UTF-8,
    // each byte that is not UTF-8 a U+FFFD, as Dovecot's own JSON writer does.
    let latin1: &[u8] = b"From: Ren\xe9 <rene@barfoo.org>\r\nTo: tap@example.com\r\nSubject: caf\xe9 \xe2\x82 \xe2\x82\xac\r\nMessage-ID: <latin1@barfoo.org>\r\n\r\nbody\r\n";
    let (resp, _) = lmtp_deliver(lmtp_port, "tap@example.com", latin1, limit).await;
    assert!(resp.starts_with("250"), "DATA: {resp}");
    let deadline = Instant::now() + limit;
    let event = loop {
        let found = tap.lock().unwrap().iter().find_map(|p| {
            let txn: serde_json::Value = serde_json::from_str(&p.body)
                .unwrap_or_else(|e| panic!("the script sent {}: {e}", p.body));
            txn["events"]
                .as_array()?
                .iter()
                .find(|e| e["message_id"] == "<latin1@barfoo.org>")
                .cloned()
        });
        if let Some(found) = found {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "no MessageNew POSTed for the Latin-1 mail"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(event["from"], "Ren\u{fffd} <rene@barfoo.org>", "{event}");

    // IMAP: every other event kind.
    let (r, mut w) = connect(imap_port).await.into_split();
    let mut r = BufReader::new(r);
    let mut greeting = String::new();
    r.read_line(&mut greeting).await.unwrap();
    imap(&mut r, &mut w, "a1", "LOGIN alice@example.com secret").await;
    imap(&mut r, &mut w, "a2", "SELECT INBOX").await;
    let appended = "From: bob@example.com\r\nTo: Carol <carol@example.com>\r\nSubject: appended\r\n\r\nhello\r\n";
    w.write_all(
        format!(
            "a3 APPEND INBOX (\\Flagged $Label2) {{{}}}\r\n",
            appended.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut cont = String::new();
    r.read_line(&mut cont).await.unwrap();
    assert!(cont.starts_with('+'), "{cont}");
    w.write_all(format!("{appended}\r\n").as_bytes())
        .await
        .unwrap();
    read_tagged(&mut r, "a3").await;
    imap(&mut r, &mut w, "a4", "UID STORE 1 +FLAGS (\\Seen)").await;
    imap(
        &mut r,
        &mut w,
        "a5",
        "UID STORE 1 +FLAGS (\\Deleted $Label1)",
    )
    .await;
    imap(&mut r, &mut w, "a6", "UID STORE 1 -FLAGS (\\Seen)").await;
    imap(
        &mut r,
        &mut w,
        "a61",
        "UID STORE 1 -FLAGS (\\Deleted $Label1)",
    )
    .await;
    imap(&mut r, &mut w, "a62", "UID STORE 1 +FLAGS (\\Deleted)").await;
    imap(&mut r, &mut w, "a7", "EXPUNGE").await;
    imap(&mut r, &mut w, "a8", "CREATE Foo").await;
    imap(&mut r, &mut w, "a9", "RENAME Foo Bar").await;
    imap(&mut r, &mut w, "b1", "SUBSCRIBE Bar").await;
    imap(&mut r, &mut w, "b2", "UNSUBSCRIBE Bar").await;
    imap(&mut r, &mut w, "b3", "DELETE Bar").await;
    imap(&mut r, &mut w, "b4", "LOGOUT").await;

    // Wait until mailpush's webhook driver has seen every event of alice's (and the ox
    // MessageNew). What Dovecot 2.3 gives for the operations above, kind by kind:
    // FlagsClear on every STORE (possibly all empty), FlagsSet on every STORE that set a
    // flag or changed a keyword (a -FLAGS of flags only gives none), MessageTrash on
    // each setting of \Deleted; MailboxCreate INBOX comes from `doveadm mailbox
    // metadata set` creating alice's INBOX.
    let expected: BTreeMap<&str, usize> = BTreeMap::from([
        ("FlagsClear", 5),
        ("FlagsSet", 4),
        ("MailboxCreate", 2),
        ("MailboxDelete", 1),
        ("MailboxRename", 1),
        ("MailboxSubscribe", 1),
        ("MailboxUnsubscribe", 1),
        ("MessageAppend", 1),
        ("MessageExpunge", 1),
        ("MessageNew", 1),
        ("MessageRead", 1),
        ("MessageTrash", 2),
    ]);
    let alice_counts = |by_name: &BTreeMap<String, Vec<(String, Event)>>| {
        by_name
            .iter()
            .map(|(k, v)| {
                let n = v.iter().filter(|(u, _)| u == "alice@example.com").count();
                (k.clone(), n)
            })
            .filter(|(_, n)| *n > 0)
            .collect::<BTreeMap<_, _>>()
    };
    let mut by_name: BTreeMap<String, Vec<(String, Event)>> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        by_name.clear();
        for req in server.requests() {
            let txn = Transaction::from_json(&req.body_text()).expect("canonical JSON");
            for e in txn.events {
                by_name
                    .entry(e.name().to_string())
                    .or_default()
                    .push((txn.user.clone(), e));
            }
        }
        let ox_seen = by_name
            .get("MessageNew")
            .is_some_and(|v| v.iter().any(|(u, _)| u == "11@3"));
        let counts = alice_counts(&by_name);
        let all_in = expected
            .iter()
            .all(|(k, n)| counts.get(*k).is_some_and(|c| c >= n));
        if all_in && ox_seen {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "missing events; got {counts:?}, ox: {ox_seen}\nmailpush log:\n{}\ndovecot log:\n{}",
            mp.log.lock().unwrap(),
            std::fs::read_to_string(root_path.join("dovecot.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let counts = alice_counts(&by_name);
    assert_eq!(
        counts
            .iter()
            .map(|(k, n)| (k.as_str(), *n))
            .collect::<BTreeMap<_, _>>(),
        expected,
        "alice's events by kind"
    );

    // Fields, kind by kind.
    let alice = |name: &str| -> Vec<Event> {
        by_name[name]
            .iter()
            .filter(|(u, _)| u == "alice@example.com")
            .map(|(_, e)| e.clone())
            .collect()
    };
    let Event::MessageNew(m) = &alice("MessageNew")[0] else {
        panic!()
    };
    assert_eq!(m.mailbox, "INBOX");
    assert!(m.uid > 0 && m.uid_validity > 0);
    assert_eq!(
        m.from.as_deref(),
        Some("=?utf-8?q?=C3=84lice?= <alice@barfoo.org>")
    );
    assert_eq!(m.from_address.as_deref(), Some("alice@barfoo.org"));
    assert_eq!(m.from_display_name.as_deref(), Some("Älice"));
    assert_eq!(m.subject_utf8.as_deref(), Some("Test päivää"));
    assert_eq!(m.message_id.as_deref(), Some("<1@barfoo.org>"));
    assert_eq!(m.date, Some(1546336800));
    assert_eq!(m.tz, Some(120));
    assert!(
        m.snippet
            .as_deref()
            .unwrap_or("")
            .starts_with("Hey guys This is only a test"),
        "{:?}",
        m.snippet
    );
    assert_eq!(m.unseen, Some(1));
    assert_eq!(m.messages, Some(1));
    assert!(m.recent.is_some(), "{m:?}");
    assert_eq!(m.to.as_deref(), Some("bob@example.com"));
    assert_eq!(m.to_address.as_deref(), Some("bob@example.com"));
    assert_eq!(m.to_display_name, None);
    // Delivery sets no flags (\Recent is not among them).
    assert_eq!(m.flags.as_deref(), Some(&[][..]));
    assert_eq!(m.keywords.as_deref(), Some(&[][..]));
    let Event::MessageAppend(a) = &alice("MessageAppend")[0] else {
        panic!()
    };
    assert_eq!(
        (a.mailbox.as_str(), a.uid, a.uid_validity),
        ("INBOX", m.uid + 1, m.uid_validity)
    );
    assert_eq!(a.from.as_deref(), Some("bob@example.com"));
    assert_eq!(a.from_address.as_deref(), Some("bob@example.com"));
    assert_eq!(a.from_display_name, None);
    assert_eq!(a.to.as_deref(), Some("Carol <carol@example.com>"));
    assert_eq!(a.to_address.as_deref(), Some("carol@example.com"));
    assert_eq!(a.to_display_name.as_deref(), Some("Carol"));
    assert_eq!(a.subject_utf8.as_deref(), Some("appended"));
    assert_eq!(a.message_id, None);
    // No Date header: Dovecot gives 0/0.
    assert_eq!((a.date, a.tz), (Some(0), Some(0)));
    assert_eq!(a.snippet.as_deref(), Some("hello"));
    // The flags given to APPEND (they produce no FlagsSet).
    assert_eq!(a.flags, Some(vec!["\\Flagged".to_string()]));
    assert_eq!(a.keywords, Some(vec!["$Label2".to_string()]));
    // Both INBOX messages are unseen when the APPEND commits.
    assert_eq!(a.unseen, Some(2));
    assert_eq!(a.messages, Some(2));
    assert!(a.recent.is_some(), "{a:?}");
    assert!(alice("FlagsSet")
        .iter()
        .any(|e| matches!(e, Event::FlagsSet(f) if f.flags == ["\\Seen"])));
    assert!(alice("FlagsSet")
        .iter()
        .any(|e| matches!(e, Event::FlagsSet(f) if f.keywords == ["$Label1"])));
    assert!(alice("FlagsSet")
        .iter()
        .any(|e| matches!(e, Event::FlagsSet(f) if f.flags.is_empty() && f.keywords.is_empty())));
    assert!(alice("FlagsClear")
        .iter()
        .any(|e| matches!(e, Event::FlagsClear(f) if f.flags == ["\\Seen"])));
    // -FLAGS (\Deleted $Label1): what was cleared and, as the Lua driver asks Dovecot to
    // store them, the flags and keywords before (\Recent included: this IMAP session is
    // the first to see the delivered mail).
    let cleared: Vec<_> = alice("FlagsClear")
        .into_iter()
        .filter_map(|e| match e {
            Event::FlagsClear(f) if !f.keywords.is_empty() => Some(f),
            _ => None,
        })
        .collect();
    assert_eq!(cleared.len(), 1, "{cleared:?}");
    let c = &cleared[0];
    assert_eq!((c.uid, c.uid_validity), (m.uid, m.uid_validity));
    assert_eq!(c.flags, ["\\Deleted"]);
    assert_eq!(c.keywords, ["$Label1"]);
    assert_eq!(
        c.flags_old,
        Some(vec!["\\Deleted".to_string(), "\\Recent".to_string()])
    );
    assert_eq!(c.keywords_old, Some(vec!["$Label1".to_string()]));
    // Every FlagsClear carries flags_old/keywords_old (the first STORE: just \Recent).
    assert!(alice("FlagsClear").iter().all(|e| matches!(e,
        Event::FlagsClear(f) if f.flags_old.is_some() && f.keywords_old.is_some())));
    assert!(alice("MessageRead")
        .iter()
        .all(|e| e.message() == Some((1, m.uid_validity))));
    for kind in ["MessageRead", "MessageTrash", "MessageExpunge"] {
        for e in alice(kind) {
            assert_eq!(e.message(), Some((m.uid, m.uid_validity)), "{kind}");
            assert_eq!(e.mailbox(), "INBOX", "{kind}");
        }
    }
    assert!(alice("MailboxCreate")
        .iter()
        .any(|e| e.mailbox() == "INBOX"));
    assert!(alice("MailboxCreate").iter().any(|e| e.mailbox() == "Foo"));
    assert!(alice("MailboxRename").iter().any(
        |e| matches!(e, Event::MailboxRename(r) if r.mailbox == "Bar" && r.mailbox_old == "Foo")
    ));
    for kind in ["MailboxSubscribe", "MailboxUnsubscribe", "MailboxDelete"] {
        assert!(alice(kind).iter().any(|e| e.mailbox() == "Bar"), "{kind}");
    }
    // Dovecot's own ox driver → the OX-compatible endpoint → a MessageNew for 11@3.
    let ox: Vec<_> = by_name["MessageNew"]
        .iter()
        .filter(|(u, _)| u == "11@3")
        .collect();
    let Event::MessageNew(o) = &ox[0].1 else {
        panic!()
    };
    assert_eq!(
        (o.mailbox.as_str(), o.uid, o.uid_validity),
        ("INBOX", m.uid, m.uid_validity)
    );
    assert_eq!(o.from, m.from);
    assert_eq!(
        o.subject.as_deref(),
        Some("Test =?utf-8?q?p=C3=A4iv=C3=A4=C3=A4?=")
    );
    // The OX round trip: Dovecot's own ox driver PUTs to mailpush's OX-compatible
    // endpoint (token as the Basic password) with the OX user of user_from_metadata;
    // mailpush's ox driver pushes for that user. With the push for alice's own hand-off
    // (her METADATA is user=11@3 too), OX gets the same notification twice.
    let deadline = Instant::now() + limit;
    let to_ox = loop {
        let puts: Vec<String> = oxapp
            .requests()
            .iter()
            .map(|r| r.body_text())
            .filter(|b| b.contains("\"user\":\"11@3\""))
            .collect();
        if puts.len() >= 2 {
            break puts;
        }
        assert!(
            Instant::now() < deadline,
            "OX got {puts:?}; mailpush log:\n{}",
            mp.log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(to_ox.len(), 2, "{to_ox:?}");
    // The same request either way, but for the subject: the round trip keeps the raw
    // header Dovecot's ox driver sent; the hand-off has only the decoded subject Dovecot
    // gives its Lua driver (docs/events.md).
    let raw = "\"subject\":\"Test =?utf-8?q?p=C3=A4iv=C3=A4=C3=A4?=\"";
    let decoded = "\"subject\":\"Test päivää\"";
    let mut normalised: Vec<String> = to_ox.iter().map(|b| b.replace(raw, decoded)).collect();
    normalised.dedup();
    assert_eq!(normalised.len(), 1, "{to_ox:?}");
    assert!(to_ox.iter().any(|b| b.contains(raw)), "{to_ox:?}");
    assert!(
        to_ox[0].starts_with(&format!(
            "{{\"user\":\"11@3\",\"event\":\"messageNew\",\"folder\":\"INBOX\",\"imap-uidvalidity\":{},\"imap-uid\":{}",
            m.uid_validity, m.uid
        )),
        "{}",
        to_ox[0]
    );
    // Every hand-off was read and removed.
    let left: Vec<_> = std::fs::read_dir(root_path.join("handoff"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    drop(mp);
}

/// A mail whose Subject names it.
fn mail(subject: &str) -> String {
    format!("From: alice@barfoo.org\r\nTo: u@example.com\r\nSubject: {subject}\r\nDate: Tue, 1 Jan 2019 12:00:00 +0200\r\n\r\nbody of {subject}\r\n")
}

/// Per user, the subjects of the MessageNew events mailpush's webhook driver received,
/// in arrival order.
fn received_subjects(server: &RecordingServer) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for req in server.requests() {
        let txn = Transaction::from_json(&req.body_text()).expect("canonical JSON");
        for e in txn.events {
            if let Event::MessageNew(m) = e {
                out.entry(txn.user.clone())
                    .or_default()
                    .push(m.subject_utf8.unwrap_or_default());
            }
        }
    }
    out
}

/// Waits until every (user, subject) sent arrived; then checks each user's order (by
/// first arrival) and, unless `duplicates_allowed`, that none arrived twice.
async fn all_arrive(
    server: &RecordingServer,
    sent: &BTreeMap<String, Vec<String>>,
    duplicates_allowed: bool,
    what: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let got = loop {
        let got = received_subjects(server);
        let complete = sent.iter().all(|(u, subjects)| {
            subjects
                .iter()
                .all(|s| got.get(u).is_some_and(|g| g.contains(s)))
        });
        if complete {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not everything arrived; sent {sent:?}, got {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for (user, subjects) in sent {
        let arrived = &got[user];
        let mut first: Vec<&String> = Vec::new();
        for s in arrived {
            if !first.contains(&s) {
                first.push(s);
            } else {
                assert!(
                    duplicates_allowed,
                    "{what}: {user} got {s} twice: {arrived:?}"
                );
            }
        }
        let expected: Vec<&String> = first
            .iter()
            .copied()
            .filter(|s| subjects.contains(s))
            .collect();
        let in_order: Vec<&String> = subjects.iter().collect();
        assert_eq!(expected, in_order, "{what}: {user}'s order");
    }
}

/// IMAP actions as u3: create, rename and delete a folder named after `tag`.
async fn imap_actions(imap_port: u16, tag: &str) {
    let (r, mut w) = connect(imap_port).await.into_split();
    let mut r = BufReader::new(r);
    let mut greeting = String::new();
    r.read_line(&mut greeting).await.unwrap();
    imap(&mut r, &mut w, "a1", "LOGIN u3@example.com secret").await;
    imap(&mut r, &mut w, "a2", &format!("CREATE Away{tag}")).await;
    imap(&mut r, &mut w, "a3", &format!("RENAME Away{tag} Back{tag}")).await;
    imap(&mut r, &mut w, "a4", &format!("DELETE Back{tag}")).await;
    imap(&mut r, &mut w, "a5", "LOGOUT").await;
}

/// Waits until u3's folder events of [`imap_actions`] (`tag`) arrived, in order.
async fn mailbox_events_arrive(server: &RecordingServer, tag: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let (away, back) = (format!("Away{tag}"), format!("Back{tag}"));
    loop {
        let mut names: Vec<String> = server
            .requests()
            .iter()
            .filter_map(|r| Transaction::from_json(&r.body_text()).ok())
            .filter(|t| t.user == "u3@example.com")
            .flat_map(|t| t.events.into_iter())
            .filter(|e| e.mailbox() == away || e.mailbox() == back)
            .map(|e| e.name().to_string())
            .collect();
        // At-least-once (after a SIGKILL): a repeat of what came before is allowed.
        names.dedup();
        if names.len() >= 3 {
            assert_eq!(
                names,
                ["MailboxCreate", "MailboxRename", "MailboxDelete"],
                "{tag}"
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "u3's folder events ({tag}): {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

/// The hand-off loses nothing and never holds mail: 100+ LMTP deliveries (some to 2
/// recipients) and IMAP actions while mailpush is stopped, then while it is SIGSTOPped,
/// then across a SIGKILL — every transaction arrives, each user's in order; LMTP DATA →
/// 250 stays within 50 ms of a delivery without any push plugin (median over 20
/// deliveries to 2 recipients), beside Dovecot's own ox driver with a slow endpoint.
#[tokio::test(flavor = "multi_thread")]
async fn handoff_loses_nothing_and_never_holds_mail() {
    if !dovecot_or_skip() {
        return;
    }
    let root = test_root();
    let root_path = root.path().to_path_buf();
    let server = RecordingServer::start().await;
    let slow_ox = RecordingServer::start().await;
    slow_ox.set_default(Reply::Status {
        status: 200,
        headers: vec![],
        delay: Duration::from_secs(3),
    });
    // handoff_owners = vmail: the user must exist before mailpush starts.
    vmail_ids();
    let mp_conf = root_path.join("mailpush.conf");
    std::fs::write(
        &mp_conf,
        format!(
            "mailpush {{\n state_dir = mp-state\n listen = 127.0.0.1:0\n handoff_dir = handoff\n handoff_owners = vmail\n}}\nplugin {{\n push_notification_driver = wasm:file={} url={} allow_hosts=127.0.0.1 allow_private timeout_msecs=1000\n push_notification_driver2 = dlog:file=dlog.log\n}}\n",
            guest("webhook").display(),
            server.url("/events"),
        ),
    )
    .unwrap();
    // Started once to create the hand-off directory, then stopped.
    let mp = RunningDaemon::start(&mp_conf);
    assert!(mp.stop().success());

    let users = [
        ("u1", String::new()),
        ("u2", String::new()),
        ("u3", String::new()),
        ("u4", String::new()),
        // Dovecot's own ox driver with a 3 s endpoint: the comparison.
        (
            "oxslow",
            format!(
                "userdb_push_notification_driver=ox:url={}",
                slow_ox.url("/preliminary/http-notify/v1/notify")
            ),
        ),
    ];
    let plugin = format!(
        "  push_notification_driver = lua:file={root}/mailpush.lua\n  mailpush_handoff_dir = {root}/handoff\n",
        root = root_path.display(),
    );
    let (dovecot, imap_port, lmtp_port) = start_dovecot(&root_path, &users, PUSH_PLUGINS, &plugin);
    // The baseline: the same Dovecot without any push plugin (a separate instance:
    // Dovecot 2.3 panics when users of one process differ in push_notification).
    let plain_root = test_root();
    let (_plain, _, plain_lmtp) = start_dovecot(
        plain_root.path(),
        &[("p1", String::new()), ("p2", String::new())],
        "",
        "",
    );
    doveadm(
        &dovecot,
        &[
            "mailbox",
            "metadata",
            "set",
            "-u",
            "oxslow@example.com",
            "-s",
            "",
            "/private/vendor/vendor.dovecot/http-notify",
            "user=33@3",
        ],
    );
    let limit = Duration::from_secs(30);
    let mut sent: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut n = 0;
    // The next mail (its subject numbered) for `rcpts`, noted as sent to each.
    fn plan(
        sent: &mut BTreeMap<String, Vec<String>>,
        n: &mut usize,
        rcpts: Vec<&'static str>,
    ) -> (Vec<&'static str>, String) {
        *n += 1;
        let subject = format!("m-{n}");
        for r in &rcpts {
            sent.entry(format!("{r}@example.com"))
                .or_default()
                .push(subject.clone());
        }
        (rcpts, subject)
    }
    macro_rules! deliver {
        ($rcpts:expr) => {
            plan(&mut sent, &mut n, $rcpts)
        };
    }
    let at = |u: &str| format!("{u}@example.com");

    // Timing: 20 deliveries to 2 recipients without push, 20 with the hand-off (while
    // mailpush is stopped, then stalled), interleaved.
    async fn timed(
        (plain, lmtp): (u16, u16),
        pairs: Vec<(Vec<&'static str>, String)>,
        limit: Duration,
        log: &Path,
    ) -> (Vec<Duration>, Vec<Duration>) {
        let (mut base, mut hand) = (Vec::new(), Vec::new());
        for (k, (rcpts, subject)) in pairs.into_iter().enumerate() {
            let b = format!("base-{subject}");
            let (resp, took) = lmtp_deliver_to(
                plain,
                &["p1@example.com", "p2@example.com"],
                &mail(&b),
                limit,
            )
            .await;
            assert!(
                resp.starts_with("250"),
                "{resp:?}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            base.push(took);
            let to: Vec<String> = rcpts.iter().map(|r| format!("{r}@example.com")).collect();
            let to: Vec<&str> = to.iter().map(String::as_str).collect();
            let (resp, took) = lmtp_deliver_to(lmtp, &to, &mail(&subject), limit).await;
            assert_eq!(resp.matches("250").count(), 2, "{k}: {resp}");
            hand.push(took);
        }
        (base, hand)
    }

    // A: mailpush stopped.
    let pairs: Vec<_> = (0..20).map(|_| deliver!(vec!["u1", "u2"])).collect();
    let (base_stopped, hand_stopped) = timed(
        (plain_lmtp, lmtp_port),
        pairs,
        limit,
        &root_path.join("dovecot.log"),
    )
    .await;
    for i in 0..60 {
        let rcpts = if i % 5 == 0 {
            vec!["u3", "u4"]
        } else {
            vec![["u1", "u2", "u3", "u4"][i % 4]]
        };
        let (rcpts, subject) = deliver!(rcpts);
        let to: Vec<String> = rcpts.iter().map(|r| at(r)).collect();
        let to: Vec<&str> = to.iter().map(String::as_str).collect();
        let (resp, _) = lmtp_deliver_to(lmtp_port, &to, &mail(&subject), limit).await;
        assert!(resp.starts_with("250"), "{resp}");
    }
    imap_actions(imap_port, "A").await;
    let waiting = std::fs::read_dir(root_path.join("handoff"))
        .unwrap()
        .count();
    assert!(waiting >= 100, "{waiting} hand-offs waiting");
    let mut mp = RunningDaemon::start(&mp_conf);
    all_arrive(&server, &sent, false, "stopped").await;
    mailbox_events_arrive(&server, "A").await;

    // B: mailpush stalled (SIGSTOP), then continued.
    mp.signal("STOP");
    let pairs: Vec<_> = (0..20).map(|_| deliver!(vec!["u1", "u2"])).collect();
    let (base_stalled, hand_stalled) = timed(
        (plain_lmtp, lmtp_port),
        pairs,
        limit,
        &root_path.join("dovecot.log"),
    )
    .await;
    imap_actions(imap_port, "B").await;
    mp.signal("CONT");
    all_arrive(&server, &sent, false, "stalled").await;
    mailbox_events_arrive(&server, "B").await;

    // C: mailpush killed (SIGKILL) in the middle of a run of deliveries; restarted.
    let mut batch = Vec::new();
    for i in 0..40 {
        batch.push(deliver!(vec![["u1", "u2", "u3", "u4"][i % 4]]));
    }
    for (i, (rcpts, subject)) in batch.into_iter().enumerate() {
        if i == 15 {
            mp.child.kill().unwrap();
            mp.child.wait().unwrap();
            imap_actions(imap_port, "C").await;
        }
        let to = at(rcpts[0]);
        let (resp, _) = lmtp_deliver(lmtp_port, &to, &mail(&subject), limit).await;
        assert!(resp.starts_with("250"), "{resp}");
    }
    drop(mp);
    let mp = RunningDaemon::start(&mp_conf);
    all_arrive(&server, &sent, true, "killed").await;
    mailbox_events_arrive(&server, "C").await;
    // Every MessageNew also reached the dlog file.
    let dlog = std::fs::read_to_string(root_path.join("dlog.log")).unwrap();
    for s in sent.values().flatten() {
        assert!(
            dlog.contains(&format!("MessageNew: Subject [{s}]\n")),
            "{s} is not in the dlog file"
        );
    }

    // Dovecot's own ox driver, its endpoint answering after 3 s.
    let mut ox = Vec::new();
    for k in 0..3 {
        let (resp, took) = lmtp_deliver(
            lmtp_port,
            "oxslow@example.com",
            &mail(&format!("ox-{k}")),
            limit,
        )
        .await;
        assert!(resp.starts_with("250"), "{resp}");
        ox.push(took);
    }

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let report = [
        ("no push plugin", &base_stopped),
        ("hand-off, mailpush stopped", &hand_stopped),
        ("no push plugin", &base_stalled),
        ("hand-off, mailpush stalled (SIGSTOP)", &hand_stalled),
    ];
    for (what, times) in report {
        let mut sorted = times.to_vec();
        sorted.sort();
        eprintln!(
            "LMTP DATA→250, 2 recipients, {what}: median {:.1} ms (min {:.1}, max {:.1}, n={})",
            ms(median(times.to_vec())),
            ms(sorted[0]),
            ms(sorted[sorted.len() - 1]),
            times.len()
        );
    }
    eprintln!(
        "LMTP DATA→250, 1 recipient, Dovecot's ox driver with a 3 s endpoint: median {:.0} ms (n=3)",
        ms(median(ox.clone()))
    );
    for (base, hand, what) in [
        (&base_stopped, &hand_stopped, "stopped"),
        (&base_stalled, &hand_stalled, "stalled"),
    ] {
        let (b, h) = (median(base.clone()), median(hand.clone()));
        assert!(
            h <= b + Duration::from_millis(50),
            "mailpush {what}: the hand-off took {h:?} against {b:?} without push"
        );
    }
    drop(mp);
}
