//! Organizations, tenants, their deployed versions, stored components and
//! environment variables.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::dialect::placeholders;
use super::{SqlStorage, StorageError, StorageResult, now_rfc3339, unique_violation};
use crate::plans::LimitsPatch;

/// An organization: the owner of tenants.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct Org {
    /// `org_…` identifier.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Plan name; tenants inherit it unless they set their own.
    pub plan: String,
    /// RFC 3339 creation time.
    pub created_at: String,
}

/// An organization as a list shows it: the organization and how many live
/// tenants it has.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OrgSummary {
    /// The organization.
    #[sqlx(flatten)]
    pub org: Org,
    /// Its tenants not deleted.
    pub tenant_count: i64,
}

/// Where a tenant is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TenantStatus {
    /// Created, no component deployed yet.
    Provisioning,
    /// Serving its active deployment.
    Running,
    /// Stopped by its owner; the data plane answers 503.
    Stopped,
    /// Its active deployment could not be loaded.
    Error,
    /// Soft-deleted; logs and usage are archived.
    Destroyed,
}

impl TenantStatus {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provisioning => "provisioning",
            Self::Running => "running",
            Self::Stopped => "stopped",
            Self::Error => "error",
            Self::Destroyed => "destroyed",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> StorageResult<Self> {
        Ok(match s {
            "provisioning" => Self::Provisioning,
            "running" => Self::Running,
            "stopped" => Self::Stopped,
            "error" => Self::Error,
            "destroyed" => Self::Destroyed,
            other => {
                return Err(StorageError::Backend(anyhow::anyhow!(
                    "unknown tenant status {other:?}"
                )));
            }
        })
    }
}

impl TryFrom<String> for TenantStatus {
    type Error = StorageError;

    fn try_from(s: String) -> StorageResult<Self> {
        Self::parse(&s)
    }
}

impl fmt::Display for TenantStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tenant as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TenantRecord {
    /// `ten_…` identifier.
    pub id: String,
    /// Owning organization.
    pub org_id: String,
    /// Display name.
    pub name: String,
    /// Routing name, unique among live tenants.
    pub slug: String,
    /// Life-cycle status.
    #[sqlx(try_from = "String")]
    pub status: TenantStatus,
    /// Plan name.
    pub plan: String,
    /// Its own limits over the plan's (stored as JSON).
    #[sqlx(rename = "limits_override", try_from = "String")]
    pub limits: LimitsPatch,
    /// Version serving requests, if any.
    pub active_version: Option<i64>,
    /// Why the tenant is in `error`, if it is.
    pub last_error: Option<String>,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// RFC 3339 time of the last change.
    pub updated_at: String,
}

/// One uploaded version of a tenant's component.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    /// 1, 2, 3 … per tenant.
    pub version: i64,
    /// SHA-256 of the component, lowercase hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: i64,
    /// Milliseconds spent validating and compiling at upload.
    pub compile_ms: i64,
    /// RFC 3339 upload time.
    pub created_at: String,
}

/// Organizations, tenants, deployments, components and environments.
#[async_trait::async_trait]
pub trait TenantStore: Send + Sync + fmt::Debug {
    /// Creates an organization.
    async fn create_org(&self, org: &Org) -> StorageResult<()>;
    /// An organization by id.
    async fn get_org(&self, id: &str) -> StorageResult<Org>;
    /// An organization by name (the first created, if several).
    async fn find_org_by_name(&self, name: &str) -> StorageResult<Option<Org>>;
    /// Changes an organization's plan; `NotFound` if there is no such organization.
    async fn set_org_plan(&self, org_id: &str, plan: &str) -> StorageResult<()>;
    /// Organizations, oldest first, each with its number of live tenants:
    /// every one, or only organization `only`.
    async fn list_orgs(
        &self,
        only: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> StorageResult<Vec<OrgSummary>>;

    /// Creates a tenant; `Conflict` if the slug is taken by a live tenant.
    async fn create_tenant(&self, tenant: &TenantRecord) -> StorageResult<()>;
    /// A live tenant by id or slug.
    async fn get_tenant(&self, id_or_slug: &str) -> StorageResult<TenantRecord>;
    /// Live tenants, oldest first, optionally of one organization.
    async fn list_tenants(
        &self,
        org_id: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> StorageResult<Vec<TenantRecord>>;
    /// Sets a tenant's status (and error text).
    async fn set_status(
        &self,
        tenant_id: &str,
        status: TenantStatus,
        last_error: Option<&str>,
    ) -> StorageResult<()>;
    /// Sets a tenant's plan and its own limit overrides.
    async fn set_tenant_limits(
        &self,
        id: &str,
        plan: &str,
        overrides: &LimitsPatch,
    ) -> StorageResult<()>;
    /// Soft-deletes a tenant: status `destroyed`, slug freed, keys revoked.
    async fn delete_tenant(&self, tenant_id: &str) -> StorageResult<()>;

    /// A stored component.
    async fn get_blob(&self, sha256: &str) -> StorageResult<Vec<u8>>;
    /// Whether a component is stored (some version of some tenant uses it).
    async fn blob_exists(&self, sha256: &str) -> StorageResult<bool>;
    /// Deletes the stored component `sha256` if no version of any tenant uses
    /// it; true if it was deleted. A deploy of the same bytes racing with it
    /// wins (the foreign key refuses the delete).
    async fn delete_blob_if_unused(&self, sha256: &str) -> StorageResult<bool>;

    /// Stores the component (once across tenants: content-addressed), records
    /// a new version and makes it active, atomically.
    async fn add_deployment(
        &self,
        tenant_id: &str,
        sha256: &str,
        wasm: &[u8],
        compile_ms: i64,
    ) -> StorageResult<Deployment>;
    /// Deletes versions `versions` of a tenant (never its active one); returns
    /// the components they used.
    async fn delete_deployments(
        &self,
        tenant_id: &str,
        versions: &[i64],
    ) -> StorageResult<Vec<String>>;
    /// The highest version number a tenant's deployments reached (0 if none).
    async fn last_version(&self, tenant_id: &str) -> StorageResult<i64>;
    /// Every version of a tenant, newest first.
    async fn list_deployments(&self, tenant_id: &str) -> StorageResult<Vec<Deployment>>;
    /// One version of a tenant.
    async fn get_deployment(&self, tenant_id: &str, version: i64) -> StorageResult<Deployment>;
    /// Makes an existing version active.
    async fn set_active_version(&self, tenant_id: &str, version: i64) -> StorageResult<()>;

    /// Replaces a tenant's environment variables.
    async fn set_env(&self, tenant_id: &str, vars: &[(String, String)]) -> StorageResult<()>;
    /// A tenant's environment variables, sorted by name.
    async fn get_env(&self, tenant_id: &str) -> StorageResult<Vec<(String, String)>>;

    /// Up to `limit` live tenants with ids after `after`, by id: a restart
    /// reads every tenant a page at a time, each page by its primary key.
    async fn tenants_after(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> StorageResult<Vec<TenantRecord>>;
    /// The active deployment of each of `tenant_ids` that has one: (tenant id, deployment).
    async fn active_deployments(
        &self,
        tenant_ids: &[String],
    ) -> StorageResult<Vec<(String, Deployment)>>;
    /// The environments of `tenant_ids`: (tenant id, name, stored value) rows.
    async fn env_of(&self, tenant_ids: &[String]) -> StorageResult<Vec<(String, String, String)>>;
}

const TENANT_COLUMNS: &str = "id, org_id, name, slug, status, plan, limits_override, active_version, last_error, created_at, updated_at";
const DEPLOYMENT_COLUMNS: &str = "version, sha256, size, compile_ms, created_at";

/// `NotFound` when an update touched no row.
fn touched(done: sqlx::any::AnyQueryResult) -> StorageResult<()> {
    if done.rows_affected() == 0 {
        return Err(StorageError::NotFound);
    }
    Ok(())
}

fn limits_json(limits: &LimitsPatch) -> StorageResult<String> {
    serde_json::to_string(limits).map_err(|e| StorageError::Backend(e.into()))
}

#[async_trait::async_trait]
impl TenantStore for SqlStorage {
    async fn create_org(&self, org: &Org) -> StorageResult<()> {
        sqlx::query("INSERT INTO orgs (id, name, plan, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&org.id)
            .bind(&org.name)
            .bind(&org.plan)
            .bind(&org.created_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn get_org(&self, id: &str) -> StorageResult<Org> {
        Ok(
            sqlx::query_as("SELECT id, name, plan, created_at FROM orgs WHERE id = $1")
                .bind(id)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn find_org_by_name(&self, name: &str) -> StorageResult<Option<Org>> {
        Ok(sqlx::query_as(
            "SELECT id, name, plan, created_at FROM orgs WHERE name = $1 ORDER BY created_at LIMIT 1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn set_org_plan(&self, org_id: &str, plan: &str) -> StorageResult<()> {
        touched(
            sqlx::query("UPDATE orgs SET plan = $1 WHERE id = $2")
                .bind(plan)
                .bind(org_id)
                .execute(&self.pool)
                .await?,
        )
    }

    async fn list_orgs(
        &self,
        only: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> StorageResult<Vec<OrgSummary>> {
        // The count walks `tenants_org_created` for each organization of the page.
        let bytewise = self.dialect.bytewise();
        let columns = "o.id, o.name, o.plan, o.created_at,
             (SELECT COUNT(*) FROM tenants t WHERE t.org_id = o.id AND t.deleted_at IS NULL) AS tenant_count";
        let sql = match only {
            Some(_) => format!(
                "SELECT {columns} FROM orgs o WHERE o.id = $1
                 ORDER BY o.created_at, o.id{bytewise} LIMIT $2 OFFSET $3"
            ),
            None => format!(
                "SELECT {columns} FROM orgs o
                 ORDER BY o.created_at, o.id{bytewise} LIMIT $1 OFFSET $2"
            ),
        };
        let mut query = sqlx::query_as(&sql);
        if let Some(org) = only {
            query = query.bind(org);
        }
        Ok(query.bind(limit).bind(offset).fetch_all(&self.pool).await?)
    }

    async fn create_tenant(&self, t: &TenantRecord) -> StorageResult<()> {
        let result = sqlx::query(&format!(
            "INSERT INTO tenants ({TENANT_COLUMNS})
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ))
        .bind(&t.id)
        .bind(&t.org_id)
        .bind(&t.name)
        .bind(&t.slug)
        .bind(t.status.as_str())
        .bind(&t.plan)
        .bind(limits_json(&t.limits)?)
        .bind(t.active_version)
        .bind(&t.last_error)
        .bind(&t.created_at)
        .bind(&t.updated_at)
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if unique_violation(&e) => Err(StorageError::Conflict("slug already taken")),
            Err(e) => Err(e.into()),
        }
    }

    async fn get_tenant(&self, id_or_slug: &str) -> StorageResult<TenantRecord> {
        Ok(sqlx::query_as(&format!(
            // Two index lookups: SQLite answers `id = $1 OR slug = $1` with a
            // scan of every tenant.
            "SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1 AND deleted_at IS NULL
             UNION ALL
             SELECT {TENANT_COLUMNS} FROM tenants WHERE slug = $1 AND deleted_at IS NULL
             LIMIT 1"
        ))
        .bind(id_or_slug)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn list_tenants(
        &self,
        org_id: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> StorageResult<Vec<TenantRecord>> {
        // One statement per case, each walking its index in order
        // (`tenants_org_created`, `tenants_created`): an `OR` would sort every tenant.
        let bytewise = self.dialect.bytewise();
        let sql = match org_id {
            Some(_) => format!(
                "SELECT {TENANT_COLUMNS} FROM tenants WHERE org_id = $1 AND deleted_at IS NULL
                 ORDER BY created_at, id{bytewise} LIMIT $2 OFFSET $3"
            ),
            None => format!(
                "SELECT {TENANT_COLUMNS} FROM tenants WHERE deleted_at IS NULL
                 ORDER BY created_at, id{bytewise} LIMIT $1 OFFSET $2"
            ),
        };
        let mut query = sqlx::query_as(&sql);
        if let Some(org) = org_id {
            query = query.bind(org);
        }
        Ok(query.bind(limit).bind(offset).fetch_all(&self.pool).await?)
    }

    async fn set_status(
        &self,
        tenant_id: &str,
        status: TenantStatus,
        last_error: Option<&str>,
    ) -> StorageResult<()> {
        touched(
            sqlx::query(
                "UPDATE tenants SET status = $1, last_error = $2, updated_at = $3
                 WHERE id = $4 AND deleted_at IS NULL",
            )
            .bind(status.as_str())
            .bind(last_error)
            .bind(now_rfc3339())
            .bind(tenant_id)
            .execute(&self.pool)
            .await?,
        )
    }

    async fn set_tenant_limits(
        &self,
        id: &str,
        plan: &str,
        overrides: &LimitsPatch,
    ) -> StorageResult<()> {
        touched(
            sqlx::query(
                "UPDATE tenants SET plan = $1, limits_override = $2, updated_at = $3
                 WHERE id = $4 AND deleted_at IS NULL",
            )
            .bind(plan)
            .bind(limits_json(overrides)?)
            .bind(now_rfc3339())
            .bind(id)
            .execute(&self.pool)
            .await?,
        )
    }

    async fn delete_tenant(&self, tenant_id: &str) -> StorageResult<()> {
        let mut tx = self.begin_write().await?;
        let now = now_rfc3339();
        touched(
            sqlx::query(
                "UPDATE tenants SET status = 'destroyed', active_version = NULL, deleted_at = $1, updated_at = $1
                 WHERE id = $2 AND deleted_at IS NULL",
            )
            .bind(&now)
            .bind(tenant_id)
            .execute(&mut *tx)
            .await?,
        )?;
        sqlx::query(
            "UPDATE api_keys SET revoked_at = $1 WHERE tenant_id = $2 AND revoked_at IS NULL",
        )
        .bind(&now)
        .bind(tenant_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_blob(&self, sha256: &str) -> StorageResult<Vec<u8>> {
        Ok(
            sqlx::query_scalar("SELECT bytes FROM blobs WHERE sha256 = $1")
                .bind(sha256)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn blob_exists(&self, sha256: &str) -> StorageResult<bool> {
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM blobs WHERE sha256 = $1")
            .bind(sha256)
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.is_some())
    }

    async fn delete_blob_if_unused(&self, sha256: &str) -> StorageResult<bool> {
        let deleted = sqlx::query(
            "DELETE FROM blobs WHERE sha256 = $1
               AND NOT EXISTS (SELECT 1 FROM deployments WHERE sha256 = $1)",
        )
        .bind(sha256)
        .execute(&self.pool)
        .await;
        match deleted {
            Ok(done) => Ok(done.rows_affected() > 0),
            // A deployment of it arrived meanwhile.
            Err(sqlx::Error::Database(db))
                if db.kind() == sqlx::error::ErrorKind::ForeignKeyViolation =>
            {
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn add_deployment(
        &self,
        tenant_id: &str,
        sha256: &str,
        wasm: &[u8],
        compile_ms: i64,
    ) -> StorageResult<Deployment> {
        let size = wasm.len() as i64;
        let mut tx = self.begin_write().await?;
        let now = now_rfc3339();
        // Content-addressed: stored once across tenants. In the transaction
        // that references it, so pruning another tenant cannot delete it in between.
        sqlx::query(
            "INSERT INTO blobs (sha256, size, bytes, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (sha256) DO NOTHING",
        )
        .bind(sha256)
        .bind(size)
        .bind(wasm)
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        // Two hosts deploying the same tenant at once would both pick
        // MAX(version) + 1: the tenant row's lock makes them take turns. A
        // missing tenant falls through to the foreign key.
        self.lock_row(&mut tx, "tenants", "id", tenant_id).await?;
        let deployment: Deployment = sqlx::query_as(&format!(
            "INSERT INTO deployments (tenant_id, {DEPLOYMENT_COLUMNS})
             SELECT $1, COALESCE(MAX(version), 0) + 1, $2, $3, $4, $5 FROM deployments WHERE tenant_id = $1
             RETURNING {DEPLOYMENT_COLUMNS}"
        ))
        .bind(tenant_id)
        .bind(sha256)
        .bind(size)
        .bind(compile_ms)
        .bind(&now)
        .fetch_one(&mut *tx)
        .await?;
        touched(
            sqlx::query(
                "UPDATE tenants SET active_version = $1, last_error = NULL, updated_at = $2,
                   status = CASE WHEN status = 'stopped' THEN 'stopped' ELSE 'running' END
                 WHERE id = $3 AND deleted_at IS NULL",
            )
            .bind(deployment.version)
            .bind(&now)
            .bind(tenant_id)
            .execute(&mut *tx)
            .await?,
        )?;
        tx.commit().await?;
        Ok(deployment)
    }

    async fn delete_deployments(
        &self,
        tenant_id: &str,
        versions: &[i64],
    ) -> StorageResult<Vec<String>> {
        let mut tx = self.begin_write().await?;
        let mut digests = Vec::new();
        for version in versions {
            let digest: Option<String> = sqlx::query_scalar(
                "DELETE FROM deployments WHERE tenant_id = $1 AND version = $2
                   AND version IS DISTINCT FROM (SELECT active_version FROM tenants WHERE id = $1)
                 RETURNING sha256",
            )
            .bind(tenant_id)
            .bind(version)
            .fetch_optional(&mut *tx)
            .await?;
            digests.extend(digest);
        }
        tx.commit().await?;
        digests.sort();
        digests.dedup();
        Ok(digests)
    }

    async fn last_version(&self, tenant_id: &str) -> StorageResult<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COALESCE(MAX(version), 0) FROM deployments WHERE tenant_id = $1",
        )
        .bind(tenant_id)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn list_deployments(&self, tenant_id: &str) -> StorageResult<Vec<Deployment>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE tenant_id = $1 ORDER BY version DESC"
        ))
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn get_deployment(&self, tenant_id: &str, version: i64) -> StorageResult<Deployment> {
        Ok(sqlx::query_as(&format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE tenant_id = $1 AND version = $2"
        ))
        .bind(tenant_id)
        .bind(version)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn set_active_version(&self, tenant_id: &str, version: i64) -> StorageResult<()> {
        touched(
            sqlx::query(
                "UPDATE tenants SET active_version = $1, last_error = NULL, updated_at = $2,
                   status = CASE WHEN status = 'stopped' THEN 'stopped' ELSE 'running' END
                 WHERE id = $3 AND deleted_at IS NULL
                   AND EXISTS (SELECT 1 FROM deployments WHERE tenant_id = $3 AND version = $1)",
            )
            .bind(version)
            .bind(now_rfc3339())
            .bind(tenant_id)
            .execute(&self.pool)
            .await?,
        )
    }

    async fn set_env(&self, tenant_id: &str, vars: &[(String, String)]) -> StorageResult<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM tenant_env WHERE tenant_id = $1")
            .bind(tenant_id)
            .execute(&mut *tx)
            .await?;
        for (name, value) in vars {
            sqlx::query("INSERT INTO tenant_env (tenant_id, name, value) VALUES ($1, $2, $3)")
                .bind(tenant_id)
                .bind(name)
                .bind(value)
                .execute(&mut *tx)
                .await?;
        }
        // The reconcile of other hosts notices env changes by this.
        sqlx::query("UPDATE tenants SET updated_at = $1 WHERE id = $2")
            .bind(now_rfc3339())
            .bind(tenant_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_env(&self, tenant_id: &str) -> StorageResult<Vec<(String, String)>> {
        Ok(sqlx::query_as(&format!(
            "SELECT name, value FROM tenant_env WHERE tenant_id = $1 ORDER BY name{}",
            self.dialect.bytewise()
        ))
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn tenants_after(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> StorageResult<Vec<TenantRecord>> {
        let bytewise = self.dialect.bytewise();
        Ok(sqlx::query_as(&format!(
            "SELECT {TENANT_COLUMNS} FROM tenants
             WHERE deleted_at IS NULL AND id{bytewise} > $1
             ORDER BY id{bytewise} LIMIT $2"
        ))
        // Every id sorts after the empty string: the first page.
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn active_deployments(
        &self,
        tenant_ids: &[String],
    ) -> StorageResult<Vec<(String, Deployment)>> {
        #[derive(sqlx::FromRow)]
        struct Row {
            tenant_id: String,
            #[sqlx(flatten)]
            deployment: Deployment,
        }
        if tenant_ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT d.tenant_id, d.version, d.sha256, d.size, d.compile_ms, d.created_at
             FROM deployments d JOIN tenants t ON t.id = d.tenant_id AND t.active_version = d.version
             WHERE t.id IN ({})",
            placeholders(1, tenant_ids.len())
        );
        let mut query = sqlx::query_as::<_, Row>(&sql);
        for id in tenant_ids {
            query = query.bind(id);
        }
        let rows = query.fetch_all(&self.pool).await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.tenant_id, r.deployment))
            .collect())
    }

    async fn env_of(&self, tenant_ids: &[String]) -> StorageResult<Vec<(String, String, String)>> {
        if tenant_ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT tenant_id, name, value FROM tenant_env WHERE tenant_id IN ({})
             ORDER BY tenant_id, name{}",
            placeholders(1, tenant_ids.len()),
            self.dialect.bytewise()
        );
        let mut query = sqlx::query_as(&sql);
        for id in tenant_ids {
            query = query.bind(id);
        }
        Ok(query.fetch_all(&self.pool).await?)
    }
}

/// The versions to prune so that a tenant keeps at most `max_versions` and
/// `max_bytes` of distinct components: the active version always stays, then
/// the newest while they fit. `versions` is newest first.
pub fn versions_to_prune(
    versions: &[Deployment],
    active: Option<i64>,
    max_versions: u32,
    max_bytes: u64,
) -> Vec<i64> {
    let mut kept_digests = std::collections::HashSet::new();
    let (mut kept, mut bytes) = (0u32, 0u64);
    let mut keep = |d: &Deployment, force: bool| -> bool {
        let extra = if kept_digests.contains(&d.sha256) {
            0
        } else {
            d.size.max(0) as u64
        };
        if force || (kept < max_versions && bytes.saturating_add(extra) <= max_bytes) {
            kept += 1;
            bytes += extra;
            kept_digests.insert(d.sha256.clone());
            true
        } else {
            false
        }
    };
    if let Some(d) = versions.iter().find(|d| Some(d.version) == active) {
        keep(d, true);
    }
    versions
        .iter()
        .filter(|d| Some(d.version) != active)
        .filter(|d| !keep(d, false))
        .map(|d| d.version)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(version: i64, sha256: &str, size: i64) -> Deployment {
        Deployment {
            version,
            sha256: sha256.into(),
            size,
            compile_ms: 0,
            created_at: String::new(),
        }
    }

    #[test]
    fn pruning_keeps_the_active_version_and_the_newest_that_fit() {
        let versions: Vec<_> = (1..=12)
            .rev()
            .map(|v| version(v, &format!("d{v}"), 10))
            .collect();
        assert_eq!(versions_to_prune(&versions, Some(12), 10, 1000), [2, 1]);
        // A rollback made an old version active: it stays, the oldest others go.
        assert_eq!(
            versions_to_prune(&versions, Some(1), 3, 1000),
            [10, 9, 8, 7, 6, 5, 4, 3, 2]
        );
        // Bytes: 35 allow three distinct components of 10.
        assert_eq!(versions_to_prune(&versions, Some(12), 10, 35).len(), 9);
        // The same component twice costs its bytes once.
        let same = [
            version(3, "x", 10),
            version(2, "x", 10),
            version(1, "y", 10),
        ];
        assert_eq!(versions_to_prune(&same, Some(3), 10, 20), Vec::<i64>::new());
        assert_eq!(versions_to_prune(&same, Some(3), 10, 15), [1]);
    }
}
