//! `Overflow`: how a slow driver is kept from holding back ingest and the other drivers.
//!
//! With the spool, a batch is persisted before it is queued, and the spool gives each
//! transaction its position (positions grow in commit order). Each driver's in-memory
//! queue is bounded; when a batch does not fit a driver's queue, what does not fit stays
//! in the spool only and that driver's lane becomes *overflowing*: ingest stops queueing
//! for it and the lane reads its backlog from the spool itself, in position order, as it
//! gets room — and only once its queue is empty, so nothing queued earlier is passed.
//! When the lane has read everything owed to it, the overflow ends and ingest queues for
//! it again. Memory stays bounded (the spool has its own quota, the only reason ingest
//! answers 503 with a spool), nothing is lost, and the other drivers never wait for the
//! slow one. A restart reads the same way: everything owed, from position 0, before
//! anything new.
//!
//! Concurrent batches reach [`Overflow::offer`] in any order, so each offer is judged by
//! its positions: a transaction the lane already read from the spool (inside a range it
//! read) is not queued again; one committed before the range the lane is reading is
//! remembered and read first.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

use mailpush_core::Transaction;
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::mpsc;

use crate::spool::Spool;

/// How many past read ranges are kept to recognise a late offer of a transaction the
/// lane already read (an offer is late by the time between its commit and its offer).
const READ_RANGES: usize = 16;

/// The overflow state of one driver's lane (shared by ingest and the lane).
#[derive(Debug, Default)]
pub struct Overflow {
    state: Mutex<State>,
    /// Wakes an idle lane when its overflow starts.
    wake: tokio::sync::Notify,
    /// What a lane stopped by a reload knew of the transactions it hands to its
    /// successor (which shares this overflow), by transaction id.
    carried: Mutex<HashMap<String, Carried>>,
    /// Transactions left in the spool because their user (or tenant) already had its
    /// share of the lane's room, by that key: spool positions, read back in order as
    /// its room frees up (see `lane::take_in`).
    diverted: Mutex<BTreeMap<String, BTreeSet<i64>>>,
    /// The key last given room ([`Overflow::served`]).
    served_first: Mutex<Option<String>>,
    /// A reload is handing the lane what its predecessor held: until it is done, the
    /// lane reads nothing back (those transactions are older); with the spool it takes
    /// and starts nothing at all.
    handing_over: std::sync::atomic::AtomicBool,
    /// What a lane stopped by a reload held and had queued, for its successor to take
    /// before anything else ([`Overflow::hand_on`]).
    handed_on: Mutex<Vec<Arc<Transaction>>>,
}

/// A held transaction's delivery history, carried from a lane to the one replacing it:
/// its attempts (the retry schedule goes on) and when it arrived (its age too).
#[derive(Debug)]
pub struct Carried {
    pub attempts: Vec<crate::spool::Attempt>,
    pub arrived: tokio::time::Instant,
}

#[derive(Debug, Default)]
struct State {
    /// The lane reads its backlog from the spool; ingest does not queue for it.
    active: bool,
    /// Where the current (or last) reading started.
    start: i64,
    /// The spool position the lane reads next.
    cursor: i64,
    /// Positions before `start` offered while overflowing: read before the cursor's.
    missed: BTreeSet<i64>,
    /// Earlier read ranges `[start, end)`, newest last.
    read: VecDeque<(i64, i64)>,
    /// The highest position handed to the lane (queued, or read from the spool): a new
    /// reading starts above it, so nothing the lane has is read again.
    hi: i64,
}

impl State {
    /// Whether the lane read `position` from the spool already.
    fn was_read(&self, position: i64) -> bool {
        (self.start..self.cursor).contains(&position)
            || self.read.iter().any(|(a, b)| (*a..*b).contains(&position))
    }

    fn begin(&mut self, at: i64) {
        if self.cursor > self.start {
            self.read.push_back((self.start, self.cursor));
            if self.read.len() > READ_RANGES {
                self.read.pop_front();
            }
        }
        self.active = true;
        self.start = at;
        self.cursor = at;
        self.missed.clear();
    }
}

impl Overflow {
    /// Whether the lane is reading its backlog from the spool.
    pub fn active(&self) -> bool {
        self.lock().active
    }

    /// Ingest side: queues `txns` (stored in the spool at the given positions) while the
    /// queue has room; from the first one that does not fit, leaves them to the lane to
    /// read from the spool. A closed queue (a driver being replaced by a reload) is
    /// treated like a full one: the lane that replaces it shares this state.
    pub fn offer(
        &self,
        tx: &mpsc::Sender<super::queued::Queued>,
        txns: &[(Arc<Transaction>, i64)],
        driver: u32,
    ) {
        self.offer_arrived(tx, txns, &[], driver);
    }

    /// [`Overflow::offer`] of transactions that arrived at `arrived` (one per
    /// transaction; now where missing): their age counts from then.
    pub fn offer_arrived(
        &self,
        tx: &mpsc::Sender<super::queued::Queued>,
        txns: &[(Arc<Transaction>, i64)],
        arrived: &[tokio::time::Instant],
        driver: u32,
    ) {
        let mut state = self.lock();
        for (i, (txn, position)) in txns.iter().enumerate() {
            let position = *position;
            if state.was_read(position) {
                continue;
            }
            if state.active {
                if position < state.start {
                    // Committed before the reading started, offered only now.
                    state.missed.insert(position);
                }
                // At or after the cursor: the lane reads it in turn.
                continue;
            }
            let queued = super::queued::Queued {
                position: Some(position),
                at: arrived
                    .get(i)
                    .copied()
                    .unwrap_or_else(tokio::time::Instant::now),
                txn: txn.clone(),
            };
            if tx.try_send(queued).is_ok() {
                state.hi = state.hi.max(position);
                continue;
            }
            tracing::info!(
                driver,
                txn = %txn.id,
                "queue full: the driver reads its backlog from the spool"
            );
            // Read from above what the lane already has; this one (committed earlier
            // than something already queued) is read on its own.
            let from = position.max(state.hi + 1);
            state.begin(from);
            if position < from {
                state.missed.insert(position);
            }
            self.wake.notify_one();
        }
    }

    /// Makes the lane read everything the spool owes its driver number, from the start
    /// (at start-up, before ingest opens).
    pub fn read_all_owed(&self) {
        self.lock().begin(0);
        self.wake.notify_one();
    }

    /// Completes when an overflow starts (or started since the last call).
    pub async fn started(&self) {
        self.wake.notified().await
    }

    /// Leaves the transaction at `position` in the spool, for `key` to read back.
    pub fn divert(&self, key: &str, position: i64) {
        self.diverted
            .lock()
            .entry(key.to_string())
            .or_default()
            .insert(position);
    }

    /// Whether `key` has transactions left in the spool (its later ones go there too,
    /// so its order holds).
    pub fn is_diverting(&self, key: &str) -> bool {
        let diverted = self.diverted.lock();
        !diverted.is_empty() && diverted.contains_key(key)
    }

    /// Marks the start (`true`) and end of a reload's hand-over; at the end the lane is
    /// woken to read back what waits.
    pub fn set_handing_over(&self, yes: bool) {
        self.handing_over
            .store(yes, std::sync::atomic::Ordering::SeqCst);
        if !yes {
            self.wake.notify_one();
        }
    }

    /// Whether a reload is handing the lane what its predecessor held.
    pub fn handing_over(&self) -> bool {
        self.handing_over.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether any transaction is left in the spool this way.
    pub fn any_diverted(&self) -> bool {
        !self.diverted.lock().is_empty()
    }

    /// How many transactions are left in the spool this way.
    pub fn diverted_count(&self) -> usize {
        self.diverted.lock().values().map(|s| s.len()).sum()
    }

    /// The keys with transactions left in the spool.
    pub fn diverting(&self) -> Vec<String> {
        self.diverted.lock().keys().cloned().collect()
    }

    /// [`Overflow::diverting`], starting after the key last served ([`Overflow::served`])
    /// and wrapping around, so that each key in turn is first to the room that frees up.
    pub fn diverting_in_turn(&self) -> Vec<String> {
        let diverted = self.diverted.lock();
        let last = self.served_first.lock();
        let mut keys: Vec<String> = match last.as_deref() {
            Some(after) => diverted
                .range::<str, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
                .chain(diverted.range::<str, _>((
                    std::ops::Bound::Unbounded,
                    std::ops::Bound::Included(after),
                )))
                .map(|(k, _)| k.clone())
                .collect(),
            None => diverted.keys().cloned().collect(),
        };
        keys.dedup();
        keys
    }

    /// Notes that `key` was given room ([`Overflow::diverting_in_turn`] starts after it).
    pub fn served(&self, key: &str) {
        *self.served_first.lock() = Some(key.to_string());
    }

    /// Takes up to `n` of `key`'s positions left in the spool, oldest first.
    pub fn take_diverted(&self, key: &str, n: usize) -> Vec<i64> {
        let mut diverted = self.diverted.lock();
        let Some(set) = diverted.get_mut(key) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(n.min(set.len()));
        while out.len() < n {
            match set.pop_first() {
                Some(p) => out.push(p),
                None => break,
            }
        }
        if set.is_empty() {
            diverted.remove(key);
        }
        out
    }

    /// A reload: what the replaced lane still held and had queued (oldest first), for
    /// the lane replacing it, which takes them before anything queued since.
    pub fn hand_on(&self, txns: Vec<Arc<Transaction>>) {
        self.handed_on.lock().extend(txns);
    }

    /// Lane side: what [`Overflow::hand_on`] left for it.
    pub fn take_handed_on(&self) -> Vec<Arc<Transaction>> {
        std::mem::take(&mut *self.handed_on.lock())
    }

    /// Keeps what a stopping lane knew of a transaction it hands on (a reload).
    pub fn carry(&self, id: &str, carried: Carried) {
        self.carried.lock().insert(id.to_string(), carried);
    }

    /// What the lane before knew of transaction `id`, if it handed it on.
    pub fn take_carried(&self, id: &str) -> Option<Carried> {
        let mut carried = self.carried.lock();
        if carried.is_empty() {
            return None;
        }
        carried.remove(id)
    }

    /// Wakes the lane (a reload's new lane, whose predecessor may have taken the wake-up
    /// of an overflow it then left unfinished).
    pub fn wake_lane(&self) {
        self.wake.notify_one();
    }

    /// Lane side: up to `limit` transactions of the backlog, in position order, each with
    /// when it was stored (its age counts from then). Reads
    /// nothing while `queue_empty` says the queue still holds transactions (checked under
    /// the lock ingest queues under, so those are never passed). Ends the overflow when
    /// nothing is left.
    pub fn take(
        &self,
        spool: &dyn Spool,
        driver: u32,
        limit: usize,
        queue_empty: impl Fn() -> bool,
    ) -> Vec<(Arc<Transaction>, SystemTime, i64)> {
        let mut state = self.lock();
        if !state.active || limit == 0 || !queue_empty() {
            return Vec::new();
        }
        let mut out = Vec::new();
        // First what was committed before the reading started but offered only later.
        while out.len() < limit {
            let Some(position) = state.missed.pop_first() else {
                break;
            };
            match spool.owed_from(driver, position, 1) {
                Ok(rows) => {
                    state.hi = state.hi.max(position);
                    out.extend(
                        rows.into_iter()
                            .filter(|o| o.position == position)
                            .map(|o| (Arc::new(o.txn), o.stored, o.position)),
                    )
                }
                Err(e) => {
                    state.missed.insert(position);
                    tracing::error!(driver, "cannot read the backlog from the spool: {e}");
                    return out;
                }
            }
        }
        if out.len() >= limit {
            return out;
        }
        match spool.owed_from(driver, state.cursor, limit - out.len()) {
            Ok(rows) if rows.is_empty() && out.is_empty() => {
                state.active = false;
                tracing::info!(driver, "backlog read from the spool; queueing again");
            }
            Ok(rows) => {
                if let Some(last) = rows.last() {
                    state.cursor = last.position + 1;
                    state.hi = state.hi.max(last.position);
                }
                out.extend(
                    rows.into_iter()
                        .map(|o| (Arc::new(o.txn), o.stored, o.position)),
                );
            }
            // Stay overflowing: the lane tries again on its next round.
            Err(e) => tracing::error!(driver, "cannot read the backlog from the spool: {e}"),
        }
        out
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::sqlite::SqliteSpool;

    fn txn(id: &str) -> Transaction {
        Transaction::from_json(&format!(
            r#"{{"id":"{id}","user":"u@x","events":[{{"name":"MailboxCreate","mailbox":"A"}}]}}"#
        ))
        .unwrap()
    }

    /// Stores a transaction owed to driver 1: it and its position.
    fn store(spool: &SqliteSpool, id: &str) -> (Arc<Transaction>, i64) {
        let t = txn(id);
        let p = spool.append(std::slice::from_ref(&t), &[1]).unwrap()[0].unwrap();
        (Arc::new(t), p)
    }

    fn ids(v: &[(Arc<Transaction>, SystemTime, i64)]) -> Vec<&str> {
        v.iter().map(|(t, _, _)| t.id.as_str()).collect()
    }

    /// Offers in any order: nothing is read twice, nothing committed earlier is skipped,
    /// a late offer of something already read is not queued again.
    #[test]
    fn late_offers_are_neither_lost_nor_doubled() {
        let dir = tempfile::tempdir().unwrap();
        let spool = SqliteSpool::open(&dir.path().join("s.db"), 1 << 30).unwrap();
        let (tx, mut rx) = mpsc::channel(1);
        let o = Overflow::default();
        let stored = |id: &str| store(&spool, id);
        let a = stored("a"); // committed first, offered last
        let b = stored("b");
        let c = stored("c");
        // b fits the queue; c does not: the lane reads from c on.
        o.offer(&tx, &[b.clone(), c.clone()], 1);
        assert!(o.active());
        assert_eq!(rx.try_recv().unwrap().txn.id, "b");
        // a arrives late, while overflowing: remembered, read before the cursor's.
        o.offer(&tx, std::slice::from_ref(&a), 1);
        let got = o.take(&*spool, 1, 10, || true);
        assert_eq!(ids(&got), ["a", "c"]);
        // Nothing left: the overflow ends.
        assert!(o.take(&*spool, 1, 10, || true).is_empty());
        assert!(!o.active());
        // c offered again late (e.g. a slow request): already read, not queued.
        o.offer(&tx, std::slice::from_ref(&c), 1);
        assert!(rx.try_recv().is_err());
        // A new one is queued again.
        let d = stored("d");
        o.offer(&tx, &[d], 1);
        assert_eq!(rx.try_recv().unwrap().txn.id, "d");
    }

    /// A batch committed earlier but offered after a later one took the last free slot:
    /// the reading starts above what is queued, the earlier one is read on its own —
    /// nothing is read twice.
    #[test]
    fn an_overflow_never_starts_below_what_is_queued() {
        let dir = tempfile::tempdir().unwrap();
        let spool = SqliteSpool::open(&dir.path().join("s.db"), 1 << 30).unwrap();
        let (tx, mut rx) = mpsc::channel(1);
        let o = Overflow::default();
        let stored = |id: &str| store(&spool, id);
        let a = stored("a");
        let b = stored("b");
        let c = stored("c");
        o.offer(&tx, std::slice::from_ref(&b), 1); // takes the only slot
        o.offer(&tx, std::slice::from_ref(&a), 1); // full: a is read from the spool
        assert!(o.active());
        assert_eq!(rx.try_recv().unwrap().txn.id, "b");
        o.offer(&tx, std::slice::from_ref(&c), 1);
        // b is still owed (not delivered yet) but never read again.
        assert_eq!(ids(&o.take(&*spool, 1, 10, || true)), ["a", "c"]);
        assert!(o.take(&*spool, 1, 10, || true).is_empty());
    }

    /// The lane reads nothing while its queue still holds transactions.
    #[test]
    fn nothing_is_read_past_a_non_empty_queue() {
        let dir = tempfile::tempdir().unwrap();
        let spool = SqliteSpool::open(&dir.path().join("s.db"), 1 << 30).unwrap();
        let o = Overflow::default();
        spool.append(&[txn("x")], &[1]).unwrap();
        o.read_all_owed();
        assert!(o.take(&*spool, 1, 10, || false).is_empty());
        assert!(o.active());
        assert_eq!(ids(&o.take(&*spool, 1, 10, || true)), ["x"]);
    }
}
