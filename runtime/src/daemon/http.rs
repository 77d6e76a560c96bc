//! The HTTP ingest and control API of `mailpush run`: the sources' way into the pipeline
//! ([`crate::pipeline::Dispatcher::accept`]) and the instance's status.
//!
//! - `POST /v1/transactions` — one canonical transaction (JSON) or many
//!   (`Content-Type: application/x-ndjson`). A batch is all or nothing: one bad line
//!   rejects the whole request (400 naming the line and JSON path) and nothing of it is
//!   queued; 202 with the transaction ids once persisted (with the spool) or queued.
//!   503 with `Retry-After` when the spool is full, or (`delivery = memory`) when a batch
//!   does not fit every driver's queue; a driver whose queue is full reads its backlog
//!   from the spool ([`crate::pipeline::overflow`]).
//! - `PUT /preliminary/http-notify/v1/notify` — what Dovecot's own ox driver sends,
//!   turned into a MessageNew transaction.
//! - `GET /metrics` (Prometheus), `GET /healthz`, `GET /readyz`.
//! - `GET /v1/status`, `POST /v1/reload` — used by `mailpush status` / `mailpush reload`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use mailpush_core::Transaction;
use serde_json::{json, Value};

use super::auth::authorised;
use super::Daemon;
use crate::pipeline::{Backpressure, Refused};
use crate::spool::SpoolError;
use mailpush_core::ox_body::ox_transaction;

/// Builds the router.
pub fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/v1/transactions", post(transactions))
        .route("/preliminary/http-notify/v1/notify", put(ox_notify))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/v1/status", get(status))
        .route("/v1/reload", post(reload))
        .with_state(daemon)
}

fn error(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// 401 for a request without the token. Only ingest routes count it among the refused
/// transactions (`daemon.ingest.reject`): a status or reload request is none.
fn unauthorised() -> Response {
    let mut r = error(
        StatusCode::UNAUTHORIZED,
        json!({"error": "missing or wrong bearer token (Authorization: Bearer TOKEN)"}),
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"mailpush\""),
    );
    r
}

/// What one transaction parsed from a request costs in memory beyond its bytes (the
/// event model, the spool's rows, its id in the answer): charged to `max_inflight` with
/// a second copy of the body before an NDJSON batch is parsed, so that the budget bounds
/// memory, not only bytes (a body of many tiny transactions takes some 35 times its size).
const PARSED_TXN_COST: usize = 2048;

/// What one JSON value costs in memory once parsed into a tree (the value, its place in
/// its array's or object's storage with room to grow, an object's key), counted per
/// `,` `:` `[` `{` of the body: a body of 10 MiB of `[0,0,0,…]` takes some 270 MiB as a
/// tree, which its bytes alone did not charge.
const PARSED_VALUE_COST: usize = 64;

/// What parsing a body (and queueing what it holds) will take beyond its bytes, charged
/// to `max_inflight` before it is parsed: for NDJSON its bytes twice and
/// [`PARSED_TXN_COST`] per line, and for any body [`PARSED_VALUE_COST`] per JSON value
/// if that is more. A body that could never fit gets 413; one that does not fit now, 503
/// (the answer returned).
fn charge_parsing(
    daemon: &Daemon,
    bytes: &[u8],
    ndjson: bool,
    in_flight: &mut BodyCharge<'_>,
) -> Option<Response> {
    let lines = memchr::memchr_iter(b'\n', bytes).count() + 1;
    let values = bytes
        .iter()
        .filter(|b| matches!(b, b',' | b':' | b'[' | b'{'))
        .count()
        + 1;
    // Beyond the body (charged as it was read, its buffer fitted to it since): for NDJSON
    // its bytes again and a cost per line; for any body a cost per JSON value, if more.
    let per_line = if ndjson {
        bytes
            .len()
            .saturating_add(lines.saturating_mul(PARSED_TXN_COST))
    } else {
        0
    };
    let need = bytes
        .len()
        .saturating_add(per_line.max(values.saturating_mul(PARSED_VALUE_COST)));
    if need.div_ceil(1024) > daemon.body_budget_units {
        daemon.ingest.reject("too_large", 1);
        return Some(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({"error": format!(
                "a body of {lines} line(s) and {values} JSON values needs about {} MiB to parse and queue ({PARSED_TXN_COST} bytes per NDJSON line and its bytes twice, or {PARSED_VALUE_COST} bytes per value), more than max_inflight allows ({} MiB); send smaller batches",
                need >> 20,
                daemon.body_budget_units >> 10
            )}),
        ));
    }
    if !in_flight.cover(need) {
        return Some(over_budget(daemon, error));
    }
    None
}

/// Request-body bytes held of the `max_inflight` budget (in KiB units), charged as they
/// arrive and returned when the request is answered.
struct BodyCharge<'a> {
    budget: &'a tokio::sync::Semaphore,
    units: u32,
}

impl BodyCharge<'_> {
    /// Gives back what is charged beyond `total` bytes.
    fn release_to(&mut self, total: usize) {
        let keep = u32::try_from(total.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
        if keep < self.units {
            self.budget.add_permits((self.units - keep) as usize);
            self.units = keep;
        }
    }

    /// Charges for `total` bytes received so far; false when the budget cannot cover them.
    fn cover(&mut self, total: usize) -> bool {
        let need = u32::try_from(total.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
        if need <= self.units {
            return true;
        }
        match self.budget.try_acquire_many(need - self.units) {
            Ok(permit) => {
                permit.forget();
                self.units = need;
                true
            }
            Err(_) => false,
        }
    }
}

impl Drop for BodyCharge<'_> {
    fn drop(&mut self) {
        self.budget.add_permits(self.units as usize);
    }
}

/// The 503 for a request the `max_inflight` budget cannot cover now, made by `answer`
/// (`error_closing` while its body is still arriving).
fn over_budget(daemon: &Daemon, answer: fn(StatusCode, Value) -> Response) -> Response {
    daemon.ingest.reject("overloaded", 1);
    let mut r = answer(
        StatusCode::SERVICE_UNAVAILABLE,
        json!({"error": "too many request bytes in flight (max_inflight); retry shortly"}),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    r
}

/// An error answer after which the connection is closed (its body was not read whole).
fn error_closing(status: StatusCode, body: Value) -> Response {
    let mut r = error(status, body);
    r.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    r
}

/// Reads a request body within `max_body` and `body_timeout`, charging its buffer as it
/// grows with the bytes that arrive (at most twice them, never past `max_body`) to the
/// `max_inflight` budget until the request is answered: overload gets 503, a body that
/// arrives too slowly 408 — never unbounded memory, never a budget held by bytes that
/// have not come (a Content-Length is not taken on trust).
async fn read_body<'a>(
    daemon: &'a Daemon,
    headers: &HeaderMap,
    body: Body,
) -> Result<(bytes::Bytes, BodyCharge<'a>), Response> {
    use http_body_util::BodyExt;
    let too_large = || {
        daemon.ingest.reject("too_large", 1);
        error_closing(
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({"error": format!("request body larger than max_body ({} bytes)", daemon.max_body)}),
        )
    };
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > daemon.max_body as u64) {
        return Err(too_large());
    }
    let mut charge = BodyCharge {
        budget: &daemon.body_budget,
        units: 0,
    };
    let limits = daemon.connections.limits();
    let deadline = tokio::time::Instant::now() + limits.body_timeout;
    let mut body = body;
    // Each frame is copied into one buffer and let go at once: kept as they came, a body
    // of a million 1-byte chunks held a handle (and the connection's read buffer behind
    // it) per byte, far more than the bytes charged. The buffer grows as bytes arrive
    // (doubling, at most to max_body), each growth charged before it is made.
    let mut all: Vec<u8> = Vec::new();
    let mut total = 0usize;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                daemon.ingest.reject("body_timeout", 1);
                daemon
                    .connections
                    .count_cut(super::connections::Cut::BodyTimeout);
                return Err(error_closing(
                    StatusCode::REQUEST_TIMEOUT,
                    json!({"error": format!("the request body did not arrive within body_timeout_msecs ({} ms)", limits.body_timeout.as_millis())}),
                ));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                daemon.ingest.reject("invalid", 1);
                return Err(error_closing(
                    StatusCode::BAD_REQUEST,
                    json!({"error": format!("cannot read the request body: {e}")}),
                ));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        total += data.len();
        if total > daemon.max_body {
            return Err(too_large());
        }
        if all.capacity() - all.len() < data.len() {
            // (Not past a Content-Length: hyper holds the body to it.)
            let want = total
                .max(all.capacity().saturating_mul(2))
                .min(announced.map_or(daemon.max_body, |n| n as usize))
                .min(daemon.max_body)
                .max(total);
            if !charge.cover(want) {
                return Err(over_budget(daemon, error_closing));
            }
            all.reserve_exact(want - all.len());
            // (The allocator's answer is what is held.)
            if !charge.cover(all.capacity()) {
                return Err(over_budget(daemon, error_closing));
            }
        }
        all.extend_from_slice(&data);
    }
    // What doubling left unused goes back to the budget.
    all.shrink_to_fit();
    charge.release_to(all.capacity());
    Ok((bytes::Bytes::from(all), charge))
}

/// Queues parsed transactions: 202 with ids, or 503 when queues are full.
async fn accept(daemon: &Daemon, txns: Vec<Transaction>) -> Response {
    if daemon.shutting_down.load(Ordering::Relaxed) {
        daemon.ingest.reject("shutting_down", txns.len() as u64);
        let mut r = error(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "mailpush is shutting down"}),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        return r;
    }
    let ids: Vec<String> = txns.iter().map(|t| t.id.clone()).collect();
    // Without a spool a batch must fit every queue at once (with one, a full queue
    // overflows into the spool).
    if daemon.dispatcher().spool().is_none() && txns.len() > daemon.queue_capacity {
        daemon.ingest.reject("too_large", txns.len() as u64);
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({"error": format!("a batch of {} transactions can never fit a driver queue (queue_capacity = {}); send smaller batches", txns.len(), daemon.queue_capacity)}),
        );
    }
    match daemon.dispatcher().accept(txns, Backpressure::Refuse).await {
        Ok(_) => {
            daemon
                .ingest
                .received
                .fetch_add(ids.len() as u64, Ordering::Relaxed);
            tracing::debug!(txns = ?&ids[..ids.len().min(10)], count = ids.len(), "accepted");
            (
                StatusCode::ACCEPTED,
                [(header::CONTENT_TYPE, "application/json")],
                json!({"accepted": ids.len(), "ids": ids}).to_string(),
            )
                .into_response()
        }
        Err(Refused::Spool(e @ SpoolError::TooLarge { .. })) => {
            // No retry helps.
            daemon.ingest.reject("too_large", ids.len() as u64);
            tracing::warn!(txns = ?&ids[..ids.len().min(10)], "ingest refused {} transaction(s): {e}", ids.len());
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({ "error": e.to_string() }),
            )
        }
        Err(refused) => {
            let (reason, retry_after) = match &refused {
                Refused::QueueFull(_) => ("overloaded", "1"),
                Refused::ShutDown => ("shutting_down", "5"),
                Refused::Spool(SpoolError::Full { .. }) => ("spool_full", "30"),
                Refused::Spool(_) => ("spool_error", "5"),
            };
            daemon.ingest.reject(reason, ids.len() as u64);
            tracing::warn!(txns = ?&ids[..ids.len().min(10)], "ingest refused {} transaction(s): {refused}", ids.len());
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "error": retry_later(&refused.to_string()) }),
            );
            r.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from_static(retry_after),
            );
            r
        }
    }
}

async fn transactions(
    State(daemon): State<Arc<Daemon>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if !authorised(daemon.token.as_deref(), &headers) {
        daemon.ingest.reject("unauthorized", 1);
        return unauthorised();
    }
    let (bytes, mut in_flight) = match read_body(&daemon, &headers, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        daemon.ingest.reject("invalid", 1);
        return error(
            StatusCode::BAD_REQUEST,
            json!({"error": "body is not UTF-8"}),
        );
    };
    let ndjson = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        // Media types are case-insensitive (RFC 9110 §8.3.1).
        .is_some_and(|v| {
            let v = v.to_ascii_lowercase();
            v.starts_with("application/x-ndjson") || v.starts_with("application/ndjson")
        });
    if let Some(r) = charge_parsing(&daemon, &bytes, ndjson, &mut in_flight) {
        return r;
    }
    let parsed = if ndjson {
        mailpush_core::parse_ndjson(text).map_err(|e| {
            json!({"error": e.to_string(), "line": e.line, "path": e.error.path, "message": e.error.message,
                   "accepted": 0, "note": "nothing of this batch was accepted"})
        })
    } else {
        Transaction::from_json(text)
            .map(|t| vec![t])
            .map_err(|e| json!({"error": e.to_string(), "path": e.path, "message": e.message}))
    };
    match parsed {
        Ok(txns) if txns.is_empty() => {
            daemon.ingest.reject("invalid", 1);
            error(
                StatusCode::BAD_REQUEST,
                json!({"error": "no transactions in the body"}),
            )
        }
        Ok(txns) => accept(&daemon, txns).await,
        Err(body) => {
            daemon.ingest.reject("invalid", 1);
            error(StatusCode::BAD_REQUEST, body)
        }
    }
}

async fn ox_notify(State(daemon): State<Arc<Daemon>>, headers: HeaderMap, body: Body) -> Response {
    if !authorised(daemon.token.as_deref(), &headers) {
        daemon.ingest.reject("unauthorized", 1);
        return unauthorised();
    }
    let (bytes, mut in_flight) = match read_body(&daemon, &headers, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    if let Some(r) = charge_parsing(&daemon, &bytes, false, &mut in_flight) {
        return r;
    }
    let parsed = serde_json::from_slice::<Value>(&bytes)
        .map_err(|e| format!("invalid JSON: {e}"))
        .and_then(|v| ox_transaction(&v));
    match parsed {
        Ok(txn) => accept(&daemon, vec![txn]).await,
        Err(e) => {
            daemon.ingest.reject("invalid", 1);
            error(StatusCode::BAD_REQUEST, json!({"error": e}))
        }
    }
}

async fn metrics(State(daemon): State<Arc<Daemon>>) -> Response {
    let text = super::metrics::render(&daemon.status());
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        text,
    )
        .into_response()
}

async fn readyz(State(daemon): State<Arc<Daemon>>) -> Response {
    if daemon.shutting_down.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    if daemon.dispatcher().saturated() {
        return (StatusCode::SERVICE_UNAVAILABLE, "a driver queue is full\n").into_response();
    }
    if let Some(c) = &daemon.cluster {
        let c = c.lock();
        if !c.connected {
            return (StatusCode::SERVICE_UNAVAILABLE, "NATS is unreachable\n").into_response();
        }
        if c.drift.contains(&c.node) {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "config drift: this node's drivers differ from the other nodes' (nodes that differ: {})\n",
                    c.drift.join(", ")
                ),
            )
                .into_response();
        }
    }
    // A reload that takes more than a moment is loading a driver that is slow to
    // initialise (bounded by its init_timeout_msecs), or waiting for a replaced driver's
    // deliveries in flight (bounded by its max_txn_msecs): say so rather than "ready".
    if let Some(t) = daemon.reloading_for().filter(|t| t.as_secs() >= 1) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "reloading for {} s: a driver is still initialising, or a replaced one finishing its deliveries in flight\n",
                t.as_secs()
            ),
        )
            .into_response();
    }
    (StatusCode::OK, "ready\n").into_response()
}

async fn status(State(daemon): State<Arc<Daemon>>, headers: HeaderMap) -> Response {
    if !authorised(daemon.token.as_deref(), &headers) {
        return unauthorised();
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(&daemon.status()).unwrap_or_default(),
    )
        .into_response()
}

async fn reload(State(daemon): State<Arc<Daemon>>, headers: HeaderMap) -> Response {
    if !authorised(daemon.token.as_deref(), &headers) {
        return unauthorised();
    }
    // The reload runs as a task of its own: a client that goes away (the CLI's timeout,
    // a closed connection) drops this handler, and a reload dropped half-way would leave
    // the old lanes unfinished and the new ones waiting for what they hold.
    let reloading = daemon.clone();
    let outcome = tokio::spawn(async move { reloading.reload().await }).await;
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(e) => {
            tracing::error!("the reload failed: {e}");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"error": format!("the reload failed: {e}; see mailpush's log")}),
            );
        }
    };
    match outcome {
        Err(super::ReloadRefused::Stopping) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "mailpush is stopping: no reload"}),
        ),
        Ok(r) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_string(&r).unwrap_or_default(),
        )
            .into_response(),
        Err(super::ReloadRefused::Invalid(errors)) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"error": "the new config fails check; the running one is kept", "errors": errors}),
        ),
    }
}

/// A refusal's text, ending with "retry later" once (a full spool's already does).
fn retry_later(text: &str) -> String {
    if text.ends_with("retry later") {
        text.to_string()
    } else {
        format!("{text}; retry later")
    }
}
