//! The time budget of one call into a script: a wall-clock deadline checked by an
//! instruction-count hook that a script cannot escape.
//!
//! - The hook is the *global* hook, so coroutines a script creates are counted too.
//! - Once tripped, a Lua hook on whichever thread it fires in raises before every
//!   instruction of that thread: `while true do pcall(function() while true do end end)
//!   end` cannot catch its way out.
//! - The error is raised by that Lua hook, not by the (Rust) count hook: an error the
//!   Rust hook raises leaves Lua's hooks switched off while the stack unwinds, so a
//!   `__close` handler run by the unwinding (a `<close>` variable, a generic `for`'s
//!   closing value) could loop forever. Raised from Lua, the hooks stay on and stop it
//!   too.
//! - Time spent in host calls (a blocking HTTP request) counts: the host caps its own
//!   waits at [`Budget::remaining`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlua::{Function, HookTriggers, Lua, VmState};

/// The message of the error raised into a script whose call ran out of time.
pub const DEADLINE_TEXT: &str = "script exceeded its time budget (timeout_msecs)";

/// The error raised into a script whose call ran out of time (where no [`Raiser`] is
/// set). The host finds it in an error chain with [`is_deadline`].
#[derive(Debug, Clone, Copy)]
pub struct Deadline;

impl std::fmt::Display for Deadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(DEADLINE_TEXT)
    }
}

/// How a tripped budget raises its error from Lua: the debug library's `sethook` (kept
/// from scripts) and a function raising [`DEADLINE_TEXT`]. Kept in the state's app data.
pub struct Raiser {
    sethook: Function,
    raise: Function,
}

impl Raiser {
    /// Sets the state's raiser up from `debug.sethook`.
    pub fn install(lua: &Lua, sethook: Function) -> mlua::Result<()> {
        // Once now, so the debug library's table of hooks exists before a state near its
        // memory limit needs it.
        sethook.call::<()>(())?;
        let raise = lua
            .load(format!(
                "local error = error return function() error({DEADLINE_TEXT:?}, 0) end"
            ))
            .set_name("=mailpush-budget")
            .eval()?;
        lua.set_app_data(Raiser { sethook, raise });
        Ok(())
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
    /// A host wait of the current call (HTTP, sleep) was cut short at the deadline: the
    /// call may return past it without having run the script past it.
    host_cut: AtomicBool,
}

impl Budget {
    pub fn new() -> Arc<Self> {
        Arc::new(Budget {
            epoch: Instant::now(),
            deadline_ns: AtomicU64::new(u64::MAX),
            tripped: AtomicBool::new(false),
            host_cut: AtomicBool::new(false),
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

    /// Notes that a host wait ended at the deadline (a request's time capped by it).
    pub fn host_wait_cut(&self) {
        self.host_cut.store(true, Ordering::Relaxed);
    }

    /// Whether the script itself ran past the deadline: a call that returned late
    /// without the hook noticing (a long C call it cannot interrupt, then a return),
    /// unless a host wait was cut at the deadline (that is the wait's own timeout).
    pub fn overran(&self) -> bool {
        self.tripped.load(Ordering::Relaxed)
            || (self.expired() && !self.host_cut.load(Ordering::Relaxed))
    }
}

fn install(lua: &Lua, budget: Arc<Budget>, every: u32) -> mlua::Result<()> {
    lua.set_global_hook(
        HookTriggers::new().every_nth_instruction(every),
        move |lua, _debug| {
            if budget.tripped.load(Ordering::Relaxed) || budget.expired() {
                budget.tripped.store(true, Ordering::Relaxed);
                // From now on a Lua hook raises before every instruction of this thread
                // (see the module's notes on why it is not raised here).
                if let Some(raiser) = lua.app_data_ref::<Raiser>() {
                    let set = raiser.sethook.call::<()>((
                        lua.current_thread(),
                        raiser.raise.clone(),
                        "",
                        1,
                    ));
                    if set.is_ok() {
                        return Ok(VmState::Continue);
                    }
                }
                // No Lua hook could be set (out of memory): raise from here, and before
                // every instruction of this thread from now on.
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
    budget.host_cut.store(false, Ordering::Relaxed);
    install(lua, budget.clone(), HOOK_EVERY)
}

/// Whether an error (or its cause, through callbacks) is the host's [`Deadline`]. The
/// deadline a Lua hook raises is text, which a script can raise too: the budget's own
/// [`Budget::tripped`] says whether the time ran out.
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
