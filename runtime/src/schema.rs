//! Versioned SQLite schemas (the spool, the METADATA store): each database records the
//! version of its schema in `PRAGMA user_version`, so a later mailpush can upgrade an
//! existing file step by step instead of misreading it, and an older one refuses a file
//! it does not understand.

use rusqlite::Connection;

/// A schema: its current version, the statements that create it from nothing, and the
/// upgrades from each older version (`migrations[i]` takes version `i + 1` to `i + 2`).
pub struct Schema {
    /// What the database is, for errors (`spool`, `METADATA store`).
    pub what: &'static str,
    pub version: i64,
    pub create: &'static str,
    pub migrations: &'static [&'static str],
}

impl Schema {
    /// Creates the schema in an empty database, upgrades an older one, or refuses one
    /// written by a newer mailpush. A database from before versioning (version 0 with
    /// the tables present) is version 1.
    pub fn apply(&self, conn: &mut Connection) -> Result<(), String> {
        let found: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| e.to_string())?;
        if found > self.version {
            return Err(format!(
                "{} schema version {found} is newer than this mailpush understands ({}): it was written by a newer mailpush",
                self.what, self.version
            ));
        }
        if found == self.version {
            // Current: nothing to write. (Another process — the running daemon — may be
            // writing: a command that only reads must not need the write lock.)
            return Ok(());
        }
        // The write lock up front, waiting for it (busy_timeout): a deferred transaction
        // that read first and then wrote would fail at once, without waiting, whenever
        // another connection committed in between (WAL's busy snapshot).
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| e.to_string())?;
        let tables: i64 = tx
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| e.to_string())?;
        let from = match (found, tables) {
            // Empty: the current schema, nothing to upgrade.
            (0, 0) => {
                tx.execute_batch(self.create).map_err(|e| e.to_string())?;
                self.version
            }
            // From before versioning: version 1.
            (0, _) => 1,
            (v, _) => v,
        };
        for (i, step) in self.migrations.iter().enumerate() {
            let target = i as i64 + 2;
            if target > from && target <= self.version {
                tx.execute_batch(step)
                    .map_err(|e| format!("upgrading the {} to schema {target}: {e}", self.what))?;
            }
        }
        tx.pragma_update(None, "user_version", self.version)
            .map_err(|e| e.to_string())?;
        tx.commit().map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V2: Schema = Schema {
        what: "test db",
        version: 2,
        create: "CREATE TABLE IF NOT EXISTS t (a INTEGER, b TEXT);",
        migrations: &["ALTER TABLE t ADD COLUMN b TEXT;"],
    };

    #[test]
    fn creates_upgrades_and_refuses_newer() {
        // Fresh: the current schema.
        let mut c = Connection::open_in_memory().unwrap();
        V2.apply(&mut c).unwrap();
        c.execute("INSERT INTO t (a, b) VALUES (1, 'x')", [])
            .unwrap();
        // A version-1 database is upgraded in place, keeping its rows.
        let mut old = Connection::open_in_memory().unwrap();
        old.execute_batch(
            "CREATE TABLE t (a INTEGER); INSERT INTO t VALUES (7); PRAGMA user_version = 1;",
        )
        .unwrap();
        V2.apply(&mut old).unwrap();
        let (a, b): (i64, Option<String>) = old
            .query_row("SELECT a, b FROM t", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap();
        assert_eq!((a, b), (7, None));
        let v: i64 = old
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, 2);
        // A newer database is refused, untouched.
        let mut newer = Connection::open_in_memory().unwrap();
        newer.execute_batch("PRAGMA user_version = 9;").unwrap();
        let e = V2.apply(&mut newer).unwrap_err();
        assert!(e.contains("schema version 9 is newer"), "{e}");
    }

    /// Opening a database whose schema is current takes no write lock: a command that
    /// reads the spool (`mailpush dlq list`) works while the daemon holds the lock
    /// writing — before, it failed at once with "database is locked".
    #[test]
    fn a_current_schema_needs_no_write_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let mut daemon = Connection::open(&path).unwrap();
        daemon.execute_batch("PRAGMA journal_mode = WAL;").unwrap();
        V2.apply(&mut daemon).unwrap();
        daemon
            .execute_batch("BEGIN IMMEDIATE; INSERT INTO t (a) VALUES (1);")
            .unwrap();
        let mut reader = Connection::open(&path).unwrap();
        reader.execute_batch("PRAGMA busy_timeout = 0;").unwrap();
        V2.apply(&mut reader).unwrap();
        daemon.execute_batch("COMMIT;").unwrap();
    }
}
