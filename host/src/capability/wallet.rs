//! `lodge:platform/wallet`: the calling tenant's custodial wallet.
//!
//! The wallet is the tenant's, found from [`WalletCtx`] (host state); a guest can
//! name another wallet only as the recipient of its own funds or to verify a
//! signature. Spend caps come from the tenant's plan.

use std::sync::Arc;

use wasmtime::component::{HasData, Linker};

use super::PlatformError;
use super::bindings::lodge::platform::types::Error;
use super::bindings::lodge::platform::wallet::{self, Entry, HistoryPage};
use crate::config::Limits;
use crate::storage::{LedgerError, StorageError, TransferRequest, WalletRecord, WalletStore};
use crate::wallet::MasterKey;

/// What one request's guest may do with its wallet.
#[derive(Debug, Clone)]
pub struct WalletCtx {
    /// The tenant whose wallet this is.
    pub tenant_id: Arc<str>,
    /// The ledger.
    pub storage: Arc<dyn WalletStore>,
    /// Opens the tenant's seed to sign.
    pub master: Arc<MasterKey>,
    /// The plan's cap per transfer.
    pub max_per_transfer: i64,
    /// The plan's cap per UTC day.
    pub max_per_day: i64,
    /// Where transfers are metered.
    pub counters: Arc<crate::counters::TenantCounters>,
}

impl WalletCtx {
    /// What a request of `tenant` on `limits` may do.
    pub fn new(
        host: &super::CapabilityHost,
        tenant: super::TenantRef<'_>,
        limits: &Limits,
    ) -> Self {
        Self {
            tenant_id: tenant.id.clone(),
            storage: host.wallets.clone(),
            master: host.master.clone(),
            max_per_transfer: limits.wallet_max_per_transfer,
            max_per_day: limits.wallet_max_per_day,
            counters: tenant.counters.clone(),
        }
    }
}

/// The view host functions run on.
#[derive(Debug)]
pub struct Wallet<'a> {
    ctx: &'a WalletCtx,
}

impl<'a> Wallet<'a> {
    /// A view over `ctx`.
    pub fn new(ctx: &'a WalletCtx) -> Self {
        Self { ctx }
    }

    async fn mine(&self) -> Result<WalletRecord, Error> {
        crate::wallet::ensure(
            self.ctx.storage.as_ref(),
            &self.ctx.master,
            &self.ctx.tenant_id,
        )
        .await
        .map_err(unavailable)
    }
}

fn unavailable(e: StorageError) -> Error {
    tracing::error!(error = ?e, "wallet storage failed");
    Error::Unavailable("the wallet is unavailable; retry later".to_owned())
}

struct WalletData;

impl HasData for WalletData {
    type Data<'a> = Wallet<'a>;
}

/// Links `lodge:platform/wallet`; `view` finds the context in the store's data.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> Wallet<'_>,
) -> anyhow::Result<()> {
    wallet::add_to_linker::<T, WalletData>(linker, view)?;
    super::bindings::lodge::platform::types::add_to_linker::<T, WalletData>(linker, view)?;
    Ok(())
}

impl super::bindings::lodge::platform::types::Host for Wallet<'_> {
    fn convert_error(&mut self, err: PlatformError) -> wasmtime::Result<Error> {
        err.into_guest()
    }
}

type Outcome<T> = Result<T, PlatformError>;

impl wallet::Host for Wallet<'_> {
    async fn address(&mut self) -> Outcome<String> {
        Ok(self.mine().await?.address)
    }

    async fn balance(&mut self) -> Outcome<u64> {
        let wallet = self.mine().await?;
        let balance = self.ctx.storage.ledger_balance(&wallet.address).await;
        Ok(balance.map_err(unavailable)?.max(0) as u64)
    }

    async fn transfer(
        &mut self,
        to: String,
        amount: u64,
        memo: String,
        idempotency_key: String,
    ) -> Outcome<String> {
        let wallet = self.mine().await?;
        let invalid = |m: &str| Err(Error::InvalidInput(m.to_owned()).into());
        if amount == 0 || amount > i64::MAX as u64 {
            return invalid("amount must be between 1 and 2^63-1");
        }
        if idempotency_key.is_empty() || idempotency_key.len() > 200 {
            return invalid("idempotency-key must be 1-200 characters");
        }
        if memo.len() > 1000 {
            return invalid("memo must be at most 1000 bytes");
        }
        if memo.contains('\0') || idempotency_key.contains('\0') {
            // Refused alike on every backend (PostgreSQL text cannot hold it).
            return invalid("memo and idempotency-key may not contain NUL characters");
        }
        if crate::wallet::parse_address(&to).is_none() {
            return invalid("`to` is not a wallet address (lodge1 + 64 hex digits)");
        }
        if to == wallet.address {
            return invalid("a wallet cannot pay itself");
        }
        if !self
            .ctx
            .storage
            .wallet_exists(&to)
            .await
            .map_err(unavailable)?
        {
            return Err(Error::NotFound(format!("no wallet has the address {to}")).into());
        }
        let request = TransferRequest {
            from: &wallet.address,
            to: &to,
            amount: amount as i64,
            memo: &memo,
            idempotency_key: &idempotency_key,
            max_per_transfer: self.ctx.max_per_transfer,
            max_per_day: self.ctx.max_per_day,
        };
        let done = self.ctx.storage.ledger_transfer(&request).await;
        if done.is_ok() {
            self.ctx
                .counters
                .wallet_txs
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(done.map_err(|e| -> Error {
            match e {
                LedgerError::UnknownAddress(a) => {
                    Error::NotFound(format!("no wallet has the address {a}"))
                }
                LedgerError::InsufficientFunds { balance } => {
                    Error::QuotaExceeded(format!("insufficient funds: the balance is {balance}"))
                }
                LedgerError::Limit(m) => Error::Limit(m),
                LedgerError::Invalid(m) => Error::InvalidInput(m),
                LedgerError::Storage(e) => unavailable(e),
            }
        })?)
    }

    async fn sign(&mut self, message: Vec<u8>) -> Outcome<Vec<u8>> {
        let wallet = self.mine().await?;
        let signature =
            crate::wallet::sign(&self.ctx.master, &self.ctx.tenant_id, &wallet, &message).map_err(
                |e| {
                    tracing::error!(error = %e, "signing failed");
                    Error::Unavailable("signing failed".to_owned())
                },
            )?;
        Ok(signature.to_vec())
    }

    async fn verify(
        &mut self,
        address: String,
        message: Vec<u8>,
        signature: Vec<u8>,
    ) -> Outcome<bool> {
        Ok(
            crate::wallet::verify(&address, &message, &signature).ok_or_else(|| {
                Error::InvalidInput("not a wallet address (lodge1 + 64 hex digits)".to_owned())
            })?,
        )
    }

    async fn history(&mut self, cursor: Option<String>, limit: u32) -> Outcome<HistoryPage> {
        let wallet = self.mine().await?;
        let before = match cursor.as_deref().map(str::parse::<i64>) {
            None => None,
            Some(Ok(seq)) => Some(seq),
            Some(Err(_)) => return Err(Error::InvalidInput("unknown cursor".to_owned()).into()),
        };
        let limit = i64::from(limit.clamp(1, 100));
        let entries = self
            .ctx
            .storage
            .ledger_history(&wallet.address, before, limit)
            .await
            .map_err(unavailable)?;
        let cursor = (entries.len() as i64 == limit)
            .then(|| entries.last().map(|e| e.seq.to_string()))
            .flatten();
        Ok(HistoryPage {
            entries: entries
                .into_iter()
                .map(|e| Entry {
                    id: e.id,
                    kind: e.kind,
                    counterparty: e.counterparty,
                    amount: e.amount,
                    memo: e.memo,
                    created_at: e.created_at,
                })
                .collect(),
            cursor,
        })
    }
}
