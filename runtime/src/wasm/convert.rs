//! Conversions between mailpush's event model and the WIT types.

use mailpush_core::event as ev;
use mailpush_core::{Event, EventName};

use super::bindings::mailpush::driver::types as wit;

/// WIT event name → mailpush's.
pub fn event_name(n: wit::EventName) -> EventName {
    match n {
        wit::EventName::FlagsClear => EventName::FlagsClear,
        wit::EventName::FlagsSet => EventName::FlagsSet,
        wit::EventName::MailboxCreate => EventName::MailboxCreate,
        wit::EventName::MailboxDelete => EventName::MailboxDelete,
        wit::EventName::MailboxRename => EventName::MailboxRename,
        wit::EventName::MailboxSubscribe => EventName::MailboxSubscribe,
        wit::EventName::MailboxUnsubscribe => EventName::MailboxUnsubscribe,
        wit::EventName::MessageAppend => EventName::MessageAppend,
        wit::EventName::MessageExpunge => EventName::MessageExpunge,
        wit::EventName::MessageNew => EventName::MessageNew,
        wit::EventName::MessageRead => EventName::MessageRead,
        wit::EventName::MessageTrash => EventName::MessageTrash,
    }
}

fn msg_ref(mailbox: &str, uid: u32, uid_validity: u32) -> wit::MessageRef {
    wit::MessageRef {
        mailbox: mailbox.to_string(),
        uid,
        uid_validity,
    }
}

fn new_message(m: &ev::NewMessage) -> wit::NewMessage {
    wit::NewMessage {
        message: msg_ref(&m.mailbox, m.uid, m.uid_validity),
        date: m.date,
        tz: m.tz,
        from: m.from.clone(),
        to: m.to.clone(),
        subject: m.subject.clone(),
        subject_utf8: m.subject_utf8.clone(),
        from_address: m.from_address.clone(),
        from_display_name: m.from_display_name.clone(),
        to_address: m.to_address.clone(),
        to_display_name: m.to_display_name.clone(),
        message_id: m.message_id.clone(),
        snippet: m.snippet.clone(),
        flags: m.flags.clone(),
        keywords: m.keywords.clone(),
        unseen: m.unseen,
    }
}

/// mailpush event → WIT event.
pub fn event(e: &Event) -> wit::Event {
    match e {
        Event::MessageNew(m) => wit::Event::MessageNew(new_message(m)),
        Event::MessageAppend(m) => wit::Event::MessageAppend(new_message(m)),
        Event::MessageExpunge(m) => {
            wit::Event::MessageExpunge(msg_ref(&m.mailbox, m.uid, m.uid_validity))
        }
        Event::MessageRead(m) => {
            wit::Event::MessageRead(msg_ref(&m.mailbox, m.uid, m.uid_validity))
        }
        Event::MessageTrash(m) => {
            wit::Event::MessageTrash(msg_ref(&m.mailbox, m.uid, m.uid_validity))
        }
        Event::FlagsSet(f) => wit::Event::FlagsSet(wit::FlagsSet {
            message: msg_ref(&f.mailbox, f.uid, f.uid_validity),
            flags: f.flags.clone(),
            keywords: f.keywords.clone(),
        }),
        Event::FlagsClear(f) => wit::Event::FlagsClear(wit::FlagsClear {
            message: msg_ref(&f.mailbox, f.uid, f.uid_validity),
            flags: f.flags.clone(),
            keywords: f.keywords.clone(),
            flags_old: f.flags_old.clone(),
            keywords_old: f.keywords_old.clone(),
        }),
        Event::MailboxCreate(m) => wit::Event::MailboxCreate(m.mailbox.clone()),
        Event::MailboxDelete(m) => wit::Event::MailboxDelete(m.mailbox.clone()),
        Event::MailboxRename(r) => wit::Event::MailboxRename(wit::MailboxRename {
            mailbox: r.mailbox.clone(),
            mailbox_old: r.mailbox_old.clone(),
        }),
        Event::MailboxSubscribe(m) => wit::Event::MailboxSubscribe(m.mailbox.clone()),
        Event::MailboxUnsubscribe(m) => wit::Event::MailboxUnsubscribe(m.mailbox.clone()),
    }
}
