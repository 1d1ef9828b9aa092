//! Deployments: upload, list, rollback.

use super::*;
use crate::control::Deployed;

/// `PUT /tenant/{id}/component` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentCreated {
    /// The new active version.
    pub deployment: DeploymentView,
    /// The compile tier it went live on: `baseline` (Winch, compiled fast) or
    /// `optimized` (Cranelift).
    pub tier: Tier,
    /// On baseline code: about how many ms until its optimised code replaces
    /// it (for new requests; an estimate). Absent when there is none to wait for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimized_in_ms: Option<u64>,
}

impl From<Deployed> for DeploymentCreated {
    fn from(d: Deployed) -> Self {
        Self {
            deployment: DeploymentView::new(d.deployment, true, true),
            tier: d.tier,
            optimized_in_ms: d.optimized_in_ms,
        }
    }
}

/// A deployment as the API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
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
    request_body(description = "the component (`.wasm`); `application/octet-stream` is accepted too",
        content((inline(WasmComponent) = "application/wasm"), (inline(WasmComponent) = "application/octet-stream"))),
    responses((status = 201, description = "the new version, active now", body = DeploymentCreated), Authenticated,
        (status = 400, description = "not a valid component, or an empty or interrupted upload", body = ErrorBody),
        (status = 404, description = "no such tenant, or not one this key may see", body = ErrorBody),
        (status = 413, description = "larger than the host or the plan allows", body = ErrorBody),
        (status = 415, description = "a Content-Type other than application/wasm or application/octet-stream", body = ErrorBody),
        (status = 422, description = "compiling took longer than the plan's compile_timeout_ms", body = ErrorBody),
        (status = 429, description = "another upload of this tenant is in progress (see Retry-After)", body = ErrorBody),
        (status = 503, description = "the host is at its limit of uploads in progress (see Retry-After)", body = ErrorBody)))]
pub(super) async fn deploy_component(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<String>,
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
    let deployed = lodge.deploy(&record, body, Some(slot)).await?;
    Ok((StatusCode::CREATED, Json(deployed.into())))
}

/// A WebAssembly component, the raw bytes of a `.wasm` file (the upload's body).
#[derive(Debug, ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct WasmComponent(pub Vec<u8>);

/// `GET /tenant/{id}/deployments` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentList {
    /// Version serving requests.
    pub active_version: Option<i64>,
    /// Newest first.
    pub deployments: Vec<DeploymentView>,
}

#[utoipa::path(get, path = "/api/v1/tenant/{id}/deployments", tag = "deployments",
    params(("id" = String, Path, description = "tenant id or slug")), security(("bearer" = [])),
    responses((status = 200, description = "the tenant's kept versions", body = DeploymentList), Authenticated,
        (status = 404, description = "no such tenant, or not one this key may see", body = ErrorBody)))]
pub(super) async fn list_deployments(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<String>,
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
    responses((status = 200, description = "that version, active again", body = DeploymentCreated), Authenticated, JsonBody,
        (status = 404, description = "no such tenant visible to this key, or no such version", body = ErrorBody),
        (status = 410, description = "the version was pruned (past the plan's max_versions)", body = ErrorBody)))]
pub(super) async fn rollback(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Rollback>,
) -> Result<Json<DeploymentCreated>, ApiError> {
    let record = tenant_for(&lodge, &caller, &id).await?;
    let deployed = lodge.rollback(&record, body.version).await?;
    Ok(Json(deployed.into()))
}
