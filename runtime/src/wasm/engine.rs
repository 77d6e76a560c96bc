//! The wasmtime engine mailpush runs components on, and the AOT cache of compiled
//! components in the state dir.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, Weak};

use mailpush_core::DriverArgs;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::cache::{cache_key, sign, sign_artifact, verify, SNAPSHOT_MARK};
use super::function_cache::{FunctionCache, FunctionReuse};
use super::limits::{EPOCH_TICK, MAX_MEMORY};

/// Components at least this big that are not in the AOT cache compile in the
/// background under `mailpush run` ([`WasmEngine::slow_compile`]): JavaScript and Python
/// components (13–19 MB) take many seconds; Rust ones (well under 1 MB) compile in a
/// fraction of one and keep failing fast at start.
pub const SLOW_COMPILE_BYTES: u64 = 4 << 20;

/// Components at least this big reuse compiled functions between their compiles
/// ([`super::function_cache`]): JavaScript and Python ones, whose compiles take many
/// seconds; a Rust driver compiles in a fraction of one, without waiting for the store.
pub const REUSE_FUNCTIONS_FROM: u64 = SLOW_COMPILE_BYTES;

/// Concurrent instances the pooling allocator has slots for (per engine).
const POOL_INSTANCES: u32 = 1000;

/// The largest component file a driver may be (a tenant handler is anyone's file: read
/// whole and compiled, a huge one held memory and the compile lock for minutes).
pub const MAX_COMPONENT_BYTES: u64 = 64 << 20;

/// The most linear memories one driver's instance may have (its pool slots).
const MAX_MEMORIES_PER_COMPONENT: u32 = 4;

/// The most tables one driver's instance may have.
const MAX_TABLES_PER_COMPONENT: u32 = 64;

/// The most core instances one driver's instance may have.
const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 64;
/// Per pool slot, at most this much linear memory stays resident between instances
/// (only pages a guest touched; reset with memset instead of madvise).
const KEEP_RESIDENT_MEMORY: usize = 1 << 20;
/// The same for tables and for the fibers' async stacks.
const KEEP_RESIDENT_TABLE: usize = 64 << 10;
const KEEP_RESIDENT_STACK: usize = 64 << 10;

/// Errors loading a component.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is a core WebAssembly module, not a component: build Rust drivers with `cargo build --target wasm32-wasip2` (not wasm32-unknown-unknown or wasm32-wasip1), JavaScript with componentize-js, Python with componentize-py (or wrap a module with `wasm-tools component new`)")]
    CoreModule { path: PathBuf },
    #[error("{path} is not a WebAssembly component (bad magic number)")]
    NotWasm { path: PathBuf },
    #[error("{path} is {size} bytes, larger than the {} MiB a driver's component may be (JavaScript and Python components are 13–20 MiB): a bigger one would take minutes of compiling, holding up other drivers' compiles", MAX_COMPONENT_BYTES >> 20)]
    TooLarge { path: PathBuf, size: u64 },
    #[error("{path} failed to compile: {message}")]
    Compile { path: PathBuf, message: String },
    #[error("cannot start the wasm engine: {0}")]
    Engine(String),
}

/// Where a compiled component came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from a valid artifact in the cache.
    Hit,
    /// Compiled (no artifact yet); the artifact was written.
    Miss,
    /// An artifact existed but failed verification (tampered, truncated or from
    /// another engine); it was ignored, the component recompiled and the artifact
    /// replaced.
    Rejected,
    /// No cache dir configured.
    Disabled,
}

/// A compiled component.
pub struct LoadedComponent {
    pub component: Component,
    /// Hex sha256 of the `.wasm` file.
    pub sha256: String,
    pub cache: CacheOutcome,
    /// When it was compiled now through the AOT cache: how many of its functions an
    /// earlier compile of the same component had compiled ([`super::function_cache`]).
    pub functions: Option<FunctionReuse>,
}

/// A component's file, read.
pub struct Source {
    pub bytes: Vec<u8>,
    /// Hex sha256 of the file.
    pub sha256: String,
}

/// What loading a component will take ([`WasmEngine::slow_compile`]).
pub enum CompileOutlook {
    /// Quick: in the AOT cache, small, or failing at once. The file, if it was read.
    Quick(Option<Source>),
    /// A long compile; the file, read.
    Slow(Source),
}

/// A snapshot in the AOT cache ([`WasmEngine::snapshot_lookup`]).
pub enum SnapshotLookup {
    Hit(LoadedComponent),
    /// Tried before and not possible: why.
    Declined(String),
    Missing,
}

/// Snapshot artifacts start with the component's sha256, as the others do, so
/// `mailpush check --prune-cache` can tell those of the components in use (it keeps
/// the ones their drivers loaded).
fn snapshot_stem(sha256: &str, key: &str) -> String {
    format!("{sha256}{SNAPSHOT_MARK}{key}")
}

/// The component instrumented for snapshots.
fn instrumented_stem(sha256: &str) -> String {
    format!("{sha256}-instrumented")
}

/// The functions a big component's last compile left ([`super::function_cache`]).
fn functions_stem(sha256: &str) -> String {
    format!("{sha256}-functions")
}

/// A driver's hold on its artifacts in the AOT cache ([`WasmEngine::lease`]): its
/// component's compiled code, instrumented variant and stored functions, and its
/// snapshot (or the record that there can be none); given back when it is dropped.
pub struct ArtifactLease {
    engine: Arc<WasmEngine>,
    names: Vec<String>,
}

impl Drop for ArtifactLease {
    fn drop(&mut self) {
        let mut in_use = self.engine.in_use.lock();
        for name in &self.names {
            if let Some(n) = in_use.get_mut(name) {
                *n -= 1;
                if *n == 0 {
                    in_use.remove(name);
                }
            }
        }
    }
}

/// One engine flavour: with or without fuel metering (fuel costs speed, so only drivers
/// that ask for it pay).
pub struct WasmEngine {
    engine: Engine,
    cache_dir: Option<PathBuf>,
    /// One lock per artifact: serialises compile-and-store of the same component (the
    /// second load waits and then finds it cached), while other components load at
    /// the same time — a small driver never waits behind a big one compiling.
    cache_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Artifacts the drivers loaded by this engine use, with how many hold each
    /// ([`ArtifactLease`]): never evicted while held.
    in_use: Mutex<std::collections::HashMap<String, usize>>,
    /// The compiler's store of compiled functions, and the lock that lets one compile
    /// at a time use it ([`WasmEngine::compile_reusing`]).
    functions: Arc<FunctionCache>,
    functions_lock: Mutex<()>,
    /// Components at least this big reuse functions between their compiles.
    reuse_from: u64,
}

impl WasmEngine {
    /// Builds an engine and starts its epoch ticker (a thread that ends with the engine).
    pub fn new(fuel: bool, cache_dir: Option<PathBuf>, reuse_from: u64) -> Result<Self, LoadError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.consume_fuel(fuel);
        config.max_wasm_stack(512 << 10);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(POOL_INSTANCES)
            .total_core_instances(POOL_INSTANCES * 4)
            .total_memories(POOL_INSTANCES * 2)
            .total_tables(POOL_INSTANCES * 4)
            .total_stacks(POOL_INSTANCES)
            // Per component, what the drivers built with Rust, JavaScript
            // (StarlingMonkey) and Python (componentize-py, its libraries each a core
            // instance) use, with room: without caps one component of a thousand core
            // instances, each with its memory, took half the pool's slots, and every
            // other driver's instance was refused.
            .max_memories_per_component(MAX_MEMORIES_PER_COMPONENT)
            .max_tables_per_component(MAX_TABLES_PER_COMPONENT)
            .max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT)
            .max_memory_size(MAX_MEMORY);
        // A fresh instance per transaction reuses pool slots constantly. By default each
        // slot is reset with madvise, so the next instance page-faults its memory back in
        // and every reset shoots down TLBs on the other cores. Instead, reset the pages a
        // guest actually touched with memset (found with the PAGEMAP_SCAN ioctl where the
        // kernel has it, Linux ≥ 6.7) and keep them resident: the floor of instantiate +
        // init + deliver fell from 31 µs to 14 µs (BENCHMARKS.md §2).
        pool.pagemap_scan(wasmtime::Enabled::Auto)
            .linear_memory_keep_resident(KEEP_RESIDENT_MEMORY)
            .table_keep_resident(KEEP_RESIDENT_TABLE)
            .async_stack_keep_resident(KEEP_RESIDENT_STACK);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        // Keep reservations modest: 1000 slots × (1 GiB + guard) of address space.
        config.memory_reservation(MAX_MEMORY as u64);
        config.memory_guard_size(64 << 10);
        let functions = Arc::new(FunctionCache::default());
        config
            .enable_incremental_compilation(functions.clone())
            .map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        let engine = Engine::new(&config).map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("mailpush-epoch".into())
            .spawn(move || loop {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(e) => e.increment_epoch(),
                    None => break,
                }
            })
            .map_err(|e| LoadError::Engine(format!("cannot start the epoch thread: {e}")))?;
        Ok(WasmEngine {
            engine,
            cache_dir,
            cache_locks: Mutex::default(),
            in_use: Mutex::default(),
            functions,
            functions_lock: Mutex::default(),
            reuse_from,
        })
    }

    /// The names of the artifacts and records held by the drivers of this engine that
    /// live ([`ArtifactLease`]).
    pub fn in_use(&self) -> std::collections::HashSet<String> {
        self.in_use.lock().keys().cloned().collect()
    }

    /// The hold on the artifacts of component `sha256` (compiled, instrumented, its
    /// stored functions) and, with a snapshot `key`, on that snapshot's artifact or the
    /// record that it cannot be made, taken now, that a driver loaded with them keeps
    /// while it lives (a load that fails drops it at once). When the last such driver
    /// is gone (a tenant replaced with another component or other arguments, removed),
    /// they may be evicted like any unused artifact: a long-running process does not
    /// keep everything it ever compiled past the cache's size bound.
    pub fn lease(self: &Arc<Self>, sha256: &str, snapshot: Option<&str>) -> ArtifactLease {
        let names = match &self.cache_dir {
            Some(dir) => {
                let mut stems = vec![
                    sha256.to_string(),
                    instrumented_stem(sha256),
                    functions_stem(sha256),
                ];
                let mut names = Vec::new();
                if let Some(key) = snapshot {
                    let stem = snapshot_stem(sha256, key);
                    names.push(artifact_name(&self.declined_path(dir, &stem)));
                    stems.push(stem);
                }
                names.extend(stems.iter().map(|s| artifact_name(&self.artifact(dir, s))));
                names
            }
            None => Vec::new(),
        };
        {
            let mut in_use = self.in_use.lock();
            for name in &names {
                *in_use.entry(name.clone()).or_default() += 1;
            }
        }
        ArtifactLease {
            engine: self.clone(),
            names,
        }
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Reads a component's file (at most [`MAX_COMPONENT_BYTES`]) and checks that it is
    /// a component.
    pub fn read(path: &Path) -> Result<Source, LoadError> {
        use std::io::Read as _;
        let read_error = |source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        };
        let too_large = |size| LoadError::TooLarge {
            path: path.to_path_buf(),
            size,
        };
        let file = std::fs::File::open(path).map_err(read_error)?;
        let size = file.metadata().map_err(read_error)?.len();
        if size > MAX_COMPONENT_BYTES {
            return Err(too_large(size));
        }
        // (Read up to one byte past the bound: a file that grew meanwhile is refused too.)
        let mut bytes = Vec::with_capacity(size as usize);
        file.take(MAX_COMPONENT_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(read_error)?;
        if bytes.len() as u64 > MAX_COMPONENT_BYTES {
            return Err(too_large(bytes.len() as u64));
        }
        check_header(path, &bytes)?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        Ok(Source { bytes, sha256 })
    }

    /// Reads and compiles a component, through the AOT cache when one is configured.
    pub fn load(&self, path: &Path) -> Result<LoadedComponent, LoadError> {
        let source = Self::read(path)?;
        self.load_source(path, &source)
    }

    /// Compiles a component read with [`WasmEngine::read`], through the AOT cache.
    pub fn load_source(&self, path: &Path, source: &Source) -> Result<LoadedComponent, LoadError> {
        let stem = source.sha256.clone();
        self.cached_or_compile(path, &source.bytes, &stem, &source.sha256, false)
    }

    /// Compiles `source` instrumented for snapshots (`bytes`), through the AOT cache: it
    /// does not depend on the driver's arguments, so a driver configured again with
    /// other arguments only runs `init` and compiles its new snapshot.
    pub fn load_instrumented(
        &self,
        path: &Path,
        source: &Source,
        bytes: &[u8],
    ) -> Result<LoadedComponent, LoadError> {
        let stem = instrumented_stem(&source.sha256);
        self.cached_or_compile(path, bytes, &stem, &source.sha256, false)
    }

    /// Compiles `bytes` without the cache.
    pub fn compile(&self, path: &Path, bytes: &[u8]) -> Result<Component, LoadError> {
        Component::new(&self.engine, bytes).map_err(|e| LoadError::Compile {
            path: path.to_path_buf(),
            message: format!("{e:#}"),
        })
    }

    /// The snapshot of `source` pre-initialised with `key`'s arguments
    /// ([`snapshot_key`]): cached, known not to work, or not made yet.
    pub fn snapshot_lookup(&self, source: &Source, key: &str) -> SnapshotLookup {
        let Some(dir) = &self.cache_dir else {
            return SnapshotLookup::Missing;
        };
        let stem = snapshot_stem(&source.sha256, key);
        let declined = self.declined_path(dir, &stem);
        if let Ok(reason) = std::fs::read_to_string(&declined) {
            return SnapshotLookup::Declined(reason.chars().take(1024).collect());
        }
        let artifact = self.artifact(dir, &stem);
        if !artifact.is_file() {
            return SnapshotLookup::Missing;
        }
        match self.cached(dir, &artifact) {
            Ok(component) => SnapshotLookup::Hit(LoadedComponent {
                component,
                sha256: source.sha256.clone(),
                cache: CacheOutcome::Hit,
                functions: None,
            }),
            Err(_) => SnapshotLookup::Missing,
        }
    }

    /// Compiles a snapshot of `source` and stores it in the AOT cache, readable by the
    /// owner only (it holds what `init` computed from the driver's arguments).
    pub fn store_snapshot(
        &self,
        path: &Path,
        source: &Source,
        key: &str,
        snapshot: &[u8],
    ) -> Result<LoadedComponent, LoadError> {
        let stem = snapshot_stem(&source.sha256, key);
        self.cached_or_compile(path, snapshot, &stem, &source.sha256, true)
    }

    /// Records that `source` cannot be snapshotted with `key`'s arguments, and why, so
    /// the next start does not try again.
    pub fn store_declined(&self, source: &Source, key: &str, reason: &str) {
        let Some(dir) = &self.cache_dir else {
            return;
        };
        let stem = snapshot_stem(&source.sha256, key);
        let file = self.declined_path(dir, &stem);
        let written = std::fs::create_dir_all(dir)
            .and_then(|_| super::cache::write_atomically(&file, reason.as_bytes(), false));
        if let Err(e) = written {
            tracing::warn!(file = %file.display(), "cannot write the AOT cache: {e}");
        }
    }

    /// Names a snapshot by what it depends on beyond the component: the arguments `init`
    /// receives (the component's own, after mailpush's keys are taken off) and the
    /// memory limit (a snapshot's initial memory is what `init` left). Under the cache's
    /// private key (an HMAC), so that a file name reveals nothing of an argument, not
    /// even to someone guessing a weak secret.
    pub fn snapshot_key(&self, args: &DriverArgs, memory: usize) -> String {
        let mut material = Vec::new();
        material.extend_from_slice(b"mailpush-snapshot-1\0");
        material.extend_from_slice(&(memory as u64).to_le_bytes());
        for (k, v) in args.iter() {
            for part in [k, v] {
                material.extend_from_slice(&(part.len() as u64).to_le_bytes());
                material.extend_from_slice(part.as_bytes());
            }
        }
        let digest = match self.cache_dir.as_deref().and_then(cache_key) {
            Some(key) => sign(&key, &material),
            None => Sha256::digest(&material).to_vec(),
        };
        hex::encode(&digest[..12])
    }

    fn artifact(&self, dir: &Path, stem: &str) -> PathBuf {
        dir.join(format!("{stem}-{}.cwasm", self.engine_key()))
    }

    fn declined_path(&self, dir: &Path, stem: &str) -> PathBuf {
        dir.join(format!("{stem}-{}.declined", self.engine_key()))
    }

    /// A verified artifact, deserialised.
    fn cached(&self, dir: &Path, artifact: &Path) -> Result<Component, CacheOutcome> {
        let key = cache_key(dir).ok_or(CacheOutcome::Disabled)?;
        let stored = std::fs::read(artifact).map_err(|_| CacheOutcome::Miss)?;
        let Some(body) = verify(&key, &artifact_name(artifact), &stored) else {
            tracing::warn!(artifact = %artifact.display(), "cached artifact failed verification (tampered or corrupt), recompiling");
            return Err(CacheOutcome::Rejected);
        };
        // SAFETY: the artifact was written by this host (its HMAC under the state dir's
        // private key verifies) for this engine configuration (part of the file name);
        // wasmtime checks compatibility again.
        match unsafe { Component::deserialize(&self.engine, body) } {
            Ok(component) => {
                super::cache::touch(artifact);
                Ok(component)
            }
            Err(e) => {
                tracing::warn!(artifact = %artifact.display(), "cached artifact unusable, recompiling: {e}");
                Err(CacheOutcome::Rejected)
            }
        }
    }

    fn cached_or_compile(
        &self,
        path: &Path,
        bytes: &[u8],
        stem: &str,
        sha256: &str,
        private: bool,
    ) -> Result<LoadedComponent, LoadError> {
        let sha256 = sha256.to_string();
        let Some(dir) = &self.cache_dir else {
            return Ok(LoadedComponent {
                component: self.compile(path, bytes)?,
                sha256,
                cache: CacheOutcome::Disabled,
                functions: None,
            });
        };
        let artifact = self.artifact(dir, stem);
        let lock = self
            .cache_locks
            .lock()
            .entry(artifact_name(&artifact))
            .or_default()
            .clone();
        let _guard = lock.lock();
        let key = cache_key(dir);
        let outcome = match self.cached(dir, &artifact) {
            Ok(component) => {
                return Ok(LoadedComponent {
                    component,
                    sha256,
                    cache: CacheOutcome::Hit,
                    functions: None,
                })
            }
            Err(CacheOutcome::Rejected) => CacheOutcome::Rejected,
            Err(_) => CacheOutcome::Miss,
        };
        let Some(key) = key else {
            return Ok(LoadedComponent {
                component: self.compile(path, bytes)?,
                sha256,
                cache: outcome,
                functions: None,
            });
        };
        let (component, functions) = if bytes.len() as u64 >= self.reuse_from {
            let (c, f) = self.compile_reusing(dir, &key, path, bytes, &sha256)?;
            (c, Some(f))
        } else {
            (self.compile(path, bytes)?, None)
        };
        if let Ok(serialized) = component.serialize() {
            self.store(dir, &key, &artifact, &serialized, private);
        }
        Ok(LoadedComponent {
            component,
            sha256,
            cache: outcome,
            functions,
        })
    }

    /// Compiles `bytes`, a variant of the component `sha256` (itself, instrumented, a
    /// snapshot), with the functions its last compile left in the AOT cache; stores the
    /// functions this compile used for the next ([`super::function_cache`]). Only big
    /// components (at least [`REUSE_FUNCTIONS_FROM`] bytes) compile this way, one at a
    /// time per engine (the store holds one component's functions; on two cores one big
    /// compile already keeps both busy); a small one compiles at once without the store.
    /// A small component compiling meanwhile still passes through the open store: it
    /// may find a function there and leave its few in it (content-keyed, so never a
    /// wrong one), and its lookups count in the big component's figures.
    fn compile_reusing(
        &self,
        dir: &Path,
        key: &[u8],
        path: &Path,
        bytes: &[u8],
        sha256: &str,
    ) -> Result<(Component, FunctionReuse), LoadError> {
        let artifact = self.artifact(dir, &functions_stem(sha256));
        let _one_at_a_time = self.functions_lock.lock();
        let stored = std::fs::metadata(&artifact)
            .ok()
            .filter(|m| m.len() <= super::function_cache::MAX_FILE_BYTES)
            .and_then(|_| std::fs::read(&artifact).ok());
        let name = artifact_name(&artifact);
        let earlier = stored.and_then(|stored| match verify(key, &name, &stored) {
            Some(body) => {
                let start = stored.len() - body.len();
                Some((stored, start))
            }
            None => {
                tracing::warn!(artifact = %artifact.display(), "stored functions failed verification (tampered or corrupt), compiling without them");
                None
            }
        });
        let session = self.functions.begin(earlier);
        let compiled = self.compile(path, bytes);
        let ended = session.end();
        let component = compiled?;
        match ended.functions {
            Some(functions) => self.store(dir, key, &artifact, &functions, true),
            None => {
                if artifact.is_file() {
                    super::cache::touch(&artifact);
                }
            }
        }
        Ok((component, ended.reuse))
    }

    /// Writes `body` signed to `artifact` (readable by the owner only if `private`),
    /// then keeps the cache within its size.
    fn store(&self, dir: &Path, key: &[u8], artifact: &Path, body: &[u8], private: bool) {
        let mut out = sign_artifact(key, &artifact_name(artifact), body);
        out.extend_from_slice(body);
        let written = super::cache::write_atomically(artifact, &out, private);
        if let Err(e) = written {
            tracing::warn!(artifact = %artifact.display(), "cannot write the AOT cache: {e}");
        }
        let keep = self.in_use();
        for name in super::cache::prune(dir, super::cache::MAX_CACHE_BYTES, &keep) {
            tracing::info!(cache = %dir.display(), "AOT cache over {} MiB: removed the least recently used {name}", super::cache::MAX_CACHE_BYTES >> 20);
        }
    }

    /// Whether loading `path` means a long compile: a component of at least
    /// [`SLOW_COMPILE_BYTES`] with no artifact in the AOT cache (a JavaScript or Python
    /// component compiles for many seconds). A big component's file is read and hashed
    /// to tell (13–19 MB): what was read comes back either way, for the load to use
    /// instead of reading it again.
    pub fn slow_compile(&self, path: &Path, snapshot: Option<&str>) -> CompileOutlook {
        let Ok(size) = std::fs::metadata(path).map(|m| m.len()) else {
            return CompileOutlook::Quick(None);
        };
        if size < SLOW_COMPILE_BYTES {
            return CompileOutlook::Quick(None);
        }
        // An unreadable or malformed file fails quickly: the load says why.
        let Ok(source) = Self::read(path) else {
            return CompileOutlook::Quick(None);
        };
        if let Some(dir) = &self.cache_dir {
            if let Some(key) = snapshot {
                let stem = snapshot_stem(&source.sha256, key);
                if self.artifact(dir, &stem).is_file() {
                    return CompileOutlook::Quick(Some(source));
                }
                if !self.declined_path(dir, &stem).is_file() {
                    // Not tried yet: instrumenting, init and the snapshot's compile.
                    return CompileOutlook::Slow(source);
                }
            }
            if self.artifact(dir, &source.sha256).is_file() {
                return CompileOutlook::Quick(Some(source));
            }
        }
        CompileOutlook::Slow(source)
    }

    /// A short hash of everything that makes compiled code compatible with this engine.
    fn engine_key(&self) -> String {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        env!("CARGO_PKG_VERSION").hash(&mut h);
        // The artifacts' signing scheme (2: the tag covers the file name): artifacts of an
        // earlier scheme are not looked up (and are pruned as unused), not taken for
        // tampered ones.
        super::cache::ARTIFACT_SCHEME.hash(&mut h);
        format!("{:016x}", h.finish())
    }
}

fn artifact_name(artifact: &Path) -> String {
    artifact
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn check_header(path: &Path, bytes: &[u8]) -> Result<(), LoadError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(LoadError::NotWasm {
            path: path.to_path_buf(),
        });
    }
    if bytes[4..8] == [1, 0, 0, 0] {
        return Err(LoadError::CoreModule {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// The engines of a process: one with fuel metering, one without, each created on
/// first use. Every wasm driver of a process with the same cache dir — numbered and
/// tenant handlers alike — shares one [`Engines`] ([`Engines::shared`]): one pooling
/// allocator and one epoch thread per flavour.
#[derive(Default)]
pub struct Engines {
    cache_dir: Option<PathBuf>,
    reuse_from: u64,
    plain: OnceLock<Arc<WasmEngine>>,
    fuel: OnceLock<Arc<WasmEngine>>,
}

impl Engines {
    /// Engines whose AOT cache lives in `cache_dir`.
    pub fn new(cache_dir: Option<PathBuf>) -> Self {
        Engines {
            cache_dir,
            reuse_from: REUSE_FUNCTIONS_FROM,
            ..Default::default()
        }
    }

    /// The same, with components of at least `bytes` reusing compiled functions
    /// between their compiles (instead of [`REUSE_FUNCTIONS_FROM`]).
    pub fn reusing_functions_from(mut self, bytes: u64) -> Self {
        self.reuse_from = bytes;
        self
    }

    /// The process's engines for `cache_dir`, made on first use and shared while any
    /// driver holds them.
    pub fn shared(cache_dir: Option<PathBuf>) -> Arc<Engines> {
        static SHARED: OnceLock<Mutex<HashMap<Option<PathBuf>, Weak<Engines>>>> = OnceLock::new();
        let mut shared = SHARED.get_or_init(Default::default).lock();
        shared.retain(|_, w| w.strong_count() > 0);
        if let Some(e) = shared.get(&cache_dir).and_then(Weak::upgrade) {
            return e;
        }
        let e = Arc::new(Engines::new(cache_dir.clone()));
        shared.insert(cache_dir, Arc::downgrade(&e));
        e
    }

    /// The names of the AOT cache's artifacts and records the engines loaded or wrote.
    pub fn in_use(&self) -> std::collections::HashSet<String> {
        [&self.plain, &self.fuel]
            .into_iter()
            .filter_map(OnceLock::get)
            .flat_map(|e| e.in_use())
            .collect()
    }

    /// The engine for drivers with (`fuel = true`) or without fuel metering.
    pub fn get(&self, fuel: bool) -> Result<Arc<WasmEngine>, LoadError> {
        let cell = if fuel { &self.fuel } else { &self.plain };
        if let Some(e) = cell.get() {
            return Ok(e.clone());
        }
        let e = Arc::new(WasmEngine::new(
            fuel,
            self.cache_dir.clone(),
            self.reuse_from,
        )?);
        Ok(cell.get_or_init(|| e).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A component of `n` core instances of one module with a memory of its own.
    fn memories(n: u32) -> Vec<u8> {
        let mut module = wasm_encoder::Module::new();
        let mut mems = wasm_encoder::MemorySection::new();
        mems.memory(wasm_encoder::MemoryType {
            minimum: 1,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        });
        module.section(&mems);
        let mut component = wasm_encoder::Component::new();
        component.section(&wasm_encoder::ModuleSection(&module));
        let mut instances = wasm_encoder::InstanceSection::new();
        for _ in 0..n {
            instances.instantiate(0, Vec::<(&str, wasm_encoder::ModuleArg)>::new());
        }
        component.section(&instances);
        component.finish()
    }

    /// A component of many core instances, each with a memory, took as many of the
    /// pool's slots as it had (a thousand: half the pool, every other driver refused):
    /// more than the caps per component is refused when it loads, naming why.
    #[test]
    fn a_component_with_more_memories_than_the_cap_is_refused() {
        let engine = WasmEngine::new(false, None, u64::MAX).unwrap();
        let path = Path::new("memories.wasm");
        assert!(engine
            .compile(path, &memories(MAX_MEMORIES_PER_COMPONENT))
            .is_ok());
        let e = engine
            .compile(path, &memories(MAX_MEMORIES_PER_COMPONENT + 1))
            .expect_err("refused");
        assert!(e.to_string().contains("memories"), "{e}");
    }

    /// A component file over the size bound is refused before it is read, naming both
    /// sizes.
    #[test]
    fn a_component_file_over_the_size_bound_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.wasm");
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(MAX_COMPONENT_BYTES + 1).unwrap();
        let e = WasmEngine::read(&path).err().map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("is 67108865 bytes, larger than the 64 MiB")),
            "{e:?}"
        );
        f.set_len(1024).unwrap();
        let e = WasmEngine::read(&path).err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("bad magic number")));
    }
}
