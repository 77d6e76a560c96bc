//! Conversions from the WIT types to mailpush's event model (the other way, a
//! transaction into the guest, is [`super::lower`]).

use mailpush_core::EventName;

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
