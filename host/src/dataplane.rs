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

use crate::capability::convergence::ConvergenceCtx;
use crate::capability::keyvalue::KeyValueCtx;
use crate::capability::wallet::WalletCtx;
use crate::error::DataPlaneError;
use crate::instance::Invocation;
use crate::limits::{self, CappedBody};
use crate::logs::LogStream;
use crate::registry::Tenant;
use crate::routing::{self, Route};
use crate::server::{Lodge, ResponseBody};
use crate::storage::{KvQuota, TenantStatus};

/// Serves `req`, addressed to `route`, with request id `request_id`.
pub async fn handle(
    lodge: &Lodge,
    route: Route,
    request_id: Arc<str>,
    req: http::Request<Incoming>,
) -> http::Response<ResponseBody> {
    let started = Instant::now();
    let tenant = lodge.registry.get(&route.slug);
    let result = match &tenant {
        Some(tenant) => run(lodge, tenant, &route, &request_id, req).await,
        None => Err(DataPlaneError::TenantNotFound),
    };
    if let Some(tenant) = &tenant {
        tenant
            .counters
            .record(result.as_ref().err().map(|e| e.code()));
    }
    let response = result.unwrap_or_else(DataPlaneError::into_response);
    tracing::debug!(
        status = response.status().as_u16(),
        elapsed_us = started.elapsed().as_micros() as u64,
        "served"
    );
    response
}

async fn run(
    lodge: &Lodge,
    tenant: &Tenant,
    route: &Route,
    request_id: &Arc<str>,
    mut req: http::Request<Incoming>,
) -> Result<http::Response<ResponseBody>, DataPlaneError> {
    let state = tenant.state();
    let app = match (state.status, state.active) {
        (TenantStatus::Destroyed, _) => return Err(DataPlaneError::TenantNotFound),
        (TenantStatus::Stopped, _) => return Err(DataPlaneError::Stopped),
        (_, None) => return Err(DataPlaneError::NoDeployment),
        (_, Some(active)) => active.app,
    };
    let limits = &tenant.limits;

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

    if let Err(wait) = tenant.rate().try_acquire() {
        return Err(DataPlaneError::RateLimited {
            retry_after_secs: wait.as_secs_f64().ceil() as u64,
        });
    }
    let admission = limits::admit(tenant.concurrency(), lodge.runtime.slots())?;

    let id_header =
        http::HeaderValue::from_str(request_id).map_err(|_| DataPlaneError::Internal)?;
    routing::prepare_for_guest(&mut req, route, &id_header);
    let tripped = Arc::new(AtomicBool::new(false));
    let (parts, body) = req.into_parts();
    let body = CappedBody::new(body, limits.max_request_body, tripped.clone());
    let request = http::Request::from_parts(parts, body);

    let call = Invocation {
        limits,
        logs: &tenant.logs,
        request_id,
        env: &state.env,
        admission,
        counters: &tenant.counters,
        keyvalue: KeyValueCtx {
            tenant_id: tenant.id.clone(),
            storage: lodge.storage.clone(),
            quota: KvQuota {
                max_keys: limits.kv_max_keys,
                max_bytes: limits.kv_max_bytes,
            },
        },
        wallet: WalletCtx {
            tenant_id: tenant.id.clone(),
            storage: lodge.storage.clone(),
            master: lodge.master.clone(),
            max_per_transfer: limits.wallet_max_per_transfer,
            max_per_day: limits.wallet_max_per_day,
        },
        convergence: ConvergenceCtx {
            tenant_id: tenant.id.clone(),
            lodge: lodge.weak(),
        },
    };
    match lodge.runtime.invoke(&app, call, request).await {
        Ok(response) => Ok(response.map(|body| body.map_err(Into::into).boxed_unsync())),
        Err(_) if tripped.load(Ordering::Acquire) => Err(DataPlaneError::BodyTooLarge),
        Err(failure) => Err(failure.into()),
    }
}
