//! The embedded default backend: one SQLite file in the data directory, created
//! and migrated on start (WAL mode, foreign keys on).
//!
//! Every write transaction starts with `BEGIN IMMEDIATE`: it takes SQLite's one
//! write lock at once (waiting up to the busy timeout), so a transaction that
//! reads before it writes (quota checks, balances) never fails with
//! `SQLITE_BUSY` because another connection wrote after its read began — a
//! failure the busy timeout does not retry.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use super::{
    Deployment, KeyKind, KeyRecord, KvError, KvQuota, LedgerEntry, LedgerError, Org, Storage,
    StorageError, StorageResult, TaskRecord, TenantRecord, TenantStatus, TransferRequest, Usage,
    WalletRecord, now_rfc3339,
};
use crate::logs::{LogLine, LogStream};

/// Migrations for this backend, embedded at compile time.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// SQLite storage.
#[derive(Debug, Clone)]
pub struct SqliteStorage {
    pool: SqlitePool,
    /// Serializes key-value and ledger writes: read-check-write transactions
    /// (quota, increment, compare-and-swap, balance checks) must not interleave. SQLite has one writer
    /// at a time anyway; this makes the wait happen here rather than in
    /// `SQLITE_BUSY` retries.
    kv_writes: std::sync::Arc<tokio::sync::Mutex<()>>,
}

const TENANT_COLUMNS: &str = "id, org_id, name, slug, status, plan, limits_override, active_version, last_error, created_at, updated_at";

impl SqliteStorage {
    /// Opens (creating if needed) `<dir>/lodge.db` and migrates it.
    /// The file is created readable by its owner only (0600; SQLite gives its
    /// `-wal` and `-shm` files the same mode), and an existing one is made so.
    pub async fn open_in(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("lodge.db");
        #[cfg(unix)]
        {
            use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&path)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
        Self::open(&format!("sqlite://{}", path.display())).await
    }

    /// Opens a `sqlite:` URL and migrates it.
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            // Deleted rows (old env values, pruned components) are zeroed, not left in free pages.
            .pragma("secure_delete", "ON");
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self {
            pool,
            kv_writes: Default::default(),
        })
    }

    fn tenant(row: &sqlx::sqlite::SqliteRow) -> StorageResult<TenantRecord> {
        Ok(TenantRecord {
            id: row.try_get("id")?,
            org_id: row.try_get("org_id")?,
            name: row.try_get("name")?,
            slug: row.try_get("slug")?,
            status: TenantStatus::parse(row.try_get::<&str, _>("status")?)?,
            plan: row.try_get("plan")?,
            limits: serde_json::from_str(row.try_get::<&str, _>("limits_override")?).map_err(
                |e| StorageError::Backend(anyhow::anyhow!("tenant limits_override: {e}")),
            )?,
            active_version: row.try_get("active_version")?,
            last_error: row.try_get("last_error")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }

    fn org(row: &sqlx::sqlite::SqliteRow) -> StorageResult<Org> {
        Ok(Org {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            plan: row.try_get("plan")?,
            created_at: row.try_get("created_at")?,
        })
    }

    fn deployment(row: &sqlx::sqlite::SqliteRow) -> StorageResult<Deployment> {
        Ok(Deployment {
            version: row.try_get("version")?,
            sha256: row.try_get("sha256")?,
            size: row.try_get("size")?,
            compile_ms: row.try_get("compile_ms")?,
            created_at: row.try_get("created_at")?,
        })
    }
}

/// Applies `changes` (`None` deletes) to one tenant's bucket inside `tx`,
/// keeping `kv_usage` exact and refusing growth past `quota`.
async fn kv_apply(
    tx: &mut sqlx::SqliteConnection,
    tenant_id: &str,
    bucket: &str,
    changes: &[(&str, Option<&[u8]>)],
    quota: Option<KvQuota>,
) -> Result<(), KvError> {
    let (mut keys_delta, mut bytes_delta) = (0i64, 0i64);
    for (key, value) in changes {
        let old: Option<i64> = sqlx::query_scalar(
            "SELECT LENGTH(value) FROM kv WHERE tenant_id = ? AND bucket = ? AND key = ?",
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
                    "INSERT INTO kv (tenant_id, bucket, key, value) VALUES (?, ?, ?, ?)
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
                sqlx::query("DELETE FROM kv WHERE tenant_id = ? AND bucket = ? AND key = ?")
                    .bind(tenant_id)
                    .bind(bucket)
                    .bind(key)
                    .execute(&mut *tx)
                    .await?;
            }
        }
    }
    let usage = sqlx::query(
        "INSERT INTO kv_usage (tenant_id, keys, bytes) VALUES (?, ?, ?)
         ON CONFLICT (tenant_id) DO UPDATE SET keys = keys + excluded.keys, bytes = bytes + excluded.bytes
         RETURNING keys, bytes",
    )
    .bind(tenant_id)
    .bind(keys_delta)
    .bind(bytes_delta)
    .fetch_one(&mut *tx)
    .await?;
    let (keys, bytes): (i64, i64) = (usage.try_get("keys")?, usage.try_get("bytes")?);
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

/// Writes one transfer: its row, two entries summing to zero, both balances.
async fn post_transfer(
    tx: &mut sqlx::SqliteConnection,
    from: &str,
    to: &str,
    amount: i64,
    memo: &str,
    idempotency_key: Option<&str>,
) -> Result<String, LedgerError> {
    let id = format!("tx_{}", uuid::Uuid::now_v7().simple());
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO ledger_transfers (id, from_account, to_account, amount, memo, idempotency_key, created_at)
         VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING seq",
    )
    .bind(&id)
    .bind(from)
    .bind(to)
    .bind(amount)
    .bind(memo)
    .bind(idempotency_key)
    .bind(now_rfc3339())
    .fetch_one(&mut *tx)
    .await?;
    for (account, delta) in [(from, -amount), (to, amount)] {
        sqlx::query("INSERT INTO ledger_entries (transfer_seq, account, amount) VALUES (?, ?, ?)")
            .bind(seq)
            .bind(account)
            .bind(delta)
            .execute(&mut *tx)
            .await?;
        // UPDATE first: an upsert would check the CHECK constraint on the
        // proposed row (a negative delta) before resolving the conflict.
        let updated =
            sqlx::query("UPDATE ledger_balances SET balance = balance + ? WHERE account = ?")
                .bind(delta)
                .bind(account)
                .execute(&mut *tx)
                .await?;
        if updated.rows_affected() == 0 {
            sqlx::query("INSERT INTO ledger_balances (account, balance) VALUES (?, ?)")
                .bind(account)
                .bind(delta)
                .execute(&mut *tx)
                .await?;
        }
    }
    Ok(id)
}

fn task_row(row: &sqlx::sqlite::SqliteRow) -> StorageResult<TaskRecord> {
    Ok(TaskRecord {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        status: row.try_get("status")?,
        request: row.try_get("request")?,
        outcome: row.try_get("outcome")?,
        error: row.try_get("error")?,
        webhook_url: row.try_get("webhook_url")?,
        attempts: row.try_get("attempts")?,
    })
}

fn unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

#[async_trait::async_trait]
impl Storage for SqliteStorage {
    async fn create_org(&self, org: &Org) -> StorageResult<()> {
        sqlx::query("INSERT INTO orgs (id, name, plan, created_at) VALUES (?, ?, ?, ?)")
            .bind(&org.id)
            .bind(&org.name)
            .bind(&org.plan)
            .bind(&org.created_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn get_org(&self, id: &str) -> StorageResult<Org> {
        let row = sqlx::query("SELECT id, name, plan, created_at FROM orgs WHERE id = ?")
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
        Self::org(&row)
    }

    async fn find_org_by_name(&self, name: &str) -> StorageResult<Option<Org>> {
        let row = sqlx::query(
            "SELECT id, name, plan, created_at FROM orgs WHERE name = ? ORDER BY created_at LIMIT 1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(Self::org).transpose()
    }

    async fn insert_key(&self, key: &KeyRecord) -> StorageResult<()> {
        let kind = match key.kind {
            KeyKind::Org => "org",
            KeyKind::Tenant => "tenant",
        };
        sqlx::query(
            "INSERT INTO api_keys (id, secret_hash, kind, org_id, tenant_id, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&key.id)
        .bind(&key.secret_hash)
        .bind(kind)
        .bind(&key.org_id)
        .bind(&key.tenant_id)
        .bind(now_rfc3339())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_key(&self, id: &str) -> StorageResult<Option<KeyRecord>> {
        let row = sqlx::query(
            "SELECT id, secret_hash, kind, org_id, tenant_id, revoked_at FROM api_keys WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(KeyRecord {
                id: row.try_get("id")?,
                secret_hash: row.try_get("secret_hash")?,
                kind: match row.try_get::<&str, _>("kind")? {
                    "org" => KeyKind::Org,
                    _ => KeyKind::Tenant,
                },
                org_id: row.try_get("org_id")?,
                tenant_id: row.try_get("tenant_id")?,
                revoked: row.try_get::<Option<String>, _>("revoked_at")?.is_some(),
            })
        })
        .transpose()
    }

    async fn revoke_tenant_keys(&self, tenant_id: &str) -> StorageResult<()> {
        sqlx::query(
            "UPDATE api_keys SET revoked_at = ? WHERE tenant_id = ? AND revoked_at IS NULL",
        )
        .bind(now_rfc3339())
        .bind(tenant_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn revoke_org_keys(&self, org_id: &str) -> StorageResult<()> {
        sqlx::query(
            "UPDATE api_keys SET revoked_at = ? WHERE org_id = ? AND kind = 'org' AND revoked_at IS NULL",
        )
        .bind(now_rfc3339())
        .bind(org_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn set_org_plan(&self, org_id: &str, plan: &str) -> StorageResult<()> {
        let done = sqlx::query("UPDATE orgs SET plan = ? WHERE id = ?")
            .bind(plan)
            .bind(org_id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StorageError::NotFound);
        }
        Ok(())
    }

    async fn create_tenant(&self, t: &TenantRecord) -> StorageResult<()> {
        let result = sqlx::query(
            "INSERT INTO tenants (id, org_id, name, slug, status, plan, limits_override, active_version, last_error, created_at, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&t.id)
        .bind(&t.org_id)
        .bind(&t.name)
        .bind(&t.slug)
        .bind(t.status.as_str())
        .bind(&t.plan)
        .bind(serde_json::to_string(&t.limits).map_err(|e| StorageError::Backend(e.into()))?)
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
        let row = sqlx::query(&format!(
            "SELECT {TENANT_COLUMNS} FROM tenants WHERE (id = ? OR slug = ?) AND deleted_at IS NULL"
        ))
        .bind(id_or_slug)
        .bind(id_or_slug)
        .fetch_one(&self.pool)
        .await?;
        Self::tenant(&row)
    }

    async fn list_tenants(
        &self,
        org_id: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> StorageResult<Vec<TenantRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {TENANT_COLUMNS} FROM tenants
             WHERE deleted_at IS NULL AND (? IS NULL OR org_id = ?)
             ORDER BY created_at, id LIMIT ? OFFSET ?"
        ))
        .bind(org_id)
        .bind(org_id)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Self::tenant).collect()
    }

    async fn set_status(
        &self,
        tenant_id: &str,
        status: TenantStatus,
        last_error: Option<&str>,
    ) -> StorageResult<()> {
        let done = sqlx::query(
            "UPDATE tenants SET status = ?, last_error = ?, updated_at = ? WHERE id = ? AND deleted_at IS NULL",
        )
        .bind(status.as_str())
        .bind(last_error)
        .bind(now_rfc3339())
        .bind(tenant_id)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StorageError::NotFound);
        }
        Ok(())
    }

    async fn delete_tenant(&self, tenant_id: &str) -> StorageResult<()> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let now = now_rfc3339();
        let done = sqlx::query(
            "UPDATE tenants SET status = 'destroyed', active_version = NULL, deleted_at = ?, updated_at = ? WHERE id = ? AND deleted_at IS NULL",
        )
        .bind(&now)
        .bind(&now)
        .bind(tenant_id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StorageError::NotFound);
        }
        sqlx::query(
            "UPDATE api_keys SET revoked_at = ? WHERE tenant_id = ? AND revoked_at IS NULL",
        )
        .bind(&now)
        .bind(tenant_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_blob(&self, sha256: &str) -> StorageResult<Vec<u8>> {
        let row = sqlx::query("SELECT bytes FROM blobs WHERE sha256 = ?")
            .bind(sha256)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("bytes")?)
    }

    async fn blob_exists(&self, sha256: &str) -> StorageResult<bool> {
        Ok(
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM blobs WHERE sha256 = ?")
                .bind(sha256)
                .fetch_one(&self.pool)
                .await?
                > 0,
        )
    }

    async fn delete_blob_if_unused(&self, sha256: &str) -> StorageResult<bool> {
        let deleted = sqlx::query(
            "DELETE FROM blobs WHERE sha256 = ? AND NOT EXISTS (SELECT 1 FROM deployments WHERE sha256 = ?)",
        )
        .bind(sha256)
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let now = now_rfc3339();
        sqlx::query(
            "INSERT INTO blobs (sha256, size, bytes, created_at) VALUES (?, ?, ?, ?) ON CONFLICT (sha256) DO NOTHING",
        )
        .bind(sha256)
        .bind(wasm.len() as i64)
        .bind(wasm)
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(
            "INSERT INTO deployments (tenant_id, version, sha256, size, compile_ms, created_at)
             SELECT ?, COALESCE(MAX(version), 0) + 1, ?, ?, ?, ? FROM deployments WHERE tenant_id = ?
             RETURNING version, sha256, size, compile_ms, created_at",
        )
        .bind(tenant_id)
        .bind(sha256)
        .bind(wasm.len() as i64)
        .bind(compile_ms)
        .bind(&now)
        .bind(tenant_id)
        .fetch_one(&mut *tx)
        .await?;
        let deployment = Self::deployment(&row)?;
        let done = sqlx::query(
            "UPDATE tenants SET active_version = ?, status = CASE WHEN status = 'stopped' THEN 'stopped' ELSE 'running' END,
             last_error = NULL, updated_at = ? WHERE id = ? AND deleted_at IS NULL",
        )
        .bind(deployment.version)
        .bind(&now)
        .bind(tenant_id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StorageError::NotFound);
        }
        tx.commit().await?;
        Ok(deployment)
    }

    async fn delete_deployments(
        &self,
        tenant_id: &str,
        versions: &[i64],
    ) -> StorageResult<Vec<String>> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let mut digests = Vec::new();
        for version in versions {
            let digest: Option<String> = sqlx::query_scalar(
                "DELETE FROM deployments WHERE tenant_id = ? AND version = ?
                   AND version IS NOT (SELECT active_version FROM tenants WHERE id = ?)
                 RETURNING sha256",
            )
            .bind(tenant_id)
            .bind(version)
            .bind(tenant_id)
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
            "SELECT COALESCE(MAX(version), 0) FROM deployments WHERE tenant_id = ?",
        )
        .bind(tenant_id)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn list_deployments(&self, tenant_id: &str) -> StorageResult<Vec<Deployment>> {
        let rows = sqlx::query(
            "SELECT version, sha256, size, compile_ms, created_at FROM deployments WHERE tenant_id = ? ORDER BY version DESC",
        )
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Self::deployment).collect()
    }

    async fn get_deployment(&self, tenant_id: &str, version: i64) -> StorageResult<Deployment> {
        let row = sqlx::query(
            "SELECT version, sha256, size, compile_ms, created_at FROM deployments WHERE tenant_id = ? AND version = ?",
        )
        .bind(tenant_id)
        .bind(version)
        .fetch_one(&self.pool)
        .await?;
        Self::deployment(&row)
    }

    async fn set_active_version(&self, tenant_id: &str, version: i64) -> StorageResult<()> {
        let done = sqlx::query(
            "UPDATE tenants SET active_version = ?, last_error = NULL,
             status = CASE WHEN status = 'stopped' THEN 'stopped' ELSE 'running' END, updated_at = ?
             WHERE id = ? AND deleted_at IS NULL
               AND EXISTS (SELECT 1 FROM deployments WHERE tenant_id = ? AND version = ?)",
        )
        .bind(version)
        .bind(now_rfc3339())
        .bind(tenant_id)
        .bind(tenant_id)
        .bind(version)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StorageError::NotFound);
        }
        Ok(())
    }

    async fn set_env(&self, tenant_id: &str, vars: &[(String, String)]) -> StorageResult<()> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("DELETE FROM tenant_env WHERE tenant_id = ?")
            .bind(tenant_id)
            .execute(&mut *tx)
            .await?;
        for (name, value) in vars {
            sqlx::query("INSERT INTO tenant_env (tenant_id, name, value) VALUES (?, ?, ?)")
                .bind(tenant_id)
                .bind(name)
                .bind(value)
                .execute(&mut *tx)
                .await?;
        }
        // The reconcile of other hosts notices env changes by this.
        sqlx::query("UPDATE tenants SET updated_at = ? WHERE id = ?")
            .bind(now_rfc3339())
            .bind(tenant_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_env(&self, tenant_id: &str) -> StorageResult<Vec<(String, String)>> {
        let rows =
            sqlx::query("SELECT name, value FROM tenant_env WHERE tenant_id = ? ORDER BY name")
                .bind(tenant_id)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("name")?, r.try_get("value")?)))
            .collect()
    }

    async fn append_logs(&self, lines: &[(String, LogLine)]) -> StorageResult<()> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        for (tenant_id, line) in lines {
            sqlx::query(
                "INSERT OR REPLACE INTO tenant_logs (tenant_id, seq, timestamp_ms, request_id, stream, message)
                 VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(tenant_id)
            .bind(line.seq as i64)
            .bind(line.timestamp_ms as i64)
            .bind(&line.request_id)
            .bind(line.stream.as_str())
            .bind(&line.message)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn recent_logs(&self, tenant_id: &str, limit: i64) -> StorageResult<Vec<LogLine>> {
        let rows = sqlx::query(
            "SELECT seq, timestamp_ms, request_id, stream, message FROM tenant_logs
             WHERE tenant_id = ? ORDER BY seq DESC LIMIT ?",
        )
        .bind(tenant_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut lines = rows
            .iter()
            .map(|r| {
                Ok(LogLine {
                    seq: r.try_get::<i64, _>("seq")? as u64,
                    timestamp_ms: r.try_get::<i64, _>("timestamp_ms")? as u64,
                    request_id: r.try_get("request_id")?,
                    stream: LogStream::parse(r.try_get("stream")?),
                    message: r.try_get("message")?,
                })
            })
            .collect::<StorageResult<Vec<_>>>()?;
        lines.reverse();
        Ok(lines)
    }

    async fn prune_logs(&self, tenant_id: &str, before_ms: i64, keep: i64) -> StorageResult<u64> {
        let done = sqlx::query(
            "DELETE FROM tenant_logs WHERE tenant_id = ? AND (timestamp_ms < ? OR seq <= (
                 SELECT seq FROM tenant_logs WHERE tenant_id = ? ORDER BY seq DESC LIMIT 1 OFFSET ?))",
        )
        .bind(tenant_id)
        .bind(before_ms)
        .bind(tenant_id)
        .bind(keep)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn prune_deleted_tenants_logs(&self, before_ms: i64) -> StorageResult<u64> {
        let done = sqlx::query(
            "DELETE FROM tenant_logs WHERE timestamp_ms < ?
               AND tenant_id IN (SELECT id FROM tenants WHERE deleted_at IS NOT NULL)",
        )
        .bind(before_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn kv_get(
        &self,
        tenant_id: &str,
        bucket: &str,
        key: &str,
    ) -> StorageResult<Option<Vec<u8>>> {
        Ok(sqlx::query_scalar(
            "SELECT value FROM kv WHERE tenant_id = ? AND bucket = ? AND key = ?",
        )
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
        let mut conn = self.pool.acquire().await?;
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            values.push(
                sqlx::query_scalar(
                    "SELECT value FROM kv WHERE tenant_id = ? AND bucket = ? AND key = ?",
                )
                .bind(tenant_id)
                .bind(bucket)
                .bind(key)
                .fetch_optional(&mut *conn)
                .await?,
            );
        }
        Ok(values)
    }

    async fn kv_set_many(
        &self,
        tenant_id: &str,
        bucket: &str,
        entries: &[(String, Vec<u8>)],
        quota: KvQuota,
    ) -> Result<(), KvError> {
        let _write = self.kv_writes.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let changes: Vec<(&str, Option<&[u8]>)> = entries
            .iter()
            .map(|(k, v)| (k.as_str(), Some(v.as_slice())))
            .collect();
        kv_apply(&mut tx, tenant_id, bucket, &changes, Some(quota)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn kv_delete_many(
        &self,
        tenant_id: &str,
        bucket: &str,
        keys: &[String],
    ) -> StorageResult<()> {
        let _write = self.kv_writes.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let changes: Vec<(&str, Option<&[u8]>)> = keys.iter().map(|k| (k.as_str(), None)).collect();
        kv_apply(&mut tx, tenant_id, bucket, &changes, None)
            .await
            .map_err(|e| match e {
                KvError::Storage(e) => e,
                other => StorageError::Backend(other.into()),
            })?;
        tx.commit().await?;
        Ok(())
    }

    async fn kv_list(
        &self,
        tenant_id: &str,
        bucket: &str,
        cursor: Option<&str>,
        limit: i64,
    ) -> StorageResult<(Vec<String>, Option<String>)> {
        let mut keys: Vec<String> = sqlx::query_scalar(
            "SELECT key FROM kv WHERE tenant_id = ? AND bucket = ? AND (? IS NULL OR key > ?)
             ORDER BY key LIMIT ?",
        )
        .bind(tenant_id)
        .bind(bucket)
        .bind(cursor)
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
        let _write = self.kv_writes.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let old: Option<Vec<u8>> = sqlx::query_scalar(
            "SELECT value FROM kv WHERE tenant_id = ? AND bucket = ? AND key = ?",
        )
        .bind(tenant_id)
        .bind(bucket)
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
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
            &mut tx,
            tenant_id,
            bucket,
            &[(key, Some(text.as_bytes()))],
            Some(quota),
        )
        .await?;
        tx.commit().await?;
        Ok(new)
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
        let _write = self.kv_writes.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let current: Option<Vec<u8>> = sqlx::query_scalar(
            "SELECT value FROM kv WHERE tenant_id = ? AND bucket = ? AND key = ?",
        )
        .bind(tenant_id)
        .bind(bucket)
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
        if current.as_deref() != expected {
            return Ok(false);
        }
        kv_apply(&mut tx, tenant_id, bucket, &[(key, Some(new))], Some(quota)).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn wallet_create(
        &self,
        tenant_id: &str,
        wallet: &WalletRecord,
    ) -> StorageResult<WalletRecord> {
        sqlx::query(
            "INSERT INTO wallets (tenant_id, address, sealed_seed, nonce, created_at) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (tenant_id) DO NOTHING",
        )
        .bind(tenant_id)
        .bind(&wallet.address)
        .bind(&wallet.sealed_seed)
        .bind(&wallet.nonce)
        .bind(now_rfc3339())
        .execute(&self.pool)
        .await?;
        self.wallet_get(tenant_id)
            .await?
            .ok_or(StorageError::NotFound)
    }

    async fn wallet_get(&self, tenant_id: &str) -> StorageResult<Option<WalletRecord>> {
        let row =
            sqlx::query("SELECT address, sealed_seed, nonce FROM wallets WHERE tenant_id = ?")
                .bind(tenant_id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|row| {
            Ok(WalletRecord {
                address: row.try_get("address")?,
                sealed_seed: row.try_get("sealed_seed")?,
                nonce: row.try_get("nonce")?,
            })
        })
        .transpose()
    }

    async fn wallet_any_owner(&self) -> StorageResult<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT tenant_id FROM wallets ORDER BY tenant_id LIMIT 1")
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn wallet_owners(&self, after: Option<&str>, limit: i64) -> StorageResult<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT tenant_id FROM wallets WHERE ? IS NULL OR tenant_id > ? ORDER BY tenant_id LIMIT ?",
        )
        .bind(after)
            .bind(after)
            .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn wallet_reseal(
        &self,
        tenant_id: &str,
        old_nonce: &[u8],
        sealed_seed: &[u8],
        nonce: &[u8],
    ) -> StorageResult<bool> {
        let done = sqlx::query(
            "UPDATE wallets SET sealed_seed = ?, nonce = ? WHERE tenant_id = ? AND nonce = ?",
        )
        .bind(sealed_seed)
        .bind(nonce)
        .bind(tenant_id)
        .bind(old_nonce)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn wallet_exists(&self, address: &str) -> StorageResult<bool> {
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM wallets WHERE address = ?")
            .bind(address)
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.is_some())
    }

    async fn ledger_balance(&self, account: &str) -> StorageResult<i64> {
        let balance: Option<i64> =
            sqlx::query_scalar("SELECT balance FROM ledger_balances WHERE account = ?")
                .bind(account)
                .fetch_optional(&self.pool)
                .await?;
        Ok(balance.unwrap_or(0))
    }

    async fn ledger_fund(&self, to: &str, amount: i64, memo: &str) -> Result<String, LedgerError> {
        if amount <= 0 {
            return Err(LedgerError::Invalid("amount must be positive".into()));
        }
        let _write = self.kv_writes.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let id = post_transfer(&mut tx, "mint", to, amount, memo, None).await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn ledger_transfer(&self, r: &TransferRequest<'_>) -> Result<String, LedgerError> {
        let _write = self.kv_writes.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let previous = sqlx::query(
            "SELECT id, to_account, amount, memo FROM ledger_transfers WHERE from_account = ? AND idempotency_key = ?",
        )
        .bind(r.from)
        .bind(r.idempotency_key)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(previous) = previous {
            let same = previous.try_get::<&str, _>("to_account")? == r.to
                && previous.try_get::<i64, _>("amount")? == r.amount
                && previous.try_get::<&str, _>("memo")? == r.memo;
            if !same {
                return Err(LedgerError::Invalid(format!(
                    "the idempotency key {:?} was already used for a different transfer",
                    r.idempotency_key
                )));
            }
            return Ok(previous.try_get("id")?);
        }
        if r.amount > r.max_per_transfer {
            return Err(LedgerError::Limit(format!(
                "{} is over the plan's limit of {} per transfer",
                r.amount, r.max_per_transfer
            )));
        }
        let today = format!("{}T", crate::storage::today());
        let sent_today: i64 = sqlx::query_scalar(
            "SELECT COALESCE(SUM(amount), 0) FROM ledger_transfers WHERE from_account = ? AND created_at >= ?",
        )
        .bind(r.from)
        .bind(&today)
        .fetch_one(&mut *tx)
        .await?;
        if sent_today.saturating_add(r.amount) > r.max_per_day {
            return Err(LedgerError::Limit(format!(
                "sending {} would exceed the plan's limit of {} per day ({} sent today)",
                r.amount, r.max_per_day, sent_today
            )));
        }
        let balance: i64 = sqlx::query_scalar(
            "SELECT COALESCE((SELECT balance FROM ledger_balances WHERE account = ?), 0)",
        )
        .bind(r.from)
        .fetch_one(&mut *tx)
        .await?;
        if balance < r.amount {
            return Err(LedgerError::InsufficientFunds { balance });
        }
        let id = post_transfer(
            &mut tx,
            r.from,
            r.to,
            r.amount,
            r.memo,
            Some(r.idempotency_key),
        )
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn ledger_history(
        &self,
        account: &str,
        before: Option<i64>,
        limit: i64,
    ) -> StorageResult<Vec<LedgerEntry>> {
        let rows = sqlx::query(
            "SELECT t.seq, t.id, t.from_account, t.to_account, t.memo, t.created_at, e.amount
             FROM ledger_entries e JOIN ledger_transfers t ON t.seq = e.transfer_seq
             WHERE e.account = ? AND (? IS NULL OR t.seq < ?)
             ORDER BY t.seq DESC LIMIT ?",
        )
        .bind(account)
        .bind(before)
        .bind(before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let from: String = row.try_get("from_account")?;
                let to: String = row.try_get("to_account")?;
                let amount: i64 = row.try_get("amount")?;
                let (kind, counterparty) = if from == "mint" {
                    ("funding", from)
                } else if amount < 0 {
                    ("sent", to)
                } else {
                    ("received", from)
                };
                Ok(LedgerEntry {
                    seq: row.try_get("seq")?,
                    id: row.try_get("id")?,
                    kind: kind.to_owned(),
                    counterparty,
                    amount,
                    memo: row.try_get("memo")?,
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect()
    }

    async fn ledger_totals(&self) -> StorageResult<(i64, i64)> {
        let row = sqlx::query(
            "SELECT COALESCE(SUM(CASE WHEN account = 'mint' THEN 0 ELSE balance END), 0) AS held,
                    COALESCE(-SUM(CASE WHEN account = 'mint' THEN balance ELSE 0 END), 0) AS minted
             FROM ledger_balances",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((row.try_get("held")?, row.try_get("minted")?))
    }

    async fn meta_claim(&self, name: &str, value: &str) -> StorageResult<String> {
        sqlx::query(
            "INSERT INTO host_meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(
            sqlx::query_scalar("SELECT value FROM host_meta WHERE name = ?")
                .bind(name)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn meta_set(&self, name: &str, value: &str) -> StorageResult<()> {
        sqlx::query(
            "INSERT INTO host_meta (name, value) VALUES (?, ?)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(name)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn task_insert(&self, t: &TaskRecord) -> StorageResult<()> {
        let now = now_rfc3339();
        sqlx::query(
            "INSERT INTO convergence_tasks (id, tenant_id, status, request, webhook_url, created_at, updated_at)
             VALUES (?, ?, 'pending', ?, ?, ?, ?)",
        )
        .bind(&t.id)
        .bind(&t.tenant_id)
        .bind(&t.request)
        .bind(&t.webhook_url)
        .bind(&now)
        .bind(&now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn task_claim(&self) -> StorageResult<Option<TaskRecord>> {
        // Fair across tenants: the live tenant with the fewest tasks running
        // goes first, its oldest task first.
        let row = sqlx::query(
            "UPDATE convergence_tasks SET status = 'running', attempts = attempts + 1,
                 updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
             WHERE id = (
                 SELECT p.id FROM convergence_tasks p
                 JOIN tenants t ON t.id = p.tenant_id AND t.deleted_at IS NULL
                 WHERE p.status = 'pending'
                 ORDER BY (SELECT COUNT(*) FROM convergence_tasks r
                           WHERE r.tenant_id = p.tenant_id AND r.status = 'running'),
                          p.created_at, p.id
                 LIMIT 1)
               AND status = 'pending'
             RETURNING id, tenant_id, status, request, outcome, error, webhook_url, attempts",
        )
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(task_row).transpose()
    }

    async fn task_count_active(&self, tenant_id: &str) -> StorageResult<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM convergence_tasks WHERE tenant_id = ? AND status IN ('pending', 'running')",
        )
        .bind(tenant_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(n.max(0) as u64)
    }

    async fn task_cancel_pending(&self, tenant_id: &str, error: &str) -> StorageResult<u64> {
        let done = sqlx::query(
            "UPDATE convergence_tasks SET status = 'failed', error = ?, updated_at = ?
             WHERE tenant_id = ? AND status = 'pending'",
        )
        .bind(error)
        .bind(now_rfc3339())
        .bind(tenant_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn task_finish(
        &self,
        id: &str,
        attempt: i64,
        outcome: Result<&str, &str>,
    ) -> StorageResult<bool> {
        let (status, outcome, error) = match outcome {
            Ok(json) => ("done", Some(json), None),
            Err(e) => ("failed", None, Some(e)),
        };
        let done = sqlx::query(
            "UPDATE convergence_tasks SET status = ?, outcome = ?, error = ?, updated_at = ?
             WHERE id = ? AND attempts = ? AND status = 'running'",
        )
        .bind(status)
        .bind(outcome)
        .bind(error)
        .bind(now_rfc3339())
        .bind(id)
        .bind(attempt)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn task_heartbeat(&self, id: &str, attempt: i64) -> StorageResult<bool> {
        let done = sqlx::query(
            "UPDATE convergence_tasks SET updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
             WHERE id = ? AND attempts = ? AND status = 'running'",
        )
        .bind(id)
        .bind(attempt)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn task_webhook(&self, id: &str, status: &str) -> StorageResult<()> {
        sqlx::query("UPDATE convergence_tasks SET webhook_status = ? WHERE id = ?")
            .bind(status)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn task_get(&self, tenant_id: &str, id: &str) -> StorageResult<Option<TaskRecord>> {
        let row = sqlx::query(
            "SELECT id, tenant_id, status, request, outcome, error, webhook_url, attempts FROM convergence_tasks
             WHERE id = ? AND tenant_id = ?",
        )
        .bind(id)
        .bind(tenant_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(task_row).transpose()
    }

    async fn task_requeue_running(&self, lease: Option<Duration>) -> StorageResult<u64> {
        // `lease` as an SQLite date modifier; none: anything before a second from now.
        let modifier = match lease {
            Some(lease) => format!("-{:.3} seconds", lease.as_secs_f64()),
            None => "+1 seconds".to_owned(),
        };
        let done = sqlx::query(
            "UPDATE convergence_tasks SET status = 'pending', updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
             WHERE status = 'running' AND updated_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?)",
        )
        .bind(modifier)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn add_usage(&self, tenant_id: &str, hour: &str, d: &Usage) -> StorageResult<()> {
        sqlx::query(&format!(
            "INSERT INTO usage_hourly (tenant_id, hour, {USAGE_COLUMNS})
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (tenant_id, hour) DO UPDATE SET
               requests = requests + excluded.requests,
               failures = failures + excluded.failures,
               status_2xx = status_2xx + excluded.status_2xx,
               status_3xx = status_3xx + excluded.status_3xx,
               status_4xx = status_4xx + excluded.status_4xx,
               status_5xx = status_5xx + excluded.status_5xx,
               fuel = fuel + excluded.fuel,
               wall_ms = wall_ms + excluded.wall_ms,
               peak_memory_bytes = MAX(peak_memory_bytes, excluded.peak_memory_bytes),
               bytes_in = bytes_in + excluded.bytes_in,
               bytes_out = bytes_out + excluded.bytes_out,
               outbound_requests = outbound_requests + excluded.outbound_requests,
               tokens = tokens + excluded.tokens,
               kv_ops = kv_ops + excluded.kv_ops,
               wallet_txs = wallet_txs + excluded.wallet_txs"
        ))
        .bind(tenant_id)
        .bind(hour)
        .bind(d.requests)
        .bind(d.failures)
        .bind(d.status_2xx)
        .bind(d.status_3xx)
        .bind(d.status_4xx)
        .bind(d.status_5xx)
        .bind(d.fuel)
        .bind(d.wall_ms)
        .bind(d.peak_memory_bytes)
        .bind(d.bytes_in)
        .bind(d.bytes_out)
        .bind(d.outbound_requests)
        .bind(d.tokens)
        .bind(d.kv_ops)
        .bind(d.wallet_txs)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn usage(
        &self,
        tenant_id: &str,
        from: &str,
        to: &str,
    ) -> StorageResult<Vec<(String, Usage)>> {
        let rows = sqlx::query(&format!(
            "SELECT hour, {USAGE_COLUMNS} FROM usage_hourly
             WHERE tenant_id = ? AND hour >= ? AND hour <= ? ORDER BY hour"
        ))
        .bind(tenant_id)
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("hour")?, usage_row(r)?)))
            .collect()
    }

    async fn org_usage(
        &self,
        org_id: &str,
        from: &str,
        to: &str,
    ) -> StorageResult<Vec<(String, String, Usage)>> {
        let rows = sqlx::query(
            "SELECT t.id AS tenant_id, t.slug AS slug,
               COALESCE(SUM(u.requests), 0) AS requests, COALESCE(SUM(u.failures), 0) AS failures,
               COALESCE(SUM(u.status_2xx), 0) AS status_2xx, COALESCE(SUM(u.status_3xx), 0) AS status_3xx,
               COALESCE(SUM(u.status_4xx), 0) AS status_4xx, COALESCE(SUM(u.status_5xx), 0) AS status_5xx,
               COALESCE(SUM(u.fuel), 0) AS fuel, COALESCE(SUM(u.wall_ms), 0) AS wall_ms,
               COALESCE(MAX(u.peak_memory_bytes), 0) AS peak_memory_bytes,
               COALESCE(SUM(u.bytes_in), 0) AS bytes_in, COALESCE(SUM(u.bytes_out), 0) AS bytes_out,
               COALESCE(SUM(u.outbound_requests), 0) AS outbound_requests,
               COALESCE(SUM(u.tokens), 0) AS tokens, COALESCE(SUM(u.kv_ops), 0) AS kv_ops,
               COALESCE(SUM(u.wallet_txs), 0) AS wallet_txs
             FROM tenants t
             LEFT JOIN usage_hourly u ON u.tenant_id = t.id AND u.hour >= ? AND u.hour <= ?
             WHERE t.org_id = ?
             GROUP BY t.id, t.slug ORDER BY t.created_at",
        )
        .bind(from)
        .bind(to)
        .bind(org_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("tenant_id")?, r.try_get("slug")?, usage_row(r)?)))
            .collect()
    }

    async fn set_tenant_limits(
        &self,
        id: &str,
        plan: &str,
        overrides: &crate::plans::LimitsPatch,
    ) -> StorageResult<()> {
        let json = serde_json::to_string(overrides)
            .map_err(|e| StorageError::Backend(anyhow::Error::from(e)))?;
        let done = sqlx::query(
            "UPDATE tenants SET plan = ?, limits_override = ?, updated_at = ?
             WHERE id = ? AND deleted_at IS NULL",
        )
        .bind(plan)
        .bind(json)
        .bind(now_rfc3339())
        .bind(id)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StorageError::NotFound);
        }
        Ok(())
    }
}

const USAGE_COLUMNS: &str = "requests, failures, status_2xx, status_3xx, status_4xx, status_5xx, fuel, wall_ms, peak_memory_bytes, bytes_in, bytes_out, outbound_requests, tokens, kv_ops, wallet_txs";

fn usage_row(r: &sqlx::sqlite::SqliteRow) -> StorageResult<Usage> {
    Ok(Usage {
        requests: r.try_get("requests")?,
        failures: r.try_get("failures")?,
        status_2xx: r.try_get("status_2xx")?,
        status_3xx: r.try_get("status_3xx")?,
        status_4xx: r.try_get("status_4xx")?,
        status_5xx: r.try_get("status_5xx")?,
        fuel: r.try_get("fuel")?,
        wall_ms: r.try_get("wall_ms")?,
        peak_memory_bytes: r.try_get("peak_memory_bytes")?,
        bytes_in: r.try_get("bytes_in")?,
        bytes_out: r.try_get("bytes_out")?,
        outbound_requests: r.try_get("outbound_requests")?,
        tokens: r.try_get("tokens")?,
        kv_ops: r.try_get("kv_ops")?,
        wallet_txs: r.try_get("wallet_txs")?,
    })
}
