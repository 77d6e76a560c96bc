//! Dovecot's hook sequence for one transaction at one driver: `begin_txn`, then
//! `process_mbox` / `process_msg` per record (grouped as Dovecot groups them,
//! [`mailpush_core::group`]), then `end_txn`. A panic anywhere is contained here and
//! reported as a failure.

use std::any::Any;
use std::sync::Arc;

use futures::FutureExt;
use mailpush_core::{group, Begin, Driver, Failure, Record, Transaction};

/// What happened to one transaction at one driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every hook call succeeded.
    Delivered,
    /// The driver's begin_txn chose not to take part.
    Skipped,
    /// A hook failed (or panicked).
    Failed(Failure),
}

/// Runs Dovecot's hook sequence for one transaction at one driver: begin_txn, then
/// process_mbox/process_msg per record, then end_txn. A panic anywhere is contained
/// and reported as a failure.
pub async fn deliver(driver: &dyn Driver, txn: &Arc<Transaction>) -> Outcome {
    let run = async {
        let (events, mut dtxn) = match driver.begin_txn(txn).await? {
            Begin::Skip => return Ok(Outcome::Skipped),
            Begin::Join { events, txn } => (events, txn),
        };
        let mut result = Ok(());
        for record in group(txn, events) {
            result = match &record {
                Record::Mailbox(m) => dtxn.process_mbox(m).await,
                Record::Message(m) => dtxn.process_msg(m).await,
            };
            if result.is_err() {
                break;
            }
        }
        let end = dtxn.end_txn(result.is_ok()).await;
        result.and(end).map(|_| Outcome::Delivered)
    };
    match std::panic::AssertUnwindSafe(run).catch_unwind().await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(failure)) => Outcome::Failed(failure),
        Err(panic) => Outcome::Failed(Failure::permanent(format!(
            "driver panicked: {}",
            panic_message(&panic)
        ))),
    }
}

/// The text of a panic payload.
pub fn panic_message(panic: &Box<dyn Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_string()
    }
}
