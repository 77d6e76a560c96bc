//! `cluster-run`: the cluster-mode figures in BENCHMARKS.md ("Cluster mode").
//!
//! ```text
//! cargo build --release -p mailpush
//! cargo run --release -p mailpush-bench --bin cluster-run            # 3 runs, ~13 min
//! cargo run --release -p mailpush-bench --bin cluster-run -- --smoke # 1 small run
//! cargo run --release -p mailpush-bench --bin cluster-run -- --cpu   # where the CPU goes
//! ```
//!
//! Real processes: `nats-server` (`NATS_SERVER` or on `PATH`, 2.14+), `mailpush run`
//! nodes (`MAILPUSH_BIN`, else `mailpush` beside this program), and a recording HTTP
//! endpoint on 127.0.0.1 as the webhook example driver's target. Each run measures:
//!
//! 1. **ingest**: transactions/s accepted (202) by one node into JetStream (one server,
//!    replicas 1; nats-server's default sync, and an fsync per message), beside the same
//!    node on its SQLite spool (NDJSON batches of 500 from 4 clients; the dlog driver, so
//!    that delivery costs next to nothing);
//! 2. **delivery**: transactions/s delivered with 1, 2 and 3 nodes against an endpoint
//!    that takes 20 ms per request, the driver's concurrency at 16 (ratios to 1 node);
//!    with a fresh instance per transaction, then with `instance=reuse`;
//! 3. **take-over**: from SIGKILL of one of two nodes until the other owns every
//!    partition (5 times; the median), with the default lease (6 s).
//!
//! `--cpu` instead measures the delivery runs of 1 and 3 nodes once each, fresh and
//! reused instances, and prints the CPU time each process used per delivered
//! transaction (`/proc/PID/stat`): the nodes, nats-server, and this process (the
//! endpoint and the posting clients).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mailpush_e2e::nats::{nats_or_skip, owned, settled, NatsServer};
use mailpush_e2e::{cpu_seconds, guest, post_ndjson, RecordingServer, Reply, RunningDaemon};

/// How long the nodes may take to share the 32 partitions evenly before a measurement.
const SETTLE: Duration = Duration::from_secs(60);

struct Sizes {
    ingest: usize,
    delivery: usize,
    takeovers: usize,
    runs: usize,
}

/// A node with the webhook example driver posting to `url`; `url` "dlog": Dovecot's dlog
/// driver instead (it costs next to nothing: ingest alone is measured).
fn node_config(dir: &Path, name: &str, cluster: Option<&str>, url: &str, extra: &str) -> PathBuf {
    let cluster = cluster
        .map(|c| format!(" cluster = {c}\n cluster_node = {name}\n"))
        .unwrap_or_default();
    let driver = if url == "dlog" {
        "dlog".to_string()
    } else {
        format!(
            "wasm:file={} url={url} allow_hosts=127.0.0.1 allow_private concurrency=16 {extra}",
            guest("webhook").display()
        )
    };
    let conf = dir.join(format!("{name}.conf"));
    std::fs::write(
        &conf,
        format!(
            "mailpush {{\n state_dir = {name}-state\n listen = 127.0.0.1:0\n{cluster}}}\nplugin {{\n push_notification_driver = {driver}\n}}\n"
        ),
    )
    .expect("write config");
    conf
}

fn batch(from: usize, n: usize, users: usize, tag: &str) -> String {
    let mut body = String::new();
    for i in from..from + n {
        body.push_str(&format!(
            "{{\"id\":\"{tag}{i}\",\"user\":\"u{}@example.com\",\"events\":[{{\"name\":\"MailboxCreate\",\"mailbox\":\"M\"}}]}}\n",
            i % users
        ));
    }
    body
}

/// Posts `total` transactions in batches of `per` from 4 concurrent clients, round robin
/// over `nodes`; returns the seconds until all were accepted.
async fn post_all(nodes: &[SocketAddr], total: usize, per: usize, users: usize, tag: &str) -> f64 {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..4 {
        let nodes = nodes.to_vec();
        let tag = tag.to_string();
        tasks.push(tokio::spawn(async move {
            let mut b = c;
            while b * per < total {
                let body = batch(b * per, per.min(total - b * per), users, &tag);
                let addr = nodes[b % nodes.len()];
                post_ndjson(addr, &body, Duration::from_millis(50)).await;
                b += 4;
            }
        }));
    }
    for t in tasks {
        t.await.expect("poster");
    }
    started.elapsed().as_secs_f64()
}

/// Ingest/s into SQLite, into JetStream with nats-server's default sync, and into
/// JetStream with an fsync per message.
async fn ingest(sizes: &Sizes) -> (f64, f64, f64) {
    let url = "dlog";
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = RunningDaemon::start(&node_config(dir.path(), "s", None, url, ""));
    let sqlite_s = post_all(&[sqlite.addr], sizes.ingest, 500, 2_000, "s").await;
    drop(sqlite);
    let mut js = Vec::new();
    for (sync_always, name) in [(false, "j"), (true, "k")] {
        let nats = NatsServer::start_syncing(sync_always);
        let node = RunningDaemon::start(&node_config(dir.path(), name, Some(&nats.url()), url, ""));
        settled(&[node.addr], 32, SETTLE).await;
        js.push(post_all(&[node.addr], sizes.ingest, 500, 2_000, name).await);
    }
    let n = sizes.ingest as f64;
    (n / sqlite_s, n / js[0], n / js[1])
}

/// Where a delivery run's CPU went: µs per delivered transaction.
#[derive(Default, Clone, Copy)]
struct CpuPerTxn {
    nodes: f64,
    nats: f64,
    /// This process: the recording endpoint and the posting clients.
    bench: f64,
}

impl std::fmt::Display for CpuPerTxn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CPU per txn: nodes {:.0} µs, nats-server {:.0} µs, endpoint+client {:.0} µs",
            self.nodes, self.nats, self.bench
        )
    }
}

/// Delivered transactions/s with `nodes` nodes against a 20 ms endpoint.
async fn delivery(nodes: usize, sizes: &Sizes, extra: &str) -> f64 {
    delivery_cpu(nodes, sizes, extra).await.0
}

/// [`delivery`], with where its CPU went.
async fn delivery_cpu(nodes: usize, sizes: &Sizes, extra: &str) -> (f64, CpuPerTxn) {
    let endpoint = RecordingServer::start().await;
    endpoint.set_default(Reply::Status {
        status: 200,
        headers: Vec::new(),
        delay: Duration::from_millis(20),
    });
    let url = endpoint.url("/h");
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = NatsServer::start_syncing(false);
    let running: Vec<RunningDaemon> = (0..nodes)
        .map(|i| {
            RunningDaemon::start(&node_config(
                dir.path(),
                &format!("n{i}"),
                Some(&nats.url()),
                &url,
                extra,
            ))
        })
        .collect();
    let addrs: Vec<SocketAddr> = running.iter().map(|n| n.addr).collect();
    settled(&addrs, 32, SETTLE).await;
    let pids: Vec<u32> = running.iter().map(|n| n.child.id()).collect();
    let nats_pid = nats.pid().unwrap_or_default();
    let cpu = || {
        (
            pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>(),
            cpu_seconds(nats_pid),
            cpu_seconds(std::process::id()),
        )
    };
    let before = cpu();
    let started = Instant::now();
    post_all(&addrs, sizes.delivery, 100, 3_000, "d").await;
    endpoint
        .wait_for(sizes.delivery, Duration::from_secs(600))
        .await;
    let rate = sizes.delivery as f64 / started.elapsed().as_secs_f64();
    let after = cpu();
    let per = |a: f64, b: f64| (a - b) * 1e6 / sizes.delivery as f64;
    let used = CpuPerTxn {
        nodes: per(after.0, before.0),
        nats: per(after.1, before.1),
        bench: per(after.2, before.2),
    };
    (rate, used)
}

/// Seconds from SIGKILL of one of two nodes until the other owns every partition.
async fn takeovers(sizes: &Sizes) -> Vec<f64> {
    let endpoint = RecordingServer::start().await;
    let url = endpoint.url("/h");
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = NatsServer::start_syncing(false);
    let survivor = RunningDaemon::start(&node_config(dir.path(), "a", Some(&nats.url()), &url, ""));
    let mut out = Vec::new();
    for _ in 0..sizes.takeovers {
        let mut victim =
            RunningDaemon::start(&node_config(dir.path(), "b", Some(&nats.url()), &url, ""));
        settled(&[survivor.addr, victim.addr], 32, SETTLE).await;
        let killed = Instant::now();
        victim.child.kill().expect("SIGKILL");
        let _ = victim.child.wait();
        while owned(survivor.addr).await.len() < 32 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        out.push(killed.elapsed().as_secs_f64());
    }
    out
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn spread(v: &[f64]) -> String {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    format!("{:.2} / {:.2} / {:.2}", s[0], median(&s), s[s.len() - 1])
}

#[tokio::main]
async fn main() {
    let smoke = std::env::args().any(|a| a == "--smoke");
    let cpu_only = std::env::args().any(|a| a == "--cpu");
    if std::env::var_os("MAILPUSH_BIN").is_none() {
        let exe = std::env::current_exe().expect("own path");
        let bin = exe.with_file_name("mailpush");
        if !bin.exists() {
            eprintln!(
                "cluster-run: {} not found: build it first (`cargo build --release -p mailpush`) or set MAILPUSH_BIN",
                bin.display()
            );
            std::process::exit(2);
        }
        std::env::set_var("MAILPUSH_BIN", bin);
    }
    if !nats_or_skip() {
        eprintln!("cluster-run: needs nats-server 2.14+ (NATS_SERVER or on PATH)");
        std::process::exit(2);
    }
    let sizes = if smoke {
        Sizes {
            ingest: 1_000,
            delivery: 500,
            takeovers: 1,
            runs: 1,
        }
    } else {
        Sizes {
            ingest: 20_000,
            delivery: 12_000,
            takeovers: 5,
            runs: 3,
        }
    };
    if cpu_only {
        // Where the CPU of a delivery goes, with 1 and 3 nodes, fresh and reused instances.
        for extra in ["", "instance=reuse"] {
            for n in [1, 3] {
                let (rate, cpu) = delivery_cpu(n, &sizes, extra).await;
                println!("{n} node(s) {extra}: {rate:.0} txn/s; {cpu}");
            }
        }
        return;
    }
    let (mut sqlite, mut js, mut ratio_ingest) = (Vec::new(), Vec::new(), Vec::new());
    let (mut js_sync, mut ratio_sync) = (Vec::new(), Vec::new());
    let (mut one, mut two, mut three) = (Vec::new(), Vec::new(), Vec::new());
    let (mut r2, mut r3, mut takeover) = (Vec::new(), Vec::new(), Vec::new());
    let (mut warm1, mut warm_r2, mut warm_r3) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=sizes.runs {
        let (s, j, k) = ingest(&sizes).await;
        let d1 = delivery(1, &sizes, "").await;
        let d2 = delivery(2, &sizes, "").await;
        let d3 = delivery(3, &sizes, "").await;
        // The same with a warm instance (`instance=reuse`): less CPU per delivery, so
        // less of the 2 cores' limit in the ratios.
        let w1 = delivery(1, &sizes, "instance=reuse").await;
        let w2 = delivery(2, &sizes, "instance=reuse").await;
        let w3 = delivery(3, &sizes, "instance=reuse").await;
        let t = takeovers(&sizes).await;
        println!(
            "run {run}: ingest SQLite {s:.0}/s, JetStream {j:.0}/s ({:.2}x), fsync per message {k:.0}/s ({:.2}x); delivery 1 node {d1:.0}/s, 2 nodes {d2:.0}/s ({:.2}x), 3 nodes {d3:.0}/s ({:.2}x); take-over {} s (median {:.2})",
            j / s,
            k / s,
            d2 / d1,
            d3 / d1,
            t.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(", "),
            median(&t)
        );
        sqlite.push(s);
        js.push(j);
        ratio_ingest.push(j / s);
        js_sync.push(k);
        ratio_sync.push(k / s);
        one.push(d1);
        two.push(d2);
        three.push(d3);
        r2.push(d2 / d1);
        r3.push(d3 / d1);
        warm1.push(w1);
        warm_r2.push(w2 / w1);
        warm_r3.push(w3 / w1);
        println!(
            "run {run}, instance=reuse: 1 node {w1:.0}/s, 2 nodes {w2:.0}/s ({:.2}x), 3 nodes {w3:.0}/s ({:.2}x)",
            w2 / w1,
            w3 / w1
        );
        takeover.push(median(&t));
    }
    println!();
    println!(
        "| measure (min / median / max over {} runs) | figure |",
        sizes.runs
    );
    println!("|---|---|");
    println!("| ingest, SQLite spool, txn/s | {} |", spread(&sqlite));
    println!(
        "| ingest, JetStream (1 server, R1), txn/s | {} |",
        spread(&js)
    );
    println!("| ingest JetStream / SQLite | {}× |", spread(&ratio_ingest));
    println!(
        "| ingest, JetStream with an fsync per message, txn/s | {} |",
        spread(&js_sync)
    );
    println!(
        "| ingest JetStream (fsync per message) / SQLite | {}× |",
        spread(&ratio_sync)
    );
    println!("| delivery, 1 node, txn/s | {} |", spread(&one));
    println!("| delivery, 2 nodes, txn/s | {} |", spread(&two));
    println!("| delivery, 3 nodes, txn/s | {} |", spread(&three));
    println!("| delivery 2 nodes / 1 node | {}× |", spread(&r2));
    println!("| delivery 3 nodes / 1 node | {}× |", spread(&r3));
    println!(
        "| delivery, 1 node, instance=reuse, txn/s | {} |",
        spread(&warm1)
    );
    println!(
        "| delivery 2 nodes / 1 node, instance=reuse | {}× |",
        spread(&warm_r2)
    );
    println!(
        "| delivery 3 nodes / 1 node, instance=reuse | {}× |",
        spread(&warm_r3)
    );
    println!(
        "| take-over after SIGKILL, median of {}, s | {} |",
        sizes.takeovers,
        spread(&takeover)
    );
}
