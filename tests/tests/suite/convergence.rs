//! Convergence through a guest (`tenant-examples/convergence-app`) and through
//! the HTTP API: presets, async tasks (durable across a restart), signed
//! webhooks, the daily token budget, isolation, and the OpenAI-compatible
//! provider against a local chat-completions server.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hmac::{Hmac, Mac};
use lodge_host::Limits;
use lodge_host::convergence::provider::{
    ChatMessage, OpenAiCompatible, OpenAiConfig, Provider, ProviderError,
};
use lodge_tests::{ADMIN_TOKEN, TestHost, assert_error, guests};
use reqwest::Method;
use serde_json::{Value, json};

pub(crate) async fn post_app(host: &TestHost, slug: &str, path: &str, body: Value) -> (u16, Value) {
    let response = host
        .client
        .post(host.path_url(slug, path))
        .json(&body)
        .send()
        .await
        .expect("sent");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

pub(crate) async fn get_app(host: &TestHost, slug: &str, path: &str) -> Value {
    host.client
        .get(host.path_url(slug, path))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json")
}

/// An org and a tenant; returns the tenant's slug and key.
async fn tenant(host: &TestHost, name: &str) -> (String, String) {
    let org: Value = host
        .api_json(
            Method::POST,
            "/orgs",
            Some(ADMIN_TOKEN),
            Some(&json!({ "name": format!("{name}-org") })),
        )
        .await
        .1;
    let spawned: Value = host
        .api_json(
            Method::POST,
            "/tenant/spawn",
            org["apiKey"].as_str(),
            Some(&json!({ "name": name })),
        )
        .await
        .1;
    let t = &spawned["tenant"];
    (
        t["slug"].as_str().expect("slug").to_owned(),
        t["apiKey"].as_str().expect("key").to_owned(),
    )
}

async fn wait_done(host: &TestHost, key: &str, task_id: &str) -> Value {
    lodge_tests::eventually(Duration::from_secs(20), "the task finished", || async {
        let state: Value = host
            .api_json(
                Method::GET,
                &format!("/converge/{task_id}"),
                Some(key),
                None,
            )
            .await
            .1;
        (state["status"] == "done" || state["status"] == "failed").then_some(state)
    })
    .await
}

#[tokio::test]
async fn a_guest_converges_through_presets_and_tasks() {
    presets_and_tasks(guests::CONVERGENCE_APP).await;
}

/// The convergence starter (`wasm`: the Rust one or its JavaScript port) as
/// tenants `conv` and `other`: presets, custom roles, bad input, an async task
/// another tenant cannot see. Returns the host for more checks.
pub(crate) async fn presets_and_tasks(wasm: &str) -> TestHost {
    let host = TestHost::start().await;
    host.app("conv", wasm, Limits::default()).await;
    host.app("other", wasm, Limits::default()).await;
    assert_eq!(get_app(&host, "conv", "/health").await["status"], "ok");

    let (status, design) = post_app(
        &host,
        "conv",
        "/api/design",
        json!({ "prompt": "a login page for a bank" }),
    )
    .await;
    assert_eq!(status, 200, "{design}");
    assert_eq!(design["provider"], "offline");
    assert_eq!(design["converged"], true);
    assert!(design["score"].as_u64().unwrap_or(0) >= 80);
    assert_eq!(design["transcript"][0]["role"], "Software Architect");

    let (status, custom) = post_app(
        &host,
        "conv",
        "/api/converge",
        json!({ "prompt": "choose a queue", "agentARole": "Security Expert", "agentBRole": "UX Designer", "maxRounds": 3 }),
    )
    .await;
    assert_eq!(status, 200, "{custom}");
    assert_eq!(custom["transcript"][1]["role"], "UX Designer");
    assert!(custom["rounds"].as_u64().unwrap_or(0) <= 3);

    let (status, bad) = post_app(
        &host,
        "conv",
        "/api/converge",
        json!({ "prompt": "x", "maxRounds": 50 }),
    )
    .await;
    assert_eq!(
        (status, bad["error"].as_str()),
        (400, Some("invalid-input")),
        "{bad}"
    );

    let (status, queued) = post_app(
        &host,
        "conv",
        "/api/converge",
        json!({ "prompt": "plan a launch", "async": true }),
    )
    .await;
    assert_eq!(status, 202, "{queued}");
    let task_id = queued["taskId"].as_str().expect("task id").to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    let done = loop {
        let state = get_app(&host, "conv", &format!("/api/converge/{task_id}")).await;
        if state["status"] == "done" {
            break state;
        }
        assert!(Instant::now() < deadline, "{state}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(done["outcome"]["provider"], "offline");
    // Another tenant cannot see the task.
    let theirs = get_app(&host, "other", &format!("/api/converge/{task_id}")).await;
    assert_eq!(theirs["error"], "not-found", "{theirs}");
    host
}

#[tokio::test]
async fn the_http_api_converges_for_tenant_keys_with_signed_webhooks() {
    // The receiver is on loopback: the operator allows private targets.
    let host = TestHost::start_with(|c| c.webhook_allow_private = true).await;
    let (slug, key) = tenant(&host, "client").await;
    let (_, other_key) = tenant(&host, "bystander").await;

    let outcome: Value = host
        .api_json(
            Method::POST,
            "/review",
            Some(&key),
            Some(&json!({ "prompt": "fn main() { unsafe { … } }" })),
        )
        .await
        .1;
    assert_eq!(outcome["provider"], "offline");
    assert_eq!(outcome["transcript"][0]["role"], "Code Reviewer");
    let forbidden = host
        .api(Method::POST, "/converge", Some(ADMIN_TOKEN))
        .json(&json!({ "prompt": "x" }))
        .send()
        .await
        .expect("sent");
    assert_eq!(forbidden.status(), 403);

    // A webhook receiver on loopback.
    let received: Arc<tokio::sync::Mutex<Vec<(HeaderMap, String)>>> = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: String| {
            let sink = sink.clone();
            async move {
                sink.lock().await.push((headers, body));
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hook = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let queued = host
        .api(Method::POST, "/converge", Some(&key))
        .json(&json!({ "prompt": "design a cache", "agentARole": "DBA", "agentBRole": "SRE", "async": true, "webhookUrl": hook }))
        .send()
        .await
        .expect("sent");
    assert_eq!(queued.status(), 202);
    let task_id = queued.json::<Value>().await.expect("json")["taskId"]
        .as_str()
        .expect("id")
        .to_owned();
    let state = wait_done(&host, &key, &task_id).await;
    assert_eq!(state["status"], "done", "{state}");
    let theirs = host
        .api(
            Method::GET,
            &format!("/converge/{task_id}"),
            Some(&other_key),
        )
        .send()
        .await
        .expect("sent");
    assert_eq!(theirs.status(), 404);

    let deadline = Instant::now() + Duration::from_secs(10);
    while received.lock().await.is_empty() {
        assert!(Instant::now() < deadline, "webhook delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (headers, body) = received.lock().await[0].clone();
    let secret: Value = host
        .api_json(
            Method::GET,
            &format!("/tenant/{slug}/webhook-secret"),
            Some(&key),
            None,
        )
        .await
        .1;
    // `t=<unix seconds>,v1=<HMAC of "<t>.<body>">`: recent, and signed.
    let signature = headers["x-lodge-signature"].to_str().expect("text");
    let (t, v1) = signature
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",v1="))
        .expect("t=…,v1=…");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(
        now.abs_diff(t.parse::<u64>().expect("seconds")) < 60,
        "{signature}"
    );
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(secret["secret"].as_str().expect("secret").as_bytes())
            .expect("key");
    mac.update(format!("{t}.{body}").as_bytes());
    assert_eq!(v1, hex::encode(mac.finalize().into_bytes()));
    let payload: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(payload["taskId"], task_id.as_str());
    assert_eq!(payload["status"], "done");
}

/// Queues a convergence with `key` at `path` (`/converge` or a preset's);
/// returns its task id.
async fn submit(host: &TestHost, key: &str, path: &str, prompt: &str) -> String {
    let (status, queued) = host
        .api_json(
            Method::POST,
            path,
            Some(key),
            Some(&json!({ "prompt": prompt, "async": true })),
        )
        .await;
    assert_eq!(status, 202, "{queued}");
    queued["taskId"].as_str().expect("task id").to_owned()
}

/// The task ids of a `GET /converge` page, in its order.
fn task_ids(page: &Value) -> Vec<String> {
    page["tasks"]
        .as_array()
        .unwrap_or_else(|| panic!("a page of tasks: {page}"))
        .iter()
        .map(|t| t["taskId"].as_str().expect("taskId").to_owned())
        .collect()
}

/// `GET /api/v1{path}` with `key`, answered `status`; its JSON.
async fn get_json(host: &TestHost, path: &str, key: Option<&str>, status: u16) -> Value {
    let (got, body) = host.api_json(Method::GET, path, key, None).await;
    assert_eq!(got, status, "GET {path}: {body}");
    body
}

#[tokio::test]
async fn a_tenant_lists_its_own_tasks_and_no_one_elses() {
    let host = TestHost::start().await;
    let http = host.http();
    let (_, org_key, mine, key) = http.org_and_tenant("lister").await;
    let (_, _, theirs, their_key) = http.org_and_tenant("neighbour").await;
    let submitted = [
        submit(&host, &key, "/design", "a cache for sessions").await,
        submit(&host, &key, "/converge", "pick a queue").await,
        submit(&host, &key, "/converge", "name the service").await,
    ];
    let their_task = submit(&host, &their_key, "/converge", "the neighbour's plan").await;
    for task in &submitted {
        wait_done(&host, &key, task).await;
    }
    wait_done(&host, &their_key, &their_task).await;

    // Its own three, newest first, as summaries: no outcome.
    let page = get_json(&host, "/converge", Some(&key), 200).await;
    let listed = task_ids(&page);
    let mut sorted = listed.clone();
    sorted.sort_unstable();
    let mut expected = submitted.to_vec();
    expected.sort_unstable();
    assert_eq!(
        sorted, expected,
        "its own tasks, not the neighbour's: {page}"
    );
    assert!(page["nextOffset"].is_null(), "{page}");
    assert!(!page.to_string().contains("neighbour"), "{page}");
    let tasks = page["tasks"].as_array().expect("tasks");
    let order: Vec<(String, String)> = tasks
        .iter()
        .map(|t| {
            (
                t["createdAt"].as_str().expect("createdAt").to_owned(),
                t["taskId"].as_str().expect("taskId").to_owned(),
            )
        })
        .collect();
    assert!(order.is_sorted_by(|a, b| a >= b), "newest first: {order:?}");
    for task in tasks {
        assert_eq!(task["status"], "done", "{task}");
        assert!(task["rounds"].as_u64().is_some_and(|r| r >= 1), "{task}");
        assert!(task["tokens"].as_u64().is_some_and(|n| n > 0), "{task}");
        assert!(
            task["score"].is_u64() && task["converged"].is_boolean(),
            "{task}"
        );
        assert!(task["updatedAt"].is_string(), "{task}");
        for field in ["outcome", "transcript", "answer"] {
            assert!(task.get(field).is_none(), "{field} in a list: {task}");
        }
    }
    let shown = |id: &str| {
        tasks
            .iter()
            .find(|t| t["taskId"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} listed"))
    };
    let design = shown(&submitted[0]);
    assert_eq!(
        (&design["kind"], &design["prompt"]),
        (&json!("design"), &json!("a cache for sessions"))
    );
    let custom = shown(&submitted[1]);
    assert_eq!(
        (&custom["kind"], &custom["prompt"]),
        (&json!("custom"), &json!("pick a queue"))
    );

    // Two at a time, by nextOffset: the same tasks in the same order.
    let first = get_json(&host, "/converge?limit=2", Some(&key), 200).await;
    assert_eq!(first["nextOffset"], 2, "{first}");
    let rest = get_json(&host, "/converge?limit=2&offset=2", Some(&key), 200).await;
    assert!(rest["nextOffset"].is_null(), "{rest}");
    let mut paged = task_ids(&first);
    paged.extend(task_ids(&rest));
    assert_eq!(paged, listed);

    // The neighbour lists its own task only, and cannot name another tenant
    // (404, as for a tenant that does not exist) nor read its task.
    let their_page = get_json(&host, "/converge", Some(&their_key), 200).await;
    assert_eq!(task_ids(&their_page), std::slice::from_ref(&their_task));
    let named_self = get_json(
        &host,
        &format!("/converge?tenant={theirs}"),
        Some(&their_key),
        200,
    )
    .await;
    assert_eq!(task_ids(&named_self), std::slice::from_ref(&their_task));
    for path in [
        format!("/converge?tenant={mine}"),
        format!("/converge/{}", submitted[0]),
        format!("/converge/{}?tenant={mine}", submitted[0]),
    ] {
        let response = host
            .api(Method::GET, &path, Some(&their_key))
            .send()
            .await
            .expect("sent");
        assert_error(response, 404, "not_found").await;
    }

    // An organization key names its tenant, and only one of its own.
    let refused = host
        .api(Method::GET, "/converge", Some(&org_key))
        .send()
        .await
        .expect("sent");
    assert_error(refused, 403, "forbidden").await;
    let by_org = get_json(
        &host,
        &format!("/converge?tenant={mine}"),
        Some(&org_key),
        200,
    )
    .await;
    assert_eq!(task_ids(&by_org), listed);
    let one = get_json(
        &host,
        &format!("/converge/{}?tenant={mine}", submitted[0]),
        Some(&org_key),
        200,
    )
    .await;
    assert_eq!(one["status"], "done", "{one}");
    assert!(
        one["outcome"]["transcript"].is_array(),
        "the task whole: {one}"
    );
    for path in [
        format!("/converge?tenant={theirs}"),
        format!("/converge/{their_task}?tenant={theirs}"),
        format!("/converge/{their_task}?tenant={mine}"),
    ] {
        let response = host
            .api(Method::GET, &path, Some(&org_key))
            .send()
            .await
            .expect("sent");
        assert_error(response, 404, "not_found").await;
    }

    // The operator names any tenant; without one it is refused, as before.
    let refused = host
        .api(Method::GET, "/converge", Some(ADMIN_TOKEN))
        .send()
        .await
        .expect("sent");
    assert_error(refused, 403, "forbidden").await;
    let by_admin = get_json(
        &host,
        &format!("/converge?tenant={theirs}"),
        Some(ADMIN_TOKEN),
        200,
    )
    .await;
    assert_eq!(task_ids(&by_admin), std::slice::from_ref(&their_task));

    // No key; a bad query.
    let anonymous = host
        .api(Method::GET, "/converge", None)
        .send()
        .await
        .expect("sent");
    assert_error(anonymous, 401, "unauthorized").await;
    for query in ["limit=lots", "colour=blue"] {
        let response = host
            .api(Method::GET, &format!("/converge?{query}"), Some(&key))
            .send()
            .await
            .expect("sent");
        assert_error(response, 400, "invalid_query").await;
    }
}

#[tokio::test]
async fn the_daily_token_budget_answers_quota_exceeded() {
    daily_token_budget(guests::CONVERGENCE_APP).await;
}

/// The starter (`wasm`) on a plan of 50 tokens a day: the second call is 429.
pub(crate) async fn daily_token_budget(wasm: &str) {
    let host = TestHost::start().await;
    host.app(
        "thrifty",
        wasm,
        Limits {
            convergence_tokens_per_day: 50,
            ..Limits::default()
        },
    )
    .await;
    let (status, first) = post_app(
        &host,
        "thrifty",
        "/api/decide",
        json!({ "prompt": "tabs or spaces" }),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    let (status, second) = post_app(
        &host,
        "thrifty",
        "/api/decide",
        json!({ "prompt": "tabs or spaces" }),
    )
    .await;
    assert_eq!(
        (status, second["error"].as_str()),
        (429, Some("quota-exceeded")),
        "{second}"
    );
    let usage: Value = host
        .api_json(
            Method::GET,
            "/tenant/thrifty/usage",
            Some(ADMIN_TOKEN),
            None,
        )
        .await
        .1;
    assert!(
        usage["total"]["tokens"].as_i64().unwrap_or(0) > 50,
        "{usage}"
    );
}

#[tokio::test]
async fn tasks_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let host = TestHost::start_in(dir.path(), |c| c.convergence_workers = 0).await;
    let (_, key) = tenant(&host, "patient").await;
    let queued: Value = host
        .api_json(
            Method::POST,
            "/converge",
            Some(&key),
            Some(&json!({ "prompt": "wait for me", "async": true })),
        )
        .await
        .1;
    let task_id = queued["taskId"].as_str().expect("id").to_owned();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pending: Value = host
        .api_json(
            Method::GET,
            &format!("/converge/{task_id}"),
            Some(&key),
            None,
        )
        .await
        .1;
    assert_eq!(pending["status"], "pending", "no worker ran it");
    host.shutdown().await;

    let host = TestHost::start_in(dir.path(), |_| {}).await;
    let state = wait_done(&host, &key, &task_id).await;
    assert_eq!(state["status"], "done", "{state}");
}

/// A chat-completions server on loopback whose behaviour the test chooses.
async fn mock_llm(behaviour: &'static str) -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(move |Json(body): Json<Value>| {
            let counter = counter.clone();
            async move {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let ok = || {
                    let last = body["messages"]
                        .as_array()
                        .and_then(|m| m.last())
                        .cloned()
                        .unwrap_or_default();
                    let text = format!(
                        "model says: {}",
                        last["content"].as_str().unwrap_or("").len()
                    );
                    (
                        StatusCode::OK,
                        Json(json!({
                            "choices": [{ "message": { "role": "assistant", "content": text } }],
                            "usage": { "prompt_tokens": 11, "completion_tokens": 7 },
                        })),
                    )
                };
                match behaviour {
                    "flaky" if n == 0 => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        Json(json!({ "error": "busy" })),
                    ),
                    "rejects" => (
                        StatusCode::UNAUTHORIZED,
                        Json(json!({ "error": { "message": "bad key" } })),
                    ),
                    "slow" => {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        ok()
                    }
                    "garbage" => (StatusCode::OK, Json(json!({ "nothing": "here" }))),
                    _ => ok(),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/v1", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, calls)
}

fn llm(url: &str) -> OpenAiConfig {
    OpenAiConfig {
        base_url: url.to_owned(),
        model: "test-model".into(),
        api_key: Some("sk-test".into()),
        timeout: Duration::from_millis(500),
        retries: 2,
        backoff: Duration::from_millis(10),
    }
}

#[tokio::test]
async fn the_openai_compatible_provider_speaks_chat_completions() {
    let ask = [
        ChatMessage::system("You are a tester."),
        ChatMessage::user("hello"),
    ];

    let (url, calls) = mock_llm("ok").await;
    let reply = OpenAiCompatible::new(llm(&url))
        .chat(&ask)
        .await
        .expect("answers");
    assert_eq!(reply.content, "model says: 5");
    assert_eq!((reply.prompt_tokens, reply.completion_tokens), (11, 7));
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let (url, calls) = mock_llm("flaky").await;
    assert!(
        OpenAiCompatible::new(llm(&url)).chat(&ask).await.is_ok(),
        "a 503 is retried"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    let (url, calls) = mock_llm("rejects").await;
    let rejected = OpenAiCompatible::new(llm(&url)).chat(&ask).await;
    assert!(
        matches!(&rejected, Err(ProviderError::Rejected(m)) if m.contains("401")),
        "{rejected:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1, "a 401 is not retried");

    let (url, calls) = mock_llm("slow").await;
    let slow = OpenAiCompatible::new(llm(&url)).chat(&ask).await;
    assert!(matches!(slow, Err(ProviderError::Timeout)), "{slow:?}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "timeouts are retried, then reported"
    );

    let (url, _) = mock_llm("garbage").await;
    let garbage = OpenAiCompatible::new(llm(&url)).chat(&ask).await;
    assert!(
        matches!(garbage, Err(ProviderError::Malformed(_))),
        "{garbage:?}"
    );

    let unreachable = OpenAiCompatible::new(llm("http://127.0.0.1:9/v1"))
        .chat(&ask)
        .await;
    assert!(
        matches!(unreachable, Err(ProviderError::Unavailable(_))),
        "{unreachable:?}"
    );

    // End to end: a host configured with the endpoint labels its results.
    let (url, _) = mock_llm("ok").await;
    let host = TestHost::start_with(|c| c.llm = Some(llm(&url))).await;
    let (_, key) = tenant(&host, "modelled").await;
    let outcome: Value = host
        .api_json(
            Method::POST,
            "/decide",
            Some(&key),
            Some(&json!({ "prompt": "ship it?", "maxRounds": 1 })),
        )
        .await
        .1;
    assert_eq!(outcome["provider"], "openai-compatible", "{outcome}");
    assert_eq!(outcome["model"], "test-model");
    assert_eq!(outcome["usage"]["promptTokens"], 22);
}

#[tokio::test]
async fn the_agent_bot_remembers_converses_and_pays() {
    agent_bot(guests::AGENT_BOT).await;
}

/// A host serving the chat bot `wasm` as `bot` and as `shop`, `bot` funded with 100.
pub(crate) async fn two_bots(wasm: &str) -> TestHost {
    let host = TestHost::start().await;
    host.app("bot", wasm, Limits::default()).await;
    host.app("shop", wasm, Limits::default()).await;
    let fund = host
        .api(Method::POST, "/tenant/bot/wallet/fund", Some(ADMIN_TOKEN))
        .json(&json!({ "amount": 100 }))
        .send()
        .await
        .expect("sent");
    assert_eq!(fund.status(), 200);
    host
}

/// The chat bot (`wasm`: the Rust one or its Python port) as tenants `bot`
/// (funded with 100) and `shop`: it answers through convergence, tells its
/// balance and address, pays 5 to `shop`, and keeps each tenant's history
/// apart. Returns the host and `shop`'s address.
pub(crate) async fn agent_bot(wasm: &str) -> (TestHost, String) {
    let host = two_bots(wasm).await;

    let (status, first) = post_app(
        &host,
        "bot",
        "/chat",
        json!({ "message": "how should we cache sessions?", "conversationId": "c1" }),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    assert!(
        first["reply"].as_str().unwrap_or("").contains("offline"),
        "answered by convergence: {first}"
    );
    let (_, balance) = post_app(
        &host,
        "bot",
        "/chat",
        json!({ "message": "check my wallet balance", "conversationId": "c1" }),
    )
    .await;
    assert!(
        balance["reply"]
            .as_str()
            .unwrap_or("")
            .contains("Your balance is 100"),
        "{balance}"
    );

    let (_, shop) = post_app(
        &host,
        "shop",
        "/chat",
        json!({ "message": "what is my address" }),
    )
    .await;
    let shop_reply = shop["reply"].as_str().unwrap_or("");
    let shop_address = shop_reply
        .split_whitespace()
        .last()
        .unwrap_or("")
        .trim_end_matches('.')
        .to_owned();
    assert!(shop_address.starts_with("lodge1"), "{shop}");
    let (_, paid) = post_app(
        &host,
        "bot",
        "/chat",
        json!({ "message": format!("send 5 to {shop_address}"), "conversationId": "c1" }),
    )
    .await;
    assert!(
        paid["reply"].as_str().unwrap_or("").starts_with("Sent 5"),
        "{paid}"
    );
    let (_, after) = post_app(&host, "shop", "/chat", json!({ "message": "balance?" })).await;
    assert!(
        after["reply"]
            .as_str()
            .unwrap_or("")
            .contains("Your balance is 5"),
        "{after}"
    );

    let history = get_app(&host, "bot", "/chat/c1").await;
    assert_eq!(history.as_array().map(Vec::len), Some(6), "{history}");
    assert_eq!(history[0]["content"], "how should we cache sessions?");
    // Another tenant's bot has its own storage.
    assert_eq!(get_app(&host, "shop", "/chat/c1").await, json!([]));
    (host, shop_address)
}
