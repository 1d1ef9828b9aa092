//! Stage 5: storage. Everything that must survive a restart.
//!
//! One domain per module, each a narrow trait beside its one SQL
//! implementation: [`TenantStore`] (organizations, tenants, deployments,
//! components, environment), [`KeyStore`], [`KvStore`], [`WalletStore`]
//! (wallets and the ledger), [`TaskStore`], [`UsageStore`], [`LogStore`] and
//! [`MetaStore`]. A part of the host depends on the traits it uses; [`Storage`]
//! is all of them, for the composition root.
//!
//! [`SqlStorage`] implements every trait once, for both databases, through
//! sqlx's `Any` driver: the embedded SQLite file (the default) and PostgreSQL
//! (several hosts on one database). Their SQL is shared; the few real
//! differences — how a write transaction starts, row locks, `SKIP LOCKED`, the
//! database clock — are the [`dialect::Dialect`]. Where SQLite serializes
//! read-check-write sequences (quotas, increments, balances) with one
//! in-process lock, PostgreSQL takes row locks inside the transaction, so the
//! checks hold across hosts:
//!
//! - key-value writes lock the tenant's `kv_usage` row (created first if
//!   missing): quota, increment, compare-and-swap and batch writes of one
//!   tenant run one at a time on every host;
//! - ledger writes lock the `ledger_balances` rows of both accounts, in sorted
//!   order (no deadlocks), creating them at 0 if missing;
//! - `task_claim` takes a pending task with `FOR UPDATE … SKIP LOCKED`, so each
//!   task is claimed by exactly one host;
//! - `add_deployment` locks the tenant row, so versions are numbered without
//!   gaps or collisions.

pub mod dialect;
mod keys;
mod kv;
mod ledger;
mod logs;
mod meta;
mod tasks;
mod tenants;
mod usage;

#[cfg(test)]
mod contract;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use sqlx::{Any, AnyPool, Transaction};

pub use self::dialect::Dialect;
pub use self::keys::{KeyKind, KeyRecord, KeyStore};
pub use self::kv::{KvError, KvQuota, KvStore};
pub use self::ledger::{LedgerEntry, LedgerError, TransferRequest, WalletRecord, WalletStore};
pub use self::logs::LogStore;
pub use self::meta::MetaStore;
pub use self::tasks::{TaskEntry, TaskRecord, TaskStore};
pub use self::tenants::{
    Deployment, Org, OrgSummary, TenantRecord, TenantStatus, TenantStore, versions_to_prune,
};
pub use self::usage::{Usage, UsageStore};

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

/// Shorthand for storage results.
pub type StorageResult<T> = Result<T, StorageError>;

/// Everything the host persists: every domain trait. Only the composition
/// root holds it whole; each part of the host takes the traits it uses.
pub trait Storage:
    TenantStore
    + KeyStore
    + KvStore
    + WalletStore
    + TaskStore
    + UsageStore
    + LogStore
    + MetaStore
    + fmt::Debug
{
}

impl<T> Storage for T where
    T: TenantStore
        + KeyStore
        + KvStore
        + WalletStore
        + TaskStore
        + UsageStore
        + LogStore
        + MetaStore
        + fmt::Debug
{
}

/// Migrations of each database, embedded at compile time.
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// The one implementation of every domain trait, for SQLite and PostgreSQL.
#[derive(Clone)]
pub struct SqlStorage {
    pool: AnyPool,
    dialect: Dialect,
    /// SQLite only: serializes key-value and ledger writes in-process, so
    /// read-check-write transactions wait here rather than in `SQLITE_BUSY`
    /// retries (SQLite has one writer at a time anyway).
    writes: Arc<tokio::sync::Mutex<()>>,
}

impl fmt::Debug for SqlStorage {
    // The pool's options hold the connection URL's parts; print none of them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlStorage")
            .field("dialect", &self.dialect)
            .field("connections", &self.pool.size())
            .field("idle", &self.pool.num_idle())
            .finish_non_exhaustive()
    }
}

impl SqlStorage {
    /// Opens a `sqlite:` or `postgres://` URL and migrates the database.
    /// Several hosts may open one PostgreSQL database: migrations take an
    /// advisory lock, so only one host applies them.
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        let dialect = Dialect::of_url(url).with_context(|| {
            format!(
                "unsupported database URL {:?}: use postgres://… or sqlite:…",
                url.split(':').next().unwrap_or_default()
            )
        })?;
        let url = match dialect {
            // Create the file if missing, as `lodge serve` promises.
            Dialect::Sqlite if !url.contains("mode=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}mode=rwc")
            }
            _ => url.to_owned(),
        };
        let pool = dialect.connect(&url).await?;
        match dialect {
            Dialect::Sqlite => SQLITE_MIGRATIONS.run(&pool).await?,
            Dialect::Postgres => POSTGRES_MIGRATIONS.run(&pool).await?,
        }
        Ok(Self {
            pool,
            dialect,
            writes: Default::default(),
        })
    }

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

    /// Which database this is.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Begins a write transaction (see [`Dialect::begin_write`]).
    async fn begin_write(&self) -> Result<Transaction<'static, Any>, sqlx::Error> {
        self.pool.begin_with(self.dialect.begin_write()).await
    }

    /// Locks the row of `table` whose `column` is `key` until `tx` ends, where
    /// the database needs row locks (PostgreSQL: `SELECT … FOR UPDATE`). In
    /// SQLite a write transaction already excludes every other writer, so
    /// nothing is sent.
    async fn lock_row(
        &self,
        tx: &mut sqlx::AnyConnection,
        table: &str,
        column: &str,
        key: &str,
    ) -> Result<(), sqlx::Error> {
        if self.dialect == Dialect::Postgres {
            sqlx::query(&format!(
                "SELECT 1 FROM {table} WHERE {column} = $1 FOR UPDATE"
            ))
            .bind(key)
            .execute(tx)
            .await?;
        }
        Ok(())
    }

    /// Waits for the in-process write turn where the database needs one
    /// (SQLite); PostgreSQL's writers lock rows instead.
    async fn write_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self.dialect {
            Dialect::Sqlite => Some(self.writes.lock().await),
            Dialect::Postgres => None,
        }
    }
}

/// Whether `e` is a uniqueness violation.
fn unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

pub use crate::clock::{now_ms, now_rfc3339, this_hour, today};
