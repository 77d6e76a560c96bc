//! The request body, byte for byte as Dovecot 2.3's ox driver writes it by hand
//! (`dovecot-push.md` §7.3), from mailpush's event model.

use mailpush_core::event::NewMessage;
use mailpush_ox_wire::Notification;

/// The body for a MessageNew ([`mailpush_ox_wire::request_body`]): `from` and
/// `subject` are the raw header values; when a source only knows the decoded subject
/// (`subject_utf8`), that is sent. `snippet` is sent whenever known, also `""`.
pub fn request_body(user: &str, m: &NewMessage) -> String {
    mailpush_ox_wire::request_body(&Notification {
        user,
        folder: &m.mailbox,
        uid_validity: m.uid_validity,
        uid: m.uid,
        from: m.from.as_deref(),
        subject: m.subject.as_deref().or(m.subject_utf8.as_deref()),
        snippet: m.snippet.as_deref(),
        unseen: m.unseen,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg() -> NewMessage {
        NewMessage {
            mailbox: "INBOX".into(),
            uid: 42,
            uid_validity: 4_294_967_295,
            ..Default::default()
        }
    }

    #[test]
    fn key_order_and_optional_fields() {
        assert_eq!(
            request_body("u", &msg()),
            r#"{"user":"u","event":"messageNew","folder":"INBOX","imap-uidvalidity":4294967295,"imap-uid":42}"#
        );
        let m = NewMessage {
            from: Some("F".into()),
            subject: Some("=?utf-8?q?S?=".into()),
            subject_utf8: Some("S".into()),
            snippet: Some(String::new()),
            unseen: Some(0),
            ..msg()
        };
        assert_eq!(
            request_body("u", &m),
            r#"{"user":"u","event":"messageNew","folder":"INBOX","imap-uidvalidity":4294967295,"imap-uid":42,"from":"F","subject":"=?utf-8?q?S?=","snippet":"","unseen":0}"#
        );
        let m = NewMessage {
            subject_utf8: Some("decoded".into()),
            ..msg()
        };
        assert!(request_body("u", &m).ends_with(r#""imap-uid":42,"subject":"decoded"}"#));
    }
}
