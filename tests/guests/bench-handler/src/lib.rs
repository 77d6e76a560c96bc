//! The benchmark handler as a component: the same logic as mailpush-bench's native
//! handler and Lua handler — skip unless the message is new in INBOX and unseen, build
//! a JSON payload, HMAC-SHA256-sign it. With `work=none` it does nothing with the
//! message: what is left is the cost of getting a transaction into a component.
//!
//! By default it uses what `mailpush:driver@0.1.1` added: it answers `fixed-begin`
//! (every event, so the host does not call `begin-txn`) and signs through
//! `host.hmac-sha256`. `contract=0.1.0` does neither (begin-txn per transaction, HMAC
//! compiled into the component), for the benchmark's before/after in one run.

use hmac::{Hmac, Mac};
use mailpush_driver_sdk::{
    export_driver, hmac_sha256, Args, Driver, Failure, NewMessage, TxnInfo, Wants,
};
use sha2::Sha256;

struct Bench {
    key: Vec<u8>,
    signed: u64,
    /// `work=none`: every message is accepted untouched.
    idle: bool,
    /// `contract=0.1.0`: no fixed-begin, HMAC in the guest.
    v010: bool,
}

fn escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
}

impl Driver for Bench {
    fn init(args: &Args) -> Result<Self, String> {
        Ok(Bench {
            key: args.get("key").unwrap_or("secret").as_bytes().to_vec(),
            signed: 0,
            idle: args.get("work") == Some("none"),
            v010: args.get("contract") == Some("0.1.0"),
        })
    }

    fn fixed_wants(&self) -> Option<Wants> {
        (!self.v010).then_some(Wants::All)
    }

    fn on_message_new(
        &mut self,
        txn: &TxnInfo,
        m: &NewMessage,
        _json: &str,
    ) -> Result<(), Failure> {
        if self.idle {
            self.signed += std::hint::black_box(1);
            return Ok(());
        }
        if m.message.mailbox != "INBOX"
            || m.flags
                .as_ref()
                .is_some_and(|f| f.iter().any(|x| x == "\\Seen"))
        {
            return Ok(());
        }
        let mut p = String::with_capacity(256);
        p.push_str("{\"user\":\"");
        escape(&txn.user, &mut p);
        p.push_str("\",\"folder\":\"");
        escape(&m.message.mailbox, &mut p);
        p.push_str(&format!("\",\"uid\":{},\"from\":\"", m.message.uid));
        escape(m.from.as_deref().unwrap_or(""), &mut p);
        p.push_str("\",\"subject\":\"");
        escape(m.subject.as_deref().unwrap_or(""), &mut p);
        p.push_str("\"}");
        let sig = if self.v010 {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
                .map_err(|_| Failure::permanent("key"))?;
            mac.update(p.as_bytes());
            hex::encode(mac.finalize().into_bytes())
        } else {
            hex::encode(hmac_sha256(&self.key, p.as_bytes()))
        };
        self.signed += std::hint::black_box(sig.len() as u64);
        Ok(())
    }
}

export_driver!(Bench);
