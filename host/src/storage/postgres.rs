//! The shared backend: one PostgreSQL database that several hosts may use at
//! once, migrated on start.
//!
//! Behaviour matches [`SqliteStorage`](super::sqlite::SqliteStorage) method by
//! method. Where SQLite serializes read-check-write sequences with an in-process
//! mutex, this backend takes row locks inside one transaction, so the checks
//! hold across processes:
//!
//! - key-value writes lock the tenant's `kv_usage` row (`SELECT … FOR UPDATE`,
//!   after creating it if missing): quota, increment, compare-and-swap and
//!   batch writes of one tenant run one at a time on every host;
//! - ledger writes lock the `ledger_balances` rows of both accounts, in sorted
//!   order (no deadlocks), creating them at 0 if missing: idempotency, the daily
//!   cap and the balance are checked under the payer's lock;
//! - `task_claim` takes a pending task (of the tenant with the fewest running,
//!   oldest first) with `FOR UPDATE SKIP LOCKED`, so each task is claimed by
//!   exactly one host;
//! - `add_deployment` locks the tenant row, so versions are numbered without
//!   gaps or collisions.
//!
//! Connections run at `READ COMMITTED` whatever the database's default: each
//! statement after a lock sees every transaction committed before the lock was
//! granted, which is what the lock-then-read sequences rely on.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgConnection, PgPool, Row};

use super::{
    Deployment, KeyKind, KeyRecord, KvError, KvQuota, LedgerEntry, LedgerError, Org, Storage,
    StorageError, StorageResult, TaskRecord, TenantRecord, TenantStatus, TransferRequest, Usage,
    WalletRecord, now_rfc3339,
};
use crate::logs::{LogLine, LogStream};

/// Migrations for this backend, embedded at compile time.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// PostgreSQL storage.
#[derive(Clone)]
pub struct PostgresStorage {
    pool: PgPool,
}

impl fmt::Debug for PostgresStorage {
    // The pool's options hold the connection URL's parts; print none of them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStorage")
            .field("connections", &self.pool.size())
            .field("idle", &self.pool.num_idle())
            .finish_non_exhaustive()
    }
}

const TENANT_COLUMNS: &str = "id, org_id, name, slug, status, plan, limits_override, active_version, last_error, created_at, updated_at";

impl PostgresStorage {
    /// Connects to a `postgres://` URL and migrates the database.
    ///
    /// Several hosts may open the same database: migrations take an advisory
    /// lock, so only one host applies them.
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        let options = PgConnectOptions::from_str(url)?
            // A space in a startup option is escaped with a backslash.
            .options([("default_transaction_isolation", "read\\ committed")]);
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }

    fn tenant(row: &PgRow) -> StorageResult<TenantRecord> {
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

    fn org(row: &PgRow) -> StorageResult<Org> {
        Ok(Org {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            plan: row.try_get("plan")?,
            created_at: row.try_get("created_at")?,
        })
    }

    fn deployment(row: &PgRow) -> StorageResult<Deployment> {
        Ok(Deployment {
            version: row.try_get("version")?,
            sha256: row.try_get("sha256")?,
            size: row.try_get("size")?,
            compile_ms: row.try_get("compile_ms")?,
            created_at: row.try_get("created_at")?,
        })
    }
}

/// Locks a tenant's key-value data for the rest of the transaction `tx`:
/// creates its `kv_usage` row if missing, then locks it. Every key-value write
/// of the tenant, on any host, takes this lock first.
async fn kv_lock(tx: &mut PgConnection, tenant_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO kv_usage (tenant_id, keys, bytes) VALUES ($1, 0, 0)
         ON CONFLICT (tenant_id) DO NOTHING",
    )
    .bind(tenant_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query("SELECT 1 FROM kv_usage WHERE tenant_id = $1 FOR UPDATE")
        .bind(tenant_id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Applies `changes` (`None` deletes) to one tenant's bucket inside `tx`,
/// keeping `kv_usage` exact and refusing growth past `quota`. The caller holds
/// [`kv_lock`].
async fn kv_apply(
    tx: &mut PgConnection,
    tenant_id: &str,
    bucket: &str,
    changes: &[(&str, Option<&[u8]>)],
    quota: Option<KvQuota>,
) -> Result<(), KvError> {
    let (mut keys_delta, mut bytes_delta) = (0i64, 0i64);
    for (key, value) in changes {
        let key_len = key.len() as i64;
        // The old value's length, read in the same statement as the write
        // (every part of one statement sees the same snapshot).
        let old: Option<i64> = match value {
            Some(value) => {
                sqlx::query_scalar(
                    "WITH old AS (
                        SELECT octet_length(value)::BIGINT AS len FROM kv
                        WHERE tenant_id = $1 AND bucket = $2 AND key = $3
                     ), written AS (
                        INSERT INTO kv (tenant_id, bucket, key, value) VALUES ($1, $2, $3, $4)
                        ON CONFLICT (tenant_id, bucket, key) DO UPDATE SET value = excluded.value
                     )
                     SELECT len FROM old",
                )
                .bind(tenant_id)
                .bind(bucket)
                .bind(key)
                .bind(*value)
                .fetch_optional(&mut *tx)
                .await?
            }
            None => {
                sqlx::query_scalar(
                    "DELETE FROM kv WHERE tenant_id = $1 AND bucket = $2 AND key = $3
                     RETURNING octet_length(value)::BIGINT",
                )
                .bind(tenant_id)
                .bind(bucket)
                .bind(key)
                .fetch_optional(&mut *tx)
                .await?
            }
        };
        if let Some(old_len) = old {
            keys_delta -= 1;
            bytes_delta -= key_len + old_len;
        }
        if let Some(value) = value {
            keys_delta += 1;
            bytes_delta += key_len + value.len() as i64;
        }
    }
    // The row exists: `kv_lock` created it in this transaction or before.
    let usage = sqlx::query(
        "UPDATE kv_usage SET keys = keys + $2, bytes = bytes + $3 WHERE tenant_id = $1
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

/// Locks the balance rows of `accounts` for the rest of the transaction `tx`,
/// creating missing ones at 0. Accounts are taken in sorted order, the same on
/// every host, so two transfers in opposite directions cannot deadlock.
/// Rows created here vanish with the transaction if it rolls back.
async fn ledger_lock(tx: &mut PgConnection, accounts: &[&str]) -> Result<(), sqlx::Error> {
    let mut accounts = accounts.to_vec();
    accounts.sort_unstable();
    accounts.dedup();
    for account in accounts {
        sqlx::query(
            "INSERT INTO ledger_balances (account, balance) VALUES ($1, 0)
             ON CONFLICT (account) DO NOTHING",
        )
        .bind(account)
        .execute(&mut *tx)
        .await?;
        sqlx::query("SELECT 1 FROM ledger_balances WHERE account = $1 FOR UPDATE")
            .bind(account)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// Writes one transfer: its row, two entries summing to zero, both balances.
/// The caller holds [`ledger_lock`] on `from` and `to`.
async fn post_transfer(
    tx: &mut PgConnection,
    from: &str,
    to: &str,
    amount: i64,
    memo: &str,
    idempotency_key: Option<&str>,
) -> Result<String, LedgerError> {
    let id = format!("tx_{}", uuid::Uuid::now_v7().simple());
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO ledger_transfers (id, from_account, to_account, amount, memo, idempotency_key, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING seq",
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
        sqlx::query(
            "INSERT INTO ledger_entries (transfer_seq, account, amount) VALUES ($1, $2, $3)",
        )
        .bind(seq)
        .bind(account)
        .bind(delta)
        .execute(&mut *tx)
        .await?;
        let updated =
            sqlx::query("UPDATE ledger_balances SET balance = balance + $1 WHERE account = $2")
                .bind(delta)
                .bind(account)
                .execute(&mut *tx)
                .await?;
        if updated.rows_affected() == 0 {
            // `ledger_lock` creates the row; reaching this is a bug.
            return Err(LedgerError::Storage(StorageError::Backend(
                anyhow::anyhow!("ledger account {account} has no balance row"),
            )));
        }
    }
    Ok(id)
}

fn task_row(row: &PgRow) -> StorageResult<TaskRecord> {
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

/// SQLSTATE 23505.
fn unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// PostgreSQL text cannot hold NUL characters (SQLite's can): log lines keep
/// their place with U+FFFD instead, rather than failing the whole batch.
fn without_nul(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}

#[async_trait::async_trait]
impl Storage for PostgresStorage {
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
        let row = sqlx::query("SELECT id, name, plan, created_at FROM orgs WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
        Self::org(&row)
    }

    async fn find_org_by_name(&self, name: &str) -> StorageResult<Option<Org>> {
        let row = sqlx::query(
            "SELECT id, name, plan, created_at FROM orgs WHERE name = $1 ORDER BY created_at LIMIT 1",
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
            "INSERT INTO api_keys (id, secret_hash, kind, org_id, tenant_id, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
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
            "SELECT id, secret_hash, kind, org_id, tenant_id, revoked_at FROM api_keys WHERE id = $1",
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
            "UPDATE api_keys SET revoked_at = $1 WHERE org_id = $2 AND kind = 'org' AND revoked_at IS NULL",
        )
        .bind(now_rfc3339())
        .bind(org_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn set_org_plan(&self, org_id: &str, plan: &str) -> StorageResult<()> {
        let done = sqlx::query("UPDATE orgs SET plan = $1 WHERE id = $2")
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
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
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
            "SELECT {TENANT_COLUMNS} FROM tenants WHERE (id = $1 OR slug = $1) AND deleted_at IS NULL"
        ))
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
             WHERE deleted_at IS NULL AND ($1::TEXT IS NULL OR org_id = $1)
             ORDER BY created_at, id COLLATE \"C\" LIMIT $2 OFFSET $3"
        ))
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
            "UPDATE tenants SET status = $1, last_error = $2, updated_at = $3 WHERE id = $4 AND deleted_at IS NULL",
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
        let mut tx = self.pool.begin().await?;
        let now = now_rfc3339();
        let done = sqlx::query(
            "UPDATE tenants SET status = 'destroyed', active_version = NULL, deleted_at = $1, updated_at = $1 WHERE id = $2 AND deleted_at IS NULL",
        )
        .bind(&now)
        .bind(tenant_id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StorageError::NotFound);
        }
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
        let row = sqlx::query("SELECT bytes FROM blobs WHERE sha256 = $1")
            .bind(sha256)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("bytes")?)
    }

    async fn blob_exists(&self, sha256: &str) -> StorageResult<bool> {
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM blobs WHERE sha256 = $1)")
                .bind(sha256)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn delete_blob_if_unused(&self, sha256: &str) -> StorageResult<bool> {
        let deleted = sqlx::query(
            "DELETE FROM blobs WHERE sha256 = $1 AND NOT EXISTS (SELECT 1 FROM deployments WHERE sha256 = $1)",
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

    async fn delete_deployments(
        &self,
        tenant_id: &str,
        versions: &[i64],
    ) -> StorageResult<Vec<String>> {
        let mut digests: Vec<String> = sqlx::query_scalar(
            "DELETE FROM deployments WHERE tenant_id = $1 AND version = ANY($2)
               AND version IS DISTINCT FROM (SELECT active_version FROM tenants WHERE id = $1)
             RETURNING sha256",
        )
        .bind(tenant_id)
        .bind(versions)
        .fetch_all(&self.pool)
        .await?;
        digests.sort();
        digests.dedup();
        Ok(digests)
    }

    async fn last_version(&self, tenant_id: &str) -> StorageResult<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COALESCE(MAX(version), 0)::BIGINT FROM deployments WHERE tenant_id = $1",
        )
        .bind(tenant_id)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn add_deployment(
        &self,
        tenant_id: &str,
        sha256: &str,
        wasm: &[u8],
        compile_ms: i64,
    ) -> StorageResult<Deployment> {
        let size = wasm.len() as i64;
        let mut tx = self.pool.begin().await?;
        let now = now_rfc3339();
        // Content-addressed: stored once across tenants. In the transaction
        // that references it, so pruning another tenant cannot delete it in between.
        sqlx::query(
            "INSERT INTO blobs (sha256, size, bytes, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (sha256) DO NOTHING",
        )
        .bind(sha256)
        .bind(size)
        .bind(wasm)
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        // Two hosts deploying the same tenant at once would both pick
        // MAX(version) + 1: the tenant row's lock makes them take turns. A
        // missing tenant falls through to the foreign key, as in SQLite.
        sqlx::query("SELECT 1 FROM tenants WHERE id = $1 FOR UPDATE")
            .bind(tenant_id)
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query(
            "INSERT INTO deployments (tenant_id, version, sha256, size, compile_ms, created_at)
             SELECT $1, COALESCE(MAX(version), 0) + 1, $2, $3, $4, $5 FROM deployments WHERE tenant_id = $1
             RETURNING version, sha256, size, compile_ms, created_at",
        )
        .bind(tenant_id)
        .bind(sha256)
        .bind(size)
        .bind(compile_ms)
        .bind(&now)
        .fetch_one(&mut *tx)
        .await?;
        let deployment = Self::deployment(&row)?;
        let done = sqlx::query(
            "UPDATE tenants SET active_version = $1, status = CASE WHEN status = 'stopped' THEN 'stopped' ELSE 'running' END,
             last_error = NULL, updated_at = $2 WHERE id = $3 AND deleted_at IS NULL",
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

    async fn list_deployments(&self, tenant_id: &str) -> StorageResult<Vec<Deployment>> {
        let rows = sqlx::query(
            "SELECT version, sha256, size, compile_ms, created_at FROM deployments WHERE tenant_id = $1 ORDER BY version DESC",
        )
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Self::deployment).collect()
    }

    async fn get_deployment(&self, tenant_id: &str, version: i64) -> StorageResult<Deployment> {
        let row = sqlx::query(
            "SELECT version, sha256, size, compile_ms, created_at FROM deployments WHERE tenant_id = $1 AND version = $2",
        )
        .bind(tenant_id)
        .bind(version)
        .fetch_one(&self.pool)
        .await?;
        Self::deployment(&row)
    }

    async fn set_active_version(&self, tenant_id: &str, version: i64) -> StorageResult<()> {
        let done = sqlx::query(
            "UPDATE tenants SET active_version = $1, last_error = NULL,
             status = CASE WHEN status = 'stopped' THEN 'stopped' ELSE 'running' END, updated_at = $2
             WHERE id = $3 AND deleted_at IS NULL
               AND EXISTS (SELECT 1 FROM deployments WHERE tenant_id = $3 AND version = $1)",
        )
        .bind(version)
        .bind(now_rfc3339())
        .bind(tenant_id)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StorageError::NotFound);
        }
        Ok(())
    }

    async fn set_env(&self, tenant_id: &str, vars: &[(String, String)]) -> StorageResult<()> {
        let mut tx = self.pool.begin().await?;
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
        let rows =
            sqlx::query("SELECT name, value FROM tenant_env WHERE tenant_id = $1 ORDER BY name")
                .bind(tenant_id)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("name")?, r.try_get("value")?)))
            .collect()
    }

    async fn append_logs(&self, lines: &[(String, LogLine)]) -> StorageResult<()> {
        // SQLite's INSERT OR REPLACE, in one statement: the last line of the
        // batch wins for a (tenant, seq) given twice (one INSERT … ON CONFLICT
        // may not touch a row twice).
        let mut seen = HashSet::new();
        let mut kept: Vec<&(String, LogLine)> = lines
            .iter()
            .rev()
            .filter(|(tenant_id, line)| seen.insert((tenant_id.as_str(), line.seq)))
            .collect();
        if kept.is_empty() {
            return Ok(());
        }
        kept.reverse();
        let mut tenant_ids = Vec::with_capacity(kept.len());
        let mut seqs = Vec::with_capacity(kept.len());
        let mut timestamps = Vec::with_capacity(kept.len());
        let mut request_ids = Vec::with_capacity(kept.len());
        let mut streams = Vec::with_capacity(kept.len());
        let mut messages = Vec::with_capacity(kept.len());
        for (tenant_id, line) in kept {
            tenant_ids.push(tenant_id.as_str());
            seqs.push(line.seq as i64);
            timestamps.push(line.timestamp_ms as i64);
            request_ids.push(without_nul(&line.request_id));
            streams.push(line.stream.as_str());
            messages.push(without_nul(&line.message));
        }
        sqlx::query(
            "INSERT INTO tenant_logs (tenant_id, seq, timestamp_ms, request_id, stream, message)
             SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::BIGINT[], $4::TEXT[], $5::TEXT[], $6::TEXT[])
             ON CONFLICT (tenant_id, seq) DO UPDATE SET
               timestamp_ms = excluded.timestamp_ms,
               request_id = excluded.request_id,
               stream = excluded.stream,
               message = excluded.message",
        )
        .bind(&tenant_ids)
        .bind(&seqs)
        .bind(&timestamps)
        .bind(&request_ids)
        .bind(&streams)
        .bind(&messages)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn recent_logs(&self, tenant_id: &str, limit: i64) -> StorageResult<Vec<LogLine>> {
        let rows = sqlx::query(
            "SELECT seq, timestamp_ms, request_id, stream, message FROM tenant_logs
             WHERE tenant_id = $1 ORDER BY seq DESC LIMIT $2",
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
            "DELETE FROM tenant_logs WHERE tenant_id = $1 AND (timestamp_ms < $2 OR seq <= (
                 SELECT seq FROM tenant_logs WHERE tenant_id = $1 ORDER BY seq DESC LIMIT 1 OFFSET $3))",
        )
        .bind(tenant_id)
        .bind(before_ms)
        .bind(keep)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn prune_deleted_tenants_logs(&self, before_ms: i64) -> StorageResult<u64> {
        let done = sqlx::query(
            "DELETE FROM tenant_logs WHERE timestamp_ms < $1
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
            "SELECT value FROM kv WHERE tenant_id = $1 AND bucket = $2 AND key = $3",
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
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // One query (one snapshot) for all keys, answered in the asked order.
        let rows = sqlx::query(
            "SELECT key, value FROM kv WHERE tenant_id = $1 AND bucket = $2 AND key = ANY($3::TEXT[])",
        )
        .bind(tenant_id)
        .bind(bucket)
        .bind(keys)
        .fetch_all(&self.pool)
        .await?;
        let mut found = HashMap::with_capacity(rows.len());
        for row in &rows {
            found.insert(
                row.try_get::<String, _>("key")?,
                row.try_get::<Vec<u8>, _>("value")?,
            );
        }
        Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
    }

    async fn kv_set_many(
        &self,
        tenant_id: &str,
        bucket: &str,
        entries: &[(String, Vec<u8>)],
        quota: KvQuota,
    ) -> Result<(), KvError> {
        let mut tx = self.pool.begin().await?;
        kv_lock(&mut tx, tenant_id).await?;
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
        let mut tx = self.pool.begin().await?;
        kv_lock(&mut tx, tenant_id).await?;
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
            "SELECT key FROM kv WHERE tenant_id = $1 AND bucket = $2 AND ($3::TEXT IS NULL OR key > $3)
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
        let mut tx = self.pool.begin().await?;
        kv_lock(&mut tx, tenant_id).await?;
        let old: Option<Vec<u8>> = sqlx::query_scalar(
            "SELECT value FROM kv WHERE tenant_id = $1 AND bucket = $2 AND key = $3",
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
        let mut tx = self.pool.begin().await?;
        kv_lock(&mut tx, tenant_id).await?;
        let current: Option<Vec<u8>> = sqlx::query_scalar(
            "SELECT value FROM kv WHERE tenant_id = $1 AND bucket = $2 AND key = $3",
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
            "INSERT INTO wallets (tenant_id, address, sealed_seed, nonce, created_at) VALUES ($1, $2, $3, $4, $5)
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
            sqlx::query("SELECT address, sealed_seed, nonce FROM wallets WHERE tenant_id = $1")
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
            "SELECT tenant_id FROM wallets WHERE $1::TEXT IS NULL OR tenant_id > $1 ORDER BY tenant_id LIMIT $2",
        )
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
            "UPDATE wallets SET sealed_seed = $1, nonce = $2 WHERE tenant_id = $3 AND nonce = $4",
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
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM wallets WHERE address = $1)")
                .bind(address)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn ledger_balance(&self, account: &str) -> StorageResult<i64> {
        let balance: Option<i64> =
            sqlx::query_scalar("SELECT balance FROM ledger_balances WHERE account = $1")
                .bind(account)
                .fetch_optional(&self.pool)
                .await?;
        Ok(balance.unwrap_or(0))
    }

    async fn ledger_fund(&self, to: &str, amount: i64, memo: &str) -> Result<String, LedgerError> {
        if amount <= 0 {
            return Err(LedgerError::Invalid("amount must be positive".into()));
        }
        let mut tx = self.pool.begin().await?;
        ledger_lock(&mut tx, &["mint", to]).await?;
        let id = post_transfer(&mut tx, "mint", to, amount, memo, None).await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn ledger_transfer(&self, r: &TransferRequest<'_>) -> Result<String, LedgerError> {
        let mut tx = self.pool.begin().await?;
        // Under the payer's lock, on every host: the idempotency check, the
        // daily cap and the balance see every earlier transfer of the payer.
        ledger_lock(&mut tx, &[r.from, r.to]).await?;
        let previous = sqlx::query(
            "SELECT id, to_account, amount, memo FROM ledger_transfers WHERE from_account = $1 AND idempotency_key = $2",
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
            "SELECT COALESCE(SUM(amount), 0)::BIGINT FROM ledger_transfers WHERE from_account = $1 AND created_at >= $2",
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
            "SELECT COALESCE((SELECT balance FROM ledger_balances WHERE account = $1), 0)",
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
             WHERE e.account = $1 AND ($2::BIGINT IS NULL OR t.seq < $2)
             ORDER BY t.seq DESC LIMIT $3",
        )
        .bind(account)
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
            "SELECT COALESCE(SUM(CASE WHEN account = 'mint' THEN 0 ELSE balance END), 0)::BIGINT AS held,
                    COALESCE(-SUM(CASE WHEN account = 'mint' THEN balance ELSE 0 END), 0)::BIGINT AS minted
             FROM ledger_balances",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((row.try_get("held")?, row.try_get("minted")?))
    }

    async fn meta_claim(&self, name: &str, value: &str) -> StorageResult<String> {
        sqlx::query(
            "INSERT INTO host_meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(
            sqlx::query_scalar("SELECT value FROM host_meta WHERE name = $1")
                .bind(name)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn meta_set(&self, name: &str, value: &str) -> StorageResult<()> {
        sqlx::query(
            "INSERT INTO host_meta (name, value) VALUES ($1, $2)
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
             VALUES ($1, $2, 'pending', $3, $4, $5, $5)",
        )
        .bind(&t.id)
        .bind(&t.tenant_id)
        .bind(&t.request)
        .bind(&t.webhook_url)
        .bind(&now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn task_claim(&self) -> StorageResult<Option<TaskRecord>> {
        // SKIP LOCKED: hosts claiming at once each lock a different task (or
        // none); a task is claimed once.
        let row = sqlx::query(
            r#"UPDATE convergence_tasks SET status = 'running', attempts = attempts + 1,
                 updated_at = to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
             WHERE id = (
                 SELECT p.id FROM convergence_tasks p
                 JOIN tenants t ON t.id = p.tenant_id AND t.deleted_at IS NULL
                 WHERE p.status = 'pending'
                 ORDER BY (SELECT COUNT(*) FROM convergence_tasks r
                           WHERE r.tenant_id = p.tenant_id AND r.status = 'running'),
                          p.created_at, p.id
                 LIMIT 1
                 FOR UPDATE OF p SKIP LOCKED
             )
               AND status = 'pending'
             RETURNING id, tenant_id, status, request, outcome, error, webhook_url, attempts"#,
        )
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(task_row).transpose()
    }

    async fn task_count_active(&self, tenant_id: &str) -> StorageResult<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM convergence_tasks WHERE tenant_id = $1 AND status IN ('pending', 'running')",
        )
        .bind(tenant_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(n.max(0) as u64)
    }

    async fn task_cancel_pending(&self, tenant_id: &str, error: &str) -> StorageResult<u64> {
        let done = sqlx::query(
            "UPDATE convergence_tasks SET status = 'failed', error = $1, updated_at = $2
             WHERE tenant_id = $3 AND status = 'pending'",
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
            "UPDATE convergence_tasks SET status = $1, outcome = $2, error = $3, updated_at = $4
             WHERE id = $5 AND attempts = $6 AND status = 'running'",
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
            r#"UPDATE convergence_tasks SET updated_at = to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
             WHERE id = $1 AND attempts = $2 AND status = 'running'"#,
        )
        .bind(id)
        .bind(attempt)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn task_webhook(&self, id: &str, status: &str) -> StorageResult<()> {
        sqlx::query("UPDATE convergence_tasks SET webhook_status = $1 WHERE id = $2")
            .bind(status)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn task_get(&self, tenant_id: &str, id: &str) -> StorageResult<Option<TaskRecord>> {
        let row = sqlx::query(
            "SELECT id, tenant_id, status, request, outcome, error, webhook_url, attempts FROM convergence_tasks
             WHERE id = $1 AND tenant_id = $2",
        )
        .bind(id)
        .bind(tenant_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(task_row).transpose()
    }

    async fn task_requeue_running(&self, lease: Option<Duration>) -> StorageResult<u64> {
        // The database's clock: hosts whose clocks disagree still agree on leases.
        let lease = lease.map_or(-1.0, |l| l.as_secs_f64());
        let done = sqlx::query(
            r#"UPDATE convergence_tasks SET status = 'pending', updated_at = to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
             WHERE status = 'running'
               AND updated_at < to_char((clock_timestamp() - make_interval(secs => $1)) AT TIME ZONE 'UTC',
                                        'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"#,
        )
        .bind(lease)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn add_usage(&self, tenant_id: &str, hour: &str, d: &Usage) -> StorageResult<()> {
        sqlx::query(&format!(
            "INSERT INTO usage_hourly AS u (tenant_id, hour, {USAGE_COLUMNS})
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
             ON CONFLICT (tenant_id, hour) DO UPDATE SET
               requests = u.requests + excluded.requests,
               failures = u.failures + excluded.failures,
               status_2xx = u.status_2xx + excluded.status_2xx,
               status_3xx = u.status_3xx + excluded.status_3xx,
               status_4xx = u.status_4xx + excluded.status_4xx,
               status_5xx = u.status_5xx + excluded.status_5xx,
               fuel = u.fuel + excluded.fuel,
               wall_ms = u.wall_ms + excluded.wall_ms,
               peak_memory_bytes = GREATEST(u.peak_memory_bytes, excluded.peak_memory_bytes),
               bytes_in = u.bytes_in + excluded.bytes_in,
               bytes_out = u.bytes_out + excluded.bytes_out,
               outbound_requests = u.outbound_requests + excluded.outbound_requests,
               tokens = u.tokens + excluded.tokens,
               kv_ops = u.kv_ops + excluded.kv_ops,
               wallet_txs = u.wallet_txs + excluded.wallet_txs"
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
             WHERE tenant_id = $1 AND hour >= $2 AND hour <= $3 ORDER BY hour"
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
        // SUM of BIGINT is NUMERIC in PostgreSQL: cast back.
        let rows = sqlx::query(
            "SELECT t.id AS tenant_id, t.slug AS slug,
               COALESCE(SUM(u.requests), 0)::BIGINT AS requests, COALESCE(SUM(u.failures), 0)::BIGINT AS failures,
               COALESCE(SUM(u.status_2xx), 0)::BIGINT AS status_2xx, COALESCE(SUM(u.status_3xx), 0)::BIGINT AS status_3xx,
               COALESCE(SUM(u.status_4xx), 0)::BIGINT AS status_4xx, COALESCE(SUM(u.status_5xx), 0)::BIGINT AS status_5xx,
               COALESCE(SUM(u.fuel), 0)::BIGINT AS fuel, COALESCE(SUM(u.wall_ms), 0)::BIGINT AS wall_ms,
               COALESCE(MAX(u.peak_memory_bytes), 0)::BIGINT AS peak_memory_bytes,
               COALESCE(SUM(u.bytes_in), 0)::BIGINT AS bytes_in, COALESCE(SUM(u.bytes_out), 0)::BIGINT AS bytes_out,
               COALESCE(SUM(u.outbound_requests), 0)::BIGINT AS outbound_requests,
               COALESCE(SUM(u.tokens), 0)::BIGINT AS tokens, COALESCE(SUM(u.kv_ops), 0)::BIGINT AS kv_ops,
               COALESCE(SUM(u.wallet_txs), 0)::BIGINT AS wallet_txs
             FROM tenants t
             LEFT JOIN usage_hourly u ON u.tenant_id = t.id AND u.hour >= $1 AND u.hour <= $2
             WHERE t.org_id = $3
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
            "UPDATE tenants SET plan = $1, limits_override = $2, updated_at = $3
             WHERE id = $4 AND deleted_at IS NULL",
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

fn usage_row(r: &PgRow) -> StorageResult<Usage> {
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

#[cfg(test)]
mod tests {
    //! Runs against a real database: ignored unless asked for with
    //! `--include-ignored`, with `LODGE_TEST_DATABASE_URL` set (e.g.
    //! `postgres://postgres@127.0.0.1:5432/lodge_scratch`); CI does both.

    use std::sync::Arc;

    use anyhow::{Context, ensure};

    use super::*;

    fn unique(prefix: &str) -> String {
        format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
    }

    fn tenant(org_id: &str, slug: &str) -> TenantRecord {
        let now = now_rfc3339();
        TenantRecord {
            id: unique("ten"),
            org_id: org_id.to_owned(),
            name: slug.to_owned(),
            slug: slug.to_owned(),
            status: TenantStatus::Provisioning,
            plan: "free".to_owned(),
            limits: Default::default(),
            active_version: None,
            last_error: None,
            created_at: now.clone(),
            updated_at: now,
        }
    }

    fn line(seq: u64, message: &str) -> LogLine {
        LogLine {
            seq,
            timestamp_ms: 1_000 + seq,
            request_id: "req".to_owned(),
            stream: LogStream::Stdout,
            message: message.to_owned(),
        }
    }

    fn transfer<'a>(from: &'a str, to: &'a str, amount: i64, key: &'a str) -> TransferRequest<'a> {
        TransferRequest {
            from,
            to,
            amount,
            memo: "m",
            idempotency_key: key,
            max_per_transfer: 1_000,
            max_per_day: 10_000,
        }
    }

    const QUOTA: KvQuota = KvQuota {
        max_keys: 1_000,
        max_bytes: 1 << 20,
    };

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "needs PostgreSQL: set LODGE_TEST_DATABASE_URL and pass --include-ignored"]
    async fn postgres_storage_end_to_end() -> anyhow::Result<()> {
        let url = std::env::var("LODGE_TEST_DATABASE_URL")
            .context("this test needs PostgreSQL: set LODGE_TEST_DATABASE_URL (CI does)")?;
        let storage = Arc::new(PostgresStorage::open(&url).await?);
        // Opening again (a second host) finds the schema migrated.
        let _second = PostgresStorage::open(&url).await?;
        ensure!(!format!("{storage:?}").contains("postgres://"));

        // Organizations, tenants, keys.
        let org = Org {
            id: unique("org"),
            name: unique("name"),
            plan: "free".to_owned(),
            created_at: now_rfc3339(),
        };
        storage.create_org(&org).await?;
        ensure!(storage.get_org(&org.id).await?.name == org.name);
        ensure!(storage.find_org_by_name(&org.name).await?.map(|o| o.id) == Some(org.id.clone()));
        ensure!(matches!(
            storage.get_org("org_missing").await,
            Err(StorageError::NotFound)
        ));

        let slug = unique("slug");
        let t = tenant(&org.id, &slug);
        storage.create_tenant(&t).await?;
        let duplicate = storage.create_tenant(&tenant(&org.id, &slug)).await;
        ensure!(
            matches!(duplicate, Err(StorageError::Conflict(_))),
            "duplicate slug: {duplicate:?}"
        );
        ensure!(storage.get_tenant(&slug).await?.id == t.id);
        ensure!(storage.get_tenant(&t.id).await?.slug == slug);
        let t2 = tenant(&org.id, &unique("slug"));
        storage.create_tenant(&t2).await?;
        let listed = storage.list_tenants(Some(&org.id), 10, 0).await?;
        ensure!(
            listed.iter().map(|t| t.id.as_str()).collect::<Vec<_>>()
                == [t.id.as_str(), t2.id.as_str()]
        );
        ensure!(storage.list_tenants(Some(&org.id), 10, 1).await?.len() == 1);
        ensure!(storage.list_tenants(None, 1_000_000, 0).await?.len() >= 2);
        storage
            .set_status(&t.id, TenantStatus::Error, Some("boom"))
            .await?;
        ensure!(storage.get_tenant(&t.id).await?.last_error.as_deref() == Some("boom"));
        ensure!(matches!(
            storage
                .set_status("ten_missing", TenantStatus::Running, None)
                .await,
            Err(StorageError::NotFound)
        ));

        let key = KeyRecord {
            id: unique("key"),
            secret_hash: "hash".to_owned(),
            kind: KeyKind::Tenant,
            org_id: org.id.clone(),
            tenant_id: Some(t.id.clone()),
            revoked: false,
        };
        storage.insert_key(&key).await?;
        let got = storage.get_key(&key.id).await?.context("key")?;
        ensure!(got.kind == KeyKind::Tenant && !got.revoked);
        storage.revoke_tenant_keys(&t.id).await?;
        ensure!(storage.get_key(&key.id).await?.context("key")?.revoked);
        ensure!(storage.get_key("key_missing").await?.is_none());

        // Blobs and deployments.
        let sha = unique("sha");
        ensure!(!storage.blob_exists(&sha).await?);
        ensure!(matches!(
            storage.get_blob("missing").await,
            Err(StorageError::NotFound)
        ));
        let v1 = storage.add_deployment(&t.id, &sha, b"component", 5).await?;
        let v2 = storage.add_deployment(&t.id, &sha, b"component", 6).await?;
        ensure!(storage.get_blob(&sha).await? == b"component");
        ensure!(v1.size == 9);
        ensure!(v1.version == 1 && v2.version == 2);
        let record = storage.get_tenant(&t.id).await?;
        ensure!(record.active_version == Some(2) && record.status == TenantStatus::Running);
        ensure!(record.last_error.is_none());
        let versions: Vec<i64> = storage
            .list_deployments(&t.id)
            .await?
            .iter()
            .map(|d| d.version)
            .collect();
        ensure!(versions == [2, 1]);
        ensure!(storage.get_deployment(&t.id, 1).await?.compile_ms == 5);
        storage.set_active_version(&t.id, 1).await?;
        ensure!(storage.get_tenant(&t.id).await?.active_version == Some(1));
        ensure!(matches!(
            storage.set_active_version(&t.id, 99).await,
            Err(StorageError::NotFound)
        ));
        // Pruning never takes the active version; a blob goes with its last version.
        let other = unique("sha");
        let v3 = storage.add_deployment(&t.id, &other, b"other", 1).await?;
        storage.set_active_version(&t.id, v3.version).await?;
        ensure!(
            storage
                .delete_deployments(&t.id, &[v3.version])
                .await?
                .is_empty()
        );
        ensure!(storage.delete_deployments(&t.id, &[1, 2]).await? == std::slice::from_ref(&sha));
        ensure!(storage.last_version(&t.id).await? == 3);
        ensure!(
            !storage.delete_blob_if_unused(&other).await?,
            "in use by v3"
        );
        // Concurrent deploys of one tenant get distinct versions.
        let deploys = (0..5).map(|_| {
            let storage = storage.clone();
            let (id, sha) = (t2.id.clone(), sha.clone());
            tokio::spawn(async move { storage.add_deployment(&id, &sha, b"component", 1).await })
        });
        let mut numbers = Vec::new();
        for d in deploys {
            numbers.push(d.await??.version);
        }
        numbers.sort_unstable();
        ensure!(numbers == [1, 2, 3, 4, 5], "versions {numbers:?}");

        // Environment.
        storage
            .set_env(&t.id, &[("B".into(), "2".into()), ("A".into(), "1".into())])
            .await?;
        storage
            .set_env(
                &t.id,
                &[("Z".into(), "26".into()), ("A".into(), "1".into())],
            )
            .await?;
        ensure!(
            storage.get_env(&t.id).await? == [("A".into(), "1".into()), ("Z".into(), "26".into())]
        );

        // Logs: a seq given again replaces the line; NUL survives as U+FFFD.
        storage
            .append_logs(&[
                (t.id.clone(), line(1, "one")),
                (t.id.clone(), line(2, "two")),
                (t.id.clone(), line(3, "three")),
                (t.id.clone(), line(3, "three\0again")),
            ])
            .await?;
        storage
            .append_logs(&[(t.id.clone(), line(2, "TWO"))])
            .await?;
        storage.append_logs(&[]).await?;
        let recent: Vec<String> = storage
            .recent_logs(&t.id, 2)
            .await?
            .into_iter()
            .map(|l| l.message)
            .collect();
        ensure!(recent == ["TWO", "three\u{FFFD}again"], "logs {recent:?}");

        // Key-value.
        storage
            .kv_set_many(
                &t.id,
                "b",
                &[("k1".into(), b"v1".to_vec()), ("k2".into(), b"v2".to_vec())],
                QUOTA,
            )
            .await?;
        ensure!(storage.kv_get(&t.id, "b", "k1").await? == Some(b"v1".to_vec()));
        let many = storage
            .kv_get_many(&t.id, "b", &["k2".into(), "nope".into(), "k1".into()])
            .await?;
        ensure!(many == [Some(b"v2".to_vec()), None, Some(b"v1".to_vec())]);
        let (page, next) = storage.kv_list(&t.id, "b", None, 1).await?;
        ensure!(page == ["k1"] && next.as_deref() == Some("k1"));
        let (page, next) = storage.kv_list(&t.id, "b", Some("k1"), 5).await?;
        ensure!(page == ["k2"] && next.is_none());

        let increments = (0..50).map(|_| {
            let storage = storage.clone();
            let id = t.id.clone();
            tokio::spawn(async move { storage.kv_increment(&id, "b", "counter", 1, QUOTA).await })
        });
        for i in increments {
            i.await??;
        }
        ensure!(storage.kv_get(&t.id, "b", "counter").await? == Some(b"50".to_vec()));
        ensure!(matches!(
            storage.kv_increment(&t.id, "b", "k1", 1, QUOTA).await,
            Err(KvError::NotAnInteger(_))
        ));
        storage
            .kv_set_many(
                &t.id,
                "b",
                &[("max".into(), i64::MAX.to_string().into_bytes())],
                QUOTA,
            )
            .await?;
        ensure!(matches!(
            storage.kv_increment(&t.id, "b", "max", 1, QUOTA).await,
            Err(KvError::Overflow)
        ));
        ensure!(
            !storage
                .kv_compare_and_swap(&t.id, "b", "k1", Some(b"x"), b"y", QUOTA)
                .await?
        );
        ensure!(
            storage
                .kv_compare_and_swap(&t.id, "b", "k1", Some(b"v1"), b"y", QUOTA)
                .await?
        );
        ensure!(
            storage
                .kv_compare_and_swap(&t.id, "b", "fresh", None, b"f", QUOTA)
                .await?
        );
        ensure!(
            !storage
                .kv_compare_and_swap(&t.id, "b", "fresh", None, b"g", QUOTA)
                .await?
        );
        ensure!(storage.kv_get(&t.id, "b", "k1").await? == Some(b"y".to_vec()));

        // Usage is exact: keys k1 k2 counter max fresh.
        let usage_row = |storage: Arc<PostgresStorage>, id: String| async move {
            let row = sqlx::query("SELECT keys, bytes FROM kv_usage WHERE tenant_id = $1")
                .bind(id)
                .fetch_one(&storage.pool)
                .await?;
            anyhow::Ok((
                row.try_get::<i64, _>("keys")?,
                row.try_get::<i64, _>("bytes")?,
            ))
        };
        let expected_bytes = (2 + 1) + (2 + 2) + (7 + 2) + (3 + 19) + (5 + 1);
        ensure!(usage_row(storage.clone(), t.id.clone()).await? == (5, expected_bytes));

        // Quota: a sixth key is refused at five, and nothing of the batch is written.
        let tight = KvQuota {
            max_keys: 5,
            max_bytes: 1 << 20,
        };
        let refused = storage
            .kv_set_many(
                &t.id,
                "b",
                &[("k1".into(), b"z".to_vec()), ("k6".into(), b"6".to_vec())],
                tight,
            )
            .await;
        ensure!(
            matches!(refused, Err(KvError::QuotaExceeded(_))),
            "{refused:?}"
        );
        ensure!(storage.kv_get(&t.id, "b", "k1").await? == Some(b"y".to_vec()));
        ensure!(storage.kv_get(&t.id, "b", "k6").await?.is_none());
        let small = KvQuota {
            max_keys: 100,
            max_bytes: 10,
        };
        ensure!(matches!(
            storage
                .kv_set_many(&t.id, "b", &[("k1".into(), vec![0; 100])], small)
                .await,
            Err(KvError::QuotaExceeded(_))
        ));
        // Shrinking is always allowed, even over quota.
        storage
            .kv_set_many(&t.id, "b", &[("k1".into(), Vec::new())], small)
            .await?;
        storage
            .kv_delete_many(&t.id, "b", &["k1".into(), "k2".into(), "absent".into()])
            .await?;
        ensure!(usage_row(storage.clone(), t.id.clone()).await? == (3, expected_bytes - 3 - 4));
        ensure!(storage.kv_get(&t.id, "b", "k2").await?.is_none());
        // Buckets and tenants are separate.
        ensure!(storage.kv_get(&t.id, "other", "counter").await?.is_none());
        ensure!(storage.kv_get(&t2.id, "b", "counter").await?.is_none());

        // Wallets and the ledger.
        let wallet = |address: &str| WalletRecord {
            address: address.to_owned(),
            sealed_seed: vec![1, 2, 3],
            nonce: vec![4, 5],
        };
        let (a, b) = (unique("lodge1a"), unique("lodge1b"));
        ensure!(storage.wallet_create(&t.id, &wallet(&a)).await?.address == a);
        ensure!(
            storage
                .wallet_create(&t.id, &wallet("lodge1other"))
                .await?
                .address
                == a
        );
        storage.wallet_create(&t2.id, &wallet(&b)).await?;
        ensure!(
            storage
                .wallet_get(&t.id)
                .await?
                .context("wallet")?
                .sealed_seed
                == [1, 2, 3]
        );
        ensure!(storage.wallet_exists(&a).await? && !storage.wallet_exists("lodge1none").await?);
        ensure!(matches!(
            storage.ledger_fund(&a, 0, "x").await,
            Err(LedgerError::Invalid(_))
        ));
        let (_, minted_before) = storage.ledger_totals().await?;
        storage.ledger_fund(&a, 100, "grant").await?;
        ensure!(storage.ledger_balance(&a).await? == 100);
        let first = storage.ledger_transfer(&transfer(&a, &b, 30, "k1")).await?;
        ensure!(storage.ledger_transfer(&transfer(&a, &b, 30, "k1")).await? == first);
        ensure!(matches!(
            storage.ledger_transfer(&transfer(&a, &b, 31, "k1")).await,
            Err(LedgerError::Invalid(_))
        ));
        ensure!(matches!(
            storage.ledger_transfer(&transfer(&a, &b, 71, "k2")).await,
            Err(LedgerError::InsufficientFunds { balance: 70 })
        ));
        storage.ledger_transfer(&transfer(&b, &a, 1, "k1")).await?;
        let mut capped = transfer(&a, &b, 5, "k3");
        capped.max_per_transfer = 4;
        ensure!(matches!(
            storage.ledger_transfer(&capped).await,
            Err(LedgerError::Limit(_))
        ));
        capped.max_per_transfer = 1_000;
        capped.max_per_day = 34;
        ensure!(matches!(
            storage.ledger_transfer(&capped).await,
            Err(LedgerError::Limit(_))
        ));
        ensure!(storage.ledger_balance(&a).await? == 71 && storage.ledger_balance(&b).await? == 29);

        // Concurrent transfers both ways, and the same key raced: no deadlock,
        // no overdraft, one transfer per key.
        let mut handles = Vec::new();
        for i in 0..20 {
            let storage = storage.clone();
            let (from, to) = if i % 2 == 0 {
                (a.clone(), b.clone())
            } else {
                (b.clone(), a.clone())
            };
            // Keys race0..race4, each sent twice by each side.
            let key = format!("race{}", i / 4);
            handles.push(tokio::spawn(async move {
                let done = storage
                    .ledger_transfer(&transfer(&from, &to, 10, &key))
                    .await;
                (from, key, done)
            }));
        }
        let mut ids: HashMap<(String, String), String> = HashMap::new();
        for h in handles {
            let (from, key, done) = h.await?;
            match done {
                Ok(id) => {
                    if let Some(earlier) = ids.insert((from, key), id.clone()) {
                        ensure!(earlier == id, "a replay made a second transfer");
                    }
                }
                Err(LedgerError::InsufficientFunds { .. }) => {}
                Err(e) => anyhow::bail!("unexpected transfer error: {e:?}"),
            }
        }
        let (held, minted) = storage.ledger_totals().await?;
        ensure!(
            held == minted && minted == minted_before + 100,
            "held {held} minted {minted}"
        );
        ensure!(storage.ledger_balance(&a).await? + storage.ledger_balance(&b).await? == 100);
        let a_history = storage.ledger_history(&a, None, 1_000).await?;
        ensure!(a_history.last().map(|e| e.kind.as_str()) == Some("funding"));
        let balance_from_history: i64 = a_history.iter().map(|e| e.amount).sum();
        ensure!(balance_from_history == storage.ledger_balance(&a).await?);
        let newest = a_history.first().context("history")?.seq;
        let older = storage.ledger_history(&a, Some(newest), 1).await?;
        ensure!(older.len() == 1 && older[0].seq < newest);
        let transfers_per_key: Vec<i64> = sqlx::query_scalar(
            "SELECT COUNT(*) FROM ledger_transfers WHERE from_account IN ($1, $2)
             AND idempotency_key LIKE 'race%' GROUP BY from_account, idempotency_key",
        )
        .bind(&a)
        .bind(&b)
        .fetch_all(&storage.pool)
        .await?;
        ensure!(transfers_per_key.iter().all(|n| *n == 1));

        // Tasks: one claim wins; only claims older than the lease cut-off are requeued.
        storage.task_requeue_running(None).await?;
        while storage.task_claim().await?.is_some() {}
        let task = TaskRecord {
            id: unique("task"),
            tenant_id: t.id.clone(),
            status: "pending".to_owned(),
            request: "{}".to_owned(),
            outcome: None,
            error: None,
            webhook_url: Some("http://hook".to_owned()),
            attempts: 0,
        };
        storage.task_insert(&task).await?;
        let claims: Vec<_> = (0..2)
            .map(|_| {
                let storage = storage.clone();
                tokio::spawn(async move { storage.task_claim().await })
            })
            .collect();
        let mut won = Vec::new();
        for c in claims {
            if let Some(task) = c.await?? {
                won.push(task);
            }
        }
        ensure!(won.len() == 1 && won[0].id == task.id && won[0].status == "running");
        ensure!(
            storage
                .task_requeue_running(Some(Duration::from_secs(3600)))
                .await?
                == 0
        );
        ensure!(storage.task_requeue_running(None).await? == 1);
        let again = storage.task_claim().await?.context("claimed again")?;
        ensure!(again.id == task.id && again.attempts == won[0].attempts + 1);
        // The first claim lost the task: its heartbeat and its result are refused.
        ensure!(!storage.task_heartbeat(&task.id, won[0].attempts).await?);
        ensure!(
            !storage
                .task_finish(&task.id, won[0].attempts, Ok("{\"stale\":true}"))
                .await?
        );
        ensure!(storage.task_heartbeat(&task.id, again.attempts).await?);
        ensure!(
            storage
                .task_finish(&task.id, again.attempts, Ok("{\"ok\":true}"))
                .await?
        );
        ensure!(
            !storage
                .task_finish(&task.id, again.attempts, Err("twice"))
                .await?
        );
        storage.task_webhook(&task.id, "delivered").await?;
        let done = storage.task_get(&t.id, &task.id).await?.context("task")?;
        ensure!(done.status == "done" && done.outcome.as_deref() == Some("{\"ok\":true}"));
        ensure!(storage.task_get(&t2.id, &task.id).await?.is_none());

        // Usage.
        let delta = Usage {
            requests: 2,
            fuel: 10,
            peak_memory_bytes: 100,
            ..Usage::default()
        };
        storage.add_usage(&t.id, "2024-01-01T05", &delta).await?;
        storage
            .add_usage(
                &t.id,
                "2024-01-01T05",
                &Usage {
                    peak_memory_bytes: 50,
                    ..delta
                },
            )
            .await?;
        storage.add_usage(&t.id, "2024-01-02T00", &delta).await?;
        storage.add_usage(&t2.id, "2024-01-01T07", &delta).await?;
        let hours = storage
            .usage(&t.id, "2024-01-01T00", "2024-01-01T23")
            .await?;
        ensure!(hours.len() == 1 && hours[0].0 == "2024-01-01T05");
        ensure!(
            hours[0].1.requests == 4
                && hours[0].1.fuel == 20
                && hours[0].1.peak_memory_bytes == 100
        );
        let rollup = storage
            .org_usage(&org.id, "2024-01-01T00", "2024-01-02T23")
            .await?;
        ensure!(rollup.len() == 2 && rollup[0].0 == t.id && rollup[1].0 == t2.id);
        ensure!(rollup[0].2.requests == 6 && rollup[1].2.requests == 2);

        // Limits.
        let patch = crate::plans::LimitsPatch {
            fuel: Some(42),
            ..Default::default()
        };
        storage.set_tenant_limits(&t.id, "pro", &patch).await?;
        let record = storage.get_tenant(&t.id).await?;
        ensure!(record.plan == "pro" && record.limits == patch);
        ensure!(matches!(
            storage
                .set_tenant_limits("ten_missing", "pro", &patch)
                .await,
            Err(StorageError::NotFound)
        ));

        // Delete frees the slug.
        storage.delete_tenant(&t.id).await?;
        ensure!(matches!(
            storage.get_tenant(&slug).await,
            Err(StorageError::NotFound)
        ));
        ensure!(matches!(
            storage.delete_tenant(&t.id).await,
            Err(StorageError::NotFound)
        ));
        storage.create_tenant(&tenant(&org.id, &slug)).await?;
        Ok(())
    }
}
