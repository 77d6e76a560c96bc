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

/// The most pollables one `wasi:io/poll.poll` call may name. The list is a guest's 4
/// bytes per entry; lifted, each entry costs the host some 40 (the handle, its borrow,
/// its place in the ready list), and entries may repeat one pollable: without a bound a
/// guest of 64 MiB made the host hold gigabytes for one call.
pub const MAX_POLL_LIST: usize = 4096;

/// Links WASI 0.2 (async) into a driver's linker (`poll` bounded: [`MAX_POLL_LIST`]).
pub fn link<T: WasiView + 'static>(linker: &mut Linker<T>) -> Result<()> {
    use wasmtime::component::{Resource, WasmList};
    use wasmtime_wasi_io::poll::DynPollable;
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    linker.allow_shadowing(true);
    linker.instance(POLL)?.func_wrap_async(
        "poll",
        |mut store, (list,): (WasmList<Resource<DynPollable>>,)| {
            Box::new(async move {
                let pollables = poll_list(&mut store, &list)?;
                let table = store.data_mut().ctx().table;
                let ready =
                    wasmtime_wasi_io::bindings::wasi::io::poll::Host::poll(table, pollables)
                        .await?;
                Ok((ready,))
            })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// The instance `poll` is linked in.
pub const POLL: &str = "wasi:io/poll@0.2.12";

/// The pollables of a `poll` call, lifted one by one once the list is known to be at
/// most [`MAX_POLL_LIST`] long (longer traps the guest).
pub fn poll_list<T: 'static>(
    store: &mut wasmtime::StoreContextMut<'_, T>,
    list: &wasmtime::component::WasmList<
        wasmtime::component::Resource<wasmtime_wasi_io::poll::DynPollable>,
    >,
) -> Result<Vec<wasmtime::component::Resource<wasmtime_wasi_io::poll::DynPollable>>> {
    if list.len() > MAX_POLL_LIST {
        wasmtime::bail!(
            "poll over {} pollables, more than the sandbox's {MAX_POLL_LIST}",
            list.len()
        );
    }
    let mut out = Vec::with_capacity(list.len());
    for i in 0..list.len() {
        if let Some(p) = list.get(&mut *store, i) {
            out.push(p?);
        }
    }
    Ok(out)
}
