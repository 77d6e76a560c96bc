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

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use mailpush_core::{CircuitState, Driver, Transaction};
use tokio::sync::mpsc;
// tokio's clock (the same as std's, but pausable in tests).
use tokio::time::Instant;
use tracing::Instrument;

use super::held::{Held, Item};
use super::hooks::{deliver, Outcome};
use super::observer::{Delivery, DeliveryObserver};
use super::overflow::Overflow;
use super::policy::DeliveryPolicy;
use super::queued::Queued;
use super::stats::DriverStats;
use crate::breaker::CircuitBreaker;
use crate::spool::{now, Attempt, Gate, Spool};

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
    /// Which transactions this process may deliver now (cluster mode: its partitions'),
    /// checked before each delivery; `None`: all.
    pub gate: Option<Arc<dyn Gate>>,
}

/// A finished delivery: its user, what happened, how long it took, its log span, the
/// breaker epoch it started in, its fairness group ([`Driver::share`]).
type Finished = (
    String,
    Outcome,
    std::time::Duration,
    tracing::Span,
    u64,
    Option<String>,
);

/// Runs the lane until its queue is closed and everything due is delivered; returns what
/// it still had (waiting for a retry or behind an open circuit, or still queued) — with
/// the spool, for the lane that replaces it after a reload.
///
/// Up to `concurrency` transactions are delivered at once, never two of one user: a user
/// with a delivery in flight is out of the round-robin ring until it finishes.
pub async fn run(ctx: LaneContext, mut rx: mpsc::Receiver<Queued>) -> Vec<Arc<Transaction>> {
    let capacity = ctx.capacity.max(1);
    let concurrency = ctx.concurrency.max(1);
    // With the spool, held transactions expire after retry_max_age whatever holds them
    // (without one a failure is final and nothing waits for a retry).
    let mut held = Held::with_max_age(ctx.spool.is_some().then_some(ctx.policy.retry.max_age));
    if ctx.spool.is_some() {
        let driver = ctx.driver.clone();
        held = held.counting_by(Box::new(move |t| room_key(driver.as_ref(), t)));
    }
    let mut closed = false;
    // Deliveries carry the breaker epoch they started in: an outcome that arrives after
    // the breaker changed state (a delivery that was already out) does not count.
    let mut epoch: u64 = 0;
    let mut breaker = CircuitBreaker::new(ctx.policy.breaker.clone());
    let mut in_flight: FuturesUnordered<BoxFuture<'static, Finished>> = FuturesUnordered::new();
    // Deliveries in flight per fairness group (a tenant): each at most its share.
    let mut shares: HashMap<String, usize> = HashMap::new();
    let mut gate_epoch = ctx.gate.as_ref().map_or(0, |g| g.epoch());
    // Started by a reload to replace a lane (which shares the overflow): with the
    // spool, what that lane held and had queued comes first.
    let mut successor = ctx.spool.is_some() && ctx.overflow.handing_over();
    loop {
        ctx.stats.held.store(held.count, Ordering::Relaxed);
        // A reload hands this lane what the lane it replaces held and had queued: older
        // than anything queued since, so nothing is taken or started before it (each
        // user's order holds across the reload). The old lane only finishes the
        // deliveries it has in flight meanwhile (see `retiring` below).
        successor = successor && ctx.overflow.handing_over();
        if successor && !closed && !rx.is_closed() {
            tokio::select! {
                _ = ctx.overflow.started() => {}
                // A stop while waiting (the queue closed) is noticed.
                _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
            }
            continue;
        }
        for txn in ctx.overflow.take_handed_on() {
            take_queued(&ctx, &mut held, Queued::new(txn));
        }
        let mut drained = false;
        while held.count < capacity && !closed {
            match rx.try_recv() {
                Ok(q) => take_queued(&ctx, &mut held, q),
                Err(mpsc::error::TryRecvError::Empty) => {
                    drained = true;
                    break;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => closed = true,
            }
        }
        // What was left in the spool for a user (or tenant) over its share of the room,
        // read back as its room frees up, after what was queued (a reload's hand-on is
        // older). Not while stopping (a reload's new lane reads them), nor while a
        // reload hands this lane what the old one held.
        let read_back_failed =
            !closed && !ctx.overflow.handing_over() && read_back(&ctx, &mut held, capacity);
        // The queue is drained: read the backlog the spool keeps, if the queue overflowed
        // (in batches, once at least half the room is free).
        // (Not while a reload hands over: the replaced lane would deliver, with the old
        // driver, what the new lane's users have older transactions of queued.)
        if let (true, Some(spool)) = (
            drained && held.count <= capacity / 2 && !ctx.overflow.handing_over(),
            &ctx.spool,
        ) {
            for (t, stored, position) in
                ctx.overflow
                    .take(spool.as_ref(), ctx.number, capacity - held.count, || {
                        rx.is_empty()
                    })
            {
                take_in(&ctx, &mut held, t, Origin::Spool(stored, position));
            }
            if held.count == 0 && ctx.overflow.active() {
                // The backlog could not be read: try again shortly.
                let until = Instant::now() + std::time::Duration::from_secs(1);
                wait(&mut rx, &ctx, &mut held, &mut closed, capacity, until).await;
                continue;
            }
        }
        if held.count == 0 {
            if closed {
                return Vec::new();
            }
            if read_back_failed {
                // What is left in the spool could not be read: try again shortly.
                let until = Instant::now() + std::time::Duration::from_secs(1);
                wait(&mut rx, &ctx, &mut held, &mut closed, capacity, until).await;
                continue;
            }
            tokio::select! {
                t = rx.recv() => match t {
                    Some(q) => take_queued(&ctx, &mut held, q),
                    None => closed = true,
                },
                // The backlog is in the spool now (see `overflow`).
                _ = ctx.overflow.started() => {}
            }
            continue;
        }
        let now = Instant::now();
        // Cluster mode: what this node no longer delivers is dropped, unacknowledged
        // (its partition's new owner delivers it).
        if let Some(gate) = &ctx.gate {
            let epoch = gate.epoch();
            if epoch != gate_epoch {
                gate_epoch = epoch;
                let dropped = held.discard(|t| !gate.admits(ctx.number, t));
                for t in &dropped {
                    abandon(&ctx, t);
                }
                if !dropped.is_empty() {
                    tracing::info!(
                        driver = ctx.number,
                        "{} transaction(s) left to the partitions' new owners",
                        dropped.len()
                    );
                }
            }
        }
        for item in held.expire(now) {
            expired(&ctx, item);
        }
        if let Some(hold) = ctx.policy.hold_max.filter(|_| ctx.spool.is_some()) {
            for item in held.skip_ahead(now, hold) {
                skipped(&ctx, item, hold);
            }
        }
        // Start deliveries: with the spool, none while the circuit is open and one probe
        // while it is half-open.
        let state = if ctx.spool.is_some() {
            breaker.state(now.into_std())
        } else {
            CircuitState::Closed
        };
        // Open turns half-open with time, not with an outcome: the gauge shows it too.
        if state != ctx.stats.circuit() {
            ctx.stats.set_circuit(state);
        }
        // Replaced by a reload (with the spool): start nothing more; once the deliveries
        // in flight end, what is held and queued goes to the new lane (`leftovers`).
        let retiring =
            ctx.spool.is_some() && ctx.overflow.handing_over() && (closed || rx.is_closed());
        let limit = match state {
            _ if retiring => 0,
            CircuitState::Open => 0,
            CircuitState::HalfOpen => 1,
            CircuitState::Closed => concurrency,
        };
        while in_flight.len() < limit {
            let below_share = |t: &Transaction| {
                ctx.gate.as_ref().is_none_or(|g| g.admits(ctx.number, t))
                    && match ctx.driver.share(t) {
                        Some((group, max)) => shares.get(&group).copied().unwrap_or(0) < max,
                        None => true,
                    }
            };
            let Some((user, txn)) = held.next_due(now, below_share) else {
                break;
            };
            let group = ctx.driver.share(&txn).map(|(g, _)| g);
            if let Some(g) = &group {
                *shares.entry(g.clone()).or_default() += 1;
            }
            in_flight.push(start(&ctx, user, txn, epoch, group));
        }
        if in_flight.is_empty() {
            // Nothing can start now: (retries and circuits exist only with the spool)
            if closed || rx.is_closed() {
                // Stopping, and only retries in the future (or behind an open circuit)
                // remain: the spool keeps them, and what is still queued; they go to the
                // lane that replaces this one (a reload), or wait for the next start.
                return leftovers(held, rx, &ctx.overflow);
            }
            let until = if state == CircuitState::Open {
                breaker.reopens_at().map(Instant::from_std).unwrap_or(now)
            } else {
                // Nothing due later: what is held is due but may not start (cluster
                // mode: not this node's to deliver); look again in a second.
                held.earliest(now)
                    .unwrap_or(now + std::time::Duration::from_secs(1))
            };
            // Also when the next held transaction becomes too old, or may be skipped.
            let until = held.next_expiry().map_or(until, |e| e.min(until));
            let until = next_skip(&ctx, &held).map_or(until, |e| e.min(until));
            wait(&mut rx, &ctx, &mut held, &mut closed, capacity, until).await;
            continue;
        }
        // Wait for a delivery to finish; meanwhile take new transactions while there is
        // room, and start one that becomes due while there is a free slot.
        let room = held.count < capacity && !closed;
        let next_due = (in_flight.len() < limit)
            .then(|| held.earliest(now))
            .flatten()
            .unwrap_or(now + std::time::Duration::from_secs(3600));
        let next_due = held.next_expiry().map_or(next_due, |e| e.min(next_due));
        let next_due = next_skip(&ctx, &held).map_or(next_due, |e| e.min(next_due));
        let finished = tokio::select! {
            f = in_flight.next() => f,
            t = rx.recv(), if room => {
                match t {
                    Some(q) => take_queued(&ctx, &mut held, q),
                    None => closed = true,
                }
                continue;
            }
            _ = tokio::time::sleep_until(next_due) => continue,
            _ = ctx.overflow.started(), if room => continue,
        };
        let Some((user, outcome, took, span, started_in, group)) = finished else {
            continue;
        };
        if let Some(g) = group {
            if let Some(n) = shares.get_mut(&g) {
                *n -= 1;
                if *n == 0 {
                    shares.remove(&g);
                }
            }
        }
        ctx.stats.observe(took);
        let _entered = span.enter();
        let breaker = (started_in == epoch).then_some(&mut breaker);
        // Cluster mode: what of this user may no longer be delivered here goes — a
        // retry whose partition moved while it was in flight (it would come after what
        // the new owner delivers), a copy from an earlier ownership.
        let user_again = ctx.gate.as_ref().map(|_| user.clone());
        if finish(&ctx, &mut held, breaker, user, outcome) {
            epoch += 1;
        }
        if let (Some(gate), Some(user)) = (&ctx.gate, user_again) {
            for t in held.discard_user(&user, |t| !gate.admits(ctx.number, t)) {
                abandon(&ctx, &t);
            }
        }
    }
}

/// The most of the lane's room one user — or one tenant, for a driver that shares its
/// lane ([`Driver::share`]) — may hold. With the spool, what comes for it beyond that
/// stays in the spool and is read back in order as its own transactions finish, so one
/// user's (or tenant's) transactions waiting for retries or behind an open circuit
/// never fill the room the others need.
fn room_share(capacity: usize) -> usize {
    (capacity / 4).max(1)
}

/// Whose share a transaction counts against: its tenant's (`\0` + the group) for a
/// driver that shares its lane, else its user's. The lane's [`Held`] counts by it.
fn room_key(driver: &dyn Driver, t: &Transaction) -> String {
    match driver.share(t) {
        Some((group, _)) => format!("\0{group}"),
        None => t.user.clone(),
    }
}

/// The part of the lane's room kept for users (or tenants) that hold nothing yet — and
/// kept from what is read back ([`read_back`]): so that however many users wait with
/// their share held (retries, an open circuit), a new user's transaction still gets in.
/// None where the room is too small to keep two shares.
fn room_reserve(capacity: usize) -> usize {
    let share = room_share(capacity);
    if capacity >= 2 * share {
        share
    } else {
        0
    }
}

/// Where a transaction a lane takes in comes from.
enum Origin {
    /// The queue: when it arrived, and its spool position if known.
    Queue(Instant, Option<i64>),
    /// The spool (a backlog): when it was stored, and its position.
    Spool(std::time::SystemTime, i64),
}

/// Holds a transaction taken from the queue (or the backlog), with what
/// the lane before knew of it if a reload handed it on — unless its user (or tenant)
/// already has its share of the room ([`room_share`]), or holds some while only the
/// reserve is left ([`room_reserve`]), or has transactions left in the spool: then it
/// stays in the spool too, for [`read_back`].
fn take_in(ctx: &LaneContext, held: &mut Held, t: Arc<Transaction>, from: Origin) {
    if let Some(c) = ctx.overflow.take_carried(&t.id) {
        // Handed on by a reload. Its user's older transactions left in the spool come
        // first: it waits there too, read back in position order with what was carried.
        if let Some(spool) = &ctx.spool {
            let key = room_key(ctx.driver.as_ref(), &t);
            if ctx.overflow.is_diverting(&key) {
                if let Ok(Some(position)) = spool.position(&t.id) {
                    ctx.overflow.carry(&t.id, c);
                    ctx.overflow.divert(&key, position);
                    return;
                }
            }
        }
        held.push_carried(t, c.attempts, c.arrived);
        return;
    }
    if let Some(spool) = &ctx.spool {
        let key = room_key(ctx.driver.as_ref(), &t);
        let capacity = ctx.capacity.max(1);
        let holds = held.held_for(&key);
        if ctx.overflow.is_diverting(&key)
            || holds >= room_share(capacity)
            || (holds > 0 && capacity.saturating_sub(held.count) <= room_reserve(capacity))
        {
            let known = match from {
                Origin::Queue(_, position) => position,
                Origin::Spool(_, position) => Some(position),
            };
            let position = match known {
                Some(p) => Ok(Some(p)),
                None => spool.position(&t.id),
            };
            match position {
                Ok(Some(position)) => {
                    ctx.overflow.divert(&key, position);
                    return;
                }
                // Not in this spool (cluster mode): held.
                Ok(None) => {}
                Err(e) => tracing::warn!(
                    driver = ctx.number,
                    "cannot leave a transaction in the spool: {e}"
                ),
            }
        }
    }
    match from {
        Origin::Spool(stored, _) => held.push_stored(t, stored),
        Origin::Queue(at, _) => held.push_arrived(t, at),
    }
}

/// Takes in a transaction from the queue, if this node may deliver it ([`admitted`]).
fn take_queued(ctx: &LaneContext, held: &mut Held, q: Queued) {
    if admitted(ctx, &q.txn) {
        take_in(ctx, held, q.txn, Origin::Queue(q.at, q.position));
    }
}

/// Reads back, oldest first, what [`take_in`] left in the spool for keys that have
/// room again, leaving a share of the room to what is queued. Returns whether the
/// spool failed (what could not be read stays to be read).
fn read_back(ctx: &LaneContext, held: &mut Held, capacity: usize) -> bool {
    let Some(spool) = &ctx.spool else {
        return false;
    };
    if !ctx.overflow.any_diverted() {
        return false;
    }
    let share = room_share(capacity);
    let reserve = room_reserve(capacity);
    let mut failed = false;
    // Keys in turn, from the one after the key last served: the first keys in order do
    // not always take the room that frees up.
    // One key per pass may take from the reserve, so it is not all taken at once.
    let mut took_reserve = false;
    for key in ctx.overflow.diverting_in_turn() {
        let room_left = capacity.saturating_sub(held.count);
        let holds = held.held_for(&key);
        let room = if room_left > reserve {
            share.saturating_sub(holds).min(room_left - reserve)
        } else if holds == 0 && room_left > 0 && !took_reserve {
            // As `take_in` lets in a key that holds nothing: one of it, from the reserve.
            // (Without it, a user whose second transaction was left in the spool while
            // others' retries filled all but the reserve waited for them, hours.)
            took_reserve = true;
            1
        } else {
            0
        };
        if room == 0 {
            continue;
        }
        ctx.overflow.served(&key);
        let mut positions = ctx.overflow.take_diverted(&key, room).into_iter();
        while let Some(position) = positions.next() {
            match spool.owed_at(ctx.number, position) {
                Ok(Some(o)) => {
                    let txn = Arc::new(o.txn);
                    // One a reload handed on goes on with what the lane before knew.
                    match ctx.overflow.take_carried(&txn.id) {
                        Some(c) => held.push_carried(txn, c.attempts, c.arrived),
                        None => held.push_stored(txn, o.stored),
                    }
                }
                // No longer owed (a replay delivered it meanwhile).
                Ok(None) => {}
                Err(e) => {
                    // It and the rest of this batch stay to be read, in order.
                    ctx.overflow.divert(&key, position);
                    for p in positions.by_ref() {
                        ctx.overflow.divert(&key, p);
                    }
                    tracing::error!(driver = ctx.number, "cannot read back from the spool: {e}");
                    failed = true;
                }
            }
        }
    }
    failed
}

/// What a stopping lane still has: held (oldest first per user), then still queued.
/// What it knew of the held ones (attempts, age) is kept in `overflow` for the lane
/// that replaces it.
fn leftovers(
    held: Held,
    mut rx: mpsc::Receiver<Queued>,
    overflow: &Overflow,
) -> Vec<Arc<Transaction>> {
    let mut out: Vec<Arc<Transaction>> = Vec::with_capacity(held.count);
    for item in held.into_items() {
        overflow.carry(
            &item.txn.id,
            super::overflow::Carried {
                attempts: item.attempts,
                arrived: item.arrived,
            },
        );
        out.push(item.txn);
    }
    while let Ok(q) = rx.try_recv() {
        // (Its age goes on in the lane that replaces this one.)
        overflow.carry(
            &q.txn.id,
            super::overflow::Carried {
                attempts: Vec::new(),
                arrived: q.at,
            },
        );
        out.push(q.txn);
    }
    out
}

/// Starts delivering `txn` (the oldest of `user`'s) on its own span.
fn start(
    ctx: &LaneContext,
    user: String,
    txn: Arc<Transaction>,
    epoch: u64,
    group: Option<String>,
) -> BoxFuture<'static, Finished> {
    let driver = ctx.driver.clone();
    let span =
        tracing::info_span!("deliver", txn = %txn.id, driver = ctx.number, driver_name = %ctx.name);
    Box::pin(async move {
        let started = Instant::now();
        let outcome = deliver(driver.as_ref(), &txn)
            .instrument(span.clone())
            .await;
        (user, outcome, started.elapsed(), span, epoch, group)
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
    let Some(item) = held.front_mut(&user) else {
        held.requeue(user);
        return changed;
    };
    let txn = item.txn.clone();
    // Deferred by an endpoint circuit the driver keeps: no attempt, no outcome (unless
    // the policy retries nothing: then it fails as refused).
    let deferred = match &outcome {
        Outcome::Failed(f) if f.deferred && ctx.spool.is_some() && ctx.policy.defers() => {
            (item.arrived.elapsed() < ctx.policy.retry.max_age).then(|| {
                ctx.policy
                    .deferral(f.retry_after, &txn.id, item.attempts.len() + 1)
            })
        }
        _ => None,
    };
    if let Some(wait) = deferred {
        tracing::debug!(user = %txn.user, retry_in = ?wait, "delivery deferred by an open endpoint circuit");
        item.not_before = Some(Instant::now() + wait);
        held.requeue(user);
        return changed;
    }
    let ok = !matches!(outcome, Outcome::Failed(_));
    let mut held_retrying = false;
    if let (Some(_), Some(breaker)) = (&ctx.spool, breaker) {
        if let Some(state) = breaker.record(ok, Instant::now().into_std()) {
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
                at: now(),
                error: f.reason.clone(),
            });
            let attempt = item.attempts.len();
            let too_old = item.arrived.elapsed() >= ctx.policy.retry.max_age;
            if f.retryable && too_old && ctx.spool.is_some() {
                // Retryable, but past retry_max_age: it expires like any held work.
                if let Some(item) = held.pop(&user) {
                    expired(ctx, item);
                }
                held.requeue(user);
                return changed;
            }
            let retry = match &ctx.spool {
                Some(_) if f.retryable => ctx.policy.backoff(attempt, f.retry_after, &txn.id),
                _ => None,
            };
            match retry {
                Some(delay) => {
                    held_retrying = true;
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
    if held_retrying {
        held.retrying(&user);
    }
    if finished {
        let item = held.pop(&user);
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
    held.requeue(user);
    changed
}

/// A held transaction grew older than `retry_max_age` before it could be delivered: a
/// dead letter, its reason saying so (after its last failure, if any).
fn expired(ctx: &LaneContext, item: Item) {
    let reason = format!(
        "expired: not delivered within retry_max_age={}",
        humantime::format_duration(ctx.policy.retry.max_age)
    );
    give_up(ctx, item, reason, &ctx.stats.expired);
}

/// When a held transaction may next be skipped (`hold_max`, with the spool).
fn next_skip(ctx: &LaneContext, held: &Held) -> Option<Instant> {
    let hold = ctx.policy.hold_max.filter(|_| ctx.spool.is_some())?;
    held.next_skip(hold)
}

/// A later transaction of its user waited `hold_max` behind this one, which failed and
/// waits for a retry: a dead letter, its reason saying so (after its last failure).
fn skipped(ctx: &LaneContext, item: Item, hold: std::time::Duration) {
    let reason = format!(
        "skipped: a later transaction of the user waited hold_max={} behind it",
        humantime::format_duration(hold)
    );
    give_up(ctx, item, reason, &ctx.stats.skipped_ahead);
}

/// Gives up on a held transaction that never finished: a dead letter with `reason`
/// (and the last attempt's error), counted in `counter` as well.
fn give_up(
    ctx: &LaneContext,
    mut item: Item,
    reason: String,
    counter: &std::sync::atomic::AtomicU64,
) {
    let last = item
        .attempts
        .last()
        .map(|a| format!(" (last attempt: {})", a.error))
        .unwrap_or_default();
    let reason = format!("{reason}{last}");
    item.attempts.push(Attempt {
        at: now(),
        error: reason.clone(),
    });
    ctx.stats.failed.fetch_add(1, Ordering::Relaxed);
    ctx.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
    counter.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(txn = %item.txn.id, user = %item.txn.user, attempts = item.attempts.len() - 1, "dead-lettered: {reason}");
    if let Some(spool) = &ctx.spool {
        if let Err(e) = spool.dead_letter(&item.txn, ctx.number, &item.attempts) {
            tracing::error!("cannot record the dead letter: {e}");
        }
    }
    if let Some(o) = &ctx.observer {
        o.delivered(&Delivery {
            driver: ctx.number,
            txn: item.txn,
            outcome: Outcome::Failed(mailpush_core::Failure::permanent(reason)),
        });
    }
}

/// Whether this node may deliver `txn` (cluster mode: it arrived after its partition
/// moved away; then it is let go).
fn admitted(ctx: &LaneContext, txn: &Arc<Transaction>) -> bool {
    let ok = ctx.gate.as_ref().is_none_or(|g| g.admits(ctx.number, txn));
    if !ok {
        abandon(ctx, txn);
    }
    ok
}

/// Lets `txn` go undelivered: its partition's new owner delivers it.
fn abandon(ctx: &LaneContext, txn: &Transaction) {
    if let Some(spool) = &ctx.spool {
        spool.abandon(txn, ctx.number);
    }
}

/// Waits until `until` or a new transaction arrives (when there is room).
async fn wait(
    rx: &mut mpsc::Receiver<Queued>,
    ctx: &LaneContext,
    held: &mut Held,
    closed: &mut bool,
    capacity: usize,
    until: Instant,
) {
    let sleep = tokio::time::sleep_until(until);
    if held.count < capacity && !*closed {
        tokio::select! {
            _ = sleep => {}
            q = rx.recv() => match q {
                Some(q) => take_queued(ctx, held, q),
                None => *closed = true,
            },
            _ = ctx.overflow.started() => {}
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
