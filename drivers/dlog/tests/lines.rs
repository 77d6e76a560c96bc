//! dlog's output, line for line, against Dovecot 2.3's reference lines
//! (`dovecot-push.md` §9). The driver is driven the way the dispatcher drives it:
//! init → begin_txn → group() → process_mbox/process_msg → end_txn → deinit, writing
//! to a temp file via `file=`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mailpush_core::event::{
    FlagsClear, FlagsSet, MailboxRef, MailboxRename, MessageRef, NewMessage,
};
use mailpush_core::{
    group, Begin, Driver, DriverArgs, DriverFactory, DriverInit, Event, EventSet, NoMetadata,
    Record, Transaction,
};
use mailpush_dlog::DlogFactory;

const INIT: &str = "Called init push_notification plugin hook.";
const BEGIN: &str = "Called begin_txn push_notification plugin hook.";
const MSG: &str = "Called process_msg push_notification plugin hook.";
const MBOX: &str = "Called process_mbox push_notification plugin hook.";
const END: &str = "Called end_txn push_notification plugin hook.";
const DEINIT: &str = "Called deinit push_notification plugin hook.";
const CLEANUP: &str = "Called cleanup push_notification plugin hook.";

struct Dlog {
    _dir: tempfile::TempDir,
    path: PathBuf,
    driver: Arc<dyn Driver>,
}

fn driver_init(dir: &Path, args: &str, raw: Option<&str>) -> DriverInit {
    DriverInit {
        number: 1,
        name: "dlog".into(),
        args: DriverArgs::parse(args),
        raw: raw.map(str::to_string),
        config_dir: dir.to_path_buf(),
        state_dir: dir.join("state"),
        metadata: Arc::new(NoMetadata),
        breaker: Default::default(),
        plugin_env: Default::default(),
        background_load: false,
        check_only: false,
    }
}

/// A dlog driver writing to a fresh temp file. `raw` is what the config line had
/// after `dlog:` (`None` for a bare `dlog`); the file argument is passed separately
/// so the init lines can be checked for each case.
async fn dlog(raw: Option<&str>) -> Dlog {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dlog.log");
    let init = driver_init(
        dir.path(),
        &format!("file={}", path.display()),
        raw.map(|r| r.replace("$FILE", &path.display().to_string()))
            .as_deref(),
    );
    let initialised = DlogFactory.init(&init).await.expect("dlog init");
    initialised.driver.started();
    Dlog {
        _dir: dir,
        path,
        driver: initialised.driver,
    }
}

impl Dlog {
    /// Runs one transaction through the hooks the way the dispatcher does.
    async fn run(&self, txn: Transaction, success: bool) {
        let txn = Arc::new(txn);
        let Begin::Join {
            events,
            txn: mut dtxn,
        } = self.driver.begin_txn(&txn).await.unwrap()
        else {
            panic!("dlog skipped a transaction");
        };
        assert_eq!(events, EventSet::all(), "dlog registers all 12 events");
        for record in group(&txn, events) {
            match &record {
                Record::Mailbox(m) => dtxn.process_mbox(m).await.unwrap(),
                Record::Message(m) => dtxn.process_msg(m).await.unwrap(),
            }
        }
        dtxn.end_txn(success).await.unwrap();
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.path)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The lines after the init line(s).
    fn txn_lines(&self) -> Vec<String> {
        self.lines()
            .into_iter()
            .skip_while(|l| l != BEGIN)
            .collect()
    }
}

/// Runs one transaction through a fresh bare-`dlog` driver and returns its lines
/// (begin_txn … end_txn).
async fn lines_for(events: Vec<Event>) -> Vec<String> {
    let d = dlog(None).await;
    d.run(Transaction::new("alice@example.com", events), true)
        .await;
    d.txn_lines()
}

fn inbox(uid: u32) -> MessageRef {
    MessageRef {
        mailbox: "INBOX".into(),
        uid,
        uid_validity: 1_700_000_000,
    }
}

fn flags_set(uid: u32, flags: &[&str], keywords: &[&str]) -> Event {
    Event::FlagsSet(FlagsSet {
        mailbox: "INBOX".into(),
        uid,
        uid_validity: 1_700_000_000,
        flags: flags.iter().map(|s| s.to_string()).collect(),
        keywords: keywords.iter().map(|s| s.to_string()).collect(),
    })
}

fn flags_clear(uid: u32, flags: &[&str], keywords: &[&str]) -> Event {
    Event::FlagsClear(FlagsClear {
        mailbox: "INBOX".into(),
        uid,
        uid_validity: 1_700_000_000,
        flags: flags.iter().map(|s| s.to_string()).collect(),
        keywords: keywords.iter().map(|s| s.to_string()).collect(),
        flags_old: None,
        keywords_old: None,
    })
}

fn mbox(mailbox: &str) -> MailboxRef {
    MailboxRef {
        mailbox: mailbox.into(),
    }
}

fn new_message(date: Option<i64>, tz: Option<i32>) -> NewMessage {
    NewMessage {
        mailbox: "INBOX".into(),
        uid: 42,
        uid_validity: 1_700_000_000,
        date,
        tz,
        ..Default::default()
    }
}

/// The Date line dlog prints for a MessageNew with only `date`/`tz` set.
async fn date_line(date: i64, tz: Option<i32>) -> String {
    let lines = lines_for(vec![Event::MessageNew(new_message(Some(date), tz))]).await;
    assert_eq!(lines.len(), 5, "{lines:#?}");
    lines[3].clone()
}

// ---------------------------------------------------------------------------------
// init / deinit
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn init_without_args_prints_only_the_init_line() {
    let d = dlog(None).await;
    assert_eq!(d.lines(), [INIT]);
}

#[tokio::test]
async fn init_with_args_prints_the_raw_config_string() {
    let d = dlog(Some("file=$FILE")).await;
    assert_eq!(
        d.lines(),
        [
            INIT.to_string(),
            format!(
                "Config string for dlog push_notification driver: file={}",
                d.path.display()
            ),
        ]
    );
}

#[tokio::test]
async fn init_with_empty_args_prints_an_empty_config_string() {
    // `dlog:` gives raw_config "" (not NULL), so the line is printed, ending in ": ".
    let d = dlog(Some("")).await;
    assert_eq!(
        d.lines(),
        [INIT, "Config string for dlog push_notification driver: "]
    );
}

#[tokio::test]
async fn init_prints_raw_config_verbatim() {
    // Unparsed: runs of spaces and tabs survive.
    let d = dlog(Some("file=$FILE  x=1\ty")).await;
    assert_eq!(
        d.lines()[1],
        format!(
            "Config string for dlog push_notification driver: file={}  x=1\ty",
            d.path.display()
        )
    );
}

#[tokio::test]
async fn deinit_prints_deinit_then_cleanup() {
    let d = dlog(None).await;
    d.run(
        Transaction::new("u", vec![Event::MailboxCreate(mbox("A"))]),
        true,
    )
    .await;
    d.driver.deinit().await;
    let lines = d.lines();
    assert_eq!(lines.first().map(String::as_str), Some(INIT));
    assert_eq!(lines[lines.len() - 2..], [DEINIT, CLEANUP]);
}

#[tokio::test]
async fn relative_file_resolves_against_config_dir() {
    let dir = tempfile::tempdir().unwrap();
    let init = driver_init(dir.path(), "file=rel.log", Some("file=rel.log"));
    DlogFactory.init(&init).await.unwrap().driver.started();
    let text = std::fs::read_to_string(dir.path().join("rel.log")).unwrap();
    assert_eq!(
        text,
        format!("{INIT}\nConfig string for dlog push_notification driver: file=rel.log\n")
    );
}

#[tokio::test]
async fn file_is_appended_to_not_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dlog.log");
    std::fs::write(&path, "earlier line\n").unwrap();
    let init = driver_init(dir.path(), &format!("file={}", path.display()), None);
    DlogFactory.init(&init).await.unwrap().driver.started();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        format!("earlier line\n{INIT}\n")
    );
}

/// The init lines are written when the driver starts, once; a driver initialised but
/// never started (a reload's duplicate of the running driver, dropped) writes nothing,
/// not even at its deinit: a reload that keeps dlog adds no lines to its file.
#[tokio::test]
async fn a_driver_never_started_writes_no_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dlog.log");
    let init = driver_init(dir.path(), &format!("file={}", path.display()), None);
    let running = DlogFactory.init(&init).await.unwrap().driver;
    running.started();
    running.started();
    let duplicate = DlogFactory.init(&init).await.unwrap().driver;
    duplicate.deinit().await;
    assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{INIT}\n"));
    running.deinit().await;
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        format!("{INIT}\n{DEINIT}\n{CLEANUP}\n")
    );
}

/// `mailpush check` opens the file, so a path `run` could not use fails the check, but
/// adds nothing to it: checking a config must leave the operator's log as it was.
#[tokio::test]
async fn a_check_writes_no_lines_but_still_fails_on_a_file_it_cannot_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dlog.log");
    std::fs::write(&path, "earlier line\n").unwrap();
    let mut init = driver_init(
        dir.path(),
        &format!("file={}", path.display()),
        Some("file=x"),
    );
    init.check_only = true;
    let initialised = DlogFactory.init(&init).await.unwrap();
    initialised.driver.deinit().await;
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "earlier line\n");

    let missing = dir.path().join("no/such/dir/dlog.log");
    let mut init = driver_init(dir.path(), &format!("file={}", missing.display()), None);
    init.check_only = true;
    let Err(e) = DlogFactory.init(&init).await else {
        panic!("a check of {} succeeded", missing.display());
    };
    assert!(e.message.contains("cannot open"), "{e}");
}

#[tokio::test]
async fn init_fails_for_missing_directory_or_empty_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no/such/dir/dlog.log");
    let init = driver_init(dir.path(), &format!("file={}", missing.display()), None);
    let Err(e) = DlogFactory.init(&init).await else {
        panic!("init succeeded with {}", missing.display());
    };
    assert!(e.message.contains("cannot open"), "{e}");
    assert!(e.message.contains(&missing.display().to_string()), "{e}");

    let init = driver_init(dir.path(), "file=", Some("file="));
    let Err(e) = DlogFactory.init(&init).await else {
        panic!("init succeeded with file=");
    };
    assert!(e.message.contains("file= needs a path"), "{e}");
}

// ---------------------------------------------------------------------------------
// §9.1 delivery
// ---------------------------------------------------------------------------------

/// A source that knows only the decoded subject (Dovecot's Lua driver): that one is
/// printed, as ox sends it.
#[tokio::test]
async fn only_the_decoded_subject_is_printed_when_the_raw_one_is_unknown() {
    let event = Event::MessageNew(NewMessage {
        mailbox: "INBOX".into(),
        uid: 42,
        uid_validity: 1_700_000_000,
        subject_utf8: Some("Test päivää".into()),
        ..Default::default()
    });
    let d = dlog(None).await;
    d.run(Transaction::new("alice@example.com", vec![event]), true)
        .await;
    d.driver.deinit().await;
    assert_eq!(
        d.lines(),
        [
            INIT,
            BEGIN,
            MSG,
            "Message data: Mailbox [INBOX], UID [42], UIDVALIDITY [1700000000]",
            "MessageNew: Subject [Test päivää]",
            END,
            DEINIT,
            CLEANUP,
        ]
    );
}

#[tokio::test]
async fn delivery_with_from_snippet_subject_as_with_dlog_plus_ox() {
    // What ox requests (From, Subject, Snippet) plus fields dlog never prints.
    let event = Event::MessageNew(NewMessage {
        mailbox: "INBOX".into(),
        uid: 42,
        uid_validity: 1_700_000_000,
        from: Some("=?utf-8?q?=C3=84?= <alice@barfoo.org>".into()),
        subject: Some("Test =?utf-8?q?p=C3=A4iv=C3=A4=C3=A4?=".into()),
        snippet: Some("Hey guys This is only a test...".into()),
        subject_utf8: Some("Test päivää".into()),
        from_address: Some("alice@barfoo.org".into()),
        message_id: Some("<1@example.com>".into()),
        flags: Some(vec!["\\Recent".into()]),
        keywords: Some(vec!["$Label1".into()]),
        unseen: Some(2),
        ..Default::default()
    });
    let d = dlog(None).await;
    d.run(Transaction::new("alice@example.com", vec![event]), true)
        .await;
    d.driver.deinit().await;
    assert_eq!(
        d.lines(),
        [
            INIT,
            BEGIN,
            MSG,
            "Message data: Mailbox [INBOX], UID [42], UIDVALIDITY [1700000000]",
            "MessageNew: From [=?utf-8?q?=C3=84?= <alice@barfoo.org>]",
            "MessageNew: Snippet [Hey guys This is only a test...]",
            "MessageNew: Subject [Test =?utf-8?q?p=C3=A4iv=C3=A4=C3=A4?=]",
            END,
            DEINIT,
            CLEANUP,
        ]
    );
}

#[tokio::test]
async fn delivery_without_fields_prints_only_message_data() {
    // dlog alone: MessageNew carries no data, so no `MessageNew: …` lines.
    let lines = lines_for(vec![Event::MessageNew(new_message(None, None))]).await;
    assert_eq!(
        lines,
        [
            BEGIN,
            MSG,
            "Message data: Mailbox [INBOX], UID [42], UIDVALIDITY [1700000000]",
            END,
        ]
    );
}

#[tokio::test]
async fn delivery_with_all_fields_prints_date_from_snippet_subject_to() {
    // Date: Tue, 1 Jan 2019 12:00:00 +0200
    let event = Event::MessageAppend(NewMessage {
        mailbox: "Sent".into(),
        uid: 7,
        uid_validity: 1_700_000_001,
        date: Some(1_546_336_800),
        tz: Some(120),
        from: Some("Bob <bob@example.com>".into()),
        to: Some("alice@example.com".into()),
        subject: Some("Re: Test".into()),
        snippet: Some("".into()),
        message_id: Some("<2@example.com>".into()),
        ..Default::default()
    });
    assert_eq!(
        lines_for(vec![event]).await,
        [
            BEGIN,
            MSG,
            "Message data: Mailbox [Sent], UID [7], UIDVALIDITY [1700000001]",
            "MessageAppend: Date [2019-01-01T10:00:00+02:00]",
            "MessageAppend: From [Bob <bob@example.com>]",
            "MessageAppend: Snippet []",
            "MessageAppend: Subject [Re: Test]",
            "MessageAppend: To [alice@example.com]",
            END,
        ]
    );
}

#[tokio::test]
async fn folded_header_values_are_printed_raw() {
    let event = Event::MessageNew(NewMessage {
        subject: Some("long\n subject".into()),
        ..new_message(None, None)
    });
    let d = dlog(None).await;
    d.run(Transaction::new("u", vec![event]), true).await;
    let text = std::fs::read_to_string(&d.path).unwrap();
    // Raw (not unfolded); Dovecot's debug log line ends at the fold's line break (its log
    // process writes the rest as a separate Error line, which mailpush does not forge).
    assert!(
        text.contains("MessageNew: Subject [long\nCalled end_txn"),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------
// Date format
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn date_prints_utc_wall_clock_with_original_offset() {
    assert_eq!(
        date_line(1_546_336_800, Some(120)).await,
        "MessageNew: Date [2019-01-01T10:00:00+02:00]"
    );
}

#[tokio::test]
async fn missing_or_invalid_date_prints_epoch() {
    assert_eq!(
        date_line(0, Some(0)).await,
        "MessageNew: Date [1970-01-01T00:00:00+00:00]"
    );
    // A date without a zone prints +00:00.
    assert_eq!(
        date_line(0, None).await,
        "MessageNew: Date [1970-01-01T00:00:00+00:00]"
    );
}

#[tokio::test]
async fn date_minus_one_means_no_date_and_prints_no_date_line() {
    // Dovecot initialises the date to -1 and prints `Date [...]` only if date != -1;
    // the other fields are printed as usual.
    let event = |date| {
        Event::MessageNew(NewMessage {
            from: Some("alice@example.com".into()),
            ..new_message(date, Some(120))
        })
    };
    let expected = [
        BEGIN,
        MSG,
        "Message data: Mailbox [INBOX], UID [42], UIDVALIDITY [1700000000]",
        "MessageNew: From [alice@example.com]",
        END,
    ];
    assert_eq!(lines_for(vec![event(Some(-1))]).await, expected);
    assert_eq!(lines_for(vec![event(None)]).await, expected);
    assert_eq!(mailpush_dlog::NO_DATE, -1);
    // Any other negative date is a real (pre-1970) date and is printed.
    assert_eq!(
        date_line(-2, Some(0)).await,
        "MessageNew: Date [1969-12-31T23:59:58+00:00]"
    );
    // The public event_lines agrees.
    let mut lines = Vec::new();
    mailpush_dlog::event_lines(&event(Some(-1)), &mut lines);
    assert_eq!(lines, ["MessageNew: From [alice@example.com]"]);
}

#[tokio::test]
async fn negative_zone_offsets() {
    // Date: Mon, 31 Dec 2018 19:30:00 -0430 (= 2019-01-01T00:00:00Z)
    assert_eq!(
        date_line(1_546_300_800, Some(-270)).await,
        "MessageNew: Date [2019-01-01T00:00:00-04:30]"
    );
    // Date: Tue, 1 Jan 2019 07:00:00 -0500 (= 12:00:00Z)
    assert_eq!(
        date_line(1_546_344_000, Some(-300)).await,
        "MessageNew: Date [2019-01-01T12:00:00-05:00]"
    );
    // Less than an hour west: the sign survives a zero hour part.
    assert_eq!(
        date_line(1_546_344_000, Some(-30)).await,
        "MessageNew: Date [2019-01-01T12:00:00-00:30]"
    );
}

#[tokio::test]
async fn dates_across_calendar_edges() {
    // Leap day, a year end, and before 1970 (gmtime handles negative times).
    assert_eq!(
        date_line(951_782_400, Some(60)).await,
        "MessageNew: Date [2000-02-29T00:00:00+01:00]"
    );
    assert_eq!(
        date_line(1_735_689_599, Some(0)).await,
        "MessageNew: Date [2024-12-31T23:59:59+00:00]"
    );
    assert_eq!(
        date_line(-31_536_000, Some(0)).await,
        "MessageNew: Date [1969-01-01T00:00:00+00:00]"
    );
    assert_eq!(
        mailpush_dlog::dovecot_date(1_546_336_800, 120),
        "2019-01-01T10:00:00+02:00"
    );
    assert_eq!(
        mailpush_dlog::dovecot_date(1_546_336_800, 840),
        "2019-01-01T10:00:00+14:00"
    );
}

// ---------------------------------------------------------------------------------
// §9.2 flag changes
// ---------------------------------------------------------------------------------

fn message_data(uid: u32) -> String {
    format!("Message data: Mailbox [INBOX], UID [{uid}], UIDVALIDITY [1700000000]")
}

#[tokio::test]
async fn store_plus_seen() {
    // FlagsClear data exists (nothing cleared) and comes first; it prints nothing.
    let lines = lines_for(vec![
        flags_clear(5, &[], &[]),
        flags_set(5, &["\\Seen"], &[]),
        Event::MessageRead(inbox(5)),
    ])
    .await;
    assert_eq!(
        lines,
        [
            BEGIN,
            MSG,
            message_data(5).as_str(),
            "FlagsSet: Seen flag set",
            "MessageRead: Message was flagged as seen",
            END,
        ]
    );
}

#[tokio::test]
async fn store_plus_deleted() {
    let lines = lines_for(vec![
        flags_clear(5, &[], &[]),
        flags_set(5, &["\\Deleted"], &[]),
        Event::MessageTrash(inbox(5)),
    ])
    .await;
    assert_eq!(
        lines,
        [
            BEGIN,
            MSG,
            message_data(5).as_str(),
            "FlagsSet: Deleted flag set",
            "MessageTrash: Message was marked as deleted",
            END,
        ]
    );
}

#[tokio::test]
async fn store_plus_keyword() {
    let lines = lines_for(vec![flags_clear(5, &[], &[]), flags_set(5, &[], &["$X"])]).await;
    assert_eq!(
        lines,
        [
            BEGIN,
            MSG,
            message_data(5).as_str(),
            "FlagsSet: Keyword set [$X]",
            END
        ]
    );
}

#[tokio::test]
async fn store_minus_seen() {
    let lines = lines_for(vec![flags_clear(5, &["\\Seen"], &[])]).await;
    assert_eq!(
        lines,
        [
            BEGIN,
            MSG,
            message_data(5).as_str(),
            "FlagsClear: Seen flag cleared",
            END
        ]
    );
}

#[tokio::test]
async fn flags_print_in_dovecot_bit_order_then_keywords() {
    // Answered, Flagged, Deleted, Seen, Draft — whatever order the source lists them;
    // \Recent is never printed.
    let lines = lines_for(vec![
        flags_clear(
            5,
            &["\\Draft", "\\Seen", "\\Deleted", "\\Flagged", "\\Answered"],
            &["$B", "$A"],
        ),
        flags_set(
            5,
            &[
                "\\Recent",
                "\\Draft",
                "\\Seen",
                "\\Deleted",
                "\\Flagged",
                "\\Answered",
            ],
            &["$Z", "$Y"],
        ),
        Event::MessageRead(inbox(5)),
        Event::MessageTrash(inbox(5)),
    ])
    .await;
    assert_eq!(
        lines,
        [
            BEGIN,
            MSG,
            message_data(5).as_str(),
            "FlagsClear: Answered flag cleared",
            "FlagsClear: Flagged flag cleared",
            "FlagsClear: Deleted flag cleared",
            "FlagsClear: Seen flag cleared",
            "FlagsClear: Draft flag cleared",
            "FlagsClear: Keyword clear [$B]",
            "FlagsClear: Keyword clear [$A]",
            "FlagsSet: Answered flag set",
            "FlagsSet: Flagged flag set",
            "FlagsSet: Deleted flag set",
            "FlagsSet: Seen flag set",
            "FlagsSet: Draft flag set",
            "FlagsSet: Keyword set [$Z]",
            "FlagsSet: Keyword set [$Y]",
            "MessageRead: Message was flagged as seen",
            "MessageTrash: Message was marked as deleted",
            END,
        ]
    );
}

#[tokio::test]
async fn several_messages_one_process_msg_each() {
    let lines = lines_for(vec![
        flags_set(5, &["\\Seen"], &[]),
        flags_set(6, &["\\Seen"], &[]),
        Event::MessageRead(inbox(5)),
        Event::MessageRead(inbox(6)),
    ])
    .await;
    assert_eq!(
        lines,
        [
            BEGIN,
            MSG,
            message_data(5).as_str(),
            "FlagsSet: Seen flag set",
            "MessageRead: Message was flagged as seen",
            MSG,
            message_data(6).as_str(),
            "FlagsSet: Seen flag set",
            "MessageRead: Message was flagged as seen",
            END,
        ]
    );
}

#[tokio::test]
async fn expunge() {
    let lines = lines_for(vec![Event::MessageExpunge(inbox(5))]).await;
    assert_eq!(
        lines,
        [
            BEGIN,
            MSG,
            message_data(5).as_str(),
            "MessageExpunge: Message was expunged",
            END
        ]
    );
}

// ---------------------------------------------------------------------------------
// §9.3 mailbox operations
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn rename_foo_to_bar() {
    let lines = lines_for(vec![Event::MailboxRename(MailboxRename {
        mailbox: "Bar".into(),
        mailbox_old: "Foo".into(),
    })])
    .await;
    assert_eq!(
        lines,
        [
            BEGIN,
            MBOX,
            "Mailbox data: Mailbox [Bar]",
            "MailboxRename: Mailbox was renamed (old name: Foo)",
            END,
        ]
    );
}

#[tokio::test]
async fn create_delete_subscribe_unsubscribe() {
    let cases = [
        (
            Event::MailboxCreate(mbox("Foo")),
            "MailboxCreate: Mailbox was created",
        ),
        (
            Event::MailboxDelete(mbox("Foo")),
            "MailboxDelete: Mailbox was deleted",
        ),
        (
            Event::MailboxSubscribe(mbox("Foo")),
            "MailboxSubscribe: Mailbox was subscribed to",
        ),
        // Dovecot's copy-paste bug: unsubscribe says "subscribed to" too.
        (
            Event::MailboxUnsubscribe(mbox("Foo")),
            "MailboxUnsubscribe: Mailbox was subscribed to",
        ),
    ];
    for (event, line) in cases {
        assert_eq!(
            lines_for(vec![event]).await,
            [BEGIN, MBOX, "Mailbox data: Mailbox [Foo]", line, END]
        );
    }
}

#[tokio::test]
async fn mailbox_events_of_one_mailbox_share_one_process_mbox() {
    let lines = lines_for(vec![
        Event::MailboxCreate(mbox("Foo")),
        Event::MailboxSubscribe(mbox("Foo")),
        Event::MailboxCreate(mbox("Bar")),
    ])
    .await;
    assert_eq!(
        lines,
        [
            BEGIN,
            MBOX,
            "Mailbox data: Mailbox [Foo]",
            "MailboxCreate: Mailbox was created",
            "MailboxSubscribe: Mailbox was subscribed to",
            MBOX,
            "Mailbox data: Mailbox [Bar]",
            "MailboxCreate: Mailbox was created",
            END,
        ]
    );
}

// ---------------------------------------------------------------------------------
// end_txn
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn end_txn_is_printed_on_rollback_too() {
    let d = dlog(None).await;
    let txn = Arc::new(Transaction::new("u", vec![Event::MessageExpunge(inbox(1))]));
    let Begin::Join { txn: dtxn, .. } = d.driver.begin_txn(&txn).await.unwrap() else {
        panic!("skipped");
    };
    dtxn.end_txn(false).await.unwrap();
    assert_eq!(d.txn_lines(), [BEGIN, END]);
}

#[tokio::test]
async fn transactions_are_written_whole_and_in_order() {
    let d = dlog(None).await;
    d.run(
        Transaction::new("u", vec![Event::MailboxCreate(mbox("A"))]),
        true,
    )
    .await;
    d.run(
        Transaction::new("u", vec![Event::MailboxDelete(mbox("A"))]),
        true,
    )
    .await;
    assert_eq!(
        d.txn_lines(),
        [
            BEGIN,
            MBOX,
            "Mailbox data: Mailbox [A]",
            "MailboxCreate: Mailbox was created",
            END,
            BEGIN,
            MBOX,
            "Mailbox data: Mailbox [A]",
            "MailboxDelete: Mailbox was deleted",
            END,
        ]
    );
}

#[tokio::test]
async fn event_lines_matches_the_file_output() {
    let mut out = Vec::new();
    mailpush_dlog::event_lines(
        &Event::MailboxRename(MailboxRename {
            mailbox: "Bar".into(),
            mailbox_old: "Foo".into(),
        }),
        &mut out,
    );
    assert_eq!(out, ["MailboxRename: Mailbox was renamed (old name: Foo)"]);
}

/// Control characters as Dovecot 2.3's log writes them (checked against Dovecot
/// 2.3.19.1): a line ends at a NUL or a line break (a CR before it dropped); tabs, ESC,
/// DEL and other bytes stay as they are. No field can add a line to the file.
#[tokio::test]
async fn control_characters_as_dovecots_log_writes_them() {
    let event = Event::MessageNew(NewMessage {
        mailbox: "INBOX".into(),
        uid: 7,
        uid_validity: 1_700_000_000,
        from: Some("a\0<forged@example.com>".into()),
        subject: Some("S\t\u{1b}[31m\u{7f} é\r\nMailbox data: Mailbox [forged]".into()),
        snippet: Some("tail CR stays\r".into()),
        ..Default::default()
    });
    let lines = lines_for(vec![event]).await;
    assert_eq!(
        lines,
        [
            BEGIN,
            MSG,
            "Message data: Mailbox [INBOX], UID [7], UIDVALIDITY [1700000000]",
            "MessageNew: From [a",
            "MessageNew: Snippet [tail CR stays\r]",
            "MessageNew: Subject [S\t\u{1b}[31m\u{7f} é",
            END,
        ]
    );
    assert_eq!(
        mailpush_dlog::dovecot_log_line("x\r\ny\nz"),
        "x",
        "cut at the first line break"
    );
}
