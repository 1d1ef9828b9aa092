//! The control plane's REST API under `/api/v1`, its OpenAPI document, and the
//! host's own endpoints (`/healthz`, `/readyz`, `/api-docs`).
//!
//! Every failure answers `{"error":{"code","message"}}` — bad JSON, unknown
//! fields, wrong methods and unknown routes included. Tenants are found by id or
//! slug; a tenant the caller may not see is reported exactly like one that does
//! not exist.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
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
use crate::control::ControlError;
use crate::instance::LoadError;
use crate::logs::LogLine;
use crate::plans::LimitsPatch;
use crate::registry::Tenant;
use crate::server::Lodge;
use crate::storage::{Deployment, Org, StorageError, TenantRecord, TenantStatus, Usage};

/// The API's state.
type AppState = Arc<Lodge>;

/// The error body every failure answers with.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// A machine-readable code and a human message.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable code, e.g. `not_found`.
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
}

/// A failure of an API call.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
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
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
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
        response
    }
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
            ControlError::Component(LoadError::Internal(e)) => {
                tracing::error!(error = %e, "compiling a component failed inside the host");
                Self::internal()
            }
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
            StorageError::NotFound => Self::not_found("tenant"),
            StorageError::Conflict(what) => Self::new(StatusCode::CONFLICT, "conflict", what),
            StorageError::Backend(e) => {
                tracing::error!(error = ?e, "storage failed");
                Self::internal()
            }
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
async fn tenant_for(lodge: &Lodge, caller: &Principal, id: &str) -> Result<TenantRecord, ApiError> {
    if id.contains('\0') {
        return Err(ApiError::not_found("tenant"));
    }
    let record = lodge.storage.get_tenant(id).await?;
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

/// A tenant as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantView {
    /// `ten_…`
    pub id: String,
    /// Owning organization.
    pub org_id: String,
    /// Display name.
    pub name: String,
    /// Routing name.
    pub slug: String,
    /// Life-cycle status.
    pub status: TenantStatus,
    /// Plan.
    pub plan: String,
    /// Where end users reach it.
    pub url: String,
    /// Version serving requests.
    pub active_version: Option<i64>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// The tenant key; only in the answer to `spawn`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
}

impl TenantView {
    fn new(lodge: &Lodge, record: TenantRecord) -> Self {
        Self {
            url: lodge.tenant_url(&record.slug),
            id: record.id,
            org_id: record.org_id,
            name: record.name,
            slug: record.slug,
            status: record.status,
            plan: record.plan,
            active_version: record.active_version,
            created_at: record.created_at,
            updated_at: record.updated_at,
            api_key: None,
        }
    }
}

/// `POST /orgs` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrg {
    /// Display name.
    pub name: String,
    /// Plan (default `default`).
    pub plan: Option<String>,
}

/// `POST /orgs` answer.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrgCreated {
    /// The organization.
    pub org: Org,
    /// Its key, shown only here.
    pub api_key: String,
}

#[utoipa::path(post, path = "/api/v1/orgs", tag = "orgs", request_body = CreateOrg,
    security(("bearer" = [])),
    responses((status = 201, body = OrgCreated), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn create_org(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    ApiJson(body): ApiJson<CreateOrg>,
) -> Result<(StatusCode, Json<OrgCreated>), ApiError> {
    if caller != Principal::Admin {
        return Err(ApiError::forbidden(
            "only the operator's admin token may create organizations",
        ));
    }
    let (org, api_key) = lodge.create_org(&body.name, body.plan).await?;
    Ok((StatusCode::CREATED, Json(OrgCreated { org, api_key })))
}

/// `POST /tenant/spawn` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SpawnTenant {
    /// Display name; the slug is derived from it.
    pub name: String,
    /// Plan (default: the organization's).
    pub plan: Option<String>,
    /// Organization, required with the admin token.
    pub org_id: Option<String>,
}

/// Wraps a tenant.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantEnvelope {
    /// The tenant.
    pub tenant: TenantView,
}

#[utoipa::path(post, path = "/api/v1/tenant/spawn", tag = "tenants", request_body = SpawnTenant,
    security(("bearer" = [])),
    responses((status = 201, body = TenantEnvelope), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn spawn_tenant(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    ApiJson(body): ApiJson<SpawnTenant>,
) -> Result<(StatusCode, Json<TenantEnvelope>), ApiError> {
    let org_id = match (&caller, body.org_id) {
        (Principal::Admin, Some(org_id)) => org_id,
        (Principal::Admin, None) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "orgId is required with the admin token",
            ));
        }
        (Principal::Org { org_id }, None) => org_id.clone(),
        (Principal::Org { org_id }, Some(asked)) if asked == *org_id => asked,
        (Principal::Org { .. }, Some(_)) => {
            return Err(ApiError::forbidden(
                "an organization key creates tenants in its own organization",
            ));
        }
        (Principal::Tenant { .. }, _) => {
            return Err(ApiError::forbidden("a tenant key cannot create tenants"));
        }
    };
    let by_operator = caller == Principal::Admin;
    let spawned = lodge
        .spawn_tenant(&org_id, &body.name, body.plan, by_operator)
        .await?;
    let mut view = TenantView::new(&lodge, spawned.tenant);
    view.api_key = Some(spawned.api_key);
    Ok((StatusCode::CREATED, Json(TenantEnvelope { tenant: view })))
}

/// Pagination of `GET /tenant`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct Page {
    /// At most this many (1-500, default 50).
    pub limit: Option<i64>,
    /// Skip this many.
    pub offset: Option<i64>,
}

/// A page of tenants.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantList {
    /// The tenants, oldest first.
    pub tenants: Vec<TenantView>,
    /// Offset of the next page, if there is one.
    pub next_offset: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/tenant", tag = "tenants", params(Page),
    security(("bearer" = [])),
    responses((status = 200, body = TenantList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list_tenants(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<TenantList>, ApiError> {
    let org = match &caller {
        Principal::Admin => None,
        Principal::Org { org_id } => Some(org_id.as_str()),
        Principal::Tenant { .. } => {
            return Err(ApiError::forbidden("a tenant key sees only its own tenant"));
        }
    };
    let limit = page.limit.unwrap_or(50).clamp(1, 500);
    let offset = page.offset.unwrap_or(0).max(0);
    let records = lodge.storage.list_tenants(org, limit + 1, offset).await?;
    let more = records.len() as i64 > limit;
    let tenants = records
        .into_iter()
        .take(limit as usize)
        .map(|r| TenantView::new(&lodge, r))
        .collect();
    Ok(Json(TenantList {
        tenants,
        next_offset: more.then_some(offset + limit),
    }))
}

/// A tenant's limits.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LimitsView {
    /// Fuel per request.
    pub fuel: u64,
    /// Linear memory per instance, bytes.
    pub memory_bytes: usize,
    /// Wall-clock timeout per request, ms.
    pub timeout_ms: u64,
    /// Concurrent requests.
    pub max_concurrency: u32,
    /// Request body cap, bytes.
    pub max_request_body: u64,
}

/// Request counts since the host started.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    /// Requests routed to the tenant.
    pub requests: u64,
    /// Of those, answered with a Lodge error.
    pub failures: u64,
    /// Running now.
    pub in_flight: u64,
}

/// `GET /tenant/{id}/status` answer.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantStatusView {
    /// The tenant.
    pub tenant: TenantView,
    /// Version serving requests.
    pub active_version: Option<i64>,
    /// SHA-256 of the active component.
    pub active_sha256: Option<String>,
    /// Limits in force.
    pub limits: LimitsView,
    /// Counts.
    pub counts: Counts,
    /// The last failure: a load error, or the code of the last failed request.
    pub last_error: Option<String>,
    /// Names of the environment variables set (never their values).
    pub env: Vec<String>,
}

#[utoipa::path(get, path = "/api/v1/tenant/{id}/status", tag = "tenants",
    params(("id" = String, Path, description = "tenant id or slug")), security(("bearer" = [])),
    responses((status = 200, body = TenantStatusView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn tenant_status(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<TenantStatusView>, ApiError> {
    let record = tenant_for(&lodge, &caller, &id).await?;
    let live = lodge.live(&record).await?;
    let state = live.state();
    let active_sha256 = state.active.as_ref().map(|a| a.digest.to_string());
    let limits = live.limits();
    let view = TenantStatusView {
        active_version: state.active.as_ref().map(|a| a.version),
        active_sha256,
        limits: LimitsView {
            fuel: limits.fuel,
            memory_bytes: limits.memory_bytes,
            timeout_ms: limits.timeout.as_millis() as u64,
            max_concurrency: limits.max_concurrency,
            max_request_body: limits.max_request_body,
        },
        counts: Counts {
            requests: live.counters.total_requests.load(Ordering::Relaxed),
            failures: live.counters.total_failures.load(Ordering::Relaxed),
            in_flight: live.in_flight(),
        },
        last_error: record
            .last_error
            .clone()
            .or_else(|| live.counters.last_error()),
        env: state.env.iter().map(|(name, _)| name.clone()).collect(),
        tenant: TenantView::new(&lodge, record),
    };
    Ok(Json(view))
}

/// `GET /tenant/{id}/logs` parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    /// Only lines with `seq` above this.
    pub since: Option<u64>,
    /// At most this many of the newest lines (default 100, max 1000).
    pub limit: Option<usize>,
    /// Keep the connection open and stream new lines as server-sent events.
    pub follow: Option<bool>,
}

/// Log lines.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogPage {
    /// Oldest first.
    pub lines: Vec<LogLine>,
}

#[utoipa::path(get, path = "/api/v1/tenant/{id}/logs", tag = "tenants",
    params(("id" = String, Path, description = "tenant id or slug"), LogQuery), security(("bearer" = [])),
    responses((status = 200, body = LogPage, description = "JSON, or `text/event-stream` of `log` events with `follow=true`"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn tenant_logs(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<LogQuery>,
) -> Result<Response, ApiError> {
    let record = tenant_for(&lodge, &caller, &id).await?;
    let live = lodge.live(&record).await?;
    let since = query.since.unwrap_or(0);
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    if !query.follow.unwrap_or(false) {
        let lines = live.logs.since(since, limit);
        return Ok(Json(LogPage { lines }).into_response());
    }
    let watch = Watch {
        lodge: lodge.clone(),
        authorization: headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        tenant: live.clone(),
    };
    Ok(Sse::new(follow(live, since, limit, watch))
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// What keeps a followed log stream open: the key it was opened with still
/// valid, and the tenant still running. Checked every second.
struct Watch {
    lodge: Arc<Lodge>,
    authorization: String,
    tenant: Arc<Tenant>,
}

impl Watch {
    /// Why the stream must end now, if it must.
    async fn ended(&self) -> Option<&'static str> {
        let lodge = &self.lodge;
        let valid = auth::authenticate(
            Some(&self.authorization),
            &lodge.admin,
            lodge.storage.as_ref(),
        )
        .await;
        match valid {
            Err(AuthError::Storage(_)) => {} // the database is away: keep streaming
            Err(_) => return Some("the key this stream was opened with was rotated or revoked"),
            Ok(_) => {}
        }
        let current = lodge.registry.get(&self.tenant.slug);
        if current.is_none_or(|t| t.id != self.tenant.id) {
            return Some("the tenant was deleted");
        }
        match self.tenant.state().status {
            TenantStatus::Stopped => Some("the tenant was stopped"),
            TenantStatus::Destroyed => Some("the tenant was deleted"),
            _ => None,
        }
    }
}

/// The backlog after `since`, then every new line, as `log` events with `id: seq`;
/// an `end` event (`{"reason": …}`) closes the stream within a second of
/// `watch` saying so.
fn follow(
    tenant: Arc<Tenant>,
    since: u64,
    limit: usize,
    watch: Watch,
) -> impl Stream<Item = Result<Event, Infallible>> {
    enum Item {
        Line(LogLine),
        End(&'static str),
    }
    // Subscribe before reading the backlog so no line falls between the two.
    let receiver = tenant.logs.subscribe();
    let backlog = tenant.logs.since(since, limit);
    let last = backlog.last().map_or(since, |l| l.seq);
    let backlog = futures::stream::iter(backlog.into_iter().map(Item::Line));
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = Some((receiver, last, tick, watch));
    let live = futures::stream::unfold(state, |state| async move {
        let (mut receiver, mut last, mut tick, watch) = state?;
        loop {
            tokio::select! {
                received = receiver.recv() => match received {
                    Ok(line) if line.seq <= last => continue,
                    Ok(line) => {
                        last = line.seq;
                        return Some((Item::Line(line), Some((receiver, last, tick, watch))));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                },
                _ = tick.tick() => if let Some(reason) = watch.ended().await {
                    return Some((Item::End(reason), None));
                },
            }
        }
    });
    futures::StreamExt::map(futures::StreamExt::chain(backlog, live), |item| {
        Ok(match item {
            Item::Line(line) => {
                let event = Event::default().event("log").id(line.seq.to_string());
                event
                    .json_data(&line)
                    .unwrap_or_else(|_| Event::default().comment("unserializable line"))
            }
            Item::End(reason) => Event::default()
                .event("end")
                .json_data(serde_json::json!({ "reason": reason }))
                .unwrap_or_else(|_| Event::default().event("end")),
        })
    })
}

/// `PUT /tenant/{id}/component` answer.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentCreated {
    /// The new active version.
    pub deployment: DeploymentView,
}

/// A deployment as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentView {
    /// Version number.
    pub version: i64,
    /// SHA-256 of the component.
    pub sha256: String,
    /// Bytes.
    pub size: i64,
    /// Validation and compilation time at upload, ms.
    pub compile_ms: i64,
    /// RFC 3339 upload time.
    pub created_at: String,
    /// When it became active (now, for a deploy or rollback).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activated_at: Option<String>,
    /// Whether it serves requests now.
    pub active: bool,
}

impl DeploymentView {
    fn new(d: Deployment, active: bool, activated_now: bool) -> Self {
        Self {
            activated_at: activated_now.then(crate::storage::now_rfc3339),
            version: d.version,
            sha256: d.sha256,
            size: d.size,
            compile_ms: d.compile_ms,
            created_at: d.created_at,
            active,
        }
    }
}

#[utoipa::path(put, path = "/api/v1/tenant/{id}/component", tag = "deployments",
    params(("id" = String, Path, description = "tenant id or slug")), security(("bearer" = [])),
    request_body(content = Vec<u8>, content_type = "application/wasm", description = "the component"),
    responses((status = 201, body = DeploymentCreated), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
async fn deploy_component(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    request: Request,
) -> Result<(StatusCode, Json<DeploymentCreated>), ApiError> {
    let record = tenant_for(&lodge, &caller, &id).await?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_ascii_lowercase());
    if let Some(ct) =
        content_type.filter(|ct| ct != "application/wasm" && ct != "application/octet-stream")
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("expected Content-Type: application/wasm, got {ct}"),
        ));
    }
    let max = lodge.config.max_component_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("components are limited to {max} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(too_large());
    }
    // Taken before the body is read: one upload per tenant, a few per host.
    let slot = lodge
        .uploads
        .try_start(&record.id)
        .map_err(|busy| ApiError::from(ControlError::UploadBusy(busy)))?;
    let body = http_body_util::Limited::new(request.into_body(), max)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_large()
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "the upload was interrupted",
                )
            }
        })?
        .to_bytes();
    if body.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_component",
            "the body is empty: send the .wasm file as the request body",
        ));
    }
    let deployment = lodge.deploy(&record, body, Some(slot)).await?;
    Ok((
        StatusCode::CREATED,
        Json(DeploymentCreated {
            deployment: DeploymentView::new(deployment, true, true),
        }),
    ))
}

/// `GET /tenant/{id}/deployments` answer.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentList {
    /// Version serving requests.
    pub active_version: Option<i64>,
    /// Newest first.
    pub deployments: Vec<DeploymentView>,
}

#[utoipa::path(get, path = "/api/v1/tenant/{id}/deployments", tag = "deployments",
    params(("id" = String, Path, description = "tenant id or slug")), security(("bearer" = [])),
    responses((status = 200, body = DeploymentList), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_deployments(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<DeploymentList>, ApiError> {
    let record = tenant_for(&lodge, &caller, &id).await?;
    let deployments = lodge.storage.list_deployments(&record.id).await?;
    Ok(Json(DeploymentList {
        active_version: record.active_version,
        deployments: deployments
            .into_iter()
            .map(|d| {
                let active = Some(d.version) == record.active_version;
                DeploymentView::new(d, active, false)
            })
            .collect(),
    }))
}

/// `POST /tenant/{id}/rollback` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rollback {
    /// The version to make active again.
    pub version: i64,
}

#[utoipa::path(post, path = "/api/v1/tenant/{id}/rollback", tag = "deployments", request_body = Rollback,
    params(("id" = String, Path, description = "tenant id or slug")), security(("bearer" = [])),
    responses((status = 200, body = DeploymentCreated), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 410, body = ErrorBody)))]
async fn rollback(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Rollback>,
) -> Result<Json<DeploymentCreated>, ApiError> {
    let record = tenant_for(&lodge, &caller, &id).await?;
    let deployment = lodge.rollback(&record, body.version).await?;
    Ok(Json(DeploymentCreated {
        deployment: DeploymentView::new(deployment, true, true),
    }))
}

#[utoipa::path(post, path = "/api/v1/tenant/{id}/stop", tag = "tenants",
    params(("id" = String, Path, description = "tenant id or slug")), security(("bearer" = [])),
    responses((status = 200, body = TenantEnvelope), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn stop_tenant(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<TenantEnvelope>, ApiError> {
    set_running(&lodge, &caller, &id, false).await
}

#[utoipa::path(post, path = "/api/v1/tenant/{id}/start", tag = "tenants",
    params(("id" = String, Path, description = "tenant id or slug")), security(("bearer" = [])),
    responses((status = 200, body = TenantEnvelope), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn start_tenant(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<TenantEnvelope>, ApiError> {
    set_running(&lodge, &caller, &id, true).await
}

async fn set_running(
    lodge: &Arc<Lodge>,
    caller: &Principal,
    id: &str,
    running: bool,
) -> Result<Json<TenantEnvelope>, ApiError> {
    let record = tenant_for(lodge, caller, id).await?;
    lodge.set_running(&record, running).await?;
    let record = lodge.storage.get_tenant(&record.id).await?;
    Ok(Json(TenantEnvelope {
        tenant: TenantView::new(lodge, record),
    }))
}

/// `PUT /tenant/{id}/env` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvUpdate {
    /// Variables to set; `null` removes one. Others stay as they are.
    pub vars: BTreeMap<String, Option<String>>,
}

/// The names of a tenant's variables (values are never returned).
#[derive(Debug, Serialize, ToSchema)]
pub struct EnvNames {
    /// Sorted names.
    pub names: Vec<String>,
}

#[utoipa::path(put, path = "/api/v1/tenant/{id}/env", tag = "tenants", request_body = EnvUpdate,
    params(("id" = String, Path, description = "tenant id or slug")), security(("bearer" = [])),
    responses((status = 200, body = EnvNames), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn update_env(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<EnvUpdate>,
) -> Result<Json<EnvNames>, ApiError> {
    let record = tenant_for(&lodge, &caller, &id).await?;
    let names = lodge
        .update_env(&record, body.vars.into_iter().collect())
        .await?;
    Ok(Json(EnvNames { names }))
}

/// A new key.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyRotated {
    /// The new key, shown only here; the old ones no longer work.
    pub api_key: String,
}

#[utoipa::path(post, path = "/api/v1/tenant/{id}/keys/rotate", tag = "tenants",
    params(("id" = String, Path, description = "tenant id or slug")), security(("bearer" = [])),
    responses((status = 200, body = KeyRotated), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn rotate_key(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<KeyRotated>, ApiError> {
    let record = tenant_for(&lodge, &caller, &id).await?;
    let api_key = lodge.rotate_key(&record).await?;
    Ok(Json(KeyRotated { api_key }))
}

#[utoipa::path(delete, path = "/api/v1/tenant/{id}", tag = "tenants",
    params(("id" = String, Path, description = "tenant id or slug")), security(("bearer" = [])),
    responses((status = 200, body = TenantEnvelope), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_tenant(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<TenantEnvelope>, ApiError> {
    let mut record = tenant_for(&lodge, &caller, &id).await?;
    lodge.delete_tenant(&record).await?;
    record.status = TenantStatus::Destroyed;
    Ok(Json(TenantEnvelope {
        tenant: TenantView::new(&lodge, record),
    }))
}

/// How usage is bucketed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    /// One bucket per UTC hour.
    Hour,
    /// One bucket per UTC day.
    #[default]
    Day,
}

/// `GET …/usage` parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// First day or hour included: `YYYY-MM-DD` or `YYYY-MM-DDTHH` (UTC). Default: 30 days ago.
    pub from: Option<String>,
    /// Last day or hour included, same forms. Default: now.
    pub to: Option<String>,
    /// `hour` or `day` (default).
    pub granularity: Option<Granularity>,
}

/// The period a usage query covers, as stored hour keys.
fn usage_range(query: &UsageQuery) -> Result<(String, String), ApiError> {
    fn hour_key(value: &str, end: bool) -> Result<String, ApiError> {
        let bad = || {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("{value:?} is not a date (YYYY-MM-DD) or hour (YYYY-MM-DDTHH) in UTC"),
            )
        };
        let (date, hour) = match value.split_once('T') {
            Some((date, hour)) => (date, Some(hour)),
            None => (value, None),
        };
        humantime::parse_rfc3339(&format!("{date}T00:00:00Z")).map_err(|_| bad())?;
        let hour = match hour {
            Some(h) if h.len() == 2 && h.parse::<u8>().is_ok_and(|h| h < 24) => h.to_owned(),
            Some(_) => return Err(bad()),
            None if end => "23".to_owned(),
            None => "00".to_owned(),
        };
        Ok(format!("{date}T{hour}"))
    }
    let to = match &query.to {
        Some(to) => hour_key(to, true)?,
        None => crate::storage::this_hour(),
    };
    let from = match &query.from {
        Some(from) => hour_key(from, false)?,
        None => {
            let start = std::time::SystemTime::now() - std::time::Duration::from_secs(30 * 86_400);
            format!("{}T00", &humantime::format_rfc3339(start).to_string()[..10])
        }
    };
    if from > to {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "`from` is after `to`",
        ));
    }
    Ok((from, to))
}

/// One period of usage.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageBucket {
    /// Start of the period, RFC 3339 UTC.
    pub start: String,
    /// What was used.
    #[serde(flatten)]
    pub usage: Usage,
}

/// One line of a cost estimate.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CostItem {
    /// What is charged.
    pub item: &'static str,
    /// How much was used, in `unit`.
    pub quantity: f64,
    /// The unit priced.
    pub unit: &'static str,
    /// Price per unit.
    pub unit_price: f64,
    /// `quantity × unit_price`.
    pub amount: f64,
}

/// An estimate of what usage costs under the host's price table.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CostEstimate {
    /// Currency of every amount.
    pub currency: String,
    /// Per item.
    pub items: Vec<CostItem>,
    /// Sum of the items.
    pub total: f64,
}

/// Prices `usage` with `prices`.
pub fn estimate(usage: &Usage, prices: &crate::plans::PriceTable) -> CostEstimate {
    let line = |item, quantity: f64, unit, unit_price: f64| CostItem {
        item,
        quantity,
        unit,
        unit_price,
        amount: quantity * unit_price,
    };
    let items = vec![
        line(
            "requests",
            usage.requests as f64 / 1e6,
            "million requests",
            prices.per_million_requests,
        ),
        line(
            "compute",
            usage.fuel as f64 / 1e9,
            "billion fuel",
            prices.per_billion_fuel,
        ),
        line(
            "wall time",
            usage.wall_ms as f64 / 3.6e6,
            "hours",
            prices.per_wall_hour,
        ),
        line(
            "transfer",
            (usage.bytes_in + usage.bytes_out) as f64 / (1u64 << 30) as f64,
            "GiB",
            prices.per_gib_transferred,
        ),
        line(
            "outbound HTTP",
            usage.outbound_requests as f64 / 1e3,
            "thousand requests",
            prices.per_thousand_outbound,
        ),
        line(
            "convergence",
            usage.tokens as f64 / 1e6,
            "million tokens",
            prices.per_million_tokens,
        ),
        line(
            "key-value",
            usage.kv_ops as f64 / 1e6,
            "million operations",
            prices.per_million_kv_ops,
        ),
        line(
            "wallet",
            usage.wallet_txs as f64 / 1e3,
            "thousand transfers",
            prices.per_thousand_wallet_txs,
        ),
    ];
    CostEstimate {
        currency: prices.currency.clone(),
        total: items.iter().map(|i| i.amount).sum(),
        items,
    }
}

/// A tenant's usage over a period.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageView {
    /// First hour included, `YYYY-MM-DDTHH` UTC.
    pub from: String,
    /// Last hour included.
    pub to: String,
    /// `hour` or `day`.
    pub granularity: Granularity,
    /// Periods with any usage, oldest first.
    pub buckets: Vec<UsageBucket>,
    /// The whole period.
    pub total: Usage,
    /// What the whole period costs under the host's price table.
    pub cost: CostEstimate,
}

#[utoipa::path(get, path = "/api/v1/tenant/{id}/usage", tag = "usage",
    params(("id" = String, Path, description = "tenant id or slug"), UsageQuery), security(("bearer" = [])),
    responses((status = 200, body = UsageView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn tenant_usage(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<UsageQuery>,
) -> Result<Json<UsageView>, ApiError> {
    let record = tenant_for(&lodge, &caller, &id).await?;
    let (from, to) = usage_range(&query)?;
    if let Ok(live) = lodge.live(&record).await {
        lodge.flush_usage_of(&live).await;
    }
    let granularity = query.granularity.unwrap_or_default();
    let hours = lodge.storage.usage(&record.id, &from, &to).await?;
    let mut buckets: Vec<UsageBucket> = Vec::new();
    let mut total = Usage::default();
    for (hour, usage) in hours {
        total.add(&usage);
        let start = match granularity {
            Granularity::Hour => format!("{hour}:00:00Z"),
            Granularity::Day => format!("{}T00:00:00Z", &hour[..10.min(hour.len())]),
        };
        match buckets.last_mut() {
            Some(last) if last.start == start => last.usage.add(&usage),
            _ => buckets.push(UsageBucket { start, usage }),
        }
    }
    let cost = estimate(&total, &lodge.plans().prices);
    Ok(Json(UsageView {
        from,
        to,
        granularity,
        buckets,
        total,
        cost,
    }))
}

/// One tenant's line in an organization's usage.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrgTenantUsage {
    /// Tenant id.
    pub tenant_id: String,
    /// Its slug.
    pub slug: String,
    /// What it used in the period.
    pub usage: Usage,
    /// What that costs.
    pub cost: f64,
}

/// An organization's usage over a period.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrgUsageView {
    /// Organization id.
    pub org_id: String,
    /// First hour included.
    pub from: String,
    /// Last hour included.
    pub to: String,
    /// Every tenant of the organization, deleted ones included.
    pub tenants: Vec<OrgTenantUsage>,
    /// The organization's total.
    pub total: Usage,
    /// What the total costs.
    pub cost: CostEstimate,
}

#[utoipa::path(get, path = "/api/v1/org/{id}/usage", tag = "usage",
    params(("id" = String, Path, description = "organization id"), UsageQuery), security(("bearer" = [])),
    responses((status = 200, body = OrgUsageView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn org_usage(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<UsageQuery>,
) -> Result<Json<OrgUsageView>, ApiError> {
    match &caller {
        Principal::Admin => {}
        Principal::Org { org_id } if *org_id == id => {}
        Principal::Org { .. } => return Err(ApiError::not_found("organization")),
        Principal::Tenant { .. } => {
            return Err(ApiError::forbidden(
                "a tenant key cannot read its organization's usage; use an organization key",
            ));
        }
    }
    lodge.storage.get_org(&id).await.map_err(|e| match e {
        StorageError::NotFound => ApiError::not_found("organization"),
        other => other.into(),
    })?;
    let (from, to) = usage_range(&query)?;
    lodge.flush_usage().await;
    let prices = lodge.plans().prices.clone();
    let mut total = Usage::default();
    let tenants = lodge
        .storage
        .org_usage(&id, &from, &to)
        .await?
        .into_iter()
        .map(|(tenant_id, slug, usage)| {
            total.add(&usage);
            OrgTenantUsage {
                cost: estimate(&usage, &prices).total,
                tenant_id,
                slug,
                usage,
            }
        })
        .collect();
    Ok(Json(OrgUsageView {
        org_id: id,
        from,
        to,
        tenants,
        cost: estimate(&total, &prices),
        total,
    }))
}

/// A tenant's plan, its own overrides, and the limits in force.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LimitsEnvelope {
    /// Plan name.
    pub plan: String,
    /// The tenant's own values over the plan's.
    pub overrides: LimitsPatch,
    /// The limits new requests run under.
    pub effective: LimitsPatch,
}

fn limits_envelope(tenant: &Tenant) -> LimitsEnvelope {
    let (plan, overrides) = tenant.plan();
    LimitsEnvelope {
        plan,
        overrides,
        effective: LimitsPatch::full(&tenant.limits()),
    }
}

#[utoipa::path(get, path = "/api/v1/tenant/{id}/limits", tag = "plans",
    params(("id" = String, Path, description = "tenant id or slug")), security(("bearer" = [])),
    responses((status = 200, body = LimitsEnvelope), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_limits(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<LimitsEnvelope>, ApiError> {
    let record = tenant_for(&lodge, &caller, &id).await?;
    let live = lodge.live(&record).await?;
    Ok(Json(limits_envelope(&live)))
}

/// `PATCH /tenant/{id}/limits` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetLimits {
    /// Move the tenant to this plan.
    pub plan: Option<String>,
    /// Replace the tenant's own overrides (`{}` clears them).
    pub overrides: Option<LimitsPatch>,
}

#[utoipa::path(patch, path = "/api/v1/tenant/{id}/limits", tag = "plans", request_body = SetLimits,
    params(("id" = String, Path, description = "tenant id or slug")), security(("bearer" = [])),
    responses((status = 200, body = LimitsEnvelope), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn set_limits(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<SetLimits>,
) -> Result<Json<LimitsEnvelope>, ApiError> {
    let record = tenant_for(&lodge, &caller, &id).await?;
    if caller != Principal::Admin {
        return Err(ApiError::forbidden(
            "only the operator's admin token may change plans and limits",
        ));
    }
    lodge
        .set_tenant_limits(&record, body.plan, body.overrides)
        .await?;
    let live = lodge.live(&record).await?;
    Ok(Json(limits_envelope(&live)))
}

/// The plans this host offers.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlansView {
    /// Plan name → its limits.
    pub plans: BTreeMap<String, LimitsPatch>,
    /// The price table of cost estimates.
    pub prices: crate::plans::PriceTable,
}

#[utoipa::path(get, path = "/api/v1/plans", tag = "plans", security(("bearer" = [])),
    responses((status = 200, body = PlansView), (status = 401, body = ErrorBody)))]
async fn list_plans(State(lodge): State<AppState>, Caller(_caller): Caller) -> Json<PlansView> {
    let book = lodge.plans();
    Json(PlansView {
        plans: book
            .iter()
            .map(|(name, limits)| (name.clone(), LimitsPatch::full(limits)))
            .collect(),
        prices: book.prices.clone(),
    })
}

/// `GET /metrics`: Prometheus text format, for the admin token only.
async fn metrics(State(lodge): State<AppState>, Caller(caller): Caller) -> Response {
    if caller != Principal::Admin {
        return ApiError::forbidden("metrics are for the operator's admin token").into_response();
    }
    render_metrics(&lodge)
}

fn render_metrics(lodge: &Lodge) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        lodge.metrics.render(),
    )
        .into_response()
}

/// The scrape port (`serve --metrics-listen`): `GET /metrics` without a token,
/// `/healthz`, and nothing else.
pub fn metrics_router(lodge: Arc<Lodge>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(lodge): State<AppState>| async move { render_metrics(&lodge) }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(lodge)
}

/// A tenant's wallet as its owner sees it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WalletView {
    /// `lodge1…`
    pub address: String,
    /// Balance in the smallest unit.
    pub balance: i64,
    /// The newest 20 entries.
    pub history: Vec<crate::storage::LedgerEntry>,
}

async fn wallet_view(lodge: &Lodge, record: &TenantRecord) -> Result<WalletView, ApiError> {
    let wallet = crate::wallet::ensure(lodge.storage.as_ref(), &lodge.master, &record.id).await?;
    Ok(WalletView {
        balance: lodge.storage.ledger_balance(&wallet.address).await?,
        history: lodge
            .storage
            .ledger_history(&wallet.address, None, 20)
            .await?,
        address: wallet.address,
    })
}

#[utoipa::path(get, path = "/api/v1/tenant/{id}/wallet", tag = "wallet",
    params(("id" = String, Path, description = "tenant id or slug")), security(("bearer" = [])),
    responses((status = 200, body = WalletView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_wallet(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<WalletView>, ApiError> {
    let record = tenant_for(&lodge, &caller, &id).await?;
    Ok(Json(wallet_view(&lodge, &record).await?))
}

/// `POST /tenant/{id}/wallet/fund` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Fund {
    /// Amount to mint into the wallet, positive.
    pub amount: i64,
    /// Memo recorded with the funding.
    pub memo: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/tenant/{id}/wallet/fund", tag = "wallet", request_body = Fund,
    params(("id" = String, Path, description = "tenant id or slug")), security(("bearer" = [])),
    responses((status = 200, body = WalletView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn fund_wallet(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Fund>,
) -> Result<Json<WalletView>, ApiError> {
    let record = tenant_for(&lodge, &caller, &id).await?;
    if caller != Principal::Admin {
        return Err(ApiError::forbidden(
            "only the operator's admin token may fund wallets",
        ));
    }
    if body.amount <= 0 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "amount must be positive",
        ));
    }
    let wallet = crate::wallet::ensure(lodge.storage.as_ref(), &lodge.master, &record.id).await?;
    lodge
        .storage
        .ledger_fund(
            &wallet.address,
            body.amount,
            body.memo.as_deref().unwrap_or("funding"),
        )
        .await
        .map_err(|e| match e {
            crate::storage::LedgerError::Storage(e) => ApiError::from(e),
            other => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                other.to_string(),
            ),
        })?;
    Ok(Json(wallet_view(&lodge, &record).await?))
}

/// `POST /converge` (and the presets) body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConvergeBody {
    /// The question or task.
    pub prompt: String,
    /// Role of agent A (default `Proposer`; presets set their own).
    pub agent_a_role: Option<String>,
    /// Role of agent B (default `Critic`).
    pub agent_b_role: Option<String>,
    /// Background both agents see.
    pub context: Option<String>,
    /// Rounds at most (1-10, default 5).
    pub max_rounds: Option<u32>,
    /// Agreement that ends the dialogue (0-100, default 80).
    pub threshold: Option<u32>,
    /// Queue it and answer 202 with a task id.
    #[serde(rename = "async")]
    pub run_async: Option<bool>,
    /// Where to POST the result of an async task (signed, see the docs).
    pub webhook_url: Option<String>,
}

/// An async convergence's handle, or its state.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskView {
    /// `task_…`
    pub task_id: String,
    /// `pending`, `running`, `done` or `failed`.
    pub status: String,
    /// The outcome, when done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<crate::convergence::Outcome>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl From<crate::convergence::tasks::ConvergenceFailure> for ApiError {
    fn from(e: crate::convergence::tasks::ConvergenceFailure) -> Self {
        use crate::convergence::tasks::ConvergenceFailure as F;
        match e {
            F::Invalid(m) => Self::new(StatusCode::BAD_REQUEST, "invalid_request", m),
            e @ F::QuotaExceeded { .. } => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "quota_exceeded",
                e.to_string(),
            ),
            e @ F::TooManyTasks { .. } => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_tasks",
                e.to_string(),
            ),
            F::UnknownTask(_) => Self::not_found("task"),
            F::Provider(e) => {
                // The detail (the provider's URL, its answer) is the operator's, not the tenant's.
                tracing::warn!(error = %e, "the model provider failed");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "provider_unavailable",
                    "the model provider is unavailable; retry later (quote this response's \
                     x-request-id to the operator)",
                )
            }
            F::Storage(e) => e.into(),
        }
    }
}

/// The tenant a convergence call is metered to: tenant keys only.
fn converging_tenant(caller: &Principal) -> Result<String, ApiError> {
    match caller {
        Principal::Tenant { tenant_id, .. } => Ok(tenant_id.clone()),
        _ => Err(ApiError::forbidden(
            "convergence is called with a tenant key (sk_tenant_…)",
        )),
    }
}

async fn run_converge(
    lodge: &Lodge,
    caller: &Principal,
    preset: Option<crate::convergence::Preset>,
    body: ConvergeBody,
) -> Result<Response, ApiError> {
    let tenant_id = converging_tenant(caller)?;
    let request = match preset {
        Some(preset) => {
            let mut request = preset.request(&body.prompt, body.context);
            request.max_rounds = body.max_rounds;
            request.threshold = body.threshold;
            request
        }
        None => crate::convergence::ConvergeRequest {
            prompt: body.prompt,
            agent_a_role: body.agent_a_role.unwrap_or_else(|| "Proposer".into()),
            agent_b_role: body.agent_b_role.unwrap_or_else(|| "Critic".into()),
            context: body.context,
            max_rounds: body.max_rounds,
            threshold: body.threshold,
        },
    };
    if body.run_async.unwrap_or(false) {
        let task_id = lodge
            .submit_task(&tenant_id, &request, body.webhook_url)
            .await?;
        let view = TaskView {
            task_id,
            status: "pending".into(),
            outcome: None,
            error: None,
        };
        return Ok((StatusCode::ACCEPTED, Json(view)).into_response());
    }
    if body.webhook_url.is_some() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "webhookUrl needs \"async\": true",
        ));
    }
    Ok(Json(lodge.converge_for(&tenant_id, &request).await?).into_response())
}

#[utoipa::path(post, path = "/api/v1/converge", tag = "convergence", request_body = ConvergeBody,
    security(("bearer" = [])),
    responses((status = 200, body = crate::convergence::Outcome), (status = 202, body = TaskView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn converge(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    ApiJson(body): ApiJson<ConvergeBody>,
) -> Result<Response, ApiError> {
    run_converge(&lodge, &caller, None, body).await
}

#[utoipa::path(post, path = "/api/v1/{preset}", tag = "convergence", request_body = ConvergeBody,
    params(("preset" = String, Path, description = "design, review, decide, plan, analyze or generate")),
    security(("bearer" = [])),
    responses((status = 200, body = crate::convergence::Outcome), (status = 202, body = TaskView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn converge_preset(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    uri: http::Uri,
    ApiJson(body): ApiJson<ConvergeBody>,
) -> Result<Response, ApiError> {
    let name = uri.path().rsplit('/').next().unwrap_or_default().to_owned();
    let preset: crate::convergence::Preset =
        serde_json::from_value(serde_json::Value::String(name))
            .map_err(|_| ApiError::not_found("route"))?;
    run_converge(&lodge, &caller, Some(preset), body).await
}

#[utoipa::path(get, path = "/api/v1/converge/{taskId}", tag = "convergence",
    params(("taskId" = String, Path, description = "the task id")), security(("bearer" = [])),
    responses((status = 200, body = TaskView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn converge_task(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    Path(task_id): Path<String>,
) -> Result<Json<TaskView>, ApiError> {
    use crate::convergence::tasks::TaskState;
    let tenant_id = converging_tenant(&caller)?;
    let state = lodge.task_state(&tenant_id, &task_id).await?;
    let (status, outcome, error) = match state {
        TaskState::Pending => ("pending", None, None),
        TaskState::Running => ("running", None, None),
        TaskState::Done(o) => ("done", Some(*o), None),
        TaskState::Failed(e) => ("failed", None, Some(e)),
    };
    Ok(Json(TaskView {
        task_id,
        status: status.into(),
        outcome,
        error,
    }))
}

/// The key a tenant's webhooks are signed with.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookSecret {
    /// HMAC-SHA256 key (hex). A webhook carries `X-Lodge-Signature: t=<unix
    /// seconds>,v1=<hex of HMAC(key, "<t>.<body>")>`; refuse old timestamps.
    pub secret: String,
}

#[utoipa::path(get, path = "/api/v1/tenant/{id}/webhook-secret", tag = "convergence",
    params(("id" = String, Path, description = "tenant id or slug")), security(("bearer" = [])),
    responses((status = 200, body = WebhookSecret), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn webhook_secret(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<WebhookSecret>, ApiError> {
    let record = tenant_for(&lodge, &caller, &id).await?;
    Ok(Json(WebhookSecret {
        secret: lodge.webhook_secret(&record.id).await?,
    }))
}

#[utoipa::path(post, path = "/api/v1/tenant/{id}/webhook-secret/rotate", tag = "convergence",
    params(("id" = String, Path, description = "tenant id or slug")), security(("bearer" = [])),
    responses((status = 200, body = WebhookSecret, description = "the new secret; the old one signs nothing from now on"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn rotate_webhook_secret(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<WebhookSecret>, ApiError> {
    let record = tenant_for(&lodge, &caller, &id).await?;
    Ok(Json(WebhookSecret {
        secret: lodge.rotate_webhook_secret(&record.id).await?,
    }))
}

/// `PATCH /orgs/{id}` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateOrg {
    /// The organization's new plan; its tenants on the old plan follow.
    pub plan: String,
}

/// Wraps an organization.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrgEnvelope {
    /// The organization.
    pub org: Org,
}

#[utoipa::path(patch, path = "/api/v1/orgs/{id}", tag = "orgs", request_body = UpdateOrg,
    params(("id" = String, Path, description = "organization id")), security(("bearer" = [])),
    responses((status = 200, body = OrgEnvelope), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn update_org(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateOrg>,
) -> Result<Json<OrgEnvelope>, ApiError> {
    if caller != Principal::Admin {
        return Err(ApiError::forbidden(
            "only the operator's admin token may change an organization's plan",
        ));
    }
    let org = lodge.set_org_plan(&id, &body.plan).await?;
    Ok(Json(OrgEnvelope { org }))
}

/// The organization `id`, if the caller is the operator or that organization.
fn own_org(caller: &Principal, id: &str) -> Result<(), ApiError> {
    match caller {
        Principal::Admin => Ok(()),
        Principal::Org { org_id } if org_id == id => Ok(()),
        Principal::Org { .. } => Err(ApiError::not_found("organization")),
        Principal::Tenant { .. } => Err(ApiError::forbidden(
            "a tenant key cannot manage its organization's keys",
        )),
    }
}

#[utoipa::path(post, path = "/api/v1/orgs/{id}/keys/rotate", tag = "orgs",
    params(("id" = String, Path, description = "organization id")), security(("bearer" = [])),
    responses((status = 200, body = KeyRotated, description = "the new organization key; the old ones no longer work"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn rotate_org_keys(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<KeyRotated>, ApiError> {
    own_org(&caller, &id)?;
    let api_key = lodge.rotate_org_keys(&id, true).await?.unwrap_or_default();
    Ok(Json(KeyRotated { api_key }))
}

#[utoipa::path(post, path = "/api/v1/orgs/{id}/keys/revoke", tag = "orgs",
    params(("id" = String, Path, description = "organization id")), security(("bearer" = [])),
    responses((status = 204, description = "every key of the organization (not its tenants') revoked"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn revoke_org_keys(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    own_org(&caller, &id)?;
    lodge.rotate_org_keys(&id, false).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The OpenAPI document.
#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "Lodge control plane", description = "Organizations, tenants, keys and deployments."),
    paths(create_org, spawn_tenant, list_tenants, tenant_status, tenant_logs, deploy_component,
        list_deployments, rollback, stop_tenant, start_tenant, update_env, rotate_key, delete_tenant, tenant_usage,
        org_usage, get_limits, set_limits, list_plans,
        get_wallet, fund_wallet, converge, converge_preset, converge_task, webhook_secret,
        rotate_webhook_secret, update_org, rotate_org_keys, revoke_org_keys),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

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
pub fn router(lodge: Arc<Lodge>) -> Router {
    let api = Router::new()
        .route("/orgs", post(create_org))
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
        .route("/tenant/{id}/wallet", get(get_wallet))
        .route("/tenant/{id}/wallet/fund", post(fund_wallet))
        .route("/tenant/{id}/webhook-secret", get(webhook_secret))
        .route(
            "/tenant/{id}/webhook-secret/rotate",
            post(rotate_webhook_secret),
        )
        .route("/converge", post(converge))
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
            get(|| async { Json(ApiDoc::openapi()) }),
        )
        .route("/api-docs", get(|| async { Html(API_DOCS_PAGE) }))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route(
            "/readyz",
            get(|State(lodge): State<AppState>| async move {
                match lodge.storage.list_tenants(None, 1, 0).await {
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
        .with_state(lodge)
}
