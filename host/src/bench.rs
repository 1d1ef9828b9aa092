//! `lodge bench`: throughput and latency of a host serving one component.
//!
//! Starts a Lodge host in this process with the default plan's limits on (fuel,
//! memory, deadline, concurrency), drives it over loopback HTTP/1.1 keep-alive
//! connections, and reports requests/s, p50/p99 latency and the mean
//! instantiation time per request. Given `--wasmtime`, it runs `wasmtime serve`
//! on the same component the same way and prints the ratio.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::{HostConfig, Limits, Tier, TierPolicy};
use crate::server::{Lodge, serve};

/// Options of `lodge bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The component to serve (default: the hello example built by `cargo test`).
    #[arg(long, default_value = "target/guests/wasm32-wasip2/guest/hello.wasm")]
    pub component: PathBuf,

    /// Connection counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "16,64")]
    pub connections: Vec<usize>,

    /// Seconds to measure each connection count.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,

    /// Seconds of warm-up before each measurement.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,

    /// A `wasmtime` binary (48.x) to compare against with `wasmtime serve`.
    #[arg(long)]
    pub wasmtime: Option<PathBuf>,

    /// Pass the same limits (fuel, timeout, memory) to `wasmtime serve`.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub wasmtime_limits: bool,

    /// Extra arguments for `wasmtime serve` (repeatable), e.g. `-Opooling-allocator=y`.
    #[arg(long, allow_hyphen_values = true)]
    pub wasmtime_arg: Vec<String>,

    /// Data directory for the host under test (a temporary one by default).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,

    /// Worker threads of the host under test (the load generator gets its own).
    #[arg(long, default_value_t = 2)]
    pub host_threads: usize,

    /// Pooling: bytes of each linear memory kept resident between uses.
    #[arg(long)]
    pub memory_keep_resident: Option<usize>,

    /// Pooling: bytes of each table kept resident between uses.
    #[arg(long)]
    pub table_keep_resident: Option<usize>,

    /// Pooling: slots decommitted together.
    #[arg(long)]
    pub decommit_batch_size: Option<usize>,

    /// Pooling: reset reused slots with Linux's PAGEMAP_SCAN.
    #[arg(long)]
    pub pagemap_scan: Option<bool>,

    /// Emit native unwind info for guest code.
    #[arg(long)]
    pub native_unwind_info: Option<bool>,

    /// Cranelift's single-pass register allocator.
    #[arg(long)]
    pub single_pass_regalloc: Option<bool>,

    /// Cranelift optimisation passes.
    #[arg(long)]
    pub optimize: Option<bool>,

    /// Fuel between async yields of a running guest.
    #[arg(long)]
    pub fuel_yield_interval: Option<u64>,

    /// Components whose deploy time (upload → first 200) and restart time to measure.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "target/guests/wasm32-wasip2/guest/hello.wasm,target/guests/wasm32-wasip2/guest/hostile.wasm"
    )]
    pub deploy_components: Vec<PathBuf>,

    /// Skip the throughput runs (deploy and restart timings only).
    #[arg(long)]
    pub deploy_only: bool,

    /// Before the restart, also create this many tenants running the first
    /// deploy component (time to reopen a host with many tenants).
    #[arg(long, default_value_t = 0)]
    pub reopen_tenants: usize,

    /// Run the noisy-neighbour benchmark instead: tenant A floods the host with
    /// CPU-spinning requests at 4× its concurrency while tenant B sends ordinary ones.
    #[arg(long)]
    pub noisy: bool,

    /// Noisy neighbour: tenant A's concurrency limit (it is sent 4× this).
    #[arg(long, default_value_t = 4)]
    pub noisy_concurrency: u32,

    /// Noisy neighbour: milliseconds each of A's requests spins.
    #[arg(long, default_value_t = 20)]
    pub noisy_spin_ms: u64,

    /// Noisy neighbour: tenant B's connections.
    #[arg(long, default_value_t = 4)]
    pub noisy_b_connections: usize,

    /// Noisy neighbour: the hostile component A runs.
    #[arg(long, default_value = "target/guests/wasm32-wasip2/guest/hostile.wasm")]
    pub noisy_component: PathBuf,

    /// CPU lanes per tenant of weight 1 (default: one per core). A large number
    /// turns the fair CPU scheduler off, for comparison.
    #[arg(long)]
    pub cpu_lanes: Option<u32>,

    /// Compile-tier policies to measure, comma-separated: throughput runs once
    /// per policy (`tiered` is measured after its optimised code is swapped in);
    /// deploys use the first.
    #[arg(long, value_delimiter = ',', value_enum, default_value = "tiered")]
    pub compile_tiers: Vec<TierPolicy>,
}

impl BenchArgs {
    /// The host configuration under test: defaults, overridden by the tuning flags.
    fn tuned(&self, mut config: HostConfig) -> HostConfig {
        let pool = &mut config.engine;
        pool.linear_memory_keep_resident = self
            .memory_keep_resident
            .unwrap_or(pool.linear_memory_keep_resident);
        pool.table_keep_resident = self.table_keep_resident.unwrap_or(pool.table_keep_resident);
        pool.decommit_batch_size = self.decommit_batch_size.unwrap_or(pool.decommit_batch_size);
        pool.pagemap_scan = self.pagemap_scan.unwrap_or(pool.pagemap_scan);
        pool.native_unwind_info = self.native_unwind_info.unwrap_or(pool.native_unwind_info);
        pool.single_pass_regalloc = self
            .single_pass_regalloc
            .unwrap_or(pool.single_pass_regalloc);
        pool.optimize = self.optimize.unwrap_or(pool.optimize);
        config.fuel_yield_interval = self
            .fuel_yield_interval
            .unwrap_or(config.fuel_yield_interval);
        config.cpu_lanes = self.cpu_lanes.or(config.cpu_lanes);
        config.engine.tiers = self.compile_tiers.first().copied().unwrap_or_default();
        config
    }
}

/// One measurement.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Requests answered 200 per second.
    pub rps: f64,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// Requests answered 200.
    pub ok: u64,
    /// Requests answered otherwise, or failed.
    pub errors: u64,
}

/// Runs `lodge bench`.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.noisy {
        return noisy_neighbour(&args).await;
    }
    if !args.deploy_only {
        throughput(&args).await?;
    }
    deploy_timings(&args).await
}

/// Upload → first 200 for each component on a fresh host (nothing cached), then
/// the same tenants after a restart: time to reopen, and to the first 200.
async fn deploy_timings(args: &BenchArgs) -> anyhow::Result<()> {
    const TOKEN: &str = "sk_admin_bench-0123456789abcdef01234567";
    let data = tempfile::tempdir()?;
    let client = reqwest::Client::builder().no_proxy().build()?;
    let mut rows = Vec::new();

    let config = args.tuned(HostConfig::default());
    let (lodge, addr, stop) = start_host(&config, data.path(), TOKEN).await?;
    let api = |path: &str| format!("http://{addr}/api/v1{path}");
    let org: serde_json::Value = client
        .post(api("/orgs"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({ "name": "bench" }))
        .send()
        .await?
        .json()
        .await?;
    let org_id = org["org"]["id"].as_str().unwrap_or_default().to_owned();
    let mut slugs = Vec::new();
    for (i, path) in args.deploy_components.iter().enumerate() {
        let wasm = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let slug = format!("deploy-{i}");
        let tenants = Tenants {
            client: &client,
            addr,
            token: TOKEN,
            org_id: &org_id,
        };
        tenants.spawn(&slug).await?;
        let started = Instant::now();
        let deployed = tenants.deploy(&slug, &wasm).await?;
        let first = client
            .get(format!("http://{addr}/tenants/{slug}/"))
            .send()
            .await?;
        anyhow::ensure!(
            first.status().is_success() || first.status().is_client_error(),
            "first request failed: {}",
            first.status()
        );
        let deploy_ms = started.elapsed().as_secs_f64() * 1000.0;
        let tier = deployed["tier"].as_str().unwrap_or("?").to_owned();
        // When the optimised code replaces the baseline code (tiered policy).
        let mut optimized_ms = None;
        if tier == "baseline" && config.engine.tiers == TierPolicy::Tiered {
            loop {
                let status: serde_json::Value = client
                    .get(api(&format!("/tenant/{slug}/status")))
                    .bearer_auth(TOKEN)
                    .send()
                    .await?
                    .json()
                    .await?;
                if status["tier"] == "optimized" {
                    optimized_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
                    break;
                }
                anyhow::ensure!(
                    started.elapsed() < Duration::from_secs(900),
                    "{slug}: no optimised code after 15 minutes"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        // The optimising compile of the same bytes alone, on the now idle machine.
        let optimizing_ms = {
            let (config, wasm) = (config.clone(), Bytes::from(wasm.clone()));
            tokio::task::spawn_blocking(move || optimizing_compile_ms(&config, wasm)).await??
        };
        rows.push(DeployRow {
            path: path.clone(),
            size: wasm.len(),
            compile_ms: deployed["deployment"]["compileMs"].as_i64().unwrap_or(0),
            tier,
            deploy_ms,
            optimizing_ms,
            optimized_ms,
        });
        slugs.push(slug);
    }
    if let Some(path) = args
        .deploy_components
        .first()
        .filter(|_| args.reopen_tenants > 0)
    {
        let wasm = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let created = Instant::now();
        let tenants = Tenants {
            client: &client,
            addr,
            token: TOKEN,
            org_id: &org_id,
        };
        for i in 0..args.reopen_tenants {
            let slug = format!("many-{i}");
            tenants.spawn(&slug).await?;
            tenants.deploy(&slug, &wasm).await?;
        }
        eprintln!(
            "created and deployed {} more tenants in {:.1} s",
            args.reopen_tenants,
            created.elapsed().as_secs_f64()
        );
    }
    let _ = stop.send(());
    drop(lodge);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let reopened = Instant::now();
    let (lodge, addr, stop) = start_host(&config, data.path(), TOKEN).await?;
    let reopen_ms = reopened.elapsed().as_secs_f64() * 1000.0;
    let mut firsts = Vec::new();
    for slug in &slugs {
        let started = Instant::now();
        let response = client
            .get(format!("http://{addr}/tenants/{slug}/"))
            .send()
            .await?;
        let _ = response.bytes().await?;
        firsts.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let tenants = lodge.registry.len();
    let components = lodge.runtime.components_loaded();
    let _ = stop.send(());
    drop(lodge);

    println!();
    println!(
        "## deploy and restart ({:?} compile tiers)",
        config.engine.tiers
    );
    println!();
    println!(
        "| component | size | compile (server) | live on | upload → first response | optimising compile alone | ratio | optimised code in after | after restart: first response |"
    );
    println!("|---|---:|---:|---|---:|---:|---:|---:|---:|");
    for (row, first_ms) in rows.iter().zip(&firsts) {
        println!(
            "| {} | {} KB | {} ms | {} | {:.0} ms | {:.0} ms | {:.2}× | {} | {first_ms:.1} ms |",
            row.path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            row.size / 1024,
            row.compile_ms,
            row.tier,
            row.deploy_ms,
            row.optimizing_ms,
            row.deploy_ms / row.optimizing_ms.max(0.001),
            row.optimized_ms
                .map(|ms| format!("{ms:.0} ms"))
                .unwrap_or_else(|| "—".to_owned()),
        );
    }
    println!();
    println!(
        "host reopen with {tenants} tenants (database + artifacts, no compilation): {reopen_ms:.0} ms; \
         {components} distinct components in memory"
    );
    Ok(())
}

/// One component's deploy, measured.
struct DeployRow {
    path: PathBuf,
    size: usize,
    compile_ms: i64,
    tier: String,
    deploy_ms: f64,
    optimizing_ms: f64,
    optimized_ms: Option<f64>,
}

/// Milliseconds an optimising (Cranelift) compile of `wasm` takes alone: a
/// runtime of its own, nothing cached; validation and pre-instantiation
/// included, as `wasmtime compile` validates and writes its artifact.
fn optimizing_compile_ms(config: &HostConfig, wasm: Bytes) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let runtime = crate::instance::Runtime::new(&config.clone().with(|c| {
        c.engine.tiers = TierPolicy::Optimized;
        c.data_dir = dir.path().to_owned();
        c.artifacts_dir = None;
        c.max_instances = 8;
    }))?;
    let started = Instant::now();
    runtime.load(wasm)?;
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

/// Creates and deploys tenants of one organization through the API.
struct Tenants<'a> {
    client: &'a reqwest::Client,
    addr: SocketAddr,
    token: &'a str,
    org_id: &'a str,
}

impl Tenants<'_> {
    async fn spawn(&self, slug: &str) -> anyhow::Result<()> {
        self.client
            .post(format!("http://{}/api/v1/tenant/spawn", self.addr))
            .bearer_auth(self.token)
            .json(&serde_json::json!({ "name": slug, "orgId": self.org_id }))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    /// Uploads `wasm` as `slug`'s next version; returns the API's answer.
    async fn deploy(&self, slug: &str, wasm: &[u8]) -> anyhow::Result<serde_json::Value> {
        Ok(self
            .client
            .put(format!(
                "http://{}/api/v1/tenant/{slug}/component",
                self.addr
            ))
            .bearer_auth(self.token)
            .header("content-type", "application/wasm")
            .body(wasm.to_vec())
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }
}

/// A host on `dir` serving on a loopback port, in this runtime.
async fn start_host(
    config: &HostConfig,
    dir: &std::path::Path,
    token: &str,
) -> anyhow::Result<(Arc<Lodge>, SocketAddr, tokio::sync::oneshot::Sender<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let lodge = Lodge::open(config.clone().with(|c| {
        c.listen = addr;
        c.data_dir = dir.to_owned();
        c.artifacts_dir = None;
        c.admin_token = Some(token.to_owned());
    }))
    .await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(lodge.clone(), listener, async {
        let _ = stopped.await;
    }));
    Ok((lodge, addr, stop))
}

/// Requests/s and latency of the hello component under each compile-tier
/// policy, and of `wasmtime serve` if given.
async fn throughput(args: &BenchArgs) -> anyhow::Result<()> {
    let wasm = read_component(&args.component)?;
    let max_conns = args.connections.iter().copied().max().unwrap_or(64);
    let limits = Limits {
        // Enough permits that keep-alive clients never race a finishing request.
        max_concurrency: (max_conns * 2) as u32,
        ..Limits::default()
    };
    println!("# lodge bench");
    println!();
    println!(
        "component: {} ({} bytes); limits: fuel {}, memory {} MiB, timeout {} ms, concurrency {}",
        args.component.display(),
        wasm.len(),
        limits.fuel,
        limits.memory_bytes >> 20,
        limits.timeout.as_millis(),
        limits.max_concurrency,
    );
    println!(
        "machine: {} cores; host threads {}; {}s per run after {}s warm-up",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        args.host_threads,
        args.seconds,
        args.warmup
    );

    let mut rows = Vec::new();
    for &policy in &args.compile_tiers {
        let (tier, results) = measure_lodge(args, policy, &wasm, &limits).await?;
        rows.push((
            format!(
                "lodge, {} policy ({} code)",
                clap::ValueEnum::to_possible_value(&policy)
                    .map(|v| v.get_name().to_owned())
                    .unwrap_or_default(),
                tier.as_str()
            ),
            results,
        ));
    }
    println!();

    let mut wasmtime_results = Vec::new();
    if let Some(bin) = &args.wasmtime {
        for &conns in &args.connections {
            wasmtime_results.push(run_wasmtime(bin, args, conns).await?);
        }
    }

    println!("| server | connections | requests/s | p50 | p99 | errors | instantiate/request |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, results) in &rows {
        for (conns, s, inst_us) in results {
            println!(
                "| {name} | {conns} | {:.0} | {:.2} ms | {:.2} ms | {} | {inst_us:.1} µs |",
                s.rps,
                ms(s.p50),
                ms(s.p99),
                s.errors
            );
        }
    }
    for (conns, s) in args.connections.iter().zip(&wasmtime_results) {
        println!(
            "| wasmtime serve | {conns} | {:.0} | {:.2} ms | {:.2} ms | {} | — |",
            s.rps,
            ms(s.p50),
            ms(s.p99),
            s.errors
        );
    }
    if let [(first, base), (second, other), ..] = rows.as_slice() {
        println!();
        for ((conns, a, _), (_, b, _)) in base.iter().zip(other) {
            println!(
                "{conns} connections: {second} / {first} throughput ratio {:.2}",
                b.rps / a.rps.max(1.0)
            );
        }
    }
    if let Some((name, results)) = rows.first().filter(|_| !wasmtime_results.is_empty()) {
        println!();
        for ((conns, l, _), w) in results.iter().zip(&wasmtime_results) {
            println!(
                "{conns} connections: {name} / wasmtime throughput ratio {:.2}",
                l.rps / w.rps.max(1.0)
            );
        }
    }
    Ok(())
}

/// One host under `policy` serving `wasm` as tenant `hello`, driven at each
/// connection count; under `tiered`, measured once its optimised code is in.
async fn measure_lodge(
    args: &BenchArgs,
    policy: TierPolicy,
    wasm: &[u8],
    limits: &Limits,
) -> anyhow::Result<(Tier, Vec<(usize, Sample, f64)>)> {
    let tmp = tempfile::tempdir()?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_owned());
    let config = args
        .tuned(HostConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir,
            default_limits: limits.clone(),
            ..HostConfig::default()
        })
        .with(|c| c.engine.tiers = policy);
    // The host gets a runtime of its own so its threads are not the load generator's.
    let host_rt = host_runtime(args)?;
    let lodge = {
        let _guard = host_rt.enter();
        host_rt.spawn(Lodge::open(config.clone())).await??
    };
    let started = Instant::now();
    let tenant = {
        let (lodge, wasm) = (lodge.clone(), wasm.to_vec());
        host_rt
            .spawn(async move { lodge.add_app("hello", wasm, None).await })
            .await??
    };
    let loaded_ms = started.elapsed().as_millis();
    let app = tenant
        .active()
        .and_then(|a| a.app())
        .context("hello is not loaded")?;
    while app.tier() == Tier::Baseline && lodge.runtime.wants_optimized(&app) {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "the optimised code did not arrive within 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "- {policy:?}: live in {loaded_ms} ms, measured on {} code (after {} ms); tuning: {:?}, fuel yield every {}",
        app.tier().as_str(),
        started.elapsed().as_millis(),
        config.engine,
        config.fuel_yield_interval
    );
    let listener = bind_in(&host_rt, SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    host_rt.spawn(serve(lodge.clone(), listener, async {
        let _ = stopped.await;
    }));

    let mut results = Vec::new();
    for &conns in &args.connections {
        let stats = lodge.runtime.stats().clone();
        let before = (
            stats.instantiations.load(Ordering::Relaxed),
            stats.instantiate_nanos.load(Ordering::Relaxed),
        );
        let sample = drive(addr, "hello.localhost", conns, args).await?;
        let count = stats.instantiations.load(Ordering::Relaxed) - before.0;
        let nanos = stats.instantiate_nanos.load(Ordering::Relaxed) - before.1;
        let inst_us = if count > 0 {
            nanos as f64 / count as f64 / 1000.0
        } else {
            0.0
        };
        results.push((conns, sample, inst_us));
    }
    let tier = app.tier();
    let _ = stop.send(());
    drop((app, tenant, lodge));
    host_rt.shutdown_background();
    Ok((tier, results))
}

/// A component built by `cargo test`, or a hint how to build it.
fn read_component(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| {
        format!(
            "reading {} (build it with `cargo test` or `make guests`)",
            path.display()
        )
    })
}

/// The host's own runtime, so its threads are not the load generator's.
fn host_runtime(args: &BenchArgs) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(crate::server::runtime(
        Some(args.host_threads),
        "lodge-host",
    )?)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Binds inside `runtime` so the listener's I/O is driven by the host's threads.
fn bind_in(
    runtime: &tokio::runtime::Runtime,
    addr: SocketAddr,
) -> anyhow::Result<tokio::net::TcpListener> {
    let _guard = runtime.enter();
    let std = std::net::TcpListener::bind(addr)?;
    std.set_nonblocking(true)?;
    Ok(tokio::net::TcpListener::from_std(std)?)
}

async fn run_wasmtime(bin: &PathBuf, args: &BenchArgs, conns: usize) -> anyhow::Result<Sample> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let limits = Limits::default();
    let mut command = tokio::process::Command::new(bin);
    command
        .arg("serve")
        .arg(format!("--addr={addr}"))
        .arg("-Scli");
    if args.wasmtime_limits {
        command
            .arg(format!("-Wfuel={}", limits.fuel))
            .arg(format!("-Wtimeout={}ms", limits.timeout.as_millis()))
            .arg(format!("-Wmax-memory-size={}", limits.memory_bytes));
    }
    let mut child = command
        .args(&args.wasmtime_arg)
        .arg(&args.component)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let ready = Instant::now();
    while TcpStream::connect(addr).await.is_err() {
        if ready.elapsed() > Duration::from_secs(60) {
            bail!("wasmtime serve did not start listening on {addr}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sample = drive(addr, "localhost", conns, args).await;
    let _ = child.kill().await;
    sample
}

/// Drives `addr` with `conns` keep-alive connections: warm-up, then a measured run.
async fn drive(
    addr: SocketAddr,
    host: &str,
    conns: usize,
    args: &BenchArgs,
) -> anyhow::Result<Sample> {
    let _ = load(addr, host, "/", conns, Duration::from_secs(args.warmup)).await?;
    load(addr, host, "/", conns, Duration::from_secs(args.seconds)).await
}

async fn load(
    addr: SocketAddr,
    host: &str,
    path: &str,
    conns: usize,
    duration: Duration,
) -> anyhow::Result<Sample> {
    let deadline = Instant::now() + duration;
    let host: Arc<str> = Arc::from(host);
    let path: Arc<str> = Arc::from(path);
    let mut tasks = Vec::with_capacity(conns);
    for _ in 0..conns {
        let host = host.clone();
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            connection_loop(addr, &host, &path, deadline).await
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (lat, errs) = task.await??;
        latencies.extend(lat);
        errors += errs;
    }
    latencies.sort_unstable();
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .map(Duration::from_nanos)
            .unwrap_or_default()
    };
    Ok(Sample {
        rps: latencies.len() as f64 / duration.as_secs_f64(),
        p50: pick(0.50),
        p99: pick(0.99),
        ok: latencies.len() as u64,
        errors,
    })
}

async fn connection_loop(
    addr: SocketAddr,
    host: &str,
    path: &str,
    deadline: Instant,
) -> anyhow::Result<(Vec<u64>, u64)> {
    let mut latencies = Vec::with_capacity(64 * 1024);
    let mut errors = 0u64;
    'reconnect: while Instant::now() < deadline {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        while Instant::now() < deadline {
            let req = http::Request::get(path)
                .header(http::header::HOST, host)
                .body(Empty::<Bytes>::new())?;
            let start = Instant::now();
            let response = match sender.send_request(req).await {
                Ok(response) => response,
                Err(_) => {
                    errors += 1;
                    continue 'reconnect;
                }
            };
            let status = response.status();
            if response.into_body().collect().await.is_err() {
                errors += 1;
                continue 'reconnect;
            }
            if status == http::StatusCode::OK {
                latencies.push(start.elapsed().as_nanos() as u64);
            } else {
                errors += 1;
            }
        }
    }
    Ok((latencies, errors))
}

/// The noisy neighbour: B's latency alone, then while A floods the host with
/// CPU-spinning requests at 4× its concurrency limit.
async fn noisy_neighbour(args: &BenchArgs) -> anyhow::Result<()> {
    let hello = read_component(&args.component)?;
    let hostile = read_component(&args.noisy_component)?;
    let tmp = tempfile::tempdir()?;
    let config = args.tuned(HostConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: tmp.path().to_owned(),
        ..HostConfig::default()
    });
    let host_rt = host_runtime(args)?;
    let lodge = {
        let _guard = host_rt.enter();
        host_rt.spawn(Lodge::open(config)).await??
    };
    let a_limits = Limits {
        max_concurrency: args.noisy_concurrency.max(1),
        ..Limits::default()
    };
    {
        let lodge = lodge.clone();
        let b_limits = Limits {
            max_concurrency: (args.noisy_b_connections * 2) as u32,
            ..Limits::default()
        };
        host_rt
            .spawn(async move {
                lodge.add_app("a", hostile, Some(a_limits)).await?;
                lodge.add_app("b", hello, Some(b_limits)).await
            })
            .await??;
    }
    let listener = bind_in(&host_rt, SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    host_rt.spawn(serve(lodge.clone(), listener, async {
        let _ = stopped.await;
    }));

    let seconds = Duration::from_secs(args.seconds);
    let warmup = Duration::from_secs(args.warmup);
    let b_conns = args.noisy_b_connections;
    let _ = load(addr, "b.localhost", "/", b_conns, warmup).await?;
    let alone = load(addr, "b.localhost", "/", b_conns, seconds).await?;

    let a_conns = args.noisy_concurrency.max(1) as usize * 4;
    let spin = format!("/spin?ms={}", args.noisy_spin_ms);
    let flood =
        tokio::spawn(
            async move { load(addr, "a.localhost", &spin, a_conns, warmup + seconds).await },
        );
    tokio::time::sleep(warmup).await;
    let shared = load(addr, "b.localhost", "/", b_conns, seconds).await?;
    let flood = flood.await??;
    let _ = stop.send(());

    println!("# lodge bench --noisy");
    println!();
    println!(
        "tenant A: hostile `/spin?ms={}`, concurrency limit {}, sent by {a_conns} connections; \
         tenant B: hello, {b_conns} connections; host: {} worker threads, CPU lanes per tenant {}; {} s each",
        args.noisy_spin_ms,
        args.noisy_concurrency,
        args.host_threads,
        lodge.runtime.lanes(),
        args.seconds,
    );
    println!();
    println!("| run | B req/s | B p50 | B p99 | B failed | A served | A refused (503) |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    println!(
        "| B alone | {:.0} | {:.2} ms | {:.2} ms | {} | — | — |",
        alone.rps,
        ms(alone.p50),
        ms(alone.p99),
        alone.errors
    );
    println!(
        "| B while A floods | {:.0} | {:.2} ms | {:.2} ms | {} | {} | {} |",
        shared.rps,
        ms(shared.p50),
        ms(shared.p99),
        shared.errors,
        flood.ok,
        flood.errors
    );
    println!();
    println!(
        "B's p99 with the flood / alone: {:.2}× (target ≤ 2×); B requests failed: {}",
        ms(shared.p99) / ms(alone.p99).max(1e-6),
        shared.errors
    );
    host_rt.shutdown_background();
    Ok(())
}
