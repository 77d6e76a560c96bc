//! `fault-run`: a delivery load run against an endpoint that cycles through faults — the
//! run behind the figures in docs/delivery.md ("Faults under load").
//!
//! ```text
//! cargo run --release -p mailpush-bench --bin fault-run            # 5,000 transactions, ~2 min
//! cargo run --release -p mailpush-bench --bin fault-run -- --smoke # 400, seconds (CI)
//! ```
//!
//! `mailpush run` (in-process, the real daemon) with the webhook example driver
//! (`concurrency=16`) gets transactions over HTTP ingest at a steady rate while its
//! endpoint changes behaviour every phase: healthy, 500, 503 with `Retry-After`, hanging,
//! closing the connection, resetting it, answering after 3 s, refusing connections, and
//! 400 (the one answer docs/delivery.md says gives up). Then the endpoint heals and the
//! run waits until every transaction is delivered or dead-lettered, and checks:
//! nothing lost, no user's transactions out of order, and dead letters exactly for the
//! transactions answered 400. Exits non-zero when a check fails.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailpush::spool::Spool;
use mailpush_core::NoMetadata;
use mailpush_e2e::guest;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How the endpoint behaves during a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Ok,
    Error500,
    Busy503,
    Hang,
    Close,
    Reset,
    Slow,
    Refused,
    BadRequest,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Ok => "200",
            Mode::Error500 => "500",
            Mode::Busy503 => "503 + Retry-After: 1",
            Mode::Hang => "hang (no answer)",
            Mode::Close => "connection closed",
            Mode::Reset => "connection reset",
            Mode::Slow => "slow 200",
            Mode::Refused => "connection refused (a request on an open connection: closed)",
            Mode::BadRequest => "400",
        }
    }
}

/// The phases, in order; each fault is followed by a healthy phase.
const CYCLE: [Mode; 16] = [
    Mode::Ok,
    Mode::Error500,
    Mode::Ok,
    Mode::Busy503,
    Mode::Ok,
    Mode::Hang,
    Mode::Ok,
    Mode::Close,
    Mode::Ok,
    Mode::Reset,
    Mode::Ok,
    Mode::Slow,
    Mode::Ok,
    Mode::Refused,
    Mode::Ok,
    Mode::BadRequest,
];

struct Params {
    transactions: usize,
    users: usize,
    phase: Duration,
    slow: Duration,
    /// The webhook's `http_timeout_msecs`: how long a hanging endpoint holds a delivery.
    timeout: Duration,
    /// `breaker_open`: shorter than a phase, so that every phase is tried; `None`: the
    /// driver's breakers never open (every request meets the fault).
    breaker_open: Option<Duration>,
}

/// One request the endpoint saw: transaction id, user, the answer (`None`: none).
#[derive(Debug, Clone)]
struct Seen {
    id: String,
    user: String,
    status: Option<u16>,
    mode: Mode,
}

struct Endpoint {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    seen: Mutex<Vec<Seen>>,
    slow: Duration,
}

impl Endpoint {
    async fn start(slow: Duration) -> Arc<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (mode, _) = watch::channel(Mode::Ok);
        let ep = Arc::new(Endpoint {
            addr,
            mode,
            seen: Mutex::new(Vec::new()),
            slow,
        });
        tokio::spawn(ep.clone().listen(Some(listener)));
        ep
    }

    /// Accepts while the mode is not `Refused`; while it is, nothing listens.
    async fn listen(self: Arc<Self>, mut listener: Option<TcpListener>) {
        let mut modes = self.mode.subscribe();
        loop {
            if *modes.borrow_and_update() == Mode::Refused {
                listener = None;
                if modes.changed().await.is_err() {
                    return;
                }
                continue;
            }
            let l = match listener.take() {
                Some(l) => l,
                None => match TcpListener::bind(self.addr).await {
                    Ok(l) => l,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
            };
            tokio::select! {
                a = l.accept() => {
                    if let Ok((sock, _)) = a {
                        tokio::spawn(self.clone().serve(sock));
                    }
                    listener = Some(l);
                }
                r = modes.changed() => {
                    if r.is_err() {
                        return;
                    }
                    listener = Some(l);
                }
            }
        }
    }

    async fn serve(self: Arc<Self>, sock: TcpStream) {
        let (r, mut w) = sock.into_split();
        let mut r = BufReader::new(r);
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let mut len = 0usize;
            let mut id = String::new();
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).await.unwrap_or(0) == 0 {
                    return;
                }
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        len = v.trim().parse().unwrap_or(0);
                    } else if k.eq_ignore_ascii_case("webhook-id") {
                        id = v.trim().to_string();
                    }
                }
            }
            let mut body = vec![0; len];
            if r.read_exact(&mut body).await.is_err() {
                return;
            }
            let user = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["user"].as_str().map(str::to_string))
                .unwrap_or_default();
            let mode = *self.mode.borrow();
            let status = match mode {
                Mode::Ok | Mode::Slow => Some(200),
                Mode::Error500 => Some(500),
                Mode::Busy503 => Some(503),
                Mode::BadRequest => Some(400),
                Mode::Hang | Mode::Close | Mode::Reset | Mode::Refused => None,
            };
            if mode == Mode::Slow {
                tokio::time::sleep(self.slow).await;
            }
            self.seen.lock().unwrap().push(Seen {
                id,
                user,
                status,
                mode,
            });
            match mode {
                Mode::Hang => {
                    let mut sink = [0u8; 1024];
                    while r.read(&mut sink).await.unwrap_or(0) > 0 {}
                    return;
                }
                Mode::Close | Mode::Refused => return,
                Mode::Reset => {
                    if let Ok(sock) = r.into_inner().reunite(w) {
                        let _ = sock.set_zero_linger();
                    }
                    return;
                }
                _ => {}
            }
            let status = status.unwrap_or(200);
            let extra = if mode == Mode::Busy503 {
                "retry-after: 1\r\n"
            } else {
                ""
            };
            let resp = format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\n{extra}\r\nok");
            if w.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
        }
    }
}

/// POSTs one NDJSON batch until it is accepted (202); returns the 503s it got.
async fn post(addr: SocketAddr, body: &str) -> usize {
    let mut refused = 0;
    loop {
        if let Ok(mut c) = TcpStream::connect(addr).await {
            let req = format!(
                "POST /v1/transactions HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-type: application/x-ndjson\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let mut answer = Vec::new();
            if c.write_all(req.as_bytes()).await.is_ok() && c.read_to_end(&mut answer).await.is_ok()
            {
                if answer.starts_with(b"HTTP/1.1 202") {
                    return refused;
                }
                refused += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET path` on the daemon: (latency, body).
async fn get(addr: SocketAddr, path: &str) -> Option<(Duration, String)> {
    let t = Instant::now();
    let mut c = TcpStream::connect(addr).await.ok()?;
    c.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut answer = Vec::new();
    c.read_to_end(&mut answer).await.ok()?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((t.elapsed(), body))
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

async fn run(p: Params) -> bool {
    let endpoint = Endpoint::start(p.slow).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let conf = dir.path().join("mailpush.conf");
    let driver = format!(
        "wasm:file={} url=http://{}/hook allow_hosts=127.0.0.1 allow_private http_timeout_msecs={} concurrency=16 retry=250ms,500ms,1s,2s,4s,8s,15s,30s,30s {}",
        guest("webhook").display(),
        endpoint.addr,
        p.timeout.as_millis(),
        match p.breaker_open {
            Some(d) => format!("breaker_open={}ms", d.as_millis()),
            None => "breaker_min=1000000".to_string(),
        }
    );
    std::fs::write(
        &conf,
        format!("mailpush {{\n state_dir = state\n listen = {addr}\n}}\nplugin {{\n push_notification_driver = {driver}\n}}\n"),
    )
    .expect("config");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = {
        let conf = conf.clone();
        tokio::spawn(async move {
            let registry: mailpush::daemon::RegistryFn =
                Arc::new(mailpush::registry::DriverRegistry::default);
            mailpush::daemon::serve(&conf, registry, Arc::new(NoMetadata), move |_| {
                Box::pin(async move {
                    let _ = stop_rx.await;
                    Ok(())
                })
            })
            .await
        })
    };
    while TcpStream::connect(addr).await.is_err() {
        assert!(!daemon.is_finished(), "the daemon did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The phases run for one whole cycle while the transactions arrive.
    let started = Instant::now();
    let phases = {
        let endpoint = endpoint.clone();
        let phase = p.phase;
        tokio::spawn(async move {
            for mode in CYCLE {
                endpoint.mode.send_replace(mode);
                if std::env::var_os("FAULT_RUN_DEBUG").is_some() {
                    eprintln!(
                        "{:?} phase {mode:?}: {} requests so far",
                        started.elapsed(),
                        endpoint.seen.lock().unwrap().len()
                    );
                }
                tokio::time::sleep(phase).await;
            }
            endpoint.mode.send_replace(Mode::Ok);
        })
    };
    // /healthz latency throughout.
    let health = Arc::new(Mutex::new(Vec::<f64>::new()));
    let (health_stop, mut health_stopped) = watch::channel(false);
    let prober = {
        let health = health.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = health_stopped.changed() => return,
                }
                if let Some((t, _)) = get(addr, "/healthz").await {
                    health.lock().unwrap().push(t.as_secs_f64() * 1000.0);
                }
            }
        })
    };

    let sent: Vec<(String, String)> = (0..p.transactions)
        .map(|i| (format!("t{i:05}"), format!("u{}@example.com", i % p.users)))
        .collect();
    let batch = 25;
    let sending_time = p.phase * CYCLE.len() as u32;
    let every = sending_time / (p.transactions.div_ceil(batch) as u32);
    let mut ingest_503 = 0;
    for (b, chunk) in sent.chunks(batch).enumerate() {
        let body: String = chunk
            .iter()
            .map(|(id, user)| {
                format!("{{\"id\":\"{id}\",\"user\":\"{user}\",\"events\":[{{\"name\":\"MailboxCreate\",\"mailbox\":\"M{id}\"}}]}}\n")
            })
            .collect();
        tokio::time::sleep_until((started + every * b as u32).into()).await;
        ingest_503 += post(addr, &body).await;
    }
    let _ = phases.await;
    let healed = Instant::now();

    // Until every transaction is delivered or dead-lettered.
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut last = String::new();
    let done = loop {
        if let Some((_, body)) = get(addr, "/v1/status").await {
            if let Ok(s) = serde_json::from_str::<mailpush::status::Status>(&body) {
                let d = &s.drivers[0];
                last = format!("{d:?}");
                if d.delivered + d.failed >= p.transactions as u64 && d.queued + d.held == 0 {
                    break Some(d.clone());
                }
            }
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let finished_after = healed.elapsed();
    let total = started.elapsed();
    let _ = health_stop.send(true);
    let _ = prober.await;
    let _ = stop_tx.send(());
    let _ = daemon.await;
    let Some(report) = done else {
        println!("the run did not finish within 10 minutes: {last}");
        return false;
    };

    // The checks.
    let spool = mailpush::spool::sqlite::SqliteSpool::open(
        &dir.path().join("state").join("spool.db"),
        1 << 30,
    )
    .expect("spool");
    let dead = spool.dead_letters(None).expect("dead letters");
    let dead_ids: HashSet<String> = dead.iter().map(|d| d.txn.id.clone()).collect();
    let seen = endpoint.seen.lock().unwrap().clone();
    let mut delivered: HashMap<&str, usize> = HashMap::new();
    let mut answered_400: HashSet<&str> = HashSet::new();
    let mut by_mode: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &seen {
        *by_mode.entry(s.mode.label()).or_default() += 1;
        match s.status {
            Some(200) => *delivered.entry(s.id.as_str()).or_default() += 1,
            Some(400) => {
                answered_400.insert(s.id.as_str());
            }
            _ => {}
        }
    }
    let lost: Vec<&str> = sent
        .iter()
        .map(|(id, _)| id.as_str())
        .filter(|id| !delivered.contains_key(id) && !dead_ids.contains(*id))
        .collect();
    let duplicates = delivered.values().filter(|n| **n > 1).count();
    // Per user, the first 200 of each transaction comes in send order.
    let mut violations = 0;
    let mut last_index: HashMap<&str, usize> = HashMap::new();
    let mut counted: HashSet<&str> = HashSet::new();
    let index: HashMap<&str, usize> = sent
        .iter()
        .enumerate()
        .map(|(i, (id, _))| (id.as_str(), i))
        .collect();
    for s in seen.iter().filter(|s| s.status == Some(200)) {
        if !counted.insert(s.id.as_str()) {
            continue;
        }
        let i = index.get(s.id.as_str()).copied().unwrap_or(0);
        if let Some(prev) = last_index.insert(s.user.as_str(), i) {
            if prev > i {
                violations += 1;
            }
        }
    }
    let expected_dead: HashSet<String> = answered_400.iter().map(|s| s.to_string()).collect();
    let dead_as_documented = dead_ids == expected_dead;
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for d in &dead {
        let r = d
            .attempts
            .last()
            .map(|a| a.error.clone())
            .unwrap_or_default();
        *reasons.entry(r).or_default() += 1;
    }
    let health = health.lock().unwrap().clone();
    let p99 = if health.is_empty() {
        0.0
    } else {
        let mut h = health.clone();
        h.sort_by(|a, b| a.total_cmp(b));
        h[((h.len() as f64 - 1.0) * 0.99).round() as usize]
    };

    println!(
        "### {} transactions, {} users, phases of {:?}, {}\n",
        p.transactions,
        p.users,
        p.phase,
        match p.breaker_open {
            Some(d) => format!("breaker_open={d:?}"),
            None => "breakers off (breaker_min=1000000)".to_string(),
        }
    );
    println!("| | |\n|---|---|");
    println!("| requests the endpoint saw | {} |", seen.len());
    for (mode, n) in &by_mode {
        println!("| … while it answered {mode} | {n} |");
    }
    println!("| delivered (200) | {} |", delivered.len());
    println!("| retried attempts | {} |", report.retried);
    println!(
        "| dead letters | {} (transactions answered 400: {}) |",
        dead.len(),
        answered_400.len()
    );
    for (r, n) in &reasons {
        println!(
            "| … reason `{}` | {n} |",
            r.chars().take(80).collect::<String>()
        );
    }
    println!("| **lost** | **{}** |", lost.len());
    println!("| **order violations** | **{violations}** |");
    println!("| duplicates (delivered twice) | {duplicates} |");
    println!("| ingest 503s (retried by the client) | {ingest_503} |");
    println!(
        "| all done, after the endpoint healed | {:.1} s (whole run {:.1} s) |",
        finished_after.as_secs_f64(),
        total.as_secs_f64()
    );
    println!(
        "| `/healthz` p99 / max | {p99:.1} / {:.1} ms |",
        health.iter().cloned().fold(0.0, f64::max)
    );
    println!(
        "| peak RSS (daemon, endpoint and client in one process) | {:.0} MiB |",
        rss_mib()
    );
    let ok = lost.is_empty() && violations == 0 && dead_as_documented;
    if !dead_as_documented {
        println!("\ndead letters differ from the transactions answered 400");
    }
    if !lost.is_empty() {
        println!("\nlost: {:?}", &lost[..lost.len().min(20)]);
    }
    println!("\nresult: {}", if ok { "PASS" } else { "FAIL" });
    ok
}

fn main() -> std::process::ExitCode {
    let smoke = std::env::args().any(|a| a == "--smoke");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut ok = true;
    println!("## Faults under load\n");
    // With the breakers (the default), and without them: every request meets the fault.
    for breaker_open in [
        Some(if smoke {
            Duration::from_millis(150)
        } else {
            Duration::from_secs(2)
        }),
        None,
    ] {
        let p = if smoke {
            Params {
                transactions: 400,
                users: 40,
                phase: Duration::from_millis(400),
                slow: Duration::from_millis(150),
                timeout: Duration::from_millis(300),
                breaker_open,
            }
        } else {
            Params {
                transactions: 5000,
                users: 500,
                phase: Duration::from_secs(3),
                slow: Duration::from_secs(3),
                timeout: Duration::from_secs(5),
                breaker_open,
            }
        };
        ok &= rt.block_on(run(p));
        println!();
    }
    if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
