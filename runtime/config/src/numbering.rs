//! Dovecot's driver numbering: `push_notification_driver`, then `…driver2`, `…3`, …,
//! stopping at the first missing or empty one; the legacy `push_notification_backend*`
//! names when no driver is set at all (Dovecot 2.3). Dovecot 2.4's
//! `push_notification NAME { }` blocks are numbered in file order
//! ([`crate::dovecot24`]); a config uses one syntax or the other.

use mailpush_core::DriverArgs;

use super::dovecot24;
use super::error::{ConfigError, ConfigWarning, Location};
use super::suggest::distance;
use super::syntax::RawConfig;

/// Which Dovecot version's syntax a driver setting is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DovecotSyntax {
    /// `plugin { push_notification_driver = NAME:ARGS }` (Dovecot 2.3).
    V23,
    /// `push_notification NAME { … }` (Dovecot 2.4).
    V24,
}

impl DovecotSyntax {
    /// `"2.3"` or `"2.4"`.
    pub fn version(self) -> &'static str {
        match self {
            DovecotSyntax::V23 => "2.3",
            DovecotSyntax::V24 => "2.4",
        }
    }
}

/// One driver setting: a numbered line, e.g. `push_notification_driver2 = ox:url=…`
/// (Dovecot 2.3), or a `push_notification NAME { … }` block (Dovecot 2.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverSetting {
    /// 1 for `push_notification_driver`, then 2, 3, …; for 2.4 blocks, their order in
    /// the file (includes followed).
    pub number: u32,
    /// The setting's name (`push_notification_driver2`), or `push_notification NAME`
    /// for a 2.4 block.
    pub setting: String,
    /// The driver name as typed (matched case-insensitively); for a 2.4 block its
    /// `driver =`, else the block's NAME.
    pub name: String,
    /// Text after the first `:`; `None` without a `:` (and for 2.4 blocks).
    pub raw: Option<String>,
    /// The arguments, under mailpush's (Dovecot 2.3) names also for 2.4 blocks.
    pub args: DriverArgs,
    /// The line (2.3), or the block's opening line (2.4).
    pub location: Location,
    /// A 2.4 block's arguments, each with the line that set it (`url` from
    /// `ox_url = …`), so an error about one argument points at its line; empty for
    /// 2.3, whose arguments are all on [`DriverSetting::location`]'s line.
    pub arg_lines: std::collections::BTreeMap<String, ArgLine>,
    /// Which syntax the setting is written in.
    pub syntax: DovecotSyntax,
}

/// The line that set one argument of a 2.4 block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgLine {
    pub location: Location,
    /// The line as written (trimmed).
    pub text: String,
}

impl ArgLine {
    pub(crate) fn of(e: &crate::syntax::RawEntry) -> Self {
        ArgLine {
            location: e.location.clone(),
            text: e.text.clone(),
        }
    }
}

/// The setting name for driver number `n` under `base` (`push_notification_driver`).
fn numbered(base: &str, n: u32) -> String {
    if n == 1 {
        base.to_string()
    } else {
        format!("{base}{n}")
    }
}

/// Applies Dovecot's numbering: `push_notification_driver`, then `…driver2`, `…3`, …,
/// stopping at the first missing or empty one; falls back to `push_notification_backend*`
/// when no driver is set at all. Later-numbered settings past a gap are warned about.
///
/// Dovecot 2.4 blocks are read instead when the config has them and no 2.3 driver
/// lines; with both, the config is an error (the 2.3 lines' drivers are returned).
pub fn select_drivers(raw: &mut RawConfig) -> Vec<DriverSetting> {
    warn_about_near_misses(raw);
    select_either(raw)
}

/// The warning for a config that delivers to nobody: no driver, and no tenant handlers
/// (`tenant_drivers`) either.
pub fn nothing_configured() -> ConfigWarning {
    ConfigWarning {
        location: None,
        message: "no push notification driver is configured: events would be accepted and delivered to nobody. Add `push_notification_driver = NAME[:ARGS]` to plugin { } (Dovecot 2.3), a `push_notification NAME { }` block (Dovecot 2.4), or tenant_drivers to mailpush { }".to_string(),
    }
}

/// `plugin { }` keys one or two typos away from `push_notification_driver[N]` (or
/// `…backend[N]`): Dovecot ignores them silently, so a typo there would disable a
/// driver without a word.
fn warn_about_near_misses(raw: &mut RawConfig) {
    const BASES: [&str; 2] = ["push_notification_driver", "push_notification_backend"];
    for (key, setting) in &raw.plugin {
        if BASES.iter().any(|b| key.starts_with(b)) {
            continue;
        }
        let stem = key.trim_end_matches(|c: char| c.is_ascii_digit());
        let number = &key[stem.len()..];
        // A typo, or the right name in other case (Dovecot's names are case-sensitive).
        let Some(base) = BASES.iter().find(|b| {
            let lower = stem.to_ascii_lowercase();
            (1..=2).contains(&distance(&lower, b)) || (lower == **b && stem != **b)
        }) else {
            continue;
        };
        raw.warnings.push(ConfigWarning {
            location: Some(setting.location.clone()),
            message: format!(
                "{key} is not a driver setting and is ignored (as Dovecot ignores it). Did you mean {base}{number}?"
            ),
        });
        raw.ignored_drivers += 1;
    }
}

/// The driver settings of the syntax the config is written in.
fn select_either(raw: &mut RawConfig) -> Vec<DriverSetting> {
    let v23_line = first_v23_line(raw);
    let v24_at = raw
        .blocks
        .first()
        .map(|b| (b.location.clone(), format!("{} {{", b.head)))
        .or_else(|| {
            raw.ox_defaults_at
                .clone()
                .map(|l| (l, "push_notification_ox {".to_string()))
        });
    match (v23_line, v24_at) {
        (None, Some(_)) => {
            if let Some((key, s)) = raw.plugin.iter().min_by_key(|(_, s)| s.location.line) {
                raw.warnings.push(ConfigWarning {
                    location: Some(s.location.clone()),
                    message: format!(
                        "plugin {{ }} settings ({key}, …) are not read with Dovecot 2.4's push_notification blocks: Dovecot 2.4 has no plugin {{ }} section (and no user:plugin_getenv()); pass a Lua script's settings in lua_settings {{ }}"
                    ),
                });
            }
            dovecot24::select_blocks(raw)
        }
        (Some((key, at23)), Some((at24, text))) => {
            raw.errors.push(ConfigError {
                location: Some(at24.clone()),
                text,
                message: format!(
                    "Dovecot 2.3 and 2.4 push_notification syntax in one config: {key} at {at23} (Dovecot 2.3: plugin {{ push_notification_driver = DRIVER:ARGS }}) and this Dovecot 2.4 block at {at24} (push_notification NAME {{ … }}). Use one syntax, the one of the Dovecot that feeds mailpush"
                ),
            });
            select_v23(raw)
        }
        _ => select_v23(raw),
    }
}

/// The first (lowest-numbered) Dovecot 2.3 driver line of the `plugin { }` settings.
fn first_v23_line(raw: &RawConfig) -> Option<(String, Location)> {
    let is_v23 = |k: &str| {
        k.starts_with("push_notification_driver") || k.starts_with("push_notification_backend")
    };
    ["push_notification_driver", "push_notification_backend"]
        .iter()
        .find_map(|k| raw.plugin.get_key_value(*k))
        .or_else(|| raw.plugin.iter().find(|(k, _)| is_v23(k)))
        .map(|(k, s)| (k.clone(), s.location.clone()))
}

/// Dovecot 2.3's numbering, and `push_notification_lua_script_file`, which wins over a
/// lua line's `file=` (as in Dovecot 2.3).
fn select_v23(raw: &mut RawConfig) -> Vec<DriverSetting> {
    let mut drivers = select_numbered_lines(raw);
    let script = raw
        .plugin
        .get("push_notification_lua_script_file")
        .filter(|s| !s.value.trim().is_empty())
        .cloned();
    if let Some(script) = script {
        for d in drivers
            .iter_mut()
            .filter(|d| d.name.eq_ignore_ascii_case("lua"))
        {
            match d.args.get("file") {
                Some(file) if file != script.value => raw.warnings.push(ConfigWarning {
                    location: Some(d.location.clone()),
                    message: format!(
                        "{}: file={file} is overridden by push_notification_lua_script_file = {} at {} (it wins over file=, as in Dovecot 2.3)",
                        d.setting, script.value, script.location
                    ),
                }),
                _ => {}
            }
            d.args.set("file", &script.value);
        }
    }
    drivers
}

/// `push_notification_driver*`, else `push_notification_backend*`.
fn select_numbered_lines(raw: &mut RawConfig) -> Vec<DriverSetting> {
    let mut drivers = select_numbered(raw, "push_notification_driver");
    if drivers.is_empty() {
        drivers = select_numbered(raw, "push_notification_backend");
    } else if raw
        .plugin
        .keys()
        .any(|k| k.starts_with("push_notification_backend"))
    {
        raw.warnings.push(ConfigWarning {
            location: None,
            message: "push_notification_backend* settings are ignored because push_notification_driver is set"
                .to_string(),
        });
        raw.ignored_drivers += 1;
    }
    drivers
}

fn select_numbered(raw: &mut RawConfig, base: &str) -> Vec<DriverSetting> {
    let mut out = Vec::new();
    let mut n = 1;
    loop {
        let key = numbered(base, n);
        let Some(setting) = raw.plugin.get(&key).cloned() else {
            break;
        };
        if setting.value.trim().is_empty() {
            break;
        }
        let value = setting.value.trim();
        let (name, raw_args) = match value.split_once(':') {
            Some((name, args)) => (name.trim(), Some(args.to_string())),
            None => (value, None),
        };
        if name.is_empty() {
            raw.errors.push(ConfigError {
                location: Some(setting.location.clone()),
                text: format!("{key} = {}", setting.value),
                message:
                    "missing driver name; expected `NAME[:ARGS]`, e.g. `dlog` or `ox:url=http://…`"
                        .to_string(),
            });
        } else {
            out.push(DriverSetting {
                number: n,
                setting: key,
                name: name.to_string(),
                args: DriverArgs::parse(raw_args.as_deref().unwrap_or("")),
                raw: raw_args,
                location: setting.location,
                arg_lines: Default::default(),
                syntax: DovecotSyntax::V23,
            });
        }
        n += 1;
    }
    let stop = n;
    let stop_key = numbered(base, stop);
    // The scan stopped at `stop_key`: absent, or present with an empty value.
    let stop_reason = if raw.plugin.contains_key(&stop_key) {
        "is empty"
    } else {
        "is missing"
    };
    // Warn about every numbered setting the scan never reached, and about names Dovecot
    // never probes.
    for (key, setting) in &raw.plugin {
        let Some(suffix) = key.strip_prefix(base) else {
            continue;
        };
        // Dovecot probes exactly `{base}{n}` with `n` in decimal, so `02` or `+2` is a
        // different (never read) name, not driver 2.
        let number = suffix
            .parse::<u32>()
            .ok()
            .filter(|num| num.to_string() == suffix);
        let message = match number {
            Some(num) if num >= 2 && num > stop => format!(
                "{key} is ignored: {stop_key} {stop_reason}, and numbering stops at the first missing or empty one (as in Dovecot)"
            ),
            Some(num) if num >= 2 && num == stop => {
                format!("{key} is empty: numbering stops here (as in Dovecot)")
            }
            Some(0 | 1) => format!(
                "{key} is never read: the first driver is `{base}` (no number), then `{base}2`"
            ),
            Some(_) => continue,
            None if suffix.is_empty() => continue,
            None => format!("{key} is not a driver setting and is ignored"),
        };
        // (An empty setting where the numbering stops disables nothing more than itself.)
        if !(number == Some(stop) && stop >= 2) {
            raw.ignored_drivers += 1;
        }
        raw.warnings.push(ConfigWarning {
            location: Some(setting.location.clone()),
            message,
        });
    }
    out
}
