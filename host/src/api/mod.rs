//! The control plane's REST API under `/api/v1`, its OpenAPI document, and the
//! host's own endpoints (`/healthz`, `/readyz`, `/api-docs`).
//!
//! Every failure answers `{"error":{"code","message"}}` (`crate::error::ErrorBody`,
//! the shape the data plane answers with too) — bad JSON, unknown fields, wrong
//! methods and unknown routes included. Tenants are found by id or slug; a
//! tenant the caller may not see is reported exactly like one that does not exist.
//!
//! This file holds what every resource shares (the error, the extractors, the
//! caller, the router and the OpenAPI document); each resource has its module:
//! `orgs`, `tenants`, `deployments`, `logs`, `usage` (with limits and plans),
//! `wallet`, `convergence` (with webhook secrets), `whoami` (who a key is).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures::Stream;
use http_body_util::BodyExt as _;
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use crate::auth::{self, AuthError, Principal};
use crate::config::Tier;
use crate::control::ControlError;
use crate::control::ControlPlane;
use crate::convergence::tasks::ConvergenceService;
use crate::instance::LoadError;
use crate::logs::LogLine;
use crate::plans::LimitsPatch;
use crate::registry::Tenant;
use crate::storage::{
    Deployment, Org, OrgSummary, StorageError, TenantRecord, TenantStatus, Usage,
};

pub mod convergence;
pub mod deployments;
pub mod logs;
pub mod orgs;
pub mod tenants;
pub mod usage;
pub mod wallet;
pub mod whoami;

use convergence::*;
use deployments::*;
use logs::*;
use orgs::*;
use tenants::*;
use usage::*;
use wallet::*;
use whoami::*;

/// The API's state.
/// What the API's handlers are given: the control plane (which they read
/// through `Deref`) and convergence; not the whole host.
#[derive(Debug)]
pub struct ApiServices {
    /// Tenants, storage, the registry and the runtime.
    pub control: Arc<ControlPlane>,
    /// Convergence and its tasks.
    pub convergence: Arc<ConvergenceService>,
}

impl std::ops::Deref for ApiServices {
    type Target = ControlPlane;

    fn deref(&self) -> &ControlPlane {
        &self.control
    }
}

/// The routers' state.
pub type AppState = Arc<ApiServices>;

pub use crate::error::{ErrorBody, ErrorDetail};

/// A failure of an API call.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
    /// What the operator should know and the client must not: logged once,
    /// by [`log_failures`], in the request's span.
    cause: Option<Cause>,
}

/// The host-side cause of a failed call, carried to [`log_failures`] in the
/// response's extensions.
#[derive(Debug, Clone)]
struct Cause {
    /// `error` for the host's own failures, `warn` for a dependency's.
    level: tracing::Level,
    what: &'static str,
    detail: Arc<str>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            cause: None,
        }
    }

    /// Keeps `detail` for the host's log (never the client's answer).
    fn caused_by(mut self, level: tracing::Level, what: &'static str, detail: String) -> Self {
        self.cause = Some(Cause {
            level,
            what,
            detail: detail.into(),
        });
        self
    }

    /// Also tells the client when to retry.
    fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    fn forbidden(message: &str) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody::new(self.code, &self.message);
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(cause) = self.cause {
            response.extensions_mut().insert(cause);
        }
        response
    }
}

/// The one place API failures are logged: a layer over every route, inside
/// the request's span (request id, tenant), once per failed call.
async fn log_failures(response: Response) -> Response {
    if let Some(cause) = response.extensions().get::<Cause>() {
        let status = response.status().as_u16();
        let (what, detail) = (cause.what, &*cause.detail);
        if cause.level == tracing::Level::ERROR {
            tracing::error!(status, error = detail, "{what}");
        } else {
            tracing::warn!(status, error = detail, "{what}");
        }
    }
    response
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::NotFound(what) => Self::not_found(what),
            ControlError::Conflict(message) => Self::new(StatusCode::CONFLICT, "conflict", message),
            ControlError::Forbidden(message) => {
                Self::new(StatusCode::FORBIDDEN, "forbidden", message)
            }
            ControlError::Invalid(message) => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
            }
            ControlError::Gone(message) => Self::new(StatusCode::GONE, "version_pruned", message),
            ControlError::TooLarge(message) => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
            }
            e @ ControlError::CompileTimeout(_) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "compile_timeout",
                e.to_string(),
            ),
            e @ ControlError::UploadBusy(crate::control::UploadBusy::Tenant) => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "deploy_in_progress",
                e.to_string(),
            )
            .retry_after(1),
            e @ ControlError::UploadBusy(crate::control::UploadBusy::Host) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "host_busy", e.to_string())
                    .retry_after(2)
            }
            ControlError::Component(LoadError::Internal(e)) => Self::internal().caused_by(
                tracing::Level::ERROR,
                "compiling a component failed inside the host",
                e.to_string(),
            ),
            ControlError::Component(e) => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_component", e.to_string())
            }
            ControlError::Storage(e) => e.into(),
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            // Handlers that know what they looked for say so (ControlError::NotFound).
            StorageError::NotFound => Self::new(StatusCode::NOT_FOUND, "not_found", "not found"),
            StorageError::Conflict(what) => Self::new(StatusCode::CONFLICT, "conflict", what),
            StorageError::Backend(e) => Self::internal().caused_by(
                tracing::Level::ERROR,
                "storage failed",
                format!("{e:?}"),
            ),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Storage(e) => e.into(),
            // One answer for missing, malformed, unknown and revoked keys.
            _ => Self::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid API key is required (Authorization: Bearer …)",
            ),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        match e {
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected Content-Type: application/json",
            ),
            JsonRejection::BytesRejection(_) => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "request body too large",
            ),
            other => Self::new(StatusCode::BAD_REQUEST, "invalid_json", other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text())
    }
}

impl From<PathRejection> for ApiError {
    /// The only rejection of this API's `String` path segments: one that is
    /// not UTF-8 after percent-decoding, and so names nothing.
    fn from(e: PathRejection) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", e.body_text())
    }
}

/// JSON body whose rejections use the API's error shape. Text with a NUL
/// character anywhere is refused (400) before any handler sees it: no backend
/// stores it the same way (PostgreSQL's text cannot hold it at all).
#[derive(Debug)]
pub struct ApiJson<T>(T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let Json(value) = Json::<serde_json::Value>::from_request(req, state).await?;
        if let Some(field) = nul_in(&value) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("{field} contains a NUL character, which no text field may hold"),
            ));
        }
        serde_json::from_value(value)
            .map(ApiJson)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", e.to_string()))
    }
}

/// The first place in `value` (a key or a string) holding a NUL, as a JSON path.
fn nul_in(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(text) if text.contains('\0') => Some("a text field".into()),
        serde_json::Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            nul_in(item).map(|inner| {
                format!(
                    "[{i}]{}",
                    inner.strip_prefix("a text field").unwrap_or(&inner)
                )
            })
        }),
        serde_json::Value::Object(fields) => fields.iter().find_map(|(key, item)| {
            if key.contains('\0') {
                return Some("a field name".into());
            }
            nul_in(item).map(|inner| {
                format!(
                    "{key:?}{}",
                    inner.strip_prefix("a text field").unwrap_or(&inner)
                )
            })
        }),
        _ => None,
    }
}

/// Query string whose rejections use the API's error shape.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(T);

/// Path segments whose rejections use the API's error shape.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(T);

/// The caller, from `Authorization: Bearer …`.
#[derive(Debug)]
pub struct Caller(Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, lodge: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or("\u{0}"));
        let principal = auth::authenticate(header, &lodge.admin, lodge.storage.as_ref()).await?;
        Ok(Self(principal))
    }
}

/// Finds tenant `id` (or slug) if the caller may see it; 404 otherwise.
async fn tenant_for(
    lodge: &ApiServices,
    caller: &Principal,
    id: &str,
) -> Result<TenantRecord, ApiError> {
    if id.contains('\0') {
        return Err(ApiError::not_found("tenant"));
    }
    // Missing and another organization's look the same.
    let record = match lodge.storage.get_tenant(id).await {
        Err(StorageError::NotFound) => return Err(ApiError::not_found("tenant")),
        found => found?,
    };
    let allowed = match caller {
        Principal::Admin => true,
        Principal::Org { org_id } => *org_id == record.org_id,
        Principal::Tenant { tenant_id, .. } => *tenant_id == record.id,
    };
    if allowed {
        Ok(record)
    } else {
        Err(ApiError::not_found("tenant"))
    }
}

/// `GET /metrics`: Prometheus text format, for the admin token only.
async fn metrics(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    headers: HeaderMap,
) -> Response {
    if caller != Principal::Admin {
        return ApiError::forbidden("metrics are for the operator's admin token").into_response();
    }
    render_metrics(&lodge, &headers)
}

/// OpenMetrics to a client that asks for it (`Accept: application/openmetrics-text`,
/// as Prometheus does), else the classic text format (0.0.4) that every
/// other reader (`promtool check metrics`, older scrapers, a plain `curl`) parses.
fn render_metrics(lodge: &ApiServices, headers: &HeaderMap) -> Response {
    let openmetrics = lodge.metrics.render();
    let wants_openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.contains("application/openmetrics-text"));
    if wants_openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            openmetrics,
        )
            .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            crate::metrics::classic_text(&openmetrics),
        )
            .into_response()
    }
}

/// The scrape port (`serve --metrics-listen`): `GET /metrics` without a token,
/// `/healthz`, and nothing else.
pub fn metrics_router(lodge: AppState) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(
                |State(lodge): State<AppState>, headers: HeaderMap| async move {
                    render_metrics(&lodge, &headers)
                },
            ),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(lodge)
}

/// The OpenAPI document.
#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "Lodge control plane", description = "Organizations, tenants, keys and deployments."),
    paths(create_org, list_orgs, spawn_tenant, list_tenants, tenant_status, tenant_logs, deploy_component,
        list_deployments, rollback, stop_tenant, start_tenant, update_env, rotate_key, delete_tenant, tenant_usage,
        org_usage, get_limits, set_limits, list_plans,
        get_wallet, fund_wallet, converge, converge_preset, list_tasks, converge_task, webhook_secret,
        rotate_webhook_secret, update_org, rotate_org_keys, revoke_org_keys, whoami),
    components(schemas(ErrorBody, crate::convergence::Preset, crate::convergence::Outcome, TaskView)),
    modifiers(&BearerAuth, &Links),
)]
pub struct ApiDoc;

/// An error answer (`{"error":{"code","message"}}`) in the OpenAPI document.
fn error_response(description: &str) -> utoipa::openapi::RefOr<utoipa::openapi::Response> {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
        .into()
}

/// The answers every call with a key may give besides its own (for `responses(…)`).
#[derive(Debug)]
pub struct Authenticated;

impl utoipa::IntoResponses for Authenticated {
    fn responses() -> BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::Response>> {
        BTreeMap::from([
            (
                "401".to_owned(),
                error_response("no key, or one that is unknown, rotated or revoked"),
            ),
            (
                "500".to_owned(),
                error_response(
                    "the host failed (its log has the cause under this response's x-request-id)",
                ),
            ),
        ])
    }
}

/// The answers of a call with a JSON body ([`ApiJson`]) to a body it cannot read.
#[derive(Debug)]
pub struct JsonBody;

impl utoipa::IntoResponses for JsonBody {
    fn responses() -> BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::Response>> {
        BTreeMap::from([
            (
                "400".to_owned(),
                error_response(
                    "the body is not JSON of the documented shape, or a value is refused",
                ),
            ),
            ("413".to_owned(), error_response("the body is too large")),
            (
                "415".to_owned(),
                error_response("the body is not sent as Content-Type: application/json"),
            ),
        ])
    }
}

/// OpenAPI links, so that a client can follow an answer to the calls it
/// enables: a new organization's id to every `/orgs/{id}…` and
/// `/org/{id}/usage` call, a new tenant's id to every `/tenant/{id}…` call, an
/// async convergence's task id to `GET /converge/{taskId}`, and a listed
/// task's (the first of the page: a link holds one value) there too. Each
/// link is named after the operation it leads to.
struct Links;

/// Which operation of a path answers with a link.
#[derive(Clone, Copy)]
enum Verb {
    Get,
    Post,
}

/// An answer (of `verb` on `path`, with `status`) holding what the operations
/// under `targets` take as parameters: `(name, runtime expression)` pairs.
struct LinkSource {
    path: &'static str,
    verb: Verb,
    operation_id: &'static str,
    status: &'static str,
    parameters: &'static [(&'static str, &'static str)],
    description: Option<&'static str>,
    targets: &'static [&'static str],
}

const LINK_SOURCES: [LinkSource; 5] = [
    LinkSource {
        path: "/api/v1/orgs",
        verb: Verb::Post,
        operation_id: "create_org",
        status: "201",
        parameters: &[("id", "$response.body#/org/id")],
        description: None,
        targets: &["/api/v1/orgs/{id}", "/api/v1/org/{id}/"],
    },
    LinkSource {
        path: "/api/v1/tenant/spawn",
        verb: Verb::Post,
        operation_id: "spawn_tenant",
        status: "201",
        parameters: &[("id", "$response.body#/tenant/id")],
        description: None,
        targets: &["/api/v1/tenant/{id}"],
    },
    LinkSource {
        path: "/api/v1/converge",
        verb: Verb::Post,
        operation_id: "converge",
        status: "202",
        parameters: &[("taskId", "$response.body#/taskId")],
        description: None,
        targets: &["/api/v1/converge/{taskId}"],
    },
    LinkSource {
        path: "/api/v1/{preset}",
        verb: Verb::Post,
        operation_id: "converge_preset",
        status: "202",
        parameters: &[("taskId", "$response.body#/taskId")],
        description: None,
        targets: &["/api/v1/converge/{taskId}"],
    },
    LinkSource {
        path: "/api/v1/converge",
        verb: Verb::Get,
        operation_id: "list_tasks",
        status: "200",
        parameters: &[
            ("taskId", "$response.body#/tasks/0/taskId"),
            ("tenant", "$request.query.tenant"),
        ],
        description: Some(
            "the first task of the page; every item's `taskId` (with the same `tenant`) leads there alike",
        ),
        targets: &["/api/v1/converge/{taskId}"],
    },
];

impl utoipa::Modify for Links {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::RefOr;
        use utoipa::openapi::link::Link;
        for source in &LINK_SOURCES {
            let targets: Vec<String> = openapi
                .paths
                .paths
                .iter()
                .filter(|(path, _)| source.targets.iter().any(|t| path.starts_with(t)))
                .flat_map(|(_, item)| {
                    [&item.get, &item.put, &item.post, &item.delete, &item.patch]
                        .into_iter()
                        .flatten()
                        .filter_map(|operation| operation.operation_id.clone())
                })
                .collect();
            let response = openapi
                .paths
                .paths
                .get_mut(source.path)
                .and_then(|item| match source.verb {
                    Verb::Get => item.get.as_mut(),
                    Verb::Post => item.post.as_mut(),
                })
                .filter(|operation| operation.operation_id.as_deref() == Some(source.operation_id))
                .and_then(|operation| operation.responses.responses.get_mut(source.status));
            let Some(RefOr::T(response)) = response else {
                continue;
            };
            for target in targets {
                let mut link = Link::builder().operation_id(target.clone());
                for (name, value) in source.parameters {
                    link = link.parameter(*name, *value);
                }
                if let Some(description) = source.description {
                    link = link.description(description);
                }
                response.links.insert(target, RefOr::T(link.build()));
            }
        }
    }
}

/// The OpenAPI document as `/api-docs/openapi.json` serves it. utoipa 5.5
/// writes a link's `operationId`, `operationRef` and `requestBody` in snake
/// case, which no OpenAPI tool reads: they are renamed here.
pub fn openapi_document() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    let responses = doc["paths"]
        .as_object_mut()
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(|item| item.as_object_mut())
        .flat_map(|item| item.values_mut())
        .filter_map(|operation| operation.get_mut("responses")?.as_object_mut())
        .flat_map(|responses| responses.values_mut());
    for response in responses {
        let links = response
            .get_mut("links")
            .and_then(|links| links.as_object_mut());
        for link in links.into_iter().flat_map(|links| links.values_mut()) {
            let Some(link) = link.as_object_mut() else {
                continue;
            };
            for (from, to) in [
                ("operation_id", "operationId"),
                ("operation_ref", "operationRef"),
                ("request_body", "requestBody"),
            ] {
                if let Some(value) = link.remove(from) {
                    link.insert(to.to_owned(), value);
                }
            }
        }
    }
    doc
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

const API_DOCS_PAGE: &str = include_str!("api_docs.html");

/// The host's own routes: `/api/v1/…`, `/api-docs`, `/healthz`, `/readyz`.
pub fn router(lodge: AppState) -> Router {
    let api = Router::new()
        .route("/orgs", get(list_orgs).post(create_org))
        .route("/orgs/{id}", axum::routing::patch(update_org))
        .route("/orgs/{id}/keys/rotate", post(rotate_org_keys))
        .route("/orgs/{id}/keys/revoke", post(revoke_org_keys))
        .route("/tenant", get(list_tenants))
        .route("/tenant/spawn", post(spawn_tenant))
        .route("/tenant/{id}", axum::routing::delete(delete_tenant))
        .route("/tenant/{id}/status", get(tenant_status))
        .route("/tenant/{id}/logs", get(tenant_logs))
        .route("/tenant/{id}/component", put(deploy_component))
        .route("/tenant/{id}/deployments", get(list_deployments))
        .route("/tenant/{id}/rollback", post(rollback))
        .route("/tenant/{id}/stop", post(stop_tenant))
        .route("/tenant/{id}/start", post(start_tenant))
        .route("/tenant/{id}/env", put(update_env))
        .route("/tenant/{id}/keys/rotate", post(rotate_key))
        .route("/tenant/{id}/usage", get(tenant_usage))
        .route("/tenant/{id}/limits", get(get_limits).patch(set_limits))
        .route("/org/{id}/usage", get(org_usage))
        .route("/plans", get(list_plans))
        .route("/whoami", get(whoami))
        .route("/tenant/{id}/wallet", get(get_wallet))
        .route("/tenant/{id}/wallet/fund", post(fund_wallet))
        .route("/tenant/{id}/webhook-secret", get(webhook_secret))
        .route(
            "/tenant/{id}/webhook-secret/rotate",
            post(rotate_webhook_secret),
        )
        .route("/converge", get(list_tasks).post(converge))
        .route("/converge/{task_id}", get(converge_task))
        .route("/design", post(converge_preset))
        .route("/review", post(converge_preset))
        .route("/decide", post(converge_preset))
        .route("/plan", post(converge_preset))
        .route("/analyze", post(converge_preset))
        .route("/generate", post(converge_preset))
        .fallback(|| async { ApiError::not_found("route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        });
    Router::new()
        .nest("/api/v1", api)
        .route(
            "/api-docs/openapi.json",
            get(|| async { Json(openapi_document()) }),
        )
        .route("/api-docs", get(|| async { Html(API_DOCS_PAGE) }))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route(
            "/readyz",
            get(|State(lodge): State<AppState>| async move {
                match lodge.storage.ping().await {
                    Ok(_) => (StatusCode::OK, "ready\n").into_response(),
                    Err(_) => ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not_ready",
                        "the database is unreachable",
                    )
                    .into_response(),
                }
            }),
        )
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "tenant_not_found",
                "no app is deployed at this address",
            )
        })
        .layer(axum::middleware::map_response(log_failures))
        .with_state(lodge)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_says_where_each_parameter_goes_and_links_the_answers() {
        let doc = openapi_document();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("path item") {
                for parameter in operation["parameters"].as_array().into_iter().flatten() {
                    let name = parameter["name"].as_str().expect("name");
                    let in_path = path.contains(&format!("{{{name}}}"));
                    assert_eq!(
                        parameter["in"] == "path",
                        in_path,
                        "{method} {path}: {name}"
                    );
                }
                let responses = operation["responses"].as_object().expect("responses");
                for status in ["401", "500"] {
                    assert!(responses.contains_key(status), "{method} {path}: {status}");
                }
            }
        }
        let spawned = &doc["paths"]["/api/v1/tenant/spawn"]["post"]["responses"]["201"];
        let deploy = &spawned["links"]["deploy_component"];
        assert_eq!(deploy["operationId"], "deploy_component");
        assert_eq!(deploy["parameters"]["id"], "$response.body#/tenant/id");
        let listed = &doc["paths"]["/api/v1/converge"]["get"]["responses"]["200"];
        let task = &listed["links"]["converge_task"];
        assert_eq!(task["operationId"], "converge_task");
        assert_eq!(
            task["parameters"]["taskId"],
            "$response.body#/tasks/0/taskId"
        );
        assert_eq!(task["parameters"]["tenant"], "$request.query.tenant");
        let schema = |path: &str| {
            doc["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
                ["$ref"]
                .clone()
        };
        assert_eq!(schema("/api/v1/orgs"), "#/components/schemas/OrgList");
        assert_eq!(schema("/api/v1/whoami"), "#/components/schemas/Whoami");
        assert_eq!(schema("/api/v1/converge"), "#/components/schemas/TaskList");
        let schemas = &doc["components"]["schemas"];
        assert!(schemas["Usage"]["properties"]["requests"].is_object());
        assert!(schemas["TaskItem"]["properties"]["tokens"].is_object());
        assert!(
            schemas["TaskItem"]["properties"]["outcome"].is_null(),
            "no outcome in a list"
        );
        assert!(schemas["OrgListed"]["properties"]["tenants"].is_object());
        assert!(schemas["TokenUsage"]["properties"]["promptTokens"].is_object());
    }
}
