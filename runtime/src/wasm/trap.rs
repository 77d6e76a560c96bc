//! What a failed call into a driver means: a trap or host error turned into a
//! [`Failure`] whose reason names the cause (deadline, fuel, memory, stack, panic) —
//! without the wasm backtrace wasmtime attaches.

use std::sync::atomic::Ordering;

use mailpush_core::Failure;
use wasmtime::component::ResourceTableError;
use wasmtime::Trap;

use super::limits::Limits;
use super::state::HostState;
use super::stats::WasmStats;

/// A failure reason that may carry a driver's words: control characters escaped (it
/// is logged), cut ([`Failure::untrusted_reason`]).
pub fn reason(s: String) -> String {
    Failure::untrusted_reason(&s)
}

/// A byte count as the config writes it (`64K`, `32M`).
fn size(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{}M", bytes >> 20)
    } else if bytes >= 1 << 20 {
        format!("{:.1}M", bytes as f64 / f64::from(1 << 20))
    } else {
        format!("{}K", bytes.div_ceil(1 << 10))
    }
}

/// What a host error comes down to: its root cause (a WASI exit, a host function's
/// error), without wasmtime's wasm-backtrace context, which is logged at debug level.
fn cause(err: &wasmtime::Error) -> String {
    tracing::debug!("driver error in full: {err:?}");
    let root = err.root_cause().to_string();
    root.lines().next().unwrap_or_default().to_string()
}

/// Turns a trap or host error of a call into a failure with its reason, counting it.
/// What the guest last wrote to stderr (or stdout) comes first: an uncaught exception's
/// message, a panic, before the trap it ended in.
pub fn classify(
    state: &HostState,
    err: wasmtime::Error,
    limits: &Limits,
    stats: &WasmStats,
) -> Failure {
    let mut failure = explain(state, err, limits, stats);
    if let Some(said) = state.output.lock().take_tail() {
        failure.reason = reason(format!("{said} (then: {})", failure.reason));
    }
    failure
}

fn explain(state: &HostState, err: wasmtime::Error, limits: &Limits, stats: &WasmStats) -> Failure {
    let trap = err.downcast_ref::<Trap>().copied();
    let failure = if state.clock.expired || trap == Some(Trap::Interrupt) {
        stats.timeouts.fetch_add(1, Ordering::Relaxed);
        Failure::retryable(format!(
            "deadline exceeded: the driver ran longer than timeout_msecs={}",
            limits.timeout.as_millis()
        ))
    } else if trap == Some(Trap::OutOfFuel) {
        Failure::permanent(format!(
            "fuel exhausted: the call used more than fuel={}",
            limits.fuel.unwrap_or(0)
        ))
    } else if let Some(initial) = state.limiter.initial_over {
        stats.memory_limit_hits.fetch_add(1, Ordering::Relaxed);
        Failure::permanent(format!(
            "the component's initial memory ({}) is larger than memory={}: give the driver at least memory={}M (JavaScript and Python components start with tens of MiB)",
            size(initial),
            size(limits.memory),
            initial.div_ceil(1 << 20).next_power_of_two()
        ))
    } else if state.limiter.hit {
        stats.memory_limit_hits.fetch_add(1, Ordering::Relaxed);
        Failure::permanent(format!(
            "memory limit reached: the driver tried to grow its memory past memory={}M ({})",
            limits.memory >> 20,
            trap.map(|t| t.to_string()).unwrap_or_else(|| "trap".into())
        ))
    } else if trap == Some(Trap::StackOverflow) {
        Failure::permanent("stack overflow (unbounded recursion?)".to_string())
    } else if trap == Some(Trap::MemoryOutOfBounds) {
        // Rust and C guests keep their stack in linear memory: overflowing it shows up
        // as an out-of-bounds access rather than a native stack overflow.
        Failure::permanent(
            "out-of-bounds memory access, typically a stack overflow (unbounded recursion) in the driver".to_string(),
        )
    } else if let (Some(Trap::UnreachableCodeReached), Some(panic)) = (trap, &state.panic) {
        // A Rust guest's panic ends in `unreachable` after its hook logged the message
        // (the driver's own words: escaped).
        Failure::permanent(reason(format!("the driver panicked: {panic}")))
    } else if err.chain().any(|e| {
        matches!(
            e.downcast_ref::<ResourceTableError>(),
            Some(ResourceTableError::Full)
        )
    }) {
        Failure::permanent(format!(
            "host resources exhausted: the driver held more than {} at once (HTTP fields, requests, bodies, streams, pollables; host_memory={}M)",
            limits.max_resources(),
            limits.host_memory >> 20
        ))
    } else if let Some(t) = trap {
        // The trap, without the wasm backtrace wasmtime attaches (addresses only).
        Failure::permanent(reason(format!("trap: {t}")))
    } else {
        Failure::permanent(reason(format!("driver error: {}", cause(&err))))
    };
    stats.traps.fetch_add(1, Ordering::Relaxed);
    failure
}
