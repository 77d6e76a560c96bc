//! The WebAssembly host: components as sandboxed numbered drivers.
//!
//! Loading: [`factory`] reads `wasm:file=…`, [`sandbox`] takes mailpush's keys off the
//! line (each capability reads its own), [`engine`] compiles through the signed AOT
//! cache ([`cache`]; the compiles of one component share their functions:
//! [`function_cache`]), [`world`] checks the component is a driver of a compatible
//! version, [`instance`] links it and makes instances, which start from a snapshot taken
//! after `init` ran once at load when `init` calls no import ([`snapshot`]); under
//! `mailpush run` a big component
//! not in the AOT cache does all that in the background ([`background`]).
//! Running: [`driver`] maps Dovecot's hooks onto the component's exports ([`exports`]), [`trap`]
//! explains failed calls.
//! [`tenants`] routes per-domain handlers.
//!
//! What a component is granted, one module per capability, each with its keys, its
//! imports and its per-instance state (gathered in [`state::HostState`]):
//! - [`limits`]: CPU time per call, memory, fuel, event size, transaction wall time;
//! - [`log`]: `host.log`, budgeted per transaction and rate-limited per driver;
//! - [`metadata`]: `host.metadata-get`, read-only, the transaction's user only;
//! - [`hmac`]: `host.hmac-sha256`, bounded per call, its time the guest's;
//! - [`http`]: `wasi:http`, behind the outbound policy, over a keep-alive pool;
//! - [`stdio`]: stdout and stderr into the log; the last lines explain a failed call;
//! - [`wasi`]: clocks and random; no filesystem, environment or sockets.
//!
//! A component that imports nothing it could wait on is linked and called synchronously,
//! without a fiber ([`synchronous`]).

pub mod background;
pub mod bindings;
pub mod cache;
mod convert;
pub mod driver;
pub mod engine;
pub mod exports;
pub mod factory;
pub mod function_cache;
pub mod hmac;
pub mod http;
pub mod instance;
pub mod limits;
pub mod log;
pub mod lower;
pub mod metadata;
pub mod sandbox;
pub mod snapshot;
pub mod state;
pub mod stats;
pub mod stdio;
pub mod synchronous;
pub mod tenants;
pub mod trap;
pub mod wasi;
pub mod world;

pub use driver::WasmDriver;
pub use engine::Engines;
pub use factory::WasmFactory;
pub use sandbox::Sandbox;
pub use tenants::TenantDrivers;
