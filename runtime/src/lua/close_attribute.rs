//! Lua 5.4's `<close>` attribute is refused in scripts (and in text they `load`).
//!
//! A to-be-closed variable's `__close` handler runs while an error unwinds the stack,
//! the budget's own `Deadline` error included, and there the instruction hook no longer
//! fires: a handler that loops once its call ran out of time could never be stopped. No
//! Dovecot push script needs the attribute (it came with Lua 5.4), and without it Lua
//! has no other way to make a variable to-be-closed, so refusing it at compile time
//! closes the hole. The scan reads tokens — comments and strings are skipped — and looks
//! for `<`, the name `close`, `>`.

/// The line (1-based) of the first `<close>` attribute in Lua source, if any. Made for
/// text Lua has compiled (or will refuse anyway): an unterminated string or comment
/// ends the scan.
pub fn find(src: &[u8]) -> Option<usize> {
    let mut line = 1;
    let mut i = 0;
    // The last two significant tokens: was it `<` then the name `close`?
    let (mut before, mut last): (Token, Token) = (Token::Other, Token::Other);
    while i < src.len() {
        let c = src[i];
        match c {
            b'\n' => {
                line += 1;
                i += 1;
            }
            b' ' | b'\t' | b'\r' | b'\x0b' | b'\x0c' => i += 1,
            b'-' if src.get(i + 1) == Some(&b'-') => {
                i += 2;
                if let Some(level) = long_bracket(src, i) {
                    i = skip_long(src, i, level, &mut line)?;
                } else {
                    while i < src.len() && src[i] != b'\n' {
                        i += 1;
                    }
                }
            }
            b'[' if long_bracket(src, i).is_some() => {
                let level = long_bracket(src, i)?;
                i = skip_long(src, i, level, &mut line)?;
                (before, last) = (last, Token::Other);
            }
            b'"' | b'\'' => {
                i = skip_short_string(src, i, &mut line)?;
                (before, last) = (last, Token::Other);
            }
            b'<' if src.get(i + 1).is_some_and(|n| b"<=".contains(n)) => {
                i += 2;
                (before, last) = (last, Token::Other);
            }
            b'<' => {
                i += 1;
                (before, last) = (last, Token::Less);
            }
            b'>' => {
                if before == Token::Less && last == Token::Close {
                    return Some(line);
                }
                i += 1;
                (before, last) = (last, Token::Other);
            }
            c if c == b'_' || c.is_ascii_alphabetic() => {
                let start = i;
                while i < src.len() && (src[i] == b'_' || src[i].is_ascii_alphanumeric()) {
                    i += 1;
                }
                let token = if &src[start..i] == b"close" {
                    Token::Close
                } else {
                    Token::Other
                };
                (before, last) = (last, token);
            }
            _ => {
                i += 1;
                (before, last) = (last, Token::Other);
            }
        }
    }
    None
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Token {
    Less,
    Close,
    Other,
}

/// The level of a long bracket `[=*[` opening at `i` (its number of `=`), if one does.
fn long_bracket(src: &[u8], i: usize) -> Option<usize> {
    if src.get(i) != Some(&b'[') {
        return None;
    }
    let level = src[i + 1..].iter().take_while(|&&b| b == b'=').count();
    (src.get(i + 1 + level) == Some(&b'[')).then_some(level)
}

/// Past the long string or comment opening at `i` (`None` if it never closes).
fn skip_long(src: &[u8], i: usize, level: usize, line: &mut usize) -> Option<usize> {
    let mut j = i + level + 2;
    while j < src.len() {
        match src[j] {
            b'\n' => *line += 1,
            b']' if src[j + 1..].iter().take_while(|&&b| b == b'=').count() >= level
                && src.get(j + 1 + level) == Some(&b']') =>
            {
                return Some(j + level + 2);
            }
            _ => {}
        }
        j += 1;
    }
    None
}

/// Past the quoted string opening at `i` (`None` if it never closes).
fn skip_short_string(src: &[u8], i: usize, line: &mut usize) -> Option<usize> {
    let quote = src[i];
    let mut j = i + 1;
    while j < src.len() {
        match src[j] {
            b'\\' => {
                // An escaped line break (`\` newline) continues the string.
                if src.get(j + 1) == Some(&b'\n') {
                    *line += 1;
                }
                j += 2;
                continue;
            }
            b'\n' => return None,
            c if c == quote => return Some(j + 1),
            _ => {}
        }
        j += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::find;

    #[test]
    fn finds_the_attribute_wherever_it_is_written() {
        assert_eq!(find(b"local x <close> = v"), Some(1));
        assert_eq!(find(b"local a, b\n  <  close  >\n= 1, v"), Some(2));
        assert_eq!(find(b"local x <const>, y <close> = 1, v"), Some(1));
        assert_eq!(find(b"f()\n--[[ a\ncomment ]]\nlocal x<close>=v"), Some(4));
        assert_eq!(find(b"do local x<close>=v end"), Some(1));
    }

    #[test]
    fn strings_comments_and_other_uses_are_not_the_attribute() {
        for src in [
            &b"local s = 'local x <close> = v'"[..],
            b"local s = \"<close>\"",
            b"local s = [[<close>]]",
            b"local s = [==[ ]] <close> ]==]",
            b"-- local x <close> = v",
            b"--[=[ <close> ]=]",
            b"local close = 1; local y <const> = close",
            b"if a <= close then end",
            b"x = a << close >> 2",
            b"local s = 'it\\'s <close>'",
        ] {
            assert_eq!(find(src), None, "{}", String::from_utf8_lossy(src));
        }
    }
}
