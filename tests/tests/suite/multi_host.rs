//! Several hosts sharing one PostgreSQL database (runs only with
//! `LODGE_TEST_DATABASE_URL`; `.ci/run` sets it).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::routing::post;
use lodge_tests::{ADMIN_TOKEN, Api, LodgeProcess, TestHost, guests, on_postgres, wasm};
use reqwest::Method;
use serde_json::{Value, json};

/// Every host on one database shares the master key (a host with another is refused).
const MASTER_KEY: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";

/// Fails (not skips) a test run without PostgreSQL: these tests are ignored
/// unless asked for with `--include-ignored`, and then they must run.
fn needs_postgres() {
    assert!(
        on_postgres(),
        "this test needs PostgreSQL: set LODGE_TEST_DATABASE_URL (CI does)"
    );
}

/// Two hosts on one database (one schema), each with its own data dir, whose
/// reconcile (the safety net for lost notices) is too slow to ever run in a
/// test: what one host learns of the other's changes comes by notice.
async fn pair() -> (TestHost, TestHost, tempfile::TempDir) {
    needs_postgres();
    let shared = tempfile::tempdir().expect("dir");
    let url = lodge_tests::postgres_url_for(shared.path()).await;
    let a_url = url.clone();
    let a = TestHost::start_with(move |c| {
        c.database_url = a_url;
        c.master_key = Some(MASTER_KEY.to_owned());
        c.reconcile_interval = Duration::from_secs(3600);
    })
    .await;
    let b = TestHost::start_with(move |c| {
        c.database_url = url;
        c.master_key = Some(MASTER_KEY.to_owned());
        c.reconcile_interval = Duration::from_secs(3600);
    })
    .await;
    (a, b, shared)
}

/// Waits until `check` sees the change on the other host. No clock is
/// asserted (a loaded machine may take its time compiling): in [`pair`] the
/// reconcile is off, so only the change notice can bring the change at all.
async fn reaches_the_other_host(mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the change never reached the other host"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set LODGE_TEST_DATABASE_URL and pass --include-ignored"]
async fn changes_through_one_host_reach_the_other_reaches_the_other_host() {
    let (a, b, _shared) = pair().await;
    let key = a.http().org("shared").await;
    let (status, spawned) = a
        .api_json(
            Method::POST,
            "/tenant/spawn",
            Some(&key),
            Some(&json!({ "name": "roamer" })),
        )
        .await;
    assert_eq!(status, 201, "{spawned}");
    let deployed = a
        .api(Method::PUT, "/tenant/roamer/component", Some(&key))
        .header("content-type", "application/wasm")
        .body(wasm(guests::WSTD_ECHO))
        .send()
        .await
        .expect("deploy");
    assert_eq!(deployed.status(), 201);
    reaches_the_other_host(async || b.get("roamer", "/status?code=200").await.status() == 200)
        .await;

    // Env set through B is seen by guests on A.
    let (status, _) = b
        .api_json(
            Method::PUT,
            "/tenant/roamer/env",
            Some(&key),
            Some(&json!({ "vars": { "COLOR": "teal" } })),
        )
        .await;
    assert_eq!(status, 200);
    reaches_the_other_host(async || {
        a.lodge.registry.get("roamer").is_some_and(|t| {
            t.state()
                .env
                .iter()
                .any(|(k, v)| k == "COLOR" && v == "teal")
        })
    })
    .await;

    // A new version through B; A serves it.
    let deployed = b
        .api(Method::PUT, "/tenant/roamer/component", Some(&key))
        .header("content-type", "application/wasm")
        .body(wasm(guests::HELLO))
        .send()
        .await
        .expect("deploy");
    assert_eq!(deployed.status(), 201);
    reaches_the_other_host(async || {
        let body = a.get("roamer", "/").await.text().await.unwrap_or_default();
        body.contains("Hello from Lodge")
    })
    .await;

    // Stop through A: B answers 503; start again.
    let (status, _) = a
        .api_json(Method::POST, "/tenant/roamer/stop", Some(&key), None)
        .await;
    assert_eq!(status, 200);
    reaches_the_other_host(async || b.get("roamer", "/").await.status() == 503).await;
    let (status, _) = a
        .api_json(Method::POST, "/tenant/roamer/start", Some(&key), None)
        .await;
    assert_eq!(status, 200);
    reaches_the_other_host(async || b.get("roamer", "/").await.status() == 200).await;

    // A change nobody announced (written straight to storage, as if the
    // notice were lost) is caught by the reconcile.
    let id = spawned["tenant"]["id"].as_str().expect("id");
    a.lodge
        .storage
        .set_env(id, &[("COLOR".to_owned(), "plum".to_owned())])
        .await
        .expect("env stored");
    assert!(b.lodge.reconcile().await.expect("reconciled") >= 1);
    let env = b.lodge.registry.get("roamer").expect("tenant").state().env;
    assert_eq!(&*env, &[("COLOR".to_owned(), "plum".to_owned())]);
    assert_eq!(
        b.lodge.reconcile().await.expect("reconciled"),
        0,
        "nothing left to do"
    );

    // Delete through B: A answers 404.
    let (status, _) = b
        .api_json(Method::DELETE, "/tenant/roamer", Some(&key), None)
        .await;
    assert_eq!(status, 200);
    reaches_the_other_host(async || a.get("roamer", "/").await.status() == 404).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set LODGE_TEST_DATABASE_URL and pass --include-ignored"]
async fn concurrent_writes_through_both_hosts_stay_exact() {
    let (a, b, _shared) = pair().await;
    let key = a.http().org("writers").await;
    for name in ["counter", "payer", "payee"] {
        let guest = if name == "counter" {
            guests::KV_APP
        } else {
            guests::WALLET_APP
        };
        let (status, _) = a
            .api_json(
                Method::POST,
                "/tenant/spawn",
                Some(&key),
                Some(&json!({ "name": name })),
            )
            .await;
        assert_eq!(status, 201);
        let deployed = a
            .api(
                Method::PUT,
                &format!("/tenant/{name}/component"),
                Some(&key),
            )
            .header("content-type", "application/wasm")
            .body(wasm(guest))
            .send()
            .await
            .expect("deploy");
        assert_eq!(deployed.status(), 201);
    }
    reaches_the_other_host(async || b.get("payee", "/address").await.status() == 200).await;

    // 100 increments, half through each host.
    let increments: Vec<_> = (0..100)
        .map(|i| {
            let host = if i % 2 == 0 { &a } else { &b };
            let request = host.client.post(host.path_url("counter", "/incr/hits"));
            tokio::spawn(async move { request.send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    for task in increments {
        assert_eq!(task.await.expect("task").expect("response"), 200);
    }
    let value = a
        .get("counter", "/kv/hits")
        .await
        .text()
        .await
        .expect("body");
    assert_eq!(value.trim(), "100", "no increment lost across hosts");

    // 60 transfers of 10 from a wallet holding 500, through both hosts.
    let (status, _) = a
        .api_json(
            Method::POST,
            "/tenant/payer/wallet/fund",
            Some(ADMIN_TOKEN),
            Some(&json!({ "amount": 500 })),
        )
        .await;
    assert_eq!(status, 200);
    let payee = b.http().tenant_json("payee", "/address").await.1;
    let to = payee["address"].as_str().expect("address").to_owned();
    let ok = transfers_through_both(&a.http(), &b.http(), &to, 60).await;
    assert_eq!(ok, 50, "exactly the funds available were spent");
    assert_eq!(
        a.http().tenant_json("payer", "/balance").await.1["balance"],
        0
    );
    assert_eq!(
        b.http().tenant_json("payee", "/balance").await.1["balance"],
        500
    );
    let totals = a.lodge.storage.ledger_totals().await.expect("totals");
    assert_eq!(totals.0, totals.1, "the ledger balances");
}

/// `n` concurrent transfers of 10 from tenant `payer` (wallet-app) to `to`,
/// alternating between hosts `a` and `b`; returns how many went through (the
/// others must be refused with 400).
async fn transfers_through_both(a: &Api, b: &Api, to: &str, n: usize) -> usize {
    let transfers: Vec<_> = (0..n)
        .map(|i| {
            let api = if i % 2 == 0 { a } else { b };
            let request = api.client.post(api.tenant_url(
                "payer",
                &format!("/transfer?to={to}&amount=10&key=k{i}&memo=m"),
            ));
            tokio::spawn(async move { request.send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    let mut ok = 0;
    for transfer in transfers {
        match transfer.await.expect("joined").expect("answered") {
            200 => ok += 1,
            400 => {}
            other => panic!("transfer answered {other}"),
        }
    }
    ok
}

/// A chat-completions server whose answers wait until `release` is sent
/// `true`; returns its URL, the number of calls and the release switch.
async fn stalling_llm() -> (String, Arc<AtomicUsize>, tokio::sync::watch::Sender<bool>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let (release, released) = tokio::sync::watch::channel(false);
    let counter = calls.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(move || {
            let counter = counter.clone();
            let mut released = released.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = released.wait_for(|go| *go).await;
                Json(json!({
                    "choices": [{ "message": { "role": "assistant", "content": "agreed" } }],
                    "usage": { "prompt_tokens": 5, "completion_tokens": 3 },
                }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/v1", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, calls, release)
}

/// A webhook receiver; returns its URL and the task ids posted to it.
async fn webhook_sink() -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    let received: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |Json(body): Json<Value>| {
            let sink = sink.clone();
            async move {
                let id = body["taskId"].as_str().unwrap_or_default().to_owned();
                sink.lock().expect("lock").push(id);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

async fn task_status(api: &Api, key: &str, task: &str) -> Value {
    let (status, state) = api
        .json(Method::GET, &format!("/converge/{task}"), Some(key), None)
        .await;
    assert_eq!(status, 200, "{state}");
    state
}

/// The scenario with two real `lodge serve` processes on one database:
/// deploy through A (with the CLI) and serve through B, concurrent transfers
/// through both, delete through B seen by A, and a convergence task that A was
/// running when it was killed (SIGKILL), finished once by B.
#[tokio::test]
#[ignore = "needs PostgreSQL: set LODGE_TEST_DATABASE_URL and pass --include-ignored"]
async fn two_lodge_processes_share_tenants_the_ledger_and_tasks() {
    needs_postgres();
    let shared = tempfile::tempdir().expect("dir");
    let url = lodge_tests::postgres_url_for(shared.path())
        .await
        .expect("database");
    let (llm, llm_calls, release) = stalling_llm().await;
    let (hook, hooks) = webhook_sink().await;
    let args = [
        "--database-url",
        url.as_str(),
        "--master-key",
        MASTER_KEY,
        "--llm-url",
        llm.as_str(),
        "--task-lease",
        "2s",
        "--reconcile-interval",
        "200ms",
        // The webhook receiver is on loopback: an on-premises setup.
        "--webhook-allow-private",
    ];

    // A starts alone and takes a task; its model call hangs.
    let a = LodgeProcess::serve(&args);
    let a_api = a.http();
    let org_key = a_api.org("processes").await;
    let thinker = a_api.spawn_tenant(&org_key, "thinker").await;
    let (status, queued) = a_api
        .json(
            Method::POST,
            "/converge",
            Some(&thinker),
            Some(&json!({ "prompt": "plan the migration", "async": true, "webhookUrl": hook })),
        )
        .await;
    assert_eq!(status, 202, "{queued}");
    let task = queued["taskId"].as_str().expect("task id").to_owned();
    let started = Instant::now();
    while llm_calls.load(Ordering::SeqCst) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "A never ran the task"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // B joins. A deploys with the CLI; B serves it.
    let b = LodgeProcess::serve(&args);
    let b_api = b.http();
    a_api.spawn_tenant(&org_key, "echo").await;
    let (code, out, err) = a.cli(&org_key, &["deploy", "echo", guests::WSTD_ECHO]);
    assert_eq!(code, 0, "{out}{err}");
    reaches_the_other_host(async || {
        let response = b_api
            .client
            .get(b_api.tenant_url("echo", "/status?code=200"))
            .send()
            .await;
        response.is_ok_and(|r| r.status() == 200)
    })
    .await;

    // 40 transfers of 10 from a wallet holding 300, alternating between hosts.
    for name in ["payer", "payee"] {
        a_api.spawn_tenant(&org_key, name).await;
        let (code, out, err) = a.cli(&org_key, &["deploy", name, guests::WALLET_APP]);
        assert_eq!(code, 0, "{out}{err}");
    }
    let (status, funded) = b_api
        .json(
            Method::POST,
            "/tenant/payer/wallet/fund",
            Some(ADMIN_TOKEN),
            Some(&json!({ "amount": 300 })),
        )
        .await;
    assert_eq!(status, 200, "{funded}");
    let payee_url = b_api.tenant_url("payee", "/address");
    let mut to = String::new();
    reaches_the_other_host(async || {
        let response = b_api.client.get(&payee_url).send().await;
        if let Ok(response) = response.and_then(|r| r.error_for_status()) {
            let body: Value = response.json().await.unwrap_or_default();
            body["address"]
                .as_str()
                .unwrap_or_default()
                .clone_into(&mut to);
        }
        !to.is_empty()
    })
    .await;
    let ok = transfers_through_both(&a_api, &b_api, &to, 40).await;
    assert_eq!(ok, 30, "exactly the funds available moved");
    assert_eq!(a_api.tenant_json("payer", "/balance").await.1["balance"], 0);
    assert_eq!(
        b_api.tenant_json("payee", "/balance").await.1["balance"],
        300
    );

    // Delete through B: A answers 404.
    let (status, _) = b_api
        .json(Method::DELETE, "/tenant/echo", Some(&org_key), None)
        .await;
    assert_eq!(status, 200);
    reaches_the_other_host(async || {
        let response = a_api
            .client
            .get(a_api.tenant_url("echo", "/status?code=200"))
            .send()
            .await;
        response.is_ok_and(|r| r.status() == 404)
    })
    .await;

    // For well over the 2 s lease, A's renewals keep the task its own: B,
    // reconciling every 200 ms, never requeues it.
    while started.elapsed() < Duration::from_millis(3500) {
        let state = task_status(&b_api, &thinker, &task).await;
        assert_eq!(state["status"], "running", "{state}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(llm_calls.load(Ordering::SeqCst), 1, "nobody else ran it");
    // Kill A mid-task; the model answers from now on. B takes the task over
    // once A's lease lapses and finishes it, once.
    a.kill();
    release.send(true).expect("release");
    let killed = Instant::now();
    let state = loop {
        let state = task_status(&b_api, &thinker, &task).await;
        if state["status"] == "done" || state["status"] == "failed" {
            break state;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "B did not finish A's task: {state}\n{}",
            b.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(state["status"], "done", "{state}");
    let pool = sqlx::PgPool::connect(&url).await.expect("database");
    let attempts: i64 = sqlx::query_scalar("SELECT attempts FROM convergence_tasks WHERE id = $1")
        .bind(&task)
        .fetch_one(&pool)
        .await
        .expect("task row");
    assert_eq!(attempts, 2, "claimed by A, then once by B");
    let started = Instant::now();
    while hooks.lock().expect("lock").is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "webhook posted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        *hooks.lock().expect("lock"),
        vec![task.clone()],
        "the webhook is posted once"
    );
}
