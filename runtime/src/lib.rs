//! mailpush: a runtime for Dovecot-style mail push notifications.
//!
//! One transaction's path: canonical JSON ([`mailpush_core::transaction`]) →
//! [`dispatch::Dispatcher`] (a bounded queue and task per driver) → a driver (built-in
//! native drivers, or sandboxed WebAssembly components). [`config`] reads Dovecot's
//! syntax, [`registry`] turns numbered driver settings into running drivers, [`cli`] is
//! the `mailpush` binary.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod delivery;
pub mod dispatch;
pub mod lane;
pub mod lane_thread;
pub mod logging;
pub mod metadata_store;
pub mod overflow;
pub mod registry;
pub mod settings;
pub mod spool;
pub mod wasm;

pub use mailpush_core as core;
