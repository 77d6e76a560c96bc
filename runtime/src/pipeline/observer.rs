//! Delivery results as they happen, for whoever watches the pipeline (the progress bar
//! of `mailpush send`, tests).

use std::sync::Arc;

use mailpush_core::Transaction;

use super::hooks::Outcome;

/// One final delivery result, as reported to a [`DeliveryObserver`].
#[derive(Debug, Clone)]
pub struct Delivery {
    pub driver: u32,
    pub txn: Arc<Transaction>,
    pub outcome: Outcome,
}

/// Receives every final delivery result (delivered, skipped, failed for good).
pub trait DeliveryObserver: Send + Sync {
    fn delivered(&self, delivery: &Delivery);
}
