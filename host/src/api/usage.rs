//! Usage and cost, limits and plans.

use super::*;

/// How usage is bucketed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    /// One bucket per UTC hour.
    Hour,
    /// One bucket per UTC day.
    #[default]
    Day,
}

/// `GET …/usage` parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// First day or hour included: `YYYY-MM-DD` or `YYYY-MM-DDTHH` (UTC). Default: 30 days ago.
    pub from: Option<String>,
    /// Last day or hour included, same forms. Default: now.
    pub to: Option<String>,
    /// `hour` or `day` (default).
    pub granularity: Option<Granularity>,
}

/// The period a usage query covers, as stored hour keys.
pub(super) fn usage_range(query: &UsageQuery) -> Result<(String, String), ApiError> {
    fn hour_key(value: &str, end: bool) -> Result<String, ApiError> {
        crate::clock::parse_hour_key(value, end).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("{value:?} is not a date (YYYY-MM-DD) or hour (YYYY-MM-DDTHH) in UTC"),
            )
        })
    }
    let to = match &query.to {
        Some(to) => hour_key(to, true)?,
        None => crate::clock::this_hour(),
    };
    let from = match &query.from {
        Some(from) => hour_key(from, false)?,
        None => crate::clock::days_ago(30),
    };
    if from > to {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "`from` is after `to`",
        ));
    }
    Ok((from, to))
}

/// One period of usage.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageBucket {
    /// Start of the period, RFC 3339 UTC.
    pub start: String,
    /// What was used.
    #[serde(flatten)]
    pub usage: Usage,
}

/// One line of a cost estimate.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CostItem {
    /// What is charged.
    pub item: String,
    /// How much was used, in `unit`.
    pub quantity: f64,
    /// The unit priced.
    pub unit: String,
    /// Price per unit.
    pub unit_price: f64,
    /// `quantity × unit_price`.
    pub amount: f64,
}

/// An estimate of what usage costs under the host's price table.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CostEstimate {
    /// Currency of every amount.
    pub currency: String,
    /// Per item.
    pub items: Vec<CostItem>,
    /// Sum of the items.
    pub total: f64,
}

/// Prices `usage` with `prices`.
pub fn estimate(usage: &Usage, prices: &crate::plans::PriceTable) -> CostEstimate {
    let line = |item: &str, quantity: f64, unit: &str, unit_price: f64| CostItem {
        item: item.to_owned(),
        quantity,
        unit: unit.to_owned(),
        unit_price,
        amount: quantity * unit_price,
    };
    let items = vec![
        line(
            "requests",
            usage.requests as f64 / 1e6,
            "million requests",
            prices.per_million_requests,
        ),
        line(
            "compute",
            usage.fuel as f64 / 1e9,
            "billion fuel",
            prices.per_billion_fuel,
        ),
        line(
            "wall time",
            usage.wall_ms as f64 / 3.6e6,
            "hours",
            prices.per_wall_hour,
        ),
        line(
            "transfer",
            (usage.bytes_in + usage.bytes_out) as f64 / (1u64 << 30) as f64,
            "GiB",
            prices.per_gib_transferred,
        ),
        line(
            "outbound HTTP",
            usage.outbound_requests as f64 / 1e3,
            "thousand requests",
            prices.per_thousand_outbound,
        ),
        line(
            "convergence",
            usage.tokens as f64 / 1e6,
            "million tokens",
            prices.per_million_tokens,
        ),
        line(
            "key-value",
            usage.kv_ops as f64 / 1e6,
            "million operations",
            prices.per_million_kv_ops,
        ),
        line(
            "wallet",
            usage.wallet_txs as f64 / 1e3,
            "thousand transfers",
            prices.per_thousand_wallet_txs,
        ),
    ];
    CostEstimate {
        currency: prices.currency.clone(),
        total: items.iter().map(|i| i.amount).sum(),
        items,
    }
}

/// A tenant's usage over a period.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageView {
    /// First hour included, `YYYY-MM-DDTHH` UTC.
    pub from: String,
    /// Last hour included.
    pub to: String,
    /// `hour` or `day`.
    pub granularity: Granularity,
    /// Periods with any usage, oldest first.
    pub buckets: Vec<UsageBucket>,
    /// The whole period.
    pub total: Usage,
    /// What the whole period costs under the host's price table.
    pub cost: CostEstimate,
}

#[utoipa::path(get, path = "/api/v1/tenant/{id}/usage", tag = "usage",
    params(("id" = String, Path, description = "tenant id or slug"), UsageQuery), security(("bearer" = [])),
    responses((status = 200, description = "usage per period, its total and its cost", body = UsageView), Authenticated,
        (status = 400, description = "an unknown or malformed query parameter, or `from` after `to`", body = ErrorBody),
        (status = 404, description = "no such tenant, or not one this key may see", body = ErrorBody)))]
pub(super) async fn tenant_usage(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<UsageQuery>,
) -> Result<Json<UsageView>, ApiError> {
    let record = tenant_for(&lodge, &caller, &id).await?;
    let (from, to) = usage_range(&query)?;
    if let Ok(live) = lodge.live(&record).await {
        lodge.flush_usage_of(&live).await;
    }
    let granularity = query.granularity.unwrap_or_default();
    let hours = lodge.storage.usage(&record.id, &from, &to).await?;
    let mut buckets: Vec<UsageBucket> = Vec::new();
    let mut total = Usage::default();
    for (hour, usage) in hours {
        total.add(&usage);
        let start = match granularity {
            Granularity::Hour => format!("{hour}:00:00Z"),
            Granularity::Day => format!("{}T00:00:00Z", &hour[..10.min(hour.len())]),
        };
        match buckets.last_mut() {
            Some(last) if last.start == start => last.usage.add(&usage),
            _ => buckets.push(UsageBucket { start, usage }),
        }
    }
    let cost = estimate(&total, &lodge.plans().prices);
    Ok(Json(UsageView {
        from,
        to,
        granularity,
        buckets,
        total,
        cost,
    }))
}

/// One tenant's line in an organization's usage.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrgTenantUsage {
    /// Tenant id.
    pub tenant_id: String,
    /// Its slug.
    pub slug: String,
    /// What it used in the period.
    pub usage: Usage,
    /// What that costs.
    pub cost: f64,
}

/// An organization's usage over a period.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrgUsageView {
    /// Organization id.
    pub org_id: String,
    /// First hour included.
    pub from: String,
    /// Last hour included.
    pub to: String,
    /// Every tenant of the organization, deleted ones included.
    pub tenants: Vec<OrgTenantUsage>,
    /// The organization's total.
    pub total: Usage,
    /// What the total costs.
    pub cost: CostEstimate,
}

#[utoipa::path(get, path = "/api/v1/org/{id}/usage", tag = "usage",
    params(("id" = String, Path, description = "organization id"), UsageQuery), security(("bearer" = [])),
    responses((status = 200, description = "usage per tenant, the total and its cost", body = OrgUsageView), Authenticated,
        (status = 400, description = "an unknown or malformed query parameter, or `from` after `to`", body = ErrorBody),
        (status = 403, description = "a tenant key", body = ErrorBody),
        (status = 404, description = "no such organization, or another organization's", body = ErrorBody)))]
pub(super) async fn org_usage(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<UsageQuery>,
) -> Result<Json<OrgUsageView>, ApiError> {
    match &caller {
        Principal::Admin => {}
        Principal::Org { org_id } if *org_id == id => {}
        Principal::Org { .. } => return Err(ApiError::not_found("organization")),
        Principal::Tenant { .. } => {
            return Err(ApiError::forbidden(
                "a tenant key cannot read its organization's usage; use an organization key",
            ));
        }
    }
    lodge.storage.get_org(&id).await.map_err(|e| match e {
        StorageError::NotFound => ApiError::not_found("organization"),
        other => other.into(),
    })?;
    let (from, to) = usage_range(&query)?;
    lodge.flush_usage().await;
    let prices = lodge.plans().prices.clone();
    let mut total = Usage::default();
    let tenants = lodge
        .storage
        .org_usage(&id, &from, &to)
        .await?
        .into_iter()
        .map(|(tenant_id, slug, usage)| {
            total.add(&usage);
            OrgTenantUsage {
                cost: estimate(&usage, &prices).total,
                tenant_id,
                slug,
                usage,
            }
        })
        .collect();
    Ok(Json(OrgUsageView {
        org_id: id,
        from,
        to,
        tenants,
        cost: estimate(&total, &prices),
        total,
    }))
}

/// A tenant's plan, its own overrides, and the limits in force.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LimitsEnvelope {
    /// Plan name.
    pub plan: String,
    /// The tenant's own values over the plan's.
    pub overrides: LimitsPatch,
    /// The limits new requests run under.
    pub effective: LimitsPatch,
}

pub(super) fn limits_envelope(tenant: &Tenant) -> LimitsEnvelope {
    let (plan, overrides) = tenant.plan();
    LimitsEnvelope {
        plan,
        overrides,
        effective: LimitsPatch::full(&tenant.limits()),
    }
}

#[utoipa::path(get, path = "/api/v1/tenant/{id}/limits", tag = "plans",
    params(("id" = String, Path, description = "tenant id or slug")), security(("bearer" = [])),
    responses((status = 200, description = "the tenant's plan, overrides and limits in force", body = LimitsEnvelope), Authenticated,
        (status = 404, description = "no such tenant, or not one this key may see", body = ErrorBody)))]
pub(super) async fn get_limits(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<LimitsEnvelope>, ApiError> {
    let record = tenant_for(&lodge, &caller, &id).await?;
    let live = lodge.live(&record).await?;
    Ok(Json(limits_envelope(&live)))
}

/// `PATCH /tenant/{id}/limits` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetLimits {
    /// Move the tenant to this plan.
    pub plan: Option<String>,
    /// Replace the tenant's own overrides (`{}` clears them).
    pub overrides: Option<LimitsPatch>,
}

#[utoipa::path(patch, path = "/api/v1/tenant/{id}/limits", tag = "plans", request_body = SetLimits,
    params(("id" = String, Path, description = "tenant id or slug")), security(("bearer" = [])),
    responses((status = 200, description = "the limits now in force", body = LimitsEnvelope), Authenticated, JsonBody,
        (status = 403, description = "not the admin token", body = ErrorBody),
        (status = 404, description = "no such tenant, or not one this key may see", body = ErrorBody)))]
pub(super) async fn set_limits(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<SetLimits>,
) -> Result<Json<LimitsEnvelope>, ApiError> {
    let record = tenant_for(&lodge, &caller, &id).await?;
    if caller != Principal::Admin {
        return Err(ApiError::forbidden(
            "only the operator's admin token may change plans and limits",
        ));
    }
    lodge
        .set_tenant_limits(&record, body.plan, body.overrides)
        .await?;
    let live = lodge.live(&record).await?;
    Ok(Json(limits_envelope(&live)))
}

/// The plans this host offers.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlansView {
    /// Plan name → its limits.
    pub plans: BTreeMap<String, LimitsPatch>,
    /// The price table of cost estimates.
    pub prices: crate::plans::PriceTable,
}

#[utoipa::path(get, path = "/api/v1/plans", tag = "plans", security(("bearer" = [])),
    responses((status = 200, description = "the host's plans and price table", body = PlansView), Authenticated))]
pub(super) async fn list_plans(
    State(lodge): State<AppState>,
    Caller(_caller): Caller,
) -> Json<PlansView> {
    let book = lodge.plans();
    Json(PlansView {
        plans: book
            .iter()
            .map(|(name, limits)| (name.clone(), LimitsPatch::full(limits)))
            .collect(),
        prices: book.prices.clone(),
    })
}
