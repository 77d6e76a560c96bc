//! Criterion micro-benchmarks of the driver logic, three ways: the same handler (filter,
//! JSON payload, HMAC-SHA256) as native Rust (alone and as a driver via dispatch), as a
//! wasm component driver via dispatch (as built for mailpush:driver@0.1.1, and with
//! `contract=0.1.0`: begin-txn per transaction, HMAC in wasm), and as a Lua 5.4 function
//! through mlua.
//! `cargo bench -p mailpush-bench`; the one-run report with ratios is `mailpush-bench`.

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use mailpush::pipeline::deliver;
use mailpush::wasm::engine::Engines;
use mailpush_bench::{
    copies, lua_event, message, native_handler, txn, warm_bench_handler, warm_bench_handler_with,
    NativeBench, LUA_HANDLER,
};

fn driver_logic(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let m = message();
    let t = txn();
    let mut g = c.benchmark_group("driver_logic");
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("native_fn", |b| {
        b.iter(|| {
            native_handler(
                std::hint::black_box("alice@example.com"),
                std::hint::black_box(&m),
                b"secret",
            )
        })
    });
    g.bench_function("native_driver_via_dispatch", |b| {
        b.to_async(&rt).iter_batched(
            || copies(&t, 1).remove(0),
            |t| async move { deliver(&NativeBench, &t).await },
            BatchSize::SmallInput,
        )
    });
    let engines = Arc::new(Engines::new(None));
    let wasm = rt.block_on(warm_bench_handler(&engines));
    g.bench_function("wasm_driver_via_dispatch", |b| {
        b.to_async(&rt).iter_batched(
            || copies(&t, 1).remove(0),
            |t| {
                let wasm = &wasm;
                async move { deliver(wasm, &t).await }
            },
            BatchSize::SmallInput,
        )
    });
    let wasm_010 = rt.block_on(warm_bench_handler_with(
        &engines,
        "key=secret contract=0.1.0",
    ));
    g.bench_function("wasm_driver_via_dispatch_contract_0_1_0", |b| {
        b.to_async(&rt).iter_batched(
            || copies(&t, 1).remove(0),
            |t| {
                let wasm = &wasm_010;
                async move { deliver(wasm, &t).await }
            },
            BatchSize::SmallInput,
        )
    });
    let vm = mlua::Lua::new();
    vm.load(LUA_HANDLER).exec().unwrap();
    let handle: mlua::Function = vm.globals().get("handle").unwrap();
    g.bench_function("lua_fn", |b| {
        b.iter(|| {
            let ev = lua_event(&vm, &m).unwrap();
            let sig: Option<String> = handle.call(("alice@example.com", ev)).unwrap();
            sig
        })
    });
    g.finish();
}

criterion_group!(benches, driver_logic);
criterion_main!(benches);
