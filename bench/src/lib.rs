//! Shared pieces of the benchmarks: the handler three ways share one event; the native
//! handler and its driver; loading a component. Used by the `mailpush-bench` binary and
//! the criterion micro-benchmarks in `benches/`.

pub mod crossings;

use std::sync::Arc;

use hmac::{Hmac, Mac};
use mailpush::wasm::engine::Engines;
use mailpush::wasm::instance::InstanceModel;
use mailpush::wasm::log::DriverTag;
use mailpush::wasm::sandbox::Sandbox;
use mailpush::wasm::WasmDriver;
use mailpush_core::event::NewMessage;
use mailpush_core::{DriverArgs, Event, NoMetadata, Transaction};
use sha2::Sha256;

/// The Lua handler (pure Lua 5.4).
pub const LUA_HANDLER: &str = include_str!("handler.lua");

/// The event as the table Dovecot's Lua driver builds (numbers as floats).
pub fn lua_event(vm: &mlua::Lua, m: &NewMessage) -> mlua::Result<mlua::Table> {
    let ev = vm.create_table()?;
    ev.set("name", "MessageNew")?;
    ev.set("mailbox", m.mailbox.as_str())?;
    ev.set("uid", m.uid as f64)?;
    ev.set("uid_validity", m.uid_validity as f64)?;
    ev.set("from", m.from.as_deref())?;
    ev.set("subject", m.subject.as_deref())?;
    ev.set(
        "flags",
        vm.create_sequence_from(m.flags.clone().unwrap_or_default())?,
    )?;
    Ok(ev)
}

pub fn message() -> NewMessage {
    NewMessage {
        mailbox: "INBOX".into(),
        uid: 42,
        uid_validity: 1_700_000_000,
        from: Some("Alice <alice@example.com>".into()),
        subject: Some("Quarterly \"numbers\" and more".into()),
        flags: Some(vec!["\\Recent".into()]),
        ..Default::default()
    }
}

pub fn txn() -> Arc<Transaction> {
    let mut t = Transaction::new("alice@example.com", vec![Event::MessageNew(message())]);
    t.id = "bench".into();
    Arc::new(t)
}

/// `n` copies of `t`, each a transaction of its own as the dispatcher hands drivers: its
/// canonical JSON not serialised yet (a transaction delivered again would find the
/// encoding made for it the first time). Made before a measurement starts.
pub fn copies(t: &Arc<Transaction>, n: usize) -> Vec<Arc<Transaction>> {
    (0..n).map(|_| Arc::new((**t).clone())).collect()
}

// ------------------------------------------------------------ 1. driver logic

pub fn escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
}

/// The handler, natively (identical to tests/guests/bench-handler and bench/src/handler.lua).
pub fn native_handler(user: &str, m: &NewMessage, key: &[u8]) -> Option<String> {
    if m.mailbox != "INBOX"
        || m.flags
            .as_ref()
            .is_some_and(|f| f.iter().any(|x| x == "\\Seen"))
    {
        return None;
    }
    let mut p = String::with_capacity(256);
    p.push_str("{\"user\":\"");
    escape(user, &mut p);
    p.push_str("\",\"folder\":\"");
    escape(&m.mailbox, &mut p);
    p.push_str(&format!("\",\"uid\":{},\"from\":\"", m.uid));
    escape(m.from.as_deref().unwrap_or(""), &mut p);
    p.push_str("\",\"subject\":\"");
    escape(m.subject.as_deref().unwrap_or(""), &mut p);
    p.push_str("\"}");
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).ok()?;
    mac.update(p.as_bytes());
    Some(hex::encode(mac.finalize().into_bytes()))
}

/// The native handler as a mailpush driver, so it is measured through the same dispatch
/// path (begin_txn, grouping, process_msg, end_txn) as the component.
pub struct NativeBench;

pub struct NativeBenchTxn {
    user: String,
}

#[async_trait::async_trait]
impl mailpush_core::Driver for NativeBench {
    async fn begin_txn(
        &self,
        txn: &Arc<Transaction>,
    ) -> Result<mailpush_core::Begin, mailpush_core::Failure> {
        Ok(mailpush_core::Begin::Join {
            events: mailpush_core::EventSet::empty().with(mailpush_core::EventName::MessageNew),
            txn: Box::new(NativeBenchTxn {
                user: txn.user.clone(),
            }),
        })
    }
}

#[async_trait::async_trait]
impl mailpush_core::DriverTxn for NativeBenchTxn {
    async fn process_msg(
        &mut self,
        record: &mailpush_core::MessageRecord<'_>,
    ) -> Result<(), mailpush_core::Failure> {
        for e in &record.events {
            if let Event::MessageNew(m) = e {
                std::hint::black_box(native_handler(&self.user, m, b"secret"));
            }
        }
        Ok(())
    }
}

pub async fn load(
    path: &std::path::Path,
    sandbox: Sandbox,
    args: &str,
    engines: &Arc<Engines>,
) -> WasmDriver {
    let tag = Arc::new(DriverTag {
        number: 1,
        name: "bench".into(),
    });
    WasmDriver::load(
        tag,
        path,
        sandbox,
        DriverArgs::parse(args),
        engines,
        Arc::new(NoMetadata),
    )
    .await
    .unwrap_or_else(|e| panic!("loading {}: {}", path.display(), e.message))
}

/// The bench handler as a component driver with a warm instance (`instance=reuse`,
/// never recycled), as §1 of the report and the criterion bench measure it.
pub async fn warm_bench_handler(engines: &Arc<Engines>) -> WasmDriver {
    warm_bench_handler_with(engines, "key=secret").await
}

/// [`warm_bench_handler`] with these arguments (`work=none`: it does nothing).
pub async fn warm_bench_handler_with(engines: &Arc<Engines>, args: &str) -> WasmDriver {
    warm_bench_handler_calls(engines, args, true).await
}

/// [`warm_bench_handler_with`], called synchronously (the default: it imports nothing to
/// wait on) or, with `synchronous` false, on a fiber as before (`calls=async`).
pub async fn warm_bench_handler_calls(
    engines: &Arc<Engines>,
    args: &str,
    synchronous: bool,
) -> WasmDriver {
    let mut sandbox = Sandbox::default();
    sandbox.instance.synchronous_allowed = synchronous;
    sandbox.instance.model = InstanceModel::Reuse;
    sandbox.instance.recycle_after = u64::MAX;
    sandbox.limits.timeout = std::time::Duration::from_secs(10);
    load(
        &mailpush_e2e::guest("bench-handler"),
        sandbox,
        args,
        engines,
    )
    .await
}
