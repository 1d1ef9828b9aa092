//! Tenants' key-value buckets, with an exact per-tenant count of keys and
//! bytes (`kv_usage`) that quotas are checked against.

use sqlx::AnyConnection;

use super::dialect::placeholders;
use super::{SqlStorage, StorageError, StorageResult};

/// Why a key-value write was refused.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The tenant's key or byte quota would be exceeded.
    #[error("quota-exceeded: {0}")]
    QuotaExceeded(String),
    /// The stored value is not an integer (for `increment`).
    #[error("the value of {0:?} is not a decimal integer")]
    NotAnInteger(String),
    /// The increment overflowed.
    #[error("the increment overflows a 64-bit integer")]
    Overflow,
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<sqlx::Error> for KvError {
    fn from(e: sqlx::Error) -> Self {
        Self::Storage(e.into())
    }
}

/// A tenant's key-value quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvQuota {
    /// Keys across all of the tenant's buckets.
    pub max_keys: i64,
    /// Bytes of keys and values across all of the tenant's buckets.
    pub max_bytes: i64,
}

/// Tenants' key-value buckets (the `lodge:keyvalue` capability's storage).
#[async_trait::async_trait]
pub trait KvStore: Send + Sync + std::fmt::Debug {
    /// A value of a tenant's bucket.
    async fn kv_get(
        &self,
        tenant_id: &str,
        bucket: &str,
        key: &str,
    ) -> StorageResult<Option<Vec<u8>>>;
    /// Values of many keys, in order, read at once.
    async fn kv_get_many(
        &self,
        tenant_id: &str,
        bucket: &str,
        keys: &[String],
    ) -> StorageResult<Vec<Option<Vec<u8>>>>;
    /// Sets keys atomically (all or none), within the quota.
    async fn kv_set_many(
        &self,
        tenant_id: &str,
        bucket: &str,
        entries: &[(String, Vec<u8>)],
        quota: KvQuota,
    ) -> Result<(), KvError>;
    /// Deletes keys (missing ones are fine).
    async fn kv_delete_many(
        &self,
        tenant_id: &str,
        bucket: &str,
        keys: &[String],
    ) -> StorageResult<()>;
    /// Up to `limit` keys after `cursor`, sorted; the next cursor if more remain.
    async fn kv_list(
        &self,
        tenant_id: &str,
        bucket: &str,
        cursor: Option<&str>,
        limit: i64,
    ) -> StorageResult<(Vec<String>, Option<String>)>;
    /// Adds `delta` to a decimal integer value (missing = 0), atomically; returns the new value.
    async fn kv_increment(
        &self,
        tenant_id: &str,
        bucket: &str,
        key: &str,
        delta: i64,
        quota: KvQuota,
    ) -> Result<i64, KvError>;
    /// Sets `key` to `new` only if it still holds `expected`; false if it did not.
    async fn kv_compare_and_swap(
        &self,
        tenant_id: &str,
        bucket: &str,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
        quota: KvQuota,
    ) -> Result<bool, KvError>;
}

const GET: &str = "SELECT value FROM kv WHERE tenant_id = $1 AND bucket = $2 AND key = $3";

impl SqlStorage {
    /// Runs `write` in a write transaction holding the tenant's key-value
    /// lock: the in-process turn (SQLite) or the tenant's `kv_usage` row,
    /// created first if missing (PostgreSQL). Every key-value write of the
    /// tenant, on any host, takes it first. Commits if `write` succeeds.
    async fn kv_write<T>(
        &self,
        tenant_id: &str,
        write: impl AsyncFnOnce(&mut AnyConnection) -> Result<T, KvError>,
    ) -> Result<T, KvError> {
        let _turn = self.write_turn().await;
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO kv_usage (tenant_id, keys, bytes) VALUES ($1, 0, 0)
             ON CONFLICT (tenant_id) DO NOTHING",
        )
        .bind(tenant_id)
        .execute(&mut *tx)
        .await?;
        self.lock_row(&mut tx, "kv_usage", "tenant_id", tenant_id)
            .await?;
        let value = write(&mut tx).await?;
        tx.commit().await?;
        Ok(value)
    }
}

/// A value, read inside the write transaction `tx`.
async fn kv_read(
    tx: &mut AnyConnection,
    tenant_id: &str,
    bucket: &str,
    key: &str,
) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar(GET)
        .bind(tenant_id)
        .bind(bucket)
        .bind(key)
        .fetch_optional(&mut *tx)
        .await
}

/// Applies `changes` (`None` deletes) to one tenant's bucket inside `tx`,
/// keeping `kv_usage` exact and refusing growth past `quota`. The caller holds
/// the tenant's key-value lock ([`SqlStorage::kv_write`]).
async fn kv_apply(
    tx: &mut AnyConnection,
    tenant_id: &str,
    bucket: &str,
    changes: &[(&str, Option<&[u8]>)],
    quota: Option<KvQuota>,
) -> Result<(), KvError> {
    let (mut keys_delta, mut bytes_delta) = (0i64, 0i64);
    for (key, value) in changes {
        let old: Option<i64> = sqlx::query_scalar(
            "SELECT LENGTH(value) FROM kv WHERE tenant_id = $1 AND bucket = $2 AND key = $3",
        )
        .bind(tenant_id)
        .bind(bucket)
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
        let key_len = key.len() as i64;
        if let Some(old_len) = old {
            keys_delta -= 1;
            bytes_delta -= key_len + old_len;
        }
        match value {
            Some(value) => {
                keys_delta += 1;
                bytes_delta += key_len + value.len() as i64;
                sqlx::query(
                    "INSERT INTO kv (tenant_id, bucket, key, value) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (tenant_id, bucket, key) DO UPDATE SET value = excluded.value",
                )
                .bind(tenant_id)
                .bind(bucket)
                .bind(key)
                .bind(*value)
                .execute(&mut *tx)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM kv WHERE tenant_id = $1 AND bucket = $2 AND key = $3")
                    .bind(tenant_id)
                    .bind(bucket)
                    .bind(key)
                    .execute(&mut *tx)
                    .await?;
            }
        }
    }
    // The row exists: the lock created it in this transaction or before.
    let (keys, bytes): (i64, i64) = sqlx::query_as(
        "UPDATE kv_usage SET keys = keys + $2, bytes = bytes + $3 WHERE tenant_id = $1
         RETURNING keys, bytes",
    )
    .bind(tenant_id)
    .bind(keys_delta)
    .bind(bytes_delta)
    .fetch_one(&mut *tx)
    .await?;
    if let Some(quota) = quota {
        if keys_delta > 0 && keys > quota.max_keys {
            return Err(KvError::QuotaExceeded(format!(
                "{keys} keys would exceed the quota of {}",
                quota.max_keys
            )));
        }
        if bytes_delta > 0 && bytes > quota.max_bytes {
            return Err(KvError::QuotaExceeded(format!(
                "{bytes} bytes would exceed the quota of {}",
                quota.max_bytes
            )));
        }
    }
    Ok(())
}

#[async_trait::async_trait]
impl KvStore for SqlStorage {
    async fn kv_get(
        &self,
        tenant_id: &str,
        bucket: &str,
        key: &str,
    ) -> StorageResult<Option<Vec<u8>>> {
        Ok(sqlx::query_scalar(GET)
            .bind(tenant_id)
            .bind(bucket)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn kv_get_many(
        &self,
        tenant_id: &str,
        bucket: &str,
        keys: &[String],
    ) -> StorageResult<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // One snapshot for all keys, answered in the asked order: one query
        // on PostgreSQL; on SQLite queries of at most `rows_per_insert(1)`
        // keys (sqlx-sqlite's binding is quadratic in the parameters) in one
        // read transaction.
        let mut tx = self.pool.begin().await?;
        let mut found = std::collections::HashMap::<String, Vec<u8>>::new();
        for chunk in keys.chunks(self.dialect.rows_per_insert(1)) {
            let sql = format!(
                "SELECT key, value FROM kv WHERE tenant_id = $1 AND bucket = $2 AND key IN ({})",
                placeholders(3, chunk.len())
            );
            let mut query = sqlx::query_as(&sql).bind(tenant_id).bind(bucket);
            for key in chunk {
                query = query.bind(key);
            }
            let rows: Vec<(String, Vec<u8>)> = query.fetch_all(&mut *tx).await?;
            found.extend(rows);
        }
        tx.commit().await?;
        Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
    }

    async fn kv_set_many(
        &self,
        tenant_id: &str,
        bucket: &str,
        entries: &[(String, Vec<u8>)],
        quota: KvQuota,
    ) -> Result<(), KvError> {
        let changes: Vec<(&str, Option<&[u8]>)> = entries
            .iter()
            .map(|(k, v)| (k.as_str(), Some(v.as_slice())))
            .collect();
        self.kv_write(tenant_id, async |tx| {
            kv_apply(tx, tenant_id, bucket, &changes, Some(quota)).await
        })
        .await
    }

    async fn kv_delete_many(
        &self,
        tenant_id: &str,
        bucket: &str,
        keys: &[String],
    ) -> StorageResult<()> {
        let changes: Vec<(&str, Option<&[u8]>)> = keys.iter().map(|k| (k.as_str(), None)).collect();
        self.kv_write(tenant_id, async |tx| {
            kv_apply(tx, tenant_id, bucket, &changes, None).await
        })
        .await
        .map_err(|e| match e {
            KvError::Storage(e) => e,
            other => StorageError::Backend(other.into()),
        })
    }

    async fn kv_list(
        &self,
        tenant_id: &str,
        bucket: &str,
        cursor: Option<&str>,
        limit: i64,
    ) -> StorageResult<(Vec<String>, Option<String>)> {
        let mut keys: Vec<String> = sqlx::query_scalar(
            "SELECT key FROM kv WHERE tenant_id = $1 AND bucket = $2
               AND (CAST($3 AS TEXT) IS NULL OR key > $3)
             ORDER BY key LIMIT $4",
        )
        .bind(tenant_id)
        .bind(bucket)
        .bind(cursor)
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await?;
        let more = keys.len() as i64 > limit;
        keys.truncate(limit as usize);
        let next = if more { keys.last().cloned() } else { None };
        Ok((keys, next))
    }

    async fn kv_increment(
        &self,
        tenant_id: &str,
        bucket: &str,
        key: &str,
        delta: i64,
        quota: KvQuota,
    ) -> Result<i64, KvError> {
        self.kv_write(tenant_id, async |tx| {
            let old = kv_read(tx, tenant_id, bucket, key).await?;
            let current = match old {
                None => 0,
                Some(bytes) => std::str::from_utf8(&bytes)
                    .ok()
                    .and_then(|s| s.trim().parse::<i64>().ok())
                    .ok_or_else(|| KvError::NotAnInteger(key.to_owned()))?,
            };
            let new = current.checked_add(delta).ok_or(KvError::Overflow)?;
            let text = new.to_string();
            kv_apply(
                tx,
                tenant_id,
                bucket,
                &[(key, Some(text.as_bytes()))],
                Some(quota),
            )
            .await?;
            Ok(new)
        })
        .await
    }

    async fn kv_compare_and_swap(
        &self,
        tenant_id: &str,
        bucket: &str,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
        quota: KvQuota,
    ) -> Result<bool, KvError> {
        self.kv_write(tenant_id, async |tx| {
            let current = kv_read(tx, tenant_id, bucket, key).await?;
            if current.as_deref() != expected {
                return Ok(false);
            }
            kv_apply(tx, tenant_id, bucket, &[(key, Some(new))], Some(quota)).await?;
            Ok(true)
        })
        .await
    }
}
