//! The `mailpush` binary as a user runs it.

use std::process::Command;

fn mailpush() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mailpush"))
}

/// The tests that run the example config share its state dir: one at a time.
static EXAMPLE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn repo(path: &str) -> String {
    format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))
}

/// `mailpush ARGS -c conf`: whether it succeeded, its stdout, its stderr.
fn output(args: &[&str], conf: impl AsRef<std::ffi::OsStr>) -> (bool, String, String) {
    let out = mailpush().args(args).arg("-c").arg(conf).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `mailpush check -c conf`: whether it passed, and its stdout then stderr.
fn check(conf: &std::path::Path) -> (bool, String) {
    let (ok, stdout, stderr) = output(&["check"], conf);
    (ok, format!("{stdout}{stderr}"))
}

#[test]
fn check_explains_unknown_driver_bad_line_and_gap() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mailpush.conf");
    std::fs::write(
        &conf,
        "mailpush {\n  state_dir = state\n}\nplugin {\n  push_notification_driver = dlog\n  push_notification_driver2 = nosuch:x=1\n  this line is wrong\n  push_notification_driver4 = dlog\n}\n",
    )
    .unwrap();
    let out = mailpush()
        .args(["check", "-c"])
        .arg(&conf)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    // The bad line is a config error: reported with file:line and the offending text.
    assert!(stderr.contains("mailpush.conf:7"), "{stderr}");
    assert!(stderr.contains("this line is wrong"), "{stderr}");
    assert!(stderr.contains("expected `key = value`"), "{stderr}");
    // ... and, in the same run, the unknown driver and the numbering gap.
    assert!(stderr.contains("mailpush.conf:6"), "{stderr}");
    // In the order of the file, though the bad line was found first.
    assert!(
        stderr.find("mailpush.conf:6") < stderr.find("mailpush.conf:7"),
        "{stderr}"
    );
    assert!(stderr.contains("driver 2 (push_notification_driver2): unknown push notification driver `nosuch`; known drivers: dlog"), "{stderr}");
    assert!(
        stderr.contains(
            "mailpush.conf:8: push_notification_driver4 is ignored: push_notification_driver3 is missing"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("2 error(s)"), "{stderr}");

    // Without the bad line: unknown driver and gap.
    std::fs::write(
        &conf,
        "mailpush {\n  state_dir = state\n}\nplugin {\n  push_notification_driver = dlog\n  push_notification_driver2 = nosuch:x=1\n  push_notification_driver4 = dlog   # ignored: 3 is missing\n}\n",
    )
    .unwrap();
    let out = mailpush()
        .args(["check", "-c"])
        .arg(&conf)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("mailpush.conf:6"), "{stderr}");
    assert!(stderr.contains("driver 2 (push_notification_driver2): unknown push notification driver `nosuch`; known drivers: dlog"), "{stderr}");
    assert!(
        stdout.contains("warning:")
            && stdout.contains(
                "push_notification_driver4 is ignored: push_notification_driver3 is missing"
            ),
        "{stdout}"
    );
    assert!(stdout.contains("mailpush.conf:7"), "{stdout}");
}

#[test]
fn check_redacts_secrets_in_the_driver_table() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mailpush.conf");
    std::fs::write(&conf, "mailpush {\n state_dir = state\n}\nplugin {\n push_notification_driver = dlog:file=out.log password=hunter2\n}\n").unwrap();
    let out = mailpush()
        .args(["check", "-c"])
        .arg(&conf)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("password=***") && !stdout.contains("hunter2"),
        "{stdout}"
    );
}

/// A password in a URL stays hidden in every error `check` prints, also when the URL
/// does not parse (a scheme without its colon, a password with a space that the line's
/// word splitting cuts) and in the config lines errors quote, in both config syntaxes.
#[test]
fn check_hides_passwords_in_urls_that_do_not_parse() {
    for plugin in [
        "plugin {\n push_notification_driver = ox:url=http//user:hunter2@127.0.0.1:1/x\n}\n",
        "plugin {\n push_notification_driver = ox:url=http://user:hunt er2@127.0.0.1:1/x\n}\n",
        "push_notification ox {\n  url = http//user:hunter2@127.0.0.1:1/x\n}\n",
        "push_notification ox {\n  ulr = http://user:hunter2@127.0.0.1:1/x\n}\n",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("mailpush.conf");
        std::fs::write(
            &conf,
            format!("mailpush {{\n state_dir = state\n}}\n{plugin}"),
        )
        .unwrap();
        let (ok, all) = check(&conf);
        assert!(!ok, "{plugin}: {all}");
        assert!(all.contains("user:***"), "{plugin}: {all}");
        assert!(
            !all.contains("hunter2") && !all.contains("hunt") && !all.contains("er2"),
            "{plugin}: {all}"
        );
    }
}

#[test]
fn send_runs_the_example_and_prints_dlog_lines() {
    let _example = EXAMPLE.lock().unwrap_or_else(|p| p.into_inner());
    let out = mailpush()
        .args([
            "send",
            "-c",
            &repo("examples/mailpush.conf"),
            &repo("examples/events.ndjson"),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Every dlog line of the sample, as shipped in examples/events.dlog (checked against
    // Dovecot's reference lines by the dlog tests). Transactions of different users may
    // interleave differently from run to run (order is kept per user): compare each
    // transaction's lines as a block.
    let expected = std::fs::read_to_string(repo("examples/events.dlog")).unwrap();
    assert_eq!(blocks(&stdout), blocks(&expected));
    assert!(
        stdout.contains("MailboxRename: Mailbox was renamed (old name: Old)"),
        "{stdout}"
    );
    assert!(
        stderr.contains("9 transaction(s) accepted, 0 rejected"),
        "{stderr}"
    );
    // The per-driver counts.
    assert!(
        stderr
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["1", "dlog", "9", "0", "0"]),
        "{stderr}"
    );
    // The same from standard input (`-`).
    let mut child = mailpush()
        .args(["send", "-c", &repo("examples/mailpush.conf"), "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        &std::fs::read(repo("examples/events.ndjson")).unwrap(),
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        blocks(&String::from_utf8_lossy(&out.stdout)),
        blocks(&expected)
    );
}

/// dlog output as (lines before the first transaction, each transaction's lines sorted
/// by their text, lines after the last).
fn blocks(out: &str) -> (Vec<&str>, Vec<Vec<&str>>, Vec<&str>) {
    let lines: Vec<&str> = out.lines().collect();
    let first = lines
        .iter()
        .position(|l| l.starts_with("Called begin_txn"))
        .unwrap_or(lines.len());
    let last = lines
        .iter()
        .rposition(|l| l.starts_with("Called end_txn"))
        .map_or(first, |i| i + 1);
    let mut txns: Vec<Vec<&str>> = Vec::new();
    for l in &lines[first..last] {
        if l.starts_with("Called begin_txn") {
            txns.push(Vec::new());
        }
        if let Some(t) = txns.last_mut() {
            t.push(l);
        }
    }
    txns.sort();
    (lines[..first].to_vec(), txns, lines[last..].to_vec())
}

/// The progress bar: drawn on a terminal's stderr while stdout goes elsewhere; not drawn
/// when stdout shares the terminal (dlog lines would cut through it). `script` gives the
/// command a terminal.
#[test]
fn send_shows_progress_only_when_stdout_is_elsewhere() {
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("`script` (util-linux) is needed for this test");
    }
    let _example = EXAMPLE.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("out.txt");
    let send = format!(
        "{} send -c {} {}",
        env!("CARGO_BIN_EXE_mailpush"),
        repo("examples/mailpush.conf"),
        repo("examples/events.ndjson")
    );
    let on_terminal = |cmd: &str| {
        let out = std::process::Command::new("script")
            .args(["-qec", cmd, "/dev/null"])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let both = on_terminal(&send);
    assert!(!both.contains("deliveries"), "{both}");
    assert!(both.contains("Called end_txn"));
    let redirected = on_terminal(&format!("{send} > {}", out_file.display()));
    assert!(redirected.contains("9/9 deliveries"), "{redirected}");
    assert_eq!(
        blocks(&std::fs::read_to_string(&out_file).unwrap()),
        blocks(&std::fs::read_to_string(repo("examples/events.dlog")).unwrap())
    );
}

#[test]
fn send_rejects_bad_lines_with_their_number_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mailpush.conf");
    std::fs::write(
        &conf,
        "mailpush {\n state_dir = state\n}\nplugin {\n push_notification_driver = dlog\n}\n",
    )
    .unwrap();
    let events = dir.path().join("events.ndjson");
    // Line 4 is not UTF-8: rejected by its number, the lines around it still read.
    let mut input = b"{\"user\":\"a@b\",\"events\":[{\"name\":\"MailboxCreate\",\"mailbox\":\"X\"}]}\n\n{\"user\":\"a@b\",\"events\":[{\"name\":\"MessageRead\",\"mailbox\":\"X\"}]}\n".to_vec();
    input.extend_from_slice(
        b"{\"user\":\"a@b\",\"events\":[{\"name\":\"MailboxCreate\",\"mailbox\":\"\xff\"}]}\n",
    );
    input.extend_from_slice(
        b"{\"user\":\"c@d\",\"events\":[{\"name\":\"MailboxCreate\",\"mailbox\":\"Y\"}]}\n",
    );
    std::fs::write(&events, input).unwrap();
    let out = mailpush()
        .args(["send", "-c"])
        .arg(&conf)
        .arg(&events)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("events.ndjson:line 3: $.events[0]: missing field `uid`"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "events.ndjson:line 4: $: not valid UTF-8 (byte 60 of the line); the line is skipped"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("2 transaction(s) accepted, 2 rejected"),
        "{stderr}"
    );
}

#[test]
fn help_and_version() {
    let out = mailpush().arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("mailpush "));
    for cmd in [
        "check",
        "send",
        "run",
        "status",
        "reload",
        "dlq",
        "dlq list",
        "dlq show",
        "dlq replay",
        "dlq purge",
        "metadata",
        "metadata set",
        "metadata get",
        "metadata unset",
        "metadata list",
    ] {
        let out = mailpush()
            .arg("help")
            .args(cmd.split(' '))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("Example"),
            "{cmd}: {text}"
        );
    }
}

#[test]
fn dlq_list_show_replay_purge_and_argument_errors() {
    use mailpush::spool::{sqlite::SqliteSpool, Attempt, Spool};
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mailpush.conf");
    std::fs::write(
        &conf,
        "mailpush {\n state_dir = state\n}\nplugin {\n push_notification_driver = dlog\n}\n",
    )
    .unwrap();
    let out = mailpush()
        .args(["dlq", "list", "-c"])
        .arg(&conf)
        .output()
        .unwrap();
    // No spool yet: no dead letters (and none is created).
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("0 dead letter(s)"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no spool at"));
    assert!(!dir.path().join("state/spool.db").exists());
    // A driver number the config does not have: said (its dead letters may remain).
    let out = mailpush()
        .args(["dlq", "list", "--driver", "9", "-c"])
        .arg(&conf)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("note: this config has no driver 9 (its drivers: [1])"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    {
        let spool = SqliteSpool::open(&dir.path().join("state/spool.db"), 1 << 30).unwrap();
        let t = mailpush_core::Transaction::from_json(
            r#"{"id":"d1","user":"a@b","events":[{"name":"MailboxCreate","mailbox":"X"}]}"#,
        )
        .unwrap();
        spool.append(std::slice::from_ref(&t), &[2]).unwrap();
        spool
            .dead_letter(
                &t,
                2,
                &[Attempt {
                    at: 1,
                    error: "webhook answered 400".into(),
                }],
            )
            .unwrap();
        let t2 = mailpush_core::Transaction::from_json(
            r#"{"id":"d2","user":"a@b","events":[{"name":"MailboxCreate","mailbox":"Y"}]}"#,
        )
        .unwrap();
        spool.append(std::slice::from_ref(&t2), &[2]).unwrap();
        spool.dead_letter(&t2, 2, &[]).unwrap();
        spool.append(&[], &[]).unwrap(); // round trip: the dead letters are committed
    }
    let run = |args: &[&str]| output(args, &conf);
    let (ok, _, stderr) = run(&["dlq", "list", "--driver", "ox"]);
    assert!(
        !ok && stderr.contains("`ox` is not a driver number: 1 for push_notification_driver"),
        "{stderr}"
    );
    let (ok, stdout, _) = run(&["dlq", "list", "--driver", "2"]);
    assert!(
        ok && stdout.contains("d1") && stdout.contains("webhook answered 400"),
        "{stdout}"
    );
    let id = stdout
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let (ok, stdout, _) = run(&["dlq", "show", &id]);
    assert!(
        ok && stdout.contains("attempt 1: at 1970-01-01T00:00:01Z: webhook answered 400")
            && stdout.contains("\"id\":\"d1\""),
        "{stdout}"
    );
    for verb in ["replay", "purge"] {
        let (ok, _, stderr) = run(&["dlq", verb]);
        assert!(
            !ok && stderr.contains("required") && stderr.contains("<ID|--all>"),
            "an id or --all is required: {stderr}"
        );
    }
    let (ok, _, stderr) = run(&["dlq", "show", "d1"]);
    assert!(
        !ok && stderr.contains("`d1` is not a dead letter's id: the number in the first column"),
        "{stderr}"
    );
    // `--driver` narrows `--all` only; an id that is not a dead letter's is said.
    let (ok, _, stderr) = run(&["dlq", "replay", &id, "--driver", "2"]);
    assert!(!ok && stderr.contains("cannot be used with"), "{stderr}");
    let (ok, _, stderr) = run(&["dlq", "purge", "999999"]);
    assert!(!ok && stderr.contains("no dead letter 999999"), "{stderr}");
    // Its driver (2) is not in this config: said, as the replay waits for it.
    let (ok, stdout, stderr) = run(&["dlq", "replay", &id]);
    assert!(ok && stdout.contains("1 dead letter(s) queued"), "{stdout}");
    assert!(stderr.contains("this config has no driver 2"), "{stderr}");
    // So is `--all` of every driver's.
    let (ok, stdout, stderr) = run(&["dlq", "replay", "--all"]);
    assert!(ok && stdout.contains("1 dead letter(s) queued"), "{stdout}");
    assert!(
        stderr.contains("dead letters of drivers [2], which this config does not have"),
        "{stderr}"
    );
    let (ok, stdout, _) = run(&["dlq", "purge", "--all"]);
    assert!(
        ok && stdout.contains("0 dead letter(s) purged"),
        "replayed letters are no longer dead: {stdout}"
    );
}

#[test]
fn metadata_cli_round_trip_persistence_and_doveadm_style_errors() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mailpush.conf");
    std::fs::write(&conf, "mailpush {\n state_dir = state\n}\n").unwrap();
    let run = |args: &[&str]| {
        let out = mailpush().args(args).arg("-c").arg(&conf).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let key = "/private/vendor/vendor.dovecot/http-notify";
    // Exactly as written in doveadm runbooks.
    assert_eq!(
        run(&[
            "metadata",
            "set",
            "-u",
            "user@example.com",
            "-s",
            "",
            key,
            "user=11@3"
        ])
        .0,
        Some(0)
    );
    // Each command is its own process: the value persisted.
    assert_eq!(
        run(&["metadata", "get", "-u", "user@example.com", "-s", "", key]).1,
        "user=11@3\n"
    );
    assert_eq!(
        run(&["metadata", "get", "-u", "user@example.com", key]).1,
        "user=11@3\n"
    );
    assert_eq!(
        run(&[
            "metadata",
            "set",
            "-u",
            "other@example.com",
            key,
            "user=12@3"
        ])
        .0,
        Some(0)
    );
    assert_eq!(run(&["metadata", "list"]).1.lines().count(), 2);
    // A value with a TAB and a newline stays one line of three fields (Dovecot's
    // tab-escaping), so it cannot pass for another user's row.
    let forged = "user=2\nb@x\t/private/x\tinjected";
    assert_eq!(
        run(&["metadata", "set", "-u", "forger@example.com", key, forged]).0,
        Some(0)
    );
    assert_eq!(
        run(&["metadata", "list", "-u", "forger@example.com"]).1,
        format!("forger@example.com\t{key}\tuser=2\u{1}nb@x\u{1}t/private/x\u{1}tinjected\n")
    );
    assert_eq!(
        run(&["metadata", "unset", "-u", "forger@example.com", key]).0,
        Some(0)
    );
    assert_eq!(
        run(&["metadata", "list", "-u", "other@example.com"]).1,
        format!("other@example.com\t{key}\tuser=12@3\n")
    );
    assert_eq!(
        run(&["metadata", "unset", "-u", "user@example.com", "-s", "", key]).0,
        Some(0)
    );
    // As doveadm: an unset key prints as an empty value, exit 0.
    assert_eq!(
        run(&["metadata", "get", "-u", "user@example.com", key]),
        (Some(0), "\n".to_string(), String::new())
    );
    // `list` takes doveadm's `-s ""` too.
    assert_eq!(
        run(&["metadata", "list", "-u", "other@example.com", "-s", ""]).1,
        format!("other@example.com\t{key}\tuser=12@3\n")
    );
    // Usage errors exit 64 (EX_USAGE), as doveadm's: missing -u, a mailbox other than "",
    // a bad key, a missing value, missing arguments.
    let (code, _, stderr) = run(&["metadata", "set", key, "v"]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("--user <USER>"), "{stderr}");
    let (code, _, stderr) = run(&["metadata", "set", "-u", "u", "INBOX", key, "v"]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("server METADATA only"), "{stderr}");
    let (code, _, stderr) = run(&["metadata", "set", "-u", "u", "vendor/x", "v"]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("must start with /private/ or /shared/"),
        "{stderr}"
    );
    let (code, _, stderr) = run(&["metadata", "get", "-u", "u", "vendor/x"]);
    assert_eq!(code, Some(64), "{stderr}");
    let (code, _, stderr) = run(&["metadata", "set", "-u", "u", "-s", "", key]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("missing VALUE"), "{stderr}");
    let (code, _, stderr) = run(&["metadata", "set", "-u", "u"]);
    assert_eq!(code, Some(64));
    assert!(stderr.contains("missing KEY and VALUE"), "{stderr}");
    let (code, _, stderr) = run(&["metadata", "set", "-u", "u", key]);
    assert_eq!(code, Some(64));
    assert!(stderr.contains("missing VALUE after the key"), "{stderr}");
    // The usage line shows the mailbox as optional, as doveadm takes it.
    let (_, stdout, _) = run(&["metadata", "set", "--help"]);
    assert!(
        stdout.contains("Usage: mailpush metadata set -u <USER> [-s] [MAILBOX] <KEY> <VALUE>"),
        "{stdout}"
    );
    let (code, _, stderr) = run(&["metadata", "list", "INBOX"]);
    assert_eq!(code, Some(64), "{stderr}");
}

#[test]
fn send_records_progress_so_run_does_not_deliver_again() {
    use mailpush::spool::{sqlite::SqliteSpool, Spool};
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = dir.path().join("mailpush.conf");
    std::fs::write(
        &conf,
        format!("mailpush {{\n state_dir = state\n}}\nplugin {{\n push_notification_driver = dlog\n push_notification_driver2 = ox:url=http://127.0.0.1:{port}/n\n}}\n"),
    )
    .unwrap();
    let events = dir.path().join("e.ndjson");
    std::fs::write(
        &events,
        "{\"id\":\"s1\",\"user\":\"a@b\",\"events\":[{\"name\":\"MessageNew\",\"mailbox\":\"INBOX\",\"uid\":1,\"uid_validity\":1}],\"metadata\":{\"/private/vendor/vendor.dovecot/http-notify\":\"user=1@1\"}}\n",
    )
    .unwrap();
    let out = mailpush()
        .args(["send", "-c"])
        .arg(&conf)
        .arg(&events)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the ox delivery fails (nobody listens)"
    );
    let spool = SqliteSpool::open(&dir.path().join("state/spool.db"), 1 << 30).unwrap();
    assert!(spool.pending().unwrap().is_empty(), "nothing left owed");
    let dead = spool.dead_letters(None).unwrap();
    assert_eq!(
        (dead.len(), dead[0].driver, dead[0].txn.id.as_str()),
        (1, 2, "s1")
    );
}

/// `mailpush check | head`: a closed output pipe ends the command quietly (SIGPIPE, as
/// with other Unix tools), not with a panic.
#[test]
fn a_closed_output_pipe_is_not_a_panic() {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mailpush.conf");
    std::fs::write(
        &conf,
        "mailpush {\n state_dir = state\n}\nplugin {\n push_notification_driver = dlog\n}\n",
    )
    .unwrap();
    let mut fds = [0; 2];
    // SAFETY: a plain pipe(2) call with a valid two-element array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors were just created by pipe(2) and are owned here only.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    let out = mailpush()
        .args(["check", "-c"])
        .arg(&conf)
        .stdout(std::process::Stdio::from(write))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}", out.status);
}

/// `mailpush check` on an ox line with values Dovecot would silently replace: it starts,
/// and says which defaults it uses instead.
#[test]
fn check_warns_about_ox_fallbacks() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mailpush.conf");
    std::fs::write(
        &conf,
        "mailpush {\n state_dir = state\n}\nplugin {\n push_notification_driver = ox:url=http://login:secret@127.0.0.1:9/n max_retries=x timeout_msecs=0\n}\n",
    )
    .unwrap();
    let out = mailpush()
        .args(["check", "-c"])
        .arg(&conf)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("warning: ")
            && stdout.contains("driver 1 (ox): max_retries=x is not an unsigned number; using the default max_retries=1"),
        "{stdout}"
    );
    assert!(stdout.contains("timeout_msecs=0: Dovecot's HTTP client then uses its default request timeout of 60000 ms"), "{stdout}");
    assert!(!stdout.contains("secret"), "{stdout}");
}

/// What would otherwise pass unnoticed: a mistyped dlog argument, a mistyped driver key
/// (Dovecot ignores both), no driver at all, a setting given twice. A driver key or no
/// driver at all makes the check exit 3 (mailpush would start without what it names).
#[test]
fn check_warns_about_typos_that_would_pass_silently() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mailpush.conf");
    let check_exits = |code: i32, text: &str| {
        std::fs::write(&conf, text).unwrap();
        let out = mailpush()
            .args(["check", "-c"])
            .arg(&conf)
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(code), "{all}");
        all
    };
    let out = check_exits(3, "mailpush {\n state_dir = state\n}\nplugin {\n push_notification_driver = dlog:fiel=out.log\n push_notifcation_driver2 = dlog\n}\n");
    assert!(
        out.contains("driver 1 (dlog): unknown argument `fiel` is ignored: did you mean file? (dlog reads only file="),
        "{out}"
    );
    assert!(
        out.contains("mailpush.conf:6: push_notifcation_driver2 is not a driver setting and is ignored (as Dovecot ignores it). Did you mean push_notification_driver2?"),
        "{out}"
    );
    let out = check_exits(
        3,
        "mailpush {\n state_dir = state\n}\nplugin {\n push_notifcation_driver = dlog\n}\n",
    );
    assert!(
        out.contains("no push notification driver is configured"),
        "{out}"
    );
    let out = check_exits(0, "mailpush {\n state_dir = state\n state_dir = other\n}\nplugin {\n push_notification_driver = dlog\n}\n");
    assert!(
        out.contains("mailpush.conf:3: mailpush { state_dir } overrides the value set at"),
        "{out}"
    );
}

/// `check` opens a dlog's file, as `run` would, but adds no lines to it: checking a
/// config must leave the operator's log (or the standard output `check` prints its
/// table to) as it was.
#[test]
fn check_writes_nothing_to_a_dlog_file() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mailpush.conf");
    let log = dir.path().join("push.log");
    std::fs::write(&log, "earlier line\n").unwrap();
    std::fs::write(
        &conf,
        "mailpush {\n state_dir = state\n}\nplugin {\n push_notification_driver = dlog:file=push.log\n push_notification_driver2 = dlog:file=/dev/stdout\n}\n",
    )
    .unwrap();
    let (ok, stdout, stderr) = output(&["check"], &conf);
    assert!(ok, "{stdout}{stderr}");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "earlier line\n");
    assert!(
        !stdout.contains("push_notification plugin hook"),
        "{stdout}"
    );
    assert!(stdout.starts_with("config: "), "{stdout}");
    // A file it could not open still fails the check.
    std::fs::write(
        &conf,
        "mailpush {\n state_dir = state\n}\nplugin {\n push_notification_driver = dlog:file=no/such/dir/push.log\n}\n",
    )
    .unwrap();
    let (ok, all) = check(&conf);
    assert!(!ok && all.contains("cannot open"), "{all}");
}

/// `check` shows the `mailpush { }` settings the config sets, with their lines and as
/// they take effect (a size in its unit, credentials masked); `--settings` lists every
/// one, defaults marked, like `doveconf`.
#[test]
fn check_shows_the_settings_as_they_take_effect() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mailpush.conf");
    std::fs::write(
        &conf,
        "mailpush {\n state_dir = state\n spool_quota = 524288K\n dead_letter_max_age = 0\n}\nplugin {\n push_notification_driver = dlog\n}\n",
    )
    .unwrap();
    let (ok, stdout, stderr) = output(&["check"], &conf);
    assert!(ok, "{stdout}{stderr}");
    let line = |out: &str, key: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(&format!("{key} ")))
            .unwrap_or_else(|| panic!("no {key} in:\n{out}"))
            .to_string()
    };
    let quota = line(&stdout, "spool_quota");
    assert!(
        quota.contains("= 512M") && quota.contains("mailpush.conf:3"),
        "{quota}"
    );
    assert!(
        line(&stdout, "dead_letter_max_age").contains("= 0 "),
        "{stdout}"
    );
    assert!(stdout.contains("more at their defaults"), "{stdout}");
    assert!(
        !stdout.contains("queue_capacity"),
        "defaults only with --settings: {stdout}"
    );

    let (ok, stdout, stderr) = output(&["check", "--settings"], &conf);
    assert!(ok, "{stdout}{stderr}");
    assert!(
        line(&stdout, "queue_capacity").contains("= 1024  (default)"),
        "{stdout}"
    );
    assert!(
        line(&stdout, "spool_quota").contains("mailpush.conf:3"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("cluster_lease"),
        "cluster keys only in cluster mode: {stdout}"
    );
}

/// In a Dovecot 2.4 block every argument has a line of its own: a driver's error about
/// one points at that line and quotes it (password hidden), not the block's first line.
#[test]
fn an_init_error_in_a_24_block_points_at_the_settings_line() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mailpush.conf");
    std::fs::write(
        &conf,
        "mailpush {\n state_dir = state\n}\npush_notification ox {\n  driver = ox\n  ox_url = http//user:hunter2@ox.example/x\n}\npush_notification log {\n  driver = dlog\n  retry = soon\n}\n",
    )
    .unwrap();
    let (ok, all) = check(&conf);
    assert!(!ok, "{all}");
    assert!(
        all.contains(
            "mailpush.conf:6: driver 1 (ox) failed to initialise: Failed to parse OX REST URL"
        ) && all.contains("| ox_url = http//user:***@ox.example/x"),
        "{all}"
    );
    assert!(
        all.contains("mailpush.conf:10: driver 2 (dlog): retry=soon")
            && all.contains("| retry = soon"),
        "{all}"
    );
    assert!(!all.contains("hunter2"), "{all}");
}

/// A number argument that does not parse says what it should be, not clap's
/// "invalid digit found in string".
#[test]
fn a_bad_reply_status_says_what_a_status_is() {
    for bad in ["abc", "700"] {
        let out = mailpush()
            .args(["driver", "test", "x.wasm", "--reply", bad])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success()
                && stderr.contains(&format!(
                    "`{bad}` is not an HTTP status: a number from 100 to 599"
                )),
            "{stderr}"
        );
    }
}

/// A mistyped `--log-level` would switch every log line off (tracing takes it for a
/// target name): it is refused, saying what a level is.
#[test]
fn a_mistyped_log_level_is_refused() {
    let (ok, _, stderr) = output(
        &["--log-level", "warnn", "check"],
        repo("examples/mailpush.conf"),
    );
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("invalid --log-level `warnn`: `warnn` is not a level"),
        "{stderr}"
    );
}

/// A state_dir mailpush cannot create fails `check`, naming the setting, rather than
/// failing `run` later with a bare I/O error.
#[test]
fn check_fails_on_a_state_dir_that_cannot_be_made() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, "").unwrap();
    let conf = dir.path().join("mailpush.conf");
    std::fs::write(
        &conf,
        format!(
            "mailpush {{\n state_dir = {}/state\n}}\nplugin {{\n push_notification_driver = dlog\n}}\n",
            blocker.display()
        ),
    )
    .unwrap();
    let (ok, all) = check(&conf);
    assert!(!ok, "{all}");
    assert!(
        all.contains("mailpush { state_dir = ") && all.contains("} cannot be used: "),
        "{all}"
    );
}

/// A config (in a new temp dir) whose `listen` is a free port nothing listens on.
fn config_listening_nowhere() -> (tempfile::TempDir, std::path::PathBuf) {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mailpush.conf");
    std::fs::write(
        &conf,
        format!("mailpush {{\n state_dir = state\n listen = 127.0.0.1:{port}\n}}\nplugin {{\n push_notification_driver = dlog\n}}\n"),
    )
    .unwrap();
    (dir, conf)
}

/// `status` with nothing listening says so once, with its cause once (the cause used to
/// be printed twice: in the message and again as its source).
#[test]
fn status_without_a_running_instance_says_so_once() {
    let (_dir, conf) = config_listening_nowhere();
    let (ok, _, stderr) = output(&["status"], &conf);
    assert!(!ok, "{stderr}");
    assert_eq!(
        stderr.matches("cannot reach mailpush at").count(),
        1,
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("error sending request").count(),
        1,
        "{stderr}"
    );
}

/// `status` where nothing answers at `listen` but a process holds the config's state_dir
/// (an instance started before `listen` was edited) names that process and what to do,
/// rather than saying nothing runs.
#[test]
fn status_names_the_instance_holding_the_state_dir_when_listen_moved() {
    let (dir, conf) = config_listening_nowhere();
    let state = dir.path().join("state");
    // No holder: the plain message.
    let (ok, _, stderr) = output(&["status"], &conf);
    assert!(
        !ok && !stderr.contains("holds this config's state_dir"),
        "{stderr}"
    );
    // This test process is the instance holding the state_dir.
    let _held = mailpush::spool::lock::DeliveryLock::take(&state, "start").unwrap();
    assert_eq!(
        mailpush::spool::lock::DeliveryLock::holder(&state),
        Some(std::process::id())
    );
    for command in ["status", "reload"] {
        let (ok, _, stderr) = output(&[command], &conf);
        assert!(!ok, "{stderr}");
        assert!(
            stderr.contains(&format!(
                "a mailpush (pid {}) holds this config's state_dir",
                std::process::id()
            )) && stderr.contains("kill -HUP")
                && stderr.matches("cannot reach mailpush at").count() == 1,
            "{command}: {stderr}"
        );
    }
}

/// With `--log-format json`, `run` refusing a config says so as a JSON line like every
/// other line it logs (a log shipper must not meet plain text).
#[test]
fn run_refusing_a_config_logs_json_with_log_format_json() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mailpush.conf");
    std::fs::write(
        &conf,
        "mailpush {\n state_dir = state\n listen = 127.0.0.1:0\n}\nplugin {\n push_notification_driver = nosuch\n}\n",
    )
    .unwrap();
    let (ok, _, stderr) = output(&["--log-format", "json", "run"], &conf);
    assert!(!ok, "{stderr}");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["level"] == "ERROR"
            && l["message"]
                .as_str()
                .is_some_and(|m| m.contains("refusing to start") && m.contains("nosuch"))),
        "{stderr}"
    );
}

/// `run` on an address in use says which setting, at which line, gave it.
#[test]
fn run_on_an_address_in_use_names_the_listen_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mailpush.conf");
    std::fs::write(
        &conf,
        format!(
            "mailpush {{\n state_dir = state\n listen = {}\n}}\nplugin {{\n push_notification_driver = dlog:file=d.log\n}}\n",
            taken.local_addr().unwrap()
        ),
    )
    .unwrap();
    let (ok, _, stderr) = output(&["run"], &conf);
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("cannot listen on")
            && stderr.contains("(listen at ")
            && stderr.contains("mailpush.conf:3)"),
        "{stderr}"
    );
}

/// What `run` would refuse to start with, beyond the drivers, fails `check` too, each at
/// its line: a token file it cannot read, `handoff_owners` naming nobody, cluster URLs
/// with different passwords (masked); a `listen_unix` folder missing now is a warning
/// (systemd makes it at start). Cluster mode's keys show as they resolve.
#[test]
fn check_fails_on_what_run_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mailpush.conf");
    std::fs::write(
        &conf,
        "mailpush {\n state_dir = state\n ingest_token_file = nothere\n handoff_dir = handoff\n handoff_owners = no-such-user-here\n listen_unix = /nonexistent-dir/x.sock\n cluster = nats://a:pw1@127.0.0.1:4222,nats://a:pw2@127.0.0.1:4223\n cluster_partitions = 16\n}\nplugin {\n push_notification_driver = dlog\n}\n",
    )
    .unwrap();
    let (ok, all) = check(&conf);
    assert!(!ok, "{all}");
    for expected in [
        "mailpush.conf:3: reading ingest_token_file",
        "mailpush.conf:5: handoff_owners: no user `no-such-user-here`",
        "mailpush.conf:6: listen_unix /nonexistent-dir/x.sock: its folder /nonexistent-dir does not exist now",
        "mailpush.conf:7: spool storage error: cluster: the server URLs give different users or passwords",
        "cluster: nats://a:***@127.0.0.1:4222,nats://a:***@127.0.0.1:4223 (stream MAILPUSH, 16 partitions",
    ] {
        assert!(all.contains(expected), "{expected}\n{all}");
    }
    assert_eq!(
        all.matches("`mailpush run` would refuse to start").count(),
        3,
        "{all}"
    );
    assert!(!all.contains("pw1") && !all.contains("pw2"), "{all}");
}
