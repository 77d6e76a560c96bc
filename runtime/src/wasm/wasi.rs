//! Capability: the base WASI 0.2 surface every driver gets — clocks, random, streams —
//! and nothing else: no preopened directories, no environment, no arguments, stdio
//! closed, sockets and name lookups denied.

use wasmtime_wasi::{WasiCtx, WasiView};

/// A context with no grants.
pub fn ctx() -> WasiCtx {
    WasiCtx::builder()
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build()
}

/// Links WASI 0.2 (async) into a driver's linker.
pub fn link<T: WasiView + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)
}
