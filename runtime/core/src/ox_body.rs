//! The body Dovecot's own ox driver sends (`PUT /preliminary/http-notify/v1/notify`),
//! read into a MessageNew transaction, so an existing `ox:url=` can point at mailpush.

use serde_json::Value;

use crate::event::{Event, NewMessage};
use crate::transaction::Transaction;

/// The METADATA key that activates OX push (`dovecot-push.md` §7.2).
const HTTP_NOTIFY: &str = "/private/vendor/vendor.dovecot/http-notify";

/// Turns the body Dovecot's ox driver sends into a MessageNew transaction. The body's
/// `user` is whom OX is to notify (the METADATA `user=` with `user_from_metadata`, else
/// the login): the transaction carries it as its user and as the METADATA value
/// `user=…`, so mailpush's own ox driver — with or without `user_from_metadata` — pushes
/// for the same OX user, and does not skip it for lack of METADATA.
pub fn ox_transaction(body: &Value) -> Result<Transaction, String> {
    let obj = body.as_object().ok_or("expected a JSON object")?;
    let s = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_string);
    let n = |k: &str| -> Result<u32, String> {
        obj.get(k)
            .and_then(Value::as_u64)
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| format!("`{k}` must be an unsigned 32-bit number"))
    };
    let user = s("user")
        .filter(|u| !u.is_empty())
        .ok_or("missing `user`")?;
    // Dovecot's user names are C strings: no NUL; and the METADATA value `user=…`
    // cannot carry a TAB, CR, LF or \x01 as they are (they would end or escape it).
    if user.chars().any(char::is_control) {
        return Err("`user` must not contain control characters".into());
    }
    match s("event").as_deref() {
        Some("messageNew") => {}
        other => return Err(format!("`event` must be \"messageNew\", got {other:?}")),
    }
    let msg = NewMessage {
        mailbox: s("folder").ok_or("missing `folder`")?,
        uid: n("imap-uid")?,
        uid_validity: n("imap-uidvalidity")?,
        from: s("from"),
        subject: s("subject"),
        snippet: s("snippet"),
        unseen: obj
            .get("unseen")
            .and_then(Value::as_u64)
            .and_then(|v| u32::try_from(v).ok()),
        ..Default::default()
    };
    let mut txn = Transaction::new(user.clone(), vec![Event::MessageNew(msg)]);
    txn.metadata
        .insert(HTTP_NOTIFY.to_string(), format!("user={user}"));
    Ok(txn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ox_body_becomes_message_new() {
        let v: Value = serde_json::from_str(r#"{"user":"11@3","event":"messageNew","folder":"INBOX","imap-uidvalidity":1700000000,"imap-uid":42,"from":"a <a@b>","subject":"Hi","snippet":"x","unseen":2}"#).unwrap();
        let t = ox_transaction(&v).unwrap();
        assert_eq!(t.user, "11@3");
        assert_eq!(t.metadata[HTTP_NOTIFY], "user=11@3");
        let Event::MessageNew(m) = &t.events[0] else {
            panic!()
        };
        assert_eq!((m.uid, m.uid_validity, m.unseen), (42, 1700000000, Some(2)));
        assert_eq!(m.from.as_deref(), Some("a <a@b>"));
        let bad: Value = serde_json::from_str(r#"{"user":"u","event":"messageNew","folder":"INBOX","imap-uidvalidity":1,"imap-uid":-1}"#).unwrap();
        assert!(ox_transaction(&bad).unwrap_err().contains("imap-uid"));
        // ox reads the user back from the value (an '=' in it included); a user with
        // control characters (a TAB, a NUL, \x01), which the value could not carry as
        // they are, is refused.
        let odd: Value = serde_json::from_str(r#"{"user":"a=b\u0001c","event":"messageNew","folder":"INBOX","imap-uidvalidity":1,"imap-uid":1}"#).unwrap();
        assert!(ox_transaction(&odd).unwrap_err().contains("control"));
        let eq: Value = serde_json::from_str(r#"{"user":"a=b","event":"messageNew","folder":"INBOX","imap-uidvalidity":1,"imap-uid":1}"#).unwrap();
        assert_eq!(
            ox_transaction(&eq).unwrap().metadata[HTTP_NOTIFY],
            "user=a=b"
        );
        for user in ["a\\tb", "a\\u0000b"] {
            let bad: Value = serde_json::from_str(&format!(r#"{{"user":"{user}","event":"messageNew","folder":"INBOX","imap-uidvalidity":1,"imap-uid":1}}"#)).unwrap();
            assert!(
                ox_transaction(&bad).unwrap_err().contains("control"),
                "{user}"
            );
        }
    }
}
