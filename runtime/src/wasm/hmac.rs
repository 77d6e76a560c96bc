//! `host.hmac-sha256` (new in `mailpush:driver@0.1.1`): HMAC-SHA-256 computed by the
//! host, with the CPU's SHA instructions, over bytes read in place from the guest's
//! memory (nothing is copied into the host).
//!
//! What it lets a guest make the host do, bounded: at most [`MAX_MESSAGE`] bytes of
//! message and [`MAX_KEY`] bytes of key per call (more traps, naming the bound), and
//! the hashing time is the guest's: it is not counted as waiting, so it runs down the
//! call's `timeout_msecs`, and a guest calling it in a loop is stopped by its deadline
//! like any other loop (one call at most overruns it, about 10 ms for 16 MiB).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use wasmtime::component::{LinkerInstance, WasmList};
use wasmtime::StoreContextMut;

/// Bytes of message one call may hash: above the largest transaction a driver is
/// handed with the default `max_event_bytes=1M` (its events' JSON and the whole
/// transaction's), with room for what a driver wraps around it.
pub const MAX_MESSAGE: usize = 16 << 20;

/// Bytes of key one call may use (a webhook secret is tens of bytes).
pub const MAX_KEY: usize = 4096;

/// Defines `hmac-sha256` in the `mailpush:driver/host` instance. It needs nothing of the
/// store but the guest's memory, so it takes any store.
pub fn link<T: 'static>(host: &mut LinkerInstance<'_, T>) -> wasmtime::Result<()> {
    host.func_wrap(
        "hmac-sha256",
        |cx: StoreContextMut<'_, T>, (key, message): (WasmList<u8>, WasmList<u8>)| {
            let key = key.as_le_slice(&cx);
            let message = message.as_le_slice(&cx);
            Ok((hmac_sha256(key, message)?,))
        },
    )?;
    Ok(())
}

/// The MAC, or why the call may not have it.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> wasmtime::Result<Vec<u8>> {
    if message.len() > MAX_MESSAGE {
        wasmtime::bail!(
            "host.hmac-sha256 was given {} bytes of message, more than the {} MiB one call may hash",
            message.len(),
            MAX_MESSAGE >> 20
        );
    }
    if key.len() > MAX_KEY {
        wasmtime::bail!(
            "host.hmac-sha256 was given a key of {} bytes, more than the {MAX_KEY} one call may use",
            key.len()
        );
    }
    // Hmac::new_from_slice accepts a key of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .map_err(|e| wasmtime::format_err!("host.hmac-sha256: {e}"))?;
    mac.update(message);
    Ok(mac.finalize().into_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

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
