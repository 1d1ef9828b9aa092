//! API keys: only a hash of each secret is stored.

use super::{SqlStorage, StorageResult, now_rfc3339};

/// Who an API key speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// Manages every tenant of one organization.
    Org,
    /// Manages one tenant.
    Tenant,
}

impl KeyKind {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Org => "org",
            Self::Tenant => "tenant",
        }
    }
}

impl From<String> for KeyKind {
    fn from(s: String) -> Self {
        if s == "org" { Self::Org } else { Self::Tenant }
    }
}

/// An API key as stored: only a hash of its secret.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyRecord {
    /// The public part of the key, used to find it.
    pub id: String,
    /// SHA-256 of the secret part, lowercase hex.
    pub secret_hash: String,
    /// Organization or tenant key.
    #[sqlx(try_from = "String")]
    pub kind: KeyKind,
    /// The organization it belongs to.
    pub org_id: String,
    /// The tenant, for tenant keys.
    pub tenant_id: Option<String>,
    /// When it was revoked (rotated away), if it was.
    pub revoked_at: Option<String>,
}

/// API keys.
#[async_trait::async_trait]
pub trait KeyStore: Send + Sync + std::fmt::Debug {
    /// Stores a new API key.
    async fn insert_key(&self, key: &KeyRecord) -> StorageResult<()>;
    /// A key by its public id.
    async fn get_key(&self, id: &str) -> StorageResult<Option<KeyRecord>>;
    /// Revokes every live key of a tenant.
    async fn revoke_tenant_keys(&self, tenant_id: &str) -> StorageResult<()>;
    /// Revokes every live organization key of an organization (not its tenants' keys).
    async fn revoke_org_keys(&self, org_id: &str) -> StorageResult<()>;
}

#[async_trait::async_trait]
impl KeyStore for SqlStorage {
    async fn insert_key(&self, key: &KeyRecord) -> StorageResult<()> {
        sqlx::query(
            "INSERT INTO api_keys (id, secret_hash, kind, org_id, tenant_id, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&key.id)
        .bind(&key.secret_hash)
        .bind(key.kind.as_str())
        .bind(&key.org_id)
        .bind(&key.tenant_id)
        .bind(now_rfc3339())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_key(&self, id: &str) -> StorageResult<Option<KeyRecord>> {
        Ok(sqlx::query_as(
            "SELECT id, secret_hash, kind, org_id, tenant_id, revoked_at FROM api_keys WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn revoke_tenant_keys(&self, tenant_id: &str) -> StorageResult<()> {
        sqlx::query(
            "UPDATE api_keys SET revoked_at = $1 WHERE tenant_id = $2 AND revoked_at IS NULL",
        )
        .bind(now_rfc3339())
        .bind(tenant_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn revoke_org_keys(&self, org_id: &str) -> StorageResult<()> {
        sqlx::query(
            "UPDATE api_keys SET revoked_at = $1
             WHERE org_id = $2 AND kind = 'org' AND revoked_at IS NULL",
        )
        .bind(now_rfc3339())
        .bind(org_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
