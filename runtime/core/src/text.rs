//! Text a driver writes, made safe to log: control characters escaped so a driver's
//! words can never start a line of their own in mailpush's log (nor steer a terminal),
//! and cut to a bound.

/// `text` with every control character written as an escape (`\n`, `\r`, `\t`,
/// `\u{1b}`, …, also DEL, NEL and the Unicode line and paragraph separators).
pub fn escape_controls(text: &str) -> String {
    if !text.chars().any(needs_escape) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => out.push_str(&c.escape_unicode().to_string()),
            c => out.push(c),
        }
    }
    out
}

fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// Cuts `text` to `max` bytes (on a character boundary), marking the cut.
pub fn cap(mut text: String, max: usize) -> String {
    if text.len() > max {
        text.truncate(prefix_len(&text, max));
        text.push_str("…[truncated]");
    }
    text
}

/// How many bytes of `text` its longest prefix of at most `max` bytes takes (a cut on a
/// character boundary).
pub fn prefix_len(text: &str, max: usize) -> usize {
    let mut cut = max.min(text.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_controls("plain text ä"), "plain text ä");
        assert_eq!(
            escape_controls("a\nb\r\tc\u{1b}[31m\u{7f}\u{85}\u{2028}"),
            "a\\nb\\r\\tc\\u{1b}[31m\\u{7f}\\u{85}\\u{2028}"
        );
    }

    #[test]
    fn cuts_on_a_character_boundary() {
        assert_eq!(cap("äää".into(), 3), "ä…[truncated]");
        assert_eq!(cap("abc".into(), 3), "abc");
        assert_eq!(prefix_len("äää", 3), 2);
        assert_eq!(prefix_len("abc", 9), 3);
    }
}
