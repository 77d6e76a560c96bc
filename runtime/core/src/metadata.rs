//! Read-only access to per-user METADATA (RFC 5464 server annotations such as
//! `/private/vendor/vendor.dovecot/http-notify`).

use crate::transaction::Transaction;

/// A METADATA lookup failed (the store could not be read).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("METADATA lookup failed: {0}")]
pub struct MetadataError(pub String);

/// Read access to METADATA values by user and key.
pub trait MetadataLookup: Send + Sync {
    /// The value of `key` for `user`, `None` when not set.
    fn get(&self, user: &str, key: &str) -> Result<Option<String>, MetadataError>;

    /// Sets `key` for `user` (a script's `metadata_set`). Stores without writes refuse.
    fn write(&self, _user: &str, _key: &str, _value: &str) -> Result<(), MetadataError> {
        Err(MetadataError(
            "this METADATA store is read-only for drivers".into(),
        ))
    }

    /// Removes `key` for `user`; whether it was set.
    fn remove(&self, _user: &str, _key: &str) -> Result<bool, MetadataError> {
        Err(MetadataError(
            "this METADATA store is read-only for drivers".into(),
        ))
    }

    /// `user`'s entries whose key starts with `prefix` (compared in lower case), sorted.
    fn entries(&self, _user: &str, _prefix: &str) -> Result<Vec<(String, String)>, MetadataError> {
        Ok(Vec::new())
    }

    /// How many entries `user` has, its mailboxes' (stored as user `USER#MAILBOX`)
    /// included: what a script's writes are bounded by.
    fn count_with_mailboxes(&self, user: &str) -> Result<usize, MetadataError> {
        Ok(self.entries(user, "")?.len())
    }
}

/// A lookup with no entries (used where no store is configured).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoMetadata;

impl MetadataLookup for NoMetadata {
    fn get(&self, _user: &str, _key: &str) -> Result<Option<String>, MetadataError> {
        Ok(None)
    }
}

/// Dovecot's internal attribute tree, which IMAP and doveadm refuse to touch.
const DOVECOT_PVT: &str = "vendor/vendor.dovecot/pvt/";

/// The longest METADATA entry name kept (bytes).
pub const MAX_KEY_BYTES: usize = 1024;

/// Validates a key like doveadm and Dovecot's IMAP METADATA do and returns its canonical
/// (lower-case) form.
pub fn normalize_key(key: &str) -> Result<String, MetadataError> {
    if key.len() > MAX_KEY_BYTES {
        // Its beginning only: the key may be megabytes long.
        return Err(MetadataError(format!(
            "Invalid metadata key '{}…': {} bytes, more than {MAX_KEY_BYTES}",
            &key[..crate::text::prefix_len(key, 64)],
            key.len()
        )));
    }
    let invalid = |why: &str| MetadataError(format!("Invalid metadata key '{key}': {why}"));
    // Entry names are case-insensitive; Dovecot lower-cases them (ASCII).
    let lower = key.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("/private/")
        .or_else(|| lower.strip_prefix("/shared/"))
        .filter(|rest| !rest.is_empty())
        .ok_or_else(|| {
            invalid(
                "it must start with /private/ or /shared/ and name an entry below it, \
                 e.g. /private/vendor/vendor.dovecot/http-notify",
            )
        })?;
    if lower.contains("//") {
        return Err(invalid("Entry name can't contain consecutive '/'"));
    }
    if lower.ends_with('/') {
        return Err(invalid("Entry name can't end with '/'"));
    }
    if lower.contains('*') {
        return Err(invalid("Entry name can't contain '*'"));
    }
    if lower.contains('%') {
        return Err(invalid("Entry name can't contain '%'"));
    }
    // Dovecot tests `name[i] <= 0x19` on a (signed) char: control characters and, on
    // the usual platforms, every non-ASCII byte.
    if lower.bytes().any(|b| b <= 0x19 || b >= 0x80) {
        return Err(invalid(
            "Entry name can't contain control chars (or non-ASCII characters)",
        ));
    }
    if rest.starts_with(DOVECOT_PVT) {
        return Err(invalid("Internal mailbox attributes cannot be accessed"));
    }
    Ok(lower)
}

/// Dovecot's `str_tabescape`: a value made safe to place between TABs and on one line
/// (`\x01` → `\x011`, TAB → `\x01t`, CR → `\x01r`, LF → `\x01n`, NUL → `\x010`), as in
/// METADATA values such as `user=…` and in tab-separated output.
pub fn tab_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\u{1}' => out.push_str("\u{1}1"),
            '\t' => out.push_str("\u{1}t"),
            '\r' => out.push_str("\u{1}r"),
            '\n' => out.push_str("\u{1}n"),
            '\0' => out.push_str("\u{1}0"),
            c => out.push(c),
        }
    }
    out
}

/// Looks up `key` for the transaction's user: the transaction's own `metadata` object
/// (sent by a forwarder that already knows it) takes precedence over the store.
pub fn lookup(
    txn: &Transaction,
    store: &dyn MetadataLookup,
    key: &str,
) -> Result<Option<String>, MetadataError> {
    if let Some(v) = txn.metadata_value(key) {
        return Ok(Some(v.clone()));
    }
    store.get(&txn.user, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tab_escape_is_dovecots() {
        assert_eq!(
            tab_escape("a\tb\u{1}c\r\nd\0é"),
            "a\u{1}tb\u{1}1c\u{1}r\u{1}nd\u{1}0é"
        );
        assert_eq!(tab_escape("plain@x"), "plain@x");
    }

    /// A key over the bound is refused by its size, quoting only its beginning (cut on
    /// a character boundary).
    #[test]
    fn a_long_key_is_refused_quoting_its_beginning() {
        let key = format!("/private/{}{}", "é".repeat(40), "k".repeat(2000));
        let e = normalize_key(&key).unwrap_err().0;
        assert!(
            e.contains(&format!("{} bytes, more than 1024", key.len())),
            "{e}"
        );
        assert!(e.starts_with("Invalid metadata key '/private/éé"), "{e}");
        assert!(e.len() < 200, "{e}");
        assert!(normalize_key(&format!("/private/{}", "k".repeat(1015))).is_ok());
    }
}
