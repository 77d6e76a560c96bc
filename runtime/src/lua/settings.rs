//! The keys of a `lua:` driver line (or a 2.4 `push_notification NAME { driver = lua … }`
//! block): the script, which Dovecot's conventions it expects, and its sandbox.
//!
//! - `file=PATH` — the script (relative to the config file's folder);
//! - `dovecot=2.3|2.4` — 2.3 calls `script_init()` and expects 0 back, offers
//!   `user:plugin_getenv`; 2.4 calls `script_init(settings)` with the `lua_settings.*`
//!   keys (a 2.4 block sets this itself);
//! - `instance=fresh|reuse` — a new Lua state per transaction (default), or one kept per
//!   worker thread (globals survive between transactions, `script_init` runs once per
//!   state);
//! - `memory=32M` — the state's memory;
//! - `timeout_msecs=5000` — wall-clock time of one hook call, HTTP waits included;
//! - `max_txn_msecs=30000` — wall-clock time of a whole transaction;
//! - `init_timeout_msecs=5000` — loading the script and running `script_init`;
//! - `http_failures=retry|ignore` — whether an HTTP request of the script that failed
//!   (connection error, timeout, 5xx, 429) fails the transaction so that it is retried;
//! - `script_errors=retry|ignore` — whether a hook that raises an error fails the
//!   transaction so that it is retried, or is logged and passed over as Dovecot does;
//! - the outbound-HTTP keys of wasm drivers (`allow_hosts`, `allow_private`,
//!   `max_connections`, `connect_timeout_msecs`, `first_byte_timeout_msecs`,
//!   `max_egress_bytes`) and their log keys (`max_log_lines`, `log_lines_per_sec`,
//!   `log_burst`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use mailpush_core::{DriverArgs, DriverInit, InitError};

use crate::wasm::http::settings::HttpSettings;
use crate::wasm::log::LogSettings;

/// Which Dovecot's conventions the script is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DovecotVersion {
    V23,
    V24,
}

impl DovecotVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            DovecotVersion::V23 => "2.3",
            DovecotVersion::V24 => "2.4",
        }
    }
}

/// Whether Lua states live for one transaction or for many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instance {
    Fresh,
    Reuse,
}

/// What a failed HTTP request of the script does to its transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpFailures {
    Retry,
    Ignore,
}

/// What a hook that raises an error does to its transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptErrors {
    /// The transaction fails and is retried (the default).
    Retry,
    /// As in Dovecot: the error is logged, the remaining event hooks and `end_txn` run
    /// (a failed `begin_txn` skips the transaction), and the transaction is delivered.
    Ignore,
}

/// The settings of one `lua` driver.
#[derive(Debug, Clone)]
pub struct LuaSettings {
    pub file: PathBuf,
    pub dovecot: DovecotVersion,
    pub instance: Instance,
    pub memory: usize,
    pub timeout: Duration,
    pub max_txn: Duration,
    pub init_timeout: Duration,
    pub http_failures: HttpFailures,
    pub script_errors: ScriptErrors,
    /// 2.4's `lua_settings { }`: handed to `script_init(settings)`.
    pub lua_settings: BTreeMap<String, String>,
    pub http: HttpSettings,
    pub log: LogSettings,
}

/// The smallest and largest `memory=`.
const MEMORY_RANGE: std::ops::RangeInclusive<u64> = (1 << 20)..=(1 << 30);

impl LuaSettings {
    /// Takes the driver's keys off its line; what is left is an error for the caller.
    pub fn from_init(init: &DriverInit, args: &mut DriverArgs) -> Result<Self, InitError> {
        let file = args
            .take("file")
            .filter(|f| !f.trim().is_empty())
            .ok_or_else(|| {
                InitError::of_arg(
                    "file",
                    "file=PATH is required: the Dovecot push-notification Lua script, e.g. \
                 `lua:file=/etc/dovecot/push.lua`",
                )
            })?;
        let dovecot = match args.take("dovecot").as_deref() {
            None | Some("2.3") => DovecotVersion::V23,
            Some("2.4") => DovecotVersion::V24,
            Some(other) => {
                return Err(InitError::of_arg(
                    "dovecot",
                    format!(
                    "dovecot={other}: expected 2.3 (script_init() returning 0, user:plugin_getenv) \
                     or 2.4 (script_init(settings))"
                ),
                ))
            }
        };
        let instance = match args.take("instance").as_deref() {
            None | Some("fresh") => Instance::Fresh,
            Some("reuse") => Instance::Reuse,
            Some(other) => {
                return Err(InitError::of_arg(
                    "instance",
                    format!(
                    "instance={other}: expected fresh (a new Lua state per transaction) or reuse \
                     (one state per worker, kept between transactions)"
                ),
                ))
            }
        };
        let http_failures = match args.take("http_failures").as_deref() {
            None | Some("retry") => HttpFailures::Retry,
            Some("ignore") => HttpFailures::Ignore,
            Some(other) => {
                return Err(InitError::of_arg(
                    "http_failures",
                    format!(
                    "http_failures={other}: expected retry (a failed request of the script fails \
                     the transaction, which is retried) or ignore (as in Dovecot)"
                ),
                ))
            }
        };
        let script_errors = match args.take("script_errors").as_deref() {
            None | Some("retry") => ScriptErrors::Retry,
            Some("ignore") => ScriptErrors::Ignore,
            Some(other) => {
                return Err(InitError::of_arg(
                    "script_errors",
                    format!(
                        "script_errors={other}: expected retry (a hook raising an error fails the \
                         transaction, which is retried) or ignore (logged and passed over, as in \
                         Dovecot)"
                    ),
                ))
            }
        };
        let memory = args
            .take_size(
                "memory",
                MEMORY_RANGE,
                "a size between 1M and 1G, e.g. memory=32M",
            )?
            .map_or(32 << 20, |m| m as usize);
        let positive = |d: Option<Duration>, key: &str, default: u64| match d {
            Some(d) if d.is_zero() => {
                Err(InitError::of_arg(key, format!("{key} must be at least 1")))
            }
            Some(d) => Ok(d),
            None => Ok(Duration::from_millis(default)),
        };
        let timeout = positive(
            args.take_msecs("timeout_msecs", "5000")?,
            "timeout_msecs",
            5000,
        )?;
        let max_txn = positive(
            args.take_msecs("max_txn_msecs", "30000")?,
            "max_txn_msecs",
            30_000,
        )?;
        let init_timeout = positive(
            args.take_msecs("init_timeout_msecs", "5000")?,
            "init_timeout_msecs",
            5000,
        )?;
        let mut lua_settings = BTreeMap::new();
        let keys: Vec<String> = args
            .iter()
            .filter(|(k, _)| k.starts_with("lua_settings."))
            .map(|(k, _)| k.to_string())
            .collect();
        for key in keys {
            if let Some(v) = args.take(&key) {
                lua_settings.insert(key["lua_settings.".len()..].to_string(), v);
            }
        }
        let http = HttpSettings::from_args(args)?;
        let log = LogSettings::from_args(args)?;
        Ok(LuaSettings {
            file: init.resolve_path(&file),
            dovecot,
            instance,
            memory,
            timeout,
            max_txn,
            init_timeout,
            http_failures,
            script_errors,
            lua_settings,
            http,
            log,
        })
    }

    /// The line for `mailpush check`.
    pub fn describe(&self) -> String {
        format!(
            "lua: dovecot={} instance={} memory={} timeout_msecs={} max_txn_msecs={} http_failures={} script_errors={}",
            self.dovecot.as_str(),
            match self.instance {
                Instance::Fresh => "fresh",
                Instance::Reuse => "reuse",
            },
            self.memory,
            self.timeout.as_millis(),
            self.max_txn.as_millis(),
            match self.http_failures {
                HttpFailures::Retry => "retry",
                HttpFailures::Ignore => "ignore",
            },
            match self.script_errors {
                ScriptErrors::Retry => "retry",
                ScriptErrors::Ignore => "ignore",
            }
        )
    }
}
