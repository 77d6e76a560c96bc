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
                .ok_or_else(|| InitError::of_arg(key, format!("{key}={v}: expected {expected}"))),
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

/// Redacts one argument value for logs and `check` output: values of secret-like keys
/// (any with `secret`, `pass`, `token`, `key`, `auth`, `sig`, `cred`, `bearer` or `hmac`
/// in its name, as for URL query parameters: [`secret_param`]) become `***`, and
/// passwords inside URLs (`scheme://user:password@host`) become `***`. A harmless key
/// with such a part (`passthrough`) is masked too: showing a secret is the worse error.
pub fn redact_value(key: &str, value: &str) -> String {
    if secret_param(key) {
        return "***".to_string();
    }
    redact_url(value)
}

/// Masks the secrets of a URL: the password of its userinfo (`http://login:***@host/…`),
/// a userinfo that is a user alone (a token: `http://***@host/`), and the values of
/// secret-like query parameters (`?access_token=***`, `sig=***`); other text is
/// returned unchanged.
pub fn redact_url(value: &str) -> String {
    let Some(scheme_end) = value.find("://") else {
        return value.to_string();
    };
    let rest = &value[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let mut out = value[..scheme_end + 3].to_string();
    match authority.rfind('@') {
        Some(at) => {
            match authority[..at].split_once(':') {
                Some((user, _password)) => out.push_str(&format!("{user}:***")),
                None => out.push_str("***"),
            }
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let tail = &rest[authority_end..];
    match tail.find('?') {
        Some(q) => {
            out.push_str(&tail[..=q]);
            let query_end = tail[q..].find('#').map_or(tail.len(), |h| q + h);
            let query = &tail[q + 1..query_end];
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, v)) if !v.is_empty() && secret_param(k) => format!("{k}=***"),
                    _ => p.to_string(),
                })
                .collect();
            out.push_str(&params.join("&"));
            out.push_str(&tail[query_end..]);
        }
        None => out.push_str(tail),
    }
    out
}

/// Whether a URL query parameter's or an argument's value is a secret (`access_token`,
/// `api_key`, `apiKey`, `signature`, `passwd`, `authorization`, `client_credentials`, …).
fn secret_param(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    // A file, a place or a name: where a secret is, not the secret (a URL's own
    // secrets are masked by [`redact_url`]).
    if ["_file", "_path", "_dir", "_url", "_id", "_name"]
        .iter()
        .any(|s| n.ends_with(s))
    {
        return false;
    }
    [
        "token", "secret", "password", "passwd", "pass", "key", "sig", "auth", "cred", "bearer",
        "hmac",
    ]
    .iter()
    .any(|s| n.contains(s))
}

/// Redacts free text that may quote configuration (an error message, a config line):
/// - the value of every secret-like key ([`redact_value`]), as `key=value` or as
///   Dovecot's `key = value`, also behind a prefix (`wasm:secret=…`);
/// - the password of every URL (the text after `//`), also where the URL does not parse
///   (a scheme missing its colon, a password holding `/` or `@`), and of the value of a
///   `…url` key without a scheme (`url=user:pw@host`);
/// - a password cut by a space (`scheme://user:pa ss@host`, split into two words): the
///   end of the first word and the start of the second.
///
/// A `name:word@version` outside a URL (`mailpush:driver@0.1.2`) is not a credential.
pub fn redact_text(text: &str) -> String {
    // Words and the whitespace after each, so the text is rebuilt exactly.
    let mut words: Vec<(String, String)> = vec![(String::new(), String::new())];
    for c in text.chars() {
        let last = words.len() - 1;
        if c.is_whitespace() {
            words[last].1.push(c);
        } else {
            if !words[last].1.is_empty() {
                words.push((String::new(), String::new()));
            }
            let last = words.len() - 1;
            words[last].0.push(c);
        }
    }
    let mut out = String::with_capacity(text.len());
    let mut cut_password = false;
    let mut i = 0;
    while i < words.len() {
        let (word, space) = &words[i];
        let next = words.get(i + 1).map(|(w, _)| w.as_str());
        // Dovecot's `key = value`: three words (not the words `key = value` that
        // messages use to describe the syntax: quoted, or the bare word `key`).
        if next == Some("=") && !word.contains('`') && !bare_key(word).eq_ignore_ascii_case("key") {
            if let Some((value, value_space)) = words.get(i + 2).filter(|(v, _)| !v.contains('`')) {
                let after = words.get(i + 3).is_some_and(|(w, _)| w.contains('@'));
                let (value, cut) = redact_pair(word, value, after);
                cut_password = cut;
                out.push_str(word);
                out.push_str(space);
                out.push('=');
                out.push_str(&words[i + 1].1);
                out.push_str(&value);
                out.push_str(value_space);
                i += 3;
                continue;
            }
        }
        let redacted = if cut_password {
            // The rest of a password cut by a space, up to its `@`.
            cut_password = false;
            match word.find('@') {
                Some(at) => format!("***{}", &word[at..]),
                None => "***".to_string(),
            }
        } else {
            let (w, cut) = redact_word(word, next.is_some_and(|n| n.contains('@')));
            cut_password = cut;
            w
        };
        out.push_str(&redacted);
        out.push_str(space);
        i += 1;
    }
    out
}

/// The key a `key=value` is about: the name after any prefix (`wasm:secret` → `secret`).
fn bare_key(key: &str) -> &str {
    key.rsplit(|c: char| !c.is_alphanumeric() && c != '_')
        .next()
        .unwrap_or(key)
}

/// A value redacted for its key: all of it for a secret-like key, else the password of
/// a URL in it (with or without a scheme for a `…url` key); and whether it ends in a
/// password cut by a space ([`redact_url_like`]).
fn redact_pair(key: &str, value: &str, next_has_at: bool) -> (String, bool) {
    let bare = bare_key(key);
    if redact_value(bare, value) == "***" {
        return ("***".to_string(), false);
    }
    if !value.contains("//") && bare.to_ascii_lowercase().ends_with("url") {
        let (masked, cut) = redact_url_like(&format!("x://{value}"), next_has_at);
        return (masked["x://".len()..].to_string(), cut);
    }
    redact_word(value, next_has_at)
}

/// [`redact_text`] for one whitespace-free word; `next_has_at`: whether the next word
/// has an `@` (a password cut by a space goes on there). Returns whether this word ends
/// in such a cut password.
fn redact_word(word: &str, next_has_at: bool) -> (String, bool) {
    let (word, cut) = redact_url_like(word, next_has_at);
    match word.split_once('=') {
        Some((key, value)) => {
            let (value, cut_value) = redact_pair(key, value, next_has_at);
            (format!("{key}={value}"), cut || cut_value)
        }
        None => (word, cut),
    }
}

/// Masks the password of the URL in `s` (what follows its first `//`): from the first
/// `:` of the userinfo to the last `@` of the word (a password may hold `/` or `@`).
/// Without an `@`, a part after the authority's `:` that is not a port number is masked
/// (a password cut by a space), and `next_has_at` returned: the cut password goes on in
/// the next word. Text without `//` is unchanged.
fn redact_url_like(s: &str, next_has_at: bool) -> (String, bool) {
    let Some(slashes) = s.find("//") else {
        return (s.to_string(), false);
    };
    let after = slashes + 2;
    let rest = &s[after..];
    if let Some(at) = rest.rfind('@') {
        return match rest[..at].find(':') {
            Some(colon) => (
                format!("{}***{}", &s[..after + colon + 1], &rest[at..]),
                false,
            ),
            None => (s.to_string(), false),
        };
    }
    // No `@`: `user:pass` cut by a space, or a host with a port that is not a number
    // (masked too: a password must not show, a bad port may).
    let authority_len = rest
        .find(['/', '?', '#', '`', '"', '\'', ')', '>'])
        .unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    match authority.find(':') {
        Some(colon)
            if !authority.starts_with('[')
                && !authority[colon + 1..].is_empty()
                && !authority[colon + 1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            (
                format!("{}***{}", &s[..after + colon + 1], &rest[authority_len..]),
                next_has_at,
            )
        }
        _ => (s.to_string(), false),
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
            // A password cut by the line's word splitting: both halves.
            (
                "url=http://user:se cret@127.0.0.1:1/x",
                "url=http://user:*** ***@127.0.0.1:1/x",
            ),
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
            // The part before a query's `=`, and the query's secret.
            (
                "URL http//user:hunter2@h/n?token=abc",
                "URL http//user:***@h/n?token=***",
            ),
            // A password holding `/` or `@`.
            ("http://user:pa/ss@host/", "http://user:***@host/"),
            ("ulr = http://user:p@ss@h/", "ulr = http://user:***@h/"),
            // Dovecot's `key = value`, a secret behind a prefix, a URL key without scheme.
            ("  api_token = abc123", "  api_token = ***"),
            ("ox_url = user:pw@host/x", "ox_url = user:***@host/x"),
            ("\"wasm:secret=abc file=x", "\"wasm:secret=*** file=x"),
            // The first half of a cut password stands alone in a message.
            (
                "Failed to parse OX REST URL http://user:hunt: Invalid port",
                "Failed to parse OX REST URL http://user:*** Invalid port",
            ),
            // Not a port: masked, as a password would be.
            (
                "invalid port in http://host:80a/x",
                "invalid port in http://host:***/x",
            ),
        ] {
            assert_eq!(redact_text(text), shown, "{text}");
        }
        // What is not a credential stays as it was.
        for text in [
            "alice@example.com: user=11@3",
            "http://127.0.0.1:8080/x and http://[::1]:80/ and http://host/a:b",
            "driver 1 (ox) failed to initialise: no url",
            "built against mailpush:driver@0.1.2, newer than mailpush:driver/host@0.1.1",
            "a\n  b\t= c",
            "expected `key = value`, `NAME {` or lua_settings { KEY = VALUE }",
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
            a.take_number::<u32>("bad_n", "5").unwrap_err().message,
            "bad_n=x: expected a number, e.g. bad_n=5"
        );
        assert_eq!(
            a.take_msecs("bad_t", "100").unwrap_err().message,
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
        // A user alone may be a token (`https://TOKEN@host/`, `nats://TOKEN@host`).
        assert_eq!(redact_url("http://login@host/"), "http://***@host/");
        assert_eq!(
            redact_url("https://h/notify?user=a&access_token=SEKRIT1&sig=abc#frag"),
            "https://h/notify?user=a&access_token=***&sig=***#frag"
        );
        assert_eq!(redact_url("https://h/p?flag&x=1"), "https://h/p?flag&x=1");
        assert_eq!(redact_url("https://h"), "https://h");
        let a = DriverArgs::parse("url=https://u:p@h/ secret=whsec_abc signing_key=k flag");
        assert_eq!(
            a.redacted(),
            "url=https://u:***@h/ secret=*** signing_key=*** flag"
        );
        // Names a wasm driver's own arguments take (they all go to the component).
        let a = DriverArgs::parse("passwd=PW1 apikey=AK1 auth=AU1 bearer=BE1 credentials=CR1 hmac=HM1 apiKey=AK2 x-api-key=AK3 authorization=AZ1 client_secret=CS1 url=https://h/x user=u");
        assert_eq!(
            a.redacted(),
            "passwd=*** apikey=*** auth=*** bearer=*** credentials=*** hmac=*** apiKey=*** x-api-key=*** authorization=*** client_secret=*** url=https://h/x user=u"
        );
        // Where a secret is (a file, a URL, an id) is shown; a URL's own secrets are not.
        let a = DriverArgs::parse(
            "ingest_token_file=/etc/t key_id=k1 token_url=https://u:pw@h/t auth_path=/a",
        );
        assert_eq!(
            a.redacted(),
            "ingest_token_file=/etc/t key_id=k1 token_url=https://u:***@h/t auth_path=/a"
        );
    }
}
