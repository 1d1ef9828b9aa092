//! A tenant written in JavaScript: `tenant-examples/convergence-app-js`, built
//! with componentize-js against world `lodge:platform/tenant` by
//! `scripts/build-js-guests.sh`, on the SDK in `sdk/js`. It is the Rust
//! starter template's port, so it must pass the same assertions
//! (`convergence::a_guest_converges_through_presets_and_tasks` and
//! `the_daily_token_budget_answers_quota_exceeded`); beyond them, key-value
//! (notes, an atomic counter, compare-and-swap, batches) persisting across
//! requests and kept apart per tenant, wallets funded and paying each other,
//! and 200 requests 50 at a time, all answered.

use lodge_host::Limits;
use lodge_tests::{ADMIN_TOKEN, TestHost, polyglot};
use reqwest::Method;
use serde_json::{Value, json};

async fn send(
    host: &TestHost,
    method: Method,
    slug: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = host.client.request(method, host.path_url(slug, path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("sent");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn post_app(host: &TestHost, slug: &str, path: &str, body: Value) -> (u16, Value) {
    send(host, Method::POST, slug, path, Some(body)).await
}

async fn put_app(host: &TestHost, slug: &str, path: &str, body: Value) -> (u16, Value) {
    send(host, Method::PUT, slug, path, Some(body)).await
}

/// A GET that must answer 200 with JSON.
async fn get_app(host: &TestHost, slug: &str, path: &str) -> Value {
    let (status, body) = send(host, Method::GET, slug, path, None).await;
    assert_eq!(status, 200, "GET {slug}{path}: {body}");
    body
}

/// An atomic counter route (`path`, `{"by"?}` → `{"name","value"}`) of the
/// JavaScript or Python example: counts, reads back, stays apart from tenant
/// `other` running the same component, refuses a bad increment.
pub(crate) async fn counter_checks(host: &TestHost, slug: &str, other: &str, path: &str) {
    let name = path.rsplit('/').next().expect("a name");
    let (status, one) = post_app(host, slug, path, json!({})).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one, json!({ "name": name, "value": 1 }));
    let (_, more) = post_app(host, slug, path, json!({ "by": 41 })).await;
    assert_eq!(more["value"], 42, "{more}");
    assert_eq!(
        get_app(host, slug, path).await,
        json!({ "name": name, "value": 42 })
    );
    // The same component, bucket and key, another tenant: untouched.
    assert_eq!(
        get_app(host, other, path).await,
        json!({ "name": name, "value": 0 })
    );
    let (status, bad) = post_app(host, slug, path, json!({ "by": "x" })).await;
    assert_eq!(status, 400, "{bad}");
}

/// A host serving the JavaScript app under each of `slugs`.
async fn js_apps(slugs: &[&str]) -> TestHost {
    let host = TestHost::start().await;
    for slug in slugs {
        host.app(slug, polyglot::js_example(), Limits::default())
            .await;
    }
    host
}

#[tokio::test]
async fn a_js_guest_converges_through_presets_and_tasks() {
    // The Rust starter's assertions, then what the JavaScript SDK adds.
    let host = crate::convergence::presets_and_tasks(polyglot::js_example()).await;
    let (_, design) = post_app(
        &host,
        "conv",
        "/api/design",
        json!({ "prompt": "a login page for a bank" }),
    )
    .await;
    assert!(design["answer"].is_string(), "{design}");
    assert!(
        design["usage"]["promptTokens"].as_u64().unwrap_or(0) > 0,
        "{design}"
    );

    // The other presets the SDK wraps answer through their own roles.
    for preset in ["review", "decide", "plan", "analyze", "generate"] {
        let (status, outcome) = post_app(
            &host,
            "conv",
            &format!("/api/{preset}"),
            json!({ "prompt": "tabs or spaces", "context": "a small team" }),
        )
        .await;
        assert_eq!(status, 200, "{preset}: {outcome}");
        assert_eq!(outcome["provider"], "offline", "{preset}: {outcome}");
    }
    let (_, review) = post_app(
        &host,
        "conv",
        "/api/review",
        json!({ "prompt": "fn main() {}" }),
    )
    .await;
    assert_eq!(review["transcript"][0]["role"], "Code Reviewer", "{review}");

    // The SDK refuses what the WIT cannot carry before calling the host.
    let (status, bad) = post_app(
        &host,
        "conv",
        "/api/converge",
        json!({ "prompt": "x", "maxRounds": "many" }),
    )
    .await;
    assert_eq!(
        (status, bad["error"].as_str()),
        (400, Some("invalid-input")),
        "{bad}"
    );
    let (status, bad) =
        post_app(&host, "conv", "/api/design", json!({ "text": "no prompt" })).await;
    assert_eq!(
        (status, bad["error"].as_str()),
        (400, Some("invalid-input")),
        "{bad}"
    );
    let not_json = host
        .client
        .post(host.path_url("conv", "/api/design"))
        .body("not json")
        .send()
        .await
        .expect("sent");
    assert_eq!(not_json.status(), 400);
    let (status, _) = send(&host, Method::GET, "conv", "/no/such/route", None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_js_daily_token_budget_answers_quota_exceeded() {
    crate::convergence::daily_token_budget(polyglot::js_example()).await;
}

#[tokio::test]
async fn js_key_value_persists_counts_atomically_and_keeps_tenants_apart() {
    let host = js_apps(&["notes", "other"]).await;

    assert_eq!(
        get_app(&host, "notes", "/api/notes").await,
        json!({ "notes": [], "count": 0, "lastWritten": null })
    );
    let (status, missing) = send(&host, Method::GET, "notes", "/api/notes/todo", None).await;
    assert_eq!(
        (status, missing["error"].as_str()),
        (404, Some("not-found")),
        "{missing}"
    );

    // Writes persist across requests (each request is a fresh instance).
    let (status, saved) = put_app(
        &host,
        "notes",
        "/api/notes/todo",
        json!({ "text": "buy milk" }),
    )
    .await;
    assert_eq!(status, 200, "{saved}");
    assert_eq!(
        saved,
        json!({ "key": "todo", "text": "buy milk", "revision": 1 })
    );
    let (_, saved) = put_app(
        &host,
        "notes",
        "/api/notes/ideas",
        json!({ "text": "a JS SDK" }),
    )
    .await;
    assert_eq!(saved["revision"], 2, "{saved}");
    let (_, saved) = put_app(
        &host,
        "notes",
        "/api/notes/todo",
        json!({ "text": "buy oat milk" }),
    )
    .await;
    assert_eq!(saved["revision"], 3, "{saved}");
    assert_eq!(
        get_app(&host, "notes", "/api/notes/todo").await,
        json!({ "key": "todo", "text": "buy oat milk", "revision": 3 })
    );
    assert_eq!(
        get_app(&host, "notes", "/api/notes").await,
        json!({
            "notes": [
                { "key": "ideas", "text": "a JS SDK", "revision": 2 },
                { "key": "todo", "text": "buy oat milk", "revision": 3 },
            ],
            "count": 2,
            "lastWritten": "todo",
        })
    );
    let (status, bad) = put_app(&host, "notes", "/api/notes/x", json!({ "text": 5 })).await;
    assert_eq!(
        (status, bad["error"].as_str()),
        (400, Some("invalid-input")),
        "{bad}"
    );

    // The same component, the same bucket and keys, another tenant: nothing.
    assert_eq!(
        get_app(&host, "other", "/api/notes").await,
        json!({ "notes": [], "count": 0, "lastWritten": null })
    );
    let (status, _) = send(&host, Method::GET, "other", "/api/notes/todo", None).await;
    assert_eq!(status, 404);

    // Deleting (a batch delete and a compare-and-swap on the index).
    let (status, deleted) = send(&host, Method::DELETE, "notes", "/api/notes/ideas", None).await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted, json!({ "key": "ideas", "deleted": true }));
    let listed = get_app(&host, "notes", "/api/notes").await;
    assert_eq!(listed["count"], 1, "{listed}");
    assert_eq!(listed["notes"][0]["key"], "todo", "{listed}");

    // The atomic counter.
    counter_checks(&host, "notes", "other", "/api/counter/visits").await;

    // 100 increments, 50 at a time (the plan's concurrency is 64): 100 distinct results.
    let values = lodge_tests::concurrent_increments(
        &host.client,
        &host.path_url("notes", "/api/counter/race"),
        100,
        50,
    )
    .await;
    assert_eq!(
        values,
        (1..=100).collect::<Vec<_>>(),
        "every increment seen once"
    );

    // 20 notes written at once: the compare-and-swap index loses none.
    let writes: Vec<_> = (0..20)
        .map(|i| {
            let client = host.client.clone();
            let url = host.path_url("notes", &format!("/api/notes/n{i:02}"));
            tokio::spawn(async move {
                let response = client
                    .put(url)
                    .json(&json!({ "text": format!("note {i}") }))
                    .send()
                    .await
                    .expect("sent");
                response.status().as_u16()
            })
        })
        .collect();
    for status in futures::future::join_all(writes).await {
        assert_eq!(status.expect("joined"), 200);
    }
    let listed = get_app(&host, "notes", "/api/notes").await;
    assert_eq!(listed["count"], 21, "{listed}");
    assert_eq!(
        listed["notes"].as_array().map(Vec::len),
        Some(21),
        "{listed}"
    );
    assert_eq!(get_app(&host, "other", "/api/notes").await["count"], 0);
}

#[tokio::test]
async fn js_wallets_are_funded_pay_each_other_and_sign() {
    let host = js_apps(&["pay", "shop"]).await;
    let before = get_app(&host, "pay", "/api/wallet").await;
    assert_eq!(before["balance"], 0, "{before}");
    let pay_address = before["address"].as_str().expect("address").to_owned();
    assert!(
        pay_address.starts_with("lodge1") && pay_address.len() == 70,
        "{before}"
    );

    let fund = host
        .api(Method::POST, "/tenant/pay/wallet/fund", Some(ADMIN_TOKEN))
        .json(&json!({ "amount": 100 }))
        .send()
        .await
        .expect("sent");
    assert_eq!(fund.status(), 200);
    assert_eq!(
        get_app(&host, "pay", "/api/wallet").await,
        json!({ "address": pay_address, "balance": 100 })
    );

    let shop = get_app(&host, "shop", "/api/wallet").await;
    let shop_address = shop["address"].as_str().expect("address").to_owned();
    assert_ne!(shop_address, pay_address, "each tenant has its own wallet");
    assert_eq!(shop["balance"], 0, "{shop}");

    let transfer =
        json!({ "to": shop_address, "amount": 5, "memo": "thanks", "idempotencyKey": "order-42" });
    let (status, sent) = post_app(&host, "pay", "/api/wallet/send", transfer.clone()).await;
    assert_eq!(status, 200, "{sent}");
    assert_eq!(sent["balance"], 95, "{sent}");
    assert!(
        sent["txId"].as_str().unwrap_or("").starts_with("tx_"),
        "{sent}"
    );
    let (_, again) = post_app(&host, "pay", "/api/wallet/send", transfer).await;
    assert_eq!(again, sent, "the same idempotency key moves nothing");
    let (status, reused) = post_app(
        &host,
        "pay",
        "/api/wallet/send",
        json!({ "to": shop_address, "amount": 6, "idempotencyKey": "order-42" }),
    )
    .await;
    assert_eq!(
        (status, reused["error"].as_str()),
        (400, Some("invalid-input")),
        "{reused}"
    );
    assert_eq!(get_app(&host, "shop", "/api/wallet").await["balance"], 5);

    // History, newest first, with pages.
    let history = get_app(&host, "pay", "/api/wallet/history").await;
    assert_eq!(
        history["entries"].as_array().map(Vec::len),
        Some(2),
        "{history}"
    );
    assert_eq!(history["entries"][0]["kind"], "sent", "{history}");
    assert_eq!(history["entries"][0]["amount"], -5, "{history}");
    assert_eq!(history["entries"][0]["counterparty"], shop_address.as_str());
    assert_eq!(history["entries"][0]["memo"], "thanks");
    assert_eq!(history["entries"][0]["id"], sent["txId"]);
    assert_eq!(history["entries"][1]["kind"], "funding", "{history}");
    assert_eq!(history["entries"][1]["amount"], 100, "{history}");
    assert_eq!(history["cursor"], Value::Null, "{history}");
    let first = get_app(&host, "pay", "/api/wallet/history?limit=1").await;
    assert_eq!(first["entries"][0]["kind"], "sent", "{first}");
    let cursor = first["cursor"].as_str().expect("a next page").to_owned();
    let next = get_app(
        &host,
        "pay",
        &format!("/api/wallet/history?limit=1&cursor={cursor}"),
    )
    .await;
    assert_eq!(next["entries"][0]["kind"], "funding", "{next}");
    let theirs = get_app(&host, "shop", "/api/wallet/history").await;
    assert_eq!(theirs["entries"][0]["kind"], "received", "{theirs}");
    assert_eq!(theirs["entries"][0]["amount"], 5, "{theirs}");
    assert_eq!(theirs["entries"][0]["counterparty"], pay_address.as_str());

    // Errors carry the WIT variant.
    let (status, broke) = post_app(
        &host,
        "shop",
        "/api/wallet/send",
        json!({ "to": pay_address, "amount": 1000, "idempotencyKey": "k2" }),
    )
    .await;
    assert_eq!(
        (status, broke["error"].as_str()),
        (429, Some("quota-exceeded")),
        "{broke}"
    );
    let nobody = format!("lodge1{}", "0".repeat(64));
    let (status, unknown) = post_app(
        &host,
        "pay",
        "/api/wallet/send",
        json!({ "to": nobody, "amount": 1 }),
    )
    .await;
    assert_eq!(
        (status, unknown["error"].as_str()),
        (404, Some("not-found")),
        "{unknown}"
    );
    let (status, malformed) = post_app(
        &host,
        "pay",
        "/api/wallet/send",
        json!({ "to": "nope", "amount": 1 }),
    )
    .await;
    assert_eq!(
        (status, malformed["error"].as_str()),
        (400, Some("invalid-input")),
        "{malformed}"
    );

    // Sign in one tenant, verify in the other.
    let (status, signed) = post_app(
        &host,
        "pay",
        "/api/wallet/sign",
        json!({ "message": "hello" }),
    )
    .await;
    assert_eq!(status, 200, "{signed}");
    assert_eq!(signed["verified"], true, "{signed}");
    assert_eq!(signed["address"], pay_address.as_str());
    assert_eq!(signed["signature"].as_str().map(str::len), Some(128));
    let (_, verified) = post_app(
        &host,
        "shop",
        "/api/wallet/verify",
        json!({ "address": pay_address, "message": "hello", "signature": signed["signature"] }),
    )
    .await;
    assert_eq!(verified, json!({ "valid": true }));
    let (_, forged) = post_app(
        &host,
        "shop",
        "/api/wallet/verify",
        json!({ "address": pay_address, "message": "hellO", "signature": signed["signature"] }),
    )
    .await;
    assert_eq!(forged, json!({ "valid": false }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_js_app_answers_200_requests_50_at_a_time() {
    let host = js_apps(&["busy"]).await;
    let address = get_app(&host, "busy", "/api/wallet").await["address"].clone();

    let (counter, wallet) = (
        host.path_url("busy", "/api/counter/load"),
        host.path_url("busy", "/api/wallet"),
    );
    let results = lodge_tests::fan_out(200, 50, |i| {
        if i % 2 == 0 {
            host.client.post(&counter).json(&json!({}))
        } else {
            host.client.get(&wallet)
        }
    })
    .await;
    let mut counts = Vec::new();
    for (i, status, body) in results {
        assert_eq!(status, 200, "request {i}: {body}");
        if i % 2 == 0 {
            counts.push(body["value"].as_i64().expect("value"));
        } else {
            assert_eq!(body["address"], address, "request {i}: {body}");
            assert_eq!(body["balance"], 0, "request {i}: {body}");
        }
    }
    counts.sort_unstable();
    assert_eq!(
        counts,
        (1..=100).collect::<Vec<_>>(),
        "each POST counted once"
    );
    assert_eq!(
        get_app(&host, "busy", "/api/counter/load").await["value"],
        100
    );
}
