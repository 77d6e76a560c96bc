//! Event tables as Dovecot's Lua driver builds them (`push-notification-driver-lua.c`),
//! from mailpush's canonical events: numbers as Lua floats, `""` for an absent From, To
//! or address, `subject` decoded (absent without one), flags and keywords as string
//! lists, `flags_old`/`keywords_old` on FlagsClear, `mailbox_old` on MailboxRename.

use mlua::{Lua, Table};

use mailpush_core::{Event, EventName};

/// `MessageNew` → `dovecot_lua_notify_event_message_new`.
pub fn handler_name(name: EventName) -> String {
    let mut out = String::from("dovecot_lua_notify_event");
    for c in name.as_str().chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn list(lua: &Lua, items: &[String]) -> mlua::Result<Table> {
    lua.create_sequence_from(items.iter().map(String::as_str))
}

/// The table handed to an event handler.
pub fn table(lua: &Lua, event: &Event) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set("name", event.name().as_str())?;
    t.set("mailbox", event.mailbox())?;
    if let Some((uid, uid_validity)) = event.message() {
        t.set("uid", f64::from(uid))?;
        t.set("uid_validity", f64::from(uid_validity))?;
    }
    match event {
        Event::MessageNew(m) | Event::MessageAppend(m) => {
            // Dovecot: -1 when the Date header is missing or invalid.
            t.set("date", m.date.map_or(-1.0, |d| d as f64))?;
            t.set("tz", m.tz.map_or(0.0, f64::from))?;
            let or_empty = |v: &Option<String>| v.clone().unwrap_or_default();
            t.set("from", or_empty(&m.from))?;
            t.set("to", or_empty(&m.to))?;
            if let Some(subject) = m.subject_utf8.as_ref().or(m.subject.as_ref()) {
                t.set("subject", subject.as_str())?;
            }
            if let Some(snippet) = &m.snippet {
                t.set("snippet", snippet.as_str())?;
            }
            if let Some(id) = &m.message_id {
                t.set("message_id", id.as_str())?;
            }
            t.set("flags", list(lua, m.flags.as_deref().unwrap_or_default())?)?;
            t.set(
                "keywords",
                list(lua, m.keywords.as_deref().unwrap_or_default())?,
            )?;
            t.set("from_address", or_empty(&m.from_address))?;
            t.set("from_display_name", or_empty(&m.from_display_name))?;
            t.set("to_address", or_empty(&m.to_address))?;
            t.set("to_display_name", or_empty(&m.to_display_name))?;
        }
        Event::FlagsSet(f) => {
            t.set("flags", list(lua, &f.flags)?)?;
            t.set("keywords", list(lua, &f.keywords)?)?;
        }
        Event::FlagsClear(f) => {
            t.set("flags", list(lua, &f.flags)?)?;
            t.set(
                "flags_old",
                list(lua, f.flags_old.as_deref().unwrap_or_default())?,
            )?;
            t.set("keywords", list(lua, &f.keywords)?)?;
            t.set(
                "keywords_old",
                list(lua, f.keywords_old.as_deref().unwrap_or_default())?,
            )?;
        }
        Event::MailboxRename(r) => {
            t.set("mailbox_old", r.mailbox_old.as_str())?;
        }
        _ => {}
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handler_names_are_dovecots() {
        assert_eq!(
            handler_name(EventName::MessageNew),
            "dovecot_lua_notify_event_message_new"
        );
        assert_eq!(
            handler_name(EventName::MailboxUnsubscribe),
            "dovecot_lua_notify_event_mailbox_unsubscribe"
        );
        assert_eq!(
            handler_name(EventName::FlagsClear),
            "dovecot_lua_notify_event_flags_clear"
        );
    }
}
