//! Compiled functions reused between the compiles of one component.
//!
//! A component is compiled up to three times: instrumented for its snapshot, its
//! snapshot (one per set of arguments and `memory=`), and as it is (`init=per-instance`,
//! or a snapshot declined). Their functions are nearly all the same; only the data
//! `init` left differs. Cranelift's incremental cache (wasmtime's [`CacheStore`]) looks
//! each function up by a hash of its IR and the target before compiling it. mailpush
//! keeps the functions of a component's last compile in the AOT cache, beside its other
//! artifacts (`SHA256-functions-ENGINE.cwasm`, signed as they are, and readable by the
//! owner only), and gives them to the store only while that component compiles
//! ([`FunctionCache::begin`] … [`Session::end`]; the engine runs one such compile at a
//! time, for big components only). A JavaScript driver configured with new arguments
//! compiles its snapshot in under half the time (BENCHMARKS.md).
//!
//! Outside such a compile the store is empty and refuses entries.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;

use parking_lot::Mutex;
use wasmtime::CacheStore;

/// At most this much compiled code is held during one compile (a JavaScript
/// component's is about 50 MB); past it, functions compile without being kept.
const MAX_BYTES: usize = 512 << 20;

/// A stored file bigger than this is not read (what [`MAX_BYTES`] allows, with 8 bytes
/// of lengths per function and the signature).
pub const MAX_FILE_BYTES: u64 = MAX_BYTES as u64 + (16 << 20);

/// What a stored file of functions starts with.
const MAGIC: &[u8] = b"mailpush-functions-1\n";

/// The store wasmtime's compiler asks; see the module's documentation.
#[derive(Debug)]
pub struct FunctionCache {
    compile: Mutex<Option<Compile>>,
    /// Bytes of keys and code one compile may hold ([`MAX_BYTES`]).
    budget: usize,
}

impl Default for FunctionCache {
    fn default() -> Self {
        FunctionCache {
            compile: Mutex::default(),
            budget: MAX_BYTES,
        }
    }
}

#[derive(Debug, Default)]
struct Compile {
    /// The stored file of the earlier compile, which earlier entries point into.
    earlier: Vec<u8>,
    entries: HashMap<Vec<u8>, Entry>,
    bytes: usize,
    /// Functions looked up, and found among those of an earlier compile.
    looked_up: u64,
    reused: u64,
}

#[derive(Debug)]
struct Entry {
    code: Code,
    /// Looked up or compiled by this compile: what the next file keeps.
    used: bool,
}

#[derive(Debug)]
enum Code {
    /// From the earlier compile: where in its file.
    Earlier(Range<usize>),
    /// Compiled now.
    New(Vec<u8>),
}

impl Compile {
    fn code<'a>(&'a self, e: &'a Entry) -> &'a [u8] {
        match &e.code {
            Code::Earlier(r) => &self.earlier[r.clone()],
            Code::New(c) => c,
        }
    }
}

/// How a compile went, for `mailpush check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FunctionReuse {
    /// Functions compiled through the cache.
    pub functions: u64,
    /// Of them, found among the functions of an earlier compile of the component.
    pub reused: u64,
}

/// The end of a compile: its statistics, and the functions it used, serialised for
/// the AOT cache (`None` when there is nothing new to store: every function came from
/// the earlier compile).
pub struct Ended {
    pub reuse: FunctionReuse,
    pub functions: Option<Vec<u8>>,
}

/// A compile using the store ([`FunctionCache::begin`]); the store is emptied when it
/// ends, or is dropped (a compile that panicked).
pub struct Session<'a> {
    cache: &'a FunctionCache,
}

impl Session<'_> {
    /// Ends the compile: the store is empty again.
    pub fn end(self) -> Ended {
        let compile = self.cache.compile.lock().take().unwrap_or_default();
        let reuse = FunctionReuse {
            functions: compile.looked_up,
            reused: compile.reused,
        };
        let fresh = compile
            .entries
            .values()
            .any(|e| e.used && matches!(e.code, Code::New(_)));
        let functions = fresh.then(|| {
            let mut out = MAGIC.to_vec();
            for (key, e) in compile.entries.iter().filter(|(_, e)| e.used) {
                for part in [key.as_slice(), compile.code(e)] {
                    out.extend_from_slice(&(part.len() as u32).to_le_bytes());
                    out.extend_from_slice(part);
                }
            }
            out
        });
        Ended { reuse, functions }
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        self.cache.compile.lock().take();
    }
}

impl FunctionCache {
    /// Starts a compile with the functions of an earlier one: `file[start..]`, as
    /// [`Ended::functions`] wrote them (ignored if malformed). The caller runs one
    /// compile at a time.
    pub fn begin(&self, earlier: Option<(Vec<u8>, usize)>) -> Session<'_> {
        let mut compile = Compile::default();
        if let Some((file, start)) = earlier {
            if let Some(entries) = parse(&file, start) {
                for (key, code) in entries {
                    compile.bytes += key.len() + code.len();
                    compile.entries.insert(
                        file[key].to_vec(),
                        Entry {
                            code: Code::Earlier(code),
                            used: false,
                        },
                    );
                }
                compile.earlier = file;
            }
        }
        *self.compile.lock() = Some(compile);
        Session { cache: self }
    }
}

impl CacheStore for FunctionCache {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        let mut guard = self.compile.lock();
        let compile = guard.as_mut()?;
        compile.looked_up += 1;
        let entry = compile.entries.get_mut(key)?;
        entry.used = true;
        if matches!(entry.code, Code::Earlier(_)) {
            compile.reused += 1;
        }
        let entry = &compile.entries[key];
        Some(Cow::Owned(compile.code(entry).to_vec()))
    }

    fn insert(&self, key: &[u8], code: Vec<u8>) -> bool {
        let mut guard = self.compile.lock();
        let Some(compile) = guard.as_mut() else {
            return false;
        };
        let replaced = compile
            .entries
            .get(key)
            .map_or(0, |old| key.len() + compile.code(old).len());
        let size = key.len() + code.len();
        if compile.bytes - replaced + size > self.budget {
            return false;
        }
        compile.bytes = compile.bytes - replaced + size;
        compile.entries.insert(
            key.to_vec(),
            Entry {
                code: Code::New(code),
                used: true,
            },
        );
        true
    }
}

/// Where the entries of a stored file (from `start`) are, as (key, code) ranges of
/// `file`; `None` if it is not one.
fn parse(file: &[u8], start: usize) -> Option<Vec<(Range<usize>, Range<usize>)>> {
    let mut at = start + MAGIC.len();
    if file.get(start..at)? != MAGIC {
        return None;
    }
    let mut entries = Vec::new();
    while at < file.len() {
        let key = take(file, &mut at)?;
        let code = take(file, &mut at)?;
        entries.push((key, code));
    }
    Some(entries)
}

/// The range of the length-prefixed part of `file` at `at`, which moves past it.
fn take(file: &[u8], at: &mut usize) -> Option<Range<usize>> {
    let len = file.get(*at..at.checked_add(4)?)?;
    let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
    let part = at.checked_add(4)?..at.checked_add(4 + len)?;
    file.get(part.clone())?;
    *at = part.end;
    Some(part)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compile_keeps_what_it_used_and_counts_what_it_reused() {
        let cache = FunctionCache::default();
        // Outside a compile nothing is kept.
        assert!(!cache.insert(b"k0", b"c0".to_vec()));
        assert!(cache.get(b"k0").is_none());

        let session = cache.begin(None);
        assert!(cache.get(b"k1").is_none());
        assert!(cache.insert(b"k1", b"code one".to_vec()));
        assert!(cache.get(b"k2").is_none());
        assert!(cache.insert(b"k2", b"code two".to_vec()));
        // A function the same compile meets twice is found, but not reused from earlier.
        assert_eq!(cache.get(b"k1").as_deref(), Some(&b"code one"[..]));
        let first = session.end();
        assert_eq!(
            first.reuse,
            FunctionReuse {
                functions: 3,
                reused: 0
            }
        );
        let file = first.functions.expect("new functions are stored");
        assert!(
            cache.get(b"k1").is_none(),
            "the store is empty between compiles"
        );

        // The next compile finds k1 and k2; k3 is new. Only what it used is kept. The
        // file is read from behind a prefix (the signature).
        let mut signed = b"SIG".to_vec();
        signed.extend_from_slice(&file);
        let session = cache.begin(Some((signed, 3)));
        assert_eq!(cache.get(b"k2").as_deref(), Some(&b"code two"[..]));
        assert!(cache.get(b"k3").is_none());
        assert!(cache.insert(b"k3", b"code three".to_vec()));
        let second = session.end();
        assert_eq!(
            second.reuse,
            FunctionReuse {
                functions: 2,
                reused: 1
            }
        );
        let stored = second.functions.unwrap();
        let kept = parse(&stored, 0).unwrap();
        let mut keys: Vec<&[u8]> = kept.iter().map(|(k, _)| &stored[k.clone()]).collect();
        keys.sort();
        assert_eq!(keys, [&b"k2"[..], &b"k3"[..]]);

        // A compile that found everything has nothing new to store.
        let session = cache.begin(Some((stored, 0)));
        assert_eq!(cache.get(b"k2").as_deref(), Some(&b"code two"[..]));
        assert_eq!(cache.get(b"k3").as_deref(), Some(&b"code three"[..]));
        let third = session.end();
        assert_eq!(third.reuse.reused, 2);
        assert!(third.functions.is_none());
    }

    /// A component whose compile would keep more than the budget: past it, functions
    /// are compiled and not kept (nor stored for the next compile).
    #[test]
    fn a_compile_keeps_no_more_than_its_budget() {
        let cache = FunctionCache {
            budget: 100,
            ..Default::default()
        };
        let session = cache.begin(None);
        assert!(cache.insert(b"k1", vec![1; 60]));
        assert!(!cache.insert(b"k2", vec![2; 60]), "over the budget");
        assert!(cache.get(b"k2").is_none());
        // Replacing an entry counts only the difference.
        assert!(cache.insert(b"k1", vec![3; 90]));
        let stored = session.end().functions.unwrap();
        let kept = parse(&stored, 0).unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(&stored[kept[0].1.clone()], &[3; 90][..]);
    }

    #[test]
    fn a_compile_that_never_ended_leaves_the_store_empty() {
        let cache = FunctionCache::default();
        let session = cache.begin(None);
        assert!(cache.insert(b"k1", b"code".to_vec()));
        // A compile that panicked: its session is dropped, not ended.
        drop(session);
        assert!(!cache.insert(b"k2", b"code".to_vec()));
        assert!(cache.get(b"k1").is_none());
    }

    #[test]
    fn a_malformed_file_is_ignored() {
        let cache = FunctionCache::default();
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(&100u32.to_le_bytes());
        file.extend_from_slice(b"short");
        assert!(parse(&file, 0).is_none());
        assert!(parse(&file, 1000).is_none());
        let session = cache.begin(Some((file, 0)));
        assert!(cache.get(b"short").is_none());
        drop(session);
        let session = cache.begin(Some((b"not a functions file".to_vec(), 0)));
        assert_eq!(cache.get(b"x"), None);
        assert_eq!(session.end().reuse.functions, 1);
    }
}
