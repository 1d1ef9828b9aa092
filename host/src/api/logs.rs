//! A tenant's logs: a page, or a followed stream that ends when its key or tenant does.

use super::*;

/// `GET /tenant/{id}/logs` parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    /// Only lines with `seq` above this.
    pub since: Option<u64>,
    /// At most this many of the newest lines (default 100, max 1000).
    pub limit: Option<usize>,
    /// Keep the connection open and stream new lines as server-sent events.
    pub follow: Option<bool>,
}

/// Log lines.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LogPage {
    /// Oldest first.
    pub lines: Vec<LogLine>,
}

#[utoipa::path(get, path = "/api/v1/tenant/{id}/logs", tag = "tenants",
    params(("id" = String, Path, description = "tenant id or slug"), LogQuery), security(("bearer" = [])),
    responses((status = 200, description = "the lines; with `follow=true` a `text/event-stream` of `log` events \
            (each a `LogLine`), ended by an `end` event when the key or the tenant is gone",
            content((LogPage = "application/json"), (String = "text/event-stream"))),
        Authenticated, (status = 400, description = "an unknown or malformed query parameter", body = ErrorBody),
        (status = 404, description = "no such tenant, or not one this key may see", body = ErrorBody)))]
pub(super) async fn tenant_logs(
    State(lodge): State<AppState>,
    Caller(caller): Caller,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<LogQuery>,
) -> Result<Response, ApiError> {
    let record = tenant_for(&lodge, &caller, &id).await?;
    let live = lodge.live(&record).await?;
    let since = query.since.unwrap_or(0);
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    lodge.read_log_history(&live).await;
    if !query.follow.unwrap_or(false) {
        let lines = live.logs.since(since, limit);
        return Ok(Json(LogPage { lines }).into_response());
    }
    let watch = Watch {
        lodge: lodge.clone(),
        authorization: headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        tenant: live.clone(),
    };
    Ok(Sse::new(follow(live, since, limit, watch))
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// What keeps a followed log stream open: the key it was opened with still
/// valid, and the tenant still running. Checked every second.
pub(super) struct Watch {
    lodge: AppState,
    authorization: String,
    tenant: Arc<Tenant>,
}

impl Watch {
    /// Why the stream must end now, if it must.
    async fn ended(&self) -> Option<&'static str> {
        let lodge = &self.lodge;
        let valid = auth::authenticate(
            Some(&self.authorization),
            &lodge.admin,
            lodge.storage.as_ref(),
        )
        .await;
        match valid {
            Err(AuthError::Storage(_)) => {} // the database is away: keep streaming
            Err(_) => return Some("the key this stream was opened with was rotated or revoked"),
            Ok(_) => {}
        }
        let current = lodge.registry.get(&self.tenant.slug);
        if current.is_none_or(|t| t.id != self.tenant.id) {
            return Some("the tenant was deleted");
        }
        match self.tenant.state().status {
            TenantStatus::Stopped => Some("the tenant was stopped"),
            TenantStatus::Destroyed => Some("the tenant was deleted"),
            _ => None,
        }
    }
}

/// The backlog after `since`, then every new line, as `log` events with `id: seq`;
/// an `end` event (`{"reason": …}`) closes the stream within a second of
/// `watch` saying so.
pub(super) fn follow(
    tenant: Arc<Tenant>,
    since: u64,
    limit: usize,
    watch: Watch,
) -> impl Stream<Item = Result<Event, Infallible>> {
    enum Item {
        Line(LogLine),
        End(&'static str),
    }
    // Subscribe before reading the backlog so no line falls between the two.
    let receiver = tenant.logs.subscribe();
    let backlog = tenant.logs.since(since, limit);
    let last = backlog.last().map_or(since, |l| l.seq);
    let backlog = futures::stream::iter(backlog.into_iter().map(Item::Line));
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = Some((receiver, last, tick, watch));
    let live = futures::stream::unfold(state, |state| async move {
        let (mut receiver, mut last, mut tick, watch) = state?;
        loop {
            tokio::select! {
                received = receiver.recv() => match received {
                    Ok(line) if line.seq <= last => continue,
                    Ok(line) => {
                        last = line.seq;
                        return Some((Item::Line(line), Some((receiver, last, tick, watch))));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                },
                _ = tick.tick() => if let Some(reason) = watch.ended().await {
                    return Some((Item::End(reason), None));
                },
            }
        }
    });
    futures::StreamExt::map(futures::StreamExt::chain(backlog, live), |item| {
        Ok(match item {
            Item::Line(line) => {
                let event = Event::default().event("log").id(line.seq.to_string());
                event
                    .json_data(&line)
                    .unwrap_or_else(|_| Event::default().comment("unserializable line"))
            }
            Item::End(reason) => Event::default()
                .event("end")
                .json_data(serde_json::json!({ "reason": reason }))
                .unwrap_or_else(|_| Event::default().event("end")),
        })
    })
}
