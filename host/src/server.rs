//! The HTTP front door: accepts connections and sends each request to the data
//! plane (a tenant was addressed) or to the host's own endpoints.

use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::ServiceExt as _;
use tracing::Instrument as _;

use crate::config::{HostConfig, Limits};
use crate::error::DataPlaneError;
use crate::instance::{App, LoadError, Runtime};
use crate::registry::{Registry, Tenant};
use crate::routing::{self, REQUEST_ID};
use crate::{dataplane, routing::is_valid_slug};

/// Errors a response body may end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every response Lodge sends.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// One Lodge host: its settings, its runtime and its tenants.
#[derive(Debug)]
pub struct Lodge {
    /// Host-wide settings.
    pub config: HostConfig,
    /// The engine, linker and artifact cache.
    pub runtime: Runtime,
    /// The tenants served.
    pub registry: Registry,
    /// The host's own endpoints (health now; the control plane later).
    control: Router,
}

impl Lodge {
    /// A host with no tenants.
    pub fn new(config: HostConfig) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
        let runtime = Runtime::new(&config)?;
        Ok(Arc::new(Self {
            config,
            runtime,
            registry: Registry::default(),
            control: control_router(),
        }))
    }

    /// Compiles `wasm` off the async threads.
    pub async fn load(self: &Arc<Self>, wasm: Vec<u8>) -> Result<Arc<App>, LoadError> {
        let lodge = self.clone();
        tokio::task::spawn_blocking(move || lodge.runtime.load(&wasm).map(Arc::new))
            .await
            .map_err(|e| LoadError::Internal(e.into()))?
    }

    /// Adds tenant `slug` serving `wasm`, under `limits` (the default plan if `None`).
    pub async fn add_app(
        self: &Arc<Self>,
        slug: &str,
        wasm: Vec<u8>,
        limits: Option<Limits>,
    ) -> anyhow::Result<Arc<Tenant>> {
        anyhow::ensure!(
            is_valid_slug(slug),
            "invalid tenant slug {slug:?}: use 1-63 of a-z, 0-9 and '-', not at either end"
        );
        let app = self.load(wasm).await?;
        let limits = limits.unwrap_or_else(|| self.config.default_limits.clone());
        let tenant = Arc::new(Tenant::new(slug, limits, self.config.log_lines_per_tenant));
        tenant.activate(app);
        self.registry.insert(tenant.clone());
        Ok(tenant)
    }

    /// Adds tenant `slug` from a `.wasm` file (`lodge serve --app`).
    pub async fn add_app_file(
        self: &Arc<Self>,
        slug: &str,
        path: &Path,
    ) -> anyhow::Result<Arc<Tenant>> {
        let wasm = tokio::fs::read(path)
            .await
            .with_context(|| format!("reading {}", path.display()))?;
        self.add_app(slug, wasm, None)
            .await
            .with_context(|| format!("loading {} as tenant {slug:?}", path.display()))
    }

    /// Answers one request: a tenant's, or the host's own endpoints.
    pub async fn dispatch(
        self: &Arc<Self>,
        req: http::Request<Incoming>,
    ) -> http::Response<ResponseBody> {
        let request_id = routing::request_id(&req);
        let id: Arc<str> = Arc::from(request_id.to_str().unwrap_or_default());
        let mut response = match routing::route(&req, self.config.base_domain.as_deref()) {
            Some(route) => {
                let span = tracing::info_span!("request", tenant = %route.slug, request_id = %id);
                dataplane::handle(self, route, id, req)
                    .instrument(span)
                    .await
            }
            None => self.control_plane(req).await,
        };
        response.headers_mut().insert(REQUEST_ID, request_id);
        response
    }

    async fn control_plane(
        self: &Arc<Self>,
        req: http::Request<Incoming>,
    ) -> http::Response<ResponseBody> {
        match self.control.clone().oneshot(req).await {
            Ok(response) => response.map(|body| body.map_err(Into::into).boxed_unsync()),
            Err(never) => match never {},
        }
    }
}

fn control_router() -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ready\n" }))
        .fallback(|| async { DataPlaneError::TenantNotFound.into_response() })
}

/// Serves HTTP on `listener` until `shutdown` resolves, then drains for up to 10 s.
pub async fn serve(
    lodge: Arc<Lodge>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
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
        let _ = stream.set_nodelay(true);
        let lodge = lodge.clone();
        let service = service_fn(move |req| {
            let lodge = lodge.clone();
            async move { Ok::<_, Infallible>(lodge.dispatch(req).await) }
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_secs(10)) => {
            tracing::warn!("connections still open after 10 s; closing them");
        }
    }
    Ok(())
}
