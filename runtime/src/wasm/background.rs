//! `BackgroundLoad`: a wasm driver that finishes loading after `mailpush run` has opened
//! ingest. A big component not in the AOT cache compiles for many seconds (JavaScript
//! and Python ones: 13–19 MB); meanwhile the runtime serves, and the driver's
//! transactions wait in its queue and the spool. Once loaded, every call goes to the
//! [`WasmDriver`]. A load that fails is logged with the driver's config line and shown by
//! `mailpush status`; its transactions are retried (kept, then dead-lettered when they
//! expire) until a fixed driver is reloaded.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use futures::FutureExt;
use mailpush_core::{
    Begin, Driver, DriverArgs, EndpointCircuit, Failure, Loading, MetadataLookup, Transaction,
};
use tokio::sync::watch;

use super::driver::WasmDriver;
use super::engine::{Engines, Source};
use super::log::DriverTag;
use super::sandbox::Sandbox;
use crate::pipeline::panic_message;

#[derive(Clone)]
enum LoadState {
    Loading,
    Ready(Arc<WasmDriver>),
    Failed(String),
}

/// A wasm driver whose component compiles in the background.
pub struct BackgroundLoad {
    path: PathBuf,
    started: Instant,
    state: watch::Receiver<LoadState>,
    task: tokio::task::AbortHandle,
    /// Set when the runtime stops the driver ([`Driver::stopping`]): a transaction
    /// waiting for the load gives up.
    stop: watch::Sender<bool>,
}

impl BackgroundLoad {
    /// Starts loading the component on the current runtime ([`WasmDriver::load`], which
    /// compiles and makes the snapshot on a blocking thread).
    pub fn start(
        tag: Arc<DriverTag>,
        path: &Path,
        source: Source,
        sandbox: Sandbox,
        args: DriverArgs,
        engines: Arc<Engines>,
        metadata: Arc<dyn MetadataLookup>,
    ) -> BackgroundLoad {
        let (tx, rx) = watch::channel(LoadState::Loading);
        let started = Instant::now();
        let file = path.to_path_buf();
        tracing::info!(
            driver = tag.number,
            name = %tag.name,
            "compiling {} in the background (not in the AOT cache yet); its transactions wait until it is ready (`mailpush check` before deploying warms the cache)",
            file.display()
        );
        let task = tokio::spawn(async move {
            let load = WasmDriver::load_read(
                tag.clone(),
                &file,
                Some(source),
                sandbox,
                args,
                &engines,
                metadata,
            );
            let state = match std::panic::AssertUnwindSafe(load).catch_unwind().await {
                Ok(Ok(driver)) => {
                    tracing::info!(
                        driver = tag.number,
                        name = %tag.name,
                        "compiled and loaded {} in {:.1} s; delivering its transactions",
                        file.display(),
                        started.elapsed().as_secs_f64()
                    );
                    LoadState::Ready(Arc::new(driver))
                }
                Ok(Err(e)) => LoadState::Failed(e.message),
                Err(panic) => {
                    LoadState::Failed(format!("panicked while loading: {}", panic_message(&panic)))
                }
            };
            if let LoadState::Failed(why) = &state {
                tracing::error!(
                    driver = tag.number,
                    name = %tag.name,
                    "driver {} ({}) failed to load in the background: {why}; its transactions are kept and retried until they expire: fix the driver and `mailpush reload`",
                    tag.number,
                    tag.name
                );
            }
            let _ = tx.send(state);
        })
        .abort_handle();
        BackgroundLoad {
            path: path.to_path_buf(),
            started,
            state: rx,
            task,
            stop: watch::channel(false).0,
        }
    }

    /// The loaded driver, once the load has finished.
    fn ready(&self) -> Option<Arc<WasmDriver>> {
        match &*self.state.borrow() {
            LoadState::Ready(d) => Some(d.clone()),
            _ => None,
        }
    }

    /// Waits for the load to finish: the driver, or the failure every transaction gets
    /// (also when the runtime stops the driver first).
    async fn loaded(&self) -> Result<Arc<WasmDriver>, Failure> {
        let mut state = self.state.clone();
        let mut stop = self.stop.subscribe();
        let done = tokio::select! {
            done = state.wait_for(|s| !matches!(s, LoadState::Loading)) => done.map(|s| s.clone()),
            _ = stop.wait_for(|s| *s) => Ok(LoadState::Loading),
        };
        match done {
            Ok(LoadState::Ready(d)) => Ok(d),
            Ok(LoadState::Failed(why)) => Err(Failure::retryable(format!(
                "the driver failed to load: {why}"
            ))),
            Ok(LoadState::Loading) | Err(_) => Err(Failure::retryable(
                "the driver was stopped before it finished loading",
            )),
        }
    }
}

#[async_trait]
impl Driver for BackgroundLoad {
    async fn begin_txn(&self, txn: &Arc<Transaction>) -> Result<Begin, Failure> {
        self.loaded().await?.begin_txn(txn).await
    }

    fn stopping(&self) {
        self.stop.send_replace(true);
        self.task.abort();
    }

    async fn deinit(&self) {
        self.task.abort();
        if let Some(d) = self.ready() {
            d.deinit().await;
        }
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        self.ready().map(|d| d.counters()).unwrap_or_default()
    }

    fn endpoint_circuits(&self) -> Vec<EndpointCircuit> {
        self.ready()
            .map(|d| d.endpoint_circuits())
            .unwrap_or_default()
    }

    fn loading(&self) -> Option<Loading> {
        match &*self.state.borrow() {
            LoadState::Loading => Some(Loading::InProgress(format!(
                "compiling {} in the background ({} s so far); its transactions wait",
                self.path.display(),
                self.started.elapsed().as_secs()
            ))),
            LoadState::Failed(why) => Some(Loading::Failed(why.clone())),
            LoadState::Ready(_) => None,
        }
    }
}
