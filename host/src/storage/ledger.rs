//! Custodial wallets (sealed seeds) and the double-entry ledger between them.

use std::fmt;

use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;
use utoipa::ToSchema;

use super::{SqlStorage, StorageError, StorageResult, now_rfc3339};

/// A tenant's wallet as stored: its address and its sealed seed.
#[derive(Clone, sqlx::FromRow)]
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
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
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

/// A ledger entry as stored: the transfer and this account's side of it.
#[derive(sqlx::FromRow)]
struct EntryRow {
    seq: i64,
    id: String,
    from_account: String,
    to_account: String,
    memo: String,
    created_at: String,
    amount: i64,
}

impl From<EntryRow> for LedgerEntry {
    fn from(row: EntryRow) -> Self {
        let (kind, counterparty) = if row.from_account == "mint" {
            ("funding", row.from_account)
        } else if row.amount < 0 {
            ("sent", row.to_account)
        } else {
            ("received", row.from_account)
        };
        Self {
            seq: row.seq,
            id: row.id,
            kind: kind.to_owned(),
            counterparty,
            amount: row.amount,
            memo: row.memo,
            created_at: row.created_at,
        }
    }
}

/// Wallets and the ledger.
#[async_trait::async_trait]
pub trait WalletStore: Send + Sync + fmt::Debug {
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
}

impl SqlStorage {
    /// Runs `post` in a write transaction holding the ledger lock on
    /// `accounts`: the in-process turn (SQLite) or their `ledger_balances`
    /// rows (PostgreSQL), created at 0 if missing and taken in sorted order,
    /// the same on every host, so two transfers in opposite directions cannot
    /// deadlock. Rows created here vanish with the transaction if it rolls
    /// back. Commits if `post` succeeds.
    async fn ledger_write<T>(
        &self,
        accounts: &[&str],
        post: impl AsyncFnOnce(&mut AnyConnection) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        let _turn = self.write_turn().await;
        let mut tx = self.begin_write().await?;
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
            self.lock_row(&mut tx, "ledger_balances", "account", account)
                .await?;
        }
        let value = post(&mut tx).await?;
        tx.commit().await?;
        Ok(value)
    }
}

/// Writes one transfer: its row, two entries summing to zero, both balances.
/// The caller holds the ledger lock on `from` and `to`.
async fn post_transfer(
    tx: &mut AnyConnection,
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
        // SQLite turns an overflowing `balance + delta` into a REAL, which no
        // later read decodes (PostgreSQL fails the statement): refuse it here.
        let balance: i64 =
            sqlx::query_scalar("SELECT balance FROM ledger_balances WHERE account = $1")
                .bind(account)
                .fetch_one(&mut *tx)
                .await?;
        if balance.checked_add(delta).is_none() {
            return Err(LedgerError::Invalid(format!(
                "the amount {amount} would take a balance past what the ledger holds \
                 ({} at most)",
                i64::MAX
            )));
        }
        sqlx::query(
            "INSERT INTO ledger_entries (transfer_seq, account, amount) VALUES ($1, $2, $3)",
        )
        .bind(seq)
        .bind(account)
        .bind(delta)
        .execute(&mut *tx)
        .await?;
        // The lock created the row; an upsert would check the CHECK
        // constraint on the proposed row (a negative delta) before resolving
        // the conflict.
        let updated =
            sqlx::query("UPDATE ledger_balances SET balance = balance + $1 WHERE account = $2")
                .bind(delta)
                .bind(account)
                .execute(&mut *tx)
                .await?;
        if updated.rows_affected() == 0 {
            return Err(LedgerError::Storage(StorageError::Backend(
                anyhow::anyhow!("ledger account {account} has no balance row"),
            )));
        }
    }
    Ok(id)
}

#[async_trait::async_trait]
impl WalletStore for SqlStorage {
    async fn wallet_create(
        &self,
        tenant_id: &str,
        wallet: &WalletRecord,
    ) -> StorageResult<WalletRecord> {
        sqlx::query(
            "INSERT INTO wallets (tenant_id, address, sealed_seed, nonce, created_at)
             VALUES ($1, $2, $3, $4, $5)
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
        Ok(
            sqlx::query_as("SELECT address, sealed_seed, nonce FROM wallets WHERE tenant_id = $1")
                .bind(tenant_id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn wallet_any_owner(&self) -> StorageResult<Option<String>> {
        Ok(sqlx::query_scalar(&format!(
            "SELECT tenant_id FROM wallets ORDER BY tenant_id{} LIMIT 1",
            self.dialect.bytewise()
        ))
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn wallet_owners(&self, after: Option<&str>, limit: i64) -> StorageResult<Vec<String>> {
        let bytewise = self.dialect.bytewise();
        Ok(sqlx::query_scalar(&format!(
            "SELECT tenant_id FROM wallets WHERE CAST($1 AS TEXT) IS NULL OR tenant_id{bytewise} > $1
             ORDER BY tenant_id{bytewise} LIMIT $2"
        ))
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
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM wallets WHERE address = $1")
            .bind(address)
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.is_some())
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
        self.ledger_write(&["mint", to], async |tx| {
            post_transfer(tx, "mint", to, amount, memo, None).await
        })
        .await
    }

    async fn ledger_transfer(&self, r: &TransferRequest<'_>) -> Result<String, LedgerError> {
        // Under the payer's lock, on every host: the idempotency check, the
        // daily cap and the balance see every earlier transfer of the payer.
        self.ledger_write(&[r.from, r.to], async |tx| {
            let previous: Option<(String, String, i64, String)> = sqlx::query_as(
                "SELECT id, to_account, amount, memo FROM ledger_transfers
                 WHERE from_account = $1 AND idempotency_key = $2",
            )
            .bind(r.from)
            .bind(r.idempotency_key)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((id, to, amount, memo)) = previous {
                if to != r.to || amount != r.amount || memo != r.memo {
                    return Err(LedgerError::Invalid(format!(
                        "the idempotency key {:?} was already used for a different transfer",
                        r.idempotency_key
                    )));
                }
                return Ok(id);
            }
            if r.amount > r.max_per_transfer {
                return Err(LedgerError::Limit(format!(
                    "{} is over the plan's limit of {} per transfer",
                    r.amount, r.max_per_transfer
                )));
            }
            let today = format!("{}T", super::today());
            // SUM of BIGINT is NUMERIC in PostgreSQL: cast back.
            let sent_today: i64 = sqlx::query_scalar(
                "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM ledger_transfers
                 WHERE from_account = $1 AND created_at >= $2",
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
            let balance: i64 =
                sqlx::query_scalar("SELECT balance FROM ledger_balances WHERE account = $1")
                    .bind(r.from)
                    .fetch_one(&mut *tx)
                    .await?;
            if balance < r.amount {
                return Err(LedgerError::InsufficientFunds { balance });
            }
            post_transfer(tx, r.from, r.to, r.amount, r.memo, Some(r.idempotency_key)).await
        })
        .await
    }

    async fn ledger_history(
        &self,
        account: &str,
        before: Option<i64>,
        limit: i64,
    ) -> StorageResult<Vec<LedgerEntry>> {
        let rows: Vec<EntryRow> = sqlx::query_as(
            "SELECT t.seq, t.id, t.from_account, t.to_account, t.memo, t.created_at, e.amount
             FROM ledger_entries e JOIN ledger_transfers t ON t.seq = e.transfer_seq
             WHERE e.account = $1 AND (CAST($2 AS BIGINT) IS NULL OR t.seq < $2)
             ORDER BY t.seq DESC LIMIT $3",
        )
        .bind(account)
        .bind(before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(LedgerEntry::from).collect())
    }

    async fn ledger_totals(&self) -> StorageResult<(i64, i64)> {
        Ok(sqlx::query_as(
            "SELECT CAST(COALESCE(SUM(CASE WHEN account = 'mint' THEN 0 ELSE balance END), 0) AS BIGINT),
                    CAST(COALESCE(-SUM(CASE WHEN account = 'mint' THEN balance ELSE 0 END), 0) AS BIGINT)
             FROM ledger_balances",
        )
        .fetch_one(&self.pool)
        .await?)
    }
}
