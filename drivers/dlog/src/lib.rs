//! The `dlog` driver: writes exactly the debug lines Dovecot 2.3's dlog driver writes,
//! in Dovecot's order, to the log (debug level) and optionally to a file
//! (`dlog:file=/path`, one line each, no timestamps or prefixes; `file=-` or
//! `file=/dev/stdout` is mailpush's standard output) so an operator can diff
//! mailpush's output against Dovecot's.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use mailpush_core::{
    Begin, Driver, DriverFactory, DriverInit, DriverTxn, Event, EventSet, Failure, InitError,
    Initialised, MailboxRecord, MessageRecord, Transaction,
};

/// Registers `dlog`.
#[derive(Debug, Default)]
pub struct DlogFactory;

#[async_trait]
impl DriverFactory for DlogFactory {
    fn name(&self) -> &'static str {
        "dlog"
    }

    async fn init(&self, init: &DriverInit) -> Result<Initialised, InitError> {
        let sink = match init.args.get("file") {
            None => None,
            Some("") => {
                return Err(InitError::of_arg(
                    "file",
                    "file= needs a path, e.g. dlog:file=/var/log/mailpush/dlog.log",
                ))
            }
            // The process's own standard output (not a re-opened /dev/stdout, which
            // would write at its own offset when stdout is a file).
            Some(path @ ("-" | "/dev/stdout")) => {
                let out: Box<dyn Write + Send> = Box::new(std::io::stdout());
                Some((PathBuf::from(path), Mutex::new(out)))
            }
            Some(path) => {
                let path = init.resolve_path(path);
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| {
                        InitError::of_arg(
                            "file",
                            format!("cannot open {} for appending: {e}", path.display()),
                        )
                    })?;
                let out: Box<dyn Write + Send> = Box::new(BufWriter::new(file));
                Some((path, Mutex::new(out)))
            }
        };
        let mut init_lines = vec!["Called init push_notification plugin hook.".to_string()];
        if let Some(raw) = &init.raw {
            init_lines.push(format!(
                "Config string for dlog push_notification driver: {raw}"
            ));
        }
        // The init lines are written when the driver starts (`started`): `mailpush
        // check` opens the file (so it fails as `run` would) but writes nothing to it,
        // and a reload that keeps the running driver adds nothing to its file.
        let output = Arc::new(DlogOutput {
            number: init.number,
            sink: sink.map(|(path, file)| DlogFile { path, file }),
            init_lines,
            started: AtomicBool::new(false),
        });
        let mut out = Initialised::new(Arc::new(DlogDriver(output.clone())));
        if let Some(f) = &output.sink {
            out.details.push(format!("file: {}", f.path.display()));
        }
        // Dovecot's dlog takes no arguments and only prints them; mailpush's reads
        // `file=`. Anything else is most likely a typo of it.
        for (key, _) in init.args.iter().filter(|(k, _)| *k != "file") {
            let hint = if mailpush_core::suggest::nearest(key, &["file"]).is_some() {
                ": did you mean file?"
            } else {
                ""
            };
            out.warnings.push(format!(
                "unknown argument `{key}` is ignored{hint} (dlog reads only file=; Dovecot's dlog prints its arguments and ignores them)"
            ));
        }
        Ok(out)
    }
}

struct DlogFile {
    path: PathBuf,
    file: Mutex<Box<dyn Write + Send>>,
}

/// Where a dlog driver's lines go: the log, and the file if configured.
struct DlogOutput {
    number: u32,
    sink: Option<DlogFile>,
    /// Written when the driver starts.
    init_lines: Vec<String>,
    /// Whether it started: one that never did (checked, or a reload's duplicate of the
    /// running driver) writes neither init nor deinit lines.
    started: AtomicBool,
}

/// The dlog driver.
pub struct DlogDriver(Arc<DlogOutput>);

/// A line as Dovecot 2.3's log writes it: cut at the first NUL (C strings) or line
/// break (the log process splits there; a CR right before the LF is dropped). Dovecot
/// writes what follows a line break as a separate `Error:` line of its own — a log
/// injection mailpush does not reproduce; the line is what Dovecot's debug log shows.
/// Every other byte (tab, ESC, DEL, UTF-8) is written unchanged, as Dovecot does.
pub fn dovecot_log_line(line: &str) -> &str {
    let end = line.find(['\0', '\n']).unwrap_or(line.len());
    let mut cut = &line[..end];
    if line[end..].starts_with('\n') {
        cut = cut.strip_suffix('\r').unwrap_or(cut);
    }
    cut
}

impl DlogOutput {
    fn write(&self, lines: &[String]) -> Result<(), Failure> {
        let lines: Vec<&str> = lines.iter().map(|l| dovecot_log_line(l)).collect();
        for line in &lines {
            // mailpush's own log escapes control characters (a terminal or a log shipper
            // reads it); the file keeps Dovecot's bytes.
            tracing::debug!(target: "mailpush::dlog", driver = self.number, "{}", mailpush_core::text::escape_controls(line));
        }
        let Some(sink) = &self.sink else {
            return Ok(());
        };
        let mut file = sink
            .file
            .lock()
            .map_err(|_| Failure::permanent("dlog file lock poisoned"))?;
        let result = lines
            .iter()
            .try_for_each(|l| writeln!(file, "{l}"))
            .and_then(|_| file.flush());
        result.map_err(|e| Failure::retryable(format!("writing {}: {e}", sink.path.display())))
    }
}

#[async_trait]
impl Driver for DlogDriver {
    async fn begin_txn(&self, _txn: &Arc<Transaction>) -> Result<Begin, Failure> {
        Ok(Begin::Join {
            events: EventSet::all(),
            txn: Box::new(DlogTxn {
                output: self.0.clone(),
                lines: vec!["Called begin_txn push_notification plugin hook.".to_string()],
            }),
        })
    }

    fn started(&self) {
        if self.0.started.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Err(e) = self.0.write(&self.0.init_lines) {
            tracing::warn!(driver = self.0.number, "dlog: {e}");
        }
    }

    async fn deinit(&self) {
        if !self.0.started.load(Ordering::Acquire) {
            return;
        }
        // Shutdown-time lines; a write error here has nobody left to report to but the log.
        if let Err(e) = self.0.write(&[
            "Called deinit push_notification plugin hook.".to_string(),
            "Called cleanup push_notification plugin hook.".to_string(),
        ]) {
            tracing::warn!(driver = self.0.number, "dlog: {e}");
        }
    }
}

/// One transaction's lines, written together at end_txn.
struct DlogTxn {
    output: Arc<DlogOutput>,
    lines: Vec<String>,
}

#[async_trait]
impl DriverTxn for DlogTxn {
    async fn process_mbox(&mut self, record: &MailboxRecord<'_>) -> Result<(), Failure> {
        self.lines
            .push("Called process_mbox push_notification plugin hook.".to_string());
        self.lines
            .push(format!("Mailbox data: Mailbox [{}]", record.mailbox));
        for event in &record.events {
            event_lines(event, &mut self.lines);
        }
        Ok(())
    }

    async fn process_msg(&mut self, record: &MessageRecord<'_>) -> Result<(), Failure> {
        self.lines
            .push("Called process_msg push_notification plugin hook.".to_string());
        self.lines.push(format!(
            "Message data: Mailbox [{}], UID [{}], UIDVALIDITY [{}]",
            record.mailbox, record.uid, record.uid_validity
        ));
        for event in &record.events {
            event_lines(event, &mut self.lines);
        }
        Ok(())
    }

    async fn end_txn(mut self: Box<Self>, _success: bool) -> Result<(), Failure> {
        self.lines
            .push("Called end_txn push_notification plugin hook.".to_string());
        self.output.write(&self.lines)
    }
}

/// Flags in the order Dovecot's FlagsSet/FlagsClear debug functions test their bits.
const DEBUG_FLAG_ORDER: [(&str, &str); 5] = [
    ("\\Answered", "Answered"),
    ("\\Flagged", "Flagged"),
    ("\\Deleted", "Deleted"),
    ("\\Seen", "Seen"),
    ("\\Draft", "Draft"),
];

/// Dovecot's `date` value for "no date": it prints no Date line for it.
pub const NO_DATE: i64 = -1;

/// Appends the debug lines Dovecot prints for one event's data (§4 and §9).
pub fn event_lines(event: &Event, out: &mut Vec<String>) {
    let name = event.name();
    match event {
        Event::MessageNew(m) | Event::MessageAppend(m) => {
            // Dovecot's "no date" is -1 (the data's initial value; a missing or invalid
            // Date header gives 0 instead): no Date line, as for an absent `date`.
            if let Some(date) = m.date.filter(|&d| d != NO_DATE) {
                out.push(format!(
                    "{name}: Date [{}]",
                    dovecot_date(date, m.tz.unwrap_or(0))
                ));
            }
            if let Some(v) = &m.from {
                out.push(format!("{name}: From [{v}]"));
            }
            if let Some(v) = &m.snippet {
                out.push(format!("{name}: Snippet [{v}]"));
            }
            // The raw header, as Dovecot prints it; when a source knows only the decoded
            // subject (Dovecot's Lua driver gives no raw one), that one — as ox does.
            if let Some(v) = m.subject.as_ref().or(m.subject_utf8.as_ref()) {
                out.push(format!("{name}: Subject [{v}]"));
            }
            if let Some(v) = &m.to {
                out.push(format!("{name}: To [{v}]"));
            }
        }
        Event::MessageExpunge(_) => out.push(format!("{name}: Message was expunged")),
        Event::MessageRead(_) => out.push(format!("{name}: Message was flagged as seen")),
        Event::MessageTrash(_) => out.push(format!("{name}: Message was marked as deleted")),
        Event::FlagsSet(f) => {
            for (flag, word) in DEBUG_FLAG_ORDER {
                if f.flags.iter().any(|x| x == flag) {
                    out.push(format!("{name}: {word} flag set"));
                }
            }
            for k in &f.keywords {
                out.push(format!("{name}: Keyword set [{k}]"));
            }
        }
        Event::FlagsClear(f) => {
            for (flag, word) in DEBUG_FLAG_ORDER {
                if f.flags.iter().any(|x| x == flag) {
                    out.push(format!("{name}: {word} flag cleared"));
                }
            }
            for k in &f.keywords {
                out.push(format!("{name}: Keyword clear [{k}]"));
            }
        }
        Event::MailboxCreate(_) => out.push(format!("{name}: Mailbox was created")),
        Event::MailboxDelete(_) => out.push(format!("{name}: Mailbox was deleted")),
        Event::MailboxRename(r) => out.push(format!(
            "{name}: Mailbox was renamed (old name: {})",
            r.mailbox_old
        )),
        // Dovecot prints the same text for both (a copy-paste bug we reproduce).
        Event::MailboxSubscribe(_) | Event::MailboxUnsubscribe(_) => {
            out.push(format!("{name}: Mailbox was subscribed to"))
        }
    }
}

/// Dovecot's Date debug format: the UTC wall clock (gmtime) followed by the message's
/// original zone offset — `2019-01-01T10:00:00+02:00` for `12:00:00 +0200`. The
/// mismatch is Dovecot's bug, preserved so the lines diff clean.
pub fn dovecot_date(unix: i64, tz_minutes: i32) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let sign = if tz_minutes < 0 { '-' } else { '+' };
    let tz = tz_minutes.unsigned_abs();
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{sign}{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60,
        tz / 60,
        tz % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}
