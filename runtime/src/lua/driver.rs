//! `LuaFactory` and `LuaDriver`: Dovecot's `lua` push driver. A transaction reaches the
//! script as Dovecot hands it over — `dovecot_lua_notify_begin_txn(user)`, one
//! `dovecot_lua_notify_event_*` call per event the script handles, then
//! `dovecot_lua_notify_end_txn(ctx, success)` — on a worker thread of its own.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;

use mailpush_core::{
    Begin, Driver, DriverFactory, DriverInit, DriverTxn, EventSet, Failure, InitError, Initialised,
    Transaction,
};

use super::host::{Counters, Shared};
use super::sandbox::{ScriptState, Source};
use super::settings::LuaSettings;
use super::worker::{Script, Worker};
use crate::wasm::http::policy::HttpPolicy;
use crate::wasm::log::{DriverTag, LogRate};

/// Registers `lua` (`push_notification_driver = lua:file=/etc/dovecot/push.lua`).
#[derive(Debug)]
pub struct LuaFactory {
    /// Extra time past `max_txn_msecs` before a worker that has not answered is given
    /// up ([`STUCK_GRACE`]; shorter in tests).
    stuck_grace: Duration,
    /// Pattern matcher steps a second ([`super::pattern::STEPS_PER_SECOND`]).
    pattern_rate: f64,
}

impl Default for LuaFactory {
    fn default() -> Self {
        LuaFactory {
            stuck_grace: STUCK_GRACE,
            pattern_rate: super::pattern::STEPS_PER_SECOND,
        }
    }
}

/// The keys of a `lua:` line, for "did you mean" (the error lists them by kind).
const LUA_KEYS: &[&str] = &[
    "file",
    "dovecot",
    "instance",
    "memory",
    "timeout_msecs",
    "max_txn_msecs",
    "init_timeout_msecs",
    "http_failures",
    "script_errors",
    "allow_hosts",
    "allow_private",
    "max_connections",
    "connect_timeout_msecs",
    "first_byte_timeout_msecs",
    "max_egress_bytes",
    "max_log_lines",
    "log_lines_per_sec",
    "log_burst",
];

#[async_trait]
impl DriverFactory for LuaFactory {
    fn name(&self) -> &'static str {
        "lua"
    }

    fn kind(&self) -> &'static str {
        "lua"
    }

    async fn init(&self, init: &DriverInit) -> Result<Initialised, InitError> {
        let mut args = init.args.clone();
        let mut settings = LuaSettings::from_init(init, &mut args)?;
        settings.http.endpoint_breaker = init.breaker.clone();
        if let Some((key, _)) = args.iter().next() {
            let hint = mailpush_core::suggest::nearest(key, LUA_KEYS)
                .map(|k| format!(" (did you mean {k}?)"))
                .unwrap_or_default();
            return Err(InitError::of_arg(
                key,
                format!(
                    "unknown key `{key}`{hint}; the lua driver takes file, dovecot, instance, \
                     memory, timeout_msecs, max_txn_msecs, init_timeout_msecs, http_failures, \
                     script_errors, lua_settings.*, the outbound HTTP keys (allow_hosts, \
                     allow_private, max_connections, connect_timeout_msecs, \
                     first_byte_timeout_msecs, max_egress_bytes) and the log keys \
                     (max_log_lines, log_lines_per_sec, log_burst)"
                ),
            ));
        }
        let text = std::fs::read(&settings.file).map_err(|e| {
            InitError::of_arg(
                "file",
                format!(
                    "cannot read the Lua script {}: {e}",
                    settings.file.display()
                ),
            )
        })?;
        // What a reload compares (with the arguments): the script, and the plugin { }
        // settings it may read (plugin_getenv).
        let digest = {
            use sha2::Digest;
            let mut h = sha2::Sha256::new();
            h.update(&text);
            for (k, v) in init.plugin_env.iter() {
                h.update(b"\0");
                h.update(k.as_bytes());
                h.update(b"=");
                h.update(v.as_bytes());
            }
            hex::encode(h.finalize())
        };
        let source = Arc::new(Source::new(text, format!("@{}", settings.file.display())));
        let tag = Arc::new(DriverTag {
            number: init.number,
            name: init.name.clone(),
        });
        let settings = Arc::new(settings);
        let shared = Arc::new(Shared {
            policy: HttpPolicy::new(tag.clone(), Arc::new(settings.http.clone())),
            log_rate: Arc::new(LogRate::new(
                settings.log.log_burst,
                settings.log.log_lines_per_sec,
            )),
            max_log_lines: settings.log.max_log_lines,
            drops: Default::default(),
            tag,
            metadata: init.metadata.clone(),
            plugin_env: init.plugin_env.clone(),
            counters: Counters::default(),
            pattern_rate: self.pattern_rate,
        });
        // Load it once now: syntax errors, a failing script_init and the handlers it
        // defines are known before the first transaction.
        let probe = {
            let (shared, settings, source) = (shared.clone(), settings.clone(), source.clone());
            let handle = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || {
                let state = ScriptState::load(&shared, &settings, &source, handle)?;
                let handlers = state.handlers();
                let missing = state.missing_hooks();
                state.deinit();
                Ok::<_, String>((handlers, missing))
            })
            .await
            .map_err(|e| InitError::new(format!("loading the script panicked: {e}")))?
        };
        let (handlers, missing) =
            probe.map_err(|e| InitError::new(format!("{}: {e}", settings.file.display())))?;
        let mut details = vec![
            format!("file: {}", settings.file.display()),
            format!("sha256: {digest} (the script and the plugin settings)"),
            format!(
                "events: {}",
                if handlers.is_empty() {
                    "none (no dovecot_lua_notify_event_* function: the script is never called)"
                        .to_string()
                } else {
                    handlers.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")
                }
            ),
            settings.describe(),
            format!(
                "grants: {}; metadata=read-write (own user); files, environment, sockets, os.execute: none",
                settings.http.describe()
            ),
            settings.log.describe(),
        ];
        details.retain(|d| !d.is_empty());
        let driver = LuaDriver {
            inner: Arc::new(Inner {
                script: Arc::new(Script {
                    shared,
                    settings,
                    source,
                }),
                handlers,
                idle: Mutex::new(Vec::new()),
                abandoned: Mutex::new(Vec::new()),
                stuck_grace: self.stuck_grace,
                spawned: AtomicUsize::new(0),
                runtime: tokio::runtime::Handle::current(),
            }),
        };
        let mut out = Initialised::new(Arc::new(driver));
        out.details = details;
        if handlers.is_empty() {
            out.warnings.push(
                "the script defines no dovecot_lua_notify_event_* function, so (as in Dovecot) it is never called"
                    .to_string(),
            );
        } else {
            for hook in missing {
                out.warnings.push(if hook == "dovecot_lua_notify_begin_txn" {
                    "the script defines no dovecot_lua_notify_begin_txn function: every transaction fails, and none reaches its event functions (Dovecot logs an error and skips each)".to_string()
                } else {
                    "the script defines no dovecot_lua_notify_end_txn function: nothing is called at the end of a transaction (Dovecot logs an error for each)".to_string()
                });
            }
        }
        Ok(out)
    }
}

struct Inner {
    script: Arc<Script>,
    handlers: EventSet,
    /// Workers waiting for a transaction.
    idle: Mutex<Vec<Worker>>,
    /// Threads of workers given up on whose call has not returned yet.
    abandoned: Mutex<Vec<std::thread::JoinHandle<()>>>,
    stuck_grace: Duration,
    spawned: AtomicUsize,
    /// The runtime the driver was loaded on (the process's): workers' HTTP runs there,
    /// never on the lane thread that happened to start them.
    runtime: tokio::runtime::Handle,
}

/// A loaded `lua` driver.
pub struct LuaDriver {
    inner: Arc<Inner>,
}

/// Extra time past `max_txn_msecs` before a worker that has not answered is given up.
const STUCK_GRACE: Duration = Duration::from_secs(5);

/// The most threads given up on (still in a call the time budget could not interrupt)
/// one driver may have: past it, its transactions fail (and are retried) instead of
/// starting more, so a script cannot take more than this many cores on top of its
/// concurrency.
pub const MAX_ABANDONED: usize = 2;

impl Inner {
    async fn deliver(&self, txn: Arc<Transaction>) -> Result<(), Failure> {
        {
            let mut abandoned = self.abandoned.lock();
            abandoned.retain(|t| !t.is_finished());
            if abandoned.len() >= MAX_ABANDONED {
                return Err(Failure::retryable(format!(
                    "lua: {} earlier calls of the script are still running past their time budget (in a C function the budget cannot interrupt); no new call starts until they end",
                    abandoned.len()
                )));
            }
        }
        let worker = self.idle.lock().pop();
        let worker = match worker {
            Some(w) => w,
            None => {
                let n = self.spawned.fetch_add(1, Ordering::Relaxed);
                Worker::spawn(self.script.clone(), n, self.runtime.clone()).map_err(|e| {
                    Failure::retryable(format!("lua: cannot start a worker thread: {e}"))
                })?
            }
        };
        // A worker's job may also load a state (its first, or each with instance=fresh)
        // and run script_deinit, each within init_timeout_msecs: a script within all its
        // bounds is never given up on.
        let settings = &self.script.settings;
        let limit = settings.max_txn + settings.init_timeout * 2 + self.stuck_grace;
        match tokio::time::timeout(limit, worker.deliver(txn)).await {
            Ok(Some(result)) => {
                self.idle.lock().push(worker);
                result
            }
            Ok(None) => Err(Failure::retryable("lua: the worker thread stopped")),
            // The worker is left to finish on its own and is not used again.
            Err(_) => {
                self.abandoned.lock().push(worker.abandon());
                Err(Failure::permanent(format!(
                    "lua: the script did not finish within max_txn_msecs={} (+ twice init_timeout_msecs={} for loading a state and script_deinit, + {} ms)",
                    settings.max_txn.as_millis(),
                    settings.init_timeout.as_millis(),
                    self.stuck_grace.as_millis()
                )))
            }
        }
    }
}

#[async_trait]
impl Driver for LuaDriver {
    async fn begin_txn(&self, txn: &Arc<Transaction>) -> Result<Begin, Failure> {
        // Dovecot calls begin_txn only when the script handles at least one event, and
        // then for every transaction.
        if self.inner.handlers.is_empty() {
            return Ok(Begin::Skip);
        }
        Ok(Begin::Join {
            events: self.inner.handlers,
            txn: Box::new(LuaTxn {
                inner: self.inner.clone(),
                txn: txn.clone(),
            }),
        })
    }

    async fn deinit(&self) {
        // Dropping the workers ends their threads, which run script_deinit.
        self.inner.idle.lock().clear();
        let shared = &self.inner.script.shared;
        let rest = shared.drops.take_rest();
        if rest > 0 {
            shared.report_drops(rest);
        }
    }

    fn concurrency(&self) -> usize {
        4
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = &self.inner.script.shared.counters;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("lua_script_errors", get(&c.script_errors)),
            ("lua_timeouts", get(&c.timeouts)),
            ("lua_memory_errors", get(&c.memory_errors)),
            ("lua_states_created", get(&c.states_created)),
            ("lua_http_requests", get(&c.http_requests)),
            ("lua_http_refused", get(&c.http_refused)),
        ]
    }

    fn endpoint_circuits(&self) -> Vec<mailpush_core::EndpointCircuit> {
        self.inner
            .script
            .shared
            .policy
            .breakers
            .states(std::time::Instant::now())
            .into_iter()
            .map(|(endpoint, state)| mailpush_core::EndpointCircuit {
                endpoint,
                scope: None,
                state,
            })
            .collect()
    }
}

struct LuaTxn {
    inner: Arc<Inner>,
    txn: Arc<Transaction>,
}

#[async_trait]
impl DriverTxn for LuaTxn {
    async fn end_txn(self: Box<Self>, success: bool) -> Result<(), Failure> {
        if !success {
            return Ok(());
        }
        self.inner.deliver(self.txn).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailpush_core::{BreakerConfig, DriverArgs, NoMetadata};

    /// A worker given up on (a C call the budget cannot interrupt) leaves its thread
    /// running; at most [`MAX_ABANDONED`] such threads per driver, then transactions fail
    /// (retryably) instead of starting more, until those calls end.
    #[tokio::test(flavor = "multi_thread")]
    async fn threads_given_up_on_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("stuck.lua");
        // One pattern call under the cost bound (2 × 22000² steps) that runs for a good
        // fraction of a second in C, where the hook cannot stop it; only for user "slow".
        std::fs::write(
            &script,
            r#"
function dovecot_lua_notify_begin_txn(user) return { user = user.username } end
function dovecot_lua_notify_event_mailbox_create(ctx, event)
  if ctx.user == "slow" then
    local s = ("a"):rep(22000)
    if s:find(".-b") then error("matched") end
  end
end
function dovecot_lua_notify_end_txn(ctx, success) end
"#,
        )
        .unwrap();
        let init = DriverInit {
            number: 1,
            name: "lua".into(),
            args: DriverArgs::parse(&format!(
                "file={} timeout_msecs=20 max_txn_msecs=20 init_timeout_msecs=20",
                script.display()
            )),
            raw: None,
            config_dir: dir.path().into(),
            state_dir: dir.path().into(),
            metadata: Arc::new(NoMetadata),
            breaker: BreakerConfig::default(),
            plugin_env: Arc::default(),
            background_load: false,
            check_only: false,
        };
        // As if patterns ran a thousand times faster than they do: the call below is
        // allowed, and outlasts its deadline in C.
        let factory = LuaFactory {
            stuck_grace: Duration::from_millis(10),
            pattern_rate: super::super::pattern::STEPS_PER_SECOND * 1000.0,
        };
        let driver = factory.init(&init).await.expect("the script loads").driver;
        let deliver = |user: &str, id: &str| {
            let txn = Arc::new(
                Transaction::from_json(&format!(
                    r#"{{"id":"{id}","user":"{user}","events":[{{"name":"MailboxCreate","mailbox":"A"}}]}}"#
                ))
                .unwrap(),
            );
            let driver = driver.clone();
            async move {
                match driver.begin_txn(&txn).await? {
                    Begin::Join { txn: t, .. } => t.end_txn(true).await,
                    _ => Ok(()),
                }
            }
        };
        for i in 0..MAX_ABANDONED {
            let e = deliver("slow", &format!("s{i}")).await.unwrap_err();
            assert!(
                !e.retryable && e.reason.contains("did not finish within"),
                "{e:?}"
            );
        }
        // Both threads are still in their C call: nothing starts, for any user.
        let e = deliver("fast", "f1").await.unwrap_err();
        assert!(
            e.retryable
                && e.reason
                    .contains("2 earlier calls of the script are still running"),
            "{e:?}"
        );
        // Once those calls end, transactions run again (within a generous bound).
        let ran = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                match deliver("fast", "f2").await {
                    Ok(()) => return,
                    Err(e) => assert!(e.retryable, "{e:?}"),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(ran.is_ok(), "the given-up threads never ended");
    }
}
