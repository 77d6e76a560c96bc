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
        let warnings = sandbox.warnings();
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
