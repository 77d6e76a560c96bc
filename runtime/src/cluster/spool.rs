//! The [`Spool`] of cluster mode: JetStream stores the transactions; the consumers'
//! acknowledgements are the drivers' progress.
//!
//! The spool's calls are synchronous (the SQLite spool's writer thread answers them);
//! here an async worker on the daemon's runtime does the NATS work: `append` waits for
//! its answer (from a blocking thread), `complete` and `dead_letter` only queue work.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::message::{Acker, PublishMessage};
use async_nats::jetstream::Context;
use mailpush_core::Transaction;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use super::nats::{storage, Names};
use super::{partition_of, Ownership};
use crate::spool::{Attempt, DeadLetter, Gate, Owed, Pending, Spool, SpoolError};

/// How long ingest keeps trying to store a batch (NATS unreachable, a leader election)
/// before it answers 503.
pub const PUBLISH_DEADLINE: Duration = Duration::from_secs(8);

/// Most acknowledged stream sequences remembered per (driver, partition) above the
/// consumer's ack floor (older ones are forgotten: after a move they may be delivered
/// again).
pub const DONE_KEPT: usize = 20_000;

/// A message being delivered: its partition, stream sequence and acknowledgement handle,
/// and which copy of the transaction the lane holds (its address: a copy read before the
/// partition left and came back is another).
struct Out {
    partition: u32,
    seq: u64,
    acker: Acker,
    item: usize,
}

/// What [`Acks::insert`] found.
pub enum Arrival {
    /// New here: feed it.
    Fresh,
    /// A lane holds it already (a reset sent it again): its handle was replaced.
    Held,
    /// Delivered here already: acknowledge it again, do not feed it.
    Done(Box<Acker>),
    /// Read by a feeder of an ownership of the partition that has ended (its feeder
    /// was told to stop): not this feeder's to feed or acknowledge.
    Stale,
}

/// The identity of the copy of a transaction a lane holds.
pub fn item_of(txn: &Transaction) -> usize {
    txn as *const Transaction as usize
}

/// What this node holds of the consumers it reads:
///
/// - the acknowledgement handles of the messages being delivered, by (driver,
///   transaction id);
/// - per (driver, partition), the stream sequences acknowledged above the consumer's ack
///   floor. A consumer reset (a takeover, or recovering messages lost on a broken
///   connection) delivers everything above the floor again, acknowledged or not: these
///   are skipped then, and handed to the next owner when a partition moves.
#[derive(Default)]
pub struct Acks {
    /// By driver, then transaction id (looked up by `&str`: no allocation per check).
    out: Mutex<HashMap<u32, HashMap<String, Out>>>,
    done: Mutex<HashMap<(u32, u32), BTreeSet<u64>>>,
    /// Per partition, which ownership of it feeders may feed for: each ownership that
    /// ends ([`Acks::fence`], [`Acks::hand_over`]) moves it on, so a feeder still running
    /// from an earlier one (stopping, but not yet) cannot add copies that the lanes
    /// would take for the current ownership's. Changed and checked under `out`'s lock.
    generation: Mutex<HashMap<u32, u64>>,
    /// Like `out`, the copies this node still had of a partition when it stopped
    /// delivering it ([`Acks::hand_over`]): the gate no longer admits them, but a
    /// delivery of one that was already running may still finish, and then counts as
    /// done (skipped when this node reads the partition again). Each goes when its copy
    /// finishes or is let go.
    retired: Mutex<HashMap<u32, HashMap<String, Out>>>,
}

impl Acks {
    /// Which ownership of partition `p` feeders started now feed for.
    pub fn generation(&self, p: u32) -> u64 {
        let _out = self.out.lock();
        self.generation.lock().get(&p).copied().unwrap_or(0)
    }

    /// The current ownership of `p` ends: feeders started before it add nothing more.
    pub fn fence(&self, p: u32) {
        let _out = self.out.lock();
        *self.generation.lock().entry(p).or_default() += 1;
    }

    /// A message arrived for a lane (copy `item` of its transaction), read by a feeder of
    /// ownership `generation` of its partition. Checked and recorded under one lock with
    /// [`Acks::take`], so that a delivery finishing at the same moment is either still
    /// held or already done, never neither; and with [`Acks::fence`], so that nothing a
    /// feeder of an ended ownership reads is taken for the current one's.
    #[allow(clippy::too_many_arguments)]
    pub fn insert(
        &self,
        driver: u32,
        txn: &str,
        partition: u32,
        seq: u64,
        acker: Acker,
        item: usize,
        generation: u64,
    ) -> Arrival {
        let mut out = self.out.lock();
        if self.generation.lock().get(&partition).copied().unwrap_or(0) != generation {
            return Arrival::Stale;
        }
        if self.is_done(driver, partition, seq) {
            return Arrival::Done(Box::new(acker));
        }
        let mine = out.entry(driver).or_default();
        match mine.get_mut(txn) {
            Some(o) => {
                o.seq = seq;
                o.acker = acker;
                Arrival::Held
            }
            None => {
                mine.insert(
                    txn.to_string(),
                    Out {
                        partition,
                        seq,
                        acker,
                        item,
                    },
                );
                Arrival::Fresh
            }
        }
    }

    /// Whether this copy of `txn` is the one being delivered for `driver`.
    pub fn holds(&self, driver: u32, txn: &Transaction) -> bool {
        self.out
            .lock()
            .get(&driver)
            .and_then(|m| m.get(&txn.id))
            .is_some_and(|o| o.item == item_of(txn))
    }

    /// The handle to acknowledge `txn` with; its sequence counts as done. A delivery
    /// that was running when its partition stopped here finishes with its retired
    /// handle, unless a copy read since is held (then that one is done).
    fn take(&self, driver: u32, txn: &str) -> Option<Acker> {
        let mut out = self.out.lock();
        let retired = self
            .retired
            .lock()
            .get_mut(&driver)
            .and_then(|m| m.remove(txn));
        let o = out
            .get_mut(&driver)
            .and_then(|m| m.remove(txn))
            .or(retired)?;
        self.mark_done(driver, o.partition, o.seq);
        Some(o.acker)
    }

    /// The handle of `txn`, not yet counted as done (a dead letter: done once stored).
    /// A retired copy given up on does not count: the partition's owner decides.
    fn take_pending(&self, driver: u32, txn: &str) -> Option<(u32, u64, Acker)> {
        let mut out = self.out.lock();
        if let Some(m) = self.retired.lock().get_mut(&driver) {
            m.remove(txn);
        }
        let o = out.get_mut(&driver)?.remove(txn)?;
        Some((o.partition, o.seq, o.acker))
    }

    fn mark_done(&self, driver: u32, partition: u32, seq: u64) {
        let mut done = self.done.lock();
        let set = done.entry((driver, partition)).or_default();
        set.insert(seq);
        while set.len() > DONE_KEPT {
            set.pop_first();
        }
    }

    /// This copy of `txn` is let go without being delivered here (its partition moved,
    /// or its driver is gone).
    pub fn abandon(&self, driver: u32, txn: &Transaction) {
        let mut out = self.out.lock();
        let mut retired = self.retired.lock();
        for mine in [out.get_mut(&driver), retired.get_mut(&driver)]
            .into_iter()
            .flatten()
        {
            if mine.get(&txn.id).is_some_and(|o| o.item == item_of(txn)) {
                mine.remove(&txn.id);
            }
        }
    }

    /// Whether `seq` of (driver, partition) was acknowledged here.
    pub fn is_done(&self, driver: u32, partition: u32, seq: u64) -> bool {
        self.done
            .lock()
            .get(&(driver, partition))
            .is_some_and(|s| s.contains(&seq))
    }

    /// The consumer's ack floor moved to `floor`: what is at or below it is never
    /// delivered again.
    pub fn floor(&self, driver: u32, partition: u32, floor: u64) {
        if let Some(set) = self.done.lock().get_mut(&(driver, partition)) {
            *set = set.split_off(&(floor + 1));
        }
    }

    /// Messages of partition `p` still being delivered, or held by a lane: the current
    /// copies and the retired ones (a delivery that was running when the partition
    /// started over here may still finish; a hand-over waits for it too).
    pub fn in_flight(&self, p: u32) -> usize {
        let out = self.out.lock();
        let retired = self.retired.lock();
        out.values()
            .chain(retired.values())
            .flat_map(HashMap::values)
            .filter(|o| o.partition == p)
            .count()
    }

    /// Messages of (driver, partition) being delivered.
    pub fn in_flight_of(&self, driver: u32, p: u32) -> usize {
        self.out
            .lock()
            .get(&driver)
            .map_or(0, |m| m.values().filter(|o| o.partition == p).count())
    }

    /// Forgets partition `p` (it moved away, or starts over), returning what was
    /// acknowledged above the floor per driver, for its next owner. Its copies in the
    /// lanes are retired (not admitted any more; one still being delivered counts as
    /// done when it finishes), and its feeders add nothing more.
    pub fn hand_over(&self, p: u32) -> BTreeMap<u32, Vec<u64>> {
        {
            let mut out = self.out.lock();
            *self.generation.lock().entry(p).or_default() += 1;
            let mut retired = self.retired.lock();
            for (driver, mine) in out.iter_mut() {
                let gone: Vec<String> = mine
                    .iter()
                    .filter(|(_, o)| o.partition == p)
                    .map(|(id, _)| id.clone())
                    .collect();
                let to = retired.entry(*driver).or_default();
                for id in gone {
                    if let Some(o) = mine.remove(&id) {
                        to.insert(id, o);
                    }
                }
            }
        }
        let mut done = self.done.lock();
        let drivers: Vec<(u32, u32)> = done.keys().filter(|(_, q)| *q == p).copied().collect();
        drivers
            .into_iter()
            .filter_map(|k| done.remove(&k).map(|s| (k.0, s.into_iter().collect())))
            .collect()
    }

    /// What the previous owner of `p` acknowledged above the floor (from its hand-over).
    pub fn take_over(&self, p: u32, done: BTreeMap<u32, Vec<u64>>) {
        let mut mine = self.done.lock();
        for (d, seqs) in done {
            mine.entry((d, p)).or_default().extend(seqs);
        }
    }
}

enum Work {
    Append {
        txns: Vec<Transaction>,
        /// Their stored form (the messages' payloads).
        payloads: Vec<String>,
        reply: oneshot::Sender<Result<Vec<Option<i64>>, SpoolError>>,
    },
    Ack(Acker),
    DeadLetter {
        txn: Transaction,
        driver: u32,
        attempts: Vec<Attempt>,
        /// Partition, stream sequence and handle of its message.
        message: Option<(u32, u64, Acker)>,
    },
}

/// JetStream as the spool.
pub struct JetStreamSpool {
    work: mpsc::UnboundedSender<Work>,
    /// For the server's `max_payload`, the most bytes one message may take (kept up to
    /// date across reconnects by the client).
    client: async_nats::Client,
    acks: Arc<Acks>,
    ownership: Arc<Ownership>,
}

impl JetStreamSpool {
    /// Starts the worker on the current runtime; `client` tells the server's `max_payload`.
    pub fn start(
        js: Context,
        names: Names,
        ownership: Arc<Ownership>,
        acks: Arc<Acks>,
        client: async_nats::Client,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(worker(js, names, ownership.partitions(), acks.clone(), rx));
        Arc::new(JetStreamSpool {
            work: tx,
            client,
            acks,
            ownership,
        })
    }

    fn send(&self, w: Work) -> Result<(), SpoolError> {
        self.work
            .send(w)
            .map_err(|_| SpoolError::Storage("the cluster worker has stopped".into()))
    }
}

async fn worker(
    js: Context,
    names: Names,
    partitions: u32,
    acks: Arc<Acks>,
    mut rx: mpsc::UnboundedReceiver<Work>,
) {
    while let Some(w) = rx.recv().await {
        match w {
            Work::Append {
                txns,
                payloads,
                reply,
            } => {
                // Concurrently with other work: one batch must not hold back acks.
                let (js, names) = (js.clone(), names.clone());
                tokio::spawn(async move {
                    let _ = reply.send(publish(&js, &names, partitions, &txns, payloads).await);
                });
            }
            // Not awaited here: while NATS reconnects, an acknowledgement waits for room
            // in the client's queue, and appends behind it must still get their answer
            // (a 503) in time.
            Work::Ack(acker) => {
                tokio::spawn(acknowledge(acker));
            }
            Work::DeadLetter {
                txn,
                driver,
                attempts,
                message,
            } => {
                let (js, names, acks) = (js.clone(), names.clone(), acks.clone());
                tokio::spawn(async move {
                    super::dlq::record(&js, &names, &txn, driver, &attempts).await;
                    // Done once stored (not before: a move meanwhile delivers it again).
                    if let Some((partition, seq, acker)) = message {
                        acks.mark_done(driver, partition, seq);
                        // (Not sent: the transaction comes again after a move, and may
                        // become a second dead letter — at-least-once, as deliveries.)
                        acknowledge(acker).await;
                    }
                });
            }
        }
    }
}

/// How long an acknowledgement of a delivered transaction may wait to be sent (NATS
/// reconnecting) before it is given up: the transaction is then delivered again after
/// its partition moves (at-least-once).
pub(crate) const ACK_DEADLINE: Duration = Duration::from_secs(10);

/// Sends an acknowledgement within [`ACK_DEADLINE`]; says so when it was not sent.
async fn acknowledge(acker: Acker) {
    match tokio::time::timeout(ACK_DEADLINE, acker.ack()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("NATS: an acknowledgement was not sent ({e}); the transaction may be delivered again after a move"),
        Err(_) => tracing::warn!("NATS: an acknowledgement was not sent within {} s; the transaction may be delivered again after a move", ACK_DEADLINE.as_secs()),
    }
}

/// The most publications one batch has awaiting their acknowledgement at once. The
/// JetStream context lets 5000 be awaited in all (its other users included: the
/// buckets, dead letters) and makes one more wait for a free one: a batch that held
/// them all would wait for itself forever.
const PUBLISH_CHUNK: usize = 500;

/// How many batches publish at once ([`PUBLISH_CHUNK`] each): together they leave
/// half of the context's 5000 to the rest.
static PUBLISHING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(5);

/// Room for a message's headers (`Nats-Msg-Id` with the longest id a transaction is
/// likely to have): what a transaction may take is `max_payload` less this.
pub const HEADER_ROOM: u64 = 1024;

/// A transaction's message size as NATS counts it against `max_payload`: its payload and
/// its headers (`NATS/1.0`, `Nats-Msg-Id: ID`, their line ends), rounded up.
fn message_size(id: &str, payload: usize) -> u64 {
    (payload + id.len() + HEADER_ROOM_MIN) as u64
}

/// What a transaction's message leaves of `max_payload` besides its id, for headers:
/// its own (`NATS/1.0`, `Nats-Msg-Id`), and room for a dead letter's raw form, which
/// stores the same bytes with a longer id, the driver and the time as headers
/// ([`super::dlq`]).
pub const HEADER_ROOM_MIN: usize = 256;

/// Publishes a batch (each transaction on its partition's subject, its id as the
/// de-duplication id) and waits until JetStream stored all of it; retries what failed
/// with the same ids until [`PUBLISH_DEADLINE`], which bounds every wait (for a turn,
/// to send, for an acknowledgement). `None` for an id stored before.
async fn publish(
    js: &Context,
    names: &Names,
    partitions: u32,
    txns: &[Transaction],
    payloads: Vec<String>,
) -> Result<Vec<Option<i64>>, SpoolError> {
    // (Shared by the attempts: a retry copies nothing.)
    let payloads: Vec<bytes::Bytes> = payloads.into_iter().map(bytes::Bytes::from).collect();
    let deadline = tokio::time::Instant::now() + PUBLISH_DEADLINE;
    let late = || storage("cannot store transactions", "NATS did not answer in time");
    let _turn = tokio::time::timeout_at(deadline, PUBLISHING.acquire())
        .await
        .map_err(|_| late())?
        .map_err(|e| storage("cannot store transactions", e))?;
    let mut out: Vec<Option<Option<i64>>> = vec![None; txns.len()];
    let mut last_error = String::new();
    let mut pause = Duration::from_millis(50);
    loop {
        let todo: Vec<usize> = (0..txns.len()).filter(|i| out[*i].is_none()).collect();
        for chunk in todo.chunks(PUBLISH_CHUNK) {
            let mut acks = Vec::with_capacity(chunk.len());
            for &i in chunk {
                let t = &txns[i];
                let subject = names.txn_subject(partition_of(&t.user, partitions));
                let msg = PublishMessage::build()
                    .payload(payloads[i].clone())
                    .message_id(&t.id);
                match tokio::time::timeout_at(deadline, js.send_publish(subject, msg)).await {
                    Ok(Ok(ack)) => acks.push((i, ack)),
                    // No retry helps (should the check before sending miss it).
                    Ok(Err(e))
                        if e.kind()
                            == async_nats::jetstream::context::PublishErrorKind::MaxPayloadExceeded =>
                    {
                        return Err(SpoolError::TooLarge {
                            id: t.id.clone(),
                            size: payloads[i].len() as u64,
                            max: js.client().max_payload() as u64,
                        });
                    }
                    Ok(Err(e)) => last_error = e.to_string(),
                    // (Dropping the acknowledgements awaited frees their places.)
                    Err(_) => return Err(late()),
                }
            }
            for (i, ack) in acks {
                match tokio::time::timeout_at(deadline, ack).await {
                    Ok(Ok(a)) => out[i] = Some((!a.duplicate).then_some(a.sequence as i64)),
                    Ok(Err(e)) => last_error = e.to_string(),
                    Err(_) => return Err(late()),
                }
            }
        }
        if out.iter().all(Option::is_some) {
            return Ok(out.into_iter().map(Option::unwrap_or_default).collect());
        }
        if tokio::time::Instant::now() + pause > deadline {
            return Err(storage("cannot store transactions", last_error));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

impl Spool for JetStreamSpool {
    fn append(
        &self,
        txns: &[Transaction],
        _drivers: &[u32],
    ) -> Result<Vec<Option<i64>>, SpoolError> {
        if txns.is_empty() {
            return Ok(Vec::new());
        }
        // NATS refuses a message past its max_payload (headers included), every time:
        // refused here, once.
        let max = self.client.max_payload() as u64;
        let payloads: Vec<String> = txns.iter().map(Transaction::to_json).collect();
        if let Some((t, p)) = txns
            .iter()
            .zip(&payloads)
            .find(|(t, p)| message_size(&t.id, p.len()) > max)
        {
            return Err(SpoolError::TooLarge {
                id: t.id.clone(),
                size: p.len() as u64,
                max,
            });
        }
        let (reply, answer) = oneshot::channel();
        self.send(Work::Append {
            txns: txns.to_vec(),
            payloads,
            reply,
        })?;
        futures::executor::block_on(answer)
            .map_err(|_| SpoolError::Storage("the cluster worker has stopped".into()))?
    }

    fn complete(&self, txn_id: &str, driver: u32) -> Result<(), SpoolError> {
        match self.acks.take(driver, txn_id) {
            Some(acker) => self.send(Work::Ack(acker)),
            None => Ok(()),
        }
    }

    fn abandon(&self, txn: &Transaction, driver: u32) {
        self.acks.abandon(driver, txn);
    }

    fn dead_letter(
        &self,
        txn: &Transaction,
        driver: u32,
        attempts: &[Attempt],
    ) -> Result<(), SpoolError> {
        self.send(Work::DeadLetter {
            txn: txn.clone(),
            driver,
            attempts: attempts.to_vec(),
            message: self.acks.take_pending(driver, &txn.id),
        })
    }

    fn pending(&self) -> Result<Vec<Pending>, SpoolError> {
        Ok(Vec::new())
    }

    fn position(&self, _txn_id: &str) -> Result<Option<i64>, SpoolError> {
        Ok(None)
    }

    fn owed_from(&self, _driver: u32, _from: i64, _limit: usize) -> Result<Vec<Owed>, SpoolError> {
        Ok(Vec::new())
    }

    fn owed_at(&self, _driver: u32, _position: i64) -> Result<Option<Owed>, SpoolError> {
        Ok(None)
    }

    fn dead_letters(&self, _driver: Option<u32>) -> Result<Vec<DeadLetter>, SpoolError> {
        Err(SpoolError::Storage(
            "in cluster mode dead letters live in JetStream: use `mailpush dlq`".into(),
        ))
    }

    fn replay(&self, _id: Option<i64>, _driver: Option<u32>) -> Result<usize, SpoolError> {
        Err(SpoolError::Storage(
            "in cluster mode dead letters live in JetStream: use `mailpush dlq`".into(),
        ))
    }

    fn take_replayed(&self) -> Result<Vec<Pending>, SpoolError> {
        // Replays reach the drivers through their consumers.
        Ok(Vec::new())
    }

    fn purge(&self, _id: Option<i64>, _driver: Option<u32>) -> Result<usize, SpoolError> {
        Err(SpoolError::Storage(
            "in cluster mode dead letters live in JetStream: use `mailpush dlq`".into(),
        ))
    }

    fn flush(&self) -> Result<(), SpoolError> {
        Ok(())
    }

    fn feeds_lanes(&self) -> bool {
        true
    }

    fn gate(&self) -> Option<Arc<dyn Gate>> {
        Some(Arc::new(super::ClusterGate {
            ownership: self.ownership.clone(),
            acks: self.acks.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(id: &str) -> Arc<Transaction> {
        Arc::new(
            Transaction::from_json(&format!(
                r#"{{"id":"{id}","user":"u@x","events":[{{"name":"MailboxCreate","mailbox":"A"}}]}}"#
            ))
            .unwrap(),
        )
    }

    /// An acknowledgement handle that is never used (no server behind it).
    async fn acker() -> Acker {
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("nats://127.0.0.1:1")
            .await
            .unwrap();
        Acker::new(async_nats::jetstream::new(client), None)
    }

    /// A partition that stops here (fenced, or starting over): a feeder of the ended
    /// ownership adds nothing more; the copies the lanes hold are not admitted; one whose
    /// delivery was running and finishes counts as done, so reading the partition again
    /// skips it, while a copy let go comes again.
    #[tokio::test]
    async fn a_partition_that_stops_here_fences_its_feeders_and_retires_its_copies() {
        let acks = Acks::default();
        let (p, d) = (3, 1);
        let (t1, t2) = (txn("t1"), txn("t2"));
        let old = acks.generation(p);
        for (t, seq) in [(&t1, 10), (&t2, 11)] {
            let a = acks.insert(d, &t.id, p, seq, acker().await, item_of(t), old);
            assert!(matches!(a, Arrival::Fresh));
            assert!(acks.holds(d, t));
        }
        let done = acks.hand_over(p);
        assert!(done.is_empty());
        assert!(!acks.holds(d, &t1) && !acks.holds(d, &t2), "copies retired");
        assert_eq!(acks.in_flight(p), 2, "retired copies count until they go");
        // A feeder of the ended ownership that has not stopped yet.
        let t3 = txn("t3");
        let late = acks.insert(d, &t3.id, p, 12, acker().await, item_of(&t3), old);
        assert!(matches!(late, Arrival::Stale));
        // t1 was being delivered and finishes; t2 was queued and is let go.
        assert!(
            acks.take(d, &t1.id).is_some(),
            "its retired handle acknowledges it"
        );
        acks.abandon(d, &t2);
        assert_eq!(acks.in_flight(p), 0);
        // Read again under the next ownership: t1 is skipped, t2 and t3 come again.
        let now = acks.generation(p);
        assert_ne!(now, old);
        let again = |t: &Arc<Transaction>, seq| {
            let t = t.clone();
            let acks = &acks;
            async move {
                let copy = Arc::new((*t).clone());
                acks.insert(d, &copy.id, p, seq, acker().await, item_of(&copy), now)
            }
        };
        assert!(matches!(again(&t1, 10).await, Arrival::Done(_)));
        assert!(matches!(again(&t2, 11).await, Arrival::Fresh));
        assert!(matches!(again(&t3, 12).await, Arrival::Fresh));
        // The retired copy of t2 let go later does not touch the new copy's handle.
        acks.abandon(d, &t2);
        assert_eq!(acks.in_flight_of(d, p), 2);
    }

    /// A retired copy still being delivered when its message is read again: the new copy
    /// waits behind it in the lane; when it finishes, the new copy is the one done (and
    /// no longer admitted: it is not delivered twice).
    #[tokio::test]
    async fn a_retired_delivery_finishing_after_the_reread_completes_the_new_copy() {
        let acks = Acks::default();
        let (p, d) = (0, 1);
        let t1 = txn("t1");
        let g = acks.generation(p);
        acks.insert(d, &t1.id, p, 5, acker().await, item_of(&t1), g);
        acks.hand_over(p);
        let copy = Arc::new((*t1).clone());
        let g = acks.generation(p);
        let a = acks.insert(d, &copy.id, p, 5, acker().await, item_of(&copy), g);
        assert!(matches!(a, Arrival::Fresh));
        assert!(acks.holds(d, &copy) && !acks.holds(d, &t1));
        assert!(acks.take(d, &t1.id).is_some());
        assert!(
            !acks.holds(d, &copy),
            "done: the new copy is dropped, not delivered"
        );
        assert!(acks.is_done(d, p, 5));
        assert!(acks.take(d, &t1.id).is_none(), "nothing left of it");
    }
}
