//! What a lane holds: per user, the transactions not yet finished, oldest first, and a
//! round-robin ring of the users whose oldest transaction may start. Only the oldest
//! transaction of a user is ever eligible, so one user's transactions reach the driver
//! in arrival order; a user with a delivery in flight is out of the ring until it ends.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

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
}

/// The transactions a lane holds, per user.
#[derive(Default)]
pub struct Held {
    pub users: HashMap<String, VecDeque<Item>>,
    /// Users with items, in round-robin order.
    pub ring: VecDeque<String>,
    pub count: usize,
}

impl Held {
    /// Adds a transaction behind its user's others.
    pub fn push(&mut self, txn: Arc<Transaction>) {
        let q = self.users.entry(txn.user.clone()).or_default();
        if q.is_empty() {
            self.ring.push_back(txn.user.clone());
        }
        q.push_back(Item {
            txn,
            attempts: Vec::new(),
            not_before: None,
            arrived: Instant::now(),
        });
        self.count += 1;
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
        Some((user, txn))
    }

    /// When the first user not being delivered to becomes due.
    pub fn earliest(&self) -> Option<Instant> {
        self.ring
            .iter()
            .filter_map(|u| self.users.get(u))
            .filter_map(|q| q.front().and_then(|i| i.not_before))
            .min()
    }

    /// The oldest item of `user` (the one being delivered).
    pub fn front_mut(&mut self, user: &str) -> Option<&mut Item> {
        self.users.get_mut(user).and_then(|q| q.front_mut())
    }

    /// Removes the oldest item of `user` (its delivery finished for good).
    pub fn pop(&mut self, user: &str) -> Option<Item> {
        let item = self.users.get_mut(user)?.pop_front();
        if item.is_some() {
            self.count -= 1;
        }
        item
    }

    /// Puts `user` back in the ring if more of theirs wait, else forgets them.
    pub fn requeue(&mut self, user: String) {
        if self.users.get(&user).is_some_and(|q| !q.is_empty()) {
            self.ring.push_back(user);
        } else {
            self.users.remove(&user);
        }
    }

    /// Everything held, oldest first per user.
    pub fn into_transactions(self) -> impl Iterator<Item = Arc<Transaction>> {
        self.users
            .into_values()
            .flat_map(|q| q.into_iter().map(|i| i.txn))
    }
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
        assert_eq!(h.earliest(), Some(later));
        assert_eq!(
            h.next_due(later, |_| true).map(|(_, t)| t.id.clone()),
            Some("a1".into())
        );
    }
}
