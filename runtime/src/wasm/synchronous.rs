//! The synchronous path: a driver that can never wait is called without a fiber.
//!
//! An async call into a component runs on a fiber (a stack of its own, switched to and
//! from at every call), because a host call may have to wait and the lane thread must go
//! on meanwhile. A component that imports neither `wasi:http` nor
//! `wasi:clocks/monotonic-clock` has nothing to wait on: its only pollables are its
//! stdio streams, always ready. Such a driver is linked against synchronous host
//! functions and called with plain `call` on the lane thread ([`can_wait`]): no fiber,
//! no switch. Its limits hold as on the async path: the epoch deadline interrupts it
//! (the callback continues instead of yielding, [`super::limits::CallClock`]), memory
//! and fuel are the store's, and every host call it can make answers at once.
//!
//! `wasi:io` is linked through [`Immediate`]: each call passes to wasmtime's own
//! implementation and must finish without waiting. One that would wait (which nothing
//! these drivers can reach should) fails the call instead of blocking the lane thread.

use std::future::Future;

use futures::FutureExt;
use wasmtime::component::{Component, Linker, Resource};
use wasmtime::{Engine, Result};
use wasmtime_wasi::p2::bindings::sync::io::{poll, streams};
use wasmtime_wasi::p2::StreamResult;
use wasmtime_wasi_io::bindings::wasi::io::{poll as async_poll, streams as async_streams};
use wasmtime_wasi_io::poll::DynPollable;
use wasmtime_wasi_io::streams::{DynInputStream, DynOutputStream, StreamError};

use wasmtime::component::{HasData, ResourceTable};

/// `wasi:io` on the synchronous path: the instance's resource table, every call
/// answered at once ([`immediate`]).
pub struct Immediate<'a> {
    pub table: &'a mut ResourceTable,
}

/// [`HasData`] for [`Immediate`].
pub struct ImmediateIo;

impl HasData for ImmediateIo {
    type Data<'a> = Immediate<'a>;
}

/// Import prefixes that can make a guest wait (on the network, a clock).
const WAITING_IMPORTS: &[&str] = &["wasi:http/", "wasi:clocks/monotonic-clock"];

/// Whether `component` imports anything that can make it wait: then it needs the async
/// path; otherwise it is called synchronously.
pub fn can_wait(component: &Component, engine: &Engine) -> bool {
    component
        .component_type()
        .imports(engine)
        .any(|(name, _)| WAITING_IMPORTS.iter().any(|p| name.starts_with(p)))
}

/// Links WASI 0.2 with synchronous host functions, `wasi:io`'s poll and streams through
/// [`Immediate`] (`io` makes it from the store's state).
pub fn link_wasi<T: wasmtime_wasi::WasiView + 'static>(
    linker: &mut Linker<T>,
    io: fn(&mut T) -> Immediate<'_>,
) -> Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    linker.allow_shadowing(true);
    poll::add_to_linker::<T, ImmediateIo>(linker, io)?;
    streams::add_to_linker::<T, ImmediateIo>(linker, io)?;
    // `poll` bounded as on the async path (super::wasi::MAX_POLL_LIST).
    linker.instance(super::wasi::POLL)?.func_wrap(
        "poll",
        move |mut store, (list,): (wasmtime::component::WasmList<Resource<DynPollable>>,)| {
            let pollables = super::wasi::poll_list(&mut store, &list)?;
            let table = io(store.data_mut()).table;
            immediate("poll", async_poll::Host::poll(table, pollables))?.map(|r| (r,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Runs a host future that must be ready at once (the synchronous path never waits).
fn immediate<F: Future>(what: &str, f: F) -> Result<F::Output> {
    f.now_or_never().ok_or_else(|| {
        wasmtime::Error::msg(format!(
            "{what} would wait, and this driver is called synchronously (it imports neither wasi:http nor a clock to wait on)"
        ))
    })
}

/// [`immediate`] for the streams' results.
fn immediate_stream<T, F: Future<Output = StreamResult<T>>>(what: &str, f: F) -> StreamResult<T> {
    immediate(what, f).map_err(StreamError::Trap)?
}

impl poll::Host for Immediate<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> Result<Vec<u32>> {
        immediate("poll", async_poll::Host::poll(self.table, pollables))?
    }
}

impl poll::HostPollable for Immediate<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> Result<bool> {
        immediate(
            "pollable.ready",
            async_poll::HostPollable::ready(self.table, pollable),
        )?
    }
    fn block(&mut self, pollable: Resource<DynPollable>) -> Result<()> {
        immediate(
            "pollable.block",
            async_poll::HostPollable::block(self.table, pollable),
        )?
    }
    fn drop(&mut self, pollable: Resource<DynPollable>) -> Result<()> {
        async_poll::HostPollable::drop(self.table, pollable)
    }
}

impl streams::Host for Immediate<'_> {
    fn convert_stream_error(&mut self, err: StreamError) -> Result<streams::StreamError> {
        Ok(async_streams::Host::convert_stream_error(self.table, err)?.into())
    }
}

impl streams::HostOutputStream for Immediate<'_> {
    fn drop(&mut self, stream: Resource<DynOutputStream>) -> Result<()> {
        immediate(
            "output-stream drop",
            async_streams::HostOutputStream::drop(self.table, stream),
        )?
    }
    fn check_write(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<u64> {
        async_streams::HostOutputStream::check_write(self.table, stream)
    }
    fn write(&mut self, stream: Resource<DynOutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        async_streams::HostOutputStream::write(self.table, stream, bytes)
    }
    fn blocking_write_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        bytes: Vec<u8>,
    ) -> StreamResult<()> {
        immediate_stream(
            "blocking-write-and-flush",
            async_streams::HostOutputStream::blocking_write_and_flush(self.table, stream, bytes),
        )
    }
    fn blocking_write_zeroes_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        len: u64,
    ) -> StreamResult<()> {
        immediate_stream(
            "blocking-write-zeroes-and-flush",
            async_streams::HostOutputStream::blocking_write_zeroes_and_flush(
                self.table, stream, len,
            ),
        )
    }
    fn subscribe(&mut self, stream: Resource<DynOutputStream>) -> Result<Resource<DynPollable>> {
        async_streams::HostOutputStream::subscribe(self.table, stream)
    }
    fn write_zeroes(&mut self, stream: Resource<DynOutputStream>, len: u64) -> StreamResult<()> {
        async_streams::HostOutputStream::write_zeroes(self.table, stream, len)
    }
    fn flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        async_streams::HostOutputStream::flush(self.table, stream)
    }
    fn blocking_flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        immediate_stream(
            "blocking-flush",
            async_streams::HostOutputStream::blocking_flush(self.table, stream),
        )
    }
    fn splice(
        &mut self,
        dest: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        async_streams::HostOutputStream::splice(self.table, dest, src, len)
    }
    fn blocking_splice(
        &mut self,
        dest: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        immediate_stream(
            "blocking-splice",
            async_streams::HostOutputStream::blocking_splice(self.table, dest, src, len),
        )
    }
}

impl streams::HostInputStream for Immediate<'_> {
    fn drop(&mut self, stream: Resource<DynInputStream>) -> Result<()> {
        immediate(
            "input-stream drop",
            async_streams::HostInputStream::drop(self.table, stream),
        )?
    }
    fn read(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        async_streams::HostInputStream::read(self.table, stream, len)
    }
    fn blocking_read(
        &mut self,
        stream: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<Vec<u8>> {
        immediate_stream(
            "blocking-read",
            async_streams::HostInputStream::blocking_read(self.table, stream, len),
        )
    }
    fn skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        async_streams::HostInputStream::skip(self.table, stream, len)
    }
    fn blocking_skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        immediate_stream(
            "blocking-skip",
            async_streams::HostInputStream::blocking_skip(self.table, stream, len),
        )
    }
    fn subscribe(&mut self, stream: Resource<DynInputStream>) -> Result<Resource<DynPollable>> {
        async_streams::HostInputStream::subscribe(self.table, stream)
    }
}
