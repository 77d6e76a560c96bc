//! `WasmDriver`: a WebAssembly component as a numbered push driver. Dovecot's hooks map
//! onto the component's exports: `begin_txn` → `begin-txn` (in an instance from
//! [`super::instance`]), the wanted events are collected, `end_txn` → one `deliver`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use mailpush_core::{
    Begin, Driver, DriverArgs, DriverTxn, EndpointCircuit, Event, EventSet, Failure, InitError,
    MailboxRecord, MessageRecord, MetadataLookup, Transaction,
};
use wasmtime::Store;

use super::bindings::exports::mailpush::driver::driver as wit_driver;
use super::bindings::WIT_PACKAGE;
use super::convert;
use super::engine::{
    ArtifactLease, CacheOutcome, Engines, LoadedComponent, SnapshotLookup, Source, WasmEngine,
};
use super::function_cache::FunctionReuse;
use super::http::HttpPolicy;
use super::instance::{Instance, InstanceParts, Instances};
use super::log::{DriverTag, LogRate};
use super::lower::{EventRecord, TransactionRef};
use super::sandbox::Sandbox;
use super::snapshot::Preinit;
use super::state::HostState;
use super::stats::WasmStats;
use super::trap::{classify, reason};
use crate::breaker::EndpointBreakers;
use crate::logging::Tally;

struct WasmInner {
    tag: Arc<DriverTag>,
    path: PathBuf,
    sha256: String,
    wit_version: String,
    cache: CacheOutcome,
    functions: Option<FunctionReuse>,
    /// How `init` runs: from a snapshot, or in every instance and why.
    init: String,
    sandbox: Arc<Sandbox>,
    instances: Instances,
    /// The driver's answer to every `begin-txn`, declared at load through
    /// `fixed-begin` (0.1.1): then `begin-txn` is not called.
    fixed: Option<BeginAnswer>,
    policy: HttpPolicy,
    stats: WasmStats,
    /// Log lines dropped and not reported yet.
    drops: Tally,
    /// Its hold on its artifacts in the AOT cache, given back with the driver.
    _cache: ArtifactLease,
}

/// A driver's answer to `begin-txn` (from `begin-txn`, or from `fixed-begin` for every
/// transaction).
#[derive(Debug, Clone, Copy)]
enum BeginAnswer {
    Skip,
    Join(EventSet),
}

impl BeginAnswer {
    fn from_wit(answer: wit_driver::Begin) -> Self {
        match answer {
            wit_driver::Begin::Skip => BeginAnswer::Skip,
            wit_driver::Begin::Events(names) => {
                BeginAnswer::Join(names.into_iter().map(convert::event_name).collect())
            }
        }
    }
}

/// A wasm component driver.
pub struct WasmDriver(Arc<WasmInner>);

impl WasmDriver {
    /// Compiles (or loads from the AOT cache), checks the component against the
    /// `mailpush:driver` world, links it, and validates `args` through `init`: run once
    /// for the snapshot (`init=snapshot`), or in a probe instance. The probe instance is
    /// made either way (a snapshot's memory must fit `memory=`).
    pub async fn load(
        tag: Arc<DriverTag>,
        path: &Path,
        sandbox: Sandbox,
        args: DriverArgs,
        engines: &Arc<Engines>,
        metadata: Arc<dyn MetadataLookup>,
    ) -> Result<WasmDriver, InitError> {
        Self::load_read(tag, path, None, sandbox, args, engines, metadata).await
    }

    /// [`WasmDriver::load`], with the file already read if `source` is given (by
    /// [`WasmEngine::slow_compile`]: a big file is not read and hashed twice).
    pub async fn load_read(
        tag: Arc<DriverTag>,
        path: &Path,
        source: Option<Source>,
        sandbox: Sandbox,
        args: DriverArgs,
        engines: &Arc<Engines>,
        metadata: Arc<dyn MetadataLookup>,
    ) -> Result<WasmDriver, InitError> {
        let engine = engines
            .get(sandbox.limits.fuel.is_some())
            .map_err(|e| InitError::new(e.to_string()))?;
        let source = match source {
            Some(s) => s,
            None => {
                let read_path = path.to_path_buf();
                tokio::task::spawn_blocking(move || WasmEngine::read(&read_path))
                    .await
                    .map_err(|e| InitError::new(format!("read task failed: {e}")))?
                    .map_err(|e| InitError::new(e.to_string()))?
            }
        };
        let source = Arc::new(source);
        let sandbox = Arc::new(sandbox);
        let policy = HttpPolicy::new(tag.clone(), Arc::new(sandbox.http.clone()));
        let parts = InstanceParts {
            tag: tag.clone(),
            limits: sandbox.limits.clone(),
            settings: sandbox.instance.clone(),
            args,
            http: policy.clone(),
            metadata,
            max_log_lines: sandbox.log.max_log_lines,
            log_rate: Arc::new(LogRate::new(
                sandbox.log.log_burst,
                sandbox.log.log_lines_per_sec,
            )),
        };
        let (loaded, instances, init, lease) = if sandbox.instance.snapshot {
            load_snapshot(&engine, path, &source, parts).await?
        } else {
            let lease = engine.lease(&source.sha256, None);
            let loaded = compile_source(&engine, path, &source).await?;
            let instances = Instances::link(parts, &loaded, path)?;
            (
                loaded,
                instances,
                "init: called in every instance (init=per-instance)".to_string(),
                lease,
            )
        };
        let wit_version = instances.wit_version().to_string();
        let inner = WasmInner {
            tag,
            path: path.to_path_buf(),
            sha256: loaded.sha256,
            wit_version,
            cache: loaded.cache,
            functions: loaded.functions,
            init,
            sandbox,
            instances,
            fixed: None,
            policy,
            stats: WasmStats::default(),
            drops: Tally::default(),
            _cache: lease,
        };
        let inner = if inner.instances.synchronous() {
            // Its calls never yield: they run on a blocking thread, as compiles do, not
            // on an async worker that a spinning init would hold for init_timeout_msecs.
            let handle = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || handle.block_on(inner.probe()))
                .await
                .map_err(|e| InitError::new(format!("load task failed: {e}")))??
        } else {
            inner.probe().await?
        };
        Ok(WasmDriver(Arc::new(inner)))
    }

    /// Lines for `mailpush check`.
    pub fn details(&self) -> Vec<String> {
        let i = &self.0;
        let reuse = match i.functions {
            Some(f) if f.functions > 0 => format!(
                " ({} of {} functions from an earlier compile)",
                f.reused, f.functions
            ),
            _ => String::new(),
        };
        let mut d = vec![
            format!("file: {}", i.path.display()),
            format!("sha256: {}", i.sha256),
            format!("wit: {WIT_PACKAGE}@{}", i.wit_version),
            format!(
                "compiled: {}{reuse}",
                match i.cache {
                    CacheOutcome::Hit => "AOT cache hit",
                    CacheOutcome::Miss => "compiled, AOT cache written",
                    CacheOutcome::Rejected =>
                        "cached artifact rejected (failed verification), recompiled",
                    CacheOutcome::Disabled => "compiled (no cache)",
                }
            ),
        ];
        d.push(i.init.clone());
        d.push(match i.fixed {
            None => "begin-txn: called per transaction".to_string(),
            Some(BeginAnswer::Skip) => {
                "begin-txn: not called, fixed at load (fixed-begin): skip every transaction"
                    .to_string()
            }
            Some(BeginAnswer::Join(events)) => format!(
                "begin-txn: not called, fixed at load (fixed-begin): {}",
                if events == EventSet::all() {
                    "every event".to_string()
                } else if events.is_empty() {
                    "no events".to_string()
                } else {
                    events
                        .iter()
                        .map(|e| e.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                }
            ),
        });
        d.push(
            if i.instances.synchronous() {
                "calls: synchronous (imports neither wasi:http nor a clock: nothing to wait on)"
            } else if !i.instances.settings().synchronous_allowed {
                "calls: async (calls=async)"
            } else {
                "calls: async (imports wasi:http or a clock, which can wait)"
            }
            .to_string(),
        );
        d.extend(i.sandbox.describe());
        d
    }

    /// Whether its calls are synchronous ([`super::synchronous`]).
    pub fn synchronous(&self) -> bool {
        self.0.instances.synchronous()
    }

    /// Whether a warm instance is held between transactions (`instance=reuse`): what it
    /// keeps (a pool slot, its memory, its share of `host_memory`) stays taken meanwhile.
    pub fn holds_warm_instance(&self) -> bool {
        self.0.instances.holds_warm()
    }

    /// Whether instances start from a snapshot taken after `init` at load.
    pub fn snapshotted(&self) -> bool {
        self.0.instances.initialised()
    }

    /// Where the compiled component came from.
    pub fn cache_outcome(&self) -> CacheOutcome {
        self.0.cache
    }

    /// The driver's counters.
    pub fn stats(&self) -> &WasmStats {
        &self.0.stats
    }

    /// The circuits of the endpoints this driver has seen failing.
    pub fn endpoint_breakers(&self) -> &Arc<EndpointBreakers> {
        &self.0.policy.breakers
    }
}

/// Compiles the component read into `source`, through the AOT cache, off the async
/// workers.
async fn compile_source(
    engine: &Arc<WasmEngine>,
    path: &Path,
    source: &Arc<Source>,
) -> Result<LoadedComponent, InitError> {
    let (engine, path, source) = (engine.clone(), path.to_path_buf(), source.clone());
    tokio::task::spawn_blocking(move || engine.load_source(&path, &source))
        .await
        .map_err(|e| InitError::new(format!("compile task failed: {e}")))?
        .map_err(|e| InitError::new(e.to_string()))
}

/// Loads a driver whose `init` runs once, at load ([`super::snapshot`]): its snapshot
/// from the AOT cache, or made now; the original component, with `init` in every
/// instance, when there can be no snapshot (`init` calls an import: remembered in the
/// cache). All of it on a blocking thread: reading and verifying a cached JavaScript
/// snapshot, instrumenting and compiling take seconds. Returns the line for
/// `mailpush check`.
async fn load_snapshot(
    engine: &Arc<WasmEngine>,
    path: &Path,
    source: &Arc<Source>,
    parts: InstanceParts,
) -> Result<(LoadedComponent, Instances, String, ArtifactLease), InitError> {
    let handle = tokio::runtime::Handle::current();
    let (engine, path, source) = (engine.clone(), path.to_path_buf(), source.clone());
    tokio::task::spawn_blocking(move || {
        let key = engine.snapshot_key(&parts.args, parts.limits.memory);
        let lease = engine.lease(&source.sha256, Some(&key));
        let made = match engine.snapshot_lookup(&source, &key) {
            SnapshotLookup::Hit(loaded) => Ok((loaded, true)),
            SnapshotLookup::Declined(why) => Err(why),
            SnapshotLookup::Missing => {
                make_snapshot(&handle, &engine, &path, &source, &parts, &key)?
            }
        };
        match made {
            Ok((loaded, cached)) => {
                let mut instances = Instances::link(parts, &loaded, &path)?;
                instances.mark_initialised();
                let line = if cached {
                    "init: snapshot made at load (AOT cache hit)"
                } else {
                    "init: snapshot made at load"
                };
                Ok((loaded, instances, line.to_string(), lease))
            }
            Err(why) => {
                let loaded = engine
                    .load_source(&path, &source)
                    .map_err(|e| InitError::new(e.to_string()))?;
                let instances = Instances::link(parts, &loaded, &path)?;
                Ok((
                    loaded,
                    instances,
                    format!("init: called in every instance ({why})"),
                    lease,
                ))
            }
        }
    })
    .await
    .map_err(|e| InitError::new(format!("load task failed: {e}")))?
}

/// A snapshot component grows by what `init` left in memory; past this, no snapshot
/// (each set of arguments has its own, compiled and cached).
const MAX_SNAPSHOT_GROWTH: usize = 64 << 20;

/// Makes the snapshot (on a blocking thread): instrument, compile (cached per
/// component), run `init` in `handle`'s runtime, snapshot, compile and cache.
/// `Ok(Ok((snapshot, false)))`, or `Ok(Err(why))` when there is none — recorded when the
/// reason lasts; `Err` when `init` refuses its arguments or the component is no driver.
fn make_snapshot(
    handle: &tokio::runtime::Handle,
    engine: &WasmEngine,
    path: &Path,
    source: &Source,
    parts: &InstanceParts,
    key: &str,
) -> Result<Result<(LoadedComponent, bool), String>, InitError> {
    let declined = |why: String, lasting: bool| {
        tracing::debug!(driver = %path.display(), "no snapshot: {why}");
        if lasting {
            engine.store_declined(source, key, &why);
        }
        Ok(Err(why))
    };
    let (cx, bytes) = match super::snapshot::instrument(&source.bytes) {
        Ok(i) => i,
        Err(why) => return declined(why, true),
    };
    let probe = match engine.load_instrumented(path, source, &bytes) {
        Ok(p) => p,
        Err(e) => return declined(format!("the instrumented component: {e}"), false),
    };
    // A component that is no driver, or imports what mailpush does not provide, fails
    // here as it would without a snapshot (linking against the real imports checks
    // them, `check_world` first; the snapshot run itself uses a linker whose imports
    // trap).
    let instances = Instances::link(parts.clone(), &probe, path)?;
    match handle.block_on(instances.preinitialise(&cx, &probe.component)) {
        Preinit::Snapshot(snapshot)
            if snapshot.len() > source.bytes.len() + MAX_SNAPSHOT_GROWTH =>
        {
            declined(
                format!(
                    "init left {} MiB in memory, more than a snapshot keeps ({} MiB)",
                    (snapshot.len() - source.bytes.len()) >> 20,
                    MAX_SNAPSHOT_GROWTH >> 20
                ),
                true,
            )
        }
        Preinit::Snapshot(snapshot) => match engine.store_snapshot(path, source, key, &snapshot) {
            Ok(loaded) => Ok(Ok((loaded, false))),
            Err(e) => declined(format!("the snapshot: {e}"), false),
        },
        Preinit::Declined { why, lasting } => declined(why, lasting),
        Preinit::Refused(msg) => Err(InitError::new(reason(format!(
            "init refused the arguments: {msg}"
        )))),
    }
}

/// The failure of a transaction that ran out of `max_txn_msecs` in `what`.
fn exceeded(what: &str, max_txn: std::time::Duration) -> Failure {
    Failure::retryable(format!(
        "{what} exceeded max_txn_msecs={}",
        max_txn.as_millis()
    ))
}

impl WasmInner {
    /// Probes a driver being loaded: the component's own init must accept its arguments
    /// now, not at the first transaction, within init_timeout_msecs; then its fixed
    /// answer to begin-txn, if it has one, in what is left of the same bound.
    async fn probe(mut self) -> Result<Self, InitError> {
        let started = Instant::now();
        let init_timeout = self.sandbox.limits.init_timeout;
        let mut probe = self
            .instances
            .instantiate(&self.stats, init_timeout)
            .await
            .map_err(|f| InitError::new(f.reason))?;
        // What init printed is not fixed-begin's to report.
        probe.store.data().output.lock().clear_tail();
        let left = init_timeout.saturating_sub(started.elapsed());
        let answer = match self.instances.fixed_begin(&mut probe, left).await {
            Err(_) => Err(format!(
                "fixed-begin did not answer within the {} ms that init left of init_timeout_msecs={} (init and fixed-begin share it)",
                left.as_millis(),
                init_timeout.as_millis()
            )),
            Ok(Err(e)) => {
                let f = self.classify(&probe.store, e);
                Err(format!("fixed-begin failed: {}", f.reason))
            }
            Ok(Ok(answer)) => Ok(answer),
        };
        self.fixed = answer.map_err(InitError::new)?.map(BeginAnswer::from_wit);
        if !matches!(self.fixed, Some(BeginAnswer::Skip)) {
            // Kept as the warm instance with instance=reuse: what the load wrote (its
            // output, log lines, refused requests) is not the first transaction's.
            self.finish_log(&mut probe.store, None);
            self.clear_refusals(&mut probe.store);
            self.instances.park(probe);
        }
        // A fixed skip never needs an instance: the probe is dropped, slot and memory
        // with it.
        Ok(self)
    }

    fn classify(&self, store: &Store<HostState>, err: wasmtime::Error) -> Failure {
        classify(store.data(), err, &self.sandbox.limits, &self.stats)
    }

    /// Adds what the sandbox refused during the call to a failure's reason.
    fn explain(&self, store: &mut Store<HostState>, mut f: Failure) -> Failure {
        let refused = store.data_mut().outbound.take_refused();
        if !refused.is_empty() {
            f.reason = reason(format!(
                "{} (outbound HTTP refused: {})",
                f.reason,
                refused.join("; ")
            ));
        }
        f
    }

    /// Ends the transaction's log budget; the lines it dropped are counted and reported
    /// at most once per [`Tally::EVERY`] (the rest at the next report or at deinit).
    fn finish_log(&self, store: &mut Store<HostState>, txn: Option<&Transaction>) {
        store.data().output.lock().clear_tail();
        let (dropped, max) = {
            let mut log = store.data().log.lock();
            (log.end_transaction(), log.max)
        };
        if dropped == 0 {
            return;
        }
        self.stats
            .log_lines_dropped
            .fetch_add(u64::from(dropped), std::sync::atomic::Ordering::Relaxed);
        self.drops
            .add(u64::from(dropped), |n| self.report_drops(n, max, txn));
    }

    fn report_drops(&self, n: u64, max: u32, txn: Option<&Transaction>) {
        tracing::warn!(
            driver = self.tag.number,
            name = %self.tag.name,
            txn = txn.map(|t| t.id.as_str()).unwrap_or("-"),
            "{} log lines dropped (max_log_lines={} per transaction; log_lines_per_sec={} log_burst={} per driver)",
            n,
            max,
            self.sandbox.log.log_lines_per_sec,
            self.sandbox.log.log_burst
        );
    }

    /// Clears what a delivered transaction left in the outbound bookkeeping.
    fn clear_refusals(&self, store: &mut Store<HostState>) {
        store.data_mut().outbound.take_refused();
        // A delivered transaction defers nothing; this only resets the bookkeeping.
        let _ = store.data_mut().outbound.deferral();
    }
}

#[async_trait]
impl Driver for WasmDriver {
    async fn begin_txn(&self, txn: &Arc<Transaction>) -> Result<Begin, Failure> {
        let inner = &self.0;
        let limits = &inner.sandbox.limits;
        if let Some(BeginAnswer::Skip) = inner.fixed {
            // Nothing to call: no instance either.
            return Ok(Begin::Skip);
        }
        // max_txn_msecs bounds the whole transaction, a fresh instance's init included.
        let started = Instant::now();
        let mut inst = inner.instances.take(&inner.stats, limits.max_txn).await?;
        inst.store.data_mut().txn = Some(txn.clone());
        inst.store.data().output.lock().txn = Some(txn.id.clone());
        inst.store.data_mut().outbound.begin_transaction();
        let events = match inner.fixed {
            // Declared at load (fixed-begin): no call.
            Some(BeginAnswer::Join(events)) => events,
            _ => {
                let remaining = limits.max_txn.saturating_sub(started.elapsed());
                let Ok(result) = inner
                    .instances
                    .begin_txn(&mut inst, &txn.id, &txn.user, remaining)
                    .await
                else {
                    return Err(exceeded("begin-txn", limits.max_txn));
                };
                inner.instances.account_fuel(&inst.store, &inner.stats);
                match result.map(BeginAnswer::from_wit) {
                    Ok(BeginAnswer::Skip) => {
                        inner.finish_log(&mut inst.store, Some(txn));
                        inner.instances.give_back(inst);
                        return Ok(Begin::Skip);
                    }
                    Ok(BeginAnswer::Join(events)) => events,
                    Err(e) => {
                        let f = inner.classify(&inst.store, e);
                        let f = inner.explain(&mut inst.store, f);
                        inner.finish_log(&mut inst.store, Some(txn));
                        return Err(f);
                    }
                }
            }
        };
        Ok(Begin::Join {
            events,
            txn: Box::new(WasmTxn {
                inner: inner.clone(),
                inst: Some(inst),
                txn: txn.clone(),
                started,
                wanted: Vec::new(),
            }),
        })
    }

    async fn deinit(&self) {
        self.0.instances.clear();
        let pending = self.0.drops.take_rest();
        if pending > 0 {
            let inner = &self.0;
            inner.report_drops(pending, inner.sandbox.log.max_log_lines, None);
        }
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        self.0.stats.counters()
    }

    fn endpoint_circuits(&self) -> Vec<EndpointCircuit> {
        self.0
            .policy
            .breakers
            .states(Instant::now())
            .into_iter()
            .map(|(endpoint, state)| EndpointCircuit {
                endpoint,
                scope: None,
                state,
            })
            .collect()
    }
}

/// One transaction in one instance: collects the wanted events, delivers at end_txn.
struct WasmTxn {
    inner: Arc<WasmInner>,
    inst: Option<Instance>,
    txn: Arc<Transaction>,
    started: Instant,
    /// The wanted events in the order the records brought them.
    wanted: Vec<Wanted>,
}

/// A wanted event: where it is in the transaction (the records the dispatcher makes
/// point into it; its JSON is the transaction's shared encoding), or a copy of one from
/// elsewhere with its own JSON.
enum Wanted {
    At(usize),
    Copy(Box<(Event, String)>),
}

impl WasmTxn {
    fn want(&mut self, events: &[&Event]) {
        let all = &self.txn.events;
        for e in events {
            self.wanted.push(match position(all, e) {
                Some(i) => Wanted::At(i),
                None => Wanted::Copy(Box::new(((*e).clone(), e.to_json()))),
            });
        }
    }
}

/// The index of `e` in `all` if it is one of its elements (not merely an equal event).
fn position(all: &[Event], e: &Event) -> Option<usize> {
    let size = std::mem::size_of::<Event>();
    let offset = (e as *const Event as usize).checked_sub(all.as_ptr() as usize)?;
    (size > 0 && offset % size == 0 && offset / size < all.len()).then_some(offset / size)
}

#[async_trait]
impl DriverTxn for WasmTxn {
    async fn process_mbox(&mut self, record: &MailboxRecord<'_>) -> Result<(), Failure> {
        self.want(&record.events);
        Ok(())
    }

    async fn process_msg(&mut self, record: &MessageRecord<'_>) -> Result<(), Failure> {
        self.want(&record.events);
        Ok(())
    }

    async fn end_txn(mut self: Box<Self>, success: bool) -> Result<(), Failure> {
        let inner = self.inner.clone();
        let Some(mut inst) = self.inst.take() else {
            return Err(Failure::permanent("instance already released"));
        };
        if !success {
            inner.finish_log(&mut inst.store, Some(&self.txn));
            return Ok(());
        }
        // The events' canonical JSON is serialised once per transaction and shared by
        // every driver reading it; so is the whole transaction's when the driver wants
        // all of its events, in order (what `Transaction::to_json` gives for the wanted
        // events without METADATA).
        let all = self.txn.event_json();
        let wanted: Vec<(&Event, &str)> = self
            .wanted
            .iter()
            .map(|w| match w {
                Wanted::At(i) => (&self.txn.events[*i], all[*i].as_str()),
                Wanted::Copy(copy) => (&copy.0, copy.1.as_str()),
            })
            .collect();
        let every = self.wanted.len() == all.len()
            && self
                .wanted
                .iter()
                .enumerate()
                .all(|(n, w)| matches!(w, Wanted::At(i) if *i == n));
        let subset;
        let json = if every {
            self.txn.json_without_metadata()
        } else {
            let jsons: Vec<&str> = wanted.iter().map(|(_, j)| *j).collect();
            subset = Transaction::json_of(&self.txn.id, &self.txn.user, &jsons);
            subset.as_str()
        };
        let size = json.len() + wanted.iter().map(|(_, j)| j.len()).sum::<usize>();
        let limits = &inner.sandbox.limits;
        if size > limits.max_event_bytes {
            inner.finish_log(&mut inst.store, Some(&self.txn));
            // The instance ran begin-txn for a transaction it never finished: discarded.
            drop(inst);
            return Err(Failure::permanent(format!(
                "transaction too large for this driver: {size} bytes of event data > max_event_bytes={}",
                limits.max_event_bytes
            )));
        }
        let events: Vec<EventRecord<'_>> = wanted
            .iter()
            .map(|(e, json)| EventRecord::new(e, json))
            .collect();
        let record = TransactionRef::new(&self.txn, &events, json);
        let remaining = limits.max_txn.saturating_sub(self.started.elapsed());
        let Ok(result) = inner.instances.deliver(&mut inst, &record, remaining).await else {
            return Err(exceeded("transaction", limits.max_txn));
        };
        let fuel = inner.instances.account_fuel(&inst.store, &inner.stats);
        if limits.fuel.is_some() {
            tracing::debug!(driver = inner.tag.number, txn = %self.txn.id, fuel_used = fuel, "deliver");
        }
        match result {
            Ok(Ok(())) => {
                inner.finish_log(&mut inst.store, Some(&self.txn));
                inner.clear_refusals(&mut inst.store);
                inner.instances.give_back(inst);
                Ok(())
            }
            Ok(Err(f)) => {
                // Escaped and bounded: a driver cannot park a transaction for more than an
                // hour.
                let failure = Failure::from_driver(&f.reason, f.retryable, f.retry_after_ms);
                // Deferred: the guest gave up because an endpoint's circuit is open and no
                // request it really sent failed. That is the breaker's business: retry
                // when the circuit lets a probe through, without counting an attempt or
                // an outcome for the driver's own breaker.
                let deferral = inst.store.data_mut().outbound.deferral();
                let mut failure = inner.explain(&mut inst.store, failure);
                if let Some(wait) = deferral {
                    failure.deferred = true;
                    failure.retryable = true;
                    failure.retry_after = Some(wait);
                }
                inner.finish_log(&mut inst.store, Some(&self.txn));
                // Whatever state led the guest to fail stays with it: the instance is
                // discarded, the next transaction gets a fresh one.
                drop(inst);
                Err(failure)
            }
            Err(e) => {
                // A trap: the instance is discarded (dropped here). One the guest hit
                // because an endpoint's circuit was open is retried when the circuit
                // lets a probe through, like a failure the guest returned.
                let deferral = inst.store.data_mut().outbound.deferral();
                let f = inner.classify(&inst.store, e);
                let mut f = inner.explain(&mut inst.store, f);
                if let Some(wait) = deferral {
                    f.deferred = true;
                    f.retryable = true;
                    f.retry_after = Some(wait);
                }
                inner.finish_log(&mut inst.store, Some(&self.txn));
                Err(f)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only an element of the slice itself has a position: not an equal event elsewhere,
    /// nor an address inside an element.
    #[test]
    fn position_finds_elements_not_equal_copies() {
        let t = Transaction::from_json(
            r#"{"id":"1","user":"a@b","events":[{"name":"MailboxCreate","mailbox":"A"},{"name":"MailboxCreate","mailbox":"B"}]}"#,
        )
        .unwrap();
        assert_eq!(position(&t.events, &t.events[0]), Some(0));
        assert_eq!(position(&t.events, &t.events[1]), Some(1));
        let copy = t.events[1].clone();
        assert_eq!(position(&t.events, &copy), None);
        assert_eq!(position(&t.events[..1], &t.events[1]), None);
        assert_eq!(position(&t.events[1..], &t.events[0]), None);
    }
}
