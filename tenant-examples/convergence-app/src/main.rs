//! The starter template: a tenant app that asks the host's convergence engine.
//!
//! - `POST /api/design`, `/api/review`, `/api/decide` `{"prompt", "context"?}`
//! - `POST /api/converge` `{"prompt", "agentARole", "agentBRole", "context"?,
//!   "maxRounds"?, "threshold"?, "async"?}` → the outcome, or `202 {"taskId"}`
//! - `GET /api/converge/{taskId}` → `{"status", "outcome"?, "error"?}`
//! - `GET /health`

use lodge_sdk::convergence::{self, Error as ConvergenceError, Outcome, TaskState};
use lodge_sdk::{Body, Error, Request, Response};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Ask {
    prompt: String,
    context: Option<String>,
    agent_a_role: Option<String>,
    agent_b_role: Option<String>,
    max_rounds: Option<u32>,
    threshold: Option<u32>,
    #[serde(rename = "async", default)]
    run_async: bool,
}

fn outcome_json(o: &Outcome) -> Value {
    json!({
        "answer": o.answer,
        "score": o.score,
        "rounds": o.rounds,
        "converged": o.converged,
        "provider": o.provider,
        "model": o.model,
        "usage": { "promptTokens": o.usage.prompt_tokens, "completionTokens": o.usage.completion_tokens },
        "transcript": o.transcript.iter().map(|t| json!({
            "round": t.round, "agent": t.agent, "role": t.role, "content": t.content,
        })).collect::<Vec<_>>(),
    })
}

fn failure(e: ConvergenceError) -> Response<Body> {
    let (status, kind) = match &e {
        ConvergenceError::InvalidInput(_) => (400, "invalid-input"),
        ConvergenceError::NotFound(_) => (404, "not-found"),
        ConvergenceError::QuotaExceeded(_) => (429, "quota-exceeded"),
        ConvergenceError::Limit(_) => (429, "limit"),
        ConvergenceError::AccessDenied(_) => (403, "access-denied"),
        ConvergenceError::Unavailable(_) => (503, "unavailable"),
    };
    lodge_sdk::json(
        status,
        &json!({ "error": kind, "message": format!("{e:?}") }),
    )
}

async fn handle(mut req: Request<Body>) -> Result<Response<Body>, Error> {
    let path = req.uri().path().to_owned();
    let method = req.method().as_str().to_owned();
    if method == "GET" && path == "/health" {
        return Ok(lodge_sdk::json(200, &json!({ "status": "ok" })));
    }
    if method == "GET"
        && let Some(task_id) = path.strip_prefix("/api/converge/")
    {
        return Ok(match convergence::poll(task_id) {
            Ok(TaskState::Pending) => lodge_sdk::json(200, &json!({ "status": "pending" })),
            Ok(TaskState::Running) => lodge_sdk::json(200, &json!({ "status": "running" })),
            Ok(TaskState::Done(o)) => lodge_sdk::json(
                200,
                &json!({ "status": "done", "outcome": outcome_json(&o) }),
            ),
            Ok(TaskState::Failed(e)) => {
                lodge_sdk::json(200, &json!({ "status": "failed", "error": e }))
            }
            Err(e) => failure(e),
        });
    }

    if method != "POST" {
        return Ok(lodge_sdk::text(404, "not found\n"));
    }
    let ask: Ask = match serde_json::from_slice(req.body_mut().contents().await?) {
        Ok(ask) => ask,
        Err(e) => {
            return Ok(lodge_sdk::json(
                400,
                &json!({ "error": "invalid-input", "message": e.to_string() }),
            ));
        }
    };
    let context = ask.context.as_deref();
    let result = match path.as_str() {
        "/api/design" => convergence::design(&ask.prompt, context),
        "/api/review" => convergence::review(&ask.prompt, context),
        "/api/decide" => convergence::decide(&ask.prompt, context),
        "/api/converge" => {
            let mut request = convergence::request(
                &ask.prompt,
                ask.agent_a_role.as_deref().unwrap_or("Proposer"),
                ask.agent_b_role.as_deref().unwrap_or("Critic"),
            );
            request.context = ask.context.clone();
            request.max_rounds = ask.max_rounds;
            request.threshold = ask.threshold;
            if ask.run_async {
                return Ok(match convergence::submit(&request) {
                    Ok(task_id) => lodge_sdk::json(202, &json!({ "taskId": task_id })),
                    Err(e) => failure(e),
                });
            }
            convergence::converge(&request)
        }
        _ => return Ok(lodge_sdk::text(404, "not found\n")),
    };
    Ok(match result {
        Ok(outcome) => lodge_sdk::json(200, &outcome_json(&outcome)),
        Err(e) => failure(e),
    })
}

lodge_sdk::serve!(handle);
