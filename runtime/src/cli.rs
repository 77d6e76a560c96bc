//! The `mailpush` command line: argument parsing and wiring only; the work is done by
//! the library modules.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use mailpush_core::{NoMetadata, Transaction};

use crate::config::Config;
use crate::dispatch::{Delivery, DeliveryObserver, Dispatcher, DriverReport};
use crate::logging::{self, LogFormat};
use crate::registry::DriverRegistry;

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
    /// `mailpush { }` block).
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
    /// Exits non-zero, listing every error with file:line, when the config is unusable.
    #[command(after_help = "Example:\n  mailpush check -c /etc/mailpush/mailpush.conf")]
    Check,
    /// Read canonical transactions (NDJSON, or JSON objects one after another) and
    /// dispatch them through every driver in-process; print per-driver counts.
    ///
    /// Exits non-zero if any transaction was rejected (its line number is printed) or
    /// any delivery failed. Shows a progress bar when standard error is a terminal and
    /// standard output is not (where drivers such as `dlog:file=/dev/stdout` write).
    #[command(
        after_help = "Examples:\n  mailpush send -c examples/mailpush.conf examples/events.ndjson\n  echo '{\"user\":\"a@example.com\",\"events\":[{\"name\":\"MailboxCreate\",\"mailbox\":\"Work\"}]}' | mailpush send -c examples/mailpush.conf -"
    )]
    Send(SendArgs),
    /// Run the service: HTTP ingest at `listen` (see the `mailpush { }` block), every
    /// driver on its own queue, /metrics, /healthz, /readyz.
    ///
    /// SIGHUP reloads the config (a config that fails `check` is refused and the running
    /// one kept); SIGTERM stops accepting, drains queued work and exits.
    #[command(after_help = "Examples:
  mailpush run -c /etc/mailpush/mailpush.conf
  curl -sS -H 'Content-Type: application/x-ndjson' --data-binary @examples/events.ndjson http://127.0.0.1:8025/v1/transactions")]
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
        after_help = "Examples:\n  mailpush metadata set -u user@example.com -s \"\" /private/vendor/vendor.dovecot/http-notify user=11@3\n  mailpush metadata list -u user@example.com"
    )]
    Metadata(MetadataCommand),
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
    #[command(
        after_help = "Example (as with doveadm):\n  mailpush metadata set -u user@example.com -s \"\" /private/vendor/vendor.dovecot/http-notify user=11@3"
    )]
    Set {
        #[command(flatten)]
        target: MetadataTarget,
        /// [MAILBOX] KEY VALUE
        #[arg(num_args = 2..=3, required = true, value_names = ["MAILBOX", "KEY", "VALUE"])]
        args: Vec<String>,
    },
    /// Print a value: `get -u USER [-s] [""] KEY`.
    #[command(
        after_help = "Example:\n  mailpush metadata get -u user@example.com -s \"\" /private/vendor/vendor.dovecot/http-notify"
    )]
    Get {
        #[command(flatten)]
        target: MetadataTarget,
        /// [MAILBOX] KEY
        #[arg(num_args = 1..=2, required = true, value_names = ["MAILBOX", "KEY"])]
        args: Vec<String>,
    },
    /// Remove a value: `unset -u USER [-s] [""] KEY`.
    #[command(
        after_help = "Example:\n  mailpush metadata unset -u user@example.com -s \"\" /private/vendor/vendor.dovecot/http-notify"
    )]
    Unset {
        #[command(flatten)]
        target: MetadataTarget,
        #[arg(num_args = 1..=2, required = true, value_names = ["MAILBOX", "KEY"])]
        args: Vec<String>,
    },
    /// List values, of every user or of one: `list [-u USER] [-s] [""]`.
    #[command(
        after_help = "Examples:\n  mailpush metadata list\n  mailpush metadata list -u user@example.com -s \"\""
    )]
    List {
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
        /// Only this driver's.
        #[arg(long)]
        driver: Option<u32>,
    },
    /// Show one dead letter: the transaction and every attempt's time and error.
    #[command(after_help = "Example:\n  mailpush dlq show 17")]
    Show { id: i64 },
    /// Deliver dead letters again (to the driver that gave up on them).
    #[command(
        after_help = "Examples:\n  mailpush dlq replay 17\n  mailpush dlq replay --all --driver 2"
    )]
    Replay {
        /// The dead letter's id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<i64>,
        /// Every dead letter (of `--driver`, if given).
        #[arg(long)]
        all: bool,
        #[arg(long)]
        driver: Option<u32>,
    },
    /// Delete dead letters for good.
    #[command(
        after_help = "Examples:\n  mailpush dlq purge 17\n  mailpush dlq purge --all --driver 2"
    )]
    Purge {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<i64>,
        #[arg(long)]
        all: bool,
        #[arg(long)]
        driver: Option<u32>,
    },
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// File of transactions; `-` (the default) reads standard input.
    #[arg(default_value = "-")]
    pub events: PathBuf,
}

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
    if let Err(e) = logging::init(&cli.global.log_level, cli.global.log_format) {
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
            Command::Check => check(&cli.global).await,
            Command::Send(args) => send(&cli.global, args).await,
            Command::Run => {
                let registry: crate::daemon::RegistryFn = Arc::new(DriverRegistry::default);
                let metadata: Arc<dyn mailpush_core::MetadataLookup> =
                    match Config::load(&cli.global.config) {
                        Ok(c) => c
                            .settings
                            .open_metadata()
                            .map_err(|e| anyhow::anyhow!("{e}"))?,
                        Err(_) => Arc::new(NoMetadata), // run reports the config errors itself
                    };
                crate::daemon::run(&cli.global.config, registry, metadata)
                    .await
                    .map(|_| ExitCode::SUCCESS)
            }
            Command::Status => control(&cli.global, reqwest::Method::GET, "/v1/status").await,
            Command::Reload => control(&cli.global, reqwest::Method::POST, "/v1/reload").await,
            Command::Dlq(cmd) => dlq(&cli.global, cmd),
            Command::Metadata(cmd) => metadata(&cli.global, cmd),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mailpush: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|errors| {
        eprintln!("{}: configuration is invalid:", path.display());
        for e in &errors.0 {
            eprintln!("error: {e}");
        }
        ExitCode::FAILURE
    })
}

async fn check(global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let registry = DriverRegistry::default();
    let config = match Config::load_for_check(&global.config) {
        Ok(c) => c,
        Err(invalid) => {
            // Report everything found, not only the first kind of problem: the bad
            // lines, then the numbering warnings and unknown driver names.
            let mut errors = invalid.errors;
            errors.extend(
                invalid
                    .drivers
                    .iter()
                    .filter_map(|d| registry.factory_for(d).err()),
            );
            let path = global.config.display();
            eprintln!("{path}: configuration is invalid:");
            for w in &invalid.warnings {
                eprintln!("warning: {w}");
            }
            for e in &errors {
                eprintln!("error: {e}");
            }
            eprintln!(
                "{} error(s); fix them and run `mailpush check` again",
                errors.len()
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    // check creates no METADATA store (it is read only when it already exists); it does
    // compile wasm drivers into the AOT cache, so a later start finds them compiled.
    let metadata: Arc<dyn mailpush_core::MetadataLookup> =
        if config.settings.state_dir.join("metadata.db").exists() {
            config
                .settings
                .open_metadata()
                .map_err(|e| anyhow::anyhow!("{e}"))?
        } else {
            Arc::new(NoMetadata)
        };
    let (loaded, errors) = match registry.init_all(&config, metadata).await {
        Ok(loaded) => (loaded, Vec::new()),
        Err((loaded, errors)) => (loaded, errors),
    };
    println!("config: {}", config.path.display());
    println!("state_dir: {}", config.settings.state_dir.display());
    println!("listen: {}", config.settings.listen);
    println!();
    println!("{:<4} {:<12} {:<7} ARGS", "#", "NAME", "KIND");
    for d in &loaded {
        println!(
            "{:<4} {:<12} {:<7} {}",
            d.number, d.name, d.kind, d.args_display
        );
        for line in &d.details {
            println!("{:<4} {:<12} {:<7}   {line}", "", "", "");
        }
    }
    if loaded.is_empty() && errors.is_empty() {
        println!(
            "(no drivers: set push_notification_driver = NAME[:ARGS] in a plugin {{ }} block)"
        );
    }
    let mut warnings: Vec<String> = config.warnings.iter().map(|w| w.to_string()).collect();
    for d in &loaded {
        warnings.extend(
            d.warnings
                .iter()
                .map(|w| format!("{}: driver {} ({}): {w}", d.location, d.number, d.name)),
        );
    }
    if !warnings.is_empty() {
        println!();
        for w in &warnings {
            println!("warning: {w}");
        }
    }
    if errors.is_empty() {
        println!();
        println!("OK: {} driver(s) ready", loaded.len());
        shutdown_drivers(loaded).await;
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!();
        for e in &errors {
            eprintln!("error: {e}");
        }
        eprintln!(
            "{} error(s); mailpush refuses to start with this config (Dovecot would silently drop the failing driver and every later-numbered one)",
            errors.len()
        );
        shutdown_drivers(loaded).await;
        Ok(ExitCode::FAILURE)
    }
}

async fn shutdown_drivers(loaded: Vec<crate::registry::LoadedDriver>) {
    for d in loaded {
        d.driver.deinit().await;
    }
}

/// Progress display for `send`.
/// What `send` does with each final delivery result: advance the progress bar, and record
/// the driver's progress in the spool (done, or a dead letter: `send` does not wait for
/// retries), so a later `mailpush run` does not deliver it again.
struct SendObserver {
    progress: Option<indicatif::ProgressBar>,
    spool: Option<Arc<dyn crate::spool::Spool>>,
}

impl DeliveryObserver for SendObserver {
    fn delivered(&self, d: &Delivery) {
        if let Some(p) = &self.progress {
            p.inc(1);
        }
        let Some(spool) = &self.spool else {
            return;
        };
        let recorded = match &d.outcome {
            crate::dispatch::Outcome::Failed(f) => spool.dead_letter(
                &d.txn,
                d.driver,
                &[crate::spool::Attempt {
                    at: crate::spool::now(),
                    error: f.reason.clone(),
                }],
            ),
            _ => spool.complete(&d.txn.id, d.driver),
        };
        if let Err(e) = recorded {
            tracing::error!(driver = d.driver, txn = %d.txn.id, "cannot record progress: {e}");
        }
    }
}

async fn send(global: &GlobalArgs, args: &SendArgs) -> anyhow::Result<ExitCode> {
    let config = match load_config(&global.config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let mut text = String::new();
    if args.events.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading transactions from standard input")?;
    } else {
        text = std::fs::read_to_string(&args.events)
            .with_context(|| format!("reading {}", args.events.display()))?;
    }
    let source = if args.events.as_os_str() == "-" {
        "<stdin>".to_string()
    } else {
        args.events.display().to_string()
    };
    let items = mailpush_core::parse_stream(&text);
    let registry = DriverRegistry::default();
    let metadata = config
        .settings
        .open_metadata()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let loaded = match registry.init_all(&config, metadata).await {
        Ok(l) => l,
        Err((loaded, errors)) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            shutdown_drivers(loaded).await;
            return Ok(ExitCode::FAILURE);
        }
    };
    let total = items.iter().filter(|i| i.is_ok()).count() as u64 * loaded.len() as u64;
    // A progress bar on a terminal, unless the output shares it: drivers such as
    // `dlog:file=/dev/stdout` write there, and their lines would cut through the bar.
    let progress = if std::io::stderr().is_terminal() && !std::io::stdout().is_terminal() {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} deliveries {elapsed}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(bar)
    } else {
        None
    };
    let spool = config
        .settings
        .open_spool()
        .map_err(|e| anyhow::anyhow!("cannot open the spool: {e}"))?;
    let observer: Arc<dyn DeliveryObserver> = Arc::new(SendObserver {
        progress: progress.clone(),
        spool: spool.clone(),
    });
    let drivers: Vec<u32> = loaded.iter().map(|d| d.number).collect();
    let dispatcher = Dispatcher::start(loaded, config.settings.queue_capacity, Some(observer));
    let mut rejected = 0;
    let mut txns = Vec::new();
    for item in items {
        match item {
            Ok(txn) => txns.push(txn),
            Err(e) => {
                rejected += 1;
                eprintln!("{source}:{e}");
            }
        }
    }
    let accepted = txns.len();
    // Durable first (one commit): if this process dies, `mailpush run` delivers the rest.
    if let Some(spool) = &spool {
        spool
            .append(&txns, &drivers)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    // Every driver is fed on its own: a slow one does not hold back the others.
    let txns: Vec<Arc<Transaction>> = txns.into_iter().map(Arc::new).collect();
    dispatcher
        .dispatch_all(&txns)
        .await
        .context("dispatching")?;
    let reports = dispatcher.shutdown().await;
    if let Some(spool) = &spool {
        // A round trip through the spool's writer: every progress record is committed
        // before we exit, so a later `mailpush run` does not deliver these again.
        spool.append(&[], &[]).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    print_reports(&reports, accepted, rejected);
    let failed: u64 = reports.iter().map(|r| r.failed).sum();
    Ok(if rejected > 0 || failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Splits `[MAILBOX] KEY [VALUE]`: a mailbox, when given, must be "" (server METADATA).
/// doveadm's exit code for a usage error (EX_USAGE).
const EX_USAGE: u8 = 64;

/// `[MAILBOX] KEY [VALUE]` as doveadm takes them; a usage error is the message.
fn metadata_args(args: &[String], with_value: bool) -> Result<(String, Option<String>), String> {
    let n = if with_value { 2 } else { 1 };
    // `set -u U -s "" KEY` (the mailbox given, the value forgotten).
    if with_value && args.len() == 2 && args[0].is_empty() {
        return Err(format!(
            "missing VALUE after the key {}: usage: mailpush metadata set -u USER [-s] [\"\"] KEY VALUE",
            args[1]
        ));
    }
    let (mailbox, rest) = if args.len() > n {
        (Some(&args[0]), &args[1..])
    } else {
        (None, args)
    };
    if let Some(m) = mailbox {
        server_mailbox(m)?;
    }
    let key = rest.first().cloned().unwrap_or_default();
    crate::metadata_store::validate_key(&key).map_err(|e| e.0)?;
    Ok((key, rest.get(1).cloned()))
}

fn server_mailbox(m: &str) -> Result<(), String> {
    if m.is_empty() {
        Ok(())
    } else {
        Err(format!("mailbox `{m}`: mailpush keeps server METADATA only; give the mailbox as \"\" (with -s), as in `doveadm mailbox metadata set -u USER -s \"\" KEY VALUE`"))
    }
}

fn metadata(global: &GlobalArgs, cmd: &MetadataCommand) -> anyhow::Result<ExitCode> {
    use mailpush_core::MetadataLookup;
    let config = match load_config(&global.config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let store = config
        .settings
        .open_metadata()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let e = |e: mailpush_core::MetadataError| anyhow::anyhow!("{}", e.0);
    let usage = |msg: String| {
        eprintln!("mailpush metadata: {msg}");
        Ok(ExitCode::from(EX_USAGE))
    };
    match cmd {
        MetadataCommand::Set { target, args } => {
            let (key, value) = match metadata_args(args, true) {
                Ok(a) => a,
                Err(msg) => return usage(msg),
            };
            store
                .set(&target.user, &key, value.as_deref().unwrap_or(""))
                .map_err(e)?;
        }
        MetadataCommand::Get { target, args } => {
            let (key, _) = match metadata_args(args, false) {
                Ok(a) => a,
                Err(msg) => return usage(msg),
            };
            // As doveadm: an unset key prints as an empty value, and is no error.
            println!(
                "{}",
                store
                    .get(&target.user, &key)
                    .map_err(e)?
                    .unwrap_or_default()
            );
        }
        MetadataCommand::Unset { target, args } => {
            let (key, _) = match metadata_args(args, false) {
                Ok(a) => a,
                Err(msg) => return usage(msg),
            };
            store.unset(&target.user, &key).map_err(e)?;
        }
        MetadataCommand::List { user, mailbox, .. } => {
            if let Err(msg) = server_mailbox(mailbox.as_deref().unwrap_or("")) {
                return usage(msg);
            }
            for (u, k, v) in store.list(user.as_deref()).map_err(e)? {
                println!("{u}\t{k}\t{v}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn dlq(global: &GlobalArgs, cmd: &DlqCommand) -> anyhow::Result<ExitCode> {
    use crate::spool::Spool;
    let config = match load_config(&global.config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let path = config.settings.spool_path();
    anyhow::ensure!(
        path.exists(),
        "no spool at {} (nothing was ever spooled with this config)",
        path.display()
    );
    let spool = crate::spool::sqlite::SqliteSpool::open(&path, config.settings.spool_quota)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let err = |e: crate::spool::SpoolError| anyhow::anyhow!("{e}");
    match cmd {
        DlqCommand::List { driver } => {
            let letters = spool.dead_letters(*driver).map_err(err)?;
            println!(
                "{:<6} {:<6} {:<28} {:<38} {:>8}  LAST ERROR",
                "ID", "DRIVER", "USER", "TRANSACTION", "ATTEMPTS"
            );
            for d in &letters {
                println!(
                    "{:<6} {:<6} {:<28} {:<38} {:>8}  {}",
                    d.id,
                    d.driver,
                    d.txn.user,
                    d.txn.id,
                    d.attempts.len(),
                    d.attempts.last().map(|a| a.error.as_str()).unwrap_or("")
                );
            }
            eprintln!("{} dead letter(s)", letters.len());
        }
        DlqCommand::Show { id } => {
            let Some(d) = spool
                .dead_letters(None)
                .map_err(err)?
                .into_iter()
                .find(|d| d.id == *id)
            else {
                eprintln!("no dead letter {id} (see `mailpush dlq list`)");
                return Ok(ExitCode::FAILURE);
            };
            println!(
                "id: {}\ndriver: {}\nuser: {}\ntransaction: {}",
                d.id, d.driver, d.txn.user, d.txn.id
            );
            for (i, a) in d.attempts.iter().enumerate() {
                println!("attempt {}: at {} (unix): {}", i + 1, a.at, a.error);
            }
            println!("{}", d.txn.to_json());
        }
        DlqCommand::Replay { id, driver, .. } => {
            let n = spool.replay(*id, *driver).map_err(err)?;
            println!("{n} dead letter(s) queued for delivery (a running instance picks them up; otherwise at the next start)");
            if n == 0 && id.is_some() {
                return Ok(ExitCode::FAILURE);
            }
        }
        DlqCommand::Purge { id, driver, .. } => {
            let n = spool.purge(*id, *driver).map_err(err)?;
            println!("{n} dead letter(s) purged");
            if n == 0 && id.is_some() {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Talks to the running instance's control API at `listen`.
async fn control(
    global: &GlobalArgs,
    method: reqwest::Method,
    path: &str,
) -> anyhow::Result<ExitCode> {
    let config = match load_config(&global.config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let url = format!("http://{}{path}", config.settings.listen);
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()?;
    let mut req = client.request(method, &url);
    if let Some(p) = &config.settings.ingest_token_file {
        let token = crate::daemon::read_token(p)?;
        req = req.bearer_auth(String::from_utf8_lossy(&token));
    }
    let resp = req.send().await.with_context(|| {
        format!("cannot reach mailpush at {url}: is `mailpush run` running with this config?")
    })?;
    let status = resp.status();
    let body: serde_json::Value =
        serde_json::from_slice(&resp.bytes().await.context("reading the answer")?)
            .unwrap_or_default();
    if !status.is_success() {
        eprintln!(
            "mailpush answered {status}: {}",
            body["error"].as_str().unwrap_or("")
        );
        if let Some(errors) = body["errors"].as_array() {
            for e in errors {
                eprintln!("error: {}", e.as_str().unwrap_or_default());
            }
        }
        return Ok(ExitCode::FAILURE);
    }
    if path == "/v1/status" {
        println!(
            "{:<4} {:<16} {:<10} {:<9} {:>7} {:>9} {:>7} {:>8}",
            "#", "DRIVER", "STATE", "CIRCUIT", "QUEUED", "DELIVERED", "FAILED", "SKIPPED"
        );
        let mut endpoints = Vec::new();
        for d in body["drivers"].as_array().into_iter().flatten() {
            // QUEUED: waiting in the queue plus held by the lane (being delivered or
            // waiting for a retry).
            let n = |k: &str| d[k].as_u64().unwrap_or(0);
            println!(
                "{:<4} {:<16} {:<10} {:<9} {:>7} {:>9} {:>7} {:>8}",
                n("number"),
                d["name"].as_str().unwrap_or(""),
                d["state"].as_str().unwrap_or(""),
                d["circuit"].as_str().unwrap_or(""),
                n("queued") + n("held"),
                n("delivered"),
                n("failed"),
                n("skipped")
            );
            for e in d["endpoints"].as_array().into_iter().flatten() {
                endpoints.push(format!(
                    "{:<4} {}{} {}",
                    d["number"],
                    e["scope"]
                        .as_str()
                        .map(|s| format!("{s}: "))
                        .unwrap_or_default(),
                    e["endpoint"].as_str().unwrap_or(""),
                    e["circuit"].as_str().unwrap_or("")
                ));
            }
        }
        if !endpoints.is_empty() {
            println!("\nendpoint circuits (endpoints seen failing):");
            for line in endpoints {
                println!("{line}");
            }
        }
    } else {
        println!(
            "reloaded: kept {} started {} stopped {}",
            body["kept"], body["started"], body["stopped"]
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_reports(reports: &[DriverReport], accepted: usize, rejected: usize) {
    eprintln!("{accepted} transaction(s) accepted, {rejected} rejected");
    eprintln!(
        "{:<4} {:<12} {:>9} {:>8} {:>7}",
        "#", "DRIVER", "DELIVERED", "SKIPPED", "FAILED"
    );
    for r in reports {
        eprintln!(
            "{:<4} {:<12} {:>9} {:>8} {:>7}",
            r.number, r.name, r.delivered, r.skipped, r.failed
        );
    }
}
