//! Compiled functions reused between the compiles of one component.
//!
//! A component is compiled up to three times: instrumented for its snapshot, its
//! snapshot (one per set of arguments and `memory=`), and as it is (`init=per-instance`,
//! or a snapshot declined). Their functions are nearly all the same; only the data
//! `init` left differs. Cranelift's incremental cache (wasmtime's [`CacheStore`]) looks
//! each function up by a hash of its IR and the target before compiling it. mailpush
//! keeps the functions of a component's last compile in the AOT cache, beside its other
//! artifacts (`SHA256-functions-ENGINE.cwasm`, signed and readable by the owner only,
//! as the others are), and gives them to the store only while that component compiles
//! ([`FunctionCache::begin`] … [`FunctionCache::end`]; the engine runs one such compile
//! at a time). A JavaScript driver configured with new arguments compiles its snapshot
//! in about a quarter of the time (BENCHMARKS.md).
//!
//! Outside a compile that [`FunctionCache::begin`] opened, the store is empty and
//! refuses entries: a compile without a cache dir keeps nothing.

use std::borrow::Cow;
use std::collections::HashMap;

use parking_lot::Mutex;
use wasmtime::CacheStore;

/// At most this much compiled code is held during one compile (a JavaScript
/// component's is about 50 MB); past it, functions compile without being kept.
const MAX_BYTES: usize = 512 << 20;

/// What a stored file of functions starts with.
const MAGIC: &[u8] = b"mailpush-functions-1\n";

/// The store wasmtime's compiler asks; see the module's documentation.
#[derive(Debug, Default)]
pub struct FunctionCache {
    compile: Mutex<Option<Compile>>,
}

#[derive(Debug, Default)]
struct Compile {
    entries: HashMap<Vec<u8>, Entry>,
    bytes: usize,
    /// Functions looked up, and found among those of an earlier compile.
    looked_up: u64,
    reused: u64,
}

#[derive(Debug)]
struct Entry {
    code: Vec<u8>,
    /// Came from an earlier compile (the stored file).
    earlier: bool,
    /// Looked up or compiled by this compile: what the next file keeps.
    used: bool,
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

impl FunctionCache {
    /// Starts a compile with the functions of an earlier one (a file written from
    /// [`Ended::functions`]; ignored if malformed).
    pub fn begin(&self, earlier: Option<&[u8]>) {
        let mut compile = Compile::default();
        if let Some(entries) = earlier.and_then(parse) {
            for (key, code) in entries {
                compile.bytes += key.len() + code.len();
                compile.entries.insert(
                    key.to_vec(),
                    Entry {
                        code: code.to_vec(),
                        earlier: true,
                        used: false,
                    },
                );
            }
        }
        *self.compile.lock() = Some(compile);
    }

    /// Ends the compile [`FunctionCache::begin`] started; the store is empty again.
    pub fn end(&self) -> Ended {
        let compile = self.compile.lock().take().unwrap_or_default();
        let reuse = FunctionReuse {
            functions: compile.looked_up,
            reused: compile.reused,
        };
        let fresh = compile.entries.values().any(|e| e.used && !e.earlier);
        let functions = fresh.then(|| {
            let mut out = MAGIC.to_vec();
            for (key, e) in compile.entries.iter().filter(|(_, e)| e.used) {
                for part in [key.as_slice(), e.code.as_slice()] {
                    out.extend_from_slice(&(part.len() as u32).to_le_bytes());
                    out.extend_from_slice(part);
                }
            }
            out
        });
        Ended { reuse, functions }
    }
}

impl CacheStore for FunctionCache {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        let mut guard = self.compile.lock();
        let compile = guard.as_mut()?;
        compile.looked_up += 1;
        let entry = compile.entries.get_mut(key)?;
        if entry.earlier {
            compile.reused += 1;
        }
        entry.used = true;
        Some(Cow::Owned(entry.code.clone()))
    }

    fn insert(&self, key: &[u8], code: Vec<u8>) -> bool {
        let mut guard = self.compile.lock();
        let Some(compile) = guard.as_mut() else {
            return false;
        };
        let size = key.len() + code.len();
        if compile.bytes + size > MAX_BYTES {
            return false;
        }
        compile.bytes += size;
        let old = compile.entries.insert(
            key.to_vec(),
            Entry {
                code,
                earlier: false,
                used: true,
            },
        );
        if let Some(old) = old {
            compile.bytes -= key.len() + old.code.len();
        }
        true
    }
}

/// The entries of a stored file; `None` if it is not one.
fn parse(file: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let mut rest = file.strip_prefix(MAGIC)?;
    let mut entries = Vec::new();
    while !rest.is_empty() {
        let (key, tail) = take(rest)?;
        let (code, tail) = take(tail)?;
        entries.push((key, code));
        rest = tail;
    }
    Some(entries)
}

/// A length-prefixed part of a stored file, and what follows it.
fn take(rest: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, tail) = rest.split_first_chunk::<4>()?;
    let len = u32::from_le_bytes(*len) as usize;
    (tail.len() >= len).then(|| tail.split_at(len))
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

        cache.begin(None);
        assert!(cache.get(b"k1").is_none());
        assert!(cache.insert(b"k1", b"code one".to_vec()));
        assert!(cache.get(b"k2").is_none());
        assert!(cache.insert(b"k2", b"code two".to_vec()));
        // A function the same compile meets twice is found, but not reused from earlier.
        assert_eq!(cache.get(b"k1").as_deref(), Some(&b"code one"[..]));
        let first = cache.end();
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

        // The next compile finds k1 and k2; k3 is new. Only what it used is kept.
        cache.begin(Some(&file));
        assert_eq!(cache.get(b"k2").as_deref(), Some(&b"code two"[..]));
        assert!(cache.get(b"k3").is_none());
        assert!(cache.insert(b"k3", b"code three".to_vec()));
        let second = cache.end();
        assert_eq!(
            second.reuse,
            FunctionReuse {
                functions: 2,
                reused: 1
            }
        );
        let kept = parse(second.functions.as_deref().unwrap()).unwrap();
        let mut keys: Vec<&[u8]> = kept.iter().map(|(k, _)| *k).collect();
        keys.sort();
        assert_eq!(keys, [&b"k2"[..], &b"k3"[..]]);

        // A compile that found everything has nothing new to store.
        cache.begin(second.functions.as_deref());
        assert!(cache.get(b"k2").is_some());
        assert!(cache.get(b"k3").is_some());
        let third = cache.end();
        assert_eq!(third.reuse.reused, 2);
        assert!(third.functions.is_none());
    }

    #[test]
    fn a_malformed_file_is_ignored() {
        let cache = FunctionCache::default();
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(&100u32.to_le_bytes());
        file.extend_from_slice(b"short");
        assert!(parse(&file).is_none());
        cache.begin(Some(&file));
        assert!(cache.get(b"short").is_none());
        cache.begin(Some(b"not a functions file"));
        assert_eq!(cache.end().reuse.functions, 0);
    }
}
