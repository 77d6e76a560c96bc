//! `mailpush driver test DRIVER.wasm [EVENTS]`: a driver author's inner loop. Loads the
//! component as mailpush would, gives it a recording HTTP endpoint on 127.0.0.1 (granted
//! to it; `url=` points there unless given), runs it over sample transactions, and
//! reports per transaction what the driver logged, what it requested and what it
//! returned. No config file, no spool, no retries.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailpush_core::{Driver, DriverArgs, MetadataLookup, NoMetadata, Transaction};
use parking_lot::Mutex;

use crate::pipeline::{deliver, Outcome};
use crate::wasm::engine::Engines;
use crate::wasm::log::DriverTag;
use crate::wasm::sandbox::Sandbox;
use crate::wasm::WasmDriver;

/// The transactions used when no file is given.
pub const SAMPLE_EVENTS: &str = include_str!("../../../examples/events.ndjson");

/// What `driver test` is asked to do.
#[derive(Debug, Clone)]
pub struct DriverTest {
    pub component: PathBuf,
    /// Canonical transactions (NDJSON); `None`: [`SAMPLE_EVENTS`].
    pub events: Option<String>,
    /// `key=value` args; `{endpoint}` in a value is the recording endpoint's URL.
    pub args: Vec<String>,
    /// The status the endpoint answers.
    pub reply: u16,
    /// The compiled-component cache (`None`: compile every time).
    pub cache_dir: Option<PathBuf>,
}

/// One request the endpoint received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What one transaction did.
#[derive(Debug, Clone)]
pub struct TxnReport {
    pub txn: Transaction,
    pub log: Vec<(tracing::Level, String)>,
    pub requests: Vec<Request>,
    pub outcome: Outcome,
    pub elapsed: Duration,
}

/// The whole run.
#[derive(Debug, Clone)]
pub struct DriverTestReport {
    pub endpoint: String,
    pub args: String,
    pub details: Vec<String>,
    pub load_time: Duration,
    pub txns: Vec<TxnReport>,
}

impl DriverTestReport {
    /// Whether every transaction was delivered or skipped.
    pub fn ok(&self) -> bool {
        self.txns
            .iter()
            .all(|t| !matches!(t.outcome, Outcome::Failed(_)))
    }
}

/// Why the test could not run.
#[derive(Debug, thiserror::Error)]
pub enum DriverTestError {
    #[error("{0}")]
    Events(String),
    #[error("cannot start the recording endpoint: {0}")]
    Endpoint(std::io::Error),
    #[error("{}: {}", .0.display(), .1)]
    Load(PathBuf, String),
}

/// Log lines of guests, captured while a test runs (see [`capture_layer`]).
#[derive(Default)]
pub struct Captured(Mutex<Vec<(tracing::Level, String)>>);

impl Captured {
    fn take(&self) -> Vec<(tracing::Level, String)> {
        std::mem::take(&mut *self.0.lock())
    }
}

/// A tracing layer that keeps what the component logs (target `mailpush::wasm::guest`:
/// `host.log`, stdout, stderr) in `captured` instead of printing it.
pub fn capture_layer(captured: Arc<Captured>) -> CaptureLayer {
    CaptureLayer(captured)
}

/// See [`capture_layer`].
pub struct CaptureLayer(Arc<Captured>);

struct MessageVisitor(String);

impl tracing::field::Visit for MessageVisitor {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.to_string();
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CaptureLayer {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let meta = event.metadata();
        if meta.target().starts_with("mailpush::wasm::guest") {
            let mut v = MessageVisitor(String::new());
            event.record(&mut v);
            self.0 .0.lock().push((*meta.level(), v.0));
        }
    }
}

/// Runs the test.
pub async fn run(
    test: &DriverTest,
    captured: &Captured,
) -> Result<DriverTestReport, DriverTestError> {
    let text = test.events.as_deref().unwrap_or(SAMPLE_EVENTS);
    let txns = mailpush_core::parse_ndjson(text)
        .map_err(|e| DriverTestError::Events(format!("events, line {}: {}", e.line, e.error)))?;
    let recorded: Arc<Mutex<Vec<Request>>> = Arc::default();
    let endpoint = serve(recorded.clone(), test.reply)
        .await
        .map_err(DriverTestError::Endpoint)?;
    let mut given: Vec<String> = test
        .args
        .iter()
        .map(|a| a.replace("{endpoint}", &endpoint))
        .collect();
    if !given.iter().any(|a| a.starts_with("url=")) {
        given.push(format!("url={endpoint}/"));
    }
    // The endpoint's address is new at every run, and a snapshot is made per set of
    // arguments (about 15 s for a JavaScript component): `init` in every instance,
    // unless asked.
    for grant in [
        "allow_hosts=127.0.0.1",
        "allow_private",
        "init=per-instance",
    ] {
        let key = grant.split('=').next().unwrap_or(grant);
        if !given.iter().any(|a| a.split('=').next() == Some(key)) {
            given.push(grant.to_string());
        }
    }
    let line = given.join(" ");
    let mut args = DriverArgs::parse(&line);
    let sandbox = Sandbox::from_args(&mut args)
        .map_err(|e| DriverTestError::Load(test.component.clone(), e.message))?;
    let engines = Engines::shared(test.cache_dir.clone());
    let tag = Arc::new(DriverTag {
        number: 1,
        name: "wasm".into(),
    });
    let started = Instant::now();
    let metadata: Arc<dyn MetadataLookup> = Arc::new(NoMetadata);
    let driver = WasmDriver::load(tag, &test.component, sandbox, args, &engines, metadata)
        .await
        .map_err(|e| DriverTestError::Load(test.component.clone(), e.message))?;
    let load_time = started.elapsed();
    let details = driver.details();
    captured.take();
    let driver: Arc<dyn Driver> = Arc::new(driver);
    let mut reports = Vec::new();
    for txn in txns {
        let txn = Arc::new(txn);
        let started = Instant::now();
        let outcome = deliver(driver.as_ref(), &txn).await;
        let elapsed = started.elapsed();
        reports.push(TxnReport {
            txn: (*txn).clone(),
            log: captured.take(),
            requests: std::mem::take(&mut *recorded.lock()),
            outcome,
            elapsed,
        });
    }
    driver.deinit().await;
    Ok(DriverTestReport {
        endpoint,
        args: mailpush_core::DriverArgs::parse(&line).redacted(),
        details,
        load_time,
        txns: reports,
    })
}

/// The recording endpoint: every request is kept and answered with `status`.
async fn serve(recorded: Arc<Mutex<Vec<Request>>>, status: u16) -> std::io::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let status = axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::OK);
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let recorded = recorded.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, 16 << 20)
                .await
                .unwrap_or_default();
            recorded.lock().push(Request {
                method: parts.method.to_string(),
                target: parts
                    .uri
                    .path_and_query()
                    .map_or("/".to_string(), |p| p.to_string()),
                headers: parts
                    .headers
                    .iter()
                    .map(|(n, v)| {
                        (
                            n.to_string(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect(),
                body: body.to_vec(),
            });
            status
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{addr}"))
}

/// The report as text: per transaction its events, log lines, requests and outcome.
pub fn render(component: &Path, reply: u16, r: &DriverTestReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "driver: {}", component.display());
    for d in &r.details {
        let _ = writeln!(out, "  {d}");
    }
    let _ = writeln!(out, "  loaded in {} ms", r.load_time.as_millis());
    let _ = writeln!(out, "args: {}", r.args);
    let _ = writeln!(out, "endpoint: {} (answers {reply})\n", r.endpoint);
    let (mut delivered, mut failed, mut skipped) = (0, 0, 0);
    // A driver whose begin answer was fixed at load (fixed-begin) is never asked again.
    let skipped_by = if r
        .details
        .iter()
        .any(|d| d.starts_with("begin-txn: not called"))
    {
        "skipped (its fixed-begin answer)"
    } else {
        "skipped (begin-txn)"
    };
    for (i, t) in r.txns.iter().enumerate() {
        let events: Vec<String> = t
            .txn
            .events
            .iter()
            .map(|e| format!("{} {}", e.name(), e.mailbox()))
            .collect();
        let _ = writeln!(
            out,
            "[{}/{}] {} {}: {}",
            i + 1,
            r.txns.len(),
            t.txn.id,
            t.txn.user,
            events.join(", ")
        );
        for (level, line) in &t.log {
            let _ = writeln!(out, "  log   {:<5} {line}", level.as_str());
        }
        for q in &t.requests {
            let headers: Vec<String> = q
                .headers
                .iter()
                .filter(|(n, _)| n != "host" && n != "content-length")
                .map(|(n, v)| format!("{n}: {v}"))
                .collect();
            let _ = writeln!(
                out,
                "  http  {} {} ({} bytes) → {reply}\n        {}",
                q.method,
                q.target,
                q.body.len(),
                headers.join("\n        ")
            );
            if !q.body.is_empty() {
                let body = String::from_utf8_lossy(&q.body);
                let shown: String = body.chars().take(300).collect();
                let more = if body.chars().count() > 300 {
                    " …"
                } else {
                    ""
                };
                let _ = writeln!(out, "        body: {shown}{more}");
            }
        }
        let result = match &t.outcome {
            Outcome::Delivered => {
                delivered += 1;
                "delivered".to_string()
            }
            Outcome::Skipped => {
                skipped += 1;
                skipped_by.to_string()
            }
            Outcome::Failed(f) => {
                failed += 1;
                format!(
                    "FAILED ({}): {}",
                    if f.retryable {
                        "retryable"
                    } else {
                        "permanent"
                    },
                    f.reason
                )
            }
        };
        let _ = writeln!(out, "  => {result} in {} ms\n", t.elapsed.as_millis());
    }
    let _ = writeln!(
        out,
        "{} transactions: {delivered} delivered, {skipped} skipped, {failed} failed",
        r.txns.len()
    );
    out
}
