//! The config file, in Dovecot's syntax: `plugin { push_notification_driver = … }` lines
//! work verbatim; mailpush's own settings live in a `mailpush { }` block.
//!
//! Syntax accepted: `key = value` (value optionally in double quotes), `NAME {` and
//! `NAME ARG {` blocks closed by `}`, `#` comments (at line start or after whitespace),
//! `!include FILE` and `!include_try FILE` (relative to the including file). Settings
//! mailpush does not use (`mail_plugins`, `service`, `passdb` blocks, …) are ignored.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use mailpush_core::DriverArgs;

use crate::settings::RuntimeSettings;

/// A place in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// One configuration error: where, the offending text, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub location: Option<Location>,
    /// The offending text (the line, or the value).
    pub text: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(loc) = &self.location {
            write!(f, "{loc}: ")?;
        }
        if self.text.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}\n    | {}", self.message, self.text)
        }
    }
}

/// Every error found in a config (mailpush reports them all at once).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// A config that does not load: its errors, with the warnings and the driver settings
/// found despite them ([`Config::load_for_check`]).
#[derive(Debug, Clone)]
pub struct InvalidConfig {
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<ConfigWarning>,
    /// The drivers the numbering selects (their names not yet checked).
    pub drivers: Vec<DriverSetting>,
}

/// A non-fatal finding (`mailpush check` prints these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    pub location: Option<Location>,
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Some(loc) => write!(f, "{loc}: {}", self.message),
            None => write!(f, "{}", self.message),
        }
    }
}

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

/// A parsed config file.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file.
    pub path: PathBuf,
    /// The drivers Dovecot's numbering rules select, in order.
    pub drivers: Vec<DriverSetting>,
    /// The `mailpush { }` block.
    pub settings: RuntimeSettings,
    pub warnings: Vec<ConfigWarning>,
}

/// A raw `key = value` with where it was set and which block it was in.
#[derive(Debug, Clone)]
struct RawSetting {
    value: String,
    location: Location,
}

/// Everything read from the files, before interpretation.
#[derive(Default)]
struct RawConfig {
    /// Settings of `plugin { }` blocks (anywhere), later ones win.
    plugin: BTreeMap<String, RawSetting>,
    /// Settings of `mailpush { }` blocks.
    mailpush: BTreeMap<String, RawSetting>,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigWarning>,
}

const MAX_INCLUDE_DEPTH: usize = 16;

/// The text of the config file, or the error saying how to pass another.
fn read_config(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        location: None,
        text: String::new(),
        message: format!(
            "cannot read config file {}: {e} (pass another with -c FILE or MAILPUSH_CONFIG)",
            path.display()
        ),
    })
}

impl Config {
    /// Reads and interprets a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = read_config(path).map_err(|e| ConfigErrors(vec![e]))?;
        Config::parse(path, &text)
    }

    /// Interprets config text as if read from `path` (used for includes and tests).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
        Config::interpret(path, text).map_err(|invalid| ConfigErrors(invalid.errors))
    }

    /// Like [`Config::load`], but an invalid config also returns the warnings and the
    /// driver settings found despite its errors, so `mailpush check` can report every
    /// problem of a file at once (a bad line, a numbering gap, an unknown driver).
    pub fn load_for_check(path: &Path) -> Result<Config, InvalidConfig> {
        let text = read_config(path).map_err(|e| InvalidConfig {
            errors: vec![e],
            warnings: Vec::new(),
            drivers: Vec::new(),
        })?;
        Config::interpret(path, &text)
    }

    fn interpret(path: &Path, text: &str) -> Result<Config, InvalidConfig> {
        let mut raw = RawConfig::default();
        let mut stack = Vec::new();
        read_text(path, text, &mut raw, &mut stack, 0);
        let drivers = select_drivers(&mut raw);
        let config_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let settings = RuntimeSettings::from_block(
            raw.mailpush
                .iter()
                .map(|(k, v)| (k.clone(), v.value.clone(), v.location.clone()))
                .collect(),
            &config_dir,
        );
        let settings = match settings {
            Ok(s) => Some(s),
            Err(errs) => {
                raw.errors.extend(errs);
                None
            }
        };
        match settings {
            Some(settings) if raw.errors.is_empty() => Ok(Config {
                path: path.to_path_buf(),
                drivers,
                settings,
                warnings: raw.warnings,
            }),
            _ => Err(InvalidConfig {
                errors: raw.errors,
                warnings: raw.warnings,
                drivers,
            }),
        }
    }

    /// The folder of the config file; relative paths in the config resolve against it.
    pub fn dir(&self) -> PathBuf {
        self.path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }
}

/// Block kinds that matter to mailpush.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Block {
    Plugin,
    Mailpush,
    Protocol,
    Other,
}

/// Strips a `#` comment: `#` at the start or after whitespace, outside double quotes.
fn strip_comment(line: &str) -> &str {
    let mut in_quotes = false;
    let mut prev_space = true;
    for (i, c) in line.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            '#' if !in_quotes && prev_space => return &line[..i],
            _ => {}
        }
        prev_space = c.is_whitespace();
    }
    line
}

fn unquote(value: &str) -> String {
    let v = value.trim();
    let quoted = |q: char| v.len() >= 2 && v.starts_with(q) && v.ends_with(q);
    if quoted('"') || quoted('\'') {
        let inner = &v[1..v.len() - 1];
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            } else {
                out.push(c);
            }
        }
        out
    } else {
        v.to_string()
    }
}

fn read_text(
    path: &Path,
    text: &str,
    raw: &mut RawConfig,
    stack: &mut Vec<(Block, Location, String)>,
    depth: usize,
) {
    let base_depth = stack.len();
    for (i, full_line) in text.lines().enumerate() {
        let location = Location {
            file: path.to_path_buf(),
            line: i + 1,
        };
        let line = strip_comment(full_line).trim();
        if line.is_empty() {
            continue;
        }
        let error = |raw: &mut RawConfig, message: String| {
            raw.errors.push(ConfigError {
                location: Some(location.clone()),
                text: full_line.trim().to_string(),
                message,
            })
        };
        if let Some(rest) = line.strip_prefix('!') {
            let (directive, arg) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            let arg = unquote(arg);
            match directive {
                "include" | "include_try" if !arg.is_empty() => {
                    if depth >= MAX_INCLUDE_DEPTH {
                        error(raw, format!("includes nested deeper than {MAX_INCLUDE_DEPTH} levels (an include loop?); expected each file to be included at most once along a chain — remove the `!include` that leads back"));
                        continue;
                    }
                    let target = path.parent().unwrap_or(Path::new(".")).join(&arg);
                    let targets = match expand_glob(&target) {
                        Some(matches) => matches,
                        None => vec![target.clone()],
                    };
                    for target in targets {
                        match std::fs::read_to_string(&target) {
                            Ok(t) => read_text(&target, &t, raw, stack, depth + 1),
                            Err(_) if directive == "include_try" => {}
                            Err(e) => error(raw, format!("cannot include {}: {e}", target.display())),
                        }
                    }
                }
                "include" | "include_try" => error(raw, format!("!{directive} needs a file name: !{directive} FILE")),
                _ => error(raw, format!("unknown directive `!{directive}`; expected `!include FILE` or `!include_try FILE`")),
            }
            continue;
        }
        if line == "}" {
            if stack.len() <= base_depth {
                error(raw, "`}` without an open block".to_string());
            } else {
                stack.pop();
            }
            continue;
        }
        if let Some(head) = line.strip_suffix('{') {
            let mut words = head.split_whitespace();
            let kind = match (words.next(), words.next(), words.next()) {
                (Some("plugin"), None, _) => Block::Plugin,
                (Some("mailpush"), None, _) => Block::Mailpush,
                (Some("protocol"), Some(_), None) => Block::Protocol,
                (Some("protocol"), None, _) => {
                    error(
                        raw,
                        "a protocol block needs a name: `protocol imap {`".to_string(),
                    );
                    Block::Other
                }
                (Some(_), _, _) => Block::Other,
                (None, _, _) => {
                    error(
                        raw,
                        "a block needs a name: `plugin {`, `mailpush {`, `protocol NAME {`"
                            .to_string(),
                    );
                    Block::Other
                }
            };
            stack.push((kind, location.clone(), head.trim().to_string()));
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            error(
                raw,
                "expected `key = value`, `NAME {`, `}` or `!include FILE`".to_string(),
            );
            continue;
        };
        let key = key.trim().to_string();
        if key.is_empty() || key.contains(char::is_whitespace) {
            error(
                raw,
                format!("`{key}` is not a setting name; expected `key = value`"),
            );
            continue;
        }
        let value = unquote(value);
        // The innermost block that matters decides where a setting belongs.
        let scope = stack
            .iter()
            .rev()
            .map(|(b, _, _)| b.clone())
            .find(|b| *b != Block::Protocol)
            .unwrap_or(Block::Protocol);
        let in_block = !stack.is_empty();
        let is_push = key.starts_with("push_notification_");
        match scope {
            Block::Plugin => {
                if let Some(prev) = raw.plugin.get(&key) {
                    if is_push && prev.value != value {
                        raw.warnings.push(ConfigWarning {
                            location: Some(location.clone()),
                            message: format!(
                                "{key} overrides the value set at {} (the later one wins)",
                                prev.location
                            ),
                        });
                    }
                }
                raw.plugin.insert(key, RawSetting { value, location });
            }
            Block::Mailpush => {
                raw.mailpush.insert(key, RawSetting { value, location });
            }
            _ if is_push => error(
                raw,
                format!(
                    "{key} must be inside a `plugin {{ }}` block{}",
                    if in_block { "" } else { " (as in Dovecot)" }
                ),
            ),
            _ => {} // settings for Dovecot that mailpush does not use
        }
    }
    while stack.len() > base_depth {
        if let Some((_, loc, head)) = stack.pop() {
            raw.errors.push(ConfigError {
                location: Some(loc),
                text: format!("{head} {{"),
                message: "block is never closed: add a `}`".to_string(),
            });
        }
    }
}

/// Expands a `*` in the file-name part of an include (`conf.d/*.conf`, as Dovecot
/// does), sorted; `None` when the path has no `*`.
fn expand_glob(path: &Path) -> Option<Vec<PathBuf>> {
    let name = path.file_name()?.to_str()?;
    let (prefix, suffix) = name.split_once('*')?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let n = e.file_name().to_str()?.to_string();
                    (n.len() >= prefix.len() + suffix.len()
                        && n.starts_with(prefix)
                        && n.ends_with(suffix))
                    .then(|| e.path())
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    Some(out)
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
fn select_drivers(raw: &mut RawConfig) -> Vec<DriverSetting> {
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

#[cfg(test)]
mod tests;
