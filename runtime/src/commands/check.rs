//! `mailpush check`: parse the config, initialise every driver, report everything found
//! at once — bad lines, numbering problems, unknown drivers, drivers that fail to
//! initialise — then shut the drivers down again.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mailpush_core::{MetadataError, MetadataLookup, NoMetadata};

use crate::registry::{shutdown_drivers, DriverRegistry};
use crate::wasm::Engines;
use mailpush_config::{Config, ConfigError, ConfigWarning};

/// One driver as `check` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedDriver {
    pub number: u32,
    pub name: String,
    pub kind: &'static str,
    /// Arguments, secrets redacted.
    pub args: String,
    /// File, hash, limits, grants, …
    pub details: Vec<String>,
}

/// What `check` found.
#[derive(Debug, Clone)]
// (One per `mailpush check`: its size does not matter.)
#[allow(clippy::large_enum_variant)]
pub enum CheckReport {
    /// The file does not parse: every error, with the warnings found beside them.
    Invalid {
        errors: Vec<ConfigError>,
        warnings: Vec<ConfigWarning>,
    },
    /// The file parses; `errors` lists drivers that failed to initialise (mailpush
    /// refuses to start with any).
    Loaded {
        config: PathBuf,
        state_dir: PathBuf,
        listen: SocketAddr,
        /// Cluster mode, as its keys resolve (servers without credentials).
        cluster: Option<String>,
        /// Every `mailpush { }` key with the value it takes and where it was set.
        settings: Vec<mailpush_config::EffectiveSetting>,
        drivers: Vec<CheckedDriver>,
        /// The AOT cache's artifacts and records the drivers loaded or wrote; `None`
        /// when a tenant handler failed to load (what it would use is unknown).
        cache_in_use: Option<HashSet<String>>,
        /// Tenant handlers that did not load (their reasons are among `warnings`):
        /// `mailpush run` starts without them, holding their transactions.
        tenants_failed: usize,
        /// The config names drivers that would not run (after a numbering gap,
        /// misnumbered), or none at all ([`mailpush_config::Config::incomplete`]).
        incomplete: bool,
        /// Config and driver warnings, each with its place.
        warnings: Vec<String>,
        errors: Vec<ConfigError>,
    },
}

impl CheckReport {
    /// Whether mailpush would start with this config.
    pub fn ok(&self) -> bool {
        matches!(self, CheckReport::Loaded { errors, .. } if errors.is_empty())
    }

    /// Whether mailpush would start with this config, running every driver it names,
    /// every tenant handler loaded.
    pub fn complete(&self) -> bool {
        self.ok()
            && matches!(
                self,
                CheckReport::Loaded {
                    tenants_failed: 0,
                    incomplete: false,
                    ..
                }
            )
    }
}

/// Checks the config at `path` with the drivers `registry` knows.
pub async fn check(path: &Path, registry: &DriverRegistry) -> Result<CheckReport, MetadataError> {
    let config = match Config::load_for_check(path) {
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
            return Ok(CheckReport::Invalid {
                errors,
                warnings: invalid.warnings,
            });
        }
    };
    // check creates no METADATA store (it is read only when it already exists); it does
    // compile wasm drivers into the AOT cache, so a later start finds them compiled.
    let metadata: Arc<dyn MetadataLookup> =
        if config.settings.state_dir.join("metadata.db").exists() {
            crate::metadata_store::open_for(&config.settings)?
        } else {
            Arc::new(NoMetadata)
        };
    // The engines the wasm drivers load with, held to learn which artifacts they used.
    let engines = Engines::shared(Some(config.settings.state_dir.join("wasm-cache")));
    let (loaded, mut errors) = match registry.init_all(&config, metadata).await {
        Ok(loaded) => (loaded, Vec::new()),
        Err((loaded, errors)) => (loaded, errors),
    };
    if let Err(e) = usable_dir(&config.settings.state_dir) {
        errors.insert(
            0,
            ConfigError {
                location: None,
                text: String::new(),
                message: format!(
                    "{}: mailpush {{ state_dir = {} }} cannot be used: {e}. mailpush keeps its spool, METADATA and compiled drivers there: give a directory it may create and write",
                    config.path.display(),
                    config.settings.state_dir.display()
                ),
            },
        );
    }
    let (service_errors, service_warnings) = service_problems(&config);
    errors.extend(service_errors);
    let mut warnings: Vec<String> = config.warnings.iter().map(|w| w.to_string()).collect();
    warnings.extend(service_warnings);
    for d in &loaded {
        warnings.extend(
            d.warnings
                .iter()
                .map(|w| format!("{}: driver {} ({}): {w}", d.location, d.number, d.name)),
        );
    }
    let drivers = loaded
        .iter()
        .map(|d| CheckedDriver {
            number: d.number,
            name: d.name.clone(),
            kind: d.kind,
            args: d.args_display.clone(),
            details: d.details.clone(),
        })
        .collect();
    let tenants_failed: usize = loaded
        .iter()
        .filter(|d| d.name == "tenant_drivers")
        .map(|d| d.warnings.len())
        .sum();
    let cache_in_use = (tenants_failed == 0).then(|| engines.in_use());
    shutdown_drivers(loaded).await;
    let settings = config.settings.effective();
    Ok(CheckReport::Loaded {
        settings,
        config: config.path,
        state_dir: config.settings.state_dir,
        listen: config.settings.listen,
        cluster: config.settings.cluster.as_ref().map(describe_cluster),
        drivers,
        cache_in_use,
        tenants_failed,
        incomplete: config.incomplete,
        warnings,
        errors,
    })
}

/// What `run` would refuse to start with, beyond the drivers: a token file it cannot
/// read, `handoff_owners` naming nobody (with a `handoff_dir`), cluster URLs giving
/// different credentials — errors, each at the line that set it. And what may only hold
/// for the service (warnings): a token file this user may not read, a `listen_unix`
/// folder that does not exist now (systemd's `RuntimeDirectory=` makes it at start).
fn service_problems(config: &Config) -> (Vec<ConfigError>, Vec<String>) {
    let s = &config.settings;
    let problem = |key: &str, value: String, message: String| ConfigError {
        location: s.at.get(key).cloned(),
        text: format!("{key} = {value}"),
        message: format!("{message}; `mailpush run` would refuse to start"),
    };
    let at = |key: &str| s.at.get(key).map(|l| format!("{l}: ")).unwrap_or_default();
    let (mut errors, mut warnings) = (Vec::new(), Vec::new());
    if let Some(p) = &s.ingest_token_file {
        if let Err(e) = crate::daemon::read_token(p) {
            let denied = e
                .root_cause()
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied);
            if denied {
                warnings.push(format!(
                    "{}ingest_token_file {}: this user may not read it; `mailpush run` must (check as the service's user to be sure)",
                    at("ingest_token_file"),
                    p.display()
                ));
            } else {
                errors.push(problem(
                    "ingest_token_file",
                    p.display().to_string(),
                    format!("{e:#}"),
                ));
            }
        }
    }
    if s.handoff_dir.is_some() {
        if let Err(e) = crate::daemon::handoff::Owners::resolve(&s.handoff_owners) {
            errors.push(problem("handoff_owners", s.handoff_owners.join(" "), e));
        }
    }
    if let Some(p) = &s.listen_unix {
        let parent = p.parent().filter(|d| !d.as_os_str().is_empty());
        if let Some(d) = parent.filter(|d| !d.is_dir()) {
            warnings.push(format!(
                "{}listen_unix {}: its folder {} does not exist now; `mailpush run` needs it at start (systemd makes /run/mailpush with RuntimeDirectory=mailpush)",
                at("listen_unix"),
                p.display(),
                d.display()
            ));
        }
    }
    if let Some(c) = &s.cluster {
        if let Err(e) = crate::cluster::nats::split_credentials(&c.servers) {
            errors.push(problem("cluster", c.servers.join(","), e.to_string()));
        }
    }
    (errors, warnings)
}

/// The line `check` shows for cluster mode: the servers (credentials masked) and what
/// the other keys resolve to.
fn describe_cluster(c: &mailpush_config::ClusterSettings) -> String {
    let servers: Vec<String> = c
        .servers
        .iter()
        .map(|s| mailpush_core::args::redact_url(s))
        .collect();
    format!(
        "{} (stream {}, {} partitions, {} replica(s), node {})",
        servers.join(","),
        c.stream,
        c.partitions,
        c.replicas,
        c.node.as_deref().unwrap_or("(the host name)")
    )
}

/// Whether `run` can keep its data in `dir`: an existing directory is written to (a file,
/// removed again); a missing one is not created here (`check` may run as another user
/// than the service, and would leave it owned by that user), but its nearest existing
/// ancestor must be a directory this user may write into.
fn usable_dir(dir: &Path) -> std::io::Result<()> {
    use std::io::{Error, ErrorKind};
    if dir.exists() {
        if !dir.is_dir() {
            return Err(Error::new(ErrorKind::NotADirectory, "not a directory"));
        }
        let probe = dir.join(format!(".mailpush-check-{}", std::process::id()));
        std::fs::write(&probe, b"")?;
        return std::fs::remove_file(&probe);
    }
    let Some(ancestor) = dir.ancestors().skip(1).find(|a| a.exists()) else {
        return Ok(());
    };
    if !ancestor.is_dir() {
        return Err(Error::new(
            ErrorKind::NotADirectory,
            format!("{} is not a directory", ancestor.display()),
        ));
    }
    let path = std::ffi::CString::new(ancestor.as_os_str().as_encoded_bytes())
        .map_err(|e| Error::new(ErrorKind::InvalidInput, e))?;
    // SAFETY: `path` is a valid NUL-terminated string for the duration of the call.
    if unsafe { libc::access(path.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        let e = Error::last_os_error();
        return Err(Error::new(
            e.kind(),
            format!("cannot create it in {}: {e}", ancestor.display()),
        ));
    }
    Ok(())
}

/// `check --prune-cache`: deletes the AOT cache's artifacts of components no driver of a
/// successfully checked config uses (the `sha256:` lines of its drivers' details, tenant
/// handlers included), and the snapshots of those components that none of its drivers
/// loaded (made for arguments it no longer has, or by another config or build: they are
/// made again where needed). Returns the cache dir, the names deleted and the bytes
/// freed; `None` when the check failed or a tenant handler failed to load: a driver that
/// did not load names no component, and what it would use must not go.
pub fn prune_cache(report: &CheckReport) -> Option<(PathBuf, Vec<String>, u64)> {
    let CheckReport::Loaded {
        state_dir,
        drivers,
        errors,
        cache_in_use,
        ..
    } = report
    else {
        return None;
    };
    if !errors.is_empty() {
        return None;
    }
    // A tenant handler failed to load (its component is unknown).
    let cache_in_use = cache_in_use.as_ref()?;
    let used: std::collections::HashSet<String> = drivers
        .iter()
        .flat_map(|d| &d.details)
        .filter_map(|l| l.trim_start().strip_prefix("sha256: "))
        .map(str::to_string)
        .collect();
    let dir = state_dir.join("wasm-cache");
    let (deleted, freed) = crate::wasm::cache::prune_unused(&dir, &used, Some(cache_in_use));
    for name in &deleted {
        tracing::info!(cache = %dir.display(), "removed {name}: no driver of this config uses it");
    }
    Some((dir, deleted, freed))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tenant handler that did not load names no component: pruning then could delete
    /// what it would use, so nothing is pruned.
    #[test]
    fn prune_removes_nothing_when_a_tenant_handler_did_not_load() {
        let state = tempfile::tempdir().unwrap();
        let cache = state.path().join("wasm-cache");
        std::fs::create_dir(&cache).unwrap();
        let artifact = cache.join(format!("{}-0123.cwasm", "ab".repeat(32)));
        std::fs::write(&artifact, b"compiled").unwrap();
        let report = |cache_in_use: Option<HashSet<String>>| CheckReport::Loaded {
            tenants_failed: usize::from(cache_in_use.is_none()),
            incomplete: false,
            config: state.path().join("mailpush.conf"),
            state_dir: state.path().to_path_buf(),
            listen: "127.0.0.1:0".parse().unwrap(),
            cluster: None,
            settings: Vec::new(),
            drivers: Vec::new(),
            cache_in_use,
            warnings: Vec::new(),
            errors: Vec::new(),
        };
        assert!(prune_cache(&report(None)).is_none());
        assert!(artifact.exists());
        // Every handler loaded, none uses it: it goes.
        let (_, deleted, _) = prune_cache(&report(Some(HashSet::new()))).unwrap();
        assert_eq!(deleted, vec![format!("{}-0123.cwasm", "ab".repeat(32))]);
        assert!(!artifact.exists());
    }
}
