//! `lodge:platform/wallet` through a real guest (`tests/fixtures/wallet-app`):
//! transfers, idempotency, limits, signatures, isolation between tenants, and
//! conservation of funds under concurrent transfers.

use lodge_host::Limits;
use lodge_tests::{ADMIN_TOKEN, TestHost, guests};
use reqwest::Method;
use serde_json::{Value, json};

async fn call(
    host: &TestHost,
    slug: &str,
    method: Method,
    path: &str,
    body: &[u8],
) -> (u16, Value) {
    let response = host
        .client
        .request(method, host.path_url(slug, path))
        .body(body.to_vec())
        .send()
        .await
        .expect("sent");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn address(host: &TestHost, slug: &str) -> String {
    let (status, body) = call(host, slug, Method::GET, "/address", b"").await;
    assert_eq!(status, 200, "{body}");
    body["address"].as_str().expect("address").to_owned()
}

async fn balance(host: &TestHost, slug: &str) -> i64 {
    call(host, slug, Method::GET, "/balance", b"").await.1["balance"]
        .as_i64()
        .expect("balance")
}

async fn fund(host: &TestHost, slug: &str, amount: i64) {
    let response = host
        .api(
            Method::POST,
            &format!("/tenant/{slug}/wallet/fund"),
            Some(ADMIN_TOKEN),
        )
        .json(&json!({ "amount": amount }))
        .send()
        .await
        .expect("sent");
    assert_eq!(
        response.status(),
        200,
        "{}",
        response.text().await.unwrap_or_default()
    );
}

async fn transfer(host: &TestHost, from: &str, to: &str, amount: i64, key: &str) -> (u16, Value) {
    let path = format!("/transfer?to={to}&amount={amount}&key={key}&memo=test");
    call(host, from, Method::POST, &path, b"").await
}

#[tokio::test]
async fn transfers_are_atomic_idempotent_and_recorded() {
    let host = TestHost::start().await;
    host.app("alice", guests::WALLET_APP, Limits::default())
        .await;
    host.app("bob", guests::WALLET_APP, Limits::default()).await;
    let (a, b) = (address(&host, "alice").await, address(&host, "bob").await);
    assert!(a.starts_with("lodge1") && a.len() == 70, "{a}");
    assert_ne!(a, b);
    assert_eq!(balance(&host, "alice").await, 0);
    fund(&host, "alice", 1000).await;
    assert_eq!(balance(&host, "alice").await, 1000);

    let (status, first) = transfer(&host, "alice", &b, 300, "k1").await;
    assert_eq!(status, 200, "{first}");
    let (_, replay) = transfer(&host, "alice", &b, 300, "k1").await;
    assert_eq!(
        first["id"], replay["id"],
        "a retry returns the first transfer"
    );
    assert_eq!(balance(&host, "alice").await, 700);
    assert_eq!(balance(&host, "bob").await, 300);

    let (status, reused) = transfer(&host, "alice", &b, 301, "k1").await;
    assert_eq!(
        (status, reused["error"].as_str()),
        (400, Some("invalid-input")),
        "{reused}"
    );
    let (_, broke) = transfer(&host, "alice", &b, 5000, "k2").await;
    assert_eq!(broke["error"], "quota-exceeded", "{broke}");
    let nobody = format!("lodge1{}", "ab".repeat(32));
    let (_, missing) = transfer(&host, "alice", &nobody, 1, "k3").await;
    assert!(
        matches!(
            missing["error"].as_str(),
            Some("not-found" | "invalid-input")
        ),
        "{missing}"
    );
    let (_, malformed) = transfer(&host, "alice", "bob", 1, "k4").await;
    assert_eq!(malformed["error"], "invalid-input", "{malformed}");
    let (_, to_self) = transfer(&host, "alice", &a, 1, "k5").await;
    assert_eq!(to_self["error"], "invalid-input", "{to_self}");
    assert_eq!(
        balance(&host, "alice").await,
        700,
        "no refused transfer moved anything"
    );

    let (_, history) = call(&host, "alice", Method::GET, "/history?limit=10", b"").await;
    let kinds: Vec<&str> = history["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["sent", "funding"], "{history}");
    assert_eq!(history["entries"][0]["amount"], -300);
    assert_eq!(history["entries"][0]["counterparty"], b.as_str());
    let (_, page) = call(&host, "alice", Method::GET, "/history?limit=1", b"").await;
    let cursor = page["cursor"].as_str().expect("more pages");
    let (_, older) = call(
        &host,
        "alice",
        Method::GET,
        &format!("/history?limit=1&cursor={cursor}"),
        b"",
    )
    .await;
    assert_eq!(older["entries"][0]["kind"], "funding");

    let api: Value = host
        .api_json(Method::GET, "/tenant/bob/wallet", Some(ADMIN_TOKEN), None)
        .await
        .1;
    assert_eq!(api["address"], b.as_str());
    assert_eq!(api["balance"], 300);
    assert_eq!(api["history"][0]["kind"], "received");
}

#[tokio::test]
async fn plan_limits_cap_each_transfer_and_each_day() {
    let host = TestHost::start().await;
    let limits = Limits {
        wallet_max_per_transfer: 100,
        wallet_max_per_day: 150,
        ..Limits::default()
    };
    host.app("capped", guests::WALLET_APP, limits).await;
    host.app("payee", guests::WALLET_APP, Limits::default())
        .await;
    fund(&host, "capped", 1000).await;
    let payee = address(&host, "payee").await;
    let (_, over) = transfer(&host, "capped", &payee, 101, "a").await;
    assert_eq!(over["error"], "limit", "{over}");
    assert_eq!(transfer(&host, "capped", &payee, 100, "b").await.0, 200);
    let (_, daily) = transfer(&host, "capped", &payee, 60, "c").await;
    assert_eq!(daily["error"], "limit", "{daily}");
    assert_eq!(transfer(&host, "capped", &payee, 50, "d").await.0, 200);
    assert_eq!(balance(&host, "capped").await, 850);
}

#[tokio::test]
async fn the_host_signs_and_anyone_verifies() {
    let host = TestHost::start().await;
    host.app("signer", guests::WALLET_APP, Limits::default())
        .await;
    host.app("other", guests::WALLET_APP, Limits::default())
        .await;
    let (signer, other) = (
        address(&host, "signer").await,
        address(&host, "other").await,
    );
    let (_, signed) = call(&host, "signer", Method::POST, "/sign", b"pay 5 to bob").await;
    let signature = signed["signature"].as_str().expect("signature").to_owned();
    assert_eq!(signature.len(), 128);
    let verify = |slug: &'static str, addr: String, message: &'static [u8]| {
        let host = &host;
        let signature = signature.clone();
        async move {
            call(
                host,
                slug,
                Method::POST,
                &format!("/verify?address={addr}&sig={signature}"),
                message,
            )
            .await
            .1
        }
    };
    assert_eq!(
        verify("signer", signer.clone(), b"pay 5 to bob").await["valid"],
        true
    );
    assert_eq!(
        verify("other", signer.clone(), b"pay 5 to bob").await["valid"],
        true,
        "verification is public"
    );
    assert_eq!(
        verify("other", signer.clone(), b"pay 500 to bob").await["valid"],
        false
    );
    assert_eq!(
        verify("other", other.clone(), b"pay 5 to bob").await["valid"],
        false,
        "not other's signature"
    );
    assert_eq!(
        verify("other", "lodge1nothex".into(), b"x").await["error"],
        "invalid-input"
    );
}

#[tokio::test]
async fn one_tenant_cannot_spend_or_see_anothers_wallet() {
    let host = TestHost::start().await;
    host.app("rich", guests::WALLET_APP, Limits::default())
        .await;
    host.app("thief", guests::WALLET_APP, Limits::default())
        .await;
    fund(&host, "rich", 1000).await;
    let thief = address(&host, "thief").await;
    // The only wallet a guest can debit is its own: the thief's transfer draws on the thief's empty balance.
    let (_, attempt) = transfer(&host, "thief", &thief, 1, "x").await;
    assert_eq!(attempt["error"], "invalid-input");
    let rich = address(&host, "rich").await;
    let (_, attempt) = transfer(&host, "thief", &rich, 1, "y").await;
    assert_eq!(attempt["error"], "quota-exceeded", "{attempt}");
    assert_eq!(balance(&host, "rich").await, 1000);

    // Through the API: a tenant key sees only its own wallet, and only the operator mints.
    let spawned: Value = host
        .api_json(
            Method::POST,
            "/orgs",
            Some(ADMIN_TOKEN),
            Some(&json!({ "name": "o" })),
        )
        .await
        .1;
    let org_key = spawned["apiKey"].as_str().expect("key");
    let tenant: Value = host
        .api_json(
            Method::POST,
            "/tenant/spawn",
            Some(org_key),
            Some(&json!({ "name": "own" })),
        )
        .await
        .1;
    let tenant_key = tenant["tenant"]["apiKey"].as_str().expect("key");
    let own = host
        .api(Method::GET, "/tenant/own/wallet", Some(tenant_key))
        .send()
        .await
        .expect("sent");
    assert_eq!(own.status(), 200);
    let others = host
        .api(Method::GET, "/tenant/rich/wallet", Some(tenant_key))
        .send()
        .await
        .expect("sent");
    assert_eq!(others.status(), 404);
    let mint = host
        .api(Method::POST, "/tenant/own/wallet/fund", Some(org_key))
        .json(&json!({ "amount": 5 }))
        .send()
        .await
        .expect("sent");
    assert_eq!(mint.status(), 403);
}

#[tokio::test]
async fn concurrent_transfers_conserve_the_total() {
    let host = TestHost::start().await;
    let names = ["w0", "w1", "w2", "w3"];
    let mut addresses = Vec::new();
    for name in names {
        host.app(
            name,
            guests::WALLET_APP,
            Limits {
                max_concurrency: 200,
                ..Limits::default()
            },
        )
        .await;
        fund(&host, name, 1000).await;
        addresses.push(address(&host, name).await);
    }
    let requests: Vec<_> = (0..200)
        .map(|i| {
            let client = host.client.clone();
            let from = names[i % 4];
            let to = addresses[(i * 7 + 1) % 4].clone();
            let url = host.path_url(
                from,
                &format!(
                    "/transfer?to={to}&amount={}&key=t{i}&memo=m",
                    1 + (i * 37) % 400
                ),
            );
            tokio::spawn(async move {
                let response = client.post(url).send().await.expect("sent");
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                (status, body)
            })
        })
        .collect();
    let mut moved = 0;
    for result in futures::future::join_all(requests).await {
        let (status, body) = result.expect("joined");
        match status {
            200 => moved += 1,
            400 => assert!(
                matches!(
                    body["error"].as_str(),
                    Some("quota-exceeded" | "invalid-input")
                ),
                "{body}"
            ),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(moved > 50, "most transfers went through: {moved}");
    let mut total = 0;
    for name in names {
        let b = balance(&host, name).await;
        assert!(b >= 0);
        total += b;
    }
    assert_eq!(total, 4000, "funds are conserved");
    let (held, minted) = host.lodge.storage.ledger_totals().await.expect("totals");
    assert_eq!((held, minted), (4000, 4000));
}

#[tokio::test]
async fn a_host_with_another_master_key_refuses_the_database() {
    let dir = tempfile::tempdir().expect("dir");
    let host = TestHost::start_in(dir.path(), |c| c.master_key = Some("11".repeat(32))).await;
    host.app("keeper", guests::WALLET_APP, Limits::default())
        .await;
    let before = address(&host, "keeper").await;
    host.shutdown().await;

    // A database from before the check value existed: the wallets still tell.
    let forget = "DELETE FROM host_meta";
    lodge_tests::db_execute(dir.path(), forget, forget).await;

    // Another key on the same database: refused at start, with the reason.
    let config = lodge_host::HostConfig {
        data_dir: dir.path().to_owned(),
        database_url: lodge_tests::postgres_url_for(dir.path()).await,
        artifacts_dir: Some(lodge_tests::shared_artifacts()),
        admin_token: Some(ADMIN_TOKEN.to_owned()),
        master_key: Some("22".repeat(32)),
        ..lodge_host::HostConfig::default()
    };
    let refused = lodge_host::Lodge::open(config)
        .await
        .expect_err("another master key is refused");
    assert!(refused.to_string().contains("master key"), "{refused:#}");

    // The right key still opens it, and the wallet is the same.
    let host = TestHost::start_in(dir.path(), |c| c.master_key = Some("11".repeat(32))).await;
    assert_eq!(address(&host, "keeper").await, before);
}
