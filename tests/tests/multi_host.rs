//! Several hosts sharing one PostgreSQL database (runs only with
//! `LODGE_TEST_DATABASE_URL`; `.ci/run` sets it).

use std::time::{Duration, Instant};

use lodge_tests::{ADMIN_TOKEN, TestHost, guests, on_postgres, wasm};
use reqwest::Method;
use serde_json::{Value, json};

/// Two hosts on one database (one schema), each with its own data dir.
async fn pair() -> Option<(TestHost, TestHost, tempfile::TempDir)> {
    if !on_postgres() {
        eprintln!("skipped: set LODGE_TEST_DATABASE_URL to a PostgreSQL database");
        return None;
    }
    let shared = tempfile::tempdir().expect("dir");
    let url = lodge_tests::postgres_url_for(shared.path()).await;
    let a_url = url.clone();
    let a = TestHost::start_with(move |c| c.database_url = a_url).await;
    let b = TestHost::start_with(move |c| c.database_url = url).await;
    Some((a, b, shared))
}

async fn within_a_second(mut check: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(1) {
        if check().await {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not within a second");
}

async fn org(host: &TestHost, name: &str) -> String {
    let (status, org) = host
        .api_json(
            Method::POST,
            "/orgs",
            Some(ADMIN_TOKEN),
            Some(&json!({ "name": name })),
        )
        .await;
    assert_eq!(status, 201, "{org}");
    org["apiKey"].as_str().expect("key").to_owned()
}

#[tokio::test]
async fn changes_through_one_host_reach_the_other_within_a_second() {
    let Some((a, b, _shared)) = pair().await else {
        return;
    };
    let key = org(&a, "shared").await;
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
    within_a_second(async || b.get("roamer", "/status?code=200").await.status() == 200).await;

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
    within_a_second(async || {
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
    within_a_second(async || {
        let body = a.get("roamer", "/").await.text().await.unwrap_or_default();
        body.contains("Hello from Lodge")
    })
    .await;

    // Stop through A: B answers 503; start again.
    let (status, _) = a
        .api_json(Method::POST, "/tenant/roamer/stop", Some(&key), None)
        .await;
    assert_eq!(status, 200);
    within_a_second(async || b.get("roamer", "/").await.status() == 503).await;
    let (status, _) = a
        .api_json(Method::POST, "/tenant/roamer/start", Some(&key), None)
        .await;
    assert_eq!(status, 200);
    within_a_second(async || b.get("roamer", "/").await.status() == 200).await;

    // Delete through B: A answers 404 within a second.
    let (status, _) = b
        .api_json(Method::DELETE, "/tenant/roamer", Some(&key), None)
        .await;
    assert_eq!(status, 200);
    within_a_second(async || a.get("roamer", "/").await.status() == 404).await;
}

#[tokio::test]
async fn concurrent_writes_through_both_hosts_stay_exact() {
    let Some((a, b, _shared)) = pair().await else {
        return;
    };
    let key = org(&a, "writers").await;
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
    within_a_second(async || b.get("payee", "/address").await.status() == 200).await;

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
    let payee: Value = b.get("payee", "/address").await.json().await.expect("json");
    let to = payee["address"].as_str().expect("address").to_owned();
    let transfers: Vec<_> = (0..60)
        .map(|i| {
            let host = if i % 2 == 0 { &a } else { &b };
            let request = host.client.post(host.path_url(
                "payer",
                &format!("/transfer?to={to}&amount=10&key=k{i}&memo=m"),
            ));
            tokio::spawn(async move { request.send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    let mut ok = 0;
    for task in transfers {
        if task.await.expect("task").expect("response") == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 50, "exactly the funds available were spent");
    let balance = |host: &TestHost, slug: &'static str| {
        let request = host.client.get(host.path_url(slug, "/balance"));
        async move {
            let body: Value = request
                .send()
                .await
                .expect("sent")
                .json()
                .await
                .expect("json");
            body["balance"].as_i64().expect("balance")
        }
    };
    assert_eq!(balance(&a, "payer").await, 0);
    assert_eq!(balance(&b, "payee").await, 500);
    let totals = a.lodge.storage.ledger_totals().await.expect("totals");
    assert_eq!(totals.0, totals.1, "the ledger balances");
}
