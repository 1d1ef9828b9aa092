//! Stage 5: storage. Everything that must survive a restart.
//!
//! Handlers talk to the [`Storage`] trait only; [`sqlite::SqliteStorage`] is the
//! embedded default. A second backend (PostgreSQL) implements the same trait with
//! its own migrations, chosen once at startup from the database URL.

pub mod postgres;
pub mod sqlite;

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::logs::LogLine;

/// A failure of the storage layer that callers match on.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The row does not exist (or is soft-deleted).
    #[error("not found")]
    NotFound,
    /// A uniqueness constraint refused the write (e.g. a slug already taken).
    #[error("conflict: {0}")]
    Conflict(&'static str),
    /// The database failed.
    #[error("database error")]
    Backend(#[source] anyhow::Error),
}

impl From<sqlx::Error> for StorageError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::RowNotFound => Self::NotFound,
            other => Self::Backend(other.into()),
        }
    }
}

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

/// A tenant's wallet as stored: its address and its sealed seed.
#[derive(Clone)]
pub struct WalletRecord {
    /// `lodge1…`
    pub address: String,
    /// The encrypted Ed25519 seed.
    pub sealed_seed: Vec<u8>,
    /// The encryption nonce.
    pub nonce: Vec<u8>,
}

impl fmt::Debug for WalletRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WalletRecord")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// A transfer to make.
#[derive(Debug, Clone)]
pub struct TransferRequest<'a> {
    /// Paying address.
    pub from: &'a str,
    /// Receiving address.
    pub to: &'a str,
    /// Positive amount.
    pub amount: i64,
    /// Free text.
    pub memo: &'a str,
    /// Makes retries safe: one transfer per (payer, key).
    pub idempotency_key: &'a str,
    /// The plan's cap per transfer.
    pub max_per_transfer: i64,
    /// The plan's cap on what one wallet sends per UTC day.
    pub max_per_day: i64,
}

/// Why a transfer did not happen.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// No wallet has that address.
    #[error("no wallet has the address {0}")]
    UnknownAddress(String),
    /// The balance is too small.
    #[error("insufficient funds: the balance is {balance}")]
    InsufficientFunds {
        /// The payer's balance.
        balance: i64,
    },
    /// A plan cap was hit.
    #[error("{0}")]
    Limit(String),
    /// The request is invalid.
    #[error("{0}")]
    Invalid(String),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<sqlx::Error> for LedgerError {
    fn from(e: sqlx::Error) -> Self {
        Self::Storage(e.into())
    }
}

/// One ledger entry of a wallet.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LedgerEntry {
    /// Position in the ledger (the history cursor).
    pub seq: i64,
    /// `tx_…`
    pub id: String,
    /// `funding`, `sent` or `received`.
    pub kind: String,
    /// The other side's address, or `mint`.
    pub counterparty: String,
    /// Positive in, negative out.
    pub amount: i64,
    /// Memo.
    pub memo: String,
    /// RFC 3339.
    pub created_at: String,
}

/// A queued or finished convergence task.
#[derive(Debug, Clone)]
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

/// Shorthand for storage results.
pub type StorageResult<T> = Result<T, StorageError>;

/// An organization: the owner of tenants.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
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

impl fmt::Display for TenantStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tenant as stored.
#[derive(Debug, Clone)]
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
    pub status: TenantStatus,
    /// Plan name.
    pub plan: String,
    /// Its own limits over the plan's.
    pub limits: crate::plans::LimitsPatch,
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
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
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

/// Who an API key speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// Manages every tenant of one organization.
    Org,
    /// Manages one tenant.
    Tenant,
}

/// An API key as stored: only a hash of its secret.
#[derive(Debug, Clone)]
pub struct KeyRecord {
    /// The public part of the key, used to find it.
    pub id: String,
    /// SHA-256 of the secret part, lowercase hex.
    pub secret_hash: String,
    /// Organization or tenant key.
    pub kind: KeyKind,
    /// The organization it belongs to.
    pub org_id: String,
    /// The tenant, for tenant keys.
    pub tenant_id: Option<String>,
    /// Whether it was revoked (rotated away).
    pub revoked: bool,
}

/// What a tenant used in one period (an hour as stored; summed for days and totals).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, ToSchema)]
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

/// Everything the control plane persists. One implementation per database.
#[async_trait::async_trait]
pub trait Storage: Send + Sync + fmt::Debug {
    /// Creates an organization.
    async fn create_org(&self, org: &Org) -> StorageResult<()>;
    /// An organization by id.
    async fn get_org(&self, id: &str) -> StorageResult<Org>;
    /// An organization by name (the first created, if several).
    async fn find_org_by_name(&self, name: &str) -> StorageResult<Option<Org>>;

    /// Stores a new API key.
    async fn insert_key(&self, key: &KeyRecord) -> StorageResult<()>;
    /// A key by its public id.
    async fn get_key(&self, id: &str) -> StorageResult<Option<KeyRecord>>;
    /// Revokes every live key of a tenant.
    async fn revoke_tenant_keys(&self, tenant_id: &str) -> StorageResult<()>;
    /// Revokes every live organization key of an organization (not its tenants' keys).
    async fn revoke_org_keys(&self, org_id: &str) -> StorageResult<()>;
    /// Changes an organization's plan; `NotFound` if there is no such organization.
    async fn set_org_plan(&self, org_id: &str, plan: &str) -> StorageResult<()>;

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

    /// Archives log lines.
    async fn append_logs(&self, lines: &[(String, LogLine)]) -> StorageResult<()>;
    /// The newest `limit` archived lines of a tenant, oldest first.
    async fn recent_logs(&self, tenant_id: &str, limit: i64) -> StorageResult<Vec<LogLine>>;
    /// Deletes a tenant's archived lines older than `before_ms` or older than
    /// its newest `keep` lines; returns how many.
    async fn prune_logs(&self, tenant_id: &str, before_ms: i64, keep: i64) -> StorageResult<u64>;
    /// Deletes the archived lines of deleted tenants older than `before_ms`.
    async fn prune_deleted_tenants_logs(&self, before_ms: i64) -> StorageResult<u64>;

    /// A value of a tenant's bucket.
    async fn kv_get(
        &self,
        tenant_id: &str,
        bucket: &str,
        key: &str,
    ) -> StorageResult<Option<Vec<u8>>>;
    /// Values of many keys, in order.
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

    /// Stores a tenant's wallet unless it has one; returns the wallet it has.
    async fn wallet_create(
        &self,
        tenant_id: &str,
        wallet: &WalletRecord,
    ) -> StorageResult<WalletRecord>;
    /// A tenant's wallet.
    async fn wallet_get(&self, tenant_id: &str) -> StorageResult<Option<WalletRecord>>;
    /// The tenant of some wallet, if any exists (to check the master key at start).
    async fn wallet_any_owner(&self) -> StorageResult<Option<String>>;
    /// Up to `limit` tenants with wallets, in order, after `after`.
    async fn wallet_owners(&self, after: Option<&str>, limit: i64) -> StorageResult<Vec<String>>;
    /// Replaces a wallet's sealed seed if it still has nonce `old_nonce`; false if not.
    async fn wallet_reseal(
        &self,
        tenant_id: &str,
        old_nonce: &[u8],
        sealed_seed: &[u8],
        nonce: &[u8],
    ) -> StorageResult<bool>;
    /// Whether a wallet has `address`.
    async fn wallet_exists(&self, address: &str) -> StorageResult<bool>;
    /// A balance (0 for an unknown account).
    async fn ledger_balance(&self, account: &str) -> StorageResult<i64>;
    /// Mints `amount` into `to` (operator funding); returns the transfer id.
    async fn ledger_fund(&self, to: &str, amount: i64, memo: &str) -> Result<String, LedgerError>;
    /// Moves funds atomically and idempotently; returns the transfer id.
    async fn ledger_transfer(&self, request: &TransferRequest<'_>) -> Result<String, LedgerError>;
    /// Entries of `account`, newest first, older than `before` (a `seq`).
    async fn ledger_history(
        &self,
        account: &str,
        before: Option<i64>,
        limit: i64,
    ) -> StorageResult<Vec<LedgerEntry>>;
    /// (Sum of all wallet balances, total minted): equal while the ledger is sound.
    async fn ledger_totals(&self) -> StorageResult<(i64, i64)>;

    /// Stores `value` under `name` unless a value is stored there already;
    /// returns the stored value (so the first writer wins).
    async fn meta_claim(&self, name: &str, value: &str) -> StorageResult<String>;
    /// Stores `value` under `name`, replacing what was there.
    async fn meta_set(&self, name: &str, value: &str) -> StorageResult<()>;

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
    /// Puts tasks `running` whose lease was last renewed (claimed, or renewed by
    /// [`Storage::task_heartbeat`]) longer than `lease` ago — by the database's
    /// clock, so hosts' clocks do not matter — back to `pending`: ones left by a
    /// stopped host. `None`: every running task (one host that just started).
    /// Returns how many.
    async fn task_requeue_running(&self, lease: Option<std::time::Duration>) -> StorageResult<u64>;

    /// Adds to a tenant's usage of `day`.
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
    /// Sets a tenant's plan and its own limit overrides.
    async fn set_tenant_limits(
        &self,
        id: &str,
        plan: &str,
        overrides: &crate::plans::LimitsPatch,
    ) -> StorageResult<()>;
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

/// Now, as RFC 3339 with milliseconds, UTC.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Today's date, `YYYY-MM-DD` UTC.
pub fn today() -> String {
    now_rfc3339()[..10].to_owned()
}

/// This hour, `YYYY-MM-DDTHH` UTC: the key usage is stored under.
pub fn this_hour() -> String {
    now_rfc3339()[..13].to_owned()
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
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
