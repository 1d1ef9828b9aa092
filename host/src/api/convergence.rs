//! Convergence for tenant keys, its tasks, and webhook secrets.

use super::*;

/// `POST /converge` (and the presets) body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConvergeBody {
    /// The question or task.
    pub prompt: String,
    /// Role of agent A (default `Proposer`; presets set their own).
    pub agent_a_role: Option<String>,
    /// Role of agent B (default `Critic`).
    pub agent_b_role: Option<String>,
    /// Background both agents see.
    pub context: Option<String>,
    /// Rounds at most (1-10, default 5).
    pub max_rounds: Option<u32>,
    /// Agreement that ends the dialogue (0-100, default 80).
    pub threshold: Option<u32>,
    /// Queue it and answer 202 with a task id.
    #[serde(rename = "async")]
    pub run_async: Option<bool>,
    /// Where to POST the result of an async task (signed, see the docs).
    pub webhook_url: Option<String>,
}

/// An async convergence's handle, or its state.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskView {
    /// `task_…`
    pub task_id: String,
    /// `pending`, `running`, `done` or `failed`.
    pub status: String,
    /// The outcome, when done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<crate::convergence::Outcome>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl From<crate::convergence::tasks::ConvergenceFailure> for ApiError {
    fn from(e: crate::convergence::tasks::ConvergenceFailure) -> Self {
        use crate::convergence::tasks::ConvergenceFailure as F;
        match e {
            F::Invalid(m) => Self::new(StatusCode::BAD_REQUEST, "invalid_request", m),
            e @ F::QuotaExceeded { .. } => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "quota_exceeded",
                e.to_string(),
            ),
            e @ F::TooManyTasks { .. } => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_tasks",
                e.to_string(),
            ),
            F::UnknownTask(_) => Self::not_found("task"),
            // The detail (the provider's URL, its answer) is the operator's, not the tenant's.
            F::Provider(e) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "provider_unavailable",
                "the model provider is unavailable; retry later (quote this response's \
                 x-request-id to the operator)",
            )
            .caused_by(
                tracing::Level::WARN,
                "the model provider failed",
                e.to_string(),
            ),
            F::Storage(e) => e.into(),
        }
    }
}

/// What `POST /converge` and its presets answer besides failures common to all calls.
#[derive(Debug)]
pub struct ConvergeAnswers;

impl utoipa::IntoResponses for ConvergeAnswers {
    fn responses() -> BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::Response>> {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let json = |name: std::borrow::Cow<'static, str>| {
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(name)))
                .build()
        };
        BTreeMap::from([
            (
                "200".to_owned(),
                ResponseBuilder::new()
                    .description("the outcome of the dialogue")
                    .content(
                        "application/json",
                        json(crate::convergence::Outcome::name()),
                    )
                    .build()
                    .into(),
            ),
            (
                "202".to_owned(),
                ResponseBuilder::new()
                    .description("with `\"async\": true`: the task, queued; follow `taskId`")
                    .content("application/json", json(TaskView::name()))
                    .build()
                    .into(),
            ),
            ("403".to_owned(), error_response("not a tenant key")),
            (
                "429".to_owned(),
                error_response(
                    "the tenant's token budget is spent, or it has too many tasks pending",
                ),
            ),
            (
                "503".to_owned(),
                error_response("the model provider is unavailable; retry later"),
            ),
        ])
    }
}

/// The tenant a convergence call is metered to: tenant keys only.
pub(super) fn converging_tenant(caller: &Principal) -> Result<String, ApiError> {
    match caller {
        Principal::Tenant { tenant_id, .. } => Ok(tenant_id.clone()),
        _ => Err(ApiError::forbidden(
            "convergence is called with a tenant key (sk_tenant_…)",
        )),
    }
}

pub(super) async fn run_converge(
    lodge: &ApiServices,
    caller: &Principal,
    preset: Option<crate::convergence::Preset>,
    body: ConvergeBody,
) -> Result<Response, ApiError> {
    let tenant_id = converging_tenant(caller)?;
    let request = match preset {
        Some(preset) => {
            let mut request = preset.request(&body.prompt, body.context);
            request.max_rounds = body.max_rounds;
            request.threshold = body.threshold;
            request
        }
        None => crate::convergence::ConvergeRequest {
            prompt: body.prompt,
            agent_a_role: body.agent_a_role.unwrap_or_else(|| "Proposer".into()),
            agent_b_role: body.agent_b_role.unwrap_or_else(|| "Critic".into()),
            context: body.context,
            max_rounds: body.max_rounds,
            threshold: body.threshold,
        },
    };
    if body.run_async.unwrap_or(false) {
        let task_id = lodge
            .convergence
            .submit_task(&tenant_id, &request, body.webhook_url)
            .await?;
        let view = TaskView {
            task_id,
            status: "pending".into(),
            outcome: None,
            error: None,
        };
        return Ok((StatusCode::ACCEPTED, Json(view)).into_response());
    }
    if body.webhook_url.is_some() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "webhookUrl needs \"async\": true",
        ));
    }
    Ok(Json(lodge.convergence.converge_for(&tenant_id, &request).await?).into_response())
}

#[utoipa::path(post, path = "/api/v1/converge", tag = "convergence", request_body = ConvergeBody,
    security(("bearer" = [])),
    responses(ConvergeAnswers, Authenticated, JsonBody))]
pub(super) async fn converge(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    ApiJson(body): ApiJson<ConvergeBody>,
) -> Result<Response, ApiError> {
    run_converge(&lodge, &caller, None, body).await
}

#[utoipa::path(post, path = "/api/v1/{preset}", tag = "convergence", request_body = ConvergeBody,
    params(("preset" = crate::convergence::Preset, Path, description = "the roles to converge with")),
    security(("bearer" = [])),
    responses(ConvergeAnswers, Authenticated, JsonBody,
        (status = 404, description = "no such preset", body = ErrorBody)))]
pub(super) async fn converge_preset(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    uri: http::Uri,
    ApiJson(body): ApiJson<ConvergeBody>,
) -> Result<Response, ApiError> {
    let name = uri.path().rsplit('/').next().unwrap_or_default().to_owned();
    let preset: crate::convergence::Preset =
        serde_json::from_value(serde_json::Value::String(name))
            .map_err(|_| ApiError::not_found("route"))?;
    run_converge(&lodge, &caller, Some(preset), body).await
}

#[utoipa::path(get, path = "/api/v1/converge/{taskId}", tag = "convergence",
    params(("taskId" = String, Path, description = "the task id")), security(("bearer" = [])),
    responses((status = 200, description = "the task's state, and its outcome once done", body = TaskView), Authenticated,
        (status = 403, description = "not a tenant key", body = ErrorBody),
        (status = 404, description = "no such task of this tenant", body = ErrorBody)))]
pub(super) async fn converge_task(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    ApiPath(task_id): ApiPath<String>,
) -> Result<Json<TaskView>, ApiError> {
    use crate::convergence::tasks::TaskState;
    let tenant_id = converging_tenant(&caller)?;
    let state = lodge.convergence.task_state(&tenant_id, &task_id).await?;
    let (status, outcome, error) = match state {
        TaskState::Pending => ("pending", None, None),
        TaskState::Running => ("running", None, None),
        TaskState::Done(o) => ("done", Some(*o), None),
        TaskState::Failed(e) => ("failed", None, Some(e)),
    };
    Ok(Json(TaskView {
        task_id,
        status: status.into(),
        outcome,
        error,
    }))
}

/// The key a tenant's webhooks are signed with.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WebhookSecret {
    /// HMAC-SHA256 key (hex). A webhook carries `X-Lodge-Signature: t=<unix
    /// seconds>,v1=<hex of HMAC(key, "<t>.<body>")>`; refuse old timestamps.
    pub secret: String,
}

#[utoipa::path(get, path = "/api/v1/tenant/{id}/webhook-secret", tag = "convergence",
    params(("id" = String, Path, description = "tenant id or slug")), security(("bearer" = [])),
    responses((status = 200, description = "the tenant's webhook signing key", body = WebhookSecret), Authenticated,
        (status = 404, description = "no such tenant, or not one this key may see", body = ErrorBody)))]
pub(super) async fn webhook_secret(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<WebhookSecret>, ApiError> {
    let record = tenant_for(&lodge, &caller, &id).await?;
    Ok(Json(WebhookSecret {
        secret: lodge.convergence.webhook_secret(&record.id).await?,
    }))
}

#[utoipa::path(post, path = "/api/v1/tenant/{id}/webhook-secret/rotate", tag = "convergence",
    params(("id" = String, Path, description = "tenant id or slug")), security(("bearer" = [])),
    responses((status = 200, body = WebhookSecret, description = "the new secret; the old one signs nothing from now on"),
        Authenticated, (status = 404, description = "no such tenant, or not one this key may see", body = ErrorBody)))]
pub(super) async fn rotate_webhook_secret(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<WebhookSecret>, ApiError> {
    let record = tenant_for(&lodge, &caller, &id).await?;
    Ok(Json(WebhookSecret {
        secret: lodge.convergence.rotate_webhook_secret(&record.id).await?,
    }))
}
