//! A push driver that misbehaves on purpose, for mailpush's sandbox tests. `mode=`
//! selects the misbehaviour, performed in `deliver`:
//! loop, memory, recursion, trap, logflood, http (to `url=`), file, huge, panic-init,
//! fail-retryable, metadata (reads METADATA `key=` in init and in deliver, and fails
//! with what it saw), ok; and the attacks on the host:
//! - `fields-flood`: keeps creating `wasi:http` fields of 100 KiB each;
//! - `body-hoard`: keeps creating outgoing requests whose bodies buffer 2 MiB, never sent;
//! - `init-sleep` / `init-burn`: `init` blocks on a clock for an hour / burns CPU with
//!   host calls; `init-loop`: `init` spins without host calls;
//! - `log-loop`: logs 8 MiB strings in a loop; `fields-loop`: creates and drops fields in a
//!   loop (host work on the guest's behalf, which must be charged);
//! - `metadata-flood`: asks METADATA for huge invalid keys;
//! - `forge`: logs lines with newlines that look like mailpush's own, then traps after
//!   logging a fake panic message;
//! - `exit`: calls `wasi:cli/exit`;
//! - `egress`: POSTs `bytes=` of body to `url=` in one request;
//! - `sleep`: waits `msecs=` on a clock, then succeeds (a slow but honest driver);
//! - `get`: GETs `url=` and succeeds on 200 (reading the whole body);
//! - `grow-then-trap` (with `instance=reuse`): first a memory growth the sandbox refuses,
//!   handled; then, in the same instance, a trap.
//! - `post-streamed`: what JavaScript's `fetch` does: `handle` a POST to `url=` first,
//!   then write its `bytes=` body and finish it, then wait for the response; fails with
//!   `write: …; response: …` saying how each step went.
//! - `init-hoard`: `init` fills `mib=` MiB of memory with non-zero bytes and keeps
//!   them (a snapshot would carry them all); transactions succeed.
//! - `remember`: `init` puts `init:TAG` (`tag=`) in a global; each transaction puts its
//!   id there and succeeds only if it found `init:TAG`, failing with `saw …` otherwise
//!   (state from another transaction, or not what `init` left).
//! - `echo`: fails with what it received, for the host to compare with what it sent:
//!   `json ok|` (or `json differs|`: some event's JSON is not in the transaction's) and
//!   then the typed events' `Debug`; `echo-json`: fails with the transaction's JSON.
//!   With `want=mailbox-delete`, only MailboxDelete events are wanted (any mode).
//! - `hmac`: fails with the hex of `host.hmac-sha256(key=, the transaction's JSON)`;
//!   `hmac-huge`: asks the host to hash 17 MiB (past its bound); `hmac-loop`: hashes
//!   1 MiB through the host in a loop (host work the deadline must stop).
//! - `fixed=all|skip|deletes|none|panic|loop` (any mode): what `fixed-begin` answers at
//!   load (`panic`: it panics; `loop`: it spins, without host calls); with `all`, `skip` or `deletes`, a call to `begin-txn` fails
//!   the transaction (the host promised not to make one). With any `fixed=`,
//!   `fixed-begin` also puts `fixed-begin` in the global `remember` reads.
//!
//! - `spin`: computes `iters=` rounds (no host calls), then succeeds (CPU work of a
//!   known size); `spin-measure`: the same, then fails with how many nanoseconds it took
//!   (`spun NS ns`);
//! - `zeroes`: writes zeroes to stdout in a loop with `blocking-write-zeroes-and-flush`
//!   (`bytes=` each; the host builds and scans them: host work the deadline must stop);
//! - `authority` / `method`: keeps making outgoing requests given an authority / a method
//!   of `bytes=` bytes, never sent; fails with `refused at N` when the host refuses one.
//!
//! - `say=TEXT` (any mode): `init` writes `init says TEXT` to stderr, and `fixed-begin`
//!   `fixed-begin says TEXT`: output made at load, which no transaction may report.
//!
//! Built without the default feature `waits`, the modes that wait or use `wasi:http`
//! (http, init-sleep, init-burn, fields-flood, body-hoard, fields-loop, egress,
//! post-streamed, get, sleep) are left out: the component then imports nothing it could
//! wait on, and mailpush calls it synchronously.

#[cfg(feature = "waits")]
use mailpush_driver_sdk::bindings::wasi::clocks::monotonic_clock;
#[cfg(feature = "waits")]
use mailpush_driver_sdk::bindings::wasi::http::types::{Fields, OutgoingBody, OutgoingRequest};
#[cfg(feature = "waits")]
use mailpush_driver_sdk::http;
use mailpush_driver_sdk::{
    export_driver, hmac_sha256, log, metadata, Args, Driver, EventName, Failure, Transaction,
    TxnInfo, Wants,
};

/// What `init-hoard` mode fills in `init`.
static HOARD: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

/// What `remember` mode keeps between calls: a global in linear memory.
static REMEMBERED: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// `handle` first, then the body, then the response (see `post-streamed`).
#[cfg(feature = "waits")]
fn post_streamed(url: &str, bytes: usize) -> String {
    use mailpush_driver_sdk::bindings::wasi::http::outgoing_handler;
    use mailpush_driver_sdk::bindings::wasi::http::types::{Method, Scheme};
    let (authority, path) = url
        .trim_start_matches("http://")
        .split_once('/')
        .map_or((url.trim_start_matches("http://"), "/".to_string()), |(a, p)| {
            (a, format!("/{p}"))
        });
    let req = OutgoingRequest::new(Fields::new());
    let _ = req.set_method(&Method::Post);
    let _ = req.set_scheme(Some(&Scheme::Http));
    let _ = req.set_authority(Some(authority));
    let _ = req.set_path_with_query(Some(&path));
    let Ok(body) = req.body() else {
        return "no body".into();
    };
    let future = match outgoing_handler::handle(req, None) {
        Ok(f) => f,
        Err(e) => return format!("handle: {e:?}"),
    };
    let wrote = {
        let Ok(out) = body.write() else {
            return "no body stream".into();
        };
        let chunk = vec![b'p'; 4096];
        let mut left = bytes;
        let mut result = Ok(());
        while left > 0 && result.is_ok() {
            let n = left.min(chunk.len());
            result = out.blocking_write_and_flush(&chunk[..n]);
            left -= n;
        }
        result
    };
    let wrote = match wrote {
        Ok(()) => match OutgoingBody::finish(body, None) {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("finish failed: {e:?}"),
        },
        Err(e) => format!("failed: {e:?}"),
    };
    let response = loop {
        match future.get() {
            Some(Ok(Ok(r))) => break format!("status {}", r.status()),
            Some(Ok(Err(e))) => break format!("error {e:?}"),
            Some(Err(())) => break "taken".to_string(),
            None => future.subscribe().block(),
        }
    };
    format!("write: {wrote}; response: {response}")
}

/// Blocks on a monotonic-clock pollable for `ns` nanoseconds.
#[cfg(feature = "waits")]
fn sleep_ns(ns: u64) {
    monotonic_clock::subscribe_duration(ns).block();
}

// Without `waits`, the fields only those modes read are unused.
#[cfg_attr(not(feature = "waits"), allow(dead_code))]
struct Hostile {
    mode: String,
    url: String,
    key: String,
    /// What `metadata(key)` returned during init.
    at_init: Option<String>,
    /// `bytes=` for egress.
    bytes: usize,
    /// `msecs=` for sleep.
    msecs: u64,
    /// `iters=` for spin.
    iters: u64,
    /// `kib=` per fields resource for fields-flood (default 100).
    kib: usize,
    /// Transactions this instance handled (with `instance=reuse`).
    handled: u32,
    /// `tag=` for remember.
    tag: String,
    /// `fixed=`: the answer to `fixed-begin`.
    fixed: String,
    /// `want=mailbox-delete`: only those events are wanted.
    only_deletes: bool,
    /// `say=`: what init and fixed-begin write to stderr.
    say: String,
}

impl Driver for Hostile {
    fn init(args: &Args) -> Result<Self, String> {
        let mode = args.require("mode")?.to_string();
        if mode == "panic-init" {
            panic!("hostile driver panics in init on purpose");
        }
        #[cfg(feature = "waits")]
        if mode == "init-sleep" {
            sleep_ns(3_600_000_000_000);
        }
        #[cfg(feature = "waits")]
        if mode == "init-burn" {
            // Host calls in a loop: the time is the host's, done on the guest's behalf.
            loop {
                std::hint::black_box(monotonic_clock::now());
                let f = Fields::new();
                std::hint::black_box(&f);
            }
        }
        if mode == "init-loop" {
            // Pure computation, no host calls: stopped only by a deadline.
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        if mode == "init-hoard" {
            let mib: usize = args.get("mib").and_then(|v| v.parse().ok()).unwrap_or(1);
            HOARD
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(vec![0x5a; mib << 20]);
        }
        if mode == "remember" {
            *REMEMBERED.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(format!("init:{}", args.get("tag").unwrap_or("")));
        }
        let say = args.get("say").unwrap_or("").to_string();
        if !say.is_empty() {
            eprintln!("init says {say}");
        }
        let key = args.get("key").unwrap_or("").to_string();
        let at_init = if mode == "metadata" {
            metadata(&key)
        } else {
            None
        };
        Ok(Hostile {
            mode,
            url: args.get("url").unwrap_or("").to_string(),
            key,
            at_init,
            bytes: args.get("bytes").and_then(|v| v.parse().ok()).unwrap_or(0),
            msecs: args.get("msecs").and_then(|v| v.parse().ok()).unwrap_or(0),
            iters: args.get("iters").and_then(|v| v.parse().ok()).unwrap_or(0),
            kib: args.get("kib").and_then(|v| v.parse().ok()).unwrap_or(100),
            handled: 0,
            tag: args.get("tag").unwrap_or("").to_string(),
            only_deletes: args.get("want") == Some("mailbox-delete"),
            fixed: args.get("fixed").unwrap_or("").to_string(),
            say,
        })
    }

    fn fixed_wants(&self) -> Option<Wants> {
        if !self.say.is_empty() {
            eprintln!("fixed-begin says {}", self.say);
        }
        if !self.fixed.is_empty() {
            *REMEMBERED.lock().unwrap_or_else(|e| e.into_inner()) = Some("fixed-begin".into());
        }
        match self.fixed.as_str() {
            "all" => Some(Wants::All),
            "skip" => Some(Wants::Skip),
            "deletes" => Some(Wants::Events(vec![EventName::MailboxDelete])),
            "panic" => panic!("fixed-begin refuses"),
            "loop" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            _ => None,
        }
    }

    fn wants(&mut self, txn: &TxnInfo) -> Wants {
        if matches!(self.fixed.as_str(), "all" | "skip" | "deletes") {
            panic!(
                "begin-txn called for {} although fixed-begin answered",
                txn.id
            );
        }
        if self.only_deletes {
            Wants::Events(vec![EventName::MailboxDelete])
        } else {
            Wants::All
        }
    }

    fn on_transaction(&mut self, txn: &Transaction) -> Result<(), Failure> {
        self.handled += 1;
        match self.mode.as_str() {
            "init-hoard" => Ok(()),
            "remember" => {
                let saw = REMEMBERED
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .replace(txn.id.clone());
                match saw {
                    Some(s) if s == format!("init:{}", self.tag) => Ok(()),
                    other => Err(Failure::permanent(format!("saw {other:?}"))),
                }
            }
            "loop" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "recursion" => {
                let depth = recurse(std::hint::black_box(1));
                Err(Failure::permanent(format!("unreachable: depth {depth}")))
            }
            "trap" => {
                #[cfg(target_arch = "wasm32")]
                core::arch::wasm32::unreachable();
                #[allow(unreachable_code)]
                Ok(())
            }
            "logflood" => {
                for i in 0..100_000 {
                    log::info(&format!("flood line {i}"));
                }
                Ok(())
            }
            #[cfg(feature = "waits")]
            "http" => match http::send(
                "POST",
                &self.url,
                &[("content-type", "application/json")],
                b"{}",
                Some(2000),
            ) {
                Ok(r) => Err(Failure::permanent(format!(
                    "request to {} was NOT refused: status {}",
                    self.url, r.status
                ))),
                Err(e) => Err(Failure::permanent(format!("http failed as expected: {e}"))),
            },
            "file" => match std::fs::read_to_string("/etc/passwd") {
                Ok(s) => Err(Failure::permanent(format!(
                    "read a file it should not see: {} bytes",
                    s.len()
                ))),
                Err(e) => Err(Failure::permanent(format!("file access denied: {e}"))),
            },
            "huge" => Err(Failure::permanent("x".repeat(8 << 20))),
            "fail-retryable" => Err(Failure::retryable(format!(
                "failing on purpose for {}",
                txn.user
            ))),
            "metadata" => Err(Failure::permanent(format!(
                "metadata for {}: init={:?} deliver={:?}",
                txn.user,
                self.at_init,
                metadata(&self.key)
            ))),
            "ok" => Ok(()),
            "hmac" => {
                let mac = hmac_sha256(self.key.as_bytes(), txn.json.as_bytes());
                let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
                Err(Failure::permanent(hex))
            }
            "hmac-huge" => {
                let big = vec![7u8; 17 << 20];
                let mac = hmac_sha256(b"k", std::hint::black_box(&big));
                Err(Failure::permanent(format!("hashed 17 MiB: {mac:?}")))
            }
            "hmac-loop" => {
                let m = vec![7u8; 1 << 20];
                loop {
                    std::hint::black_box(hmac_sha256(b"k", std::hint::black_box(&m)));
                }
            }
            "echo" => {
                let consistent = txn.events.iter().all(|r| txn.json.contains(&r.json));
                let typed: Vec<_> = txn.events.iter().map(|r| &r.event).collect();
                Err(Failure::permanent(format!(
                    "{}|{typed:?}",
                    if consistent { "json ok" } else { "json differs" }
                )))
            }
            "echo-json" => Err(Failure::permanent(txn.json.clone())),
            #[cfg(feature = "waits")]
            "fields-flood" => {
                let value = vec![b'v'; self.kib << 10];
                let mut kept = Vec::new();
                for i in 0..100_000u32 {
                    let f = Fields::new();
                    if f.append("x-filler", &value).is_err() {
                        return Err(Failure::permanent(format!(
                            "fields refused after {i}: the host bounds them"
                        )));
                    }
                    kept.push(f);
                }
                Err(Failure::permanent("made 100000 fields of 100 KiB"))
            }
            #[cfg(feature = "waits")]
            "body-hoard" => {
                let chunk = vec![b'b'; 1 << 20];
                let mut kept = Vec::new();
                for i in 0..10_000u32 {
                    let req = OutgoingRequest::new(Fields::new());
                    let Ok(body) = req.body() else {
                        return Err(Failure::permanent(format!("body refused after {i}")));
                    };
                    let Ok(out) = body.write() else {
                        return Err(Failure::permanent(format!("stream refused after {i}")));
                    };
                    let mut wrote = 0;
                    while wrote < 2 {
                        match out.check_write() {
                            Ok(n) if n > 0 => {
                                let n = (n as usize).min(chunk.len());
                                if out.write(&chunk[..n]).is_err() {
                                    break;
                                }
                                wrote += 1;
                            }
                            _ => break,
                        }
                    }
                    kept.push((req, body, out));
                }
                Err(Failure::permanent("hoarded 10000 bodies"))
            }
            "log-loop" => {
                let big = "L".repeat(8 << 20);
                loop {
                    log::info(&big);
                }
            }
            "spin" => {
                spin(self.iters);
                Ok(())
            }
            #[cfg(feature = "waits")]
            "spin-measure" => {
                let start = monotonic_clock::now();
                spin(self.iters);
                Err(Failure::permanent(format!(
                    "spun {} ns",
                    monotonic_clock::now() - start
                )))
            }
            #[cfg(feature = "waits")]
            "zeroes" => {
                #[link(wasm_import_module = "wasi:cli/stdout@0.2.0")]
                extern "C" {
                    #[link_name = "get-stdout"]
                    fn get_stdout() -> i32;
                }
                // SAFETY: get-stdout returns a fresh output-stream handle the guest owns.
                let out = unsafe {
                    mailpush_driver_sdk::bindings::wasi::io::streams::OutputStream::from_handle(
                        get_stdout() as u32,
                    )
                };
                loop {
                    let _ = out.blocking_write_zeroes_and_flush(self.bytes as u64);
                }
            }
            #[cfg(feature = "waits")]
            "authority" | "method" => {
                use mailpush_driver_sdk::bindings::wasi::http::types::Method;
                let big = "a".repeat(self.bytes);
                let mut kept = Vec::new();
                for i in 0..100_000u32 {
                    let req = OutgoingRequest::new(Fields::new());
                    let ok = if self.mode == "authority" {
                        req.set_authority(Some(&big)).is_ok()
                    } else {
                        req.set_method(&Method::Other(big.clone())).is_ok()
                    };
                    if !ok {
                        return Err(Failure::permanent(format!("refused at {i}")));
                    }
                    kept.push(req);
                }
                Err(Failure::permanent("never refused"))
            }
            // One poll naming one pollable 100,000 times: 400 KB of the guest's, lifted
            // some 4 MB of the host's (on both paths: built with and without waits).
            "poll-dup" => {
                #[link(wasm_import_module = "wasi:cli/stdout@0.2.0")]
                extern "C" {
                    #[link_name = "get-stdout"]
                    fn get_stdout() -> i32;
                }
                #[link(wasm_import_module = "wasi:io/poll@0.2.0")]
                extern "C" {
                    #[link_name = "poll"]
                    fn poll(ptr: i32, len: i32, ret: i32);
                }
                // SAFETY: get-stdout returns a fresh output-stream handle the guest owns.
                let out = unsafe {
                    mailpush_driver_sdk::bindings::wasi::io::streams::OutputStream::from_handle(
                        get_stdout() as u32,
                    )
                };
                let pollable = out.subscribe();
                let handles = vec![pollable.handle(); 100_000];
                let mut ret = [0u32; 2];
                // SAFETY: list<borrow<pollable>> is a list of handles; the result, a
                // list<u32>, is written to `ret`.
                unsafe {
                    poll(
                        handles.as_ptr() as i32,
                        handles.len() as i32,
                        ret.as_mut_ptr() as i32,
                    )
                };
                Err(Failure::permanent(format!("poll answered {} ready", ret[1])))
            }
            // One call whose entries all point at the same `bytes` of memory: lifted
            // entry by entry, the host would copy 200 × `bytes`.
            #[cfg(feature = "waits")]
            "fields-alias" | "set-alias" => {
                #[link(wasm_import_module = "wasi:http/types@0.2.12")]
                extern "C" {
                    #[link_name = "[static]fields.from-list"]
                    fn from_list(ptr: i32, len: i32, ret: i32);
                    #[link_name = "[method]fields.set"]
                    fn set(fields: i32, name: i32, name_len: i32, ptr: i32, len: i32, ret: i32);
                }
                let value = vec![b'v'; self.bytes];
                let name = b"x-a";
                let mut ret = [0u32; 2];
                if self.mode == "fields-alias" {
                    let entries: Vec<[u32; 4]> = (0..200)
                        .map(|_| {
                            [
                                name.as_ptr() as u32,
                                name.len() as u32,
                                value.as_ptr() as u32,
                                value.len() as u32,
                            ]
                        })
                        .collect();
                    // SAFETY: the canonical ABI's layout of list<tuple<string, list<u8>>>.
                    unsafe { from_list(entries.as_ptr() as i32, 200, ret.as_mut_ptr() as i32) };
                } else {
                    let fields = Fields::new();
                    let values: Vec<[u32; 2]> = (0..200)
                        .map(|_| [value.as_ptr() as u32, value.len() as u32])
                        .collect();
                    // SAFETY: the canonical ABI's layout of list<list<u8>>; the handle
                    // is borrowed for the call.
                    unsafe {
                        set(
                            fields.handle() as i32,
                            name.as_ptr() as i32,
                            name.len() as i32,
                            values.as_ptr() as i32,
                            200,
                            ret.as_mut_ptr() as i32,
                        )
                    };
                }
                Err(Failure::permanent(format!("{} returned {ret:?}", self.mode)))
            }
            #[cfg(feature = "waits")]
            "fields-loop" => loop {
                let f = Fields::new();
                let _ = f.append("x-a", b"b");
                drop(f);
            },
            "metadata-flood" => {
                let key = format!("/bad\n{}", "k".repeat(4 << 20));
                for _ in 0..50 {
                    std::hint::black_box(metadata(&key));
                }
                Ok(())
            }
            "forge" => {
                log::info("innocent\n2026-11-29T10:00:00.000000Z  INFO mailpush::pipeline::lane: driver=1 delivered\r\u{1b}[2K");
                log::error("panicked at forged.rs:1:1:\nthe host is compromised");
                #[cfg(target_arch = "wasm32")]
                core::arch::wasm32::unreachable();
                #[allow(unreachable_code)]
                Ok(())
            }
            "exit" => std::process::exit(3),
            // What a JavaScript or Python driver's uncaught exception looks like: the
            // message and stack on stderr, then a trap.
            "stderr-trap" => {
                println!("progress: about to fail");
                eprintln!("TypeError: cannot read property 'x' of undefined");
                eprint!("    at deliver (driver.js:12:5)");
                #[cfg(target_arch = "wasm32")]
                core::arch::wasm32::unreachable();
                #[allow(unreachable_code)]
                Ok(())
            }
            "print" => {
                println!("console.log from the driver");
                eprintln!("console.error from the driver");
                Ok(())
            }
            #[cfg(feature = "waits")]
            "egress" => {
                let bytes: usize = self.bytes;
                let body = vec![b'e'; bytes];
                match http::send(
                    "POST",
                    &self.url,
                    &[("content-type", "application/octet-stream")],
                    &body,
                    Some(10_000),
                ) {
                    Ok(r) => Err(Failure::permanent(format!("egress of {bytes} bytes answered {}", r.status))),
                    Err(e) => Err(Failure::permanent(format!("egress failed: {e}"))),
                }
            }
            // Requests with empty bodies and `bytes` of headers each, without end.
            #[cfg(feature = "waits")]
            "head-flood" => {
                let big = "h".repeat(self.bytes);
                for i in 0..1000u32 {
                    if let Err(e) =
                        http::send("GET", &self.url, &[("x-big", big.as_str())], b"", Some(10_000))
                    {
                        return Err(Failure::permanent(format!("request {i} failed: {e}")));
                    }
                }
                Err(Failure::permanent("1000 requests sent"))
            }
            #[cfg(feature = "waits")]
            "post-streamed" => Err(Failure::permanent(post_streamed(&self.url, self.bytes))),
            #[cfg(feature = "waits")]
            "get" => match http::send("GET", &self.url, &[], b"", Some(10_000)) {
                Ok(r) if r.status == 200 => Ok(()),
                Ok(r) => Err(Failure::permanent(format!("GET answered {}", r.status))),
                Err(e) => Err(Failure::retryable(format!("GET failed: {e}"))),
            },
            "grow-then-trap" => {
                if self.handled == 1 {
                    // A growth the sandbox refuses, handled by the driver.
                    let mut v: Vec<u8> = Vec::new();
                    let refused = v.try_reserve(1 << 30).is_err();
                    return if refused {
                        Ok(())
                    } else {
                        Err(Failure::permanent("a 1 GiB reservation was granted"))
                    };
                }
                #[cfg(target_arch = "wasm32")]
                core::arch::wasm32::unreachable();
                #[allow(unreachable_code)]
                Ok(())
            }
            #[cfg(feature = "waits")]
            "sleep" => {
                sleep_ns(self.msecs * 1_000_000);
                Ok(())
            }
            other => Err(Failure::permanent(format!("unknown mode {other}"))),
        }
    }
}

/// `n` rounds of arithmetic the compiler cannot drop.
fn spin(n: u64) {
    let mut x: u64 = 1;
    for i in 0..n {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
    }
    std::hint::black_box(x);
}

#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u64 {
    let mut pad = [n; 64];
    pad[(n % 64) as usize] = recurse(std::hint::black_box(n + 1));
    std::hint::black_box(&pad);
    pad[0]
}

export_driver!(Hostile);
