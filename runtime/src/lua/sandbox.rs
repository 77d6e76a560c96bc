//! One Lua state running a script: the sandboxed globals, the built-in modules, the
//! script's hooks called the way Dovecot calls them, and how their errors become
//! delivery failures.
//!
//! Globals: the base library without `dofile`/`loadfile` (and `load` for text only),
//! `string` (without `dump`), `table`, `math`, `utf8`, `coroutine`, `os` with only
//! `time`/`date`/`clock`/`difftime`; no `io`, `debug` or C module loading. `require`
//! serves the built-in modules only.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mlua::{Function, Lua, LuaOptions, MultiValue, StdLib, Table, Value};

use mailpush_core::{group, Event, EventName, EventSet, Failure, Record, Transaction};

use super::budget::{self, is_deadline, is_memory};
use super::events;
use super::host::{Context, HttpProblem, Shared};
use super::settings::{DovecotVersion, HttpFailures, LuaSettings, ScriptErrors};

const PRELUDE: &str = include_str!("prelude.lua");
const DOVECOT: &str = include_str!("dovecot.lua");

/// The built-in modules `require` serves: (name, source, mode).
const MODULES: &[(&str, &str, Option<&str>)] = &[
    ("cjson", include_str!("modules/cjson.lua"), None),
    (
        "cjson.safe",
        include_str!("modules/cjson.lua"),
        Some("safe"),
    ),
    ("json", include_str!("modules/json.lua"), None),
    ("ltn12", include_str!("modules/ltn12.lua"), None),
    ("socket", include_str!("modules/socket.lua"), None),
    ("socket.url", include_str!("modules/socket_url.lua"), None),
    ("socket.http", include_str!("modules/socket_http.lua"), None),
    ("ssl.https", include_str!("modules/ssl_https.lua"), None),
    ("mime", include_str!("modules/mime.lua"), None),
];

/// The names of the built-in modules, for docs and errors.
pub fn module_names() -> Vec<&'static str> {
    MODULES.iter().map(|m| m.0).collect()
}

const REQUIRE: &str = r#"
local H, sources = ...
local error, type, pairs, ipairs = error, type, pairs, ipairs
local loaded, preload = {}, {}
for _, lib in ipairs({ "string", "table", "math", "os", "coroutine", "utf8" }) do loaded[lib] = _G[lib] end
loaded._G = _G
package = { loaded = loaded, preload = preload, path = "", cpath = "", config = "/\n;\n?\n!\n-\n" }
loaded.package = package
for name, m in pairs(sources) do
  local chunk, mode = m[1], m[2]
  preload[name] = function() return chunk(H, mode) end
end
local names = {}
for name in pairs(sources) do names[#names + 1] = name end
table.sort(names)
local available = table.concat(names, ", ")
function require(name)
  if type(name) ~= "string" then
    error("bad argument #1 to 'require' (string expected, got " .. type(name) .. ")", 2)
  end
  local v = loaded[name]
  if v ~= nil then return v end
  local f = preload[name]
  if f == nil then
    error("module '" .. name .. "' not found:\n\tno field package.preload['" .. name .. "']\n\t" ..
      "(the mailpush sandbox loads no files and no C modules; built-in modules: " .. available .. ")", 2)
  end
  v = f(name, ":preload:")
  if v == nil then v = true end
  loaded[name] = v
  return v
end
"#;

/// The built-in chunks, compiled once per process (a state loads their bytecode).
struct Compiled {
    prelude: Vec<u8>,
    require: Vec<u8>,
    dovecot: Vec<u8>,
    /// Per entry of [`MODULES`].
    modules: Vec<Vec<u8>>,
}

fn compiled() -> Result<&'static Compiled, String> {
    static COMPILED: std::sync::OnceLock<Result<Compiled, String>> = std::sync::OnceLock::new();
    let compile = || -> mlua::Result<Compiled> {
        let lua = Lua::new();
        let dump = |name: &str, src: &str| -> mlua::Result<Vec<u8>> {
            Ok(lua.load(src).set_name(name).into_function()?.dump(false))
        };
        Ok(Compiled {
            prelude: dump("=mailpush-prelude", PRELUDE)?,
            require: dump("=mailpush-require", REQUIRE)?,
            dovecot: dump("=dovecot", DOVECOT)?,
            modules: MODULES
                .iter()
                .map(|(name, src, _)| dump(&format!("={name}"), src))
                .collect::<mlua::Result<_>>()?,
        })
    };
    COMPILED
        .get_or_init(|| {
            compile().map_err(|e| format!("the built-in Lua code does not compile: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

fn binary<'a>(lua: &'a Lua, name: &str, bytecode: &'a [u8]) -> mlua::chunk::Chunk<'a> {
    lua.load(bytecode)
        .set_name(name)
        .set_mode(mlua::chunk::ChunkMode::Binary)
}

/// A fresh sandboxed state wired to `ctx`; returns it and the `user` constructor.
fn new_sandbox(ctx: &Arc<Context>, version: DovecotVersion) -> mlua::Result<(Lua, Function)> {
    let libs = StdLib::COROUTINE
        | StdLib::TABLE
        | StdLib::STRING
        | StdLib::UTF8
        | StdLib::MATH
        | StdLib::OS;
    // The debug library only for its `sethook`, which the time budget raises its error
    // with (budget::Raiser); scripts never see `debug` (nor `package.loaded`: no
    // package library).
    // SAFETY: the only unsafe library loaded is `debug`, removed from the globals below
    // before any script runs; C modules cannot be loaded (no package library).
    let lua = unsafe { Lua::unsafe_new_with(libs | StdLib::DEBUG, LuaOptions::default()) };
    let g = lua.globals();
    let debug: Table = g.get("debug")?;
    budget::Raiser::install(&lua, debug.get("sethook")?)?;
    g.raw_set("debug", Value::Nil)?;
    // The strings' metatable is not the script's to change: a `__tostring` there would
    // run, with hooks off, when the budget's error (a string) is turned into a message,
    // and a `__close` there would make every string a closing value.
    lua.load("getmetatable('').__metatable = false")
        .set_name("=mailpush-sandbox")
        .exec()?;
    // No new coroutine once the budget ran out: each would start with a fresh count of
    // instructions before the hook first looks at the clock.
    let co: Table = g.get("coroutine")?;
    for name in ["create", "wrap"] {
        let raw: Function = co.get(name)?;
        let budget = ctx.budget.clone();
        co.raw_set(
            name,
            lua.create_function(move |_, f: Value| {
                if budget.tripped() {
                    return Err(mlua::Error::external(budget::Deadline));
                }
                raw.call::<Value>(f)
            })?,
        )?;
    }
    for name in ["dofile", "loadfile"] {
        g.raw_set(name, Value::Nil)?;
    }
    let os: Table = g.get("os")?;
    for name in [
        "execute",
        "exit",
        "getenv",
        "remove",
        "rename",
        "setlocale",
        "tmpname",
    ] {
        os.raw_set(name, Value::Nil)?;
    }
    let string: Table = g.get("string")?;
    string.raw_set("dump", Value::Nil)?;
    // load(chunk [, name [, mode [, env]]]): text only, at most MAX_CHUNK bytes (Lua's
    // parser checks labels and gotos in quadratic time, in C, where the hook does not
    // look: a generated chunk of a few MiB of `::l1:: ::l2:: …` took minutes), and not
    // once the time budget is spent.
    let raw_load: Function = g.get("load")?;
    let budget = ctx.budget.clone();
    g.raw_set(
        "load",
        lua.create_function(move |lua, args: MultiValue| {
            if budget.tripped() {
                return Err(mlua::Error::external(super::budget::Deadline));
            }
            let mut args = args.into_vec();
            let n = args.len();
            args.resize(n.max(3), Value::Nil);
            args[2] = Value::String(lua.create_string("t")?);
            // Refused as load refuses: nil and why.
            let refused = |why: String| {
                Ok(MultiValue::from_vec(vec![
                    Value::Nil,
                    Value::String(lua.create_string(why)?),
                ]))
            };
            match &args[0] {
                Value::String(text) if text.as_bytes().len() > MAX_CHUNK => {
                    return refused(format!(
                        "chunk of {} bytes or more, larger than the mailpush sandbox's {MAX_CHUNK} for load",
                        text.as_bytes().len()
                    ));
                }
                // (A reader function's pieces are read by the prelude's `load`, which
                // passes their text: one here would be parsed unbounded.)
                Value::Function(_) => return refused("load takes text here".into()),
                _ => {}
            }
            raw_load.call::<MultiValue>(MultiValue::from_vec(args))
        })?,
    )?;
    // collectgarbage: only what cannot change how the collector runs, and not once the
    // time budget is spent (a full collection of a full heap is one C call the hook
    // does not see; a loop of them ran past the deadline by seconds).
    let raw_cg: Function = g.get("collectgarbage")?;
    let budget = ctx.budget.clone();
    g.raw_set(
        "collectgarbage",
        lua.create_function(move |_, (opt, arg): (Option<String>, Value)| {
            if budget.tripped() {
                return Err(mlua::Error::external(super::budget::Deadline));
            }
            let opt = opt.unwrap_or_else(|| "collect".into());
            match opt.as_str() {
                "collect" | "count" | "step" | "isrunning" => raw_cg.call::<MultiValue>((opt, arg)),
                _ => Ok(MultiValue::from_vec(vec![Value::Integer(0)])),
            }
        })?,
    )?;
    let code = compiled().map_err(mlua::Error::runtime)?;
    let h = super::host::primitives(&lua, ctx)?;
    h.set("max_chunk", MAX_CHUNK)?;
    binary(&lua, "=mailpush-prelude", &code.prelude).call::<()>(h.clone())?;
    let sources = lua.create_table()?;
    for ((name, _, mode), bytecode) in MODULES.iter().zip(&code.modules) {
        let entry = lua.create_table()?;
        entry.raw_set(
            1,
            binary(&lua, &format!("={name}"), bytecode).into_function()?,
        )?;
        if let Some(mode) = mode {
            entry.raw_set(2, *mode)?;
        }
        sources.set(*name, entry)?;
    }
    binary(&lua, "=mailpush-require", &code.require).call::<()>((h.clone(), sources))?;
    let api: Table = binary(&lua, "=dovecot", &code.dovecot).call((h, version.as_str()))?;
    let new_user: Function = api.get("new_user")?;
    Ok((lua, new_user))
}

/// The longest chunk a script may `load` (its own source is not bound by this).
pub const MAX_CHUNK: usize = 128 << 10;

/// The script as read at load.
pub struct Source {
    pub text: Vec<u8>,
    /// `@/etc/dovecot/push.lua`: messages then say `/etc/dovecot/push.lua:3: …`.
    pub chunk_name: String,
    /// The text compiled by the first state that loaded it; later states load this.
    pub bytecode: std::sync::OnceLock<Vec<u8>>,
}

impl Source {
    pub fn new(text: Vec<u8>, chunk_name: String) -> Self {
        Source {
            text,
            chunk_name,
            bytecode: std::sync::OnceLock::new(),
        }
    }
}

/// A state with the script loaded and `script_init` run.
pub struct ScriptState {
    lua: Lua,
    ctx: Arc<Context>,
    new_user: Function,
    /// The events the script has a handler for.
    handlers: EventSet,
    settings: Arc<LuaSettings>,
    /// The current transaction ran out of time or memory (the state may be mid-way
    /// through anything: it is dropped).
    exhausted: std::cell::Cell<bool>,
}

/// Text of a Lua error for a reason or an init error.
fn describe(e: &mlua::Error) -> String {
    match e {
        mlua::Error::CallbackError { traceback, cause } => format!("{cause}\n{traceback}"),
        other => other.to_string(),
    }
}

impl ScriptState {
    /// A new state: the sandbox, the script's main chunk, `script_init`.
    pub fn load(
        shared: &Arc<Shared>,
        settings: &Arc<LuaSettings>,
        source: &Source,
        handle: tokio::runtime::Handle,
    ) -> Result<ScriptState, String> {
        let ctx = Context::new(shared.clone(), handle);
        let (lua, new_user) = new_sandbox(&ctx, settings.dovecot)
            .map_err(|e| format!("cannot set up the sandbox: {}", describe(&e)))?;
        lua.set_memory_limit(settings.memory)
            .map_err(|e| format!("cannot limit memory: {e}"))?;
        let time = ctx.budget.clone();
        let limit_hint = |e: &mlua::Error| {
            if time.tripped() || is_deadline(e) {
                format!(
                    "loading the script took longer than init_timeout_msecs={}",
                    settings.init_timeout.as_millis()
                )
            } else if is_memory(e) {
                format!(
                    "loading the script needed more than memory={}",
                    settings.memory
                )
            } else {
                // The script's own words (an error it raised): capped and escaped.
                mailpush_core::Failure::untrusted_reason(&describe(e))
            }
        };
        budget::arm(&lua, &ctx.budget, settings.init_timeout).map_err(|e| e.to_string())?;
        let main = match source.bytecode.get() {
            Some(code) => binary(&lua, &source.chunk_name, code).into_function(),
            None => lua
                .load(&source.text[..])
                .set_name(&source.chunk_name)
                .set_mode(mlua::chunk::ChunkMode::Text)
                .into_function()
                .inspect(|f| {
                    let _ = source.bytecode.set(f.dump(false));
                }),
        }
        .map_err(|e| limit_hint(&e))?;
        main.call::<()>(()).map_err(|e| limit_hint(&e))?;
        let g = lua.globals();
        if let Ok(Value::Function(init)) = g.raw_get::<Value>("script_init") {
            match settings.dovecot {
                DovecotVersion::V23 => {
                    let r: Value = init
                        .call(())
                        .map_err(|e| format!("script_init() failed: {}", limit_hint(&e)))?;
                    match r {
                        Value::Integer(0) => {}
                        Value::Integer(n) => {
                            return Err(format!("Script init failed: script_init() returned {n}"))
                        }
                        _ => return Err(
                            "script_init() returned non-number (Dovecot 2.3 expects `return 0`; \
                                 a 2.4 script wants dovecot=2.4)"
                                .to_string(),
                        ),
                    }
                }
                DovecotVersion::V24 => {
                    let t = lua.create_table().map_err(|e| e.to_string())?;
                    for (k, v) in &settings.lua_settings {
                        t.set(k.as_str(), v.as_str()).map_err(|e| e.to_string())?;
                    }
                    init.call::<()>(t)
                        .map_err(|e| format!("script_init() failed: {}", limit_hint(&e)))?;
                }
            }
        }
        let handlers = EventName::ALL
            .into_iter()
            .filter(|n| {
                matches!(
                    g.raw_get::<Value>(events::handler_name(*n)),
                    Ok(Value::Function(_))
                )
            })
            .collect();
        shared
            .counters
            .states_created
            .fetch_add(1, Ordering::Relaxed);
        Ok(ScriptState {
            lua,
            ctx,
            new_user,
            handlers,
            settings: settings.clone(),
            exhausted: std::cell::Cell::new(false),
        })
    }

    /// The events the script handles.
    pub fn handlers(&self) -> EventSet {
        self.handlers
    }

    /// The transaction hooks the script does not define (as functions), of
    /// `dovecot_lua_notify_begin_txn` and `dovecot_lua_notify_end_txn`.
    pub fn missing_hooks(&self) -> Vec<&'static str> {
        let g = self.lua.globals();
        ["dovecot_lua_notify_begin_txn", "dovecot_lua_notify_end_txn"]
            .into_iter()
            .filter(|name| !matches!(g.raw_get::<Value>(*name), Ok(Value::Function(_))))
            .collect()
    }

    /// Runs one transaction through the hooks. The second value says whether the state
    /// must be dropped (its time or memory ran out: it may be mid-way through anything).
    pub fn run(&mut self, txn: &Arc<Transaction>) -> (Result<(), Failure>, bool) {
        self.ctx.begin(txn);
        self.exhausted.set(false);
        let started = Instant::now();
        let result = self.run_hooks(txn, started);
        let problems = self.ctx.end();
        let poisoned = self.ctx.budget.tripped() || self.exhausted.get();
        if self.lua.gc_collect().is_err() {
            return (result, true);
        }
        if result.is_err() || self.settings.http_failures == HttpFailures::Ignore {
            return (result, poisoned);
        }
        (http_outcome(problems), poisoned)
    }

    fn arm(&self, started: Instant) -> Result<(), Failure> {
        let left = self.settings.max_txn.saturating_sub(started.elapsed());
        budget::arm(&self.lua, &self.ctx.budget, self.settings.timeout.min(left))
            .map_err(|e| Failure::permanent(format!("lua: cannot arm the time budget: {e}")))
    }

    /// A hook call that returned after its deadline ran out of time all the same: a
    /// long C call (a sort, a pattern) the hook could not interrupt, then a return
    /// before the next check.
    fn within_budget(&self, hook: &str) -> Result<(), Failure> {
        if self.ctx.budget.overran() {
            return Err(self.failure(hook, &mlua::Error::external(budget::Deadline)));
        }
        Ok(())
    }

    fn failure(&self, hook: &str, e: &mlua::Error) -> Failure {
        let counters = &self.ctx.shared.counters;
        // By the budget itself, not only by the error's text (which a script can raise).
        if self.ctx.budget.tripped() || is_deadline(e) {
            self.exhausted.set(true);
            counters.timeouts.fetch_add(1, Ordering::Relaxed);
            Failure::permanent(format!(
                "lua: {hook}: script exceeded timeout_msecs={} (or max_txn_msecs={}): wall time of one hook call, HTTP waits included",
                self.settings.timeout.as_millis(),
                self.settings.max_txn.as_millis()
            ))
        } else if is_memory(e) {
            self.exhausted.set(true);
            counters.memory_errors.fetch_add(1, Ordering::Relaxed);
            Failure::permanent(format!(
                "lua: {hook}: script exceeded memory={} bytes",
                self.settings.memory
            ))
        } else {
            counters.script_errors.fetch_add(1, Ordering::Relaxed);
            Failure::from_driver(&format!("lua: {hook} failed: {}", describe(e)), true, None)
        }
    }

    fn user(&self, txn: &Transaction) -> mlua::Result<Value> {
        let t = self.lua.create_table()?;
        t.set("username", txn.user.as_str())?;
        t.set("home", "")?;
        let lmtp = txn.events.iter().any(|e| matches!(e, Event::MessageNew(_)));
        t.set("service", if lmtp { "lmtp" } else { "imap" })?;
        t.set("session_id", txn.id.as_str())?;
        t.set("uid", 0.0)?;
        t.set("gid", 0.0)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        t.set("session_create_time", now as f64)?;
        for flag in [
            "nonexistent",
            "anonymous",
            "autocreated",
            "fuzzy_search",
            "dsyncing",
            "admin",
            "session_restored",
        ] {
            t.set(flag, false)?;
        }
        if self.settings.dovecot == DovecotVersion::V23 {
            t.set("mail_debug", false)?;
        }
        self.new_user.call(t)
    }

    fn run_hooks(&self, txn: &Arc<Transaction>, started: Instant) -> Result<(), Failure> {
        let mut ignored = Ignored::default();
        let result = self.call_hooks(txn, started, &mut ignored);
        // Whatever ended it: an internal error or the budget between two hooks too.
        let outcome = match &result {
            Ok(Hooks::Skipped) => "the transaction was skipped",
            Ok(Hooks::Ran) => "the other hooks ran",
            Err(_) => "and the transaction failed",
        };
        self.report_ignored(txn, &ignored, outcome);
        result.map(|_| ())
    }

    /// [`ScriptState::run_hooks`]'s calls; the errors `script_errors=ignore` passes over are
    /// added to `ignored`.
    fn call_hooks(
        &self,
        txn: &Arc<Transaction>,
        started: Instant,
        ignored: &mut Ignored,
    ) -> Result<Hooks, Failure> {
        let internal = |e: mlua::Error| self.failure("mailpush", &e);
        let g = self.lua.globals();
        let Value::Function(begin) = g
            .raw_get::<Value>("dovecot_lua_notify_begin_txn")
            .map_err(internal)?
        else {
            return Err(Failure::permanent(
                "lua: Missing function dovecot_lua_notify_begin_txn",
            ));
        };
        let user = self.user(txn).map_err(internal)?;
        self.arm(started)?;
        let begun = begin
            .call::<Value>(user)
            .map_err(|e| self.failure("dovecot_lua_notify_begin_txn", &e))
            .and_then(|context| {
                self.within_budget("dovecot_lua_notify_begin_txn")?;
                Ok(context)
            });
        let context = match begun {
            Ok(context) => context,
            // Dovecot: a failed begin_txn drops the transaction for this driver.
            Err(e) if self.ignorable() => {
                ignored.add(e);
                return Ok(Hooks::Skipped);
            }
            Err(e) => return Err(e),
        };
        let mut failure = None;
        'records: for record in group(txn, self.handlers) {
            let events = match &record {
                Record::Mailbox(m) => &m.events,
                Record::Message(m) => &m.events,
            };
            for event in events {
                let name = events::handler_name(event.name());
                let Ok(Value::Function(handler)) = g.raw_get::<Value>(name.as_str()) else {
                    continue;
                };
                let table = events::table(&self.lua, event).map_err(internal)?;
                self.arm(started)?;
                if let Err(e) = handler
                    .call::<()>((context.clone(), table))
                    .map_err(|e| self.failure(&name, &e))
                    .and_then(|()| self.within_budget(&name))
                {
                    // Dovecot logs it and calls the remaining hooks.
                    if self.ignorable() {
                        ignored.add(e);
                        continue;
                    }
                    failure = Some(e);
                    break 'records;
                }
            }
        }
        let exhausted = self.ctx.budget.tripped() || self.exhausted.get();
        match g.raw_get::<Value>("dovecot_lua_notify_end_txn") {
            Ok(Value::Function(end)) if !exhausted => {
                self.arm(started)?;
                let ended = end.call::<MultiValue>((context, failure.is_none()));
                if let Err(e) = self.within_budget("dovecot_lua_notify_end_txn") {
                    failure.get_or_insert(e);
                }
                match ended {
                    Err(e) => {
                        let e = self.failure("dovecot_lua_notify_end_txn", &e);
                        if failure.is_none() && self.ignorable() {
                            ignored.add(e);
                        } else {
                            failure.get_or_insert(e);
                        }
                    }
                    // mailpush's addition: `return false, "why"` asks for a retry.
                    Ok(values) => {
                        let mut values = values.into_iter();
                        if let Some(Value::Boolean(false)) = values.next() {
                            let why = match values.next() {
                                Some(Value::String(s)) => s.to_string_lossy(),
                                _ => "no reason given".to_string(),
                            };
                            failure.get_or_insert_with(|| {
                                Failure::from_driver(
                                    &format!(
                                        "lua: dovecot_lua_notify_end_txn returned false: {why}"
                                    ),
                                    true,
                                    None,
                                )
                            });
                        }
                    }
                }
            }
            // Optional, as in Dovecot (which logs an error for every transaction; the
            // load warns once).
            _ => {}
        }
        failure.map_or(Ok(Hooks::Ran), Err)
    }

    /// Whether the error just raised is passed over (`script_errors=ignore`): a script's
    /// own error, never the time or memory budget running out (the state is spent).
    fn ignorable(&self) -> bool {
        self.settings.script_errors == ScriptErrors::Ignore
            && !self.ctx.budget.tripped()
            && !self.exhausted.get()
    }

    /// One log line per transaction for the errors `script_errors=ignore` passed over,
    /// however many hooks raised them.
    fn report_ignored(&self, txn: &Transaction, ignored: &Ignored, outcome: &str) {
        let Some(first) = &ignored.first else {
            return;
        };
        // The script decides how often this is written: it counts as one of its lines
        // (max_log_lines, log_lines_per_sec); one not written is counted as dropped.
        if !crate::wasm::log::admit(&self.ctx.log) {
            return;
        }
        let tag = &self.ctx.shared.tag;
        tracing::warn!(
            driver = tag.number,
            name = %tag.name,
            txn = %txn.id,
            user = %txn.user,
            "lua: {} hook error(s) passed over (script_errors=ignore), {outcome}; the first: {}",
            ignored.count,
            first.reason
        );
    }

    /// Dovecot's user deinit: `script_deinit()`, if the script has one.
    pub fn deinit(self) {
        // A state that ran out of time or memory may be mid-way through anything (a
        // coroutine the budget stopped, with hooks off): no more of its code runs.
        if self.exhausted.get() {
            return;
        }
        if let Ok(Value::Function(f)) = self.lua.globals().raw_get::<Value>("script_deinit") {
            let limit = self.settings.init_timeout;
            if budget::arm(&self.lua, &self.ctx.budget, limit).is_ok() {
                if let Err(e) = f.call::<()>(()) {
                    let tag = &self.ctx.shared.tag;
                    tracing::warn!(
                        driver = tag.number,
                        name = %tag.name,
                        "lua: script_deinit() failed: {}",
                        mailpush_core::Failure::untrusted_reason(&describe(&e))
                    );
                }
            }
        }
    }
}

/// How a transaction's hooks ended when nothing failed it.
enum Hooks {
    /// `begin_txn` raised under `script_errors=ignore`: nothing else ran.
    Skipped,
    Ran,
}

/// The hook errors `script_errors=ignore` passed over in one transaction.
#[derive(Default)]
struct Ignored {
    count: usize,
    first: Option<Failure>,
}

impl Ignored {
    fn add(&mut self, e: Failure) {
        self.count += 1;
        self.first.get_or_insert(e);
    }
}

/// What the script's failed HTTP requests make of a transaction whose hooks succeeded
/// (`http_failures=retry`): a refusal by the policy fails it for good, anything else
/// asks for a retry (after the circuit's wait when a circuit was open).
fn http_outcome(problems: Vec<HttpProblem>) -> Result<(), Failure> {
    if let Some(HttpProblem::Refused(why)) = problems
        .iter()
        .find(|p| matches!(p, HttpProblem::Refused(_)))
    {
        return Err(Failure::permanent(format!(
            "lua: outbound HTTP refused: {why}"
        )));
    }
    if let Some(HttpProblem::Failed(why)) = problems
        .iter()
        .find(|p| matches!(p, HttpProblem::Failed(_)))
    {
        return Err(Failure::retryable(format!(
            "lua: the script's HTTP request failed: {why} (http_failures=ignore to deliver anyway)"
        )));
    }
    if let Some(wait) = problems
        .iter()
        .filter_map(|p| match p {
            HttpProblem::Deferred(w) => Some(*w),
            _ => None,
        })
        .max()
    {
        let mut f = Failure::retryable("lua: the endpoint's circuit is open");
        f.retry_after = Some(wait.max(Duration::from_millis(1)));
        f.deferred = true;
        return Err(f);
    }
    Ok(())
}
