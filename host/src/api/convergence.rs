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

/// Whose tasks a caller reads: a tenant key its own tenant's (`tenant`, if
/// given, must name it); an admin or organization key those of the tenant
/// `tenant` names, if it may see it (404 otherwise, as for every tenant).
async fn tasks_of(
    lodge: &ApiServices,
    caller: &Principal,
    tenant: Option<&str>,
) -> Result<String, ApiError> {
    match (caller, tenant) {
        (_, Some(tenant)) => Ok(tenant_for(lodge, caller, tenant).await?.id),
        (Principal::Tenant { tenant_id, .. }, None) => Ok(tenant_id.clone()),
        (_, None) => Err(ApiError::forbidden(
            "an admin or organization key names the tenant whose tasks it reads: ?tenant=<id or slug>",
        )),
    }
}

/// `GET /converge` parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TaskQuery {
    /// At most this many (1-100, default 50).
    pub limit: Option<i64>,
    /// Skip this many.
    pub offset: Option<i64>,
    /// Whose tasks (tenant id or slug): required with an admin or organization
    /// key; a tenant key may leave it out, or name its own tenant.
    pub tenant: Option<String>,
}

/// `GET /converge/{taskId}` parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TaskOf {
    /// Whose task (tenant id or slug): required with an admin or organization
    /// key; a tenant key may leave it out, or name its own tenant.
    pub tenant: Option<String>,
}

/// A task in a list: its state and a summary, not its outcome (read one task
/// with `GET /converge/{taskId}` for that).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskItem {
    /// `task_…`
    pub task_id: String,
    /// `pending`, `running`, `done` or `failed`.
    pub status: String,
    /// The preset it was asked through (`design`, `review`, `decide`, `plan`,
    /// `analyze`, `generate`), or `custom` for roles of the caller's own.
    pub kind: String,
    /// The start of its prompt (a preset's framing left out): at most 120
    /// characters, then `…`.
    pub prompt: String,
    /// RFC 3339: when it was queued.
    pub created_at: String,
    /// RFC 3339: its last change (claimed, lease renewed, finished).
    pub updated_at: String,
    /// Rounds run, when done.
    pub rounds: Option<u32>,
    /// Agreement of the last two positions (0-100), when done.
    pub score: Option<u32>,
    /// Whether the agreement threshold was reached, when done.
    pub converged: Option<bool>,
    /// Tokens used (prompt and completion), when done.
    pub tokens: Option<u64>,
    /// Why it failed.
    pub error: Option<String>,
    /// How its webhook delivery went, once tried.
    pub webhook_status: Option<String>,
}

impl From<crate::convergence::tasks::TaskSummary> for TaskItem {
    fn from(task: crate::convergence::tasks::TaskSummary) -> Self {
        Self {
            task_id: task.id,
            status: task.status,
            kind: task
                .preset
                .map_or("custom", crate::convergence::Preset::as_str)
                .to_owned(),
            prompt: task.prompt,
            created_at: task.created_at,
            updated_at: task.updated_at,
            rounds: task.rounds,
            score: task.score,
            converged: task.converged,
            tokens: task.tokens,
            error: task.error,
            webhook_status: task.webhook_status,
        }
    }
}

/// A page of a tenant's tasks.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskList {
    /// The tasks, newest first.
    pub tasks: Vec<TaskItem>,
    /// Offset of the next page, if there is one.
    pub next_offset: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/converge", tag = "convergence", params(TaskQuery),
    security(("bearer" = [])),
    responses((status = 200, description = "a page of the tenant's tasks, newest first, each without its \
            outcome (follow `taskId` to `GET /converge/{taskId}`)", body = TaskList), Authenticated,
        (status = 400, description = "an unknown or malformed query parameter", body = ErrorBody),
        (status = 403, description = "an admin or organization key without `tenant`", body = ErrorBody),
        (status = 404, description = "`tenant` names no tenant this key may see", body = ErrorBody)))]
pub(super) async fn list_tasks(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    ApiQuery(query): ApiQuery<TaskQuery>,
) -> Result<Json<TaskList>, ApiError> {
    let tenant_id = tasks_of(&lodge, &caller, query.tenant.as_deref()).await?;
    // At most 100: each task's stored outcome is read for its figures.
    let limit = query.limit.unwrap_or(50).clamp(1, 100);
    let offset = query.offset.unwrap_or(0).max(0);
    let tasks = lodge
        .convergence
        .list_tasks(&tenant_id, limit + 1, offset)
        .await?;
    let (tasks, next_offset) = one_page(tasks, limit, offset);
    Ok(Json(TaskList {
        tasks: tasks.into_iter().map(TaskItem::from).collect(),
        next_offset,
    }))
}

#[utoipa::path(get, path = "/api/v1/converge/{taskId}", tag = "convergence",
    params(("taskId" = String, Path, description = "the task id"), TaskOf), security(("bearer" = [])),
    responses((status = 200, description = "the task's state, and its outcome once done", body = TaskView), Authenticated,
        (status = 400, description = "a malformed query parameter", body = ErrorBody),
        (status = 403, description = "an admin or organization key without `tenant`", body = ErrorBody),
        (status = 404, description = "no such task of this tenant, or `tenant` names no tenant this key may see",
            body = ErrorBody)))]
pub(super) async fn converge_task(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    ApiPath(task_id): ApiPath<String>,
    ApiQuery(of): ApiQuery<TaskOf>,
) -> Result<Json<TaskView>, ApiError> {
    use crate::convergence::tasks::TaskState;
    let tenant_id = tasks_of(&lodge, &caller, of.tenant.as_deref()).await?;
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
