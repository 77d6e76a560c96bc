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
use wasmtime::component::{Component, Instance, Linker, TypedFunc};
use wasmtime::{Config, Engine, Store};

/// How the component's exports are called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Calls {
    /// `call_async`: on a fiber, as mailpush calls drivers.
    Async,
    /// `call`: on the caller's stack.
    Sync,
}

type Init = TypedFunc<(Vec<(String, String)>,), (Result<(), String>,)>;
type BeginTxn = TypedFunc<(String, String), (Begin,)>;

/// Nanoseconds per transaction (`begin-txn` + `deliver`) over `n` transactions in one
/// warm instance of the component at `path`, `init` called with `args` first.
pub fn bare_calls(
    path: &Path,
    args: &[(&str, &str)],
    txn: &Transaction,
    n: usize,
    calls: Calls,
) -> f64 {
    let engine = Engine::new(&Config::new()).expect("engine");
    let component = Component::from_file(&engine, path).expect("component");
    let mut linker: Linker<()> = Linker::new(&engine);
    linker
        .define_unknown_imports_as_traps(&component)
        .expect("trapping imports");
    let pre = linker.instantiate_pre(&component).expect("instantiate_pre");
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
    let mut store = Store::new(&engine, ());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let instance: Instance = match calls {
        Calls::Sync => pre.instantiate(&mut store).expect("instance"),
        Calls::Async => rt
            .block_on(pre.instantiate_async(&mut store))
            .expect("instance"),
    };
    let driver = instance
        .get_export_index(&mut store, None, "mailpush:driver/driver@0.1.0")
        .expect("the driver export");
    let func = |store: &mut Store<()>, name: &str| {
        let index = instance
            .get_export_index(&mut *store, Some(&driver), name)
            .unwrap_or_else(|| panic!("no export {name}"));
        instance.get_func(&mut *store, index).expect("a function")
    };
    let init: Init = func(&mut store, "init").typed(&store).expect("init's type");
    let begin: BeginTxn = func(&mut store, "begin-txn")
        .typed(&store)
        .expect("begin-txn's type");
    let deliver = func(&mut store, "deliver");
    let deliver: TypedFunc<(&TransactionRef<'_>,), (Result<(), Failure>,)> =
        deliver.typed(&store).expect("deliver's type");
    let (id, user) = (txn.id.clone(), txn.user.clone());
    match calls {
        Calls::Sync => {
            init.call(&mut store, (args,))
                .expect("init")
                .0
                .expect("init's answer");
            let start = Instant::now();
            for _ in 0..n {
                let (b,) = begin
                    .call(&mut store, (id.clone(), user.clone()))
                    .expect("begin-txn");
                std::hint::black_box(b);
                let (r,) = deliver.call(&mut store, (&record,)).expect("deliver");
                assert!(r.is_ok(), "delivered");
            }
            start.elapsed().as_nanos() as f64 / n as f64
        }
        Calls::Async => rt.block_on(async {
            init.call_async(&mut store, (args,))
                .await
                .expect("init")
                .0
                .expect("init's answer");
            let start = Instant::now();
            for _ in 0..n {
                let (b,) = begin
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
        }),
    }
}
