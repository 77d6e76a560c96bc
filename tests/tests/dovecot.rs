//! A real Dovecot 2.3 (Debian's packages) feeding mailpush: the Lua forwarder
//! (examples/dovecot/mailpush.lua) and Dovecot's own ox driver pointed at mailpush's
//! OX-compatible endpoint. Mail is delivered over LMTP, then changed over IMAP; every one
//! of the 12 event kinds must reach mailpush's drivers with the right fields.
//!
//! Needs root and `dovecot`; `.ci/run` installs it. Outside CI the test is skipped (with
//! a message) when Dovecot is missing; under CI (`CI=true`) a missing Dovecot fails.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mailpush_core::{Event, Transaction};
use mailpush_e2e::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
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

fn vmail_ids() -> (String, String) {
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

const MAIL: &str = "From: =?utf-8?q?=C3=84lice?= <alice@barfoo.org>\r\nTo: bob@example.com\r\nSubject: Test =?utf-8?q?p=C3=A4iv=C3=A4=C3=A4?=\r\nMessage-ID: <1@barfoo.org>\r\nDate: Tue, 1 Jan 2019 12:00:00 +0200\r\n\r\nHey guys\r\nThis is only a test...\r\n";

#[tokio::test(flavor = "multi_thread")]
async fn dovecot_events_reach_mailpush() {
    if !have_dovecot() {
        assert!(
            std::env::var("CI").is_err(),
            "CI must install Dovecot (see .ci/run) and run as root"
        );
        eprintln!("SKIPPED: Dovecot is not installed or not root (apt-get install dovecot-core dovecot-imapd dovecot-lmtpd)");
        return;
    }
    let (uid, gid) = vmail_ids();
    let root = tempfile::Builder::new()
        .prefix("mailpush-dovecot")
        .tempdir()
        .unwrap();
    let root_path = root.path().to_path_buf();
    Command::new("chmod")
        .args(["755"])
        .arg(&root_path)
        .status()
        .unwrap();

    // mailpush: the webhook driver records every transaction as canonical JSON.
    let server = RecordingServer::start().await;
    let mp_conf = root_path.join("mailpush.conf");
    std::fs::write(
        &mp_conf,
        format!(
            "mailpush {{\n state_dir = mp-state\n listen = 127.0.0.1:0\n}}\nplugin {{\n push_notification_driver = wasm:file={} url={} allow_hosts=127.0.0.1 allow_private timeout_msecs=1000\n push_notification_driver2 = dlog:file=dlog.log\n}}\n",
            guest("webhook").display(),
            server.url("/events")
        ),
    )
    .unwrap();
    let mp = RunningDaemon::start(&mp_conf);

    // Dovecot: private instance on high ports.
    let (imap_port, lmtp_port) = (free_port(), free_port());
    let home = root_path.join("home/alice");
    std::fs::create_dir_all(&home).unwrap();
    Command::new("chown")
        .args(["-R", &format!("{uid}:{gid}")])
        .arg(root_path.join("home"))
        .status()
        .unwrap();
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/dovecot/mailpush.lua"
        ),
        root_path.join("mailpush.lua"),
    )
    .unwrap();
    std::fs::write(
        root_path.join("users"),
        format!(
            "alice@example.com:{{PLAIN}}secret:{uid}:{gid}::{}\n",
            home.display()
        ),
    )
    .unwrap();
    let conf = root_path.join("dovecot.conf");
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
mail_plugins = notify push_notification mail_lua push_notification_lua
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
  push_notification_driver = lua:file={root}/mailpush.lua
  push_notification_driver2 = ox:url=http://127.0.0.1:{mp_port}/preliminary/http-notify/v1/notify user_from_metadata
  mailpush_url = http://127.0.0.1:{mp_port}/v1/transactions
  mailpush_timeout_msecs = 2000
}}
"#,
            root = root_path.display(),
            mp_port = mp.addr.port(),
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
        std::fs::read_to_string(root_path.join("dovecot.log")).unwrap_or_default()
    );
    let _dovecot = Dovecot { conf: conf.clone() };
    let doveadm = |args: &[&str]| {
        let out = Command::new("doveadm")
            .arg("-c")
            .arg(&conf)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "doveadm {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // Activate the ox driver for alice (Dovecot's METADATA).
    doveadm(&[
        "mailbox",
        "metadata",
        "set",
        "-u",
        "alice@example.com",
        "-s",
        "",
        "/private/vendor/vendor.dovecot/http-notify",
        "user=11@3",
    ]);

    let connect = |port: u16| async move {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        for _ in 0..100 {
            if let Ok(s) = TcpStream::connect(addr).await {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("cannot connect to Dovecot on {addr}");
    };

    // LMTP delivery → MessageNew.
    let (r, mut w) = connect(lmtp_port).await.into_split();
    let mut r = BufReader::new(r);
    assert!(smtp_line(&mut r).await.starts_with("220"));
    for (cmd, code) in [
        ("LHLO test", "250"),
        ("MAIL FROM:<alice@barfoo.org>", "250"),
        ("RCPT TO:<alice@example.com>", "250"),
        ("DATA", "354"),
    ] {
        w.write_all(format!("{cmd}\r\n").as_bytes()).await.unwrap();
        let resp = smtp_line(&mut r).await;
        assert!(resp.starts_with(code), "{cmd}: {resp}");
    }
    w.write_all(format!("{MAIL}.\r\n").as_bytes())
        .await
        .unwrap();
    let resp = smtp_line(&mut r).await;
    assert!(resp.starts_with("250"), "DATA: {resp}");
    w.write_all(b"QUIT\r\n").await.unwrap();

    // IMAP: every other event kind.
    let (r, mut w) = connect(imap_port).await.into_split();
    let mut r = BufReader::new(r);
    let mut greeting = String::new();
    r.read_line(&mut greeting).await.unwrap();
    imap(&mut r, &mut w, "a1", "LOGIN alice@example.com secret").await;
    imap(&mut r, &mut w, "a2", "SELECT INBOX").await;
    let appended = "From: bob@example.com\r\nSubject: appended\r\n\r\nhello\r\n";
    w.write_all(format!("a3 APPEND INBOX {{{}}}\r\n", appended.len()).as_bytes())
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
    imap(&mut r, &mut w, "a7", "EXPUNGE").await;
    imap(&mut r, &mut w, "a8", "CREATE Foo").await;
    imap(&mut r, &mut w, "a9", "RENAME Foo Bar").await;
    imap(&mut r, &mut w, "b1", "SUBSCRIBE Bar").await;
    imap(&mut r, &mut w, "b2", "UNSUBSCRIBE Bar").await;
    imap(&mut r, &mut w, "b3", "DELETE Bar").await;
    imap(&mut r, &mut w, "b4", "LOGOUT").await;

    // Wait until mailpush's webhook driver has seen every kind (and the ox MessageNew).
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
        if by_name.len() == 12 && ox_seen {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "missing events; got {:?}\nmailpush log:\n{}\ndovecot log:\n{}",
            by_name.keys().collect::<Vec<_>>(),
            mp.log.lock().unwrap(),
            std::fs::read_to_string(root_path.join("dovecot.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

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
    let Event::MessageAppend(a) = &alice("MessageAppend")[0] else {
        panic!()
    };
    assert_eq!(a.subject_utf8.as_deref(), Some("appended"));
    assert!(alice("FlagsSet")
        .iter()
        .any(|e| matches!(e, Event::FlagsSet(f) if f.flags == ["\\Seen"])));
    assert!(alice("FlagsSet")
        .iter()
        .any(|e| matches!(e, Event::FlagsSet(f) if f.keywords == ["$Label1"])));
    assert!(alice("FlagsClear")
        .iter()
        .any(|e| matches!(e, Event::FlagsClear(f) if f.flags == ["\\Seen"])));
    assert!(alice("MessageRead")
        .iter()
        .all(|e| e.message() == Some((1, m.uid_validity))));
    assert!(!alice("MessageTrash").is_empty() && !alice("MessageExpunge").is_empty());
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
    drop(mp);
}
