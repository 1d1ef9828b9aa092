//! Metering: what each tenant used, per hour.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{SqlStorage, StorageResult};

/// What a tenant used in one period (an hour as stored; summed for days and totals).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, ToSchema, sqlx::FromRow,
)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// Requests routed to the tenant, whatever their outcome.
    pub requests: i64,
    /// Of those, the ones Lodge answered with an error (limits, traps, timeouts).
    pub failures: i64,
    /// Responses with a 2xx status.
    pub status_2xx: i64,
    /// Responses with a 3xx status.
    pub status_3xx: i64,
    /// Responses with a 4xx status.
    pub status_4xx: i64,
    /// Responses with a 5xx status.
    pub status_5xx: i64,
    /// Fuel burnt.
    pub fuel: i64,
    /// Wall time of guest instances, milliseconds.
    pub wall_ms: i64,
    /// Largest linear memory one instance held, bytes (a maximum, not a sum).
    pub peak_memory_bytes: i64,
    /// Request body bytes read by guests.
    pub bytes_in: i64,
    /// Response body bytes sent.
    pub bytes_out: i64,
    /// Outbound HTTP requests made.
    pub outbound_requests: i64,
    /// Convergence tokens used.
    pub tokens: i64,
    /// Key-value operations.
    pub kv_ops: i64,
    /// Wallet transfers made.
    pub wallet_txs: i64,
}

impl Usage {
    /// Adds `other` (peak memory takes the larger).
    pub fn add(&mut self, other: &Usage) {
        self.requests += other.requests;
        self.failures += other.failures;
        self.status_2xx += other.status_2xx;
        self.status_3xx += other.status_3xx;
        self.status_4xx += other.status_4xx;
        self.status_5xx += other.status_5xx;
        self.fuel += other.fuel;
        self.wall_ms += other.wall_ms;
        self.peak_memory_bytes = self.peak_memory_bytes.max(other.peak_memory_bytes);
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.outbound_requests += other.outbound_requests;
        self.tokens += other.tokens;
        self.kv_ops += other.kv_ops;
        self.wallet_txs += other.wallet_txs;
    }

    /// Whether nothing was used.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Usage per tenant and hour.
#[async_trait::async_trait]
pub trait UsageStore: Send + Sync + std::fmt::Debug {
    /// Adds to a tenant's usage of `hour` (`YYYY-MM-DDTHH`).
    async fn add_usage(&self, tenant_id: &str, hour: &str, delta: &Usage) -> StorageResult<()>;
    /// A tenant's usage per hour (`YYYY-MM-DDTHH`) in `from..=to`, oldest first.
    async fn usage(
        &self,
        tenant_id: &str,
        from: &str,
        to: &str,
    ) -> StorageResult<Vec<(String, Usage)>>;
    /// Every tenant of `org_id` (deleted ones too) with its usage summed over `from..=to`.
    async fn org_usage(
        &self,
        org_id: &str,
        from: &str,
        to: &str,
    ) -> StorageResult<Vec<(String, String, Usage)>>;
}

/// The counters, in the order of [`Usage`]'s fields; `peak_memory_bytes` is a
/// maximum, the rest are sums.
const COUNTERS: [&str; 15] = [
    "requests",
    "failures",
    "status_2xx",
    "status_3xx",
    "status_4xx",
    "status_5xx",
    "fuel",
    "wall_ms",
    "peak_memory_bytes",
    "bytes_in",
    "bytes_out",
    "outbound_requests",
    "tokens",
    "kv_ops",
    "wallet_txs",
];

/// A row of usage with the hour it is for.
#[derive(sqlx::FromRow)]
struct HourRow {
    hour: String,
    #[sqlx(flatten)]
    usage: Usage,
}

/// A row of usage summed for one tenant.
#[derive(sqlx::FromRow)]
struct TenantRow {
    tenant_id: String,
    slug: String,
    #[sqlx(flatten)]
    usage: Usage,
}

#[async_trait::async_trait]
impl UsageStore for SqlStorage {
    async fn add_usage(&self, tenant_id: &str, hour: &str, d: &Usage) -> StorageResult<()> {
        let greatest = self.dialect.greatest();
        let updates = COUNTERS
            .iter()
            .map(|c| match *c {
                "peak_memory_bytes" => format!("{c} = {greatest}(u.{c}, excluded.{c})"),
                _ => format!("{c} = u.{c} + excluded.{c}"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "INSERT INTO usage_hourly AS u (tenant_id, hour, {columns}) VALUES ({values})
             ON CONFLICT (tenant_id, hour) DO UPDATE SET {updates}",
            columns = COUNTERS.join(", "),
            values = super::dialect::placeholders(1, COUNTERS.len() + 2),
        );
        sqlx::query(&sql)
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
        let rows: Vec<HourRow> = sqlx::query_as(&format!(
            "SELECT hour, {} FROM usage_hourly
             WHERE tenant_id = $1 AND hour >= $2 AND hour <= $3 ORDER BY hour",
            COUNTERS.join(", ")
        ))
        .bind(tenant_id)
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| (r.hour, r.usage)).collect())
    }

    async fn org_usage(
        &self,
        org_id: &str,
        from: &str,
        to: &str,
    ) -> StorageResult<Vec<(String, String, Usage)>> {
        // SUM of BIGINT is NUMERIC in PostgreSQL: cast back.
        let sums = COUNTERS
            .iter()
            .map(|c| match *c {
                "peak_memory_bytes" => format!("CAST(COALESCE(MAX(u.{c}), 0) AS BIGINT) AS {c}"),
                _ => format!("CAST(COALESCE(SUM(u.{c}), 0) AS BIGINT) AS {c}"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let rows: Vec<TenantRow> = sqlx::query_as(&format!(
            "SELECT t.id AS tenant_id, t.slug AS slug, {sums}
             FROM tenants t
             LEFT JOIN usage_hourly u ON u.tenant_id = t.id AND u.hour >= $1 AND u.hour <= $2
             WHERE t.org_id = $3
             GROUP BY t.id, t.slug, t.created_at ORDER BY t.created_at, t.id{}",
            self.dialect.bytewise()
        ))
        .bind(from)
        .bind(to)
        .bind(org_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.tenant_id, r.slug, r.usage))
            .collect())
    }
}
