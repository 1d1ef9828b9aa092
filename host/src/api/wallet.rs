//! A tenant's wallet: view and fund.

use super::*;

/// A tenant's wallet as its owner sees it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WalletView {
    /// `lodge1…`
    pub address: String,
    /// Balance in the smallest unit.
    pub balance: i64,
    /// The newest 20 entries.
    pub history: Vec<crate::storage::LedgerEntry>,
}

pub(super) async fn wallet_view(
    lodge: &ApiServices,
    record: &TenantRecord,
) -> Result<WalletView, ApiError> {
    let wallet = crate::wallet::ensure(lodge.storage.as_ref(), &lodge.master, &record.id).await?;
    Ok(WalletView {
        balance: lodge.storage.ledger_balance(&wallet.address).await?,
        history: lodge
            .storage
            .ledger_history(&wallet.address, None, 20)
            .await?,
        address: wallet.address,
    })
}

#[utoipa::path(get, path = "/api/v1/tenant/{id}/wallet", tag = "wallet",
    params(("id" = String, Path, description = "tenant id or slug")), security(("bearer" = [])),
    responses((status = 200, description = "the wallet, created on first use", body = WalletView), Authenticated,
        (status = 404, description = "no such tenant, or not one this key may see", body = ErrorBody)))]
pub(super) async fn get_wallet(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<WalletView>, ApiError> {
    let record = tenant_for(&lodge, &caller, &id).await?;
    Ok(Json(wallet_view(&lodge, &record).await?))
}

/// `POST /tenant/{id}/wallet/fund` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Fund {
    /// Amount to mint into the wallet, positive.
    pub amount: i64,
    /// Memo recorded with the funding.
    pub memo: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/tenant/{id}/wallet/fund", tag = "wallet", request_body = Fund,
    params(("id" = String, Path, description = "tenant id or slug")), security(("bearer" = [])),
    responses((status = 200, description = "the wallet after the funding", body = WalletView), Authenticated, JsonBody,
        (status = 403, description = "not the admin token", body = ErrorBody),
        (status = 404, description = "no such tenant, or not one this key may see", body = ErrorBody)))]
pub(super) async fn fund_wallet(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Fund>,
) -> Result<Json<WalletView>, ApiError> {
    let record = tenant_for(&lodge, &caller, &id).await?;
    if caller != Principal::Admin {
        return Err(ApiError::forbidden(
            "only the operator's admin token may fund wallets",
        ));
    }
    if body.amount <= 0 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "amount must be positive",
        ));
    }
    let wallet = crate::wallet::ensure(lodge.storage.as_ref(), &lodge.master, &record.id).await?;
    lodge
        .storage
        .ledger_fund(
            &wallet.address,
            body.amount,
            body.memo.as_deref().unwrap_or("funding"),
        )
        .await
        .map_err(|e| match e {
            crate::storage::LedgerError::Storage(e) => ApiError::from(e),
            other => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                other.to_string(),
            ),
        })?;
    Ok(Json(wallet_view(&lodge, &record).await?))
}
