//! The data plane: an end user's request, from routing to the guest's response.
//!
//! routing → limits (admission, body cap) → instance (fresh store, guest call)
//! → capabilities (inside the guest call). Every failure becomes one status and
//! the JSON error shape; the detail goes to the tenant's log.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use http::header::CONTENT_LENGTH;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::capability::CapabilityHost;
use crate::capability::Grant;
use crate::control::ControlPlane;
use crate::counters::TenantCounters;
use crate::error::DataPlaneError;
use crate::error::ResponseBody;
use crate::instance::Invocation;
use crate::instance::warm::Reuse;
use crate::limits::{self, CappedBody};
use crate::logs::LogStream;
use crate::registry::Tenant;
use crate::routing::{self, Route};
use crate::storage::TenantStatus;

/// What the data plane reads: the registry, the runtime and loading (the
/// control plane's) and what capabilities are built from.
#[derive(Debug, Clone, Copy)]
pub struct DataPlane<'a> {
    /// Tenants, the runtime, component loading.
    pub control: &'a ControlPlane,
    /// Guests' capabilities.
    pub capabilities: &'a CapabilityHost,
}

/// How long a refused request (over the tenant's concurrency or rate, or no
/// instance slot on the host) waits before its 503/429 is sent.
pub const REFUSAL_PACE: std::time::Duration = std::time::Duration::from_millis(20);

/// Serves `req`, addressed to `route`, with request id `request_id`.
pub async fn handle(
    plane: DataPlane<'_>,
    route: Route,
    request_id: Arc<str>,
    req: http::Request<Incoming>,
) -> http::Response<ResponseBody> {
    let started = Instant::now();
    let tenant = plane.control.registry.get(&route.slug);
    let result = match &tenant {
        Some(tenant) => run(plane, tenant, &route, &request_id, req).await,
        None => Err(DataPlaneError::TenantNotFound),
    };
    let failure = result.as_ref().err().copied();
    if failure.is_some_and(DataPlaneError::is_refusal) {
        // A client flooding a tenant past its limits re-sends the moment it
        // is refused: each refusal is a full HTTP exchange on the host's
        // cores. Pacing refusals bounds what such a client costs everyone
        // else (a well-behaved client waits for `Retry-After` anyway).
        tokio::time::sleep(REFUSAL_PACE).await;
    }
    let response = result.unwrap_or_else(DataPlaneError::into_response);
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    if let Some(tenant) = &tenant {
        tenant.counters.record(status, failure.map(|e| e.code()));
        tenant.metrics.request(status, elapsed);
        if let Some(failure) = failure {
            report_limit(tenant, &request_id, failure);
        }
    }
    tracing::debug!(status, elapsed_us = elapsed.as_micros() as u64, "served");
    match &tenant {
        Some(tenant) => response.map(|body| {
            MeteredBody {
                inner: body,
                counters: tenant.counters.clone(),
            }
            .boxed_unsync()
        }),
        None => response,
    }
}

/// Counts a refused or failed request in `/metrics`, and tells the tenant why in
/// its log (refusals that come in floods at most once a second).
fn report_limit(tenant: &Tenant, request_id: &str, failure: DataPlaneError) {
    let limit = match failure {
        DataPlaneError::RateLimited { .. }
        | DataPlaneError::OverConcurrency
        | DataPlaneError::HostBusy
        | DataPlaneError::MemoryBusy
        | DataPlaneError::BodyTooLarge
        | DataPlaneError::Deadline
        | DataPlaneError::FuelExhausted => failure.code(),
        DataPlaneError::AppFailed => {
            tenant.metrics.guest_failure("trap");
            return;
        }
        DataPlaneError::NoResponse => {
            tenant.metrics.guest_failure("no_response");
            return;
        }
        _ => return,
    };
    tenant.metrics.limit_hit(limit);
    let why = match failure {
        DataPlaneError::RateLimited { .. } => format!(
            "request refused (429): over the plan's rate of {}/s",
            tenant.governor().limits.rate_per_second
        ),
        DataPlaneError::OverConcurrency => format!(
            "request refused (503): {} requests already running, the plan's concurrency limit",
            tenant.governor().limits.max_concurrency
        ),
        DataPlaneError::HostBusy => {
            "request refused (503): the host's instance pool has no slot for this app now".into()
        }
        // Logged where they happen, with detail.
        _ => return,
    };
    let now = crate::storage::now_ms() as u64;
    let last = tenant.last_limit_log.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= 1000
        && tenant
            .last_limit_log
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tenant.logs.push(
            request_id,
            LogStream::Host,
            format!("{why} (further refusals this second are not logged)"),
        );
    }
}

/// A response body that meters the bytes it sends.
struct MeteredBody {
    inner: ResponseBody,
    counters: Arc<TenantCounters>,
}

impl http_body::Body for MeteredBody {
    type Data = bytes::Bytes;
    type Error = crate::error::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.counters
                .bytes_out
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

async fn run(
    plane: DataPlane<'_>,
    tenant: &Tenant,
    route: &Route,
    request_id: &Arc<str>,
    mut req: http::Request<Incoming>,
) -> Result<http::Response<ResponseBody>, DataPlaneError> {
    // Before the state: an instance is kept only if nothing changed since.
    let generation = tenant.warm.generation();
    let state = tenant.state();
    let active = match (state.status, state.active) {
        (TenantStatus::Destroyed, _) => return Err(DataPlaneError::TenantNotFound),
        (TenantStatus::Stopped, _) => return Err(DataPlaneError::Stopped),
        (_, None) => return Err(DataPlaneError::NoDeployment),
        (_, Some(active)) => active,
    };
    let governor = tenant.governor();
    let limits = &governor.limits;

    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limits.max_request_body) {
        tenant.logs.push(
            request_id,
            LogStream::Host,
            format!(
                "request body of {} bytes refused: the limit is {}",
                declared.unwrap_or_default(),
                limits.max_request_body
            ),
        );
        return Err(DataPlaneError::BodyTooLarge);
    }

    if let Err(wait) = governor.rate.try_acquire() {
        return Err(DataPlaneError::RateLimited {
            retry_after_secs: wait.as_secs_f64().ceil() as u64,
        });
    }
    let mut admission = limits::admit_tenant(
        plane.control.runtime.pool(),
        &tenant.load,
        limits.max_concurrency,
    )?;
    let app = active
        .app_or_load(|| plane.control.load_component(&active.digest, active.size))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, version = active.version, "loading the active version failed");
            tenant.logs.push(
                request_id,
                LogStream::Host,
                format!("version {} could not be loaded: {e}", active.version),
            );
            DataPlaneError::Unloadable
        })?;

    let reuse = (limits.instance_reuse > 1).then(|| Reuse {
        set: tenant.warm.clone(),
        generation,
        max_uses: limits.instance_reuse,
    });
    let warm = plane
        .control
        .runtime
        .claim(&app, reuse.as_ref(), &mut admission)?;

    let id_header =
        http::HeaderValue::from_str(request_id).map_err(|_| DataPlaneError::Internal)?;
    routing::prepare_for_guest(&mut req, route, &id_header);
    let tripped = Arc::new(AtomicBool::new(false));
    let (parts, body) = req.into_parts();
    let body = CappedBody::new(body, limits.max_request_body, tripped.clone())
        .metered(tenant.counters.clone());
    let request = http::Request::from_parts(parts, body);

    let call = Invocation {
        limits,
        grant: Grant::for_request(
            plane.capabilities,
            tenant.parts(),
            limits,
            state.env.clone(),
            request_id,
        ),
        admission,
        counters: &tenant.counters,
        load: tenant.load.clone(),
        lanes: plane
            .control
            .runtime
            .lanes()
            .saturating_mul(limits.weight.max(1)),
        warm,
        reuse,
    };
    match plane.control.runtime.invoke(&app, call, request).await {
        Ok(mut response) => {
            if route.prefix.is_some() {
                // Path-routed apps share the host's origin with /console and
                // the API: a service worker there may not claim scope outside
                // the app's own prefix.
                response.headers_mut().remove("service-worker-allowed");
            }
            Ok(response)
        }
        Err(_) if tripped.load(Ordering::Acquire) => Err(DataPlaneError::BodyTooLarge),
        Err(failure) => Err(failure.into()),
    }
}
