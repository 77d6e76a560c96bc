//! The per-instance `wasi:http` hooks: every outgoing request passes the driver's
//! policy here — only http/https, only hosts matching `allow_hosts`, no
//! loopback/private/link-local/metadata addresses after DNS resolution unless
//! `allow_private`, the connection limit, connect and first-byte timeouts, and the
//! endpoint's circuit breaker — and goes to the checked address over the pool's
//! kept-alive connections. Refusals are recorded for the transaction's failure reason.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::uri::Scheme;
use http_body_util::BodyExt;
use parking_lot::Mutex;
use wasmtime_wasi_http::{
    Error, ForbiddenHeaderFilter, RequestOptions, WasiBody, WasiHttpHooks,
    DEFAULT_FORBIDDEN_HEADERS,
};

use super::address::refusal;
use super::policy::HttpPolicy;
use super::pool::{PoolKey, Timeouts};
use crate::breaker::{Admission, EndpointBreakers};
use crate::wasm::limits::OUTGOING_CHUNK;
use crate::wasm::log::{self, DriverTag, SharedLog};

/// The most refusals of one transaction kept for its failure reason; further ones are
/// only counted.
pub const MAX_REFUSALS: usize = 8;

/// Requests refused during one transaction, with why (at most [`MAX_REFUSALS`] kept).
#[derive(Debug, Default)]
pub struct Refusals {
    kept: Vec<String>,
    more: usize,
}

impl Refusals {
    /// Records one refusal.
    pub fn push(&mut self, why: String) {
        if self.kept.len() < MAX_REFUSALS {
            self.kept.push(why);
        } else {
            self.more += 1;
        }
    }

    /// The refusals kept, plus a line counting the others; empties the list.
    pub fn take(&mut self) -> Vec<String> {
        let mut out = std::mem::take(&mut self.kept);
        if self.more > 0 {
            out.push(format!("and {} more", self.more));
        }
        self.more = 0;
        out
    }
}

/// Refusals shared between an instance's hooks and the requests they started.
pub type SharedRefusals = Arc<Mutex<Refusals>>;

fn record_refusal(refused: &SharedRefusals, why: String) {
    refused.lock().push(why);
}

/// Per-instance hooks: the policy plus what was refused (added to failure reasons).
pub struct OutboundHttp {
    policy: HttpPolicy,
    /// Requests refused during the current transaction, with why.
    refused: SharedRefusals,
    /// The transaction's log budget: warnings about refusals count against it.
    log: SharedLog,
    /// Set when a request was refused by an open endpoint circuit: how long until that
    /// circuit lets a probe through (the longest, if several).
    pub circuit_wait: Option<Duration>,
    /// Requests of the current transaction that went out and failed (they decide that a
    /// failure is real, not deferred by a circuit).
    failed: Arc<AtomicU32>,
    /// Request-body bytes the current transaction sent (`max_egress_bytes`).
    egress: Arc<AtomicU64>,
}

impl OutboundHttp {
    /// Hooks for one instance; their warnings count against `log`.
    pub fn new(policy: HttpPolicy, log: SharedLog) -> Self {
        OutboundHttp {
            policy,
            refused: SharedRefusals::default(),
            log,
            circuit_wait: None,
            failed: Arc::new(AtomicU32::new(0)),
            egress: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Starts a transaction's bookkeeping (its egress budget).
    pub fn begin_transaction(&mut self) {
        self.egress.store(0, Ordering::Relaxed);
    }

    /// The refusals of the current transaction (emptying the list).
    pub fn take_refused(&mut self) -> Vec<String> {
        self.refused.lock().take()
    }

    /// Ends a transaction's bookkeeping: `Some(wait)` when one of its requests was
    /// refused by an open circuit and none that went out failed — the transaction's
    /// failure is then the circuit's doing, to retry after `wait`.
    pub fn deferral(&mut self) -> Option<Duration> {
        let failed = self.failed.swap(0, Ordering::Relaxed);
        let wait = self.circuit_wait.take();
        wait.filter(|_| failed == 0)
    }
}

/// Whether a response status counts against the endpoint's circuit, by mailpush's one
/// classification of HTTP failures: server errors, request timeouts and rate limiting —
/// the endpoint is unwell or asks for less.
fn status_is_failure(status: http::StatusCode) -> bool {
    mailpush_http_failure::status(status.as_u16(), None, std::time::SystemTime::now())
        .is_some_and(|c| c.counts_against_endpoint())
}

/// Completion of a response's I/O.
type IoFuture = Box<dyn Future<Output = Result<(), Error>> + Send>;
type SendResult = Result<(http::Response<WasiBody>, IoFuture), Error>;
type SendFuture = Box<dyn Future<Output = SendResult> + Send>;

impl OutboundHttp {
    fn refuse(&mut self, why: String, error: Error, body: WasiBody) -> SendFuture {
        refuse_logged(&self.policy.tag, &self.log, &self.refused, why);
        refused_after_body(body, error)
    }
}

/// A refused request's answer: the error, at once. The body is read and thrown away
/// in the background until the guest finishes or drops it, so that a guest that streams
/// its body after `handle` (JavaScript's `fetch`, Python's and the Rust SDK's clients
/// all do) sees its writes succeed and the refusal in the response, where it can catch
/// it, rather than a closed stream (which StarlingMonkey turns into a trap). Nothing is
/// kept: a guest writing forever pays with its own CPU deadline, and the reader ends
/// with the instance.
fn refused_after_body(mut body: WasiBody, error: Error) -> SendFuture {
    tokio::spawn(async move { while let Some(Ok(_)) = body.frame().await {} });
    Box::new(async move { Err(error) })
}

/// [`refused_after_body`] for a request refused after its name was resolved.
async fn drained(request: http::Request<WasiBody>, error: Error) -> SendResult {
    Box::into_pin(refused_after_body(request.into_body(), error)).await
}

/// Records a policy refusal for the failure reason and warns about it, within the
/// transaction's log budget.
fn refuse_logged(tag: &DriverTag, log: &SharedLog, refused: &SharedRefusals, why: String) {
    if log::admit(log) {
        tracing::warn!(driver = tag.number, name = %tag.name, "outbound HTTP refused: {why}");
    }
    record_refusal(refused, why);
}

/// Puts a request's headers in wire order: the guest's own headers in its order, then
/// `Host` and `Content-Length` last, as a standard HTTP client (hyper, reqwest) writes
/// them — so a component can reproduce a native client's request exactly. A guest's
/// `Connection` header survives only as `keep-alive` (the pool manages connections).
fn wire_headers(request: &mut http::Request<WasiBody>) {
    use http::header::{CONNECTION, CONTENT_LENGTH, HOST};
    let authority = request
        .uri()
        .authority()
        .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok());
    let old = std::mem::take(request.headers_mut());
    let keep_alive = old
        .get_all(CONNECTION)
        .iter()
        .all(|v| v.as_bytes().eq_ignore_ascii_case(b"keep-alive"));
    let headers = request.headers_mut();
    let mut lengths = Vec::new();
    let mut host = None;
    for (name, value) in old.iter() {
        if name == CONTENT_LENGTH {
            lengths.push(value.clone());
        } else if name == HOST {
            host.get_or_insert_with(|| value.clone());
        } else if name != CONNECTION || keep_alive {
            headers.append(name.clone(), value.clone());
        }
    }
    if let Some(h) = host.or(authority) {
        headers.append(HOST, h);
    }
    for v in lengths {
        headers.append(CONTENT_LENGTH, v);
    }
}

impl WasiHttpHooks for OutboundHttp {
    /// wasmtime's defaults, except `Connection` (only `keep-alive` is sent on; see
    /// [`wire_headers`]).
    fn forbidden_header_filter(&mut self) -> ForbiddenHeaderFilter {
        Arc::new(|name| {
            *name != http::header::CONNECTION && DEFAULT_FORBIDDEN_HEADERS.contains(name)
        })
    }

    /// The host adds `Host` itself, after the guest's headers ([`wire_headers`]).
    fn set_host_header(&mut self) -> bool {
        false
    }

    /// One write to an outgoing body carries at most this much (a body buffers at most
    /// two: the most host memory one body holds, `limits::MAX_PER_RESOURCE`).
    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        OUTGOING_CHUNK
    }

    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: IoFuture,
    ) -> SendFuture {
        drop(fut);
        if self.policy.settings.http_stub {
            use http_body_util::BodyExt;
            let body = http_body_util::Empty::<bytes::Bytes>::new()
                .map_err(|never| match never {})
                .boxed_unsync();
            let resp = http::Response::builder().status(200).body(body);
            // Read the request body like a server would, then answer.
            let request_body = request.into_body();
            return Box::new(async move {
                let _ = request_body.collect().await;
                let resp = resp.map_err(|e| Error::InternalError(Some(e.to_string())))?;
                let io: IoFuture = Box::new(async { Ok(()) });
                Ok((resp, io))
            });
        }
        let uri = request.uri().clone();
        let scheme = uri.scheme().cloned();
        if scheme != Some(Scheme::HTTP) && scheme != Some(Scheme::HTTPS) {
            return self.refuse(
                format!("{uri}: only http and https are allowed"),
                Error::HttpRequestDenied,
                request.into_body(),
            );
        }
        let Some(host) = uri
            .host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
        else {
            return self.refuse(
                format!("{uri}: no host"),
                Error::HttpRequestUriInvalid,
                request.into_body(),
            );
        };
        let settings = self.policy.settings.clone();
        if !settings.host_allowed(&host) {
            return self.refuse(
                format!(
                    "{host} is not in allow_hosts ({})",
                    if settings.allow_hosts.is_empty() {
                        "no hosts granted".to_string()
                    } else {
                        settings.allow_hosts.join(",")
                    }
                ),
                Error::HttpRequestDenied,
                request.into_body(),
            );
        }
        let tls = scheme == Some(Scheme::HTTPS);
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let policy = self.policy.clone();
        // Literal IPs can be checked now, so the refusal is recorded for the failure reason.
        if let (Ok(ip), false) = (host.parse::<IpAddr>(), settings.allow_private) {
            if let Some(why) = refusal(ip) {
                return self.refuse(
                    format!("{host}: loopback, private, link-local, metadata and other special-purpose addresses are refused, this is {why} (grant allow_private to permit)"),
                    Error::DestinationIpProhibited,
                    request.into_body(),
                );
            }
        }
        let endpoint = format!(
            "{}://{}:{port}",
            if tls { "https" } else { "http" },
            uri.host().unwrap_or_default().to_ascii_lowercase()
        );
        let probe = match policy.breakers.admit(&endpoint, Instant::now()) {
            Admission::Send { probe } => probe.then(|| ProbeGuard {
                breakers: Some(policy.breakers.clone()),
                endpoint: endpoint.clone(),
            }),
            Admission::Refuse { retry_in } => {
                tracing::debug!(driver = policy.tag.number, name = %policy.tag.name, "outbound HTTP to {endpoint} refused: circuit open");
                record_refusal(
                    &self.refused,
                    format!(
                        "circuit open for {endpoint}, next probe in {} ms",
                        retry_in.as_millis()
                    ),
                );
                self.circuit_wait = Some(self.circuit_wait.map_or(retry_in, |w| w.max(retry_in)));
                return refused_after_body(request.into_body(), Error::ConnectionRefused);
            }
        };
        let failed = self.failed.clone();
        let egress = self.egress.clone();
        let (log, refused) = (self.log.clone(), self.refused.clone());
        let options = RequestOptions {
            connect_timeout: Some(clamp(
                options.and_then(|o| o.connect_timeout),
                settings.connect_timeout,
            )),
            first_byte_timeout: Some(clamp(
                options.and_then(|o| o.first_byte_timeout),
                settings.first_byte_timeout,
            )),
            between_bytes_timeout: Some(clamp(
                options.and_then(|o| o.between_bytes_timeout),
                settings.first_byte_timeout,
            )),
        };
        Box::new(async move {
            let breakers = policy.breakers.clone();
            let tag = policy.tag.clone();
            let result: SendResult = async {
                let addrs: Vec<SocketAddr> = match tokio::time::timeout(
                    settings.connect_timeout,
                    policy.resolver.resolve(&host, port),
                )
                .await
                {
                    Err(_) => return drained(request, Error::DnsTimeout).await,
                    Ok(Err(_)) => {
                        let e = Error::DnsError {
                            rcode: Some("address not available".into()),
                            info_code: None,
                        };
                        return drained(request, e).await;
                    }
                    Ok(Ok(a)) => a,
                };
                if !settings.allow_private {
                    let bad = addrs.iter().find_map(|a| refusal(a.ip()).map(|why| (a.ip(), why)));
                    if let Some((ip, why)) = bad {
                        refuse_logged(
                            &policy.tag,
                            &log,
                            &refused,
                            format!("{host} resolves to {ip}: loopback, private, link-local, metadata and other special-purpose addresses are refused, this is {why} (grant allow_private to permit)"),
                        );
                        return drained(request, Error::DestinationIpProhibited).await;
                    }
                }
                if addrs.is_empty() {
                    return drained(request, Error::DestinationNotFound).await;
                }
                // Connect to an address just checked (no second lookup that could
                // resolve elsewhere; for https the TLS server name stays the host), over
                // a kept-alive connection when there is one.
                let permit = match tokio::time::timeout(
                    settings.connect_timeout,
                    policy.connections.clone().acquire_owned(),
                )
                .await
                {
                    Ok(Ok(p)) => p,
                    _ => return drained(request, Error::ConnectionLimitReached).await,
                };
                wire_headers(&mut request);
                // The request's head counts too: a transaction of many requests with
                // empty bodies and 32 KiB of headers each sent far past the budget.
                let head = head_bytes(&request);
                let limit = settings.max_egress_bytes;
                if egress.fetch_add(head, Ordering::Relaxed) + head > limit {
                    record_refusal(
                        &refused,
                        format!("more than max_egress_bytes={limit} bytes of requests (heads and bodies) in one transaction"),
                    );
                    return drained(request, Error::HttpRequestBodySize(Some(limit))).await;
                }
                let request = request.map(|body| {
                    EgressBody {
                        inner: body,
                        sent: egress,
                        limit: settings.max_egress_bytes,
                        refused: refused.clone(),
                    }
                    .boxed_unsync()
                });
                let mut request = request;
                // Origin form on the wire (the authority is in the Host header).
                let origin = request
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/")
                    .parse::<http::Uri>()
                    .map_err(|_| Error::HttpRequestUriInvalid)?;
                *request.uri_mut() = origin;
                let key = PoolKey { tls, host: host.clone(), port };
                let timeouts = Timeouts {
                    connect: options.connect_timeout.unwrap_or(settings.connect_timeout),
                    first_byte: options.first_byte_timeout.unwrap_or(settings.first_byte_timeout),
                    between_bytes: options.between_bytes_timeout.unwrap_or(settings.first_byte_timeout),
                };
                let resp = policy.pool.send(key, &addrs, request, timeouts, permit).await?;
                let io: IoFuture = Box::new(async { Ok(()) });
                Ok((resp, io))
            }
            .await;
            // Policy refusals never reached the endpoint; everything else is its outcome.
            let ok = match &result {
                Ok((resp, _)) => Some(!status_is_failure(resp.status())),
                Err(
                    Error::DestinationIpProhibited
                    | Error::ConnectionLimitReached
                    | Error::HttpRequestBodySize(_),
                ) => None,
                Err(_) => Some(false),
            };
            if let Some(ok) = ok {
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                let was_probe = probe.map(ProbeGuard::recorded).is_some();
                if let Some(state) = breakers.record(&endpoint, ok, Instant::now(), was_probe) {
                    // (Counts against the transaction's log budget: a driver can open a
                    // circuit per endpoint it makes up.)
                    if log::admit(&log) {
                        tracing::warn!(driver = tag.number, name = %tag.name, endpoint = %endpoint, "endpoint circuit {}", state.as_str());
                    }
                }
            }
            result
        })
    }
}

/// What a request's head takes on the wire, about: its method, target, and header lines.
fn head_bytes(request: &http::Request<WasiBody>) -> u64 {
    let target = request
        .uri()
        .path_and_query()
        .map_or(1, |p| p.as_str().len());
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    (request.method().as_str().len() + target + 12 + headers) as u64
}

/// A request body counted against the transaction's egress budget
/// (`max_egress_bytes`): past it, the body ends with an error and the request fails.
struct EgressBody {
    inner: WasiBody,
    sent: Arc<AtomicU64>,
    limit: u64,
    refused: SharedRefusals,
}

impl http_body::Body for EgressBody {
    type Data = bytes::Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let frame = std::task::ready!(std::pin::Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(f)) = &frame {
            if let Some(data) = f.data_ref() {
                let total =
                    self.sent.fetch_add(data.len() as u64, Ordering::Relaxed) + data.len() as u64;
                if total > self.limit {
                    record_refusal(
                        &self.refused,
                        format!(
                            "more than max_egress_bytes={} bytes of requests (heads and bodies) in one transaction",
                            self.limit
                        ),
                    );
                    return std::task::Poll::Ready(Some(Err(Error::HttpRequestBodySize(Some(
                        self.limit,
                    )))));
                }
            }
        }
        std::task::Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The half-open probe of an endpoint, in flight: if it ends without an outcome
/// (refused by policy, cancelled with its instance), the next request may probe.
struct ProbeGuard {
    breakers: Option<Arc<EndpointBreakers>>,
    endpoint: String,
}

impl ProbeGuard {
    /// Its outcome is being recorded: nothing to abandon.
    fn recorded(mut self) {
        self.breakers = None;
    }
}

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        if let Some(b) = self.breakers.take() {
            b.abandon_probe(&self.endpoint);
        }
    }
}

fn clamp(requested: Option<Duration>, max: Duration) -> Duration {
    requested.map(|r| r.min(max)).unwrap_or(max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wasm::http::settings::HttpSettings;

    fn test_policy(settings: HttpSettings) -> HttpPolicy {
        let tag = Arc::new(DriverTag {
            number: 1,
            name: "t".into(),
        });
        HttpPolicy::new(tag, Arc::new(settings))
    }

    fn budget(max: u32) -> SharedLog {
        log::LogBudget::shared(max, Arc::new(log::LogRate::new(1000, 100)))
    }

    fn hooks(policy: &HttpPolicy) -> OutboundHttp {
        OutboundHttp::new(policy.clone(), budget(100))
    }

    fn request(url: &str) -> http::Request<WasiBody> {
        use http_body_util::BodyExt;
        let body = http_body_util::Empty::<bytes::Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync();
        http::Request::builder()
            .method("GET")
            .uri(url)
            .body(body)
            .unwrap()
    }

    /// `max_connections` bounds concurrent outbound requests of one driver: with 1, a
    /// second request waits for the first, and gives up with ConnectionLimitReached after
    /// the connect timeout.
    #[tokio::test]
    async fn connection_limit_per_driver() {
        // A server that accepts and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let sandbox = HttpSettings {
            allow_hosts: vec!["127.0.0.1".into()],
            allow_private: true,
            max_connections: 1,
            connect_timeout: Duration::from_millis(200),
            first_byte_timeout: Duration::from_secs(5),
            ..HttpSettings::default()
        };
        let policy = test_policy(sandbox);
        let url = format!("http://{addr}/x");
        let mut a = hooks(&policy);
        let mut b = hooks(&policy);
        let first = tokio::spawn(Box::into_pin(a.send_request(
            request(&url),
            None,
            Box::new(async { Ok(()) }),
        )));
        // Wait until the first request holds the only permit.
        while policy.connections.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        let second =
            Box::into_pin(b.send_request(request(&url), None, Box::new(async { Ok(()) }))).await;
        assert!(
            matches!(second, Err(Error::ConnectionLimitReached)),
            "{:?}",
            second.err()
        );
        first.abort();
    }

    /// A server answering every request with `status` (settable), counting requests.
    async fn status_server(
        status: u16,
    ) -> (
        SocketAddr,
        Arc<std::sync::atomic::AtomicUsize>,
        Arc<std::sync::atomic::AtomicU16>,
    ) {
        use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let status = Arc::new(AtomicU16::new(status));
        let (h, st) = (hits.clone(), status.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let (h, st) = (h.clone(), st.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    h.fetch_add(1, Ordering::SeqCst);
                    let reply = format!(
                        "HTTP/1.1 {} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        st.load(Ordering::SeqCst)
                    );
                    let _ = s.write_all(reply.as_bytes()).await;
                });
            }
        });
        (addr, hits, status)
    }

    /// Two endpoints of one driver: the failing one's circuit opens after `breaker_min`
    /// failures and its requests then fail without reaching it (the failure carries the
    /// time to the probe), while the healthy endpoint is unaffected; after the open time
    /// one probe goes through and, succeeding, closes the circuit.
    #[tokio::test]
    async fn circuit_per_endpoint() {
        use std::sync::atomic::Ordering;
        let (bad, bad_hits, bad_status) = status_server(500).await;
        let (good, good_hits, _) = status_server(200).await;
        let sandbox = HttpSettings {
            allow_hosts: vec!["127.0.0.1".into()],
            allow_private: true,
            endpoint_breaker: mailpush_core::BreakerConfig {
                window: 4,
                min: 2,
                ratio: 0.5,
                open: Duration::from_millis(200),
            },
            ..HttpSettings::default()
        };
        let policy = test_policy(sandbox);
        let mut http = hooks(&policy);
        let mut send = |url: String| {
            Box::into_pin(http.send_request(request(&url), None, Box::new(async { Ok(()) })))
        };
        for _ in 0..2 {
            let (resp, _) = send(format!("http://{bad}/x")).await.unwrap();
            assert_eq!(resp.status(), 500);
        }
        let refused = send(format!("http://{bad}/x")).await;
        assert!(matches!(refused, Err(Error::ConnectionRefused)));
        assert_eq!(
            bad_hits.load(Ordering::SeqCst),
            2,
            "not contacted while open"
        );
        for _ in 0..3 {
            let (resp, _) = send(format!("http://{good}/y")).await.unwrap();
            assert_eq!(resp.status(), 200);
        }
        assert_eq!(good_hits.load(Ordering::SeqCst), 3);
        let wait = http
            .circuit_wait
            .take()
            .expect("the refusal says when to probe");
        assert!(wait <= Duration::from_millis(200), "{wait:?}");
        let refused = http.take_refused();
        assert!(
            refused[0].starts_with(&format!("circuit open for http://{bad}")),
            "{refused:?}"
        );
        let states = policy.breakers.states(Instant::now());
        assert_eq!(
            states,
            vec![(format!("http://{bad}"), mailpush_core::CircuitState::Open)]
        );
        // The endpoint recovers; after the open time the probe closes the circuit.
        bad_status.store(200, Ordering::SeqCst);
        tokio::time::sleep(wait).await;
        let mut http = hooks(&policy);
        let (resp, _) = Box::into_pin(http.send_request(
            request(&format!("http://{bad}/x")),
            None,
            Box::new(async { Ok(()) }),
        ))
        .await
        .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            policy.breakers.states(Instant::now())[0].1,
            mailpush_core::CircuitState::Closed
        );
    }

    /// A keep-alive server counting connections and requests; with `close_after_each`
    /// it closes every connection after its response without saying so (as servers
    /// dropping idle connections do).
    async fn keepalive_server(
        close_after_each: bool,
    ) -> (
        SocketAddr,
        Arc<std::sync::atomic::AtomicUsize>,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let reqs = Arc::new(AtomicUsize::new(0));
        let (c, r) = (conns.clone(), reqs.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let r = r.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            r.fetch_add(1, Ordering::SeqCst);
                            let body = "ok";
                            let reply = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            if s.write_all(reply.as_bytes()).await.is_err() || close_after_each {
                                return;
                            }
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        (addr, conns, reqs)
    }

    /// Sequential requests of one driver (each from a new instance's hooks, as with
    /// fresh instances) reuse one kept-alive connection; a server that closes
    /// connections behind the pool's back costs a reconnect, never a failed request.
    #[tokio::test]
    async fn keep_alive_connections_are_reused() {
        use std::sync::atomic::Ordering;
        for close_after_each in [false, true] {
            let (addr, conns, reqs) = keepalive_server(close_after_each).await;
            let sandbox = HttpSettings {
                allow_hosts: vec!["127.0.0.1".into()],
                allow_private: true,
                ..HttpSettings::default()
            };
            let policy = test_policy(sandbox);
            for _ in 0..5 {
                let mut http = hooks(&policy);
                let (resp, _) = Box::into_pin(http.send_request(
                    request(&format!("http://{addr}/x")),
                    None,
                    Box::new(async { Ok(()) }),
                ))
                .await
                .unwrap();
                assert_eq!(resp.status(), 200);
                let body = http_body_util::BodyExt::collect(resp.into_body())
                    .await
                    .unwrap()
                    .to_bytes();
                assert_eq!(&body[..], b"ok");
            }
            assert_eq!(reqs.load(Ordering::SeqCst), 5);
            let expected = if close_after_each { 5 } else { 1 };
            assert_eq!(
                conns.load(Ordering::SeqCst),
                expected,
                "close_after_each={close_after_each}"
            );
            assert_eq!(policy.pool.opened(), expected as u64);
            // Every permit is back once the bodies are read.
            assert_eq!(
                policy.connections.available_permits(),
                policy.settings.max_connections
            );
        }
    }

    /// https goes through the same pool: TCP to the checked address, then TLS with the
    /// host as server name. A peer that is not a TLS server fails the request with a
    /// TLS error (after the connection reached the checked address).
    #[tokio::test]
    async fn https_connects_to_the_checked_address() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let a = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let _ = s.write_all(b"HTTP/1.1 400 not TLS\r\n\r\n").await;
            }
        });
        let sandbox = HttpSettings {
            allow_hosts: vec!["127.0.0.1".into()],
            allow_private: true,
            ..HttpSettings::default()
        };
        let policy = test_policy(sandbox);
        let mut http = hooks(&policy);
        let r = Box::into_pin(http.send_request(
            request(&format!("https://{addr}/x")),
            None,
            Box::new(async { Ok(()) }),
        ))
        .await;
        assert!(matches!(r, Err(Error::Tls(_))), "{:?}", r.err());
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(policy.pool.opened(), 1);
    }

    /// A host name that resolves only to loopback (`localhost`) is refused without
    /// `allow_private` like a literal private address, and the refusal is recorded for
    /// the failure reason.
    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_and_recorded() {
        let (addr, hits, _) = status_server(200).await;
        let policy = test_policy(HttpSettings {
            allow_hosts: vec!["localhost".into()],
            ..HttpSettings::default()
        });
        let mut http = hooks(&policy);
        let url = format!("http://localhost:{}/x", addr.port());
        // The second request gets the resolver's cached answer: checked the same.
        for _ in 0..2 {
            let r =
                Box::into_pin(http.send_request(request(&url), None, Box::new(async { Ok(()) })))
                    .await;
            assert!(
                matches!(r, Err(Error::DestinationIpProhibited)),
                "{:?}",
                r.err()
            );
            let refused = http.take_refused();
            assert_eq!(refused.len(), 1, "{refused:?}");
            assert!(
                refused[0].starts_with("localhost resolves to ")
                    && refused[0].contains("allow_private"),
                "{refused:?}"
            );
        }
        assert_eq!(policy.resolver.lookups(), 1);
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    /// A driver hammering refused hosts neither floods the log (the warnings count
    /// against the transaction's log budget) nor grows the refusal list without bound.
    #[tokio::test]
    async fn refusals_are_capped_and_their_warnings_budgeted() {
        let policy = test_policy(HttpSettings::default());
        let log = budget(3);
        let mut http = OutboundHttp::new(policy, log.clone());
        for i in 0..20 {
            let r = Box::into_pin(http.send_request(
                request(&format!("http://h{i}.example.com/x")),
                None,
                Box::new(async { Ok(()) }),
            ))
            .await;
            assert!(matches!(r, Err(Error::HttpRequestDenied)));
        }
        let refused = http.take_refused();
        assert_eq!(refused.len(), MAX_REFUSALS + 1, "{refused:?}");
        assert!(refused[0].starts_with("h0.example.com is not in allow_hosts"));
        assert_eq!(
            refused[MAX_REFUSALS],
            format!("and {} more", 20 - MAX_REFUSALS)
        );
        let b = log.lock();
        assert_eq!((b.written, b.dropped), (3, 17));
        drop(b);
        assert!(http.take_refused().is_empty(), "taken once");
    }

    /// The guest's headers keep their order; Host and Content-Length go last; a
    /// Connection header other than keep-alive is dropped.
    #[test]
    fn wire_header_order() {
        let order = |connection: &str| {
            let mut r = request("http://h.example:8080/x");
            let h = r.headers_mut();
            h.append("content-length", "2".parse().unwrap());
            h.append("date", "d".parse().unwrap());
            h.append("connection", connection.parse().unwrap());
            h.append("x-b", "1".parse().unwrap());
            h.append("x-a", "2".parse().unwrap());
            h.append("x-b", "3".parse().unwrap());
            wire_headers(&mut r);
            r.headers()
                .iter()
                .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            order("Keep-Alive"),
            [
                "date: d",
                "connection: Keep-Alive",
                "x-b: 1",
                "x-b: 3",
                "x-a: 2",
                "host: h.example:8080",
                "content-length: 2"
            ]
        );
        assert_eq!(
            order("close"),
            [
                "date: d",
                "x-b: 1",
                "x-b: 3",
                "x-a: 2",
                "host: h.example:8080",
                "content-length: 2"
            ]
        );
    }
}
