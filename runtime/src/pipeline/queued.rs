//! `Queued`: what a lane's queue carries — a transaction, when it arrived (its age counts
//! from then) and, with the spool, its position there.

use std::sync::Arc;

use mailpush_core::Transaction;
use tokio::time::Instant;

/// A transaction for a lane, queued by ingest (or a replay, a reload, a cluster feed):
/// when it arrived — its age counts from then, not from when the lane took it — and,
/// with the spool, its position there (so that it can be left there without a lookup).
#[derive(Debug, Clone)]
pub struct Queued {
    pub txn: Arc<Transaction>,
    pub at: Instant,
    pub position: Option<i64>,
}

/// The instant of a wall-clock time in the past (`now` for one in the future): a
/// transaction's age counts from when it arrived, which the spool or a hand-off file
/// keeps as wall-clock time.
pub fn arrived_at(t: std::time::SystemTime) -> Instant {
    let age = std::time::SystemTime::now()
        .duration_since(t)
        .unwrap_or_default();
    let now = Instant::now();
    now.checked_sub(age).unwrap_or(now)
}

impl Queued {
    /// `txn`, arriving now, its position unknown.
    pub fn new(txn: Arc<Transaction>) -> Self {
        Queued {
            txn,
            at: Instant::now(),
            position: None,
        }
    }
}
