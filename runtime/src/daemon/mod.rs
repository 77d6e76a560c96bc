//! `mailpush run`: the long-running service. Ingest over HTTP (TCP and optionally a
//! unix socket) → the dispatcher → drivers. `SIGHUP` (or `POST /v1/reload`) re-reads the
//! config; `SIGTERM`/`SIGINT` stop accepting, drain queued work up to
//! `shutdown_timeout_msecs`, and exit.

pub mod auth;
pub mod connections;
pub mod handoff;
pub mod http;
pub mod metrics;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use mailpush_core::MetadataLookup;

pub use auth::read_token;
use metrics::IngestMetrics;

use crate::pipeline::{Dispatcher, Reconfigured};
use crate::registry::DriverRegistry;
use crate::status::Status;
use mailpush_config::{Config, RuntimeSettings};

/// Builds the driver registry (built-ins by default; tests add their own kinds).
pub type RegistryFn = Arc<dyn Fn() -> DriverRegistry + Send + Sync>;

/// Why a reload was refused (the running configuration is kept).
#[derive(Debug)]
pub enum ReloadRefused {
    /// mailpush is stopping: a reload would start lanes nobody stops.
    Stopping,
    /// The new config fails `check`: its errors.
    Invalid(Vec<String>),
}

/// Shared state of a running instance.
pub struct Daemon {
    pub config_path: PathBuf,
    dispatcher: Arc<Dispatcher>,
    pub token: Option<Vec<u8>>,
    pub max_body: usize,
    /// Open ingest connections and their limits.
    pub connections: Arc<connections::ConnectionTable>,
    /// Request-body bytes being read, in KiB units (`max_inflight`).
    pub body_budget: tokio::sync::Semaphore,
    /// The budget's size, in KiB units.
    pub body_budget_units: usize,
    pub queue_capacity: usize,
    pub ingest: IngestMetrics,
    pub shutting_down: AtomicBool,
    registry: RegistryFn,
    metadata: Arc<dyn MetadataLookup>,
    reload_lock: tokio::sync::Mutex<()>,
    /// When the reload in progress started, if one is.
    reloading_since: parking_lot::Mutex<Option<std::time::Instant>>,
    /// The `mailpush { }` block the service started with (a reload applies drivers only).
    settings: RuntimeSettings,
    /// Cluster mode: what this node knows of the cluster.
    pub cluster: Option<Arc<parking_lot::Mutex<crate::cluster::ownership::ClusterReport>>>,
}

impl Daemon {
    /// The dispatcher.
    pub fn dispatcher(&self) -> &Dispatcher {
        &self.dispatcher
    }

    /// The instance's state: ingest counters and every driver's report.
    pub fn status(&self) -> Status {
        let in_flight = self
            .body_budget_units
            .saturating_sub(self.body_budget.available_permits()) as u64
            * 1024;
        Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            config: self.config_path.display().to_string(),
            ingest: self.ingest.report(in_flight, &self.connections),
            drivers: self.dispatcher.reports(),
            cluster: self.cluster.as_ref().map(|c| c.lock().clone()),
        }
    }

    /// Re-reads the config and driver files. A config that fails `check` is refused
    /// (the running one is kept); drivers that did not change keep their queues.
    pub async fn reload(&self) -> Result<Reconfigured, ReloadRefused> {
        let _guard = self.reload_lock.lock().await;
        // A reload that finished after the stop began would start lanes that nobody
        // stops (the stop already took the running ones).
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err(ReloadRefused::Stopping);
        }
        /// Clears the reload's start however the reload ends (a panic included), so
        /// `/readyz` never says "reloading" for a reload that is over.
        struct Reloading<'a>(&'a parking_lot::Mutex<Option<std::time::Instant>>);
        impl Drop for Reloading<'_> {
            fn drop(&mut self) {
                *self.0.lock() = None;
            }
        }
        *self.reloading_since.lock() = Some(std::time::Instant::now());
        let _reloading = Reloading(&self.reloading_since);
        self.reload_now().await.map_err(ReloadRefused::Invalid)
    }

    /// How long the reload in progress has been running, if one is.
    pub fn reloading_for(&self) -> Option<std::time::Duration> {
        self.reloading_since.lock().map(|t| t.elapsed())
    }

    async fn reload_now(&self) -> Result<Reconfigured, Vec<String>> {
        let config = Config::load(&self.config_path).map_err(|e| {
            let errors: Vec<String> = e.0.iter().map(|e| e.to_string()).collect();
            // (A SIGHUP has no one to answer: the log is where this is said.)
            tracing::error!(
                "reload refused, keeping the running configuration: {}",
                errors.join("; ")
            );
            errors
        })?;
        for w in &config.warnings {
            tracing::warn!("{w}");
        }
        // Everything loads before the switch, big components included: the running
        // drivers deliver meanwhile, and a driver that fails to load refuses the reload
        // (the running configuration is kept) instead of replacing a working driver.
        let registry = (self.registry)();
        match registry.init_all(&config, self.metadata.clone()).await {
            Ok(loaded) => {
                let mut warnings = Vec::new();
                if config.settings != self.settings {
                    let w = "the mailpush { } block changed: reload applies the driver list only; restart mailpush for its settings (listen, state_dir, queue_capacity, max_body, ingest_token_file, …) to take effect";
                    tracing::warn!("{w}");
                    warnings.push(w.to_string());
                }
                let mut r = self.dispatcher.reconfigure(loaded).await;
                r.warnings = warnings;
                tracing::info!(kept = ?r.kept, started = ?r.started, stopped = ?r.stopped, "configuration reloaded");
                Ok(r)
            }
            Err((loaded, errors)) => {
                for d in loaded {
                    d.driver.deinit().await;
                }
                let errors: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
                tracing::error!(
                    "reload refused, keeping the running configuration: {}",
                    errors.join("; ")
                );
                Err(errors)
            }
        }
    }
}

/// Runs the service until SIGTERM/SIGINT.
///
/// The signals are taken over before anything else: one that arrives while the service
/// starts is acted on once it runs (a SIGTERM then drains at once), instead of ending the
/// process by the default action after it has begun to accept transactions.
pub async fn run(
    config_path: &Path,
    registry: RegistryFn,
    metadata: Arc<dyn MetadataLookup>,
) -> anyhow::Result<()> {
    let signals = Signals::take()?;
    serve(config_path, registry, metadata, |daemon| {
        Box::pin(signals.wait(daemon))
    })
    .await
}

/// A future that ends the service when it completes.
pub type StopFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>;

/// Runs the service until `stop_when` (given the running daemon) completes, then drains
/// and returns. [`run`] is this with signal handling; benchmarks and embedders pass their
/// own.
pub async fn serve(
    config_path: &Path,
    registry: RegistryFn,
    metadata: Arc<dyn MetadataLookup>,
    stop_when: impl FnOnce(Arc<Daemon>) -> StopFuture,
) -> anyhow::Result<()> {
    let config =
        Config::load(config_path).map_err(|e| anyhow::anyhow!("configuration is invalid:\n{e}"))?;
    if let Some(total) = config.settings.wasm_host_memory {
        crate::wasm::limits::HostMemory::global().set_total(total);
    }
    // Held until the service ends: a second instance on this state_dir's spool would
    // deliver what the first one owes too.
    let _one_instance = crate::spool::lock::DeliveryLock::for_settings(&config.settings, "start")?;
    let token = match &config.settings.ingest_token_file {
        Some(p) => Some(read_token(p).map_err(|e| {
            let at = config.settings.at.get("ingest_token_file");
            anyhow::anyhow!("{}{e:#}", at.map(|l| format!("{l}: ")).unwrap_or_default())
        })?),
        None => None,
    };
    // Cluster mode: JetStream is the spool and holds the METADATA.
    let node = match &config.settings.cluster {
        Some(c) => {
            let node = crate::cluster::Node::start(
                c,
                config.settings.listen,
                config.settings.dead_letter_max_age,
            )
            .await
            .map_err(|e| anyhow::anyhow!("refusing to start: cluster: {e}"))?;
            tracing::info!(node = %node.name, servers = c.servers.len(), "cluster mode: NATS JetStream");
            Some(node)
        }
        None => None,
    };
    // The most one transaction may take once stored, in cluster mode: NATS's max_payload
    // less room for the message's headers.
    let max_payload = node.as_ref().map(|n| {
        (n.client.max_payload() as u64).saturating_sub(crate::cluster::spool::HEADER_ROOM)
    });
    let metadata: Arc<dyn MetadataLookup> = match &node {
        Some(n) => n.metadata.clone(),
        None => metadata,
    };
    // A big component not in the AOT cache yet compiles in the background: ingest opens
    // meanwhile and its transactions wait in its queue and the spool. Not in cluster
    // mode: a delivery waiting for the load would start long after the lanes' gate let
    // it through (a partition may have moved meanwhile); the other nodes serve while
    // this one loads.
    let mut drivers = registry();
    drivers.load_in_background(node.is_none());
    let loaded = match drivers.init_all(&config, metadata.clone()).await {
        Ok(l) => l,
        Err((_, errors)) => anyhow::bail!(
            "refusing to start:\n{}",
            errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        ),
    };
    for d in &loaded {
        for w in &d.warnings {
            tracing::warn!(driver = d.number, name = %d.name, at = %d.location, "{w}");
        }
    }
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let spool = match &node {
        Some(n) => {
            let numbers: Vec<u32> = loaded.iter().map(|d| d.number).collect();
            n.ensure_consumers(&numbers)
                .await
                .map_err(|e| anyhow::anyhow!("refusing to start: cluster: {e}"))?;
            Some(n.spool.clone() as Arc<dyn crate::spool::Spool>)
        }
        None => crate::spool::open(&config.settings).map_err(|e| {
            anyhow::anyhow!(
                "cannot open the spool {}: {e}",
                config.settings.spool_path().display()
            )
        })?,
    };
    // At least one request of max_body always fits (its bytes: an NDJSON batch of very
    // many lines may need more once parsed, and is refused with 413, http.rs).
    let body_budget_units = config
        .settings
        .max_inflight
        .max(config.settings.max_body)
        .div_ceil(1024)
        .clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
    let daemon = Arc::new(Daemon {
        config_path: config_path.to_path_buf(),
        dispatcher: Arc::new(Dispatcher::start_with_spool(
            loaded,
            config.settings.queue_capacity,
            None,
            spool.clone(),
        )),
        token,
        max_body: config.settings.max_body,
        connections: connections::ConnectionTable::new(connections::fit_to_open_files(
            config.settings.connections,
        )),
        body_budget: tokio::sync::Semaphore::new(body_budget_units),
        body_budget_units,
        queue_capacity: config.settings.queue_capacity,
        ingest: IngestMetrics::default(),
        shutting_down: AtomicBool::new(false),
        registry,
        metadata,
        reload_lock: tokio::sync::Mutex::new(()),
        reloading_since: parking_lot::Mutex::new(None),
        settings: config.settings.clone(),
        cluster: node.as_ref().map(|n| n.report.clone()),
    });
    // What the spool still owes from before a restart: each driver reads its share
    // itself, in ingest order, before anything that arrives once ingest is open (see
    // `crate::pipeline::overflow`), so one user's order holds across the restart and
    // ingest need not wait.
    daemon
        .dispatcher
        .recover()
        .await
        .map_err(|e| anyhow::anyhow!("cannot read the spool: {e}"))?;
    let app = http::router(daemon.clone());
    let listener = tokio::net::TcpListener::bind(config.settings.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} ({})",
                config.settings.listen,
                setting_place(&config, "listen")
            )
        })?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        tracing::warn!(
            "listening on a non-loopback address {addr}: protect it (ingest_token_file, firewall)"
        );
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(connections::serve(
        listener,
        app.clone(),
        daemon.connections.clone(),
        stopped.clone(),
    ));
    let mut our_socket = None;
    if let Some(path) = &config.settings.listen_unix {
        clear_stale_socket(path)?;
        let listener = tokio::net::UnixListener::bind(path).with_context(|| {
            format!(
                "cannot listen on unix socket {} ({})",
                path.display(),
                setting_place(&config, "listen_unix")
            )
        })?;
        our_socket = socket_id(path);
        tracing::info!("listening on unix:{}", path.display());
        tokio::spawn(connections::serve(
            listener,
            app,
            daemon.connections.clone(),
            stopped.clone(),
        ));
    }
    {
        let table = daemon.connections.clone();
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(connections::CUT_LOG_INTERVAL);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = every.tick() => table.log_cuts(),
                    _ = stopped.wait_for(|s| *s) => return table.log_cuts(),
                }
            }
        });
    }
    if spool.is_some() {
        tokio::spawn(replay_dead_letters(daemon.clone()));
        tokio::spawn(expire_dead_letters(daemon.clone()));
    }
    let membership = node
        .as_ref()
        .map(|n| n.run(daemon.dispatcher.clone(), stopped.clone()));
    if let Some(dir) = &config.settings.handoff_dir {
        let owners = handoff::Owners::resolve(&config.settings.handoff_owners)
            .map_err(|e| anyhow::anyhow!("refusing to start: {e}"))?;
        for w in handoff::prepare(dir).map_err(|e| anyhow::anyhow!("refusing to start: {e}"))? {
            tracing::warn!("{w}");
        }
        if matches!(owners, handoff::Owners::Any) {
            tracing::warn!(
                "handoff_owners is not set: any local user who can write {} can hand off transactions; set it to Dovecot's mail user (e.g. handoff_owners = vmail)",
                dir.display()
            );
        }
        if spool.is_none() {
            tracing::warn!("handoff_dir with delivery = memory: a hand-off is removed once queued, so transactions still queued are lost if mailpush stops");
        }
        tracing::info!("reading hand-offs from {}", dir.display());
        // The most the spool holds, where a bound applies: the SQLite spool's quota, or
        // in cluster mode NATS's max_payload (the most one transaction may take).
        let (limits, what) = match max_payload {
            Some(m) => (
                handoff::Limits::new(config.settings.max_body, None).bounded_by(m),
                "NATS max_payload",
            ),
            None => (
                handoff::Limits::new(
                    config.settings.max_body,
                    spool.is_some().then_some(config.settings.spool_quota),
                ),
                "spool_quota",
            ),
        };
        if limits.max_file < config.settings.max_body as u64 {
            tracing::warn!(
                "{what} ({} bytes) is less than max_body ({} bytes): hand-off files larger than {what} are set aside, as the spool could never hold them",
                limits.max_file,
                config.settings.max_body
            );
        }
        tokio::spawn(handoff::consume(
            daemon.clone(),
            dir.clone(),
            owners,
            limits,
            stopped.clone(),
        ));
    }
    tracing::info!("listening on {addr}");
    stop_when(daemon.clone()).await?;

    tracing::info!("shutting down: no new transactions; draining queued work");
    daemon.shutting_down.store(true, Ordering::Relaxed);
    let _ = stop.send(true);
    // One deadline for everything: the drivers drain while open connections finish (new
    // requests get 503); connections still open at the deadline (a client that stalls in
    // the middle of its request) are cut.
    let timeout = config.settings.shutdown_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let connections_closed = async {
        if tokio::time::timeout_at(deadline, daemon.connections.closed())
            .await
            .is_err()
        {
            tracing::warn!(
                "shutdown timeout ({timeout:?}): cutting {} connection(s) still open",
                daemon.connections.open()
            );
            daemon.connections.cut_all();
        }
    };
    // Cluster mode: the leases are released first (another node takes over at once).
    if let Some(m) = membership {
        let _ = tokio::time::timeout_at(deadline, m).await;
    }
    // A reload under way finishes first (it is bounded by its drivers' init and the
    // deliveries in flight of those it replaces): else it could swap in lanes after the
    // stop took the running ones, and nobody would stop them.
    let drained = tokio::time::timeout_at(deadline, async {
        let _no_reload = daemon.reload_lock.lock().await;
        daemon.dispatcher.shutdown_shared().await
    });
    let ((), drained) = tokio::join!(connections_closed, drained);
    match drained {
        Ok(reports) => {
            for r in reports {
                tracing::info!(driver = r.number, name = %r.name, delivered = r.delivered, failed = r.failed, "driver stopped");
            }
            tracing::info!("shutdown complete");
        }
        Err(_) => {
            tracing::error!(
                "shutdown timeout ({timeout:?}) reached before every driver finished its queue: with the spool, what was left is delivered at the next start (with delivery = memory it is lost)"
            );
        }
    }
    if let (Some(path), Some(ours)) = (&config.settings.listen_unix, our_socket) {
        // Only our socket: another process may have replaced it meanwhile.
        if socket_id(path) == Some(ours) {
            let _ = std::fs::remove_file(path);
        }
    }
    Ok(())
}

/// The device and inode of the socket at `path`, if a socket is there.
fn socket_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    std::fs::symlink_metadata(path)
        .ok()
        .filter(|m| m.file_type().is_socket())
        .map(|m| (m.dev(), m.ino()))
}

/// Makes way for `listen_unix`: a socket left by a process that is gone is removed; a
/// socket something answers on (another mailpush) or anything that is not a socket (a
/// file the setting names by mistake) is refused, never deleted.
fn clear_stale_socket(path: &Path) -> anyhow::Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    use std::os::unix::fs::FileTypeExt;
    if !meta.file_type().is_socket() {
        anyhow::bail!(
            "listen_unix = {}: something that is not a socket is there; remove it or name another path",
            path.display()
        );
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => anyhow::bail!(
            "listen_unix = {}: another process answers on that socket (is mailpush already running?)",
            path.display()
        ),
        // Nothing listens: left by a process that is gone.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        Err(e) => anyhow::bail!(
            "listen_unix = {}: cannot tell whether another process listens on that socket ({e}); remove it if none does",
            path.display()
        ),
    }
    std::fs::remove_file(path)
        .with_context(|| format!("cannot remove the stale socket {}", path.display()))
}

/// Picks up dead letters replayed by `mailpush dlq replay` (each second).
async fn replay_dead_letters(daemon: Arc<Daemon>) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        if daemon.shutting_down.load(Ordering::Relaxed) {
            return;
        }
        if let Err(e) = daemon.dispatcher.take_replays().await {
            tracing::error!("cannot read the spool: {e}");
        }
    }
}

/// Deletes dead letters older than `dead_letter_max_age`: at start, then every minute.
async fn expire_dead_letters(daemon: Arc<Daemon>) {
    let (Some(max_age), Some(spool)) = (
        daemon.settings.dead_letter_max_age,
        daemon.dispatcher.spool().cloned(),
    ) else {
        return;
    };
    if daemon.settings.cluster.is_some() {
        // The dead-letter stream's max age does it.
        return;
    }
    loop {
        if daemon.shutting_down.load(Ordering::Relaxed) {
            return;
        }
        let before = crate::spool::now().saturating_sub(max_age.as_secs());
        let spool = spool.clone();
        match tokio::task::spawn_blocking(move || spool.expire_dead_letters(before)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(
                "deleted {n} dead letter(s) older than dead_letter_max_age={}",
                humantime::format_duration(max_age)
            ),
            Ok(Err(e)) => tracing::error!("cannot delete old dead letters: {e}"),
            Err(e) => tracing::error!("cannot delete old dead letters: {e}"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
    }
}

/// The signals the daemon handles, registered with the runtime (their default actions
/// no longer apply).
struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn take() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Handles SIGHUP (reload) until SIGTERM or SIGINT arrives.
    async fn wait(mut self, daemon: Arc<Daemon>) -> anyhow::Result<()> {
        loop {
            tokio::select! {
                _ = self.hup.recv() => {
                    tracing::info!("SIGHUP: reloading");
                    // In the background: a SIGTERM during a (bounded, but slow) reload is
                    // still heard; reloads run one at a time.
                    let d = daemon.clone();
                    tokio::spawn(async move {
                        let _ = d.reload().await;
                    });
                }
                _ = self.term.recv() => return Ok(()),
                _ = self.int.recv() => return Ok(()),
            }
        }
    }
}

/// Where a `mailpush { }` setting was set, for a start-up error: `listen at FILE:LINE`,
/// or that it is the default.
fn setting_place(config: &Config, key: &str) -> String {
    match config.settings.at.get(key) {
        Some(at) => format!("{key} at {at}"),
        None => format!(
            "{key}'s default; set it in mailpush {{ }} of {}",
            config.path.display()
        ),
    }
}
