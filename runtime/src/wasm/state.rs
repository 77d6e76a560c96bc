//! The state a component's store holds — everything one instance may touch lives in
//! [`HostState`], one field per capability — and the `mailpush:driver/host` imports,
//! which hand each call to its capability (log, METADATA).

use std::sync::Arc;

use mailpush_core::{MetadataLookup, Transaction};
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::bindings::mailpush::driver::host::{self, Level};
use super::http::OutboundHttp;
use super::limits::{CallClock, MemoryLimiter};
use super::log::{self, DriverTag, SharedLog};
use super::metadata::MetadataAccess;

/// Per-instance host state.
pub struct HostState {
    pub tag: Arc<DriverTag>,
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    /// Outbound HTTP: the policy's per-instance hooks.
    pub outbound: OutboundHttp,
    /// Linear memory (limits).
    pub limiter: MemoryLimiter,
    /// Guest time of the current call (limits).
    pub clock: CallClock,
    /// METADATA, confined to `txn`'s user.
    pub metadata: MetadataAccess,
    /// The transaction being handled.
    pub txn: Option<Arc<Transaction>>,
    /// The current transaction's log budget, shared with [`OutboundHttp`] (whose
    /// refusal warnings count against it).
    pub log: SharedLog,
    /// A Rust panic message the guest logged during the current call ("panicked at …",
    /// as the SDK's panic hook writes it): the reason given when the call then traps.
    pub panic: Option<String>,
}

impl HostState {
    /// State with no WASI grants ([`super::wasi::ctx`]); `log` is the budget `outbound`
    /// was made with.
    pub fn new(
        tag: Arc<DriverTag>,
        memory: usize,
        outbound: OutboundHttp,
        metadata: Arc<dyn MetadataLookup>,
        log: SharedLog,
    ) -> Self {
        HostState {
            tag,
            table: ResourceTable::new(),
            wasi: super::wasi::ctx(),
            http: WasiHttpCtx::new(),
            outbound,
            limiter: MemoryLimiter::new(memory),
            clock: CallClock::default(),
            metadata: MetadataAccess::new(metadata),
            txn: None,
            log,
            panic: None,
        }
    }
}

/// Links every import a driver may use: WASI 0.2, `wasi:http`, `mailpush:driver/host`.
pub fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    super::wasi::link(linker)?;
    super::http::link(linker)?;
    host::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

impl host::Host for HostState {
    async fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        if matches!(level, Level::Error) && message.starts_with("panicked at ") {
            // Kept even when the log budget is spent: it explains the trap that follows.
            let mut m: String = message.chars().take(1024).collect();
            m = m.replace('\n', " ");
            self.panic = Some(m);
        }
        let txn = self.txn.as_ref().map(|t| t.id.as_str());
        log::guest_line(&self.tag, txn, &self.log, level, message);
        Ok(())
    }

    async fn metadata_get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.metadata.get(&self.tag, self.txn.as_ref(), &key))
    }
}
