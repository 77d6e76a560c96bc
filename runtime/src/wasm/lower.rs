//! The transaction a driver's `deliver` receives, lowered into the guest straight from
//! mailpush's own event model: borrowed mirrors of the WIT types (`transaction`,
//! `event-record`, `event`, …), so no string is copied on the host before the canonical
//! ABI copies it into the guest's memory. The JSON strings are borrowed from the
//! transaction's shared encoding ([`Transaction::event_json`]).
//!
//! The generated bindings' owned types stay what the guest's answers are lifted into.
//! [`super::exports::Export::typed`] checks once per driver that these mirrors have
//! exactly the type of the component's `deliver`, as the generated bindings check theirs.

use mailpush_core::event as ev;
use mailpush_core::{Event, Transaction};
use wasmtime::component::{ComponentType, Lower};

/// `record message-ref`.
#[derive(ComponentType, Lower)]
#[component(record)]
pub struct MessageRef<'a> {
    mailbox: &'a str,
    uid: u32,
    #[component(name = "uid-validity")]
    uid_validity: u32,
}

/// `record new-message`.
#[derive(ComponentType, Lower)]
#[component(record)]
pub struct NewMessage<'a> {
    message: MessageRef<'a>,
    date: Option<i64>,
    tz: Option<i32>,
    from: Option<&'a str>,
    to: Option<&'a str>,
    subject: Option<&'a str>,
    #[component(name = "subject-utf8")]
    subject_utf8: Option<&'a str>,
    #[component(name = "from-address")]
    from_address: Option<&'a str>,
    #[component(name = "from-display-name")]
    from_display_name: Option<&'a str>,
    #[component(name = "to-address")]
    to_address: Option<&'a str>,
    #[component(name = "to-display-name")]
    to_display_name: Option<&'a str>,
    #[component(name = "message-id")]
    message_id: Option<&'a str>,
    snippet: Option<&'a str>,
    flags: Option<&'a [String]>,
    keywords: Option<&'a [String]>,
    unseen: Option<u32>,
}

/// `record flags-set`.
#[derive(ComponentType, Lower)]
#[component(record)]
pub struct FlagsSet<'a> {
    message: MessageRef<'a>,
    flags: &'a [String],
    keywords: &'a [String],
}

/// `record flags-clear`.
#[derive(ComponentType, Lower)]
#[component(record)]
pub struct FlagsClear<'a> {
    message: MessageRef<'a>,
    flags: &'a [String],
    keywords: &'a [String],
    #[component(name = "flags-old")]
    flags_old: Option<&'a [String]>,
    #[component(name = "keywords-old")]
    keywords_old: Option<&'a [String]>,
}

/// `record mailbox-rename`.
#[derive(ComponentType, Lower)]
#[component(record)]
pub struct MailboxRename<'a> {
    mailbox: &'a str,
    #[component(name = "mailbox-old")]
    mailbox_old: &'a str,
}

/// `variant event`, its cases in the WIT's order.
#[derive(ComponentType, Lower)]
#[component(variant)]
pub enum EventRef<'a> {
    #[component(name = "message-new")]
    MessageNew(NewMessage<'a>),
    #[component(name = "message-append")]
    MessageAppend(NewMessage<'a>),
    #[component(name = "message-expunge")]
    MessageExpunge(MessageRef<'a>),
    #[component(name = "message-read")]
    MessageRead(MessageRef<'a>),
    #[component(name = "message-trash")]
    MessageTrash(MessageRef<'a>),
    #[component(name = "flags-set")]
    FlagsSet(FlagsSet<'a>),
    #[component(name = "flags-clear")]
    FlagsClear(FlagsClear<'a>),
    #[component(name = "mailbox-create")]
    MailboxCreate(&'a str),
    #[component(name = "mailbox-delete")]
    MailboxDelete(&'a str),
    #[component(name = "mailbox-rename")]
    MailboxRename(MailboxRename<'a>),
    #[component(name = "mailbox-subscribe")]
    MailboxSubscribe(&'a str),
    #[component(name = "mailbox-unsubscribe")]
    MailboxUnsubscribe(&'a str),
}

/// `record event-record`: the typed event and its canonical JSON.
#[derive(ComponentType, Lower)]
#[component(record)]
pub struct EventRecord<'a> {
    event: EventRef<'a>,
    json: &'a str,
}

/// `record transaction`: the wanted events and the transaction's JSON with only them.
#[derive(ComponentType, Lower)]
#[component(record)]
pub struct TransactionRef<'a> {
    id: &'a str,
    user: &'a str,
    events: &'a [EventRecord<'a>],
    json: &'a str,
}

impl<'a> TransactionRef<'a> {
    /// `txn` with `events` (its wanted ones) and `json` (the transaction's JSON with them).
    pub fn new(txn: &'a Transaction, events: &'a [EventRecord<'a>], json: &'a str) -> Self {
        TransactionRef {
            id: &txn.id,
            user: &txn.user,
            events,
            json,
        }
    }
}

impl<'a> EventRecord<'a> {
    /// An event and its canonical JSON.
    pub fn new(event: &'a Event, json: &'a str) -> Self {
        EventRecord {
            event: EventRef::new(event),
            json,
        }
    }
}

fn message_ref(mailbox: &str, uid: u32, uid_validity: u32) -> MessageRef<'_> {
    MessageRef {
        mailbox,
        uid,
        uid_validity,
    }
}

fn new_message(m: &ev::NewMessage) -> NewMessage<'_> {
    NewMessage {
        message: message_ref(&m.mailbox, m.uid, m.uid_validity),
        date: m.date,
        tz: m.tz,
        from: m.from.as_deref(),
        to: m.to.as_deref(),
        subject: m.subject.as_deref(),
        subject_utf8: m.subject_utf8.as_deref(),
        from_address: m.from_address.as_deref(),
        from_display_name: m.from_display_name.as_deref(),
        to_address: m.to_address.as_deref(),
        to_display_name: m.to_display_name.as_deref(),
        message_id: m.message_id.as_deref(),
        snippet: m.snippet.as_deref(),
        flags: m.flags.as_deref(),
        keywords: m.keywords.as_deref(),
        unseen: m.unseen,
    }
}

impl<'a> EventRef<'a> {
    /// mailpush's event as the WIT `event`, borrowing its strings.
    pub fn new(e: &'a Event) -> Self {
        match e {
            Event::MessageNew(m) => EventRef::MessageNew(new_message(m)),
            Event::MessageAppend(m) => EventRef::MessageAppend(new_message(m)),
            Event::MessageExpunge(m) => {
                EventRef::MessageExpunge(message_ref(&m.mailbox, m.uid, m.uid_validity))
            }
            Event::MessageRead(m) => {
                EventRef::MessageRead(message_ref(&m.mailbox, m.uid, m.uid_validity))
            }
            Event::MessageTrash(m) => {
                EventRef::MessageTrash(message_ref(&m.mailbox, m.uid, m.uid_validity))
            }
            Event::FlagsSet(f) => EventRef::FlagsSet(FlagsSet {
                message: message_ref(&f.mailbox, f.uid, f.uid_validity),
                flags: &f.flags,
                keywords: &f.keywords,
            }),
            Event::FlagsClear(f) => EventRef::FlagsClear(FlagsClear {
                message: message_ref(&f.mailbox, f.uid, f.uid_validity),
                flags: &f.flags,
                keywords: &f.keywords,
                flags_old: f.flags_old.as_deref(),
                keywords_old: f.keywords_old.as_deref(),
            }),
            Event::MailboxCreate(m) => EventRef::MailboxCreate(&m.mailbox),
            Event::MailboxDelete(m) => EventRef::MailboxDelete(&m.mailbox),
            Event::MailboxRename(r) => EventRef::MailboxRename(MailboxRename {
                mailbox: &r.mailbox,
                mailbox_old: &r.mailbox_old,
            }),
            Event::MailboxSubscribe(m) => EventRef::MailboxSubscribe(&m.mailbox),
            Event::MailboxUnsubscribe(m) => EventRef::MailboxUnsubscribe(&m.mailbox),
        }
    }
}
