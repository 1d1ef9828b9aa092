//! The `lodge` command line: `lodge serve` runs a host, `lodge bench` measures one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::client::{
    ClientCommand, Connection, EnvCommand, KeysCommand, OrgCommand, TenantCommand,
};
use crate::config::{HostConfig, Limits, TierPolicy};
use crate::server::{Lodge, serve};

/// Lodge: run many tenants' WebAssembly components in one sandboxed host.
#[derive(Debug, Parser)]
#[command(name = "lodge", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    conn: Connection,
    /// Log format on stderr: `text` for people, `json` (one object per line) for collectors.
    #[arg(long, global = true, env = "LODGE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// How the host writes its own logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, with the request span's tenant, request id and version.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a host serving tenants' `wasi:http/proxy` components over HTTP.
    Serve(Box<ServeArgs>),
    /// Measure a host serving the hello component over loopback HTTP.
    Bench(Box<crate::bench::BenchArgs>),
    /// Manage organizations (admin token).
    #[command(subcommand)]
    Org(OrgCommand),
    /// Manage tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Upload a component to a tenant and make it the active version.
    Deploy {
        /// Tenant id or slug.
        tenant: String,
        /// The `.wasm` component.
        file: PathBuf,
    },
    /// Show a tenant's logs.
    Logs {
        /// Tenant id or slug.
        tenant: String,
        /// Keep streaming new lines (server-sent events).
        #[arg(short, long)]
        follow: bool,
        /// Lines of backlog.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Set or remove a tenant's environment variables.
    #[command(subcommand)]
    Env(EnvCommand),
    /// Make a previous version active again.
    Rollback {
        /// Tenant id or slug.
        tenant: String,
        /// The version.
        version: i64,
    },
    /// Rotate keys.
    #[command(subcommand)]
    Keys(KeysCommand),
}

/// Options of `lodge serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "LODGE_LISTEN", default_value = "127.0.0.1:3000")]
    pub listen: SocketAddr,

    /// Directory for precompiled artifacts and host state.
    #[arg(long, env = "LODGE_DATA_DIR", default_value = "./lodge-data")]
    pub data_dir: PathBuf,

    /// Database: `postgres://user@host/db` to share one PostgreSQL among several
    /// hosts, or `sqlite:PATH`; default `<data-dir>/lodge.db` (SQLite).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Serve a tenant from a local component: `SLUG=PATH.wasm` (repeatable).
    #[arg(long = "app", value_name = "SLUG=PATH.wasm", value_parser = parse_app)]
    pub apps: Vec<(String, PathBuf)>,

    /// Route `Host: SLUG.<DOMAIN>` to tenant SLUG (`SLUG.localhost` always works).
    #[arg(long, env = "LODGE_BASE_DOMAIN", value_name = "DOMAIN")]
    pub base_domain: Option<String>,

    /// The operator's admin token: any text of 32 characters or more (default:
    /// generated into the data dir on first start). Prefer `--admin-token-file`
    /// or the environment: a command line shows in `ps`.
    #[arg(long, env = "LODGE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// A file holding the admin token (mode 0600; others may not read it).
    #[arg(
        long,
        env = "LODGE_ADMIN_TOKEN_FILE",
        value_name = "PATH",
        conflicts_with = "admin_token"
    )]
    pub admin_token_file: Option<PathBuf>,

    /// The master key sealing wallet seeds, env values and webhook secrets, 64
    /// hex digits (default: generated into the data dir). Prefer
    /// `--master-key-file` or the environment: a command line shows in `ps`.
    #[arg(long, env = "LODGE_MASTER_KEY", hide_env_values = true)]
    pub master_key: Option<String>,

    /// A file holding the master key (mode 0600; others may not read it).
    #[arg(
        long,
        env = "LODGE_MASTER_KEY_FILE",
        value_name = "PATH",
        conflicts_with = "master_key"
    )]
    pub master_key_file: Option<PathBuf>,

    /// An OpenAI-compatible chat-completions base URL for convergence (OpenAI,
    /// Ollama, vLLM, llama.cpp), e.g. `http://localhost:11434/v1`. Without it,
    /// the built-in offline provider answers (deterministic, labelled "offline").
    #[arg(long, env = "LODGE_LLM_URL")]
    pub llm_url: Option<String>,

    /// The model to ask at `--llm-url`.
    #[arg(long, env = "LODGE_LLM_MODEL", default_value = "gpt-4o-mini")]
    pub llm_model: String,

    /// Bearer key for `--llm-url` (read from the environment only).
    #[arg(skip = std::env::var("LODGE_LLM_API_KEY").ok())]
    pub llm_api_key: Option<String>,

    /// Which compilers serve a deploy: `tiered` goes live at once on Winch's
    /// baseline code and swaps in Cranelift's optimised code when its background
    /// compile is done; `optimized` goes live only when optimised; `baseline`
    /// compiles with Winch only (fastest deploys, slower code).
    #[arg(long, env = "LODGE_COMPILE_TIERS", value_enum, default_value_t = TierPolicy::Tiered)]
    pub compile_tiers: TierPolicy,

    /// Serve WASI 0.3 components (`wasi:http/service@0.3.0`) beside WASI 0.2
    /// ones. It makes every store ready for concurrent execution, which costs
    /// WASI 0.2 requests throughput (docs/benchmarks.md); `false` refuses 0.3
    /// components at deploy, saying why.
    #[arg(long, env = "LODGE_WASI_P3", default_value_t = true, action = clap::ArgAction::Set)]
    pub wasi_p3: bool,

    /// Optimised tier only, for compile speed: single-pass register allocation, no optimisation
    /// (about twice as fast to deploy, slower guest code).
    #[arg(long, env = "LODGE_FAST_COMPILE")]
    pub fast_compile: bool,

    /// Plans and prices (`lodge.toml`, see docs/operations.md); re-read when it
    /// changes and on SIGHUP. `LODGE__PLANS__<PLAN>__<FIELD>` variables override it.
    #[arg(long, env = "LODGE_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Also serve `GET /metrics` here, without a token: a scrape port for
    /// Prometheus. Keep it private (it names tenants); `/metrics` on the main
    /// address always needs the admin token.
    #[arg(long, env = "LODGE_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

    /// Let convergence webhooks reach private, loopback and link-local addresses
    /// (receivers on your own network). Off by default: a webhook URL must
    /// resolve to public addresses only, as guests' outbound HTTP must.
    #[arg(long, env = "LODGE_WEBHOOK_ALLOW_PRIVATE")]
    pub webhook_allow_private: bool,

    /// Largest component accepted by a deploy, in MiB.
    #[arg(long, env = "LODGE_MAX_COMPONENT_MIB", default_value_t = 64)]
    pub max_component_mib: usize,

    #[command(flatten)]
    pub plan: PlanArgs,

    #[command(flatten)]
    pub host: HostArgs,
}

/// Limits of the default plan.
#[derive(Debug, Clone, Args)]
pub struct PlanArgs {
    /// Fuel (about one per WebAssembly instruction) per request.
    #[arg(long, env = "LODGE_FUEL", default_value_t = Limits::DEFAULT_FUEL)]
    pub fuel: u64,

    /// Linear memory per instance, in MiB.
    #[arg(long, env = "LODGE_MEMORY_MIB", default_value_t = Limits::DEFAULT_MEMORY_MIB)]
    pub memory_mib: usize,

    /// Wall-clock time per request, in milliseconds (answered 504 past it).
    #[arg(long, env = "LODGE_TIMEOUT_MS", default_value_t = Limits::DEFAULT_TIMEOUT_MS)]
    pub timeout_ms: u64,

    /// Concurrent requests per tenant (more are answered 503 with Retry-After).
    #[arg(long, env = "LODGE_MAX_CONCURRENCY", default_value_t = Limits::DEFAULT_MAX_CONCURRENCY)]
    pub max_concurrency: u32,

    /// Requests per second per tenant, on average (token bucket; answered 429 with
    /// Retry-After past it). 0 = unlimited.
    #[arg(long, env = "LODGE_RATE_LIMIT", default_value_t = 0.0)]
    pub rate_limit: f64,

    /// Requests a tenant may send at once above its rate.
    #[arg(long, env = "LODGE_RATE_BURST", default_value_t = 50)]
    pub rate_burst: u32,

    /// Largest request body, in bytes (answered 413 past it).
    #[arg(long, env = "LODGE_MAX_REQUEST_BODY", default_value_t = Limits::DEFAULT_MAX_REQUEST_BODY)]
    pub max_request_body: u64,
}

/// Host-wide limits.
#[derive(Debug, Clone, Args)]
pub struct HostArgs {
    /// Instances alive at once across all tenants (sizes the pooling allocator).
    #[arg(long, env = "LODGE_MAX_INSTANCES", default_value_t = 1000)]
    pub max_instances: u32,

    /// Linear memory all live instances together may hold, in MiB.
    #[arg(long, env = "LODGE_MEMORY_BUDGET_MIB", default_value_t = 8192)]
    pub memory_budget_mib: u64,

    /// Log lines kept in memory per tenant.
    #[arg(long, env = "LODGE_LOG_LINES", default_value_t = 1000)]
    pub log_lines: usize,

    /// How long a claimed convergence task stays with its host without renewal
    /// (renewed every third of it while it runs); a task whose host died runs
    /// again on another host this long after the host's last renewal.
    #[arg(long, env = "LODGE_TASK_LEASE", default_value = "60s", value_parser = positive_duration)]
    pub task_lease: Duration,

    /// Drop a tenant's component from memory after it served no request for
    /// this long; the next request loads it again from the precompiled
    /// artifact (a few ms). An idle tenant then costs kilobytes.
    #[arg(long, env = "LODGE_IDLE_UNLOAD", default_value = "5m", value_parser = positive_duration)]
    pub idle_unload: Duration,

    /// After no request ran for this long, give the memory instance slots keep
    /// resident between requests (for faster instantiation) back to the system.
    #[arg(long, env = "LODGE_IDLE_TRIM", default_value = "30s", value_parser = positive_duration)]
    pub idle_trim: Duration,

    /// Drop an instance kept between a tenant's requests (plan
    /// `instance_reuse`) after it waited this long for the next one.
    #[arg(long, env = "LODGE_REUSE_IDLE", default_value = "10s", value_parser = positive_duration)]
    pub reuse_idle: Duration,

    /// With PostgreSQL: how often this host compares its tenants with the
    /// database (the safety net for lost change notices) and requeues tasks
    /// whose lease lapsed.
    #[arg(long, env = "LODGE_RECONCILE_INTERVAL", default_value = "5s", value_parser = positive_duration)]
    pub reconcile_interval: Duration,

    /// Client connections open at once; past it new connections are closed at
    /// once (with a log line every 10 s while it lasts).
    #[arg(long, env = "LODGE_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// A client must send its request headers within this long (HTTP/1); a
    /// kept-alive HTTP/1 connection waiting for its next request is closed after it too.
    #[arg(long, env = "LODGE_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    pub header_read_timeout: Duration,

    /// A connection with no request in flight that moved no bytes for this long is closed.
    #[arg(long, env = "LODGE_IDLE_TIMEOUT", default_value = "60s", value_parser = positive_duration)]
    pub idle_timeout: Duration,

    /// Deploy uploads received or compiled at once across the host (default:
    /// one per core); each tenant has one at a time. More are answered 503/429
    /// with Retry-After.
    #[arg(long, env = "LODGE_MAX_UPLOADS")]
    pub max_uploads: Option<usize>,
}

/// A duration such as `60s`, `500ms` or `2m`, above zero.
fn positive_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be above zero".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{e} (examples: 500ms, 60s, 2m)")),
    }
}

impl PlanArgs {
    /// The plan these options describe.
    pub fn limits(&self) -> Limits {
        Limits {
            fuel: self.fuel,
            memory_bytes: self.memory_mib.saturating_mul(1024 * 1024),
            timeout: Duration::from_millis(self.timeout_ms),
            max_concurrency: self.max_concurrency,
            max_request_body: self.max_request_body,
            rate_per_second: self.rate_limit,
            rate_burst: self.rate_burst,
            ..Limits::default()
        }
    }
}

impl ServeArgs {
    /// The host configuration these options describe.
    pub fn config(&self) -> HostConfig {
        let limits = self.plan.limits();
        HostConfig {
            listen: self.listen,
            data_dir: self.data_dir.clone(),
            base_domain: self.base_domain.clone(),
            max_memory_per_instance: limits
                .memory_bytes
                .max(HostConfig::default().max_memory_per_instance),
            default_limits: limits,
            max_instances: self.host.max_instances.max(1),
            memory_budget_bytes: self.host.memory_budget_mib.saturating_mul(1024 * 1024),
            log_lines_per_tenant: self.host.log_lines,
            admin_token: self.admin_token.clone(),
            master_key: self.master_key.clone(),
            llm: self
                .llm_url
                .clone()
                .map(|base_url| crate::convergence::provider::OpenAiConfig {
                    base_url,
                    model: self.llm_model.clone(),
                    api_key: self.llm_api_key.clone(),
                    timeout: Duration::from_secs(60),
                    retries: 2,
                    backoff: Duration::from_millis(500),
                }),
            max_component_bytes: self.max_component_mib.saturating_mul(1024 * 1024),
            webhook_allow_private: self.webhook_allow_private,
            config_file: self.config.clone(),
            database_url: self.database_url.clone(),
            task_lease: self.host.task_lease,
            reconcile_interval: self.host.reconcile_interval,
            idle_unload: self.host.idle_unload,
            idle_trim: self.host.idle_trim,
            reuse_idle: self.host.reuse_idle,
            max_connections: self.host.max_connections.max(1),
            header_read_timeout: self.host.header_read_timeout,
            idle_timeout: self.host.idle_timeout,
            ..HostConfig::default()
        }
        .with(|c| {
            if let Some(uploads) = self.host.max_uploads {
                c.max_uploads = uploads.max(1);
            }
            c.engine.tiers = self.compile_tiers;
            c.engine.wasi_p3 = self.wasi_p3;
            if self.fast_compile {
                c.engine.single_pass_regalloc = true;
                c.engine.optimize = false;
            }
        })
    }
}

fn parse_app(s: &str) -> Result<(String, PathBuf), String> {
    let (slug, path) = s
        .split_once('=')
        .ok_or_else(|| format!("expected SLUG=PATH.wasm, got {s:?}"))?;
    if !crate::routing::is_valid_slug(slug) {
        return Err(format!(
            "invalid slug {slug:?}: use 1-63 of a-z, 0-9 and '-', not at either end"
        ));
    }
    Ok((slug.to_owned(), PathBuf::from(path)))
}

/// Runs the command line. Exit codes: 0 success, 1 runtime error, 2 bad usage;
/// client commands add 3 (credentials refused), 4 (not found), 5 (request rejected).
pub fn main() -> ExitCode {
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    init_tracing(cli.log_format);
    if let Some(("serve", serve)) = matches.subcommand() {
        for secret in ["admin_token", "master_key"] {
            if serve.value_source(secret) == Some(clap::parser::ValueSource::CommandLine) {
                tracing::warn!(
                    "--{} was given on the command line, where every local user can read it \
                     (`ps`): prefer --{}-file or the environment",
                    secret.replace('_', "-"),
                    secret.replace('_', "-")
                );
            }
        }
    }
    let runtime = match crate::server::runtime(None, "lodge") {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let conn = cli.conn;
    let client = |command| runtime.block_on(crate::client::run(conn.clone(), command));
    let result = match cli.command {
        Command::Serve(args) => runtime.block_on(run_serve(*args)),
        Command::Bench(args) => runtime.block_on(crate::bench::run(*args)),
        Command::Org(c) => return client(ClientCommand::Org(c)),
        Command::Tenant(c) => return client(ClientCommand::Tenant(c)),
        Command::Deploy { tenant, file } => return client(ClientCommand::Deploy { tenant, file }),
        Command::Logs {
            tenant,
            follow,
            limit,
        } => {
            return client(ClientCommand::Logs {
                tenant,
                follow,
                limit,
            });
        }
        Command::Env(c) => return client(ClientCommand::Env(c)),
        Command::Rollback { tenant, version } => {
            return client(ClientCommand::Rollback { tenant, version });
        }
        Command::Keys(c) => return client(ClientCommand::Keys(c)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::field::MakeExt as _;
    let filter = EnvFilter::try_from_env("LODGE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal: escape codes in a file or a
    // collector's pipe are noise, and formatting them costs every request's
    // span (NO_COLOR, https://no-color.org, turns them off anywhere).
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        // `name=value` written directly: tracing-subscriber's default field
        // formatter styles each name (colours or not) through nested
        // formatters, and every request's span pays for it.
        LogFormat::Text => builder
            .fmt_fields(
                tracing_subscriber::fmt::format::debug_fn(|out, field, value| match field.name() {
                    "message" => write!(out, "{value:?}"),
                    name => write!(out, "{name}={value:?}"),
                })
                .delimited(" "),
            )
            .try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}

async fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = args.config();
    if let Some(path) = &args.admin_token_file {
        config.admin_token = Some(crate::auth::read_secret_file(path)?.trim().to_owned());
    }
    if let Some(path) = &args.master_key_file {
        config.master_key = Some(crate::auth::read_secret_file(path)?.trim().to_owned());
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    config.listen = addr;
    let lodge = Lodge::open(config.clone()).await?;
    match lodge.take_generated_admin_token() {
        Some(token) => eprintln!(
            "admin token (saved to {}, shown once): {token}",
            config.data_dir.join("admin-token").display()
        ),
        None if config.admin_token.is_none() && args.admin_token_file.is_none() => eprintln!(
            "admin token: in {}",
            config.data_dir.join("admin-token").display()
        ),
        None => {}
    }
    for (slug, path) in &args.apps {
        let tenant = lodge.add_app_file(slug, path).await?;
        if let Some(active) = tenant.active() {
            let how = match active.app() {
                Some(app) if app.from_cache => {
                    format!("loaded from cache in {} ms", app.compile_time.as_millis())
                }
                Some(app) => format!("compiled in {} ms", app.compile_time.as_millis()),
                None => "unchanged; loads on the first request".to_owned(),
            };
            eprintln!(
                "tenant {slug}: {} as version {} ({} bytes, sha256 {}, {how})",
                path.display(),
                active.version,
                active.size,
                &active.digest[..12],
            );
            eprintln!(
                "  curl http://{slug}.localhost:{}/   or   curl http://{addr}/tenants/{slug}/",
                addr.port()
            );
        }
    }
    if let Some(metrics_addr) = args.metrics_listen {
        let metrics = tokio::net::TcpListener::bind(metrics_addr)
            .await
            .with_context(|| format!("binding {metrics_addr} for metrics"))?;
        eprintln!(
            "metrics on http://{}/metrics (no token)",
            metrics.local_addr()?
        );
        let router = crate::api::metrics_router(lodge.api_services());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(metrics, router).await {
                tracing::error!(error = %e, "the metrics listener stopped");
            }
        });
    }
    eprintln!("lodge listening on http://{addr}");
    serve(lodge, listener, shutdown_signal()).await
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}
