//! Dovecot 2.3's ox push request, byte for byte (`dovecot-push.md` §7): the JSON body
//! as Dovecot writes it by hand, its string escaping, and the reading of the
//! `/private/vendor/vendor.dovecot/http-notify` METADATA value. Shared by mailpush's
//! native `ox` driver and the `ox-wasm` example component, so both send the same bytes.

use std::fmt::Write;

/// The METADATA key that activates ox push for a user.
pub const METADATA_KEY: &str = "/private/vendor/vendor.dovecot/http-notify";

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

/// What one ox notification says (a MessageNew in a watched mailbox).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Notification<'a> {
    /// The user to notify (the METADATA `user=` with `user_from_metadata`).
    pub user: &'a str,
    pub folder: &'a str,
    pub uid_validity: u32,
    pub uid: u32,
    /// The raw From header, when known.
    pub from: Option<&'a str>,
    /// The raw Subject header, or the decoded one when only that is known.
    pub subject: Option<&'a str>,
    /// Sent whenever known, also `""`.
    pub snippet: Option<&'a str>,
    pub unseen: Option<u32>,
}

fn push_string(out: &mut String, key: &str, value: &str) {
    out.push_str(",\"");
    out.push_str(key);
    out.push_str("\":\"");
    escape(value, out);
    out.push('"');
}

/// `{"user":…,"event":"messageNew","folder":…,"imap-uidvalidity":N,"imap-uid":N[,"from":…][,"subject":…][,"snippet":…][,"unseen":N]}`
pub fn request_body(n: &Notification<'_>) -> String {
    let mut s = String::with_capacity(192 + n.snippet.map_or(0, str::len));
    s.push_str("{\"user\":\"");
    escape(n.user, &mut s);
    s.push_str("\",\"event\":\"messageNew\",\"folder\":\"");
    escape(n.folder, &mut s);
    let _ = write!(
        s,
        "\",\"imap-uidvalidity\":{},\"imap-uid\":{}",
        n.uid_validity, n.uid
    );
    if let Some(from) = n.from {
        push_string(&mut s, "from", from);
    }
    if let Some(subject) = n.subject {
        push_string(&mut s, "subject", subject);
    }
    if let Some(snippet) = n.snippet {
        push_string(&mut s, "snippet", snippet);
    }
    if let Some(unseen) = n.unseen {
        let _ = write!(s, ",\"unseen\":{unseen}");
    }
    s.push('}');
    s
}

/// Dovecot's `str_tabunescape` (escape character \x01): `\x01` followed by `0`, `1`, `t`,
/// `r`, `n` gives NUL, \x01, TAB, CR, LF; followed by any other character, that character.
pub fn tab_unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\u{1}' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('0') => out.push('\0'),
            Some('1') => out.push('\u{1}'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('n') => out.push('\n'),
            Some(x) => out.push(x),
            None => {}
        }
    }
    out
}

/// The `user=` of a METADATA value: split on TAB, tab-unescape each element, split each at
/// its first `=`; the last `user` wins; elements without `=` are ignored; an empty value
/// counts. `None` when there is no `user` key (Dovecot: "No user provided in config").
/// An element unescaped to one with a NUL (`\x010`) ends there, as a C string does in
/// Dovecot.
pub fn metadata_user(value: &str) -> Option<String> {
    value
        .split('\t')
        .map(tab_unescape)
        .map(|mut kv| {
            if let Some(nul) = kv.find('\0') {
                kv.truncate(nul);
            }
            kv
        })
        .filter_map(|kv| {
            kv.split_once('=')
                .filter(|(k, _)| *k == "user")
                .map(|(_, v)| v.to_string())
        })
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn n() -> Notification<'static> {
        Notification {
            user: "u",
            folder: "INBOX",
            uid_validity: 4_294_967_295,
            uid: 42,
            ..Default::default()
        }
    }

    #[test]
    fn key_order_and_optional_fields() {
        assert_eq!(
            request_body(&n()),
            r#"{"user":"u","event":"messageNew","folder":"INBOX","imap-uidvalidity":4294967295,"imap-uid":42}"#
        );
        let all = Notification {
            from: Some("F"),
            subject: Some("=?utf-8?q?S?="),
            snippet: Some(""),
            unseen: Some(0),
            ..n()
        };
        assert_eq!(
            request_body(&all),
            r#"{"user":"u","event":"messageNew","folder":"INBOX","imap-uidvalidity":4294967295,"imap-uid":42,"from":"F","subject":"=?utf-8?q?S?=","snippet":"","unseen":0}"#
        );
    }

    #[test]
    fn metadata_values() {
        assert_eq!(metadata_user("user=11@3"), Some("11@3".into()));
        assert_eq!(metadata_user("a=b\tuser=x\tuser=y"), Some("y".into()));
        assert_eq!(metadata_user("user="), Some("".into()));
        assert_eq!(metadata_user("user=a=b"), Some("a=b".into()));
        assert_eq!(metadata_user("nouser\ta=b\tuser"), None);
        assert_eq!(metadata_user("USER=x"), None, "keys are case-sensitive");
        assert_eq!(metadata_user("user=a\u{1}tb"), Some("a\tb".into()));
        assert_eq!(metadata_user("us\u{1}er=z"), Some("z".into()));
        // An unescaped NUL ends the element, as in Dovecot's C strings.
        assert_eq!(metadata_user("user=a\u{1}0b"), Some("a".into()));
        assert_eq!(metadata_user("user=x\tus\u{1}0er=y"), Some("x".into()));
        assert_eq!(
            tab_unescape("\u{1}0\u{1}1\u{1}r\u{1}n\u{1}x\u{1}"),
            "\0\u{1}\r\nx"
        );
    }
}
