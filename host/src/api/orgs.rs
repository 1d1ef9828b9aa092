//! Organizations: create, list, change plan, rotate and revoke their keys.

use super::*;

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
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrgCreated {
    /// The organization.
    pub org: Org,
    /// Its key, shown only here.
    pub api_key: String,
}

#[utoipa::path(post, path = "/api/v1/orgs", tag = "orgs", request_body = CreateOrg,
    security(("bearer" = [])),
    responses((status = 201, description = "the organization and its key", body = OrgCreated), Authenticated, JsonBody,
        (status = 403, description = "not the admin token", body = ErrorBody)))]
pub(super) async fn create_org(
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

/// An organization in a list: the organization and its number of tenants.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrgListed {
    /// `org_…` identifier.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Plan name; tenants inherit it unless they set their own.
    pub plan: String,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// Its tenants (deleted ones not counted).
    pub tenants: i64,
}

impl From<OrgSummary> for OrgListed {
    fn from(listed: OrgSummary) -> Self {
        Self {
            id: listed.org.id,
            name: listed.org.name,
            plan: listed.org.plan,
            created_at: listed.org.created_at,
            tenants: listed.tenant_count,
        }
    }
}

/// A page of organizations.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrgList {
    /// The organizations, oldest first.
    pub orgs: Vec<OrgListed>,
    /// Offset of the next page, if there is one.
    pub next_offset: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/orgs", tag = "orgs", params(Page),
    security(("bearer" = [])),
    responses((status = 200, description = "a page of organizations: every one with the admin token, \
            only its own with an organization key", body = OrgList), Authenticated,
        (status = 400, description = "an unknown or malformed query parameter", body = ErrorBody),
        (status = 403, description = "a tenant key", body = ErrorBody)))]
pub(super) async fn list_orgs(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<OrgList>, ApiError> {
    let only = match &caller {
        Principal::Admin => None,
        Principal::Org { org_id } => Some(org_id.as_str()),
        Principal::Tenant { .. } => {
            return Err(ApiError::forbidden(
                "a tenant key cannot list organizations; use an organization key",
            ));
        }
    };
    let (limit, offset) = page.bounds();
    let rows = lodge.storage.list_orgs(only, limit + 1, offset).await?;
    let (rows, next_offset) = one_page(rows, limit, offset);
    Ok(Json(OrgList {
        orgs: rows.into_iter().map(OrgListed::from).collect(),
        next_offset,
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
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OrgEnvelope {
    /// The organization.
    pub org: Org,
}

#[utoipa::path(patch, path = "/api/v1/orgs/{id}", tag = "orgs", request_body = UpdateOrg,
    params(("id" = String, Path, description = "organization id")), security(("bearer" = [])),
    responses((status = 200, description = "the organization on its new plan", body = OrgEnvelope), Authenticated, JsonBody,
        (status = 403, description = "not the admin token", body = ErrorBody),
        (status = 404, description = "no such organization", body = ErrorBody)))]
pub(super) async fn update_org(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<String>,
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
pub(super) fn own_org(caller: &Principal, id: &str) -> Result<(), ApiError> {
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
        Authenticated, (status = 403, description = "a tenant key", body = ErrorBody),
        (status = 404, description = "no such organization, or another organization's", body = ErrorBody)))]
pub(super) async fn rotate_org_keys(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<KeyRotated>, ApiError> {
    own_org(&caller, &id)?;
    let api_key = lodge.rotate_org_keys(&id, true).await?.unwrap_or_default();
    Ok(Json(KeyRotated { api_key }))
}

#[utoipa::path(post, path = "/api/v1/orgs/{id}/keys/revoke", tag = "orgs",
    params(("id" = String, Path, description = "organization id")), security(("bearer" = [])),
    responses((status = 204, description = "every key of the organization (not its tenants') revoked"),
        Authenticated, (status = 403, description = "a tenant key", body = ErrorBody),
        (status = 404, description = "no such organization, or another organization's", body = ErrorBody)))]
pub(super) async fn revoke_org_keys(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    own_org(&caller, &id)?;
    lodge.rotate_org_keys(&id, false).await?;
    Ok(StatusCode::NO_CONTENT)
}
