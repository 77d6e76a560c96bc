//! Driver arguments in Dovecot's syntax (`key=value flag …`), the typed reading of one
//! key ([`DriverArgs::take_msecs`], [`DriverArgs::take_size`], …: one duration and one
//! size syntax, [`crate::units`]) and their redaction.

use std::str::FromStr;
use std::time::Duration;

use crate::driver::InitError;
use crate::units;

/// A driver's arguments: the config line's args split the way Dovecot splits them —
/// on the space character only, empty tokens dropped, each token split at its first
/// `=`; a bare token is a flag with an empty value; for a duplicate key the last wins.
/// Keys are case-sensitive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriverArgs {
    pairs: Vec<(String, String)>,
}

impl DriverArgs {
    /// Parses the part of a driver setting after `name:`.
    pub fn parse(raw: &str) -> Self {
        let mut args = DriverArgs::default();
        for token in raw.split(' ').filter(|t| !t.is_empty()) {
            let (k, v) = token.split_once('=').unwrap_or((token, ""));
            args.set(k, v);
        }
        args
    }

    /// Builds arguments from pairs (later duplicates win).
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let mut args = DriverArgs::default();
        for (k, v) in pairs {
            args.set(&k.into(), &v.into());
        }
        args
    }

    /// Sets `key` (replacing an earlier value, keeping its position).
    pub fn set(&mut self, key: &str, value: &str) {
        match self.pairs.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.to_string(),
            None => self.pairs.push((key.to_string(), value.to_string())),
        }
    }

    /// The value of `key`; `Some("")` for a bare flag.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether `key` is present (as a flag or with any value — Dovecot's presence rule).
    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Removes `key`, returning its value.
    pub fn take(&mut self, key: &str) -> Option<String> {
        let i = self.pairs.iter().position(|(k, _)| k == key)?;
        Some(self.pairs.remove(i).1)
    }

    /// Takes `key` and reads its value with `parse`; `Ok(None)` when the key is absent.
    /// A value `parse` refuses is an error naming the key and value and saying what was
    /// `expected` (`"a number, e.g. fuel=10000000"`).
    pub fn take_with<T>(
        &mut self,
        key: &str,
        expected: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Option<T>, InitError> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => parse(&v)
                .map(Some)
                .ok_or_else(|| InitError(format!("{key}={v}: expected {expected}"))),
        }
    }

    /// Takes a number (`fuel=10000000`); `example` is a valid value.
    pub fn take_number<T: FromStr>(
        &mut self,
        key: &str,
        example: &str,
    ) -> Result<Option<T>, InitError> {
        self.take_with(key, &format!("a number, e.g. {key}={example}"), |v| {
            v.parse().ok()
        })
    }

    /// Takes a `*_msecs` duration: milliseconds ([`units::parse_msecs`]).
    pub fn take_msecs(&mut self, key: &str, example: &str) -> Result<Option<Duration>, InitError> {
        self.take_with(
            key,
            &format!("milliseconds, e.g. {key}={example}"),
            units::parse_msecs,
        )
    }

    /// Takes a duration with a unit ([`units::parse_duration`]).
    pub fn take_duration(&mut self, key: &str) -> Result<Option<Duration>, InitError> {
        self.take_with(key, "a duration such as 30s, 2m, 1h", units::parse_duration)
    }

    /// Takes a size ([`units::parse_size`]) within `range` bytes; `expected` describes
    /// it (`"a size between 64K and 1G, e.g. memory=32M"`).
    pub fn take_size(
        &mut self,
        key: &str,
        range: std::ops::RangeInclusive<u64>,
        expected: &str,
    ) -> Result<Option<u64>, InitError> {
        self.take_with(key, expected, |v| {
            units::parse_size(v).filter(|n| range.contains(n))
        })
    }

    /// Takes a flag: present (bare or with any value) or not.
    pub fn take_flag(&mut self, key: &str) -> bool {
        self.take(key).is_some()
    }

    /// The pairs in first-appearance order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Whether there are no arguments.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The arguments as text for display, with secrets redacted (see [`redact_value`]).
    pub fn redacted(&self) -> String {
        self.pairs
            .iter()
            .map(|(k, v)| {
                if v.is_empty() {
                    k.clone()
                } else {
                    format!("{k}={}", redact_value(k, v))
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Keys whose whole value is a secret.
const SECRET_KEYS: [&str; 6] = ["secret", "password", "pass", "token", "key", "api_key"];

/// Redacts one argument value for logs and `check` output: values of secret-like keys
/// (`secret`, `password`, `token`, `*_key`, …) become `***`, and passwords inside URLs
/// (`scheme://user:password@host`) become `***`.
pub fn redact_value(key: &str, value: &str) -> String {
    let k = key.to_ascii_lowercase();
    if SECRET_KEYS.contains(&k.as_str())
        || k.ends_with("_key")
        || k.ends_with("_secret")
        || k.ends_with("password")
    {
        return "***".to_string();
    }
    redact_url(value)
}

/// Masks the password of a URL's userinfo (`http://login:***@host/…`); other text is
/// returned unchanged.
pub fn redact_url(value: &str) -> String {
    let Some(scheme_end) = value.find("://") else {
        return value.to_string();
    };
    let rest = &value[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return value.to_string();
    };
    let userinfo = &authority[..at];
    match userinfo.split_once(':') {
        Some((user, _password)) => {
            format!("{}{}:***{}", &value[..scheme_end + 3], user, &rest[at..])
        }
        None => value.to_string(),
    }
}

/// Redacts free text that may quote configuration (an error message, a config line):
/// every `key=value` word with a secret-like key ([`redact_value`]), and every
/// `user:password@` of a URL in it, also where the URL does not parse (a scheme missing
/// its colon, no scheme in the value of a `…url=` key); a password cut short by a space
/// (`scheme://user:pa ss@host` split into words) is masked in its first word too. A
/// `name:word@version` outside a URL (`mailpush:driver@0.1.2`) is not a credential.
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    for c in text.chars() {
        if c.is_whitespace() {
            out.push_str(&redact_word(&word));
            word.clear();
            out.push(c);
        } else {
            word.push(c);
        }
    }
    out.push_str(&redact_word(&word));
    out
}

/// [`redact_text`] for one whitespace-free word.
fn redact_word(word: &str) -> String {
    if let Some((key, value)) = word.split_once('=') {
        let bare = key.trim_start_matches(|c: char| !c.is_alphanumeric() && c != '_');
        let masked = redact_value(bare, value);
        if masked == "***" {
            return format!("{key}=***");
        }
        // The value of a URL key is a URL even without a scheme (`url=user:pw@host`).
        let url_key = bare.to_ascii_lowercase().ends_with("url");
        return format!("{key}={}", redact_credentials(value, url_key));
    }
    redact_credentials(word, false)
}

/// Masks what lies between the first `:` and an `@` in every userinfo-like part of
/// `s` (the text before an `@`, back to a `/`, a quote or the start) when `s` is a URL
/// (`url`, or it has a `//`), and the part after the `:` of a URL's authority that has
/// no `@` and no port there.
fn redact_credentials(s: &str, url: bool) -> String {
    if !url && !s.contains("//") {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    let mut masked_any = false;
    while let Some(at) = rest.find('@') {
        let before = &rest[..at];
        let start = before
            .rfind(['/', '`', '"', '\'', '(', '<', '['])
            .map_or(0, |i| i + 1);
        match before[start..].find(':') {
            Some(colon) => {
                out.push_str(&before[..start + colon + 1]);
                out.push_str("***@");
                masked_any = true;
            }
            None => {
                out.push_str(before);
                out.push('@');
            }
        }
        rest = &rest[at + 1..];
    }
    out.push_str(rest);
    if masked_any || out.contains('@') {
        return out;
    }
    // No `@` at all: `scheme://user:pass` (the rest of the password in the next word).
    let Some(scheme_end) = out.find("://") else {
        return out;
    };
    let authority_start = scheme_end + 3;
    let authority_len = out[authority_start..]
        .find(['/', '?', '#', '`', '"', '\'', ')', '>'])
        .unwrap_or(out.len() - authority_start);
    let authority = &out[authority_start..authority_start + authority_len];
    match authority.rfind(':') {
        Some(colon)
            if !authority.starts_with('[')
                && !authority[colon + 1..].is_empty()
                && !authority[colon + 1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            format!(
                "{}***{}",
                &out[..authority_start + colon + 1],
                &out[authority_start + authority_len..]
            )
        }
        _ => out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_credentials_in_free_text() {
        for (text, shown) in [
            (
                "Failed to parse OX REST URL http//user:secret@127.0.0.1:1/x: bad",
                "Failed to parse OX REST URL http//user:***@127.0.0.1:1/x: bad",
            ),
            (
                "push_notification_driver = ox:url=http://user:secret@127.0.0.1:1/x",
                "push_notification_driver = ox:url=http://user:***@127.0.0.1:1/x",
            ),
            (
                "url=http://user:se cret@127.0.0.1:1/x",
                "url=http://user:*** cret@127.0.0.1:1/x",
            ),
            ("`http://user:se`", "`http://user:***`"),
            (
                "  url = http//user:secret@host/",
                "  url = http//user:***@host/",
            ),
            (
                "wasm:file=x.wasm secret=whsec_abc",
                "wasm:file=x.wasm secret=***",
            ),
            ("api_key=abc token=t", "api_key=*** token=***"),
            ("ox:url=user:pw@host/x", "ox:url=user:***@host/x"),
        ] {
            assert_eq!(redact_text(text), shown, "{text}");
        }
        // What is not a credential stays as it was.
        for text in [
            "alice@example.com: user=11@3",
            "http://127.0.0.1:8080/x and http://[::1]:80/ and http://host/a:b",
            "driver 1 (ox) failed to initialise: no url",
            "built against mailpush:driver@0.1.2, newer than mailpush:driver/host@0.1.1",
            "",
        ] {
            assert_eq!(redact_text(text), text);
        }
    }

    #[test]
    fn splits_like_dovecot() {
        let a = DriverArgs::parse(
            "  url=http://x/?a=b  user_from_metadata\ttab timeout_msecs=1 timeout_msecs=2 ",
        );
        assert_eq!(a.get("url"), Some("http://x/?a=b"));
        // tabs are not separators
        assert_eq!(a.get("user_from_metadata\ttab"), Some(""));
        assert_eq!(a.get("timeout_msecs"), Some("2"));
        assert_eq!(a.iter().count(), 3);
        assert!(!a.has("URL"), "keys are case-sensitive");
    }

    #[test]
    fn typed_keys_name_the_key_and_what_was_expected() {
        let mut a = DriverArgs::parse("t_msecs=250 d=2m n=7 s=10M f bad_n=x bad_t=soon");
        assert_eq!(
            a.take_msecs("t_msecs", "100").unwrap(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            a.take_duration("d").unwrap(),
            Some(Duration::from_secs(120))
        );
        assert_eq!(a.take_number::<u32>("n", "5").unwrap(), Some(7));
        assert_eq!(
            a.take_size("s", 1..=u64::MAX, "a size").unwrap(),
            Some(10 << 20)
        );
        assert!(a.take_flag("f"));
        assert!(!a.take_flag("f"), "taken");
        assert_eq!(a.take_number::<u32>("absent", "5").unwrap(), None);
        assert_eq!(
            a.take_number::<u32>("bad_n", "5").unwrap_err().0,
            "bad_n=x: expected a number, e.g. bad_n=5"
        );
        assert_eq!(
            a.take_msecs("bad_t", "100").unwrap_err().0,
            "bad_t=soon: expected milliseconds, e.g. bad_t=100"
        );
        assert!(a.is_empty());
    }

    #[test]
    fn redacts_secrets() {
        assert_eq!(
            redact_url("http://login:pass@node1.domain.tld:8009/preliminary"),
            "http://login:***@node1.domain.tld:8009/preliminary"
        );
        assert_eq!(redact_url("http://login@host/"), "http://login@host/");
        let a = DriverArgs::parse("url=https://u:p@h/ secret=whsec_abc signing_key=k flag");
        assert_eq!(
            a.redacted(),
            "url=https://u:***@h/ secret=*** signing_key=*** flag"
        );
    }
}
