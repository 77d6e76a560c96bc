//! One driver's lane: takes transactions from the driver's bounded queue and delivers
//! them, up to the driver's concurrency at once (never two of one user).
//!
//! Ordering: per user, transactions are delivered in arrival order; only the oldest
//! transaction of each user is eligible, so a transaction waiting for a retry holds back
//! that user's later ones for this driver — other users flow on (round robin).
//!
//! With a spool (at-least-once): a retryable failure is retried on the driver's schedule
//! (honouring `Retry-After` within bounds); non-retryable failures and exhausted retries
//! become dead letters; success and dead letters complete the (transaction, driver) pair
//! in the spool; an open circuit breaker makes the lane wait. Without a spool
//! (`delivery = memory`) a failure is final, like Dovecot.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use mailpush_core::{Driver, Transaction};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::delivery::{CircuitBreaker, CircuitState, DeliveryPolicy};
use crate::dispatch::{deliver, Delivery, DeliveryObserver, DriverStats, Outcome};
use crate::overflow::Overflow;
use crate::spool::{now, Attempt, Spool};

/// What a lane needs besides its queue.
pub struct LaneContext {
    pub number: u32,
    pub name: String,
    pub driver: Arc<dyn Driver>,
    pub stats: Arc<DriverStats>,
    pub observer: Option<Arc<dyn DeliveryObserver>>,
    pub spool: Option<Arc<dyn Spool>>,
    pub policy: DeliveryPolicy,
    /// Most transactions held (queued in the lane plus waiting for retries).
    pub capacity: usize,
    /// Where the lane reads its backlog when its queue overflowed (with a spool).
    pub overflow: Arc<Overflow>,
    /// Most transactions (of different users) delivered at once.
    pub concurrency: usize,
}

struct Item {
    txn: Arc<Transaction>,
    attempts: Vec<Attempt>,
    not_before: Option<Instant>,
    arrived: Instant,
}

#[derive(Default)]
struct Held {
    users: HashMap<String, VecDeque<Item>>,
    /// Users with items, in round-robin order.
    ring: VecDeque<String>,
    count: usize,
}

impl Held {
    fn push(&mut self, txn: Arc<Transaction>) {
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

    /// The position in the ring of the first user whose oldest item is due.
    fn ready(&self, now: Instant) -> Option<usize> {
        self.ring.iter().position(|u| {
            self.users
                .get(u)
                .and_then(|q| q.front())
                .is_some_and(|i| i.not_before.is_none_or(|t| t <= now))
        })
    }

    /// When the first user not being delivered to becomes due.
    fn earliest(&self) -> Option<Instant> {
        self.ring
            .iter()
            .filter_map(|u| self.users.get(u))
            .filter_map(|q| q.front().and_then(|i| i.not_before))
            .min()
    }
}

/// A finished delivery: its user, what happened, how long it took, its log span, the
/// breaker epoch it started in.
type Finished = (String, Outcome, std::time::Duration, tracing::Span, u64);

/// Runs the lane until its queue is closed and everything due is delivered; returns what
/// it still had (waiting for a retry or behind an open circuit, or still queued) — with
/// the spool, for the lane that replaces it after a reload.
///
/// Up to `concurrency` transactions are delivered at once, never two of one user: a user
/// with a delivery in flight is out of the round-robin ring until it finishes.
pub async fn run(
    ctx: LaneContext,
    mut rx: mpsc::Receiver<Arc<Transaction>>,
) -> Vec<Arc<Transaction>> {
    let capacity = ctx.capacity.max(1);
    let concurrency = ctx.concurrency.max(1);
    let mut held = Held::default();
    let mut closed = false;
    // Deliveries carry the breaker epoch they started in: an outcome that arrives after
    // the breaker changed state (a delivery that was already out) does not count.
    let mut epoch: u64 = 0;
    let mut breaker = CircuitBreaker::new(ctx.policy.breaker.clone());
    let mut in_flight: FuturesUnordered<BoxFuture<'static, Finished>> = FuturesUnordered::new();
    loop {
        ctx.stats.held.store(held.count, Ordering::Relaxed);
        let mut drained = false;
        while held.count < capacity && !closed {
            match rx.try_recv() {
                Ok(t) => held.push(t),
                Err(mpsc::error::TryRecvError::Empty) => {
                    drained = true;
                    break;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => closed = true,
            }
        }
        // The queue is drained: read the backlog the spool keeps, if the queue overflowed
        // (in batches, once at least half the room is free).
        if let (true, Some(spool)) = (drained && held.count <= capacity / 2, &ctx.spool) {
            for t in ctx
                .overflow
                .take(spool.as_ref(), ctx.number, capacity - held.count, || {
                    rx.is_empty()
                })
            {
                held.push(t);
            }
            if held.count == 0 && ctx.overflow.active() {
                // The backlog could not be read: try again shortly.
                let until = Instant::now() + std::time::Duration::from_secs(1);
                wait(
                    &mut rx,
                    &ctx.overflow,
                    &mut held,
                    &mut closed,
                    capacity,
                    until,
                )
                .await;
                continue;
            }
        }
        if held.count == 0 {
            if closed {
                return Vec::new();
            }
            tokio::select! {
                t = rx.recv() => match t {
                    Some(t) => held.push(t),
                    None => closed = true,
                },
                // The backlog is in the spool now (see `overflow`).
                _ = ctx.overflow.started() => {}
            }
            continue;
        }
        let now = Instant::now();
        // Start deliveries: with the spool, none while the circuit is open and one probe
        // while it is half-open.
        let state = if ctx.spool.is_some() {
            breaker.state(now)
        } else {
            CircuitState::Closed
        };
        let limit = match state {
            CircuitState::Open => 0,
            CircuitState::HalfOpen => 1,
            CircuitState::Closed => concurrency,
        };
        while in_flight.len() < limit {
            let Some(pos) = held.ready(now) else {
                break;
            };
            let Some(user) = held.ring.remove(pos) else {
                break;
            };
            let Some(txn) = held
                .users
                .get(&user)
                .and_then(|q| q.front())
                .map(|i| i.txn.clone())
            else {
                continue;
            };
            in_flight.push(start(&ctx, user, txn, epoch));
        }
        if in_flight.is_empty() {
            // Nothing can start now: (retries and circuits exist only with the spool)
            if closed || rx.is_closed() {
                // Stopping, and only retries in the future (or behind an open circuit)
                // remain: the spool keeps them, and what is still queued; they go to the
                // lane that replaces this one (a reload), or wait for the next start.
                return leftovers(held, rx);
            }
            let until = if state == CircuitState::Open {
                breaker.reopens_at().unwrap_or(now)
            } else {
                held.earliest().unwrap_or(now)
            };
            wait(
                &mut rx,
                &ctx.overflow,
                &mut held,
                &mut closed,
                capacity,
                until,
            )
            .await;
            continue;
        }
        // Wait for a delivery to finish; meanwhile take new transactions while there is
        // room, and start one that becomes due while there is a free slot.
        let room = held.count < capacity && !closed;
        let next_due = (in_flight.len() < limit)
            .then(|| held.earliest())
            .flatten()
            .unwrap_or(now + std::time::Duration::from_secs(3600));
        let finished = tokio::select! {
            f = in_flight.next() => f,
            t = rx.recv(), if room => {
                match t {
                    Some(t) => held.push(t),
                    None => closed = true,
                }
                continue;
            }
            _ = tokio::time::sleep_until(next_due.into()) => continue,
            _ = ctx.overflow.started(), if room => continue,
        };
        let Some((user, outcome, took, span, started_in)) = finished else {
            continue;
        };
        ctx.stats.observe(took);
        let _entered = span.enter();
        let breaker = (started_in == epoch).then_some(&mut breaker);
        if finish(&ctx, &mut held, breaker, user, outcome) {
            epoch += 1;
        }
    }
}

/// What a stopping lane still has: held (oldest first per user), then still queued.
fn leftovers(held: Held, mut rx: mpsc::Receiver<Arc<Transaction>>) -> Vec<Arc<Transaction>> {
    let mut out: Vec<Arc<Transaction>> = held
        .users
        .into_values()
        .flat_map(|q| q.into_iter().map(|i| i.txn))
        .collect();
    while let Ok(t) = rx.try_recv() {
        out.push(t);
    }
    out
}

/// Starts delivering `txn` (the oldest of `user`'s) on its own span.
fn start(
    ctx: &LaneContext,
    user: String,
    txn: Arc<Transaction>,
    epoch: u64,
) -> BoxFuture<'static, Finished> {
    let driver = ctx.driver.clone();
    let span =
        tracing::info_span!("deliver", txn = %txn.id, driver = ctx.number, driver_name = %ctx.name);
    Box::pin(async move {
        let started = Instant::now();
        let outcome = deliver(driver.as_ref(), &txn)
            .instrument(span.clone())
            .await;
        (user, outcome, started.elapsed(), span, epoch)
    })
}

/// Records what became of the oldest transaction of `user` and puts the user back in
/// the ring if more of theirs wait. The outcome counts for the circuit `breaker` when one
/// is given (the delivery started in its current state); returns whether the breaker
/// changed state.
fn finish(
    ctx: &LaneContext,
    held: &mut Held,
    breaker: Option<&mut CircuitBreaker>,
    user: String,
    outcome: Outcome,
) -> bool {
    let mut changed = false;
    let Some(queue) = held.users.get_mut(&user) else {
        return changed;
    };
    let Some(item) = queue.front_mut() else {
        held.users.remove(&user);
        return changed;
    };
    let txn = item.txn.clone();
    // Deferred by an endpoint circuit the driver keeps: no attempt, no outcome.
    let deferred = match &outcome {
        Outcome::Failed(f) if f.deferred && ctx.spool.is_some() => {
            (item.arrived.elapsed() < ctx.policy.retry.max_age).then(|| {
                let wait = f
                    .retry_after
                    .unwrap_or_default()
                    .min(ctx.policy.retry.retry_after_cap);
                // Up to +10 % so that the transactions held back by one circuit do
                // not all come back in the same instant.
                let x = seed(&txn.id, item.attempts.len() + 1) % 1001;
                wait + wait.mul_f64(x as f64 / 10_000.0)
            })
        }
        _ => None,
    };
    if let Some(wait) = deferred {
        tracing::debug!(user = %txn.user, retry_in = ?wait, "delivery deferred by an open endpoint circuit");
        item.not_before = Some(Instant::now() + wait);
        held.ring.push_back(user);
        return changed;
    }
    let ok = !matches!(outcome, Outcome::Failed(_));
    if let (Some(_), Some(breaker)) = (&ctx.spool, breaker) {
        if let Some(state) = breaker.record(ok, Instant::now()) {
            changed = true;
            ctx.stats.set_circuit(state);
            tracing::warn!(user = %txn.user, "circuit {}", state.as_str());
        }
    }
    let finished = match &outcome {
        Outcome::Delivered => {
            ctx.stats.delivered.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(user = %txn.user, "delivered");
            true
        }
        Outcome::Skipped => {
            ctx.stats.skipped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(user = %txn.user, "skipped by driver");
            true
        }
        Outcome::Failed(f) => {
            item.attempts.push(Attempt {
                at: now_secs(),
                error: f.reason.clone(),
            });
            let attempt = item.attempts.len();
            let retry = match &ctx.spool {
                Some(_) if f.retryable && item.arrived.elapsed() < ctx.policy.retry.max_age => ctx
                    .policy
                    .backoff(attempt, f.retry_after, seed(&txn.id, attempt)),
                _ => None,
            };
            match retry {
                Some(delay) => {
                    ctx.stats.retried.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(user = %txn.user, attempt, retry_in = ?delay, "delivery failed, will retry: {}", f.reason);
                    item.not_before = Some(Instant::now() + delay);
                    false
                }
                None => {
                    ctx.stats.failed.fetch_add(1, Ordering::Relaxed);
                    if let Some(spool) = &ctx.spool {
                        ctx.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(user = %txn.user, attempts = attempt, retryable = f.retryable, "delivery failed, dead-lettered: {}", f.reason);
                        if let Err(e) = spool.dead_letter(&txn, ctx.number, &item.attempts) {
                            tracing::error!("cannot record the dead letter: {e}");
                        }
                    } else {
                        tracing::warn!(user = %txn.user, retryable = f.retryable, "delivery failed: {}", f.reason);
                    }
                    true
                }
            }
        }
    };
    if finished {
        let item = queue.pop_front();
        held.count -= 1;
        if let (Some(spool), Outcome::Delivered | Outcome::Skipped) = (&ctx.spool, &outcome) {
            if let Err(e) = spool.complete(&txn.id, ctx.number) {
                tracing::error!("cannot record progress in the spool: {e}");
            }
        }
        if let (Some(o), Some(item)) = (&ctx.observer, item) {
            o.delivered(&Delivery {
                driver: ctx.number,
                txn: item.txn,
                outcome,
            });
        }
    }
    if queue.is_empty() {
        held.users.remove(&user);
    } else {
        held.ring.push_back(user);
    }
    changed
}

/// Waits until `until` or a new transaction arrives (when there is room).
async fn wait(
    rx: &mut mpsc::Receiver<Arc<Transaction>>,
    overflow: &Overflow,
    held: &mut Held,
    closed: &mut bool,
    capacity: usize,
    until: Instant,
) {
    let sleep = tokio::time::sleep_until(until.into());
    if held.count < capacity && !*closed {
        tokio::select! {
            _ = sleep => {}
            t = rx.recv() => match t {
                Some(t) => held.push(t),
                None => *closed = true,
            },
            _ = overflow.started() => {}
        }
    } else {
        // No room to take more: wait, but notice a stop (the queue closed) promptly
        // rather than at the end of a long retry delay.
        tokio::pin!(sleep);
        while !rx.is_closed() {
            tokio::select! {
                _ = &mut sleep => return,
                _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
            }
        }
    }
}

fn now_secs() -> u64 {
    now()
}

fn seed(id: &str, attempt: usize) -> u64 {
    id.bytes()
        .fold(attempt as u64 ^ 0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        })
}
