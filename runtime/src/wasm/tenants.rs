//! Tenant handlers: `mailpush { tenant_drivers = DIR }`. Each `DIR/<domain>.wasm` is a
//! wasm driver that only ever receives transactions of users `*@<domain>`; an optional
//! `DIR/<domain>.conf` holds its arguments and sandbox limits (`key=value` separated by
//! spaces or newlines, `#` comments).
//!
//! The directory is consulted for every transaction (one `stat` per file), so adding,
//! replacing or removing a file takes effect at the next transaction of that domain;
//! the swap happens between two transactions, so none is lost or delivered twice.
//! A file's version is its size, mtime, inode and ctime, so a replacement is seen even
//! when it keeps size and mtime (`cp -p`, `rsync -t`). Replace files atomically (write
//! elsewhere, then `mv`): a half-written `.wasm` or `.conf` fails to load and that
//! domain's transactions fail retryably until it is complete.
//!
//! Circuit breaking is per tenant and endpoint: the lane has no driver-wide breaker
//! (one tenant's dead endpoint must not hold back the others); each tenant's endpoints
//! have their own breakers, with the `breaker_*` keys of its `.conf` as thresholds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use mailpush_core::{
    Begin, Driver, DriverArgs, EndpointCircuit, Failure, MetadataLookup, Transaction,
};
use tokio::sync::Mutex;

use super::driver::WasmDriver;
use super::engine::Engines;
use super::log::DriverTag;
use super::sandbox::Sandbox;
use crate::breaker::{self, EndpointBreakers};

/// What identifies a version of one file: size, mtime, and (on unix) device, inode and
/// ctime — a replacement by rename changes the inode, an in-place rewrite the ctime,
/// even when size and mtime are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileVersion {
    len: u64,
    mtime: Option<SystemTime>,
    dev: u64,
    ino: u64,
    ctime: (i64, i64),
}

/// What identifies a version of a tenant's files.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    wasm: FileVersion,
    /// The `.conf`'s version and text (or why it cannot be read).
    conf: Option<(FileVersion, Result<String, String>)>,
}

struct Tenant {
    fingerprint: Fingerprint,
    driver: Arc<WasmDriver>,
    /// What its `.conf` probably meant for the sandbox but gives to the component.
    warnings: Vec<String>,
}

/// A tenant's `.conf` as a driver line's arguments: `key=value` words separated by
/// spaces or newlines; a `#` beginning a word starts a comment to the end of its line
/// (one inside a word is kept: `secret=…#…` was cut there without a word).
fn conf_args(conf: &str) -> String {
    uncommented(conf)
        .map(|(_, l)| l)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A `.conf`'s lines, numbered from 1, without their comments.
fn uncommented(conf: &str) -> impl Iterator<Item = (usize, &str)> {
    conf.lines().enumerate().map(|(n, line)| {
        let mut after_space = true;
        for (i, c) in line.char_indices() {
            if c == '#' && after_space {
                return (n + 1, line[..i].trim());
            }
            after_space = c.is_whitespace();
        }
        (n + 1, line.trim())
    })
}

/// The line of each key of a `.conf` (of its last setting, which wins), so that what is
/// said about a key can say where it is.
fn conf_lines(conf: &str) -> HashMap<String, usize> {
    let mut lines = HashMap::new();
    for (n, line) in uncommented(conf) {
        for word in line.split(' ').filter(|w| !w.is_empty()) {
            let key = word.split_once('=').map_or(word, |(k, _)| k);
            lines.insert(key.to_string(), n);
        }
    }
    lines
}

/// The tenant-drivers lane: routes each transaction to its domain's component.
pub struct TenantDrivers {
    dir: PathBuf,
    number: u32,
    engines: Arc<Engines>,
    metadata: Arc<dyn MetadataLookup>,
    /// The loaded tenants; held only to look up or swap one, never while loading.
    tenants: parking_lot::Mutex<HashMap<String, Tenant>>,
    /// One lock per domain, held while that domain's files are (re)loaded: a tenant being
    /// loaded holds back only its own transactions.
    loading: parking_lot::Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Each loaded tenant's endpoint breakers, readable without the async lock (for
    /// metrics and status).
    circuits: parking_lot::Mutex<HashMap<String, Arc<EndpointBreakers>>>,
    /// Tenants whose files failed to load, with that version of the files, until when
    /// they are not tried again, and why: each transaction would otherwise repeat the
    /// whole load (instrumenting, a snapshot's `init`, compiling).
    failed: parking_lot::Mutex<HashMap<String, (Fingerprint, std::time::Instant, String)>>,
    /// The wasm counters of tenant drivers replaced or removed since the start, so the
    /// lane's counters (the sum over its tenants) never go back.
    retired: parking_lot::Mutex<HashMap<&'static str, u64>>,
}

/// How long a tenant whose files failed to load is not loaded again (unless its files
/// change): its transactions fail, retryably, meanwhile.
const FAILED_LOAD_PAUSE: std::time::Duration = std::time::Duration::from_secs(30);

/// Said of a load whose files changed while it ran (not remembered as a failure).
const CHANGED_WHILE_LOADING: &str = "its files changed while they were loaded";

/// Transactions the tenant lane delivers at once.
pub const TENANT_CONCURRENCY: usize = 16;

/// Of those, at most this many of one tenant.
pub const TENANT_SHARE: usize = TENANT_CONCURRENCY / 4;

/// The domain part of a user name, if it is a safe file name.
pub fn user_domain(user: &str) -> Option<String> {
    let (_, domain) = user.rsplit_once('@')?;
    let domain = domain.to_ascii_lowercase();
    let safe = !domain.is_empty()
        && !domain.starts_with('.')
        && !domain.contains("..")
        && domain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    safe.then_some(domain)
}

fn stat(path: &Path) -> Option<FileVersion> {
    let m = std::fs::metadata(path).ok()?;
    if !m.is_file() {
        return None;
    }
    #[cfg(unix)]
    let (dev, ino, ctime) = {
        use std::os::unix::fs::MetadataExt;
        (m.dev(), m.ino(), (m.ctime(), m.ctime_nsec()))
    };
    #[cfg(not(unix))]
    let (dev, ino, ctime) = (0, 0, (0, 0));
    Some(FileVersion {
        len: m.len(),
        mtime: m.modified().ok(),
        dev,
        ino,
        ctime,
    })
}

impl TenantDrivers {
    /// Keeps a replaced or removed tenant's counters in the lane's totals (called with
    /// `tenants` locked, which [`Driver::counters`] reads under too: never counted
    /// twice or not at all).
    fn retire(&self, tenant: &Tenant) {
        let mut retired = self.retired.lock();
        for (name, n) in tenant.driver.counters() {
            *retired.entry(name).or_default() += n;
        }
    }

    /// The loaded driver of `domain`, if it is of the files' version `fp`.
    fn current(&self, domain: &str, fp: &Fingerprint) -> Option<Arc<WasmDriver>> {
        self.tenants
            .lock()
            .get(domain)
            .filter(|t| t.fingerprint == *fp)
            .map(|t| t.driver.clone())
    }

    /// A router over `dir`; `number` is the lane's driver number in logs.
    pub fn new(
        dir: PathBuf,
        number: u32,
        engines: Arc<Engines>,
        metadata: Arc<dyn MetadataLookup>,
    ) -> Self {
        TenantDrivers {
            dir,
            number,
            engines,
            metadata,
            tenants: parking_lot::Mutex::new(HashMap::new()),
            retired: parking_lot::Mutex::default(),
            loading: parking_lot::Mutex::new(HashMap::new()),
            circuits: parking_lot::Mutex::new(HashMap::new()),
            failed: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    /// Why `domain`'s files, in this version, failed to load a moment ago.
    fn failed_recently(&self, domain: &str, fp: &Fingerprint) -> Option<Failure> {
        let failed = self.failed.lock();
        let (version, until, why) = failed.get(domain)?;
        let left = until.checked_duration_since(std::time::Instant::now())?;
        (version == fp).then(|| Failure {
            retry_after: Some(left),
            ..Failure::retryable(format!(
                "{why} (not loaded again for {} s unless its files change)",
                left.as_secs().max(1)
            ))
        })
    }

    /// Loads every tenant currently in the directory; returns one line per tenant for
    /// `mailpush check` and the problems found (as warnings: one tenant's broken file
    /// must not stop the others).
    pub async fn scan(&self) -> (Vec<String>, Vec<String>) {
        let mut details = vec![format!("dir: {}", self.dir.display())];
        let mut warnings = Vec::new();
        let mut domains: Vec<String> = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.strip_suffix(".wasm").map(str::to_string)
                })
                .collect(),
            Err(e) => {
                warnings.push(format!(
                    "tenant_drivers: cannot read {}: {e}",
                    self.dir.display()
                ));
                Vec::new()
            }
        };
        domains.sort();
        // All at once: one tenant's slow init does not add to the others'.
        let loads = futures::future::join_all(domains.iter().map(|d| self.tenant(d))).await;
        for (domain, loaded) in domains.iter().zip(loads) {
            match loaded {
                Ok(Some(d)) => {
                    details.push(format!("tenant {domain}:"));
                    details.extend(d.details().into_iter().map(|l| format!("  {l}")));
                    // Its .conf's warnings under it: they are no failure to load (the
                    // warnings of this scan are, and make `check` exit 3).
                    if let Some(t) = self.tenants.lock().get(domain.as_str()) {
                        details.extend(t.warnings.iter().map(|w| format!("  warning: {w}")));
                    }
                }
                Ok(None) => {}
                // (Its reasons name the tenant already.)
                Err(f) => warnings.push(f.reason),
            }
        }
        (details, warnings)
    }

    fn fingerprint(&self, domain: &str) -> Option<Fingerprint> {
        let wasm = stat(&self.dir.join(format!("{domain}.wasm")))?;
        let conf_path = self.dir.join(format!("{domain}.conf"));
        let conf = stat(&conf_path).map(|version| {
            let text = std::fs::read_to_string(&conf_path).map_err(|e| e.to_string());
            (version, text)
        });
        Some(Fingerprint { wasm, conf })
    }

    /// The current driver of a domain, (re)loading it when its files changed. Loading
    /// holds only that domain's lock, and is bounded by its `init_timeout_msecs`.
    async fn tenant(&self, domain: &str) -> Result<Option<Arc<WasmDriver>>, Failure> {
        let Some(fp) = self.fingerprint(domain) else {
            let removed = {
                let mut tenants = self.tenants.lock();
                let t = tenants.remove(domain);
                if let Some(t) = &t {
                    self.retire(t);
                }
                t
            };
            if removed.is_some() {
                self.circuits.lock().remove(domain);
                tracing::info!(
                    driver = self.number,
                    tenant = domain,
                    "tenant driver removed"
                );
            }
            return Ok(None);
        };
        if let Some(d) = self.current(domain, &fp) {
            return Ok(Some(d));
        }
        if let Some(f) = self.failed_recently(domain, &fp) {
            return Err(f);
        }
        let lock = self
            .loading
            .lock()
            .entry(domain.to_string())
            .or_default()
            .clone();
        let _loading = lock.lock().await;
        // Another transaction of this domain may have loaded it meanwhile (or failed to).
        if let Some(d) = self.current(domain, &fp) {
            return Ok(Some(d));
        }
        if let Some(f) = self.failed_recently(domain, &fp) {
            return Err(f);
        }
        match self.load(domain, &fp).await {
            Ok(driver) => {
                self.failed.lock().remove(domain);
                Ok(Some(driver))
            }
            Err(f) => {
                if !f.reason.contains(CHANGED_WHILE_LOADING) {
                    self.failed.lock().insert(
                        domain.to_string(),
                        (
                            fp,
                            std::time::Instant::now() + FAILED_LOAD_PAUSE,
                            f.reason.clone(),
                        ),
                    );
                }
                Err(f)
            }
        }
    }

    /// Loads `domain`'s files as `fp` found them, and makes it the domain's driver.
    async fn load(&self, domain: &str, fp: &Fingerprint) -> Result<Arc<WasmDriver>, Failure> {
        let conf = match fp.conf.as_ref().map(|c| &c.1) {
            None => "",
            Some(Ok(text)) => text.as_str(),
            Some(Err(e)) => {
                return Err(Failure::retryable(format!(
                    "tenant {domain}: cannot read {domain}.conf: {e}"
                )))
            }
        };
        let mut args = DriverArgs::parse(&conf_args(conf));
        args.take("file");
        let lines = conf_lines(conf);
        // `DOMAIN.conf:LINE` where the key is known.
        let place = |key: Option<&str>| match key.and_then(|k| lines.get(k)) {
            Some(n) => format!("{domain}.conf:{n}"),
            None => format!("{domain}.conf"),
        };
        // Retryable, like a bad .wasm: the file may be half-written or about to be
        // fixed, and the transactions must wait for it rather than be dropped.
        let conf_error = |e: mailpush_core::InitError| {
            Failure::retryable(format!(
                "tenant {domain}: {}: {}",
                place(e.arg.as_deref()),
                e.message
            ))
        };
        let mut sandbox = Sandbox::from_args(&mut args).map_err(conf_error)?;
        sandbox.http.endpoint_breaker = breaker::from_args(&mut args).map_err(conf_error)?;
        // Tenants share their driver's lane: a handler called synchronously would hold
        // it, and every other tenant's transactions, for its whole CPU budget; on a
        // fiber it yields at every deadline slice.
        sandbox.instance.synchronous_allowed = false;
        let mut warnings = sandbox.warnings();
        warnings.extend(super::factory::unapplied_keys(&args, &sandbox));
        let warnings: Vec<String> = warnings
            .into_iter()
            .map(|(key, w)| format!("tenant {domain}: {}: {w}", place(Some(&key))))
            .collect();
        for w in &warnings {
            tracing::warn!(driver = self.number, tenant = domain, "{w}");
        }
        let tag = Arc::new(DriverTag {
            number: self.number,
            name: format!("tenant:{domain}"),
        });
        let path = self.dir.join(format!("{domain}.wasm"));
        let driver = WasmDriver::load(
            tag,
            &path,
            sandbox,
            args,
            &self.engines,
            self.metadata.clone(),
        )
        .await
        .map_err(|e| {
            Failure::retryable(format!(
                "tenant {domain}: cannot load {}: {}",
                path.display(),
                e.message
            ))
        })?;
        // The component is read again by the load: if the files changed meanwhile, what
        // was loaded may pair the new code with the old .conf's grants.
        if self.fingerprint(domain).as_ref() != Some(fp) {
            return Err(Failure::retryable(format!(
                "tenant {domain}: {CHANGED_WHILE_LOADING}; loading again"
            )));
        }
        let driver = Arc::new(driver);
        self.circuits
            .lock()
            .insert(domain.to_string(), driver.endpoint_breakers().clone());
        let replaced = {
            let mut tenants = self.tenants.lock();
            let old = tenants.insert(
                domain.to_string(),
                Tenant {
                    fingerprint: fp.clone(),
                    driver: driver.clone(),
                    warnings,
                },
            );
            if let Some(old) = &old {
                self.retire(old);
            }
            old.is_some()
        };
        tracing::info!(
            driver = self.number,
            tenant = domain,
            "tenant driver {}",
            if replaced { "replaced" } else { "loaded" }
        );
        Ok(driver)
    }
}

#[async_trait]
impl Driver for TenantDrivers {
    /// Tenants share one lane: up to this many transactions (of different users, so
    /// often of different tenants) at once, so that one tenant's slow endpoint does not
    /// hold back the others.
    fn concurrency(&self) -> usize {
        TENANT_CONCURRENCY
    }

    /// One tenant may have at most a quarter of the lane's slots: a tenant whose
    /// deliveries are slow (or whose users are many) never holds back the others.
    fn share(&self, txn: &Transaction) -> Option<(String, usize)> {
        user_domain(&txn.user).map(|d| (d, TENANT_SHARE))
    }

    async fn begin_txn(&self, txn: &Arc<Transaction>) -> Result<Begin, Failure> {
        let Some(domain) = user_domain(&txn.user) else {
            return Ok(Begin::Skip);
        };
        match self.tenant(&domain).await? {
            Some(driver) => driver.begin_txn(txn).await,
            None => Ok(Begin::Skip),
        }
    }

    /// The wasm counters (traps, timeouts, memory-limit hits, fuel, instances, log lines
    /// dropped) of every tenant's driver, summed, those replaced or removed included.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        let tenants = self.tenants.lock();
        let mut sums = self.retired.lock().clone();
        for t in tenants.values() {
            for (name, n) in t.driver.counters() {
                *sums.entry(name).or_default() += n;
            }
        }
        drop(tenants);
        // In the order a single wasm driver reports them.
        super::stats::WasmStats::default()
            .counters()
            .into_iter()
            .map(|(name, _)| (name, sums.get(name).copied().unwrap_or(0)))
            .collect()
    }

    fn endpoint_circuits(&self) -> Vec<EndpointCircuit> {
        let now = std::time::Instant::now();
        let circuits = self.circuits.lock();
        let mut out: Vec<EndpointCircuit> = circuits
            .iter()
            .flat_map(|(domain, breakers)| {
                breakers
                    .states(now)
                    .into_iter()
                    .map(|(endpoint, state)| EndpointCircuit {
                        endpoint,
                        scope: Some(domain.clone()),
                        state,
                    })
            })
            .collect();
        out.sort_by(|a, b| (&a.scope, &a.endpoint).cmp(&(&b.scope, &b.endpoint)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `#` beginning a word starts a comment; one inside a word (a secret, a URL's
    /// fragment) is kept.
    #[test]
    fn tenant_conf_comments() {
        assert_eq!(
            conf_args("# tenant a\nurl=https://h/x#frag secret=whsec_ab#cd # the secret\n\n  memory=8M#x\n#all\n"),
            "url=https://h/x#frag secret=whsec_ab#cd memory=8M#x"
        );
    }

    /// What is said about a key names its line (the last, which wins).
    #[test]
    fn tenant_conf_lines() {
        let lines = conf_lines("# tenant a\nurl=https://h/x # url=nope\n\nmemory=8M fuel=1\nmemory=9M\nallow_private\n");
        assert_eq!(lines.get("url"), Some(&2));
        assert_eq!(lines.get("memory"), Some(&5));
        assert_eq!(lines.get("fuel"), Some(&4));
        assert_eq!(lines.get("allow_private"), Some(&6));
        assert_eq!(lines.get("tenant"), None);
    }

    #[test]
    fn domains_are_safe_file_names() {
        assert_eq!(user_domain("a@Example.COM"), Some("example.com".into()));
        assert_eq!(user_domain("a@b@example.net"), Some("example.net".into()));
        for bad in ["nodomain", "a@", "a@../etc", "a@x/y", "a@.hidden", "a@x..y"] {
            assert_eq!(user_domain(bad), None, "{bad}");
        }
    }
}
