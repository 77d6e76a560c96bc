//! # mailpush driver SDK
//!
//! Write a mailpush push driver in Rust: implement [`Driver`] (every method has a
//! default, so implement only what you need), add [`export_driver!`], and build with
//! `cargo build --release --target wasm32-wasip2`. The result is a component for the
//! `mailpush:driver/push-driver-fixed-begin` world (`mailpush:driver@0.1.1`: a
//! `push-driver` that also exports `fixed-begin`, see [`Driver::fixed_wants`]) that
//! mailpush loads with
//! `push_notification_driverN = wasm:file=/path/to/driver.wasm key=value …`.
//!
//! ```ignore
//! use mailpush_driver_sdk::{export_driver, Args, Driver, Failure, NewMessage, TxnInfo};
//!
//! struct Hello { greeting: String }
//!
//! impl Driver for Hello {
//!     fn init(args: &Args) -> Result<Self, String> {
//!         Ok(Hello { greeting: args.get("greeting").unwrap_or("hello").to_string() })
//!     }
//!     fn on_message_new(&mut self, txn: &TxnInfo, m: &NewMessage, _json: &str) -> Result<(), Failure> {
//!         mailpush_driver_sdk::log::info(&format!("{} {}: new mail in {}", self.greeting, txn.user, m.message.mailbox));
//!         Ok(())
//!     }
//! }
//!
//! export_driver!(Hello);
//! ```
//!
//! See `docs/writing-drivers.md` in the mailpush repository for a walk-through.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "push-driver-fixed-begin",
        generate_all,
        pub_export_macro: true,
        export_macro_name: "export_push_driver",
        default_bindings_module: "mailpush_driver_sdk::bindings",
    });
}

pub mod http;

/// mailpush's one classification of HTTP failures ([`http::failure`] uses it).
pub use mailpush_http_failure as http_failure;

use std::cell::RefCell;

pub use bindings::mailpush::driver::types::{
    Event, EventName, EventRecord, FlagsClear, FlagsSet, MailboxRename, MessageRef, NewMessage,
    Transaction,
};

/// A failed delivery: why, and whether a retry may help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: String,
    pub retryable: bool,
    /// A server-requested delay before retrying (HTTP `Retry-After`), in milliseconds.
    pub retry_after_ms: Option<u64>,
}

impl Failure {
    /// A failure that a retry may fix (timeouts, 5xx, …).
    pub fn retryable(reason: impl Into<String>) -> Self {
        Failure {
            reason: reason.into(),
            retryable: true,
            retry_after_ms: None,
        }
    }
    /// A failure no retry will fix (bad request, bad data, …).
    pub fn permanent(reason: impl Into<String>) -> Self {
        Failure {
            reason: reason.into(),
            retryable: false,
            retry_after_ms: None,
        }
    }
}

/// The driver's arguments from its config line (mailpush's own sandbox keys removed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Args(pub Vec<(String, String)>);

impl Args {
    /// The value of `key` (`Some("")` for a bare flag).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    /// Whether `key` is present, with or without a value.
    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }
    /// The value of a required key, or an init error naming it.
    pub fn require(&self, key: &str) -> Result<&str, String> {
        match self.get(key) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(format!("missing required argument {key}=…")),
        }
    }
}

/// Which events a driver wants from a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wants {
    /// Take no part in this transaction.
    Skip,
    /// Every event.
    All,
    /// These events only.
    Events(Vec<EventName>),
}

/// The transaction being handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnInfo {
    /// Unique id; deliveries are at-least-once, so use it to deduplicate.
    pub id: String,
    /// The login user name.
    pub user: String,
}

/// A push driver. Every method has a default: implement `init` and the event handlers
/// you care about, or `on_transaction` to see the whole transaction at once.
pub trait Driver: Sized + 'static {
    /// Called first in every instance with the config line's arguments.
    fn init(args: &Args) -> Result<Self, String>;

    /// Dovecot's begin_txn: which events to receive for this transaction.
    fn wants(&mut self, _txn: &TxnInfo) -> Wants {
        Wants::All
    }

    /// The answer to every transaction's [`Driver::wants`], when it never depends on
    /// the transaction (its id, its user, anything the driver keeps): asked once, at
    /// load, right after `init`, and then `wants` is never called (one call into the
    /// component fewer per transaction; none at all when the answer is
    /// [`Wants::Skip`]). The default, `None`, keeps `wants` called per transaction.
    fn fixed_wants(&self) -> Option<Wants> {
        None
    }

    /// The whole transaction (only wanted events). The default calls the `on_*`
    /// method of each event in order, stopping at the first failure.
    fn on_transaction(&mut self, txn: &Transaction) -> Result<(), Failure> {
        let info = TxnInfo {
            id: txn.id.clone(),
            user: txn.user.clone(),
        };
        for rec in &txn.events {
            let j = rec.json.as_str();
            match &rec.event {
                Event::MessageNew(m) => self.on_message_new(&info, m, j)?,
                Event::MessageAppend(m) => self.on_message_append(&info, m, j)?,
                Event::MessageExpunge(m) => self.on_message_expunge(&info, m, j)?,
                Event::MessageRead(m) => self.on_message_read(&info, m, j)?,
                Event::MessageTrash(m) => self.on_message_trash(&info, m, j)?,
                Event::FlagsSet(f) => self.on_flags_set(&info, f, j)?,
                Event::FlagsClear(f) => self.on_flags_clear(&info, f, j)?,
                Event::MailboxCreate(m) => self.on_mailbox_create(&info, m, j)?,
                Event::MailboxDelete(m) => self.on_mailbox_delete(&info, m, j)?,
                Event::MailboxRename(r) => self.on_mailbox_rename(&info, r, j)?,
                Event::MailboxSubscribe(m) => self.on_mailbox_subscribe(&info, m, j)?,
                Event::MailboxUnsubscribe(m) => self.on_mailbox_unsubscribe(&info, m, j)?,
            }
        }
        Ok(())
    }

    /// A delivered message (`json` is the event's canonical JSON).
    fn on_message_new(
        &mut self,
        _txn: &TxnInfo,
        _m: &NewMessage,
        _json: &str,
    ) -> Result<(), Failure> {
        Ok(())
    }
    /// A message added by a client (APPEND, COPY, MOVE).
    fn on_message_append(
        &mut self,
        _txn: &TxnInfo,
        _m: &NewMessage,
        _json: &str,
    ) -> Result<(), Failure> {
        Ok(())
    }
    /// A message was expunged.
    fn on_message_expunge(
        &mut self,
        _txn: &TxnInfo,
        _m: &MessageRef,
        _json: &str,
    ) -> Result<(), Failure> {
        Ok(())
    }
    /// A message got \Seen.
    fn on_message_read(
        &mut self,
        _txn: &TxnInfo,
        _m: &MessageRef,
        _json: &str,
    ) -> Result<(), Failure> {
        Ok(())
    }
    /// A message got \Deleted.
    fn on_message_trash(
        &mut self,
        _txn: &TxnInfo,
        _m: &MessageRef,
        _json: &str,
    ) -> Result<(), Failure> {
        Ok(())
    }
    /// Flags or keywords were set.
    fn on_flags_set(&mut self, _txn: &TxnInfo, _f: &FlagsSet, _json: &str) -> Result<(), Failure> {
        Ok(())
    }
    /// Flags or keywords were cleared.
    fn on_flags_clear(
        &mut self,
        _txn: &TxnInfo,
        _f: &FlagsClear,
        _json: &str,
    ) -> Result<(), Failure> {
        Ok(())
    }
    /// A mailbox was created.
    fn on_mailbox_create(
        &mut self,
        _txn: &TxnInfo,
        _mailbox: &str,
        _json: &str,
    ) -> Result<(), Failure> {
        Ok(())
    }
    /// A mailbox was deleted.
    fn on_mailbox_delete(
        &mut self,
        _txn: &TxnInfo,
        _mailbox: &str,
        _json: &str,
    ) -> Result<(), Failure> {
        Ok(())
    }
    /// A mailbox was renamed.
    fn on_mailbox_rename(
        &mut self,
        _txn: &TxnInfo,
        _r: &MailboxRename,
        _json: &str,
    ) -> Result<(), Failure> {
        Ok(())
    }
    /// A mailbox was subscribed to.
    fn on_mailbox_subscribe(
        &mut self,
        _txn: &TxnInfo,
        _mailbox: &str,
        _json: &str,
    ) -> Result<(), Failure> {
        Ok(())
    }
    /// A mailbox was unsubscribed from.
    fn on_mailbox_unsubscribe(
        &mut self,
        _txn: &TxnInfo,
        _mailbox: &str,
        _json: &str,
    ) -> Result<(), Failure> {
        Ok(())
    }
}

/// Logging through the host (tagged with driver number, name and transaction id).
pub mod log {
    use crate::bindings::mailpush::driver::host::{self, Level};
    /// Debug line.
    pub fn debug(msg: &str) {
        host::log(Level::Debug, msg)
    }
    /// Info line.
    pub fn info(msg: &str) {
        host::log(Level::Info, msg)
    }
    /// Warning line.
    pub fn warn(msg: &str) {
        host::log(Level::Warn, msg)
    }
    /// Error line.
    pub fn error(msg: &str) {
        host::log(Level::Error, msg)
    }
}

/// Reads a METADATA entry of the current transaction's user (read-only).
pub fn metadata(key: &str) -> Option<String> {
    bindings::mailpush::driver::host::metadata_get(key)
}

/// The longest key [`hmac_sha256`] takes: the host traps on a longer one, so check a
/// configured secret against it in `init`.
pub const MAX_HMAC_KEY_BYTES: usize = 4096;

/// HMAC-SHA-256 of `message` under `key`, computed by the host with the CPU's SHA
/// instructions, which code compiled to wasm cannot use. At most 16 MiB
/// of message and [`MAX_HMAC_KEY_BYTES`] of key: more traps. Needs a mailpush that
/// provides `mailpush:driver@0.1.1`.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mac = bindings::mailpush::driver::host::hmac_sha256(key, message);
    let mut out = [0u8; 32];
    // The host always returns 32 bytes; anything else leaves zeroes that fail to verify.
    if mac.len() == 32 {
        out.copy_from_slice(&mac);
    }
    out
}

// ---- glue between the generated exports and a `Driver` (used by `export_driver!`) ----

thread_local! {
    static INSTANCE: RefCell<Option<Box<dyn std::any::Any>>> = RefCell::new(None);
}

#[doc(hidden)]
pub fn __init<D: Driver>(args: Vec<(String, String)>) -> Result<(), String> {
    // A panic ends the call with a trap; first its message goes to the host's log, which
    // gives it as the reason ("the driver panicked: …").
    std::panic::set_hook(Box::new(|info| {
        log::error(&info.to_string());
    }));
    let d = D::init(&Args(args))?;
    INSTANCE.with(|i| *i.borrow_mut() = Some(Box::new(d)));
    Ok(())
}

fn with_driver<D: Driver, R>(f: impl FnOnce(&mut D) -> R) -> Option<R> {
    INSTANCE.with(|i| {
        let mut slot = i.borrow_mut();
        slot.as_mut().and_then(|b| b.downcast_mut::<D>()).map(f)
    })
}

#[doc(hidden)]
pub fn __begin_txn<D: Driver>(
    id: String,
    user: String,
) -> bindings::mailpush::driver::types::Begin {
    let info = TxnInfo { id, user };
    begin_of(with_driver::<D, _>(|d| d.wants(&info)).unwrap_or(Wants::Skip))
}

fn begin_of(wants: Wants) -> bindings::mailpush::driver::types::Begin {
    use bindings::mailpush::driver::types::Begin;
    match wants {
        Wants::Skip => Begin::Skip,
        Wants::All => Begin::Events(ALL_EVENTS.to_vec()),
        Wants::Events(e) => Begin::Events(e),
    }
}

#[doc(hidden)]
pub fn __fixed_begin<D: Driver>() -> Option<bindings::mailpush::driver::types::Begin> {
    with_driver::<D, _>(|d| d.fixed_wants()).flatten().map(begin_of)
}

#[doc(hidden)]
pub fn __deliver<D: Driver>(
    txn: Transaction,
) -> Result<(), bindings::mailpush::driver::types::Failure> {
    let r = with_driver::<D, _>(|d| d.on_transaction(&txn))
        .unwrap_or_else(|| Err(Failure::permanent("driver not initialised")));
    r.map_err(|f| bindings::mailpush::driver::types::Failure {
        reason: f.reason,
        retryable: f.retryable,
        retry_after_ms: f.retry_after_ms,
    })
}

/// Every event name.
pub const ALL_EVENTS: [EventName; 12] = [
    EventName::FlagsClear,
    EventName::FlagsSet,
    EventName::MailboxCreate,
    EventName::MailboxDelete,
    EventName::MailboxRename,
    EventName::MailboxSubscribe,
    EventName::MailboxUnsubscribe,
    EventName::MessageAppend,
    EventName::MessageExpunge,
    EventName::MessageNew,
    EventName::MessageRead,
    EventName::MessageTrash,
];

/// Exports a [`Driver`] implementation as the component's `mailpush:driver/driver` and
/// `mailpush:driver/fixed-begin`.
#[macro_export]
macro_rules! export_driver {
    ($driver:ty) => {
        #[doc(hidden)]
        pub struct __MailpushDriverExport;

        impl $crate::bindings::exports::mailpush::driver::driver::Guest for __MailpushDriverExport {
            fn init(args: ::std::vec::Vec<(::std::string::String, ::std::string::String)>) -> ::std::result::Result<(), ::std::string::String> {
                $crate::__init::<$driver>(args)
            }
            fn begin_txn(id: ::std::string::String, user: ::std::string::String) -> $crate::bindings::mailpush::driver::types::Begin {
                $crate::__begin_txn::<$driver>(id, user)
            }
            fn deliver(txn: $crate::Transaction) -> ::std::result::Result<(), $crate::bindings::mailpush::driver::types::Failure> {
                $crate::__deliver::<$driver>(txn)
            }
        }

        impl $crate::bindings::exports::mailpush::driver::fixed_begin::Guest for __MailpushDriverExport {
            fn answer() -> ::std::option::Option<$crate::bindings::mailpush::driver::types::Begin> {
                $crate::__fixed_begin::<$driver>()
            }
        }

        $crate::bindings::export_push_driver!(__MailpushDriverExport with_types_in $crate::bindings);
    };
}
