//! Keep-alive connections for a driver's outbound HTTP.
//!
//! wasmtime's default outgoing handler opens a TCP (and TLS) connection for every
//! request. A driver that posts each transaction to the same webhook would pay a
//! connect — and for https a full handshake — per transaction. The pool keeps idle
//! HTTP/1.1 connections per (scheme, host, port). The policy checks (allowed host,
//! private addresses after DNS resolution, [`super::resolver`]) run before every
//! request, pooled or not, on a cached answer as on a fresh one.
//!
//! New connections go to the addresses that passed the policy, tried in turn within
//! the connect timeout (also for https: the TLS server name is the host, the TCP peer a
//! checked address, so a second DNS answer cannot redirect it). Idle connections are
//! dropped after [`IDLE_TIMEOUT`]; at most `max_idle` are kept per key and
//! [`MAX_IDLE_FACTOR`] × `max_idle` in all. A request sent on a pooled connection that
//! the server had closed in the meantime is sent again on a new connection (hyper hands
//! the unsent request back).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::client::conn::http1::SendRequest;
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::OwnedSemaphorePermit;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, WasiBody};

/// Idle connections older than this are closed instead of reused (below the idle
/// timeouts of common servers, so a reused connection is rarely closed under a request).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Idle connections kept in all, as a multiple of the per-key limit.
pub const MAX_IDLE_FACTOR: usize = 4;

/// How long a pooled connection may take to become ready before a new one is opened.
const READY_WAIT: Duration = Duration::from_millis(50);

/// The most bytes a connection reads ahead (response head and body buffered in the
/// host): part of what bounds the host memory a driver can make mailpush hold.
pub const READ_BUFFER: usize = 64 << 10;

/// An HTTP/1.1 client connection builder with a bounded read buffer.
fn http1() -> hyper::client::conn::http1::Builder {
    let mut b = hyper::client::conn::http1::Builder::new();
    b.max_buf_size(READ_BUFFER);
    b
}

/// Where a pooled connection goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub tls: bool,
    /// The host name (TLS server name).
    pub host: String,
    pub port: u16,
}

/// Request timeouts (already clamped to the sandbox's limits).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub between_bytes: Duration,
}

struct Idle {
    sender: SendRequest<WasiBody>,
    since: Instant,
}

/// The keep-alive connections of one driver.
pub struct ConnectionPool {
    idle: Mutex<HashMap<PoolKey, Vec<Idle>>>,
    max_idle: usize,
    tls: OnceLock<tokio_rustls::TlsConnector>,
    /// Connections opened (for tests and counters).
    opened: std::sync::atomic::AtomicU64,
}

impl ConnectionPool {
    pub fn new(max_idle: usize) -> Self {
        ConnectionPool {
            idle: Mutex::new(HashMap::new()),
            max_idle,
            tls: OnceLock::new(),
            opened: Default::default(),
        }
    }

    /// Connections opened so far.
    pub fn opened(&self) -> u64 {
        self.opened.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<PoolKey, Vec<Idle>>> {
        self.idle.lock()
    }

    /// An idle connection to `key`, if one is kept and still open.
    fn take(&self, key: &PoolKey) -> Option<SendRequest<WasiBody>> {
        let mut idle = self.lock();
        let list = idle.get_mut(key)?;
        while let Some(c) = list.pop() {
            if c.since.elapsed() < IDLE_TIMEOUT && !c.sender.is_closed() {
                return Some(c.sender);
            }
        }
        None
    }

    /// Keeps a connection whose response has been read in full; drops expired and
    /// closed ones everywhere.
    fn give_back(&self, key: PoolKey, sender: SendRequest<WasiBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        idle.retain(|_, list| {
            list.retain(|c| c.since.elapsed() < IDLE_TIMEOUT && !c.sender.is_closed());
            !list.is_empty()
        });
        let total: usize = idle.values().map(Vec::len).sum();
        let list = idle.entry(key).or_default();
        if list.len() < self.max_idle && total < self.max_idle * MAX_IDLE_FACTOR {
            list.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    fn tls(&self) -> &tokio_rustls::TlsConnector {
        self.tls.get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.into(),
            };
            let config = rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth();
            tokio_rustls::TlsConnector::from(Arc::new(config))
        })
    }

    /// A new connection to the first of `addrs` (all checked by the policy) that
    /// answers, TLS and HTTP handshakes included, within the connect timeout.
    async fn connect(
        &self,
        key: &PoolKey,
        addrs: &[SocketAddr],
        t: Timeouts,
    ) -> Result<SendRequest<WasiBody>, Error> {
        let attempt = async {
            let mut last = Error::DestinationNotFound;
            for addr in addrs {
                match tokio::net::TcpStream::connect(addr).await {
                    Ok(s) => return self.handshake(key, s).await,
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        last = Error::ConnectionRefused
                    }
                    Err(e) => last = Error::Connect(e),
                }
            }
            Err(last)
        };
        match tokio::time::timeout(t.connect, attempt).await {
            Ok(r) => r,
            Err(_) => Err(Error::ConnectionTimeout),
        }
    }

    async fn handshake(
        &self,
        key: &PoolKey,
        stream: tokio::net::TcpStream,
    ) -> Result<SendRequest<WasiBody>, Error> {
        // Requests are written in pieces (head, then body frames); without this, Nagle's
        // algorithm holds the body until the server's delayed ACK.
        let _ = stream.set_nodelay(true);
        self.opened
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if key.tls {
            let name = rustls::pki_types::ServerName::try_from(key.host.clone())
                .map_err(Error::InvalidDnsNameError)?;
            let tls = self.tls().connect(name, stream).await.map_err(Error::Tls)?;
            let (sender, conn) = http1().handshake(TokioIo::new(tls)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(sender)
        } else {
            let (sender, conn) = http1().handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(sender)
        }
    }

    /// Sends `request` (its URI already in origin form, its Host header set) over a
    /// pooled connection to `key`, or a new one to one of `addrs` (the addresses the
    /// policy checked). `permit` (the driver's connection limit) is held until the
    /// response body has been read or dropped.
    pub async fn send(
        self: &Arc<Self>,
        key: PoolKey,
        addrs: &[SocketAddr],
        mut request: http::Request<WasiBody>,
        timeouts: Timeouts,
        permit: OwnedSemaphorePermit,
    ) -> Result<http::Response<WasiBody>, Error> {
        // Pooled connections first; one the server closed meanwhile gives the request back.
        while let Some(mut sender) = self.take(&key) {
            // A connection is kept once its response was read; hyper marks it ready
            // when its task has seen that end, which is at most a poll away.
            match tokio::time::timeout(READY_WAIT, sender.ready()).await {
                Ok(Ok(())) => {}
                _ => continue,
            }
            match tokio::time::timeout(timeouts.first_byte, sender.try_send_request(request)).await
            {
                Err(_) => return Err(Error::ConnectionReadTimeout),
                Ok(Ok(resp)) => return Ok(self.wrap(resp, key, sender, timeouts, permit)),
                Ok(Err(mut e)) => match e.take_message() {
                    Some(req) => request = req,
                    None => return Err(Error::from(e.into_error())),
                },
            }
        }
        let mut sender = self.connect(&key, addrs, timeouts).await?;
        let resp = tokio::time::timeout(timeouts.first_byte, sender.send_request(request))
            .await
            .map_err(|_| Error::ConnectionReadTimeout)??;
        Ok(self.wrap(resp, key, sender, timeouts, permit))
    }

    fn wrap(
        self: &Arc<Self>,
        resp: http::Response<hyper::body::Incoming>,
        key: PoolKey,
        sender: SendRequest<WasiBody>,
        timeouts: Timeouts,
        permit: OwnedSemaphorePermit,
    ) -> http::Response<WasiBody> {
        let between = timeouts.between_bytes.max(Duration::from_nanos(1));
        resp.map(|incoming| {
            http_body_util::BodyExt::boxed_unsync(PooledBody {
                incoming,
                deadline: Box::pin(tokio::time::sleep(between)),
                between,
                back: Some((self.clone(), key, sender)),
                _permit: permit,
            })
        })
    }
}

/// A response body that returns its connection to the pool once read to the end, and
/// fails when no byte arrives for the between-bytes timeout.
struct PooledBody {
    incoming: hyper::body::Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    between: Duration,
    back: Option<(Arc<ConnectionPool>, PoolKey, SendRequest<WasiBody>)>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for PooledBody {
    /// A body dropped at its end (a reader may stop once `is_end_stream` says so) still
    /// returns the connection; one dropped half-read closes it.
    fn drop(&mut self) {
        if self.incoming.is_end_stream() {
            if let Some((pool, key, sender)) = self.back.take() {
                pool.give_back(key, sender);
            }
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.incoming).poll_frame(cx) {
            Poll::Ready(None) => {
                if let Some((pool, key, sender)) = this.back.take() {
                    pool.give_back(key, sender);
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.back = None;
                Poll::Ready(Some(Err(if e.is_timeout() {
                    Error::HttpResponseTimeout
                } else {
                    Error::from(e)
                })))
            }
            Poll::Ready(Some(Ok(frame))) => {
                let next = tokio::time::Instant::now() + this.between;
                this.deadline.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                ready!(this.deadline.as_mut().poll(cx));
                this.back = None;
                Poll::Ready(Some(Err(Error::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}
