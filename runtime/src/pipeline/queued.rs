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
