//! Limits and host-wide settings.
//!
//! [`Limits`] is one plan: what a single tenant may use per request and at once.
//! [`HostConfig`] is what the whole process may use, and where it keeps its files.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Per-tenant limits (a plan). Every request of the tenant runs under these.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Fuel (roughly, WebAssembly instructions) one request may burn.
    pub fuel: u64,
    /// Linear memory one instance may grow to, in bytes.
    pub memory_bytes: usize,
    /// Wall-clock time one request may take, from admission to the end of its body.
    pub timeout: Duration,
    /// Requests of this tenant running at once; more are answered 503.
    pub max_concurrency: u32,
    /// Largest request body accepted, in bytes; more is answered 413.
    pub max_request_body: u64,
    /// Entries in one instance's resource table (streams, fields, pollables …).
    pub max_resources: usize,
    /// Bytes of stdout+stderr kept from one request; the rest is dropped.
    pub log_bytes_per_request: usize,
    /// Key-value keys across all of the tenant's buckets.
    pub kv_max_keys: i64,
    /// Key-value bytes (keys + values) across all of the tenant's buckets.
    pub kv_max_bytes: i64,
    /// Largest single wallet transfer.
    pub wallet_max_per_transfer: i64,
    /// Most a wallet may send per UTC day.
    pub wallet_max_per_day: i64,
    /// Convergence tokens per UTC day.
    pub convergence_tokens_per_day: u64,
    /// Requests per second on average (token bucket); 0 = unlimited.
    pub rate_per_second: f64,
    /// Requests allowed at once above the average rate.
    pub rate_burst: u32,
    /// Hosts outbound HTTP may reach: exact names, or `*.example.com` for subdomains.
    pub outbound_allow: Vec<String>,
    /// Whether outbound HTTP may reach private, loopback and link-local addresses.
    pub outbound_allow_private: bool,
    /// Outbound HTTP requests one incoming request may make.
    pub outbound_max_requests: u32,
    /// Longest an outbound request may take (connect, first byte, between bytes each).
    pub outbound_timeout: Duration,
    /// Share of the CPU when tenants compete for it (1 = one fair share).
    pub weight: u32,
    /// Deployed versions kept per tenant; older ones are pruned (never the active one).
    pub max_versions: u32,
    /// Component bytes the tenant's kept versions may take together (distinct components).
    pub max_stored_component_bytes: u64,
    /// Longest a deploy may spend validating and compiling; past it the deploy is refused.
    pub compile_timeout: Duration,
    /// Asynchronous convergence tasks of the tenant waiting or running at once.
    pub convergence_max_pending: u32,
    /// Keys one key-value batch call (`get-many`, `set-many`, `delete-many`) may name.
    pub kv_batch_max_keys: u32,
    /// Bytes (keys + values) one key-value batch call may carry.
    pub kv_batch_max_bytes: u64,
    /// Archived log lines are deleted after this many days.
    pub log_retention_days: u32,
    /// Archived log lines kept per tenant at most (the newest).
    pub log_retention_lines: u32,
    /// Requests one instance may serve in turn (same tenant, same deployment);
    /// 0 or 1: a fresh instance for every request. State then persists between
    /// the tenant's requests; see `instance::warm`.
    pub instance_reuse: u32,
}

impl Limits {
    /// Default fuel per request: a few seconds of busy CPU, far above any sane handler.
    pub const DEFAULT_FUEL: u64 = 5_000_000_000;
    /// Default memory per instance.
    pub const DEFAULT_MEMORY_MIB: usize = 128;
    /// Default wall-clock timeout per request.
    pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
    /// Default concurrent requests per tenant.
    pub const DEFAULT_MAX_CONCURRENCY: u32 = 64;
    /// Default request-body cap.
    pub const DEFAULT_MAX_REQUEST_BODY: u64 = 16 * 1024 * 1024;
    /// Default versions kept per tenant.
    pub const DEFAULT_MAX_VERSIONS: u32 = 10;
    /// Default component bytes stored per tenant.
    pub const DEFAULT_MAX_STORED_COMPONENT_MIB: u64 = 256;
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel: Self::DEFAULT_FUEL,
            memory_bytes: Self::DEFAULT_MEMORY_MIB * 1024 * 1024,
            timeout: Duration::from_millis(Self::DEFAULT_TIMEOUT_MS),
            max_concurrency: Self::DEFAULT_MAX_CONCURRENCY,
            max_request_body: Self::DEFAULT_MAX_REQUEST_BODY,
            max_resources: 10_000,
            log_bytes_per_request: 256 * 1024,
            kv_max_keys: 100_000,
            kv_max_bytes: 256 * 1024 * 1024,
            wallet_max_per_transfer: 1_000_000,
            wallet_max_per_day: 10_000_000,
            convergence_tokens_per_day: 1_000_000,
            rate_per_second: 0.0,
            rate_burst: 50,
            outbound_allow: Vec::new(),
            outbound_allow_private: false,
            outbound_max_requests: 10,
            outbound_timeout: Duration::from_secs(10),
            weight: 1,
            max_versions: Self::DEFAULT_MAX_VERSIONS,
            max_stored_component_bytes: Self::DEFAULT_MAX_STORED_COMPONENT_MIB * 1024 * 1024,
            compile_timeout: Duration::from_secs(120),
            convergence_max_pending: 100,
            kv_batch_max_keys: 1000,
            kv_batch_max_bytes: 4 * 1024 * 1024,
            log_retention_days: 7,
            log_retention_lines: 10_000,
            instance_reuse: 0,
        }
    }
}

/// Host-wide settings: what the whole process may use.
#[derive(Clone)]
pub struct HostConfig {
    /// Address the HTTP listener binds.
    pub listen: SocketAddr,
    /// Where precompiled artifacts (and, later, the database) live.
    pub data_dir: PathBuf,
    /// Where precompiled artifacts live, if not `<data_dir>/artifacts`.
    pub artifacts_dir: Option<PathBuf>,
    /// `SLUG.<base_domain>` routes to tenant `SLUG`. `localhost` always works.
    pub base_domain: Option<String>,
    /// Limits of the default plan.
    pub default_limits: Limits,
    /// Instances alive at once across all tenants; sizes the pooling allocator.
    pub max_instances: u32,
    /// Linear memory all live instances together may hold, in bytes.
    pub memory_budget_bytes: u64,
    /// Largest linear memory any plan may grant; sizes each pool slot.
    pub max_memory_per_instance: usize,
    /// Fuel between voluntary yields of a running guest to the async
    /// executor: the granularity of CPU-lane time slices and of wall-clock
    /// deadlines for running code.
    pub fuel_yield_interval: u64,
    /// Log lines kept in memory per tenant.
    pub log_lines_per_tenant: usize,
    /// Tuning of the pooling allocator and the compiler (see `docs/benchmarks.md`).
    pub engine: EngineTuning,
    /// Largest component accepted by `PUT /tenant/{id}/component`, in bytes.
    pub max_component_bytes: usize,
    /// The operator token; generated into the data dir when `None`.
    pub admin_token: Option<String>,
    /// The key sealing wallet seeds (64 hex digits); generated into the data dir when `None`.
    pub master_key: Option<String>,
    /// An OpenAI-compatible endpoint for convergence; the offline provider when `None`.
    pub llm: Option<OpenAiConfig>,
    /// Workers running asynchronous convergence tasks.
    pub convergence_workers: usize,
    /// `lodge.toml`: plans and prices, reloaded when it changes.
    pub config_file: Option<PathBuf>,
    /// How often the config file is checked for changes.
    pub config_poll: Duration,
    /// `postgres://…` to share one PostgreSQL among hosts, `sqlite:…` for another
    /// SQLite file; `None`: `<data_dir>/lodge.db`.
    pub database_url: Option<String>,
    /// How often a host on PostgreSQL compares its tenants with the database.
    pub reconcile_interval: Duration,
    /// A convergence task's claim lasts this long unless renewed (the running
    /// host renews it every third of it); with several hosts, a task whose lease
    /// lapsed is taken to be a dead host's and queued again.
    pub task_lease: Duration,
    /// A tenant's component is dropped from memory after it served no request
    /// for this long (it loads again, from the precompiled artifact, on the next).
    pub idle_unload: Duration,
    /// After no request ran for this long, the memory pools keep resident in
    /// warm instance slots is given back ([`crate::instance::Runtime::trim`]).
    pub idle_trim: Duration,
    /// An instance kept between requests (plan `instance_reuse`) is dropped
    /// after waiting this long for its tenant's next request.
    pub reuse_idle: Duration,
    /// CPU lanes of a tenant of weight 1 (`None`: one per core). See `limits::Fair`.
    pub cpu_lanes: Option<u32>,
    /// Tenants given their own label in `/metrics`; the rest share `_other`.
    pub metrics_tenant_labels: usize,
    /// Deploy uploads being received or compiled at once across the host (each
    /// tenant has one at a time); more are answered 503 with `Retry-After`.
    pub max_uploads: usize,
    /// A client must send a request's headers within this long (HTTP/1), and an
    /// HTTP/1 connection waiting for its next request is closed after it.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight that moved no bytes for this long is closed.
    pub idle_timeout: Duration,
    /// Client connections open at once; past it new ones are closed at once.
    pub max_connections: usize,
    /// Log lines waiting to be archived, across tenants (each gets a fair share).
    pub log_archive_queue: usize,
    /// Webhook deliveries in flight at once across the host (each tenant at most 2).
    pub webhook_workers: usize,
    /// Let webhooks reach private, loopback and link-local addresses (on-premises
    /// receivers); off, a webhook URL must resolve to public addresses only.
    pub webhook_allow_private: bool,
    /// Delete the artifacts of components no longer stored. Turn off when the
    /// artifacts directory is shared by hosts on different databases.
    pub prune_artifacts: bool,
    /// How often archived log lines are pruned (per plan retention) and
    /// artifacts of deleted components swept.
    pub housekeeping_interval: Duration,
}

/// Engine knobs (pooling allocator, compiler) measured in `docs/benchmarks.md`.
#[derive(Debug, Clone)]
pub struct EngineTuning {
    /// Bytes of each linear memory kept resident (memset instead of madvise) on reuse.
    pub linear_memory_keep_resident: usize,
    /// Bytes of each table kept resident on reuse.
    pub table_keep_resident: usize,
    /// Slots decommitted together.
    pub decommit_batch_size: usize,
    /// Emit native unwind info for guest code (needed only for native profilers).
    pub native_unwind_info: bool,
    /// Use Linux's `PAGEMAP_SCAN` to reset only dirtied pages when a slot is reused.
    pub pagemap_scan: bool,
    /// Cranelift's single-pass register allocator: faster compiles, slower code.
    pub single_pass_regalloc: bool,
    /// Cranelift optimisations (`false`: no optimisation passes, faster compiles).
    pub optimize: bool,
    /// Which compilers serve a deploy (see [`TierPolicy`]).
    pub tiers: TierPolicy,
    /// Threads compiling optimised code in the background, at the lowest CPU
    /// priority (default: one per core; one component at a time per thread).
    pub optimizer_threads: usize,
    /// Serve WASI 0.3 components (`wasi:http/service`): the engines are made
    /// ready for concurrent execution, which every request's store then pays
    /// for (see docs/benchmarks.md); off, 0.3 components are refused at deploy.
    pub wasi_p3: bool,
}

/// Which compiler produced a component's code.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Winch, wasmtime's baseline compiler: compiles 3-5x faster, slower code.
    Baseline,
    /// Cranelift, the optimising compiler.
    Optimized,
}

impl Tier {
    /// `baseline` or `optimized`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::Optimized => "optimized",
        }
    }
}

/// How deploys are compiled (`--compile-tiers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TierPolicy {
    /// Serve the baseline (Winch) build at once; compile the optimised
    /// (Cranelift) one in the background and swap it in when ready.
    #[default]
    Tiered,
    /// Only the optimising compiler: a deploy goes live when its optimised build is.
    Optimized,
    /// Only the baseline compiler: fastest deploys, slower code, no background work.
    Baseline,
}

impl TierPolicy {
    /// The tier a deploy goes live on (if that compiler accepts the component).
    pub fn first(self) -> Tier {
        match self {
            Self::Optimized => Tier::Optimized,
            Self::Tiered | Self::Baseline => Tier::Baseline,
        }
    }

    /// Whether this policy compiles with `tier` at all.
    pub fn uses(self, tier: Tier) -> bool {
        match self {
            Self::Tiered => true,
            Self::Optimized => tier == Tier::Optimized,
            Self::Baseline => tier == Tier::Baseline,
        }
    }
}

impl Default for EngineTuning {
    fn default() -> Self {
        Self {
            linear_memory_keep_resident: 2 * 1024 * 1024,
            table_keep_resident: 64 * 1024,
            decommit_batch_size: 1,
            native_unwind_info: false,
            pagemap_scan: true,
            single_pass_regalloc: false,
            optimize: true,
            tiers: TierPolicy::default(),
            // At nice 19 they only take CPU nothing else wants.
            optimizer_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            wasi_p3: true,
        }
    }
}

impl HostConfig {
    /// This configuration, changed by `f`.
    pub fn with(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }
}

impl std::fmt::Debug for HostConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostConfig")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("base_domain", &self.base_domain)
            .field(
                "database",
                &self
                    .database_url
                    .as_deref()
                    .map(|u| u.split('@').next_back().unwrap_or(u)),
            )
            .field("default_limits", &self.default_limits)
            .field("max_instances", &self.max_instances)
            .field("memory_budget_bytes", &self.memory_budget_bytes)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            data_dir: PathBuf::from("lodge-data"),
            artifacts_dir: None,
            base_domain: None,
            default_limits: Limits::default(),
            max_instances: 1000,
            memory_budget_bytes: 8 * 1024 * 1024 * 1024,
            max_memory_per_instance: 1024 * 1024 * 1024,
            fuel_yield_interval: 100_000,
            log_lines_per_tenant: 1000,
            engine: EngineTuning::default(),
            max_component_bytes: 64 * 1024 * 1024,
            admin_token: None,
            master_key: None,
            llm: None,
            convergence_workers: 2,
            config_file: None,
            config_poll: Duration::from_secs(1),
            metrics_tenant_labels: 100,
            cpu_lanes: None,
            database_url: None,
            reconcile_interval: Duration::from_secs(5),
            task_lease: Duration::from_secs(60),
            idle_unload: Duration::from_secs(300),
            idle_trim: Duration::from_secs(30),
            reuse_idle: Duration::from_secs(10),
            max_uploads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            log_archive_queue: 10_000,
            webhook_workers: 8,
            housekeeping_interval: Duration::from_secs(600),
            prune_artifacts: true,
            webhook_allow_private: false,
        }
    }
}

/// Settings of an OpenAI-compatible endpoint.
#[derive(Clone)]
pub struct OpenAiConfig {
    /// Base URL, e.g. `https://api.openai.com/v1` or `http://localhost:11434/v1`.
    pub base_url: String,
    /// Model name.
    pub model: String,
    /// Bearer key, if the endpoint needs one.
    pub api_key: Option<String>,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Retries after the first attempt (timeouts, 429, 5xx).
    pub retries: u32,
    /// First backoff; doubles each retry.
    pub backoff: Duration,
}

impl std::fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiConfig")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .finish()
    }
}
