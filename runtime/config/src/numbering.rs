//! Dovecot's driver numbering: `push_notification_driver`, then `…driver2`, `…3`, …,
//! stopping at the first missing or empty one; the legacy `push_notification_backend*`
//! names when no driver is set at all.

use mailpush_core::DriverArgs;

use super::error::{ConfigError, ConfigWarning, Location};
use super::syntax::RawConfig;

/// One numbered driver setting, e.g. `push_notification_driver2 = ox:url=…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverSetting {
    /// 1 for `push_notification_driver`, then 2, 3, …
    pub number: u32,
    /// The setting's name (`push_notification_driver2`).
    pub setting: String,
    /// The driver name as typed (matched case-insensitively).
    pub name: String,
    /// Text after the first `:`; `None` without a `:`.
    pub raw: Option<String>,
    pub args: DriverArgs,
    pub location: Location,
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
pub fn select_drivers(raw: &mut RawConfig) -> Vec<DriverSetting> {
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
        raw.warnings.push(ConfigWarning {
            location: Some(setting.location.clone()),
            message,
        });
    }
    out
}
