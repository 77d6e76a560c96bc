//! The AOT cache's integrity: each compiled artifact in `state_dir/wasm-cache` is
//! prefixed with an HMAC-SHA256 under a private per-cache-dir key (`cache.key`, mode
//! 0600); a tampered, truncated or foreign artifact fails verification and is
//! recompiled — never loaded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The cache's private signing key (created on first use, mode 0600). `None` if the
/// cache dir cannot be written; then the cache is not used.
pub fn cache_key(dir: &Path) -> Option<Vec<u8>> {
    static KEYS: OnceLock<Mutex<HashMap<PathBuf, Vec<u8>>>> = OnceLock::new();
    let keys = KEYS.get_or_init(Default::default);
    let mut keys = keys.lock();
    if let Some(k) = keys.get(dir) {
        return Some(k.clone());
    }
    let file = dir.join("cache.key");
    let key = match std::fs::read(&file) {
        Ok(k) if k.len() == 32 => k,
        _ => {
            std::fs::create_dir_all(dir).ok()?;
            let mut k = Vec::with_capacity(32);
            k.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
            k.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
            write_private(&file, &k).ok()?;
            k
        }
    };
    keys.insert(dir.to_path_buf(), key.clone());
    Some(key)
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(data)
}

pub fn sign(key: &[u8], body: &[u8]) -> Vec<u8> {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

/// The artifact body if its tag verifies.
pub fn verify<'a>(key: &[u8], stored: &'a [u8]) -> Option<&'a [u8]> {
    if stored.len() < 32 {
        return None;
    }
    let (tag, body) = stored.split_at(32);
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).ok()?;
    mac.update(body);
    mac.verify_slice(tag).ok().map(|_| body)
}
