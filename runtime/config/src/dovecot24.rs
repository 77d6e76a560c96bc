//! Dovecot 2.4's push-notification configuration (dovecot-lua-and-2.4.md §1), read into
//! the same [`DriverSetting`]s as Dovecot 2.3's `push_notification_driver` lines, with the
//! arguments under mailpush's 2.3 names, so drivers need no change:
//!
//! - `push_notification NAME { … }` blocks, numbered 1, 2, 3, … in file order (blocks of
//!   the same name are one driver); the driver is `driver = X` (or
//!   `push_notification_driver = X`), else the block's NAME;
//! - a bare key inside a block resolves as Dovecot 2.4 resolves it:
//!   `push_notification_<NAME>_<key>`, then `push_notification_<key>`, then `<key>`;
//! - `push_notification_ox { … }` (and `push_notification_ox/KEY = VALUE`): defaults for
//!   every ox block;
//! - the mapping: `ox_url` → `url`, `ox_cache_ttl` → `cache_lifetime`,
//!   `ox_user_from_metadata = yes` → flag `user_from_metadata`,
//!   `http_client_request_max_attempts = N` → `max_retries = N-1`,
//!   `http_client_request_timeout` → `timeout_msecs`, `ssl_client_ca_file` →
//!   `ssl_ca_file`; `lua_file` → `file`, `lua_settings { k = v }` → `lua_settings.k = v`,
//!   and `dovecot = 2.4` for every lua block; other drivers get their keys unchanged.
//!
//! Also the messages that tell which Dovecot version a misplaced line is written for.

use std::collections::BTreeMap;

use mailpush_core::DriverArgs;

use super::error::{ConfigError, ConfigWarning, Location};
use super::numbering::{ArgLine, DovecotSyntax, DriverSetting};
use super::suggest::nearest;
use super::syntax::{RawBlock, RawConfig, RawEntry};

/// mailpush's own per-driver keys: the delivery policy (`retry`, `retry_max_age`,
/// `hold_max`, `breaker_*`, `concurrency`) and the sandbox and HTTP keys of script
/// drivers. They pass through unchanged in ox, dlog and lua blocks too.
pub const MAILPUSH_KEYS: [&str; 25] = [
    "retry",
    "retry_max_age",
    "hold_max",
    "breaker_ratio",
    "breaker_window",
    "breaker_min",
    "breaker_open",
    "concurrency",
    "instance",
    "memory",
    "host_memory",
    "fuel",
    "timeout_msecs",
    "max_event_bytes",
    "max_txn_msecs",
    "init_timeout_msecs",
    "max_log_lines",
    "log_lines_per_sec",
    "log_burst",
    "allow_hosts",
    "allow_private",
    "max_connections",
    "connect_timeout_msecs",
    "first_byte_timeout_msecs",
    "max_egress_bytes",
];

/// mailpush's keys of the lua driver alone (what failures of the script do).
const LUA_OWN_KEYS: [&str; 2] = ["http_failures", "script_errors"];

/// The error for `lua_settings {` inside `plugin { }`.
pub const LUA_SETTINGS_IN_PLUGIN: &str = "`lua_settings { }` is Dovecot 2.4 syntax, which has no plugin { } section. \
     For Dovecot 2.3 put the script's settings in plugin { } directly (KEY = VALUE, read with user:plugin_getenv()); \
     for Dovecot 2.4 put them in the driver's block: `push_notification lua { lua_file = /path/script.lua  lua_settings { KEY = VALUE } }`";

/// Dovecot 2.4's time syntax (`str_parse_get_interval_msecs`), in milliseconds: a number
/// and a unit, the unit a case-insensitive prefix of `secs`/`seconds`, `mins`/`minutes`
/// (so a bare `m` is minutes), `msecs`/`mseconds`/`millisecs`/`milliseconds`, `hours`,
/// `days` or `weeks`; spaces may separate them; `0` needs no unit. The error texts are
/// Dovecot's.
pub fn parse_time_msecs(s: &str) -> Result<u64, String> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let num: u64 = s[..digits]
        .parse()
        .map_err(|_| format!("Invalid time interval: {s}"))?;
    let unit = s[digits..].trim_start_matches(' ');
    if unit.is_empty() && num != 0 {
        return Err(format!(
            "Time interval '{s}' is missing units (add e.g. 's' for seconds)"
        ));
    }
    let prefix_of = |word: &str| {
        !unit.is_empty()
            && unit.len() <= word.len()
            && word[..unit.len()].eq_ignore_ascii_case(unit)
    };
    let multiply: u64 = if unit.is_empty() {
        1
    } else if prefix_of("secs") || prefix_of("seconds") {
        1000
    } else if prefix_of("mins") || prefix_of("minutes") {
        60_000
    } else if prefix_of("msecs")
        || prefix_of("mseconds")
        || prefix_of("millisecs")
        || prefix_of("milliseconds")
    {
        1
    } else if prefix_of("hours") {
        3_600_000
    } else if prefix_of("days") {
        86_400_000
    } else if prefix_of("weeks") {
        7 * 86_400_000
    } else {
        return Err(format!("Invalid time interval: {s}"));
    };
    if num > u64::from(u32::MAX) / multiply {
        return Err(format!("Time interval is too large: {s}"));
    }
    Ok(num * multiply)
}

/// Dovecot 2.4's booleans (`str_parse_get_bool`): `yes`, `y` (any case) or `1`; `no`
/// (any case). The error text is Dovecot's.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    if s.eq_ignore_ascii_case("yes") || s.eq_ignore_ascii_case("y") || s == "1" {
        Ok(true)
    } else if s.eq_ignore_ascii_case("no") {
        Ok(false)
    } else {
        Err(format!("Invalid boolean value: {s} (use yes or no)"))
    }
}

/// Dovecot's unsigned numbers: decimal digits only, within u32.
fn parse_uint(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The Dovecot 2.4 lines equivalent to a 2.3 driver value's arguments (`ox:url=U
/// max_retries=2` → `ox_url = U`, `http_client_request_max_attempts = 3`), for messages.
pub fn v24_lines(driver: &str, raw_args: &str) -> Vec<String> {
    let kind = Kind::of(driver);
    DriverArgs::parse(raw_args)
        .iter()
        .map(|(k, v)| match (kind, k) {
            (Kind::Ox, "url") => format!("ox_url = {v}"),
            (Kind::Ox, "cache_lifetime") => format!("ox_cache_ttl = {v}"),
            (Kind::Ox, "user_from_metadata") => "ox_user_from_metadata = yes".to_string(),
            (Kind::Ox, "max_retries") => match parse_uint(v) {
                Some(n) => format!("http_client_request_max_attempts = {}", u64::from(n) + 1),
                None => format!("http_client_request_max_attempts = {v} + 1"),
            },
            (Kind::Ox, "timeout_msecs") => format!("http_client_request_timeout = {v}ms"),
            (Kind::Ox, "ssl_ca_file") => format!("ssl_client_ca_file = {v}"),
            (Kind::Lua, "file") => format!("lua_file = {v}"),
            (_, k) if v.is_empty() => format!("{k} = yes"),
            (_, k) => format!("{k} = {v}"),
        })
        .collect()
}

/// The error for a Dovecot 2.4 setting found in `plugin { }` (which 2.4 no longer has):
/// what to write for 2.3 and for 2.4. `None` for settings that belong there.
pub fn v24_key_in_plugin(key: &str, value: &str) -> Option<String> {
    let head = format!(
        "{key} is Dovecot 2.4 syntax, which has no plugin {{ }} section (Dovecot 2.4 settings go in a `push_notification NAME {{ }}` block outside plugin {{ }})"
    );
    let (v23, v24) = match key {
        "push_notification_ox_url" => (
            format!("`push_notification_driver = ox:url={value}`"),
            format!("`push_notification ox {{ ox_url = {value} }}`"),
        ),
        "push_notification_ox_cache_ttl" => (
            format!("`push_notification_driver = ox:url=… cache_lifetime={value}`"),
            format!("`push_notification ox {{ ox_url = …  ox_cache_ttl = {value} }}`"),
        ),
        "push_notification_ox_user_from_metadata" => (
            "`push_notification_driver = ox:url=… user_from_metadata`".to_string(),
            format!("`push_notification ox {{ ox_url = …  ox_user_from_metadata = {value} }}`"),
        ),
        "lua_file" | "push_notification_lua_file" => (
            format!(
                "`push_notification_driver = lua:file={value}` (or `push_notification_lua_script_file = {value}`)"
            ),
            format!("`push_notification lua {{ lua_file = {value} }}`"),
        ),
        "lua_settings" | "push_notification_lua_settings" => {
            return Some(LUA_SETTINGS_IN_PLUGIN.to_string())
        }
        k if k.starts_with("lua_settings/") => return Some(LUA_SETTINGS_IN_PLUGIN.to_string()),
        "http_client_request_max_attempts" => (
            match parse_uint(value).filter(|n| *n >= 1) {
                Some(n) => format!("max_retries={} on the `ox:` line", n - 1),
                None => "max_retries=N-1 on the `ox:` line".to_string(),
            },
            format!("`push_notification ox {{ ox_url = …  {key} = {value} }}`"),
        ),
        "http_client_request_timeout" => (
            match parse_time_msecs(value) {
                Ok(ms) => format!("timeout_msecs={ms} on the `ox:` line"),
                Err(_) => "timeout_msecs=MILLISECONDS on the `ox:` line".to_string(),
            },
            format!("`push_notification ox {{ ox_url = …  {key} = {value} }}`"),
        ),
        "push_notification_name" => (
            "numbered `push_notification_driver`, `push_notification_driver2`, … lines"
                .to_string(),
            format!("`push_notification {value} {{ … }}` (the block's name)"),
        ),
        _ => return None,
    };
    let note = if key == "push_notification_lua_file" {
        " (Dovecot 2.4's documentation names it push_notification_lua_file; Dovecot itself reads lua_file)"
    } else {
        ""
    };
    Some(format!(
        "{head}{note}. For Dovecot 2.3 write {v23}; for Dovecot 2.4: {v24}"
    ))
}

/// The error for a `push_notification_…` setting outside `plugin { }` and outside
/// Dovecot 2.4's blocks.
pub fn push_key_outside_blocks(key: &str, in_block: bool) -> String {
    let v24 = [
        "push_notification_ox_url",
        "push_notification_ox_cache_ttl",
        "push_notification_ox_user_from_metadata",
        "push_notification_name",
    ];
    if v24.contains(&key) {
        return format!(
            "{key} is Dovecot 2.4 syntax: mailpush reads it inside a `push_notification NAME {{ }}` block, or in `push_notification_ox {{ }}` for every ox block"
        );
    }
    let as_in = if in_block { "" } else { " (as in Dovecot)" };
    if key.starts_with("push_notification_driver") || key.starts_with("push_notification_backend") {
        format!(
            "{key} must be inside a `plugin {{ }}` block{as_in}: it is Dovecot 2.3 syntax; in Dovecot 2.4 syntax each driver is a block: `push_notification NAME {{ driver = DRIVER … }}`"
        )
    } else {
        format!("{key} must be inside a `plugin {{ }}` block{as_in}")
    }
}

/// What kind of driver a block configures: how its keys are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ox,
    Dlog,
    Lua,
    /// mailpush's own (wasm, …): keys pass through unchanged.
    Other,
}

impl Kind {
    fn of(driver: &str) -> Kind {
        match driver.to_ascii_lowercase().as_str() {
            "ox" => Kind::Ox,
            "dlog" => Kind::Dlog,
            "lua" => Kind::Lua,
            _ => Kind::Other,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Kind::Ox => "an ox driver",
            Kind::Dlog => "a dlog driver",
            Kind::Lua => "a lua driver",
            Kind::Other => "a mailpush driver",
        }
    }

    /// The keys a block of this kind reads, for suggestions.
    fn keys(self) -> Vec<&'static str> {
        let own: &[&str] = match self {
            Kind::Ox => &[
                "driver",
                "ox_url",
                "ox_cache_ttl",
                "ox_user_from_metadata",
                "http_client_request_max_attempts",
                "http_client_request_timeout",
                "ssl_client_ca_file",
            ],
            Kind::Dlog => &["driver", "file"],
            Kind::Lua => &[
                "driver",
                "lua_file",
                "lua_settings",
                "http_failures",
                "script_errors",
            ],
            Kind::Other => &["driver"],
        };
        own.iter().chain(MAILPUSH_KEYS.iter()).copied().collect()
    }
}

/// A Dovecot 2.4 setting a key inside a block resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Setting {
    Driver,
    OxUrl,
    OxCacheTtl,
    OxUserFromMetadata,
    LuaFile,
    LuaSettings,
    /// `http_client_<suffix>`.
    HttpClient(String),
    /// `ssl_client_<suffix>`.
    SslClient(String),
}

/// The Dovecot 2.4 setting with this full name, of those a push_notification block uses.
fn dovecot_setting(full: &str) -> Option<Setting> {
    Some(match full {
        "push_notification_driver" => Setting::Driver,
        "push_notification_ox_url" => Setting::OxUrl,
        "push_notification_ox_cache_ttl" => Setting::OxCacheTtl,
        "push_notification_ox_user_from_metadata" => Setting::OxUserFromMetadata,
        "lua_file" => Setting::LuaFile,
        "lua_settings" => Setting::LuaSettings,
        _ => {
            if let Some(rest) = full.strip_prefix("http_client_").filter(|r| !r.is_empty()) {
                Setting::HttpClient(rest.to_string())
            } else if let Some(rest) = full.strip_prefix("ssl_client_").filter(|r| !r.is_empty()) {
                Setting::SslClient(rest.to_string())
            } else {
                return None;
            }
        }
    })
}

/// Dovecot 2.4's resolution of a bare key inside `push_notification NAME { }`:
/// `push_notification_<NAME>_<key>`, then `push_notification_<key>`, then `<key>`.
fn resolve(block: &str, key: &str) -> Option<Setting> {
    dovecot_setting(&format!("push_notification_{block}_{key}"))
        .or_else(|| dovecot_setting(&format!("push_notification_{key}")))
        .or_else(|| dovecot_setting(key))
}

/// Dovecot 2.3's numbered driver settings (`push_notification_driver2`, `…backend`).
fn is_v23_numbered(key: &str) -> bool {
    let rest = key
        .strip_prefix("push_notification_driver")
        .or_else(|| key.strip_prefix("push_notification_backend"));
    match rest {
        Some("") => key.starts_with("push_notification_backend"),
        Some(r) => r.bytes().all(|b| b.is_ascii_digit()),
        None => false,
    }
}

/// The hint after "unknown setting `key`": the key probably meant.
fn unknown_hint(kind: Kind, key: &str) -> String {
    let lua_file =
        ". Did you mean lua_file? (`push_notification lua { lua_file = /path/script.lua }`)";
    match (kind, key) {
        (Kind::Ox, "url" | "cache_ttl" | "user_from_metadata") => format!(
            ". Did you mean ox_{key}? (`{key}` alone works only in a block named `ox`, as in Dovecot 2.4)"
        ),
        (Kind::Ox, "cache_lifetime") => ". Did you mean ox_cache_ttl? (`cache_lifetime` is the Dovecot 2.3 ox argument; Dovecot 2.4's ox_cache_ttl takes a time with a unit, e.g. ox_cache_ttl = 60s)".to_string(),
        (Kind::Ox, "max_retries") => ". Did you mean http_client_request_max_attempts? (`max_retries` is the Dovecot 2.3 ox argument; Dovecot 2.4 counts attempts: http_client_request_max_attempts = max_retries + 1)".to_string(),
        (Kind::Ox, "ssl_ca_file") => ". Did you mean ssl_client_ca_file?".to_string(),
        (Kind::Lua, "file" | "script_file" | "lua_script_file") => lua_file.to_string(),
        (Kind::Lua, "push_notification_lua_script_file") => format!(
            "{lua_file}; push_notification_lua_script_file is Dovecot 2.3's plugin {{ }} setting"
        ),
        (Kind::Lua, "push_notification_lua_file") => format!(
            "{lua_file}; Dovecot 2.4's documentation names it push_notification_lua_file, but Dovecot reads lua_file"
        ),
        (Kind::Lua, "settings" | "push_notification_lua_settings") => {
            ". Did you mean lua_settings { KEY = VALUE }?".to_string()
        }
        _ => match nearest(key, &kind.keys()) {
            Some(k) => format!(". Did you mean {k}?"),
            None if kind == Kind::Lua => {
                ". A setting for the script goes in `lua_settings { KEY = VALUE }`".to_string()
            }
            None => format!(
                " (it reads {})",
                kind.keys()[..kind.keys().len() - MAILPUSH_KEYS.len()].join(", ")
            ),
        },
    }
}

/// Errors and warnings found while reading the blocks.
#[derive(Default)]
struct Findings {
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigWarning>,
}

impl Findings {
    fn error(&mut self, e: &RawEntry, message: String) {
        self.errors.push(ConfigError {
            location: Some(e.location.clone()),
            text: e.text.clone(),
            message,
        });
    }

    fn warn(&mut self, e: &RawEntry, message: String) {
        self.warnings.push(ConfigWarning {
            location: Some(e.location.clone()),
            message,
        });
    }
}

/// One block's arguments as they are built.
struct Builder<'f> {
    /// `push_notification NAME` (or `push_notification_ox`), for messages.
    what: String,
    /// The NAME keys resolve under.
    block: String,
    kind: Kind,
    args: DriverArgs,
    /// Which key (and line) of this block set each argument.
    set_by: BTreeMap<String, (String, Location)>,
    /// The line that last set each argument, defaults' lines included.
    lines: BTreeMap<String, ArgLine>,
    found: &'f mut Findings,
}

impl Builder<'_> {
    /// Sets `arg`, warning when a line of this block set it before to something else.
    fn set(&mut self, arg: &str, value: &str, e: &RawEntry) {
        if let Some((key, at)) = self.set_by.get(arg) {
            if self.args.get(arg) != Some(value) {
                let message = format!(
                    "{} overrides {arg} set by `{key}` at {at} (the later one wins)",
                    e.key
                );
                self.found.warn(e, message);
            }
        }
        self.args.set(arg, value);
        self.set_by
            .insert(arg.to_string(), (e.key.clone(), e.location.clone()));
        self.lines.insert(arg.to_string(), ArgLine::of(e));
    }

    /// Removes a flag argument.
    fn unset(&mut self, arg: &str, e: &RawEntry) {
        self.args.take(arg);
        self.set_by
            .insert(arg.to_string(), (e.key.clone(), e.location.clone()));
        self.lines.insert(arg.to_string(), ArgLine::of(e));
    }

    fn error(&mut self, e: &RawEntry, message: String) {
        self.found.error(e, message);
    }

    fn warn(&mut self, e: &RawEntry, message: String) {
        self.found.warn(e, message);
    }

    /// "`key` has no effect on a dlog driver; ignored".
    fn no_effect(&mut self, e: &RawEntry) {
        let message = format!(
            "{} has no effect on {} (`{} {{ }}`); ignored",
            e.key,
            self.kind.describe(),
            self.what
        );
        self.warn(e, message);
    }

    /// A key Dovecot 2.4 does not resolve: one of mailpush's own, or an error.
    fn other_key(&mut self, e: &RawEntry) {
        let own = MAILPUSH_KEYS.contains(&e.key.as_str())
            || (self.kind == Kind::Dlog && e.key == "file")
            || (self.kind == Kind::Lua && LUA_OWN_KEYS.contains(&e.key.as_str()));
        if own {
            self.set(&e.key, &e.value, e);
        } else {
            let message = format!(
                "unknown setting `{}` in `{} {{ }}` ({}){}",
                e.key,
                self.what,
                self.kind.describe(),
                unknown_hint(self.kind, &e.key)
            );
            self.error(e, message);
        }
    }

    /// Applies one `key = value` line of the block.
    fn apply(&mut self, e: &RawEntry) {
        if is_v23_numbered(&e.key) || is_v23_numbered(&format!("push_notification_{}", e.key)) {
            let message = format!(
                "{} is Dovecot 2.3 syntax (numbered driver settings in plugin {{ }}); in Dovecot 2.4 each driver is its own `push_notification NAME {{ driver = DRIVER … }}` block",
                e.key
            );
            self.error(e, message);
            return;
        }
        let setting = resolve(&self.block, &e.key);
        if setting == Some(Setting::Driver) {
            return; // read by `driver_of`
        }
        if setting == Some(Setting::LuaSettings) {
            let message = format!(
                "{} is a block: `lua_settings {{ KEY = VALUE }}` (or `lua_settings/KEY = VALUE`)",
                e.key
            );
            self.error(e, message);
            return;
        }
        match self.kind {
            Kind::Other => self.set(&e.key, &e.value, e),
            Kind::Ox => self.ox(setting, e),
            Kind::Lua => match setting {
                Some(Setting::LuaFile) => self.set("file", &e.value, e),
                Some(Setting::HttpClient(_) | Setting::SslClient(_)) => {
                    let message = format!(
                        "{} is not read by mailpush's lua driver; ignored (a script sets its HTTP client's options in dovecot.http.client{{ … }})",
                        e.key
                    );
                    self.warn(e, message);
                }
                Some(_) => self.no_effect(e),
                None => self.other_key(e),
            },
            Kind::Dlog => match setting {
                Some(_) => self.no_effect(e),
                None => self.other_key(e),
            },
        }
    }

    /// One line of an ox block (or of `push_notification_ox { }`).
    fn ox(&mut self, setting: Option<Setting>, e: &RawEntry) {
        let v = e.value.as_str();
        match setting {
            Some(Setting::OxUrl) => {
                if v.contains("%{") {
                    let message = format!(
                        "{}: mailpush does not expand %{{variables}} (Dovecot 2.4.3+ does); the URL is used as written",
                        e.key
                    );
                    self.warn(e, message);
                }
                self.set("url", v, e);
            }
            Some(Setting::OxCacheTtl) => match parse_time_msecs(v) {
                Ok(0) => self.error(
                    e,
                    format!(
                        "{} = 0: Dovecot 2.4 refuses 0 for push_notification_ox_cache_ttl; use a time with a unit, e.g. 60s",
                        e.key
                    ),
                ),
                Ok(ms) => {
                    let secs = ms.div_ceil(1000);
                    if ms % 1000 != 0 {
                        let message = format!(
                            "{} = {v}: mailpush's ox cache counts whole seconds; using {secs}s",
                            e.key
                        );
                        self.warn(e, message);
                    }
                    self.set("cache_lifetime", &format!("{secs}s"), e);
                }
                Err(err) => self.error(e, format!("{} = {v}: {err}", e.key)),
            },
            Some(Setting::OxUserFromMetadata) => match parse_bool(v) {
                Ok(true) => self.set("user_from_metadata", "", e),
                Ok(false) => self.unset("user_from_metadata", e),
                Err(err) => self.error(e, format!("{}: {err}", e.key)),
            },
            Some(Setting::HttpClient(name)) => match name.as_str() {
                "request_max_attempts" => match parse_uint(v) {
                    Some(n) if n >= 1 => self.set("max_retries", &(n - 1).to_string(), e),
                    _ => self.error(
                        e,
                        format!(
                            "{} = {v}: expected a number of attempts, at least 1 (Dovecot 2.3's max_retries + 1)",
                            e.key
                        ),
                    ),
                },
                "request_timeout" => match parse_time_msecs(v) {
                    Ok(ms) => self.set("timeout_msecs", &ms.to_string(), e),
                    Err(err) => self.error(e, format!("{} = {v}: {err}", e.key)),
                },
                other => {
                    let mapped = ["request_max_attempts", "request_timeout"];
                    match nearest(other, &mapped) {
                        Some(m) => self.error(
                            e,
                            format!(
                                "unknown setting `{}` in `{} {{ }}`. Did you mean http_client_{m}?",
                                e.key, self.what
                            ),
                        ),
                        None => {
                            let message = format!(
                                "{} is not supported by mailpush's ox driver (it reads http_client_request_max_attempts and http_client_request_timeout); ignored",
                                e.key
                            );
                            self.warn(e, message);
                        }
                    }
                }
            },
            Some(Setting::SslClient(name)) => match name.as_str() {
                // Dovecot 2.3 habit: `<file` (2.4 FILE settings take the path itself).
                "ca_file" => self.set("ssl_ca_file", v.strip_prefix('<').unwrap_or(v), e),
                "require_valid_cert" => match parse_bool(v) {
                    Ok(true) => {} // mailpush always verifies
                    Ok(false) => {
                        let message = format!(
                            "{} = {v} is not supported: mailpush's ox driver always verifies the server's certificate; ignored",
                            e.key
                        );
                        self.warn(e, message);
                    }
                    Err(err) => self.error(e, format!("{}: {err}", e.key)),
                },
                _ => {
                    let message = format!(
                        "{} is not supported by mailpush's ox driver (its only TLS setting is ssl_client_ca_file, an extra CA besides the system's); ignored",
                        e.key
                    );
                    self.warn(e, message);
                }
            },
            Some(Setting::LuaFile) => self.no_effect(e),
            Some(Setting::Driver | Setting::LuaSettings) => {}
            None => self.other_key(e),
        }
    }
}

/// The driver a block names: its last non-empty `driver = X` line (with that line),
/// else the block's name (as Dovecot 2.4 does).
fn driver_of(block: &RawBlock) -> (String, Option<&RawEntry>) {
    block
        .entries
        .iter()
        .rev()
        .find(|e| {
            resolve(&block.name, &e.key) == Some(Setting::Driver) && !e.value.trim().is_empty()
        })
        .map_or((block.name.clone(), None), |e| {
            (e.value.trim().to_string(), Some(e))
        })
}

/// The `push_notification_ox { }` defaults, as ox arguments.
fn ox_defaults(raw: &RawConfig, found: &mut Findings) -> (DriverArgs, BTreeMap<String, ArgLine>) {
    let mut b = Builder {
        what: "push_notification_ox".to_string(),
        block: "ox".to_string(),
        kind: Kind::Ox,
        args: DriverArgs::default(),
        set_by: BTreeMap::new(),
        lines: BTreeMap::new(),
        found,
    };
    for e in &raw.ox_defaults {
        if resolve("ox", &e.key) == Some(Setting::Driver) {
            let message = format!(
                "{} has no meaning in push_notification_ox {{ }} (the defaults for every ox block); set the driver in a `push_notification NAME {{ }}` block",
                e.key
            );
            b.error(e, message);
        } else {
            b.apply(e);
        }
    }
    (b.args, b.lines)
}

/// Reads Dovecot 2.4's `push_notification NAME { }` blocks into driver settings,
/// numbered in file order.
pub fn select_blocks(raw: &mut RawConfig) -> Vec<DriverSetting> {
    let mut found = Findings::default();
    let (defaults, default_lines) = ox_defaults(raw, &mut found);
    let mut drivers = Vec::new();
    let mut any_ox = false;
    for (i, block) in raw.blocks.iter().enumerate() {
        let what = format!("push_notification {}", block.name);
        let (mut name, driver_line) = driver_of(block);
        // 2.3's `driver:args` value: an error that shows the 2.4 lines.
        for e in block.entries.iter().filter(|e| {
            resolve(&block.name, &e.key) == Some(Setting::Driver) && e.value.contains(':')
        }) {
            let (driver, args) = e.value.split_once(':').unwrap_or((&e.value, ""));
            let driver = driver.trim();
            let mut lines = vec![format!("driver = {driver}")];
            lines.extend(v24_lines(driver, args));
            found.error(
                e,
                format!(
                    "`{} = {}` is Dovecot 2.3 syntax (DRIVER:ARGS); in a Dovecot 2.4 block write one setting a line: {}",
                    e.key,
                    e.value,
                    lines
                        .iter()
                        .map(|l| format!("`{l}`"))
                        .collect::<Vec<_>>()
                        .join(" + ")
                ),
            );
        }
        if let Some(e) = driver_line {
            if let Some((driver, _)) = e.value.split_once(':') {
                name = driver.trim().to_string();
            }
        }
        let kind = Kind::of(&name);
        any_ox |= kind == Kind::Ox;
        let mut b = Builder {
            what: what.clone(),
            block: block.name.clone(),
            kind,
            args: if kind == Kind::Ox {
                defaults.clone()
            } else {
                DriverArgs::default()
            },
            set_by: BTreeMap::new(),
            lines: if kind == Kind::Ox {
                default_lines.clone()
            } else {
                BTreeMap::new()
            },
            found: &mut found,
        };
        for e in &block.entries {
            b.apply(e);
        }
        match kind {
            Kind::Lua => {
                for e in &block.lua_settings {
                    b.set(&format!("lua_settings.{}", e.key), &e.value, e);
                }
                if b.args.get("file").is_none_or(|f| f.trim().is_empty()) {
                    b.found.errors.push(ConfigError {
                        location: Some(block.location.clone()),
                        text: format!("{} {{", block.head),
                        message: format!(
                            "lua_file setting is empty (as Dovecot 2.4 says): set `lua_file = /path/script.lua` in `{what} {{ }}`"
                        ),
                    });
                }
                b.args.set("dovecot", "2.4");
            }
            _ => {
                if let Some(e) = block.lua_settings.first() {
                    let message = format!(
                        "lua_settings {{ }} has no effect on {} (`{what} {{ }}`); ignored",
                        kind.describe()
                    );
                    b.warn(e, message);
                }
            }
        }
        drivers.push(DriverSetting {
            number: u32::try_from(i + 1).unwrap_or(u32::MAX),
            setting: what,
            name,
            raw: None,
            args: b.args,
            arg_lines: b.lines,
            location: block.location.clone(),
            syntax: DovecotSyntax::V24,
        });
    }
    if !any_ox {
        if let Some(at) = &raw.ox_defaults_at {
            found.warnings.push(ConfigWarning {
                location: Some(at.clone()),
                message: "push_notification_ox { } applies to no block: no push_notification block has driver ox".to_string(),
            });
        }
    }
    raw.errors.extend(found.errors);
    raw.warnings.extend(found.warnings);
    drivers
}
