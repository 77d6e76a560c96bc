//! The request body, byte for byte as Dovecot 2.3's ox driver builds it.

use mailpush_core::event::NewMessage;

/// Dovecot 2.3's `json_append_escaped`: `"` and `\`, the short escapes for \b \f \n \r \t,
/// other control characters as lower-case `\u00xx`, U+2028/2029 escaped; `/`, DEL and
/// other non-ASCII pass through as UTF-8.
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
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
}

/// `{"user":…,"event":"messageNew","folder":…,"imap-uidvalidity":N,"imap-uid":N[,"from":…][,"subject":…][,"snippet":…][,"unseen":N]}`
pub fn request_body(user: &str, m: &NewMessage) -> String {
    let mut s = String::with_capacity(256);
    s.push_str("{\"user\":\"");
    escape(user, &mut s);
    s.push_str("\",\"event\":\"messageNew\",\"folder\":\"");
    escape(&m.mailbox, &mut s);
    s.push_str(&format!(
        "\",\"imap-uidvalidity\":{},\"imap-uid\":{}",
        m.uid_validity, m.uid
    ));
    // The raw subject; when a source only knows the decoded one, that.
    let subject = m.subject.as_deref().or(m.subject_utf8.as_deref());
    for (key, value) in [
        ("from", m.from.as_deref()),
        ("subject", subject),
        ("snippet", m.snippet.as_deref()),
    ] {
        if let Some(v) = value {
            s.push_str(",\"");
            s.push_str(key);
            s.push_str("\":\"");
            escape(v, &mut s);
            s.push('"');
        }
    }
    if let Some(u) = m.unseen {
        s.push_str(&format!(",\"unseen\":{u}"));
    }
    s.push('}');
    s
}
