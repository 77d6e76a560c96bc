//! The state a component's store holds — everything one instance may touch lives in
//! [`HostState`], one field per capability — and the `mailpush:driver/host` imports,
//! which hand each call to its capability (log, METADATA, HMAC).

use std::sync::Arc;

use mailpush_core::{MetadataLookup, Transaction};
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::StoreContextMut;

use super::stdio::{Output, SharedOutput};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::bindings::mailpush::driver::host::Level;
use super::http::OutboundHttp;
use super::limits::{CallClock, HostReservation, Limits, MemoryLimiter, FIELD_SIZE_LIMIT};
use super::log::{self, DriverTag, SharedLog};
use super::metadata::MetadataAccess;
use super::synchronous::Immediate;

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
    /// What the guest writes to stdout and stderr ([`super::stdio`]).
    pub output: SharedOutput,
    /// This instance's share of the host memory of all instances.
    _reservation: HostReservation,
}

impl HostState {
    /// Deletes the `request-options` resources left in the table. `wasi:http`'s
    /// `handle` takes the options it is given (the guest's handle is gone), but
    /// wasmtime-wasi-http 48 only reads them and never deletes them: one entry leaks per
    /// request, and a reused instance (`instance=reuse`) would run out of resources after
    /// `max_resources` requests. Called between transactions of a reused instance, where
    /// a guest holding options of its own across transactions (never passed to `handle`)
    /// loses them too.
    ///
    /// Most transactions leave none: the occupied entries are looked at first, and the
    /// table's slots are searched only when one of them is options (looking up every
    /// slot took about a fifth of a warm driver's dispatch).
    pub fn drop_request_options(&mut self) -> usize {
        use wasmtime::component::Resource;
        use wasmtime_wasi_http::RequestOptions;
        if !self.table.iter_mut().any(|e| e.is::<RequestOptions>()) {
            return 0;
        }
        let reps: Vec<u32> = (0..u32::try_from(self.table.max_capacity()).unwrap_or(u32::MAX))
            .filter(|&rep| {
                self.table
                    .get::<RequestOptions>(&Resource::new_borrow(rep))
                    .is_ok()
            })
            .collect();
        reps.iter()
            .filter(|&&rep| {
                self.table
                    .delete::<RequestOptions>(Resource::new_own(rep))
                    .is_ok()
            })
            .count()
    }

    /// State with no WASI grants ([`super::wasi::ctx`]), bounded by `limits`: at most
    /// [`Limits::max_resources`] host resources, each fields resource at most
    /// [`FIELD_SIZE_LIMIT`]. `log` is the budget `outbound` was made with.
    pub fn new(
        tag: Arc<DriverTag>,
        limits: &Limits,
        outbound: OutboundHttp,
        metadata: Arc<dyn MetadataLookup>,
        log: SharedLog,
        reservation: HostReservation,
    ) -> Self {
        let mut table = ResourceTable::new();
        table.set_max_capacity(limits.max_resources());
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(FIELD_SIZE_LIMIT);
        let output = Output::shared(tag.clone(), log.clone());
        HostState {
            wasi: super::wasi::ctx(&output),
            output,
            tag,
            table,
            http,
            outbound,
            limiter: MemoryLimiter::new(limits.memory),
            clock: CallClock::default(),
            metadata: MetadataAccess::new(metadata),
            txn: None,
            log,
            panic: None,
            _reservation: reservation,
        }
    }

    /// `wasi:io` for this instance on the synchronous path ([`Immediate`]).
    fn io(&mut self) -> Immediate<'_> {
        Immediate {
            table: &mut self.table,
        }
    }
}

/// Links every import a driver may use: WASI 0.2, `wasi:http`, `mailpush:driver/host`.
pub fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    super::wasi::link(linker)?;
    super::http::link(linker)?;
    link_host(linker)
}

/// Links the imports of a driver that cannot wait ([`super::synchronous`]), all
/// synchronous: WASI 0.2 and `mailpush:driver/host` (no `wasi:http`).
pub fn link_synchronous(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    super::synchronous::link_wasi(linker, HostState::io)?;
    link_host(linker)
}

/// `mailpush:driver/host` at this host's version (a component built against an older
/// 0.1.x finds it too: wasmtime matches imports by semver). Every function is plain
/// synchronous work, so the same definitions serve fibers and synchronous calls.
fn link_host(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    let mut host = linker.instance(&format!(
        "{}/host@{}",
        super::bindings::WIT_PACKAGE,
        super::bindings::WIT_VERSION
    ))?;
    host.func_wrap(
        "log",
        |mut cx: StoreContextMut<'_, HostState>, (level, message): (Level, String)| {
            cx.data_mut().log(level, message);
            Ok(())
        },
    )?;
    host.func_wrap(
        "metadata-get",
        |mut cx: StoreContextMut<'_, HostState>, (key,): (String,)| {
            Ok((cx.data_mut().metadata_get(&key),))
        },
    )?;
    super::hmac::link(&mut host, |s: &mut HostState| &mut s.clock)
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

impl HostState {
    /// `mailpush:driver/host.log`.
    fn log(&mut self, level: Level, message: String) {
        if matches!(level, Level::Error) && message.starts_with("panicked at ") {
            // Kept even when the log budget is spent: it explains the trap that follows
            // (escaped when it becomes the reason).
            self.panic = Some(message.chars().take(1024).collect());
        } else if matches!(level, Level::Error) {
            // An SDK logs an exception it does not handle before the call traps: like
            // stderr, it explains the trap.
            self.output.lock().remember(&message);
        }
        let txn = self.txn.as_ref().map(|t| t.id.as_str());
        log::guest_line(&self.tag, txn, &self.log, level, message);
    }

    /// `mailpush:driver/host.metadata-get`.
    fn metadata_get(&mut self, key: &str) -> Option<String> {
        self.metadata
            .get(&self.tag, self.txn.as_ref(), &self.log, key)
    }
}
