//! The `mailpush` command line: argument parsing, wiring, printing and exit codes only;
//! what each command does is [`crate::commands`] (and [`crate::daemon`] for `run`).

mod print;

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{ArgGroup, Args, Parser, Subcommand};
use mailpush_core::NoMetadata;

use crate::commands::check::check;
use crate::commands::control::{self, ControlError};
use crate::commands::dlq::DeadLetters;
use crate::commands::metadata::{self as metadata_cmd, MetadataOp, Usage};
use crate::commands::send;
use crate::logging::{self, LogFormat};
use crate::pipeline::{Delivery, DeliveryObserver};
use crate::registry::DriverRegistry;
use mailpush_config::Config;

/// mailpush — run Dovecot-style push-notification drivers (dlog, ox, sandboxed
/// WebAssembly components) on mail-store events.
#[derive(Debug, Parser)]
#[command(name = "mailpush", version, propagate_version = true)]
#[command(
    after_help = "Examples:\n  mailpush check -c /etc/mailpush/mailpush.conf\n  mailpush send -c examples/mailpush.conf examples/events.ndjson"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Config file (Dovecot syntax: `plugin { push_notification_driver = … }` plus a
    /// `mailpush { }` block). The `driver` commands read none.
    #[arg(
        short = 'c',
        long = "config",
        global = true,
        env = "MAILPUSH_CONFIG",
        default_value = "/etc/mailpush/mailpush.conf"
    )]
    pub config: PathBuf,
    /// Log filter: error, warn, info, debug, trace, or a tracing directive such as
    /// `mailpush=debug`. RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,
    /// Log format: `human` or `json` (one JSON object per line, for log shippers).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Parse the config, initialise every driver, print the driver table and warnings.
    ///
    /// Exits 1, listing every error with file:line, when the config is unusable; exits 3
    /// when mailpush would start without something the config names: a tenant handler
    /// (tenant_drivers) that did not load, drivers after a gap in the numbering or
    /// misnumbered (ignored, as Dovecot ignores them), or no driver at all.
    /// Drivers are initialised as at start, except that a dlog's file is opened, not
    /// written (a Lua script's main chunk and script_init do run).
    /// Compiles wasm drivers into the AOT cache (state_dir/wasm-cache), so `mailpush run`
    /// starts without compiling them: run it before deploying a new driver.
    #[command(
        after_help = "Examples:\n  mailpush check -c /etc/mailpush/mailpush.conf\n  # every setting as it takes effect, defaults too:\n  mailpush check --settings\n  # also delete compiled artifacts no driver of this config uses:\n  mailpush check --prune-cache"
    )]
    Check {
        /// After a successful check, delete the compiled artifacts in the AOT cache that
        /// no driver of this config (numbered or tenant) uses: those of other components,
        /// and snapshots none of its drivers loaded (made for arguments it no longer
        /// has; kept if a tenant handler failed to load).
        #[arg(long)]
        prune_cache: bool,
        /// Print every `mailpush { }` setting with the value it takes and where it was
        /// set, or `(default)` (like `doveconf`); without it, only those the config sets.
        #[arg(long)]
        settings: bool,
    },
    /// Read canonical transactions (NDJSON, or JSON objects one after another) and
    /// dispatch them through every driver in-process; print per-driver counts.
    ///
    /// Each delivery is tried once (no retry schedule): a failure is reported and, with the
    /// spool, kept as a dead letter. As with ingest, a transaction whose id the spool
    /// still holds is stored, and delivered, once. Exits non-zero if any transaction was
    /// rejected (its line number is printed) or any delivery failed. Shows a progress bar when standard error is a terminal and
    /// standard output is not (where drivers such as `dlog:file=/dev/stdout` write).
    #[command(
        after_help = "Examples:\n  mailpush send -c examples/mailpush.conf examples/events.ndjson\n  head -n 1 examples/events.ndjson | mailpush send -c examples/mailpush.conf -"
    )]
    Send(SendArgs),
    /// Run the service: HTTP ingest at `listen` (see the `mailpush { }` block), every
    /// driver on its own queue, /metrics, /healthz, /readyz.
    ///
    /// SIGHUP reloads the config (a config that fails `check` is refused and the running
    /// one kept); SIGTERM stops accepting, drains queued work and exits.
    #[command(after_help = "Examples:
  mailpush run -c /etc/mailpush/mailpush.conf
  curl -sS -H 'Content-Type: application/x-ndjson' \\
    --data-binary @examples/events.ndjson \\
    http://127.0.0.1:8025/v1/transactions")]
    Run,
    /// Show per-driver state and queue depth of the running instance.
    #[command(after_help = "Example:
  mailpush status -c /etc/mailpush/mailpush.conf")]
    Status,
    /// Ask the running instance to re-read its config and driver files (like SIGHUP).
    #[command(after_help = "Example:
  mailpush reload -c /etc/mailpush/mailpush.conf")]
    Reload,
    /// Inspect, replay or purge dead letters (transactions a driver gave up on). Works on
    /// the state dir of a stopped or running instance; a running one picks up replays
    /// within a second.
    #[command(
        subcommand,
        after_help = "Examples:\n  mailpush dlq list -c /etc/mailpush/mailpush.conf\n  mailpush dlq replay --all --driver 2"
    )]
    Dlq(DlqCommand),
    /// Per-user METADATA (what the ox driver activates on), shaped like
    /// `doveadm mailbox metadata` so existing runbooks work.
    #[command(
        subcommand,
        after_help = "Examples:\n  mailpush metadata set -u user@example.com -s \"\" \\\n    /private/vendor/vendor.dovecot/http-notify user=11@3\n  mailpush metadata list -u user@example.com"
    )]
    Metadata(MetadataCommand),
    /// Tools for driver authors: try a component without a config file.
    #[command(
        subcommand,
        after_help = "Examples:\n  mailpush driver test target/wasm32-wasip2/release/my_driver.wasm\n  mailpush driver test webhook.wasm examples/events.ndjson \\\n    --arg secret=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw --reply 503"
    )]
    Driver(DriverCommand),
}

#[derive(Debug, Subcommand)]
pub enum DriverCommand {
    /// Run a driver over sample transactions and show, per transaction, what it logged,
    /// what it requested and what it returned.
    ///
    /// The driver gets a recording HTTP endpoint on 127.0.0.1 (granted to it with
    /// allow_hosts=127.0.0.1 allow_private); `url=` points at it unless you give one, and
    /// `{endpoint}` in an --arg value is replaced by its address. The transactions are
    /// examples/events.ndjson unless you give a file. Each is delivered once, in a fresh
    /// instance, with the sandbox's default limits (override them with --arg, e.g.
    /// --arg timeout_msecs=500). Exits non-zero when a transaction failed.
    Test(DriverTestArgs),
    /// Make a new driver project in ./NAME: a starter driver that POSTs each transaction
    /// to url=, the SDK and WIT contract it builds with, a README and ./test.sh (build,
    /// then `mailpush driver test`).
    #[command(
        after_help = "Examples:\n  mailpush driver new my-driver --lang rust\n  cd my-driver && ./test.sh"
    )]
    New {
        /// The project's name (lower-case letters, digits, `-`, `_`).
        name: String,
        /// The language.
        #[arg(long, value_enum, default_value = "rust")]
        lang: crate::commands::driver_new::Lang,
        /// Where to make it (default: the current directory).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct DriverTestArgs {
    /// The driver: a WebAssembly component built for mailpush:driver (Rust, JavaScript
    /// or Python; see docs/writing-drivers.md).
    pub component: PathBuf,
    /// Canonical transactions, one JSON object per line (default: mailpush's sample
    /// events).
    pub events: Option<PathBuf>,
    /// A driver argument, as on a config line (repeatable): --arg secret=whsec_…
    ///
    /// `init` runs in every instance here (`init=per-instance`): the endpoint's address
    /// changes at every run, and a snapshot is made per set of arguments. Pass
    /// `--arg init=snapshot` to test your driver the way `mailpush run` loads it.
    #[arg(long = "arg", value_name = "KEY=VALUE")]
    pub args: Vec<String>,
    /// The HTTP status the recording endpoint answers (try 503 or 429 to see your
    /// driver's failure handling).
    #[arg(long, default_value_t = 200, value_parser = http_status)]
    pub reply: u16,
    /// Compile the component afresh (do not use or fill the compiled-component cache in
    /// ~/.cache/mailpush).
    #[arg(long)]
    pub no_cache: bool,
    /// Keep compiled components here instead of ~/.cache/mailpush/wasm-cache.
    #[arg(long, value_name = "DIR", conflicts_with = "no_cache")]
    pub cache_dir: Option<PathBuf>,
}

/// `-u USER [-s] [MAILBOX] KEY …`: like doveadm, the mailbox of server METADATA is `""`
/// (with `-s`); it may also be left out.
#[derive(Debug, Args)]
pub struct MetadataTarget {
    /// The user.
    #[arg(short = 'u', long = "user", required = true)]
    pub user: String,
    /// Server METADATA (the only kind mailpush keeps; give the mailbox as "").
    #[arg(short = 's')]
    pub server: bool,
}

#[derive(Debug, Subcommand)]
pub enum MetadataCommand {
    /// Set a value: `set -u USER [-s] [""] KEY VALUE`.
    #[command(override_usage = "mailpush metadata set -u <USER> [-s] [MAILBOX] <KEY> <VALUE>")]
    #[command(
        after_help = "Example (as with doveadm):\n  mailpush metadata set -u user@example.com -s \"\" \\\n    /private/vendor/vendor.dovecot/http-notify user=11@3"
    )]
    Set {
        #[command(flatten)]
        target: MetadataTarget,
        /// [MAILBOX] KEY VALUE: the mailbox "" (server METADATA) or left out; the key
        /// starts with /private/ or /shared/.
        #[arg(num_args = 0..=3, value_name = "ARGS")]
        args: Vec<String>,
    },
    /// Print a value: `get -u USER [-s] [""] KEY`.
    #[command(override_usage = "mailpush metadata get -u <USER> [-s] [MAILBOX] <KEY>")]
    #[command(
        after_help = "Example:\n  mailpush metadata get -u user@example.com -s \"\" \\\n    /private/vendor/vendor.dovecot/http-notify"
    )]
    Get {
        #[command(flatten)]
        target: MetadataTarget,
        /// [MAILBOX] KEY: the mailbox "" (server METADATA) or left out; the key starts
        /// with /private/ or /shared/.
        #[arg(num_args = 0..=2, value_name = "ARGS")]
        args: Vec<String>,
    },
    /// Remove a value: `unset -u USER [-s] [""] KEY`.
    #[command(override_usage = "mailpush metadata unset -u <USER> [-s] [MAILBOX] <KEY>")]
    #[command(
        after_help = "Example:\n  mailpush metadata unset -u user@example.com -s \"\" \\\n    /private/vendor/vendor.dovecot/http-notify"
    )]
    Unset {
        #[command(flatten)]
        target: MetadataTarget,
        /// [MAILBOX] KEY: the mailbox "" (server METADATA) or left out; the key starts
        /// with /private/ or /shared/.
        #[arg(num_args = 0..=2, value_name = "ARGS")]
        args: Vec<String>,
    },
    /// List values, of every user or of one: `list [-u USER] [-s] [""]`.
    #[command(
        after_help = "Examples:\n  mailpush metadata list\n  mailpush metadata list -u user@example.com -s \"\""
    )]
    List {
        /// Only this user's values (default: every user's).
        #[arg(short = 'u', long = "user")]
        user: Option<String>,
        /// Server METADATA (the only kind mailpush keeps).
        #[arg(short = 's')]
        server: bool,
        /// The mailbox: "" (server METADATA), as with doveadm.
        #[arg(value_name = "MAILBOX")]
        mailbox: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters: id, driver, user, transaction id, attempts, last error.
    #[command(
        after_help = "Examples:\n  mailpush dlq list -c /etc/mailpush/mailpush.conf\n  mailpush dlq list --driver 2"
    )]
    List {
        /// Only this driver's, by its number (1 for `push_notification_driver`, 2 for
        /// `push_notification_driver2`, …; the `#` column of `mailpush check`).
        #[arg(long, value_name = "N", value_parser = driver_number)]
        driver: Option<u32>,
    },
    /// Show one dead letter: the transaction and every attempt's time and error.
    #[command(after_help = "Example:\n  mailpush dlq show 17")]
    Show {
        /// The dead letter's id (the first column of `mailpush dlq list`).
        #[arg(value_parser = dead_letter_id)]
        id: i64,
    },
    /// Deliver dead letters again (to the driver that gave up on them).
    #[command(group = ArgGroup::new("which").args(["id", "all"]).required(true))]
    #[command(
        after_help = "Examples:\n  mailpush dlq replay 17\n  mailpush dlq replay --all --driver 2"
    )]
    Replay {
        /// The dead letter's id (or `--all`).
        #[arg(value_parser = dead_letter_id)]
        id: Option<i64>,
        /// Every dead letter (of `--driver`, if given).
        #[arg(long)]
        all: bool,
        /// With `--all`: only this driver's, by its number (as in `mailpush check`).
        #[arg(long, value_name = "N", value_parser = driver_number, conflicts_with = "id")]
        driver: Option<u32>,
    },
    /// Delete dead letters for good.
    #[command(group = ArgGroup::new("which").args(["id", "all"]).required(true))]
    #[command(
        after_help = "Examples:\n  mailpush dlq purge 17\n  mailpush dlq purge --all --driver 2"
    )]
    Purge {
        /// The dead letter's id (or `--all`).
        #[arg(value_parser = dead_letter_id)]
        id: Option<i64>,
        /// Every dead letter (of `--driver`, if given).
        #[arg(long)]
        all: bool,
        /// With `--all`: only this driver's, by its number (as in `mailpush check`).
        #[arg(long, value_name = "N", value_parser = driver_number, conflicts_with = "id")]
        driver: Option<u32>,
    },
}

/// A dead letter's id, as `mailpush dlq list` shows it.
fn dead_letter_id(s: &str) -> Result<i64, String> {
    s.parse::<i64>().map_err(|_| {
        format!("`{s}` is not a dead letter's id: the number in the first column of `mailpush dlq list`")
    })
}

/// `--reply STATUS`: an HTTP status code.
fn http_status(s: &str) -> Result<u16, String> {
    s.parse::<u16>()
        .ok()
        .filter(|n| (100..=599).contains(n))
        .ok_or_else(|| format!("`{s}` is not an HTTP status: a number from 100 to 599, e.g. 503"))
}

/// `--driver N`: a driver's number as `mailpush check` shows it.
fn driver_number(s: &str) -> Result<u32, String> {
    s.parse::<u32>().ok().filter(|n| *n >= 1).ok_or_else(|| {
        format!(
            "`{s}` is not a driver number: 1 for push_notification_driver, 2 for push_notification_driver2, … (the # column of `mailpush check`)"
        )
    })
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// File of transactions; `-` (the default) reads standard input.
    #[arg(default_value = "-")]
    pub events: PathBuf,
}

/// How long the process waits, after its command is done, for blocking work still
/// running (a background compile at shutdown) before it exits.
const BLOCKING_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // `mailpush metadata` is shaped like doveadm's, down to its usage exit code.
        Err(e) if e.use_stderr() && std::env::args().any(|a| a == "metadata") => {
            let _ = e.print();
            return ExitCode::from(EX_USAGE);
        }
        Err(e) => e.exit(),
    };
    if !matches!(cli.command, Command::Run) {
        // Like other Unix tools, a command whose output pipe closes (`mailpush check |
        // head`) just ends, rather than panicking in println!. The service keeps Rust's
        // default (SIGPIPE ignored): a closed log pipe must not kill it.
        // SAFETY: called before any thread is started; SIG_DFL is a valid disposition.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    // `driver test` shows the driver's log lines in its report, not on stderr.
    let captured = Arc::new(crate::commands::driver_test::Captured::default());
    let logged = if matches!(cli.command, Command::Driver(DriverCommand::Test(_))) {
        logging::init_capturing(
            &cli.global.log_level,
            crate::commands::driver_test::capture_layer(captured.clone()),
        )
    } else {
        logging::init(&cli.global.log_level, cli.global.log_format)
    };
    if let Err(e) = logged {
        eprintln!("mailpush: {e:#}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mailpush: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Check {
                prune_cache,
                settings,
            } => run_check(&cli.global, *prune_cache, *settings).await,
            Command::Send(args) => run_send(&cli.global, args).await,
            Command::Run => {
                let registry: crate::daemon::RegistryFn = Arc::new(DriverRegistry::default);
                let metadata: Arc<dyn mailpush_core::MetadataLookup> =
                    match Config::load(&cli.global.config) {
                        Ok(c) => crate::metadata_store::open_for(&c.settings)
                            .map_err(|e| anyhow::anyhow!("{e}"))?,
                        Err(_) => Arc::new(NoMetadata), // run reports the config errors itself
                    };
                crate::daemon::run(&cli.global.config, registry, metadata)
                    .await
                    .map(|_| ExitCode::SUCCESS)
            }
            Command::Status => run_status(&cli.global).await,
            Command::Reload => run_reload(&cli.global).await,
            Command::Dlq(cmd) => run_dlq(&cli.global, cmd).await,
            Command::Metadata(cmd) => run_metadata(&cli.global, cmd).await,
            Command::Driver(DriverCommand::Test(args)) => run_driver_test(args, &captured).await,
            Command::Driver(DriverCommand::New { name, lang, dir }) => {
                use crate::commands::driver_new::{next_steps, scaffold};
                let files = scaffold(dir, name, *lang).map_err(|e| anyhow::anyhow!("{e}"))?;
                println!("made {} ({} files)", dir.join(name).display(), files.len());
                println!("{}", next_steps(name, *lang));
                Ok(ExitCode::SUCCESS)
            }
        }
    });
    // Work still on the blocking pool now is of no use to anyone: above all a driver's
    // background compile that `mailpush run` stopped waiting for at shutdown (a
    // JavaScript or Python component compiles for up to a minute). Dropping the runtime
    // would wait for it; the process ends after a short grace instead. Nothing durable
    // is lost: the spool committed before `run` returned, and AOT cache files are written
    // to a temporary name and renamed (a stray `*.tmp` is removed by a later prune).
    runtime.shutdown_timeout(BLOCKING_GRACE);
    match result {
        Ok(code) => code,
        // The service's last word goes where its log goes, in its format: a log shipper
        // reading JSON lines must not meet a line of plain text.
        Err(e)
            if matches!(cli.command, Command::Run) && cli.global.log_format == LogFormat::Json =>
        {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("mailpush: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_driver_test(
    args: &DriverTestArgs,
    captured: &crate::commands::driver_test::Captured,
) -> anyhow::Result<ExitCode> {
    use crate::commands::driver_test::{render, run, DriverTest};
    let events = match &args.events {
        None => None,
        Some(p) => Some(
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
        ),
    };
    let cache_dir = if args.no_cache {
        None
    } else if let Some(dir) = &args.cache_dir {
        Some(dir.clone())
    } else {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|d| d.join("mailpush").join("wasm-cache"))
    };
    let test = DriverTest {
        component: args.component.clone(),
        events,
        args: args.args.clone(),
        reply: args.reply,
        cache_dir,
    };
    let report = run(&test, captured)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    print!("{}", render(&args.component, args.reply, &report));
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// doveadm's exit code for a usage error (EX_USAGE).
const EX_USAGE: u8 = 64;

fn load_config(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|errors| {
        eprintln!("{}: configuration is invalid:", path.display());
        for e in &errors.0 {
            eprintln!("error: {e}");
        }
        ExitCode::FAILURE
    })
}

async fn run_check(
    global: &GlobalArgs,
    prune_cache: bool,
    all_settings: bool,
) -> anyhow::Result<ExitCode> {
    let mut registry = DriverRegistry::default();
    registry.only_check(true);
    let report = check(&global.config, &registry)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    print::check(&global.config, &report, all_settings);
    if prune_cache {
        match crate::commands::check::prune_cache(&report) {
            Some((dir, deleted, freed)) => println!(
                "AOT cache {}: removed {} compiled artifact(s) no driver of this config uses ({} MiB freed)",
                dir.display(),
                deleted.len(),
                freed >> 20
            ),
            None => eprintln!("--prune-cache: nothing removed: a driver or tenant handler did not load, and the artifacts it would use could go (fix it, then prune)"),
        }
    }
    Ok(if report.complete() {
        ExitCode::SUCCESS
    } else if report.ok() {
        ExitCode::from(CHECK_INCOMPLETE)
    } else {
        ExitCode::FAILURE
    })
}

/// `check`'s exit status when mailpush would start without something the config names:
/// a tenant handler that did not load, drivers the numbering passes over, or any driver.
const CHECK_INCOMPLETE: u8 = 3;

/// The progress bar of `send`.
struct Progress(indicatif::ProgressBar);

impl DeliveryObserver for Progress {
    fn delivered(&self, _: &Delivery) {
        self.0.inc(1);
    }
}

async fn run_send(global: &GlobalArgs, args: &SendArgs) -> anyhow::Result<ExitCode> {
    let config = match load_config(&global.config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let stdin = args.events.as_os_str() == "-";
    // Bytes: a line that is not UTF-8 is rejected by its number, the rest still sent.
    let text = if stdin {
        let mut text = Vec::new();
        std::io::stdin()
            .read_to_end(&mut text)
            .context("reading transactions from standard input")?;
        text
    } else {
        std::fs::read(&args.events).with_context(|| format!("reading {}", args.events.display()))?
    };
    let source = if stdin {
        "<stdin>".to_string()
    } else {
        args.events.display().to_string()
    };
    let prepared = match send::prepare(config, &DriverRegistry::default(), &text).await {
        Ok(p) => p,
        Err(send::SendError::Drivers(errors)) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e.into()),
    };
    for e in &prepared.rejected {
        eprintln!("{source}:{e}");
    }
    // A progress bar on a terminal, unless the output shares it: drivers such as
    // `dlog:file=/dev/stdout` write there, and their lines would cut through it.
    let progress =
        (std::io::stderr().is_terminal() && !std::io::stdout().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(prepared.deliveries());
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} deliveries {elapsed}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
    let report = prepared
        .run(
            progress
                .clone()
                .map(|b| Arc::new(Progress(b)) as Arc<dyn DeliveryObserver>),
        )
        .await?;
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    print::send(&report);
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn run_metadata(global: &GlobalArgs, cmd: &MetadataCommand) -> anyhow::Result<ExitCode> {
    let op = match metadata_op(cmd) {
        Ok(op) => op,
        Err(Usage(msg)) => {
            eprintln!("mailpush metadata: {msg}");
            return Ok(ExitCode::from(EX_USAGE));
        }
    };
    let config = match load_config(&global.config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let lines = match &config.settings.cluster {
        // Cluster mode: the cluster's bucket, seen by every node.
        Some(c) => {
            let client = crate::cluster::nats::connect(c, "metadata")
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let js = crate::cluster::nats::jetstream(&client);
            let bucket = crate::cluster::nats::Names::new(&c.stream).metadata_bucket();
            let store = js
                .get_key_value(&bucket)
                .await
                .map_err(|e| anyhow::anyhow!("cluster: cannot open the METADATA bucket {bucket} (has a node ever started?): {e}"))?;
            let store = crate::cluster::metadata::KvMetadata::new(store);
            metadata_cmd::run_cluster(&store, &op)
                .await
                .map_err(|e| anyhow::anyhow!("{}", e.0))?
        }
        None => {
            let store = crate::metadata_store::open_for(&config.settings)
                .map_err(|e| anyhow::anyhow!("{}", e.0))?;
            metadata_cmd::run(&store, &op).map_err(|e| anyhow::anyhow!("{}", e.0))?
        }
    };
    for line in lines {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The operation a `metadata` subcommand asks for.
fn metadata_op(cmd: &MetadataCommand) -> Result<MetadataOp, Usage> {
    Ok(match cmd {
        MetadataCommand::Set { target, args } => {
            let (key, value) = metadata_cmd::key_args(args, true)?;
            MetadataOp::Set {
                user: target.user.clone(),
                key,
                value: value.unwrap_or_default(),
            }
        }
        MetadataCommand::Get { target, args } => MetadataOp::Get {
            user: target.user.clone(),
            key: metadata_cmd::key_args(args, false)?.0,
        },
        MetadataCommand::Unset { target, args } => MetadataOp::Unset {
            user: target.user.clone(),
            key: metadata_cmd::key_args(args, false)?.0,
        },
        MetadataCommand::List { user, mailbox, .. } => {
            metadata_cmd::server_mailbox(mailbox.as_deref().unwrap_or(""))?;
            MetadataOp::List { user: user.clone() }
        }
    })
}

async fn run_dlq(global: &GlobalArgs, cmd: &DlqCommand) -> anyhow::Result<ExitCode> {
    let config = match load_config(&global.config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let letters = DeadLetters::open(&config)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let err = |e: crate::spool::SpoolError| anyhow::anyhow!("{e}");
    let asked = match cmd {
        DlqCommand::List { driver } => *driver,
        DlqCommand::Replay { driver, .. } | DlqCommand::Purge { driver, .. } => *driver,
        DlqCommand::Show { .. } => None,
    };
    // A replay of one dead letter goes to its driver's number, whatever the config has.
    let asked = match (cmd, asked) {
        (DlqCommand::Replay { id: Some(id), .. }, None) => {
            letters.show(*id).await.map_err(err)?.map(|d| d.driver)
        }
        (_, asked) => asked,
    };
    // Dead letters keep their driver's number after it is removed or renumbered: said,
    // not refused.
    let mut numbers: Vec<u32> = config.drivers.iter().map(|d| d.number).collect();
    if config.settings.tenant_drivers.is_some() {
        numbers.push(numbers.last().map_or(1, |l| l + 1));
    }
    if let Some(n) = asked {
        if !numbers.contains(&n) {
            eprintln!(
                "note: this config has no driver {n} (its drivers: {numbers:?}); dead letters of a driver since removed or renumbered keep its number"
            );
        }
    } else if let DlqCommand::Replay { id: None, .. } = cmd {
        // `--all` of every driver: those of numbers the config lacks wait for one.
        // (A note only: a spool that cannot be listed still replays.)
        let missing: Vec<u32> = letters
            .drivers()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|n| !numbers.contains(n))
            .collect();
        if !missing.is_empty() {
            eprintln!(
                "note: dead letters of drivers {missing:?}, which this config does not have (its drivers: {numbers:?}), are queued for those numbers: they are delivered once a driver of that number is configured"
            );
        }
    }

    match cmd {
        DlqCommand::List { driver } => {
            print::dead_letters(&letters.list(*driver).await.map_err(err)?)
        }
        DlqCommand::Show { id } => match letters.show(*id).await.map_err(err)? {
            Some(d) => print::dead_letter(&d),
            None => {
                eprintln!("no dead letter {id} (see `mailpush dlq list`)");
                return Ok(ExitCode::FAILURE);
            }
        },
        DlqCommand::Replay { id, driver, .. } => {
            let n = letters.replay(*id, *driver).await.map_err(err)?;
            if let (0, Some(id)) = (n, id) {
                eprintln!("no dead letter {id} (see `mailpush dlq list`)");
                return Ok(ExitCode::FAILURE);
            }
            println!("{n} dead letter(s) queued for delivery (a running instance picks them up; otherwise at the next start)");
            if n > 0 && !config.settings.durable && config.settings.cluster.is_none() {
                eprintln!(
                    "note: with `delivery = memory` a running instance keeps no spool and does not pick replays up: they are delivered by the next start with the durable spool (the default)"
                );
            }
        }
        DlqCommand::Purge { id, driver, .. } => {
            let n = letters.purge(*id, *driver).await.map_err(err)?;
            if let (0, Some(id)) = (n, id) {
                eprintln!("no dead letter {id} (see `mailpush dlq list`)");
                return Ok(ExitCode::FAILURE);
            }
            println!("{n} dead letter(s) purged");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints a refused control request; other errors go up.
fn control_failed(e: ControlError) -> anyhow::Result<ExitCode> {
    match e {
        ControlError::Refused {
            status,
            message,
            errors,
        } => {
            eprintln!("mailpush answered {status}: {message}");
            for e in errors {
                eprintln!("error: {e}");
            }
            Ok(ExitCode::FAILURE)
        }
        other => Err(other.into()),
    }
}

async fn run_status(global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let config = match load_config(&global.config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    match control::status(&config).await {
        Ok(status) => {
            print::status(&status);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => control_failed(e),
    }
}

async fn run_reload(global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let config = match load_config(&global.config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    match control::reload(&config).await {
        Ok(r) => {
            println!(
                "reloaded: kept {:?} started {:?} stopped {:?}",
                r.kept, r.started, r.stopped
            );
            for w in &r.warnings {
                eprintln!("warning: {w}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => control_failed(e),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Help is wrapped to the terminal (at most 100 columns): an example longer than a
    /// narrow terminal would be cut mid-command, and pasted as shown it would run
    /// something else. Every example line fits in 80 columns (longer commands continue
    /// with `\\`).
    #[test]
    fn every_example_fits_a_narrow_terminal() {
        fn walk(cmd: &clap::Command, path: &str, long: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            if let Some(help) = cmd.get_after_help() {
                for line in help.to_string().lines() {
                    if line.chars().count() > 78 {
                        long.push(format!("{path}: {line}"));
                    }
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &path, long);
            }
        }
        let mut long = Vec::new();
        walk(&super::Cli::command(), "", &mut long);
        assert!(long.is_empty(), "{long:#?}");
    }
}
