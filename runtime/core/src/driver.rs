//! The `Driver` trait, modelled on Dovecot's push-driver hooks, and the grouping of a
//! transaction's events into the records Dovecot hands to `process_mbox`/`process_msg`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::args::DriverArgs;
use crate::circuit::{BreakerConfig, CircuitState};
use crate::event::{Event, EventSet};
use crate::metadata::MetadataLookup;
use crate::transaction::Transaction;

/// Why a driver could not handle a transaction, and whether trying again may help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Failure {
    /// Human-readable reason (never containing secrets).
    pub reason: String,
    /// Whether a later retry may succeed (timeouts, 5xx, …).
    pub retryable: bool,
    /// A server-requested delay before retrying (`Retry-After`), if any.
    pub retry_after: Option<Duration>,
    /// The driver did not really try: a circuit breaker it keeps (one per endpoint) is
    /// open. The runtime retries after `retry_after` without counting an attempt or an
    /// outcome for the driver's own breaker; `retry_max_age` still applies.
    pub deferred: bool,
}

impl Failure {
    /// A failure that a retry may fix.
    pub fn retryable(reason: impl Into<String>) -> Self {
        Failure {
            reason: reason.into(),
            retryable: true,
            retry_after: None,
            deferred: false,
        }
    }
    /// A failure that no retry will fix.
    pub fn permanent(reason: impl Into<String>) -> Self {
        Failure {
            reason: reason.into(),
            retryable: false,
            retry_after: None,
            deferred: false,
        }
    }

    /// A failure as an untrusted driver (a component, a script) reported it: its reason
    /// escaped and cut to [`Failure::MAX_REASON`] bytes (it is logged), its requested
    /// retry delay at most [`Failure::MAX_RETRY_AFTER`].
    pub fn from_driver(reason: &str, retryable: bool, retry_after_ms: Option<u64>) -> Self {
        Failure {
            reason: Failure::untrusted_reason(reason),
            retryable,
            retry_after: retry_after_ms
                .map(|ms| Duration::from_millis(ms).min(Failure::MAX_RETRY_AFTER)),
            deferred: false,
        }
    }

    /// A reason carrying an untrusted driver's words, made safe to log.
    pub fn untrusted_reason(reason: &str) -> String {
        let cut = crate::text::cap(reason.to_string(), Failure::MAX_REASON);
        crate::text::escape_controls(&cut)
    }

    /// The longest reason kept from an untrusted driver.
    pub const MAX_REASON: usize = 1024;

    /// The longest retry delay a driver may ask for.
    pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
}

/// An error from a driver's `init`: the message is reported with the driver's number
/// and name by the registry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InitError {
    /// What went wrong.
    pub message: String,
    /// The argument it is about (`url`, `timeout_msecs`), when it is about one: where
    /// a Dovecot 2.4 block gives each argument a line of its own, the error points at
    /// that line rather than at the block.
    pub arg: Option<String>,
}

impl InitError {
    /// An error about the driver as a whole.
    pub fn new(message: impl Into<String>) -> Self {
        InitError {
            message: message.into(),
            arg: None,
        }
    }

    /// An error about the argument `arg`.
    pub fn of_arg(arg: &str, message: impl Into<String>) -> Self {
        InitError {
            message: message.into(),
            arg: Some(arg.to_string()),
        }
    }
}

/// Everything a driver is given at init.
#[derive(Clone)]
pub struct DriverInit {
    /// The driver's number: 1 for `push_notification_driver`, then 2, 3, …
    pub number: u32,
    /// The driver name as typed in the config (`OX`, `dlog`, …).
    pub name: String,
    /// The arguments after `name:`.
    pub args: DriverArgs,
    /// The unparsed arguments; `None` when the setting had no `:` (Dovecot's NULL
    /// `raw_config`), `Some("")` for `name:`.
    pub raw: Option<String>,
    /// Folder of the config file that configured the driver (relative paths resolve here).
    pub config_dir: PathBuf,
    /// mailpush's state dir.
    pub state_dir: PathBuf,
    /// Read-only METADATA for users (the transaction's own `metadata` is consulted first
    /// by [`crate::metadata::lookup`]).
    pub metadata: Arc<dyn MetadataLookup>,
    /// The driver's circuit-breaker thresholds (its `breaker_*` keys, taken off the line
    /// by the runtime). The runtime keeps one breaker over the driver's transactions;
    /// a driver that calls several endpoints uses these for one breaker per endpoint
    /// ((the runtime keeps those)).
    pub breaker: BreakerConfig,
    /// The config's `plugin { }` settings (Dovecot 2.3), for scripts'
    /// `user:plugin_getenv(name)`.
    pub plugin_env: Arc<std::collections::BTreeMap<String, String>>,
    /// The runtime serves while drivers load (`mailpush run`): a driver whose
    /// load is slow (a big component to compile) may finish it in the background, its
    /// transactions waiting in its queue and the spool meanwhile, and say so through
    /// [`Driver::loading`]. False where everything must be loaded before the command
    /// goes on (`check`, `send`, `driver test`).
    pub background_load: bool,
    /// The config is only being checked (`mailpush check`): the driver is deinitialised
    /// again without delivering anything. It should find what would fail at `run`
    /// (a file it cannot open, an argument it cannot use) and leave what trace it can
    /// avoid: dlog writes no lines to its output (an operator's log file). Code the
    /// operator's config runs at load (a Lua script's main chunk, a component's `init`)
    /// runs as at start.
    pub check_only: bool,
}

impl DriverInit {
    /// Resolves a path argument against the config file's folder.
    pub fn resolve_path(&self, path: &str) -> PathBuf {
        let p = PathBuf::from(path);
        if p.is_absolute() {
            p
        } else {
            self.config_dir.join(p)
        }
    }
}

/// A successfully initialised driver plus anything `mailpush check` should warn about.
pub struct Initialised {
    pub driver: Arc<dyn Driver>,
    /// Non-fatal problems (e.g. an invalid value that fell back to its default).
    pub warnings: Vec<String>,
    /// Extra lines for `mailpush check`'s driver table (file, hash, limits, …).
    pub details: Vec<String>,
}

impl Initialised {
    /// A driver with nothing to warn about.
    pub fn new(driver: Arc<dyn Driver>) -> Self {
        Initialised {
            driver,
            warnings: Vec::new(),
            details: Vec::new(),
        }
    }
}

/// Creates drivers of one kind (`dlog`, `ox`, `wasm`) from config lines.
#[async_trait]
pub trait DriverFactory: Send + Sync {
    /// The registered name, lower case; config lines match it case-insensitively.
    fn name(&self) -> &'static str;
    /// Short description for `check`'s driver table (`native`, `wasm`).
    fn kind(&self) -> &'static str {
        "native"
    }
    /// Dovecot's `init` hook: validate arguments and build the driver.
    async fn init(&self, init: &DriverInit) -> Result<Initialised, InitError>;
}

/// What a driver answers at begin_txn.
pub enum Begin {
    /// The driver takes no part in this transaction (no process or end_txn calls).
    Skip,
    /// The driver takes part and wants these events; `txn` receives the calls.
    Join {
        events: EventSet,
        txn: Box<dyn DriverTxn>,
    },
}

/// One driver — Dovecot's driver vfuncs. Called by the dispatcher for one transaction
/// at a time per driver, in arrival order per user.
#[async_trait]
pub trait Driver: Send + Sync {
    /// Dovecot's begin_txn: decide whether to take part and which events to receive.
    async fn begin_txn(&self, txn: &Arc<Transaction>) -> Result<Begin, Failure>;
    /// Deliveries to this driver begin (its lane starts): called once, before the first
    /// `begin_txn`. A driver initialised only to be checked (`mailpush check`), or as the
    /// duplicate of a running one that a reload keeps, is never started: output that
    /// marks a driver's start (dlog's init lines) belongs here, not in `init`.
    fn started(&self) {}
    /// Dovecot's deinit (and cleanup): called once when the runtime shuts down, or when a
    /// driver initialised but not started (a reload's duplicate) is dropped.
    async fn deinit(&self) {}
    /// The runtime stops this driver (shutdown, or a reload replaces it): called before
    /// it waits for the deliveries in progress. A driver waiting on something long (a
    /// background load) gives that up now, failing the transaction retryably.
    fn stopping(&self) {}
    /// Driver-specific counters for metrics and `mailpush status`, as
    /// `(name, value)` pairs, e.g. `("wasm_traps", 3)`. Names are snake_case.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
    /// The circuits of the endpoints this driver calls, for metrics and
    /// `mailpush status` (drivers with per-endpoint breakers).
    fn endpoint_circuits(&self) -> Vec<EndpointCircuit> {
        Vec::new()
    }
    /// How many transactions the runtime may hand this driver at once, each of a
    /// different user (one user's transactions always go one after another, in order).
    /// 1 (the default) for drivers whose output must not interleave, such as dlog's
    /// lines; the generic config key `concurrency=N` overrides it.
    fn concurrency(&self) -> usize {
        1
    }
    /// The group a transaction belongs to for fairness (a tenant), and how many of a
    /// group's transactions the runtime may hand this driver at once: one group can then
    /// never take every slot of [`Driver::concurrency`]. `None` (the default): no groups.
    fn share(&self, _txn: &Transaction) -> Option<(String, usize)> {
        None
    }
    /// How long this driver's transactions stay worth delivering, where its config line
    /// does not say (`retry_max_age=`, `hold_max=`). The default — `None` for both — is
    /// the runtime's: 24 h, and strict per-user order. A push notification minutes late
    /// is worthless (ox): such a driver gives a short age and lets a user's next
    /// transaction skip ahead of one that is failing.
    fn freshness(&self) -> Freshness {
        Freshness::default()
    }
    /// While a driver finishes loading in the background ([`DriverInit::background_load`]):
    /// what it is doing, or why it cannot deliver (a load that failed). `None` (the
    /// default): loaded.
    fn loading(&self) -> Option<Loading> {
        None
    }
}

/// Where a driver loading in the background is ([`Driver::loading`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loading {
    /// Still loading: what it is doing (`compiling …`). Its transactions wait.
    InProgress(String),
    /// The load failed, and why: its transactions fail (retryably) until a reload
    /// replaces the driver.
    Failed(String),
}

impl std::fmt::Display for Loading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Loading::InProgress(what) => f.write_str(what),
            Loading::Failed(why) => write!(f, "failed to load: {why}"),
        }
    }
}

/// A driver's own defaults for how long its transactions are worth delivering
/// ([`Driver::freshness`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Freshness {
    /// Older transactions are dead-lettered as expired instead of delivered.
    pub max_age: Option<std::time::Duration>,
    /// A user's later transaction waits at most this long behind an earlier one that
    /// failed and waits for a retry; then the earlier one is dead-lettered as skipped.
    pub hold_max: Option<std::time::Duration>,
}

/// The circuit of one endpoint of a driver.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EndpointCircuit {
    /// `scheme://host:port`.
    pub endpoint: String,
    /// The part of the driver that calls it, when a driver has parts (a tenant handler's
    /// domain).
    pub scope: Option<String>,
    pub state: CircuitState,
}

/// A driver's state for one transaction (Dovecot's driver txn).
#[async_trait]
pub trait DriverTxn: Send {
    /// Dovecot's process_mbox: one call per mailbox with mailbox-level events.
    async fn process_mbox(&mut self, _record: &MailboxRecord<'_>) -> Result<(), Failure> {
        Ok(())
    }
    /// Dovecot's process_msg: one call per message, with all its events together.
    async fn process_msg(&mut self, _record: &MessageRecord<'_>) -> Result<(), Failure> {
        Ok(())
    }
    /// Dovecot's end_txn; `success` is false when an earlier call of this transaction
    /// failed. The transaction counts as delivered only if every call returned `Ok`.
    async fn end_txn(self: Box<Self>, _success: bool) -> Result<(), Failure> {
        Ok(())
    }
}

/// The mailbox-level events of one mailbox (Dovecot's mbox record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxRecord<'a> {
    /// The mailbox (for a rename, the new name).
    pub mailbox: &'a str,
    pub events: Vec<&'a Event>,
}

/// The events of one message (Dovecot's message record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord<'a> {
    pub mailbox: &'a str,
    pub uid: u32,
    pub uid_validity: u32,
    pub events: Vec<&'a Event>,
}

/// One call's worth of events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    Mailbox(MailboxRecord<'a>),
    Message(MessageRecord<'a>),
}

/// Groups a transaction's events the way Dovecot does before calling drivers:
/// mailbox-level events per mailbox, message events per message (mailbox, uid) — all
/// events of one message together — keeping only events in `wanted`. Mailbox records
/// appear in the order of their first event; message records of a mailbox in ascending
/// uid (Dovecot visits them by ascending sequence number), after the mailbox's place in
/// the order of first events. Events within a record keep transaction order. Records
/// with no wanted event are omitted.
pub fn group(txn: &Transaction, wanted: EventSet) -> Vec<Record<'_>> {
    let mut records: Vec<Record<'_>> = Vec::new();
    // (mailbox, uid) → index in `records`; uid is None for mailbox-level records.
    let mut index: HashMap<(&str, Option<u32>), usize> = HashMap::new();
    for event in txn.events.iter().filter(|e| wanted.contains(e.name())) {
        let mailbox = event.mailbox();
        let key = (mailbox, event.message().map(|(uid, _)| uid));
        if let Some(&i) = index.get(&key) {
            match &mut records[i] {
                Record::Message(m) => m.events.push(event),
                Record::Mailbox(m) => m.events.push(event),
            }
            continue;
        }
        index.insert(key, records.len());
        records.push(match event.message() {
            Some((uid, uid_validity)) => Record::Message(MessageRecord {
                mailbox,
                uid,
                uid_validity,
                events: vec![event],
            }),
            None => Record::Mailbox(MailboxRecord {
                mailbox,
                events: vec![event],
            }),
        });
    }
    // Message records, in the slots they hold, sorted by (mailbox in order of first
    // appearance, uid).
    let slots: Vec<usize> = (0..records.len())
        .filter(|&i| matches!(records[i], Record::Message(_)))
        .collect();
    if slots.len() > 1 {
        let mut mailboxes: Vec<&str> = Vec::new();
        let mut messages: Vec<(usize, u32, Record<'_>)> = Vec::with_capacity(slots.len());
        for &i in slots.iter().rev() {
            if let Record::Message(m) = records.remove(i) {
                messages.push((0, m.uid, Record::Message(m)));
            }
        }
        messages.reverse();
        for m in &mut messages {
            if let Record::Message(r) = &m.2 {
                m.0 = match mailboxes.iter().position(|b| *b == r.mailbox) {
                    Some(p) => p,
                    None => {
                        mailboxes.push(r.mailbox);
                        mailboxes.len() - 1
                    }
                };
            }
        }
        messages.sort_by_key(|m| (m.0, m.1));
        for (&i, m) in slots.iter().zip(messages) {
            records.insert(i, m.2);
        }
    }
    records
}
