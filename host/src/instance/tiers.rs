//! Compile tiers: one wasmtime `Engine` per compiler, the artifact cache of
//! each, and the background optimiser.
//!
//! wasmtime shares nothing across compiler strategies: an artifact, a `Linker`,
//! an `InstancePre` and a `Store` all belong to one `Engine`. So each tier is a
//! [`TierEngine`] — an engine and linker with every capability per world
//! (WASI 0.2 without concurrency support, WASI 0.3 with it, made on first
//! use), artifacts named by digest, tier, the engine's compatibility hash and
//! world — and a request's `Store` is made on the engine of the code it runs
//! ([`Prepared`]). A component in
//! memory is one [`Code`], shared by every tenant running that digest; the
//! optimiser swaps its [`Prepared`] when the optimised build is ready, so new
//! requests of all those tenants get it while requests in flight finish on the
//! code they started with.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock, Weak};
use std::time::Instant;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use bytes::Bytes;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Strategy};

use super::world::{self, HandlerPre};
use super::{LoadError, RuntimeStats, missing_imports};
use crate::capability::{self, GuestState};
use crate::config::{EngineTuning, Tier, TierPolicy};

/// One world's engine and linker within a tier.
struct WorldEngine {
    engine: Engine,
    linker: Linker<GuestState>,
    /// Whether it is the WASI 0.3 engine.
    concurrent: bool,
}

/// The settings of `tier`'s engine for one world. `concurrent` turns on the
/// component model's async ABI and the concurrent-execution state every
/// `Store` then carries (WASI 0.3 needs both; a WASI 0.2 request pays for them
/// without using them). `pool` is `None` for a compile-only engine: what it
/// compiles is the same code (the allocator is no part of an artifact's
/// compatibility), and it reserves no address space.
fn engine_for(
    tuning: &EngineTuning,
    tier: Tier,
    pool: Option<PoolingAllocationConfig>,
    concurrent: bool,
) -> anyhow::Result<Engine> {
    let mut wasm = Config::new();
    wasm.wasm_component_model(true)
        .concurrency_support(concurrent)
        .wasm_component_model_async(concurrent)
        .consume_fuel(true);
    if let Some(pool) = pool {
        wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    match tier {
        Tier::Baseline => {
            wasm.strategy(Strategy::Winch);
        }
        Tier::Optimized => {
            wasm.strategy(Strategy::Cranelift)
                .native_unwind_info(tuning.native_unwind_info)
                .cranelift_regalloc_algorithm(if tuning.single_pass_regalloc {
                    wasmtime::RegallocAlgorithm::SinglePass
                } else {
                    wasmtime::RegallocAlgorithm::Backtracking
                })
                .cranelift_opt_level(if tuning.optimize {
                    wasmtime::OptLevel::Speed
                } else {
                    wasmtime::OptLevel::None
                });
        }
    }
    Engine::new(&wasm)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("creating the {} engine", tier.as_str()))
}

impl WorldEngine {
    fn new(
        tuning: &EngineTuning,
        tier: Tier,
        pool: PoolingAllocationConfig,
        concurrent: bool,
    ) -> anyhow::Result<Self> {
        let engine = engine_for(tuning, tier, Some(pool), concurrent)?;
        let mut linker = Linker::new(&engine);
        capability::add_to_linker(&mut linker, concurrent)?;
        Ok(Self {
            engine,
            linker,
            concurrent,
        })
    }
}

/// One tier's compile-only engines (no pool) and the artifact names: what
/// an optimiser job holds while it compiles, so a host shut down meanwhile
/// gives its pools' address space back at once, not when the compile ends.
#[derive(Clone)]
pub(crate) struct Compiler {
    tier: Tier,
    /// For WASI 0.2 components.
    sync: Engine,
    /// For WASI 0.3 ones (and any using the component model's async ABI), if on.
    concurrent: Option<Engine>,
    /// The engines' compatibility hash, naming the artifacts.
    compat: String,
    artifacts: PathBuf,
}

impl Compiler {
    fn new(tuning: &EngineTuning, tier: Tier, artifacts: &Path) -> anyhow::Result<Self> {
        let sync = engine_for(tuning, tier, None, false)?;
        let concurrent = tuning
            .wasi_p3
            .then(|| engine_for(tuning, tier, None, true))
            .transpose()?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        sync.precompile_compatibility_hash().hash(&mut hasher);
        Ok(Self {
            tier,
            sync,
            concurrent,
            compat: format!("{:016x}", hasher.finish()),
            artifacts: artifacts.to_owned(),
        })
    }

    /// Where the artifact of component `digest` for the WASI 0.2 engine, or
    /// the 0.3 one, lives (the 0.3 engine differs from the 0.2 one only in
    /// its concurrency support; wasmtime checks the rest when it loads one).
    fn artifact_path(&self, concurrent: bool, digest: &str) -> PathBuf {
        let world = if concurrent { "-async" } else { "" };
        self.artifacts.join(format!(
            "{digest}-{}-{}{world}.cwasm",
            self.tier.as_str(),
            self.compat
        ))
    }

    /// Whether the cache has an artifact of `digest`, either world.
    pub fn has_artifact(&self, digest: &str) -> bool {
        self.artifact_path(false, digest).exists()
            || (self.concurrent.is_some() && self.artifact_path(true, digest).exists())
    }

    /// Compiles `wasm` into the artifact cache for the engine of the world it
    /// exports (a 0.2 component using the component model's async ABI goes
    /// to the WASI 0.3 engine too); answers whether that is the 0.3 engine.
    pub fn compile(&self, wasm: &[u8], digest: &str) -> Result<bool, LoadError> {
        if world::exports_p3_handler(wasm)
            && let Some(engine) = &self.concurrent
        {
            return self.compile_on(engine, true, wasm, digest).map(|()| true);
        }
        match self.compile_on(&self.sync, false, wasm, digest) {
            Ok(()) => Ok(false),
            // wasmparser's refusal of every part of the async ABI says this.
            Err(LoadError::Invalid(why)) if why.contains("component model async") => {
                match &self.concurrent {
                    Some(engine) => self.compile_on(engine, true, wasm, digest).map(|()| true),
                    None => Err(LoadError::Invalid(why)),
                }
            }
            Err(e) => Err(e),
        }
    }

    fn compile_on(
        &self,
        engine: &Engine,
        concurrent: bool,
        wasm: &[u8],
        digest: &str,
    ) -> Result<(), LoadError> {
        let bytes = engine
            .precompile_component(wasm)
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        let path = self.artifact_path(concurrent, digest);
        let write = || -> anyhow::Result<()> {
            let mut tmp = tempfile::NamedTempFile::new_in(&self.artifacts)?;
            std::io::Write::write_all(&mut tmp, &bytes)?;
            tmp.as_file().sync_all()?;
            tmp.persist(&path)?;
            Ok(())
        };
        write().map_err(LoadError::Internal)
    }
}

/// One compiler's engines, linkers and artifacts.
///
/// A tier has an engine per world: WASI 0.2 components run on one without
/// concurrency support (its stores carry no async state, which costs a 0.2
/// request a quarter of its throughput, measured in docs/benchmarks.md), WASI
/// 0.3 components on one with it, made when the first such component loads.
pub(crate) struct TierEngine {
    /// Which compiler this is.
    pub tier: Tier,
    /// WASI 0.2 components' engine (its own pooling allocator).
    sync: WorldEngine,
    /// WASI 0.3 components' engine, once one is loaded (if WASI 0.3 is on).
    concurrent: OnceLock<WorldEngine>,
    /// Serialises making `concurrent`.
    making: Mutex<()>,
    compiler: Compiler,
    tuning: EngineTuning,
    pool: PoolingAllocationConfig,
}

impl TierEngine {
    /// The engines of `tier`: fuel and a pool of `pool`'s
    /// shape, whichever compiler.
    pub fn new(
        tuning: &EngineTuning,
        tier: Tier,
        pool: PoolingAllocationConfig,
        artifacts: &Path,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            tier,
            sync: WorldEngine::new(tuning, tier, pool.clone(), false)?,
            concurrent: OnceLock::new(),
            making: Mutex::new(()),
            compiler: Compiler::new(tuning, tier, artifacts)?,
            tuning: tuning.clone(),
            pool,
        })
    }

    /// The WASI 0.3 engine, made now if it is not yet (`None` with WASI 0.3 off).
    fn concurrent(&self) -> Result<Option<&WorldEngine>, LoadError> {
        if !self.tuning.wasi_p3 {
            return Ok(None);
        }
        if let Some(engine) = self.concurrent.get() {
            return Ok(Some(engine));
        }
        let _one = self.making.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(engine) = self.concurrent.get() {
            return Ok(Some(engine));
        }
        let engine = WorldEngine::new(&self.tuning, self.tier, self.pool.clone(), true)
            .map_err(LoadError::Internal)?;
        Ok(Some(self.concurrent.get_or_init(|| engine)))
    }

    /// The engines made so far (the compile-only ones apart).
    pub fn engines(&self) -> impl Iterator<Item = &Engine> {
        std::iter::once(&self.sync.engine).chain(self.concurrent.get().map(|w| &w.engine))
    }

    /// This tier's compiler, holding none of its pools.
    pub fn compiler(&self) -> Compiler {
        self.compiler.clone()
    }

    /// Whether this tier has an artifact of `digest`, either world.
    pub fn has_artifact(&self, digest: &str) -> bool {
        self.compiler.has_artifact(digest)
    }

    /// This tier's cached artifact of `digest` (either world); a missing or
    /// unreadable one is `None`.
    pub fn read_artifact(&self, digest: &str) -> Option<Component> {
        if let Some(component) = self.read_world(&self.sync, digest) {
            return Some(component);
        }
        if !self.tuning.wasi_p3 || !self.compiler.artifact_path(true, digest).exists() {
            return None;
        }
        let world = self.concurrent().ok().flatten()?;
        self.read_world(world, digest)
    }

    fn read_world(&self, world: &WorldEngine, digest: &str) -> Option<Component> {
        let path = self.compiler.artifact_path(world.concurrent, digest);
        if !path.exists() {
            return None;
        }
        // SAFETY: the file was written by `Compiler::compile` with this
        // engine's tier, compatibility hash and world in its name, in a
        // directory only this host writes; wasmtime still checks its header
        // and rejects incompatible artifacts.
        #[expect(unsafe_code, reason = "loading our own precompiled artifact")]
        let loaded = unsafe { Component::deserialize_file(&world.engine, &path) };
        match loaded {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "discarding unreadable artifact");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Compiles `wasm` with this tier's compiler into the artifact cache and
    /// loads it on the engine of its world.
    pub fn compile(&self, wasm: &[u8], digest: &str) -> Result<Component, LoadError> {
        let concurrent = self.compiler.compile(wasm, digest)?;
        let world = if concurrent {
            self.concurrent()?
                .ok_or_else(|| LoadError::Internal(anyhow::anyhow!("WASI 0.3 is off")))?
        } else {
            &self.sync
        };
        self.read_world(world, digest)
            .ok_or_else(|| LoadError::Internal(anyhow::anyhow!("artifact vanished after writing")))
    }

    /// Checks imports and exports and pre-instantiates, with the linker of the
    /// engine `component` was loaded on.
    pub fn prepare(&self, component: &Component) -> Result<Prepared, LoadError> {
        let world = std::iter::once(&self.sync)
            .chain(self.concurrent.get())
            .find(|w| Engine::same(&w.engine, component.engine()))
            .ok_or_else(|| {
                LoadError::Internal(anyhow::anyhow!("component loaded on another tier's engine"))
            })?;
        let missing = missing_imports(&world.engine, component);
        if !missing.is_empty() {
            return Err(LoadError::MissingImports(missing));
        }
        let kind = world::classify(&world.engine, component)?;
        let pre = world
            .linker
            .instantiate_pre(component)
            .map_err(|e| LoadError::MissingImports(vec![format!("{e:#}")]))?;
        let pre = HandlerPre::new(kind, pre)?;
        Ok(Prepared {
            tier: self.tier,
            pre,
        })
    }
}

/// The engines of the tiers a policy uses. Replaced whole by
/// [`super::Runtime::trim`]: a fresh set has empty pools, and the old set's
/// pools are unmapped when the last code and instance using them are gone.
pub(crate) struct Tiers {
    /// Winch's engine, unless the policy is optimised-only.
    pub baseline: Option<Arc<TierEngine>>,
    /// Cranelift's engine, unless the policy is baseline-only.
    pub optimized: Option<Arc<TierEngine>>,
}

impl Tiers {
    /// Builds the engines `policy` uses; the policy actually in force comes
    /// back too (tiered falls back to optimised-only where Winch cannot run).
    pub fn new(
        policy: TierPolicy,
        tuning: &EngineTuning,
        pool: &PoolingAllocationConfig,
        artifacts: &Path,
    ) -> anyhow::Result<(Self, TierPolicy)> {
        let mut policy = policy;
        let engine = |tier| TierEngine::new(tuning, tier, pool.clone(), artifacts).map(Arc::new);
        let baseline = match policy.uses(Tier::Baseline).then(|| engine(Tier::Baseline)) {
            Some(Ok(engine)) => Some(engine),
            Some(Err(e)) if policy == TierPolicy::Tiered => {
                // Winch needs x86_64 with AVX or aarch64: elsewhere, optimise only.
                tracing::warn!(error = %format!("{e:#}"), "the baseline compiler is unavailable; compiling optimised code only");
                policy = TierPolicy::Optimized;
                None
            }
            Some(Err(e)) => return Err(e),
            None => None,
        };
        let optimized = policy
            .uses(Tier::Optimized)
            .then(|| engine(Tier::Optimized))
            .transpose()?;
        Ok((
            Self {
                baseline,
                optimized,
            },
            policy,
        ))
    }

    /// The engine of `tier`, if the policy uses it.
    pub fn get(&self, tier: Tier) -> Option<&Arc<TierEngine>> {
        match tier {
            Tier::Baseline => self.baseline.as_ref(),
            Tier::Optimized => self.optimized.as_ref(),
        }
    }

    /// The engines, best tier first.
    pub fn best_first(&self) -> impl Iterator<Item = &Arc<TierEngine>> {
        self.optimized.iter().chain(&self.baseline)
    }

    /// Bytes the pools keep resident in slots no instance uses now.
    pub fn idle_resident_bytes(&self) -> u64 {
        self.best_first()
            .flat_map(|t| t.engines())
            .filter_map(Engine::pooling_allocator_metrics)
            .map(|m| {
                (m.unused_memory_bytes_resident()
                    + m.unused_table_bytes_resident()
                    + m.unused_stack_bytes_resident().unwrap_or(0)) as u64
            })
            .sum()
    }
}

/// Pre-instantiated code of one tier.
pub(crate) struct Prepared {
    /// Which compiler made it.
    pub tier: Tier,
    /// Ready to instantiate (in a `Store` of `pre.engine()`), either world.
    pub pre: HandlerPre,
}

/// A component in memory, shared by every tenant running it; the optimiser
/// raises its tier in place.
pub(crate) struct Code {
    current: ArcSwap<Prepared>,
}

impl Code {
    pub fn new(prepared: Prepared) -> Self {
        Self {
            current: ArcSwap::from_pointee(prepared),
        }
    }

    /// Moves new requests to `prepared` (requests in flight keep theirs).
    pub fn replace(&self, prepared: Arc<Prepared>) {
        self.current.store(prepared);
    }

    /// The code new requests run now.
    pub fn current(&self) -> Arc<Prepared> {
        self.current.load_full()
    }

    /// Its tier now.
    pub fn tier(&self) -> Tier {
        self.current.load().tier
    }
}

/// Most components waiting for their optimised build at once; past it a
/// component stays on its baseline code until its next load asks again.
const MAX_PENDING: usize = 4096;

/// Compiles optimised code in the background: its own threads at the lowest
/// CPU priority (serving and first-tier compiles run first), one component at
/// a time per thread, each component once however many tenants run it.
pub(crate) struct Optimizer {
    tiers: Arc<ArcSwap<Tiers>>,
    swap: Arc<RwLock<()>>,
    threads: rayon::ThreadPool,
    /// Components queued or compiling, with the code in memory to raise when done.
    pending: Arc<Mutex<HashMap<String, Vec<Weak<Code>>>>>,
    /// Components Cranelift refused: not tried again by this process.
    failed: Arc<Mutex<std::collections::HashSet<String>>>,
    closed: Arc<AtomicBool>,
    stats: Arc<RuntimeStats>,
}

impl Optimizer {
    /// An optimiser compiling with `engine` on `threads` threads.
    pub fn new(
        tiers: Arc<ArcSwap<Tiers>>,
        swap: Arc<RwLock<()>>,
        threads: usize,
        stats: Arc<RuntimeStats>,
    ) -> anyhow::Result<Self> {
        let threads = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("lodge-optimize-{i}"))
            .start_handler(|_| lowest_cpu_priority())
            .build()
            .context("starting the optimiser threads")?;
        Ok(Self {
            tiers,
            swap,
            threads,
            pending: Arc::default(),
            failed: Arc::default(),
            closed: Arc::default(),
            stats,
        })
    }

    /// Whether `digest` may be queued: Cranelift did not refuse it before.
    pub fn wanted(&self, digest: &str) -> bool {
        !self
            .failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(digest)
    }

    /// If `digest` is queued or compiling now, adds `code` to what its build
    /// raises, and answers true.
    pub fn join(&self, digest: &str, code: &Arc<Code>) -> bool {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        match pending.get_mut(digest) {
            Some(waiting) => {
                waiting.retain(|c| c.strong_count() > 0);
                waiting.push(Arc::downgrade(code));
                true
            }
            None => false,
        }
    }

    /// Components queued or compiling now.
    pub fn pending(&self) -> usize {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Queues the optimised build of `digest` (whose bytes are `wasm`) and the
    /// raise of `code` to it; a component already queued is compiled once.
    pub fn enqueue(&self, digest: &str, wasm: Bytes, code: &Arc<Code>) {
        {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(waiting) = pending.get_mut(digest) {
                waiting.retain(|c| c.strong_count() > 0);
                waiting.push(Arc::downgrade(code));
                return;
            }
            if pending.len() >= MAX_PENDING {
                tracing::warn!(
                    digest,
                    "optimiser queue full; the component stays on baseline code for now"
                );
                return;
            }
            pending.insert(digest.to_owned(), vec![Arc::downgrade(code)]);
        }
        let job = Job {
            tiers: Arc::downgrade(&self.tiers),
            swap: self.swap.clone(),
            pending: self.pending.clone(),
            failed: self.failed.clone(),
            closed: self.closed.clone(),
            stats: self.stats.clone(),
            digest: digest.to_owned(),
            wasm,
        };
        // Inside a pool thread, wasmtime's parallel compilation uses this pool too.
        self.threads.spawn(move || job.run());
    }

    /// Stops starting queued compilations (one running finishes).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }
}

/// One optimised compile.
struct Job {
    failed: Arc<Mutex<std::collections::HashSet<String>>>,
    /// The runtime's engines, while it lives.
    tiers: Weak<ArcSwap<Tiers>>,
    /// Held (read) while code is prepared and swapped in, so a trim (write)
    /// never interleaves with it.
    swap: Arc<RwLock<()>>,
    pending: Arc<Mutex<HashMap<String, Vec<Weak<Code>>>>>,
    closed: Arc<AtomicBool>,
    stats: Arc<RuntimeStats>,
    digest: String,
    wasm: Bytes,
}

impl Job {
    fn run(self) {
        let taken = !self.closed.load(Ordering::Relaxed) && self.compile_and_raise();
        if !taken {
            self.pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&self.digest);
        }
    }

    /// Whether the queue entry was taken (then a later `enqueue` starts anew).
    fn compile_and_raise(&self) -> bool {
        let digest = &self.digest;
        let started = Instant::now();
        // The compiler of the engines in force now (a trim may have replaced
        // them since the queueing); no engine with a pool is held while it
        // compiles, so a host shut down meanwhile gives its pools back at once.
        let Some(compiler) = self
            .tiers
            .upgrade()
            .and_then(|tiers| tiers.load().optimized.as_ref().map(|e| e.compiler()))
        else {
            return false;
        };
        // The artifact may exist: another host sharing the directory, or a
        // restart, compiled it while this was queued.
        if !compiler.has_artifact(digest) {
            match compiler.compile(&self.wasm, digest) {
                Ok(_) => {
                    self.stats
                        .record_compile(Tier::Optimized, self.wasm.len(), started.elapsed());
                }
                Err(e) => {
                    tracing::warn!(digest, error = %e, "the optimised compile failed; the component stays on baseline code");
                    self.failed
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(digest.clone());
                    return false;
                }
            }
        }
        drop(compiler);
        let Some(tiers) = self.tiers.upgrade() else {
            return false;
        };
        let _no_trim = self.swap.read().unwrap_or_else(PoisonError::into_inner);
        let Some(engine) = tiers.load().optimized.clone() else {
            return false;
        };
        let Some(component) = engine.read_artifact(digest) else {
            return false;
        };
        let waiting: Vec<Arc<Code>> = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(digest)
            .map(|w| w.iter().filter_map(Weak::upgrade).collect())
            .unwrap_or_default();
        if waiting.is_empty() {
            return true;
        }
        match engine.prepare(&component) {
            Ok(prepared) => {
                let prepared = Arc::new(prepared);
                for code in &waiting {
                    code.replace(prepared.clone());
                }
                self.stats.tier_ups.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    digest,
                    ms = started.elapsed().as_millis() as u64,
                    "optimised code swapped in"
                );
            }
            Err(e) => {
                tracing::warn!(digest, error = %e, "the optimised build does not link; the component stays on baseline code");
            }
        }
        true
    }
}

/// Lowers the calling thread's CPU priority to the least (nice 19): on Linux
/// a thread's nice value is its own.
fn lowest_cpu_priority() {
    // SAFETY: setpriority has no memory effects; `0` names the calling thread.
    #[expect(unsafe_code, reason = "setpriority(2) has no safe wrapper in std")]
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
    if result != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "the optimiser runs at normal priority"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier_policies() {
        use crate::config::TierPolicy;
        assert_eq!(TierPolicy::Tiered.first(), Tier::Baseline);
        assert_eq!(TierPolicy::Optimized.first(), Tier::Optimized);
        assert!(TierPolicy::Tiered.uses(Tier::Optimized));
        assert!(!TierPolicy::Baseline.uses(Tier::Optimized));
        assert!(!TierPolicy::Optimized.uses(Tier::Baseline));
    }

    fn runtime(policy: TierPolicy, dir: &Path) -> super::super::Runtime {
        use crate::config::HostConfig;
        let config = HostConfig {
            data_dir: dir.to_owned(),
            max_instances: 4,
            ..HostConfig::default()
        }
        .with(|c| c.engine.tiers = policy);
        super::super::Runtime::new(&config).expect("runtime")
    }

    #[test]
    fn trimmed_engines_are_freed() {
        let dir = tempfile::tempdir().expect("tmp");
        let runtime = runtime(TierPolicy::Tiered, dir.path());
        for _ in 0..3 {
            let old: Vec<wasmtime::EngineWeak> = runtime
                .tiers
                .load()
                .best_first()
                .flat_map(|t| t.engines())
                .map(Engine::weak)
                .collect();
            assert_eq!(old.len(), 2, "no WASI 0.3 engine before a 0.3 component");
            runtime.trim().expect("trim");
            // Nothing runs on them: each engine's pools (terabytes of address
            // space, a mapping per stack slot) go at once.
            let gone = (0..200).any(|_| {
                std::thread::sleep(std::time::Duration::from_millis(5));
                old.iter().all(|engine| engine.upgrade().is_none())
            });
            assert!(gone, "the replaced engines are still alive");
        }
    }

    /// A component whose core module uses a tail call, which Winch does not compile.
    fn tail_calling_component() -> Bytes {
        let wat = r#"(component
            (core module $m (func $f (export "f") return_call $f))
            (core instance (instantiate $m)))"#;
        Bytes::from(wat::parse_str(wat).expect("valid text"))
    }

    #[test]
    fn what_winch_refuses_cranelift_compiles_unless_the_policy_is_baseline_only() {
        use crate::config::TierPolicy;
        let dir = tempfile::tempdir().expect("tmp");
        // Tiered: Cranelift compiles it; it then fails only for not being an HTTP handler.
        let tiered = runtime(TierPolicy::Tiered, dir.path());
        let refused = tiered
            .load(tail_calling_component())
            .expect_err("no handler");
        assert!(
            matches!(refused, LoadError::UnsupportedWorld(_)),
            "{refused:?}"
        );
        // Baseline only: Winch's refusal is the answer.
        let dir = tempfile::tempdir().expect("tmp");
        let baseline = runtime(TierPolicy::Baseline, dir.path());
        let refused = baseline
            .load(tail_calling_component())
            .expect_err("winch refuses");
        assert!(matches!(refused, LoadError::Invalid(_)), "{refused:?}");
    }
}
