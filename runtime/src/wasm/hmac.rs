//! `host.hmac-sha256` (new in `mailpush:driver@0.1.1`): HMAC-SHA-256 computed by the
//! host in native code (with the CPU's SHA instructions where it has them, as x86-64
//! CPUs with SHA-NI do), over bytes read in place from the guest's memory (nothing is
//! copied into the host).
//!
//! What it lets a guest make the host do, bounded: at most [`MAX_MESSAGE`] bytes of
//! message and [`MAX_KEY`] bytes of key per call (more traps, naming the bound), and
//! the hashing time is the guest's: it is not counted as waiting, so it runs down the
//! call's `timeout_msecs`. The message is hashed [`CHUNK`] bytes at a time with the
//! deadline checked between chunks, so a call overruns it by at most one chunk's hashing
//! (well under a millisecond with SHA instructions, a few without), not by 16 MiB's.

use std::ops::Range;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use wasmtime::component::{LinkerInstance, WasmList};
use wasmtime::StoreContextMut;

use super::limits::CallClock;

/// Bytes of message one call may hash: above the largest transaction a driver is
/// handed with the default `max_event_bytes=1M` (its events' JSON and the whole
/// transaction's), with room for what a driver wraps around it.
pub const MAX_MESSAGE: usize = 16 << 20;

/// Bytes of key one call may use (a webhook secret is tens of bytes).
pub const MAX_KEY: usize = 4096;

/// Bytes hashed between two looks at the call's deadline.
pub const CHUNK: usize = 1 << 20;

/// Defines `hmac-sha256` in the `mailpush:driver/host` instance; `clock` is the store's
/// [`CallClock`], whose deadline the hashing runs down.
pub fn link<T: 'static>(
    host: &mut LinkerInstance<'_, T>,
    clock: fn(&mut T) -> &mut CallClock,
) -> wasmtime::Result<()> {
    host.func_wrap(
        "hmac-sha256",
        move |mut cx: StoreContextMut<'_, T>, (key, message): (WasmList<u8>, WasmList<u8>)| {
            check(key.len(), message.len())?;
            let mut mac = keyed(key.as_le_slice(&cx))?;
            let hashed = in_chunks(message.len(), |range| {
                mac.update(&message.as_le_slice(&cx)[range]);
                let clock = clock(cx.data_mut());
                clock.guest_time() >= clock.budget
            });
            if let Err(done) = hashed {
                // What the epoch deadline would have done at the guest's next check:
                // the call ends as a deadline, reported as one.
                clock(cx.data_mut()).expired = true;
                wasmtime::bail!(
                    "host.hmac-sha256 stopped after {done} of {} bytes: the call's timeout_msecs ran out",
                    message.len()
                );
            }
            Ok((mac.finalize().into_bytes().to_vec(),))
        },
    )?;
    Ok(())
}

/// Feeds `0..len` to `step` in ranges of at most [`CHUNK`] bytes, in order; `step`
/// answers whether the call is out of time, and then no further range is fed:
/// `Err(bytes fed)`. The last range needs no look after it.
fn in_chunks(len: usize, mut step: impl FnMut(Range<usize>) -> bool) -> Result<(), usize> {
    let mut fed = 0;
    while fed < len {
        let end = fed.saturating_add(CHUNK).min(len);
        let out_of_time = step(fed..end);
        fed = end;
        if out_of_time && fed < len {
            return Err(fed);
        }
    }
    Ok(())
}

/// Whether one call may hash `message` bytes under a key of `key` bytes.
fn check(key: usize, message: usize) -> wasmtime::Result<()> {
    if message > MAX_MESSAGE {
        wasmtime::bail!(
            "host.hmac-sha256 was given {message} bytes of message, more than the {} MiB one call may hash",
            MAX_MESSAGE >> 20
        );
    }
    if key > MAX_KEY {
        wasmtime::bail!(
            "host.hmac-sha256 was given a key of {key} bytes, more than the {MAX_KEY} one call may use"
        );
    }
    Ok(())
}

fn keyed(key: &[u8]) -> wasmtime::Result<Hmac<Sha256>> {
    // Hmac::new_from_slice accepts a key of any length.
    <Hmac<Sha256> as Mac>::new_from_slice(key)
        .map_err(|e| wasmtime::format_err!("host.hmac-sha256: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the host function computes, from the same pieces, without a store (and so
    /// without a deadline).
    fn hmac_sha256(key: &[u8], message: &[u8]) -> wasmtime::Result<Vec<u8>> {
        check(key.len(), message.len())?;
        let mut mac = keyed(key)?;
        let _ = in_chunks(message.len(), |range| {
            mac.update(&message[range]);
            false
        });
        Ok(mac.finalize().into_bytes().to_vec())
    }

    /// RFC 4231, test case 2.
    #[test]
    fn matches_rfc_4231() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?").unwrap();
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    /// Every byte is fed once, in order, in ranges of at most CHUNK; once out of time no
    /// further range is fed, except that a last range needs no stop after it.
    #[test]
    fn chunks_stop_at_the_deadline() {
        let mut seen = Vec::new();
        assert_eq!(
            in_chunks(2 * CHUNK + 5, |r| {
                seen.push(r);
                false
            }),
            Ok(())
        );
        assert_eq!(seen, [0..CHUNK, CHUNK..2 * CHUNK, 2 * CHUNK..2 * CHUNK + 5]);
        let mut fed = 0;
        let stopped = in_chunks(MAX_MESSAGE, |r| {
            fed += r.len();
            fed >= 2 * CHUNK
        });
        assert_eq!((stopped, fed), (Err(2 * CHUNK), 2 * CHUNK));
        assert_eq!(in_chunks(CHUNK, |_| true), Ok(()));
        assert_eq!(in_chunks(0, |_| unreachable!()), Ok(()));
    }

    #[test]
    fn refuses_past_its_bounds() {
        let big = vec![0u8; MAX_MESSAGE + 1];
        let e = hmac_sha256(b"k", &big).unwrap_err().to_string();
        assert!(e.contains("more than the 16 MiB"), "{e}");
        assert!(hmac_sha256(b"k", &big[..MAX_MESSAGE]).is_ok());
        let key = vec![0u8; MAX_KEY + 1];
        let e = hmac_sha256(&key, b"m").unwrap_err().to_string();
        assert!(e.contains("key of 4097 bytes"), "{e}");
    }
}
