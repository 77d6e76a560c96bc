//! A push driver that misbehaves on purpose, for mailpush's sandbox tests. `mode=`
//! selects the misbehaviour, performed in `deliver`:
//! loop, memory, recursion, trap, logflood, http (to `url=`), file, huge, panic-init,
//! fail-retryable, metadata (reads METADATA `key=` in init and in deliver, and fails
//! with what it saw), ok.

use mailpush_driver_sdk::{export_driver, http, log, metadata, Args, Driver, Failure, Transaction};

struct Hostile {
    mode: String,
    url: String,
    key: String,
    /// What `metadata(key)` returned during init.
    at_init: Option<String>,
}

impl Driver for Hostile {
    fn init(args: &Args) -> Result<Self, String> {
        let mode = args.require("mode")?.to_string();
        if mode == "panic-init" {
            panic!("hostile driver panics in init on purpose");
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
        })
    }

    fn on_transaction(&mut self, txn: &Transaction) -> Result<(), Failure> {
        match self.mode.as_str() {
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
            other => Err(Failure::permanent(format!("unknown mode {other}"))),
        }
    }
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
