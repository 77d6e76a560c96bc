//! The AOT cache's integrity: each compiled artifact in `state_dir/wasm-cache` is
//! prefixed with an HMAC-SHA256, under a private per-cache-dir key (`cache.key`, mode
//! 0600), of its file name and its contents; a tampered, truncated, foreign or renamed
//! artifact (another component's, another tenant's snapshot put under this one's name)
//! fails verification and is recompiled — never loaded. A cache directory or key that
//! others could write (not owned by this user, or group- or world-writable) is not used
//! at all: a compiled artifact is native code.
//!
//! The cache is bounded: after each write, the least recently used artifacts (by
//! modification time; a hit refreshes it) beyond [`MAX_CACHE_BYTES`] are deleted, except
//! those this process has loaded. A deleted artifact is only compiled again when needed.

use std::collections::HashMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The cache's private signing key (created on first use, mode 0600). `None` if the
/// cache dir cannot be written, or others could write it or the key ([`trusted`]);
/// then the cache is not used.
pub fn cache_key(dir: &Path) -> Option<Vec<u8>> {
    static KEYS: OnceLock<Mutex<HashMap<PathBuf, Option<Vec<u8>>>>> = OnceLock::new();
    let keys = KEYS.get_or_init(Default::default);
    let mut keys = keys.lock();
    if let Some(k) = keys.get(dir) {
        return k.clone();
    }
    // (A refusal is remembered, not to warn at every load; an I/O failure is tried
    // again at the next load.)
    match open_key(dir) {
        Ok(key) => {
            keys.insert(dir.to_path_buf(), key.clone());
            key
        }
        Err(Retry) => None,
    }
}

/// [`open_key`] failed in a way worth trying again (a full disk).
struct Retry;

fn open_key(dir: &Path) -> Result<Option<Vec<u8>>, Retry> {
    let refused = |why: String| {
        tracing::warn!(cache = %dir.display(), "the AOT cache is not used (drivers compile at every start): {why}");
        Ok(None)
    };
    // Its parents as any other (the state_dir holds the hand-off folder mail users
    // reach), the cache itself for its owner only.
    let made = match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => std::fs::create_dir_all(parent),
        _ => Ok(()),
    }
    .and_then(
        |()| match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            other => other,
        },
    );
    if let Err(e) = made {
        tracing::warn!(cache = %dir.display(), "the AOT cache is not used for now: {e}");
        return Err(Retry);
    }
    if let Err(why) = trusted(dir, 0o022) {
        return refused(why);
    }
    let file = dir.join("cache.key");
    if !file.exists() {
        // Created once: written aside, then linked into place, which fails if another
        // process made one meanwhile (then that one is read). Where links are not
        // supported, renamed into place (a concurrent first start may then replace it:
        // the other's artifacts are compiled again).
        let mut k = Vec::with_capacity(32);
        k.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        k.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        let aside = dir.join(format!("cache.key.{}.new", std::process::id()));
        let _ = std::fs::remove_file(&aside);
        if let Err(e) = write_atomically(&aside, &k, true) {
            tracing::warn!(cache = %dir.display(), "the AOT cache is not used for now: cannot write its key: {e}");
            return Err(Retry);
        }
        let placed = match std::fs::hard_link(&aside, &file) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(_) if !file.exists() => std::fs::rename(&aside, &file),
            other => other,
        };
        let _ = std::fs::remove_file(&aside);
        if let Err(e) = placed {
            tracing::warn!(cache = %dir.display(), "the AOT cache is not used for now: cannot place its key: {e}");
            return Err(Retry);
        }
    }
    if let Err(why) = trusted(&file, 0o077) {
        return refused(why);
    }
    match std::fs::read(&file) {
        Ok(k) if k.len() == 32 => Ok(Some(k)),
        _ => refused(format!(
            "{} is not a 32-byte key (remove it to have a new one made)",
            file.display()
        )),
    }
}

/// Whether `path` is owned by this process's user and is not a symlink; permission bits
/// in `forbidden` (group/world write for a directory; any group/world access for the
/// key) are taken away (it is this user's: a umask such as systemd's `UMask=0007` made
/// it so), and if that fails, it is not trusted.
fn trusted(path: &Path, forbidden: u32) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: geteuid only reads the process's credentials.
    let me = unsafe { libc::geteuid() };
    if meta.file_type().is_symlink() {
        return Err(format!("{} is a symlink", path.display()));
    }
    if meta.uid() != me {
        return Err(format!(
            "{} is owned by uid {}, not by mailpush's (uid {me})",
            path.display(),
            meta.uid()
        ));
    }
    if meta.mode() & forbidden != 0 {
        let narrowed = std::fs::Permissions::from_mode(meta.mode() & 0o7777 & !forbidden);
        if let Err(e) = std::fs::set_permissions(path, narrowed) {
            return Err(format!(
                "{} has mode {:o}: others may write it, and it cannot be changed ({e}); chmod go-w it (go-rwx for cache.key)",
                path.display(),
                meta.mode() & 0o7777
            ));
        }
    }
    Ok(())
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

/// The HMAC of `body` under `key` (for a name; [`sign_artifact`] for an artifact).
pub fn sign(key: &[u8], body: &[u8]) -> Vec<u8> {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

/// The tag of the artifact stored as `name` (its file name) with `body`: both are
/// signed, so an artifact renamed to another's name does not verify.
pub fn sign_artifact(key: &[u8], name: &str, body: &[u8]) -> Vec<u8> {
    artifact_mac(key, name, body)
        .finalize()
        .into_bytes()
        .to_vec()
}

/// What names a snapshot's artifact or record: `SHA256-snapKEY-ENGINE.cwasm` (or
/// `.declined`).
pub const SNAPSHOT_MARK: &str = "-snap";

/// Whether a cache file name (or its stem) is a snapshot's.
pub fn is_snapshot(name: &str) -> bool {
    name.contains(SNAPSHOT_MARK)
}

/// The artifacts' signing scheme, part of their names (`engine.rs`, `engine_key`).
pub const ARTIFACT_SCHEME: u32 = 2;

fn artifact_mac(key: &[u8], name: &str, body: &[u8]) -> HmacSha256 {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(format!("mailpush-artifact-{ARTIFACT_SCHEME}\0").as_bytes());
    mac.update(&(name.len() as u64).to_le_bytes());
    mac.update(name.as_bytes());
    mac.update(body);
    mac
}

/// The body of the artifact stored as `name` if its tag verifies.
pub fn verify<'a>(key: &[u8], name: &str, stored: &'a [u8]) -> Option<&'a [u8]> {
    if stored.len() < 32 {
        return None;
    }
    let (tag, body) = stored.split_at(32);
    artifact_mac(key, name, body)
        .verify_slice(tag)
        .ok()
        .map(|_| body)
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
                    || (is_snapshot(stem) && snapshots.is_some_and(|s| !s.contains(&name)))
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

    /// An artifact put under another artifact's name (another tenant's snapshot, another
    /// component) does not verify; under its own name it does.
    #[test]
    fn an_artifact_verifies_only_under_its_own_name() {
        let key = [7u8; 32];
        let body = b"compiled code";
        let mut stored = sign_artifact(&key, "aaaa-snap01-e.cwasm", body);
        stored.extend_from_slice(body);
        assert_eq!(
            verify(&key, "aaaa-snap01-e.cwasm", &stored),
            Some(&body[..])
        );
        assert_eq!(verify(&key, "bbbb-snap01-e.cwasm", &stored), None);
        assert_eq!(verify(&key, "aaaa-snap02-e.cwasm", &stored), None);
        assert_eq!(verify(&[8u8; 32], "aaaa-snap01-e.cwasm", &stored), None);
    }

    /// The key is made once, readable by its owner only. A cache directory or key of
    /// this user that others may write (a umask such as `UMask=0007`) is narrowed and
    /// used; one of another user, or a symlinked key, keeps the cache from being used.
    #[test]
    fn a_cache_others_may_write_is_narrowed_or_not_used() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let open = |d: &Path| match open_key(d) {
            Ok(k) => k,
            Err(Retry) => panic!("an I/O failure"),
        };
        let dir = tempfile::tempdir().unwrap();
        let fine = dir.path().join("fine");
        let key = open(&fine).expect("a new cache dir is used");
        assert_eq!(open(&fine), Some(key.clone()), "the key is made once");
        assert_eq!(mode(&fine) & 0o077, 0, "made for its owner only");
        assert_eq!(mode(&fine.join("cache.key")), 0o600);
        std::fs::set_permissions(&fine, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::set_permissions(
            fine.join("cache.key"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        assert_eq!(open(&fine), Some(key), "narrowed, and used");
        assert_eq!(mode(&fine), 0o755);
        assert_eq!(mode(&fine.join("cache.key")), 0o600);
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(fine.join("cache.key"), elsewhere.join("cache.key")).unwrap();
        assert_eq!(open(&elsewhere), None, "a symlinked key");
        // SAFETY: geteuid only reads the process's credentials.
        if unsafe { libc::geteuid() } == 0 {
            let theirs = dir.path().join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(4242), None).unwrap();
            assert_eq!(open(&theirs), None, "another user's directory");
        }
    }

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
