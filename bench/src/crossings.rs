//! The floor under a wasm driver's cost (`--only crossings`): the bench component with
//! `work=none`, warm, called by wasmtime alone — `begin-txn` and `deliver` with the same
//! transaction, no mailpush host state, every import a trap — either on a fiber
//! (`call_async`, as mailpush calls every driver) or synchronously (`call`, what a
//! synchronous path would do). What mailpush's own dispatch adds is the difference to the
//! same component measured through `deliver` (§1's path).

use std::path::Path;
use std::time::Instant;

use mailpush::wasm::bindings::exports::mailpush::driver::driver::Begin;
use mailpush::wasm::bindings::mailpush::driver::types::Failure;
use mailpush::wasm::lower::{EventRecord, TransactionRef};
use mailpush_core::Transaction;
use wasmtime::component::{Component, Func, Instance, Linker, TypedFunc};
use wasmtime::{Engine, Store};

/// How the component's exports are called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Calls {
    /// `call_async`: on a fiber, as mailpush calls drivers; one warm instance.
    Async,
    /// `call`: on the caller's stack; one warm instance.
    Sync,
    /// `call_async`, in a new instance per transaction (`init` called in each).
    Fresh,
}

type Init = TypedFunc<(Vec<(String, String)>,), (Result<(), String>,)>;
type BeginTxn = TypedFunc<(String, String), (Begin,)>;
type Deliver<'a> = TypedFunc<(&'a TransactionRef<'a>,), (Result<(), Failure>,)>;

/// A store of `engine` with an epoch deadline far away (mailpush's engines interrupt on
/// epochs; the deadline is what mailpush arms before each call, without the ticking).
fn store(engine: &Engine) -> Store<()> {
    let mut store = Store::new(engine, ());
    store.set_epoch_deadline(1 << 40);
    store
}

/// The driver's three functions in `instance`.
struct Exports {
    init: Init,
    begin: BeginTxn,
    deliver: Func,
}

/// Nanoseconds per transaction (`begin-txn` + `deliver`, and with [`Calls::Fresh`] the
/// instance and its `init` too) over `n` transactions of the component at `path` compiled
/// by `engine`, `init` called with `args`.
pub fn bare_calls(
    engine: &Engine,
    path: &Path,
    args: &[(&str, &str)],
    txn: &Transaction,
    n: usize,
    calls: Calls,
) -> f64 {
    let component = Component::from_file(engine, path).expect("component");
    let mut linker: Linker<()> = Linker::new(engine);
    linker
        .define_unknown_imports_as_traps(&component)
        .expect("trapping imports");
    let pre = linker.instantiate_pre(&component).expect("instantiate_pre");
    let driver = component
        .get_export_index(None, "mailpush:driver/driver@0.1.1")
        .expect("the driver export");
    let index = |name: &str| {
        component
            .get_export_index(Some(&driver), name)
            .unwrap_or_else(|| panic!("no export {name}"))
    };
    let (init_at, begin_at, deliver_at) = (index("init"), index("begin-txn"), index("deliver"));
    let exports = |store: &mut Store<()>, instance: &Instance| Exports {
        init: instance
            .get_typed_func(&mut *store, init_at)
            .expect("init's type"),
        begin: instance
            .get_typed_func(&mut *store, begin_at)
            .expect("begin-txn's type"),
        deliver: instance.get_func(&mut *store, deliver_at).expect("deliver"),
    };
    let jsons = txn.event_json();
    let events: Vec<EventRecord<'_>> = txn
        .events
        .iter()
        .zip(jsons)
        .map(|(e, j)| EventRecord::new(e, j))
        .collect();
    let record = TransactionRef::new(txn, &events, txn.json_without_metadata());
    let args: Vec<(String, String)> = args
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let (id, user) = (txn.id.clone(), txn.user.clone());
    if calls == Calls::Sync {
        let mut store = store(engine);
        let instance = pre.instantiate(&mut store).expect("instance");
        let f = exports(&mut store, &instance);
        let deliver: Deliver<'_> = f.deliver.typed(&store).expect("deliver's type");
        f.init
            .call(&mut store, (args,))
            .expect("init")
            .0
            .expect("init's answer");
        let start = Instant::now();
        for _ in 0..n {
            let (b,) = f
                .begin
                .call(&mut store, (id.clone(), user.clone()))
                .expect("begin-txn");
            std::hint::black_box(b);
            let (r,) = deliver.call(&mut store, (&record,)).expect("deliver");
            assert!(r.is_ok(), "delivered");
        }
        return start.elapsed().as_nanos() as f64 / n as f64;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // One instance, warm (`Async`), or the first of many (`Fresh`).
        let mut store = store(engine);
        let instance = pre.instantiate_async(&mut store).await.expect("instance");
        let mut f = exports(&mut store, &instance);
        let mut deliver: Deliver<'_> = f.deliver.typed(&store).expect("deliver's type");
        f.init
            .call_async(&mut store, (args.clone(),))
            .await
            .expect("init")
            .0
            .expect("init's answer");
        let start = Instant::now();
        for _ in 0..n {
            if calls == Calls::Fresh {
                store = self::store(engine);
                let instance = pre.instantiate_async(&mut store).await.expect("instance");
                f = exports(&mut store, &instance);
                // SAFETY: the same component's `deliver`, type-checked above.
                deliver = unsafe { Deliver::new_unchecked(f.deliver) };
                f.init
                    .call_async(&mut store, (args.clone(),))
                    .await
                    .expect("init")
                    .0
                    .expect("init's answer");
            }
            let (b,) = f
                .begin
                .call_async(&mut store, (id.clone(), user.clone()))
                .await
                .expect("begin-txn");
            std::hint::black_box(b);
            let (r,) = deliver
                .call_async(&mut store, (&record,))
                .await
                .expect("deliver");
            assert!(r.is_ok(), "delivered");
        }
        start.elapsed().as_nanos() as f64 / n as f64
    })
}
