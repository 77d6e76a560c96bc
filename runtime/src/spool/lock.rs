//! The one process that delivers from a state_dir's SQLite spool: an exclusive lock on
//! `state_dir/run.lock` (which holds its pid), released when the process ends however
//! it ends. `mailpush run` and `mailpush send` both take it: a lane reads what the
//! spool owes its driver number, whichever process stored it, so a second process
//! would deliver (once, with its own driver lines) what the first one acknowledged.

use std::path::{Path, PathBuf};

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot create state_dir {}: {source}", .path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open {}: {source}", .path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("refusing to {what}: another mailpush (pid {pid}, `mailpush run` or `mailpush send`) delivers from state_dir {}; a second process on one spool would deliver what the first one owes too. Send to the running instance instead (POST /v1/transactions on its listen address), stop it first, or give this one its own state_dir", .state_dir.display())]
    Held {
        what: &'static str,
        pid: String,
        state_dir: PathBuf,
    },
}

/// The held lock ([`DeliveryLock::take`]).
pub struct DeliveryLock(#[allow(dead_code)] std::fs::File);

impl DeliveryLock {
    /// The lock for a process about to `what` with `settings`, when they use the SQLite
    /// spool (without the spool, or in cluster mode, nothing is owed in the state_dir:
    /// processes may share it, and its compile cache).
    pub fn for_settings(
        settings: &mailpush_config::RuntimeSettings,
        what: &'static str,
    ) -> Result<Option<DeliveryLock>, LockError> {
        if settings.durable && settings.cluster.is_none() {
            Self::take(&settings.state_dir, what).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The pid of the process holding `state_dir`'s lock, if one does (`None` also when
    /// there is no lock file or it cannot be read). It only looks: the lock is not
    /// taken.
    pub fn holder(state_dir: &Path) -> Option<u32> {
        use std::os::unix::io::AsRawFd;
        let mut file = std::fs::File::open(state_dir.join("run.lock")).ok()?;
        // SAFETY: flock on a descriptor this function owns; a shared lock taken here is
        // released when the file closes, at the end of this function (`take` tries
        // again for a moment, so a process starting meanwhile does not fail).
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
            return None;
        }
        // Only a number: the lock file is not trusted to hold one.
        recorded_pid(&mut file).parse().ok()
    }

    /// Takes the lock for a process about to `what` ("start", "send"), or says which
    /// process has it.
    pub fn take(state_dir: &Path, what: &'static str) -> Result<DeliveryLock, LockError> {
        use std::io::{Seek, Write};
        use std::os::unix::io::AsRawFd;
        std::fs::create_dir_all(state_dir).map_err(|source| LockError::Create {
            path: state_dir.to_path_buf(),
            source,
        })?;
        let path = state_dir.join("run.lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| LockError::Open {
                path: path.clone(),
                source,
            })?;
        // SAFETY: flock on a descriptor this function owns. A few tries: `status` or
        // `reload` probing whether the lock is held ([`DeliveryLock::holder`]) holds it
        // shared for an instant, which must not make a start fail.
        let locked = (0..5).any(|i| {
            if i > 0 {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            (unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }) == 0
        });
        if !locked {
            return Err(LockError::Held {
                what,
                pid: recorded_pid(&mut file),
                state_dir: state_dir.to_path_buf(),
            });
        }
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = writeln!(file, "{}", std::process::id());
        Ok(DeliveryLock(file))
    }
}

/// The pid the lock's holder wrote into the lock file (empty if it cannot be read).
fn recorded_pid(file: &mut std::fs::File) -> String {
    use std::io::Read;
    let mut pid = String::new();
    let _ = file.read_to_string(&mut pid);
    pid.trim().to_string()
}
