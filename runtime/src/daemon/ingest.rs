//! The HTTP ingest and control API of `mailpush run`.
//!
//! - `POST /v1/transactions` — one canonical transaction (JSON) or many
//!   (`Content-Type: application/x-ndjson`). A batch is all or nothing: one bad line
//!   rejects the whole request (400 naming the line and JSON path) and nothing of it is
//!   queued; 202 with the transaction ids once persisted (with the spool) or queued.
//!   503 with `Retry-After` when the spool is full, or (`delivery = memory`) when a batch
//!   does not fit every driver's queue; a driver whose queue is full reads its backlog
//!   from the spool ([`crate::overflow`]).
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
use mailpush_core::event::NewMessage;
use mailpush_core::{Event, Transaction};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use super::Daemon;
use crate::dispatch::Refused;
use crate::spool::SpoolError;

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

/// Checks `Authorization: Bearer TOKEN` (or Basic with TOKEN as the password) in
/// constant time.
fn authorised(daemon: &Daemon, headers: &HeaderMap) -> bool {
    let Some(token) = &daemon.token else {
        return true;
    };
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let presented: Vec<u8> = if let Some(t) = value.strip_prefix("Bearer ") {
        t.trim().as_bytes().to_vec()
    } else if let Some(b) = value.strip_prefix("Basic ") {
        use base64_decode as b64;
        match b64(b.trim()) {
            Some(decoded) => match decoded.iter().position(|&c| c == b':') {
                Some(i) => decoded[i + 1..].to_vec(),
                None => return false,
            },
            None => return false,
        }
    } else {
        return false;
    };
    presented.len() == token.len() && bool::from(presented.ct_eq(token))
}

/// Minimal standard base64 decoding (for Basic auth).
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c)? << (18 - 6 * i);
        }
        let n = chunk.len();
        if n < 2 {
            return None;
        }
        out.push((acc >> 16) as u8);
        if n > 2 {
            out.push((acc >> 8) as u8);
        }
        if n > 3 {
            out.push(acc as u8);
        }
    }
    Some(out)
}

fn unauthorised(daemon: &Daemon) -> Response {
    daemon.ingest.reject("unauthorized", 1);
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

/// Reads a request body within `max_body`, holding its share of the `max_inflight`
/// budget (what the Content-Length announces, else `max_body`) until the request is
/// answered: overload gets 503, never unbounded memory.
async fn read_body<'a>(
    daemon: &'a Daemon,
    headers: &HeaderMap,
    body: Body,
) -> Result<(axum::body::Bytes, tokio::sync::SemaphorePermit<'a>), Response> {
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(daemon.max_body)
        .min(daemon.max_body);
    let units = announced.div_ceil(1024).max(1);
    let units = u32::try_from(units).unwrap_or(u32::MAX);
    let Ok(permit) = daemon.body_budget.try_acquire_many(units) else {
        daemon.ingest.reject("overloaded", 1);
        let mut r = error(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "too many request bytes in flight (max_inflight); retry shortly"}),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return Err(r);
    };
    let bytes = axum::body::to_bytes(body, daemon.max_body).await.map_err(|_| {
        daemon.ingest.reject("too_large", 1);
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({"error": format!("request body larger than max_body ({} bytes)", daemon.max_body)}),
        )
    })?;
    Ok((bytes, permit))
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
    match daemon.dispatcher().accept(txns).await {
        Ok(()) => {
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
        Err(refused) => {
            let (reason, retry_after) = match &refused {
                Refused::QueueFull(_) => ("overloaded", "1"),
                Refused::Spool(SpoolError::Full { .. }) => ("spool_full", "30"),
                Refused::Spool(_) => ("spool_error", "5"),
            };
            daemon.ingest.reject(reason, ids.len() as u64);
            tracing::warn!(txns = ?&ids[..ids.len().min(10)], "ingest refused {} transaction(s): {refused}", ids.len());
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": format!("{refused}; retry later")}),
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
    if !authorised(&daemon, &headers) {
        return unauthorised(&daemon);
    }
    let (bytes, _in_flight) = match read_body(&daemon, &headers, body).await {
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
        .is_some_and(|v| v.starts_with("application/x-ndjson"));
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

/// Turns the body Dovecot's ox driver sends into a MessageNew transaction.
pub fn ox_transaction(body: &Value) -> Result<Transaction, String> {
    let obj = body.as_object().ok_or("expected a JSON object")?;
    let s = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_string);
    let n = |k: &str| -> Result<u32, String> {
        obj.get(k)
            .and_then(Value::as_u64)
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| format!("`{k}` must be an unsigned 32-bit number"))
    };
    let user = s("user")
        .filter(|u| !u.is_empty())
        .ok_or("missing `user`")?;
    match s("event").as_deref() {
        Some("messageNew") => {}
        other => return Err(format!("`event` must be \"messageNew\", got {other:?}")),
    }
    let msg = NewMessage {
        mailbox: s("folder").ok_or("missing `folder`")?,
        uid: n("imap-uid")?,
        uid_validity: n("imap-uidvalidity")?,
        from: s("from"),
        subject: s("subject"),
        snippet: s("snippet"),
        unseen: obj
            .get("unseen")
            .and_then(Value::as_u64)
            .and_then(|v| u32::try_from(v).ok()),
        ..Default::default()
    };
    Ok(Transaction::new(user, vec![Event::MessageNew(msg)]))
}

async fn ox_notify(State(daemon): State<Arc<Daemon>>, headers: HeaderMap, body: Body) -> Response {
    if !authorised(&daemon, &headers) {
        return unauthorised(&daemon);
    }
    let (bytes, _in_flight) = match read_body(&daemon, &headers, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
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
    let in_flight = daemon
        .body_budget_units
        .saturating_sub(daemon.body_budget.available_permits()) as u64
        * 1024;
    let text = super::metrics::render(&daemon.ingest, in_flight, &daemon.dispatcher().reports());
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
    (StatusCode::OK, "ready\n").into_response()
}

async fn status(State(daemon): State<Arc<Daemon>>, headers: HeaderMap) -> Response {
    if !authorised(&daemon, &headers) {
        return unauthorised(&daemon);
    }
    let drivers: Vec<Value> = daemon
        .dispatcher()
        .reports()
        .iter()
        .map(|r| {
            json!({
                "number": r.number, "name": r.name, "state": if r.overflowing { "overflowing" } else if r.queued >= r.capacity { "saturated" } else { "running" },
                "circuit": r.circuit, "retried": r.retried, "dead_lettered": r.dead_lettered,
                "queued": r.queued, "held": r.held, "capacity": r.capacity, "delivered": r.delivered,
                "failed": r.failed, "skipped": r.skipped,
                "counters": r.counters.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
                "endpoints": r.endpoints.iter().map(|e| json!({
                    "endpoint": e.endpoint, "scope": e.scope, "circuit": e.state.as_str(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"version": env!("CARGO_PKG_VERSION"), "config": daemon.config_path.display().to_string(), "drivers": drivers}).to_string(),
    )
        .into_response()
}

async fn reload(State(daemon): State<Arc<Daemon>>, headers: HeaderMap) -> Response {
    if !authorised(&daemon, &headers) {
        return unauthorised(&daemon);
    }
    match daemon.reload().await {
        Ok(r) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            json!({"kept": r.kept, "started": r.started, "stopped": r.stopped}).to_string(),
        )
            .into_response(),
        Err(errors) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"error": "the new config fails check; the running one is kept", "errors": errors}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_decoding() {
        assert_eq!(base64_decode("bG9naW46cGFzcw==").unwrap(), b"login:pass");
        assert_eq!(base64_decode("YQ").unwrap(), b"a");
        assert!(base64_decode("!!").is_none());
    }

    #[test]
    fn ox_body_becomes_message_new() {
        let v: Value = serde_json::from_str(r#"{"user":"11@3","event":"messageNew","folder":"INBOX","imap-uidvalidity":1700000000,"imap-uid":42,"from":"a <a@b>","subject":"Hi","snippet":"x","unseen":2}"#).unwrap();
        let t = ox_transaction(&v).unwrap();
        assert_eq!(t.user, "11@3");
        let Event::MessageNew(m) = &t.events[0] else {
            panic!()
        };
        assert_eq!((m.uid, m.uid_validity, m.unseen), (42, 1700000000, Some(2)));
        assert_eq!(m.from.as_deref(), Some("a <a@b>"));
        let bad: Value = serde_json::from_str(r#"{"user":"u","event":"messageNew","folder":"INBOX","imap-uidvalidity":1,"imap-uid":-1}"#).unwrap();
        assert!(ox_transaction(&bad).unwrap_err().contains("imap-uid"));
    }
}
