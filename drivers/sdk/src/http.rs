//! A small blocking HTTP client over the standard `wasi:http/outgoing-handler`.
//!
//! Only hosts granted by the driver's `allow_hosts=` are reachable; private and
//! loopback addresses additionally need `allow_private`. A refused request fails with
//! [`HttpError::Refused`].

use crate::bindings::wasi::http::outgoing_handler;
use crate::bindings::wasi::http::types::{
    ErrorCode, Fields, FutureIncomingResponse, IncomingBody, IncomingResponse, Method,
    OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
};
use crate::bindings::wasi::io::streams::StreamError;
use mailpush_http_failure::{status, transport, Class, Transport};

/// A response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Header names are lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request did not produce a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The URL could not be used.
    InvalidUrl(String),
    /// The sandbox's policy refused the request (not in `allow_hosts`, a private
    /// address, the egress budget).
    Refused(String),
    /// Connect or response timeout.
    Timeout(String),
    /// Connection refused, reset or lost, or a broken response.
    Connection(String),
    /// Anything else.
    Other(String),
}

impl HttpError {
    /// What the failure means, by mailpush's one classification
    /// ([`mailpush_http_failure`]): retry, give up, refused by policy.
    pub fn class(&self) -> Class {
        match self {
            HttpError::Refused(_) => transport(Transport::Policy),
            HttpError::Timeout(_) => transport(Transport::Timeout),
            HttpError::Connection(_) => transport(Transport::ConnectionLost),
            HttpError::InvalidUrl(_) | HttpError::Other(_) => Class::GiveUp,
        }
    }

    /// Whether a retry later may succeed.
    pub fn retryable(&self) -> bool {
        self.class().retryable()
    }
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::InvalidUrl(s) => write!(f, "invalid URL: {s}"),
            HttpError::Refused(s) => write!(f, "request refused by the sandbox: {s}"),
            HttpError::Timeout(s) => write!(f, "timeout: {s}"),
            HttpError::Connection(s) => write!(f, "connection failed: {s}"),
            HttpError::Other(s) => write!(f, "HTTP error: {s}"),
        }
    }
}

/// The host's error code read by mailpush's one classification.
fn classify(e: ErrorCode) -> HttpError {
    let text = format!("{e:?}");
    match e {
        // The sandbox's policy.
        ErrorCode::HttpRequestDenied
        | ErrorCode::DestinationIpProhibited
        | ErrorCode::HttpRequestBodySize(_) => HttpError::Refused(text),
        ErrorCode::ConnectionTimeout
        | ErrorCode::ConnectionReadTimeout
        | ErrorCode::ConnectionWriteTimeout
        | ErrorCode::HttpResponseTimeout
        | ErrorCode::DnsTimeout => HttpError::Timeout(text),
        // Refused, reset, closed, a broken response: the endpoint or the path to it.
        ErrorCode::ConnectionRefused
        | ErrorCode::ConnectionTerminated
        | ErrorCode::ConnectionLimitReached
        | ErrorCode::DestinationUnavailable
        | ErrorCode::DestinationNotFound
        | ErrorCode::DnsError(_)
        | ErrorCode::HttpProtocolError
        | ErrorCode::HttpResponseIncomplete
        | ErrorCode::TlsProtocolError
        | ErrorCode::TlsAlertReceived(_) => HttpError::Connection(text),
        _ => HttpError::Other(text),
    }
}

impl Response {
    /// What the status means ([`mailpush_http_failure::status`]): `None` for 2xx.
    pub fn class(&self) -> Option<Class> {
        status(
            self.status,
            self.header("retry-after"),
            std::time::SystemTime::now(),
        )
    }
}

/// The failure (if any) of a request's result, by mailpush's one classification:
/// `None` for a 2xx response; a retryable failure (with the server's `Retry-After`) for
/// 408, 429, 5xx and lost or refused connections and timeouts; a permanent one for other
/// statuses and policy refusals. `what` names the request in the reason.
pub fn failure(what: &str, result: &Result<Response, HttpError>) -> Option<crate::Failure> {
    let (class, reason) = match result {
        Ok(r) => (r.class()?, format!("{what} answered {}", r.status)),
        Err(e) => (e.class(), format!("{what}: {e}")),
    };
    Some(match class {
        Class::Retry { after } => crate::Failure {
            reason,
            retryable: true,
            // More milliseconds than a u64 holds is its maximum, not a wrapped small delay.
            retry_after_ms: after.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        },
        Class::Deferred => crate::Failure::retryable(reason),
        Class::GiveUp | Class::Refused => crate::Failure::permanent(reason),
    })
}

/// Writes and finishes a request body. On failure the body is dropped unfinished, which
/// abandons the request.
fn write_body(out_body: OutgoingBody, body: &[u8]) -> Result<(), HttpError> {
    {
        let stream = out_body
            .write()
            .map_err(|_| HttpError::Other("request body stream unavailable".into()))?;
        for chunk in body.chunks(4096) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| HttpError::Connection(format!("writing body: {e:?}")))?;
        }
    }
    OutgoingBody::finish(out_body, None).map_err(classify)
}

/// Blocks until the response (or the reason there is none) arrives.
fn wait(future: &FutureIncomingResponse) -> Result<IncomingResponse, HttpError> {
    loop {
        match future.get() {
            Some(Ok(Ok(r))) => return Ok(r),
            Some(Ok(Err(e))) => return Err(classify(e)),
            Some(Err(())) => return Err(HttpError::Other("response already taken".into())),
            None => future.subscribe().block(),
        }
    }
}

/// Most bytes of a response body read.
pub const MAX_RESPONSE_BODY: usize = 1 << 20;

/// Sends a request and reads the whole response (body capped at 1 MiB).
/// `timeout_ms` bounds connecting and the wait for the first response byte.
pub fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout_ms: Option<u64>,
) -> Result<Response, HttpError> {
    let (scheme, rest) = if let Some(r) = url.strip_prefix("https://") {
        (Scheme::Https, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (Scheme::Http, r)
    } else {
        return Err(HttpError::InvalidUrl(format!(
            "{url}: only http:// and https:// URLs"
        )));
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    // Userinfo is not sent in the authority; callers turn it into an Authorization header.
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    if authority.is_empty() {
        return Err(HttpError::InvalidUrl(format!("{url}: no host")));
    }
    let path = if path.is_empty() {
        "/".to_string()
    } else if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };

    let mut list: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect();
    // A known length (no chunked encoding): what most webhook receivers expect.
    if !list
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        && (!body.is_empty()
            || method.eq_ignore_ascii_case("POST")
            || method.eq_ignore_ascii_case("PUT"))
    {
        list.push((
            "content-length".to_string(),
            body.len().to_string().into_bytes(),
        ));
    }
    let fields =
        Fields::from_list(&list).map_err(|e| HttpError::Other(format!("bad header: {e:?}")))?;
    let req = OutgoingRequest::new(fields);
    let m = match method.to_ascii_uppercase().as_str() {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "PATCH" => Method::Patch,
        "HEAD" => Method::Head,
        other => Method::Other(other.to_string()),
    };
    let bad = |what: &str| HttpError::InvalidUrl(format!("{url}: invalid {what}"));
    req.set_method(&m).map_err(|_| bad("method"))?;
    req.set_scheme(Some(&scheme)).map_err(|_| bad("scheme"))?;
    req.set_authority(Some(authority))
        .map_err(|_| bad("host"))?;
    req.set_path_with_query(Some(&path))
        .map_err(|_| bad("path"))?;
    let out_body = req
        .body()
        .map_err(|_| HttpError::Other("request body unavailable".into()))?;

    let options = RequestOptions::new();
    if let Some(ms) = timeout_ms {
        let ns = ms.saturating_mul(1_000_000);
        let _ = options.set_connect_timeout(Some(ns));
        let _ = options.set_first_byte_timeout(Some(ns));
        let _ = options.set_between_bytes_timeout(Some(ns));
    }
    let future = outgoing_handler::handle(req, Some(options)).map_err(classify)?;
    if let Err(e) = write_body(out_body, body) {
        // The host stops reading the body when it refuses the request (sandbox policy)
        // or the connection fails; the response future says which. A refusal must
        // surface as `Refused`, not as a (retryable) broken body stream.
        return Err(match wait(&future) {
            Err(why) => why,
            Ok(_) => e,
        });
    }
    let incoming = wait(&future)?;
    let status = incoming.status();
    let headers = incoming
        .headers()
        .entries()
        .into_iter()
        .map(|(k, v)| {
            (
                k.to_ascii_lowercase(),
                String::from_utf8_lossy(&v).into_owned(),
            )
        })
        .collect();
    let mut data = Vec::new();
    if let Ok(body) = incoming.consume() {
        if let Ok(stream) = body.stream() {
            loop {
                match stream.blocking_read(64 * 1024) {
                    Ok(chunk) => {
                        data.extend_from_slice(&chunk);
                        if data.len() >= MAX_RESPONSE_BODY {
                            data.truncate(MAX_RESPONSE_BODY);
                            break;
                        }
                    }
                    Err(StreamError::Closed) => break,
                    Err(StreamError::LastOperationFailed(e)) => {
                        return Err(HttpError::Connection(format!(
                            "reading response: {}",
                            e.to_debug_string()
                        )))
                    }
                }
            }
        }
        let _ = IncomingBody::finish(body);
    }
    Ok(Response {
        status,
        headers,
        body: data,
    })
}
