//! `Overflow`: how a slow driver is kept from holding back ingest and the other drivers.
//!
//! With the spool, a batch is persisted before it is queued. Each driver's in-memory
//! queue is bounded; when a batch does not fit a driver's queue, what does not fit stays
//! in the spool only and that driver's lane becomes *overflowing*: ingest stops queueing
//! for it and the lane reads its backlog from the spool itself, in ingest order, as it
//! gets room. When the lane has read everything owed to it, the overflow ends and ingest
//! queues for it again. Memory stays bounded (the spool has its own quota, the only
//! reason ingest answers 503 with a spool), nothing is lost, and the other drivers never
//! wait for the slow one.
//!
//! Without a spool (`delivery = memory`) there is nowhere to put the backlog: a full
//! queue refuses the batch (503).
//!
//! Races: a batch being distributed while the lane turns overflowing can have some of its
//! transactions queued in memory *and* stored at a position after the overflow cursor.
//! The lane skips those when it reads the spool: it remembers the ids it took from its
//! queue lately (the queue is bounded, so a window of twice its capacity covers every
//! transaction that could be in that situation).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use mailpush_core::Transaction;
use tokio::sync::mpsc;

use crate::spool::Spool;

/// The overflow state of one driver's lane (shared by ingest and the lane).
#[derive(Debug, Default)]
pub struct Overflow {
    state: Mutex<State>,
    /// Wakes an idle lane when its overflow starts.
    wake: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct State {
    /// The lane reads its backlog from the spool; ingest does not queue for it.
    active: bool,
    /// The spool position the lane reads next.
    cursor: i64,
}

impl Overflow {
    /// Whether the lane is reading its backlog from the spool.
    pub fn active(&self) -> bool {
        self.lock().active
    }

    /// Ingest side: queues `txns` (already in the spool) while the queue has room; from
    /// the first one that does not fit, leaves them to the lane to read from the spool.
    /// A closed queue (a driver being replaced by a reload) is treated like a full one:
    /// the lane that replaces it shares this state and reads them.
    pub fn offer(
        &self,
        tx: &mpsc::Sender<Arc<Transaction>>,
        txns: &[Arc<Transaction>],
        spool: &dyn Spool,
        driver: u32,
    ) {
        let mut state = self.lock();
        if state.active {
            return;
        }
        for txn in txns {
            match tx.try_send(txn.clone()) {
                Ok(()) => {}
                Err(_) => {
                    // Everything from here on is read from the spool by the lane. If the
                    // position cannot be read, the lane reads all it is owed (a
                    // redelivery rather than a loss).
                    let cursor = match spool.position(&txn.id) {
                        Ok(Some(p)) => p,
                        Ok(None) => 0,
                        Err(e) => {
                            tracing::error!(driver, "cannot read the spool position: {e}");
                            0
                        }
                    };
                    tracing::info!(
                        driver,
                        txn = %txn.id,
                        "queue full: the driver reads its backlog from the spool"
                    );
                    *state = State {
                        active: true,
                        cursor,
                    };
                    self.wake.notify_one();
                    return;
                }
            }
        }
    }

    /// Makes the lane read everything the spool owes its driver number, from the start
    /// (after a reload replaced the driver: what the old lane left waiting for a retry).
    pub fn read_all_owed(&self) {
        *self.lock() = State {
            active: true,
            cursor: 0,
        };
        self.wake.notify_one();
    }

    /// Completes when an overflow starts (or started since the last call).
    pub async fn started(&self) {
        self.wake.notified().await
    }

    /// Lane side: up to `limit` transactions of the backlog, in ingest order, skipping the
    /// ones the lane already took from its queue. Ends the overflow when nothing is left.
    pub fn take(
        &self,
        spool: &dyn Spool,
        driver: u32,
        limit: usize,
        seen: &RecentIds,
    ) -> Vec<Arc<Transaction>> {
        let mut state = self.lock();
        if !state.active || limit == 0 {
            return Vec::new();
        }
        match spool.owed_from(driver, state.cursor, limit) {
            Ok(rows) if rows.is_empty() => {
                state.active = false;
                tracing::info!(driver, "backlog read from the spool; queueing again");
                Vec::new()
            }
            Ok(rows) => {
                if let Some((last, _)) = rows.last() {
                    state.cursor = last + 1;
                }
                rows.into_iter()
                    .filter(|(_, t)| !seen.contains(&t.id))
                    .map(|(_, t)| Arc::new(t))
                    .collect()
            }
            Err(e) => {
                // Stay overflowing: the lane tries again on its next round.
                tracing::error!(driver, "cannot read the backlog from the spool: {e}");
                Vec::new()
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The ids a lane took from its queue lately (a bounded window).
#[derive(Debug, Default)]
pub struct RecentIds {
    order: VecDeque<String>,
    ids: HashSet<String>,
    window: usize,
}

impl RecentIds {
    pub fn new(window: usize) -> Self {
        RecentIds {
            window: window.max(1),
            ..RecentIds::default()
        }
    }

    pub fn insert(&mut self, id: &str) {
        if self.ids.insert(id.to_string()) {
            self.order.push_back(id.to_string());
            if self.order.len() > self.window {
                if let Some(old) = self.order.pop_front() {
                    self.ids.remove(&old);
                }
            }
        }
    }

    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }
}
