//! Dovecot's `lua` push driver: existing push-notification Lua scripts, unchanged, in a
//! sandbox (see `docs/lua.md`).
//!
//! Loading: [`settings`] reads the line's keys, [`driver`] loads the script once to
//! report errors and find its handlers. Running: [`worker`] threads each run a state
//! ([`sandbox`]): the script's hooks called as Dovecot calls them, with [`events`]
//! tables as Dovecot builds them, the `dovecot` API (`dovecot.lua`) and the built-in
//! modules (`modules/`) over the host's primitives ([`host`]). Bounds: [`budget`] (time
//! per hook call), the state's memory limit, [`pattern`] (pattern functions that would
//! run too long in C), and the wasm drivers' outbound HTTP policy and log budget.

pub mod budget;
pub mod driver;
pub mod events;
pub mod host;
pub mod pattern;
pub mod sandbox;
pub mod settings;
pub mod worker;

pub use driver::{LuaDriver, LuaFactory};
