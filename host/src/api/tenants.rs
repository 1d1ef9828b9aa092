//! Tenants: spawn, list, status, stop/start, env, keys, delete.

use super::*;

/// A tenant as the API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
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
    fn new(lodge: &ApiServices, record: TenantRecord) -> Self {
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
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TenantEnvelope {
    /// The tenant.
    pub tenant: TenantView,
}

#[utoipa::path(post, path = "/api/v1/tenant/spawn", tag = "tenants", request_body = SpawnTenant,
    security(("bearer" = [])),
    responses((status = 201, description = "the tenant, with its key (`apiKey`, shown only here)", body = TenantEnvelope),
        Authenticated, JsonBody,
        (status = 403, description = "a tenant key; another organization; or a plan other than the organization's without the admin token", body = ErrorBody),
        (status = 404, description = "no such organization", body = ErrorBody),
        (status = 409, description = "the slug derived from the name is taken", body = ErrorBody)))]
pub(super) async fn spawn_tenant(
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

/// Pagination of `GET /tenant` and `GET /orgs`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct Page {
    /// At most this many (1-500, default 50).
    pub limit: Option<i64>,
    /// Skip this many.
    pub offset: Option<i64>,
}

impl Page {
    /// `(limit, offset)` within bounds: 1-500 (default 50), from 0.
    pub(super) fn bounds(&self) -> (i64, i64) {
        (
            self.limit.unwrap_or(50).clamp(1, 500),
            self.offset.unwrap_or(0).max(0),
        )
    }
}

/// One page of `rows`, which were read with `limit + 1` from `offset`, and
/// the offset of the next page if there is one.
pub(super) fn one_page<T>(mut rows: Vec<T>, limit: i64, offset: i64) -> (Vec<T>, Option<i64>) {
    let more = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    (rows, more.then_some(offset.saturating_add(limit)))
}

/// A page of tenants.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantList {
    /// The tenants, oldest first.
    pub tenants: Vec<TenantView>,
    /// Offset of the next page, if there is one.
    pub next_offset: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/tenant", tag = "tenants", params(Page),
    security(("bearer" = [])),
    responses((status = 200, description = "a page of tenants", body = TenantList), Authenticated,
        (status = 400, description = "an unknown or malformed query parameter", body = ErrorBody),
        (status = 403, description = "a tenant key", body = ErrorBody)))]
pub(super) async fn list_tenants(
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
    let (limit, offset) = page.bounds();
    let records = lodge.storage.list_tenants(org, limit + 1, offset).await?;
    let (records, next_offset) = one_page(records, limit, offset);
    let tenants = records
        .into_iter()
        .map(|r| TenantView::new(&lodge, r))
        .collect();
    Ok(Json(TenantList {
        tenants,
        next_offset,
    }))
}

/// A tenant's limits.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
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
#[derive(Debug, Serialize, Deserialize, ToSchema)]
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
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantStatusView {
    /// The tenant.
    pub tenant: TenantView,
    /// Version serving requests.
    pub active_version: Option<i64>,
    /// SHA-256 of the active component.
    pub active_sha256: Option<String>,
    /// The compile tier of the active version's code on this host: `baseline`
    /// until its optimised build is swapped in, then `optimized`; `null` while
    /// it is not in memory (idle; it loads, best tier first, on the next request).
    #[serde(default)]
    pub tier: Option<Tier>,
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
    responses((status = 200, description = "the tenant, its code and its counts", body = TenantStatusView), Authenticated,
        (status = 404, description = "no such tenant, or not one this key may see", body = ErrorBody)))]
pub(super) async fn tenant_status(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<TenantStatusView>, ApiError> {
    let record = tenant_for(&lodge, &caller, &id).await?;
    let live = lodge.live(&record).await?;
    let state = live.state();
    let active_sha256 = state.active.as_ref().map(|a| a.digest.to_string());
    let limits = live.limits();
    let view = TenantStatusView {
        active_version: state.active.as_ref().map(|a| a.version),
        tier: state
            .active
            .as_ref()
            .and_then(|a| a.app())
            .map(|app| app.tier()),
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

#[utoipa::path(post, path = "/api/v1/tenant/{id}/stop", tag = "tenants",
    params(("id" = String, Path, description = "tenant id or slug")), security(("bearer" = [])),
    responses((status = 200, description = "the tenant, stopped: its address answers 503", body = TenantEnvelope), Authenticated,
        (status = 404, description = "no such tenant, or not one this key may see", body = ErrorBody)))]
pub(super) async fn stop_tenant(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<TenantEnvelope>, ApiError> {
    set_running(&lodge, &caller, &id, false).await
}

#[utoipa::path(post, path = "/api/v1/tenant/{id}/start", tag = "tenants",
    params(("id" = String, Path, description = "tenant id or slug")), security(("bearer" = [])),
    responses((status = 200, description = "the tenant, running (or provisioning until a first deploy)", body = TenantEnvelope),
        Authenticated, (status = 404, description = "no such tenant, or not one this key may see", body = ErrorBody)))]
pub(super) async fn start_tenant(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<TenantEnvelope>, ApiError> {
    set_running(&lodge, &caller, &id, true).await
}

pub(super) async fn set_running(
    lodge: &AppState,
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
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvUpdate {
    /// Variables to set; `null` removes one. Others stay as they are.
    pub vars: BTreeMap<String, Option<String>>,
}

/// The names of a tenant's variables (values are never returned).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EnvNames {
    /// Sorted names.
    pub names: Vec<String>,
}

#[utoipa::path(put, path = "/api/v1/tenant/{id}/env", tag = "tenants", request_body = EnvUpdate,
    params(("id" = String, Path, description = "tenant id or slug")), security(("bearer" = [])),
    responses((status = 200, description = "the names of the variables now set", body = EnvNames), Authenticated, JsonBody,
        (status = 404, description = "no such tenant, or not one this key may see", body = ErrorBody)))]
pub(super) async fn update_env(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<EnvUpdate>,
) -> Result<Json<EnvNames>, ApiError> {
    let record = tenant_for(&lodge, &caller, &id).await?;
    let names = lodge
        .update_env(&record, body.vars.into_iter().collect())
        .await?;
    Ok(Json(EnvNames { names }))
}

/// A new key.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyRotated {
    /// The new key, shown only here; the old ones no longer work.
    pub api_key: String,
}

#[utoipa::path(post, path = "/api/v1/tenant/{id}/keys/rotate", tag = "tenants",
    params(("id" = String, Path, description = "tenant id or slug")), security(("bearer" = [])),
    responses((status = 200, description = "the tenant's new key; its old ones no longer work", body = KeyRotated), Authenticated,
        (status = 404, description = "no such tenant, or not one this key may see", body = ErrorBody)))]
pub(super) async fn rotate_key(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<KeyRotated>, ApiError> {
    let record = tenant_for(&lodge, &caller, &id).await?;
    let api_key = lodge.rotate_key(&record).await?;
    Ok(Json(KeyRotated { api_key }))
}

#[utoipa::path(delete, path = "/api/v1/tenant/{id}", tag = "tenants",
    params(("id" = String, Path, description = "tenant id or slug")), security(("bearer" = [])),
    responses((status = 200, description = "the tenant, destroyed (its logs and usage are kept)", body = TenantEnvelope),
        Authenticated, (status = 404, description = "no such tenant, or not one this key may see", body = ErrorBody)))]
pub(super) async fn delete_tenant(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<TenantEnvelope>, ApiError> {
    let mut record = tenant_for(&lodge, &caller, &id).await?;
    lodge.delete_tenant(&record).await?;
    record.status = TenantStatus::Destroyed;
    Ok(Json(TenantEnvelope {
        tenant: TenantView::new(&lodge, record),
    }))
}
