//! Worker threads: each runs one Lua state at a time, off the async runtime, so a
//! script's blocking `submit()` or `socket.http.request` never holds up ingest or other
//! drivers. A worker keeps its state between transactions with `instance=reuse`, and
//! starts each one from a new state otherwise.

use std::sync::mpsc;
use std::sync::Arc;

use tokio::sync::oneshot;

use mailpush_core::{Failure, Transaction};

use super::host::Shared;
use super::sandbox::{ScriptState, Source};
use super::settings::{Instance, LuaSettings};

/// A Lua thread's stack: deep Lua → host → Lua call chains and long error chains need
/// more than a default thread's.
const STACK: usize = 8 << 20;

struct Job {
    txn: Arc<Transaction>,
    reply: oneshot::Sender<Result<(), Failure>>,
}

/// A handle on one worker thread; dropping it ends the thread (after `script_deinit`).
pub struct Worker {
    jobs: mpsc::Sender<Job>,
    thread: std::thread::JoinHandle<()>,
}

/// What every worker of a driver runs with.
pub struct Script {
    pub shared: Arc<Shared>,
    pub settings: Arc<LuaSettings>,
    pub source: Arc<Source>,
}

impl Worker {
    /// Starts a worker thread for `script`. `handle` is a runtime that lives as long as
    /// the driver (the process's, not a lane thread's): the worker's HTTP runs on it.
    pub fn spawn(
        script: Arc<Script>,
        number: usize,
        handle: tokio::runtime::Handle,
    ) -> std::io::Result<Worker> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let name = format!("lua-{}-{number}", script.shared.tag.number);
        let thread = std::thread::Builder::new()
            .name(name)
            .stack_size(STACK)
            .spawn(move || run(&script, &handle, &rx))?;
        Ok(Worker { jobs, thread })
    }

    /// Gives up on the worker (its call overran): the thread ends once the call
    /// returns. The handle tells when it has.
    pub fn abandon(self) -> std::thread::JoinHandle<()> {
        drop(self.jobs);
        self.thread
    }

    /// Delivers `txn` on this worker; `None` when the worker is gone.
    pub async fn deliver(&self, txn: Arc<Transaction>) -> Option<Result<(), Failure>> {
        let (reply, answer) = oneshot::channel();
        self.jobs.send(Job { txn, reply }).ok()?;
        answer.await.ok()
    }
}

fn run(script: &Script, handle: &tokio::runtime::Handle, jobs: &mpsc::Receiver<Job>) {
    // The outbound HTTP hooks spawn tasks (a refused request's body is drained in the
    // background): this thread acts in the runtime's context.
    let _runtime = handle.enter();
    let mut state: Option<ScriptState> = None;
    while let Ok(job) = jobs.recv() {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            deliver(script, handle, &mut state, &job.txn)
        }));
        let result = result.unwrap_or_else(|panic| {
            state = None;
            Err(Failure::permanent(format!(
                "lua driver panicked: {}",
                crate::pipeline::panic_message(&panic)
            )))
        });
        let _ = job.reply.send(result);
    }
    if let Some(s) = state {
        s.deinit();
    }
}

fn deliver(
    script: &Script,
    handle: &tokio::runtime::Handle,
    slot: &mut Option<ScriptState>,
    txn: &Arc<Transaction>,
) -> Result<(), Failure> {
    let mut state = match slot.take() {
        Some(s) => s,
        None => ScriptState::load(
            &script.shared,
            &script.settings,
            &script.source,
            handle.clone(),
        )
        .map_err(|e| {
            Failure::from_driver(&format!("lua: cannot load the script: {e}"), true, None)
        })?,
    };
    let (result, poisoned) = state.run(txn);
    match script.settings.instance {
        Instance::Reuse if !poisoned => *slot = Some(state),
        _ => state.deinit(),
    }
    result
}
