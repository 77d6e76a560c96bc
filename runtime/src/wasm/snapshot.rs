//! Pre-initialised snapshots: a driver's `init(args)` runs once at load, and its
//! instances start from a snapshot of the state it left, without calling `init` again.
//!
//! The component is instrumented (wasmtime-wizer: every core module's memories and
//! globals become readable through an extra export), instantiated with every import a
//! trap except those whose answers are the same in every instance (the empty
//! environment, the monotonic clock at 0: [`define_constant_imports`]), and its `init`
//! called with the driver's arguments. If `init` returns without touching another
//! import, the state it left is written into a new component (data segments and global
//! initialisers) that the driver then runs instead of the original. If `init` calls one
//! — logs, reads METADATA or the wall clock, draws randomness, writes to stdout, opens
//! an HTTP request — a snapshot could not keep what that import did, so the driver is
//! not snapshotted and every instance calls `init` itself, as before
//! ([`Preinit::Declined`] says which import).
//!
//! A snapshot holds what `init` computed from its arguments, secrets included: the AOT
//! cache stores it in a file only the owner may read (`engine.rs`).

use wasmtime::component::{Component, Instance, Lift, Linker, WasmList};
use wasmtime::Store;
use wasmtime_wizer::{ComponentContext, ComponentInstanceState, Wizer};

use super::bindings::PushDriver;
use super::state::HostState;

/// What pre-initialising a component came to.
pub enum Preinit {
    /// The pre-initialised component's bytes.
    Snapshot(Vec<u8>),
    /// No snapshot: why (instances call `init` themselves), and whether the reason
    /// lasts (`init` calls an import: it will the next time) or may not (a trap, which
    /// the unsnapshotted load reports in full).
    Declined { why: String, lasting: bool },
    /// `init` refused its arguments (the message it returned).
    Refused(String),
}

/// Instruments a component for a snapshot. `Err` names what wasmtime-wizer does not
/// support in it (then the driver runs unsnapshotted).
pub fn instrument(bytes: &[u8]) -> Result<(ComponentContext<'_>, Vec<u8>), String> {
    // wasmtime-wizer panics on some shapes it does not support (a mutable reference
    // global): a decline, not a crash.
    std::panic::catch_unwind(|| Wizer::new().instrument_component(bytes))
        .map_err(|_| "wasmtime-wizer cannot instrument this component".to_string())?
        .map_err(|e| format!("cannot instrument the component for a snapshot: {e}"))
}

/// Instantiates the instrumented `component` in `store` with every import a trap,
/// calls `init(args)`, and snapshots what it left. `arm` re-arms the store's limits
/// before each call.
pub async fn preinitialise(
    cx: &ComponentContext<'_>,
    component: &Component,
    store: &mut Store<HostState>,
    args: &[(String, String)],
    init_timeout: std::time::Duration,
    arm: impl Fn(&mut Store<HostState>) + Sync,
) -> Preinit {
    let mut linker: Linker<HostState> = Linker::new(component.engine());
    if let Err(e) = define_constant_imports(&mut linker, component) {
        return Preinit::Declined {
            why: format!("cannot stub the imports: {e:#}"),
            lasting: false,
        };
    }
    if let Err(e) = linker.define_unknown_imports_as_traps(component) {
        return Preinit::Declined {
            why: format!("cannot stub the imports: {e:#}"),
            lasting: false,
        };
    }
    arm(store);
    let instance = match linker.instantiate_async(&mut *store, component).await {
        Ok(i) => i,
        Err(e) => return import_called(&e),
    };
    let bindings = match PushDriver::new(&mut *store, &instance) {
        Ok(b) => b,
        Err(e) => {
            return Preinit::Declined {
                why: format!("{e:#}"),
                lasting: false,
            }
        }
    };
    arm(store);
    let init = bindings
        .mailpush_driver_driver()
        .call_init(&mut *store, args);
    match tokio::time::timeout(init_timeout, init).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(msg))) => return Preinit::Refused(msg),
        Ok(Err(e)) => return import_called(&e),
        Err(_) => {
            return Preinit::Declined {
                why: format!(
                    "init did not finish within {} ms (init_timeout_msecs)",
                    init_timeout.as_millis()
                ),
                lasting: false,
            }
        }
    }
    let mut state = Reader {
        store,
        instance,
        arm: &arm,
        error: None,
    };
    let wizer = Wizer::new();
    let snapshot = std::panic::AssertUnwindSafe(wizer.snapshot_component(cx, &mut state));
    let snapshot = match futures::FutureExt::catch_unwind(snapshot).await {
        Ok(s) => s,
        Err(_) => {
            return Preinit::Declined {
                why: "wasmtime-wizer failed to write the snapshot".into(),
                lasting: true,
            }
        }
    };
    if let Some(e) = state.error {
        return Preinit::Declined {
            why: format!("reading the state init left failed: {e}"),
            lasting: false,
        };
    }
    match snapshot {
        Ok(bytes) => Preinit::Snapshot(bytes),
        Err(e) => Preinit::Declined {
            why: format!("writing the snapshot failed: {e}"),
            lasting: false,
        },
    }
}

/// The imports whose answers are the same in every instance, so a snapshot keeps them
/// correctly: the environment, the arguments and the working directory (a driver is
/// granted none: always empty), and the monotonic clock, which reads 0 — each instance's
/// clock starts at 0 when the instance is made, so `init` seems to have run at that
/// moment. Language runtimes read these in their first call (the JavaScript runtime
/// the clock, the Python one the environment). Every other import traps.
fn define_constant_imports(
    linker: &mut Linker<HostState>,
    component: &Component,
) -> wasmtime::Result<()> {
    let engine = component.engine().clone();
    let imports: Vec<String> = component
        .component_type()
        .imports(&engine)
        .map(|(name, _)| name.to_string())
        .collect();
    for name in imports {
        if name.starts_with("wasi:cli/environment@") {
            let mut i = linker.instance(&name)?;
            i.func_wrap("get-environment", |_, (): ()| {
                Ok((Vec::<(String, String)>::new(),))
            })?;
            i.func_wrap("get-arguments", |_, (): ()| Ok((Vec::<String>::new(),)))?;
            i.func_wrap("initial-cwd", |_, (): ()| Ok((None::<String>,)))?;
        } else if name.starts_with("wasi:clocks/monotonic-clock@") {
            linker
                .instance(&name)?
                .func_wrap("now", |_, (): ()| Ok((0u64,)))?;
        }
    }
    Ok(())
}

/// Why the component could not be snapshotted, from the trap of its instantiation or
/// `init`: the import it called (lasting: it will call it again), or another trap (the
/// ordinary load that follows reports it in full).
fn import_called(e: &wasmtime::Error) -> Preinit {
    let text = format!("{e:#}");
    // wasmtime: "unknown import: `wasi:random/random@0.2.0#get-random-u64` has not been defined"
    let import = text
        .split("unknown import: `")
        .nth(1)
        .and_then(|rest| rest.split('`').next());
    match import {
        Some(import) => Preinit::Declined {
            why: format!("init calls `{import}`, which a snapshot cannot keep"),
            lasting: true,
        },
        None => Preinit::Declined {
            why: format!(
                "init trapped when run for a snapshot: {}",
                e.root_cause().to_string().lines().next().unwrap_or("")
            ),
            lasting: false,
        },
    }
}

/// Reads the instrumented instance's state for wasmtime-wizer. Errors cannot be
/// returned through its trait: the first is kept, and the snapshot discarded.
struct Reader<'a, A> {
    store: &'a mut Store<HostState>,
    instance: Instance,
    arm: &'a A,
    error: Option<String>,
}

impl<A: Fn(&mut Store<HostState>)> Reader<'_, A> {
    async fn call<R, R2: Default>(
        &mut self,
        instance: &str,
        func: &str,
        use_ret: impl FnOnce(&mut Store<HostState>, R) -> R2,
    ) -> R2
    where
        R: Lift + Send + Sync + 'static,
    {
        if self.error.is_some() {
            return R2::default();
        }
        let found = self
            .instance
            .get_export_index(&mut *self.store, None, instance)
            .and_then(|i| {
                self.instance
                    .get_export_index(&mut *self.store, Some(&i), func)
            })
            .and_then(|f| {
                self.instance
                    .get_typed_func::<(), (R,)>(&mut *self.store, f)
                    .ok()
            });
        let Some(f) = found else {
            self.error = Some(format!("{instance}#{func} is missing"));
            return R2::default();
        };
        (self.arm)(self.store);
        match f.call_async(&mut *self.store, ()).await {
            Ok((r,)) => use_ret(self.store, r),
            Err(e) => {
                self.error = Some(format!("{instance}#{func}: {}", e.root_cause()));
                R2::default()
            }
        }
    }
}

impl<A: Fn(&mut Store<HostState>) + Sync> ComponentInstanceState for Reader<'_, A> {
    async fn call_func_ret_list_u8(
        &mut self,
        instance: &str,
        func: &str,
        contents: impl FnOnce(&[u8]) + Send,
    ) {
        self.call(instance, func, |store, list: WasmList<u8>| {
            contents(list.as_le_slice(&*store));
        })
        .await
    }

    async fn call_func_ret_s32(&mut self, instance: &str, func: &str) -> i32 {
        self.call(instance, func, |_, r| r).await
    }

    async fn call_func_ret_s64(&mut self, instance: &str, func: &str) -> i64 {
        self.call(instance, func, |_, r| r).await
    }

    async fn call_func_ret_f32(&mut self, instance: &str, func: &str) -> u32 {
        self.call(instance, func, |_, r: f32| r.to_bits()).await
    }

    async fn call_func_ret_f64(&mut self, instance: &str, func: &str) -> u64 {
        self.call(instance, func, |_, r: f64| r.to_bits()).await
    }
}
