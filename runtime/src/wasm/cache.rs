//! The AOT cache's integrity: each compiled artifact in `state_dir/wasm-cache` is
//! prefixed with an HMAC-SHA256 under a private per-cache-dir key (`cache.key`, mode
//! 0600); a tampered, truncated or foreign artifact fails verification and is
//! recompiled — never loaded.
//!
//! The cache is bounded: after each write, the least recently used artifacts (by
//! modification time; a hit refreshes it) beyond [`MAX_CACHE_BYTES`] are deleted, except
//! those this process has loaded. A deleted artifact is only compiled again when needed.

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
            write_atomically(&file, &k, true).ok()?;
            k
        }
    };
    keys.insert(dir.to_path_buf(), key.clone());
    Some(key)
}

/// Writes `data` to `path` through a temporary file of its own (created new, readable
/// by the owner only if `private`) renamed over it: a reader never sees half a file,
/// and two writers never share a temporary file.
pub fn write_atomically(path: &Path, data: &[u8], private: bool) -> std::io::Result<()> {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(
        "{name}.{}-{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    let written = opts
        .open(&tmp)
        .and_then(|mut f| f.write_all(data))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
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

/// The most bytes of compiled artifacts a cache dir keeps (JavaScript and Python
/// components take 40–50 MB each).
pub const MAX_CACHE_BYTES: u64 = 2 << 30;

/// Marks an artifact as just used (the eviction order).
pub fn touch(artifact: &Path) {
    if let Ok(f) = std::fs::File::options().append(true).open(artifact) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

/// Deletes the least recently used `*.cwasm` artifacts of `dir` until the rest fit in
/// `max` bytes, never one named in `keep`; returns the names deleted.
pub fn prune(dir: &Path, max: u64, keep: &std::collections::HashSet<String>) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut artifacts: Vec<(std::time::SystemTime, u64, String)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let meta = e.metadata().ok()?;
            name.ends_with(".cwasm").then(|| {
                (
                    meta.modified().unwrap_or(std::time::UNIX_EPOCH),
                    meta.len(),
                    name,
                )
            })
        })
        .collect();
    let mut total: u64 = artifacts.iter().map(|a| a.1).sum();
    artifacts.sort();
    let mut deleted = Vec::new();
    for (_, len, name) in artifacts {
        if total <= max {
            break;
        }
        if keep.contains(&name) {
            continue;
        }
        if std::fs::remove_file(dir.join(&name)).is_ok() {
            total -= len;
            deleted.push(name);
        }
    }
    deleted
}

/// Deletes the `*.cwasm` artifacts of `dir` compiled from none of the components whose
/// sha256 is in `used` (artifacts are named `SHA256-ENGINE.cwasm`, snapshots
/// `SHA256-snapKEY-ENGINE.cwasm`, beside `….declined` records), the snapshots and
/// records of used components that are not in `snapshots` if given (made for arguments
/// no driver has any more), and `*.tmp` files left by writes interrupted over an hour
/// ago; returns the names deleted and the bytes freed.
/// `mailpush check --prune-cache` passes the components of the config it checked, and
/// the snapshot artifacts and records its drivers loaded.
pub fn prune_unused(
    dir: &Path,
    used: &std::collections::HashSet<String>,
    snapshots: Option<&std::collections::HashSet<String>>,
) -> (Vec<String>, u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (Vec::new(), 0);
    };
    let mut deleted = Vec::new();
    let mut freed = 0;
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let unused = match name
            .strip_suffix(".cwasm")
            .or_else(|| name.strip_suffix(".declined"))
        {
            Some(stem) => {
                !used.contains(stem.split('-').next().unwrap_or_default())
                    || (stem.contains("-snap") && snapshots.is_some_and(|s| !s.contains(&name)))
            }
            None => {
                name.ends_with(".tmp")
                    && e.metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age > std::time::Duration::from_secs(3600))
            }
        };
        if !unused {
            continue;
        }
        let len = e.metadata().map(|m| m.len()).unwrap_or(0);
        if std::fs::remove_file(e.path()).is_ok() {
            freed += len;
            deleted.push(name);
        }
    }
    deleted.sort();
    (deleted, freed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_deletes_the_least_recently_used_but_never_what_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = std::time::SystemTime::now() - std::time::Duration::from_secs(1000);
        for (i, name) in ["a.cwasm", "b.cwasm", "c.cwasm", "d.cwasm"]
            .iter()
            .enumerate()
        {
            let p = dir.path().join(name);
            std::fs::write(&p, vec![0u8; 100]).unwrap();
            let f = std::fs::File::options().append(true).open(&p).unwrap();
            f.set_modified(t0 + std::time::Duration::from_secs(i as u64 * 10))
                .unwrap();
        }
        std::fs::write(dir.path().join("cache.key"), [0u8; 32]).unwrap();
        let keep: std::collections::HashSet<String> = ["a.cwasm".to_string()].into();
        // 400 bytes, at most 250: a (oldest) is in use, so b and c go.
        let deleted = prune(dir.path(), 250, &keep);
        assert_eq!(deleted, ["b.cwasm", "c.cwasm"]);
        assert!(dir.path().join("a.cwasm").exists());
        assert!(dir.path().join("d.cwasm").exists());
        assert!(dir.path().join("cache.key").exists());
        // A touched artifact becomes the most recent.
        touch(&dir.path().join("a.cwasm"));
        let deleted = prune(dir.path(), 100, &Default::default());
        assert_eq!(deleted, ["d.cwasm"]);
    }

    #[test]
    fn prune_unused_keeps_only_the_artifacts_of_used_components() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "aaaa-0123.cwasm",
            "aaaa-4567.cwasm",
            "aaaa-snap01-0123.cwasm",
            "aaaa-snap02-0123.declined",
            "aaaa-snap03-0123.cwasm",
            "aaaa-snap04-0123.declined",
            "aaaa-functions-0123.cwasm",
            "bbbb-0123.cwasm",
            "bbbb-snap01-0123.declined",
            "cccc-0123.tmp",
            "cache.key",
        ] {
            std::fs::write(dir.path().join(name), [0u8; 10]).unwrap();
        }
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
        std::fs::File::options()
            .append(true)
            .open(dir.path().join("cccc-0123.tmp"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        // A write in progress.
        std::fs::write(dir.path().join("dddd-0123.tmp"), [0u8; 10]).unwrap();
        let used: std::collections::HashSet<String> = ["aaaa".to_string()].into();
        // The config's drivers loaded snapshot 01 and found record 02; 03 and 04 were
        // made for arguments no driver has any more.
        let snapshots: std::collections::HashSet<String> = [
            "aaaa-snap01-0123.cwasm".to_string(),
            "aaaa-snap02-0123.declined".to_string(),
        ]
        .into();
        let (deleted, freed) = prune_unused(dir.path(), &used, Some(&snapshots));
        assert_eq!(
            deleted,
            [
                "aaaa-snap03-0123.cwasm",
                "aaaa-snap04-0123.declined",
                "bbbb-0123.cwasm",
                "bbbb-snap01-0123.declined",
                "cccc-0123.tmp"
            ]
        );
        assert_eq!(freed, 50);
        // Without the set (a tenant handler failed to load), a used component's
        // snapshots all stay.
        for name in ["aaaa-snap03-0123.cwasm", "aaaa-snap04-0123.declined"] {
            std::fs::write(dir.path().join(name), [0u8; 10]).unwrap();
        }
        assert!(prune_unused(dir.path(), &used, None).0.is_empty());
        // Both engine flavours of a used component stay, the snapshots its drivers use
        // and what it records about them, its functions, and the key.
        for kept in [
            "aaaa-0123.cwasm",
            "aaaa-4567.cwasm",
            "aaaa-snap01-0123.cwasm",
            "aaaa-snap02-0123.declined",
            "aaaa-functions-0123.cwasm",
            "cache.key",
            "dddd-0123.tmp",
        ] {
            assert!(dir.path().join(kept).exists(), "{kept}");
        }
    }
}
