//! The host's side of a script: the primitives the sandbox's Lua code (prelude, the
//! `dovecot` API, the built-in modules) calls, and the per-worker context they share —
//! the transaction being delivered, its log budget, its outbound HTTP and what went wrong.
//!
//! Scripts never see these functions: they are handed to the built-in chunks as an
//! argument, never stored in a global.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::BodyExt;
use mlua::{Lua, MultiValue, Table, Value};
use parking_lot::Mutex;
use wasmtime_wasi_http::{Error as HttpError, WasiBody, WasiHttpHooks};

use mailpush_core::{Event, MetadataLookup, Transaction};

use super::budget::Budget;
use super::pattern;
use crate::logging::Tally;
use crate::wasm::http::hooks::OutboundHttp;
use crate::wasm::http::policy::HttpPolicy;
use crate::wasm::log::{self, DriverTag, LogBudget, LogRate, SharedLog, MAX_LINE};

/// The most bytes of one response body handed to a script.
pub const MAX_RESPONSE_BODY: usize = 4 << 20;

/// The most METADATA writes (set or unset) one transaction may make.
pub const MAX_METADATA_WRITES: u32 = 100;

/// The longest event name kept in a script's log line (`event:set_name`).
const MAX_EVENT_NAME: usize = 256;

/// The longest METADATA value a script may write.
pub const MAX_METADATA_VALUE: usize = 64 << 10;

/// The longest mailbox name a script's METADATA write may name. (In cluster mode the
/// entry's key is a NATS subject holding the user, the mailbox name and the key, base64:
/// nats-server cuts a client whose line passes 4 KiB.)
pub const MAX_MAILBOX_NAME: usize = 1024;

/// The most METADATA entries a script may leave its user with (it may still change
/// those there are).
pub const MAX_METADATA_ENTRIES: usize = 100;

/// The most attempts one request may ask for.
const MAX_ATTEMPTS: i64 = 5;

/// What a driver's workers share.
pub struct Shared {
    pub tag: Arc<DriverTag>,
    pub metadata: Arc<dyn MetadataLookup>,
    /// The config's `plugin { }` settings (`user:plugin_getenv`).
    pub plugin_env: Arc<BTreeMap<String, String>>,
    pub policy: HttpPolicy,
    pub log_rate: Arc<LogRate>,
    pub max_log_lines: u32,
    /// Log lines dropped and not reported yet.
    pub drops: Tally,
    pub counters: Counters,
    /// Pattern matcher steps a second, for the bound on a call's pattern functions
    /// ([`pattern::STEPS_PER_SECOND`]; faster in a test that needs a long C call).
    pub pattern_rate: f64,
}

impl Shared {
    /// One warning for `n` dropped log lines (at most one per [`Tally::EVERY`]).
    pub fn report_drops(&self, n: u64) {
        tracing::warn!(
            driver = self.tag.number,
            name = %self.tag.name,
            "lua script: {n} log lines dropped (max_log_lines={} per transaction; log_lines_per_sec / log_burst per driver)",
            self.max_log_lines
        );
    }
}

/// What a driver counts, for metrics and `mailpush status`.
#[derive(Debug, Default)]
pub struct Counters {
    pub script_errors: AtomicU64,
    pub timeouts: AtomicU64,
    pub memory_errors: AtomicU64,
    pub http_requests: AtomicU64,
    pub http_refused: AtomicU64,
    pub states_created: AtomicU64,
}

/// An HTTP request of the script that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpProblem {
    /// Refused by the outbound policy (a grant is missing): no retry helps.
    Refused(String),
    /// Failed at the endpoint or on the way (connection, timeout, 5xx, 429).
    Failed(String),
    /// Not sent: the endpoint's circuit is open; retry after the wait.
    Deferred(Duration),
}

/// One worker's context, shared by the primitives of its state.
pub struct Context {
    pub shared: Arc<Shared>,
    pub budget: Arc<Budget>,
    pub handle: tokio::runtime::Handle,
    pub txn: Mutex<Option<Arc<Transaction>>>,
    pub log: SharedLog,
    pub http: Mutex<OutboundHttp>,
    pub problems: Mutex<Vec<HttpProblem>>,
    /// METADATA writes of the current transaction ([`MAX_METADATA_WRITES`]).
    metadata_writes: std::sync::atomic::AtomicU32,
}

impl Context {
    pub fn new(shared: Arc<Shared>, handle: tokio::runtime::Handle) -> Arc<Self> {
        let log = LogBudget::shared(shared.max_log_lines, shared.log_rate.clone());
        Arc::new(Context {
            http: Mutex::new(OutboundHttp::new(shared.policy.clone(), log.clone())),
            budget: Budget::new(),
            handle,
            txn: Mutex::new(None),
            log,
            problems: Mutex::new(Vec::new()),
            metadata_writes: std::sync::atomic::AtomicU32::new(0),
            shared,
        })
    }

    /// Starts a transaction's bookkeeping.
    pub fn begin(&self, txn: &Arc<Transaction>) {
        *self.txn.lock() = Some(txn.clone());
        self.log.lock().end_transaction();
        self.http.lock().begin_transaction();
        self.problems.lock().clear();
        self.metadata_writes.store(0, Ordering::Relaxed);
    }

    /// Ends it: the HTTP problems it had.
    pub fn end(&self) -> Vec<HttpProblem> {
        *self.txn.lock() = None;
        let dropped = self.log.lock().end_transaction();
        self.shared
            .drops
            .add(u64::from(dropped), |n| self.shared.report_drops(n));
        std::mem::take(&mut *self.problems.lock())
    }

    fn txn_id(&self) -> String {
        self.txn
            .lock()
            .as_ref()
            .map_or_else(|| "-".to_string(), |t| t.id.clone())
    }

    /// Writes one line the script logged, within its budget.
    pub fn script_line(&self, level: &str, message: &str, event: Option<&str>, fields: &str) {
        if !log::admit(&self.log) {
            return;
        }
        let message = log::escape_controls(&log::cap(message.to_string(), MAX_LINE));
        let fields = log::escape_controls(&log::cap(fields.to_string(), MAX_LINE));
        // An event's name is the script's too (`event:set_name`).
        let event =
            log::escape_controls(&log::cap(event.unwrap_or("").to_string(), MAX_EVENT_NAME));
        let (n, name, txn) = (
            self.shared.tag.number,
            self.shared.tag.name.as_str(),
            self.txn_id(),
        );
        let event = event.as_str();
        match level {
            "debug" => {
                tracing::debug!(target: "mailpush::lua::script", driver = n, name, txn, event, fields, "{message}")
            }
            "warning" => {
                tracing::warn!(target: "mailpush::lua::script", driver = n, name, txn, event, fields, "{message}")
            }
            "error" => {
                tracing::error!(target: "mailpush::lua::script", driver = n, name, txn, event, fields, "{message}")
            }
            _ => {
                tracing::info!(target: "mailpush::lua::script", driver = n, name, txn, event, fields, "{message}")
            }
        }
    }

    /// Counts one METADATA write against the transaction's bound.
    fn metadata_write_allowed(&self) -> Result<(), String> {
        if self.metadata_writes.fetch_add(1, Ordering::Relaxed) >= MAX_METADATA_WRITES {
            return Err(format!(
                "more than {MAX_METADATA_WRITES} METADATA writes in one transaction (the mailpush sandbox's bound)"
            ));
        }
        Ok(())
    }

    /// The METADATA user an entry belongs to: the transaction's user, or for a mailbox
    /// attribute `USER#MAILBOX`.
    fn metadata_user(&self, mailbox: Option<&str>) -> Result<(Arc<Transaction>, String), String> {
        let txn =
            self.txn.lock().clone().ok_or_else(|| {
                "METADATA needs a user: call it on the user of begin_txn".to_string()
            })?;
        let user = match mailbox {
            Some(m) => format!("{}#{m}", txn.user),
            None => txn.user.clone(),
        };
        Ok((txn, user))
    }
}

/// Builds the primitives table for one state.
pub fn primitives(lua: &Lua, ctx: &Arc<Context>) -> mlua::Result<Table> {
    let h = lua.create_table()?;
    h.set(
        "null",
        Value::LightUserData(mlua::LightUserData(std::ptr::null_mut())),
    )?;

    let c = ctx.clone();
    h.set(
        "log",
        lua.create_function(
            move |_,
                  (level, msg, event, fields): (
                String,
                mlua::LuaString,
                Option<String>,
                Option<String>,
            )| {
                c.script_line(
                    &level,
                    &msg.to_string_lossy(),
                    event.as_deref(),
                    fields.as_deref().unwrap_or(""),
                );
                Ok(())
            },
        )?,
    )?;

    // Each guarded pattern call looks at the clock too: the instruction hook looks only
    // every thousand instructions, and as many pattern calls, each bounded, fit between
    // two of its looks.
    let budget = ctx.budget.clone();
    h.set(
        "tripped",
        lua.create_function(move |_, ()| Ok(budget.tripped()))?,
    )?;
    h.set("deadline_text", super::budget::DEADLINE_TEXT)?;
    let budget = ctx.budget.clone();
    let rate = ctx.shared.pattern_rate;
    h.set(
        "pattern_ok",
        lua.create_function(
            move |_,
                  (function, s, p, repl, n): (
                String,
                mlua::LuaString,
                mlua::LuaString,
                Option<mlua::LuaString>,
                Option<i64>,
            )| {
                if budget.tripped() {
                    return Err(mlua::Error::external(super::budget::Deadline));
                }
                let allowed = pattern::allowed_steps(budget.remaining(), rate);
                let s = s.as_bytes();
                // gsub's replacement first: its own argument number.
                if let Some(repl) = &repl {
                    if let Some(why) =
                        pattern::replacement_refusal(s.len(), &repl.as_bytes(), n, allowed)
                    {
                        return Ok((Some(why), 3));
                    }
                }
                Ok((pattern::refusal(&function, &s, &p.as_bytes(), allowed), 2))
            },
        )?,
    )?;
    h.set(
        "plain_find",
        lua.create_function(
            |_, (s, p, init): (mlua::LuaString, mlua::LuaString, Option<i64>)| {
                Ok(
                    match pattern::plain_find(&s.as_bytes(), &p.as_bytes(), init) {
                        Some((a, b)) => {
                            MultiValue::from_vec(vec![Value::Integer(a), Value::Integer(b)])
                        }
                        None => MultiValue::from_vec(vec![Value::Nil]),
                    },
                )
            },
        )?,
    )?;

    h.set(
        "now_us",
        lua.create_function(|_, ()| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            Ok(i64::try_from(now.as_micros()).unwrap_or(i64::MAX))
        })?,
    )?;
    let c = ctx.clone();
    h.set(
        "sleep_ms",
        lua.create_function(move |_, ms: f64| {
            let want = Duration::from_secs_f64((ms.max(0.0) / 1000.0).min(3600.0));
            let left = c.budget.remaining();
            std::thread::sleep(want.min(left));
            // Cut short at the deadline (not: called with the budget already spent).
            if want > left && !left.is_zero() {
                c.budget.host_wait_cut();
            }
            Ok(())
        })?,
    )?;
    h.set(
        "b64encode",
        lua.create_function(|lua, s: mlua::LuaString| {
            lua.create_string(base64::engine::general_purpose::STANDARD.encode(&*s.as_bytes()))
        })?,
    )?;
    h.set(
        "b64decode",
        lua.create_function(|lua, s: mlua::LuaString| {
            let text: Vec<u8> = s
                .as_bytes()
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            match base64::engine::general_purpose::STANDARD.decode(text) {
                Ok(bytes) => Ok(Value::String(lua.create_string(bytes)?)),
                Err(_) => Ok(Value::Nil),
            }
        })?,
    )?;
    h.set(
        "ip_family",
        lua.create_function(|_, ip: String| {
            Ok(match ip.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(_)) => 4,
                Ok(std::net::IpAddr::V6(_)) => 6,
                Err(_) => 0,
            })
        })?,
    )?;
    h.set(
        "url_error",
        lua.create_function(|_, url: String| Ok(url_error(&url)))?,
    )?;
    h.set(
        "redact_url",
        lua.create_function(|_, url: String| Ok(mailpush_core::args::redact_url(&url)))?,
    )?;

    let c = ctx.clone();
    h.set(
        "plugin_getenv",
        lua.create_function(move |_, name: String| {
            // The push drivers' own lines (an ox URL's password, other drivers' secrets)
            // are not the script's to read.
            let lower = name.to_ascii_lowercase();
            if lower.starts_with("push_notification_driver")
                || lower.starts_with("push_notification_backend")
            {
                return Ok(None);
            }
            Ok(c.shared.plugin_env.get(&name).cloned())
        })?,
    )?;

    let c = ctx.clone();
    h.set(
        "metadata_get",
        lua.create_function(move |_, (key, mailbox): (String, Option<String>)| {
            let (txn, user) = match c.metadata_user(mailbox.as_deref()) {
                Ok(u) => u,
                Err(e) => return Ok((None, Some(e))),
            };
            let got = if mailbox.is_none() {
                mailpush_core::metadata::lookup(&txn, c.shared.metadata.as_ref(), &key)
            } else {
                c.shared.metadata.get(&user, &key)
            };
            Ok(match got {
                Ok(v) => (v, None),
                Err(e) => (None, Some(e.to_string())),
            })
        })?,
    )?;
    let c = ctx.clone();
    h.set(
        "metadata_set",
        lua.create_function(
            move |_, (key, value, mailbox): (String, String, Option<String>)| {
                let result = c
                    .metadata_write_allowed()
                    .and_then(|()| {
                        if value.len() > MAX_METADATA_VALUE {
                            return Err(format!(
                                "METADATA value of {} bytes, more than the sandbox's {MAX_METADATA_VALUE}",
                                value.len()
                            ));
                        }
                        // Entries are stored under the user and the mailbox name: the
                        // name counts toward what a script may make the store hold, as
                        // the key does. (Only writes: what is stored stays readable.)
                        if let Some(m) = mailbox.as_deref().filter(|m| m.len() > MAX_MAILBOX_NAME) {
                            return Err(format!(
                                "mailbox name of {} bytes, more than the sandbox's {MAX_MAILBOX_NAME} for METADATA writes",
                                m.len()
                            ));
                        }
                        c.metadata_user(mailbox.as_deref())
                    })
                    .and_then(|(txn, user)| {
                        let store = &c.shared.metadata;
                        let normal = mailpush_core::metadata::normalize_key(&key)
                            .map_err(|e| e.to_string())?;
                        // The bound is the user's, its mailboxes' entries included (one
                        // per mailbox name was no bound at all).
                        let held = store
                            .count_with_mailboxes(&txn.user)
                            .map_err(|e| e.to_string())?;
                        if held >= MAX_METADATA_ENTRIES
                            && store
                                .get(&user, &normal)
                                .map_err(|e| e.to_string())?
                                .is_none()
                        {
                            return Err(format!(
                                "the user has {held} METADATA entries (its mailboxes' included), the sandbox's most ({MAX_METADATA_ENTRIES}); unset one first"
                            ));
                        }
                        store.write(&user, &key, &value).map_err(|e| e.to_string())
                    });
                Ok(result.err())
            },
        )?,
    )?;
    let c = ctx.clone();
    h.set(
        "metadata_unset",
        lua.create_function(move |_, (key, mailbox): (String, Option<String>)| {
            let result = c
                .metadata_write_allowed()
                .and_then(|()| c.metadata_user(mailbox.as_deref()))
                .and_then(|(_, user)| {
                    c.shared
                        .metadata
                        .remove(&user, &key)
                        .map_err(|e| e.to_string())
                });
            Ok(result.err())
        })?,
    )?;
    let c = ctx.clone();
    h.set(
        "metadata_list",
        lua.create_function(move |lua, (prefix, mailbox): (String, Option<String>)| {
            let entries = c.metadata_user(mailbox.as_deref()).and_then(|(_, user)| {
                c.shared
                    .metadata
                    .entries(&user, &prefix)
                    .map_err(|e| e.to_string())
            });
            match entries {
                Ok(list) => {
                    let t = lua.create_table()?;
                    for (k, v) in list {
                        t.set(k, v)?;
                    }
                    Ok((Value::Table(t), None))
                }
                Err(e) => Ok((Value::Nil, Some(e))),
            }
        })?,
    )?;

    let c = ctx.clone();
    h.set(
        "mailbox_status",
        lua.create_function(move |lua, name: String| {
            let t = lua.create_table()?;
            if let Some(txn) = c.txn.lock().as_ref() {
                for event in txn.events.iter().filter(|e| e.mailbox() == name) {
                    if let Some((_, uid_validity)) = event.message() {
                        t.set("uidvalidity", f64::from(uid_validity))?;
                    }
                    if let Event::MessageNew(m) | Event::MessageAppend(m) = event {
                        for (item, value) in [
                            ("unseen", m.unseen),
                            ("messages", m.messages),
                            ("recent", m.recent),
                        ] {
                            if let Some(v) = value {
                                t.set(item, f64::from(v))?;
                            }
                        }
                    }
                }
            }
            Ok(t)
        })?,
    )?;

    let c = ctx.clone();
    h.set(
        "http",
        lua.create_function(
            move |lua,
                  (method, url, headers, body, timeout_ms, attempts): (
                String,
                String,
                Table,
                Option<mlua::LuaString>,
                Option<f64>,
                Option<i64>,
            )| {
                let mut list = Vec::new();
                for pair in headers.sequence_values::<Table>() {
                    let pair = pair?;
                    let name: mlua::LuaString = pair.get(1)?;
                    let value: mlua::LuaString = pair.get(2)?;
                    list.push((name.as_bytes().to_vec(), value.as_bytes().to_vec()));
                }
                let body = body.map(|b| Bytes::copy_from_slice(&b.as_bytes()));
                let timeout = Duration::from_secs_f64(
                    (timeout_ms.unwrap_or(60_000.0).max(1.0) / 1000.0).min(3600.0),
                );
                let attempts = attempts.unwrap_or(1).clamp(1, MAX_ATTEMPTS);
                let outcome = send(&c, &method, &url, &list, body, timeout, attempts);
                let resp_headers = lua.create_table()?;
                for (i, (n, v)) in outcome.headers.iter().enumerate() {
                    let pair =
                        lua.create_sequence_from([lua.create_string(n)?, lua.create_string(v)?])?;
                    resp_headers.raw_set(i + 1, pair)?;
                }
                Ok(MultiValue::from_vec(vec![
                    Value::Integer(i64::from(outcome.status)),
                    Value::String(lua.create_string(&outcome.reason)?),
                    Value::Table(resp_headers),
                    Value::String(lua.create_string(&outcome.body)?),
                    match outcome.socket_error {
                        Some(e) => Value::String(lua.create_string(e)?),
                        None => Value::Nil,
                    },
                ]))
            },
        )?,
    )?;
    Ok(h)
}

/// Why a URL cannot be requested, in Dovecot's words; `None` when it can.
fn url_error(url: &str) -> Option<String> {
    match url.parse::<http::Uri>() {
        Err(e) => Some(e.to_string()),
        Ok(u) => match (u.scheme_str(), u.host()) {
            (Some("http" | "https"), Some(_)) => None,
            (Some(s), _) if s != "http" && s != "https" => {
                Some(format!("Unsupported URL scheme '{s}'"))
            }
            _ => Some("Relative URL not allowed".to_string()),
        },
    }
}

/// What one request came to, as Dovecot's client reports it.
struct Outcome {
    status: u16,
    reason: String,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    body: Vec<u8>,
    /// LuaSocket's words for a failure (`connection refused`, `timeout`, …).
    socket_error: Option<String>,
    /// The policy refused or deferred the request (already recorded; no retry).
    policy: bool,
}

impl Outcome {
    fn failed(status: u16, reason: impl Into<String>, socket_error: impl Into<String>) -> Self {
        Outcome {
            status,
            reason: reason.into(),
            headers: Vec::new(),
            body: Vec::new(),
            socket_error: Some(socket_error.into()),
            policy: false,
        }
    }
}

/// Dovecot's internal statuses (`enum http_client_request_error`, from 9000).
mod code {
    pub const ABORTED: u16 = 9000;
    pub const INVALID_URL: u16 = 9001;
    pub const HOST_LOOKUP_FAILED: u16 = 9002;
    pub const CONNECT_FAILED: u16 = 9003;
    pub const CONNECTION_LOST: u16 = 9005;
    pub const BAD_RESPONSE: u16 = 9007;
    pub const TIMED_OUT: u16 = 9008;
}

/// Sends one request under the driver's outbound policy, blocking this worker thread
/// (never a runtime thread), with up to `attempts` tries on connection failures and
/// timeouts, every wait capped at the budget of the call.
fn send(
    ctx: &Context,
    method: &str,
    url: &str,
    headers: &[(Vec<u8>, Vec<u8>)],
    body: Option<Bytes>,
    timeout: Duration,
    attempts: i64,
) -> Outcome {
    let shown = mailpush_core::args::redact_url(url);
    let uri: http::Uri = match url.parse() {
        Ok(u) => u,
        Err(e) => {
            return Outcome::failed(
                code::INVALID_URL,
                format!("Invalid URL: {e}"),
                "invalid url",
            )
        }
    };
    if let Some(why) = url_error(url) {
        return Outcome::failed(code::INVALID_URL, format!("Invalid URL: {why}"), why);
    }
    // `http://user:pass@host/`: as Dovecot's client, the userinfo becomes Basic
    // authentication (unless the script set Authorization itself), never part of Host.
    let (uri, auth) = match crate::userinfo::without_userinfo(&uri) {
        Some((bare, user, password)) => (bare, Some((user, password))),
        None => (uri, None),
    };
    let mut with_auth;
    let headers = match auth {
        Some((user, password))
            if !headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(b"authorization")) =>
        {
            with_auth = headers.to_vec();
            let credentials =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            with_auth.push((
                b"authorization".to_vec(),
                format!("Basic {credentials}").into_bytes(),
            ));
            &with_auth[..]
        }
        _ => headers,
    };
    let Ok(method) = http::Method::from_bytes(method.as_bytes()) else {
        return Outcome::failed(
            code::ABORTED,
            format!("Invalid method {method}"),
            "invalid method",
        );
    };
    ctx.shared
        .counters
        .http_requests
        .fetch_add(1, Ordering::Relaxed);
    let mut outcome = Outcome::failed(code::ABORTED, "Request aborted", "aborted");
    for _attempt in 0..attempts {
        let remaining = ctx.budget.remaining();
        if remaining.is_zero() {
            outcome = Outcome::failed(code::TIMED_OUT, "Request timed out", "timeout");
            break;
        }
        let request = match build_request(&method, &uri, headers, body.clone()) {
            Ok(r) => r,
            Err(why) => return Outcome::failed(code::ABORTED, why.clone(), why),
        };
        outcome = attempt(ctx, request, timeout.min(remaining), &uri);
        // A request the deadline cut short (the budget, not its own timeout, was its
        // limit): the call returns past the deadline by the request's time, not the
        // script's (not a script timeout).
        if timeout > remaining && ctx.budget.remaining().is_zero() {
            ctx.budget.host_wait_cut();
        }
        let retry = matches!(
            outcome.status,
            code::HOST_LOOKUP_FAILED
                | code::CONNECT_FAILED
                | code::CONNECTION_LOST
                | code::TIMED_OUT
        ) && !outcome.policy;
        if !retry {
            break;
        }
    }
    // Remember what went wrong, for the transaction's outcome.
    let mut problems = ctx.problems.lock();
    if outcome.status >= 9000 && !outcome.policy {
        problems.push(HttpProblem::Failed(format!(
            "{method} {shown}: {} {}",
            outcome.status, outcome.reason
        )));
    } else if outcome.status >= 500 && outcome.status < 9000 || outcome.status == 429 {
        problems.push(HttpProblem::Failed(format!(
            "{method} {shown} answered {} {}",
            outcome.status, outcome.reason
        )));
    }
    outcome
}

fn build_request(
    method: &http::Method,
    uri: &http::Uri,
    headers: &[(Vec<u8>, Vec<u8>)],
    body: Option<Bytes>,
) -> Result<http::Request<WasiBody>, String> {
    let mut builder = http::Request::builder()
        .method(method.clone())
        .uri(uri.clone());
    let mut has_length = false;
    for (n, v) in headers {
        let name = http::HeaderName::from_bytes(n)
            .map_err(|_| format!("invalid header name {:?}", String::from_utf8_lossy(n)))?;
        let value = http::HeaderValue::from_bytes(v)
            .map_err(|_| format!("invalid value of header {}", String::from_utf8_lossy(n)))?;
        has_length |= name == http::header::CONTENT_LENGTH;
        builder = builder.header(name, value);
    }
    let body = body.unwrap_or_default();
    if !body.is_empty() && !has_length {
        builder = builder.header(http::header::CONTENT_LENGTH, body.len());
    }
    let body = http_body_util::Full::new(body)
        .map_err(|never| match never {})
        .boxed_unsync();
    builder.body(body).map_err(|e| e.to_string())
}

fn attempt(
    ctx: &Context,
    request: http::Request<WasiBody>,
    timeout: Duration,
    uri: &http::Uri,
) -> Outcome {
    let future = {
        let mut http = ctx.http.lock();
        let io: Box<dyn std::future::Future<Output = Result<(), HttpError>> + Send> =
            Box::new(async { Ok(()) });
        Box::into_pin(http.send_request(request, None, io))
    };
    let result = ctx.handle.block_on(async {
        tokio::time::timeout(timeout, async {
            let (response, _io) = future.await?;
            let (parts, body) = response.into_parts();
            let limited = http_body_util::Limited::new(body, MAX_RESPONSE_BODY);
            let bytes = limited
                .collect()
                .await
                .map_err(|_| HttpError::HttpResponseBodySize(None))?
                .to_bytes();
            Ok::<_, HttpError>((parts, bytes))
        })
        .await
    });
    {
        let mut http = ctx.http.lock();
        let refused = http.take_refused();
        if let Some(wait) = http.circuit_wait.take() {
            ctx.problems.lock().push(HttpProblem::Deferred(wait));
            let why = refused
                .into_iter()
                .next()
                .unwrap_or_else(|| "circuit open".into());
            let mut o = Outcome::failed(code::CONNECT_FAILED, why.clone(), why);
            o.policy = true;
            return o;
        } else if let Some(why) = refused.into_iter().next() {
            ctx.shared
                .counters
                .http_refused
                .fetch_add(1, Ordering::Relaxed);
            ctx.problems.lock().push(HttpProblem::Refused(why.clone()));
            let why = format!("refused by mailpush: {why}");
            let mut o = Outcome::failed(code::CONNECT_FAILED, why.clone(), why);
            o.policy = true;
            return o;
        }
    }
    // host:port, never the userinfo (a password in the URL stays out of reasons).
    let authority = match (uri.host(), uri.port_u16()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => String::new(),
    };
    let authority = authority.as_str();
    match result {
        Err(_) => Outcome::failed(code::TIMED_OUT, "Request timed out", "timeout"),
        Ok(Ok((parts, body))) => Outcome {
            status: parts.status.as_u16(),
            reason: parts.status.canonical_reason().unwrap_or("").to_string(),
            headers: parts
                .headers
                .iter()
                .map(|(n, v)| (n.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
            body: body.to_vec(),
            socket_error: None,
            policy: false,
        },
        Ok(Err(e)) => error_outcome(&e, authority),
    }
}

/// Dovecot's status and reason for a failed request, and LuaSocket's word for it.
fn error_outcome(e: &HttpError, authority: &str) -> Outcome {
    match e {
        HttpError::DnsTimeout | HttpError::DnsError { .. } | HttpError::DestinationNotFound => {
            Outcome::failed(
                code::HOST_LOOKUP_FAILED,
                format!("Failed to lookup host {authority}"),
                "host not found",
            )
        }
        HttpError::ConnectionRefused => Outcome::failed(
            code::CONNECT_FAILED,
            format!("connect({authority}) failed: Connection refused"),
            "connection refused",
        ),
        HttpError::ConnectionTimeout => Outcome::failed(
            code::CONNECT_FAILED,
            format!("connect({authority}) failed: Connection timed out"),
            "timeout",
        ),
        HttpError::ConnectionReadTimeout
        | HttpError::ConnectionWriteTimeout
        | HttpError::HttpResponseTimeout => {
            Outcome::failed(code::TIMED_OUT, "Request timed out", "timeout")
        }
        HttpError::ConnectionTerminated | HttpError::HttpResponseIncomplete => {
            Outcome::failed(code::CONNECTION_LOST, "Connection lost", "closed")
        }
        HttpError::Connect(io) => Outcome::failed(
            code::CONNECT_FAILED,
            format!("connect({authority}) failed: {io}"),
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
                std::io::ErrorKind::TimedOut => "timeout".to_string(),
                _ => io.to_string(),
            },
        ),
        HttpError::HttpProtocolError | HttpError::Hyper(_) | HttpError::HttpResponseBodySize(_) => {
            Outcome::failed(
                code::BAD_RESPONSE,
                format!("Invalid response: {e}"),
                "closed",
            )
        }
        other => Outcome::failed(code::CONNECT_FAILED, other.to_string(), other.to_string()),
    }
}
