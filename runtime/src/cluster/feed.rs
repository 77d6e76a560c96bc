//! From JetStream to the lanes: one feeder per (driver, owned partition) reads the
//! driver's consumer of the partition, in stream order, and queues each transaction for
//! the driver's lane (waiting for room: the consumer's `max_ack_pending` and the lane's
//! queue bound what one node holds). The message's acknowledgement handle waits in
//! [`Acks`] until the lane is done with the transaction ([`super::spool`]).

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::Context;
use futures::StreamExt;
use mailpush_core::Transaction;
use tokio::sync::watch;

use super::nats::Names;
use super::spool::{Acks, Arrival};
use crate::logging::Tally;
use crate::pipeline::Dispatcher;

/// Messages made dead letters because they could not be read, logged at most once per
/// [`Tally::EVERY`] (a rolling upgrade may bring many).
static UNREADABLE: LazyLock<Tally> = LazyLock::new(Tally::default);

/// What a feeder needs.
pub struct Feeder {
    pub js: Context,
    pub names: Names,
    pub acks: Arc<Acks>,
    pub dispatcher: Arc<Dispatcher>,
    pub driver: u32,
    pub partition: u32,
    /// Reset the consumer to its ack floor first (this node just took the partition).
    pub reset: bool,
    /// The ownership of the partition this feeder feeds for ([`Acks::generation`]).
    pub generation: u64,
}

impl Feeder {
    /// Feeds until `stop` turns true (the partition moved, the driver went away, or the
    /// node stops).
    ///
    /// Messages the server sent that never arrived (a connection that broke, a pull
    /// request of the partition's previous owner that was still open) stay out, not
    /// acknowledged, until the ack wait: the consumer's delivery sequence shows the gap,
    /// and the feeder then resets the consumer to its ack floor. What a reset sends again
    /// that this node already acknowledged, or is delivering, is not fed again.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let name = self.names.consumer(self.driver, self.partition);
        let mut reset = self.reset;
        let mut pause = Duration::from_millis(100);
        while !*stop.borrow() {
            let consumer = tokio::select! {
                c = self.consumer(&name, &mut reset) => c,
                _ = stop.changed() => return,
            };
            let (consumer, was_reset) = match consumer {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(
                        driver = self.driver,
                        partition = self.partition,
                        "NATS: cannot read the consumer {name} ({e}); retrying"
                    );
                    if wait(&mut stop, pause).await {
                        return;
                    }
                    pause = (pause * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            pause = Duration::from_millis(100);
            let messages = consumer
                .stream()
                .max_messages_per_batch(64)
                .expires(Duration::from_secs(2))
                .heartbeat(Duration::from_secs(1))
                .messages()
                .await;
            let mut messages = match messages {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(
                        driver = self.driver,
                        partition = self.partition,
                        "NATS: cannot pull from {name} ({e}); retrying"
                    );
                    if wait(&mut stop, Duration::from_secs(1)).await {
                        return;
                    }
                    continue;
                }
            };
            // The consumer's delivery sequence of the last message that arrived (a reset
            // starts it again at 1).
            let mut last: Option<u64> = was_reset.then_some(0);
            let mut arrived = false;
            let mut check = tokio::time::interval(GAP_CHECK);
            check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            check.tick().await;
            loop {
                // A stop first: after it nothing more is fed (the partition moved, or
                // starts over with a reset).
                let next = tokio::select! {
                    biased;
                    _ = stop.changed() => return,
                    m = messages.next() => m,
                    _ = check.tick() => {
                        // Idle for a while: did the server send something that never came?
                        if !std::mem::take(&mut arrived) && self.lost(&consumer, last).await {
                            break;
                        }
                        continue;
                    }
                };
                let Some(msg) = next else { break };
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) => {
                        // Missing heartbeats, a reconnect: what was on the way may be lost.
                        tracing::debug!(
                            driver = self.driver,
                            partition = self.partition,
                            "NATS: pull from {name} ended ({e})"
                        );
                        break;
                    }
                };
                arrived = true;
                check.reset();
                let Ok((dseq, sseq)) = msg.info().map(|i| (i.consumer_sequence, i.stream_sequence))
                else {
                    continue;
                };
                if last.is_some_and(|l| dseq != l + 1) {
                    tracing::info!(
                        driver = self.driver,
                        partition = self.partition,
                        "NATS: messages sent on {name} did not arrive; reading again from the ack floor"
                    );
                    break;
                }
                last = Some(dseq);
                let (message, acker) = msg.split();
                let txn = match std::str::from_utf8(&message.payload)
                    .map_err(|e| format!("not UTF-8 ({e})"))
                    .and_then(|s| Transaction::from_json(s).map_err(|e| e.to_string()))
                {
                    Ok(t) => t,
                    Err(why) => {
                        // A transaction from a later mailpush (a rolling upgrade), or
                        // something nothing of mailpush published: a dead letter of
                        // this driver, kept as it came, then acknowledged. Not before it
                        // is stored: if this feeder stops first, the partition's next
                        // reader meets it again.
                        let recorded = tokio::select! {
                            biased;
                            _ = stop.changed() => false,
                            _ = super::dlq::record_unreadable(
                                &self.js, &self.names, self.driver, sseq, &message.payload, &why,
                            ) => true,
                        };
                        if !recorded {
                            return;
                        }
                        UNREADABLE.report(|unlogged| {
                            tracing::error!(
                                driver = self.driver,
                                partition = self.partition,
                                "NATS: message {sseq} on {} is not a transaction this mailpush can read ({why}); it is now a dead letter of the driver (mailpush dlq list), and the partition's deliveries go on{}",
                                message.subject,
                                crate::logging::Tally::more(unlogged)
                            )
                        });
                        let _ = tokio::time::timeout(super::spool::ACK_DEADLINE, acker.ack()).await;
                        continue;
                    }
                };
                let txn = Arc::new(txn);
                let item = super::spool::item_of(&txn);
                match self.acks.insert(
                    self.driver,
                    &txn.id,
                    self.partition,
                    sseq,
                    acker,
                    item,
                    self.generation,
                ) {
                    Arrival::Fresh => {}
                    Arrival::Held => continue,
                    Arrival::Done(acker) => {
                        let _ = tokio::time::timeout(super::spool::ACK_DEADLINE, acker.ack()).await;
                        continue;
                    }
                    // This feeder's ownership ended (its stop is on the way).
                    Arrival::Stale => return,
                }
                let fed = tokio::select! {
                    biased;
                    _ = stop.changed() => Ok(false),
                    r = self.dispatcher.feed(self.driver, txn.clone()) => r,
                };
                if fed != Ok(true) {
                    // Not taken: stopping (the partition moved, the node stops), or the
                    // driver is gone. Not this node's to acknowledge any more.
                    self.acks.abandon(self.driver, &txn);
                    return;
                }
            }
            // Whatever ended the pull, read again from the ack floor: messages on the way
            // may have been lost.
            reset = true;
            if wait(&mut stop, Duration::from_millis(50)).await {
                return;
            }
        }
    }

    /// Whether the pull has gone wrong while nothing arrived for a while (`last`: the
    /// delivery sequence of the last message that did): the server sent more than
    /// arrived, counts more out than this node holds, or has messages for this consumer
    /// and room to send them but sends nothing (a pull that died with its server).
    async fn lost(&self, consumer: &PullConsumer, last: Option<u64>) -> bool {
        let Ok(Ok(info)) = tokio::time::timeout(Duration::from_secs(5), consumer.get_info()).await
        else {
            return true; // the server does not answer: pull again
        };
        // Keep what is remembered as done down to what the server can still send again.
        self.acks
            .floor(self.driver, self.partition, info.ack_floor.stream_sequence);
        let out = info.num_ack_pending as u64;
        let held = self.acks.in_flight_of(self.driver, self.partition) as u64;
        last.is_some_and(|l| info.delivered.consumer_sequence > l)
            || out > held
            || (info.num_pending > 0 && out < super::nats::MAX_ACK_PENDING as u64)
    }

    /// The consumer, reset to its ack floor first if `reset` (then `true` with it).
    async fn consumer(&self, name: &str, reset: &mut bool) -> Result<(PullConsumer, bool), String> {
        let stream = self
            .js
            .get_stream(self.names.txn_stream())
            .await
            .map_err(|e| e.to_string())?;
        let mut consumer: PullConsumer = match stream.get_consumer(name).await {
            Ok(c) => c,
            // Gone (deleted by hand): made again, from what is published from now on.
            Err(e) => stream
                .create_consumer(super::nats::consumer_config(
                    &self.names,
                    self.driver,
                    self.partition,
                ))
                .await
                .map_err(|c| format!("{e}; making it again: {c}"))?,
        };
        let was_reset = *reset;
        if *reset {
            // What the previous owner had out but not acknowledged comes again, in
            // order, now (not after the ack wait).
            consumer.reset(None).await.map_err(|e| e.to_string())?;
            *reset = false;
        }
        Ok((consumer, was_reset))
    }
}

/// How often an idle feeder asks the server whether messages went missing.
const GAP_CHECK: Duration = Duration::from_secs(3);

/// Waits `d`, or less if `stop` turns true; returns whether to stop.
async fn wait(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}
