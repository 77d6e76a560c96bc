//! mailpush: a runtime for Dovecot-style mail push notifications.
//!
//! The modules, in the direction a transaction flows:
//!
//! - [`daemon`] (`mailpush run`): the HTTP ingest, the OX-compatible endpoint, status,
//!   reload, shutdown; [`commands`]: the other subcommands (`send` feeds the same
//!   pipeline); [`cli`]: the `mailpush` binary, a thin shell over both;
//! - [`pipeline`]: the one way in ([`pipeline::Dispatcher::accept`]) and the one-way
//!   path to the drivers — spool, queues, lanes, retries, Dovecot's hook sequence;
//! - [`spool`]: where transactions are stored until every driver is done — embedded
//!   SQLite, or [`cluster`]: NATS JetStream shared by several nodes;
//! - [`registry`]: turns the config's numbered drivers into running drivers: built-in
//!   ([`mailpush_dlog`], [`mailpush_ox`]) and sandboxed WebAssembly components
//!   ([`wasm`], each sandbox limit enforced in the capability module that owns it);
//! - [`config`] (crate `mailpush-config`): Dovecot's config syntax and mailpush's
//!   `mailpush { }` block;
//! - [`status`]: the typed status contract shared by the daemon and the CLI;
//! - [`breaker`], [`metadata_store`], [`schema`], [`logging`]: shared machinery.

pub mod breaker;
pub mod cli;
pub mod cluster;
pub mod commands;
pub mod daemon;
pub mod logging;
pub mod lua;
pub mod metadata_store;
pub mod pipeline;
pub mod registry;
pub mod schema;
pub mod spool;
pub mod status;
pub mod userinfo;
pub mod wasm;

pub use mailpush_config as config;
pub use mailpush_core as core;
