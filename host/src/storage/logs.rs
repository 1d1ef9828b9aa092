//! The archive of tenants' log lines (the live tail is in memory, `crate::logs`).

use std::collections::HashSet;

use super::dialect::{Dialect, placeholders};
use super::{SqlStorage, StorageResult};
use crate::logs::{LogLine, LogStream};

/// Log lines one `INSERT` carries at most (six parameters each).
const LINES_PER_INSERT: usize = 128;

/// Archived log lines.
#[async_trait::async_trait]
pub trait LogStore: Send + Sync + std::fmt::Debug {
    /// Archives log lines; a (tenant, seq) archived again is replaced.
    async fn append_logs(&self, lines: &[(&str, &LogLine)]) -> StorageResult<()>;
    /// The newest `limit` archived lines of a tenant, oldest first.
    async fn recent_logs(&self, tenant_id: &str, limit: i64) -> StorageResult<Vec<LogLine>>;
    /// The `seq` of the newest archived line of each of `tenant_ids` that has lines.
    async fn last_log_seqs(&self, tenant_ids: &[String]) -> StorageResult<Vec<(String, i64)>>;
    /// Deletes a tenant's archived lines older than `before_ms` or older than
    /// its newest `keep` lines; returns how many.
    async fn prune_logs(&self, tenant_id: &str, before_ms: i64, keep: i64) -> StorageResult<u64>;
    /// Deletes the archived lines of deleted tenants older than `before_ms`.
    async fn prune_deleted_tenants_logs(&self, before_ms: i64) -> StorageResult<u64>;
}

/// A line as stored.
#[derive(sqlx::FromRow)]
struct LineRow {
    seq: i64,
    timestamp_ms: i64,
    request_id: String,
    stream: String,
    message: String,
}

impl From<LineRow> for LogLine {
    fn from(row: LineRow) -> Self {
        Self {
            seq: row.seq as u64,
            timestamp_ms: row.timestamp_ms as u64,
            request_id: row.request_id,
            stream: LogStream::parse(&row.stream),
            message: row.message,
        }
    }
}

#[async_trait::async_trait]
impl LogStore for SqlStorage {
    async fn append_logs(&self, lines: &[(&str, &LogLine)]) -> StorageResult<()> {
        // The last line of the batch wins for a (tenant, seq) given twice (one
        // INSERT … ON CONFLICT may not touch a row twice).
        let mut seen = HashSet::with_capacity(lines.len());
        let mut kept: Vec<&(&str, &LogLine)> = lines
            .iter()
            .rev()
            .filter(|(tenant_id, line)| seen.insert((*tenant_id, line.seq)))
            .collect();
        if kept.is_empty() {
            return Ok(());
        }
        kept.reverse();
        let mut tx = self.begin_write().await?;
        let mut rest = &kept[..];
        while !rest.is_empty() {
            // Full statements, then the rest in powers of two: a handful of
            // statement texts, each prepared once per connection, whatever
            // the batches' sizes.
            let rows = match rest.len() {
                n if n >= LINES_PER_INSERT => LINES_PER_INSERT,
                n => 1 << n.ilog2(),
            };
            let (chunk, tail) = rest.split_at(rows);
            rest = tail;
            let sql = format!(
                "INSERT INTO tenant_logs (tenant_id, seq, timestamp_ms, request_id, stream, message)
                 VALUES {}
                 ON CONFLICT (tenant_id, seq) DO UPDATE SET
                   timestamp_ms = excluded.timestamp_ms,
                   request_id = excluded.request_id,
                   stream = excluded.stream,
                   message = excluded.message",
                self.dialect.value_rows(rows, 6)
            );
            // Bound by reference: a line's text is copied only if it holds a NUL.
            let texts: Vec<_> = chunk
                .iter()
                .map(|(_, line)| {
                    let storable = Dialect::storable;
                    (storable(&line.request_id), storable(&line.message))
                })
                .collect();
            let mut insert = sqlx::query(&sql);
            for ((tenant_id, line), (request_id, message)) in chunk.iter().zip(&texts) {
                insert = insert
                    .bind(*tenant_id)
                    .bind(line.seq as i64)
                    .bind(line.timestamp_ms as i64)
                    .bind(&**request_id)
                    .bind(line.stream.as_str())
                    .bind(&**message);
            }
            insert.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn recent_logs(&self, tenant_id: &str, limit: i64) -> StorageResult<Vec<LogLine>> {
        let rows: Vec<LineRow> = sqlx::query_as(
            "SELECT seq, timestamp_ms, request_id, stream, message FROM tenant_logs
             WHERE tenant_id = $1 ORDER BY seq DESC LIMIT $2",
        )
        .bind(tenant_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().rev().map(LogLine::from).collect())
    }

    async fn last_log_seqs(&self, tenant_ids: &[String]) -> StorageResult<Vec<(String, i64)>> {
        if tenant_ids.is_empty() {
            return Ok(Vec::new());
        }
        // One index probe per tenant (the primary key is (tenant_id, seq)).
        let sql = format!(
            "SELECT tenant_id, MAX(seq) FROM tenant_logs WHERE tenant_id IN ({}) GROUP BY tenant_id",
            placeholders(1, tenant_ids.len())
        );
        let mut query = sqlx::query_as(&sql);
        for id in tenant_ids {
            query = query.bind(id);
        }
        Ok(query.fetch_all(&self.pool).await?)
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
}
