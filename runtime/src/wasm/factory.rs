//! `WasmFactory`: registers `wasm` and loads a component from `wasm:file=… key=value …`.
//! mailpush's own keys (the [`Sandbox`]) are taken off the line; every other key goes
//! to the component's `init`. Under `mailpush run` a big component not in the AOT cache
//! compiles in the background ([`BackgroundLoad`]).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use mailpush_core::{DriverFactory, DriverInit, InitError, Initialised};

use super::background::BackgroundLoad;
use super::driver::WasmDriver;
use super::engine::{CompileOutlook, Engines};
use super::log::DriverTag;
use super::sandbox::Sandbox;

/// Registers `wasm`.
#[derive(Default)]
pub struct WasmFactory {
    engines: OnceLock<Arc<Engines>>,
}

impl WasmFactory {
    /// A factory whose engines cache compiled components in `cache_dir` (`None`: no cache).
    pub fn with_cache_dir(cache_dir: Option<PathBuf>) -> Self {
        let f = WasmFactory::default();
        let _ = f.engines.set(Engines::shared(cache_dir));
        f
    }
}

/// The keys mailpush takes off a `wasm:` line beyond those every script driver has
/// ([`mailpush_config::dovecot24::MAILPUSH_KEYS`]: the delivery, sandbox and HTTP
/// keys); everything else goes to the component.
const WASM_KEYS: &[&str] = &["file", "init", "calls", "recycle_after"];

/// Warnings about what a line probably meant for the sandbox but gives to the component:
/// a key one typo from a sandbox key (`allow_host=`, `memmory=`: the component gets it,
/// the sandbox keeps its default), and a `url=` whose host `allow_hosts` does not allow
/// (every request to it would be refused); each with the key it is about.
pub(crate) fn unapplied_keys(
    component_args: &mailpush_core::DriverArgs,
    sandbox: &Sandbox,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (key, value) in component_args.iter() {
        // Close enough to be a typo, for keys as short as `url` and `fuel` (two edits
        // apart), or a key cut short (`timeout_ms`).
        let limit = if key.len() < 8 { 1 } else { 2 };
        let known = WASM_KEYS
            .iter()
            .chain(mailpush_config::dovecot24::MAILPUSH_KEYS.iter());
        let meant = known.copied().find(|k| {
            let d = mailpush_config::suggest::distance(key, k);
            (d > 0 && d <= limit) || (key.len() >= 6 && k.starts_with(key) && *k != key)
        });
        if let Some(meant) = meant {
            out.push((key.to_string(), format!(
                "`{key}` is not a mailpush key: it goes to the component as its own argument, and the sandbox keeps its default. Did you mean {meant}?"
            )));
        }
        if key == "url" {
            let host = value
                .parse::<http::Uri>()
                .ok()
                .and_then(|u| u.host().map(|h| h.trim_matches(['[', ']']).to_string()));
            if let Some(host) = host.filter(|h| !sandbox.http.host_allowed(h)) {
                out.push((key.to_string(), format!(
                    "url's host {host} is not in allow_hosts: the component's requests to it will be refused (grant it: allow_hosts={host})"
                )));
            }
        }
    }
    out
}

#[async_trait]
impl DriverFactory for WasmFactory {
    fn name(&self) -> &'static str {
        "wasm"
    }

    fn kind(&self) -> &'static str {
        "wasm"
    }

    async fn init(&self, init: &DriverInit) -> Result<Initialised, InitError> {
        let mut args = init.args.clone();
        let file = match args.take("file") {
            Some(f) if !f.is_empty() => f,
            _ => {
                return Err(InitError::of_arg(
                    "file",
                    "needs file=/path/driver.wasm (a component built for mailpush:driver)",
                ))
            }
        };
        let path = init.resolve_path(&file);
        let mut sandbox = Sandbox::from_args(&mut args)?;
        sandbox.http.endpoint_breaker = init.breaker.clone();
        let engines = self
            .engines
            .get_or_init(|| Engines::shared(Some(init.state_dir.join("wasm-cache"))))
            .clone();
        let mut warnings = sandbox.warnings();
        warnings.extend(unapplied_keys(&args, &sandbox));
        let warnings: Vec<String> = warnings.into_iter().map(|(_, w)| w).collect();
        let tag = Arc::new(DriverTag {
            number: init.number,
            name: init.name.clone(),
        });
        // The file, if reading it was part of telling whether the compile is long.
        let mut read = None;
        if init.background_load {
            let engine = engines
                .get(sandbox.limits.fuel.is_some())
                .map_err(|e| InitError::new(e.to_string()))?;
            // Reads and hashes the file (13–19 MB for JavaScript and Python): off the
            // async workers.
            let file = path.clone();
            let snapshot = sandbox
                .instance
                .snapshot
                .then(|| engine.snapshot_key(&args, sandbox.limits.memory));
            let outlook = tokio::task::spawn_blocking(move || {
                engine.slow_compile(&file, snapshot.as_deref())
            })
            .await
            .unwrap_or(CompileOutlook::Quick(None));
            match outlook {
                CompileOutlook::Slow(source) => {
                    let mut details = vec![
                        format!("file: {}", path.display()),
                        format!("sha256: {}", source.sha256),
                        "compiled: in the background (not in the AOT cache yet)".to_string(),
                    ];
                    details.extend(sandbox.describe());
                    let driver = BackgroundLoad::start(
                        tag,
                        &path,
                        source,
                        sandbox,
                        args,
                        engines,
                        init.metadata.clone(),
                    );
                    let mut out = Initialised::new(Arc::new(driver));
                    out.details = details;
                    out.warnings = warnings;
                    return Ok(out);
                }
                CompileOutlook::Quick(source) => read = source,
            }
        }
        let driver = WasmDriver::load_read(
            tag,
            &path,
            read,
            sandbox,
            args,
            &engines,
            init.metadata.clone(),
        )
        .await?;
        let details = driver.details();
        let mut out = Initialised::new(Arc::new(driver));
        out.details = details;
        out.warnings = warnings;
        Ok(out)
    }
}
