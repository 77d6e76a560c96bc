//! `mailpush-bench`: every figure of BENCHMARKS.md, measured in one run on this machine,
//! as ratios against the alternatives.
//!
//! ```text
//! cargo run --release -p mailpush-bench            # full run (about a minute), markdown on stdout
//! cargo run --release -p mailpush-bench -- --smoke # seconds; no timing claims (CI)
//! cargo run --release -p mailpush-bench -- --only fresh,http   # some sections
//!   (logic, crossings, fresh, http, languages, ingest, startup, memory)
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use mailpush::pipeline::{deliver, Outcome};
use mailpush::wasm::engine::Engines;

use mailpush::wasm::instance::InstanceModel;
use mailpush::wasm::sandbox::Sandbox;
use mailpush::wasm::WasmDriver;
use mailpush_bench::{
    copies, load, lua_event, message, native_handler, txn, warm_bench_handler,
    warm_bench_handler_calls, warm_bench_handler_with, NativeBench,
};

use mailpush_core::{Driver, Event, NoMetadata, Transaction};
use mailpush_e2e::guest;

struct Opts {
    smoke: bool,
    runs: usize,
}

/// min / median / max.
fn stats(mut xs: Vec<f64>) -> (f64, f64, f64) {
    xs.sort_by(|a, b| a.total_cmp(b));
    (xs[0], xs[xs.len() / 2], xs[xs.len() - 1])
}

fn fmt3((a, b, c): (f64, f64, f64), unit: &str) -> String {
    format!("{a:.0} / {b:.0} / {c:.0} {unit}")
}

fn percentile(mut xs: Vec<f64>, p: f64) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[((xs.len() as f64 - 1.0) * p).round() as usize]
}

/// Nanoseconds per delivery of `n` copies of `t` through `d` (the copies are made before
/// the clock starts: each delivery gets a transaction of its own).
async fn ns_per_delivery(d: &dyn Driver, t: &Arc<Transaction>, n: usize) -> f64 {
    let txns = copies(t, n);
    let start = Instant::now();
    for t in &txns {
        assert_eq!(deliver(d, t).await, Outcome::Delivered);
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

async fn driver_logic(o: &Opts, out: &mut Vec<String>) {
    let n = if o.smoke { 200 } else { 20_000 };
    let m = message();
    let (mut native, mut native_dispatch, mut wasm, mut wasm_010, mut wasm_async, mut lua) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    // Native.
    for _ in 0..o.runs {
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(native_handler(
                std::hint::black_box("alice@example.com"),
                std::hint::black_box(&m),
                b"secret",
            ));
        }
        native.push(t.elapsed().as_nanos() as f64 / n as f64);
    }
    // Native, as a driver through the dispatch path.
    let t1 = txn();
    for _ in 0..o.runs {
        native_dispatch.push(ns_per_delivery(&NativeBench, &t1, n).await);
    }
    // Wasm: the same handler as a component, a warm instance, one transaction per event,
    // event marshalling included. As built (mailpush:driver@0.1.1): its begin-txn answer
    // declared at load (fixed-begin: one call, deliver), signing through the host.
    let engines = Arc::new(Engines::new(None));
    let d = warm_bench_handler(&engines).await;
    assert!(
        d.synchronous(),
        "the bench handler imports nothing to wait on"
    );
    // As before the contract's 0.1.1 revision (begin-txn + deliver, HMAC in wasm), and
    // also on a fiber per call, as before the synchronous path (`calls=async`).
    let d_010 = warm_bench_handler_with(&engines, "key=secret contract=0.1.0").await;
    let d_async = warm_bench_handler_calls(&engines, "key=secret contract=0.1.0", false).await;
    let t1 = txn();
    for _ in 0..o.runs {
        wasm.push(ns_per_delivery(&d, &t1, n).await);
        wasm_010.push(ns_per_delivery(&d_010, &t1, n).await);
        wasm_async.push(ns_per_delivery(&d_async, &t1, n).await);
    }
    // Lua 5.4 through mlua: the event as the table Dovecot builds, the handler in Lua.
    let vm = mlua::Lua::new();
    vm.load(mailpush_bench::LUA_HANDLER)
        .exec()
        .expect("handler.lua");
    let handle: mlua::Function = vm.globals().get("handle").expect("handle()");
    let ln = if o.smoke { 20 } else { (n / 10).max(1) };
    for _ in 0..o.runs {
        let t = Instant::now();
        for _ in 0..ln {
            let ev = lua_event(&vm, &m).unwrap();
            let sig: Option<String> = handle.call(("alice@example.com", ev)).unwrap();
            std::hint::black_box(sig);
        }
        lua.push(t.elapsed().as_nanos() as f64 / ln as f64);
    }
    // Same result three ways.
    let expected = native_handler("alice@example.com", &m, b"secret").unwrap();
    let ev = lua_event(&vm, &m).unwrap();
    let lua_sig: String = handle.call(("alice@example.com", ev)).unwrap();
    assert_eq!(
        lua_sig, expected,
        "the Lua handler computes the same signature"
    );

    let (n_s, nd_s, w_s, w010_s, wa_s, l_s) = (
        stats(native),
        stats(native_dispatch),
        stats(wasm),
        stats(wasm_010),
        stats(wasm_async),
        stats(lua),
    );
    out.push("## 1. Driver logic: filter + JSON payload + HMAC-SHA256, per event\n".into());
    out.push(
        "| implementation | ns/event (min / median / max) | events/s (median) |\n|---|---|---|"
            .into(),
    );
    for (name, s) in [
        ("native Rust, the function alone", n_s),
        ("native Rust driver, via dispatch", nd_s),
        (
            "wasm component driver (warm instance), via dispatch: fixed-begin, host HMAC (0.1.1)",
            w_s,
        ),
        (
            "the same, `contract=0.1.0`: begin-txn per transaction, HMAC in wasm",
            w010_s,
        ),
        (
            "the same, `contract=0.1.0` and `calls=async` (a fiber per call, as before the synchronous path)",
            wa_s,
        ),
        ("Lua 5.4 (mlua, vendored), the function alone", l_s),
    ] {
        out.push(format!("| {name} | {} | {:.0} |", fmt3(s, "ns"), 1e9 / s.1));
    }
    out.push(format!(
        "\nRatios (median throughput): wasm/native, both as drivers via dispatch = **{:.2}×** (target ≥ 0.5×; against the bare function {:.2}×; with `contract=0.1.0` {:.2}×; with `contract=0.1.0` and `calls=async` {:.2}×); wasm/Lua = **{:.1}×** (target ≥ 3×); 0.1.1 / `contract=0.1.0` = **{:.2}×**; synchronous / `calls=async` (both 0.1.0) = **{:.2}×**.\n",
        nd_s.1 / w_s.1,
        n_s.1 / w_s.1,
        nd_s.1 / w010_s.1,
        nd_s.1 / wa_s.1,
        l_s.1 / w_s.1,
        w010_s.1 / w_s.1,
        wa_s.1 / w010_s.1
    ));
}

// ------------------------------------------------------------ 1b. the floor under §1

/// What getting one transaction into a component costs, with the component doing nothing:
/// through mailpush's dispatch (§1's path), and through wasmtime alone, on a fiber and
/// synchronously ([`mailpush_bench::crossings`]).
async fn crossings(o: &Opts, out: &mut Vec<String>) {
    use mailpush_bench::crossings::{bare_calls, Calls};
    let n = if o.smoke { 200 } else { 20_000 };
    let fresh_n = if o.smoke { 20 } else { 3000 };
    let engines = Arc::new(Engines::new(None));
    let engine = engines.get(false).expect("engine").engine().clone();
    // begin-txn + deliver, as wasmtime alone calls them below (`contract=0.1.0`); and
    // deliver alone (fixed-begin, the handler as built).
    let idle = warm_bench_handler_with(&engines, "key=secret work=none contract=0.1.0").await;
    let idle_async =
        warm_bench_handler_calls(&engines, "key=secret work=none contract=0.1.0", false).await;
    let idle_fixed = warm_bench_handler_with(&engines, "key=secret work=none").await;
    let mut fresh_sandbox = Sandbox::default();
    fresh_sandbox.instance.snapshot = false;
    let fresh = load(
        &guest("bench-handler"),
        fresh_sandbox,
        "key=secret work=none contract=0.1.0",
        &engines,
    )
    .await;
    let t1 = txn();
    let mut rows: [Vec<f64>; 8] = Default::default();
    for _ in 0..o.runs {
        rows[0].push(ns_per_delivery(&NativeBench, &t1, n).await);
        rows[1].push(ns_per_delivery(&idle, &t1, n).await);
        rows[6].push(ns_per_delivery(&idle_async, &t1, n).await);
        rows[7].push(ns_per_delivery(&idle_fixed, &t1, n).await);
        rows[4].push(ns_per_delivery(&fresh, &t1, fresh_n).await);
        for (calls, row, n) in [
            (Calls::Async, 2, n),
            (Calls::Sync, 3, n),
            (Calls::Fresh, 5, fresh_n),
        ] {
            let (t1, engine) = (t1.clone(), engine.clone());
            let ns = tokio::task::spawn_blocking(move || {
                let args = [("key", "secret"), ("work", "none")];
                bare_calls(&engine, &guest("bench-handler"), &args, &t1, n, calls)
            })
            .await
            .expect("bare calls");
            rows[row].push(ns);
        }
    }
    let s: Vec<(f64, f64, f64)> = rows.into_iter().map(stats).collect();
    out.push(
        "## 1b. The floor under §1 and §2: a transaction into a component that does nothing with it\n"
            .into(),
    );
    out.push("| path (one transaction of one event: begin-txn + deliver) | ns/transaction (min / median / max) |\n|---|---|".into());
    let names = [
        "native driver (§1's handler, doing its work), via dispatch",
        "wasm driver doing nothing (`work=none`), warm instance, via dispatch",
        "the same component, wasmtime alone, warm, `call_async` (a fiber per call)",
        "the same component, wasmtime alone, warm, synchronous `call`",
        "the same driver, a fresh instance per transaction (`init=per-instance`), via dispatch",
        "the same component, wasmtime alone, a fresh instance per transaction with `init`",
        "the wasm driver doing nothing, warm, via dispatch, `calls=async` (a fiber per call)",
        "the wasm driver doing nothing, warm, via dispatch, its begin-txn answer declared at load (fixed-begin: deliver only)",
    ];
    for (name, s) in names.iter().zip(&s) {
        out.push(format!("| {name} | {} |", fmt3(*s, "ns")));
    }
    out.push(format!(
        "\nRatios (medians): warm, wasmtime alone (`call_async`) / via dispatch (synchronous) = **{:.2}×**; wasmtime alone, synchronous / `call_async` = **{:.2}×**; via dispatch, synchronous / `calls=async` = **{:.2}×**; fresh, wasmtime alone / via dispatch = **{:.2}×**; the idle wasm driver / the working native driver = **{:.1}×** (with fixed-begin **{:.1}×**); fixed-begin / begin-txn per transaction, via dispatch = **{:.2}×**.\n",
        s[2].1 / s[1].1,
        s[3].1 / s[2].1,
        s[1].1 / s[6].1,
        s[5].1 / s[4].1,
        s[1].1 / s[0].1,
        s[7].1 / s[0].1,
        s[7].1 / s[1].1
    ));
}

// ------------------------------------------------------------ 2. fresh instance

/// Latencies (µs) of `n` fresh-instance deliveries through `d`, after a warm-up.
/// Runs `fut` where the dispatcher runs a driver: on a lane thread of its own
/// (`mailpush::lane_thread`), so the figures are the product's.
async fn on_lane<T: Send + 'static>(
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    let Ok(t) = mailpush::pipeline::lane_thread::spawn("bench-lane".into(), fut) else {
        panic!("cannot start a lane thread")
    };
    t.join().await.expect("bench lane")
}

/// Latencies of `n` sequential transactions, measured on a lane thread.
async fn latencies(d: Arc<WasmDriver>, n: usize) -> Vec<f64> {
    on_lane(async move {
        let t1 = txn();
        for t1 in copies(&t1, (n / 10).max(1)) {
            deliver(d.as_ref(), &t1).await;
        }
        let mut lat = Vec::with_capacity(n);
        for t1 in copies(&t1, n) {
            let t = Instant::now();
            assert_eq!(deliver(d.as_ref(), &t1).await, Outcome::Delivered);
            lat.push(t.elapsed().as_nanos() as f64 / 1000.0);
        }
        lat
    })
    .await
}

/// The webhook's arguments where its HTTP is stubbed out ([`stubbed`]).
const STUBBED_WEBHOOK_ARGS: &str =
    "url=http://hooks.invalid/x secret=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A sandbox whose outbound HTTP is answered at the host import, with snapshots on or
/// off (`init=per-instance`).
fn stubbed(snapshot: bool) -> Sandbox {
    let mut sandbox = Sandbox::default();
    sandbox.http.http_stub = true;
    sandbox.http.allow_hosts = vec!["*".into()];
    sandbox.instance.snapshot = snapshot;
    sandbox
}

async fn fresh_instance(o: &Opts, out: &mut Vec<String>) {
    let n = if o.smoke { 20 } else { 3000 };
    let engines = Arc::new(Engines::new(None));
    let plain = |snapshot: bool| {
        let mut sandbox = Sandbox::default();
        sandbox.instance.snapshot = snapshot;
        sandbox
    };
    let webhook_args = STUBBED_WEBHOOK_ARGS;
    let webhook = Arc::new(load(&guest("webhook"), stubbed(true), webhook_args, &engines).await);
    let webhook_per_instance =
        Arc::new(load(&guest("webhook"), stubbed(false), webhook_args, &engines).await);
    // The floor: a driver that does nothing (instantiate, init, begin-txn, deliver).
    let trivial = Arc::new(load(&guest("hostile"), plain(true), "mode=ok", &engines).await);
    let trivial_per_instance =
        Arc::new(load(&guest("hostile"), plain(false), "mode=ok", &engines).await);
    // The same driver built without its waiting modes: it imports nothing to wait on and
    // is called synchronously (lever 2); the one above imports wasi:http and a clock.
    let no_wait = Arc::new(load(&guest("hostile-no-wait"), plain(true), "mode=ok", &engines).await);
    let no_wait_per_instance =
        Arc::new(load(&guest("hostile-no-wait"), plain(false), "mode=ok", &engines).await);
    // And that component on a fiber: what its fewer imports alone change.
    let no_wait_async = Arc::new({
        let mut sandbox = plain(true);
        sandbox.instance.synchronous_allowed = false;
        load(&guest("hostile-no-wait"), sandbox, "mode=ok", &engines).await
    });
    // And with its begin-txn answer declared at load (fixed-begin, 0.1.1): instantiate +
    // deliver.
    let no_wait_fixed = Arc::new(
        load(
            &guest("hostile-no-wait"),
            plain(true),
            "mode=ok fixed=all",
            &engines,
        )
        .await,
    );
    // The smallest driver the SDK makes (tests/guests/trivial): no code of its own, and
    // only the imports Rust's standard library brings. The hostile driver above is
    // built at opt-level 1 and carries every misbehaving mode.
    let minimal = Arc::new(load(&guest("trivial"), plain(true), "", &engines).await);
    let minimal_fixed = Arc::new(load(&guest("trivial"), plain(true), "fixed=all", &engines).await);
    assert!(webhook.snapshotted() && trivial.snapshotted() && no_wait.snapshotted());
    if let Ok(k) = std::env::var("PROFILE_WEBHOOK") {
        let lat = latencies(webhook.clone(), k.parse().unwrap()).await;
        eprintln!("{:?}", stats(lat));
        return;
    }
    assert!(minimal.snapshotted() && minimal.synchronous());
    assert!(minimal_fixed.snapshotted() && minimal_fixed.synchronous());
    assert!(!trivial.synchronous() && no_wait.synchronous());
    out.push("## 2. Fresh instance per transaction (HTTP stubbed out at the host import)\n".into());
    out.push("| driver | min | **median** | p99 | max |\n|---|---|---|---|---|".into());
    let mut medians = Vec::new();
    for (name, d) in [
        (
            "webhook, `init=per-instance` (init parses the secret in every instance; sign, POST to the stub)",
            webhook_per_instance.clone(),
        ),
        (
            "webhook, snapshot (init ran once at load)",
            webhook.clone(),
        ),
        (
            "trivial driver, `init=per-instance` (instantiate + init + begin-txn + deliver)",
            trivial_per_instance.clone(),
        ),
        (
            "trivial driver, snapshot (the floor: instantiate + begin-txn + deliver)",
            trivial.clone(),
        ),
        (
            "trivial driver without waiting imports (synchronous), `init=per-instance`",
            no_wait_per_instance.clone(),
        ),
        (
            "trivial driver without waiting imports (synchronous), snapshot",
            no_wait.clone(),
        ),
        (
            "trivial driver without waiting imports, `calls=async`, snapshot",
            no_wait_async.clone(),
        ),
        (
            "trivial driver without waiting imports (synchronous), snapshot, fixed-begin (instantiate + deliver)",
            no_wait_fixed.clone(),
        ),
        (
            "minimal driver (tests/guests/trivial: the SDK, no code of its own), snapshot",
            minimal.clone(),
        ),
        (
            "minimal driver, snapshot, fixed-begin (instantiate + deliver)",
            minimal_fixed.clone(),
        ),
    ] {
        let lat = latencies(d, n).await;
        let (min, med, max) = stats(lat.clone());
        medians.push(med);
        out.push(format!(
            "| {name} | {min:.1} µs | **{med:.1} µs** | {:.1} µs | {max:.1} µs |",
            percentile(lat, 0.99)
        ));
    }
    out.push(format!(
        "\nSnapshot / per-instance (median): webhook **{:.2}×**, trivial **{:.2}×**. Trivial driver without waiting imports / with them (median): per-instance **{:.2}×**, snapshot **{:.2}×**; of which synchronous / `calls=async`, snapshot: **{:.2}×**. Fixed-begin / begin-txn per transaction (synchronous, snapshot): **{:.2}×**.",
        medians[1] / medians[0],
        medians[3] / medians[2],
        medians[4] / medians[2],
        medians[5] / medians[3],
        medians[5] / medians[6],
        medians[7] / medians[5]
    ));
    out.push(format!(
        "Minimal driver / the hostile driver without waiting imports (median, snapshot): **{:.2}×**; with fixed-begin **{:.2}×**.",
        medians[8] / medians[5],
        medians[9] / medians[7]
    ));
    out.push(format!(
        "\n{n} transactions each; targets (issue 15): trivial median ≤ 8 µs, webhook ≤ 15 µs.\n"
    ));
}

// ------------------------------------------------------------ 3. HTTP push

/// A minimal HTTP/1.1 server answering 200 to every request, on a thread of its own
/// (a single-threaded runtime), so it stands apart from the clients measured like a
/// separate process would.
async fn http_server() -> std::net::SocketAddr {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let addr = std_listener.local_addr().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    std::thread::spawn(move || {
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(std_listener).unwrap();
            loop {
                let s = match l.accept().await {
                    Ok((s, _)) => s,
                    // A failed accept (a connection reset before it was taken) must not
                    // end the server.
                    Err(_) => continue,
                };
                tokio::spawn(async move {
                    let (r, mut w) = s.into_split();
                    let mut r = BufReader::new(r);
                    loop {
                        let mut len = 0usize;
                        let mut line = String::new();
                        loop {
                            line.clear();
                            if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                            if let Some(v) =
                                line.to_ascii_lowercase().strip_prefix("content-length:")
                            {
                                len = v.trim().parse().unwrap_or(0);
                            }
                        }
                        let mut body = vec![0; len];
                        if r.read_exact(&mut body).await.is_err() {
                            return;
                        }
                        if w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        })
    });
    addr
}

/// Transactions per second of `n` sequential deliveries, on a lane thread.
async fn sequential(d: Arc<dyn Driver>, t: Arc<Transaction>, n: usize) -> f64 {
    on_lane(async move {
        let txns = copies(&t, n);
        let start = Instant::now();
        for (i, t) in txns.iter().enumerate() {
            let outcome = deliver(d.as_ref(), t).await;
            assert_eq!(outcome, Outcome::Delivered, "transaction {i} of {n}");
        }
        n as f64 / start.elapsed().as_secs_f64()
    })
    .await
}

async fn http_push(o: &Opts, out: &mut Vec<String>) {
    let n = if o.smoke { 20 } else { 2000 };
    let addr = http_server().await;
    let body = txn().to_json();
    // Raw hyper client, one keep-alive connection, sequential (a driver lane is sequential).
    // Every client runs on a lane thread, as the dispatcher runs drivers.
    let mut raw = Vec::new();
    for _ in 0..o.runs {
        let body = body.clone();
        raw.push(
            on_lane(async move {
                let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                let (mut sender, conn) = hyper::client::conn::http1::handshake::<
                    _,
                    http_body_util::Full<bytes::Bytes>,
                >(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
                tokio::spawn(conn);
                let t = Instant::now();
                for _ in 0..n {
                    let req = hyper::Request::post(format!("http://{addr}/h"))
                        .header("content-type", "application/json")
                        .header("host", addr.to_string())
                        .body(http_body_util::Full::new(bytes::Bytes::from(body.clone())))
                        .unwrap();
                    sender.ready().await.unwrap();
                    let resp = sender.send_request(req).await.unwrap();
                    assert_eq!(resp.status(), 200);
                    http_body_util::BodyExt::collect(resp.into_body())
                        .await
                        .unwrap();
                }
                n as f64 / t.elapsed().as_secs_f64()
            })
            .await,
        );
    }
    // The webhook component: fresh instance per transaction, real HTTP through wasi:http;
    // then the same component with `instance=reuse` (one warm instance, recycled).
    let engines = Arc::new(Engines::new(None));
    let webhook_args = format!("url=http://{addr}/h secret=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    let webhook_wasm = guest("webhook");
    let webhook_to = |instance: InstanceModel, args: String| {
        let mut sandbox = Sandbox::default();
        sandbox.http.allow_hosts = vec!["127.0.0.1".into(), "localhost".into()];
        sandbox.http.allow_private = true;
        sandbox.instance.model = instance;
        let (wasm, engines) = (webhook_wasm.clone(), engines.clone());
        async move { load(&wasm, sandbox, &args, &engines).await }
    };
    let webhook = |instance: InstanceModel| webhook_to(instance, webhook_args.clone());
    let d: Arc<dyn Driver> = Arc::new(webhook(InstanceModel::Fresh).await);
    let mut wasm = Vec::new();
    for _ in 0..o.runs {
        wasm.push(sequential(d.clone(), txn(), n).await);
    }
    let warm: Arc<dyn Driver> = Arc::new(webhook(InstanceModel::Reuse).await);
    let mut wasm_warm = Vec::new();
    for _ in 0..o.runs {
        wasm_warm.push(sequential(warm.clone(), txn(), n).await);
    }
    // The same warm webhook posting to a host name (`localhost`, from /etc/hosts): the
    // name is resolved for its requests, where an IP literal needs no lookup.
    let named: Arc<dyn Driver> = Arc::new(
        webhook_to(
            InstanceModel::Reuse,
            webhook_args.replace("127.0.0.1", "localhost"),
        )
        .await,
    );
    let mut wasm_named = Vec::new();
    for _ in 0..o.runs {
        wasm_named.push(sequential(named.clone(), txn(), n).await);
    }
    // The native ox driver: same server, one PUT per transaction (METADATA in the
    // transaction activates it), its keep-alive pool.
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("ox.conf");
    std::fs::write(
        &conf,
        format!("mailpush {{\n state_dir = st\n}}\nplugin {{\n push_notification_driver = ox:url=http://{addr}/n\n}}\n"),
    )
    .unwrap();
    let config = mailpush::config::Config::load(&conf).unwrap();
    let Ok(loaded) = mailpush::registry::DriverRegistry::default()
        .init_all(&config, Arc::new(NoMetadata))
        .await
    else {
        panic!("ox driver")
    };
    let mut ox_txn = Transaction::new("alice@example.com", vec![Event::MessageNew(message())]);
    ox_txn.metadata.insert(
        "/private/vendor/vendor.dovecot/http-notify".into(),
        "user=11@3".into(),
    );
    let ox_txn = Arc::new(ox_txn);
    let mut ox = Vec::new();
    for _ in 0..o.runs {
        ox.push(sequential(loaded[0].driver.clone(), ox_txn.clone(), n).await);
    }
    // The same OX push done by a wasm component (examples/ox-wasm) and by an OX-style
    // Dovecot Lua script (METADATA, mailbox:status, socket.http + json) in the lua driver,
    // fresh state per transaction and one kept state.
    let ox_wasm: Arc<dyn Driver> = Arc::new({
        let mut sandbox = Sandbox::default();
        sandbox.http.allow_hosts = vec!["127.0.0.1".into()];
        sandbox.http.allow_private = true;
        load(
            &guest("ox-wasm"),
            sandbox,
            &format!("url=http://{addr}/n"),
            &engines,
        )
        .await
    });
    let mut oxw = Vec::new();
    for _ in 0..o.runs {
        oxw.push(sequential(ox_wasm.clone(), ox_txn.clone(), n).await);
    }
    std::fs::write(
        dir.path().join("ox-style.lua"),
        include_str!("ox-style.lua"),
    )
    .unwrap();
    let lua_conf = |instance: &str| {
        let conf = dir.path().join(format!("lua-{instance}.conf"));
        std::fs::write(
            &conf,
            format!("mailpush {{\n state_dir = st\n}}\nplugin {{\n push_notification_driver = lua:file=ox-style.lua instance={instance} allow_hosts=127.0.0.1 allow_private\n ox_push_url = http://{addr}/n\n}}\n"),
        )
        .unwrap();
        mailpush::config::Config::load(&conf).unwrap()
    };
    let mut lua = Vec::new();
    let mut lua_reuse = Vec::new();
    for (instance, figures) in [("fresh", &mut lua), ("reuse", &mut lua_reuse)] {
        let Ok(loaded) = mailpush::registry::DriverRegistry::default()
            .init_all(&lua_conf(instance), Arc::new(NoMetadata))
            .await
        else {
            panic!("lua driver")
        };
        for _ in 0..o.runs {
            figures.push(sequential(loaded[0].driver.clone(), ox_txn.clone(), n).await);
        }
    }
    let (r, w, x, ww) = (stats(raw), stats(wasm), stats(ox), stats(wasm_warm));
    let wn = stats(wasm_named);
    let (xw, l, lr) = (stats(oxw), stats(lua), stats(lua_reuse));
    out.push("## 3. HTTP push to a minimal server on 127.0.0.1 (sequential, one request per transaction)\n".into());
    out.push("| client | requests/s (min / median / max) |\n|---|---|".into());
    out.push(format!(
        "| raw hyper client (keep-alive) | {} |",
        fmt3(r, "req/s")
    ));
    out.push(format!(
        "| webhook wasm driver (fresh instance, signing, wasi:http) | {} |",
        fmt3(w, "req/s")
    ));
    out.push(format!(
        "| webhook wasm driver, `instance=reuse` (warm instance) | {} |",
        fmt3(ww, "req/s")
    ));
    out.push(format!(
        "| webhook wasm driver, `instance=reuse`, to `localhost` (a host name to resolve) | {} |",
        fmt3(wn, "req/s")
    ));
    out.push(format!(
        "| native ox driver (keep-alive pool) | {} |",
        fmt3(x, "req/s")
    ));
    out.push(format!(
        "| OX push as a wasm component (examples/ox-wasm, fresh instance) | {} |",
        fmt3(xw, "req/s")
    ));
    out.push(format!(
        "| OX-style Dovecot Lua script, lua driver (fresh state) | {} |",
        fmt3(l, "req/s")
    ));
    out.push(format!(
        "| OX-style Dovecot Lua script, lua driver, `instance=reuse` | {} |",
        fmt3(lr, "req/s")
    ));
    out.push(format!(
        "\nRatios (median, target ≥ 0.8×): ox/raw = **{:.2}×**; webhook/raw = **{:.2}×** (with `instance=reuse`: {:.2}×).\n",
        x.1 / r.1,
        w.1 / r.1,
        ww.1 / r.1
    ));
    out.push(format!(
        "The same OX push, against the native ox driver (median): wasm component **{:.2}×**, Lua script **{:.2}×** (kept state: {:.2}×).\n",
        xw.1 / x.1,
        l.1 / x.1,
        lr.1 / x.1
    ));
}

// ------------------------------------------------------------ 3b. drivers per language

/// Peak resident set (VmHWM) of the largest child process waited for, in KiB.
fn children_max_rss_kib() -> i64 {
    // SAFETY: getrusage writes into the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    u.ru_maxrss
}

/// `mailpush driver test COMPONENT ONE_TXN` as a child process: (wall seconds, whether
/// it succeeded). Its peak RSS shows in [`children_max_rss_kib`].
fn driver_test_run(
    component: &std::path::Path,
    txn_file: &std::path::Path,
    cache: Option<&std::path::Path>,
) -> f64 {
    let bin = std::env::var_os("MAILPUSH_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(|d| d.join("mailpush")))
                .unwrap_or_else(|| "mailpush".into())
        });
    let mut cmd = std::process::Command::new(bin);
    cmd.args(["driver", "test"]).arg(component).arg(txn_file);
    match cache {
        Some(dir) => cmd.arg("--cache-dir").arg(dir),
        None => cmd.arg("--no-cache"),
    };
    let t = Instant::now();
    let out = cmd.output().expect("mailpush driver test");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    t.elapsed().as_secs_f64()
}

async fn languages(o: &Opts, out: &mut Vec<String>) {
    let n = if o.smoke { 20 } else { 1000 };
    let drivers: Vec<(&str, std::path::PathBuf)> = [
        ("Rust", Some(guest("webhook"))),
        ("JavaScript", mailpush_e2e::language_guest("webhook-js")),
        ("Python", mailpush_e2e::language_guest("webhook-py")),
    ]
    .into_iter()
    // Smoke mode (CI) runs the section on the Rust driver only: the big components would
    // be compiled four times over.
    .filter(|(l, _)| !o.smoke || *l == "Rust")
    .filter_map(|(l, p)| p.map(|p| (l, p)))
    .collect();
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one.ndjson");
    std::fs::write(&one, txn().to_json() + "\n").unwrap();
    let addr = http_server().await;
    let args = format!("url=http://{addr}/h secret=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    out.push("## 3b. The webhook driver in Rust, JavaScript and Python\n".into());
    out.push("Cold: `mailpush driver test` (release) over one transaction with no compiled cache, a child process (wall time; peak RSS of the process). Warm: the same with the cache filled. Fresh instance: per-transaction latency with HTTP stubbed at the host. Transactions/s: sequential deliveries to the §3 server, fresh instance each.\n".into());
    out.push("| language | .wasm | cold run (compile + 1 txn) | peak RSS (cold) | warm run | fresh instance, median (`init=per-instance` → snapshot) | transactions/s, min / median / max (`init=per-instance` → snapshot) |\n|---|---|---|---|---|---|---|".into());
    for (lang, path) in drivers {
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let cold = driver_test_run(&path, &one, None);
        let rss = children_max_rss_kib();
        let cache = dir.path().join(format!("cache-{lang}"));
        driver_test_run(&path, &one, Some(&cache));
        let warm = driver_test_run(&path, &one, Some(&cache));
        // The cache the child processes filled: loaded, not compiled again.
        let engines = Arc::new(Engines::new(Some(cache.clone())));
        let mut fresh = Vec::new();
        let mut rates = Vec::new();
        for snapshot in [false, true] {
            let stubbed_driver =
                Arc::new(load(&path, stubbed(snapshot), STUBBED_WEBHOOK_ARGS, &engines).await);
            let taken = stubbed_driver.snapshotted();
            let lat = latencies(stubbed_driver, n / 4).await;
            let (_, lat_med, _) = stats(lat);
            fresh.push(if snapshot && !taken {
                "no snapshot (init calls an import)".to_string()
            } else {
                format!("{lat_med:.0} µs")
            });
            let mut real = Sandbox::default();
            real.http.allow_hosts = vec!["127.0.0.1".into()];
            real.http.allow_private = true;
            real.instance.snapshot = snapshot;
            let d: Arc<dyn Driver> = Arc::new(load(&path, real, &args, &engines).await);
            let mut tps = Vec::new();
            for _ in 0..o.runs {
                tps.push(sequential(d.clone(), txn(), n).await);
            }
            rates.push(fmt3(stats(tps), "txn/s"));
        }
        out.push(format!(
            "| {lang} | {:.1} MB | {cold:.2} s | {} MB (largest so far) | {warm:.2} s | {} → {} | {} → {} |",
            size as f64 / 1e6,
            rss / 1024,
            fresh[0],
            fresh[1],
            rates[0],
            rates[1]
        ));
    }
    out.push(String::new());
}

// ------------------------------------------------------------ 4. ingest

async fn ingest_once(durable: bool, events: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = dir.path().join("mailpush.conf");
    std::fs::write(
        &conf,
        format!(
            "mailpush {{\n state_dir = state\n listen = 127.0.0.1:{port}\n queue_capacity = 20000\n delivery = {}\n}}\nplugin {{\n push_notification_driver = dlog:file=dlog.log\n}}\n",
            if durable { "spool" } else { "memory" }
        ),
    )
    .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let conf2 = conf.clone();
    let server = tokio::spawn(async move {
        let registry: mailpush::daemon::RegistryFn =
            Arc::new(mailpush::registry::DriverRegistry::default);
        mailpush::daemon::serve(&conf2, registry, Arc::new(NoMetadata), move |_| {
            Box::pin(async move {
                let _ = stop_rx.await;
                Ok(())
            })
        })
        .await
    });
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Wait for the listener.
    let stream = loop {
        if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    drop(stream);
    let batch = 500;
    let bodies: Vec<String> = (0..events.div_ceil(batch))
        .map(|b| {
            (0..batch)
                .map(|i| format!("{{\"id\":\"e{b}-{i}\",\"user\":\"user{}@example.com\",\"events\":[{{\"name\":\"MailboxCreate\",\"mailbox\":\"M{i}\"}}]}}\n", i % 100))
                .collect()
        })
        .collect();
    let log = dir.path().join("dlog.log");
    let t = Instant::now();
    for body in bodies {
        loop {
            if server.is_finished() {
                panic!("the daemon stopped: {:?}", server.await);
            }
            // One connection per batch of 500: its set-up cost is noise at this size.
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake::<
                _,
                http_body_util::Full<bytes::Bytes>,
            >(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
            tokio::spawn(conn);
            let req = hyper::Request::post("/v1/transactions")
                .header("host", addr.to_string())
                .header("content-type", "application/x-ndjson")
                .body(http_body_util::Full::new(bytes::Bytes::from(body.clone())))
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            let status = resp.status();
            http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap();
            if status == 202 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let want = events.div_ceil(batch) * batch;
    // Until the dlog driver wrote every transaction's end_txn line.
    loop {
        let n = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("Called end_txn")
            .count();
        if n >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = want as f64 / t.elapsed().as_secs_f64();
    let _ = stop_tx.send(());
    let _ = server.await;
    rate
}

async fn ingest(o: &Opts, out: &mut Vec<String>) {
    let events = if o.smoke { 1000 } else { 20_000 };
    let (mut durable, mut memory) = (Vec::new(), Vec::new());
    for _ in 0..o.runs {
        durable.push(ingest_once(true, events).await);
        memory.push(ingest_once(false, events).await);
    }
    let (d, m) = (stats(durable), stats(memory));
    out.push(format!("## 4. Ingest end to end: NDJSON over HTTP (batches of 500) → spool → dlog writing a file, {events} transactions of one event\n"));
    out.push("| delivery | events/s (min / median / max) |\n|---|---|".into());
    out.push(format!(
        "| `delivery = spool` (durable, group commit) | {} |",
        fmt3(d, "ev/s")
    ));
    out.push(format!("| `delivery = memory` | {} |", fmt3(m, "ev/s")));
    out.push(format!(
        "\nDurable/memory (median): **{:.2}×** (target ≥ 0.5×); durable target ≥ 50k events/s.\n",
        d.1 / m.1
    ));
}

// ------------------------------------------------------------ 5. start-up, 6. memory

fn rss_kib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0.0)
}

async fn startup(o: &Opts, out: &mut Vec<String>) {
    let guests = [
        "webhook",
        "ox-wasm",
        "tenant-filter",
        "hostile",
        "bench-handler",
    ];
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for _ in 0..o.runs {
        let dir = tempfile::tempdir().unwrap();
        let load_all = |cache: std::path::PathBuf| async move {
            let engines = Arc::new(Engines::new(Some(cache)));
            let t = Instant::now();
            for i in 0..10 {
                let g = guests[i % guests.len()];
                let args = match g {
                    "webhook" => "url=http://x.invalid/",
                    "ox-wasm" => "url=http://x.invalid/",
                    "hostile" => "mode=ok",
                    _ => "",
                };
                load(&guest(g), Sandbox::default(), args, &engines).await;
            }
            t.elapsed().as_secs_f64() * 1000.0
        };
        cold.push(load_all(dir.path().join("cache")).await);
        warm.push(load_all(dir.path().join("cache")).await);
    }
    let (c, w) = (stats(cold), stats(warm));
    out.push("## 5. Start-up: 10 wasm drivers (5 distinct components, each twice)\n".into());
    out.push(format!("| | ms (min / median / max) |\n|---|---|\n| cold (empty AOT cache: compile) | {} |\n| warm (AOT cache hit) | {} |\n\nWarm is **{:.1}×** faster.\n", fmt3(c, "ms"), fmt3(w, "ms"), c.1 / w.1));
}

async fn memory(o: &Opts, out: &mut Vec<String>) {
    let tenants = if o.smoke { 5 } else { 100 };
    let dir = tempfile::tempdir().unwrap();
    let tdir = dir.path().join("tenants");
    std::fs::create_dir(&tdir).unwrap();
    for i in 0..tenants {
        std::fs::copy(
            guest("tenant-filter"),
            tdir.join(format!("t{i}.example.wasm")),
        )
        .unwrap();
    }
    let engines = Arc::new(Engines::new(Some(dir.path().join("cache"))));
    // Warm the cache so the measurement is loading, not compiling.
    load(&guest("tenant-filter"), Sandbox::default(), "", &engines).await;
    let before = rss_kib();
    let lane =
        mailpush::wasm::tenants::TenantDrivers::new(tdir, 1, engines.clone(), Arc::new(NoMetadata));
    let (details, warnings) = lane.scan().await;
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(details.len() > tenants);
    let tenants_kib = rss_kib() - before;
    // In-flight instances: begin_txn returns the transaction's live instance; hold many.
    let d = load(
        &guest("webhook"),
        Sandbox::default(),
        "url=http://x.invalid/",
        &engines,
    )
    .await;
    let k = if o.smoke { 5 } else { 100 };
    let t1 = txn();
    let before = rss_kib();
    let mut held = Vec::new();
    for _ in 0..k {
        match mailpush_core::Driver::begin_txn(&d, &t1).await {
            Ok(b) => held.push(b),
            Err(e) => panic!("{e}"),
        }
    }
    let per_instance = (rss_kib() - before) / k as f64;
    drop(held);
    out.push(format!("## 6. Memory (resident set)\n\n- {tenants} tenant drivers loaded and idle: **{:.1} MiB** (≈ {:.0} KiB each)\n- per in-flight instance (webhook driver, {k} held at once): **{per_instance:.0} KiB**\n", tenants_kib / 1024.0, tenants_kib / tenants as f64));
    std::hint::black_box(lane);
}

/// The sections `--only` can name, in the order they run.
const SECTIONS: [&str; 8] = [
    "logic",
    "crossings",
    "fresh",
    "http",
    "languages",
    "ingest",
    "startup",
    "memory",
];

const USAGE: &str = "usage: mailpush-bench [--smoke] [--only SECTION[,SECTION...]]

Measures every figure of BENCHMARKS.md on this machine and prints them as markdown,
with ratios against the baselines measured in the same run. Build it with --release:
  cargo run --release -p mailpush-bench
  cargo run --release -p mailpush-bench -- --only fresh,languages

  --smoke   each figure once, in seconds (CI: the suite runs end to end; figures meaningless)
  --only    only these sections: logic, crossings, fresh, http, languages, ingest, startup,
            memory";

/// `--smoke` and `--only`'s sections, or why the arguments are wrong.
fn parse_args(args: &[String]) -> Result<(bool, Option<Vec<String>>), String> {
    let (mut smoke, mut only) = (false, None);
    let mut args = args.iter();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--smoke" => smoke = true,
            "--only" => {
                let v = args.next().ok_or("--only needs a list of sections")?;
                let names: Vec<String> = v.split(',').map(str::to_string).collect();
                if let Some(bad) = names.iter().find(|n| !SECTIONS.contains(&n.as_str())) {
                    return Err(format!(
                        "no section {bad:?}; the sections are {}",
                        SECTIONS.join(", ")
                    ));
                }
                only = Some(names);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok((smoke, only))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return;
    }
    let (smoke, only) = match parse_args(&args) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("mailpush-bench: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    let o = Opts {
        smoke,
        runs: if smoke { 1 } else { 5 },
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut out = Vec::new();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_default();
    out.push(format!(
        "# mailpush-bench{}\n\nMachine: {cores} cores, {}; runs per figure: {}.\n",
        if smoke {
            " (smoke mode: figures meaningless)"
        } else {
            ""
        },
        mem.replace("MemTotal:", "memory").trim(),
        o.runs
    ));
    // `--only NAME[,NAME]` runs some sections (for profiling one of them).
    let run = |name: &str| only.as_ref().is_none_or(|o| o.iter().any(|s| s == name));
    rt.block_on(async {
        if run("logic") {
            driver_logic(&o, &mut out).await;
        }
        if run("crossings") {
            crossings(&o, &mut out).await;
        }
        if run("fresh") {
            fresh_instance(&o, &mut out).await;
        }
        if run("http") {
            http_push(&o, &mut out).await;
        }
        if run("languages") {
            languages(&o, &mut out).await;
        }
        if run("ingest") {
            ingest(&o, &mut out).await;
        }
        if run("startup") {
            startup(&o, &mut out).await;
        }
        if run("memory") {
            memory(&o, &mut out).await;
        }
    });
    println!("{}", out.join("\n"));
}
