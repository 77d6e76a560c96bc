//! Driver arguments in Dovecot's syntax (`key=value flag …`) and their redaction.

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

#[cfg(test)]
mod tests {
    use super::*;

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
