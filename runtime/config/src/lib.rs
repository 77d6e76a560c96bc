//! mailpush's config file, in Dovecot's syntax: `plugin { push_notification_driver = … }` lines
//! work verbatim; mailpush's own settings live in a `mailpush { }` block.
//!
//! - [`syntax`]: Dovecot's syntax read into raw settings (blocks, comments, quotes,
//!   includes); settings mailpush does not use (`mail_plugins`, `service`, `passdb`
//!   blocks, …) are ignored;
//! - [`numbering`]: Dovecot's numbering of `push_notification_driver*`;
//! - [`dovecot24`]: Dovecot 2.4's `push_notification NAME { }` blocks, read into the
//!   same driver settings under mailpush's (2.3) argument names;
//! - [`settings`]: the typed `mailpush { }` block;
//! - [`error`]: errors and warnings with file:line;
//! - [`suggest`]: "did you mean" for mistyped names.

pub mod dovecot24;
pub mod error;
pub mod numbering;
pub mod settings;
pub mod syntax;

/// "Did you mean …?" (in `mailpush-core`, which the drivers' crates share).
pub use mailpush_core::suggest;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use error::{ConfigError, ConfigErrors, ConfigWarning, Location};
pub use numbering::{ArgLine, DovecotSyntax, DriverSetting};
pub use settings::{ClusterSettings, ConnectionLimits, EffectiveSetting, RuntimeSettings};

/// A config that does not load: its errors, with the warnings and the driver settings
/// found despite them ([`Config::load_for_check`]).
#[derive(Debug, Clone)]
pub struct InvalidConfig {
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<ConfigWarning>,
    /// The drivers the numbering selects (their names not yet checked).
    pub drivers: Vec<DriverSetting>,
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
    /// Every `plugin { }` setting (key → value; a later value wins), what a Lua
    /// script's `user:plugin_getenv(name)` reads in Dovecot 2.3. Empty for a config
    /// written in Dovecot 2.4's syntax (2.4 has no plugin { } section).
    pub plugin_env: BTreeMap<String, String>,
    pub warnings: Vec<ConfigWarning>,
    /// Something the config names would not run: driver settings the numbering passes
    /// over, or no driver at all (each said in `warnings`). mailpush starts; `mailpush
    /// check` exits 3.
    pub incomplete: bool,
}

/// The text of the config file, or the error saying how to pass another.
fn read_config(path: &Path) -> Result<String, ConfigError> {
    let bytes = std::fs::read(path).map_err(|e| ConfigError {
        location: None,
        text: String::new(),
        message: format!(
            "cannot read config file {}: {e} (pass another with -c FILE or MAILPUSH_CONFIG)",
            path.display()
        ),
    })?;
    syntax::decode(path, &bytes)
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
        let mut raw = syntax::read(path, text);
        let drivers = numbering::select_drivers(&mut raw);
        let plugin_env = if drivers.iter().any(|d| d.syntax == DovecotSyntax::V24) {
            BTreeMap::new()
        } else {
            raw.plugin
                .iter()
                .map(|(k, v)| (k.clone(), v.value.clone()))
                .collect()
        };
        // A 2.3 Lua script reads plugin { } settings: one whose file mailpush does not
        // read is not there for it (Dovecot would give the file's content).
        if drivers
            .iter()
            .any(|d| d.syntax == DovecotSyntax::V23 && d.name.eq_ignore_ascii_case("lua"))
        {
            for (key, location) in &raw.plugin_files {
                raw.warnings.push(ConfigWarning {
                    location: Some(location.clone()),
                    message: format!(
                        "the file named by {key} (`<FILE`) is not read: mailpush reads a plugin setting's file only for \
                         push_notification_* settings (another plugin's file, such as a key, is no \
                         business of a script), so a Lua script's user:plugin_getenv(\"{key}\") \
                         returns nil. If the script needs it, name the setting \
                         push_notification_… (or put the value itself in the file)"
                    ),
                });
            }
        }
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
        let mut incomplete = raw.ignored_drivers > 0;
        if let Some(s) = &settings {
            if drivers.is_empty() && s.tenant_drivers.is_none() && raw.errors.is_empty() {
                raw.warnings.push(numbering::nothing_configured());
                incomplete = true;
            }
        }
        match settings {
            Some(settings) if raw.errors.is_empty() => Ok(Config {
                path: path.to_path_buf(),
                drivers,
                settings,
                plugin_env,
                warnings: raw.warnings,
                incomplete,
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

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_v24;
