//! Counters of one wasm driver (exported as `mailpush_wasm_*_total` metrics).

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one wasm driver.
#[derive(Debug, Default)]
pub struct WasmStats {
    pub traps: AtomicU64,
    pub timeouts: AtomicU64,
    pub memory_limit_hits: AtomicU64,
    pub fuel_used: AtomicU64,
    pub instances: AtomicU64,
    /// Log lines dropped (over `max_log_lines` or the driver's log rate).
    pub log_lines_dropped: AtomicU64,
}

impl WasmStats {
    /// The counters as `(name, value)` pairs ([`mailpush_core::Driver::counters`]).
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("wasm_traps", get(&self.traps)),
            ("wasm_timeouts", get(&self.timeouts)),
            ("wasm_memory_limit_hits", get(&self.memory_limit_hits)),
            ("wasm_fuel_used", get(&self.fuel_used)),
            ("wasm_instances", get(&self.instances)),
            ("wasm_log_lines_dropped", get(&self.log_lines_dropped)),
        ]
    }
}
