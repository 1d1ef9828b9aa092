//! Who a key speaks for: its role, and its organization and tenant by name.

use super::*;

/// What a key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyRole {
    /// The operator's admin token.
    Admin,
    /// An organization key (`sk_org_…`).
    Org,
    /// A tenant key (`sk_tenant_…`).
    Tenant,
}

/// The organization a key belongs to.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WhoamiOrg {
    /// `org_…` identifier.
    pub id: String,
    /// Display name.
    pub name: String,
}

/// The tenant a tenant key belongs to.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WhoamiTenant {
    /// `ten_…` identifier.
    pub id: String,
    /// Routing name.
    pub slug: String,
    /// Display name.
    pub name: String,
}

/// `GET /whoami` answer: who the key speaks for, never a secret.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Whoami {
    /// What the key is.
    pub role: KeyRole,
    /// Its organization (an organization or tenant key); `null` for the admin token.
    pub org: Option<WhoamiOrg>,
    /// Its tenant (a tenant key); `null` otherwise.
    pub tenant: Option<WhoamiTenant>,
}

#[utoipa::path(get, path = "/api/v1/whoami", tag = "keys", security(("bearer" = [])),
    responses((status = 200, description = "the key's role, and its organization and tenant (ids and names, \
            no secret)", body = Whoami), Authenticated))]
pub(super) async fn whoami(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
) -> Result<Json<Whoami>, ApiError> {
    let answer = match caller {
        Principal::Admin => Whoami {
            role: KeyRole::Admin,
            org: None,
            tenant: None,
        },
        Principal::Org { org_id } => Whoami {
            role: KeyRole::Org,
            org: Some(named_org(&lodge, &org_id).await?),
            tenant: None,
        },
        Principal::Tenant { org_id, tenant_id } => {
            // A key whose tenant is gone speaks for no one (deleting a tenant
            // revokes its keys; this is the moment in between).
            let tenant = match lodge.storage.get_tenant(&tenant_id).await {
                Err(StorageError::NotFound) => return Err(AuthError::Invalid.into()),
                found => found?,
            };
            Whoami {
                role: KeyRole::Tenant,
                org: Some(named_org(&lodge, &org_id).await?),
                tenant: Some(WhoamiTenant {
                    id: tenant.id,
                    slug: tenant.slug,
                    name: tenant.name,
                }),
            }
        }
    };
    Ok(Json(answer))
}

/// Organization `org_id`'s id and name.
async fn named_org(lodge: &ApiServices, org_id: &str) -> Result<WhoamiOrg, ApiError> {
    match lodge.storage.get_org(org_id).await {
        Ok(org) => Ok(WhoamiOrg {
            id: org.id,
            name: org.name,
        }),
        // Organizations are never deleted; a key of a missing one is no key.
        Err(StorageError::NotFound) => Err(AuthError::Invalid.into()),
        Err(e) => Err(e.into()),
    }
}
