//! The benchmark handler as a component: the same logic as mailpush-bench's native
//! handler and Lua handler — skip unless the message is new in INBOX and unseen, build
//! a JSON payload, HMAC-SHA256-sign it. With `work=none` it does nothing with the
//! message: what is left is the cost of getting a transaction into a component.

use hmac::{Hmac, Mac};
use mailpush_driver_sdk::{export_driver, Args, Driver, Failure, NewMessage, TxnInfo};
use sha2::Sha256;

struct Bench {
    key: Vec<u8>,
    signed: u64,
    /// `work=none`: every message is accepted untouched.
    idle: bool,
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
        })
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
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .map_err(|_| Failure::permanent("key"))?;
        mac.update(p.as_bytes());
        let sig = hex::encode(mac.finalize().into_bytes());
        self.signed += std::hint::black_box(sig.len() as u64);
        Ok(())
    }
}

export_driver!(Bench);
