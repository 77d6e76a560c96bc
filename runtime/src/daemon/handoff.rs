//! The hand-off directory (`handoff_dir`): how Dovecot gives mailpush its transactions
//! without ever waiting for it, and without losing one while mailpush is stopped,
//! restarting or stalled.
//!
//! The forwarder (`examples/dovecot/mailpush.lua`), running in Dovecot's mail process as
//! the mail user, writes each transaction (canonical JSON, with an `id`) to a hidden
//! temporary file in the directory and renames it to `NAME.json`: a local write and a
//! rename, microseconds, whatever mailpush is doing. `mailpush run` reads the published
//! files oldest first (by modification time, then name), persists them through the one
//! accept path ([`crate::pipeline::Dispatcher::accept`]) and only then removes them —
//! files written while it was stopped are read at start, before anything newer of the
//! same user. A crash between persisting and removing reads a file again: its `id` makes
//! the spool store it once while it is still there (at-least-once otherwise).
//!
//! Permissions: mailpush owns the directory and keeps it at mode 1733 (anyone may create
//! files, nobody else may list them or remove another's) with a default ACL that lets
//! mailpush read whatever a mail user writes there, whatever Dovecot's umask. Files whose
//! owner is not among `handoff_owners` (when set), symlinks, oversized and malformed
//! files are renamed `NAME.json.rejected` and reported. A file mailpush cannot read
//! stays, is reported once and is passed over for a minute at a time, so that any number
//! of them never hold back the readable ones. Bytes that are not UTF-8 (a raw 8-bit
//! header passed on as it was) become U+FFFD. mailpush refuses a directory in which it
//! cannot remove files (each would be read and delivered again); a file that still
//! cannot be removed, or set aside, is reported once and passed over until a restart.
//! A batch holds at most [`BATCH`] files and [`BATCH_BYTES`] (less with a small
//! `spool_quota`).

use std::collections::HashSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailpush_core::Transaction;
use tokio::sync::watch;

use super::Daemon;
use crate::logging::Tally;
use crate::pipeline::{Backpressure, Refused};
use crate::spool::SpoolError;

/// How often an empty directory is looked at: the most a hand-off waits for mailpush
/// when nothing else is queued.
pub const POLL: Duration = Duration::from_millis(20);

/// Most files read and persisted in one batch (one group commit).
const BATCH: usize = 256;

/// Most bytes of files read into one batch (a file that would take it past them waits
/// for the next batch; a batch of one file may be larger, up to `max_body`): what the
/// hand-off holds in memory, whatever `max_body` is.
pub const BATCH_BYTES: u64 = 16 << 20;

/// Mode of the directory: sticky, writable and searchable by all, listable by mailpush only.
const DIR_MODE: u32 = 0o1733;

/// How long a file that could not be read is passed over before it is tried again (so
/// that files nobody can read never fill the batches the readable ones need).
const UNREADABLE_RETRY: Duration = Duration::from_secs(60);

/// The most unreadable files remembered to pass over.
const UNREADABLE_KEPT: usize = 100_000;

/// How often an idle directory whose modification time has not changed is listed all
/// the same (files passed over for a while are tried again).
const RELIST_EVERY: Duration = Duration::from_secs(5);

/// How old a directory's modification time must be before an unchanged one is trusted
/// to mean "nothing new": a change within the same timestamp granule would not show
/// (2 s: the coarsest granularity of common filesystems).
const SETTLED: Duration = Duration::from_secs(2);

/// An idle directory: its modification time when it was last listed and found to have
/// nothing to read, and when that was. While the time does not change, nobody created,
/// renamed or removed a file in it, and it is not listed again (a directory with
/// thousands of `.rejected` files would otherwise be read 50 times a second).
struct Idle {
    mtime: (i64, i64),
    listed: Instant,
}

impl Idle {
    /// The directory's modification time, if it is old enough to be trusted.
    fn settled_mtime(dir: &Path) -> Option<(i64, i64)> {
        let meta = std::fs::metadata(dir).ok()?;
        let mtime = (meta.mtime(), meta.mtime_nsec());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?;
        let age_ns = i128::from(now.as_secs() as i64 - mtime.0) * 1_000_000_000
            + i128::from(i64::from(now.subsec_nanos()) - mtime.1);
        (age_ns > SETTLED.as_nanos() as i128).then_some(mtime)
    }
}

/// A file's modification time `(seconds, nanoseconds)` as a time.
fn handed_off((secs, nanos): (i64, i64)) -> std::time::SystemTime {
    let since_epoch = Duration::new(
        u64::try_from(secs).unwrap_or(0),
        u32::try_from(nanos).unwrap_or(0).min(999_999_999),
    );
    std::time::UNIX_EPOCH + since_epoch
}

/// Who may hand off: uids, or anyone.
#[derive(Debug, Clone)]
pub enum Owners {
    Any,
    Uids(HashSet<u32>),
}

impl Owners {
    /// Resolves `handoff_owners` (user names or uids).
    pub fn resolve(names: &[String]) -> Result<Owners, String> {
        if names.is_empty() {
            return Ok(Owners::Any);
        }
        let mut uids = HashSet::new();
        for n in names {
            let uid = match n.parse::<u32>() {
                Ok(uid) => uid,
                Err(_) => uid_of(n).ok_or_else(|| {
                    format!("handoff_owners: no user `{n}` on this system (name or uid expected)")
                })?,
            };
            uids.insert(uid);
        }
        Ok(Owners::Uids(uids))
    }

    fn allows(&self, uid: u32) -> bool {
        match self {
            Owners::Any => true,
            Owners::Uids(u) => u.contains(&uid),
        }
    }
}

/// The uid of a user name (getpwnam_r).
fn uid_of(name: &str) -> Option<u32> {
    let cname = std::ffi::CString::new(name).ok()?;
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer refers to memory we own for the duration of the call; the
    // result points into `pwd`/`buf`, read before they go out of scope.
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some(pwd.pw_uid)
}

/// Creates the directory if needed and sets its mode and default ACL (when mailpush
/// owns it). Returns warnings for the log. Refuses a directory in which mailpush could
/// not remove what it has read: every hand-off would be read, and delivered, again.
pub fn prepare(dir: &Path) -> Result<Vec<String>, String> {
    // SAFETY: geteuid has no preconditions.
    prepare_as(dir, unsafe { libc::geteuid() })
}

/// [`prepare`] for a mailpush running as uid `me`.
fn prepare_as(dir: &Path, me: u32) -> Result<Vec<String>, String> {
    let mut warnings = Vec::new();
    if !dir.exists() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create handoff_dir {}: {e}", dir.display()))?;
    }
    let meta = std::fs::metadata(dir)
        .map_err(|e| format!("cannot read handoff_dir {}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("handoff_dir {} is not a directory", dir.display()));
    }
    probe_removal(dir)?;
    // In a sticky directory only a file's owner, the directory's and root may remove it.
    if meta.uid() != me && me != 0 && meta.mode() & 0o1000 != 0 {
        return Err(format!(
            "handoff_dir {} is sticky (mode {:o}) and owned by uid {}, not by mailpush (uid {me}): mailpush could not remove the files mail users write there, and would read and deliver each again. Let mailpush create the directory (remove it, or give it to mailpush's user)",
            dir.display(),
            meta.mode() & 0o7777,
            meta.uid()
        ));
    }
    if meta.uid() != me {
        warnings.push(format!(
            "handoff_dir {} is owned by uid {}, not by mailpush (uid {me}): mailpush cannot set its mode and ACL; make sure the mail processes can create files there and mailpush can read and remove them",
            dir.display(),
            meta.uid()
        ));
        return Ok(warnings);
    }
    if meta.mode() & 0o7777 != DIR_MODE {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))
            .map_err(|e| format!("cannot set the mode of handoff_dir {}: {e}", dir.display()))?;
    }
    if let Err(e) = set_default_acl(dir, me) {
        warnings.push(format!(
            "cannot set a default ACL on handoff_dir {} ({e}): files Dovecot writes there are readable by mailpush only if Dovecot's umask lets them be (mount the filesystem with ACL support)",
            dir.display()
        ));
    }
    Ok(warnings)
}

/// Creates and removes a file in `dir`: mailpush must remove each hand-off it stored
/// (a read-only directory, as under systemd's `ProtectSystem=strict` without
/// `ReadWritePaths`, would have each read and delivered again).
fn probe_removal(dir: &Path) -> Result<(), String> {
    let refused = |e: std::io::Error| {
        format!(
            "mailpush cannot create and remove files in handoff_dir {} ({e}): it removes each hand-off once stored, and would otherwise read and deliver it again. Give mailpush write access to it (systemd: ReadWritePaths=)",
            dir.display()
        )
    };
    // A name of its own (two instances in containers may both be PID 1; a crash may
    // have left one behind): a name taken is tried again with another.
    let mut attempt = 0u32;
    let probe = loop {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let probe = dir.join(format!(
            ".mailpush-probe-{}-{nanos}-{attempt}",
            std::process::id()
        ));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
        {
            Ok(_) => break probe,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 3 => {
                attempt += 1;
            }
            Err(e) => return Err(refused(e)),
        }
    };
    std::fs::remove_file(&probe).map_err(refused)
}

/// Sets the directory's default ACL: owner rw, `reader` r, group and others nothing —
/// so every file created in it is readable by `reader`, whatever the creator's umask.
fn set_default_acl(dir: &Path, reader: u32) -> std::io::Result<()> {
    // The `system.posix_acl_default` value (Linux's posix_acl_xattr format): version
    // 2, then entries (tag u16, perm u16, id u32), little-endian, sorted by tag.
    const UNDEFINED: u32 = u32::MAX;
    let entries: [(u16, u16, u32); 5] = [
        (0x01, 6, UNDEFINED), // ACL_USER_OBJ rw
        (0x02, 4, reader),    // ACL_USER reader r
        (0x04, 0, UNDEFINED), // ACL_GROUP_OBJ -
        (0x10, 4, UNDEFINED), // ACL_MASK r
        (0x20, 0, UNDEFINED), // ACL_OTHER -
    ];
    let mut value = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        value.extend_from_slice(&tag.to_le_bytes());
        value.extend_from_slice(&perm.to_le_bytes());
        value.extend_from_slice(&id.to_le_bytes());
    }
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::other("path contains NUL"))?;
    let name = c"system.posix_acl_default";
    // SAFETY: both strings are NUL-terminated and `value` outlives the call.
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// One file ready to be read.
struct Found {
    path: PathBuf,
    modified: (i64, i64),
    name: String,
}

/// What one look at the directory gave.
#[derive(Default)]
struct Batch {
    /// Parsed transactions and their files, oldest first.
    txns: Vec<Transaction>,
    found: Vec<Found>,
    /// The bytes of those files.
    bytes: u64,
    /// Files set aside (or that could not be), with why.
    rejected: Vec<Rejected>,
    /// Files that could not be read (left in place), with why.
    unreadable: Vec<(String, String)>,
}

/// A file refused: renamed `NAME.json.rejected`, or left where it is when even that
/// failed (`kept`: why), in which case it is passed over from then on.
#[derive(Debug)]
struct Rejected {
    name: String,
    why: String,
    kept: Option<String>,
}

impl Rejected {
    fn set_aside(path: &Path, name: String, why: String) -> Rejected {
        let mut to = path.as_os_str().to_owned();
        to.push(".rejected");
        let kept = match std::fs::rename(path, to) {
            Ok(()) => None,
            // Gone meanwhile: nothing is left to pass over.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => Some(e.to_string()),
        };
        Rejected { name, why, kept }
    }
}

/// The oldest published files of one look at the directory, still to be read, oldest
/// first: at most [`LISTED`] are kept, so that a backlog is listed once per that many
/// files rather than once per batch.
type Listing = std::collections::VecDeque<Found>;

/// The most files one listing keeps ([`Listing`]).
const LISTED: usize = 16 * BATCH;

/// Reads up to [`BATCH`] of the oldest published files, passing over those in `skip`
/// (unreadable a moment ago). Bytes that are not UTF-8 (a raw 8-bit header Dovecot
/// passed on) become U+FFFD: the transaction is delivered, not set aside.
#[cfg(test)]
fn scan(
    dir: &Path,
    owners: &Owners,
    max_size: u64,
    skip: &HashSet<String>,
) -> std::io::Result<Batch> {
    scan_reading(dir, owners, max_size, skip, |p| {
        read_published(p, owners, max_size)
    })
}

/// [`scan`], reading each file with `read`.
#[cfg(test)]
fn scan_reading(
    dir: &Path,
    owners: &Owners,
    max_size: u64,
    skip: &HashSet<String>,
    read: impl Fn(&Path) -> Result<Vec<u8>, Unread>,
) -> std::io::Result<Batch> {
    let (mut listing, rejected) = list(dir, owners, max_size, skip)?;
    let limits = Limits {
        max_file: max_size,
        max_stored: u64::MAX,
        batch_bytes: BATCH_BYTES,
    };
    let mut batch = read_batch(&mut listing, limits, read);
    batch.rejected.splice(0..0, rejected);
    Ok(batch)
}

/// Lists the published files, oldest first (by modification time, then name), passing
/// over those in `skip`; sets aside what may not be read (not a regular file, not of
/// `owners`, larger than `max_size`), returned with why.
fn list(
    dir: &Path,
    owners: &Owners,
    max_size: u64,
    skip: &HashSet<String>,
) -> std::io::Result<(Listing, Vec<Rejected>)> {
    let mut found = Vec::new();
    let mut rejected = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !name.ends_with(".json") || skip.contains(&name) {
            continue;
        }
        let path = entry.path();
        // Not followed: a symlink is never read.
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if let Some(why) = refusal(&meta, owners, max_size) {
            rejected.push(Rejected::set_aside(&path, name, why));
            continue;
        }
        found.push(Found {
            path,
            modified: (meta.mtime(), meta.mtime_nsec()),
            name,
        });
    }
    let order = |a: &Found, b: &Found| a.modified.cmp(&b.modified).then(a.name.cmp(&b.name));
    if found.len() > LISTED {
        found.select_nth_unstable_by(LISTED, order);
        found.truncate(LISTED);
    }
    found.sort_by(order);
    Ok((found.into(), rejected))
}

/// Reads up to [`BATCH`] files of at most `limits.batch_bytes` together (a batch of
/// one file may be larger), off the front of `listing` with `read`: a file that would
/// take a batch past its bytes goes back to the front of the listing, for the next
/// batch. Files that cannot be read do not count against the batch (up to a bound on
/// the attempts of one batch); files gone meanwhile (read already) are passed over. A
/// transaction whose stored form is larger than `limits.max_stored` (bytes that are not
/// UTF-8 take three bytes each once stored, control characters six) is set aside: the
/// spool could never take it.
fn read_batch(
    listing: &mut Listing,
    limits: Limits,
    read: impl Fn(&Path) -> Result<Vec<u8>, Unread>,
) -> Batch {
    let mut batch = Batch::default();
    let mut tried = 0;
    let mut bytes_read = 0u64;
    while batch.txns.len() < BATCH && tried < 4 * BATCH && bytes_read < limits.batch_bytes {
        let Some(f) = listing.pop_front() else {
            break;
        };
        tried += 1;
        let text = match read(&f.path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(t) => t,
                Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
            },
            Err(Unread::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(Unread::Io(e)) => {
                batch.unreadable.push((f.name, e.to_string()));
                continue;
            }
            Err(Unread::Refused(why)) => {
                batch
                    .rejected
                    .push(Rejected::set_aside(&f.path, f.name, why));
                continue;
            }
        };
        if !batch.txns.is_empty() && bytes_read + text.len() as u64 > limits.batch_bytes {
            listing.push_front(f);
            break;
        }
        bytes_read += text.len() as u64;
        match Transaction::from_json(text.trim_end()) {
            Ok(t) => {
                // (Stored, the text grows by at most six times.)
                let stored = if (text.len() as u64).saturating_mul(6) > limits.max_stored {
                    t.to_json().len() as u64
                } else {
                    0
                };
                if stored > limits.max_stored {
                    batch.rejected.push(Rejected::set_aside(
                        &f.path,
                        f.name,
                        format!(
                            "its transaction takes {stored} bytes as stored (bytes that are not UTF-8, or control characters, grow when encoded), more than the spool can hold ({}: spool_quota, or NATS max_payload in cluster mode)",
                            limits.max_stored
                        ),
                    ));
                    continue;
                }
                batch.txns.push(t);
                batch.bytes += text.len() as u64;
                batch.found.push(f);
            }
            Err(e) => {
                batch
                    .rejected
                    .push(Rejected::set_aside(&f.path, f.name, e.to_string()));
            }
        }
    }
    batch
}

/// Why a file (its metadata, not followed) may not be read: not a regular file, not of
/// `owners`, larger than `max_size`. Checked when it is listed, and again on the file
/// opened ([`read_published`]).
fn refusal(meta: &std::fs::Metadata, owners: &Owners, max_size: u64) -> Option<String> {
    if !meta.file_type().is_file() {
        Some("not a regular file".to_string())
    } else if !owners.allows(meta.uid()) {
        Some(format!(
            "owned by uid {}, not one of handoff_owners",
            meta.uid()
        ))
    } else if meta.len() > max_size {
        Some(format!(
            "more than max_body ({max_size}) bytes, or than the spool can hold (spool_quota, or NATS max_payload in cluster mode) where that is smaller: {}",
            meta.len()
        ))
    } else {
        None
    }
}

/// Why a listed file was not read.
enum Unread {
    /// It could not be read (it stays, and is tried again).
    Io(std::io::Error),
    /// It may not be read (set aside): what was listed changed since (a symlink, not a
    /// regular file, not of `handoff_owners`, too large).
    Refused(String),
}

/// Reads a listed file, checking again what [`list`] checked, on the file opened — a
/// file may be replaced between the listing and the read (by a symlink to `/dev/zero`,
/// a FIFO, a bigger file): never follows a symlink, never blocks on a FIFO, never reads
/// more than `max_size`.
fn read_published(path: &Path, owners: &Owners, max_size: u64) -> Result<Vec<u8>, Unread> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => Unread::Refused("a symlink (replaced since it was listed)".into()),
            _ => Unread::Io(e),
        })?;
    let meta = file.metadata().map_err(Unread::Io)?;
    if let Some(why) = refusal(&meta, owners, max_size) {
        return Err(Unread::Refused(why));
    }
    let mut bytes = Vec::with_capacity(meta.len().min(max_size) as usize);
    file.take(max_size + 1)
        .read_to_end(&mut bytes)
        .map_err(Unread::Io)?;
    if bytes.len() as u64 > max_size {
        return Err(Unread::Refused(format!(
            "more than max_body ({max_size}) bytes, or than the spool can hold (spool_quota, or NATS max_payload in cluster mode) where that is smaller"
        )));
    }
    Ok(bytes)
}

/// How much the hand-off reads: the largest file, and the bytes of one batch.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `max_body`, or the spool's quota where smaller (such a file could never be stored).
    pub max_file: u64,
    /// The spool's quota (`u64::MAX`: none): a transaction larger than this once stored
    /// (bytes that are not UTF-8 grow when encoded) could never be stored.
    pub max_stored: u64,
    /// [`BATCH_BYTES`], or a quarter of the spool's quota where smaller. A batch of one
    /// file may be larger (up to `max_file`); an empty spool takes either. A batch a
    /// spool with less room refuses is tried again with half its bytes, down to one
    /// file, and the limit grows back by doubling as batches are stored.
    pub batch_bytes: u64,
}

impl Limits {
    /// These limits, with what one transaction may take as stored at most `most` (cluster
    /// mode: NATS's `max_payload`); the batches stay as large.
    pub fn bounded_by(self, most: u64) -> Limits {
        Limits {
            max_file: self.max_file.min(most),
            max_stored: self.max_stored.min(most),
            ..self
        }
    }

    /// The limits for `max_body` and a spool that holds at most `quota` bytes (its
    /// `spool_quota`; in cluster mode NATS's `max_payload`, the most one transaction may
    /// take; `None`: no bound, without a spool).
    pub fn new(max_body: usize, quota: Option<u64>) -> Limits {
        let quota = quota.unwrap_or(u64::MAX);
        Limits {
            max_file: (max_body as u64).min(quota),
            max_stored: quota,
            batch_bytes: BATCH_BYTES.min(quota / 4).max(1),
        }
    }
}

/// Reads the directory until `stop` turns true: every published file is persisted
/// (oldest first), then removed.
pub async fn consume(
    daemon: Arc<Daemon>,
    dir: PathBuf,
    owners: Owners,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let max_size = limits.max_file;
    // Each problem logged at most once per 10 s, with how many went unlogged.
    let (problems, refusals, set_aside, kept_reports) = (
        Tally::default(),
        Tally::default(),
        Tally::default(),
        Tally::default(),
    );
    let mut complained: HashSet<String> = HashSet::new();
    // Files that could not be read, until when they are passed over.
    let mut unreadable: std::collections::HashMap<String, Instant> = Default::default();
    // Files stored but not removed, or refused but not set aside: passed over for good
    // (each would otherwise be read again at once, and a stored one delivered again once
    // its transaction has left the spool).
    let mut stuck: HashSet<String> = HashSet::new();
    let mut listing = Listing::new();
    let mut idle: Option<Idle> = None;
    // Half the bytes of a batch the spool refused for its size, down to one file;
    // doubled back up to `limits.batch_bytes` by each batch stored.
    let mut batch_bytes = limits.batch_bytes;
    // Files set aside after a batch was refused, reported with the next batch's.
    let mut refused_files: Vec<Rejected> = Vec::new();
    loop {
        if *stop.borrow() {
            return;
        }
        let now = Instant::now();
        unreadable.retain(|_, until| *until > now);
        let skip: HashSet<String> = if listing.is_empty() {
            unreadable.keys().chain(stuck.iter()).cloned().collect()
        } else {
            HashSet::new()
        };
        let (d, o) = (dir.clone(), owners.clone());
        let limits_now = Limits {
            batch_bytes,
            ..limits
        };
        let mut rest = std::mem::take(&mut listing);
        let was_idle = idle.take();
        // The rest of the last listing first; a new one once it is read.
        let read = tokio::task::spawn_blocking(move || {
            let mut rejected = Vec::new();
            let mut idle = None;
            if rest.is_empty() {
                let mtime = Idle::settled_mtime(&d);
                if let Some(i) =
                    was_idle.filter(|i| Some(i.mtime) == mtime && i.listed.elapsed() < RELIST_EVERY)
                {
                    return Ok((Batch::default(), rest, Some(i)));
                }
                (rest, rejected) = list(&d, &o, max_size, &skip)?;
                if rest.is_empty() && rejected.is_empty() {
                    idle = mtime.map(|mtime| Idle {
                        mtime,
                        listed: Instant::now(),
                    });
                }
            }
            let mut batch = read_batch(&mut rest, limits_now, |p| read_published(p, &o, max_size));
            batch.rejected.splice(0..0, rejected);
            Ok::<_, std::io::Error>((batch, rest, idle))
        })
        .await;
        let mut batch = match read {
            Ok(Ok((b, rest, i))) => {
                listing = rest;
                idle = i;
                b
            }
            Ok(Err(e)) => {
                problems.report(|more| {
                    tracing::error!(
                        "cannot read handoff_dir {}: {e}{}",
                        dir.display(),
                        Tally::more(more)
                    )
                });
                Batch::default()
            }
            Err(e) => {
                tracing::error!("hand-off reader failed: {e}");
                Batch::default()
            }
        };
        batch.rejected.splice(0..0, refused_files.drain(..));
        let escape = mailpush_core::text::escape_controls;
        for r in batch.rejected {
            daemon.ingest.reject("invalid", 1);
            let name = escape(&r.name);
            match r.kept {
                // Any local user may write files (unless handoff_owners): bounded.
                None => set_aside.report(|more| {
                    tracing::error!(
                        "hand-off file {name} set aside as {name}.rejected: {} (+{more} more set aside, counted in mailpush_transactions_rejected_total{{reason=\"invalid\"}})",
                        escape(&r.why)
                    )
                }),
                Some(e) => {
                    let say = |more: u64| {
                        tracing::error!(
                            "hand-off file {name} refused: {}; it cannot be renamed {name}.rejected ({e}) and is passed over until mailpush restarts (mailpush needs write access to {}){}",
                            escape(&r.why),
                            dir.display(),
                            Tally::more(more)
                        )
                    };
                    // Once per file while they can be remembered; then (each is read
                    // again at every listing) rate-limited.
                    if stuck.len() < UNREADABLE_KEPT {
                        say(0);
                        stuck.insert(r.name);
                    } else {
                        kept_reports.report(say);
                    }
                }
            }
        }
        for (name, why) in batch.unreadable {
            if unreadable.len() < UNREADABLE_KEPT {
                unreadable.insert(name.clone(), now + UNREADABLE_RETRY);
            }
            // Once per file (bounded): it stays and is tried again.
            if complained.len() < 10_000 && complained.insert(name.clone()) {
                tracing::error!(
                    "cannot read hand-off file {} in {}: {why} (mailpush needs read access: let it create handoff_dir, which sets a default ACL, or adjust the file's permissions)",
                    escape(&name),
                    dir.display()
                );
            }
        }
        if batch.txns.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        let n = batch.txns.len() as u64;
        let ids: Vec<String> = batch.txns.iter().map(|t| t.id.clone()).collect();
        // Each transaction's age counts from when Dovecot wrote its file.
        let received = batch.found.iter().map(|f| handed_off(f.modified)).collect();
        match daemon
            .dispatcher()
            .accept_received(batch.txns, received, Backpressure::Wait)
            .await
        {
            Ok(_) => {
                batch_bytes = batch_bytes.saturating_mul(2).min(limits.batch_bytes);
                daemon
                    .ingest
                    .received
                    .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                let files: Vec<PathBuf> = batch.found.into_iter().map(|f| f.path).collect();
                let kept = tokio::task::spawn_blocking(move || {
                    let mut kept = Vec::new();
                    for f in files {
                        if let Err(e) = std::fs::remove_file(&f) {
                            if e.kind() != std::io::ErrorKind::NotFound {
                                kept.push((f, e));
                            }
                        }
                    }
                    kept
                })
                .await
                .unwrap_or_default();
                for (f, e) in kept {
                    let say = |more: u64| {
                        tracing::error!(
                            "cannot remove hand-off file {}: {e}; its transaction is stored, and the file is passed over until mailpush restarts (which reads it again: delivered again if its transaction has left the spool by then). mailpush needs write access to {}{}",
                            escape(&f.display().to_string()),
                            dir.display(),
                            Tally::more(more)
                        )
                    };
                    match f.file_name() {
                        Some(name) if stuck.len() < UNREADABLE_KEPT => {
                            say(0);
                            stuck.insert(name.to_string_lossy().into_owned());
                        }
                        _ => kept_reports.report(say),
                    }
                }
            }
            Err(Refused::Spool(SpoolError::Full { .. })) if n > 1 => {
                // Perhaps a smaller batch fits (the spool holds dead letters, or this
                // batch's stored form is larger than its files): the same files again
                // at once, half as many bytes of them (grown back by doubling once
                // stored). Nothing is lost: they stay until stored.
                for f in batch.found.into_iter().rev() {
                    listing.push_front(f);
                }
                batch_bytes = (batch.bytes / 2).max(1);
                tracing::debug!(
                    "the spool refused a hand-off batch of {n} for its size: trying {batch_bytes} bytes"
                );
            }
            Err(Refused::Spool(SpoolError::TooLarge { id, size, max })) if ids.contains(&id) => {
                // That one could never be stored (cluster mode: past NATS's
                // max_payload with its headers): set aside; the others again at once.
                let mut found = batch.found;
                if let Some(f) = ids.iter().position(|i| *i == id).map(|i| found.remove(i)) {
                    let why = format!(
                        "its transaction takes {size} bytes once stored, more than the spool can hold ({max} bytes: NATS max_payload)"
                    );
                    if let Ok(r) = tokio::task::spawn_blocking(move || {
                        Rejected::set_aside(&f.path, f.name, why)
                    })
                    .await
                    {
                        refused_files.push(r);
                    }
                }
                for f in found.into_iter().rev() {
                    listing.push_front(f);
                }
            }
            // Stopping: the files stay for the next start.
            Err(Refused::ShutDown) => return,
            Err(refused) => {
                // Nothing is lost: the files stay and are read again, from a new
                // listing (they are the oldest).
                listing.clear();
                refusals.report(|more| {
                    tracing::warn!(
                        "hand-off of {n} transaction(s) waits: {refused}{}",
                        Tally::more(more)
                    )
                });
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn reads_oldest_first_and_sets_aside_what_is_bad() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let txn = |id: &str| {
            format!(
                r#"{{"id":"{id}","user":"u@x","events":[{{"name":"MailboxCreate","mailbox":"M"}}]}}"#
            )
        };
        write(d, "b.json", &txn("first"));
        // Later modification times.
        std::thread::sleep(Duration::from_millis(20));
        write(d, "a.json", &format!("{}\n", txn("second")));
        write(d, ".tmp-c", &txn("unpublished"));
        write(d, "bad.json", "{not json");
        write(d, "note.txt", "ignored");
        std::os::unix::fs::symlink("/etc/passwd", d.join("link.json")).unwrap();
        let b = scan(d, &Owners::Any, 1 << 20, &HashSet::new()).unwrap();
        let ids: Vec<&str> = b.txns.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["first", "second"]);
        let mut rejected: Vec<&str> = b.rejected.iter().map(|r| r.name.as_str()).collect();
        rejected.sort();
        assert_eq!(rejected, ["bad.json", "link.json"]);
        assert!(d.join("bad.json.rejected").exists());
        assert!(d.join(".tmp-c").exists() && d.join("note.txt").exists());

        // Owners: a uid that owns nothing here sets every file aside.
        let b = scan(
            d,
            &Owners::Uids(HashSet::from([u32::MAX - 1])),
            1 << 20,
            &HashSet::new(),
        )
        .unwrap();
        assert!(b.txns.is_empty());
        assert_eq!(b.rejected.len(), 2);
    }

    /// Files that cannot be read take no place in a batch: 300 of them, older than a
    /// readable one, do not keep it from being read; passed over (`skip`), they are not
    /// even tried. Bytes that are not UTF-8 become U+FFFD.
    #[test]
    fn unreadable_files_hold_nothing_back() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for i in 0..300 {
            write(d, &format!("locked-{i:03}.json"), "{}");
        }
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(
            d.join("good.json"),
            b"{\"id\":\"g\",\"user\":\"u@x\",\"events\":[{\"name\":\"MailboxCreate\",\"mailbox\":\"J\xfcrgen\"}]}",
        )
        .unwrap();
        let tried = std::cell::Cell::new(0);
        let read = |p: &Path| {
            tried.set(tried.get() + 1);
            if p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("locked"))
            {
                Err(Unread::Io(std::io::Error::from(
                    std::io::ErrorKind::PermissionDenied,
                )))
            } else {
                read_published(p, &Owners::Any, 1 << 20)
            }
        };
        let b = scan_reading(d, &Owners::Any, 1 << 20, &HashSet::new(), read).unwrap();
        assert_eq!(b.txns.len(), 1, "{:?}", b.rejected);
        assert_eq!(b.unreadable.len(), 300);
        assert!(b.rejected.is_empty());
        let from = serde_json::to_string(&b.txns[0]).unwrap();
        assert!(from.contains("J\u{fffd}rgen"), "{from}");
        let skip: HashSet<String> = b.unreadable.iter().map(|(n, _)| n.clone()).collect();
        tried.set(0);
        let b = scan_reading(d, &Owners::Any, 1 << 20, &skip, read).unwrap();
        assert_eq!(
            (b.txns.len(), tried.get()),
            (1, 1),
            "only good.json is tried"
        );
    }

    /// A backlog is listed once per [`LISTED`] files, not once per batch: one listing
    /// keeps the oldest of them, in order, and batches are read off it.
    #[test]
    fn one_listing_serves_many_batches() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let base = std::time::SystemTime::now() - Duration::from_secs(3600);
        let n = LISTED + 4;
        // Written newest first: the order is the files' times, not the writing's.
        for i in (0..n).rev() {
            let name = format!("f{i:05}.json");
            write(
                d,
                &name,
                &format!(
                    r#"{{"id":"t{i:05}","user":"u@x","events":[{{"name":"MailboxCreate","mailbox":"M"}}]}}"#
                ),
            );
            std::fs::File::options()
                .write(true)
                .open(d.join(&name))
                .unwrap()
                .set_modified(base + Duration::from_millis(i as u64))
                .unwrap();
        }
        let (mut listing, rejected) = list(d, &Owners::Any, 1 << 20, &HashSet::new()).unwrap();
        assert!(rejected.is_empty());
        assert_eq!(listing.len(), LISTED);
        let mut read = Vec::new();
        while !listing.is_empty() {
            let b = read_batch(&mut listing, Limits::new(1 << 20, None), |p| {
                read_published(p, &Owners::Any, 1 << 20)
            });
            assert_eq!(b.txns.len(), BATCH);
            read.extend(b.txns.into_iter().map(|t| t.id));
        }
        let expected: Vec<String> = (0..LISTED).map(|i| format!("t{i:05}")).collect();
        assert_eq!(read, expected);
    }

    /// A file replaced after it was listed — by a symlink to `/dev/zero`, a FIFO, a file
    /// larger than `max_body` — is checked again on the file opened: set aside, never
    /// followed, blocked on or read whole.
    #[test]
    fn a_file_replaced_after_the_listing_is_checked_again() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let txn = r#"{"id":"x","user":"u@x","events":[{"name":"MailboxCreate","mailbox":"M"}]}"#;
        for name in ["a.json", "b.json", "c.json"] {
            write(d, name, txn);
        }
        let (mut listing, _) = list(d, &Owners::Any, 1024, &HashSet::new()).unwrap();
        assert_eq!(listing.len(), 3);
        std::fs::remove_file(d.join("a.json")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", d.join("a.json")).unwrap();
        std::fs::remove_file(d.join("b.json")).unwrap();
        let fifo = std::ffi::CString::new(d.join("b.json").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        write(d, "c.json", &" ".repeat(4096));
        let b = read_batch(&mut listing, Limits::new(1 << 20, None), |p| {
            read_published(p, &Owners::Any, 1024)
        });
        assert!(b.txns.is_empty());
        let mut rejected: Vec<String> = b
            .rejected
            .iter()
            .map(|r| format!("{}: {}", r.name, r.why))
            .collect();
        rejected.sort();
        assert_eq!(rejected.len(), 3, "{rejected:?}");
        assert!(rejected[0].starts_with("a.json: a symlink"), "{rejected:?}");
        assert!(
            rejected[1].starts_with("b.json: not a regular file"),
            "{rejected:?}"
        );
        assert!(
            rejected[2].starts_with("c.json: more than max_body (1024) bytes"),
            "{rejected:?}"
        );
    }

    /// A batch ends at the file that reaches its bytes (what the hand-off holds in
    /// memory), and always holds at least one file; the limits follow the spool's quota
    /// so that an empty spool always takes a batch and never refuses a file for good.
    #[test]
    fn batches_are_bounded_in_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let pad = "x".repeat(1000);
        for i in 0..10 {
            write(
                d,
                &format!("f{i}.json"),
                &format!(
                    r#"{{"id":"t{i}","user":"u@x","events":[{{"name":"MailboxCreate","mailbox":"{pad}"}}]}}"#
                ),
            );
        }
        let (mut listing, _) = list(d, &Owners::Any, 1 << 20, &HashSet::new()).unwrap();
        let read = |p: &Path| read_published(p, &Owners::Any, 1 << 20);
        let bytes = |batch_bytes| Limits {
            max_file: 1 << 20,
            max_stored: u64::MAX,
            batch_bytes,
        };
        // Each file is a little over 1000 bytes: three fit in 3300, not in 3000 (the
        // third goes back for the next batch); one file always goes.
        assert_eq!(read_batch(&mut listing, bytes(3000), read).txns.len(), 2);
        assert_eq!(read_batch(&mut listing, bytes(3300), read).txns.len(), 3);
        assert_eq!(read_batch(&mut listing, bytes(1), read).txns.len(), 1);
        let b = read_batch(&mut listing, bytes(BATCH_BYTES), read);
        let ids: Vec<&str> = b.txns.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["t6", "t7", "t8", "t9"], "none lost or read twice");
        // A file whose transaction grows past the spool's quota once stored (bytes that
        // are not UTF-8 take three each) is set aside: the spool could never take it.
        let mut bad =
            br#"{"id":"big","user":"u@x","events":[{"name":"MailboxCreate","mailbox":""#.to_vec();
        bad.extend(std::iter::repeat_n(0xFFu8, 1000));
        bad.extend_from_slice(br#""}]}"#);
        std::fs::write(d.join("big.json"), &bad).unwrap();
        let (mut listing, _) = list(d, &Owners::Any, 1 << 20, &HashSet::new()).unwrap();
        let small = Limits {
            max_file: 2000,
            max_stored: 2000,
            batch_bytes: BATCH_BYTES,
        };
        let b = read_batch(&mut listing, small, read);
        assert!(b.txns.iter().all(|t| t.id != "big"));
        assert!(
            b.rejected
                .iter()
                .any(|r| r.name == "big.json" && r.why.contains("bytes as stored")),
            "{:?}",
            b.rejected.iter().map(|r| &r.why).collect::<Vec<_>>()
        );

        let l = Limits::new(10 << 20, None);
        assert_eq!((l.max_file, l.batch_bytes), (10 << 20, BATCH_BYTES));
        let l = Limits::new(10 << 20, Some(4 << 20));
        assert_eq!((l.max_file, l.batch_bytes), (4 << 20, 1 << 20));
    }

    /// A refused file that cannot even be renamed (here: a directory holds its
    /// `.rejected` name) says so, to be passed over rather than refused again and again.
    #[test]
    fn a_file_that_cannot_be_set_aside_is_reported_as_kept() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "bad.json", "{not json");
        std::fs::create_dir(d.join("bad.json.rejected")).unwrap();
        write(&d.join("bad.json.rejected"), "occupied", "");
        let b = scan(d, &Owners::Any, 1 << 20, &HashSet::new()).unwrap();
        assert_eq!(b.rejected.len(), 1);
        assert!(b.rejected[0].kept.is_some(), "renamed over a directory?");
        assert!(d.join("bad.json").exists());
        // Passed over, it is not refused again.
        let skip = HashSet::from(["bad.json".to_string()]);
        let b = scan(d, &Owners::Any, 1 << 20, &skip).unwrap();
        assert!(b.rejected.is_empty() && b.txns.is_empty());
    }

    /// A sticky directory of another user: mailpush could read the files mail users
    /// write there but not remove them, so it refuses to start on it.
    #[test]
    fn a_sticky_directory_of_another_user_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let h = dir.path().join("handoff");
        std::fs::create_dir(&h).unwrap();
        std::fs::set_permissions(&h, std::fs::Permissions::from_mode(0o1777)).unwrap();
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        let other = if me == 4242 { 4243 } else { 4242 };
        let e = prepare_as(&h, other).unwrap_err();
        assert!(e.contains("is sticky (mode 1777)"), "{e}");
        assert!(e.contains("could not remove"), "{e}");
        // Not sticky: a warning only (the probe shows files can be removed).
        std::fs::set_permissions(&h, std::fs::Permissions::from_mode(0o777)).unwrap();
        let w = prepare_as(&h, other).unwrap();
        assert!(w[0].contains("not by mailpush"), "{w:?}");
        // The probe leaves nothing behind.
        assert_eq!(std::fs::read_dir(&h).unwrap().count(), 0);
    }

    #[test]
    fn owners_resolve_names_and_uids() {
        assert!(matches!(Owners::resolve(&[]), Ok(Owners::Any)));
        let Ok(Owners::Uids(u)) = Owners::resolve(&["root".into(), "5000".into()]) else {
            panic!("root and 5000 resolve");
        };
        assert_eq!(u, HashSet::from([0, 5000]));
        let e = Owners::resolve(&["no-such-user-here".into()]).unwrap_err();
        assert!(e.contains("no user `no-such-user-here`"), "{e}");
    }

    #[test]
    fn prepare_sets_mode_and_default_acl() {
        let dir = tempfile::tempdir().unwrap();
        let h = dir.path().join("handoff");
        let warnings = prepare(&h).unwrap();
        let mode = std::fs::metadata(&h).unwrap().mode() & 0o7777;
        assert_eq!(mode, DIR_MODE);
        // Where the filesystem has ACLs, a file created with a strict umask is still
        // readable through the named-user entry.
        if warnings.is_empty() {
            let path = std::ffi::CString::new(h.as_os_str().as_encoded_bytes()).unwrap();
            let mut buf = [0u8; 128];
            // SAFETY: buffers are ours and sized as passed.
            let n = unsafe {
                libc::getxattr(
                    path.as_ptr(),
                    c"system.posix_acl_default".as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            assert_eq!(n, 4 + 5 * 8, "the default ACL is set");
        }
    }
}
