//! Asynchronous convergence tasks: queued, claimed by one host's worker under
//! a lease, finished once.

use std::time::Duration;

use super::{SqlStorage, StorageResult, now_rfc3339};

/// A queued or finished convergence task.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TaskRecord {
    /// `task_…`
    pub id: String,
    /// Owner.
    pub tenant_id: String,
    /// `pending`, `running`, `done` or `failed`.
    pub status: String,
    /// JSON of the request.
    pub request: String,
    /// JSON of the outcome, when done.
    pub outcome: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// Where to post the result.
    pub webhook_url: Option<String>,
    /// How many times it was claimed; a claim is identified by (id, attempts).
    pub attempts: i64,
}

/// A task as a list of them reads it: its state and times, and its request
/// and outcome as stored (the list keeps a summary of them).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TaskEntry {
    /// `task_…`
    pub id: String,
    /// `pending`, `running`, `done` or `failed`.
    pub status: String,
    /// JSON of the request.
    pub request: String,
    /// JSON of the outcome, when done.
    pub outcome: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// How the webhook delivery went, once tried.
    pub webhook_status: Option<String>,
    /// RFC 3339: when it was queued.
    pub created_at: String,
    /// RFC 3339: its last change (claimed, lease renewed, finished).
    pub updated_at: String,
}

/// Convergence tasks.
#[async_trait::async_trait]
pub trait TaskStore: Send + Sync + std::fmt::Debug {
    /// Queues a task.
    async fn task_insert(&self, task: &TaskRecord) -> StorageResult<()>;
    /// Claims a pending task (now `running`), fairly across tenants: of the
    /// live tenants with tasks waiting, the one with the fewest running, oldest
    /// task first.
    async fn task_claim(&self) -> StorageResult<Option<TaskRecord>>;
    /// A tenant's tasks waiting or running.
    async fn task_count_active(&self, tenant_id: &str) -> StorageResult<u64>;
    /// Fails every waiting task of a tenant with `error`; returns how many.
    async fn task_cancel_pending(&self, tenant_id: &str, error: &str) -> StorageResult<u64>;
    /// Records the end of claim `attempt` of a task: an outcome (JSON) or an
    /// error. Returns false, storing nothing, when that claim no longer holds
    /// the task (it was requeued and claimed again, or already finished).
    async fn task_finish(
        &self,
        id: &str,
        attempt: i64,
        outcome: Result<&str, &str>,
    ) -> StorageResult<bool>;
    /// Renews claim `attempt`'s lease on a running task; false when the claim
    /// no longer holds it.
    async fn task_heartbeat(&self, id: &str, attempt: i64) -> StorageResult<bool>;
    /// Records how the webhook delivery went.
    async fn task_webhook(&self, id: &str, status: &str) -> StorageResult<()>;
    /// One of a tenant's tasks.
    async fn task_get(&self, tenant_id: &str, id: &str) -> StorageResult<Option<TaskRecord>>;
    /// A tenant's tasks, newest first.
    async fn task_list(
        &self,
        tenant_id: &str,
        limit: i64,
        offset: i64,
    ) -> StorageResult<Vec<TaskEntry>>;
    /// Puts tasks `running` whose lease was last renewed (claimed, or renewed by
    /// [`TaskStore::task_heartbeat`]) longer than `lease` ago — by the database's
    /// clock, so hosts' clocks do not matter — back to `pending`: ones left by a
    /// stopped host. `None`: every running task (one host that just started).
    /// Returns how many.
    async fn task_requeue_running(&self, lease: Option<Duration>) -> StorageResult<u64>;
}

const TASK_COLUMNS: &str = "id, tenant_id, status, request, outcome, error, webhook_url, attempts";

#[async_trait::async_trait]
impl TaskStore for SqlStorage {
    async fn task_insert(&self, t: &TaskRecord) -> StorageResult<()> {
        sqlx::query(
            "INSERT INTO convergence_tasks (id, tenant_id, status, request, webhook_url, created_at, updated_at)
             VALUES ($1, $2, 'pending', $3, $4, $5, $5)",
        )
        .bind(&t.id)
        .bind(&t.tenant_id)
        .bind(&t.request)
        .bind(&t.webhook_url)
        .bind(now_rfc3339())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn task_claim(&self) -> StorageResult<Option<TaskRecord>> {
        // Fair across tenants: the live tenant with the fewest tasks running
        // goes first, its oldest task first.
        Ok(sqlx::query_as(&format!(
            "UPDATE convergence_tasks SET status = 'running', attempts = attempts + 1, updated_at = {now}
             WHERE id = (
                 SELECT p.id FROM convergence_tasks p
                 JOIN tenants t ON t.id = p.tenant_id AND t.deleted_at IS NULL
                 WHERE p.status = 'pending'
                 ORDER BY (SELECT COUNT(*) FROM convergence_tasks r
                           WHERE r.tenant_id = p.tenant_id AND r.status = 'running'),
                          p.created_at, p.id
                 LIMIT 1{skip_locked})
               AND status = 'pending'
             RETURNING {TASK_COLUMNS}",
            now = self.dialect.now(),
            skip_locked = self.dialect.skip_locked(),
        ))
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn task_count_active(&self, tenant_id: &str) -> StorageResult<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM convergence_tasks
             WHERE tenant_id = $1 AND status IN ('pending', 'running')",
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
        let done = sqlx::query(&format!(
            "UPDATE convergence_tasks SET updated_at = {}
             WHERE id = $1 AND attempts = $2 AND status = 'running'",
            self.dialect.now()
        ))
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
        Ok(sqlx::query_as(&format!(
            "SELECT {TASK_COLUMNS} FROM convergence_tasks WHERE id = $1 AND tenant_id = $2"
        ))
        .bind(id)
        .bind(tenant_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn task_list(
        &self,
        tenant_id: &str,
        limit: i64,
        offset: i64,
    ) -> StorageResult<Vec<TaskEntry>> {
        // `convergence_tasks_tenant_created`, read backwards (ids are `COLLATE "C"`
        // in PostgreSQL, so both databases order them byte by byte).
        Ok(sqlx::query_as(
            "SELECT id, status, request, outcome, error, webhook_status, created_at, updated_at
             FROM convergence_tasks WHERE tenant_id = $1
             ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3",
        )
        .bind(tenant_id)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn task_requeue_running(&self, lease: Option<Duration>) -> StorageResult<u64> {
        // None: anything renewed before a second from now.
        let lease = lease.map_or(-1.0, |l| l.as_secs_f64());
        let done = sqlx::query(&format!(
            "UPDATE convergence_tasks SET status = 'pending', updated_at = {}
             WHERE status = 'running' AND updated_at < {}",
            self.dialect.now(),
            self.dialect.now_minus_seconds(1),
        ))
        .bind(lease)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
