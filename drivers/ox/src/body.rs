//! The request body, byte for byte as Dovecot 2.3's ox driver writes it by hand
//! (`dovecot-push.md` §7.3).

use std::fmt::Write;

use mailpush_core::event::NewMessage;

/// Dovecot 2.3's `json_append_escaped`: `"` and `\`; the short escapes for \b \f \n \r \t;
/// other characters below 0x20 as `\u00xx` with lower-case hex; U+2028 and U+2029
/// escaped; `/`, DEL and all other non-ASCII passed through as UTF-8.
pub fn escape(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
}

fn push_string(out: &mut String, key: &str, value: &str) {
    out.push_str(",\"");
    out.push_str(key);
    out.push_str("\":\"");
    escape(value, out);
    out.push('"');
}

/// `{"user":…,"event":"messageNew","folder":…,"imap-uidvalidity":N,"imap-uid":N[,"from":…][,"subject":…][,"snippet":…][,"unseen":N]}`
///
/// `from` and `subject` are the raw header values; when a source only knows the decoded
/// subject (`subject_utf8`), that is sent. `snippet` is sent whenever known, also `""`.
pub fn request_body(user: &str, m: &NewMessage) -> String {
    let mut s = String::with_capacity(192 + m.snippet.as_ref().map_or(0, String::len));
    s.push_str("{\"user\":\"");
    escape(user, &mut s);
    s.push_str("\",\"event\":\"messageNew\",\"folder\":\"");
    escape(&m.mailbox, &mut s);
    let _ = write!(
        s,
        "\",\"imap-uidvalidity\":{},\"imap-uid\":{}",
        m.uid_validity, m.uid
    );
    if let Some(from) = &m.from {
        push_string(&mut s, "from", from);
    }
    if let Some(subject) = m.subject.as_ref().or(m.subject_utf8.as_ref()) {
        push_string(&mut s, "subject", subject);
    }
    if let Some(snippet) = &m.snippet {
        push_string(&mut s, "snippet", snippet);
    }
    if let Some(unseen) = m.unseen {
        let _ = write!(s, ",\"unseen\":{unseen}");
    }
    s.push('}');
    s
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
    fn escaping_is_dovecots() {
        let mut s = String::new();
        escape(
            "q\"b\\s/\u{8}\u{c}\n\r\t\u{0}\u{1}\u{1f}\u{7f}ä€😀\u{2028}\u{2029}",
            &mut s,
        );
        assert_eq!(
            s,
            "q\\\"b\\\\s/\\b\\f\\n\\r\\t\\u0000\\u0001\\u001f\u{7f}ä€😀\\u2028\\u2029"
        );
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
