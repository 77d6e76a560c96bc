//! What a lane holds: per user, the transactions not yet finished, oldest first, and a
//! round-robin ring of the users whose oldest transaction may start. Only the oldest
//! transaction of a user is ever eligible, so one user's transactions reach the driver
//! in arrival order; a user with a delivery in flight is out of the ring until it ends.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mailpush_core::Transaction;
use tokio::time::Instant;

use crate::spool::Attempt;

/// One transaction the lane holds.
pub struct Item {
    pub txn: Arc<Transaction>,
    pub attempts: Vec<Attempt>,
    /// Not to be started before this (a retry or a deferral).
    pub not_before: Option<Instant>,
    pub arrived: Instant,
    /// When it first failed ([`Held::retrying`]; for one a reload handed on, its first
    /// attempt's time): what waits behind it waits from then at the earliest.
    pub first_failed: Option<Instant>,
}

/// Whose share of the room a transaction counts against ([`Held::counting_by`]).
pub type KeyOf = Box<dyn Fn(&Transaction) -> String + Send + Sync>;

/// The transactions a lane holds, per user.
#[derive(Default)]
pub struct Held {
    pub users: HashMap<String, VecDeque<Item>>,
    /// Users with items, in round-robin order.
    pub ring: VecDeque<String>,
    /// Users with a delivery in flight (out of the ring until it ends).
    in_flight: HashSet<String>,
    pub count: usize,
    /// How old a transaction may get (`retry_max_age`); `None`: no limit.
    max_age: Option<Duration>,
    /// No transaction held is too old before this.
    next_expiry: Option<Instant>,
    /// Users whose oldest transaction failed and waits for a retry (it may be skipped:
    /// [`Held::skip_ahead`]).
    retrying: HashSet<String>,
    /// How many transactions are held per key of [`Held::counting_by`] (none without).
    per_key: HashMap<String, usize>,
    key_of: Option<KeyOf>,
}

impl Held {
    /// Held transactions expire once older than `max_age` ([`Held::expire`]).
    pub fn with_max_age(max_age: Option<Duration>) -> Self {
        Held {
            max_age,
            ..Held::default()
        }
    }

    /// Counts the transactions held per `key_of` (a user, or a tenant), for
    /// [`Held::held_for`].
    pub fn counting_by(mut self, key_of: KeyOf) -> Self {
        self.key_of = Some(key_of);
        self
    }

    /// How many transactions of `key` are held: per [`Held::counting_by`]'s key, or
    /// else per user.
    pub fn held_for(&self, key: &str) -> usize {
        match self.key_of {
            Some(_) => self.per_key.get(key).copied().unwrap_or(0),
            None => self.users.get(key).map_or(0, |q| q.len()),
        }
    }

    fn count_in(&mut self, txn: &Transaction) {
        if let Some(key_of) = &self.key_of {
            *self.per_key.entry(key_of(txn)).or_default() += 1;
        }
    }

    fn count_out(&mut self, txn: &Transaction) {
        if let Some(key_of) = &self.key_of {
            let key = key_of(txn);
            if let Some(n) = self.per_key.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    self.per_key.remove(&key);
                }
            }
        }
    }

    /// Adds a transaction (arriving now) behind its user's others.
    pub fn push(&mut self, txn: Arc<Transaction>) {
        self.push_at(txn, Instant::now());
    }

    /// Adds a transaction that arrived `at` (queued then) behind its user's others.
    pub fn push_arrived(&mut self, txn: Arc<Transaction>, at: Instant) {
        self.push_at(txn, at);
    }

    /// Adds a transaction a replaced lane held (a reload), with its attempts and its
    /// arrival there: the retry schedule and the age go on.
    pub fn push_carried(
        &mut self,
        txn: Arc<Transaction>,
        attempts: Vec<Attempt>,
        arrived: Instant,
    ) {
        let user = txn.user.clone();
        self.push_at(txn, arrived);
        if let Some(item) = self.users.get_mut(&user).and_then(|q| q.back_mut()) {
            item.first_failed = attempts.first().map(|a| {
                super::queued::arrived_at(SystemTime::UNIX_EPOCH + Duration::from_secs(a.at))
            });
            item.attempts = attempts;
        }
    }

    /// Adds a transaction the spool stored at `stored` behind its user's others: its age
    /// counts from then.
    pub fn push_stored(&mut self, txn: Arc<Transaction>, stored: SystemTime) {
        self.push_at(txn, super::queued::arrived_at(stored));
    }

    fn push_at(&mut self, txn: Arc<Transaction>, arrived: Instant) {
        if let Some(max) = self.max_age {
            let at = arrived + max;
            self.next_expiry = Some(self.next_expiry.map_or(at, |e| e.min(at)));
        }
        self.count_in(&txn);
        let q = self.users.entry(txn.user.clone()).or_default();
        if q.is_empty() && !self.in_flight.contains(&txn.user) {
            self.ring.push_back(txn.user.clone());
        }
        q.push_back(Item {
            txn,
            attempts: Vec::new(),
            not_before: None,
            arrived,
            first_failed: None,
        });
        self.count += 1;
    }

    /// When the next held transaction becomes too old (`None`: none will).
    pub fn next_expiry(&self) -> Option<Instant> {
        self.next_expiry
    }

    /// Removes and returns every transaction older than the max age that is not being
    /// delivered — whatever holds it: a retry's wait, an open circuit, its user's earlier
    /// transaction.
    pub fn expire(&mut self, now: Instant) -> Vec<Item> {
        let (Some(max), Some(next)) = (self.max_age, self.next_expiry) else {
            return Vec::new();
        };
        if now < next {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut next_expiry: Option<Instant> = None;
        for (user, q) in self.users.iter_mut() {
            // The first of a user in flight is being delivered: not now.
            let skip = usize::from(self.in_flight.contains(user));
            let mut kept = VecDeque::with_capacity(q.len());
            for (i, item) in q.drain(..).enumerate() {
                if i >= skip && item.arrived + max <= now {
                    out.push(item);
                } else {
                    // (Not the one being delivered: its time may be past already, and
                    // waking for it would spin the lane until its delivery ends. Its
                    // delivery ending puts it back: `requeue`.)
                    if i >= skip {
                        let at = item.arrived + max;
                        next_expiry = Some(next_expiry.map_or(at, |e| e.min(at)));
                    }
                    kept.push_back(item);
                }
            }
            *q = kept;
        }
        for item in &out {
            self.count_out(&item.txn);
        }
        // (Also: a user whose retrying oldest expired is not waiting for a retry any
        // more; its next transaction was never tried and must not be skipped.)
        self.forget_dropped(out.len());
        self.next_expiry = next_expiry;
        out
    }

    /// Takes the next user whose oldest transaction is due and `allowed` out of the ring
    /// (it goes back in with [`Held::requeue`] once that delivery ended), with that
    /// transaction. Users whose transaction is not allowed now (their group is at its
    /// share) keep their place.
    pub fn next_due(
        &mut self,
        now: Instant,
        allowed: impl Fn(&Transaction) -> bool,
    ) -> Option<(String, Arc<Transaction>)> {
        let pos = self.ring.iter().position(|u| {
            self.users
                .get(u)
                .and_then(|q| q.front())
                .is_some_and(|i| i.not_before.is_none_or(|t| t <= now) && allowed(&i.txn))
        })?;
        let user = self.ring.remove(pos)?;
        let txn = self.users.get(&user)?.front()?.txn.clone();
        self.in_flight.insert(user.clone());
        Some((user, txn))
    }

    /// When the first user not being delivered to becomes due, after `now`. One whose
    /// retry is due already but was not started (its tenant is at its share) is no
    /// time to wake at: a delivery ending frees the share, and waking at a time that
    /// has passed would spin the lane until then.
    pub fn earliest(&self, now: Instant) -> Option<Instant> {
        self.ring
            .iter()
            .filter_map(|u| self.users.get(u))
            .filter_map(|q| q.front().and_then(|i| i.not_before))
            .filter(|t| *t > now)
            .min()
    }

    /// The oldest item of `user` (the one being delivered).
    pub fn front_mut(&mut self, user: &str) -> Option<&mut Item> {
        self.users.get_mut(user).and_then(|q| q.front_mut())
    }

    /// Removes the oldest item of `user` (its delivery finished for good).
    pub fn pop(&mut self, user: &str) -> Option<Item> {
        let item = self.users.get_mut(user)?.pop_front()?;
        self.count -= 1;
        self.retrying.remove(user);
        self.count_out(&item.txn);
        Some(item)
    }

    /// Notes that the oldest transaction of `user` failed and waits for a retry.
    pub fn retrying(&mut self, user: &str) {
        self.retrying.insert(user.to_string());
        if let Some(oldest) = self.users.get_mut(user).and_then(|q| q.front_mut()) {
            oldest.first_failed.get_or_insert_with(Instant::now);
        }
    }

    /// When `q`'s second transaction has waited `hold_max` behind its oldest, which
    /// waits for a retry: from its arrival, or from the oldest's first failure where it
    /// arrived before that (a backlog read at start-up, hand-offs written during an
    /// outage, whose arrival lies in the past).
    fn skip_at(q: &VecDeque<Item>, hold_max: Duration) -> Option<Instant> {
        let next = q.get(1)?;
        let waits_from = match q.front().and_then(|f| f.first_failed) {
            Some(failed) => next.arrived.max(failed),
            None => next.arrived,
        };
        Some(waits_from + hold_max)
    }

    /// Removes, from each user whose oldest transaction waits for a retry while a later
    /// one has waited `hold_max` or more, that oldest transaction (the later one is then
    /// due). A transaction being delivered is never skipped.
    pub fn skip_ahead(&mut self, now: Instant, hold_max: Duration) -> Vec<Item> {
        let mut out = Vec::new();
        let users: Vec<String> = self.retrying.iter().cloned().collect();
        for user in users {
            if self.in_flight.contains(&user) {
                continue;
            }
            let Some(q) = self.users.get_mut(&user) else {
                self.retrying.remove(&user);
                continue;
            };
            if Self::skip_at(q, hold_max).is_some_and(|at| at <= now) {
                if let Some(item) = q.pop_front() {
                    out.push(item);
                    self.count -= 1;
                }
                self.retrying.remove(&user);
            }
        }
        for item in &out {
            self.count_out(&item.txn);
        }
        out
    }

    /// When [`Held::skip_ahead`] next has something to do (`None`: nothing waits behind
    /// a retry).
    pub fn next_skip(&self, hold_max: Duration) -> Option<Instant> {
        self.retrying
            .iter()
            .filter(|u| !self.in_flight.contains(*u))
            .filter_map(|u| Self::skip_at(self.users.get(u)?, hold_max))
            .min()
    }

    /// Puts `user` back in the ring if more of theirs wait, else forgets them.
    pub fn requeue(&mut self, user: String) {
        self.in_flight.remove(&user);
        // Its oldest, no longer being delivered, may expire again ([`Held::expire`]).
        if let (Some(max), Some(front)) =
            (self.max_age, self.users.get(&user).and_then(|q| q.front()))
        {
            let at = front.arrived + max;
            self.next_expiry = Some(self.next_expiry.map_or(at, |e| e.min(at)));
        }
        if self.users.get(&user).is_some_and(|q| !q.is_empty()) {
            self.ring.push_back(user);
        } else {
            self.users.remove(&user);
        }
    }

    /// Removes every transaction `drop` says, except those being delivered; returns
    /// them.
    pub fn discard(&mut self, drop: impl Fn(&Transaction) -> bool) -> Vec<Arc<Transaction>> {
        let mut gone = Vec::new();
        for (user, q) in self.users.iter_mut() {
            drop_from(q, self.in_flight.contains(user), &drop, &mut gone);
        }
        self.forget_discarded(&gone);
        gone
    }

    /// [`Held::discard`] for one user's transactions only (the cost of one user).
    pub fn discard_user(
        &mut self,
        user: &str,
        drop: impl Fn(&Transaction) -> bool,
    ) -> Vec<Arc<Transaction>> {
        let mut gone = Vec::new();
        if let Some(q) = self.users.get_mut(user) {
            drop_from(q, self.in_flight.contains(user), &drop, &mut gone);
        }
        self.forget_discarded(&gone);
        gone
    }

    /// Bookkeeping after the transactions `gone` were dropped from the queues.
    fn forget_discarded(&mut self, gone: &[Arc<Transaction>]) {
        for t in gone {
            self.count_out(t);
        }
        self.forget_dropped(gone.len());
    }

    /// Bookkeeping after `n` transactions were dropped from the queues (and uncounted
    /// per key).
    fn forget_dropped(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.count -= n;
        self.users
            .retain(|u, q| !q.is_empty() || self.in_flight.contains(u));
        let users = &self.users;
        self.ring
            .retain(|u| users.get(u).is_some_and(|q| !q.is_empty()));
        // A user whose oldest was dropped is not waiting for a retry any more.
        self.retrying.retain(|u| {
            users
                .get(u)
                .and_then(|q| q.front())
                .is_some_and(|f| !f.attempts.is_empty())
        });
    }

    /// Everything held, oldest first per user.
    pub fn into_items(self) -> impl Iterator<Item = Item> {
        self.users.into_values().flatten()
    }
}

/// Removes from one user's queue what `drop` says, except its oldest while it is being
/// delivered (`in_flight`), into `gone`.
fn drop_from(
    q: &mut VecDeque<Item>,
    in_flight: bool,
    drop: &impl Fn(&Transaction) -> bool,
    gone: &mut Vec<Arc<Transaction>>,
) {
    let skip = usize::from(in_flight);
    let mut i = 0;
    q.retain(|item| {
        let keep = i < skip || !drop(&item.txn);
        i += 1;
        if !keep {
            gone.push(item.txn.clone());
        }
        keep
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn txn(user: &str, id: &str) -> Arc<Transaction> {
        Arc::new(
            Transaction::from_json(&format!(
                r#"{{"id":"{id}","user":"{user}","events":[{{"name":"MailboxCreate","mailbox":"A"}}]}}"#
            ))
            .unwrap(),
        )
    }

    /// Discarding keeps what is being delivered, drops the rest that matches, and
    /// leaves the count and the turn order right (for every user, or for one).
    #[test]
    fn discard_keeps_the_delivery_in_flight() {
        let mut h = Held::default();
        for (u, id) in [
            ("a", "a1"),
            ("a", "a2"),
            ("b", "b1"),
            ("b", "b2"),
            ("c", "c1"),
        ] {
            h.push(txn(u, id));
        }
        let now = Instant::now();
        assert_eq!(
            h.next_due(now, |_| true).map(|(_, t)| t.id.clone()),
            Some("a1".into())
        );
        let gone: Vec<String> = h
            .discard_user("a", |_| true)
            .iter()
            .map(|t| t.id.clone())
            .collect();
        assert_eq!(gone, ["a2"], "a1 is in flight");
        assert_eq!(h.count, 4);
        assert!(h.discard_user("nobody", |_| true).is_empty());
        let gone: Vec<String> = h
            .discard(|t| t.user == "b")
            .iter()
            .map(|t| t.id.clone())
            .collect();
        assert_eq!(gone, ["b1", "b2"]);
        assert_eq!(h.count, 2);
        let next: Vec<String> =
            std::iter::from_fn(|| h.next_due(now, |_| true).map(|(_, t)| t.id.clone())).collect();
        assert_eq!(next, ["c1"], "only c is left to start (a1 is in flight)");
    }

    /// Users take turns; a user's next transaction becomes eligible only once the one
    /// before it is finished.
    #[test]
    fn round_robin_and_one_at_a_time_per_user() {
        let mut h = Held::default();
        for (u, id) in [
            ("a", "a1"),
            ("a", "a2"),
            ("b", "b1"),
            ("c", "c1"),
            ("b", "b2"),
        ] {
            h.push(txn(u, id));
        }
        let now = Instant::now();
        let started: Vec<String> =
            std::iter::from_fn(|| h.next_due(now, |_| true).map(|(_, t)| t.id.clone())).collect();
        assert_eq!(started, ["a1", "b1", "c1"], "one per user, in ring order");
        // a1 finishes: a2 becomes eligible, behind the users still waiting.
        h.pop("a");
        h.requeue("a".into());
        assert_eq!(
            h.next_due(now, |_| true).map(|(_, t)| t.id.clone()),
            Some("a2".into())
        );
        assert_eq!(h.count, 4);
    }

    /// Old transactions expire whatever holds them — a retry's wait, or their user's
    /// earlier transaction — except the one being delivered.
    #[test]
    fn old_transactions_expire_except_the_one_in_flight() {
        let mut h = Held::with_max_age(Some(Duration::from_secs(10)));
        h.push(txn("a", "a1"));
        h.push(txn("a", "a2"));
        h.push(txn("b", "b1"));
        h.push_stored(txn("c", "c1"), SystemTime::now() - Duration::from_secs(9));
        // After the pushes: every arrival is at or before t0.
        let t0 = Instant::now();
        assert!(h.expire(t0).is_empty(), "nothing old yet");
        // a1 is out for delivery; a2 waits behind it.
        assert_eq!(h.next_due(t0, |_| true).map(|(u, _)| u), Some("a".into()));
        let later = t0 + Duration::from_secs(10);
        let mut gone: Vec<String> = h.expire(later).iter().map(|i| i.txn.id.clone()).collect();
        gone.sort();
        assert_eq!(gone, ["a2", "b1", "c1"]);
        assert_eq!(h.count, 1);
        assert_eq!(h.next_due(later, |_| true), None, "a1 is still out");
        h.pop("a");
        h.requeue("a".into());
        assert_eq!(h.count, 0);
    }

    /// Transactions that arrived long ago (a backlog read at start-up, hand-offs of an
    /// outage) wait `hold_max` behind a failure from the failure on, not from their
    /// arrival: the first failure of the oldest is retried, not skipped at once.
    #[test]
    fn hold_max_counts_from_the_failure_for_a_backlog() {
        let mut h = Held::default();
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        h.push_stored(txn("a", "a1"), hour_ago);
        h.push_stored(txn("a", "a2"), hour_ago);
        let hold = Duration::from_secs(300);
        let (_, a1) = h.next_due(Instant::now(), |_| true).unwrap();
        assert_eq!(a1.id, "a1");
        h.front_mut("a").unwrap().attempts.push(Attempt {
            at: crate::spool::now(),
            error: "timeout".into(),
        });
        let failed = Instant::now();
        h.retrying("a");
        h.requeue("a".into());
        assert!(h.skip_ahead(failed, hold).is_empty(), "not at once");
        let at = h.next_skip(hold).unwrap();
        assert!(at >= failed + hold, "{:?}", at - failed);
        let skipped: Vec<String> = h
            .skip_ahead(at, hold)
            .into_iter()
            .map(|i| i.txn.id.clone())
            .collect();
        assert_eq!(skipped, ["a1"]);
    }

    /// After a reload the first failure's time comes from the attempts handed on: the
    /// later transaction's wait goes on from then, not from the new lane's first note.
    #[test]
    fn hold_max_goes_on_across_a_reload() {
        let mut h = Held::default();
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        let attempts = vec![Attempt {
            at: crate::spool::now() - 100,
            error: "timeout".into(),
        }];
        h.push_carried(
            txn("a", "a1"),
            attempts,
            super::super::queued::arrived_at(hour_ago),
        );
        h.push_stored(txn("a", "a2"), hour_ago);
        let now = Instant::now();
        h.retrying("a");
        let hold = Duration::from_secs(300);
        let at = h.next_skip(hold).unwrap();
        // 300 s from the failure 100 s ago (whole seconds): about 200 s from now.
        assert!(at > now + Duration::from_secs(195), "{:?}", at - now);
        assert!(at < now + Duration::from_secs(205), "{:?}", at - now);
        assert!(h.skip_ahead(now, hold).is_empty());
        assert_eq!(h.skip_ahead(at, hold).len(), 1);
    }

    /// A transaction being delivered while it grows too old is not a time to wake at:
    /// its expiry, already past, made the lane wake at once on every turn (a busy loop)
    /// until the delivery ended. Once it ends (a retry), the expiry counts again.
    #[test]
    fn a_delivery_in_flight_is_no_time_to_wake_at() {
        let max = Duration::from_secs(60);
        let mut h = Held::with_max_age(Some(max));
        let t0 = Instant::now();
        h.push_arrived(txn("a", "a1"), t0);
        assert_eq!(h.next_due(t0, |_| true).map(|(u, _)| u), Some("a".into()));
        // Past its age while delivered: not expired, and no wake-up at a past time.
        assert!(h.expire(t0 + max * 2).is_empty());
        assert_eq!(h.next_expiry(), None);
        // Delivered with a retryable failure: it may expire now.
        h.requeue("a".into());
        assert_eq!(h.next_expiry(), Some(t0 + max));
        let expired: Vec<String> = h
            .expire(t0 + max * 2)
            .into_iter()
            .map(|i| i.txn.id.clone())
            .collect();
        assert_eq!(expired, ["a1"]);
    }

    /// A user's oldest transaction waiting for a retry is skipped once a later one has
    /// waited `hold_max`; one being delivered never is; other users are untouched.
    #[test]
    fn a_retrying_transaction_is_skipped_after_hold_max() {
        let mut h = Held::default();
        h.push(txn("a", "a1"));
        h.push(txn("b", "b1"));
        let t0 = Instant::now();
        let hold = Duration::from_secs(5);
        // a1 fails and waits for a retry; nothing behind it yet.
        assert_eq!(h.next_due(t0, |_| true).map(|(u, _)| u), Some("a".into()));
        let a1 = h.front_mut("a").unwrap();
        a1.attempts.push(Attempt {
            at: 0,
            error: "timeout".into(),
        });
        a1.not_before = Some(t0 + Duration::from_secs(60));
        h.retrying("a");
        h.requeue("a".into());
        assert!(
            h.skip_ahead(t0 + hold, hold).is_empty(),
            "nothing waits behind a1"
        );
        assert_eq!(h.next_skip(hold), None);
        h.push(txn("a", "a2"));
        let t1 = Instant::now();
        assert_eq!(h.next_skip(hold), Some(h.users["a"][1].arrived + hold));
        assert!(
            h.skip_ahead(t1, hold).is_empty(),
            "a2 has not waited long enough"
        );
        let skipped: Vec<String> = h
            .skip_ahead(t1 + hold, hold)
            .into_iter()
            .map(|i| i.txn.id.clone())
            .collect();
        assert_eq!(skipped, ["a1"]);
        assert_eq!(h.count, 2);
        // a2 is due at once; b1 untouched.
        let mut due: Vec<String> =
            std::iter::from_fn(|| h.next_due(t1 + hold, |_| true).map(|(_, t)| t.id.clone()))
                .collect();
        due.sort();
        assert_eq!(due, ["a2", "b1"]);
        assert_eq!(h.next_skip(hold), None);
    }

    /// A retrying transaction that expires takes its retry with it: the user's next
    /// transaction, never tried, is not skipped by `hold_max` as if it had failed.
    #[test]
    fn an_expired_retry_leaves_nothing_to_skip() {
        let mut h = Held::with_max_age(Some(Duration::from_secs(10)));
        h.push(txn("a", "a1"));
        let t0 = Instant::now();
        let hold = Duration::from_secs(3);
        assert_eq!(h.next_due(t0, |_| true).map(|(u, _)| u), Some("a".into()));
        let a1 = h.front_mut("a").unwrap();
        a1.attempts.push(Attempt {
            at: 0,
            error: "503".into(),
        });
        a1.not_before = Some(t0 + Duration::from_secs(3600));
        h.retrying("a");
        h.requeue("a".into());
        let expired: Vec<String> = h
            .expire(t0 + Duration::from_secs(10))
            .iter()
            .map(|i| i.txn.id.clone())
            .collect();
        assert_eq!(expired, ["a1"]);
        // a2 arrives; a later transaction waits hold_max behind it.
        h.push(txn("a", "a2"));
        h.push(txn("a", "a3"));
        let later = Instant::now() + hold;
        assert_eq!(h.next_skip(hold), None, "a2 waits for no retry");
        assert!(h.skip_ahead(later, hold).is_empty(), "a2 was never tried");
        assert_eq!(
            h.next_due(later, |_| true).map(|(_, t)| t.id.clone()),
            Some("a2".into())
        );
    }

    /// The count per key follows every way a transaction leaves: delivered (`pop`),
    /// skipped, expired, discarded for one user or for all.
    #[test]
    fn the_count_per_key_follows_every_way_out() {
        let domain = |t: &Transaction| t.user.split('@').nth(1).unwrap_or("").to_string();
        let mut h = Held::with_max_age(Some(Duration::from_secs(10))).counting_by(Box::new(domain));
        for (u, id) in [
            ("a@x", "a1"),
            ("a@x", "a2"),
            ("a@x", "a3"),
            ("b@x", "b1"),
            ("c@y", "c1"),
            ("c@y", "c2"),
        ] {
            h.push(txn(u, id));
        }
        assert_eq!(
            (h.held_for("x"), h.held_for("y"), h.held_for("z")),
            (4, 2, 0)
        );
        let t0 = Instant::now();
        // a1 is delivered; a2 fails and waits for a retry; a3 waited hold_max.
        assert_eq!(
            h.next_due(t0, |t| t.user == "a@x").map(|(u, _)| u),
            Some("a@x".into())
        );
        h.pop("a@x");
        h.requeue("a@x".into());
        assert_eq!(h.held_for("x"), 3);
        assert_eq!(
            h.next_due(t0, |t| t.user == "a@x").map(|(u, _)| u),
            Some("a@x".into())
        );
        let a2 = h.front_mut("a@x").unwrap();
        a2.attempts.push(Attempt {
            at: 0,
            error: "503".into(),
        });
        a2.not_before = Some(t0 + Duration::from_secs(60));
        h.retrying("a@x");
        h.requeue("a@x".into());
        let hold = Duration::from_secs(1);
        assert_eq!(h.skip_ahead(Instant::now() + hold, hold).len(), 1);
        assert_eq!(h.held_for("x"), 2, "a3 and b1");
        assert_eq!(h.discard_user("b@x", |_| true).len(), 1);
        assert_eq!(h.held_for("x"), 1);
        assert_eq!(h.discard(|t| t.id == "c2").len(), 1);
        assert_eq!(h.held_for("y"), 1);
        assert_eq!(h.expire(Instant::now() + Duration::from_secs(10)).len(), 2);
        assert_eq!((h.held_for("x"), h.held_for("y"), h.count), (0, 0, 0));
        assert!(h.per_key.is_empty(), "no key is kept at zero");
    }

    /// Users whose transaction is not allowed now keep their place in the ring.
    #[test]
    fn a_group_at_its_share_waits_its_turn() {
        let mut h = Held::default();
        h.push(txn("a@x", "a1"));
        h.push(txn("b@y", "b1"));
        let now = Instant::now();
        let not_x = |t: &Transaction| !t.user.ends_with("@x");
        assert_eq!(h.next_due(now, not_x).map(|(u, _)| u), Some("b@y".into()));
        assert_eq!(h.next_due(now, not_x), None);
        assert_eq!(
            h.next_due(now, |_| true).map(|(u, _)| u),
            Some("a@x".into())
        );
    }

    /// A user whose oldest transaction waits for a retry holds back their later ones,
    /// not anybody else's.
    #[test]
    fn a_waiting_retry_holds_back_only_its_user() {
        let mut h = Held::default();
        h.push(txn("a", "a1"));
        h.push(txn("a", "a2"));
        h.push(txn("b", "b1"));
        let now = Instant::now();
        let later = now + Duration::from_secs(5);
        h.front_mut("a").unwrap().not_before = Some(later);
        assert_eq!(
            h.next_due(now, |_| true).map(|(u, _)| u),
            Some("b".to_string())
        );
        assert_eq!(h.next_due(now, |_| true), None, "a2 waits behind a1");
        assert_eq!(h.earliest(now), Some(later));
        assert_eq!(
            h.earliest(later),
            None,
            "due at `later`: no later time to wake at"
        );
        assert_eq!(
            h.next_due(later, |_| false),
            None,
            "due, but its tenant is at its share"
        );
        assert_eq!(
            h.next_due(later, |_| true).map(|(_, t)| t.id.clone()),
            Some("a1".into())
        );
    }
}
