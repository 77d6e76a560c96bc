//! Dovecot's `lua` driver: push-notification scripts run unchanged in mailpush's sandbox,
//! against real HTTP endpoints on 127.0.0.1.
//!
//! - the event tables a script receives equal what Dovecot 2.3.19 handed a script
//!   (tests/data/dovecot-2.3.19-lua-events.txt, captured from a real Dovecot), field by
//!   field and Lua type by Lua type;
//! - scripts written the way real ones are (OX-style pusher, chat relay, web-push
//!   bridge, a 2.4 script, event logging, restricted globals) send exactly the requests
//!   they send under Dovecot;
//! - hostile scripts are contained with a clear reason while a dlog driver beside them
//!   receives every transaction.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mailpush::pipeline::{Backpressure, Dispatcher, Outcome};
use mailpush_core::Transaction;
use mailpush_e2e::*;
use serde_json::Value;

/// Runs `txns` through the config's drivers; returns each driver-1 outcome in
/// transaction order, and the dlog file's lines when driver 2 is dlog.
async fn run(dir: &Path, conf: &str, txns: Vec<Transaction>) -> Vec<(String, Outcome)> {
    run_with(dir, conf, txns, Arc::new(mailpush_core::NoMetadata), None).await
}

/// [`run`] with a METADATA store.
async fn run_with(
    dir: &Path,
    conf: &str,
    txns: Vec<Transaction>,
    metadata: Arc<dyn mailpush_core::MetadataLookup>,
    settle: Option<(&RecordingServer, usize)>,
) -> Vec<(String, Outcome)> {
    let config = write_config(dir, conf);
    let drivers = TestDrivers::new();
    let loaded = match drivers.registry().init_all(&config, metadata).await {
        Ok(l) => l,
        Err((_, e)) => panic!("drivers should load: {e:?}"),
    };
    let outcomes = Arc::new(Outcomes::default());
    // With a spool: retries happen only for spooled transactions.
    let spool =
        mailpush::spool::sqlite::SqliteSpool::open(&dir.join("spool.db"), 1 << 30).expect("spool");
    let d = Dispatcher::start_with_spool(
        loaded,
        64,
        Some(outcomes.clone()),
        Some(spool as Arc<dyn mailpush::spool::Spool>),
    );
    for t in txns {
        d.accept(vec![t], Backpressure::Wait).await.unwrap();
    }
    // Retries are not waited for by shutdown: wait for the requests they make.
    if let Some((server, n)) = settle {
        server.wait_for(n, Duration::from_secs(10)).await;
    }
    d.shutdown().await;
    let all = outcomes.0.lock().unwrap().clone();
    all.into_iter()
        .filter(|(driver, _, _)| *driver == 1)
        .map(|(_, id, o)| (id, o))
        .collect()
}

fn conf(script: &Path, args: &str, plugin_extra: &str) -> String {
    format!(
        "mailpush {{\n state_dir = state\n}}\nplugin {{\n push_notification_driver = lua:file={} {args}\n{plugin_extra}}}\n",
        script.display()
    )
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn txn(json: Value) -> Transaction {
    Transaction::from_value(json).expect("a valid transaction")
}

// ---------------------------------------------------------------- the captured tables

/// One captured transaction: its user and, per event, the captured JSON and types.
struct CapturedTxn {
    user: String,
    events: Vec<(Value, Value)>,
}

fn captures() -> Vec<CapturedTxn> {
    let text = include_str!("../data/dovecot-2.3.19-lua-events.txt");
    let mut out: Vec<CapturedTxn> = Vec::new();
    let mut pending: Option<Value> = None;
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("-- lua txn") {
            let user = rest
                .split("user=")
                .nth(1)
                .and_then(|r| r.split(',').next())
                .expect("user in header")
                .to_string();
            out.push(CapturedTxn {
                user,
                events: Vec::new(),
            });
        } else if let Some(types) = t.strip_prefix("types: ") {
            let types: Value = serde_json::from_str(types).unwrap();
            let value = pending.take().expect("a value line before its types");
            out.last_mut().unwrap().events.push((value, types));
        } else if t.starts_with('{') {
            pending = Some(serde_json::from_str(t).unwrap());
        }
    }
    out
}

/// The canonical event a forwarder sends for a captured table: fields Dovecot shows as
/// `""` (unknown) are left out, so the driver must put the `""` back.
fn canonical(captured: &Value) -> Value {
    let mut e = serde_json::Map::new();
    for (k, v) in captured.as_object().unwrap() {
        if v == "" {
            continue;
        }
        if k == "subject" {
            e.insert("subject_utf8".into(), v.clone());
        }
        e.insert(k.clone(), v.clone());
    }
    Value::Object(e)
}

/// `key=type:value|…` sorted by key, as the capture script below prints a table.
fn rendered(captured: &Value, types: &Value) -> String {
    let obj = captured.as_object().unwrap();
    let mut keys: Vec<&String> = obj.keys().collect();
    keys.sort();
    keys.iter()
        .map(|k| {
            let v = &obj[*k];
            let value = match v {
                Value::Array(items) => format!(
                    "[{}]",
                    items
                        .iter()
                        .map(|i| i.as_str().unwrap().to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                Value::Number(n) => n.to_string(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            format!("{k}={}:{value}", types[k.as_str()].as_str().unwrap())
        })
        .collect::<Vec<_>>()
        .join("|")
}

const CAPTURE_SCRIPT: &str = r#"
-- Prints every event table it receives as key=type:value (numbers with %d; lists
-- joined), one line per event, and POSTs a transaction's lines at end_txn.
local function dump(e)
  local keys = {}
  for k in pairs(e) do keys[#keys + 1] = k end
  table.sort(keys)
  local out = {}
  for _, k in ipairs(keys) do
    local v = e[k]
    local t = type(v) == "number" and math.type(v) or type(v)
    local s
    if type(v) == "table" then s = "[" .. table.concat(v, ",") .. "]"
    elseif type(v) == "number" then s = string.format("%d", v)
    else s = tostring(v) end
    out[#out + 1] = k .. "=" .. t .. ":" .. s
  end
  return table.concat(out, "|")
end

local url
function script_init()
  url = nil
  return 0
end

function dovecot_lua_notify_begin_txn(user)
  return { user = user, lines = {} }
end

for _, name in ipairs({ "message_new", "message_append", "message_read", "message_trash",
    "message_expunge", "flags_set", "flags_clear", "mailbox_create", "mailbox_delete",
    "mailbox_rename", "mailbox_subscribe", "mailbox_unsubscribe" }) do
  _G["dovecot_lua_notify_event_" .. name] = function(ctx, event)
    table.insert(ctx.lines, dump(event))
  end
end

function dovecot_lua_notify_end_txn(ctx, success)
  local client = dovecot.http.client({ timeout = 5000, max_attempts = 1 })
  local req = client:request({ url = ctx.user:plugin_getenv("capture_url"), method = "POST" })
  req:add_header("x-user", ctx.user.username)
  req:set_payload(table.concat(ctx.lines, "\n"))
  local resp = req:submit()
  if resp:status() ~= 200 then error("capture endpoint answered " .. resp:status()) end
end
"#;

#[tokio::test(flavor = "multi_thread")]
async fn event_tables_equal_the_ones_dovecot_hands_a_script() {
    let dir = tempfile::tempdir().unwrap();
    let server = RecordingServer::start().await;
    let script = write(dir.path(), "capture.lua", CAPTURE_SCRIPT);
    let captured = captures();
    assert!(captured.len() >= 20, "the capture has every event kind");
    let txns: Vec<Transaction> = captured
        .iter()
        .enumerate()
        .map(|(i, c)| {
            txn(serde_json::json!({
                "id": format!("t{i:02}"),
                "user": c.user,
                "events": c.events.iter().map(|(v, _)| canonical(v)).collect::<Vec<_>>(),
            }))
        })
        .collect();
    let n = txns.len();
    let conf = conf(
        &script,
        "allow_hosts=127.0.0.1 allow_private retry=100ms,1s",
        &format!(" capture_url = {}\n", server.url("/capture")),
    );
    // (A delivery the loaded machine made time out is retried: wait for its request.)
    let outcomes = run_with(
        dir.path(),
        &conf,
        txns,
        Arc::new(mailpush_core::NoMetadata),
        Some((&server, n)),
    )
    .await;
    assert!(
        outcomes.len() == n
            && outcomes
                .iter()
                .all(|(_, o)| matches!(o, Outcome::Delivered)),
        "{outcomes:?}"
    );
    let requests = server.requests();
    assert_eq!(requests.len(), n);
    let mut kinds = std::collections::BTreeSet::new();
    // One user's transactions arrive in order; alice's and bob's may interleave.
    for user in ["alice@example.test", "bob@example.test"] {
        let got: Vec<String> = requests
            .iter()
            .filter(|r| r.header("x-user") == Some(user))
            .map(|r| r.body_text())
            .collect();
        let want: Vec<String> = captured
            .iter()
            .filter(|c| c.user == user)
            .map(|c| {
                c.events
                    .iter()
                    .map(|(v, t)| {
                        kinds.insert(v["name"].as_str().unwrap().to_string());
                        rendered(v, t)
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .collect();
        assert_eq!(got.len(), want.len(), "{user}'s transactions");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g, w, "{user}: the script's table vs Dovecot's");
        }
    }
    assert_eq!(kinds.len(), 12, "every event kind was compared: {kinds:?}");
}

// ---------------------------------------------------------------- hostile scripts

/// A script whose `mailbox_create` handler runs `body`.
fn hostile_script(body: &str) -> String {
    format!(
        "function dovecot_lua_notify_begin_txn(user) return {{}} end\n\
         function dovecot_lua_notify_event_mailbox_create(ctx, e)\n{body}\nend\n\
         function dovecot_lua_notify_end_txn(ctx, success) end\n"
    )
}

/// Runs 3 transactions through a hostile script (driver 1) and dlog (driver 2); asserts
/// dlog delivered all of them and returns the script's failure reasons.
async fn contained(body: &str, args: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let script = write(dir.path(), "hostile.lua", &hostile_script(body));
    let dlog = dir.path().join("dlog.log");
    // 300 ms per hook call unless the case says otherwise (memory cases allow more, so
    // a loaded machine still reaches the memory limit first).
    let timeout = if args.contains("timeout_msecs=") {
        ""
    } else {
        "timeout_msecs=300"
    };
    let conf = format!(
        "mailpush {{\n state_dir = state\n}}\nplugin {{\n push_notification_driver = lua:file={} retry=none {timeout} memory=16M {args}\n push_notification_driver2 = dlog:file={}\n}}\n",
        script.display(),
        dlog.display()
    );
    let config = write_config(dir.path(), &conf);
    let loaded = load_drivers(&TestDrivers::new().registry(), &config).await;
    let outcomes = Arc::new(Outcomes::default());
    let d = Dispatcher::start(loaded, 64, Some(outcomes.clone()));
    let n = 3;
    for i in 0..n {
        d.accept(
            vec![mailbox_txn(&format!("u{i}@example.com"), &format!("t{i}"))],
            Backpressure::Wait,
        )
        .await
        .unwrap();
    }
    d.shutdown().await;
    let all = outcomes.0.lock().unwrap().clone();
    let bystander: Vec<_> = all.iter().filter(|(d, _, _)| *d == 2).collect();
    assert_eq!(bystander.len(), n, "{all:?}");
    assert!(
        bystander
            .iter()
            .all(|(_, _, o)| matches!(o, Outcome::Delivered)),
        "{all:?}"
    );
    let lines = std::fs::read_to_string(&dlog).unwrap();
    assert_eq!(
        lines
            .matches("Called begin_txn push_notification plugin hook.")
            .count(),
        n,
        "dlog saw every transaction:\n{lines}"
    );
    let script: Vec<Outcome> = all
        .iter()
        .filter(|(d, _, _)| *d == 1)
        .map(|(_, _, o)| o.clone())
        .collect();
    assert_eq!(script.len(), n);
    reasons(&script)
}

fn assert_all(reasons: &[String], needle: &str) {
    assert!(
        reasons.iter().all(|r| r.contains(needle)),
        "every reason should contain {needle:?}: {reasons:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_cpu_is_stopped_at_the_deadline() {
    for body in [
        "while true do end",
        "while true do pcall(function() while true do end end) end",
        "coroutine.wrap(function() while true do end end)()",
        "while true do xpcall(function() while true do end end, function() while true do end end) end",
        "local s = ('x'):rep(100) for i = 1, 1e12 do s = s:upper():lower() end",
    ] {
        let r = contained(body, "").await;
        assert_all(&r, "exceeded timeout_msecs=300");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_memory_is_stopped_at_the_limit() {
    for body in [
        "local s = string.rep('x', 1e9)",
        "local t = {} for i = 1, 1e9 do t[i] = i end",
        "local s = 'x' for i = 1, 40 do s = s .. s end",
        "local t = {} for i = 1, 1e9 do t[#t + 1] = {i, i, i} end",
    ] {
        let r = contained(body, "timeout_msecs=60000").await;
        assert_all(&r, "exceeded memory=16777216 bytes");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn c_functions_that_would_run_unbounded_are_refused_or_bounded() {
    for (body, args, reason) in [
        // Backtracking patterns are refused before they start.
        (
            "local s = ('a'):rep(3000) if s:find('.-.-.-b') then error('matched') end",
            "",
            "pattern too costly for the mailpush sandbox",
        ),
        // A back-reference is one more factor of the subject's length: refused too.
        (
            "local s = ('a'):rep(31000) if s:find('(.-)%1b') then error('matched') end",
            "",
            "pattern too costly for the mailpush sandbox",
        ),
        // string.rep of an empty string, __gc finalizers.
        (
            "local s = string.rep('', 1e15) error('rep returned ' .. #s)",
            "",
            "rep returned 0",
        ),
        (
            "setmetatable({}, { __gc = function() while true do end end })",
            "",
            "__gc metamethods are not allowed",
        ),
        // __close handlers run while the budget's error unwinds the stack: they are
        // stopped too (the error is raised from a Lua hook, which leaves hooks on).
        // A <close> variable, a generic for's closing value, the strings' metatable.
        (
            "local x <close> = setmetatable({}, {__close = function() while true do end end}) while true do end",
            "",
            "exceeded timeout_msecs=300",
        ),
        (
            "local c = setmetatable({}, {__close = function() while true do end end}) \
             for _ in function() return 1 end, nil, nil, c do end",
            "",
            "exceeded timeout_msecs=300",
        ),
        // The strings' metatable is locked: no __close (or a __tostring run with hooks
        // off while the deadline's message is made) can be put there.
        (
            "getmetatable('').__close = function() while true do end end \
             for _ in function() return 1 end, nil, nil, 'x' do end",
            "",
            "attempt to index a boolean value",
        ),
        (
            "local ok = pcall(function() getmetatable('').__tostring = function() while true do end end end) \
             if ok then error('the strings metatable was changed') end while true do end",
            "",
            "exceeded timeout_msecs=300",
        ),
        // Coroutines that each start more: none starts once the budget ran out.
        (
            "local function s() while true do coroutine.resume(coroutine.create(s)) end end s()",
            "",
            "exceeded timeout_msecs=300",
        ),
        (
            "local f = load('local x <close> = setmetatable({}, {__close = function() while true do end end}) while true do end') f()",
            "",
            "exceeded timeout_msecs=300",
        ),
        // A pattern call whose worst case (4.5e8 matcher steps, about a second in C)
        // is more than the call's time allows: refused, not run past the deadline.
        (
            "local s = ('a'):rep(30000) if s:find('.-b') then error('matched') end",
            "timeout_msecs=100",
            "pattern too costly for the mailpush sandbox",
        ),
        // A long pattern costs its length per start (it ran 33 s of CPU in C).
        (
            "local s = ('a'):rep(200000) if s:find('.' .. ('a'):rep(100000) .. 'b') then error('matched') end",
            "",
            "pattern too costly for the mailpush sandbox",
        ),
        // A coroutine the budget stopped is not closed: its __close handlers would run
        // with hooks off (coroutine.wrap closed it on the error; coroutine.close too).
        (
            "coroutine.wrap(function() local x <close> = setmetatable({}, {__close = function() while true do end end}) while true do end end)()",
            "",
            "exceeded timeout_msecs=300",
        ),
        (
            "local co = coroutine.create(function() local x <close> = setmetatable({}, {__close = function() while true do end end}) while true do end end) \
             coroutine.resume(co) coroutine.close(co) while true do end",
            "",
            "exceeded timeout_msecs=300",
        ),
        // table.insert / remove / move: a __len that lies, or positions given as strings
        // (the C functions read them as numbers), loop in Lua, where the hook sees them.
        (
            "table.insert(setmetatable({}, {__len = function() return 1 << 40 end}), 1, 'x')",
            "",
            "exceeded timeout_msecs=300",
        ),
        (
            "table.remove(setmetatable({}, {__len = function() return 1 << 40 end}), 1)",
            "",
            "exceeded timeout_msecs=300",
        ),
        (
            "local n = 0 local t = setmetatable({}, {__len = function() n = n + 1 if n == 1 then return 1 end return 1 << 40 end}) \
             table.insert(t, 1, 'x') error('insert returned')",
            "",
            "insert returned",
        ),
        (
            "table.insert({}, '1', 'x') table.move({}, '1', '1099511627776', 2)",
            "",
            "exceeded timeout_msecs=300",
        ),
        // gsub reads a replacement string whole at each match (here 100,001 empty
        // matches of a 2 MB replacement: 2·10¹¹ bytes in C, nothing in memory): refused.
        (
            "local r = string.gsub(('x'):rep(1e5), '', ('%0'):rep(1e6)) error('gsub returned')",
            "",
            "replacement too costly for the mailpush sandbox",
        ),
        // table.sort of huge equal strings compared in C (minutes): its comparisons are
        // seen by the hook now.
        (
            "local s = ('x'):rep(1 << 20) local t = {} for i = 1, 2e5 do t[i] = s end table.sort(t)",
            "",
            "exceeded timeout_msecs=300",
        ),
        (
            "local t = {3, 1, 2} table.sort(t) error('sorted ' .. table.concat(t, ','))",
            "",
            "sorted 1,2,3",
        ),
        // load parses labels in quadratic time in C: a chunk over 64 KiB is refused
        // (as text, and through a reader function); a loop of full collections stops
        // at the deadline.
        (
            "local t = {} for i = 1, 20000 do t[i] = '::l' .. i .. '::' end \
             local f, err = load(table.concat(t, ' ')) error('load: ' .. tostring(err))",
            "",
            "larger than the mailpush sandbox's 131072 for load",
        ),
        (
            "local n = 0 local f, err = load(function() n = n + 1 if n < 20000 then return '::l' .. n .. ':: ' end end) \
             error('load: ' .. tostring(err))",
            "",
            "larger than the mailpush sandbox's 131072 for load",
        ),
        (
            "local f = load('return 1 + 1') error('loaded ' .. f())",
            "",
            "loaded 2",
        ),
        // A reader's error is load's answer (nil and the message), as in Lua; numbers
        // are text to it.
        (
            "local f, err = load(function() error('reader broke') end) \
             local n = 0 local g = load(function() n = n + 1 if n == 1 then return 'return ' elseif n == 2 then return 42 end end) \
             error((f == nil and 'nil' or 'f') .. ' ' .. (err:find('reader broke') and 'msg' or 'nomsg') .. ' ' .. g())",
            "",
            "nil msg 42",
        ),
        (
            "local t = {} for i = 1, 2e5 do t[i] = {} end while true do collectgarbage() end",
            "timeout_msecs=300",
            "exceeded timeout_msecs=300",
        ),
        // The rebuilt coroutine.wrap and table.insert/remove answer as Lua's do.
        (
            "local f f = coroutine.wrap(function() f() end) f()",
            "",
            "cannot resume non-suspended coroutine",
        ),
        (
            "table.remove(setmetatable({1, 2}, {__len = function() return 3.5 end}), 1)",
            "",
            "object length is not an integer",
        ),
        // The deadline's words raised by the script are a script error, not a timeout
        // (which drops the state and counts as one).
        (
            "error('script exceeded its time budget (timeout_msecs)', 0)",
            "",
            "failed: runtime error",
        ),
    ] {
        let r = contained(body, args).await;
        assert_all(&r, reason);
    }
}

/// Pattern calls each within the bound, in a loop: the clock is looked at by each call
/// (the hook looks every thousand instructions, and as many calls fit between two of its
/// looks: this ran for a minute past a 300 ms deadline).
#[tokio::test(flavor = "multi_thread")]
async fn pattern_calls_in_a_loop_stop_at_the_deadline() {
    let started = std::time::Instant::now();
    let r = contained(
        "local s = ('a'):rep(5000) while true do s:find('.-b') end",
        "",
    )
    .await;
    assert!(
        r.iter().all(|r| r.contains("exceeded timeout_msecs=300")
            || r.contains("pattern too costly for the mailpush sandbox")),
        "{r:#?}"
    );
    // Three transactions of 300 ms each, not three of tens of seconds.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

/// A state that ran out of time runs no script_deinit: it may be mid-way through
/// anything (a coroutine the budget stopped, with hooks off). A state that finished
/// does (instance=fresh: after each transaction).
#[tokio::test(flavor = "multi_thread")]
async fn a_state_that_ran_out_of_time_runs_no_deinit() {
    let dir = tempfile::tempdir().unwrap();
    let server = RecordingServer::start().await;
    let script = write(
        dir.path(),
        "deinit.lua",
        &format!(
            "function script_deinit()\n\
               dovecot.http.client({{}}):request({{ url = '{}', method = 'POST' }}):submit()\n\
             end\n\
             function dovecot_lua_notify_begin_txn(user) return {{ user = user.username }} end\n\
             function dovecot_lua_notify_event_mailbox_create(ctx, e)\n\
               if ctx.user == 'slow@example.test' then while true do end end\n\
             end\n\
             function dovecot_lua_notify_end_txn(ctx, success) end\n",
            server.url("/deinit")
        ),
    );
    let outcomes = run_with(
        dir.path(),
        &conf(
            &script,
            "allow_hosts=127.0.0.1 allow_private retry=none timeout_msecs=2000",
            "",
        ),
        vec![
            mailbox_txn("slow@example.test", "t1"),
            mailbox_txn("fast@example.test", "t2"),
        ],
        Arc::new(mailpush_core::NoMetadata),
        None,
    )
    .await;
    let r = reasons(&outcomes.iter().map(|(_, o)| o.clone()).collect::<Vec<_>>());
    assert!(
        r.iter().any(|r| r.contains("exceeded timeout_msecs=2000")),
        "{r:?}"
    );
    // The probe at load, then the fast transaction's state; not the slow one's.
    let requests = server.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(requests.len(), 2, "{requests:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn deep_recursion_is_a_script_error() {
    // Lua recursion grows the Lua stack until the memory limit (16M here) stops it.
    let r = contained(
        "local function f(n) return f(n + 1) + 1 end f(1)",
        "timeout_msecs=60000",
    )
    .await;
    assert_all(&r, "exceeded memory=16777216 bytes");
    // Recursion through C (metamethods, gsub callbacks) stops at Lua's C-call limit.
    let r = contained(
        "local t = setmetatable({}, { __index = function(t, k) return t[k] end }) local _ = t.x",
        "",
    )
    .await;
    assert_all(&r, "stack overflow");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_files_no_processes_no_debug_no_modules_from_disk() {
    let cases = [
        ("local f = io.open('/etc/passwd')", "global 'io'"),
        (
            "os.execute('touch /tmp/mailpush-lua-pwned')",
            "field 'execute'",
        ),
        ("os.remove('/tmp/x')", "field 'remove'"),
        ("dofile('/etc/passwd')", "global 'dofile'"),
        ("loadfile('/etc/passwd')", "global 'loadfile'"),
        ("debug.sethook()", "field 'sethook'"),
        ("debug.getinfo(1)", "field 'getinfo'"),
        // What stays of it: traceback, the usual xpcall handler.
        (
            "local ok, e = xpcall(function() error('boom', 0) end, debug.traceback) error('handled: ' .. e)",
            "handled: boom",
        ),
        (
            "package.loadlib('/lib/libc.so.6', 'system')",
            "field 'loadlib'",
        ),
        ("require('evil')", "module 'evil' not found"),
        (
            "package.path = '/tmp/?.lua;' .. package.path require('passwd')",
            "module 'passwd' not found",
        ),
        ("load(string.dump(function() end))", "field 'dump'"),
        (
            "local f = load('\\27Lua') if f == nil then error('binary refused') end",
            "binary refused",
        ),
        (
            "error(os.getenv and 'getenv present' or 'no getenv')",
            "no getenv",
        ),
    ];
    for (body, needle) in cases {
        let r = contained(body, "").await;
        assert_all(&r, needle);
    }
    assert!(!Path::new("/tmp/mailpush-lua-pwned").exists());
    // What stays: time functions.
    let r = contained(
        "error(string.format('t=%s d=%s c=%s', math.type(os.time()), os.date('!%Y', 0), type(os.clock())))",
        "",
    )
    .await;
    assert_all(&r, "t=integer d=1970 c=number");
}

const HTTP_TO: &str = r#"
local c = dovecot.http.client({})
local r = c:request({ url = "URL", method = "POST" })
r:set_payload("x")
local resp = r:submit()
if resp:status() < 9000 then error("request went out: " .. resp:status()) end
"#;

#[tokio::test(flavor = "multi_thread")]
async fn outbound_http_goes_through_the_wasm_drivers_policy() {
    let server = RecordingServer::start().await;
    // Loopback without allow_private.
    let r = contained(
        &HTTP_TO.replace("URL", &server.url("/x")),
        "allow_hosts=127.0.0.1",
    )
    .await;
    assert_all(&r, "loopback, private, link-local, metadata");
    assert_all(&r, "refused");
    // A host not in allow_hosts.
    let r = contained(
        &HTTP_TO.replace("URL", "http://hooks.example.net/x"),
        "allow_hosts=127.0.0.1 allow_private",
    )
    .await;
    assert_all(&r, "hooks.example.net is not in allow_hosts");
    // No grant at all.
    let r = contained(&HTTP_TO.replace("URL", &server.url("/x")), "").await;
    assert_all(&r, "not in allow_hosts (no hosts granted)");
    assert!(server.requests().is_empty(), "nothing reached the endpoint");
}

// ---------------------------------------------------------------- real-world scripts

/// A delivery to `user`'s INBOX, as the forwarder sends it (with the unseen count).
fn new_mail(user: &str, id: &str, uid: u32, unseen: u32) -> Transaction {
    txn(serde_json::json!({
        "id": id,
        "user": user,
        "events": [{
            "name": "MessageNew", "mailbox": "INBOX", "uid": uid, "uid_validity": 1700000000,
            "date": 1700000000, "tz": 60,
            "from": "Sender Person <sender@example.org>", "to": user,
            "subject": "=?utf-8?q?Gr=C3=BC=C3=9Fe?=", "subject_utf8": "Grüße",
            "from_address": "sender@example.org", "from_display_name": "Sender Person",
            "to_address": user, "message_id": format!("<{id}@example.org>"),
            "snippet": "Hello there", "unseen": unseen
        }]
    }))
}

fn store(dir: &Path) -> Arc<mailpush::metadata_store::MetadataStore> {
    Arc::new(mailpush::metadata_store::MetadataStore::open(&dir.join("metadata.db")).unwrap())
}

fn delivered(outcomes: &[(String, Outcome)]) {
    assert!(
        outcomes
            .iter()
            .all(|(_, o)| matches!(o, Outcome::Delivered)),
        "{outcomes:#?}"
    );
}

/// Dovecot 2.4: settings arrive in script_init(settings); 2.4 http.client option names.
const SCRIPT_24: &str = r#"
local settings
function script_init(s)
  settings = s
end
function dovecot_lua_notify_begin_txn(user)
  return { user = user, msgs = {} }
end
function dovecot_lua_notify_event_message_new(ctx, e)
  table.insert(ctx.msgs, string.format("%s:%d", e.mailbox, e.uid))
end
function dovecot_lua_notify_end_txn(ctx, success)
  if #ctx.msgs == 0 then return end
  local client = dovecot.http.client({ request_timeout = "5s", request_max_attempts = "2" })
  local req = client:request({ url = settings.url, method = "POST" })
  req:add_header("Authorization", "Bearer " .. settings.token)
  req:add_header("Content-Type", "text/plain")
  req:set_payload(ctx.user.username .. " " .. table.concat(ctx.msgs, ","), false)
  local resp = req:submit()
  if resp:status() ~= 200 then
    dovecot.i_error("push failed: " .. resp:status() .. " " .. resp:reason())
  end
end
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_dovecot_24_script_gets_its_settings_in_script_init() {
    let dir = tempfile::tempdir().unwrap();
    let server = RecordingServer::start().await;
    let script = write(dir.path(), "push24.lua", SCRIPT_24);
    let conf = format!(
        "mailpush {{\n state_dir = state\n}}\npush_notification web {{\n driver = lua\n lua_file = {}\n allow_hosts = 127.0.0.1\n allow_private = yes\n lua_settings {{\n  url = {}\n  token = s3cret\n }}\n}}\n",
        script.display(),
        server.url("/push")
    );
    let outcomes = run(
        dir.path(),
        &conf,
        vec![
            new_mail("alice@example.test", "t1", 7, 1),
            new_mail("alice@example.test", "t2", 8, 2),
        ],
    )
    .await;
    delivered(&outcomes);
    let r = server.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].method, "POST");
    assert_eq!(r[0].target, "/push");
    assert_eq!(r[0].header("authorization"), Some("Bearer s3cret"));
    assert_eq!(r[0].header("content-type"), Some("text/plain"));
    assert_eq!(r[0].body_text(), "alice@example.test INBOX:7");
    assert_eq!(r[1].body_text(), "alice@example.test INBOX:8");
}

/// A chat relay (as chatmail's): marks the mailbox with METADATA, pushes the device
/// token kept in the user's METADATA.
const CHAT_RELAY: &str = r#"
function dovecot_lua_notify_begin_txn(user)
  return { user = user, new = false }
end
function dovecot_lua_notify_event_message_new(ctx, e)
  local mbox = ctx.user:mailbox(e.mailbox)
  mbox:sync()
  mbox:metadata_set("/private/messagenew", "")
  mbox:free()
  ctx.new = true
end
function dovecot_lua_notify_end_txn(ctx)
  if not ctx.new then return end
  local token = ctx.user:metadata_get("/private/devicetoken")
  if token == nil then return end
  local client = dovecot.http.client({ timeout = 10000, max_attempts = 3, debug = false })
  local req = client:request({ url = ctx.user:plugin_getenv("relay_url"), method = "POST" })
  req:add_header("Content-Type", "text/plain")
  req:set_payload(token)
  req:submit()
end
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_chat_relay_sets_mailbox_metadata_and_pushes_the_device_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = RecordingServer::start().await;
    let script = write(dir.path(), "relay.lua", CHAT_RELAY);
    let metadata = store(dir.path());
    metadata
        .set("alice@example.test", "/private/devicetoken", "tok-alice")
        .unwrap();
    let conf = conf(
        &script,
        "allow_hosts=127.0.0.1 allow_private",
        &format!(" relay_url = {}\n", server.url("/notify")),
    );
    let outcomes = run_with(
        dir.path(),
        &conf,
        vec![
            new_mail("alice@example.test", "t1", 1, 1),
            new_mail("bob@example.test", "t2", 1, 1),
        ],
        metadata.clone(),
        None,
    )
    .await;
    delivered(&outcomes);
    let r = server.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(r.len(), 1, "bob has no token: no push");
    assert_eq!(r[0].body_text(), "tok-alice");
    assert_eq!(r[0].header("content-length"), Some("9"));
    let entries = metadata.list(None).unwrap();
    for user in ["alice@example.test#INBOX", "bob@example.test#INBOX"] {
        assert!(
            entries
                .iter()
                .any(|(u, k, v)| u == user && k == "/private/messagenew" && v.is_empty()),
            "{user}: {entries:?}"
        );
    }
}

/// restrict_global_variables: a typo'd global raises; declared ones and functions work.
const RESTRICTED: &str = r#"
local count = 0
dovecot.restrict_global_variables(true)
function dovecot_lua_notify_begin_txn(user) return { user = user } end
function dovecot_lua_notify_event_mailbox_create(ctx, e)
  count = count + 1
  local ok, err = pcall(function() undeclared_total = 1 end)
  if ok then error("writing an undeclared global was allowed") end
  local ok2, err2 = pcall(function() return undeclared_reader end)
  if ok2 then error("reading an undeclared global was allowed") end
  local client = dovecot.http.client({})
  local req = client:request({ url = ctx.user:plugin_getenv("url"), method = "PUT" })
  req:set_payload(err .. "\n" .. err2)
  req:submit()
end
function dovecot_lua_notify_end_txn(ctx, success) end
"#;

#[tokio::test(flavor = "multi_thread")]
async fn restricted_globals_raise_on_undeclared_names() {
    let dir = tempfile::tempdir().unwrap();
    let server = RecordingServer::start().await;
    let script = write(dir.path(), "restricted.lua", RESTRICTED);
    let conf = conf(
        &script,
        "allow_hosts=127.0.0.1 allow_private",
        &format!(" url = {}\n", server.url("/r")),
    );
    let outcomes = run(dir.path(), &conf, vec![mailbox_txn("a@example.test", "t1")]).await;
    delivered(&outcomes);
    let r = server.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(r[0].method, "PUT");
    let body = r[0].body_text();
    assert!(
        body.contains("attempt to write to undeclared global variable undeclared_total"),
        "{body}"
    );
    assert!(
        body.contains("attempt to read undeclared global variable undeclared_reader"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_request_of_the_script_is_retried_until_it_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let server = RecordingServer::start().await;
    server.script([Reply::status(503), Reply::status(500)]);
    let script = write(dir.path(), "push24.lua", SCRIPT_24);
    let conf = format!(
        "mailpush {{\n state_dir = state\n}}\nplugin {{\n push_notification_driver = lua:file={} dovecot=2.4 lua_settings.url={} lua_settings.token=t allow_hosts=127.0.0.1 allow_private retry=10ms,10ms,10ms\n}}\n",
        script.display(),
        server.url("/push")
    );
    let outcomes = run_with(
        dir.path(),
        &conf,
        vec![new_mail("alice@example.test", "t1", 7, 1)],
        Arc::new(mailpush_core::NoMetadata),
        Some((&server, 3)),
    )
    .await;
    delivered(&outcomes);
    assert_eq!(outcomes.len(), 1, "one final outcome");
    let r = server.requests();
    assert_eq!(r.len(), 3, "503, 500, then 200");
    assert!(r
        .iter()
        .all(|x| x.body_text() == "alice@example.test INBOX:7"));

    // As in Dovecot (http_failures=ignore): one request, the transaction delivered.
    let dir = tempfile::tempdir().unwrap();
    let server2 = RecordingServer::start().await;
    server2.script([Reply::status(503)]);
    let conf = conf
        .replace(&server.url("/push"), &server2.url("/push"))
        .replace(
            "retry=10ms,10ms,10ms",
            "retry=10ms,10ms,10ms http_failures=ignore",
        );
    let outcomes = run(
        dir.path(),
        &conf,
        vec![new_mail("alice@example.test", "t1", 7, 1)],
    )
    .await;
    delivered(&outcomes);
    assert_eq!(server2.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_script_error_fails_the_transaction_with_the_message_and_traceback() {
    let dir = tempfile::tempdir().unwrap();
    let script = write(
        dir.path(),
        "broken.lua",
        "function dovecot_lua_notify_begin_txn(user) return {} end\n\
         local function helper(e)\n  return e.mailbox .. nil\nend\n\
         function dovecot_lua_notify_event_mailbox_create(ctx, e) helper(e) end\n\
         function dovecot_lua_notify_end_txn(ctx, success) end\n",
    );
    let outcomes = run(
        dir.path(),
        &conf(&script, "retry=none", ""),
        vec![mailbox_txn("a@example.test", "t1")],
    )
    .await;
    let r = reasons(&outcomes.into_iter().map(|(_, o)| o).collect::<Vec<_>>());
    assert_eq!(r.len(), 1);
    let reason = &r[0];
    assert!(
        reason.contains("lua: dovecot_lua_notify_event_mailbox_create failed"),
        "{reason}"
    );
    assert!(
        reason.contains("broken.lua:3: attempt to concatenate a nil value"),
        "{reason}"
    );
    assert!(reason.contains("stack traceback"), "{reason}");
    assert!(
        reason.contains("in upvalue 'helper'") || reason.contains("helper"),
        "{reason}"
    );
}

/// `script_errors=ignore` is Dovecot's way with a hook that raises an error: logged, the
/// remaining hooks and `end_txn(ctx, true)` run, the transaction is delivered; a failed
/// `begin_txn` skips the transaction. The time budget still stops a state for good.
#[tokio::test(flavor = "multi_thread")]
async fn script_errors_ignore_passes_over_a_failing_hook_as_dovecot_does() {
    let dir = tempfile::tempdir().unwrap();
    let server = RecordingServer::start().await;
    let script = write(
        dir.path(),
        "errors.lua",
        r#"
local settings
function script_init(s) settings = s end
function dovecot_lua_notify_begin_txn(user)
  if user.username == "nobegin@example.test" then error("begin refused") end
  return { user = user.username, seen = {} }
end
function dovecot_lua_notify_event_mailbox_create(ctx, e)
  if e.mailbox == "bad" then error("boom in " .. e.mailbox) end
  if e.mailbox == "loop" then while true do end end
  table.insert(ctx.seen, e.mailbox)
end
function dovecot_lua_notify_end_txn(ctx, success)
  local client = dovecot.http.client({ request_timeout = "5s" })
  local req = client:request({ url = settings.url, method = "POST" })
  req:set_payload(ctx.user .. " " .. table.concat(ctx.seen, ",") .. " " .. tostring(success), false)
  req:submit()
end
"#,
    );
    let mailboxes = |user: &str, id: &str, names: &[&str]| {
        txn(serde_json::json!({
            "id": id,
            "user": user,
            "events": names
                .iter()
                .map(|m| serde_json::json!({"name": "MailboxCreate", "mailbox": m}))
                .collect::<Vec<_>>(),
        }))
    };
    let conf_with = |extra: &str| {
        format!(
            "mailpush {{\n state_dir = state\n}}\nplugin {{\n push_notification_driver = lua:file={} dovecot=2.4 lua_settings.url={} allow_hosts=127.0.0.1 allow_private retry=none timeout_msecs=2000 {extra}\n}}\n",
            script.display(),
            server.url("/push")
        )
    };
    let txns = || {
        vec![
            mailboxes("a@example.test", "t1", &["one", "bad", "two"]),
            mailboxes("nobegin@example.test", "t2", &["one"]),
            mailboxes("b@example.test", "t3", &["one", "loop", "two"]),
        ]
    };
    // Each transaction's outcome (users are delivered concurrently: by id).
    let by_id = |outcomes: Vec<(String, Outcome)>| {
        let o: Vec<String> = ["t1", "t2", "t3"]
            .iter()
            .map(|id| {
                let found: Vec<Outcome> = outcomes
                    .iter()
                    .filter(|(i, _)| i == id)
                    .map(|(_, o)| o.clone())
                    .collect();
                assert_eq!(found.len(), 1, "{id}: {outcomes:?}");
                reasons(&found).remove(0)
            })
            .collect();
        o
    };
    let r = by_id(run(dir.path(), &conf_with("script_errors=ignore"), txns()).await);
    assert_eq!(r[0], "Delivered", "{r:?}");
    assert_eq!(r[1], "Delivered", "{r:?}");
    assert!(r[2].contains("exceeded timeout_msecs=2000"), "{r:?}");
    let bodies: Vec<String> = server.requests().iter().map(|r| r.body_text()).collect();
    // The failing hook passed over, the rest called, end_txn told the mail went well;
    // nothing for the transaction whose begin_txn failed, nor for the spent state.
    assert_eq!(bodies, ["a@example.test one,two true"], "{bodies:?}");

    // The default: the first failing hook fails the transaction, end_txn hears false.
    let dir = tempfile::tempdir().unwrap();
    let before = server.requests().len();
    let r = by_id(run(dir.path(), &conf_with(""), txns()).await);
    assert!(r[0].contains("boom in bad"), "{r:?}");
    assert!(r[1].contains("begin refused"), "{r:?}");
    let bodies: Vec<String> = server.requests()[before..]
        .iter()
        .map(|r| r.body_text())
        .collect();
    assert_eq!(bodies, ["a@example.test one false"], "{bodies:?}");
}

/// The line `script_errors=ignore` writes for a transaction's failing hooks is one of
/// the script's log lines: a script failing in every transaction cannot flood the log
/// past `log_lines_per_sec`/`log_burst` (the rest are counted as dropped).
#[test]
fn errors_passed_over_are_logged_within_the_scripts_log_rate() {
    let dir = tempfile::tempdir().unwrap();
    let script = write(
        dir.path(),
        "fails.lua",
        "function dovecot_lua_notify_begin_txn(user) return {} end\n\
         function dovecot_lua_notify_event_mailbox_create(ctx, e) error('boom') end\n\
         function dovecot_lua_notify_end_txn(ctx, success) end\n",
    );
    let conf = dir.path().join("mailpush.conf");
    std::fs::write(
        &conf,
        format!(
            "mailpush {{\n state_dir = state\n}}\nplugin {{\n push_notification_driver = lua:file={} script_errors=ignore log_burst=3 log_lines_per_sec=1\n}}\n",
            script.display()
        ),
    )
    .unwrap();
    let mut input = String::new();
    for i in 0..100 {
        input.push_str(&mailbox_txn("a@example.test", &format!("t{i}")).to_json());
        input.push('\n');
    }
    let started = std::time::Instant::now();
    let (ok, log) = send_with_config(&conf, &input);
    let secs = started.elapsed().as_secs() as usize;
    assert!(ok, "{log}");
    // The burst, and what the rate refills while the transactions run (not 100).
    let passed_over = count(&log, "hook error(s) passed over");
    assert!(
        (3..=3 + secs + 1).contains(&passed_over),
        "{passed_over} in {secs} s:\n{log}"
    );
    // The drops are reported once per 10 s and at the end, not per transaction.
    let reports = count(&log, "log lines dropped");
    assert!(
        (1..=2 + secs / 10).contains(&reports),
        "{reports} in {secs} s:\n{log}"
    );
}

/// Dovecot's `end_txn` is optional (it logs an error for each transaction without one):
/// such a script delivers, and the load says once what is missing.
#[tokio::test(flavor = "multi_thread")]
async fn a_script_without_end_txn_delivers_and_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let script = write(
        dir.path(),
        "noend.lua",
        "function dovecot_lua_notify_begin_txn(user) return {} end\n\
         function dovecot_lua_notify_event_mailbox_create(ctx, e) end\n",
    );
    let conf = conf(&script, "retry=none", "");
    let config = write_config(dir.path(), &conf);
    let Ok(loaded) = TestDrivers::new()
        .registry()
        .init_all(&config, Arc::new(mailpush_core::NoMetadata))
        .await
    else {
        panic!("the script did not load");
    };
    assert!(
        loaded[0]
            .warnings
            .iter()
            .any(|w| w.contains("defines no dovecot_lua_notify_end_txn")),
        "{:?}",
        loaded[0].warnings
    );
    let outcomes = run(dir.path(), &conf, vec![mailbox_txn("a@example.test", "t1")]).await;
    delivered(&outcomes);
}

/// `plugin_getenv` reads the script's own settings, not the push drivers' lines (an ox
/// URL's password).
#[tokio::test(flavor = "multi_thread")]
async fn plugin_getenv_does_not_read_the_drivers_lines() {
    let dir = tempfile::tempdir().unwrap();
    let script = write(
        dir.path(),
        "env.lua",
        "function dovecot_lua_notify_begin_txn(user) return { user = user } end\n\
         function dovecot_lua_notify_event_mailbox_create(ctx, e)\n\
           for _, k in ipairs({'push_notification_driver', 'push_notification_driver2', 'PUSH_NOTIFICATION_BACKEND'}) do\n\
             local v = ctx.user:plugin_getenv(k)\n\
             if v ~= nil then error(k .. ' read as ' .. v) end\n\
           end\n\
           if ctx.user:plugin_getenv('my_url') ~= 'http://x/' then error('my_url') end\n\
         end\n\
         function dovecot_lua_notify_end_txn(ctx, success) end\n",
    );
    let outcomes = run(
        dir.path(),
        &conf(
            &script,
            "retry=none",
            " my_url = http://x/\n push_notification_driver2 = ox:url=http://u:pw@127.0.0.1:9/\n",
        ),
        vec![mailbox_txn("a@example.test", "t1")],
    )
    .await;
    delivered(&outcomes);
}

/// A request whose endpoint answers later than the hook's time budget: the request
/// times out at the deadline (9008, retryable), which is not the script running over
/// its budget (a dead letter).
#[tokio::test(flavor = "multi_thread")]
async fn a_request_cut_at_the_deadline_is_a_retryable_timeout_not_a_script_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = RecordingServer::start().await;
    server.set_default(Reply::Status {
        status: 200,
        headers: Vec::new(),
        delay: Duration::from_secs(3),
    });
    let script = write(
        dir.path(),
        "slow.lua",
        &format!(
            "function dovecot_lua_notify_begin_txn(user) return {{}} end\n\
             function dovecot_lua_notify_event_mailbox_create(ctx, e) end\n\
             function dovecot_lua_notify_end_txn(ctx, success)\n\
               dovecot.http.client{{}}:request{{ url = \"{}\", method = \"PUT\" }}:submit()\n\
             end\n",
            server.url("/slow")
        ),
    );
    let outcomes = run(
        dir.path(),
        &conf(
            &script,
            "allow_hosts=127.0.0.1 allow_private retry=none timeout_msecs=300",
            "",
        ),
        vec![mailbox_txn("a@example.test", "t1")],
    )
    .await;
    let [(_, Outcome::Failed(f))] = &outcomes[..] else {
        panic!("{outcomes:?}");
    };
    assert!(f.retryable, "{f:?}");
    assert!(f.reason.contains("9008"), "{f:?}");
    assert!(!f.reason.contains("exceeded timeout_msecs"), "{f:?}");
}

/// A URL with a user and password: Basic authentication, as Dovecot's HTTP client
/// sends it, and a Host header without them.
#[tokio::test(flavor = "multi_thread")]
async fn dovecot_http_turns_a_urls_userinfo_into_basic_auth() {
    let dir = tempfile::tempdir().unwrap();
    let server = RecordingServer::start().await;
    let url = server.url("/dv").replacen("://", "://login:S3cret%21@", 1);
    let script = write(
        dir.path(),
        "auth.lua",
        &format!(
            "function dovecot_lua_notify_begin_txn(user) return {{}} end\n\
             function dovecot_lua_notify_event_mailbox_create(ctx, e) end\n\
             function dovecot_lua_notify_end_txn(ctx, success)\n\
               local req = dovecot.http.client{{}}:request{{ url = \"{url}\", method = \"PUT\" }}\n\
               req:submit()\n\
             end\n"
        ),
    );
    let outcomes = run_with(
        dir.path(),
        &conf(
            &script,
            "allow_hosts=127.0.0.1 allow_private retry=none",
            "",
        ),
        vec![mailbox_txn("a@example.test", "t1")],
        Arc::new(mailpush_core::NoMetadata),
        Some((&server, 1)),
    )
    .await;
    delivered(&outcomes);
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let header = |name: &str| {
        requests[0]
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    // base64("login:S3cret!")
    assert_eq!(
        header("authorization").as_deref(),
        Some("Basic bG9naW46UzNjcmV0IQ==")
    );
    let host = header("host").unwrap_or_default();
    assert!(!host.contains('@') && !host.contains("S3cret"), "{host}");
}

/// The first error of loading a script that must not load.
async fn load_error(dir: &Path, name: &str, text: &str) -> String {
    let script = write(dir, name, text);
    let config = write_config(dir, &conf(&script, "", ""));
    match TestDrivers::new()
        .registry()
        .init_all(&config, Arc::new(mailpush_core::NoMetadata))
        .await
    {
        Ok(_) => panic!("{name} was accepted"),
        Err((_, e)) => e[0].to_string(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_script_that_does_not_load_is_a_config_error_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let text = load_error(dir.path(), "bad.lua", "function x(\n  return 1\nend\n").await;
    assert!(text.contains("driver 1 (lua)"), "{text}");
    assert!(text.contains("bad.lua:2:"), "{text}");
    // 2.3 script_init must return 0.
    let text = load_error(
        dir.path(),
        "init.lua",
        "function script_init() return 1 end\nfunction dovecot_lua_notify_event_message_new() end\n",
    )
    .await;
    assert!(
        text.contains("Script init failed: script_init() returned 1"),
        "{text}"
    );
    // The script's own error at load is capped and escaped (it printed 3 MB with a
    // terminal escape and a forged line).
    let text = load_error(
        dir.path(),
        "loud.lua",
        "error(('E'):rep(3e6) .. '\\n\\27[31mFAKE: all good')\n",
    )
    .await;
    assert!(text.len() < 4096, "{} bytes", text.len());
    assert!(
        !text.contains('\u{1b}') && !text.contains("\nFAKE"),
        "{text}"
    );
    // A main chunk whose __close handler would loop in a coroutine the budget stopped
    // is stopped at init_timeout_msecs (check hung on it).
    let text = load_error(
        dir.path(),
        "stuck.lua",
        "coroutine.wrap(function() local x <close> = setmetatable({}, {__close = function() while true do end end}) while true do end end)()\n",
    )
    .await;
    assert!(
        text.contains("loading the script took longer than init_timeout_msecs"),
        "{text}"
    );
    // A mistyped key of the line says which key it probably is.
    let script = write(
        dir.path(),
        "fine.lua",
        "function dovecot_lua_notify_begin_txn(u) return {} end\nfunction dovecot_lua_notify_event_message_new() end\n",
    );
    let config = write_config(dir.path(), &conf(&script, "script_error=ignore", ""));
    match TestDrivers::new()
        .registry()
        .init_all(&config, Arc::new(mailpush_core::NoMetadata))
        .await
    {
        Ok(_) => panic!("script_error= was accepted"),
        Err((_, e)) => assert!(
            e[0].to_string()
                .contains("unknown key `script_error` (did you mean script_errors?)"),
            "{}",
            e[0]
        ),
    }
}

/// An OX-style pusher as sites write them: METADATA says who to push for, the unseen
/// count comes from `mailbox:status`, the request goes out with `socket.http` + `json`
/// (the bench's Lua row runs the same script).
const OX_STYLE: &str = include_str!("../../bench/src/ox-style.lua");

#[tokio::test(flavor = "multi_thread")]
async fn an_ox_style_pusher_with_metadata_status_socket_http_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let server = RecordingServer::start().await;
    let script = write(dir.path(), "ox.lua", OX_STYLE);
    let metadata = store(dir.path());
    metadata
        .set(
            "alice@example.test",
            "/private/vendor/vendor.dovecot/http-notify",
            "user=12@34",
        )
        .unwrap();
    let conf = conf(
        &script,
        "allow_hosts=127.0.0.1 allow_private",
        &format!(
            " ox_push_url = {}\n",
            server.url("/preliminary/http-notify/v1/notify")
        ),
    );
    let outcomes = run_with(
        dir.path(),
        &conf,
        vec![
            new_mail("alice@example.test", "t1", 7, 3),
            new_mail("bob@example.test", "t2", 9, 1),
        ],
        metadata,
        None,
    )
    .await;
    delivered(&outcomes);
    let r = server.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(r.len(), 1, "bob has no http-notify METADATA");
    assert_eq!(r[0].method, "PUT");
    assert_eq!(r[0].target, "/preliminary/http-notify/v1/notify");
    assert_eq!(
        r[0].header("content-type"),
        Some("application/json; charset=utf-8")
    );
    let body: Value = serde_json::from_slice(&r[0].body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "user": "12@34", "imap-uidvalidity": 1700000000, "imap-uid": 7, "folder": "INBOX",
            "event": "messageNew", "from": "Sender Person <sender@example.org>",
            "subject": "Grüße", "snippet": "Hello there", "unseen": 3
        })
    );
    assert_eq!(
        r[0].header("content-length"),
        Some(r[0].body.len().to_string().as_str())
    );
}

/// A web-push bridge: dovecot.http.client and cjson.
const WEB_PUSH: &str = r#"
local cjson = require "cjson"

function dovecot_lua_notify_begin_txn(user)
  return { user = user, events = {} }
end

function dovecot_lua_notify_event_message_new(ctx, e)
  table.insert(ctx.events, { type = "new", folder = e.mailbox, uid = e.uid,
    from = e.from_address, subject = e.subject })
end

function dovecot_lua_notify_event_message_read(ctx, e)
  table.insert(ctx.events, { type = "read", folder = e.mailbox, uid = e.uid })
end

function dovecot_lua_notify_end_txn(ctx, success)
  if #ctx.events == 0 then return end
  local client = dovecot.http.client { timeout = 5000, max_attempts = 2, user_agent = "dovecot-webpush/1" }
  local req = client:request { url = ctx.user:plugin_getenv("webpush_url"), method = "POST" }
  req:add_header("Content-Type", "application/json")
  req:set_payload(cjson.encode({ user = ctx.user.username, events = ctx.events,
    open = "https://mail.example.test/", empty = {}, none = cjson.null }))
  local resp = req:submit()
  if resp:status() >= 300 then
    error("web push answered " .. resp:status() .. " " .. resp:reason())
  end
  if resp:header("Location") == "" then error("no Location in the answer") end
end
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_web_push_bridge_with_dovecot_http_and_cjson() {
    let dir = tempfile::tempdir().unwrap();
    let server = RecordingServer::start().await;
    server.set_default(Reply::with_header(201, "Location", "/queued/1"));
    let script = write(dir.path(), "webpush.lua", WEB_PUSH);
    let conf = conf(
        &script,
        "allow_hosts=127.0.0.1 allow_private",
        &format!(" webpush_url = {}\n", server.url("/push")),
    );
    let read = txn(serde_json::json!({
        "id": "t2", "user": "alice@example.test",
        "events": [
            {"name": "FlagsSet", "mailbox": "INBOX", "uid": 7, "uid_validity": 1, "flags": ["\\Seen"]},
            {"name": "MessageRead", "mailbox": "INBOX", "uid": 7, "uid_validity": 1}
        ]
    }));
    let outcomes = run(
        dir.path(),
        &conf,
        vec![new_mail("alice@example.test", "t1", 7, 1), read],
    )
    .await;
    delivered(&outcomes);
    let r = server.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(r[0].header("user-agent"), Some("dovecot-webpush/1"));
    assert_eq!(r[0].header("content-type"), Some("application/json"));
    let raw = r[0].body_text();
    // cjson writes `/` as `\/` and integral floats without a fraction.
    assert!(
        raw.contains(r#""open":"https:\/\/mail.example.test\/""#),
        "{raw}"
    );
    assert!(raw.contains(r#""uid":7"#), "{raw}");
    assert!(raw.contains(r#""empty":{}"#), "{raw}");
    assert!(raw.contains(r#""none":null"#), "{raw}");
    let first: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        first["events"],
        serde_json::json!([{"type": "new", "folder": "INBOX", "uid": 7,
            "from": "sender@example.org", "subject": "Grüße"}])
    );
    let second: Value = serde_json::from_slice(&r[1].body).unwrap();
    assert_eq!(
        second["events"],
        serde_json::json!([{"type": "read", "folder": "INBOX", "uid": 7}])
    );
}

/// Logging through dovecot.event, dovecot.i_* and print reaches mailpush's log with the
/// driver's number and the transaction id.
const EVENT_LOGGING: &str = r#"
local ev
function script_init()
  ev = dovecot.event():set_name("push_lua"):append_log_prefix("push: ")
  return 0
end
function dovecot_lua_notify_begin_txn(user)
  local e = dovecot.event(ev):set_name("push_lua_txn"):add_str("user", user.username)
  e:log_info("begin")
  return { e = e, user = user }
end
function dovecot_lua_notify_event_mailbox_create(ctx, event)
  ctx.e:add_int("uid", 5):add_str("mailbox", event.mailbox):log_warning("created " .. event.mailbox)
  dovecot.i_info("plain info line")
  print("printed", 1, true)
  local ok = pcall(function() ctx.e:add_int("n", "not a number") end)
  if ok then error("add_int took a string") end
  dovecot.event():set_name(("N"):rep(2e6)):log_info("long name")
end
function dovecot_lua_notify_end_txn(ctx, success)
  ctx.e:log_error("end " .. tostring(success))
  local req = dovecot.http.client({}):request({ url = ctx.user:plugin_getenv("url"), method = "POST" })
  req:add_header("Content-Type", "text/plain")
  req:set_payload("logged for " .. ctx.user.username)
  req:submit()
end
"#;

#[tokio::test(flavor = "multi_thread")]
async fn event_logging_reaches_mailpushs_log_with_driver_and_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let server = RecordingServer::start().await;
    let script = write(dir.path(), "events.lua", EVENT_LOGGING);
    let conf_path = dir.path().join("mailpush.conf");
    std::fs::write(
        &conf_path,
        conf(
            &script,
            "allow_hosts=127.0.0.1 allow_private",
            &format!(" url = {}\n", server.url("/logged")),
        ),
    )
    .unwrap();
    let input = mailbox_txn("alice@example.test", "t-log-1").to_json() + "\n";
    let (ok, log) = send_with_config(&conf_path, &input);
    assert!(ok, "{log}");
    let line = |needle: &str| -> String {
        log.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{log}"))
            .to_string()
    };
    let begin = line("push: begin");
    assert!(begin.contains("INFO"), "{begin}");
    assert!(begin.contains("driver=1"), "{begin}");
    assert!(begin.contains("t-log-1"), "{begin}");
    assert!(begin.contains(r#"event="push_lua_txn""#), "{begin}");
    assert!(begin.contains("user=alice@example.test"), "{begin}");
    let created = line("push: created INBOX");
    assert!(created.contains("WARN"), "{created}");
    assert!(created.contains("mailbox=INBOX uid=5"), "{created}");
    assert!(line("plain info line").contains("t-log-1"));
    assert!(line("printed\\t1\\ttrue").contains("INFO"));
    assert!(line("push: end true").contains("ERROR"));
    // An event's name is capped like the message (2 MB per line before).
    let long = line("long name");
    assert!(
        long.len() < 2048 && long.contains("NNNN"),
        "{} bytes",
        long.len()
    );
    let r = server.requests();
    assert_eq!(r.len(), 1);
    assert_eq!(
        (r[0].method.as_str(), r[0].target.as_str(), r[0].body_text()),
        (
            "POST",
            "/logged",
            "logged for alice@example.test".to_string()
        )
    );
    assert_eq!(r[0].header("content-type"), Some("text/plain"));
}

// ---------------------------------------------------------------- Dovecot 2.4 config

/// Runs two deliveries through a config; returns the requests (method, target,
/// authorization, content-type, body), sorted, and the dlog file.
async fn requests_of(conf_for: impl Fn(&str, &Path) -> String) -> (Vec<[String; 5]>, String) {
    let dir = tempfile::tempdir().unwrap();
    let server = RecordingServer::start().await;
    write(dir.path(), "push24.lua", SCRIPT_24);
    let metadata = store(dir.path());
    metadata
        .set(
            "alice@example.test",
            "/private/vendor/vendor.dovecot/http-notify",
            "user=alice-ox",
        )
        .unwrap();
    let conf = conf_for(&server.url(""), dir.path());
    let outcomes = run_with(
        dir.path(),
        &conf,
        vec![
            new_mail("alice@example.test", "t1", 7, 1),
            new_mail("alice@example.test", "t2", 8, 2),
        ],
        metadata,
        None,
    )
    .await;
    delivered(&outcomes);
    let mut got: Vec<[String; 5]> = server
        .wait_for(4, Duration::from_secs(10))
        .await
        .iter()
        .map(|r| {
            [
                r.method.clone(),
                r.target.clone(),
                r.header("authorization").unwrap_or("").to_string(),
                r.header("content-type").unwrap_or("").to_string(),
                r.body_text(),
            ]
        })
        .collect();
    got.sort();
    let dlog = std::fs::read_to_string(dir.path().join("dlog.log")).unwrap();
    (got, dlog)
}

#[tokio::test(flavor = "multi_thread")]
async fn dovecot_24_blocks_give_the_drivers_and_requests_of_the_23_lines() {
    let v23 = requests_of(|base, dir| {
        format!(
            "mailpush {{\n state_dir = state\n}}\nplugin {{\n push_notification_driver = ox:url={ox} user_from_metadata\n push_notification_driver2 = dlog:file={dlog}\n push_notification_driver3 = lua:file={script} dovecot=2.4 lua_settings.url={push} lua_settings.token=s3cret allow_hosts=127.0.0.1 allow_private\n}}\n",
            ox = base.replace("http://", "http://login:pw@") + "/ox",
            dlog = dir.join("dlog.log").display(),
            script = dir.join("push24.lua").display(),
            push = base.to_string() + "/push",
        )
    })
    .await;
    let v24 = requests_of(|base, dir| {
        format!(
            "mailpush {{\n state_dir = state\n}}\npush_notification ox {{\n url = {ox}\n user_from_metadata = yes\n}}\npush_notification log {{\n driver = dlog\n file = {dlog}\n}}\npush_notification web {{\n driver = lua\n lua_file = {script}\n allow_hosts = 127.0.0.1\n allow_private = yes\n lua_settings {{\n  url = {push}\n  token = s3cret\n }}\n}}\n",
            ox = base.replace("http://", "http://login:pw@") + "/ox",
            dlog = dir.join("dlog.log").display(),
            script = dir.join("push24.lua").display(),
            push = base.to_string() + "/push",
        )
    })
    .await;
    assert_eq!(
        v23.0.len(),
        4,
        "2 OX pushes and 2 script pushes: {:?}",
        v23.0
    );
    assert!(
        v23.0.iter().any(|r| r[1] == "/ox" && r[0] == "PUT"),
        "{:?}",
        v23.0
    );
    assert!(
        v23.0.iter().any(|r| r[1] == "/push" && r[0] == "POST"),
        "{:?}",
        v23.0
    );
    assert_eq!(v23.0, v24.0, "the same requests");
    assert!(v23.1.contains("Called begin_txn"), "{}", v23.1);
    // 2.3's dlog logs its line's raw `dlog:…` text; a 2.4 block has none (as in Dovecot).
    let without_raw = |log: &str| -> String {
        log.lines()
            .filter(|l| !l.starts_with("Config string for dlog"))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    assert!(v23
        .1
        .contains("Config string for dlog push_notification driver: file="));
    assert_eq!(without_raw(&v23.1), v24.1, "the same dlog lines");
}

/// Lanes come and go (a reload rebuilds them); the driver's workers outlive the lane
/// that started them and keep delivering from the next one.
#[tokio::test(flavor = "multi_thread")]
async fn workers_outlive_the_lane_thread_that_started_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = RecordingServer::start().await;
    let script = write(dir.path(), "relay.lua", CHAT_RELAY);
    let metadata = store(dir.path());
    metadata
        .set("alice@example.test", "/private/devicetoken", "tok")
        .unwrap();
    let conf = conf(
        &script,
        "allow_hosts=127.0.0.1 allow_private instance=reuse",
        &format!(" relay_url = {}\n", server.url("/notify")),
    );
    let config = write_config(dir.path(), &conf);
    let Ok(loaded) = TestDrivers::new()
        .registry()
        .init_all(&config, metadata)
        .await
    else {
        panic!("the driver loads")
    };
    for lane in 0..3 {
        let driver = loaded[0].driver.clone();
        let txn = Arc::new(new_mail("alice@example.test", &format!("t{lane}"), 1, 1));
        let Ok(thread) =
            mailpush::pipeline::lane_thread::spawn(format!("lane-{lane}"), async move {
                mailpush::pipeline::deliver(driver.as_ref(), &txn).await
            })
        else {
            panic!("a lane thread")
        };
        let outcome = thread.join().await.unwrap();
        assert_eq!(outcome, Outcome::Delivered, "from lane {lane}");
    }
    assert_eq!(server.requests().len(), 3);
}

// ---------------------------------------------------------------- the forwarders

/// Both forwarders' JSON strings are UTF-8 whatever bytes Dovecot hands them: each byte
/// that does not begin a valid UTF-8 sequence (a Latin-1 letter, a cut-off sequence, an
/// overlong form, a surrogate, a value past U+10FFFF) is one U+FFFD, as Dovecot's own
/// JSON writer does; valid text passes unchanged. (tests/tests/dovecot.rs sends a Latin-1
/// mail through a real Dovecot.)
#[test]
fn the_forwarders_json_strings_are_utf8_as_dovecots_json_writer_makes_them() {
    const R: &str = "\u{fffd}";
    let cases: [(&[u8], String); 10] = [
        (b"plain", "plain".into()),
        (b"caf\xe9", format!("caf{R}")),
        (b"\xe9\xe9", format!("{R}{R}")),
        (b"\xe2\x82X", format!("{R}{R}X")),
        (b"\xe2\x82\xac", "\u{20ac}".into()),
        (b"\xed\xa0\x80", format!("{R}{R}{R}")),
        (b"\xc0\xaf", format!("{R}{R}")),
        (b"\xf4\x90\x80\x80", format!("{R}{R}{R}{R}")),
        (b"\xf0\x9f\x98\x80 ok", "\u{1f600} ok".into()),
        (b"\xc3", R.into()),
    ];
    for script in ["mailpush.lua", "mailpush-2.4.lua"] {
        let path = format!(
            "{}/../examples/dovecot/{script}",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let start = text.find("local REPLACEMENT").expect("the repair's start");
        let end = start
            + text[start..]
                .find("-- Lua numbers from Dovecot")
                .expect("json_string's end");
        let lua = mlua::Lua::new();
        let json_string: mlua::Function = lua
            .load(format!("{}\nreturn json_string", &text[start..end]))
            .eval()
            .unwrap();
        for (input, want) in &cases {
            let got: mlua::LuaString = json_string.call(lua.create_string(input).unwrap()).unwrap();
            let got = std::str::from_utf8(&got.as_bytes()).map(str::to_owned);
            assert_eq!(got, Ok(format!("\"{want}\"")), "{script}: {input:?}");
        }
    }
}

/// The forwarders Dovecot runs (examples/dovecot/mailpush.lua for 2.3,
/// mailpush-2.4.lua for 2.4) are push-notification scripts too: run in the lua driver in
/// their POST mode, they turn the event tables back into the canonical transactions
/// they were built from — a round trip through Dovecot's tables and both forwarders.
async fn forwarder_round_trip(conf_for: impl Fn(&str, &Path) -> String) {
    let dir = tempfile::tempdir().unwrap();
    let server = RecordingServer::start().await;
    server.set_default(Reply::status(202));
    let metadata = store(dir.path());
    metadata
        .set(
            "alice@example.test",
            "/private/vendor/vendor.dovecot/http-notify",
            "user=alice-ox",
        )
        .unwrap();
    let captured = captures();
    let mut sent = Vec::new();
    for (i, c) in captured.iter().enumerate() {
        let events: Vec<Value> = c
            .events
            .iter()
            .map(|(v, _)| {
                let mut e = canonical(v);
                let obj = e.as_object_mut().unwrap();
                // The forwarder sends the decoded subject only.
                obj.remove("subject");
                let new = matches!(obj["name"].as_str(), Some("MessageNew" | "MessageAppend"));
                if new && obj["mailbox"] == "INBOX" {
                    obj.insert("unseen".into(), 3.into());
                    obj.insert("messages".into(), 5.into());
                    obj.insert("recent".into(), 1.into());
                }
                e
            })
            .collect();
        sent.push(txn(serde_json::json!({
            "id": format!("f{i:02}"), "user": c.user, "events": events,
        })));
    }
    let conf = conf_for(&server.url("/v1/transactions"), dir.path());
    // Waits for every request before the shutdown: a user's transactions beyond its share
    // of the lane's room wait in the spool, which a stopping lane leaves for the next
    // start (on a slow machine, some of alice's did).
    let outcomes = run_with(
        dir.path(),
        &conf,
        sent.clone(),
        metadata,
        Some((&server, sent.len())),
    )
    .await;
    delivered(&outcomes);
    let posted = server.wait_for(sent.len(), Duration::from_secs(10)).await;
    assert_eq!(posted.len(), sent.len());
    for user in ["alice@example.test", "bob@example.test"] {
        let got: Vec<Transaction> = posted
            .iter()
            .map(|r| Transaction::from_json(&r.body_text()).expect("canonical JSON"))
            .filter(|t| t.user == user)
            .collect();
        let want: Vec<&Transaction> = sent.iter().filter(|t| t.user == user).collect();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g.events, w.events, "{}", w.id);
            assert!(g.id.starts_with("dovecot-"), "{}", g.id);
            let notify = g
                .metadata
                .get("/private/vendor/vendor.dovecot/http-notify")
                .map(String::as_str);
            let expected = (user == "alice@example.test").then_some("user=alice-ox");
            assert_eq!(notify, expected);
        }
    }
    assert!(posted
        .iter()
        .all(|r| r.header("user-agent") == Some("dovecot-mailpush")
            && r.header("content-type") == Some("application/json")));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dovecot_23_forwarder_round_trips_every_event() {
    forwarder_round_trip(|url, _| {
        format!(
            "mailpush {{\n state_dir = state\n}}\nplugin {{\n push_notification_driver = lua:file={}/../examples/dovecot/mailpush.lua allow_hosts=127.0.0.1 allow_private\n mailpush_handoff_dir = none\n mailpush_url = {url}\n mailpush_timeout_msecs = 5000\n}}\n",
            env!("CARGO_MANIFEST_DIR")
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dovecot_24_forwarder_round_trips_every_event() {
    forwarder_round_trip(|url, _| {
        format!(
            "mailpush {{\n state_dir = state\n}}\npush_notification mailpush {{\n driver = lua\n lua_file = {}/../examples/dovecot/mailpush-2.4.lua\n allow_hosts = 127.0.0.1\n allow_private = yes\n lua_settings {{\n  mailpush_handoff_dir = none\n  mailpush_url = {url}\n  mailpush_timeout_msecs = 5000\n }}\n}}\n",
            env!("CARGO_MANIFEST_DIR")
        )
    })
    .await;
}

// ---------------------------------------------------------------- the API, call by call

/// Calls across the API a script can make, each checked in Lua; the script reports
/// `ok` or every mismatch (`failures`) in one request.
const API_SCRIPT: &str = r#"
local failures = {}
local function check(what, got, want)
  if got ~= want then
    failures[#failures + 1] = what .. ": got " .. tostring(got) .. ", want " .. tostring(want)
  end
end
local function raises(what, f, needle)
  local ok, err = pcall(f)
  if ok then failures[#failures + 1] = what .. ": did not raise"
  elseif type(err) ~= "string" or not err:find(needle, 1, true) then
    failures[#failures + 1] = what .. ": raised " .. tostring(err)
  end
end

function dovecot_lua_notify_begin_txn(user) return { user = user } end
function dovecot_lua_notify_event_mailbox_create(ctx, e)
  local user = ctx.user
  -- user fields and methods
  check("tostring(user)", tostring(user), "alice@example.test")
  check("user.service", user.service, "imap")
  check("user.session_id", user.session_id, "t-api")
  check("math.type(user.uid)", math.type(user.uid), "float")
  check("user.admin", user.admin, false)
  check("var_expand %u", user:var_expand("%u|%n|%d|%%"), "alice@example.test|alice|example.test|%")
  check("var_expand %{}", user:var_expand("%{user}/%{user|username}/%{user|domain}"),
    "alice@example.test/alice/example.test")
  check("plugin_getenv set", user:plugin_getenv("url") ~= nil, true)
  check("plugin_getenv unset", user:plugin_getenv("no_such_setting"), nil)
  raises("metadata_get bad prefix", function() user:metadata_get("/vendor/x") end, "must begin with /private/ or /shared/")
  check("metadata_get unset", user:metadata_get("/private/nothing"), nil)
  user:metadata_set("/private/a/one", "1")
  user:metadata_set("/private/a/two", "2")
  local a, b = user:metadata_get("/private/a/one", "/private/a/two")
  check("metadata_get two", a .. b, "12")
  local list = user:metadata_list("/private/a/")
  check("metadata_list", list["/private/a/one"] .. list["/private/a/two"], "12")
  user:metadata_unset("/private/a/one")
  check("metadata_unset", user:metadata_get("/private/a/one"), nil)
  -- mailboxes
  local box = user:mailbox("INBOX")
  box:open(); box:sync(); 
  local st = box:status(dovecot.storage.STATUS_UNSEEN, dovecot.storage.STATUS_MESSAGES)
  check("status.mailbox", st.mailbox, "INBOX")
  check("status.unseen unknown", st.unseen, 0.0)
  check("math.type(status.unseen)", math.type(st.unseen), "float")
  box:close(); box:free()
  -- dovecot.*
  check("STATUS_UNSEEN", dovecot.storage.STATUS_UNSEEN, 0x10)
  check("MAILBOX_ATTRIBUTE_PREFIX_DOVECOT_PVT_SERVER", dovecot.storage.MAILBOX_ATTRIBUTE_PREFIX_DOVECOT_PVT_SERVER, "vendor/vendor.dovecot/pvt/server/")
  check("has_flag", dovecot.has_flag(0x13, 0x10), true)
  check("clear_flag", dovecot.clear_flag(0x13, 0x10), 0x3)
  check("base64", dovecot.base64.encode("mailpush"), "bWFpbHB1c2g=")
  check("base64 decode", dovecot.base64.decode("bWFpbHB1c2g="), "mailpush")
  check("tabescape", dovecot.tabescape("a\tb\nc"), "a\1tb\1nc")
  check("split_tabescaped", table.concat(dovecot.split_tabescaped("a\tb\1tc"), "|"), "a|b\tc")
  check("net_ip_family", dovecot.net_ip_family("::1"), 6)
  check("microseconds", math.type(dovecot.microseconds()), "integer")
  -- dovecot.http
  local client = dovecot.http.client({ request_timeout_msecs = 2000, user_agent = "api-test" })
  raises("request without url", function() client:request({ method = "GET" }) end, "url not specified")
  raises("bad url", function() client:request({ url = "not a url" }) end, "Failed to parse url")
  raises("2.3 wrong type", function() dovecot.http.client({ user_agent = 5 }) end, "user_agent: string expected")
  raises("argument count", function() client.request(client) end, "expected 2 arguments, got 1")
  raises("self type", function() client.request("x", {}) end, "expected struct http_client got string")
  local closed = client:request({ url = user:plugin_getenv("closed_url") })
  local r = closed:submit()
  check("closed port status", r:status(), 9003)
  check("closed port reason", r:reason():find("Connection refused", 1, true) ~= nil, true)
  local req = client:request({ url = user:plugin_getenv("url"), method = "POST" })
  req:add_header("X-Remove", "me")
  req:add_header("X-Keep", "kept")
  req:remove_header("x-remove")
  req:set_payload("before\0after")
  local resp = req:submit()
  check("status", resp:status(), 200)
  check("reason", resp:reason(), "OK")
  check("absent header", resp:header("X-Nothing"), "")
  -- modules
  check("socket.url.escape", require("socket.url").escape("a b-c"), "a%20b%2dc")
  check("cjson.safe", select(2, require("cjson.safe").decode("[1,]")), "Expected value but found T_ARR_END at character 4")
  check("json decode null", require("json").decode('{"a":null}').a, nil)
  check("mime.b64", (require("mime").b64("hi")), "aGk=")
  check("socket.gettime", math.type(require("socket").gettime()), "float")
  -- the report
  local report = client:request({ url = user:plugin_getenv("url") .. "-report", method = "POST" })
  report:set_payload(#failures == 0 and "ok" or table.concat(failures, "\n"))
  report:submit()
end
function dovecot_lua_notify_end_txn(ctx, success) end
"#;

#[tokio::test(flavor = "multi_thread")]
async fn the_api_answers_as_dovecots_does() {
    let dir = tempfile::tempdir().unwrap();
    let server = RecordingServer::start().await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let script = write(dir.path(), "api.lua", API_SCRIPT);
    let conf = conf(
        &script,
        "allow_hosts=127.0.0.1 allow_private http_failures=ignore",
        &format!(
            " url = {}\n closed_url = http://127.0.0.1:{closed}/\n",
            server.url("/api")
        ),
    );
    let outcomes = run_with(
        dir.path(),
        &conf,
        vec![mailbox_txn("alice@example.test", "t-api")],
        store(dir.path()),
        None,
    )
    .await;
    delivered(&outcomes);
    let r = server.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(r[0].header("user-agent"), Some("api-test"));
    assert_eq!(r[0].header("x-keep"), Some("kept"));
    assert_eq!(r[0].header("x-remove"), None);
    assert_eq!(
        r[0].body_text(),
        "before",
        "the payload ends at its NUL, as in Dovecot"
    );
    assert_eq!(r[1].target, "/api-report");
    assert_eq!(r[1].body_text(), "ok");
}

#[tokio::test(flavor = "multi_thread")]
async fn dovecot_24_http_options_are_checked_as_24_checks_them() {
    let dir = tempfile::tempdir().unwrap();
    let script = write(
        dir.path(),
        "opts.lua",
        "function dovecot_lua_notify_begin_txn(user) return {} end\n\
         function dovecot_lua_notify_event_mailbox_create(ctx, e)\n\
           dovecot.http.client({ request_timeout = '5s', request_max_attempts = 2 })\n\
           if user_plugin_getenv_exists then error('no') end\n\
           dovecot.http.client({ timeout = 5000 })\n\
         end\n\
         function dovecot_lua_notify_end_txn(ctx, success) end\n",
    );
    let conf = format!(
        "mailpush {{\n state_dir = state\n}}\nplugin {{\n push_notification_driver = lua:file={} dovecot=2.4 retry=none\n}}\n",
        script.display()
    );
    let outcomes = run(dir.path(), &conf, vec![mailbox_txn("a@example.test", "t1")]).await;
    let r = reasons(&outcomes.into_iter().map(|(_, o)| o).collect::<Vec<_>>());
    assert!(
        r[0].contains("Invalid HTTP client setting: timeout is unknown setting"),
        "{r:?}"
    );
    assert!(r[0].contains("opts.lua:5:"), "{r:?}");
}

/// `ssl.https` speaks TLS to the checked address (a ClientHello reaches the port) and
/// verifies the certificate: a server that is not TLS gives the script `nil, err`.
#[tokio::test(flavor = "multi_thread")]
async fn ssl_https_speaks_tls_and_reports_failure_as_luasec_does() {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (first_byte_tx, first_byte) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut b = [0u8; 1];
        let _ = s.read_exact(&mut b).await;
        let _ = first_byte_tx.send(b[0]);
    });
    let dir = tempfile::tempdir().unwrap();
    let server = RecordingServer::start().await;
    let script = write(
        dir.path(),
        "https.lua",
        &format!(
            r#"
local https = require "ssl.https"
function dovecot_lua_notify_begin_txn(user) return {{ user = user }} end
function dovecot_lua_notify_event_mailbox_create(ctx, e)
  local body, err = https.request("https://127.0.0.1:{port}/push")
  local client = dovecot.http.client({{}})
  local req = client:request({{ url = ctx.user:plugin_getenv("report"), method = "POST" }})
  req:set_payload(tostring(body) .. "|" .. type(err))
  req:submit()
end
function dovecot_lua_notify_end_txn(ctx, success) end
"#
        ),
    );
    let conf = conf(
        &script,
        "allow_hosts=127.0.0.1 allow_private http_failures=ignore",
        &format!(" report = {}\n", server.url("/report")),
    );
    let outcomes = run(dir.path(), &conf, vec![mailbox_txn("a@example.test", "t1")]).await;
    delivered(&outcomes);
    assert_eq!(first_byte.await.unwrap(), 0x16, "a TLS handshake record");
    let r = server.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(r[0].body_text(), "nil|string", "LuaSec's nil, err");
}

/// A password in a script's URL stays out of failure reasons (they are logged).
#[tokio::test(flavor = "multi_thread")]
async fn a_password_in_a_scripts_url_never_reaches_a_reason() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let script = write(
        dir.path(),
        "secret.lua",
        &format!(
            "function dovecot_lua_notify_begin_txn(user) return {{}} end\n\
             function dovecot_lua_notify_event_mailbox_create(ctx, e)\n\
               local c = dovecot.http.client({{}})\n\
               c:request({{ url = 'http://push:s3cr3t-pw@127.0.0.1:{closed}/x', method = 'POST' }}):submit()\n\
             end\n\
             function dovecot_lua_notify_end_txn(ctx, success) end\n"
        ),
    );
    let outcomes = run(
        dir.path(),
        &conf(
            &script,
            "allow_hosts=127.0.0.1 allow_private retry=none",
            "",
        ),
        vec![mailbox_txn("a@example.test", "t1")],
    )
    .await;
    let r = reasons(&outcomes.into_iter().map(|(_, o)| o).collect::<Vec<_>>());
    assert!(r[0].contains("Connection refused"), "{r:?}");
    assert!(r[0].contains("push:***@127.0.0.1"), "{r:?}");
    assert!(!r[0].contains("s3cr3t-pw"), "{r:?}");
}

/// METADATA writes are bounded per transaction (count and value size): a script cannot
/// grow the store without bound.
#[tokio::test(flavor = "multi_thread")]
async fn metadata_writes_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let script = write(
        dir.path(),
        "flood.lua",
        "function dovecot_lua_notify_begin_txn(user) return { user = user } end\n\
         function dovecot_lua_notify_event_mailbox_create(ctx, e)\n\
           local ok, err = pcall(function() ctx.user:metadata_set('/private/big', ('x'):rep(65537)) end)\n\
           if ok then error('a 64K+1 value was stored') end\n\
           for i = 1, 1000 do ctx.user:metadata_set('/private/flood/' .. i, 'x') end\n\
         end\n\
         function dovecot_lua_notify_end_txn(ctx, success) end\n",
    );
    let metadata = store(dir.path());
    // The failure reason of one transaction through `script`.
    let reason = |script: std::path::PathBuf, id: &'static str| {
        let (dir, metadata) = (dir.path().to_path_buf(), metadata.clone());
        async move {
            let outcomes = run_with(
                &dir,
                &conf(&script, "retry=none", ""),
                vec![mailbox_txn("a@example.test", id)],
                metadata,
                None,
            )
            .await;
            reasons(&outcomes.into_iter().map(|(_, o)| o).collect::<Vec<_>>()).remove(0)
        }
    };
    let r = reason(script, "t1").await;
    assert!(
        r.contains("more than 100 METADATA writes in one transaction"),
        "{r:?}"
    );
    // The refused oversized write counted; 99 of the flood got in.
    assert_eq!(metadata.list(None).unwrap().len(), 99);
    // Across transactions: a user keeps at most 100 entries a script wrote (existing
    // ones may still change), and no entry name is longer than 1024 bytes.
    let script = write(
        dir.path(),
        "more.lua",
        "function dovecot_lua_notify_begin_txn(user) return { user = user } end\n\
         function dovecot_lua_notify_event_mailbox_create(ctx, e)\n\
           local ok, err = pcall(function() ctx.user:metadata_set('/private/' .. ('k'):rep(1e6), 'v') end)\n\
           if ok then error('a 1 MB key was stored') end\n\
           ok, err = pcall(function() ctx.user:mailbox(('m'):rep(1e6)):metadata_set('/private/k', 'v') end)\n\
           if ok then error('an entry under a 1 MB mailbox name was stored') end\n\
           ctx.user:metadata_set('/private/flood/1', 'changed')\n\
           for i = 1, 10 do ctx.user:metadata_set('/private/more/' .. i, 'x') end\n\
         end\n\
         function dovecot_lua_notify_end_txn(ctx, success) end\n",
    );
    let r = reason(script, "t2").await;
    assert!(
        r.contains(
            "the user has 100 METADATA entries (its mailboxes' included), the sandbox's most (100)"
        ),
        "{r:?}"
    );
    let all = metadata.list(None).unwrap();
    assert_eq!(all.len(), 100);
    assert!(all.iter().all(|(_, k, _)| k.len() <= 1024));
    assert!(all
        .iter()
        .any(|(_, k, v)| k == "/private/flood/1" && v == "changed"));
    // Mailbox attributes count against the user's bound: one mailbox name per write was
    // 100 more entries per name (33 MB in five transactions).
    let script = write(
        dir.path(),
        "boxes.lua",
        "function dovecot_lua_notify_begin_txn(user) return { user = user } end\n\
         function dovecot_lua_notify_event_mailbox_create(ctx, e)\n\
           for i = 1, 10 do ctx.user:mailbox('box' .. i):metadata_set('/private/k', 'v') end\n\
         end\n\
         function dovecot_lua_notify_end_txn(ctx, success) end\n",
    );
    let r = reason(script, "t3").await;
    assert!(
        r.contains("the user has 100 METADATA entries (its mailboxes' included)"),
        "{r:?}"
    );
    assert_eq!(metadata.list(None).unwrap().len(), 100);
}
