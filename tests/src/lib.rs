//! Shared helpers for mailpush's end-to-end tests: paths of the guest components built
//! by `build.rs`, a real HTTP/1.1 server on 127.0.0.1 that records every request, and
//! small native drivers (recording, panicking, slow) for dispatch tests.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailpush::config::Config;
use mailpush::pipeline::{Backpressure, Delivery, DeliveryObserver, Dispatcher, Outcome};
use mailpush::registry::{DriverRegistry, LoadedDriver};
use mailpush_core::{
    Begin, Driver, DriverFactory, DriverInit, DriverTxn, EventSet, Failure, InitError, Initialised,
    MailboxRecord, MessageRecord, NoMetadata, Transaction,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Notify;

pub mod nats;

/// The hostile test driver's two builds: with wasi:http and clocks (called on fibers)
/// and without (called synchronously). A sandbox bound must hold on both.
pub const BOTH: [&str; 2] = ["hostile", "hostile-no-wait"];

/// Path of a guest component built by build.rs (`hostile`, `webhook`, `ox-wasm`,
/// `tenant-filter`, `bench-handler`, `trivial`, `future-version`, `contract-0.1.0`, `newer-patch`).
pub fn guest(name: &str) -> PathBuf {
    let p = match name {
        "hostile" => option_env!("GUEST_HOSTILE"),
        "hostile-no-wait" => option_env!("GUEST_HOSTILE_NO_WAIT"),
        "webhook" => option_env!("GUEST_WEBHOOK"),
        "ox-wasm" => option_env!("GUEST_OX_WASM"),
        "tenant-filter" => option_env!("GUEST_TENANT_FILTER"),
        "bench-handler" => option_env!("GUEST_BENCH_HANDLER"),
        "trivial" => option_env!("GUEST_TRIVIAL"),
        "future-version" => option_env!("GUEST_FUTURE_VERSION"),
        "contract-0.1.0" => option_env!("GUEST_CONTRACT_0_1_0"),
        "newer-patch" => option_env!("GUEST_NEWER_PATCH"),
        _ => None,
    };
    PathBuf::from(
        p.unwrap_or_else(|| panic!("guest component {name} was not built by tests/build.rs")),
    )
}

/// A JavaScript or Python driver (`js-raw`, `py-raw`, `webhook-js`, `webhook-py`) if
/// tests/build.rs built it (componentize-js and componentize-py installed by
/// examples/toolchains.sh); `None`, after saying so, when they are not installed outside
/// CI. Under CI they must be there.
pub fn language_guest(name: &str) -> Option<PathBuf> {
    let path = match name {
        "js-raw" => option_env!("GUEST_JS_RAW"),
        "js-sdk" => option_env!("GUEST_JS_SDK"),
        "py-raw" => option_env!("GUEST_PY_RAW"),
        "webhook-js" => option_env!("GUEST_WEBHOOK_JS"),
        "webhook-py" => option_env!("GUEST_WEBHOOK_PY"),
        _ => None,
    };
    if path.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must build the {name} driver (examples/toolchains.sh)"
        );
        eprintln!("SKIPPED: the {name} driver was not built (run examples/toolchains.sh)");
    }
    path.map(PathBuf::from)
}

/// A state dir shared by the tests that load the big JavaScript and Python components:
/// each is compiled once per test run (their AOT cache entries are tens of MB and a
/// cold compile takes many seconds of CPU).
pub fn language_state_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-lang-state")
}

/// `mailpush check -c conf`: its exit status, and its stdout then stderr.
pub fn run_check(conf: &Path) -> (Option<i32>, String) {
    let out = std::process::Command::new(mailpush_bin())
        .args(["check", "-c"])
        .arg(conf)
        .output()
        .expect("mailpush check runs");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), all)
}

/// Path of the `mailpush` command line under test: the same `mailpush::cli::main` as the
/// shipped binary, built by cargo for this package so it is never stale.
pub fn mailpush_bin() -> PathBuf {
    // Integration tests run from target/<profile>/deps/; cargo builds this package's
    // binaries into target/<profile>/ before running them.
    // A bench command (bench/src/bin) names the binary it runs.
    if let Some(bin) = std::env::var_os("MAILPUSH_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    dir.join("mailpush-under-test")
}

// ---------------------------------------------------------------- HTTP server

/// One recorded request.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Which connection carried the request (1, 2, … in accept order): equal numbers
    /// mean a kept-alive connection was reused.
    pub conn: usize,
    pub method: String,
    /// Request target (path and query).
    pub target: String,
    /// Headers in wire order, names as sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The request head and body exactly as received.
    pub raw: Vec<u8>,
}

impl Recorded {
    /// The first value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// The body as UTF-8.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// How the server answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Status with extra headers, after an optional delay.
    Status {
        status: u16,
        headers: Vec<(String, String)>,
        delay: Duration,
    },
    /// Never answer (the connection stays open until the client gives up).
    Hang,
    /// Close the connection without answering.
    Close,
    /// Reset the connection (TCP RST) without answering.
    Reset,
    /// Write these bytes (not HTTP, or broken HTTP), then close.
    Raw(&'static [u8]),
}

impl Reply {
    /// A plain status.
    pub fn status(status: u16) -> Self {
        Reply::Status {
            status,
            headers: Vec::new(),
            delay: Duration::ZERO,
        }
    }
    /// A status with one header.
    pub fn with_header(status: u16, name: &str, value: &str) -> Self {
        Reply::Status {
            status,
            headers: vec![(name.to_string(), value.to_string())],
            delay: Duration::ZERO,
        }
    }
}

struct ServerState {
    connections: std::sync::atomic::AtomicUsize,
    requests: Mutex<Vec<Recorded>>,
    script: Mutex<VecDeque<Reply>>,
    default: Mutex<Reply>,
    notify: Notify,
}

/// A real HTTP/1.1 server on 127.0.0.1 that records each request and answers from a
/// script (then with a default reply). Supports keep-alive and Content-Length bodies.
#[derive(Clone)]
pub struct RecordingServer {
    pub addr: std::net::SocketAddr,
    scheme: &'static str,
    state: Arc<ServerState>,
}

/// A private certificate authority and a server certificate it signed for `localhost`
/// and `127.0.0.1`, made fresh for a test (an operator's internal CA).
pub struct TestCa {
    /// The CA certificate, PEM: what an operator puts in `ssl_ca_file`.
    pub ca_pem: String,
    server_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    server_key: Vec<u8>,
}

impl TestCa {
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "mailpush test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        let key = KeyPair::generate().expect("server key");
        let params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("server params");
        let cert = params
            .signed_by(&key, &ca, &ca_key)
            .expect("server certificate");
        TestCa {
            ca_pem: ca.pem(),
            server_chain: vec![cert.der().clone(), ca.der().clone()],
            server_key: key.serialize_der(),
        }
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(self.server_key.clone().into());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(self.server_chain.clone(), key)
            .expect("server TLS config");
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl RecordingServer {
    /// Starts a server answering 200 by default.
    pub async fn start() -> Self {
        Self::listen(None).await
    }

    /// Starts an https server whose certificate `ca` signed (HTTP/1.1 over TLS).
    /// Connections whose TLS handshake fails are not recorded.
    pub async fn start_tls(ca: &TestCa) -> Self {
        Self::listen(Some(ca.acceptor())).await
    }

    async fn listen(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(ServerState {
            connections: Default::default(),
            requests: Mutex::new(Vec::new()),
            script: Mutex::new(VecDeque::new()),
            default: Mutex::new(Reply::status(200)),
            notify: Notify::new(),
        });
        let st = state.clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let st = st.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    // Reply::Reset: drop the socket with SO_LINGER 0, which sends RST.
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(sock).await {
                                if let Ok(Some(s)) = serve(stream, st).await {
                                    let _ = s.get_ref().0.set_zero_linger();
                                }
                            }
                        }
                        None => {
                            if let Ok(Some(s)) = serve(sock, st).await {
                                let _ = s.set_zero_linger();
                            }
                        }
                    }
                });
            }
        });
        RecordingServer {
            addr,
            scheme,
            state,
        }
    }

    /// `http://127.0.0.1:PORT` + path (`https://` for a TLS server).
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{}", self.scheme, self.addr, path)
    }

    /// Queues replies for the next requests.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.script.lock().unwrap().extend(replies);
    }

    /// Sets the reply used when the script is empty.
    pub fn set_default(&self, reply: Reply) {
        *self.state.default.lock().unwrap() = reply;
    }

    /// Requests so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived (fails after `limit`).
    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Recorded> {
        let wait = async {
            loop {
                let notified = self.state.notify.notified();
                if self.state.requests.lock().unwrap().len() >= n {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(limit, wait).await.is_err() {
            panic!(
                "expected {n} requests within {limit:?}, got {}",
                self.state.requests.lock().unwrap().len()
            );
        }
        self.requests()
    }
}

/// Serves one connection; returns the socket when it is to be reset.
async fn serve<S>(sock: S, st: Arc<ServerState>) -> std::io::Result<Option<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let conn = st
        .connections
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        + 1;
    let (r, mut w) = tokio::io::split(sock);
    let mut r = BufReader::new(r);
    loop {
        let mut raw = Vec::new();
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        raw.extend_from_slice(line.as_bytes());
        let mut parts = line.trim_end().splitn(3, ' ');
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).await? == 0 {
                return Ok(None);
            }
            raw.extend_from_slice(h.as_bytes());
            let h = h.trim_end_matches(['\r', '\n']);
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.to_string(), v.trim().to_string()));
            }
        }
        let len = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        r.read_exact(&mut body).await?;
        raw.extend_from_slice(&body);
        let reply = {
            let next = st.script.lock().unwrap().pop_front();
            next.unwrap_or_else(|| st.default.lock().unwrap().clone())
        };
        st.requests.lock().unwrap().push(Recorded {
            conn,
            method,
            target,
            headers,
            body,
            raw,
        });
        st.notify.notify_waiters();
        match reply {
            Reply::Hang => {
                // Hold the connection until the client closes it.
                let mut sink = [0u8; 1024];
                while r.read(&mut sink).await? > 0 {}
                return Ok(None);
            }
            Reply::Close => return Ok(None),
            Reply::Reset => return Ok(Some(r.into_inner().unsplit(w))),
            Reply::Raw(bytes) => {
                w.write_all(bytes).await?;
                w.flush().await?;
                return Ok(None);
            }
            Reply::Status {
                status,
                headers,
                delay,
            } => {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let mut resp = format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\n");
                for (k, v) in headers {
                    resp.push_str(&format!("{k}: {v}\r\n"));
                }
                resp.push_str("\r\nok");
                w.write_all(resp.as_bytes()).await?;
                w.flush().await?;
            }
        }
    }
}

// ---------------------------------------------------------------- native test drivers

/// What a recording driver saw: (driver label, transaction id, user).
pub type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

/// Test driver kinds registered as `record`, `panic`, `slow` and `defer`:
/// - `record:label=X` records every transaction;
/// - `panic` panics in begin_txn for every transaction (`every=N`: every Nth);
/// - `slow:msecs=N` sleeps N ms per transaction, then records (its counters say how many
///   it handled at once, and whether two of one user ever overlapped);
/// - `defer:times=N msecs=M` answers its first N calls with a deferred failure (as a
///   driver whose endpoint circuit is open: retry after M ms), then records.
pub struct TestDrivers {
    pub seen: Seen,
}

impl TestDrivers {
    pub fn new() -> Self {
        TestDrivers {
            seen: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// The default registry plus the test kinds.
    pub fn registry(&self) -> DriverRegistry {
        let mut r = DriverRegistry::default();
        for kind in ["record", "panic", "slow", "defer"] {
            r.register(Arc::new(TestFactory {
                kind,
                seen: self.seen.clone(),
            }));
        }
        r
    }
}

impl Default for TestDrivers {
    fn default() -> Self {
        Self::new()
    }
}

struct TestFactory {
    kind: &'static str,
    seen: Seen,
}

#[async_trait::async_trait]
impl DriverFactory for TestFactory {
    fn name(&self) -> &'static str {
        self.kind
    }
    async fn init(&self, init: &DriverInit) -> Result<Initialised, InitError> {
        let label = init
            .args
            .get("label")
            .map(str::to_string)
            .unwrap_or_else(|| format!("{}{}", self.kind, init.number));
        let msecs = init
            .args
            .get("msecs")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let every = init
            .args
            .get("every")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let times = init
            .args
            .get("times")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Ok(Initialised::new(Arc::new(TestDriver {
            kind: self.kind,
            label,
            seen: self.seen.clone(),
            delay: Duration::from_millis(msecs),
            every,
            times,
            count: Mutex::new(0),
            active: Mutex::new(Vec::new()),
            max_at_once: Default::default(),
            same_user_at_once: Default::default(),
        })))
    }
}

struct TestDriver {
    kind: &'static str,
    label: String,
    seen: Seen,
    delay: Duration,
    every: u64,
    times: u64,
    count: Mutex<u64>,
    /// Users being handled now (`slow`), and the most transactions handled at once.
    active: Mutex<Vec<String>>,
    max_at_once: std::sync::atomic::AtomicU64,
    /// Times two transactions of one user were handled at once (must stay 0).
    same_user_at_once: std::sync::atomic::AtomicU64,
}

struct NoopTxn;

#[async_trait::async_trait]
impl DriverTxn for NoopTxn {
    async fn process_mbox(&mut self, _r: &MailboxRecord<'_>) -> Result<(), Failure> {
        Ok(())
    }
    async fn process_msg(&mut self, _r: &MessageRecord<'_>) -> Result<(), Failure> {
        Ok(())
    }
}

#[async_trait::async_trait]
impl Driver for TestDriver {
    fn counters(&self) -> Vec<(&'static str, u64)> {
        use std::sync::atomic::Ordering::SeqCst;
        vec![
            ("max_at_once", self.max_at_once.load(SeqCst)),
            ("same_user_at_once", self.same_user_at_once.load(SeqCst)),
        ]
    }

    async fn begin_txn(&self, txn: &Arc<Transaction>) -> Result<Begin, Failure> {
        let n = {
            let mut c = self.count.lock().unwrap();
            *c += 1;
            *c
        };
        match self.kind {
            "panic" if n % self.every == 0 => panic!("test driver panics on purpose"),
            "slow" => {
                use std::sync::atomic::Ordering::SeqCst;
                {
                    let mut active = self.active.lock().unwrap();
                    if active.contains(&txn.user) {
                        self.same_user_at_once.fetch_add(1, SeqCst);
                    }
                    active.push(txn.user.clone());
                    self.max_at_once.fetch_max(active.len() as u64, SeqCst);
                }
                tokio::time::sleep(self.delay).await;
                let mut active = self.active.lock().unwrap();
                if let Some(i) = active.iter().position(|u| *u == txn.user) {
                    active.remove(i);
                }
            }
            "defer" if n <= self.times => {
                return Err(Failure {
                    reason: "circuit open for http://127.0.0.1:9 (test)".into(),
                    retryable: true,
                    retry_after: Some(self.delay),
                    deferred: true,
                })
            }
            _ => {}
        }
        self.seen
            .lock()
            .unwrap()
            .push((self.label.clone(), txn.id.clone(), txn.user.clone()));
        Ok(Begin::Join {
            events: EventSet::all(),
            txn: Box::new(NoopTxn),
        })
    }
}

// ---------------------------------------------------------------- config helpers

/// Writes `text` as `mailpush.conf` in `dir` and parses it.
/// Loads `component` as wasm driver 1 with the config-line arguments `args` (sandbox
/// keys included), reading METADATA from `metadata`.
pub async fn load_wasm(
    component: &Path,
    args: &str,
    engines: &Arc<mailpush::wasm::engine::Engines>,
    metadata: Arc<dyn mailpush_core::MetadataLookup>,
) -> mailpush::wasm::WasmDriver {
    let mut args = mailpush_core::DriverArgs::parse(args);
    let sandbox = mailpush::wasm::sandbox::Sandbox::from_args(&mut args).unwrap();
    let tag = Arc::new(mailpush::wasm::log::DriverTag {
        number: 1,
        name: "wasm".into(),
    });
    mailpush::wasm::WasmDriver::load(tag, component, sandbox, args, engines, metadata)
        .await
        .unwrap_or_else(|e| panic!("{}: {}", component.display(), e.message))
}

pub fn write_config(dir: &Path, text: &str) -> Config {
    let path = dir.join("mailpush.conf");
    std::fs::write(&path, text).expect("write config");
    Config::load(&path).unwrap_or_else(|e| panic!("config should parse:\n{e}"))
}

/// Initialises every driver of `config` with `registry`, panicking with the errors.
pub async fn load_drivers(registry: &DriverRegistry, config: &Config) -> Vec<LoadedDriver> {
    match registry.init_all(config, Arc::new(NoMetadata)).await {
        Ok(l) => l,
        Err((_, errors)) => panic!(
            "drivers should initialise:\n{}",
            errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

/// The error of the first driver of `config` that fails to initialise; panics when all
/// of them initialise.
pub async fn first_init_error(config: &Config) -> String {
    match DriverRegistry::default()
        .init_all(config, Arc::new(NoMetadata))
        .await
    {
        Ok(_) => panic!("a driver was expected to fail its init"),
        Err((_, errors)) => errors[0].to_string(),
    }
}

/// Asserts that for each of `users`, the transactions in `requests` (canonical JSON
/// bodies) are exactly that user's transactions of `sent`: in order, each once.
pub fn assert_each_users_order(sent: &[Transaction], requests: &[Recorded], users: &[String]) {
    let delivered: Vec<Transaction> = requests
        .iter()
        .map(|r| Transaction::from_json(&r.body_text()).expect("canonical JSON"))
        .collect();
    for user in users {
        let ids = |txns: &[Transaction]| -> Vec<String> {
            txns.iter()
                .filter(|t| &t.user == user)
                .map(|t| t.id.clone())
                .collect()
        };
        assert_eq!(ids(&delivered), ids(sent), "{user}: in order, each once");
    }
}

/// A transaction with one MailboxCreate event.
pub fn mailbox_txn(user: &str, id: &str) -> Transaction {
    Transaction::from_json(&format!(
        r#"{{"id":"{id}","user":"{user}","events":[{{"name":"MailboxCreate","mailbox":"INBOX"}}]}}"#
    ))
    .expect("valid transaction")
}

// ---------------------------------------------------------------- the daemon

/// The CPU time (user + system) process `pid` has used so far, in seconds
/// (`/proc/PID/stat`; 0 when it cannot be read).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name in parentheses (it may hold spaces): utime and stime are
    // the 12th and 13th fields.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) / hz
}

/// A `mailpush run` child process.
pub struct RunningDaemon {
    pub child: std::process::Child,
    pub addr: std::net::SocketAddr,
    pub config: PathBuf,
    /// Everything the process wrote to stderr so far.
    pub log: Arc<Mutex<String>>,
    /// Notified whenever `log` grows.
    logged: Arc<std::sync::Condvar>,
    /// The thread reading stderr into `log`, joined by [`RunningDaemon::stop`].
    reader: Option<std::thread::JoinHandle<()>>,
}

impl RunningDaemon {
    /// Starts `mailpush run -c CONFIG` and waits for its "listening on" log line.
    pub fn start(config: &Path) -> Self {
        Self::start_with(config, &["--log-level", "info"])
    }

    /// `mailpush run ARGS -c CONFIG` (e.g. `--log-format json`).
    pub fn start_with(config: &Path, args: &[&str]) -> Self {
        Self::spawn(config, args, None)
    }

    /// `mailpush run -c CONFIG` with its open-files limit (soft and hard) set to `files`,
    /// like `ulimit -n FILES`.
    pub fn start_with_open_files(config: &Path, files: u64) -> Self {
        Self::spawn(config, &["--log-level", "info"], Some(files))
    }

    fn spawn(config: &Path, args: &[&str], open_files: Option<u64>) -> Self {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        let mut command = std::process::Command::new(mailpush_bin());
        if let Some(files) = open_files {
            // SAFETY: setrlimit is async-signal-safe; it runs in the child before exec.
            unsafe {
                command.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: files,
                        rlim_max: files,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command
            .arg("run")
            .args(args)
            .arg("-c")
            .arg(config)
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn mailpush run");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let logged = Arc::new(std::sync::Condvar::new());
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        let logged2 = logged.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(i) = line.find("listening on ") {
                    let rest: String = line[i + "listening on ".len()..]
                        .chars()
                        .take_while(|c| c.is_ascii_hexdigit() || ".:[]".contains(*c))
                        .collect();
                    if let Ok(a) = rest.parse::<std::net::SocketAddr>() {
                        let _ = tx.send(a);
                    }
                }
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
                logged2.notify_all();
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("mailpush run did not start:\n{}", log.lock().unwrap()));
        RunningDaemon {
            child,
            addr,
            config: config.to_path_buf(),
            log,
            logged,
            reader: Some(reader),
        }
    }

    /// Waits (at most `within`) until the process has logged `text`; returns the log.
    /// A driver's line can reach the log after what it sent reached a server.
    pub fn wait_for_log(&self, text: &str, within: Duration) -> String {
        self.wait_for_logged_times(text, 1, within)
    }

    /// How many times the process has logged `text` so far.
    pub fn logged_times(&self, text: &str) -> usize {
        self.log.lock().unwrap().matches(text).count()
    }

    /// Waits (at most `within`) until the process has logged `text` `times` times (a
    /// line logged again, not the earlier one); returns the log.
    pub fn wait_for_logged_times(&self, text: &str, times: usize, within: Duration) -> String {
        let log = self.log.lock().unwrap();
        let (log, _) = self
            .logged
            .wait_timeout_while(log, within, |l| l.matches(text).count() < times)
            .unwrap();
        log.clone()
    }

    /// `http://ADDR` + path.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// SIGTERM, then waits for the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let status = self.child.wait().expect("wait");
        // Its last lines (the shutdown's) may still be in the pipe: `log` has them all
        // once the reader has seen the end of it.
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        status
    }
}

impl Drop for RunningDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- hostile drivers

/// Every final outcome's transaction id and when it arrived; [`TimedOutcomes::wait`]
/// awaits a condition on them.
#[derive(Default)]
pub struct TimedOutcomes {
    seen: Mutex<Vec<(String, std::time::Instant, Outcome)>>,
    notify: Notify,
}

impl DeliveryObserver for TimedOutcomes {
    fn delivered(&self, d: &Delivery) {
        self.seen.lock().unwrap().push((
            d.txn.id.clone(),
            std::time::Instant::now(),
            d.outcome.clone(),
        ));
        self.notify.notify_waiters();
    }
}

impl TimedOutcomes {
    /// Waits until `done` holds for the (id, arrival) pairs seen so far; returns them.
    pub async fn wait(
        &self,
        done: impl Fn(&[(String, std::time::Instant)]) -> bool,
    ) -> Vec<(String, std::time::Instant)> {
        loop {
            let notified = self.notify.notified();
            let seen: Vec<(String, std::time::Instant)> = self
                .seen
                .lock()
                .unwrap()
                .iter()
                .map(|(id, at, _)| (id.clone(), *at))
                .collect();
            if done(&seen) {
                return seen;
            }
            notified.await;
        }
    }

    /// The outcomes so far, with their transaction ids.
    pub fn outcomes(&self) -> Vec<(String, Outcome)> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(id, _, o)| (id.clone(), o.clone()))
            .collect()
    }
}

/// Every final outcome, with its driver and transaction id.
#[derive(Default)]
pub struct Outcomes(pub Mutex<Vec<(u32, String, Outcome)>>);

impl DeliveryObserver for Outcomes {
    fn delivered(&self, d: &Delivery) {
        self.0
            .lock()
            .unwrap()
            .push((d.driver, d.txn.id.clone(), d.outcome.clone()));
    }
}

/// Runs `n` transactions through [hostile wasm driver with `args`] + [recording driver];
/// returns the hostile driver's outcomes.
pub async fn run_hostile(args: &str, n: usize) -> (Vec<Outcome>, TestDrivers) {
    run_guest("hostile", args, n).await
}

/// [`run_hostile`] with the guest `name` ([`guest`]).
pub async fn run_guest(name: &str, args: &str, n: usize) -> (Vec<Outcome>, TestDrivers) {
    let dir = tempfile::tempdir().unwrap();
    let conf = format!(
        "mailpush {{\n state_dir = state\n}}\nplugin {{\n push_notification_driver = wasm:file={} {args}\n push_notification_driver2 = record:label=good\n}}\n",
        guest(name).display()
    );
    let config = write_config(dir.path(), &conf);
    let drivers = TestDrivers::new();
    let loaded = load_drivers(&drivers.registry(), &config).await;
    let outcomes = Arc::new(Outcomes::default());
    let d = Dispatcher::start(loaded, 64, Some(outcomes.clone()));
    for i in 0..n {
        d.accept(
            vec![mailbox_txn(&format!("u{i}@example.com"), &format!("t{i}"))],
            Backpressure::Wait,
        )
        .await
        .unwrap();
    }
    d.shutdown().await;
    let seen = drivers.seen.lock().unwrap().clone();
    let ids: Vec<_> = seen.iter().map(|(_, id, _)| id.clone()).collect();
    let expected: Vec<_> = (0..n).map(|i| format!("t{i}")).collect();
    assert_eq!(
        ids, expected,
        "the good driver must receive every transaction, in order"
    );
    let hostile = outcomes
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|(d, _, _)| *d == 1)
        .map(|(_, _, o)| o.clone())
        .collect();
    (hostile, drivers)
}

/// Runs `mailpush send` (the real binary, real log output) over `n` transactions with
/// the hostile driver and `args`; returns its stderr, asserting it succeeded.
pub fn send_logged(args: &str, n: usize) -> String {
    let (ok, log) = send_hostile(args, n);
    assert!(ok, "{log}");
    log
}

/// `(reused, functions)` from a freshly compiled wasm driver's `compiled:` line of
/// `mailpush check` ("compiled, AOT cache written (R of F functions from an earlier
/// compile)"); panics, showing the details, when there is none.
pub fn function_reuse(details: &[String]) -> (u64, u64) {
    let line = details
        .iter()
        .find_map(|l| {
            l.trim()
                .strip_prefix("compiled: compiled, AOT cache written (")
        })
        .unwrap_or_else(|| panic!("no function reuse in {details:?}"));
    let mut numbers = line.split(' ').filter_map(|w| w.parse::<u64>().ok());
    (numbers.next().unwrap(), numbers.next().unwrap())
}

/// Runs `mailpush send` over `n` transactions with the hostile driver and `args`;
/// returns whether it succeeded and its stderr.
pub fn send_hostile(args: &str, n: usize) -> (bool, String) {
    send_guest("hostile", args, n)
}

/// [`send_hostile`] with the guest `name` ([`guest`]).
pub fn send_guest(name: &str, args: &str, n: usize) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mailpush.conf");
    std::fs::write(
        &conf,
        format!(
            "mailpush {{\n state_dir = state\n}}\nplugin {{\n push_notification_driver = wasm:file={} {args}\n}}\n",
            guest(name).display()
        ),
    )
    .unwrap();
    let mut input = String::new();
    for i in 0..n {
        input.push_str(&mailbox_txn(&format!("u{i}@example.com"), &format!("t{i}")).to_json());
        input.push('\n');
    }
    send_with_config(&conf, &input)
}

/// Runs `mailpush send -c CONF -` (the real binary, info-level log) on `input` (NDJSON);
/// returns whether it succeeded and its stderr.
pub fn send_with_config(conf: &Path, input: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(mailpush_bin())
        .args(["send", "--log-level", "info", "-c"])
        .arg(conf)
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Lines of `log` containing `needle`.
pub fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// The failure reasons of `outcomes` (other outcomes as `{:?}`).
pub fn reasons(outcomes: &[Outcome]) -> Vec<String> {
    outcomes
        .iter()
        .map(|o| match o {
            Outcome::Failed(f) => f.reason.clone(),
            other => format!("{other:?}"),
        })
        .collect()
}

/// `GET /v1/status` of a running daemon, as the CLI reads it.
pub async fn daemon_status(addr: std::net::SocketAddr) -> mailpush::status::Status {
    let (s, _, body) = http_request(addr, "GET", "/v1/status", &[], b"").await;
    assert_eq!(s, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// A minimal HTTP/1.1 client request (one request per connection) to 127.0.0.1:
/// returns (status, headers, body).
/// POSTs an NDJSON batch to `/v1/transactions` until it is accepted (202), waiting
/// `pause` after each 503 or failed connection; returns how many of those there were.
/// Panics on any other answer.
pub async fn post_ndjson(addr: std::net::SocketAddr, body: &str, pause: Duration) -> usize {
    let mut refused = 0;
    loop {
        let (s, _, b) = http_request(
            addr,
            "POST",
            "/v1/transactions",
            &[("content-type", "application/x-ndjson")],
            body.as_bytes(),
        )
        .await;
        match s {
            202 => return refused,
            503 | 0 => {
                refused += 1;
                tokio::time::sleep(pause).await;
            }
            other => panic!("ingest answered {other}: {b}"),
        }
    }
}

pub async fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, String) {
    let mut sock = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    sock.write_all(req.as_bytes()).await.expect("write");
    sock.write_all(body).await.expect("write body");
    let mut raw = Vec::new();
    sock.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

// ---------------------------------------------------------------- the webhook examples

/// The example webhook drivers' test secret.
pub const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// HMAC-SHA256 written out from RFC 2104 on top of SHA-256 — independent of the
/// `hmac` crate the webhook driver uses.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&sha2::Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    use sha2::Digest;
    let inner = sha2::Sha256::new()
        .chain_update(&ipad)
        .chain_update(msg)
        .finalize();
    sha2::Sha256::new()
        .chain_update(&opad)
        .chain_update(inner)
        .finalize()
        .into()
}

/// The webhook example (in any language): every sample transaction POSTed once, as its
/// canonical JSON, signed per Standard Webhooks with the example secret. `state_dir`: where
/// the compiled component is cached (default: a fresh one).
pub async fn assert_webhook_posts_signed_canonical_json(
    component: &Path,
    state_dir: Option<&Path>,
) {
    use base64::Engine as _;
    let server = RecordingServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let state = state_dir.map_or_else(|| "state".to_string(), |d| d.display().to_string());
    let conf = format!(
        "mailpush {{\n state_dir = {state}\n}}\nplugin {{\n push_notification_driver = wasm:file={} url={} secret={WEBHOOK_SECRET} allow_hosts=127.0.0.1 allow_private timeout_msecs={WEBHOOK_TEST_TIMEOUT}\n}}\n",
        component.display(),
        server.url("/hooks/mail")
    );
    let config = write_config(dir.path(), &conf);
    let loaded = load_drivers(&TestDrivers::new().registry(), &config).await;
    // Every webhook (Rust, JavaScript, Python) declares its begin-txn answer at load
    // (mailpush:driver@0.1.1's fixed-begin, through its SDK) and signs through the host
    // (host.hmac-sha256): the signatures checked below come from there.
    assert!(
        loaded[0]
            .details
            .iter()
            .any(|l| l == "begin-txn: not called, fixed at load (fixed-begin): every event"),
        "{:?}",
        loaded[0].details
    );
    let d = Dispatcher::start(loaded, 16, None);
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/events.ndjson"
    ))
    .unwrap();
    let txns = mailpush_core::parse_ndjson(&text).unwrap();
    for t in &txns {
        d.accept(vec![t.clone()], Backpressure::Wait).await.unwrap();
    }
    let reports = d.shutdown().await;
    assert_eq!(reports[0].delivered as usize, txns.len(), "{reports:?}");
    let reqs = server.requests();
    assert_eq!(reqs.len(), txns.len());
    let key = base64::engine::general_purpose::STANDARD
        .decode(WEBHOOK_SECRET.trim_start_matches("whsec_"))
        .unwrap();
    // Per user in order; across users the lane takes turns, so match by id.
    for req in &reqs {
        let txn = txns
            .iter()
            .find(|t| Some(t.id.as_str()) == req.header("webhook-id"))
            .expect("a known webhook-id");
        assert_eq!(req.method, "POST");
        assert_eq!(req.target, "/hooks/mail");
        assert_eq!(req.header("content-type"), Some("application/json"));
        let id = req.header("webhook-id").unwrap();
        assert_eq!(id, txn.id);
        let ts = req.header("webhook-timestamp").unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(ts.parse::<u64>().unwrap().abs_diff(now) < 60);
        let signed = format!("{id}.{ts}.{}", req.body_text());
        let expected =
            base64::engine::general_purpose::STANDARD.encode(hmac_sha256(&key, signed.as_bytes()));
        assert_eq!(
            req.header("webhook-signature").unwrap(),
            format!("v1,{expected}")
        );
        // The body is the transaction's canonical JSON.
        assert_eq!(Transaction::from_json(&req.body_text()).unwrap(), *txn);
    }
}

/// The webhook example (in any language) refuses at `init`, naming the bound, a secret
/// whose key is longer than the host's `hmac-sha256` takes (it would trap on every
/// delivery), and takes one at the bound.
pub async fn assert_webhook_refuses_a_key_the_host_cannot_sign_with(
    component: &Path,
    state_dir: Option<&Path>,
    also_at_the_bound: bool,
) {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let state = state_dir.map_or_else(|| "state".to_string(), |d| d.display().to_string());
    let config = |key_len: usize| {
        let secret = base64::engine::general_purpose::STANDARD.encode(vec![7u8; key_len]);
        write_config(
            dir.path(),
            &format!(
                "mailpush {{\n state_dir = {state}\n}}\nplugin {{\n push_notification_driver = wasm:file={} url=http://127.0.0.1:9/ secret=whsec_{secret} allow_hosts=127.0.0.1 allow_private timeout_msecs={WEBHOOK_TEST_TIMEOUT}\n}}\n",
                component.display(),
            ),
        )
    };
    let registry = TestDrivers::new().registry();
    let Err((_, errors)) = registry.init_all(&config(4097), Arc::new(NoMetadata)).await else {
        panic!("a 4097-byte key should be refused at init")
    };
    let text = errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        text.contains("init refused the arguments")
            && text.contains("secret: 4097 bytes of key, at most 4096"),
        "{text}"
    );
    if also_at_the_bound {
        load_drivers(&registry, &config(4096)).await;
    }
}

/// `timeout_msecs` of the webhook examples in the tests that check what they send: a
/// Python instance runs its runtime's `init` in every transaction (it is not
/// snapshotted), a few ms of CPU that the default 100 ms of wall-clock-measured guest
/// time did not always cover while another test compiled a JavaScript component on both
/// cores. These tests check signatures and failures, not deadlines (sandbox.rs does).
const WEBHOOK_TEST_TIMEOUT: u32 = 2000;

/// The webhook example (in any language): a 503 with Retry-After is a retryable failure
/// that carries the delay; a 400 a permanent one.
pub async fn assert_webhook_failures_are_classified(component: &Path, state_dir: Option<&Path>) {
    use mailpush::pipeline::deliver;
    let server = RecordingServer::start().await;
    server.script([
        Reply::with_header(503, "retry-after", "7"),
        Reply::status(400),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let state = state_dir.map_or_else(|| "state".to_string(), |d| d.display().to_string());
    let conf = format!(
        "mailpush {{\n state_dir = {state}\n}}\nplugin {{\n push_notification_driver = wasm:file={} url={} allow_hosts=127.0.0.1 allow_private timeout_msecs={WEBHOOK_TEST_TIMEOUT}\n}}\n",
        component.display(),
        server.url("/h")
    );
    let config = write_config(dir.path(), &conf);
    let loaded = load_drivers(&TestDrivers::new().registry(), &config).await;
    let txn = Arc::new(mailbox_txn("a@example.com", "x1"));
    let Outcome::Failed(f) = deliver(loaded[0].driver.as_ref(), &txn).await else {
        panic!()
    };
    assert!(f.retryable && f.reason.contains("503"), "{f:?}");
    assert_eq!(f.retry_after, Some(std::time::Duration::from_secs(7)));
    let Outcome::Failed(f) = deliver(loaded[0].driver.as_ref(), &txn).await else {
        panic!()
    };
    assert!(!f.retryable && f.reason.contains("400"), "{f:?}");
}
