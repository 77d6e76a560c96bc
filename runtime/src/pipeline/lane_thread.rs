//! Where lanes run: each on its own thread with a single-threaded tokio runtime.
//!
//! A lane delivers one transaction after another. On the shared multi-threaded runtime
//! every step that hops between tasks — wasi:http spawns the request and the body
//! streams, connections run as tasks, socket readiness wakes whichever worker polls
//! the reactor — woke the other worker thread, and a sequential lane paid several
//! cross-thread wake-ups per transaction (about 70 µs per webhook request on two
//! cores; BENCHMARKS.md §3). On its own thread, everything a delivery spawns (including
//! the connections kept alive for its driver) stays on that thread; lanes still run in
//! parallel with each other and with ingest.

use std::future::Future;
use std::sync::Arc;

use parking_lot::Mutex;

use tokio::sync::oneshot;

/// A lane's thread: resolves when the future has finished (`Err` with the panic
/// message if it panicked, or if the thread could not run it).
pub struct LaneThread<T> {
    done: oneshot::Receiver<Result<T, String>>,
}

impl<T> LaneThread<T> {
    /// Waits for the future's output.
    pub async fn join(self) -> Result<T, String> {
        self.done
            .await
            .unwrap_or_else(|_| Err("the lane thread ended without a result".into()))
    }
}

/// Runs `fut` to completion on a new thread named `name` with its own single-threaded
/// runtime (timers and I/O enabled). When the future has finished, the runtime is
/// dropped — and with it every task the future left behind (idle kept-alive
/// connections) — before [`LaneThread::join`] returns. If no thread or runtime can be
/// made, the future is handed back with the error.
pub fn spawn<T, F>(name: String, fut: F) -> Result<LaneThread<T>, (std::io::Error, F)>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    let (tx, done) = oneshot::channel();
    // The thread takes the future out of the slot once its runtime is built; until
    // then it can be given back.
    let slot = Arc::new(Mutex::new(Some(fut)));
    let theirs = slot.clone();
    let (started_tx, started_rx) = std::sync::mpsc::sync_channel::<std::io::Result<()>>(1);
    let thread_name = name.clone();
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name(thread_name)
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                let _ = started_tx.send(Err(e));
                return;
            }
        };
        let Some(fut) = theirs.lock().take() else {
            return;
        };
        let _ = started_tx.send(Ok(()));
        let task = runtime.spawn(fut);
        let result = runtime.block_on(task);
        drop(runtime);
        let _ = tx.send(result.map_err(|e| {
            if e.is_panic() {
                super::hooks::panic_message(&e.into_panic())
            } else {
                e.to_string()
            }
        }));
    });
    let give_back = |e: std::io::Error| match slot.lock().take() {
        Some(fut) => Err((e, fut)),
        None => Ok(LaneThread {
            done: oneshot::channel().1,
        }),
    };
    if let Err(e) = spawned {
        return give_back(e);
    }
    // A thread start and a runtime build take well under a millisecond.
    match started_rx.recv() {
        Ok(Ok(())) => Ok(LaneThread { done }),
        Ok(Err(e)) => give_back(e),
        Err(_) => give_back(std::io::Error::other("the lane thread ended at start")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_on_its_own_thread_and_reports_panics() {
        let caller = std::thread::current().id();
        let t = spawn("t-ok".into(), async move {
            // Spawned tasks run on the lane's thread too.
            tokio::spawn(async { std::thread::current().id() })
                .await
                .unwrap()
        })
        .map_err(|(e, _)| e)
        .unwrap();
        let lane = t.join().await.unwrap();
        assert_ne!(lane, caller);
        let t = spawn("t-panic".into(), async { panic!("boom") })
            .map_err(|(e, _)| e)
            .unwrap();
        let r: Result<(), String> = t.join().await;
        assert_eq!(r, Err("boom".to_string()));
    }
}
