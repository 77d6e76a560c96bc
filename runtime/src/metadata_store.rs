//! `MetadataStore`: per-user METADATA (RFC 5464 server annotations such as
//! `/private/vendor/vendor.dovecot/http-notify`), durable in `state_dir/metadata.db`
//! (SQLite, like the spool — see docs/design.md). The ox driver and wasm drivers read it
//! through [`MetadataLookup`]; `mailpush metadata` writes it.

use std::path::Path;
use std::sync::Mutex;

use mailpush_core::{MetadataError, MetadataLookup};
use rusqlite::{params, Connection, OptionalExtension};

/// The store.
pub struct MetadataStore {
    conn: Mutex<Connection>,
}

fn err(e: impl std::fmt::Display) -> MetadataError {
    MetadataError(e.to_string())
}

/// Checks a key like doveadm does: `/private/…` or `/shared/…`.
pub fn validate_key(key: &str) -> Result<(), MetadataError> {
    let ok = (key.starts_with("/private/") || key.starts_with("/shared/"))
        && key.len() > "/shared/".len()
        && !key.ends_with('/')
        && !key.contains("//")
        && !key.chars().any(|c| c.is_control() || c == '*' || c == '%');
    if ok {
        Ok(())
    } else {
        Err(MetadataError(format!(
            "invalid METADATA key `{key}`: it must start with /private/ or /shared/, e.g. /private/vendor/vendor.dovecot/http-notify"
        )))
    }
}

impl MetadataStore {
    /// Opens (creating) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, MetadataError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| err(format!("creating {}: {e}", dir.display())))?;
        }
        let conn = Connection::open(path).map_err(err)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000; PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS metadata (user TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (user, key)) WITHOUT ROWID;",
        )
        .map_err(err)?;
        Ok(MetadataStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets a value.
    pub fn set(&self, user: &str, key: &str, value: &str) -> Result<(), MetadataError> {
        validate_key(key)?;
        self.conn()
            .execute(
                "INSERT INTO metadata (user, key, value) VALUES (?1, ?2, ?3) ON CONFLICT (user, key) DO UPDATE SET value = excluded.value",
                params![user, key, value],
            )
            .map_err(err)?;
        Ok(())
    }

    /// Removes a value; returns whether it existed.
    pub fn unset(&self, user: &str, key: &str) -> Result<bool, MetadataError> {
        validate_key(key)?;
        let n = self
            .conn()
            .execute(
                "DELETE FROM metadata WHERE user = ?1 AND key = ?2",
                params![user, key],
            )
            .map_err(err)?;
        Ok(n > 0)
    }

    /// Every `(user, key, value)`, optionally of one user, sorted.
    pub fn list(&self, user: Option<&str>) -> Result<Vec<(String, String, String)>, MetadataError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT user, key, value FROM metadata WHERE ?1 IS NULL OR user = ?1 ORDER BY user, key")
            .map_err(err)?;
        let rows = stmt
            .query_map(params![user], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        Ok(rows)
    }
}

impl MetadataLookup for MetadataStore {
    fn get(&self, user: &str, key: &str) -> Result<Option<String>, MetadataError> {
        self.conn()
            .query_row(
                "SELECT value FROM metadata WHERE user = ?1 AND key = ?2",
                params![user, key],
                |r| r.get(0),
            )
            .optional()
            .map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "/private/vendor/vendor.dovecot/http-notify";

    #[test]
    fn round_trip_persistence_and_listing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.db");
        {
            let s = MetadataStore::open(&path).unwrap();
            s.set("a@x", KEY, "user=11@3").unwrap();
            s.set("a@x", KEY, "user=12@3").unwrap();
            s.set("b@x", "/shared/comment", "hi").unwrap();
        }
        let s = MetadataStore::open(&path).unwrap();
        assert_eq!(s.get("a@x", KEY).unwrap().as_deref(), Some("user=12@3"));
        assert_eq!(s.get("b@x", KEY).unwrap(), None);
        assert_eq!(s.list(None).unwrap().len(), 2);
        assert_eq!(
            s.list(Some("b@x")).unwrap(),
            vec![("b@x".into(), "/shared/comment".into(), "hi".into())]
        );
        assert!(s.unset("a@x", KEY).unwrap());
        assert!(!s.unset("a@x", KEY).unwrap());
        assert_eq!(s.get("a@x", KEY).unwrap(), None);
    }

    #[test]
    fn keys_are_validated() {
        for bad in [
            "vendor/x",
            "/other/x",
            "/private/",
            "/private/a//b",
            "/private/a*",
        ] {
            assert!(validate_key(bad).is_err(), "{bad}");
        }
        assert!(validate_key(KEY).is_ok());
    }
}
