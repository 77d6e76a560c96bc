//! Ingest connections: accepted, counted, timed out and cut, so that clients that stall,
//! idle or open too many connections cannot hold ingest.
//!
//! Every connection is watched from the moment it is accepted:
//! - between requests (and before the first) it may stay silent for `idle_timeout`;
//! - once it sends the first byte of a request it has `header_timeout` to finish the
//!   request head;
//! - a request body must arrive within `body_timeout` (enforced by the handler, which
//!   reads the body: [`super::http`]).
//!
//! At most `max_connections` are open (and `max_connections_per_peer` from one IP
//! address). At the cap a new connection replaces the longest-idle one that has no
//! request in progress; when every connection is busy, the new one is closed. Cuts are
//! counted by reason (`/metrics`) and summarised in the log at most once per
//! [`CUT_LOG_INTERVAL`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use mailpush_config::ConnectionLimits;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{watch, Notify};

/// How often, at most, cut connections are summarised in the log.
pub const CUT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// File descriptors kept for everything but ingest connections (spool, drivers' outbound
/// connections, wasm cache): at least this many, or a quarter of the limit.
const RESERVED_FILES: u64 = 64;

/// Largest request head (and read buffer) a connection may use.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Why a connection was cut (or refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Cut {
    /// Began a request but did not finish its head within `header_timeout`.
    HeaderTimeout = 1,
    /// Silent for `idle_timeout` between requests.
    IdleTimeout,
    /// Did not finish a request body within `body_timeout`.
    BodyTimeout,
    /// Idle, and replaced by a new connection at `max_connections`.
    Replaced,
    /// Refused: `max_connections` open and all of them busy.
    MaxConnections,
    /// Refused: `max_connections_per_peer` open from its address and all of them busy.
    MaxConnectionsPerPeer,
    /// Still open when the shutdown deadline passed.
    Shutdown,
}

impl Cut {
    /// Every reason, in the order `/metrics` lists them.
    pub const ALL: [Cut; 7] = [
        Cut::HeaderTimeout,
        Cut::IdleTimeout,
        Cut::BodyTimeout,
        Cut::Replaced,
        Cut::MaxConnections,
        Cut::MaxConnectionsPerPeer,
        Cut::Shutdown,
    ];

    /// The reason's label in `/metrics` and `/v1/status`.
    pub fn label(self) -> &'static str {
        match self {
            Cut::HeaderTimeout => "header_timeout",
            Cut::IdleTimeout => "idle_timeout",
            Cut::BodyTimeout => "body_timeout",
            Cut::Replaced => "replaced_idle",
            Cut::MaxConnections => "max_connections",
            Cut::MaxConnectionsPerPeer => "max_connections_per_peer",
            Cut::Shutdown => "shutdown",
        }
    }

    fn from_u8(v: u8) -> Option<Cut> {
        Cut::ALL.into_iter().find(|c| *c as u8 == v)
    }
}

/// What one connection is doing, shared by its reader, its service and its watchdog.
/// Times are milliseconds since the table's epoch.
struct Activity {
    epoch: Instant,
    peer: Option<IpAddr>,
    /// Requests being answered (0 or 1 with HTTP/1).
    busy: AtomicU32,
    /// When it last finished a request (or connected).
    idle_since: AtomicU64,
    /// 1 + when the first byte of a request head arrived; 0 when none is being read.
    head_started: AtomicU64,
    /// A [`Cut`] ordered from outside (replacement, shutdown); 0 for none.
    cut: AtomicU8,
    /// Wakes the watchdog: a head started, or a cut was ordered.
    wake: Notify,
}

impl Activity {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn order_cut(&self, cut: Cut) {
        let _ = self
            .cut
            .compare_exchange(0, cut as u8, Ordering::Relaxed, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Bytes arrived: when no request is in progress they begin a request head.
    fn read_some(&self) {
        if self.busy.load(Ordering::Relaxed) == 0 && self.head_started.load(Ordering::Relaxed) == 0
        {
            self.head_started.store(self.now() + 1, Ordering::Relaxed);
            self.wake.notify_one();
        }
    }

    fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.busy.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(0, Ordering::Relaxed);
        RequestGuard(self.clone())
    }

    /// Resolves with the reason once the connection must be cut.
    async fn watch(&self, limits: &ConnectionLimits) -> Cut {
        let header = limits.header_timeout.as_millis() as u64;
        let idle = limits.idle_timeout.as_millis() as u64;
        loop {
            if let Some(cut) = Cut::from_u8(self.cut.load(Ordering::Relaxed)) {
                return cut;
            }
            let now = self.now();
            let (deadline, cut) = if self.busy.load(Ordering::Relaxed) > 0 {
                // The handler bounds a request (body_timeout); look again later.
                (now + header.min(idle), None)
            } else {
                match self.head_started.load(Ordering::Relaxed) {
                    0 => (
                        self.idle_since.load(Ordering::Relaxed) + idle,
                        Some(Cut::IdleTimeout),
                    ),
                    started => (started - 1 + header, Some(Cut::HeaderTimeout)),
                }
            };
            if let Some(cut) = cut.filter(|_| now >= deadline) {
                return cut;
            }
            let at = self.epoch + Duration::from_millis(deadline);
            tokio::select! {
                _ = tokio::time::sleep_until(at.into()) => {}
                _ = self.wake.notified() => {}
            }
        }
    }
}

/// Held while a request is answered.
struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let a = &self.0;
        a.idle_since.store(a.now(), Ordering::Relaxed);
        a.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection's byte stream, reporting reads to its [`Activity`].
struct Watched<Io> {
    io: Io,
    activity: Arc<Activity>,
}

impl<Io: AsyncRead + Unpin> AsyncRead for Watched<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read_some();
        }
        r
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for Watched<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[derive(Default)]
struct Table {
    next_id: u64,
    open: HashMap<u64, Arc<Activity>>,
    per_peer: HashMap<IpAddr, usize>,
}

impl Table {
    fn remove(&mut self, id: u64) -> bool {
        let Some(a) = self.open.remove(&id) else {
            return false;
        };
        if let Some(peer) = a.peer {
            if let Some(n) = self.per_peer.get_mut(&peer) {
                *n -= 1;
                if *n == 0 {
                    self.per_peer.remove(&peer);
                }
            }
        }
        true
    }

    /// The longest-idle connection with no request in progress (of `peer`, if given).
    fn longest_idle(&self, peer: Option<IpAddr>) -> Option<u64> {
        self.open
            .iter()
            .filter(|(_, a)| peer.is_none() || a.peer == peer)
            .filter(|(_, a)| a.busy.load(Ordering::Relaxed) == 0)
            .min_by_key(|(_, a)| a.idle_since.load(Ordering::Relaxed))
            .map(|(id, _)| *id)
    }
}

/// Every open ingest connection, with the limits they live under.
pub struct ConnectionTable {
    limits: ConnectionLimits,
    epoch: Instant,
    table: Mutex<Table>,
    /// Notified when the last connection closes.
    emptied: Notify,
    cuts: [AtomicU64; Cut::ALL.len()],
    /// Cuts not yet summarised in the log.
    unlogged: [AtomicU64; Cut::ALL.len()],
}

/// A connection's place in the table; leaving it when dropped.
struct Admission {
    table: Arc<ConnectionTable>,
    id: u64,
    activity: Arc<Activity>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut t = self.table.table.lock();
        t.remove(self.id);
        if t.open.is_empty() {
            self.table.emptied.notify_waiters();
        }
    }
}

impl ConnectionTable {
    /// A table under `limits` (already fitted to the open-files limit: [`fit_to_open_files`]).
    pub fn new(limits: ConnectionLimits) -> Arc<Self> {
        Arc::new(ConnectionTable {
            limits,
            epoch: Instant::now(),
            table: Mutex::new(Table::default()),
            emptied: Notify::new(),
            cuts: Default::default(),
            unlogged: Default::default(),
        })
    }

    /// The limits connections live under.
    pub fn limits(&self) -> &ConnectionLimits {
        &self.limits
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.table.lock().open.len()
    }

    /// Connections cut so far, by reason label.
    pub fn cuts(&self) -> Vec<(&'static str, u64)> {
        Cut::ALL
            .iter()
            .map(|c| {
                (
                    c.label(),
                    self.cuts[*c as usize - 1].load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    /// Counts a cut (the handler counts body timeouts itself).
    pub fn count_cut(&self, cut: Cut) {
        let i = cut as usize - 1;
        self.cuts[i].fetch_add(1, Ordering::Relaxed);
        self.unlogged[i].fetch_add(1, Ordering::Relaxed);
    }

    fn admit(self: &Arc<Self>, peer: Option<IpAddr>) -> Result<Admission, Cut> {
        let mut t = self.table.lock();
        if let Some(ip) = peer {
            if t.per_peer.get(&ip).copied().unwrap_or(0) >= self.limits.max_connections_per_peer {
                let victim = t.longest_idle(Some(ip)).ok_or(Cut::MaxConnectionsPerPeer)?;
                self.replace(&mut t, victim);
            }
        }
        if t.open.len() >= self.limits.max_connections {
            let victim = t.longest_idle(None).ok_or(Cut::MaxConnections)?;
            self.replace(&mut t, victim);
        }
        let activity = Arc::new(Activity {
            epoch: self.epoch,
            peer,
            busy: AtomicU32::new(0),
            idle_since: AtomicU64::new(self.epoch.elapsed().as_millis() as u64),
            head_started: AtomicU64::new(0),
            cut: AtomicU8::new(0),
            wake: Notify::new(),
        });
        t.next_id += 1;
        let id = t.next_id;
        t.open.insert(id, activity.clone());
        if let Some(ip) = peer {
            *t.per_peer.entry(ip).or_default() += 1;
        }
        Ok(Admission {
            table: self.clone(),
            id,
            activity,
        })
    }

    fn replace(&self, t: &mut Table, victim: u64) {
        if let Some(a) = t.open.get(&victim) {
            a.order_cut(Cut::Replaced);
        }
        t.remove(victim);
    }

    /// Resolves once no connection is open.
    pub async fn closed(&self) {
        loop {
            let emptied = self.emptied.notified();
            tokio::pin!(emptied);
            emptied.as_mut().enable();
            if self.table.lock().open.is_empty() {
                return;
            }
            emptied.await;
        }
    }

    /// Cuts every open connection (the shutdown deadline passed).
    pub fn cut_all(&self) {
        for a in self.table.lock().open.values() {
            a.order_cut(Cut::Shutdown);
        }
    }

    /// Logs the cuts since the last summary, if any (called every [`CUT_LOG_INTERVAL`]).
    pub fn log_cuts(&self) {
        let counts: Vec<String> = Cut::ALL
            .iter()
            .filter_map(|c| {
                let n = self.unlogged[*c as usize - 1].swap(0, Ordering::Relaxed);
                (n > 0).then(|| format!("{}={n}", c.label()))
            })
            .collect();
        if !counts.is_empty() {
            tracing::warn!(
                "cut or refused ingest connections in the last {} s: {} (limits: header_timeout_msecs={}, idle_timeout_msecs={}, body_timeout_msecs={}, max_connections={}, max_connections_per_peer={})",
                CUT_LOG_INTERVAL.as_secs(),
                counts.join(" "),
                self.limits.header_timeout.as_millis(),
                self.limits.idle_timeout.as_millis(),
                self.limits.body_timeout.as_millis(),
                self.limits.max_connections,
                self.limits.max_connections_per_peer,
            );
        }
    }
}

/// Raises the soft open-files limit to the hard one and lowers `max_connections` (and
/// the per-peer cap) to fit what is then available, with a warning saying so.
pub fn fit_to_open_files(mut limits: ConnectionLimits) -> ConnectionLimits {
    let Some(files) = raise_open_files() else {
        return limits;
    };
    let usable = files.saturating_sub(RESERVED_FILES.max(files / 4)).max(1);
    let usable = usize::try_from(usable).unwrap_or(usize::MAX);
    if limits.max_connections > usable {
        tracing::warn!(
            "max_connections = {} lowered to {usable} to fit the open-files limit ({files}); raise the limit (systemd LimitNOFILE=, ulimit -n) to allow more",
            limits.max_connections
        );
        limits.max_connections = usable;
    }
    limits.max_connections_per_peer = limits.max_connections_per_peer.min(limits.max_connections);
    limits
}

/// The soft `RLIMIT_NOFILE` after raising it to the hard limit; `None` when unlimited or
/// unknown.
fn raise_open_files() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    (lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur)
}

/// A listener ingest accepts connections on.
pub trait Accept: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The next connection and its peer's IP address (none for a unix socket).
    fn accept(
        &self,
    ) -> impl std::future::Future<Output = std::io::Result<(Self::Io, Option<IpAddr>)>> + Send;
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> std::io::Result<(Self::Io, Option<IpAddr>)> {
        let (io, addr) = tokio::net::TcpListener::accept(self).await?;
        let _ = io.set_nodelay(true);
        Ok((io, Some(addr.ip().to_canonical())))
    }
}

impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&self) -> std::io::Result<(Self::Io, Option<IpAddr>)> {
        let (io, _) = tokio::net::UnixListener::accept(self).await?;
        Ok((io, None))
    }
}

/// Accepts connections on `listener` and serves `router` on them until `stop` turns
/// true; then asks open connections to close after their current request (the caller
/// waits for [`ConnectionTable::closed`] and cuts the rest at its deadline).
pub async fn serve(
    listener: impl Accept,
    router: Router,
    table: Arc<ConnectionTable>,
    mut stop: watch::Receiver<bool>,
) {
    let service = TowerToHyperService::new(router);
    let mut last_error_log: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => return,
        };
        let (io, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset
                ) {
                    // Out of file descriptors, most likely: wait for connections to close.
                    if last_error_log.is_none_or(|t| t.elapsed() >= CUT_LOG_INTERVAL) {
                        tracing::error!("cannot accept ingest connections: {e} (open connections: {}; see max_connections and the open-files limit)", table.open());
                        last_error_log = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                continue;
            }
        };
        let admission = match table.admit(peer) {
            Ok(a) => a,
            Err(cut) => {
                table.count_cut(cut);
                drop(io);
                continue;
            }
        };
        tokio::spawn(serve_connection(
            io,
            admission,
            service.clone(),
            stop.clone(),
        ));
    }
}

async fn serve_connection<Io: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: Io,
    admission: Admission,
    service: TowerToHyperService<Router>,
    mut stop: watch::Receiver<bool>,
) {
    let activity = admission.activity.clone();
    let watched = Watched {
        io,
        activity: activity.clone(),
    };
    let svc = {
        let activity = activity.clone();
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let guard = activity.request_started();
            let call = hyper::service::Service::call(&service, req);
            async move {
                let response = call.await;
                drop(guard);
                response
            }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .max_buf_size(MAX_HEAD_BYTES)
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(watched), svc);
    tokio::pin!(conn);
    let limits = *admission.table.limits();
    let mut stopping = false;
    let cut = loop {
        tokio::select! {
            _ = conn.as_mut() => break None,
            cut = activity.watch(&limits) => break Some(cut),
            _ = stop.wait_for(|s| *s), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    };
    if let Some(cut) = cut {
        admission.table.count_cut(cut);
    }
}
