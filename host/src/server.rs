//! The HTTP front door: accepts connections and sends each request to the data
//! plane (a tenant was addressed) or to the host's own endpoints.

use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::ServiceExt as _;
use tracing::Instrument as _;

use crate::auth::AdminToken;
use crate::config::HostConfig;
use crate::control::{ControlParts, ControlPlane};
use crate::convergence::provider::{Offline, OpenAiCompatible, Provider};
use crate::convergence::tasks::{ConvergenceParts, ConvergenceService};
use crate::dataplane;
use crate::instance::Runtime;
use crate::logs::ArchiveSender;
use crate::metrics::Metrics;
use crate::plans::PlanBook;
use crate::registry::Registry;
use crate::routing::{self, REQUEST_ID};
use crate::storage::{Dialect, SqlStorage, Storage};
use crate::wallet::MasterKey;

/// The multi-threaded tokio runtime the host runs on (`threads`: worker
/// threads, default one per core).
pub fn runtime(threads: Option<usize>, name: &str) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // tokio's default `event_interval` (61 tasks polled between two looks at
    // the sockets) was measured against 4, 8 and 16 with a CPU-bound tenant
    // flooding the host: a quiet tenant's p99 did not move (docs/benchmarks.md).
    builder.enable_all().thread_name(name);
    if let Some(threads) = threads {
        builder.worker_threads(threads.max(1));
    }
    builder.build()
}

pub use crate::error::{BoxError, ResponseBody};

/// One Lodge host, as the composition root builds it: the services, each
/// holding only the handles it uses, and the jobs they run. It derefs to its
/// control plane (settings, runtime, registry, storage), which is what most
/// callers want.
#[derive(Debug)]
pub struct Lodge {
    /// Tenants' life cycle, the registry, storage and the runtime.
    pub control: Arc<ControlPlane>,
    /// Convergence: the API's and the guest capability's, and the task workers'.
    pub convergence: Arc<ConvergenceService>,
    /// What guests' capabilities are built from.
    pub capabilities: crate::capability::CapabilityHost,
    /// Every background loop of the host, stopped together at shutdown.
    pub(crate) jobs: crate::jobs::Jobs,
    generated_admin_token: std::sync::Mutex<Option<String>>,
}

impl std::ops::Deref for Lodge {
    type Target = ControlPlane;

    fn deref(&self) -> &ControlPlane {
        &self.control
    }
}

impl Lodge {
    /// Opens the host: storage (created and migrated), admin token, runtime, and
    /// every stored tenant restored with its active version.
    pub async fn open(config: HostConfig) -> anyhow::Result<Arc<Self>> {
        create_private_dir(&config.data_dir)?;
        let storage = match config.database_url.as_deref() {
            Some(url) => SqlStorage::open(url).await,
            None => SqlStorage::open_in(&config.data_dir).await,
        }
        .context("opening the database")?;
        // Hosts sharing a PostgreSQL database tell each other of changes.
        let notifier = match (storage.dialect(), config.database_url.as_deref()) {
            (Dialect::Postgres, Some(url)) => Some(
                crate::sync::Notifier::connect(url)
                    .await
                    .context("connecting the change notifier")?,
            ),
            _ => None,
        };
        let storage: Arc<dyn Storage> = Arc::new(storage);
        let (admin, generated) = AdminToken::load(&config.data_dir, config.admin_token.clone())?;
        let master = Arc::new(MasterKey::load(
            &config.data_dir,
            config.master_key.clone(),
        )?);
        // The key must open the wallets already sealed (a database from before
        // the check value existed included), and match the check value.
        if let Some(owner) = storage.wallet_any_owner().await?
            && let Some(wallet) = storage.wallet_get(&owner).await?
        {
            crate::wallet::unseal(&master, &owner, &wallet).map_err(|_| {
                anyhow::anyhow!(
                    "this host's master key does not open the wallets in this database: every \
                     host sharing a database needs the key they were sealed with (LODGE_MASTER_KEY \
                     or the data dir's master-key file)"
                )
            })?;
        }
        let resealed = crate::wallet::reseal_legacy_seeds(storage.as_ref(), &master).await?;
        if resealed > 0 {
            tracing::info!(
                wallets = resealed,
                "wallet seeds sealed again under the seeds subkey"
            );
        }
        let check = master.check_value();
        if storage.meta_claim("master_key_check", &check).await? != check {
            anyhow::bail!(
                "this host's master key is not the one this database's wallets are sealed with: \
                 every host sharing a database needs the same key (LODGE_MASTER_KEY or the \
                 data dir's master-key file)"
            );
        }
        let plans = match &config.config_file {
            Some(path) => {
                PlanBook::load(path, &config.default_limits, config.max_memory_per_instance)
                    .map_err(|e| anyhow::anyhow!(e))?
            }
            // No file: the environment's `LODGE__PLANS__…` still apply.
            None => PlanBook::parse(
                "",
                &config.default_limits,
                std::env::vars(),
                config.max_memory_per_instance,
            )
            .map_err(|e| anyhow::anyhow!("plans from the environment: {e}"))?,
        };
        let runtime = Arc::new(Runtime::new(&config)?);
        let registry = Arc::new(Registry::default());
        let (log_archive, archive_rx) = ArchiveSender::channel(config.log_archive_queue);
        let metrics = Metrics::new(
            vec![
                Box::new(crate::instance::RuntimeCollector {
                    runtime: runtime.clone(),
                }),
                Box::new(crate::registry::TierCollector {
                    registry: Arc::downgrade(&registry),
                }),
                Box::new(log_archive.collector()),
            ],
            config.metrics_tenant_labels,
        );
        // The database answered just now (it was opened and read); the
        // database check job keeps this up to date from here on.
        metrics.database_up.set(1);
        let provider: Arc<dyn Provider> = match &config.llm {
            Some(llm) => Arc::new(OpenAiCompatible::new(llm.clone())),
            None => Arc::new(Offline),
        };
        let jobs = crate::jobs::Jobs::default();
        let convergence = Arc::new(ConvergenceService::new(ConvergenceParts {
            provider,
            storage: storage.clone(),
            held: registry.clone(),
            master: master.clone(),
            defaults: config.default_limits.clone(),
            task_lease: config.task_lease,
            webhook_workers: config.webhook_workers,
            allow_private: config.webhook_allow_private,
            jobs: jobs.clone(),
        }));
        let capabilities = crate::capability::CapabilityHost {
            keyvalue: storage.clone(),
            wallets: storage.clone(),
            master: master.clone(),
            convergence: convergence.clone(),
        };
        let control = ControlPlane::new(ControlParts {
            config,
            runtime,
            registry,
            storage,
            admin,
            master,
            metrics,
            notifier,
            plans,
            log_archive,
        });
        let lodge = Arc::new(Self {
            control,
            convergence,
            capabilities,
            jobs,
            generated_admin_token: std::sync::Mutex::new(generated),
        });
        // Not cancelled from outside: it writes what is queued when the host stops.
        lodge.jobs.spawn_finishing(crate::jobs::archive_logs(
            lodge.storage.clone(),
            archive_rx,
            lodge.metrics.log_archive_lost.clone(),
            lodge.jobs.stopping(),
        ));
        // One host owns every task on SQLite; with several hosts only lapsed leases.
        let lease = lodge.notifier.as_ref().map(|_| lodge.config.task_lease);
        let requeued = lodge.storage.task_requeue_running(lease).await?;
        let restored = lodge.restore().await.context("restoring tenants")?;
        tracing::info!(requeued, "convergence tasks resumed");
        tracing::info!(tenants = lodge.registry.len(), restored, "tenants restored");
        crate::jobs::start(&lodge.jobs, &lodge.control, &lodge.convergence);
        Ok(lodge)
    }

    /// What the REST API's handlers are given.
    pub fn api_services(&self) -> crate::api::AppState {
        Arc::new(crate::api::ApiServices {
            control: self.control.clone(),
            convergence: self.convergence.clone(),
        })
    }

    /// The admin token, if this start generated it (returned once).
    pub fn take_generated_admin_token(&self) -> Option<String> {
        self.generated_admin_token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// Answers one request: a tenant's, or the host's own endpoints in `control`.
    pub async fn dispatch(
        self: &Arc<Self>,
        control: &Router,
        req: http::Request<Incoming>,
    ) -> http::Response<ResponseBody> {
        let request_id = routing::request_id(&req);
        let id: Arc<str> = Arc::from(request_id.to_str().unwrap_or_default());
        let mut response = match routing::route(&req, self.config.base_domain.as_deref()) {
            Some(route) => {
                let span = tracing::info_span!(
                    "request",
                    tenant = %route.slug,
                    request_id = %id
                );
                dataplane::handle(
                    dataplane::DataPlane {
                        control: &self.control,
                        capabilities: &self.capabilities,
                    },
                    route,
                    id,
                    req,
                )
                .instrument(span)
                .await
            }
            None => {
                // The control plane sees the same id the response carries.
                let mut req = req;
                req.headers_mut().insert(REQUEST_ID, request_id.clone());
                let span = tracing::info_span!("api", request_id = %id);
                match control.clone().oneshot(req).instrument(span).await {
                    Ok(response) => response.map(|body| body.map_err(Into::into).boxed_unsync()),
                    Err(never) => match never {},
                }
            }
        };
        response.headers_mut().insert(REQUEST_ID, request_id);
        response
    }
}

/// Creates the data directory readable by its owner only (0700); an existing
/// one others may enter is used as it is, with a warning.
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating data dir {}", dir.display()))?;
        }
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                dir = %dir.display(),
                mode = format!("{:o}", mode & 0o777),
                "the data directory is open to other users: `chmod 700` it"
            );
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating data dir {}", dir.display()))
}

/// Serves HTTP on `listener` until `shutdown` resolves, then drains for up to 10 s.
///
/// Connections are bounded (see `docs/operations.md`, "Running untrusted
/// tenants"): at most `max_connections` open (more are closed at once, with a
/// log line), request headers within `header_read_timeout` (HTTP/1; hyper also
/// starts that clock while a kept-alive connection waits for its next request),
/// and a connection with no request in flight that moved no bytes for
/// `idle_timeout` is closed.
pub async fn serve(
    lodge: Arc<Lodge>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let control = crate::api::router(lodge.api_services()).merge(crate::console::router());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(lodge.config.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut last_refusal_log: Option<std::time::Instant> = None;
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if open.load(std::sync::atomic::Ordering::Acquire) >= lodge.config.max_connections {
            lodge.metrics.connections_refused.inc();
            if last_refusal_log.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                tracing::warn!(
                    max_connections = lodge.config.max_connections,
                    "connection limit reached: new connections are closed at once \
                     (--max-connections; further refusals in the next 10 s are only counted)"
                );
                last_refusal_log = Some(std::time::Instant::now());
            }
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let open_guard = OpenConnection::new(open.clone(), lodge.metrics.clone());
        let activity = Arc::new(Activity::new());
        let idle_timeout = lodge.config.idle_timeout;
        let lodge = lodge.clone();
        let control = control.clone();
        let in_service = activity.clone();
        let service = service_fn(move |req| {
            let lodge = lodge.clone();
            let control = control.clone();
            let request = InFlight::new(in_service.clone());
            async move {
                let response = lodge.dispatch(&control, req).await;
                // Hyper takes the body as it is: no box around the box.
                Ok::<_, Infallible>(response.map(|body| TrackedBody {
                    inner: body,
                    _request: request,
                }))
            }
        });
        let io = TokioIo::new(Watched {
            inner: stream,
            activity: activity.clone(),
        });
        let connection = builder.serve_connection(io, service).into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _open = open_guard;
            tokio::select! {
                ended = connection => if let Err(e) = ended {
                    tracing::debug!(error = %e, "connection ended with an error");
                },
                () = activity.idle(idle_timeout) => {
                    tracing::debug!("closing a connection idle for {idle_timeout:?}");
                }
            }
        });
    }
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_secs(10)) => {
            tracing::warn!("connections still open after 10 s; closing them");
        }
    }
    // Then the background jobs: the log archive writes what is queued, the
    // last usage is flushed.
    lodge.jobs.shutdown(Duration::from_secs(5)).await;
    lodge.flush_usage().await;
    Ok(())
}

/// Counts one open connection for as long as it lives.
struct OpenConnection {
    open: Arc<std::sync::atomic::AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl OpenConnection {
    fn new(open: Arc<std::sync::atomic::AtomicUsize>, metrics: Arc<Metrics>) -> Self {
        open.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        metrics.connections_open.inc();
        Self { open, metrics }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.open.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        self.metrics.connections_open.dec();
    }
}

/// What a connection is doing: requests in flight and when bytes last moved.
#[derive(Debug, Default)]
struct Activity {
    in_flight: std::sync::atomic::AtomicU32,
    /// Milliseconds since [`clock_start`] when bytes last moved.
    last_io_ms: std::sync::atomic::AtomicU64,
}

/// The start of the connections' activity clock.
fn clock_start() -> tokio::time::Instant {
    static START: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    *START.get_or_init(tokio::time::Instant::now)
}

impl Activity {
    fn new() -> Self {
        let activity = Self::default();
        activity.touch();
        activity
    }

    fn touch(&self) {
        let now = clock_start().elapsed().as_millis() as u64;
        self.last_io_ms
            .store(now, std::sync::atomic::Ordering::Relaxed);
    }

    fn last_io(&self) -> tokio::time::Instant {
        clock_start()
            + Duration::from_millis(self.last_io_ms.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Resolves once no request was in flight and no bytes moved for `timeout`.
    async fn idle(&self, timeout: Duration) {
        loop {
            tokio::time::sleep_until(self.last_io() + timeout).await;
            if self.in_flight.load(std::sync::atomic::Ordering::Acquire) > 0 {
                self.touch();
            } else if self.last_io() + timeout <= tokio::time::Instant::now() {
                return;
            }
        }
    }
}

/// A request in flight on a connection, until its response body is done.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: Arc<Activity>) -> Self {
        activity
            .in_flight
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as in flight.
struct TrackedBody {
    inner: ResponseBody,
    _request: InFlight,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A client socket that notes when bytes move.
struct Watched {
    inner: tokio::net::TcpStream,
    activity: Arc<Activity>,
}

impl tokio::io::AsyncRead for Watched {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl tokio::io::AsyncWrite for Watched {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
