//! Stage 3 of a request: the instance.
//!
//! One [`Runtime`] per process holds an `Engine` per compile tier (pooling
//! allocator, fuel; see [`tiers`]), each with a `Linker`
//! holding every capability and its on-disk cache of precompiled artifacts.
//! [`Runtime::load`] turns a `.wasm` into an [`App`]: validated, compiled once
//! by the first tier's compiler (or read back from the cache, best tier first),
//! pre-instantiated, and queued for its optimised build. [`Runtime::invoke`]
//! runs one request in a fresh `Store` under the tenant's limits and classifies
//! whatever goes wrong.

mod tiers;
pub mod warm;
mod world;

pub use world::World;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body::Body;
use http_body_util::BodyExt as _;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tracing::Instrument as _;
use wasmtime::component::Component;
use wasmtime::{Engine, PoolingAllocationConfig, Store, Trap};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use world::Handler;

use crate::capability::{Grant, GuestState};
use crate::config::{HostConfig, Limits, Tier, TierPolicy};
use crate::counters::TenantCounters;
use crate::error::ResponseBody;
use crate::limits::{
    Admission, Fair, GrowthDenied, GuestLimiter, MemoryBudget, Pool, Rejected, TenantLoad,
};
use crate::logs::LogStream;
use arc_swap::ArcSwap;
use tiers::{Code, Optimizer, Prepared, TierEngine, Tiers};
use warm::{Kept, Reuse, WarmInstance, WarmSets};

/// Interface packages the host links, with the version prefix it implements
/// (a pre-release after the prefix, such as `0.3.0-rc-…`, is not it); anything
/// else is a missing import.
const PROVIDED_PACKAGES: &[(&str, &str)] = &[
    ("wasi:cli", "0.2."),
    ("wasi:clocks", "0.2."),
    ("wasi:filesystem", "0.2."),
    ("wasi:http", "0.2."),
    ("wasi:io", "0.2."),
    ("wasi:random", "0.2."),
    ("wasi:sockets", "0.2."),
    ("wasi:cli", "0.3."),
    ("wasi:clocks", "0.3."),
    ("wasi:filesystem", "0.3."),
    ("wasi:http", "0.3."),
    ("wasi:random", "0.3."),
    ("wasi:sockets", "0.3."),
    ("wasi:keyvalue", "0.2.0-draft2"),
    ("lodge:platform", "0.1."),
];

/// Why a `.wasm` cannot be served. Each message tells the tenant what to do.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Not WebAssembly at all.
    #[error("not a WebAssembly binary (it does not start with the `\\0asm` magic bytes)")]
    NotWasm,
    /// A core module where a component is needed.
    #[error(
        "this is a core WebAssembly module, not a component: build with \
         `--target wasm32-wasip2` (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule,
    /// The binary does not validate or compile.
    #[error("invalid component: {0}")]
    Invalid(String),
    /// The component imports interfaces this host does not provide.
    #[error("the component imports interfaces this host does not provide: {}", .0.join(", "))]
    MissingImports(Vec<String>),
    /// It exports neither HTTP handler Lodge serves.
    #[error(
        "the component exports {0}, but no HTTP handler Lodge serves: Lodge accepts \
         `wasi:http/incoming-handler@0.2.x` (world `wasi:http/proxy`, WASI 0.2) or \
         `wasi:http/handler@0.3.x` (world `wasi:http/service`, WASI 0.3)"
    )]
    UnsupportedWorld(String),
    /// A WASI 0.3 component on a host that serves only WASI 0.2.
    #[error(
        "the component exports `wasi:http/handler@0.3.x` (WASI 0.3), and this host serves \
         only WASI 0.2 (`wasi:http/incoming-handler@0.2.x`): its operator turned WASI 0.3 \
         off (`--wasi-p3 false`)"
    )]
    WasiP3Off,
    /// It exports the handler of a world, but not with that world's type.
    #[error("the component's HTTP handler export does not have the type its world defines: {0}")]
    NotAnHttpHandler(String),
    /// The host could not store or read the compiled artifact.
    #[error("internal error while compiling")]
    Internal(#[source] anyhow::Error),
}

/// A handle on the per-component load lock of [`Runtime::gate`].
struct Gate<'a> {
    runtime: &'a Runtime,
    digest: String,
    lock: Arc<Mutex<()>>,
}

impl Gate<'_> {
    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Gate<'_> {
    fn drop(&mut self) {
        let mut gates = self
            .runtime
            .gates
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // The map's reference and ours: nobody else waits.
        if Arc::strong_count(&self.lock) == 2 {
            gates.remove(&self.digest);
        }
    }
}

/// A compiled, pre-instantiated component, ready to serve requests.
pub struct App {
    /// SHA-256 of the `.wasm`, lowercase hex.
    pub digest: String,
    /// Size of the `.wasm` in bytes.
    pub size: usize,
    /// Time spent compiling (or loading the cached artifact).
    pub compile_time: Duration,
    /// Whether the precompiled artifact came from the cache (or from another
    /// tenant running the same component).
    pub from_cache: bool,
    code: Arc<Code>,
}

impl App {
    /// The tier of the code new requests run now (it rises when the
    /// optimised build is swapped in).
    pub fn tier(&self) -> Tier {
        self.code.tier()
    }
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("digest", &self.digest)
            .field("size", &self.size)
            .field("compile_time", &self.compile_time)
            .field("from_cache", &self.from_cache)
            .field("tier", &self.tier())
            .finish_non_exhaustive()
    }
}

/// How a request ended, when it did not end with the guest's response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestFailure {
    /// The wall-clock deadline passed.
    Deadline,
    /// The fuel budget ran out.
    FuelExhausted,
    /// The guest trapped (panic, `unreachable`, stack overflow, memory limit …).
    Trap,
    /// The guest failed after the host refused it memory: its tenant holds its
    /// fair share of the host memory budget, or the budget is spent.
    MemoryBusy,
    /// The guest answered with a `wasi:http` error code instead of a response.
    GuestError,
    /// The guest returned without setting a response.
    NoResponse,
    /// The host failed (a broken invariant, not the guest's doing).
    Internal,
}

/// Counters for `lodge bench` and, later, `/metrics`.
#[derive(Debug, Default)]
pub struct RuntimeStats {
    /// Instances created.
    pub instantiations: AtomicU64,
    /// Total nanoseconds spent in `instantiate_async`.
    pub instantiate_nanos: AtomicU64,
    /// Components compiled.
    pub compiles: AtomicU64,
    /// Total nanoseconds spent compiling.
    pub compile_nanos: AtomicU64,
    /// Components loaded from the artifact cache.
    pub cache_hits: AtomicU64,
    /// Components looked up in the cache and not found.
    pub cache_misses: AtomicU64,
    /// Components compiled by the optimising compiler (in the background or not).
    pub optimized_compiles: AtomicU64,
    /// Nanoseconds spent in those compilations.
    pub optimized_compile_nanos: AtomicU64,
    /// Bytes of `.wasm` those compilations read (for the time a new one will take).
    pub optimized_compile_bytes: AtomicU64,
    /// Components in memory whose optimised code replaced their baseline code.
    pub tier_ups: AtomicU64,
    /// Times idle pool memory was given back ([`Runtime::trim`]).
    pub trims: AtomicU64,
}

impl RuntimeStats {
    fn record_compile(&self, tier: Tier, bytes: usize, took: Duration) {
        self.compiles.fetch_add(1, Ordering::Relaxed);
        self.compile_nanos
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        if tier == Tier::Optimized {
            self.optimized_compiles.fetch_add(1, Ordering::Relaxed);
            self.optimized_compile_nanos
                .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
            self.optimized_compile_bytes
                .fetch_add(bytes as u64, Ordering::Relaxed);
        }
    }
}

/// One per process: an engine per compile tier, the artifact cache, the optimiser.
pub struct Runtime {
    policy: TierPolicy,
    /// The engines in force (replaced whole by [`Runtime::trim`]).
    tiers: Arc<ArcSwap<Tiers>>,
    /// Written by [`Runtime::trim`]; read while code is prepared on the engines
    /// in force and adopted, so no code is left on replaced engines.
    swap: Arc<std::sync::RwLock<()>>,
    /// What new engines are built from.
    tuning: crate::config::EngineTuning,
    pool_config: PoolingAllocationConfig,
    optimizer: Option<Optimizer>,
    artifacts: PathBuf,
    /// When the last request ended, in ms since `started`.
    last_request_end: Arc<AtomicU64>,
    started: Instant,
    budget: Arc<MemoryBudget>,
    pool: Arc<Pool>,
    lanes: u32,
    fuel_yield_interval: u64,
    /// Whether WASI 0.3 components are served.
    wasi_p3: bool,
    stats: Arc<RuntimeStats>,
    /// Loaded components by digest, while some tenant uses them: tenants that
    /// run the same component share its code in memory.
    loaded: Mutex<HashMap<String, Weak<Code>>>,
    /// One load of a component at a time: requests for a component being
    /// loaded wait for it and then share it instead of loading it again.
    gates: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Instances kept between requests of tenants with reuse on.
    warm: Arc<WarmSets>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("artifacts", &self.artifacts)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// What one call to [`Runtime::invoke`] needs besides the request.
#[derive(Debug)]
pub struct Invocation<'a> {
    /// The tenant's plan.
    pub limits: &'a Limits,
    /// What the guest is given (its log, environment, capabilities).
    pub grant: Grant,
    /// Permits held until the instance is gone.
    pub admission: Admission,
    /// Where the fuel burnt is counted.
    pub counters: &'a Arc<TenantCounters>,
    /// The tenant's load, whose CPU lanes the guest runs on.
    pub load: Arc<TenantLoad>,
    /// How many CPU lanes the tenant has.
    pub lanes: u32,
    /// The kept instance to serve the request in ([`Runtime::claim`]).
    pub warm: Option<Kept>,
    /// Where to park the instance afterwards, if the plan reuses instances.
    pub reuse: Option<Reuse>,
}

impl Runtime {
    /// Builds the engines and the artifact cache under `config.data_dir`.
    pub fn new(config: &HostConfig) -> anyhow::Result<Self> {
        let mut pool = PoolingAllocationConfig::new();
        // Sized to concurrency, not tenants: one slot per live instance. Each
        // tier has a pool of this shape (address space only until used): during
        // a deploy every request may run baseline code, after it optimised code.
        let instances = config.max_instances;
        pool.total_component_instances(instances)
            // One async stack per live instance (wasmtime's default is 1,000 whatever the
            // instance count: each is a mapping plus a guard-page mapping, per engine).
            .total_stacks(instances)
            .total_core_instances(instances.saturating_mul(4))
            .total_memories(instances.saturating_mul(2))
            .total_tables(instances.saturating_mul(4))
            .max_memories_per_component(4)
            .max_tables_per_component(8)
            .max_core_instances_per_component(32)
            .max_memory_size(config.max_memory_per_instance)
            .linear_memory_keep_resident(config.engine.linear_memory_keep_resident)
            .table_keep_resident(config.engine.table_keep_resident)
            .decommit_batch_size(config.engine.decommit_batch_size)
            .pagemap_scan(if config.engine.pagemap_scan {
                wasmtime::Enabled::Auto
            } else {
                wasmtime::Enabled::No
            });

        let artifacts = config
            .artifacts_dir
            .clone()
            .unwrap_or_else(|| config.data_dir.join("artifacts"));
        std::fs::create_dir_all(&artifacts)
            .with_context(|| format!("creating {}", artifacts.display()))?;

        let (tiers, policy) = Tiers::new(config.engine.tiers, &config.engine, &pool, &artifacts)?;
        let tiers = Arc::new(ArcSwap::from_pointee(tiers));
        let swap = Arc::<std::sync::RwLock<()>>::default();
        let stats = Arc::<RuntimeStats>::default();
        let optimizer = (policy == TierPolicy::Tiered)
            .then(|| {
                Optimizer::new(
                    tiers.clone(),
                    swap.clone(),
                    config.engine.optimizer_threads,
                    stats.clone(),
                )
            })
            .transpose()?;
        let pool_config = pool;
        let pool = Pool::new(config.max_instances);
        let budget = MemoryBudget::new(config.memory_budget_bytes, pool.clone());
        let warm = Arc::<WarmSets>::default();
        let reclaim = Arc::downgrade(&warm);
        budget.set_reclaim(move || reclaim.upgrade().is_some_and(|warm| warm.evict_one()));
        Ok(Self {
            policy,
            tiers,
            swap,
            tuning: config.engine.clone(),
            pool_config,
            optimizer,
            artifacts,
            last_request_end: Arc::default(),
            started: Instant::now(),
            budget,
            pool,
            lanes: config.cpu_lanes.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(2, |n| n.get() as u32)
            }),
            fuel_yield_interval: config.fuel_yield_interval.max(1),
            wasi_p3: config.engine.wasi_p3,
            stats,
            loaded: Mutex::default(),
            gates: Mutex::default(),
            warm,
        })
    }

    /// Components waiting for, or in, their optimised compile.
    pub fn optimizing(&self) -> usize {
        self.optimizer.as_ref().map_or(0, Optimizer::pending)
    }

    /// About how long the optimised build of a `size`-byte component takes,
    /// from the optimised compiles so far (else four times `baseline`, the
    /// ratio measured in docs/benchmarks.md), in ms.
    pub fn optimize_estimate_ms(&self, size: usize, baseline: Duration) -> u64 {
        let nanos = self.stats.optimized_compile_nanos.load(Ordering::Relaxed);
        let bytes = self.stats.optimized_compile_bytes.load(Ordering::Relaxed);
        if nanos > 0 && bytes > 0 {
            (nanos as f64 / bytes as f64 * size as f64 / 1e6) as u64
        } else {
            baseline.as_millis() as u64 * 4
        }
    }

    /// Bytes the pools keep resident in instance slots no instance uses now
    /// (warm slots: memory memset instead of returned, for a faster next instance).
    pub fn idle_resident_bytes(&self) -> u64 {
        self.tiers.load().idle_resident_bytes()
    }

    /// How long no request has run on this host (none in flight now, and the
    /// last one ended that long ago); `None` while one runs.
    pub fn quiet_for(&self) -> Option<Duration> {
        if self.pool.running() > 0 {
            return None;
        }
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.last_request_end.load(Ordering::Relaxed);
        Some(Duration::from_millis(now.saturating_sub(last)))
    }

    /// Gives the memory of warm instance slots back to the system: builds
    /// fresh engines (empty pools), moves every component in memory to them
    /// (its artifact mapped again, a few ms each), and lets the old engines
    /// go; their pools are unmapped once the last request on them ends.
    /// wasmtime has no call to decommit a pool's warm slots, so the pools are
    /// replaced instead. Returns how many components moved.
    pub fn trim(&self) -> anyhow::Result<usize> {
        let (fresh, _) = Tiers::new(
            self.policy,
            &self.tuning,
            &self.pool_config,
            &self.artifacts,
        )?;
        let fresh = Arc::new(fresh);
        // Kept instances live in the old pools.
        self.warm.clear();
        let _no_loads = self.swap.write().unwrap_or_else(PoisonError::into_inner);
        self.tiers.store(fresh.clone());
        let loaded: Vec<(String, Arc<Code>)> = self
            .loaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(|(digest, code)| Some((digest.clone(), code.upgrade()?)))
            .collect();
        let mut moved = 0;
        for (digest, code) in loaded {
            let Some(engine) = fresh.get(code.tier()) else {
                continue;
            };
            // A component whose artifact is gone stays on the old engine (and
            // keeps its pool) until it is unloaded.
            if let Some(component) = engine.read_artifact(&digest)
                && let Ok(prepared) = engine.prepare(&component)
            {
                code.replace(Arc::new(prepared));
                moved += 1;
            }
        }
        self.stats.trims.fetch_add(1, Ordering::Relaxed);
        Ok(moved)
    }

    /// The host-wide instance slots, taken at admission.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Instances kept between requests, across tenants.
    pub fn warm(&self) -> &Arc<WarmSets> {
        &self.warm
    }

    /// The instance an admitted request of `app` runs in: a kept one of its
    /// tenant (which brings its slot) if `reuse` has one, else a new slot in
    /// the host pool, evicting kept instances (of any tenant, longest parked
    /// first) while the pool is full.
    pub fn claim(
        &self,
        app: &App,
        reuse: Option<&Reuse>,
        admission: &mut Admission,
    ) -> Result<Option<Kept>, Rejected> {
        if let Some(reuse) = reuse
            && let Some(warm) = reuse.set.take(reuse.generation, &app.code.current())
        {
            admission.adopt(warm.slot);
            self.warm.reuses.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(warm.kept));
        }
        loop {
            match admission.take_slot() {
                Err(Rejected::HostBusy) if self.warm.evict_one() => {}
                result => return result.map(|()| None),
            }
        }
    }

    /// CPU lanes of a tenant of weight 1: one per core.
    pub fn lanes(&self) -> u32 {
        self.lanes
    }

    /// The host-wide memory budget.
    pub fn memory_budget(&self) -> &Arc<MemoryBudget> {
        &self.budget
    }

    /// Instantiation counters.
    pub fn stats(&self) -> &Arc<RuntimeStats> {
        &self.stats
    }

    /// Validates, compiles (or loads from the cache) and pre-instantiates `wasm`,
    /// and queues its optimised build if it goes live on baseline code.
    ///
    /// Blocking: compiling takes a while; call it from `spawn_blocking`.
    pub fn load(&self, wasm: Bytes) -> Result<App, LoadError> {
        if !wasm.starts_with(b"\0asm") {
            return Err(LoadError::NotWasm);
        }
        if wasmparser::Parser::is_core_wasm(&wasm) {
            return Err(LoadError::CoreModule);
        }
        if !wasmparser::Parser::is_component(&wasm) {
            return Err(LoadError::Invalid(
                "unknown WebAssembly binary version".into(),
            ));
        }
        if !self.wasi_p3 && world::exports_p3_handler(&wasm) {
            return Err(LoadError::WasiP3Off);
        }
        let started = Instant::now();
        let digest = hex::encode(Sha256::digest(&wasm));
        let gate = self.gate(&digest);
        let _one_at_a_time = gate.lock();
        if let Some(app) = self.shared(&digest, wasm.len(), started) {
            self.optimize_later(&app, wasm);
            return Ok(app);
        }
        let engines = self.swap.read().unwrap_or_else(PoisonError::into_inner);
        let (prepared, from_cache) = match self.read_best(&digest)? {
            Some(prepared) => (prepared, true),
            None => {
                self.stats.cache_misses.fetch_add(1, Ordering::Relaxed);
                (self.compile_first(&wasm, &digest)?, false)
            }
        };
        let app = self.adopt(prepared, digest, wasm.len(), started, from_cache);
        drop(engines);
        self.optimize_later(&app, wasm);
        Ok(app)
    }

    /// Loads the app with SHA-256 `digest` from its best precompiled artifact,
    /// if the cache has a usable one: a restart's fast path, with no
    /// compilation. If that is baseline code ([`Runtime::wants_optimized`]),
    /// the caller should hand the component's bytes to [`Runtime::optimize_later`].
    pub fn load_cached(&self, digest: &str, size: usize) -> Option<App> {
        let started = Instant::now();
        let gate = self.gate(digest);
        let _one_at_a_time = gate.lock();
        if let Some(app) = self.shared(digest, size, started) {
            return Some(app);
        }
        let _engines = self.swap.read().unwrap_or_else(PoisonError::into_inner);
        let prepared = self.read_best(digest).ok().flatten()?;
        Some(self.adopt(prepared, digest.to_owned(), size, started, true))
    }

    /// Whether `app` runs baseline code that the policy will replace.
    pub fn wants_optimized(&self, app: &App) -> bool {
        app.tier() == Tier::Baseline
            && self
                .optimizer
                .as_ref()
                .is_some_and(|optimizer| optimizer.wanted(&app.digest))
    }

    /// If `app`'s optimised build is queued or compiling now, has it raise
    /// `app`'s code too, and answers true (its bytes need not be handed over
    /// again). An app whose code is not the one queued (loaded again after
    /// the queued one was dropped) would otherwise stay on baseline code.
    pub fn join_optimizing(&self, app: &App) -> bool {
        self.optimizer
            .as_ref()
            .is_some_and(|optimizer| optimizer.join(&app.digest, &app.code))
    }

    /// Queues the optimised build of `app` (whose bytes are `wasm`) if it runs
    /// baseline code and the policy is tiered; every tenant running it gets the
    /// optimised code when it is ready.
    pub fn optimize_later(&self, app: &App, wasm: Bytes) {
        if let Some(optimizer) = &self.optimizer
            && self.wants_optimized(app)
        {
            optimizer.enqueue(&app.digest, wasm, &app.code);
        }
    }

    /// The best tier's cached artifact of `digest`, pre-instantiated.
    fn read_best(&self, digest: &str) -> Result<Option<Prepared>, LoadError> {
        for engine in self.tiers.load().best_first() {
            if let Some(component) = engine.read_artifact(digest) {
                self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                return engine.prepare(&component).map(Some);
            }
        }
        Ok(None)
    }

    /// Compiles `wasm` with the policy's first compiler. Winch lacks a few
    /// proposals (GC, tail calls, exceptions …): what it refuses, Cranelift
    /// compiles, if the policy has it.
    fn compile_first(&self, wasm: &[u8], digest: &str) -> Result<Prepared, LoadError> {
        let tiers = self.tiers.load();
        let first = tiers
            .get(self.policy.first())
            .or(tiers.optimized.as_ref())
            .ok_or_else(|| LoadError::Internal(anyhow::anyhow!("no compiler configured")))?;
        let compile = |engine: &TierEngine| {
            let started = Instant::now();
            let component = engine.compile(wasm, digest)?;
            self.stats
                .record_compile(engine.tier, wasm.len(), started.elapsed());
            engine.prepare(&component)
        };
        match (compile(first), &tiers.optimized) {
            (Err(LoadError::Invalid(why)), Some(optimized)) if first.tier == Tier::Baseline => {
                tracing::info!(digest, reason = %why, "the baseline compiler refused the component; compiling optimised code");
                compile(optimized)
            }
            (result, _) => result,
        }
    }

    /// Registers freshly prepared code as the shared copy of `digest`.
    fn adopt(
        &self,
        prepared: Prepared,
        digest: String,
        size: usize,
        started: Instant,
        from_cache: bool,
    ) -> App {
        let code = Arc::new(Code::new(prepared));
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        // Forget components nobody runs any more, now and then.
        if loaded.len() >= 64 && loaded.len().is_power_of_two() {
            loaded.retain(|_, code| code.strong_count() > 0);
        }
        loaded.insert(digest.clone(), Arc::downgrade(&code));
        drop(loaded);
        App {
            digest,
            size,
            compile_time: started.elapsed(),
            from_cache,
            code,
        }
    }

    /// The lock serialising loads of component `digest` (dropped from the map
    /// when its last holder lets go).
    fn gate(&self, digest: &str) -> Gate<'_> {
        let lock = self
            .gates
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(digest.to_owned())
            .or_default()
            .clone();
        Gate {
            runtime: self,
            digest: digest.to_owned(),
            lock,
        }
    }

    /// Deletes every cached artifact of component `digest` (of any engine).
    pub fn remove_artifacts(&self, digest: &str) {
        let Ok(entries) = std::fs::read_dir(&self.artifacts) else {
            return;
        };
        let prefix = format!("{digest}-");
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(&prefix)
                && name.ends_with(".cwasm")
                && let Err(e) = std::fs::remove_file(entry.path())
            {
                tracing::warn!(path = %entry.path().display(), error = %e, "artifact not deleted");
            }
        }
    }

    /// The components the artifact cache holds artifacts of.
    pub fn artifact_digests(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.artifacts) else {
            return Vec::new();
        };
        let mut digests: Vec<String> = entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                let (digest, rest) = name.split_once('-')?;
                (rest.ends_with(".cwasm") && digest.len() == 64).then(|| digest.to_owned())
            })
            .collect();
        digests.sort();
        digests.dedup();
        digests
    }

    /// Whether the artifact cache holds the best code of component `digest`
    /// this policy makes (nothing to compile before its tenants' first request).
    pub fn has_artifact(&self, digest: &str) -> bool {
        self.tiers
            .load()
            .best_first()
            .next()
            .is_some_and(|engine| engine.has_artifact(digest))
    }

    /// wasmtime engines made so far: one per tier for WASI 0.2 components,
    /// and one more per tier once a WASI 0.3 component has loaded.
    pub fn engines_made(&self) -> usize {
        self.tiers
            .load()
            .best_first()
            .flat_map(|t| t.engines())
            .count()
    }

    /// Distinct components in memory now.
    pub fn components_loaded(&self) -> usize {
        self.loaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|code| code.strong_count() > 0)
            .count()
    }

    /// Distinct components in memory now, by the tier of their code.
    pub fn components_by_tier(&self) -> [(Tier, usize); 2] {
        let (mut baseline, mut optimized) = (0, 0);
        let loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        for code in loaded.values().filter_map(Weak::upgrade) {
            match code.tier() {
                Tier::Baseline => baseline += 1,
                Tier::Optimized => optimized += 1,
            }
        }
        [(Tier::Baseline, baseline), (Tier::Optimized, optimized)]
    }

    /// The component with `digest`, if another tenant has it loaded.
    fn shared(&self, digest: &str, size: usize, started: Instant) -> Option<App> {
        let code = self
            .loaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(digest)?
            .upgrade()?;
        self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
        Some(App {
            digest: digest.to_owned(),
            size,
            compile_time: started.elapsed(),
            from_cache: true,
            code,
        })
    }

    /// Runs one request in a fresh instance of `app` (or in `call.warm`, one its
    /// tenant kept) and returns the guest's response.
    ///
    /// The guest runs in the caller's task, and moves to a task of its own if it
    /// sets its response with work left, so the body streams while the guest
    /// still writes it; either way it keeps `call.admission` until the instance
    /// is gone (or parked) and writes any failure's detail to the tenant's log.
    pub async fn invoke<B>(
        &self,
        app: &Arc<App>,
        call: Invocation<'_>,
        request: hyper::Request<B>,
    ) -> Result<http::Response<ResponseBody>, GuestFailure>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let limits = call.limits;
        let (logs, request_id) = (call.grant.logs.clone(), call.grant.request_id.clone());
        // A kept instance of the tenant, handed this request's grant; or a new
        // store for the code this request runs, on its tier's engine, even if
        // a better tier is swapped in meanwhile.
        let (mut store, code, warm) = match call.warm {
            Some(kept) => {
                let mut store = kept.store;
                store.data_mut().renew(call.grant, limits.memory_bytes);
                let warm = (kept.proxy, kept.base_memory, kept.uses);
                (store, kept.code, Some(warm))
            }
            None => {
                let limiter =
                    GuestLimiter::new(limits.memory_bytes, self.budget.clone(), call.load.clone());
                let code = app.code.current();
                let mut store = Store::new(code.pre.engine(), GuestState::new(call.grant, limiter));
                store.limiter(|state| &mut state.limiter);
                // The deadline needs no epoch interruption in the guest's
                // code: a running guest yields to the executor every
                // `fuel_yield_interval` units of fuel (each wasm instruction
                // burns fuel, so no loop escapes it), and at each yield
                // `timeout_at` below sees the deadline. One instrumentation
                // instead of two (fuel and epoch checks cost the guest's code
                // alike, docs/benchmarks.md). The interval is the store's, so
                // a kept instance keeps it.
                if let Err(e) = store.fuel_async_yield_interval(Some(self.fuel_yield_interval)) {
                    tracing::error!(error = %e, "preparing the store");
                    return Err(GuestFailure::Internal);
                }
                (store, code, None)
            }
        };
        // Fresh fuel for every request, kept instance or not.
        if let Err(e) = store.set_fuel(limits.fuel) {
            tracing::error!(error = %e, "preparing the store");
            return Err(GuestFailure::Internal);
        }

        // The request as the guest's world takes it, and where its response head arrives.
        let (call_args, mut head) = match code.pre.world() {
            World::Proxy => {
                let (sender, receiver) = oneshot::channel();
                let resources = (|| -> wasmtime::Result<_> {
                    let mut http = store.data_mut().http();
                    let req = http.new_incoming_request(Scheme::Http, request)?;
                    let out = http.new_response_outparam(sender)?;
                    Ok((req, out))
                })();
                match resources {
                    Ok((req, out)) => (CallArgs::Proxy(req, out), Head::Proxy(receiver)),
                    Err(e) => {
                        tracing::error!(error = %e, "creating the request resources");
                        return Err(GuestFailure::Internal);
                    }
                }
            }
            World::Service => {
                let (sender, receiver) = oneshot::channel();
                let request = with_authority(request);
                let http = store.data_mut().http();
                let (req, io) = wasmtime_wasi_http::p3::Request::from_http(http.hooks, request);
                (
                    CallArgs::Service(req, Box::pin(io), sender),
                    Head::Service(receiver),
                )
            }
        };

        let deadline = tokio::time::Instant::now() + limits.timeout;
        let stats = self.stats.clone();
        let mut admission = call.admission;
        let (task_logs, task_request_id) = (logs.clone(), request_id.clone());
        let mut metered = Metered {
            store: Some(store),
            counters: call.counters.clone(),
            fuel: limits.fuel,
            started: Instant::now(),
            ended: self.last_request_end.clone(),
            host_started: self.started,
        };
        let (load, lanes) = (call.load, call.lanes);
        let (reuse, warm_sets) = (call.reuse, self.warm.clone());
        let guest = async move {
            let uses = warm.as_ref().map_or(0, |(_, _, uses)| *uses);
            let store = metered.store();
            let run = async {
                let (handler, base_memory) = match warm {
                    Some((proxy, base_memory, _)) => (Handler::Proxy(proxy), base_memory),
                    None => {
                        let started = Instant::now();
                        let handler = code.pre.instantiate(&mut *store).await?;
                        stats.instantiations.fetch_add(1, Ordering::Relaxed);
                        stats
                            .instantiate_nanos
                            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                        (handler, store.data().limiter.held())
                    }
                };
                match (&handler, call_args) {
                    (Handler::Proxy(proxy), CallArgs::Proxy(req, out)) => {
                        proxy
                            .wasi_http_incoming_handler()
                            .call_handle(&mut *store, req, out)
                            .await?;
                    }
                    (Handler::Service(service), CallArgs::Service(req, io, head)) => {
                        serve_p3(store, service, req, io, head).await?;
                    }
                    _ => wasmtime::bail!("the instance's world is not the request's"),
                }
                wasmtime::Result::Ok((handler, base_memory))
            };
            let result = tokio::time::timeout_at(deadline, Fair::new(load, lanes, run)).await;
            let Some(mut store) = metered.finish() else {
                return Some(GuestFailure::Internal);
            };
            let denied = store.data().limiter.denied;
            let (result, instance) = match result {
                // Only WASI 0.2 instances are kept: a 0.3 guest's tasks and
                // streams can outlive its answer in ways the host cannot check.
                Ok(Ok((Handler::Proxy(proxy), base))) => (Ok(Ok(())), Some((proxy, base))),
                Ok(Ok((Handler::Service(_), _))) => (Ok(Ok(())), None),
                Ok(Err(e)) => (Ok(Err(e)), None),
                Err(elapsed) => (Err(elapsed), None),
            };
            let failure = classify(result, denied);
            // Parked for the tenant's next request only after a clean
            // answer, within its use count and memory bound, holding
            // nothing of this request.
            if let (None, Some((proxy, base_memory)), Some(reuse)) = (&failure, instance, reuse)
                && uses + 1 < reuse.max_uses
                && store.data().limiter.held() <= warm::memory_bound(base_memory)
                && !store.data_mut().holds_request_resources()
                && let Some(slot) = admission.release_slot()
            {
                let kept = Kept {
                    store,
                    proxy,
                    code,
                    uses: uses + 1,
                    base_memory,
                };
                warm_sets.park(&reuse.set, WarmInstance::new(kept, slot, reuse.generation));
            } else {
                drop(store);
            }
            drop(admission);
            metered.mark_ended();
            if let Some((_, detail)) = &failure {
                task_logs.push(&task_request_id, LogStream::Host, detail.clone());
            }
            failure.map(|(kind, _)| kind)
        };

        // The guest runs here, in the request's own task, until it either
        // finishes (most requests: no hand-off to another task) or sets its
        // response while it still has work to do (a body still being
        // written): then the rest of it moves to a task of its own, so the
        // response streams while the guest writes it.
        let mut guest = Box::pin(guest);
        let head = tokio::select! {
            biased;
            failure = &mut guest => {
                // Done: the response, if the guest set one, is waiting.
                return answer(head.await, async { Ok::<_, std::convert::Infallible>(failure) }, &logs, &request_id).await;
            }
            head = &mut head => head,
        };
        // Polled here it runs in the request's span; on a task of its own it
        // takes the span along.
        let task = tokio::spawn(guest.instrument(tracing::Span::current()));
        answer(head, task, &logs, &request_id).await
    }
}

/// A request's guest outcome as the data plane sees it: its response, or why
/// there is none (`finished` tells how the guest ended, awaited only then).
async fn answer<E: std::fmt::Display>(
    head: Result<HeadResult, oneshot::error::RecvError>,
    finished: impl Future<Output = Result<Option<GuestFailure>, E>>,
    logs: &crate::logs::TenantLogs,
    request_id: &str,
) -> Result<http::Response<ResponseBody>, GuestFailure> {
    match head {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(code)) => {
            logs.push(
                request_id,
                LogStream::Host,
                format!("the app answered with an error instead of a response: {code}"),
            );
            Err(GuestFailure::GuestError)
        }
        Err(_) => match finished.await {
            Ok(Some(kind)) => Err(kind),
            Ok(None) => {
                logs.push(
                    request_id,
                    LogStream::Host,
                    "the app returned without setting a response".to_owned(),
                );
                Err(GuestFailure::NoResponse)
            }
            Err(e) => {
                tracing::error!(error = %e, "guest task failed");
                Err(GuestFailure::Internal)
            }
        },
    }
}

/// A response head, or the error code the guest answered instead (as text).
type HeadResult = Result<http::Response<ResponseBody>, String>;

/// The request handed to the guest, in its world's shape.
enum CallArgs {
    /// WASI 0.2: the request and the out-param for the response.
    Proxy(
        wasmtime::component::Resource<wasmtime_wasi_http::p2::types::HostIncomingRequest>,
        wasmtime::component::Resource<wasmtime_wasi_http::p2::types::HostResponseOutparam>,
    ),
    /// WASI 0.3: the request, the future of its body's transfer, and where the head goes.
    Service(
        wasmtime_wasi_http::p3::Request,
        Pin<Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>>,
        oneshot::Sender<HeadResult>,
    ),
}

/// Where a request's response head arrives, either world.
enum Head {
    Proxy(
        oneshot::Receiver<
            Result<
                hyper::Response<HyperOutgoingBody>,
                wasmtime_wasi_http::p2::bindings::http::types::ErrorCode,
            >,
        >,
    ),
    Service(oneshot::Receiver<HeadResult>),
}

impl Future for Head {
    type Output = Result<HeadResult, oneshot::error::RecvError>;

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.get_mut() {
            Head::Proxy(rx) => Pin::new(rx).poll(cx).map(|head| {
                head.map(|head| {
                    head.map(|response| {
                        response.map(|body| body.map_err(Into::into).boxed_unsync())
                    })
                    .map_err(|code| format!("{code:?}"))
                })
            }),
            Head::Service(rx) => Pin::new(rx).poll(cx),
        }
    }
}

/// A WASI 0.2 request's URI carries only the path on a server; a 0.3 guest
/// reads scheme and authority from it, so they are set as a 0.2 guest sees
/// them (`http`, the `Host` header).
fn with_authority<B>(request: http::Request<B>) -> http::Request<B> {
    let (mut parts, body) = request.into_parts();
    if parts.uri.authority().is_none() {
        let host = parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.parse::<http::uri::Authority>().ok());
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.scheme = Some(http::uri::Scheme::HTTP);
        uri.authority =
            Some(host.unwrap_or_else(|| http::uri::Authority::from_static("localhost")));
        if uri.path_and_query.is_none() {
            uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        parts.uri = http::Uri::from_parts(uri).unwrap_or_default();
    }
    http::Request::from_parts(parts, body)
}

/// Runs a WASI 0.3 guest's `handle` in the store's event loop: sends the
/// response head (or the error code) as soon as the guest returns, then keeps
/// the loop running until the guest's tasks are done — its response body is
/// written by them, after `handle` returned.
async fn serve_p3(
    store: &mut Store<GuestState>,
    service: &wasmtime_wasi_http::p3::bindings::Service,
    request: wasmtime_wasi_http::p3::Request,
    io: Pin<Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>>,
    head: oneshot::Sender<HeadResult>,
) -> wasmtime::Result<()> {
    store
        .run_concurrent(async move |accessor| -> wasmtime::Result<()> {
            match service.handle(accessor, request).await? {
                Ok(response) => {
                    let response =
                        accessor.with(|mut access| response.into_http(&mut access, io))?;
                    let _ = head.send(Ok(
                        response.map(|body| body.map_err(Into::into).boxed_unsync())
                    ));
                }
                Err(code) => {
                    let _ = head.send(Err(format!("{code:?}")));
                }
            }
            std::future::poll_fn(|cx| accessor.poll_no_interesting_tasks(cx)).await;
            Ok(())
        })
        .await?
}

/// A request's store while its guest runs. What the request used (fuel,
/// memory peak, wall time) is counted when it ends — also when it is
/// cancelled midway (its client hung up): a request cannot burn CPU unbilled.
struct Metered {
    store: Option<Store<GuestState>>,
    counters: Arc<TenantCounters>,
    fuel: u64,
    started: Instant,
    /// The runtime's `last_request_end`, and the instant it counts from.
    ended: Arc<AtomicU64>,
    host_started: Instant,
}

impl Metered {
    /// The store, until [`Metered::finish`] takes it.
    fn store(&mut self) -> &mut Store<GuestState> {
        self.store
            .as_mut()
            .expect("the store stays until the request is metered")
    }

    /// Counts what the request used and hands the store back.
    fn finish(&mut self) -> Option<Store<GuestState>> {
        let store = self.store.take()?;
        let burnt = self
            .fuel
            .saturating_sub(store.get_fuel().unwrap_or(self.fuel));
        self.counters.fuel.fetch_add(burnt, Ordering::Relaxed);
        self.counters
            .peak_memory
            .fetch_max(store.data().limiter.peak(), Ordering::Relaxed);
        self.counters
            .wall_us
            .fetch_add(self.started.elapsed().as_micros() as u64, Ordering::Relaxed);
        Some(store)
    }

    /// Records that a request ended now (for [`Runtime::quiet_for`]).
    fn mark_ended(&self) {
        self.ended.fetch_max(
            self.host_started.elapsed().as_millis() as u64,
            Ordering::Relaxed,
        );
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        // Cancelled: meter, drop the instance, then say the request ended.
        drop(self.finish());
        self.mark_ended();
    }
}

impl std::fmt::Debug for Metered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metered").finish_non_exhaustive()
    }
}

/// Maps how a guest call ended to a failure kind and the detail for the tenant's log.
fn classify(
    result: Result<wasmtime::Result<()>, tokio::time::error::Elapsed>,
    denied: Option<GrowthDenied>,
) -> Option<(GuestFailure, String)> {
    let error = match result {
        Ok(Ok(())) => return None,
        Err(_) => {
            // Running (stopped at a fuel yield) or waiting in a host call.
            let detail = "request deadline exceeded".to_owned();
            return Some((GuestFailure::Deadline, detail));
        }
        Ok(Err(error)) => error,
    };
    const MIB: u64 = 1024 * 1024;
    let why = match denied {
        Some(GrowthDenied::InstanceMemory) => {
            " (a memory growth was refused: plan memory limit)".to_owned()
        }
        Some(GrowthDenied::TenantShare { held, share }) => format!(
            " (a memory growth was refused: this app's instances hold {} MiB, over its fair \
             share of {} MiB of the host memory budget while other apps need memory; \
             answered 503, retry when fewer of its requests run)",
            held / MIB,
            share / MIB
        ),
        Some(GrowthDenied::HostBudget) => {
            " (a memory growth was refused: the host memory budget is spent; answered 503)"
                .to_owned()
        }
        Some(GrowthDenied::Table) => " (a table growth was refused: table limit)".to_owned(),
        None => String::new(),
    };
    let kind = match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => GuestFailure::FuelExhausted,
        // A trap, or an instantiation, the host's memory refusal caused.
        _ if denied.is_some_and(GrowthDenied::is_host_memory) => GuestFailure::MemoryBusy,
        // Any other trap, or an instantiation the limiter refused.
        _ => GuestFailure::Trap,
    };
    let label = match kind {
        GuestFailure::FuelExhausted => "fuel exhausted",
        GuestFailure::MemoryBusy => "app stopped for lack of host memory",
        _ => "app trapped",
    };
    // `{:#}`: the chain of causes (with the guest's wasm backtrace), never the
    // host's own Rust backtrace, which `{:?}` adds when RUST_BACKTRACE is set.
    Some((kind, format!("{label}{why}: {error:#}")))
}

/// Lists the imports of `component` outside [`PROVIDED_PACKAGES`].
fn missing_imports(engine: &Engine, component: &Component) -> Vec<String> {
    let ty = component.component_type();
    let mut missing = BTreeSet::new();
    for (name, _) in ty.imports(engine) {
        let (package, version) = match name.split_once('@') {
            Some((path, version)) => (path.split('/').next().unwrap_or(path), Some(version)),
            None => (name.split('/').next().unwrap_or(name), None),
        };
        let provided = PROVIDED_PACKAGES.iter().any(|(p, v)| {
            *p == package
                && version
                    .and_then(|version| version.strip_prefix(v))
                    .is_some_and(|rest| !rest.contains('-'))
        });
        if !provided {
            missing.insert(name.to_owned());
        }
    }
    missing.into_iter().collect()
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(optimizer) = &self.optimizer {
            optimizer.close();
        }
    }
}

/// The runtime's figures, read at scrape time for `/metrics`.
#[derive(Debug)]
pub struct RuntimeCollector {
    /// The runtime read.
    pub runtime: Arc<Runtime>,
}

impl prometheus_client::collector::Collector for RuntimeCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> std::fmt::Result {
        use std::sync::atomic::Ordering::Relaxed;
        let pool = self.runtime.pool();
        let stats = self.runtime.stats();
        let e = &mut encoder;
        crate::metrics::gauge(
            e,
            "instances_in_use",
            "Instance slots taken now (running a request, or kept between requests)",
            i64::from(pool.in_use()),
        )?;
        crate::metrics::gauge(
            e,
            "instances_kept",
            "Instances kept between requests of tenants whose plan reuses instances",
            i64::from(pool.parked()),
        )?;
        crate::metrics::counter(
            e,
            "instance_reuses",
            "Requests served by an instance kept from an earlier request of the same tenant",
            self.runtime.warm().reuses.load(Relaxed),
        )?;
        crate::metrics::counter(
            e,
            "kept_instance_evictions",
            "Kept instances dropped to free a slot or memory for another request",
            self.runtime.warm().evictions.load(Relaxed),
        )?;
        crate::metrics::gauge(
            e,
            "instance_slots",
            "Instance slots of the host",
            i64::from(pool.capacity()),
        )?;
        crate::metrics::gauge(
            e,
            "active_tenants",
            "Tenants with requests in flight",
            i64::from(pool.active_tenants()),
        )?;
        crate::metrics::gauge(
            e,
            "components_loaded",
            "Distinct components in memory (tenants running the same one share it)",
            self.runtime.components_loaded() as i64,
        )?;
        crate::metrics::gauge(
            e,
            "memory_budget_used_bytes",
            "Linear memory held by live instances",
            self.runtime.memory_budget().used() as i64,
        )?;
        crate::metrics::gauge(
            e,
            "memory_budget_bytes",
            "The host memory budget (--memory-budget-mib)",
            self.runtime.memory_budget().limit() as i64,
        )?;
        crate::metrics::gauge(
            e,
            "memory_fair_share_bytes",
            "What one tenant may hold past the shared three quarters of the budget now",
            self.runtime.memory_budget().fair_share() as i64,
        )?;
        crate::metrics::counter(
            e,
            "cpu_waits",
            "Times a guest waited for one of its tenant's CPU lanes",
            crate::limits::CPU_WAITS.load(Relaxed),
        )?;
        crate::metrics::counter(
            e,
            "instantiations",
            "Instances created",
            stats.instantiations.load(Relaxed),
        )?;
        crate::metrics::counter(
            e,
            "compiles",
            "Components compiled (not from the cache)",
            stats.compiles.load(Relaxed),
        )?;
        crate::metrics::counter(
            e,
            "compile_seconds",
            "Time spent compiling components",
            stats.compile_nanos.load(Relaxed) as f64 / 1e9,
        )?;
        let by_tier = self
            .runtime
            .components_by_tier()
            .map(|(tier, count)| (vec![("tier", tier.as_str().to_owned())], count as i64));
        crate::metrics::gauges(
            e,
            "components_loaded_by_tier",
            "Distinct components in memory, by the compile tier of their code",
            &by_tier,
        )?;
        crate::metrics::gauge(
            e,
            "optimize_queue",
            "Components waiting for, or in, their optimised compile",
            self.runtime.optimizing() as i64,
        )?;
        crate::metrics::counter(
            e,
            "optimized_compiles",
            "Components compiled by the optimising compiler",
            stats.optimized_compiles.load(Relaxed),
        )?;
        crate::metrics::counter(
            e,
            "optimized_compile_seconds",
            "Time spent in optimised compiles",
            stats.optimized_compile_nanos.load(Relaxed) as f64 / 1e9,
        )?;
        crate::metrics::gauge(
            e,
            "idle_instance_resident_bytes",
            "Memory the instance pools keep resident in slots no instance uses now",
            self.runtime.idle_resident_bytes() as i64,
        )?;
        crate::metrics::counter(
            e,
            "idle_trims",
            "Times the host was quiet and gave idle instance memory back",
            stats.trims.load(Relaxed),
        )?;
        crate::metrics::counter(
            e,
            "tier_ups",
            "Components in memory whose optimised code replaced their baseline code",
            stats.tier_ups.load(Relaxed),
        )?;
        crate::metrics::counter(
            e,
            "artifact_cache_hits",
            "Components loaded from the artifact cache",
            stats.cache_hits.load(Relaxed),
        )?;
        crate::metrics::counter(
            e,
            "artifact_cache_misses",
            "Components not in the artifact cache (compiled)",
            stats.cache_misses.load(Relaxed),
        )?;
        Ok(())
    }
}
