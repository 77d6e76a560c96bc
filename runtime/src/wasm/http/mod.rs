//! Capability: outbound HTTP. A driver granted `allow_hosts` may use the standard
//! `wasi:http/outgoing-handler`; every request passes mailpush's policy first.
//!
//! - [`settings`]: the keys (`allow_hosts`, `allow_private`, `max_connections`, timeouts);
//! - [`policy`]: the driver-wide state (connection limit, endpoint breakers, pool);
//! - [`hooks`]: the per-instance `wasi:http` hooks that enforce it request by request;
//! - [`address`]: which addresses are private or special;
//! - [`pool`]: kept-alive connections to checked addresses;
//! - [`resolver`]: host names resolved, with a short cache.

pub mod address;
pub mod hooks;
pub mod policy;
pub mod pool;
pub mod resolver;
pub mod settings;

pub use hooks::OutboundHttp;
pub use policy::HttpPolicy;
pub use settings::HttpSettings;

/// Links `wasi:http` (the outgoing handler and its types) into a driver's linker.
pub fn link<T: wasmtime_wasi_http::WasiHttpView + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
) -> wasmtime::Result<()> {
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)
}
