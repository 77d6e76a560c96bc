//! Instances of one driver's component: a fresh one per transaction (the default) or a
//! warm one kept between transactions (`instance=reuse`, recycled after a failure and
//! after `recycle_after` transactions). Each instance's store is set up here with every
//! capability's per-instance state and the limits armed before each call.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use mailpush_core::{DriverArgs, Failure, InitError, MetadataLookup};
use parking_lot::Mutex;
use wasmtime::component::{
    ComponentNamedList, ComponentType, InstancePre, Lift, Linker, Lower, TypedFunc,
};
use wasmtime::Store;

use super::bindings::exports::mailpush::driver::driver::Begin as WitBegin;
use super::bindings::mailpush::driver::types::Failure as WitFailure;
use super::bindings::{PushDriverIndices, WIT_PACKAGE, WIT_VERSION};
use super::engine::LoadedComponent;
use super::exports::DriverExports;
use super::http::{HttpPolicy, OutboundHttp};
use super::limits::{charged, slice, HostMemory, Limits};
use super::log::{DriverTag, LogBudget, LogRate};
use super::lower::TransactionRef;
use super::state::{self, HostState};
use super::stats::WasmStats;
use super::synchronous::can_wait;
use super::trap::{classify, reason};
use super::world::{check_world, newer_patch};

/// How instances are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceModel {
    /// A fresh instance per transaction (default): nothing survives between
    /// transactions.
    Fresh,
    /// One instance kept per driver for warm state; recycled after a failure and after
    /// `recycle_after` transactions.
    Reuse,
}

/// The instance keys of one driver: `instance=fresh|reuse`, `recycle_after=1000`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSettings {
    pub model: InstanceModel,
    /// `init=snapshot` (default): `init` runs once at load and instances start from a
    /// snapshot of what it left ([`super::snapshot`]); `init=per-instance`: every
    /// instance calls `init`.
    pub snapshot: bool,
    /// With `instance=reuse`: transactions before the instance is recycled.
    pub recycle_after: u64,
    /// `calls=auto` (default): synchronous when the component imports nothing to wait on
    /// ([`super::synchronous`]); `calls=async`: always on a fiber.
    pub synchronous_allowed: bool,
}

impl Default for InstanceSettings {
    fn default() -> Self {
        InstanceSettings {
            model: InstanceModel::Fresh,
            snapshot: true,
            recycle_after: 1000,
            synchronous_allowed: true,
        }
    }
}

impl InstanceSettings {
    /// Takes the instance keys out of a driver's args.
    pub fn from_args(args: &mut DriverArgs) -> Result<Self, InitError> {
        let mut s = InstanceSettings::default();
        if let Some(m) =
            args.take_with("instance", "`fresh` (default) or `reuse`", |v| match v {
                "fresh" => Some(InstanceModel::Fresh),
                "reuse" => Some(InstanceModel::Reuse),
                _ => None,
            })?
        {
            s.model = m;
        }
        if let Some(snapshot) = args.take_with(
            "init",
            "`snapshot` (default: init runs once at load) or `per-instance`",
            |v| match v {
                "snapshot" => Some(true),
                "per-instance" => Some(false),
                _ => None,
            },
        )? {
            s.snapshot = snapshot;
        }
        if let Some(allowed) = args.take_with(
            "calls",
            "`auto` (default: synchronous when the component imports nothing to wait on) or `async`",
            |v| match v {
                "auto" => Some(true),
                "async" => Some(false),
                _ => None,
            },
        )? {
            s.synchronous_allowed = allowed;
        }
        if let Some(n) = args.take_number::<u64>("recycle_after", "1000")? {
            s.recycle_after = n.max(1);
        }
        Ok(s)
    }

    /// The line for `mailpush check`.
    pub fn describe(&self) -> String {
        match self.model {
            InstanceModel::Fresh => "instance: fresh per transaction".to_string(),
            InstanceModel::Reuse => format!(
                "instance: reuse (recycled after a failure or {} transactions)",
                self.recycle_after
            ),
        }
    }
}

/// A call ran out of wall-clock time: what was left of `max_txn_msecs` (of
/// `init_timeout_msecs` while loading).
#[derive(Debug)]
pub struct OutOfTime;

/// Why no instance was made.
enum Unmade {
    /// Out of time: what was left of `init_timeout_msecs` or `max_txn_msecs`.
    Late,
    Failed(Failure),
}
use Unmade::{Failed, Late};

/// A call's result, unless it failed because its deadline, cut to the wall time left
/// (`capped`, [`Instances::arm_within`]), expired: then it ran out of time.
fn in_time<T>(
    store: &Store<HostState>,
    capped: bool,
    result: wasmtime::Result<T>,
) -> Result<wasmtime::Result<T>, OutOfTime> {
    if result.is_err() && capped && store.data().clock.expired {
        Err(OutOfTime)
    } else {
        Ok(result)
    }
}

/// One instance: its store, and the component instance whose exports are called
/// ([`DriverExports`]).
pub struct Instance {
    pub store: Store<HostState>,
    instance: wasmtime::component::Instance,
    txns: u64,
}

/// Everything needed to make instances of one driver, and its warm instance.
pub struct Instances {
    tag: Arc<DriverTag>,
    pre: InstancePre<HostState>,
    /// Its functions, `fixed-begin.answer` among them when it exports it (0.1.1).
    exports: DriverExports,
    limits: Limits,
    settings: InstanceSettings,
    /// The component's own arguments, handed to its `init`.
    args: Vec<(String, String)>,
    http: HttpPolicy,
    metadata: Arc<dyn MetadataLookup>,
    /// Lines per transaction, and the driver-wide log rate.
    max_log_lines: u32,
    log_rate: Arc<LogRate>,
    /// With `instance=reuse`: the warm instance between transactions.
    warm: Mutex<Option<Instance>>,
    /// Instances start from a snapshot taken after `init`: it is not called again.
    initialised: bool,
    /// The component cannot wait: linked against synchronous host functions and called
    /// without a fiber ([`super::synchronous`]).
    synchronous: bool,
    /// The `mailpush:driver` version the component was built against.
    wit_version: String,
}

/// The parts of a driver an [`Instances`] is made from.
#[derive(Clone)]
pub struct InstanceParts {
    pub tag: Arc<DriverTag>,
    pub limits: Limits,
    pub settings: InstanceSettings,
    pub args: DriverArgs,
    pub http: HttpPolicy,
    pub metadata: Arc<dyn MetadataLookup>,
    pub max_log_lines: u32,
    pub log_rate: Arc<LogRate>,
}

impl Instances {
    /// Checks the component is a driver of a compatible version ([`check_world`]), then
    /// links it against every capability's imports.
    pub fn link(
        parts: InstanceParts,
        loaded: &LoadedComponent,
        path: &Path,
    ) -> Result<Self, InitError> {
        let wit_version = check_world(&loaded.component, loaded.component.engine(), path)?;
        let args = parts
            .args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let synchronous = parts.settings.synchronous_allowed
            && !can_wait(&loaded.component, loaded.component.engine());
        let pre = Self::pre(loaded, path, synchronous, &wit_version)?;
        Ok(Instances {
            args,
            tag: parts.tag,
            exports: DriverExports::find(&loaded.component, path)?,
            pre,
            synchronous,
            wit_version,
            initialised: false,
            limits: parts.limits,
            settings: parts.settings,
            http: parts.http,
            metadata: parts.metadata,
            max_log_lines: parts.max_log_lines,
            log_rate: parts.log_rate,
            warm: Mutex::new(None),
        })
    }

    fn pre(
        loaded: &LoadedComponent,
        path: &Path,
        synchronous: bool,
        wit_version: &str,
    ) -> Result<InstancePre<HostState>, InitError> {
        let mut linker: Linker<HostState> = Linker::new(loaded.component.engine());
        if synchronous {
            state::link_synchronous(&mut linker)
        } else {
            state::link(&mut linker)
        }
        .map_err(|e| InitError::new(format!("cannot link host functions: {e:#}")))?;
        let instance_pre = linker.instantiate_pre(&loaded.component).map_err(|e| {
            // Only an import of mailpush's own package is what a newer mailpush adds.
            let ours = format!("{e:#}").contains(&format!("{WIT_PACKAGE}/"));
            let newer = if ours && newer_patch(wit_version, WIT_VERSION) {
                format!(
                    "; it was built against {WIT_PACKAGE}@{wit_version}, newer than this mailpush's {WIT_VERSION}: upgrade mailpush, or rebuild the driver against this mailpush's wit/"
                )
            } else {
                String::new()
            };
            InitError::new(format!(
                "{} imports something mailpush does not provide: {e:#} (a driver may import mailpush:driver/host, wasi:http/outgoing-handler and WASI 0.2 interfaces){newer}",
                path.display()
            ))
        })?;
        // The bindings' check of every export against the world, once: instances call
        // the functions through [`DriverExports`].
        PushDriverIndices::new(&instance_pre).map_err(|e| {
            InitError::new(format!(
                "{} does not match the mailpush:driver/push-driver world: {e:#}",
                path.display()
            ))
        })?;
        Ok(instance_pre)
    }

    /// Asks `inst`'s `fixed-begin.answer` (0.1.1), armed, within `left` of wall time:
    /// `Ok(None)` when the component does not export it or answers `none`.
    pub async fn fixed_begin(
        &self,
        inst: &mut Instance,
        left: Duration,
    ) -> Result<wasmtime::Result<Option<WitBegin>>, OutOfTime> {
        let Some(export) = &self.exports.fixed_begin else {
            return Ok(Ok(None));
        };
        // SAFETY: always this type, and `inst` is made from `self.pre`, the component
        // `exports` were found in.
        match unsafe { export.typed::<(), (Option<WitBegin>,)>(&inst.instance, &mut inst.store) } {
            Ok(func) => self.call(&mut inst.store, func, (), left).await,
            Err(e) => Ok(Err(e)),
        }
    }

    /// Calls `inst`'s `begin-txn`, armed, within `left` of wall time.
    pub async fn begin_txn(
        &self,
        inst: &mut Instance,
        id: &str,
        user: &str,
        left: Duration,
    ) -> Result<wasmtime::Result<WitBegin>, OutOfTime> {
        // SAFETY: as in `fixed_begin`.
        match unsafe {
            self.exports
                .begin_txn
                .typed::<(&str, &str), (WitBegin,)>(&inst.instance, &mut inst.store)
        } {
            Ok(func) => self.call(&mut inst.store, func, (id, user), left).await,
            Err(e) => Ok(Err(e)),
        }
    }

    /// Calls `inst`'s `deliver` with `txn`, lowered into the guest from borrowed data,
    /// armed, within `left` of wall time.
    pub async fn deliver(
        &self,
        inst: &mut Instance,
        txn: &TransactionRef<'_>,
        left: Duration,
    ) -> Result<wasmtime::Result<Result<(), WitFailure>>, OutOfTime> {
        // SAFETY: as in `fixed_begin`.
        match unsafe {
            self.exports
                .deliver
                .typed::<(&TransactionRef<'_>,), (Result<(), WitFailure>,)>(
                    &inst.instance,
                    &mut inst.store,
                )
        } {
            Ok(deliver) => self.call(&mut inst.store, deliver, (txn,), left).await,
            Err(e) => Ok(Err(e)),
        }
    }

    /// Calls `func` in `store`, armed, within `left` of wall time: synchronously (its
    /// deadline cut to `left`, [`Self::arm_within`]) or on a fiber under a timeout; a
    /// call that ran out of `left` is [`OutOfTime`] either way.
    async fn call<P, R>(
        &self,
        store: &mut Store<HostState>,
        func: TypedFunc<P, (R,)>,
        params: P,
        left: Duration,
    ) -> Result<wasmtime::Result<R>, OutOfTime>
    where
        P: ComponentNamedList + Lower + Send + Sync,
        R: ComponentType + Lift + Send + Sync + 'static,
    {
        let capped = self.arm_within(store, left);
        let result = if self.synchronous {
            func.call(&mut *store, params)
        } else {
            let poll = store.data().clock.poll.clone();
            tokio::time::timeout(left, charged(&poll, func.call_async(&mut *store, params)))
                .await
                .map_err(|_| OutOfTime)?
        };
        in_time(store, capped, result.map(|(r,)| r))
    }

    /// The `mailpush:driver` version the component was built against.
    pub fn wit_version(&self) -> &str {
        &self.wit_version
    }

    /// Whether calls into this driver's instances are synchronous
    /// ([`super::synchronous`]).
    pub fn synchronous(&self) -> bool {
        self.synchronous
    }

    /// Instances of the linked component start from a snapshot taken after `init`.
    pub fn mark_initialised(&mut self) {
        self.initialised = true;
    }

    /// Whether instances start from a snapshot taken after `init`.
    pub fn initialised(&self) -> bool {
        self.initialised
    }

    /// Runs `init` once in an instance of the instrumented `component` (every import a
    /// trap) and snapshots what it left ([`super::snapshot`]); `init` within
    /// `init_timeout_msecs`.
    pub async fn preinitialise(
        &self,
        cx: &wasmtime_wizer::ComponentContext<'_>,
        component: &wasmtime::component::Component,
    ) -> super::snapshot::Preinit {
        let mut store = match self.new_store() {
            Ok(s) => s,
            Err(f) => {
                return super::snapshot::Preinit::Declined {
                    why: f.reason,
                    lasting: false,
                }
            }
        };
        let arm = |store: &mut Store<HostState>| self.arm(store);
        super::snapshot::preinitialise(
            cx,
            component,
            &mut store,
            &self.args,
            self.limits.init_timeout,
            arm,
        )
        .await
    }

    /// The instance settings.
    pub fn settings(&self) -> &InstanceSettings {
        &self.settings
    }

    fn new_store(&self) -> Result<Store<HostState>, Failure> {
        let reservation = HostMemory::global()
            .reserve(self.limits.host_memory)
            .map_err(|e| Failure::retryable(e.to_string()))?;
        let log = LogBudget::shared(self.max_log_lines, self.log_rate.clone());
        let state = HostState::new(
            self.tag.clone(),
            &self.limits,
            OutboundHttp::new(self.http.clone(), log.clone()),
            self.metadata.clone(),
            log,
            reservation,
        );
        let mut store = Store::new(self.pre.engine(), state);
        store.data_mut().clock.synchronous = self.synchronous;
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_callback(|mut ctx| Ok(ctx.data_mut().clock.on_epoch()));
        Ok(store)
    }

    /// Re-arms the per-call deadline (and fuel) before a call into the guest, and forgets
    /// what the last call left (a memory-limit hit, a panic message).
    fn arm(&self, store: &mut Store<HostState>) {
        store.data_mut().clock.arm(self.limits.timeout);
        store.data_mut().panic = None;
        store.data_mut().limiter.hit = false;
        store.set_epoch_deadline(slice(self.limits.timeout));
        if let Some(fuel) = self.limits.fuel {
            // set_fuel only fails on an engine without fuel, which fuel drivers never use.
            let _ = store.set_fuel(fuel);
        }
    }

    /// [`Self::arm`] for a call that has `left` of wall time. A synchronous call cannot
    /// be stopped by a wall-clock timeout around it, so its deadline is the tighter of
    /// `timeout_msecs` and `left`; returns whether `left` is (then a deadline hit means
    /// the call ran out of time, [`in_time`]). An async call is bounded by a timeout
    /// around it.
    fn arm_within(&self, store: &mut Store<HostState>, left: Duration) -> bool {
        self.arm(store);
        if !self.synchronous || left >= self.limits.timeout {
            return false;
        }
        store.data_mut().clock.arm(left);
        store.set_epoch_deadline(slice(left));
        true
    }

    /// Reports fuel used by the last call.
    pub fn account_fuel(&self, store: &Store<HostState>, stats: &WasmStats) -> u64 {
        let Some(fuel) = self.limits.fuel else {
            return 0;
        };
        let used = fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        stats.fuel_used.fetch_add(used, Ordering::Relaxed);
        used
    }

    /// A fresh instance with `init` called, both within `within` of wall time (a guest
    /// blocked in a host call, sleeping on a clock, is not charged CPU time but cannot
    /// outlast this).
    pub async fn instantiate(
        &self,
        stats: &WasmStats,
        within: Duration,
    ) -> Result<Instance, Failure> {
        let made = if self.synchronous {
            // Nothing to wait on, and a future that never suspends cannot be timed out:
            // the calls' deadlines are cut to `within` instead.
            self.make_instance(stats, within).await
        } else {
            tokio::time::timeout(within, self.make_instance(stats, within))
                .await
                .unwrap_or(Err(Late))
        };
        made.map_err(|unmade| match unmade {
            Late => Failure::retryable(format!(
                "init did not finish within {} ms (init_timeout_msecs, or what was left of max_txn_msecs)",
                within.as_millis()
            )),
            Failed(f) => f,
        })
    }

    /// Instantiates and (without a snapshot) calls `init`, within `within` of wall time
    /// ([`Self::arm_within`]).
    async fn make_instance(&self, stats: &WasmStats, within: Duration) -> Result<Instance, Unmade> {
        let started = std::time::Instant::now();
        let mut store = self.new_store().map_err(Failed)?;
        stats.instances.fetch_add(1, Ordering::Relaxed);
        let capped = self.arm_within(&mut store, within.saturating_sub(started.elapsed()));
        let instantiated = if self.synchronous {
            self.pre.instantiate(&mut store)
        } else {
            let poll = store.data().clock.poll.clone();
            charged(&poll, self.pre.instantiate_async(&mut store)).await
        };
        let instance = match in_time(&store, capped, instantiated).map_err(|_| Late)? {
            Ok(i) => i,
            Err(e)
                if e.to_string().contains("pooling")
                    || e.to_string().contains("maximum concurrent") =>
            {
                return Err(Failed(Failure::retryable(format!(
                    "no free instance slot: {e}"
                ))))
            }
            Err(e) => return Err(Failed(classify(store.data(), e, &self.limits, stats))),
        };
        if self.initialised {
            return Ok(Instance {
                store,
                instance,
                txns: 0,
            });
        }
        let left = within.saturating_sub(started.elapsed());
        // SAFETY: as in `fixed_begin`.
        let init = match unsafe {
            self.exports
                .init
                .typed::<(&[(String, String)],), (Result<(), String>,)>(&instance, &mut store)
        } {
            Ok(func) => self.call(&mut store, func, (&self.args,), left).await,
            Err(e) => Ok(Err(e)),
        };
        self.account_fuel(&store, stats);
        match init.map_err(|_| Late)? {
            Ok(Ok(())) => Ok(Instance {
                store,
                instance,
                txns: 0,
            }),
            Ok(Err(msg)) => Err(Failed(Failure::permanent(reason(format!(
                "init refused the arguments: {msg}"
            ))))),
            Err(e) => {
                let f = classify(store.data(), e, &self.limits, stats);
                Err(Failed(Failure {
                    reason: format!("init failed: {}", f.reason),
                    ..f
                }))
            }
        }
    }

    /// The warm instance (`instance=reuse`), or a fresh one made within `within`.
    pub async fn take(&self, stats: &WasmStats, within: Duration) -> Result<Instance, Failure> {
        if self.settings.model == InstanceModel::Reuse {
            if let Some(i) = self.warm.lock().take() {
                return Ok(i);
            }
        }
        self.instantiate(stats, within).await
    }

    /// Returns a healthy instance after a transaction that succeeded or was skipped:
    /// kept as the warm instance with `instance=reuse` (within `recycle_after`), dropped
    /// otherwise. An instance whose transaction failed in any way is never given back,
    /// so the next transaction never inherits state from a failed one.
    pub fn give_back(&self, mut inst: Instance) {
        inst.txns += 1;
        self.park(inst);
    }

    /// Keeps `inst` as the warm instance (with `instance=reuse`, within
    /// `recycle_after`), without counting a transaction (the probe made at load).
    pub fn park(&self, mut inst: Instance) {
        if self.settings.model == InstanceModel::Reuse && inst.txns < self.settings.recycle_after {
            inst.store.data_mut().txn = None;
            inst.store.data().output.lock().txn = None;
            inst.store.data_mut().drop_request_options();
            *self.warm.lock() = Some(inst);
        }
    }

    /// Whether a warm instance is kept ([`Self::park`]).
    pub fn holds_warm(&self) -> bool {
        self.warm.lock().is_some()
    }

    /// Drops the warm instance.
    pub fn clear(&self) {
        self.warm.lock().take();
    }
}
