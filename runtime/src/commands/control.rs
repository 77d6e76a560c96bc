//! `mailpush status` and `mailpush reload`: a client of the running instance's control
//! API at `listen`, speaking the typed contract ([`crate::status::Status`],
//! [`crate::pipeline::Reconfigured`]).

use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::pipeline::Reconfigured;
use crate::status::Status;
use mailpush_config::Config;

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot read the ingest token: {0}")]
    Token(String),
    /// Its cause follows in the error chain (printed once, by the binary's `{:#}`).
    #[error("cannot reach mailpush at {url}: is `mailpush run` running with this config?")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// Nothing answers at `listen`, yet a process holds the config's state_dir: most
    /// likely `listen` was edited since that instance started.
    #[error("cannot reach mailpush at {url}, but a mailpush (pid {pid}) holds this config's state_dir: if `listen` changed since it started, it still listens at its old address — reload it with `kill -HUP {pid}` (or `systemctl reload mailpush`); a new listen address takes a restart")]
    ElsewhereRunning {
        url: String,
        pid: u32,
        #[source]
        source: reqwest::Error,
    },
    /// The instance answered with an error (and, for a refused reload, the config's
    /// errors).
    #[error("mailpush answered {status}: {message}")]
    Refused {
        status: u16,
        message: String,
        errors: Vec<String>,
    },
    #[error("unexpected answer from mailpush: {0}")]
    Answer(String),
    /// No answer in time: the request may still be running there (a reload loading a
    /// big component, or waiting for deliveries in flight).
    #[error("no answer from mailpush at {url} within {secs} s: it may still be working on it (a reload goes on: see its log and `mailpush status`)")]
    Pending { url: String, secs: u64 },
}

/// An error body of the control API.
#[derive(Debug, Default, serde::Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    errors: Vec<String>,
}

async fn request<T: DeserializeOwned>(
    config: &Config,
    method: reqwest::Method,
    path: &str,
) -> Result<T, ControlError> {
    let url = format!("http://{}{path}", config.settings.listen);
    let timeout = Duration::from_secs(60);
    // Never through a proxy from the environment: the request carries the token.
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .no_proxy()
        .build()
        .map_err(|e| ControlError::Answer(e.to_string()))?;
    let mut req = client.request(method, &url);
    if let Some(p) = &config.settings.ingest_token_file {
        let token =
            crate::daemon::read_token(p).map_err(|e| ControlError::Token(format!("{e:#}")))?;
        req = req.bearer_auth(String::from_utf8_lossy(&token));
    }
    let unreachable = |source: reqwest::Error| {
        if source.is_timeout() {
            ControlError::Pending {
                url: url.clone(),
                secs: timeout.as_secs(),
            }
        } else {
            match crate::spool::lock::DeliveryLock::holder(&config.settings.state_dir) {
                Some(pid) => ControlError::ElsewhereRunning {
                    url: url.clone(),
                    pid,
                    source,
                },
                None => ControlError::Unreachable {
                    url: url.clone(),
                    source,
                },
            }
        }
    };
    let resp = req.send().await.map_err(unreachable)?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(unreachable)?;
    if !status.is_success() {
        let e: ErrorBody = serde_json::from_slice(&body).unwrap_or_default();
        let mut message = e.error;
        if message.is_empty() {
            // Not mailpush's JSON (something else answers on that address): what it said.
            let text: String = String::from_utf8_lossy(&body).chars().take(200).collect();
            message = match text.trim() {
                "" => status
                    .canonical_reason()
                    .unwrap_or("no reason given")
                    .to_string(),
                t => t.to_string(),
            };
        }
        if status == reqwest::StatusCode::UNAUTHORIZED {
            // The instance reads its token at start: a changed token file (or one set
            // since) is not its token until it restarts.
            message.push_str(if config.settings.ingest_token_file.is_some() {
                "; the running instance read its token at start: if ingest_token_file or its contents changed since, restart it (`systemctl restart mailpush`) — a reload does not change the token"
            } else {
                "; the running instance wants a token: set ingest_token_file as its config does"
            });
        }
        return Err(ControlError::Refused {
            status: status.as_u16(),
            message,
            errors: e.errors,
        });
    }
    serde_json::from_slice(&body).map_err(|e| ControlError::Answer(e.to_string()))
}

/// The running instance's status.
pub async fn status(config: &Config) -> Result<Status, ControlError> {
    request(config, reqwest::Method::GET, "/v1/status").await
}

/// Asks the running instance to re-read its config and driver files (like SIGHUP).
pub async fn reload(config: &Config) -> Result<Reconfigured, ControlError> {
    request(config, reqwest::Method::POST, "/v1/reload").await
}
