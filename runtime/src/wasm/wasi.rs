//! Capability: the base WASI 0.2 surface every driver gets — clocks, random, streams —
//! and nothing else: no preopened directories, no environment, no arguments, stdin
//! empty, stdout and stderr into the driver's log ([`super::stdio`]), sockets and name
//! lookups denied.
//!
//! What a call is charged for its deadline is the time the lane thread spends polling
//! it ([`super::limits::PollTime`]): host work done in a `wasi:io` call (a blocking write
//! of zeroes, a poll over many pollables) is charged; waiting on the network or a
//! clock — the call suspended — is not, and is bounded by the HTTP timeouts and
//! `max_txn_msecs` instead.

use wasmtime::component::Linker;
use wasmtime::Result;
use wasmtime_wasi::{WasiCtx, WasiView};

/// The most bytes one `get-random-bytes` call may ask for (the host allocates them).
pub const MAX_RANDOM_BYTES: u64 = 64 << 10;

/// A context with no grants; stdout and stderr go to `output`.
pub fn ctx(output: &super::stdio::SharedOutput) -> WasiCtx {
    use super::stdio::{GuestStream, Stream};
    WasiCtx::builder()
        .stdout(GuestStream::new(output.clone(), Stream::Stdout))
        .stderr(GuestStream::new(output.clone(), Stream::Stderr))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .max_random_size(MAX_RANDOM_BYTES)
        .build()
}

/// Links WASI 0.2 (async) into a driver's linker.
pub fn link<T: WasiView + 'static>(linker: &mut Linker<T>) -> Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)
}
