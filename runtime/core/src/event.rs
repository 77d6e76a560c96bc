//! The 12 mail-store events Dovecot's push-notification framework supports, with the
//! fields Dovecot hands its Lua driver (see `docs/events.md`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The name of an event kind. The discriminant order is Dovecot's registration order
/// (`FlagsClear` first, `MessageTrash` last), which is also the order drivers that
/// "want everything" register in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EventName {
    FlagsClear,
    FlagsSet,
    MailboxCreate,
    MailboxDelete,
    MailboxRename,
    MailboxSubscribe,
    MailboxUnsubscribe,
    MessageAppend,
    MessageExpunge,
    MessageNew,
    MessageRead,
    MessageTrash,
}

impl EventName {
    /// Every event name, in Dovecot's registration order.
    pub const ALL: [EventName; 12] = [
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

    /// The name as it appears in canonical JSON and in Dovecot's logs.
    pub fn as_str(self) -> &'static str {
        match self {
            EventName::FlagsClear => "FlagsClear",
            EventName::FlagsSet => "FlagsSet",
            EventName::MailboxCreate => "MailboxCreate",
            EventName::MailboxDelete => "MailboxDelete",
            EventName::MailboxRename => "MailboxRename",
            EventName::MailboxSubscribe => "MailboxSubscribe",
            EventName::MailboxUnsubscribe => "MailboxUnsubscribe",
            EventName::MessageAppend => "MessageAppend",
            EventName::MessageExpunge => "MessageExpunge",
            EventName::MessageNew => "MessageNew",
            EventName::MessageRead => "MessageRead",
            EventName::MessageTrash => "MessageTrash",
        }
    }

    /// True for events about one message (they carry `uid` and `uid_validity`).
    pub fn is_message_event(self) -> bool {
        !self.is_mailbox_event()
    }

    /// True for events about a whole mailbox (create, delete, rename, (un)subscribe).
    pub fn is_mailbox_event(self) -> bool {
        matches!(
            self,
            EventName::MailboxCreate
                | EventName::MailboxDelete
                | EventName::MailboxRename
                | EventName::MailboxSubscribe
                | EventName::MailboxUnsubscribe
        )
    }

    /// The canonical JSON fields an event of this kind may carry, besides `name`.
    pub fn fields(self) -> &'static [&'static str] {
        const MAILBOX: &[&str] = &["mailbox"];
        const MESSAGE: &[&str] = &["mailbox", "uid", "uid_validity"];
        match self {
            EventName::MessageNew | EventName::MessageAppend => &[
                "mailbox",
                "uid",
                "uid_validity",
                "date",
                "tz",
                "from",
                "to",
                "subject",
                "subject_utf8",
                "from_address",
                "from_display_name",
                "to_address",
                "to_display_name",
                "message_id",
                "snippet",
                "flags",
                "keywords",
                "unseen",
                "messages",
                "recent",
            ],
            EventName::MessageExpunge | EventName::MessageRead | EventName::MessageTrash => MESSAGE,
            EventName::FlagsSet => &["mailbox", "uid", "uid_validity", "flags", "keywords"],
            EventName::FlagsClear => &[
                "mailbox",
                "uid",
                "uid_validity",
                "flags",
                "keywords",
                "flags_old",
                "keywords_old",
            ],
            EventName::MailboxRename => &["mailbox", "mailbox_old"],
            EventName::MailboxCreate
            | EventName::MailboxDelete
            | EventName::MailboxSubscribe
            | EventName::MailboxUnsubscribe => MAILBOX,
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for a string that names no event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event name `{0}`; expected one of: {list}", list = allowed_names())]
pub struct UnknownEventName(pub String);

/// The allowed event names, comma separated, for error messages.
pub fn allowed_names() -> String {
    EventName::ALL
        .iter()
        .map(|n| n.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl FromStr for EventName {
    type Err = UnknownEventName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventName::ALL
            .into_iter()
            .find(|n| n.as_str() == s)
            .ok_or_else(|| UnknownEventName(s.to_string()))
    }
}

/// A set of event names (what a driver wants from a transaction).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct EventSet(u16);

impl EventSet {
    /// No events.
    pub const fn empty() -> Self {
        EventSet(0)
    }
    /// All 12 events.
    pub const fn all() -> Self {
        EventSet((1 << 12) - 1)
    }
    /// Adds one event.
    pub fn with(mut self, name: EventName) -> Self {
        self.insert(name);
        self
    }
    /// Adds one event in place.
    pub fn insert(&mut self, name: EventName) {
        self.0 |= name.bit();
    }
    /// Whether `name` is in the set.
    pub fn contains(self, name: EventName) -> bool {
        self.0 & name.bit() != 0
    }
    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// The names in the set, in Dovecot's registration order.
    pub fn iter(self) -> impl Iterator<Item = EventName> {
        EventName::ALL
            .into_iter()
            .filter(move |n| self.contains(*n))
    }
}

impl FromIterator<EventName> for EventSet {
    fn from_iter<T: IntoIterator<Item = EventName>>(iter: T) -> Self {
        iter.into_iter().fold(EventSet::empty(), EventSet::with)
    }
}

/// IMAP system flags, in the order Dovecot lists them.
pub const SYSTEM_FLAGS: [&str; 6] = [
    "\\Answered",
    "\\Flagged",
    "\\Deleted",
    "\\Seen",
    "\\Draft",
    "\\Recent",
];

/// A new message: MessageNew (delivery) or MessageAppend (IMAP APPEND, COPY, MOVE, …).
/// Every field but the message reference is optional: a source sends what it knows.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NewMessage {
    pub mailbox: String,
    pub uid: u32,
    pub uid_validity: u32,
    /// `Date` header as unix seconds (UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<i64>,
    /// The `Date` header's zone offset, minutes east of UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tz: Option<i32>,
    /// Raw `From` header value (MIME-encoded as in the mail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Raw `To` header value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Raw `Subject` header value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The subject decoded to UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_utf8: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// Body snippet (Dovecot: up to 200 characters of the first text part).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snippet: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keywords: Option<Vec<String>>,
    /// Unseen count of the mailbox after the event, when the source knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unseen: Option<u32>,
    /// Message count of the mailbox after the event, when the source knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<u32>,
    /// `\Recent` count of the mailbox after the event, when the source knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recent: Option<u32>,
}

/// An event about one message that carries nothing else (MessageExpunge, MessageRead,
/// MessageTrash).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MessageRef {
    pub mailbox: String,
    pub uid: u32,
    pub uid_validity: u32,
}

/// FlagsSet: the flags and keywords that were set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FlagsSet {
    pub mailbox: String,
    pub uid: u32,
    pub uid_validity: u32,
    #[serde(default)]
    pub flags: Vec<String>,
    #[serde(default)]
    pub keywords: Vec<String>,
}

/// FlagsClear: the flags and keywords that were cleared, and what was there before.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FlagsClear {
    pub mailbox: String,
    pub uid: u32,
    pub uid_validity: u32,
    #[serde(default)]
    pub flags: Vec<String>,
    #[serde(default)]
    pub keywords: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags_old: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keywords_old: Option<Vec<String>>,
}

/// A mailbox-level event that carries only the mailbox (create, delete, subscribe,
/// unsubscribe).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MailboxRef {
    pub mailbox: String,
}

/// MailboxRename: `mailbox` is the new name, `mailbox_old` the old one.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MailboxRename {
    pub mailbox: String,
    pub mailbox_old: String,
}

/// One mail-store event. Serialises to the canonical JSON object, `name` first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "name")]
pub enum Event {
    MessageNew(NewMessage),
    MessageAppend(NewMessage),
    MessageExpunge(MessageRef),
    MessageRead(MessageRef),
    MessageTrash(MessageRef),
    FlagsSet(FlagsSet),
    FlagsClear(FlagsClear),
    MailboxCreate(MailboxRef),
    MailboxDelete(MailboxRef),
    MailboxRename(MailboxRename),
    MailboxSubscribe(MailboxRef),
    MailboxUnsubscribe(MailboxRef),
}

impl Event {
    /// The event's kind.
    pub fn name(&self) -> EventName {
        match self {
            Event::MessageNew(_) => EventName::MessageNew,
            Event::MessageAppend(_) => EventName::MessageAppend,
            Event::MessageExpunge(_) => EventName::MessageExpunge,
            Event::MessageRead(_) => EventName::MessageRead,
            Event::MessageTrash(_) => EventName::MessageTrash,
            Event::FlagsSet(_) => EventName::FlagsSet,
            Event::FlagsClear(_) => EventName::FlagsClear,
            Event::MailboxCreate(_) => EventName::MailboxCreate,
            Event::MailboxDelete(_) => EventName::MailboxDelete,
            Event::MailboxRename(_) => EventName::MailboxRename,
            Event::MailboxSubscribe(_) => EventName::MailboxSubscribe,
            Event::MailboxUnsubscribe(_) => EventName::MailboxUnsubscribe,
        }
    }

    /// The mailbox the event is about (for a rename, the new name).
    pub fn mailbox(&self) -> &str {
        match self {
            Event::MessageNew(m) | Event::MessageAppend(m) => &m.mailbox,
            Event::MessageExpunge(m) | Event::MessageRead(m) | Event::MessageTrash(m) => &m.mailbox,
            Event::FlagsSet(m) => &m.mailbox,
            Event::FlagsClear(m) => &m.mailbox,
            Event::MailboxCreate(m)
            | Event::MailboxDelete(m)
            | Event::MailboxSubscribe(m)
            | Event::MailboxUnsubscribe(m) => &m.mailbox,
            Event::MailboxRename(m) => &m.mailbox,
        }
    }

    /// `(uid, uid_validity)` for message events, `None` for mailbox events.
    pub fn message(&self) -> Option<(u32, u32)> {
        match self {
            Event::MessageNew(m) | Event::MessageAppend(m) => Some((m.uid, m.uid_validity)),
            Event::MessageExpunge(m) | Event::MessageRead(m) | Event::MessageTrash(m) => {
                Some((m.uid, m.uid_validity))
            }
            Event::FlagsSet(m) => Some((m.uid, m.uid_validity)),
            Event::FlagsClear(m) => Some((m.uid, m.uid_validity)),
            _ => None,
        }
    }

    /// The event's canonical JSON (one object, no whitespace).
    pub fn to_json(&self) -> String {
        // Serialising plain structs of strings and numbers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}
