//! The time budget of one call into a script: a wall-clock deadline checked by an
//! instruction-count hook that a script cannot escape.
//!
//! - The hook is the *global* hook, so coroutines a script creates are counted too.
//! - Once tripped, the hook fires before every instruction of whichever thread it fires
//!   in and raises again: `while true do pcall(function() while true do end end) end`
//!   cannot catch its way out.
//! - Time spent in host calls (a blocking HTTP request) counts: the host caps its own
//!   waits at [`Budget::remaining`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlua::{HookTriggers, Lua, VmState};

/// The error raised into a script whose call ran out of time. The host finds it in an
/// error chain with [`is_deadline`].
#[derive(Debug, Clone, Copy)]
pub struct Deadline;

impl std::fmt::Display for Deadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("script exceeded its time budget (timeout_msecs)")
    }
}

impl std::error::Error for Deadline {}

/// Instructions between two checks of the clock.
pub const HOOK_EVERY: u32 = 1000;

/// One state's budget, shared with its hook.
#[derive(Debug)]
pub struct Budget {
    epoch: Instant,
    /// Nanoseconds since `epoch`; `u64::MAX`: no deadline.
    deadline_ns: AtomicU64,
    tripped: AtomicBool,
}

impl Budget {
    pub fn new() -> Arc<Self> {
        Arc::new(Budget {
            epoch: Instant::now(),
            deadline_ns: AtomicU64::new(u64::MAX),
            tripped: AtomicBool::new(false),
        })
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn expired(&self) -> bool {
        self.now_ns() >= self.deadline_ns.load(Ordering::Relaxed)
    }

    /// Time left in the current call (zero once expired).
    pub fn remaining(&self) -> Duration {
        let deadline = self.deadline_ns.load(Ordering::Relaxed);
        Duration::from_nanos(deadline.saturating_sub(self.now_ns()))
    }

    /// Whether the current call has run out of time.
    pub fn tripped(&self) -> bool {
        self.tripped.load(Ordering::Relaxed) || self.expired()
    }
}

fn install(lua: &Lua, budget: Arc<Budget>, every: u32) -> mlua::Result<()> {
    lua.set_global_hook(
        HookTriggers::new().every_nth_instruction(every),
        move |lua, _debug| {
            if budget.tripped.load(Ordering::Relaxed) || budget.expired() {
                budget.tripped.store(true, Ordering::Relaxed);
                // From now on before every instruction of this thread (each thread has its
                // own count), so nothing outside a pcall runs without raising again.
                install(lua, budget.clone(), 1)?;
                return Err(mlua::Error::external(Deadline));
            }
            Ok(VmState::Continue)
        },
    )
}

/// Arms the budget for one call: `limit` from now, the hook back to its cheap count.
pub fn arm(lua: &Lua, budget: &Arc<Budget>, limit: Duration) -> mlua::Result<()> {
    let deadline = budget
        .now_ns()
        .saturating_add(u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX));
    budget.deadline_ns.store(deadline, Ordering::Relaxed);
    budget.tripped.store(false, Ordering::Relaxed);
    install(lua, budget.clone(), HOOK_EVERY)
}

/// Whether an error (or its cause, through callbacks) is the budget running out.
pub fn is_deadline(e: &mlua::Error) -> bool {
    match e {
        mlua::Error::ExternalError(x) => x.downcast_ref::<Deadline>().is_some(),
        mlua::Error::CallbackError { cause, .. } => is_deadline(cause),
        mlua::Error::WithContext { cause, .. } => is_deadline(cause),
        _ => false,
    }
}

/// Whether an error (or its cause) is the memory limit.
pub fn is_memory(e: &mlua::Error) -> bool {
    match e {
        mlua::Error::MemoryError(_) => true,
        mlua::Error::CallbackError { cause, .. } => is_memory(cause),
        mlua::Error::WithContext { cause, .. } => is_memory(cause),
        _ => false,
    }
}
