//! `WasmFactory`: registers `wasm` and loads a component from `wasm:file=… key=value …`.
//! mailpush's own keys (the [`Sandbox`]) are taken off the line; every other key goes
//! to the component's `init`.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use mailpush_core::{DriverFactory, DriverInit, InitError, Initialised};

use super::driver::WasmDriver;
use super::engine::Engines;
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
                return Err(InitError(
                    "needs file=/path/driver.wasm (a component built for mailpush:driver)".into(),
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
        let driver =
            WasmDriver::load(tag, &path, sandbox, args, &engines, init.metadata.clone()).await?;
        let details = driver.details();
        let mut out = Initialised::new(Arc::new(driver));
        out.details = details;
        out.warnings = warnings;
        Ok(out)
    }
}
