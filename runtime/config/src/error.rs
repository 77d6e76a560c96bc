//! Configuration errors and warnings, each with the place in a file it is about.

use std::fmt;
use std::path::PathBuf;

use mailpush_core::args::redact_text;

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

/// Errors and warnings quote the config, which holds passwords (`url=http://user:pass@…`,
/// `secret=…`): they are shown redacted, also where the value did not parse.
impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(loc) = &self.location {
            write!(f, "{loc}: ")?;
        }
        let message = redact_text(&self.message);
        if self.text.is_empty() {
            write!(f, "{message}")
        } else {
            write!(f, "{message}\n    | {}", redact_text(&self.text))
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

/// A non-fatal finding (`mailpush check` prints these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    pub location: Option<Location>,
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Some(loc) => write!(f, "{loc}: {}", redact_text(&self.message)),
            None => write!(f, "{}", redact_text(&self.message)),
        }
    }
}
