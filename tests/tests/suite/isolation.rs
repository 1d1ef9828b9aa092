//! One tenant at its worst against its neighbours: each shared resource
//! (memory budget, deploys and disk, the convergence queue, the database, the
//! log archive, connections) is attacked on purpose, and the neighbour is
//! still served.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use axum::Json;
use axum::routing::post;
use lodge_host::Limits;
use lodge_host::convergence::provider::OpenAiConfig;
use lodge_tests::{
    ADMIN_TOKEN, Api, LodgeProcess, TestHost, assert_error, eventually, guests, wasm,
};
use reqwest::Method;
use serde_json::{Value, json};

/// An org and a tenant in it; returns (tenant slug, tenant key).
async fn tenant(api: &Api, name: &str) -> (String, String) {
    let (_, _, slug, key) = api.org_and_tenant(name).await;
    (slug, key)
}

/// Sets a tenant's own limits (the operator's call).
async fn set_overrides(api: &Api, slug: &str, overrides: Value) {
    let (status, body) = api
        .json(
            Method::PATCH,
            &format!("/tenant/{slug}/limits"),
            Some(ADMIN_TOKEN),
            Some(&json!({ "overrides": overrides })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// The hello component with a custom section naming `tag`: the same app, other bytes.
fn distinct_hello(tag: &str) -> Vec<u8> {
    let mut bytes = wasm(guests::HELLO);
    let name = b"lodge-test";
    let mut payload = vec![name.len() as u8];
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    bytes.push(0); // custom section
    let mut size = payload.len();
    loop {
        let byte = (size & 0x7f) as u8;
        size >>= 7;
        if size == 0 {
            bytes.push(byte);
            break;
        }
        bytes.push(byte | 0x80);
    }
    bytes.extend_from_slice(&payload);
    bytes
}

async fn deploy(api: &Api, key: &str, slug: &str, component: Vec<u8>) -> reqwest::Response {
    api.request(Method::PUT, &format!("/tenant/{slug}/component"), Some(key))
        .header("content-type", "application/wasm")
        .body(component)
        .send()
        .await
        .expect("sent")
}

/// `n` GETs of `url` at once; each task answers its status.
fn gets_at_once(
    client: &reqwest::Client,
    url: &str,
    n: usize,
) -> Vec<tokio::task::JoinHandle<reqwest::StatusCode>> {
    (0..n)
        .map(|_| {
            let request = client.get(url).send();
            tokio::spawn(async move { request.await.expect("sent").status() })
        })
        .collect()
}

async fn rollback(api: &Api, key: &str, slug: &str, version: i64) -> reqwest::Response {
    api.request(Method::POST, &format!("/tenant/{slug}/rollback"), Some(key))
        .json(&json!({ "version": version }))
        .send()
        .await
        .expect("sent")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_hog_is_refused_its_neighbours_share_and_the_neighbour_is_served() {
    let hog = format!("hog={}", guests::HOSTILE);
    let hello = format!("hello={}", guests::HELLO);
    let lodge =
        LodgeProcess::serve(&["--app", &hog, "--app", &hello, "--memory-budget-mib", "512"]);
    let api = lodge.http();
    // 20 requests that grow to 100 MiB and sleep, and 40 small ones: all
    // memory, no CPU.
    let mut hoarders = Vec::new();
    for i in 0..60 {
        let mb = if i < 20 { 100 } else { 4 };
        let url = api.tenant_url("hog", &format!("/hog?mb={mb}&ms=4000"));
        let client = api.client.clone();
        hoarders.push(tokio::spawn(async move {
            let response = client.get(url).send().await.expect("sent");
            let retry_after = response.headers().get("retry-after").cloned();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (status, retry_after, body)
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Meanwhile the neighbour: 10 of 10 served.
    let neighbour = gets_at_once(&api.client, &api.tenant_url("hello", "/"), 10);
    for served in neighbour {
        assert_eq!(served.await.expect("joined"), 200, "{}", lodge.stderr());
    }
    let (mut held, mut refused) = (0, 0);
    for hoarder in hoarders {
        let (status, retry_after, body) = hoarder.await.expect("joined");
        match status {
            200 => held += 1,
            503 => {
                assert_eq!(body["error"]["code"], "memory_busy", "{body}");
                assert!(retry_after.is_some(), "503 says when to retry");
                refused += 1;
            }
            other => panic!("the hog got {other}: {body}"),
        }
    }
    assert!(held > 0 && refused > 0, "held {held}, refused {refused}");
    let (_, logs) = api
        .json(
            Method::GET,
            "/tenant/hog/logs?limit=500",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert!(
        logs.to_string().contains("fair share"),
        "the hog's log says why: {logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_flood_keeps_the_data_dir_bounded_and_the_active_version_serving() {
    let host = TestHost::start_with(|c| {
        // Its own artifacts directory, pruned like an operator's.
        c.artifacts_dir = None;
        c.prune_artifacts = true;
    })
    .await;
    let api = host.http();
    let (slug, key) = tenant(&api, "flooder").await;
    set_overrides(&api, &slug, json!({ "max_versions": 3 })).await;

    let mut digests = Vec::new();
    for i in 0..6 {
        let component = distinct_hello(&format!("flood-{i}"));
        digests.push(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
            &component,
        )));
        let deployed = deploy(&api, &key, &slug, component).await;
        assert_eq!(deployed.status(), 201, "deploy {i}");
    }
    let (_, list) = api
        .json(
            Method::GET,
            &format!("/tenant/{slug}/deployments"),
            Some(&key),
            None,
        )
        .await;
    let versions: Vec<i64> = list["deployments"]
        .as_array()
        .expect("list")
        .iter()
        .map(|d| d["version"].as_i64().expect("version"))
        .collect();
    assert_eq!(versions, [6, 5, 4], "{list}");
    for (i, digest) in digests.iter().enumerate() {
        let stored = host.lodge.storage.blob_exists(digest).await.expect("db");
        assert_eq!(
            stored,
            i >= 3,
            "component {i} stored only while a version uses it"
        );
    }
    let artifacts: Vec<String> = std::fs::read_dir(host.lodge.config.data_dir.join("artifacts"))
        .expect("artifacts dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".cwasm"))
        .collect();
    assert_eq!(
        artifacts.len(),
        3,
        "artifacts of pruned versions go too: {artifacts:?}"
    );
    let (status, _) = host.http().tenant_json(&slug, "/").await;
    assert_eq!(status, 200);

    // Rollback to a pruned version: 410, and to one that never was: 404.
    assert_error(rollback(&api, &key, &slug, 2).await, 410, "version_pruned").await;
    assert_error(rollback(&api, &key, &slug, 99).await, 404, "not_found").await;

    // Uploads at once: one at a time per tenant, the rest 429 with Retry-After.
    let racing: Vec<_> = (0..4)
        .map(|i| {
            let api = api.clone();
            let (key, slug) = (key.clone(), slug.clone());
            tokio::spawn(async move {
                deploy(&api, &key, &slug, distinct_hello(&format!("race-{i}"))).await
            })
        })
        .collect();
    let (mut created, mut busy) = (0, 0);
    for race in racing {
        let response = race.await.expect("joined");
        match response.status().as_u16() {
            201 => created += 1,
            429 => {
                assert!(response.headers().contains_key("retry-after"));
                assert_error(response, 429, "deploy_in_progress").await;
                busy += 1;
            }
            other => panic!("a racing deploy got {other}"),
        }
    }
    assert!(created >= 1 && busy >= 1, "created {created}, busy {busy}");

    // A compile over the plan's time limit: a clear 422, the active version serves on.
    set_overrides(
        &api,
        &slug,
        json!({ "max_versions": 3, "compile_timeout_ms": 1 }),
    )
    .await;
    let slow = deploy(&api, &key, &slug, distinct_hello("too-slow")).await;
    assert_error(slow, 422, "compile_timeout").await;
    let (status, _) = host.http().tenant_json(&slug, "/").await;
    assert_eq!(status, 200);
    host.shutdown().await;
}

static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A model endpoint answering every chat call after `delay`.
async fn slow_model(delay: Duration) -> String {
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(move || async move {
            tokio::time::sleep(delay).await;
            // A word of its own each time: the agents never fully agree.
            let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Json(json!({
                "choices": [{ "message": { "role": "assistant", "content": format!("position number{n}") } }],
                "usage": { "prompt_tokens": 11, "completion_tokens": 7 },
            }))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/v1", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn model(url: &str) -> OpenAiConfig {
    OpenAiConfig {
        base_url: url.to_owned(),
        model: "test-model".into(),
        api_key: None,
        timeout: Duration::from_secs(5),
        retries: 0,
        backoff: Duration::from_millis(10),
    }
}

async fn submit(api: &Api, key: &str, body: Value) -> (u16, Value) {
    api.json(Method::POST, "/converge", Some(key), Some(&body))
        .await
}

/// Waits up to 10 s for the task `queued` (a submit's answer) to end.
async fn wait_task(api: &Api, key: &str, queued: &Value) -> Value {
    let task = queued["taskId"].as_str().expect("task id");
    eventually(Duration::from_secs(10), "the task finished", || async {
        let (_, state) = api
            .json(Method::GET, &format!("/converge/{task}"), Some(key), None)
            .await;
        (state["status"] == "done" || state["status"] == "failed").then_some(state)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_flood_is_capped_and_another_tenants_task_completes_promptly() {
    let url = slow_model(Duration::from_millis(300)).await;
    let host = TestHost::start_with(|c| {
        c.llm = Some(model(&url));
        // The black hole below is on loopback.
        c.webhook_allow_private = true;
    })
    .await;
    let api = host.http();
    let (flood, flood_key) = tenant(&api, "flood").await;
    let (_, calm_key) = tenant(&api, "calm").await;
    set_overrides(&api, &flood, json!({ "convergence_max_pending": 10 })).await;

    // Webhooks to an address that accepts and never answers.
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let hook = format!("http://{}/hook", blackhole.local_addr().expect("addr"));
    let task =
        json!({ "prompt": "plan a migration", "maxRounds": 1, "async": true, "webhookUrl": hook });
    let mut accepted = Vec::new();
    let mut refused = 0;
    for _ in 0..15 {
        let (status, body) = submit(&api, &flood_key, task.clone()).await;
        match status {
            202 => accepted.push(body["taskId"].as_str().expect("id").to_owned()),
            429 => {
                assert_eq!(body["error"]["code"], "too_many_tasks", "{body}");
                assert!(
                    body["error"]["message"]
                        .as_str()
                        .unwrap_or("")
                        .contains("10")
                );
                refused += 1;
            }
            other => panic!("submit answered {other}: {body}"),
        }
    }
    assert!(
        accepted.len() <= 10 && refused >= 5,
        "{} accepted",
        accepted.len()
    );

    // The neighbour's task is picked next, not after the flood: when it is
    // done, some of the flood's are still waiting.
    let (status, queued) = submit(
        &api,
        &calm_key,
        json!({ "prompt": "name a cat", "maxRounds": 1, "async": true }),
    )
    .await;
    assert_eq!(status, 202, "{queued}");
    let state = wait_task(&api, &calm_key, &queued).await;
    assert_eq!(state["status"], "done", "{state}");
    let mut waiting = 0;
    for id in &accepted {
        let (_, state) = api
            .json(
                Method::GET,
                &format!("/converge/{id}"),
                Some(&flood_key),
                None,
            )
            .await;
        waiting += usize::from(state["status"] == "pending");
    }
    assert!(
        waiting > 0,
        "the neighbour's task did not wait for the whole flood"
    );

    // Deleting the flooding tenant cancels what it still had waiting.
    let flood_id = host
        .lodge
        .registry
        .get(&flood)
        .expect("tenant")
        .id
        .to_string();
    let (status, _) = api
        .json(
            Method::DELETE,
            &format!("/tenant/{flood}"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert!(status == 200 || status == 204, "delete answered {status}");
    let mut cancelled = 0;
    for id in &accepted {
        let task = host
            .lodge
            .storage
            .task_get(&flood_id, id)
            .await
            .expect("db")
            .expect("task");
        if task
            .error
            .as_deref()
            .is_some_and(|e| e.contains("cancelled"))
        {
            cancelled += 1;
        }
    }
    assert!(
        cancelled > 0,
        "the deleted tenant's waiting tasks were cancelled"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_metered_per_call_and_the_budget_rechecked_when_a_task_starts() {
    let url = slow_model(Duration::from_millis(200)).await;
    let host = TestHost::start_with(|c| {
        c.llm = Some(model(&url));
        c.convergence_workers = 1;
    })
    .await;
    let api = host.http();
    let (slug, key) = tenant(&api, "thinker").await;

    // A dialogue cut short by the client still pays for the calls it made.
    let cut = api
        .request(Method::POST, "/converge", Some(&key))
        .json(&json!({ "prompt": "argue forever", "maxRounds": 10, "threshold": 100 }))
        .timeout(Duration::from_millis(1100))
        .send()
        .await;
    assert!(cut.is_err(), "the client gave up first");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let counters = host
        .lodge
        .registry
        .get(&slug)
        .expect("tenant")
        .counters
        .clone();
    let metered = counters.tokens.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        metered >= 18 * 4,
        "at least four calls of 18 tokens metered, got {metered}"
    );

    // Two tasks queued within the budget; when the second starts, it is spent.
    set_overrides(
        &api,
        &slug,
        json!({ "convergence_tokens_per_day": metered + 1 }),
    )
    .await;
    let body = json!({ "prompt": "one more", "maxRounds": 1, "async": true });
    let (_, first) = submit(&api, &key, body.clone()).await;
    let (_, second) = submit(&api, &key, body).await;
    let first = wait_task(&api, &key, &first).await;
    assert_eq!(first["status"], "done", "{first}");
    let second = wait_task(&api, &key, &second).await;
    assert_eq!(second["status"], "failed", "{second}");
    assert!(
        second["error"]
            .as_str()
            .unwrap_or("")
            .starts_with("quota-exceeded"),
        "{second}"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_key_value_batch_is_refused_and_the_neighbours_calls_complete() {
    let host = TestHost::start().await;
    host.app("bulk", guests::KV_APP, Limits::default()).await;
    host.app("calm", guests::KV_APP, Limits::default()).await;
    let post = |slug: &str, path: &str| host.client.post(host.path_url(slug, path)).body("").send();
    for op in ["set", "get", "delete"] {
        let refused = post("bulk", &format!("/bulk?n=5000&op={op}"))
            .await
            .expect("sent");
        assert_eq!(refused.status(), 507, "{op}");
        let message = refused.text().await.expect("text");
        assert!(message.contains("kv_batch_max_keys"), "{op}: {message}");
    }
    let fits = post("bulk", "/bulk?n=500&op=set").await.expect("sent");
    assert_eq!(fits.status(), 200);
    // The neighbour's key-value calls meanwhile.
    let flood: Vec<_> = (0..4)
        .map(|_| tokio::spawn(post("bulk", "/bulk?n=5000&op=set")))
        .collect();
    for i in 0..20 {
        let set = host
            .client
            .put(host.path_url("calm", &format!("/kv/k{i}")))
            .body("v")
            .send()
            .await
            .expect("sent");
        let status = set.status();
        assert_eq!(status, 204, "{}", set.text().await.unwrap_or_default());
    }
    for f in flood {
        assert_eq!(f.await.expect("joined").expect("sent").status(), 507);
    }
    let got = host.get("calm", "/kv/k19").await;
    assert_eq!(got.status(), 200);
    host.shutdown().await;
}

/// Tenant `slug`'s archived log lines.
async fn archived(host: &TestHost, slug: &str) -> Vec<lodge_host::logs::LogLine> {
    let tenant = host.lodge.registry.get(slug).expect("tenant");
    host.lodge
        .storage
        .recent_logs(&tenant.id, 100_000)
        .await
        .expect("db")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chatty_tenant_does_not_cost_another_its_archived_lines() {
    let host = TestHost::start_with(|c| c.log_archive_queue = 200).await;
    host.app("chatty", guests::HOSTILE, Limits::default()).await;
    host.app("quiet", guests::HOSTILE, Limits::default()).await;
    let chatter = gets_at_once(
        &host.client,
        &host.path_url("chatty", "/print?lines=20000"),
        4,
    );
    for _ in 0..20 {
        assert_eq!(host.get("quiet", "/log").await.status(), 200);
    }
    for c in chatter {
        assert_eq!(c.await.expect("joined"), 200);
    }
    eventually(
        Duration::from_secs(10),
        "quiet's 40 lines archived",
        || async {
            let lines = archived(&host, "quiet").await;
            let guest_lines = lines.iter().filter(|l| l.message.starts_with("hello on"));
            (guest_lines.count() == 40).then_some(())
        },
    )
    .await;
    let metrics = host.metrics().await;
    let dropped = metrics
        .lines()
        .find(|l| l.starts_with("lodge_log_lines_dropped_total{tenant=\"chatty\"}"))
        .unwrap_or_else(|| panic!("chatty's drops are counted: {metrics}"));
    assert!(!dropped.ends_with(" 0"), "{dropped}");
    assert!(
        !metrics.contains("lodge_log_lines_dropped_total{tenant=\"quiet\"}"),
        "quiet dropped nothing"
    );
    assert!(
        archived(&host, "chatty")
            .await
            .iter()
            .any(|l| l.message.contains("not archived")),
        "the chatty tenant is told in its own (archived) log"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archived_lines_are_pruned_by_count_and_age() {
    let host = TestHost::start().await;
    let limits = Limits {
        log_retention_lines: 50,
        ..Limits::default()
    };
    host.app("talker", guests::HOSTILE, limits).await;
    assert_eq!(host.get("talker", "/print?lines=200").await.status(), 200);
    let talker = host.lodge.registry.get("talker").expect("tenant");
    eventually(Duration::from_secs(10), "200 lines archived", || async {
        (archived(&host, "talker").await.len() >= 200).then_some(())
    })
    .await;
    lodge_host::jobs::housekeeping(&host.lodge).await;
    let kept = archived(&host, "talker").await;
    assert_eq!(kept.len(), 50);
    assert!(
        kept.last().is_some_and(|l| l.message.contains("199")),
        "the newest stay"
    );
    // By age: everything older than the retention goes.
    let now = lodge_host::storage::now_ms();
    let pruned = host
        .lodge
        .storage
        .prune_logs(&talker.id, now + 1, 1000)
        .await
        .expect("db");
    assert_eq!(pruned, 50);
    host.shutdown().await;
}

/// Opens `n` connections that send part of a request's headers and stop.
fn slow_clients(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut stream = TcpStream::connect(addr).expect("connect");
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: hello.localhost\r\n")
                .expect("write");
            stream
        })
        .collect()
}

/// Whether the server closed `stream` within `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).expect("timeout");
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {} // a 408 before closing, say
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true, // reset
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_closed_while_healthz_and_tenants_answer() {
    let hello = format!("hello={}", guests::HELLO);
    let lodge = LodgeProcess::serve(&[
        "--app",
        &hello,
        "--header-read-timeout",
        "2s",
        "--idle-timeout",
        "3s",
    ]);
    let api = lodge.http();
    let slow = slow_clients(lodge.addr, 300);
    assert_eq!(healthz(&lodge).await, 200);
    assert_eq!(api.tenant_json("hello", "/").await.0, 200);
    assert!(
        all_closed(slow, Duration::from_secs(8)).await,
        "every slow client was closed"
    );

    // A kept-alive connection that goes quiet is closed too.
    let mut idle = TcpStream::connect(lodge.addr).expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("write");
    assert!(
        all_closed(vec![idle], Duration::from_secs(8)).await,
        "an idle keep-alive connection was closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_cap_new_connections_are_closed_and_logged() {
    let lodge = LodgeProcess::serve(&["--max-connections", "20", "--header-read-timeout", "2s"]);
    // The readiness probe's connection goes first; then a few more than the cap.
    std::thread::sleep(Duration::from_millis(300));
    let held = slow_clients(lodge.addr, 25);
    std::thread::sleep(Duration::from_millis(300));
    let extra = TcpStream::connect(lodge.addr).expect("the kernel accepts");
    let refused = all_closed(vec![extra], Duration::from_secs(1)).await;
    assert!(
        refused,
        "the connection past the cap was closed at once: {}",
        lodge.stderr()
    );
    assert!(
        lodge.stderr().contains("connection limit reached"),
        "{}",
        lodge.stderr()
    );
    // Once the slow ones are timed out, the host answers again.
    assert!(all_closed(held, Duration::from_secs(6)).await);
    assert_eq!(healthz(&lodge).await, 200);
}

async fn healthz(lodge: &LodgeProcess) -> reqwest::StatusCode {
    let url = format!("http://{}/healthz", lodge.addr);
    lodge
        .http()
        .client
        .get(url)
        .send()
        .await
        .expect("sent")
        .status()
}

/// Whether the server closed every one of `streams` within `within` (checked off the async threads).
async fn all_closed(mut streams: Vec<TcpStream>, within: Duration) -> bool {
    tokio::task::spawn_blocking(move || streams.iter_mut().all(|s| closed_within(s, within)))
        .await
        .expect("joined")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_shutdown_archives_every_queued_line() {
    let host = TestHost::start().await;
    host.app("talker", guests::HOSTILE, Limits::default()).await;
    assert_eq!(host.get("talker", "/print?lines=300").await.status(), 200);
    let lodge = host.lodge.clone();
    let id = lodge.registry.get("talker").expect("tenant").id.clone();
    host.shutdown().await;
    let archived = lodge.storage.recent_logs(&id, 1000).await.expect("db");
    let lines = archived.iter().filter(|l| l.message.starts_with("line "));
    assert_eq!(lines.count(), 300, "the archive wrote what was queued");
}
