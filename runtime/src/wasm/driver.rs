//! `WasmDriver`: a WebAssembly component as a numbered push driver, and `WasmFactory`,
//! which loads one from `wasm:file=… key=value …`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mailpush_core::{
    Begin, Driver, DriverArgs, DriverFactory, DriverInit, DriverTxn, EndpointBreakers,
    EndpointCircuit, Event, EventSet, Failure, InitError, Initialised, MailboxRecord,
    MessageRecord, MetadataLookup, Transaction,
};
use wasmtime::component::{types::ComponentItem, Component, HasSelf, Linker};
use wasmtime::{CallHook, Store, Trap};

use super::bindings::exports::mailpush::driver::driver as wit_driver;
use super::bindings::{self, PushDriver, PushDriverPre, WIT_PACKAGE, WIT_VERSION};
use super::convert;
use super::engine::{CacheOutcome, Engines};
use super::host::{on_deadline, slice, DriverTag, HostState, LogBudget, LogRate};
use super::outbound_http::{HttpPolicy, OutboundHttp};
use super::sandbox::{InstanceModel, Sandbox};

/// Registers `wasm`.
#[derive(Default)]
pub struct WasmFactory {
    engines: OnceLock<Arc<Engines>>,
}

impl WasmFactory {
    /// A factory whose engines cache compiled components in `cache_dir` (`None`: no cache).
    pub fn with_cache_dir(cache_dir: Option<PathBuf>) -> Self {
        let f = WasmFactory::default();
        let _ = f.engines.set(Arc::new(Engines::new(cache_dir)));
        f
    }
}

#[async_trait]
impl DriverFactory for WasmFactory {
    fn name(&self) -> &'static str {
        "wasm"
    }

    fn kind(&self) -> &'static str {
        "wasm"
    }

    async fn init(&self, init: &DriverInit) -> Result<Initialised, InitError> {
        let mut args = init.args.clone();
        let file = match args.take("file") {
            Some(f) if !f.is_empty() => f,
            _ => {
                return Err(InitError(
                    "needs file=/path/driver.wasm (a component built for mailpush:driver)".into(),
                ))
            }
        };
        let path = init.resolve_path(&file);
        let mut sandbox = Sandbox::from_args(&mut args)?;
        sandbox.endpoint_breaker = init.breaker.clone();
        let engines = self
            .engines
            .get_or_init(|| Arc::new(Engines::new(Some(init.state_dir.join("wasm-cache")))))
            .clone();
        let tag = Arc::new(DriverTag {
            number: init.number,
            name: init.name.clone(),
        });
        let driver =
            WasmDriver::load(tag, &path, sandbox, args, &engines, init.metadata.clone()).await?;
        let details = driver.details();
        let mut out = Initialised::new(Arc::new(driver));
        out.details = details;
        Ok(out)
    }
}

/// Counters of one wasm driver.
#[derive(Debug, Default)]
pub struct WasmStats {
    pub traps: AtomicU64,
    pub timeouts: AtomicU64,
    pub memory_limit_hits: AtomicU64,
    pub fuel_used: AtomicU64,
    pub instances: AtomicU64,
    /// Times the driver was paused after consecutive failures.
    pub pauses: AtomicU64,
    /// Length of the latest pause, in milliseconds.
    pub last_pause_ms: AtomicU64,
    /// Log lines dropped (over `max_log_lines` or the driver's log rate).
    pub log_lines_dropped: AtomicU64,
}

struct PauseState {
    consecutive: u32,
    paused_until: Option<Instant>,
}

struct WasmInner {
    tag: Arc<DriverTag>,
    path: PathBuf,
    sha256: String,
    wit_version: String,
    cache: CacheOutcome,
    sandbox: Arc<Sandbox>,
    args: Vec<(String, String)>,
    pre: PushDriverPre<HostState>,
    policy: HttpPolicy,
    metadata: Arc<dyn MetadataLookup>,
    /// The driver-wide log rate limit.
    log_rate: Arc<LogRate>,
    /// With `instance=reuse`: the warm instance between transactions.
    warm: Mutex<Option<Instance>>,
    pause: Mutex<PauseState>,
    stats: WasmStats,
}

/// A wasm component driver.
pub struct WasmDriver(Arc<WasmInner>);

struct Instance {
    store: Store<HostState>,
    bindings: PushDriver,
    txns: u64,
}

impl WasmDriver {
    /// Compiles (or loads from the AOT cache), checks the component against the
    /// `mailpush:driver` world, links it, and validates `args` through a probe
    /// instance's `init`.
    pub async fn load(
        tag: Arc<DriverTag>,
        path: &Path,
        sandbox: Sandbox,
        args: DriverArgs,
        engines: &Arc<Engines>,
        metadata: Arc<dyn MetadataLookup>,
    ) -> Result<WasmDriver, InitError> {
        let engine = engines
            .get(sandbox.fuel.is_some())
            .map_err(|e| InitError(e.to_string()))?;
        let load_path = path.to_path_buf();
        let engine2 = engine.clone();
        let loaded = tokio::task::spawn_blocking(move || engine2.load(&load_path))
            .await
            .map_err(|e| InitError(format!("compile task failed: {e}")))?
            .map_err(|e| InitError(e.to_string()))?;
        let wit_version = check_world(&loaded.component, engine.engine(), path)?;
        let mut linker: Linker<HostState> = Linker::new(engine.engine());
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .and_then(|_| wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker))
            .and_then(|_| {
                bindings::mailpush::driver::host::add_to_linker::<HostState, HasSelf<HostState>>(
                    &mut linker,
                    |s| s,
                )
            })
            .map_err(|e| InitError(format!("cannot link host functions: {e:#}")))?;
        let instance_pre = linker.instantiate_pre(&loaded.component).map_err(|e| {
            InitError(format!(
                "{} imports something mailpush does not provide: {e:#} (a driver may import mailpush:driver/host, wasi:http/outgoing-handler and WASI 0.2 interfaces)",
                path.display()
            ))
        })?;
        let pre = PushDriverPre::new(instance_pre).map_err(|e| {
            InitError(format!(
                "{} does not match the mailpush:driver/push-driver world: {e:#}",
                path.display()
            ))
        })?;
        let sandbox = Arc::new(sandbox);
        let policy = HttpPolicy::new(tag.clone(), sandbox.clone());
        let log_rate = Arc::new(LogRate::new(sandbox.log_burst, sandbox.log_lines_per_sec));
        let inner = Arc::new(WasmInner {
            tag,
            path: path.to_path_buf(),
            sha256: loaded.sha256,
            wit_version,
            cache: loaded.cache,
            sandbox,
            args: args
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            pre,
            policy,
            metadata,
            log_rate,
            warm: Mutex::new(None),
            pause: Mutex::new(PauseState {
                consecutive: 0,
                paused_until: None,
            }),
            stats: WasmStats::default(),
        });
        // Probe: the component's own init must accept its arguments now, not at the
        // first transaction.
        let probe = inner.instantiate().await.map_err(|f| InitError(f.reason))?;
        if inner.sandbox.instance == InstanceModel::Reuse {
            *inner.warm.lock().unwrap_or_else(|p| p.into_inner()) = Some(probe);
        }
        Ok(WasmDriver(inner))
    }

    /// Lines for `mailpush check`.
    pub fn details(&self) -> Vec<String> {
        let i = &self.0;
        let mut d = vec![
            format!("file: {}", i.path.display()),
            format!("sha256: {}", i.sha256),
            format!("wit: {WIT_PACKAGE}@{}", i.wit_version),
            format!(
                "compiled: {}",
                match i.cache {
                    CacheOutcome::Hit => "AOT cache hit",
                    CacheOutcome::Miss => "compiled, AOT cache written",
                    CacheOutcome::Rejected =>
                        "cached artifact rejected (failed verification), recompiled",
                    CacheOutcome::Disabled => "compiled (no cache)",
                }
            ),
        ];
        d.extend(i.sandbox.describe());
        d
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

/// Checks that the component exports `mailpush:driver/driver` of a compatible version
/// and imports only `mailpush:driver/host` of a compatible version; returns its version.
fn check_world(
    component: &Component,
    engine: &wasmtime::Engine,
    path: &Path,
) -> Result<String, InitError> {
    let ty = component.component_type();
    let mut found = None;
    let mut exports = Vec::new();
    for (name, item) in ty.exports(engine) {
        exports.push(name.to_string());
        if let Some(version) = name.strip_prefix("mailpush:driver/driver@") {
            if matches!(item.ty, ComponentItem::ComponentInstance(_)) {
                found = Some(version.to_string());
            }
        }
    }
    let Some(version) = found else {
        return Err(InitError(format!(
            "{} does not export {WIT_PACKAGE}/driver (it exports: {}); build it for the {WIT_PACKAGE}/push-driver world, e.g. with the mailpush-driver-sdk crate",
            path.display(),
            if exports.is_empty() { "nothing".to_string() } else { exports.join(", ") }
        )));
    };
    let compatible = |v: &str| same_minor(v, WIT_VERSION);
    if !compatible(&version) {
        return Err(InitError(format!(
            "{} was built against {WIT_PACKAGE}@{version}, but this mailpush provides {WIT_PACKAGE}@{WIT_VERSION}; rebuild the driver with a matching SDK",
            path.display()
        )));
    }
    for (name, _) in ty.imports(engine) {
        if let Some(v) = name.strip_prefix("mailpush:driver/host@") {
            if !compatible(v) {
                return Err(InitError(format!(
                    "{} imports {WIT_PACKAGE}/host@{v}, but this mailpush provides {WIT_PACKAGE}@{WIT_VERSION}",
                    path.display()
                )));
            }
        }
    }
    Ok(version)
}

/// Semver compatibility for 0.x: same major and minor.
fn same_minor(a: &str, b: &str) -> bool {
    let key = |v: &str| {
        let mut it = v.split('.');
        (it.next().map(str::to_string), it.next().map(str::to_string))
    };
    key(a) == key(b)
}

const MAX_REASON: usize = 1024;

fn truncate(mut s: String) -> String {
    if s.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("…[truncated]");
    }
    s
}

impl WasmInner {
    fn new_store(&self) -> Store<HostState> {
        let log = LogBudget::shared(self.sandbox.max_log_lines, self.log_rate.clone());
        let state = HostState::new(
            self.tag.clone(),
            self.sandbox.memory,
            OutboundHttp::new(self.policy.clone(), log.clone()),
            self.metadata.clone(),
            log,
        );
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_callback(on_deadline);
        store.call_hook(|mut ctx, hook| {
            match hook {
                CallHook::CallingHost => ctx.data_mut().clock.entering_host(),
                CallHook::ReturningFromHost => ctx.data_mut().clock.leaving_host(),
                _ => {}
            }
            Ok(())
        });
        store
    }

    /// Re-arms the per-call deadline (and fuel) before a call into the guest.
    fn arm(&self, store: &mut Store<HostState>) {
        store.data_mut().clock.arm(self.sandbox.timeout);
        store.data_mut().panic = None;
        store.set_epoch_deadline(slice(self.sandbox.timeout));
        if let Some(fuel) = self.sandbox.fuel {
            // set_fuel only fails on an engine without fuel, which fuel drivers never use.
            let _ = store.set_fuel(fuel);
        }
    }

    /// Reports fuel used by the last call.
    fn account_fuel(&self, store: &Store<HostState>) -> u64 {
        let Some(fuel) = self.sandbox.fuel else {
            return 0;
        };
        let used = fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        self.stats.fuel_used.fetch_add(used, Ordering::Relaxed);
        used
    }

    /// Turns a trap or host error into a failure with its reason.
    fn classify(&self, store: &Store<HostState>, err: wasmtime::Error) -> Failure {
        let state = store.data();
        let trap = err.downcast_ref::<Trap>().copied();
        let failure = if state.clock.expired || trap == Some(Trap::Interrupt) {
            self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
            Failure::retryable(format!(
                "deadline exceeded: the driver ran longer than timeout_msecs={}",
                self.sandbox.timeout.as_millis()
            ))
        } else if trap == Some(Trap::OutOfFuel) {
            Failure::permanent(format!(
                "fuel exhausted: the call used more than fuel={}",
                self.sandbox.fuel.unwrap_or(0)
            ))
        } else if state.limiter.hit {
            self.stats.memory_limit_hits.fetch_add(1, Ordering::Relaxed);
            Failure::permanent(format!(
                "memory limit reached: the driver tried to grow its memory past memory={}M ({})",
                self.sandbox.memory >> 20,
                trap.map(|t| t.to_string()).unwrap_or_else(|| "trap".into())
            ))
        } else if trap == Some(Trap::StackOverflow) {
            Failure::permanent("stack overflow (unbounded recursion?)".to_string())
        } else if trap == Some(Trap::MemoryOutOfBounds) {
            // Rust and C guests keep their stack in linear memory: overflowing it shows up
            // as an out-of-bounds access rather than a native stack overflow.
            Failure::permanent(
                "out-of-bounds memory access, typically a stack overflow (unbounded recursion) in the driver".to_string(),
            )
        } else if let (Some(Trap::UnreachableCodeReached), Some(panic)) = (trap, &state.panic) {
            // A Rust guest's panic ends in `unreachable` after its hook logged the message.
            Failure::permanent(truncate(format!("the driver panicked: {panic}")))
        } else if let Some(t) = trap {
            // The trap, without the wasm backtrace wasmtime attaches (addresses only).
            Failure::permanent(truncate(format!("trap: {t}")))
        } else {
            Failure::permanent(truncate(format!("driver error: {err:#}")))
        };
        self.stats.traps.fetch_add(1, Ordering::Relaxed);
        failure
    }

    /// A fresh instance with `init` called.
    async fn instantiate(&self) -> Result<Instance, Failure> {
        let mut store = self.new_store();
        self.stats.instances.fetch_add(1, Ordering::Relaxed);
        self.arm(&mut store);
        let bindings = match self.pre.instantiate_async(&mut store).await {
            Ok(b) => b,
            Err(e)
                if e.to_string().contains("pooling")
                    || e.to_string().contains("maximum concurrent") =>
            {
                return Err(Failure::retryable(format!("no free instance slot: {e}")))
            }
            Err(e) => return Err(self.classify(&store, e)),
        };
        self.arm(&mut store);
        let init = bindings
            .mailpush_driver_driver()
            .call_init(&mut store, &self.args)
            .await;
        self.account_fuel(&store);
        match init {
            Ok(Ok(())) => Ok(Instance {
                store,
                bindings,
                txns: 0,
            }),
            Ok(Err(msg)) => Err(Failure::permanent(truncate(format!(
                "init refused the arguments: {msg}"
            )))),
            Err(e) => {
                let f = self.classify(&store, e);
                Err(Failure {
                    reason: format!("init failed: {}", f.reason),
                    ..f
                })
            }
        }
    }

    async fn take_instance(&self) -> Result<Instance, Failure> {
        if self.sandbox.instance == InstanceModel::Reuse {
            let warm = self.warm.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(i) = warm {
                return Ok(i);
            }
        }
        self.instantiate().await
    }

    /// Returns a healthy instance after a transaction that succeeded or was skipped
    /// (kept only with `instance=reuse`). An instance whose transaction failed in any way
    /// — a trap, an error result, a refused transaction — is dropped instead, so the next
    /// transaction never inherits state from a failed one.
    fn give_back(&self, mut inst: Instance) {
        inst.txns += 1;
        if self.sandbox.instance == InstanceModel::Reuse && inst.txns < self.sandbox.recycle_after {
            inst.store.data_mut().txn = None;
            *self.warm.lock().unwrap_or_else(|p| p.into_inner()) = Some(inst);
        }
    }

    async fn wait_if_paused(&self) {
        let until = self
            .pause
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .paused_until;
        if let Some(until) = until {
            let now = Instant::now();
            if until > now {
                tokio::time::sleep(until - now).await;
            }
            tracing::info!(driver = self.tag.number, name = %self.tag.name, "driver resumed after pause");
            self.pause
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .paused_until = None;
        }
    }

    fn record(&self, ok: bool) {
        let mut p = self.pause.lock().unwrap_or_else(|p| p.into_inner());
        if ok {
            p.consecutive = 0;
            return;
        }
        p.consecutive += 1;
        let k = self.sandbox.pause_after;
        if p.consecutive >= k {
            let exp = (p.consecutive - k).min(16);
            let pause = (self.sandbox.pause * 2u32.pow(exp)).min(Duration::from_secs(300));
            p.paused_until = Some(Instant::now() + pause);
            self.stats.pauses.fetch_add(1, Ordering::Relaxed);
            self.stats
                .last_pause_ms
                .store(pause.as_millis() as u64, Ordering::Relaxed);
            tracing::warn!(
                driver = self.tag.number,
                name = %self.tag.name,
                "driver paused for {:?} after {} consecutive failures",
                pause,
                p.consecutive
            );
        }
    }

    /// Adds what the sandbox refused during the call to a failure's reason.
    fn explain(&self, store: &mut Store<HostState>, mut f: Failure) -> Failure {
        let refused = store.data_mut().outbound.take_refused();
        if !refused.is_empty() {
            f.reason = truncate(format!(
                "{} (outbound HTTP refused: {})",
                f.reason,
                refused.join("; ")
            ));
        }
        f
    }

    fn finish_log(&self, store: &mut Store<HostState>, txn: &Transaction) {
        let mut log = store.data().log.lock().unwrap_or_else(|p| p.into_inner());
        if log.dropped > 0 {
            self.stats
                .log_lines_dropped
                .fetch_add(u64::from(log.dropped), Ordering::Relaxed);
            tracing::warn!(
                driver = self.tag.number,
                name = %self.tag.name,
                txn = %txn.id,
                "{} log lines dropped (max_log_lines={} per transaction; log_lines_per_sec={} log_burst={} per driver)",
                log.dropped,
                log.max,
                self.sandbox.log_lines_per_sec,
                self.sandbox.log_burst
            );
        }
        log.written = 0;
        log.dropped = 0;
    }
}

#[async_trait]
impl Driver for WasmDriver {
    async fn begin_txn(&self, txn: &Arc<Transaction>) -> Result<Begin, Failure> {
        let inner = &self.0;
        inner.wait_if_paused().await;
        let mut inst = match inner.take_instance().await {
            Ok(i) => i,
            Err(f) => {
                inner.record(false);
                return Err(f);
            }
        };
        inst.store.data_mut().txn = Some(txn.clone());
        inner.arm(&mut inst.store);
        let call = inst.bindings.mailpush_driver_driver().call_begin_txn(
            &mut inst.store,
            &txn.id,
            &txn.user,
        );
        let result = match tokio::time::timeout(inner.sandbox.max_txn, call).await {
            Ok(r) => r,
            Err(_) => {
                inner.record(false);
                return Err(Failure::retryable(format!(
                    "begin-txn exceeded max_txn_msecs={}",
                    inner.sandbox.max_txn.as_millis()
                )));
            }
        };
        inner.account_fuel(&inst.store);
        match result {
            Ok(wit_driver::Begin::Skip) => {
                inner.finish_log(&mut inst.store, txn);
                inner.record(true);
                inner.give_back(inst);
                Ok(Begin::Skip)
            }
            Ok(wit_driver::Begin::Events(names)) => Ok(Begin::Join {
                events: names
                    .into_iter()
                    .map(convert::event_name)
                    .collect::<EventSet>(),
                txn: Box::new(WasmTxn {
                    inner: inner.clone(),
                    inst: Some(inst),
                    txn: txn.clone(),
                    started: Instant::now(),
                    events: Vec::new(),
                }),
            }),
            Err(e) => {
                let f = inner.classify(&inst.store, e);
                let f = inner.explain(&mut inst.store, f);
                inner.finish_log(&mut inst.store, txn);
                inner.record(false);
                Err(f)
            }
        }
    }

    async fn deinit(&self) {
        self.0.warm.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let s = &self.0.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("wasm_traps", get(&s.traps)),
            ("wasm_timeouts", get(&s.timeouts)),
            ("wasm_memory_limit_hits", get(&s.memory_limit_hits)),
            ("wasm_fuel_used", get(&s.fuel_used)),
            ("wasm_instances", get(&s.instances)),
            ("wasm_pauses", get(&s.pauses)),
            ("wasm_log_lines_dropped", get(&s.log_lines_dropped)),
        ]
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
    events: Vec<Event>,
}

#[async_trait]
impl DriverTxn for WasmTxn {
    async fn process_mbox(&mut self, record: &MailboxRecord<'_>) -> Result<(), Failure> {
        self.events
            .extend(record.events.iter().map(|e| (*e).clone()));
        Ok(())
    }

    async fn process_msg(&mut self, record: &MessageRecord<'_>) -> Result<(), Failure> {
        self.events
            .extend(record.events.iter().map(|e| (*e).clone()));
        Ok(())
    }

    async fn end_txn(mut self: Box<Self>, success: bool) -> Result<(), Failure> {
        let inner = self.inner.clone();
        let Some(mut inst) = self.inst.take() else {
            return Err(Failure::permanent("instance already released"));
        };
        if !success {
            inner.finish_log(&mut inst.store, &self.txn);
            return Ok(());
        }
        let wanted = Transaction {
            id: self.txn.id.clone(),
            user: self.txn.user.clone(),
            events: std::mem::take(&mut self.events),
            metadata: Default::default(),
        };
        let events: Vec<_> = wanted
            .events
            .iter()
            .map(|e| bindings::mailpush::driver::types::EventRecord {
                event: convert::event(e),
                json: e.to_json(),
            })
            .collect();
        let json = wanted.to_json();
        let size = json.len() + events.iter().map(|e| e.json.len()).sum::<usize>();
        if size > inner.sandbox.max_event_bytes {
            inner.finish_log(&mut inst.store, &self.txn);
            // The instance ran begin-txn for a transaction it never finished: discarded.
            drop(inst);
            return Err(Failure::permanent(format!(
                "transaction too large for this driver: {size} bytes of event data > max_event_bytes={}",
                inner.sandbox.max_event_bytes
            )));
        }
        let record = bindings::mailpush::driver::types::Transaction {
            id: wanted.id,
            user: wanted.user,
            events,
            json,
        };
        inner.arm(&mut inst.store);
        let remaining = inner.sandbox.max_txn.saturating_sub(self.started.elapsed());
        let call = inst
            .bindings
            .mailpush_driver_driver()
            .call_deliver(&mut inst.store, &record);
        let result = match tokio::time::timeout(remaining, call).await {
            Ok(r) => r,
            Err(_) => {
                inner.record(false);
                return Err(Failure::retryable(format!(
                    "transaction exceeded max_txn_msecs={}",
                    inner.sandbox.max_txn.as_millis()
                )));
            }
        };
        let fuel = inner.account_fuel(&inst.store);
        if inner.sandbox.fuel.is_some() {
            tracing::debug!(driver = inner.tag.number, txn = %self.txn.id, fuel_used = fuel, "deliver");
        }
        match result {
            Ok(Ok(())) => {
                inner.finish_log(&mut inst.store, &self.txn);
                inner.store_refusals_cleared(&mut inst.store);
                inner.record(true);
                inner.give_back(inst);
                Ok(())
            }
            Ok(Err(f)) => {
                let failure = Failure {
                    reason: truncate(f.reason),
                    retryable: f.retryable,
                    // Bounded: a driver cannot park a transaction for more than an hour.
                    retry_after: f
                        .retry_after_ms
                        .map(|ms| Duration::from_millis(ms.min(3_600_000))),
                    deferred: false,
                };
                // Deferred: the guest gave up because an endpoint's circuit is open and no
                // request it really sent failed. That is the breaker's business: retry
                // when the circuit lets a probe through, without counting an attempt or
                // a failure towards pausing the driver.
                let deferral = inst.store.data_mut().outbound.deferral();
                let mut failure = inner.explain(&mut inst.store, failure);
                if let Some(wait) = deferral {
                    failure.deferred = true;
                    failure.retryable = true;
                    failure.retry_after = Some(wait);
                }
                inner.finish_log(&mut inst.store, &self.txn);
                if deferral.is_none() {
                    inner.record(false);
                }
                // Whatever state led the guest to fail stays with it: the instance is
                // discarded, the next transaction gets a fresh one.
                drop(inst);
                Err(failure)
            }
            Err(e) => {
                // A trap: the instance is discarded (dropped here).
                let f = inner.classify(&inst.store, e);
                let f = inner.explain(&mut inst.store, f);
                inner.finish_log(&mut inst.store, &self.txn);
                inner.record(false);
                Err(f)
            }
        }
    }
}

impl WasmInner {
    fn store_refusals_cleared(&self, store: &mut Store<HostState>) {
        store.data_mut().outbound.take_refused();
        // A delivered transaction defers nothing; this only resets the bookkeeping.
        let _ = store.data_mut().outbound.deferral();
    }
}

#[cfg(test)]
mod tests {
    use super::same_minor;

    #[test]
    fn wit_versions_compatible_within_a_minor() {
        assert!(same_minor("0.1.0", "0.1.0"));
        assert!(same_minor("0.1.3", "0.1.0"));
        assert!(!same_minor("0.2.0", "0.1.0"));
        assert!(!same_minor("1.1.0", "0.1.0"));
    }
}
