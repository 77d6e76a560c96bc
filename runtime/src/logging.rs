//! Log setup: `tracing` to stderr, human-readable or JSON lines; [`Tally`] for what
//! would otherwise be one line per transaction.

use std::time::Instant;

use parking_lot::Mutex;
use tracing_subscriber::EnvFilter;

/// A count of something reported at most once per [`Tally::EVERY`] with the sum since the
/// last report (a driver's dropped log lines, the spool's unreadable rows): one line per
/// transaction would be a flood of its own.
#[derive(Debug, Default)]
pub struct Tally(Mutex<(u64, Option<Instant>)>);

impl Tally {
    /// How often a tally is reported at most.
    pub const EVERY: std::time::Duration = std::time::Duration::from_secs(10);

    /// Counts `n` more; calls `report` with all not reported yet when it is time.
    pub fn add(&self, n: u64, report: impl FnOnce(u64)) {
        if n == 0 {
            return;
        }
        let mut tally = self.0.lock();
        tally.0 += n;
        if tally.1.is_none_or(|t| t.elapsed() >= Self::EVERY) {
            report(tally.0);
            *tally = (0, Some(Instant::now()));
        }
    }

    /// One more of something logged at most once per [`Tally::EVERY`]: calls `report`
    /// when it is time, with how many went unlogged since the last report.
    pub fn report(&self, report: impl FnOnce(u64)) {
        self.add(1, |n| report(n - 1));
    }

    /// The suffix of a report saying how many went unlogged since the last one
    /// (` (+3 more since the last report)`); empty for none.
    pub fn more(unlogged: u64) -> String {
        if unlogged > 0 {
            format!(" (+{unlogged} more since the last report)")
        } else {
            String::new()
        }
    }

    /// What was not reported yet (at the end), counted as reported.
    pub fn take_rest(&self) -> u64 {
        std::mem::take(&mut self.0.lock().0)
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Refuses a `--log-level` that tracing would take as a target name: `warnn` is a valid
/// filter that shows only the (nonexistent) target `warnn`, which would switch off
/// every log line, errors included. Each comma-separated part is a level or a
/// `target=level` directive.
fn check_level(level: &str) -> anyhow::Result<()> {
    for part in level.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bare = !part.contains(['=', '[', '{']);
        if bare && !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(part)) {
            anyhow::bail!(
                "invalid --log-level `{level}`: `{part}` is not a level; use {} or a directive such as mailpush=debug (a target needs =LEVEL)",
                LEVELS.join(", ")
            );
        }
    }
    Ok(())
}

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `level`.
pub fn init(level: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(v)?,
        _ => {
            check_level(level)?;
            // The NATS client's own info lines (each connect) are mailpush's to tell.
            let quiet =
                if level.contains("async_nats") || !matches!(level, "info" | "debug" | "trace") {
                    String::new()
                } else {
                    ",async_nats=warn".to_string()
                };
            EnvFilter::try_new(format!("{level}{quiet}"))
                .map_err(|e| anyhow::anyhow!("invalid --log-level `{level}`: {e}"))?
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}

/// Installs the global subscriber for `mailpush driver test`: drivers' own lines go to
/// `capture` (the report shows them), everything else to stderr at `level` (default
/// `warn` there: the report is the output).
pub fn init_capturing<L>(level: &str, capture: L) -> anyhow::Result<()>
where
    L: tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync + 'static,
{
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    check_level(level)?;
    let level = if level == "info" { "warn" } else { level };
    let filter = EnvFilter::try_new(format!("{level},mailpush::wasm::guest=off"))
        .map_err(|e| anyhow::anyhow!("invalid --log-level `{level}`: {e}"))?;
    let guests = Targets::new().with_target("mailpush::wasm::guest", LevelFilter::TRACE);
    tracing_subscriber::registry()
        .with(capture.with_filter(guests))
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(filter),
        )
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}

#[cfg(test)]
mod tests {
    use super::check_level;

    #[test]
    fn a_mistyped_level_is_refused_and_directives_pass() {
        for ok in [
            "info",
            "WARN",
            "off",
            "mailpush=debug",
            "warn,mailpush::wasm=trace",
            "info,[span]=debug",
        ] {
            assert!(check_level(ok).is_ok(), "{ok}");
        }
        for bad in ["warnn", "garbage", "info,mailpush"] {
            let e = check_level(bad).unwrap_err().to_string();
            assert!(e.contains("is not a level"), "{bad}: {e}");
        }
    }
}
