//! The embedded spool on SQLite (WAL mode, `synchronous=FULL`). One writer thread does
//! group commit: every append waiting when a commit starts shares that commit's sync.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use parking_lot::Mutex;

use mailpush_core::Transaction;
use rusqlite::{params, Connection, OptionalExtension};

use super::{now, now_ms, Attempt, DeadLetter, Owed, Pending, Spool, SpoolError};
use crate::logging::Tally;
use crate::schema::Schema;

fn storage(e: impl std::fmt::Display) -> SpoolError {
    SpoolError::Storage(e.to_string())
}

/// Makes a stored transaction's JSON a transaction again, or says why it cannot be (a
/// damaged file, or one written by a later mailpush whose transactions hold a field
/// this one does not know). The parser's words may quote the transaction's content: a
/// little of it, control characters escaped.
fn decode(json: &str) -> Result<Transaction, String> {
    Transaction::from_json(json).map_err(|e| {
        let why = mailpush_core::text::escape_controls(&e.to_string());
        match why.char_indices().nth(300) {
            Some((end, _)) => format!("{}…", &why[..end]),
            None => why,
        }
    })
}

/// Deletes the transactions `keys` name (by `column`: `id` or `seq`) that nothing holds
/// any more (no driver owes them, no dead letter keeps them); the bytes freed.
fn delete_unheld<K: rusqlite::ToSql>(
    conn: &Connection,
    column: &str,
    keys: impl IntoIterator<Item = K>,
) -> rusqlite::Result<i64> {
    let mut gc = conn.prepare_cached(&format!(
        "DELETE FROM txns WHERE {column} = ?1 \
         AND NOT EXISTS (SELECT 1 FROM owed WHERE owed.seq = txns.seq) \
         AND NOT EXISTS (SELECT 1 FROM dead WHERE dead.seq = txns.seq) RETURNING size"
    ))?;
    let mut freed = 0;
    for key in keys {
        if let Some(size) = gc
            .query_row(params![key], |r| r.get::<_, i64>(0))
            .optional()?
        {
            freed += size;
        }
    }
    Ok(freed)
}

/// Rows whose JSON cannot be read ([`decode`]): position and why.
type Unreadable = Vec<(i64, String)>;

/// A row whose JSON cannot be read would stop every driver that owes it for good (each
/// reading of the backlog would fail at it). Within `tx`, each of `rows` becomes a dead
/// letter of every driver owed it, whose attempt says why; their other deliveries go
/// on. It is kept (`mailpush dlq list` shows it; a mailpush that can read it can replay
/// it, and a replay here makes it a dead letter again).
fn set_aside(tx: &rusqlite::Transaction<'_>, rows: &[(i64, String)]) -> Result<(), SpoolError> {
    for (seq, why) in rows {
        let attempts = serde_json::to_string(&[Attempt {
            at: now(),
            error: format!(
                "the spool holds this transaction in a form this mailpush cannot read: {why}"
            ),
        }])
        .unwrap_or_default();
        tx.prepare_cached(
            "INSERT INTO dead (seq, driver, attempts, at) SELECT seq, driver, ?2, ?3 FROM owed WHERE seq = ?1",
        )
        .and_then(|mut s| s.execute(params![seq, attempts, now() as i64]))
        .map_err(storage)?;
        tx.prepare_cached("DELETE FROM owed WHERE seq = ?1")
            .and_then(|mut s| s.execute(params![seq]))
            .map_err(storage)?;
    }
    Ok(())
}

enum Write {
    Append {
        /// Id, user, JSON, and when it arrived (unix ms).
        rows: Vec<(String, String, String, i64)>,
        drivers: Vec<u32>,
        reply: mpsc::Sender<Result<Vec<Option<i64>>, SpoolError>>,
    },
    Complete {
        id: String,
        driver: u32,
    },
    Dead {
        id: String,
        driver: u32,
        attempts: String,
    },
}

/// The SQLite spool. Cheap to share (`Arc`).
pub struct SqliteSpool {
    path: PathBuf,
    writer: Mutex<mpsc::Sender<Write>>,
    reader: Mutex<Connection>,
    used: Arc<AtomicU64>,
    quota: u64,
    /// When [`SqliteSpool::recount`] last counted (at most once a second).
    recounted: Mutex<Option<std::time::Instant>>,
    /// Rows set aside as unreadable ([`set_aside`]), for one log line per 10 s.
    set_aside_tally: Tally,
}

/// Indexes outside the schema's version (a mailpush without them keeps them up to date
/// all the same): the owed pairs a replay marked (see [`SqliteSpool::owed`]; only those
/// are in it, so ingest's inserts and deletes of unmarked pairs never touch it), and the
/// dead letters by age (`dead_letter_max_age`, looked at every minute).
const EXTRA_INDEXES: &str =
    "CREATE INDEX IF NOT EXISTS owed_marked ON owed (replayed) WHERE replayed != 0;
CREATE INDEX IF NOT EXISTS dead_at ON dead (at);";

/// The spool's schema ([`crate::schema`]); WAL mode is set on open.
const SCHEMA: Schema = Schema {
    what: "spool",
    version: 2,
    create: "
CREATE TABLE IF NOT EXISTS txns (
    seq  INTEGER PRIMARY KEY AUTOINCREMENT,
    id   TEXT NOT NULL UNIQUE,
    user TEXT NOT NULL,
    json TEXT NOT NULL,
    size INTEGER NOT NULL,
    at   INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS owed (
    seq      INTEGER NOT NULL,
    driver   INTEGER NOT NULL,
    replayed INTEGER NOT NULL DEFAULT 0,
    since    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (seq, driver)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    seq      INTEGER NOT NULL,
    driver   INTEGER NOT NULL,
    attempts TEXT NOT NULL,
    at       INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_seq ON dead (seq);
",
    // 2: when each transaction was stored (unix ms; 0 for rows from version 1: unknown),
    // and when a driver's dead letter was replayed (its age counts from then; 0: never).
    migrations: &["ALTER TABLE txns ADD COLUMN at INTEGER NOT NULL DEFAULT 0;
                   ALTER TABLE owed ADD COLUMN since INTEGER NOT NULL DEFAULT 0;"],
};

fn open_conn(path: &Path) -> Result<Connection, SpoolError> {
    let c = Connection::open(path).map_err(storage)?;
    c.execute_batch("PRAGMA busy_timeout = 5000; PRAGMA synchronous = FULL;")
        .map_err(storage)?;
    Ok(c)
}

impl SqliteSpool {
    /// Opens (creating) the spool at `path` with a disk quota in bytes of stored
    /// transaction JSON.
    pub fn open(path: &Path, quota: u64) -> Result<Arc<Self>, SpoolError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(storage)?;
        }
        let mut writer_conn = open_conn(path)?;
        writer_conn
            .execute_batch("PRAGMA journal_mode = WAL;")
            .map_err(storage)?;
        SCHEMA
            .apply(&mut writer_conn)
            .map_err(|e| SpoolError::Storage(format!("{}: {e}", path.display())))?;
        // The pairs a replay marked, found without reading every owed pair (the daemon
        // asks every second); old dead letters, without reading every one.
        writer_conn
            .execute_batch(EXTRA_INDEXES)
            .map_err(|e| SpoolError::Storage(format!("{}: {e}", path.display())))?;
        let used: u64 = writer_conn
            .query_row("SELECT COALESCE(SUM(size), 0) FROM txns", [], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(storage)? as u64;
        let used = Arc::new(AtomicU64::new(used));
        let (tx, rx) = mpsc::channel();
        let used2 = used.clone();
        std::thread::Builder::new()
            .name("mailpush-spool".into())
            .spawn(move || writer(writer_conn, rx, used2))
            .map_err(storage)?;
        Ok(Arc::new(SqliteSpool {
            path: path.to_path_buf(),
            writer: Mutex::new(tx),
            reader: Mutex::new(open_conn(path)?),
            used,
            quota,
            recounted: Mutex::new(None),
            set_aside_tally: Tally::default(),
        }))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of transaction JSON stored.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Counts the bytes stored again, from the database: another process (`mailpush dlq
    /// purge` next to a running instance) may have freed some that this one's count does
    /// not know of. At most once a second (a full scan), `None` when it is too soon.
    fn recount(&self) -> Result<Option<u64>, SpoolError> {
        {
            let mut last = self.recounted.lock();
            if last.is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1)) {
                return Ok(None);
            }
            *last = Some(std::time::Instant::now());
        }
        let n: i64 = self
            .reader
            .lock()
            .query_row("SELECT COALESCE(SUM(size), 0) FROM txns", [], |r| r.get(0))
            .map_err(storage)?;
        let n = u64::try_from(n).unwrap_or(0);
        self.used.store(n, Ordering::Relaxed);
        Ok(Some(n))
    }

    fn send(&self, w: Write) -> Result<(), SpoolError> {
        self.writer
            .lock()
            .send(w)
            .map_err(|_| SpoolError::Storage("the spool writer has stopped".into()))
    }

    /// Sets `rows` aside ([`set_aside`]) in a transaction of its own.
    fn set_aside_now(
        &self,
        conn: &mut Connection,
        rows: &[(i64, String)],
    ) -> Result<(), SpoolError> {
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(storage)?;
        set_aside(&tx, rows)?;
        tx.commit().map_err(storage)?;
        self.report_set_aside(rows);
        Ok(())
    }

    /// Logs rows set aside: at most one line per 10 s, with the sum and an example.
    fn report_set_aside(&self, rows: &[(i64, String)]) {
        let Some((seq, why)) = rows.first() else {
            return;
        };
        self.set_aside_tally.add(rows.len() as u64, |n| {
            tracing::error!(
                "the spool holds {n} transaction(s) this mailpush cannot read (the latest at position {seq}: {why}); each is now a dead letter of the drivers that were owed it, and their other deliveries go on (mailpush dlq list). A spool written by a later mailpush is read by that version"
            )
        });
    }

    /// Everything owed (or only the pairs replayed since the last call), in ingest order.
    ///
    /// The `replayed` mark of an owed pair: 0, none; 1, `mailpush dlq replay` made it owed
    /// again; 2, a running instance took it to deliver ([`Spool::take_replayed`]). A
    /// lane's reading of the backlog ([`Spool::owed_from`]) passes over marked pairs, so
    /// a replay is delivered once, by whoever takes it, whether the reading passed its
    /// position before or after; start-up ([`Spool::reset_replays`]) and `pending`
    /// clear the marks, as they read everything.
    fn owed(&self, only_replayed: bool) -> Result<Vec<Pending>, SpoolError> {
        let mut conn = self.reader.lock();
        // The daemon asks every second: take the write lock only when there is something.
        if only_replayed {
            let any: bool = conn
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM owed WHERE replayed != 0 AND replayed = 1)",
                )
                .and_then(|mut s| s.query_row([], |r| r.get(0)))
                .map_err(storage)?;
            if !any {
                return Ok(Vec::new());
            }
        }
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(storage)?;
        let rows = {
            // (`replayed != 0` lets SQLite use the index of marked pairs.)
            let mut stmt = tx
                .prepare(if only_replayed {
                    "SELECT t.seq, t.json, o.driver FROM owed o JOIN txns t ON t.seq = o.seq \
                     WHERE o.replayed != 0 AND o.replayed = 1 ORDER BY t.seq, o.driver"
                } else {
                    "SELECT t.seq, t.json, o.driver FROM owed o JOIN txns t ON t.seq = o.seq \
                     ORDER BY t.seq, o.driver"
                })
                .map_err(storage)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, u32>(2)?,
                    ))
                })
                .map_err(storage)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(storage)?;
            rows
        };
        let mark = if only_replayed {
            "UPDATE owed SET replayed = 2 WHERE replayed != 0 AND replayed = 1"
        } else {
            "UPDATE owed SET replayed = 0 WHERE replayed != 0"
        };
        tx.execute(mark, []).map_err(storage)?;
        // In the same transaction: the marks and the set-aside stand or fall together.
        let (pending, unreadable) = Self::rows_to_pending(rows);
        set_aside(&tx, &unreadable)?;
        tx.commit().map_err(storage)?;
        self.report_set_aside(&unreadable);
        Ok(pending)
    }

    /// Deletes the dead letters `clause` picks, and their transactions where nothing else
    /// holds them (`sweep`: any transaction nothing holds, a full scan); how many dead
    /// letters. One transaction: what is freed is exactly what is deleted, whatever the
    /// writer commits meanwhile.
    fn delete_dead(
        &self,
        clause: &str,
        args: impl rusqlite::Params,
        sweep: bool,
    ) -> Result<usize, SpoolError> {
        let mut conn = self.reader.lock();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(storage)?;
        let seqs: Vec<i64> = tx
            .prepare(&format!("DELETE FROM dead WHERE {clause} RETURNING seq"))
            .map_err(storage)?
            .query_map(args, |r| r.get::<_, i64>(0))
            .map_err(storage)?
            .collect::<Result<_, _>>()
            .map_err(storage)?;
        let freed: i64 = if sweep {
            tx.prepare(
                "DELETE FROM txns WHERE seq NOT IN (SELECT seq FROM owed) AND seq NOT IN (SELECT seq FROM dead) RETURNING size",
            )
            .map_err(storage)?
            .query_map([], |r| r.get::<_, i64>(0))
            .map_err(storage)?
            .sum::<Result<i64, _>>()
            .map_err(storage)?
        } else {
            delete_unheld(&tx, "seq", &seqs).map_err(storage)?
        };
        tx.commit().map_err(storage)?;
        self.used
            .fetch_sub((freed as u64).min(self.used()), Ordering::Relaxed);
        Ok(seqs.len())
    }

    /// The dead letters `clause` (over `dead d`, with `?1`) picks, in id order.
    fn dead_where(&self, clause: &str, arg: Option<i64>) -> Result<Vec<DeadLetter>, SpoolError> {
        let conn = self.reader.lock();
        let mut stmt = conn
            .prepare_cached(&format!("SELECT d.id, d.driver, t.json, d.attempts, d.at, t.id, t.user FROM dead d JOIN txns t ON t.seq = d.seq WHERE {clause} ORDER BY d.id"))
            .map_err(storage)?;
        let rows = stmt
            .query_map(params![arg], |r| {
                Ok((
                    (
                        r.get::<_, i64>(0)?,
                        r.get::<_, u32>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, i64>(4)?,
                    ),
                    (r.get::<_, String>(5)?, r.get::<_, String>(6)?),
                ))
            })
            .map_err(storage)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(storage)?;
        Ok(rows
            .into_iter()
            .map(|((id, driver, json, attempts, at), (txn_id, user))| {
                DeadLetter {
                    id,
                    driver,
                    // One this mailpush cannot read shows as its id and user, without
                    // events; its attempts say why ([`set_aside`]). A replay of it
                    // makes it a dead letter again.
                    txn: decode(&json).unwrap_or_else(|_| Transaction::unreadable(txn_id, user)),
                    attempts: serde_json::from_str(&attempts).unwrap_or_default(),
                    at: at as u64,
                }
            })
            .collect())
    }

    /// The rows as transactions and the drivers owed each; and the rows that cannot be
    /// read ([`set_aside`]), each once, with why.
    fn rows_to_pending(rows: Vec<(i64, String, u32)>) -> (Vec<Pending>, Unreadable) {
        let mut out: Vec<Pending> = Vec::new();
        let mut unreadable = Vec::new();
        let mut last_seq = None;
        for (seq, json, driver) in rows {
            if last_seq == Some(seq) {
                if let Some(p) = out.last_mut().filter(|p| p.position == seq) {
                    p.drivers.push(driver);
                }
                continue;
            }
            last_seq = Some(seq);
            match decode(&json) {
                Ok(txn) => out.push(Pending {
                    txn,
                    drivers: vec![driver],
                    position: seq,
                }),
                Err(why) => unreadable.push((seq, why)),
            }
        }
        (out, unreadable)
    }
}

fn writer(mut conn: Connection, rx: mpsc::Receiver<Write>, used: Arc<AtomicU64>) {
    // Progress records (deliveries done, dead letters) of a batch whose commit failed (a
    // full disk, a lock held too long): written again first in the next batch, tried at
    // least every second; dropped, they would be delivered again only after a restart,
    // while the lanes count them done.
    let mut redo: Vec<Write> = Vec::new();
    let mut closed = false;
    // A failure that lasts (a full disk) fails a batch every second: logged once per
    // 10 s with how many.
    let failures = crate::logging::Tally::default();
    loop {
        let first = if redo.is_empty() {
            match rx.recv() {
                Ok(w) => Some(w),
                Err(_) => return,
            }
        } else if closed {
            tracing::error!(
                "the spool could not record {} delivery result(s) before it closed; those transactions are delivered again at the next start",
                redo.len()
            );
            return;
        } else {
            match rx.recv_timeout(std::time::Duration::from_secs(1)) {
                Ok(w) => Some(w),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                // One last try below.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    closed = true;
                    None
                }
            }
        };
        let mut batch = std::mem::take(&mut redo);
        batch.extend(first);
        while batch.len() < 4096 {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let mut replies = Vec::new();
        // Only acknowledgements wait for the sync: a batch of progress records alone
        // commits without one (losing it in a crash means a redelivery, which
        // at-least-once allows).
        let durable = batch.iter().any(|w| matches!(w, Write::Append { .. }));
        // Per append of the batch, in order: each transaction's position (None for a
        // repeated id).
        let mut positions: Vec<Vec<Option<i64>>> = Vec::new();
        let result = (|| -> rusqlite::Result<u64> {
            conn.pragma_update(None, "synchronous", if durable { "FULL" } else { "NORMAL" })?;
            let tx = conn.transaction()?;
            let mut added = 0u64;
            // Transactions whose progress changed in this batch.
            let mut touched: Vec<&str> = Vec::new();
            for w in &batch {
                match w {
                    Write::Append { rows, drivers, .. } => {
                        let mut these = Vec::with_capacity(rows.len());
                        for (id, user, json, at) in rows {
                            let inserted = tx
                                .prepare_cached(
                                    "INSERT OR IGNORE INTO txns (id, user, json, size, at) VALUES (?1, ?2, ?3, ?4, ?5)",
                                )?
                                .execute(params![id, user, json, json.len() as i64, at])?;
                            // A repeated id (a client retrying) is accepted once.
                            if inserted == 0 {
                                let stored: Option<String> = tx
                                    .prepare_cached("SELECT json FROM txns WHERE id = ?1")?
                                    .query_row(params![id], |r| r.get(0))
                                    .optional()?;
                                if stored.is_some_and(|s| s != *json) {
                                    // Not a retry: a sender reusing ids loses transactions.
                                    tracing::warn!(
                                        txn = %id,
                                        "a different transaction came with an id the spool still holds; only the first is kept: ids must be unique per transaction (check the sender's id scheme)"
                                    );
                                }
                                these.push(None);
                                continue;
                            }
                            let seq = tx.last_insert_rowid();
                            these.push(Some(seq));
                            if drivers.is_empty() {
                                // Owed to no driver (a config without any): nothing would
                                // ever complete it, and it would fill the spool.
                                tx.prepare_cached("DELETE FROM txns WHERE seq = ?1")?
                                    .execute(params![seq])?;
                                continue;
                            }
                            added += json.len() as u64;
                            for d in drivers {
                                tx.prepare_cached(
                                    "INSERT OR IGNORE INTO owed (seq, driver) VALUES (?1, ?2)",
                                )?
                                .execute(params![seq, d])?;
                            }
                        }
                        positions.push(these);
                    }
                    Write::Complete { id, driver } => {
                        touched.push(id);
                        tx.prepare_cached(
                            "DELETE FROM owed WHERE driver = ?2 AND seq = (SELECT seq FROM txns WHERE id = ?1)",
                        )?
                        .execute(params![id, driver])?;
                    }
                    Write::Dead {
                        id,
                        driver,
                        attempts,
                    } => {
                        touched.push(id);
                        tx.execute(
                            "INSERT INTO dead (seq, driver, attempts, at) SELECT seq, ?2, ?3, ?4 FROM txns WHERE id = ?1",
                            params![id, driver, attempts, now() as i64],
                        )?;
                        tx.execute(
                            "DELETE FROM owed WHERE driver = ?2 AND seq = (SELECT seq FROM txns WHERE id = ?1)",
                            params![id, driver],
                        )?;
                    }
                }
            }
            // Touched transactions nobody owes anything any more, and not dead-lettered: gone.
            let freed = delete_unheld(&tx, "id", touched)?;
            tx.commit()?;
            used.fetch_sub(
                (freed as u64).min(used.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
            Ok(added)
        })();
        match &result {
            Ok(added) => {
                used.fetch_add(*added, Ordering::Relaxed);
            }
            Err(e) => failures
                .report(|more| tracing::error!("spool commit failed: {e}{}", Tally::more(more))),
        }
        for w in batch {
            match w {
                Write::Append { reply, .. } => replies.push(reply),
                progress if result.is_err() => redo.push(progress),
                _ => {}
            }
        }
        let mut positions = positions.into_iter();
        for r in replies {
            let _ = r.send(match &result {
                Ok(_) => Ok(positions.next().unwrap_or_default()),
                Err(e) => Err(storage(e)),
            });
        }
    }
}

/// When a row was stored (unix ms); rows from before the time was kept: as if now.
fn stored_time(at: i64) -> std::time::SystemTime {
    match at {
        0 => std::time::SystemTime::now(),
        ms => std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.unsigned_abs()),
    }
}

impl Drop for SqliteSpool {
    fn drop(&mut self) {
        let rest = self.set_aside_tally.take_rest();
        if rest > 0 {
            tracing::error!(
                "the spool holds {rest} more transaction(s) this mailpush cannot read; each is now a dead letter of the drivers that were owed it (mailpush dlq list)"
            );
        }
    }
}

impl Spool for SqliteSpool {
    fn append(
        &self,
        txns: &[Transaction],
        drivers: &[u32],
    ) -> Result<Vec<Option<i64>>, SpoolError> {
        self.append_received(txns, drivers, &[])
    }

    fn append_received(
        &self,
        txns: &[Transaction],
        drivers: &[u32],
        received: &[std::time::SystemTime],
    ) -> Result<Vec<Option<i64>>, SpoolError> {
        let now = now_ms();
        let rows: Vec<(String, String, String, i64)> = txns
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let at = received
                    .get(i)
                    .and_then(|r| r.duration_since(std::time::UNIX_EPOCH).ok())
                    // (0 reads as "unknown: now": a time at the epoch is 1 ms past it.)
                    .map_or(now, |d| (d.as_millis() as u64).clamp(1, now.max(1)));
                (t.id.clone(), t.user.clone(), t.to_json(), at as i64)
            })
            .collect();
        let size: u64 = rows.iter().map(|r| r.2.len() as u64).sum();
        let mut used = self.used();
        // (Nothing to store — a flush, a barrier behind the progress records written so
        // far — is never refused, even over quota.)
        if !txns.is_empty() && used + size > self.quota {
            // Before refusing: space another process freed counts too.
            if let Some(n) = self.recount()? {
                used = n;
            }
            if used + size > self.quota {
                return Err(SpoolError::Full {
                    used,
                    quota: self.quota,
                });
            }
        }
        let (reply, wait) = mpsc::channel();
        self.send(Write::Append {
            rows,
            drivers: drivers.to_vec(),
            reply,
        })?;
        wait.recv()
            .map_err(|_| SpoolError::Storage("the spool writer has stopped".into()))?
    }

    fn complete(&self, txn_id: &str, driver: u32) -> Result<(), SpoolError> {
        self.send(Write::Complete {
            id: txn_id.to_string(),
            driver,
        })
    }

    fn dead_letter(
        &self,
        txn: &Transaction,
        driver: u32,
        attempts: &[Attempt],
    ) -> Result<(), SpoolError> {
        self.send(Write::Dead {
            id: txn.id.clone(),
            driver,
            attempts: serde_json::to_string(attempts).unwrap_or_default(),
        })
    }

    fn pending(&self) -> Result<Vec<Pending>, SpoolError> {
        self.owed(false)
    }

    fn position(&self, txn_id: &str) -> Result<Option<i64>, SpoolError> {
        let conn = self.reader.lock();
        let position = conn
            .prepare_cached("SELECT seq FROM txns WHERE id = ?1")
            .map_err(storage)?
            .query_row([txn_id], |r| r.get(0))
            .optional()
            .map_err(storage)?;
        Ok(position)
    }

    fn owed_at(&self, driver: u32, position: i64) -> Result<Option<Owed>, SpoolError> {
        let mut conn = self.reader.lock();
        let row = conn
            .prepare_cached(
                "SELECT t.json, MAX(t.at, o.since) FROM owed o JOIN txns t ON t.seq = o.seq \
                 WHERE o.driver = ?1 AND o.seq = ?2",
            )
            .map_err(storage)?
            .query_row(params![driver, position], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })
            .optional()
            .map_err(storage)?;
        let Some((json, at)) = row else {
            return Ok(None);
        };
        match decode(&json) {
            Ok(txn) => Ok(Some(Owed {
                position,
                txn,
                stored: stored_time(at),
            })),
            Err(why) => {
                // No longer owed: a dead letter now.
                self.set_aside_now(&mut conn, &[(position, why)])?;
                Ok(None)
            }
        }
    }

    fn owed_from(&self, driver: u32, from: i64, limit: usize) -> Result<Vec<Owed>, SpoolError> {
        let mut conn = self.reader.lock();
        loop {
            let rows = conn
                .prepare_cached(
                    "SELECT t.seq, t.json, MAX(t.at, o.since) FROM owed o JOIN txns t ON t.seq = o.seq \
                     WHERE o.driver = ?1 AND o.seq >= ?2 AND o.replayed = 0 ORDER BY o.seq LIMIT ?3",
                )
                .map_err(storage)?
                .query_map(params![driver, from, limit as i64], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .map_err(storage)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(storage)?;
            let mut out = Vec::with_capacity(rows.len());
            let mut unreadable = Unreadable::new();
            // Readable rows before the first unreadable one.
            let mut before = usize::MAX;
            for (seq, json, at) in rows {
                match decode(&json) {
                    Ok(txn) => out.push(Owed {
                        position: seq,
                        txn,
                        stored: stored_time(at),
                    }),
                    Err(why) => {
                        before = before.min(out.len());
                        unreadable.push((seq, why));
                    }
                }
            }
            if unreadable.is_empty() {
                return Ok(out);
            }
            if let Err(e) = self.set_aside_now(&mut conn, &unreadable) {
                // Still owed: what comes before it goes, the rest waits for the next try.
                out.truncate(before);
                return if out.is_empty() { Err(e) } else { Ok(out) };
            }
            // Only unreadable rows: the next ones, so that an empty answer still means
            // nothing is left.
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }

    fn dead_letters(&self, driver: Option<u32>) -> Result<Vec<DeadLetter>, SpoolError> {
        self.dead_where("?1 IS NULL OR d.driver = ?1", driver.map(i64::from))
    }

    fn dead_letter_by_id(&self, id: i64) -> Result<Option<DeadLetter>, SpoolError> {
        Ok(self.dead_where("d.id = ?1", Some(id))?.pop())
    }

    fn dead_letter_drivers(&self) -> Result<Vec<u32>, SpoolError> {
        let conn = self.reader.lock();
        let mut stmt = conn
            .prepare_cached("SELECT DISTINCT driver FROM dead ORDER BY driver")
            .map_err(storage)?;
        let drivers = stmt
            .query_map([], |r| r.get::<_, u32>(0))
            .map_err(storage)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(storage)?;
        Ok(drivers)
    }

    fn replay(&self, id: Option<i64>, driver: Option<u32>) -> Result<usize, SpoolError> {
        let mut conn = self.reader.lock();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(storage)?;
        let filter = "(?1 IS NULL OR id = ?1) AND (?2 IS NULL OR driver = ?2)";
        tx.execute(
            // A replayed transaction is owed anew: its age (retry_max_age) counts from now.
            &format!("INSERT OR IGNORE INTO owed (seq, driver, replayed, since) SELECT seq, driver, 1, ?3 FROM dead WHERE {filter}"),
            params![id, driver, super::now_ms() as i64],
        )
        .map_err(storage)?;
        let n = tx
            .execute(
                &format!("DELETE FROM dead WHERE {filter}"),
                params![id, driver],
            )
            .map_err(storage)?;
        tx.commit().map_err(storage)?;
        Ok(n)
    }

    fn take_replayed(&self) -> Result<Vec<Pending>, SpoolError> {
        self.owed(true)
    }

    fn owed_per_driver(&self) -> Result<Vec<(u32, u64)>, SpoolError> {
        let conn = self.reader.lock();
        let mut stmt = conn
            .prepare("SELECT driver, COUNT(*) FROM owed GROUP BY driver ORDER BY driver")
            .map_err(storage)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, u32>(0)?, r.get::<_, i64>(1)?)))
            .map_err(storage)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(storage)?;
        Ok(rows
            .into_iter()
            .map(|(d, n)| (d, u64::try_from(n).unwrap_or(0)))
            .collect())
    }

    fn reset_replays(&self) -> Result<(), SpoolError> {
        self.reader
            .lock()
            .execute("UPDATE owed SET replayed = 0 WHERE replayed != 0", [])
            .map_err(storage)?;
        Ok(())
    }

    fn purge(&self, id: Option<i64>, driver: Option<u32>) -> Result<usize, SpoolError> {
        // An operator's command: also any transaction nothing holds any more.
        self.delete_dead(
            "(?1 IS NULL OR id = ?1) AND (?2 IS NULL OR driver = ?2)",
            params![id, driver],
            true,
        )
    }

    fn expire_dead_letters(&self, before: u64) -> Result<usize, SpoolError> {
        // Every minute: only the transactions of the letters deleted.
        self.delete_dead("at < ?1", params![before as i64], false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(id: &str, user: &str) -> Transaction {
        Transaction::from_json(&format!(
            r#"{{"id":"{id}","user":"{user}","events":[{{"name":"MailboxCreate","mailbox":"X"}}]}}"#
        ))
        .unwrap()
    }

    fn settle(s: &SqliteSpool) {
        // An append is a full round trip through the writer: earlier writes are committed.
        s.append(&[], &[]).unwrap();
    }

    #[test]
    fn progress_survives_reopen_and_is_per_driver() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.db");
        {
            let s = SqliteSpool::open(&path, 1 << 30).unwrap();
            s.append(&[txn("a", "u1"), txn("b", "u2")], &[1, 2])
                .unwrap();
            s.complete("a", 1).unwrap();
            s.complete("b", 1).unwrap();
            s.complete("b", 2).unwrap();
            settle(&s);
        }
        let s = SqliteSpool::open(&path, 1 << 30).unwrap();
        let p = s.pending().unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].txn.id.as_str(), p[0].drivers.clone()), ("a", vec![2]));
        // a repeated id is accepted once
        s.append(&[txn("a", "u1")], &[1, 2]).unwrap();
        assert_eq!(s.pending().unwrap()[0].drivers, vec![2]);
    }

    #[test]
    fn dead_letters_replay_and_purge() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteSpool::open(&dir.path().join("spool.db"), 1 << 30).unwrap();
        s.append(&[txn("a", "u"), txn("b", "u")], &[3]).unwrap();
        let att = [Attempt {
            at: 1,
            error: "boom".into(),
        }];
        s.dead_letter(&txn("a", "u"), 3, &att).unwrap();
        s.dead_letter(&txn("b", "u"), 3, &att).unwrap();
        settle(&s);
        let d = s.dead_letters(Some(3)).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].attempts, att);
        assert_eq!(s.dead_letter_by_id(d[1].id).unwrap(), Some(d[1].clone()));
        assert_eq!(s.dead_letter_by_id(d[1].id + 100).unwrap(), None);
        assert_eq!(s.dead_letter_drivers().unwrap(), [3]);
        assert!(s.pending().unwrap().is_empty());
        assert_eq!(s.replay(Some(d[0].id), None).unwrap(), 1);
        // A lane reading the backlog passes over a replay, asked for or taken: whoever
        // takes it delivers it, once, whether the reading is before or past it.
        assert!(s.owed_from(3, 0, 10).unwrap().is_empty(), "asked for");
        let r = s.take_replayed().unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].txn.id, "a");
        assert!(s.take_replayed().unwrap().is_empty());
        assert!(s.owed_from(3, 0, 10).unwrap().is_empty(), "taken");
        // At start-up it is read with the rest of the backlog (the instance that took it
        // may have stopped before delivering it).
        s.reset_replays().unwrap();
        // A replayed transaction's age (retry_max_age) counts from its replay, not from
        // when it was first stored.
        let conn = s.reader.lock();
        conn.execute("UPDATE txns SET at = 1000", []).unwrap();
        drop(conn);
        let owed = s.owed_from(3, 0, 10).unwrap();
        assert_eq!(owed.len(), 1);
        let age = std::time::SystemTime::now()
            .duration_since(owed[0].stored)
            .unwrap_or_default();
        assert!(age < std::time::Duration::from_secs(60), "{age:?}");
        assert_eq!(s.purge(None, Some(3)).unwrap(), 1);
        assert!(s.dead_letters(None).unwrap().is_empty());
    }

    /// `dead_letter_max_age`: dead letters recorded before the bound are deleted, with
    /// the transactions nothing else holds, and their bytes leave the quota's count.
    #[test]
    fn old_dead_letters_expire() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteSpool::open(&dir.path().join("spool.db"), 1 << 30).unwrap();
        s.append(
            &[txn("old", "u"), txn("new", "u"), txn("both", "u")],
            &[1, 2],
        )
        .unwrap();
        for (id, driver) in [("old", 1), ("old", 2), ("new", 1), ("both", 1)] {
            s.dead_letter(&txn(id, "u"), driver, &[]).unwrap();
        }
        settle(&s);
        let used = s.used();
        s.reader
            .lock()
            .execute(
                "UPDATE dead SET at = 1000 WHERE seq IN (SELECT seq FROM txns WHERE id IN ('old', 'both'))",
                [],
            )
            .unwrap();
        assert_eq!(s.expire_dead_letters(2000).unwrap(), 3);
        let left: Vec<String> = s
            .dead_letters(None)
            .unwrap()
            .into_iter()
            .map(|d| d.txn.id)
            .collect();
        assert_eq!(left, ["new"]);
        // "old" is gone; "both" (like "new") is still owed to driver 2, so it stays.
        assert_eq!(s.used(), used - txn("old", "u").to_json().len() as u64);
        let owed: Vec<String> = s.pending().unwrap().into_iter().map(|p| p.txn.id).collect();
        assert_eq!(owed, ["new", "both"]);
        assert_eq!(s.expire_dead_letters(2000).unwrap(), 0);
    }

    /// A row this mailpush cannot read (here: written by a later version, with a field
    /// this one does not know) stopped every driver owing it for good, and start-up with
    /// it. It becomes a dead letter of each, shown by its id and user, and the rows
    /// around it are delivered.
    #[test]
    fn an_unreadable_row_is_set_aside_not_a_stall() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteSpool::open(&dir.path().join("spool.db"), 1 << 30).unwrap();
        let ids = ["a", "b", "c", "d", "e"];
        s.append(&ids.map(|i| txn(i, "u")), &[1, 2]).unwrap();
        let conn = s.reader.lock();
        conn.execute(
            r#"UPDATE txns SET json = '{"id":"b","user":"u","events":[],"future":1}' WHERE id = 'b'"#,
            [],
        )
        .unwrap();
        conn.execute(
            "UPDATE txns SET json = 'not json' WHERE id IN ('c', 'd')",
            [],
        )
        .unwrap();
        drop(conn);
        let got = |o: Vec<Owed>| o.into_iter().map(|o| o.txn.id).collect::<Vec<_>>();
        // Past the ones it cannot read, with a limit they would fill.
        let b = s.position("b").unwrap().unwrap();
        assert_eq!(got(s.owed_from(1, b, 2).unwrap()), ["e"]);
        assert_eq!(got(s.owed_from(1, 0, 10).unwrap()), ["a", "e"]);
        // Set aside for driver 2 too, and nothing owed is left unread.
        assert_eq!(got(s.owed_from(2, 0, 10).unwrap()), ["a", "e"]);
        let p = s.pending().unwrap();
        assert_eq!(
            p.iter()
                .map(|p| (p.txn.id.as_str(), p.drivers.clone()))
                .collect::<Vec<_>>(),
            [("a", vec![1, 2]), ("e", vec![1, 2])]
        );
        let dead = s.dead_letters(None).unwrap();
        assert_eq!(dead.len(), 6, "b, c and d, for both drivers");
        for d in &dead {
            assert!(["b", "c", "d"].contains(&d.txn.id.as_str()));
            assert_eq!(d.txn.user, "u");
            assert!(d.txn.events.is_empty());
            assert!(
                d.attempts[0].error.contains("cannot read"),
                "{:?}",
                d.attempts
            );
        }
        // A replay of one makes it a dead letter again, never a delivery.
        assert_eq!(s.replay(Some(dead[0].id), None).unwrap(), 1);
        assert!(s.take_replayed().unwrap().is_empty());
        assert_eq!(s.dead_letters(None).unwrap().len(), 6);
        // Read at start-up too (pending).
        s.append(&[txn("f", "u")], &[1]).unwrap();
        s.reader
            .lock()
            .execute("UPDATE txns SET json = '[]' WHERE id = 'f'", [])
            .unwrap();
        assert_eq!(s.pending().unwrap().len(), 2);
        assert_eq!(s.dead_letters(Some(1)).unwrap().len(), 4);
        // owed_at: no longer owed.
        s.append(&[txn("g", "u")], &[1]).unwrap();
        let g = s.position("g").unwrap().unwrap();
        s.reader
            .lock()
            .execute("UPDATE txns SET json = '{' WHERE id = 'g'", [])
            .unwrap();
        assert!(s.owed_at(1, g).unwrap().is_none());
        assert_eq!(s.dead_letters(Some(1)).unwrap().len(), 5);
    }

    /// The replay poller's question every second, and its reading, use the index of
    /// marked pairs instead of reading every owed pair (a backlog of millions).
    #[test]
    fn finding_replays_reads_only_marked_pairs() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteSpool::open(&dir.path().join("spool.db"), 1 << 30).unwrap();
        let conn = s.reader.lock();
        for q in [
            "SELECT EXISTS (SELECT 1 FROM owed WHERE replayed != 0 AND replayed = 1)",
            "SELECT t.seq, t.json, o.driver FROM owed o JOIN txns t ON t.seq = o.seq WHERE o.replayed != 0 AND o.replayed = 1 ORDER BY t.seq, o.driver",
            "UPDATE owed SET replayed = 2 WHERE replayed != 0 AND replayed = 1",
            "UPDATE owed SET replayed = 0 WHERE replayed != 0",
        ] {
            let plan: Vec<String> = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {q}"))
                .unwrap()
                .query_map([], |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let plan = plan.join("; ");
            assert!(plan.contains("owed_marked"), "{q}: {plan}");
        }
    }

    /// The replay poller and `mailpush dlq` read and write beside ingest's writer: under
    /// contention they wait their turn (busy timeout, write transactions taken up
    /// front), never fail with "database is locked".
    #[test]
    fn readers_and_writer_never_fail_on_contention() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.db");
        let s = SqliteSpool::open(&path, 1 << 30).unwrap();
        // A second handle, as `mailpush dlq` in another process has.
        let other = SqliteSpool::open(&path, 1 << 30).unwrap();
        let writer = {
            let s = s.clone();
            std::thread::spawn(move || {
                for b in 0..200 {
                    let batch: Vec<Transaction> = (0..10)
                        .map(|i| txn(&format!("t{b}-{i}"), &format!("u{i}")))
                        .collect();
                    s.append(&batch, &[1, 2]).unwrap();
                    s.dead_letter(&batch[0], 1, &[]).unwrap();
                    s.complete(&batch[1].id, 1).unwrap();
                }
            })
        };
        let mut rounds = 0;
        while !writer.is_finished() {
            s.take_replayed().unwrap();
            other.replay(None, Some(1)).unwrap();
            other.owed_from(2, 0, 50).unwrap();
            other.purge(None, Some(3)).unwrap();
            rounds += 1;
        }
        writer.join().unwrap();
        assert!(rounds > 0);
    }

    /// With no driver configured, nothing would ever complete a stored transaction: it is
    /// not kept (it filled the spool until a restart).
    #[test]
    fn a_transaction_owed_to_no_driver_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteSpool::open(&dir.path().join("spool.db"), 200).unwrap();
        for id in ["a", "b", "c", "d"] {
            let positions = s.append(&[txn(id, "u")], &[]).unwrap();
            assert!(positions[0].is_some(), "accepted, not taken for a retry");
        }
        assert_eq!(s.used(), 0);
        assert_eq!(s.recount().unwrap(), Some(0));
        assert!(s.pending().unwrap().is_empty());
        // and the spool's room is still there for a driver's transactions
        s.append(&[txn("e", "u")], &[1]).unwrap();
        assert_eq!(s.pending().unwrap().len(), 1);
    }

    #[test]
    fn quota_refuses_when_full_and_frees() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteSpool::open(&dir.path().join("spool.db"), 200).unwrap();
        s.append(&[txn("a", "u")], &[1]).unwrap();
        s.append(&[txn("b", "u")], &[1]).unwrap();
        assert!(matches!(
            s.append(&[txn("c", "u")], &[1]),
            Err(SpoolError::Full { .. })
        ));
        s.complete("a", 1).unwrap();
        settle(&s);
        s.append(&[txn("c", "u")], &[1]).unwrap();
    }

    /// A flush is a barrier even when the spool is over its quota (a smaller quota
    /// than what it holds): it was refused as "full" at once, without waiting for the
    /// progress records written before it.
    #[test]
    fn a_flush_over_quota_waits_for_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.db");
        {
            let s = SqliteSpool::open(&path, 1 << 30).unwrap();
            s.append(&[txn("a", "u"), txn("b", "u")], &[1]).unwrap();
        }
        let s = SqliteSpool::open(&path, 10).unwrap();
        assert!(s.used() > 10);
        s.complete("a", 1).unwrap();
        s.flush().unwrap();
        // The completion is committed: only b is owed.
        let owed: Vec<String> = s.pending().unwrap().into_iter().map(|p| p.txn.id).collect();
        assert_eq!(owed, ["b"]);
        assert!(matches!(
            s.append(&[txn("c", "u")], &[1]),
            Err(SpoolError::Full { .. })
        ));
    }

    /// A commit that fails (here: another connection holds the write lock past the busy
    /// timeout; a full disk likewise) fails the appends of its batch, whose senders
    /// hear of it, but its delivery results are written again with the next batch:
    /// dropped, the delivered transaction stayed owed and went out again at the next
    /// start, the dead letter too.
    #[test]
    fn delivery_results_of_a_failed_commit_are_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.db");
        let s = SqliteSpool::open(&path, 1 << 30).unwrap();
        s.append(&[txn("a", "u"), txn("b", "u"), txn("c", "u")], &[1])
            .unwrap();
        let blocker = Connection::open(&path).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        s.complete("a", 1).unwrap();
        s.dead_letter(&txn("b", "u"), 1, &[]).unwrap();
        // The barrier behind them fails with their batch.
        assert!(s.flush().is_err());
        blocker.execute_batch("ROLLBACK").unwrap();
        drop(blocker);
        s.flush().unwrap();
        let owed: Vec<String> = s.pending().unwrap().into_iter().map(|p| p.txn.id).collect();
        assert_eq!(owed, ["c"]);
        let dead: Vec<String> = s
            .dead_letters(None)
            .unwrap()
            .into_iter()
            .map(|d| d.txn.id)
            .collect();
        assert_eq!(dead, ["b"], "recorded once");
    }

    /// `mailpush dlq purge` frees space through a spool of its own, next to a running
    /// instance's: the instance sees it before refusing a write.
    #[test]
    fn space_freed_by_another_process_is_seen_before_refusing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.db");
        let running = SqliteSpool::open(&path, 200).unwrap();
        running.append(&[txn("a", "u")], &[1]).unwrap();
        running.dead_letter(&txn("a", "u"), 1, &[]).unwrap();
        running.append(&[txn("b", "u")], &[1]).unwrap();
        settle(&running);
        let cli = SqliteSpool::open(&path, 200).unwrap();
        assert_eq!(cli.purge(None, None).unwrap(), 1);
        // The running instance's own count still has "a".
        assert!(
            running.used() > cli.used(),
            "{} {}",
            running.used(),
            cli.used()
        );
        running.append(&[txn("c", "u")], &[1]).unwrap();
        assert_eq!(
            running.used(),
            cli.used() + txn("c", "u").to_json().len() as u64
        );
    }
}
