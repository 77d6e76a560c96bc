//! Log setup: `tracing` to stderr, human-readable or JSON lines.

use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `level`.
pub fn init(level: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(v)?,
        _ => {
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
