//! The WebAssembly host: components as sandboxed numbered drivers.
//!
//! - [`engine`]: the wasmtime engine (pooling allocator, epoch interruption) and the
//!   AOT cache of compiled components in the state dir;
//! - [`sandbox`]: per-driver limits and grants parsed from the driver line;
//! - [`host`]: the per-instance state and the `mailpush:driver/host` imports;
//! - [`outbound_http`]: the `wasi:http` policy (allowed hosts, private addresses);
//! - [`driver`]: `WasmDriver`, the component as a `Driver`;
//! - [`tenants`]: per-domain tenant handlers from `tenant_drivers = DIR`.

pub mod bindings;
pub mod connection_pool;
mod convert;
pub mod driver;
pub mod engine;
pub mod host;
pub mod outbound_http;
pub mod sandbox;
pub mod tenants;

pub use driver::{WasmDriver, WasmFactory};
