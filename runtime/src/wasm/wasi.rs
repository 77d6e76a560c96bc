//! Capability: the base WASI 0.2 surface every driver gets — clocks, random, streams —
//! and nothing else: no preopened directories, no environment, no arguments, stdin
//! empty, stdout and stderr into the driver's log ([`super::stdio`]), sockets and name
//! lookups denied.
//!
//! `wasi:io` is linked through [`Waiting`]: every call passes to wasmtime's own
//! implementation, and the calls that block — `poll`, `pollable.block` and the streams'
//! `blocking-*` methods — report the time they wait ([`CallClock::waited`]):
//! waiting on the network or a clock is bounded by the HTTP timeouts and
//! `max_txn_msecs`, not charged to the CPU deadline; every other host call is.

use std::time::Instant;

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime::Result;
use wasmtime_wasi::{WasiCtx, WasiView};
use wasmtime_wasi_io::bindings::wasi::io::{poll, streams};
use wasmtime_wasi_io::poll::DynPollable;
use wasmtime_wasi_io::streams::{DynInputStream, DynOutputStream, StreamError, StreamResult};

use super::limits::CallClock;

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

/// `wasi:io` for one instance: its resource table, and its clock to mark waiting on.
pub struct Waiting<'a> {
    pub table: &'a mut ResourceTable,
    pub clock: &'a mut CallClock,
}

/// [`HasData`] for [`Waiting`].
pub struct WaitingIo;

impl HasData for WaitingIo {
    type Data<'a> = Waiting<'a>;
}

/// Links WASI 0.2 (async) into a driver's linker, `wasi:io`'s poll and streams through
/// [`Waiting`] (`io` makes it from the store's state).
pub fn link<T: WasiView + 'static>(
    linker: &mut Linker<T>,
    io: fn(&mut T) -> Waiting<'_>,
) -> Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    linker.allow_shadowing(true);
    poll::add_to_linker::<T, WaitingIo>(linker, io)?;
    streams::add_to_linker::<T, WaitingIo>(linker, io)?;
    linker.allow_shadowing(false);
    Ok(())
}

impl poll::Host for Waiting<'_> {
    async fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> Result<Vec<u32>> {
        let started = Instant::now();
        let r = poll::Host::poll(self.table, pollables).await;
        self.clock.waited(started.elapsed());
        r
    }
}

impl poll::HostPollable for Waiting<'_> {
    async fn block(&mut self, pollable: Resource<DynPollable>) -> Result<()> {
        let started = Instant::now();
        let r = poll::HostPollable::block(self.table, pollable).await;
        self.clock.waited(started.elapsed());
        r
    }
    async fn ready(&mut self, pollable: Resource<DynPollable>) -> Result<bool> {
        poll::HostPollable::ready(self.table, pollable).await
    }
    fn drop(&mut self, pollable: Resource<DynPollable>) -> Result<()> {
        poll::HostPollable::drop(self.table, pollable)
    }
}

impl streams::Host for Waiting<'_> {
    fn convert_stream_error(&mut self, err: StreamError) -> Result<streams::StreamError> {
        streams::Host::convert_stream_error(self.table, err)
    }
}

impl streams::HostOutputStream for Waiting<'_> {
    async fn drop(&mut self, stream: Resource<DynOutputStream>) -> Result<()> {
        streams::HostOutputStream::drop(self.table, stream).await
    }
    fn check_write(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<u64> {
        streams::HostOutputStream::check_write(self.table, stream)
    }
    fn write(&mut self, stream: Resource<DynOutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        streams::HostOutputStream::write(self.table, stream, bytes)
    }
    fn subscribe(&mut self, stream: Resource<DynOutputStream>) -> Result<Resource<DynPollable>> {
        streams::HostOutputStream::subscribe(self.table, stream)
    }
    async fn blocking_write_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        bytes: Vec<u8>,
    ) -> StreamResult<()> {
        let started = Instant::now();
        let r =
            streams::HostOutputStream::blocking_write_and_flush(self.table, stream, bytes).await;
        self.clock.waited(started.elapsed());
        r
    }
    async fn blocking_write_zeroes_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        len: u64,
    ) -> StreamResult<()> {
        let started = Instant::now();
        let r = streams::HostOutputStream::blocking_write_zeroes_and_flush(self.table, stream, len)
            .await;
        self.clock.waited(started.elapsed());
        r
    }
    fn write_zeroes(&mut self, stream: Resource<DynOutputStream>, len: u64) -> StreamResult<()> {
        streams::HostOutputStream::write_zeroes(self.table, stream, len)
    }
    fn flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        streams::HostOutputStream::flush(self.table, stream)
    }
    async fn blocking_flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        let started = Instant::now();
        let r = streams::HostOutputStream::blocking_flush(self.table, stream).await;
        self.clock.waited(started.elapsed());
        r
    }
    fn splice(
        &mut self,
        dest: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        streams::HostOutputStream::splice(self.table, dest, src, len)
    }
    async fn blocking_splice(
        &mut self,
        dest: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        let started = Instant::now();
        let r = streams::HostOutputStream::blocking_splice(self.table, dest, src, len).await;
        self.clock.waited(started.elapsed());
        r
    }
}

impl streams::HostInputStream for Waiting<'_> {
    async fn drop(&mut self, stream: Resource<DynInputStream>) -> Result<()> {
        streams::HostInputStream::drop(self.table, stream).await
    }
    fn read(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        streams::HostInputStream::read(self.table, stream, len)
    }
    async fn blocking_read(
        &mut self,
        stream: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<Vec<u8>> {
        let started = Instant::now();
        let r = streams::HostInputStream::blocking_read(self.table, stream, len).await;
        self.clock.waited(started.elapsed());
        r
    }
    fn skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        streams::HostInputStream::skip(self.table, stream, len)
    }
    async fn blocking_skip(
        &mut self,
        stream: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        let started = Instant::now();
        let r = streams::HostInputStream::blocking_skip(self.table, stream, len).await;
        self.clock.waited(started.elapsed());
        r
    }
    fn subscribe(&mut self, stream: Resource<DynInputStream>) -> Result<Resource<DynPollable>> {
        streams::HostInputStream::subscribe(self.table, stream)
    }
}
