//! The durable spool: what makes delivery at-least-once. Ingest acknowledges a
//! transaction only after it is persisted here; each driver's progress is recorded per
//! (transaction, driver); on restart every unfinished pair is delivered again.
//!
//! [`Spool`] is a small trait so a distributed log can replace the embedded default,
//! [`sqlite::SqliteSpool`] (see `docs/design.md` for the choice).

pub mod lock;
pub mod sqlite;

use std::time::SystemTime;

use mailpush_core::Transaction;

/// A spool operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpoolError {
    /// The disk quota is reached; ingest answers 503 until space frees.
    #[error("the spool is full ({used} of {quota} bytes); retry later")]
    Full { used: u64, quota: u64 },
    #[error("spool storage error: {0}")]
    Storage(String),
    /// One transaction is larger than the spool can ever hold (cluster mode: NATS's
    /// `max_payload`): no retry helps; ingest answers 413.
    #[error("transaction {id:?} takes {size} bytes once stored, more than the spool can hold ({max} bytes: NATS max_payload); it could never be stored (send it in parts, or raise max_payload in nats-server's config)")]
    TooLarge { id: String, size: u64, max: u64 },
}

/// One delivery attempt of a dead-lettered transaction.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attempt {
    /// Unix seconds.
    pub at: u64,
    pub error: String,
}

/// A dead letter: a transaction a driver gave up on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Dead-letter id (for `mailpush dlq show|replay|purge`).
    pub id: i64,
    pub driver: u32,
    pub txn: Transaction,
    pub attempts: Vec<Attempt>,
    /// Unix seconds.
    pub at: u64,
}

/// A transaction owed to a driver, as the spool holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owed {
    /// Its spool position.
    pub position: i64,
    pub txn: Transaction,
    /// When it was stored (its age counts from here: `retry_max_age`).
    pub stored: SystemTime,
}

/// A transaction still owed to some drivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub txn: Transaction,
    pub drivers: Vec<u32>,
    /// The transaction's spool position.
    pub position: i64,
}

/// The numbers of the drivers `letters` are of, ascending, each once.
pub fn drivers_of(letters: &[DeadLetter]) -> Vec<u32> {
    let mut drivers: Vec<u32> = letters.iter().map(|d| d.driver).collect();
    drivers.sort_unstable();
    drivers.dedup();
    drivers
}

/// Durable storage of transactions and per-driver progress.
pub trait Spool: Send + Sync {
    /// Persists transactions owed to `drivers`; returns once durable, with each
    /// transaction's position (`None` for an id already stored: a client's retry is
    /// stored, and delivered, once). Positions grow in commit order. Concurrent callers
    /// share one commit (group commit).
    fn append(&self, txns: &[Transaction], drivers: &[u32])
        -> Result<Vec<Option<i64>>, SpoolError>;
    /// [`Spool::append`] of transactions that arrived at `received` (one per transaction,
    /// e.g. a hand-off file's modification time; now where missing or in the future):
    /// their age (`retry_max_age`) counts from then. A spool that keeps no such time
    /// stores them as arriving now.
    fn append_received(
        &self,
        txns: &[Transaction],
        drivers: &[u32],
        received: &[SystemTime],
    ) -> Result<Vec<Option<i64>>, SpoolError> {
        let _ = received;
        self.append(txns, drivers)
    }
    /// The driver is done with the transaction (delivered, skipped, or dead-lettered).
    fn complete(&self, txn_id: &str, driver: u32) -> Result<(), SpoolError>;
    /// Records a dead letter and completes the pair.
    fn dead_letter(
        &self,
        txn: &Transaction,
        driver: u32,
        attempts: &[Attempt],
    ) -> Result<(), SpoolError>;
    /// Everything unfinished, in ingest order.
    fn pending(&self) -> Result<Vec<Pending>, SpoolError>;
    /// The spool position of a stored transaction (positions grow in ingest order).
    fn position(&self, txn_id: &str) -> Result<Option<i64>, SpoolError>;
    /// Up to `limit` transactions still owed to `driver` at position `from` or later, in
    /// ingest order, each with its position and when it was stored (how an overflowing
    /// lane reads its backlog, see [`crate::pipeline::overflow`]).
    fn owed_from(&self, driver: u32, from: i64, limit: usize) -> Result<Vec<Owed>, SpoolError>;
    /// The transaction at `position` if it is still owed to `driver` (replayed or not):
    /// how a lane reads back what it left in the spool for a user over its share.
    /// A spool whose [`Spool::position`] answers must answer this too.
    fn owed_at(&self, driver: u32, position: i64) -> Result<Option<Owed>, SpoolError>;
    /// Dead letters, optionally of one driver.
    fn dead_letters(&self, driver: Option<u32>) -> Result<Vec<DeadLetter>, SpoolError>;
    /// One dead letter, by its id.
    fn dead_letter_by_id(&self, id: i64) -> Result<Option<DeadLetter>, SpoolError> {
        Ok(self.dead_letters(None)?.into_iter().find(|d| d.id == id))
    }
    /// The numbers of the drivers that have dead letters, ascending.
    fn dead_letter_drivers(&self) -> Result<Vec<u32>, SpoolError> {
        Ok(drivers_of(&self.dead_letters(None)?))
    }
    /// Makes dead letters pending again (all of one driver, or one id); returns how many.
    fn replay(&self, id: Option<i64>, driver: Option<u32>) -> Result<usize, SpoolError>;
    /// Pairs made pending by `replay` since the last call (for a running instance, which
    /// delivers them: the backlog reading passes over them).
    fn take_replayed(&self) -> Result<Vec<Pending>, SpoolError>;
    /// At start-up, before the backlog is read from its start: replays asked for, or
    /// taken by an instance that stopped before delivering them, are read with the rest.
    fn reset_replays(&self) -> Result<(), SpoolError> {
        self.take_replayed().map(|_| ())
    }
    /// How many transactions are owed to each driver number, in number order (for the
    /// start-up warning about numbers the config no longer has); empty where the spool
    /// cannot tell cheaply.
    fn owed_per_driver(&self) -> Result<Vec<(u32, u64)>, SpoolError> {
        Ok(Vec::new())
    }
    /// Deletes dead letters (all, of one driver, or one id); returns how many.
    fn purge(&self, id: Option<i64>, driver: Option<u32>) -> Result<usize, SpoolError>;
    /// Deletes the dead letters recorded before `before` (unix seconds:
    /// `dead_letter_max_age`); how many. A spool whose storage ages them itself (cluster
    /// mode: the stream's max age) does nothing.
    fn expire_dead_letters(&self, before: u64) -> Result<usize, SpoolError> {
        let _ = before;
        Ok(0)
    }
    /// Returns once every progress record written so far is committed.
    fn flush(&self) -> Result<(), SpoolError> {
        self.append(&[], &[]).map(|_| ())
    }
    /// A lane let `txn_id` go undelivered for `driver` (cluster mode: its partition
    /// moved to another node, which delivers it).
    fn abandon(&self, _txn: &Transaction, _driver: u32) {}
    /// Whether the spool itself hands stored transactions to the lanes (cluster mode:
    /// each node delivers only the partitions it owns, read from JetStream), so that
    /// accepting a batch must not also queue it here.
    fn feeds_lanes(&self) -> bool {
        false
    }
    /// Which transactions this process may deliver now (cluster mode: those of the
    /// partitions it owns); `None`: all.
    fn gate(&self) -> Option<std::sync::Arc<dyn Gate>> {
        None
    }
}

/// Which transactions a lane may deliver now ([`Spool::gate`]).
pub trait Gate: Send + Sync {
    /// Whether `txn`, as driver `driver`'s lane holds it, may be delivered here now.
    fn admits(&self, driver: u32, txn: &Transaction) -> bool;
    /// Grows whenever something stops being admitted: a lane seeing a new epoch drops
    /// what it holds and no longer admits.
    fn epoch(&self) -> u64;
}

/// Opens the spool of `settings` (`state_dir/spool.db`) when delivery is durable
/// (`delivery = spool`, the default); `None` with `delivery = memory`.
pub fn open(
    settings: &mailpush_config::RuntimeSettings,
) -> Result<Option<std::sync::Arc<dyn Spool>>, SpoolError> {
    if !settings.durable {
        return Ok(None);
    }
    let s = sqlite::SqliteSpool::open(&settings.spool_path(), settings.spool_quota)?;
    Ok(Some(s))
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Unix seconds now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
