//! Dead letters in cluster mode: a stream (`<prefix>_DLQ`, subject
//! `<prefix>.dlq.<driver>`), one message per dead letter with its attempts; its stream
//! sequence is the dead letter's id for `mailpush dlq` on any node. A replay publishes
//! the transaction on `<prefix>.replay.<driver>.<partition>`, which only that driver's
//! consumer of the partition reads — after the user's later transactions, as on one
//! node — then deletes the dead letter.

use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::Context;
use mailpush_core::Transaction;
use serde::{Deserialize, Serialize};

use super::nats::{storage, Names};
use super::partition_of;
use crate::spool::{now, Attempt, DeadLetter, SpoolError};

#[derive(Serialize, Deserialize)]
struct Record {
    driver: u32,
    at: u64,
    attempts: Vec<Attempt>,
    /// The transaction, canonical JSON.
    txn: String,
}

/// Records a dead letter, retrying until JetStream stored it (the transaction is
/// acknowledged only after that: if this node dies first, it is delivered again).
pub async fn record(
    js: &Context,
    names: &Names,
    txn: &Transaction,
    driver: u32,
    attempts: &[Attempt],
) {
    // One id per recording (its retries below are stored once), never the same for two:
    // a transaction replayed and dead-lettered again within the de-duplication window
    // must be stored again, not taken for a duplicate and lost.
    let unique = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let id = format!("dlq/{driver}/{}/{}/{unique}", txn.id, attempts.len());
    let record = Record {
        driver,
        at: now(),
        attempts: attempts.to_vec(),
        txn: txn.to_json(),
    };
    store(js, names, record, &id, &txn.id).await;
}

/// Records a message of the transaction stream this mailpush cannot read as a dead
/// letter of `driver` (a transaction from a later mailpush with a field this one does
/// not know, during a rolling upgrade; or one nothing of mailpush published), kept as it
/// came, byte for byte ([`store_raw`]: it fits, as it fitted the transaction stream), with
/// `why` as its attempt: `mailpush dlq list` shows it, and a replay publishes it again as
/// it is (a mailpush that can read it delivers it; this one makes it a dead letter
/// again). Retries until JetStream stored it, like [`record`]; the message's stream
/// sequence `seq` is its id there, so a message read again before its acknowledgement is
/// stored once.
pub async fn record_unreadable(
    js: &Context,
    names: &Names,
    driver: u32,
    seq: u64,
    payload: &[u8],
    why: &str,
) {
    let attempt = Attempt {
        at: now(),
        error: format!("this mailpush cannot read this message of the transaction stream: {why}"),
    };
    let id = format!("dlq/{driver}/unreadable/{seq}");
    store_raw(
        js,
        names,
        driver,
        &attempt,
        bytes::Bytes::copy_from_slice(payload),
        &id,
        &format!("stream message {seq}"),
    )
    .await;
}

/// Headers of a dead letter kept in its raw form ([`store_raw`]).
const RAW_DRIVER: &str = "Mailpush-Dlq-Driver";
const RAW_AT: &str = "Mailpush-Dlq-At";
const RAW_ERROR: &str = "Mailpush-Dlq-Error";

/// What the raw form's headers take besides the id and the error: `NATS/1.0`, the
/// header names, the driver and the time, line ends; rounded up.
const RAW_HEADERS_FIXED: usize = 160;

/// Stores a dead letter in its raw form: the transaction's bytes as the message, the
/// driver, the time and the last attempt's error (one line, at most 1 KiB) as headers.
/// For one whose JSON record would not fit `max_payload` (the record escapes the
/// transaction's quotes), and for messages this mailpush cannot read: either fits, since
/// the transaction's own message fitted. Retries until stored.
async fn store_raw(
    js: &Context,
    names: &Names,
    driver: u32,
    attempt: &Attempt,
    payload: bytes::Bytes,
    id: &str,
    what: &str,
) {
    // The headers take what the message leaves of max_payload: the error is cut to fit
    // (1 KiB at most). The transaction's own message fitted with the room ingest keeps
    // for headers ([`super::spool::HEADER_ROOM_MIN`]), which the driver, the time and
    // this longer id take; one that does not fit even so is not kept.
    let fixed = RAW_HEADERS_FIXED + id.len();
    let max = js.client().max_payload();
    let Some(room) = max.checked_sub(payload.len() + fixed) else {
        tracing::error!(txn = %what, driver, "NATS: the dead letter ({} bytes) does not fit the server's max_payload ({max} bytes) and cannot be kept; it is dropped", payload.len());
        return;
    };
    let mut error: String = attempt
        .error
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    error.truncate(mailpush_core::text::prefix_len(&error, room.min(1024)));
    let stored = publish_until_stored(js, names, driver, what, || {
        PublishMessage::build()
            .payload(payload.clone())
            .message_id(id)
            .header(RAW_DRIVER, driver.to_string())
            .header(RAW_AT, attempt.at.to_string())
            .header(RAW_ERROR, error.as_str())
    })
    .await;
    if let Err(e) = stored {
        tracing::error!(txn = %what, driver, "NATS: the dead letter ({} bytes) cannot be kept ({e}); it is dropped", payload.len());
    }
}

/// Publishes what `message` builds to `driver`'s dead-letter subject until JetStream
/// stored it, retrying every error but one: a message too big for the server, returned
/// (the caller makes it smaller or gives up). `what` names it in the log.
async fn publish_until_stored(
    js: &Context,
    names: &Names,
    driver: u32,
    what: &str,
    message: impl Fn() -> PublishMessage,
) -> Result<(), async_nats::jetstream::context::PublishError> {
    let mut pause = Duration::from_millis(100);
    loop {
        let sent = async {
            js.send_publish(names.dlq_subject(driver), message())
                .await?
                .await
        }
        .await;
        match sent {
            Ok(_) => return Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    async_nats::jetstream::context::PublishErrorKind::MaxPayloadExceeded
                ) =>
            {
                return Err(e)
            }
            Err(e) => {
                tracing::warn!(txn = %what, driver, "NATS: cannot record the dead letter yet ({e}); retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Publishes `record` with message id `id` until JetStream stored it (`what` names it in
/// the log).
async fn store(js: &Context, names: &Names, mut record: Record, id: &str, what: &str) {
    let driver = record.driver;
    loop {
        let Ok(payload) = serde_json::to_vec(&record) else {
            return;
        };
        let payload = bytes::Bytes::from(payload);
        let stored = publish_until_stored(js, names, driver, what, || {
            PublishMessage::build()
                .payload(payload.clone())
                .message_id(id)
        })
        .await;
        if stored.is_ok() {
            return;
        }
        // Too big for NATS: the oldest attempts go (the transaction itself was stored,
        // so it fits) ...
        if record.attempts.len() > 1 {
            let keep = record.attempts.len() / 2;
            record.attempts.drain(..record.attempts.len() - keep);
            continue;
        }
        // ... and with one attempt left and still too big (the record's JSON escapes the
        // transaction's quotes), it is kept in the raw form, which fits.
        let attempt = record.attempts.pop().unwrap_or(Attempt {
            at: record.at,
            error: String::new(),
        });
        let txn = bytes::Bytes::from(std::mem::take(&mut record.txn).into_bytes());
        return store_raw(js, names, driver, &attempt, txn, id, what).await;
    }
}

/// A dead letter as listed, with the transaction's text as stored (what a replay
/// publishes: for one this mailpush cannot read, not its stand-in).
struct Listed {
    letter: DeadLetter,
    text: bytes::Bytes,
}

/// The transaction a dead letter holds; for one this mailpush cannot read, a stand-in
/// with its id and user where its JSON has them (else the dead letter's id), without
/// events: its attempt says why.
fn letter_txn(text: &str, seq: u64) -> Transaction {
    if let Ok(txn) = Transaction::from_json(text) {
        return txn;
    }
    let value: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    let field = |k: &str| value.get(k).and_then(|v| v.as_str()).map(str::to_string);
    Transaction::unreadable(
        field("id").unwrap_or_else(|| format!("(unreadable message {seq})")),
        field("user").unwrap_or_default(),
    )
}

/// Every dead letter (of one driver), oldest first.
pub async fn list(
    js: &Context,
    names: &Names,
    driver: Option<u32>,
) -> Result<Vec<DeadLetter>, SpoolError> {
    Ok(listed(js, names, driver)
        .await?
        .into_iter()
        .map(|l| l.letter)
        .collect())
}

/// [`list`], with each transaction's text.
async fn listed(
    js: &Context,
    names: &Names,
    driver: Option<u32>,
) -> Result<Vec<Listed>, SpoolError> {
    let mut stream = js
        .get_stream(names.dlq_stream())
        .await
        .map_err(|e| storage("cannot read the dead letters", e))?;
    let info = stream
        .info()
        .await
        .map_err(|e| storage("cannot read the dead letters", e))?;
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let mut out = Vec::new();
    if info.state.messages == 0 {
        return Ok(out);
    }
    for seq in first..=last {
        let Ok(msg) = stream.get_raw_message(seq).await else {
            continue; // purged
        };
        let header = |name: &str| msg.headers.get(name).map(|v| v.as_str().to_string());
        let r = match header(RAW_DRIVER).and_then(|d| d.parse::<u32>().ok()) {
            // The raw form ([`store_raw`]).
            Some(driver) => {
                let at = header(RAW_AT).and_then(|a| a.parse().ok()).unwrap_or(0);
                Record {
                    driver,
                    at,
                    attempts: vec![Attempt {
                        at,
                        error: header(RAW_ERROR).unwrap_or_default(),
                    }],
                    txn: String::new(),
                }
            }
            None => match serde_json::from_slice::<Record>(&msg.payload) {
                Ok(r) => r,
                Err(_) => continue,
            },
        };
        if driver.is_some_and(|d| d != r.driver) {
            continue;
        }
        let text = if r.txn.is_empty() {
            msg.payload.clone()
        } else {
            bytes::Bytes::from(r.txn.into_bytes())
        };
        out.push(Listed {
            letter: DeadLetter {
                id: seq as i64,
                driver: r.driver,
                txn: letter_txn(&String::from_utf8_lossy(&text), seq),
                attempts: r.attempts,
                at: r.at,
            },
            text,
        });
    }
    Ok(out)
}

/// The dead-letter stream and the letters `id` / `driver` select (one id, or all of one
/// driver, or all).
async fn selected(
    js: &Context,
    names: &Names,
    id: Option<i64>,
    driver: Option<u32>,
) -> Result<(async_nats::jetstream::stream::Stream, Vec<Listed>), SpoolError> {
    let letters = listed(js, names, driver).await?;
    let stream = js
        .get_stream(names.dlq_stream())
        .await
        .map_err(|e| storage("cannot read the dead letters", e))?;
    let letters = letters
        .into_iter()
        .filter(|l| id.is_none_or(|i| i == l.letter.id))
        .collect();
    Ok((stream, letters))
}

/// Delivers dead letters again (one id, or all of one driver, or all): each to the
/// driver that gave up on it; returns how many.
pub async fn replay(
    js: &Context,
    names: &Names,
    partitions: u32,
    id: Option<i64>,
    driver: Option<u32>,
) -> Result<usize, SpoolError> {
    let (stream, letters) = selected(js, names, id, driver).await?;
    let mut n = 0;
    for Listed { letter: d, text } in letters {
        let subject = names.replay_subject(d.driver, partition_of(&d.txn.user, partitions));
        // As stored: one this mailpush cannot read goes out as it came, not as its
        // stand-in without events.
        js.send_publish(
            subject,
            PublishMessage::build()
                .payload(text)
                .message_id(format!("replay/{}/{}", d.driver, d.id)),
        )
        .await
        .map_err(|e| storage("cannot replay", e))?
        .await
        .map_err(|e| storage("cannot replay", e))?;
        stream
            .delete_message(d.id as u64)
            .await
            .map_err(|e| storage("cannot remove the replayed dead letter", e))?;
        n += 1;
    }
    Ok(n)
}

/// Deletes dead letters for good; returns how many.
pub async fn purge(
    js: &Context,
    names: &Names,
    id: Option<i64>,
    driver: Option<u32>,
) -> Result<usize, SpoolError> {
    let (stream, letters) = selected(js, names, id, driver).await?;
    let mut n = 0;
    for l in letters {
        stream
            .delete_message(l.letter.id as u64)
            .await
            .map_err(|e| storage("cannot purge", e))?;
        n += 1;
    }
    Ok(n)
}
