//! The delivery pipeline: the one-way path of a transaction from the accept path to the
//! drivers, and the only code that touches the spool while delivering. Nothing here calls
//! back up into the daemon or the CLI.
//!
//! ```text
//! Dispatcher::accept (dispatcher.rs)   persist in the spool, then offer to every lane
//!                                      (queued.rs: what a lane's queue carries)
//!   → overflow.rs                      a full queue leaves the rest in the spool; the
//!                                      lane reads its backlog itself, in order
//!   → lane.rs on lane_thread.rs        per driver: per-user order (held.rs), up to
//!                                      `concurrency` at once, retries (policy.rs),
//!                                      the driver's circuit breaker (crate::breaker)
//!   → hooks.rs                         Dovecot's begin_txn → process_mbox/process_msg →
//!                                      end_txn, panics contained
//!   → stats.rs, observer.rs            counters per driver; results to watchers
//! ```

pub mod dispatcher;
pub mod held;
pub mod hooks;
pub mod lane;
pub mod lane_thread;
pub mod observer;
pub mod overflow;
pub mod policy;
pub mod queued;
pub mod stats;

pub use dispatcher::{
    Backpressure, Dispatcher, LoadedDriver, QueueFull, Reconfigured, Refused, ShutDown,
};
pub use hooks::{deliver, panic_message, Outcome};
pub use observer::{Delivery, DeliveryObserver};
pub use policy::{DeliveryPolicy, RetryPolicy};
pub use stats::{DriverReport, DriverStats, LaneState, LATENCY_BUCKETS};

#[cfg(test)]
mod tests;
