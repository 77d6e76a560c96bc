//! The pushes this driver already sent for a transaction, so that its retry does not
//! send them again. Dovecot sends each message's PUT once and never retries a
//! transaction; mailpush retries a transaction whose push failed, and one transaction
//! can carry several new messages: when the second PUT fails, the retry sends only it.
//!
//! Kept for [`crate::FRESH_FOR`] (after that the transaction is not retried: it
//! expires), and at most [`MAX_REMEMBERED`] pushes (the oldest are forgotten first: a
//! forgotten one is sent again at worst, as at-least-once allows).

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Most pushes remembered at once.
pub const MAX_REMEMBERED: usize = 100_000;

/// A push: the transaction's id, the message's UIDVALIDITY and UID.
type Push = (String, u32, u32);

/// The pushes sent recently, oldest first.
pub struct SentRecently {
    keep: Duration,
    inner: Mutex<Remembered>,
}

/// The pushes, and when each was sent, oldest first.
#[derive(Default)]
struct Remembered {
    pushes: HashSet<Push>,
    order: VecDeque<(Instant, Push)>,
}

impl SentRecently {
    pub fn new(keep: Duration) -> Self {
        SentRecently {
            keep,
            inner: Mutex::default(),
        }
    }

    /// Whether this push was sent (and is still remembered).
    pub fn contains(&self, txn: &str, uid_validity: u32, uid: u32) -> bool {
        let inner = self.inner.lock();
        inner.pushes.contains(&(txn.to_string(), uid_validity, uid))
    }

    /// Remembers a push sent now; forgets what is older than the time kept, or beyond
    /// [`MAX_REMEMBERED`].
    pub fn insert(&self, txn: &str, uid_validity: u32, uid: u32) {
        self.insert_at(txn, uid_validity, uid, Instant::now());
    }

    fn insert_at(&self, txn: &str, uid_validity: u32, uid: u32, now: Instant) {
        let mut inner = self.inner.lock();
        let Remembered { pushes: set, order } = &mut *inner;
        while let Some((at, _)) = order.front() {
            if now.duration_since(*at) < self.keep && order.len() < MAX_REMEMBERED {
                break;
            }
            if let Some((_, push)) = order.pop_front() {
                set.remove(&push);
            }
        }
        let push = (txn.to_string(), uid_validity, uid);
        if set.insert(push.clone()) {
            order.push_back((now, push));
        }
    }

    /// How many pushes are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().pushes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_for_the_time_kept_and_bounded() {
        let sent = SentRecently::new(Duration::from_secs(120));
        let t0 = Instant::now();
        sent.insert_at("t1", 1, 7, t0);
        assert!(sent.contains("t1", 1, 7));
        assert!(!sent.contains("t1", 1, 8) && !sent.contains("t2", 1, 7));
        // Still within the time kept; then past it, forgotten at the next insert.
        sent.insert_at("t2", 1, 1, t0 + Duration::from_secs(119));
        assert!(sent.contains("t1", 1, 7));
        sent.insert_at("t3", 1, 1, t0 + Duration::from_secs(120));
        assert!(!sent.contains("t1", 1, 7) && sent.contains("t2", 1, 1));
        // Bounded: the oldest go first.
        for i in 0..MAX_REMEMBERED as u32 + 10 {
            sent.insert_at("many", 1, i, t0 + Duration::from_secs(121));
        }
        assert!(sent.len() <= MAX_REMEMBERED);
        assert!(
            !sent.contains("many", 1, 0) && sent.contains("many", 1, MAX_REMEMBERED as u32 + 9)
        );
    }
}
