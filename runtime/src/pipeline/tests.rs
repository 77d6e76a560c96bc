//! The pipeline's pieces under test without processes or servers: a lane run directly on
//! a paused clock (ordering per user, concurrency, the retry schedule, dead letters), and
//! the dispatcher's overflow and reload hand-overs with a gated driver.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mailpush_core::{Begin, Driver, DriverTxn, EventSet, Failure, Transaction};
use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::time::Instant;

use super::lane::{self, LaneContext};
use super::observer::{Delivery, DeliveryObserver};
use super::overflow::Overflow;
use super::policy::DeliveryPolicy;
use super::stats::DriverStats;
use super::{Backpressure, Dispatcher, LoadedDriver, Outcome};
use crate::spool::sqlite::SqliteSpool;
use crate::spool::Spool;
use mailpush_config::Location;

/// One call of the scripted driver.
#[derive(Debug, Clone)]
struct Call {
    id: String,
    user: String,
    start: Instant,
    ok: bool,
}

/// A driver that takes `delay` per transaction, fails some transactions a number of
/// times first (retryably), waits for a permit when gated, and records every call,
/// how many ran at once, and whether one user ever had two at once.
#[derive(Default)]
struct Script {
    delay: Duration,
    fail: Mutex<HashMap<String, usize>>,
    gate: Option<Arc<Semaphore>>,
    calls: Mutex<Vec<Call>>,
    running: AtomicUsize,
    most_running: AtomicUsize,
    users_running: Mutex<HashSet<String>>,
    same_user_twice: AtomicBool,
    /// Woken after each call.
    called: Notify,
}

impl Script {
    /// The ids of the calls that succeeded, in order.
    fn succeeded(&self) -> Vec<String> {
        self.calls
            .lock()
            .iter()
            .filter(|c| c.ok)
            .map(|c| c.id.clone())
            .collect()
    }

    /// Waits until `n` calls were made.
    async fn wait_calls(&self, n: usize) {
        loop {
            let notified = self.called.notified();
            if self.calls.lock().len() >= n {
                return;
            }
            notified.await;
        }
    }
}

/// The no-op rest of a transaction the script already handled at begin_txn.
struct Done;

#[async_trait]
impl DriverTxn for Done {}

#[async_trait]
impl Driver for Script {
    async fn begin_txn(&self, txn: &Arc<Transaction>) -> Result<Begin, Failure> {
        if !self.users_running.lock().insert(txn.user.clone()) {
            self.same_user_twice.store(true, Ordering::SeqCst);
        }
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_running.fetch_max(now, Ordering::SeqCst);
        let start = Instant::now();
        if let Some(gate) = &self.gate {
            gate.acquire().await.expect("gate open").forget();
        }
        tokio::time::sleep(self.delay).await;
        let fail = {
            let mut f = self.fail.lock();
            match f.get_mut(&txn.id) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    true
                }
                _ => false,
            }
        };
        self.calls.lock().push(Call {
            id: txn.id.clone(),
            user: txn.user.clone(),
            start,
            ok: !fail,
        });
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.users_running.lock().remove(&txn.user);
        self.called.notify_waiters();
        if fail {
            return Err(Failure::retryable("scripted failure"));
        }
        Ok(Begin::Join {
            events: EventSet::default(),
            txn: Box::new(Done),
        })
    }
}

/// A dispatcher over `spool` with `room` for `driver`, which is retried every 300 ms (4
/// retries, no circuit breaking), its outcomes to `outcomes`.
fn retrying(
    driver: &Arc<Script>,
    room: usize,
    outcomes: &Arc<Outcomes>,
    spool: &Arc<SqliteSpool>,
) -> Dispatcher {
    let mut args =
        mailpush_core::DriverArgs::parse("retry=300ms,300ms,300ms,300ms breaker_min=1000");
    let policy = DeliveryPolicy::from_args(&mut args).unwrap();
    Dispatcher::start_with_spool(
        vec![loaded(driver.clone(), "s", policy)],
        room,
        Some(outcomes.clone() as Arc<dyn DeliveryObserver>),
        Some(spool.clone() as Arc<dyn Spool>),
    )
}

/// A script whose calls each wait for a permit of the returned gate (none at first).
fn gated() -> (Arc<Semaphore>, Arc<Script>) {
    let gate = Arc::new(Semaphore::new(0));
    let driver = Arc::new(Script {
        gate: Some(gate.clone()),
        ..Default::default()
    });
    (gate, driver)
}

/// Final outcomes in the order they arrived; wakes waiters.
#[derive(Default)]
struct Outcomes {
    seen: Mutex<Vec<(String, Outcome)>>,
    notify: Notify,
}

impl DeliveryObserver for Outcomes {
    fn delivered(&self, d: &Delivery) {
        self.seen.lock().push((d.txn.id.clone(), d.outcome.clone()));
        self.notify.notify_waiters();
    }
}

impl Outcomes {
    /// Where among the outcomes `id`'s delivery is, if it was delivered.
    fn delivered_at(&self, id: &str) -> Option<usize> {
        self.seen
            .lock()
            .iter()
            .position(|(i, o)| i == id && matches!(o, Outcome::Delivered))
    }

    async fn wait_for(&self, n: usize) {
        loop {
            let notified = self.notify.notified();
            if self.seen.lock().len() >= n {
                return;
            }
            notified.await;
        }
    }
}

fn txn(user: &str, id: &str) -> Transaction {
    Transaction::from_json(&format!(
        r#"{{"id":"{id}","user":"{user}","events":[{{"name":"MailboxCreate","mailbox":"A"}}]}}"#
    ))
    .expect("valid transaction")
}

struct LaneRun {
    tx: mpsc::Sender<super::queued::Queued>,
    outcomes: Arc<Outcomes>,
    stats: Arc<DriverStats>,
    task: tokio::task::JoinHandle<Vec<Arc<Transaction>>>,
}

/// A lane of `driver` run as a task of the test's runtime.
fn run_lane(
    driver: Arc<Script>,
    policy: DeliveryPolicy,
    spool: Option<Arc<dyn Spool>>,
    concurrency: usize,
) -> LaneRun {
    let (tx, rx) = mpsc::channel(64);
    let outcomes = Arc::new(Outcomes::default());
    let stats = Arc::new(DriverStats::default());
    let ctx = LaneContext {
        gate: None,
        number: 1,
        name: "script".into(),
        driver,
        stats: stats.clone(),
        observer: Some(outcomes.clone()),
        spool,
        policy,
        capacity: 64,
        overflow: Arc::new(Overflow::default()),
        concurrency,
    };
    LaneRun {
        tx,
        outcomes,
        stats,
        task: tokio::spawn(lane::run(ctx, rx)),
    }
}

fn spool(dir: &tempfile::TempDir) -> Arc<SqliteSpool> {
    SqliteSpool::open(&dir.path().join("spool.db"), 1 << 30).expect("spool opens")
}

/// Up to `concurrency` deliveries at once, never two of one user, and each user's
/// transactions in arrival order while the users interleave.
#[tokio::test(start_paused = true)]
async fn per_user_order_with_concurrency() {
    let driver = Arc::new(Script {
        delay: Duration::from_millis(10),
        ..Default::default()
    });
    let lane = run_lane(driver.clone(), DeliveryPolicy::default(), None, 3);
    let mut sent = Vec::new();
    for i in 0..5 {
        for u in ["a", "b", "c", "d"] {
            let t = txn(u, &format!("{u}{i}"));
            sent.push(t.id.clone());
            lane.tx
                .send(super::queued::Queued::new(Arc::new(t)))
                .await
                .unwrap();
        }
    }
    lane.outcomes.wait_for(20).await;
    assert!(!driver.same_user_twice.load(Ordering::SeqCst));
    assert_eq!(driver.most_running.load(Ordering::SeqCst), 3);
    let calls = driver.calls.lock().clone();
    for u in ["a", "b", "c", "d"] {
        let theirs: Vec<&str> = calls
            .iter()
            .filter(|c| c.user == u)
            .map(|c| c.id.as_str())
            .collect();
        let expected: Vec<String> = (0..5).map(|i| format!("{u}{i}")).collect();
        assert_eq!(theirs, expected, "user {u} in order");
    }
    // 20 deliveries of 10 ms, 3 at a time: 7 rounds.
    let last = calls.iter().map(|c| c.start).max().unwrap();
    let first = calls.iter().map(|c| c.start).min().unwrap();
    assert_eq!(last - first, Duration::from_millis(60));
    drop(lane.tx);
    assert!(lane.task.await.unwrap().is_empty());
}

/// A retryable failure is tried again on the schedule (±20 % jitter), holding back only
/// its own user's later transactions; the others flow meanwhile.
#[tokio::test(start_paused = true)]
async fn retries_follow_the_schedule_and_hold_back_only_that_user() {
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(&dir);
    let driver = Arc::new(Script::default());
    driver.fail.lock().insert("a1".into(), 2);
    let mut args = mailpush_core::DriverArgs::parse("retry=5s,30s");
    let policy = DeliveryPolicy::from_args(&mut args).unwrap();
    let lane = run_lane(
        driver.clone(),
        policy,
        Some(spool.clone() as Arc<dyn Spool>),
        4,
    );
    let batch = vec![
        txn("a", "a1"),
        txn("a", "a2"),
        txn("b", "b1"),
        txn("b", "b2"),
    ];
    spool.append(&batch, &[1]).unwrap();
    let t0 = Instant::now();
    for t in batch {
        lane.tx
            .send(super::queued::Queued::new(Arc::new(t)))
            .await
            .unwrap();
    }
    lane.outcomes.wait_for(4).await;
    let calls = driver.calls.lock().clone();
    let at = |id: &str| -> Vec<Duration> {
        calls
            .iter()
            .filter(|c| c.id == id)
            .map(|c| c.start - t0)
            .collect()
    };
    let a1 = at("a1");
    assert_eq!(a1.len(), 3, "{calls:?}");
    let outcomes: Vec<bool> = calls
        .iter()
        .filter(|c| c.id == "a1")
        .map(|c| c.ok)
        .collect();
    assert_eq!(outcomes, [false, false, true]);
    assert_eq!(a1[0], Duration::ZERO);
    let first_wait = a1[1] - a1[0];
    let second_wait = a1[2] - a1[1];
    assert!(
        first_wait >= Duration::from_secs(4) && first_wait <= Duration::from_secs(6),
        "{first_wait:?}"
    );
    assert!(
        second_wait >= Duration::from_secs(24) && second_wait <= Duration::from_secs(36),
        "{second_wait:?}"
    );
    // a2 only after a1 finally went through; b's at once.
    assert!(at("a2")[0] >= a1[2]);
    assert_eq!(at("b1"), [Duration::ZERO]);
    assert_eq!(at("b2"), [Duration::ZERO]);
    assert_eq!(lane.stats.retried.load(Ordering::SeqCst), 2);
    assert!(spool.dead_letters(None).unwrap().is_empty());
    spool.flush().unwrap();
    assert!(
        spool.pending().unwrap().is_empty(),
        "all completed in the spool"
    );
}

/// When the schedule is exhausted the transaction becomes a dead letter with every
/// attempt, and the user's next transaction goes on.
#[tokio::test(start_paused = true)]
async fn exhausted_retries_become_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(&dir);
    let driver = Arc::new(Script::default());
    driver.fail.lock().insert("x1".into(), usize::MAX);
    let mut args = mailpush_core::DriverArgs::parse("retry=1s");
    let policy = DeliveryPolicy::from_args(&mut args).unwrap();
    let lane = run_lane(
        driver.clone(),
        policy,
        Some(spool.clone() as Arc<dyn Spool>),
        1,
    );
    let batch = vec![txn("x", "x1"), txn("x", "x2")];
    spool.append(&batch, &[1]).unwrap();
    for t in batch {
        lane.tx
            .send(super::queued::Queued::new(Arc::new(t)))
            .await
            .unwrap();
    }
    lane.outcomes.wait_for(2).await;
    let seen = lane.outcomes.seen.lock().clone();
    assert!(
        matches!(&seen[0], (id, Outcome::Failed(_)) if id == "x1"),
        "{seen:?}"
    );
    assert_eq!(seen[1], ("x2".to_string(), Outcome::Delivered));
    spool.flush().unwrap();
    let dead = spool.dead_letters(Some(1)).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].txn.id, "x1");
    assert_eq!(dead[0].attempts.len(), 2, "the first try and one retry");
    assert_eq!(lane.stats.dead_lettered.load(Ordering::SeqCst), 1);
}

fn loaded(driver: Arc<dyn Driver>, fingerprint: &str, policy: DeliveryPolicy) -> LoadedDriver {
    LoadedDriver {
        number: 1,
        name: "script".into(),
        kind: "native",
        args_display: String::new(),
        location: Location {
            file: "test.conf".into(),
            line: 1,
        },
        driver,
        warnings: Vec::new(),
        details: Vec::new(),
        fingerprint: fingerprint.into(),
        policy,
    }
}

/// A driver that cannot keep up: its queue (2) overflows into the spool and it reads the
/// backlog itself, in order, each transaction once; ingest is never refused. (Ten
/// users: one user's transactions beyond its share of the room stay in the spool
/// without an overflow, a_user_waiting_for_retries_does_not_hold_back_the_others.)
#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_overflows_into_the_spool_and_is_read_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(&dir);
    let (gate, driver) = gated();
    let outcomes = Arc::new(Outcomes::default());
    let d = Dispatcher::start_with_spool(
        vec![loaded(driver.clone(), "s", DeliveryPolicy::default())],
        2,
        Some(outcomes.clone()),
        Some(spool.clone() as Arc<dyn Spool>),
    );
    for i in 0..10 {
        let taken = d
            .accept(
                vec![txn(&format!("u{i}"), &format!("t{i}"))],
                Backpressure::Refuse,
            )
            .await
            .expect("never refused with the spool");
        assert_eq!(taken, 1);
    }
    assert!(d.reports()[0].overflowing, "the queue overflowed");
    assert!(d.reports()[0].queued <= 2);
    gate.add_permits(10);
    outcomes.wait_for(10).await;
    let ids: Vec<String> = outcomes
        .seen
        .lock()
        .iter()
        .map(|(id, _)| id.clone())
        .collect();
    let expected: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
    assert_eq!(ids, expected);
    assert_eq!(driver.calls.lock().len(), 10, "each once");
    d.shutdown().await;
    assert!(spool.pending().unwrap().is_empty());
}

/// A transaction's age counts from when it was queued, not from when its lane took it:
/// b1 waits in the queue behind a1 (the lane's room is 1) longer than `retry_max_age`,
/// and expires instead of being delivered late.
#[tokio::test(flavor = "multi_thread")]
async fn time_in_the_queue_counts_toward_the_age() {
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(&dir);
    let (gate, driver) = gated();
    let mut args = mailpush_core::DriverArgs::parse("retry_max_age=1s");
    let policy = DeliveryPolicy::from_args(&mut args).unwrap();
    let outcomes = Arc::new(Outcomes::default());
    let d = Dispatcher::start_with_spool(
        vec![loaded(driver.clone(), "s", policy)],
        1,
        Some(outcomes.clone()),
        Some(spool.clone() as Arc<dyn Spool>),
    );
    d.accept(vec![txn("a", "a1")], Backpressure::Refuse)
        .await
        .unwrap();
    assert!(eventually(|| driver.running.load(Ordering::SeqCst) == 1).await);
    d.accept(vec![txn("b", "b1")], Backpressure::Refuse)
        .await
        .unwrap();
    assert_eq!(d.reports()[0].queued, 1, "b1 waits in the queue");
    // b1 grows older than retry_max_age there (the time passing is what is tested).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    gate.add_permits(2);
    outcomes.wait_for(2).await;
    let seen = outcomes.seen.lock().clone();
    assert_eq!(seen[0], ("a1".to_string(), Outcome::Delivered));
    assert_eq!(seen[1].0, "b1");
    assert!(
        matches!(&seen[1].1, Outcome::Failed(f) if f.reason.contains("expired")),
        "{seen:?}"
    );
    d.shutdown().await;
}

/// A dispatcher over `spool` whose driver 1 (`retry=1h`) failed transaction `r1` once
/// and holds it, waiting an hour for the retry; and that policy.
async fn holding_a_retry(
    spool: Arc<dyn Spool>,
    observer: Option<Arc<Outcomes>>,
) -> (Dispatcher, DeliveryPolicy) {
    let old = Arc::new(Script::default());
    old.fail.lock().insert("r1".into(), 1);
    let mut args = mailpush_core::DriverArgs::parse("retry=1h");
    let policy = DeliveryPolicy::from_args(&mut args).unwrap();
    let observer = observer.map(|o| o as Arc<dyn DeliveryObserver>);
    let d = Dispatcher::start_with_spool(
        vec![loaded(old.clone(), "old", policy.clone())],
        8,
        observer,
        Some(spool),
    );
    d.accept(vec![txn("u", "r1")], Backpressure::Refuse)
        .await
        .unwrap();
    old.wait_calls(1).await;
    (d, policy)
}

/// Whether `cond` holds within 20 s (looked at every 5 ms: what it reads is recorded by
/// drivers and observers without a notification to wait on).
async fn eventually(cond: impl Fn() -> bool) -> bool {
    tokio::time::timeout(Duration::from_secs(20), async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .is_ok()
}

/// One user whose oldest transaction waits for its retries never fills the lane's room
/// (4 here): what comes for that user beyond its share stays in the spool and is read
/// back in order, while the other users flow on. Every transaction is delivered once.
#[tokio::test(flavor = "multi_thread")]
async fn a_user_waiting_for_retries_does_not_hold_back_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(&dir);
    let outcomes = Arc::new(Outcomes::default());
    let driver = Arc::new(Script::default());
    driver.fail.lock().insert("a1".into(), 3);
    let d = retrying(&driver, 4, &outcomes, &spool);
    d.accept(vec![txn("a", "a1")], Backpressure::Refuse)
        .await
        .unwrap();
    driver.wait_calls(1).await;
    for i in 2..=12 {
        d.accept(vec![txn("a", &format!("a{i}"))], Backpressure::Refuse)
            .await
            .unwrap();
    }
    d.accept(vec![txn("b", "b1"), txn("c", "c1")], Backpressure::Refuse)
        .await
        .unwrap();
    let delivered_at = |id: &str| outcomes.delivered_at(id);
    assert!(
        eventually(|| delivered_at("b1").is_some() && delivered_at("c1").is_some()).await,
        "b1 and c1 delivered"
    );
    assert!(
        delivered_at("a1").is_none(),
        "b1 and c1 went while a1 still waited for its retries: {:?}",
        outcomes.seen.lock()
    );
    assert!(
        eventually(|| (1..=12).all(|i| delivered_at(&format!("a{i}")).is_some())).await,
        "every transaction of a delivered: {:?}",
        outcomes.seen.lock()
    );
    d.shutdown().await;
    // a's in order, each delivered once; nothing left owed.
    let ok = driver.succeeded();
    let a: Vec<&String> = ok.iter().filter(|id| id.starts_with('a')).collect();
    let expected: Vec<String> = (1..=12).map(|i| format!("a{i}")).collect();
    assert_eq!(a, expected.iter().collect::<Vec<_>>());
    assert_eq!(ok.len(), 14, "{ok:?}");
    assert!(spool.pending().unwrap().is_empty());
}

/// However many users wait for retries with their share of the room held, the last
/// share of the room stays for users that hold nothing yet: four stuck users (a share
/// of 2 each would fill a room of 8) leave room for e1, delivered while they wait.
/// Everything is delivered once, each user's in order.
#[tokio::test(flavor = "multi_thread")]
async fn users_waiting_for_retries_leave_room_for_a_new_user() {
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(&dir);
    let outcomes = Arc::new(Outcomes::default());
    let driver = Arc::new(Script::default());
    let stuck = ["a", "b", "c", "d"];
    for u in stuck {
        driver.fail.lock().insert(format!("{u}1"), 3);
    }
    let d = retrying(&driver, 8, &outcomes, &spool);
    d.accept(
        stuck.iter().map(|u| txn(u, &format!("{u}1"))).collect(),
        Backpressure::Refuse,
    )
    .await
    .unwrap();
    driver.wait_calls(4).await;
    for u in stuck {
        for i in 2..=4 {
            d.accept(vec![txn(u, &format!("{u}{i}"))], Backpressure::Refuse)
                .await
                .unwrap();
        }
    }
    d.accept(vec![txn("e", "e1")], Backpressure::Refuse)
        .await
        .unwrap();
    let delivered_at = |id: &str| outcomes.delivered_at(id);
    assert!(
        eventually(|| delivered_at("e1").is_some()).await,
        "e1 delivered"
    );
    // a3 a4, b3 b4, c2…c4 (only the reserve was left), d2…d4; c2 may be read back once
    // e1 is gone.
    let diverted = d.reports()[0].diverted;
    assert!(
        stuck
            .iter()
            .all(|u| delivered_at(&format!("{u}1")).is_none()),
        "e1 went while a1…d1 still waited for their retries: {:?}",
        outcomes.seen.lock()
    );
    assert!(
        (9..=10).contains(&diverted),
        "left in the spool: {diverted}"
    );
    assert!(
        eventually(|| outcomes.seen.lock().len() >= 17).await,
        "every transaction delivered: {:?}",
        outcomes.seen.lock()
    );
    d.shutdown().await;
    let ok = driver.succeeded();
    assert_eq!(ok.len(), 17, "each once: {ok:?}");
    for u in stuck {
        let mine: Vec<&String> = ok.iter().filter(|id| id.starts_with(u)).collect();
        let expected: Vec<String> = (1..=4).map(|i| format!("{u}{i}")).collect();
        assert_eq!(mine, expected.iter().collect::<Vec<_>>(), "{u}'s in order");
    }
    assert!(spool.pending().unwrap().is_empty());
}

/// A user whose second transaction was left in the spool (only the reserve of the room
/// was free, the rest held by other users' transactions waiting an hour for retries) gets
/// it read back once its first is delivered, as a user holding nothing is let in: it
/// waited behind the others' retries, an hour, because the read-back never used the
/// reserve.
#[tokio::test(flavor = "multi_thread")]
async fn a_user_left_in_the_spool_is_read_back_from_the_reserve() {
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(&dir);
    let outcomes = Arc::new(Outcomes::default());
    let driver = Arc::new(Script::default());
    for u in ["a", "b", "c"] {
        driver.fail.lock().insert(format!("{u}1"), 100);
    }
    let mut args = mailpush_core::DriverArgs::parse("retry=1h breaker_min=1000");
    let policy = DeliveryPolicy::from_args(&mut args).unwrap();
    let d = Dispatcher::start_with_spool(
        vec![loaded(driver.clone(), "s", policy)],
        8,
        Some(outcomes.clone() as Arc<dyn DeliveryObserver>),
        Some(spool.clone() as Arc<dyn Spool>),
    );
    d.accept(
        vec![txn("a", "a1"), txn("b", "b1"), txn("c", "c1")],
        Backpressure::Refuse,
    )
    .await
    .unwrap();
    driver.wait_calls(3).await;
    d.accept(
        vec![txn("a", "a2"), txn("b", "b2"), txn("c", "c2")],
        Backpressure::Refuse,
    )
    .await
    .unwrap();
    // Six held; e1 gets in, e2 (only the reserve left) stays in the spool.
    d.accept(vec![txn("e", "e1"), txn("e", "e2")], Backpressure::Refuse)
        .await
        .unwrap();
    assert!(
        eventually(|| outcomes.delivered_at("e2").is_some()).await,
        "e2 read back and delivered: {:?}",
        outcomes.seen.lock()
    );
    assert!(outcomes.delivered_at("e1") < outcomes.delivered_at("e2"));
    d.shutdown().await;
}

/// A batch that comes after the dispatcher shut down (a hand-off read while a stop took
/// the lanes) is refused, not accepted: owed to no driver, the spool dropped it, and the
/// hand-off removed its files.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_after_shutdown_is_refused_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(&dir);
    let driver = Arc::new(Script::default());
    let d = Dispatcher::start_with_spool(
        vec![loaded(driver, "s", DeliveryPolicy::default())],
        8,
        None,
        Some(spool.clone() as Arc<dyn Spool>),
    );
    d.shutdown_shared().await;
    let r = d.accept(vec![txn("u", "late")], Backpressure::Refuse).await;
    assert!(matches!(r, Err(super::Refused::ShutDown)), "{r:?}");
    assert!(spool.position("late").unwrap().is_none());
}

/// A driver for the shutdown test: driver 1's delivery in flight waits (at most 20 s)
/// for driver 2 to be told it is stopping; each records its deinit.
struct StopOrder {
    number: u32,
    /// Driver 1: woken when its delivery began. Driver 2: woken by its `stopping`.
    signal: Arc<Notify>,
    /// Driver 1 waits on this (driver 2's `signal`).
    wait_for: Option<Arc<Notify>>,
    saw_the_other_stop: Arc<AtomicBool>,
    deinits: Arc<Mutex<Vec<u32>>>,
}

#[async_trait]
impl Driver for StopOrder {
    async fn begin_txn(&self, _txn: &Arc<Transaction>) -> Result<Begin, Failure> {
        if let Some(other) = &self.wait_for {
            self.signal.notify_one();
            let saw = tokio::time::timeout(Duration::from_secs(20), other.notified()).await;
            self.saw_the_other_stop.store(saw.is_ok(), Ordering::SeqCst);
        }
        Ok(Begin::Skip)
    }

    fn stopping(&self) {
        if self.wait_for.is_none() {
            self.signal.notify_one();
        }
    }

    async fn deinit(&self) {
        self.deinits.lock().push(self.number);
    }
}

/// A stop tells every driver at once: driver 1 finishing a delivery in flight does not
/// keep driver 2 from hearing it (it used to, lane after lane: a stop took the sum of
/// the lanes' times, each going on taking from its queue meanwhile). The drivers are
/// still deinitialised in number order.
#[tokio::test(flavor = "multi_thread")]
async fn a_stop_tells_every_driver_at_once_and_deinits_in_order() {
    let began = Arc::new(Notify::new());
    let two_stopping = Arc::new(Notify::new());
    let saw = Arc::new(AtomicBool::new(false));
    let deinits = Arc::new(Mutex::new(Vec::new()));
    let one = StopOrder {
        number: 1,
        signal: began.clone(),
        wait_for: Some(two_stopping.clone()),
        saw_the_other_stop: saw.clone(),
        deinits: deinits.clone(),
    };
    let two = StopOrder {
        number: 2,
        signal: two_stopping,
        wait_for: None,
        saw_the_other_stop: Arc::new(AtomicBool::new(false)),
        deinits: deinits.clone(),
    };
    let mut second = loaded(Arc::new(two), "two", DeliveryPolicy::default());
    second.number = 2;
    let d = Dispatcher::start(
        vec![
            loaded(Arc::new(one), "one", DeliveryPolicy::default()),
            second,
        ],
        8,
        None,
    );
    d.accept(vec![txn("u", "t1")], Backpressure::Wait)
        .await
        .unwrap();
    began.notified().await;
    d.shutdown().await;
    assert!(
        saw.load(Ordering::SeqCst),
        "driver 2 was told to stop only after driver 1 finished"
    );
    assert_eq!(*deinits.lock(), [1, 2]);
}

/// A reload while a user has transactions left in the spool: the new lane delivers
/// what the old one held (older) before it reads back the rest, so the user's order
/// holds across the reload.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_keeps_a_users_order_with_transactions_left_in_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(&dir);
    let old = Arc::new(Script::default());
    old.fail.lock().insert("a1".into(), 1000);
    let mut args =
        mailpush_core::DriverArgs::parse("retry=200ms,200ms,200ms,200ms,200ms breaker_min=1000");
    let policy = DeliveryPolicy::from_args(&mut args).unwrap();
    let d = Dispatcher::start_with_spool(
        vec![loaded(old.clone(), "old", policy.clone())],
        4,
        None,
        Some(spool.clone() as Arc<dyn Spool>),
    );
    d.accept(vec![txn("a", "a1")], Backpressure::Refuse)
        .await
        .unwrap();
    old.wait_calls(1).await;
    for i in 2..=8 {
        d.accept(vec![txn("a", &format!("a{i}"))], Backpressure::Refuse)
            .await
            .unwrap();
    }
    let new = Arc::new(Script::default());
    d.reconfigure(vec![loaded(new.clone(), "new", policy)])
        .await;
    let ok = || new.succeeded();
    assert!(
        eventually(|| ok().len() >= 8).await,
        "delivered: {:?}",
        ok()
    );
    let expected: Vec<String> = (1..=8).map(|i| format!("a{i}")).collect();
    assert_eq!(ok(), expected);
    d.shutdown().await;
    assert!(spool.pending().unwrap().is_empty());
}

/// A tenant handler-like driver: one group per domain (2 at once each); `a.test`'s
/// endpoint circuit is open until `open` is set (its deliveries are deferred).
#[derive(Default)]
struct Tenants {
    open: AtomicBool,
    delivered: Mutex<Vec<String>>,
}

#[async_trait]
impl Driver for Tenants {
    async fn begin_txn(&self, txn: &Arc<Transaction>) -> Result<Begin, Failure> {
        if txn.user.ends_with("@a.test") && !self.open.load(Ordering::SeqCst) {
            return Err(Failure {
                reason: "a.test: circuit open".into(),
                retryable: true,
                retry_after: Some(Duration::from_millis(100)),
                deferred: true,
            });
        }
        self.delivered.lock().push(txn.id.clone());
        Ok(Begin::Join {
            events: EventSet::default(),
            txn: Box::new(Done),
        })
    }

    fn concurrency(&self) -> usize {
        4
    }

    fn share(&self, txn: &Transaction) -> Option<(String, usize)> {
        txn.user.split_once('@').map(|(_, d)| (d.to_string(), 2))
    }
}

/// The same for a tenant: many users of one tenant, all deferred behind its open
/// circuit, never fill the shared lane's room; other tenants flow on.
#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_behind_an_open_circuit_does_not_hold_back_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(&dir);
    let driver = Arc::new(Tenants::default());
    let d = Dispatcher::start_with_spool(
        vec![loaded(driver.clone(), "t", DeliveryPolicy::default())],
        8,
        None,
        Some(spool.clone() as Arc<dyn Spool>),
    );
    for i in 0..20 {
        d.accept(
            vec![txn(&format!("u{i}@a.test"), &format!("a{i}"))],
            Backpressure::Refuse,
        )
        .await
        .unwrap();
    }
    for i in 0..3 {
        d.accept(
            vec![txn(&format!("u{i}@b.test"), &format!("b{i}"))],
            Backpressure::Refuse,
        )
        .await
        .unwrap();
    }
    let count = |prefix: char| {
        driver
            .delivered
            .lock()
            .iter()
            .filter(|id| id.starts_with(prefix))
            .count()
    };
    assert!(
        eventually(|| count('b') >= 3).await,
        "b.test's transactions delivered while a.test's circuit is open"
    );
    assert_eq!(count('a'), 0);
    driver.open.store(true, Ordering::SeqCst);
    assert!(
        eventually(|| count('a') >= 20).await,
        "a.test's transactions delivered once its circuit closed"
    );
    d.shutdown().await;
    let mut ids = driver.delivered.lock().clone();
    assert_eq!(ids.len(), 23, "{ids:?}");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 23, "each once");
    assert!(spool.pending().unwrap().is_empty());
}

/// Delivered once (`mailpush send`'s policy), a transaction an open endpoint circuit
/// refuses fails at once like any refused delivery, with the circuit's reason: it does
/// not wait out the circuit's open time (which, per transaction, made a `send` to a
/// dead endpoint take minutes).
#[tokio::test(flavor = "multi_thread")]
async fn delivered_once_an_open_circuit_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(&dir);
    let driver = Arc::new(Tenants::default());
    let d = Dispatcher::start_with_spool(
        vec![loaded(
            driver.clone(),
            "t",
            DeliveryPolicy::default().once(),
        )],
        8,
        None,
        Some(spool.clone() as Arc<dyn Spool>),
    );
    for i in 0..5 {
        d.accept(
            vec![txn(&format!("u{i}@a.test"), &format!("a{i}"))],
            Backpressure::Refuse,
        )
        .await
        .unwrap();
    }
    assert!(
        eventually(|| spool.dead_letters(Some(1)).unwrap().len() == 5).await,
        "each refused transaction failed (a dead letter) without waiting for the circuit"
    );
    d.shutdown().await;
    let dead = spool.dead_letters(Some(1)).unwrap();
    assert!(
        dead.iter()
            .all(|l| l.attempts.len() == 1 && l.attempts[0].error.contains("circuit open")),
        "{:?}",
        dead.iter().map(|l| &l.attempts).collect::<Vec<_>>()
    );
    assert!(driver.delivered.lock().is_empty());
}

/// A driver all of whose deliveries an open endpoint circuit defers, for ten minutes.
struct Deferring;

#[async_trait]
impl Driver for Deferring {
    async fn begin_txn(&self, _txn: &Arc<Transaction>) -> Result<Begin, Failure> {
        Err(Failure {
            reason: "circuit open".into(),
            retryable: true,
            retry_after: Some(Duration::from_secs(600)),
            deferred: true,
        })
    }
}

/// A lane whose room and queue (4 each) are full of deferred transactions, and a
/// replayed dead letter (`mailpush dlq replay`) waiting for room in that queue.
async fn a_replay_waiting_for_room(
    spool: &Arc<SqliteSpool>,
) -> (
    Arc<Dispatcher>,
    tokio::task::JoinHandle<Result<usize, crate::spool::SpoolError>>,
) {
    let d = Arc::new(Dispatcher::start_with_spool(
        vec![loaded(
            Arc::new(Deferring),
            "deferring",
            DeliveryPolicy::default(),
        )],
        4,
        None,
        Some(spool.clone() as Arc<dyn Spool>),
    ));
    let dead = txn("r", "replayed");
    spool.append(std::slice::from_ref(&dead), &[1]).unwrap();
    spool.dead_letter(&dead, 1, &[]).unwrap();
    for i in 0..16 {
        d.accept(
            vec![txn(&format!("u{i}"), &format!("t{i}"))],
            Backpressure::Refuse,
        )
        .await
        .unwrap();
    }
    assert!(
        eventually(|| d.reports()[0].queued == 4).await,
        "the queue fills: {:?}",
        d.reports()[0]
    );
    assert_eq!(spool.replay(None, Some(1)).unwrap(), 1);
    let mut replaying = {
        let d = d.clone();
        tokio::spawn(async move { d.take_replays().await })
    };
    // It waits for room (nothing frees any: every delivery is deferred for minutes).
    assert!(
        tokio::time::timeout(Duration::from_secs(1), &mut replaying)
            .await
            .is_err(),
        "the replay waits for room in the queue"
    );
    (d, replaying)
}

/// A stop while a replayed dead letter waits for room in a full queue: the wait gives up
/// (the dead letter stays owed in the spool, for the next start) rather than keep the
/// lane from finishing — the stop hung for good, a core spinning.
#[tokio::test(flavor = "multi_thread")]
async fn a_stop_does_not_wait_for_a_replay_into_a_full_queue() {
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(&dir);
    let (d, replaying) = a_replay_waiting_for_room(&spool).await;
    let stopped = tokio::time::timeout(Duration::from_secs(20), d.shutdown_shared()).await;
    assert!(stopped.is_ok(), "the stop finished");
    let taken = tokio::time::timeout(Duration::from_secs(20), replaying).await;
    assert!(matches!(taken, Ok(Ok(Ok(1)))), "{taken:?}");
    let owed: Vec<String> = spool
        .pending()
        .unwrap()
        .into_iter()
        .map(|p| p.txn.id)
        .collect();
    assert!(owed.contains(&"replayed".to_string()), "{owed:?}");
}

/// A reload replacing that driver: the replay goes to the new lane, which delivers it.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_hands_a_waiting_replay_to_the_new_driver() {
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(&dir);
    let (d, replaying) = a_replay_waiting_for_room(&spool).await;
    let new = Arc::new(Script::default());
    let reloaded = tokio::time::timeout(
        Duration::from_secs(20),
        d.reconfigure(vec![loaded(new.clone(), "new", DeliveryPolicy::default())]),
    )
    .await;
    assert!(reloaded.is_ok(), "the reload finished");
    let taken = tokio::time::timeout(Duration::from_secs(20), replaying).await;
    assert!(matches!(taken, Ok(Ok(Ok(1)))), "{taken:?}");
    assert!(
        eventually(|| new.succeeded().contains(&"replayed".to_string())).await,
        "delivered: {:?}",
        new.succeeded()
    );
    assert!(
        eventually(|| new.succeeded().len() == 17).await,
        "{:?}",
        new.succeeded()
    );
    d.shutdown_shared().await;
}

/// A reload that replaces a busy driver: the old lane only finishes the delivery it has
/// in flight, and what it had queued goes to the new driver before a transaction that
/// arrived during the reload, so the user's order holds (and the reload does not wait
/// for the old driver to work through its queue, nor deliver it through the old one).
/// With a room of 64 the user holds all of it; with 16 the fifth waits in the spool
/// (over the user's share), and the later ones with it.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_hands_the_queue_to_the_new_driver_in_order() {
    for room in [64, 16] {
        let dir = tempfile::tempdir().unwrap();
        let spool = spool(&dir);
        let (gate, old) = gated();
        let policy = DeliveryPolicy::default();
        let d = Arc::new(Dispatcher::start_with_spool(
            vec![loaded(old.clone(), "old", policy.clone())],
            room,
            None,
            Some(spool.clone() as Arc<dyn Spool>),
        ));
        for i in 1..=5 {
            d.accept(vec![txn("a", &format!("a{i}"))], Backpressure::Refuse)
                .await
                .unwrap();
        }
        assert!(eventually(|| old.running.load(Ordering::SeqCst) == 1).await);
        let before = d.fingerprint();
        let new = Arc::new(Script::default());
        let reloading = {
            let (d, new) = (d.clone(), new.clone());
            tokio::spawn(async move { d.reconfigure(vec![loaded(new, "new", policy)]).await })
        };
        // The new lane is in place; the old one still has a1 in flight.
        assert!(eventually(|| d.fingerprint() != before).await);
        d.accept(vec![txn("a", "a6")], Backpressure::Refuse)
            .await
            .unwrap();
        gate.add_permits(1);
        tokio::time::timeout(Duration::from_secs(20), reloading)
            .await
            .expect("the reload waits for the delivery in flight only")
            .unwrap();
        assert!(
            eventually(|| new.succeeded().len() >= 5).await,
            "room {room}: {:?}",
            new.succeeded()
        );
        assert_eq!(old.succeeded(), ["a1"], "room {room}");
        assert_eq!(
            new.succeeded(),
            ["a2", "a3", "a4", "a5", "a6"],
            "room {room}"
        );
        d.shutdown_shared().await;
        assert!(spool.pending().unwrap().is_empty(), "room {room}");
    }
}

/// A reload that replaces two drivers finishes their old lanes at once: driver 1's old
/// lane with a delivery in flight that does not end does not keep driver 2's new lane
/// waiting for its hand-over (it was finished after driver 1's, in number order).
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_does_not_hold_one_driver_behind_another_finishing() {
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(&dir);
    let (gate, old1) = gated();
    let old2 = Arc::new(Script::default());
    let policy = DeliveryPolicy::default();
    let numbered = |driver: Arc<Script>, fingerprint: &str, number: u32| {
        let mut l = loaded(driver, fingerprint, policy.clone());
        l.number = number;
        l
    };
    let d = Arc::new(Dispatcher::start_with_spool(
        vec![
            numbered(old1.clone(), "old1", 1),
            numbered(old2.clone(), "old2", 2),
        ],
        64,
        None,
        Some(spool.clone() as Arc<dyn Spool>),
    ));
    d.accept(vec![txn("a", "a1")], Backpressure::Refuse)
        .await
        .unwrap();
    assert!(eventually(|| old1.running.load(Ordering::SeqCst) == 1).await);
    assert!(eventually(|| old2.succeeded() == ["a1"]).await);
    let (new1, new2) = (Arc::new(Script::default()), Arc::new(Script::default()));
    let before = d.fingerprint();
    let reloading = {
        let d = d.clone();
        let drivers = vec![
            numbered(new1.clone(), "new1", 1),
            numbered(new2.clone(), "new2", 2),
        ];
        tokio::spawn(async move { d.reconfigure(drivers).await })
    };
    assert!(eventually(|| d.fingerprint() != before).await);
    d.accept(vec![txn("b", "b1")], Backpressure::Refuse)
        .await
        .unwrap();
    assert!(
        eventually(|| new2.succeeded() == ["b1"]).await,
        "driver 2's new lane delivers while driver 1's old one is still finishing: {:?}",
        new2.succeeded()
    );
    assert!(!reloading.is_finished());
    assert!(
        new1.succeeded().is_empty(),
        "b1 waits behind driver 1's hand-over"
    );
    gate.add_permits(1);
    tokio::time::timeout(Duration::from_secs(20), reloading)
        .await
        .expect("the reload ends once driver 1's delivery in flight has")
        .unwrap();
    assert!(eventually(|| new1.succeeded() == ["b1"]).await);
    assert_eq!(old1.succeeded(), ["a1"]);
    d.shutdown_shared().await;
    assert!(spool.pending().unwrap().is_empty());
}

/// A reload that replaces a driver hands what the old lane still held (here a
/// transaction waiting an hour for its retry) to the new lane, which delivers it now.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_hands_held_transactions_to_the_new_driver() {
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(&dir);
    let outcomes = Arc::new(Outcomes::default());
    let (d, policy) = holding_a_retry(spool.clone(), Some(outcomes.clone())).await;
    let new = Arc::new(Script::default());
    let r = d
        .reconfigure(vec![loaded(new.clone(), "new", policy)])
        .await;
    assert_eq!((r.started, r.stopped), (vec![1], vec![1]));
    // The new lane delivers it, long before the hour.
    outcomes.wait_for(1).await;
    assert_eq!(
        outcomes.seen.lock()[0],
        ("r1".to_string(), Outcome::Delivered)
    );
    assert_eq!(new.calls.lock()[0].id, "r1");
    d.shutdown().await;
    assert!(spool.pending().unwrap().is_empty());
}

/// What the old lane knew of a transaction it hands on goes with it: the new lane
/// continues its retry schedule (here `retry=1h`, one retry: the new lane's failure is
/// the second and last attempt) rather than starting it over at each reload.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_carries_the_attempts_of_what_it_hands_on() {
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(&dir);
    let outcomes = Arc::new(Outcomes::default());
    let (d, policy) = holding_a_retry(spool.clone(), Some(outcomes.clone())).await;
    let new = Arc::new(Script::default());
    new.fail.lock().insert("r1".into(), 1);
    d.reconfigure(vec![loaded(new.clone(), "new", policy)])
        .await;
    tokio::time::timeout(Duration::from_secs(20), outcomes.wait_for(1))
        .await
        .expect("the second attempt failed and ended the schedule (not a new hour's wait)");
    assert!(
        matches!(outcomes.seen.lock()[0], (ref id, Outcome::Failed(_)) if id == "r1"),
        "{:?}",
        outcomes.seen.lock()
    );
    d.shutdown().await;
    let dead = spool.dead_letters(None).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts.len(), 2, "{:?}", dead[0].attempts);
}

/// The SQLite spool, recording what lanes let go ([`Spool::abandon`]).
struct Abandons {
    inner: Arc<SqliteSpool>,
    abandoned: Mutex<Vec<(String, u32)>>,
}

impl Spool for Abandons {
    fn append(
        &self,
        txns: &[Transaction],
        drivers: &[u32],
    ) -> Result<Vec<Option<i64>>, crate::spool::SpoolError> {
        self.inner.append(txns, drivers)
    }
    fn complete(&self, txn_id: &str, driver: u32) -> Result<(), crate::spool::SpoolError> {
        self.inner.complete(txn_id, driver)
    }
    fn dead_letter(
        &self,
        txn: &Transaction,
        driver: u32,
        attempts: &[crate::spool::Attempt],
    ) -> Result<(), crate::spool::SpoolError> {
        self.inner.dead_letter(txn, driver, attempts)
    }
    fn pending(&self) -> Result<Vec<crate::spool::Pending>, crate::spool::SpoolError> {
        self.inner.pending()
    }
    fn position(&self, txn_id: &str) -> Result<Option<i64>, crate::spool::SpoolError> {
        self.inner.position(txn_id)
    }
    fn owed_from(
        &self,
        driver: u32,
        from: i64,
        limit: usize,
    ) -> Result<Vec<crate::spool::Owed>, crate::spool::SpoolError> {
        self.inner.owed_from(driver, from, limit)
    }
    fn owed_at(
        &self,
        driver: u32,
        position: i64,
    ) -> Result<Option<crate::spool::Owed>, crate::spool::SpoolError> {
        self.inner.owed_at(driver, position)
    }
    fn dead_letters(
        &self,
        driver: Option<u32>,
    ) -> Result<Vec<crate::spool::DeadLetter>, crate::spool::SpoolError> {
        self.inner.dead_letters(driver)
    }
    fn replay(
        &self,
        id: Option<i64>,
        driver: Option<u32>,
    ) -> Result<usize, crate::spool::SpoolError> {
        self.inner.replay(id, driver)
    }
    fn take_replayed(&self) -> Result<Vec<crate::spool::Pending>, crate::spool::SpoolError> {
        self.inner.take_replayed()
    }
    fn reset_replays(&self) -> Result<(), crate::spool::SpoolError> {
        self.inner.reset_replays()
    }
    fn purge(
        &self,
        id: Option<i64>,
        driver: Option<u32>,
    ) -> Result<usize, crate::spool::SpoolError> {
        self.inner.purge(id, driver)
    }
    fn abandon(&self, txn: &Transaction, driver: u32) {
        self.abandoned.lock().push((txn.id.clone(), driver));
    }
}

/// A reload that removes a driver lets go what its lane still held (in cluster mode
/// this releases the copy's acknowledgement handle, which a hand-over of its partition
/// would otherwise wait for); a reload that replaces it hands it on and lets nothing go.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_removes_a_driver_lets_its_held_transactions_go() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(Abandons {
        inner: spool(&dir),
        abandoned: Mutex::default(),
    });
    let (d, _) = holding_a_retry(spool.clone(), None).await;
    // Replaced: handed on, nothing let go. (Two retries: after the new lane's failure,
    // its second attempt, it waits an hour for the third.)
    let new = Arc::new(Script::default());
    new.fail.lock().insert("r1".into(), 1);
    let policy =
        DeliveryPolicy::from_args(&mut mailpush_core::DriverArgs::parse("retry=1h,1h")).unwrap();
    let r = d
        .reconfigure(vec![loaded(new.clone(), "new", policy)])
        .await;
    assert_eq!((r.started, r.stopped), (vec![1], vec![1]));
    new.wait_calls(1).await;
    assert!(spool.abandoned.lock().is_empty());
    // Removed: the transaction it held (waiting an hour for its retry) is let go.
    let r = d.reconfigure(Vec::new()).await;
    assert_eq!((r.started, r.stopped), (vec![], vec![1]));
    assert_eq!(*spool.abandoned.lock(), [("r1".to_string(), 1)]);
    d.shutdown().await;
}

/// A driver whose background load failed: every transaction fails retryably.
struct FailedLoad(AtomicUsize);

#[async_trait]
impl Driver for FailedLoad {
    async fn begin_txn(&self, _txn: &Arc<Transaction>) -> Result<Begin, Failure> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Err(Failure::retryable(
            "the driver failed to load: init timed out",
        ))
    }

    fn loading(&self) -> Option<mailpush_core::Loading> {
        Some(mailpush_core::Loading::Failed("init timed out".into()))
    }
}

/// A reload replaces a driver whose background load failed even when nothing in its
/// config line or file changed (a passing failure, such as an init timeout): the newly
/// loaded driver delivers what the failed one kept.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_replaces_a_failed_load_with_an_unchanged_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(&dir);
    let failed = Arc::new(FailedLoad(AtomicUsize::new(0)));
    let mut args = mailpush_core::DriverArgs::parse("retry=1h");
    let policy = DeliveryPolicy::from_args(&mut args).unwrap();
    let outcomes = Arc::new(Outcomes::default());
    let d = Dispatcher::start_with_spool(
        vec![loaded(failed.clone(), "same", policy.clone())],
        8,
        Some(outcomes.clone()),
        Some(spool.clone() as Arc<dyn Spool>),
    );
    assert!(d.reports()[0].load_failed);
    d.accept(vec![txn("u", "k1")], Backpressure::Refuse)
        .await
        .unwrap();
    // Held for a retry an hour away, undelivered. Reloaded with the same fingerprint:
    let loaded_now = Arc::new(Script::default());
    let r = d
        .reconfigure(vec![loaded(loaded_now.clone(), "same", policy)])
        .await;
    assert_eq!((r.kept, r.started), (vec![], vec![1]), "replaced, not kept");
    outcomes.wait_for(1).await;
    assert_eq!(
        outcomes.seen.lock()[0],
        ("k1".to_string(), Outcome::Delivered)
    );
    assert!(!d.reports()[0].load_failed);
    d.shutdown().await;
}
