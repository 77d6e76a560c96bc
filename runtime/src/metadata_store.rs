//! `MetadataStore`: per-user server METADATA (RFC 5464 entries such as
//! `/private/vendor/vendor.dovecot/http-notify`), durable in `<state_dir>/metadata.db`.
//!
//! SQLite (bundled, WAL mode, `synchronous=FULL`): one file, crash-safe, readable by the
//! daemon while `mailpush metadata` writes from another process, and the same embedded
//! engine the delivery spool uses. The ox driver and wasm drivers read it through
//! [`MetadataLookup`] (a transaction's own `metadata` object still takes precedence, see
//! [`mailpush_core::metadata::lookup`]); `mailpush metadata set|get|unset|list` writes and
//! reads it.
//!
//! Keys follow doveadm and IMAP METADATA: they are case-insensitive (stored lower-case),
//! must start with `/private/` or `/shared/`, and obey Dovecot's entry-name rules (no
//! `//`, no trailing `/`, no `*` or `%`, no control characters; Dovecot's internal
//! `vendor/vendor.dovecot/pvt/` tree is off limits).

use std::path::{Path, PathBuf};

use parking_lot::{Mutex, MutexGuard};

pub use mailpush_core::metadata::normalize_key;
use mailpush_core::{MetadataError, MetadataLookup};
use rusqlite::{params, Connection, OptionalExtension};

use crate::schema::Schema;

/// The store's file name inside the state dir.
pub const FILE_NAME: &str = "metadata.db";

/// The store's schema ([`crate::schema`]).
const SCHEMA: Schema = Schema {
    what: "METADATA store",
    version: 1,
    create: "CREATE TABLE IF NOT EXISTS metadata (
                 user  TEXT NOT NULL,
                 key   TEXT NOT NULL,
                 value TEXT NOT NULL,
                 PRIMARY KEY (user, key)
             ) WITHOUT ROWID;",
    migrations: &[],
};

/// The store (one SQLite connection behind a mutex; cheap, short statements).
pub struct MetadataStore {
    conn: Mutex<Connection>,
    path: PathBuf,
}

fn err(e: impl std::fmt::Display) -> MetadataError {
    MetadataError(e.to_string())
}

/// The METADATA store of `settings` (`state_dir/metadata.db`), created if missing.
pub fn open_for(
    settings: &mailpush_config::RuntimeSettings,
) -> Result<std::sync::Arc<MetadataStore>, MetadataError> {
    MetadataStore::open(&settings.state_dir.join(FILE_NAME)).map(std::sync::Arc::new)
}

/// Checks a key (see [`normalize_key`]).
pub fn validate_key(key: &str) -> Result<(), MetadataError> {
    normalize_key(key).map(|_| ())
}

fn check_user(user: &str) -> Result<(), MetadataError> {
    if user.is_empty() {
        return Err(MetadataError("a user is required (-u USER)".into()));
    }
    Ok(())
}

impl MetadataStore {
    /// Opens the store at `path`, creating the file (and its folder) if needed.
    pub fn open(path: &Path) -> Result<Self, MetadataError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
        }
        let ctx = |e: rusqlite::Error| err(format!("METADATA store {}: {e}", path.display()));
        let mut conn = Connection::open(path).map_err(ctx)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(ctx)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(ctx)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(err(format!(
                "METADATA store {}: cannot switch to WAL mode (got {mode})",
                path.display()
            )));
        }
        conn.execute_batch("PRAGMA synchronous = FULL;")
            .map_err(ctx)?;
        SCHEMA
            .apply(&mut conn)
            .map_err(|e| err(format!("METADATA store {}: {e}", path.display())))?;
        Ok(MetadataStore {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
        })
    }

    /// Opens `<state_dir>/metadata.db`.
    pub fn open_in(state_dir: &Path) -> Result<Self, MetadataError> {
        Self::open(&state_dir.join(FILE_NAME))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock()
    }

    /// Sets `key` for `user` (replacing any value). The key is validated and stored
    /// lower-case.
    pub fn set(&self, user: &str, key: &str, value: &str) -> Result<(), MetadataError> {
        check_user(user)?;
        let key = normalize_key(key)?;
        self.conn()
            .execute(
                "INSERT INTO metadata (user, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user, key) DO UPDATE SET value = excluded.value",
                params![user, key, value],
            )
            .map_err(err)?;
        Ok(())
    }

    /// Removes `key` for `user`; returns whether it was set.
    pub fn unset(&self, user: &str, key: &str) -> Result<bool, MetadataError> {
        check_user(user)?;
        let key = normalize_key(key)?;
        let n = self
            .conn()
            .execute(
                "DELETE FROM metadata WHERE user = ?1 AND key = ?2",
                params![user, key],
            )
            .map_err(err)?;
        Ok(n > 0)
    }

    /// Every `(user, key, value)`, of one user or of all, sorted by user then key.
    pub fn list(&self, user: Option<&str>) -> Result<Vec<(String, String, String)>, MetadataError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT user, key, value FROM metadata
                 WHERE ?1 IS NULL OR user = ?1 ORDER BY user, key",
            )
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
    /// The value of `key` for `user`; `None` when not set. Validates the key (an invalid
    /// key is an error, not "not set").
    fn get(&self, user: &str, key: &str) -> Result<Option<String>, MetadataError> {
        let key = normalize_key(key)?;
        self.conn()
            .query_row(
                "SELECT value FROM metadata WHERE user = ?1 AND key = ?2",
                params![user, key],
                |r| r.get(0),
            )
            .optional()
            .map_err(err)
    }

    fn write(&self, user: &str, key: &str, value: &str) -> Result<(), MetadataError> {
        self.set(user, key, value)
    }

    fn remove(&self, user: &str, key: &str) -> Result<bool, MetadataError> {
        self.unset(user, key)
    }

    fn entries(&self, user: &str, prefix: &str) -> Result<Vec<(String, String)>, MetadataError> {
        let prefix = prefix.to_ascii_lowercase();
        Ok(self
            .list(Some(user))?
            .into_iter()
            .filter(|(_, k, _)| k.starts_with(&prefix))
            .map(|(_, k, v)| (k, v))
            .collect())
    }

    fn count_with_mailboxes(&self, user: &str) -> Result<usize, MetadataError> {
        // `USER#…`: the users from `USER#` up to (not including) `USER$`.
        let n: i64 = self
            .conn()
            .query_row(
                "SELECT COUNT(*) FROM metadata WHERE user = ?1 OR (user >= ?2 AND user < ?3)",
                params![user, format!("{user}#"), format!("{user}$")],
                |r| r.get(0),
            )
            .map_err(err)?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "/private/vendor/vendor.dovecot/http-notify";

    #[test]
    fn round_trip_and_persistence_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state").join(FILE_NAME);
        {
            let s = MetadataStore::open(&path).unwrap();
            s.set("a@x", KEY, "user=11@3").unwrap();
            s.set("a@x", KEY, "user=12@3").unwrap();
            s.set("b@x", "/shared/comment", "tab\there\nnewline")
                .unwrap();
            s.set("b@x", "/private/empty", "").unwrap();
        }
        let s = MetadataStore::open_in(&dir.path().join("state")).unwrap();
        assert_eq!(s.path(), path);
        assert_eq!(s.get("a@x", KEY).unwrap().as_deref(), Some("user=12@3"));
        assert_eq!(
            s.get("b@x", "/shared/comment").unwrap().as_deref(),
            Some("tab\there\nnewline")
        );
        assert_eq!(s.get("b@x", "/private/empty").unwrap().as_deref(), Some(""));
        assert_eq!(s.get("b@x", KEY).unwrap(), None);
        assert_eq!(s.get("nobody", KEY).unwrap(), None);
        assert!(s.unset("a@x", KEY).unwrap());
        assert!(!s.unset("a@x", KEY).unwrap());
        assert_eq!(s.get("a@x", KEY).unwrap(), None);
        drop(s);
        let s = MetadataStore::open(&path).unwrap();
        assert_eq!(s.get("a@x", KEY).unwrap(), None, "unset persisted");
    }

    #[test]
    fn lookup_trait_and_case_insensitive_keys() {
        let dir = tempfile::tempdir().unwrap();
        let s = MetadataStore::open(&dir.path().join(FILE_NAME)).unwrap();
        s.set(
            "a@x",
            "/Private/Vendor/vendor.dovecot/HTTP-notify",
            "user=1",
        )
        .unwrap();
        let lookup: &dyn MetadataLookup = &s;
        assert_eq!(lookup.get("a@x", KEY).unwrap().as_deref(), Some("user=1"));
        assert_eq!(
            s.list(None).unwrap(),
            vec![("a@x".into(), KEY.into(), "user=1".into())]
        );
        // Users are case-sensitive, as login names are passed on verbatim.
        assert_eq!(lookup.get("A@x", KEY).unwrap(), None);
    }

    #[test]
    fn list_all_or_one_user_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let s = MetadataStore::open(&dir.path().join(FILE_NAME)).unwrap();
        s.set("b@x", KEY, "user=2").unwrap();
        s.set("a@x", "/shared/z", "z").unwrap();
        s.set("a@x", KEY, "user=1").unwrap();
        let all = s.list(None).unwrap();
        assert_eq!(
            all,
            vec![
                ("a@x".into(), KEY.into(), "user=1".into()),
                ("a@x".into(), "/shared/z".into(), "z".into()),
                ("b@x".into(), KEY.into(), "user=2".into()),
            ]
        );
        assert_eq!(s.list(Some("b@x")).unwrap(), all[2..].to_vec());
        assert!(s.list(Some("c@x")).unwrap().is_empty());
    }

    #[test]
    fn a_second_handle_sees_writes_and_the_journal_is_wal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let daemon = MetadataStore::open(&path).unwrap();
        let cli = MetadataStore::open(&path).unwrap();
        assert_eq!(daemon.get("a@x", KEY).unwrap(), None);
        cli.set("a@x", KEY, "user=1").unwrap();
        assert_eq!(daemon.get("a@x", KEY).unwrap().as_deref(), Some("user=1"));
        let mode: String = daemon
            .conn()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn keys_are_validated_like_doveadm() {
        for (bad, why) in [
            ("vendor/x", "must start with /private/ or /shared/"),
            ("/other/x", "must start with /private/ or /shared/"),
            ("/private", "must start with /private/ or /shared/"),
            ("/private/", "must start with /private/ or /shared/"),
            ("/private/a//b", "consecutive '/'"),
            ("/private/a/", "can't end with '/'"),
            ("/private/a*", "can't contain '*'"),
            ("/shared/a%", "can't contain '%'"),
            ("/private/a\tb", "control chars"),
            ("/private/ä", "control chars"),
            (
                "/private/vendor/vendor.dovecot/pvt/server/x",
                "Internal mailbox attributes",
            ),
        ] {
            let e = validate_key(bad).unwrap_err().0;
            assert!(
                e.starts_with(&format!("Invalid metadata key '{bad}': ")) && e.contains(why),
                "{bad}: {e}"
            );
        }
        assert_eq!(normalize_key("/SHARED/A.b-c_d").unwrap(), "/shared/a.b-c_d");
        assert!(validate_key(KEY).is_ok());

        let dir = tempfile::tempdir().unwrap();
        let s = MetadataStore::open(&dir.path().join(FILE_NAME)).unwrap();
        assert!(s.set("a@x", "vendor/x", "v").is_err());
        assert!(s
            .set("", KEY, "v")
            .unwrap_err()
            .0
            .contains("user is required"));
        assert!(s.get("a@x", "/x").is_err());
        assert!(s.unset("a@x", "/x").is_err());
        assert!(s.list(None).unwrap().is_empty());
    }

    #[test]
    fn unusable_paths_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "not a database ".repeat(300)).unwrap();
        let e = MetadataStore::open(&file.join(FILE_NAME)).err().unwrap();
        assert!(e.0.contains("cannot create"), "{e}");
        let e = MetadataStore::open(&file).err().unwrap();
        assert!(e.0.contains("METADATA store"), "{e}");
    }
}
