//! The control plane through its real HTTP API: lifecycle, persistence across a
//! restart, atomic activation, bad uploads, the auth matrix, and uniform errors.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use reqwest::Method;
use serde_json::{Value, json};

use lodge_tests::{ADMIN_TOKEN, TestHost, assert_error, guests, wasm};

/// An organization and one of its tenants, with their keys.
struct Fixture {
    org_id: String,
    org_key: String,
    tenant_id: String,
    slug: String,
    tenant_key: String,
}

async fn json_of(response: reqwest::Response, status: u16) -> Value {
    let actual = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(actual, status, "{body}");
    body
}

/// Calls the API and asserts the status; returns the JSON body.
async fn call(
    host: &TestHost,
    method: Method,
    path: &str,
    key: &str,
    body: Option<&Value>,
    status: u16,
) -> Value {
    let mut request = host.api(method, path, Some(key));
    if let Some(body) = body {
        request = request.json(body);
    }
    json_of(request.send().await.expect("sent"), status).await
}

async fn org(host: &TestHost, name: &str) -> (String, String) {
    let body = call(
        host,
        Method::POST,
        "/orgs",
        ADMIN_TOKEN,
        Some(&json!({ "name": name })),
        201,
    )
    .await;
    (
        body["org"]["id"].as_str().expect("id").to_owned(),
        body["apiKey"].as_str().expect("key").to_owned(),
    )
}

async fn fixture(host: &TestHost, org_name: &str, tenant_name: &str) -> Fixture {
    let (org_id, org_key) = org(host, org_name).await;
    let body = call(
        host,
        Method::POST,
        "/tenant/spawn",
        &org_key,
        Some(&json!({ "name": tenant_name })),
        201,
    )
    .await;
    let tenant = &body["tenant"];
    Fixture {
        org_id,
        org_key,
        tenant_id: tenant["id"].as_str().expect("id").to_owned(),
        slug: tenant["slug"].as_str().expect("slug").to_owned(),
        tenant_key: tenant["apiKey"].as_str().expect("key").to_owned(),
    }
}

async fn deploy(host: &TestHost, tenant: &str, key: &str, path: &str) -> reqwest::Response {
    host.api(
        Method::PUT,
        &format!("/tenant/{tenant}/component"),
        Some(key),
    )
    .header("content-type", "application/wasm")
    .body(wasm(path))
    .send()
    .await
    .expect("sent")
}

#[tokio::test]
async fn the_whole_tenant_lifecycle() {
    let host = TestHost::start().await;
    let f = fixture(&host, "Acme", "Acme Corp AI").await;
    assert_eq!(f.slug, "acme-corp-ai");
    assert!(f.tenant_key.starts_with("sk_tenant_"));

    // Spawned, nothing deployed: the data plane says so.
    assert_error(host.get(&f.slug, "/").await, 503, "no_deployment").await;
    let status = call(
        &host,
        Method::GET,
        &format!("/tenant/{}/status", f.slug),
        &f.tenant_key,
        None,
        200,
    )
    .await;
    assert_eq!(status["tenant"]["status"], "provisioning");
    assert_eq!(
        status["tenant"]["url"],
        format!("http://acme-corp-ai.localhost:{}/", host.addr.port())
    );

    // Deploy v1 with the tenant's own key.
    let v1 = json_of(
        deploy(&host, &f.tenant_id, &f.tenant_key, guests::HELLO).await,
        201,
    )
    .await;
    assert_eq!(v1["deployment"]["version"], 1);
    assert_eq!(v1["deployment"]["size"], wasm(guests::HELLO).len());
    assert_eq!(v1["deployment"]["sha256"].as_str().map(str::len), Some(64));
    assert!(v1["deployment"]["compileMs"].is_number());
    assert!(v1["deployment"]["activatedAt"].is_string());
    let hello = host.get(&f.slug, "/").await.text().await.expect("body");
    assert!(hello.contains("Hello from Lodge"), "{hello}");

    // v2 replaces it.
    let v2 = json_of(
        deploy(&host, &f.slug, &f.org_key, guests::HOSTILE).await,
        201,
    )
    .await;
    assert_eq!(v2["deployment"]["version"], 2);
    let logged = host.get(&f.slug, "/log").await;
    let request_id = logged.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_eq!(logged.text().await.expect("body"), "logged\n");

    // Its logs, through the API, tagged with the request id.
    let logs = call(
        &host,
        Method::GET,
        &format!("/tenant/{}/logs?limit=50", f.slug),
        &f.tenant_key,
        None,
        200,
    )
    .await;
    let lines = logs["lines"].as_array().expect("lines");
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "hello on stdout" && l["requestId"] == request_id.as_str()),
        "{logs}"
    );

    let deployments = call(
        &host,
        Method::GET,
        &format!("/tenant/{}/deployments", f.slug),
        &f.tenant_key,
        None,
        200,
    )
    .await;
    assert_eq!(deployments["activeVersion"], 2);
    assert_eq!(deployments["deployments"].as_array().map(Vec::len), Some(2));

    // Roll back to v1.
    call(
        &host,
        Method::POST,
        &format!("/tenant/{}/rollback", f.slug),
        &f.tenant_key,
        Some(&json!({ "version": 1 })),
        200,
    )
    .await;
    assert!(
        host.get(&f.slug, "/log")
            .await
            .text()
            .await
            .expect("body")
            .contains("Hello from Lodge")
    );
    let missing = host
        .api(
            Method::POST,
            &format!("/tenant/{}/rollback", f.slug),
            Some(&f.tenant_key),
        )
        .json(&json!({ "version": 99 }))
        .send()
        .await
        .expect("sent");
    assert_error(missing, 404, "not_found").await;

    // Stop and start.
    let stopped = call(
        &host,
        Method::POST,
        &format!("/tenant/{}/stop", f.slug),
        &f.tenant_key,
        None,
        200,
    )
    .await;
    assert_eq!(stopped["tenant"]["status"], "stopped");
    assert_error(host.get(&f.slug, "/").await, 503, "tenant_stopped").await;
    call(
        &host,
        Method::POST,
        &format!("/tenant/{}/start", f.slug),
        &f.tenant_key,
        None,
        200,
    )
    .await;
    assert_eq!(host.get(&f.slug, "/").await.status(), 200);

    // Env: names visible, values never.
    let env = call(
        &host,
        Method::PUT,
        &format!("/tenant/{}/env", f.slug),
        &f.tenant_key,
        Some(&json!({ "vars": { "GREETING": "s3cret-value", "OTHER": "x" } })),
        200,
    )
    .await;
    assert_eq!(env["names"], json!(["GREETING", "OTHER"]));
    call(
        &host,
        Method::PUT,
        &format!("/tenant/{}/env", f.slug),
        &f.tenant_key,
        Some(&json!({ "vars": { "OTHER": null } })),
        200,
    )
    .await;
    let status = host
        .api(
            Method::GET,
            &format!("/tenant/{}/status", f.slug),
            Some(&f.tenant_key),
        )
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("body");
    assert!(
        status.contains("GREETING") && !status.contains("OTHER"),
        "{status}"
    );
    assert!(
        !status.contains("s3cret-value"),
        "values are never returned: {status}"
    );
    // Names with '=' or control characters and values with NUL are refused
    // (the same on SQLite and PostgreSQL); nothing of such a request is kept.
    for vars in [
        json!({ "BAD=NAME": "x", "FINE": "y" }),
        json!({ "BELL\u{7}": "x" }),
        json!({ "FINE": "nul\u{0}inside" }),
    ] {
        let refused = call(
            &host,
            Method::PUT,
            &format!("/tenant/{}/env", f.slug),
            &f.tenant_key,
            Some(&json!({ "vars": vars })),
            400,
        )
        .await;
        assert_eq!(refused["error"]["code"], "invalid_request", "{refused}");
    }
    let names = call(
        &host,
        Method::GET,
        &format!("/tenant/{}/status", f.slug),
        &f.tenant_key,
        None,
        200,
    )
    .await;
    assert_eq!(names["env"], json!(["GREETING"]));

    // Rotate: the old key stops working, the new one works.
    let rotated = call(
        &host,
        Method::POST,
        &format!("/tenant/{}/keys/rotate", f.slug),
        &f.tenant_key,
        None,
        200,
    )
    .await;
    let new_key = rotated["apiKey"].as_str().expect("key").to_owned();
    let old = host
        .api(
            Method::GET,
            &format!("/tenant/{}/status", f.slug),
            Some(&f.tenant_key),
        )
        .send()
        .await
        .expect("sent");
    assert_error(old, 401, "unauthorized").await;
    call(
        &host,
        Method::GET,
        &format!("/tenant/{}/status", f.slug),
        &new_key,
        None,
        200,
    )
    .await;

    // Usage is metered.
    let usage = call(
        &host,
        Method::GET,
        &format!("/tenant/{}/usage", f.slug),
        &new_key,
        None,
        200,
    )
    .await;
    assert!(
        usage["total"]["requests"].as_i64().unwrap_or(0) >= 5,
        "{usage}"
    );
    assert!(usage["total"]["fuel"].as_i64().unwrap_or(0) > 0, "{usage}");

    // Delete: the data plane answers 404 at once, the slug is free again.
    call(
        &host,
        Method::DELETE,
        &format!("/tenant/{}", f.slug),
        &f.org_key,
        None,
        200,
    )
    .await;
    assert_error(host.get(&f.slug, "/").await, 404, "tenant_not_found").await;
    let gone = host
        .api(
            Method::GET,
            &format!("/tenant/{}/status", f.tenant_id),
            Some(&f.org_key),
        )
        .send()
        .await
        .expect("sent");
    assert_error(gone, 404, "not_found").await;
    let again = host
        .api(Method::POST, "/tenant/spawn", Some(&f.org_key))
        .json(&json!({ "name": "Acme Corp AI" }))
        .send()
        .await
        .expect("sent");
    let again = json_of(again, 201).await;
    assert_ne!(again["tenant"]["id"], f.tenant_id.as_str());
    assert_eq!(again["tenant"]["slug"], "acme-corp-ai");
    assert_eq!(f.org_id.len(), 36);
}

#[tokio::test]
async fn logs_follow_as_server_sent_events() {
    let host = TestHost::start().await;
    let f = fixture(&host, "Org", "tail-me").await;
    json_of(
        deploy(&host, &f.slug, &f.tenant_key, guests::HOSTILE).await,
        201,
    )
    .await;
    let response = host
        .api(
            Method::GET,
            &format!("/tenant/{}/logs?follow=true", f.slug),
            Some(&f.tenant_key),
        )
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap_or("")
            .starts_with("text/event-stream")
    );
    let mut events = response.bytes_stream();
    assert_eq!(host.get(&f.slug, "/log").await.status(), 200);
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.contains("hello on stderr") {
        let chunk = tokio::time::timeout_at(deadline.into(), events.next())
            .await
            .expect("an event arrives in time")
            .expect("stream open")
            .expect("chunk");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("event: log"), "{seen}");
    assert!(seen.contains("hello on stdout"), "{seen}");
}

#[tokio::test]
async fn tenants_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let host = TestHost::start_in(dir.path(), |_| {}).await;
    let f = fixture(&host, "Org", "Survivor").await;
    json_of(
        deploy(&host, &f.slug, &f.tenant_key, guests::HELLO).await,
        201,
    )
    .await;
    let stopped = fixture(&host, "Org2", "Sleeper").await;
    json_of(
        deploy(&host, &stopped.slug, &stopped.tenant_key, guests::HELLO).await,
        201,
    )
    .await;
    call(
        &host,
        Method::POST,
        &format!("/tenant/{}/stop", stopped.slug),
        &stopped.tenant_key,
        None,
        200,
    )
    .await;
    call(
        &host,
        Method::PUT,
        &format!("/tenant/{}/env", f.slug),
        &f.tenant_key,
        Some(&json!({ "vars": { "KEPT": "yes" } })),
        200,
    )
    .await;
    assert_eq!(host.get(&f.slug, "/").await.status(), 200);
    host.shutdown().await;

    let host = TestHost::start_in(dir.path(), |_| {}).await;
    let tenant = host.lodge.registry.get(&f.slug).expect("restored");
    let active = tenant.active().expect("active version restored");
    assert_eq!(active.version, 1);
    assert!(active.app().is_none(), "nothing loaded before a request");
    assert_eq!(host.lodge.runtime.components_loaded(), 0);
    assert_eq!(host.get(&f.slug, "/").await.status(), 200);
    assert!(
        active.app().expect("loaded by the request").from_cache,
        "served from the precompiled artifact, not recompiled"
    );
    assert_error(host.get(&stopped.slug, "/").await, 503, "tenant_stopped").await;
    let status = call(
        &host,
        Method::GET,
        &format!("/tenant/{}/status", f.slug),
        &f.tenant_key,
        None,
        200,
    )
    .await;
    assert_eq!(status["env"], json!(["KEPT"]));
    assert_eq!(status["tenant"]["status"], "running");
}

#[tokio::test]
async fn a_redeploy_under_load_switches_versions_atomically() {
    let host = TestHost::start().await;
    let f = fixture(&host, "Org", "busy").await;
    json_of(
        deploy(&host, &f.slug, &f.tenant_key, guests::HELLO).await,
        201,
    )
    .await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let client = host.client.clone();
            let url = host.path_url(&f.slug, "/status?code=200");
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let response = client.get(&url).send().await.expect("sent");
                    let status = response.status().as_u16();
                    let body = response.text().await.expect("body");
                    seen.push((status, body));
                }
                seen
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    json_of(
        deploy(&host, &f.slug, &f.tenant_key, guests::WSTD_ECHO).await,
        201,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut old, mut new) = (0, 0);
    for worker in workers {
        for (status, body) in worker.await.expect("joined") {
            assert_eq!(status, 200, "no request fails during a deploy: {body}");
            if body.contains("Hello from Lodge") {
                old += 1;
            } else if body == "status 200\n" {
                new += 1;
            } else {
                panic!("a response from neither version: {body}");
            }
        }
    }
    assert!(
        old > 0 && new > 0,
        "both versions served: {old} old, {new} new"
    );
}

#[tokio::test]
async fn bad_uploads_are_refused_and_the_active_version_keeps_serving() {
    let host = TestHost::start_with(|c| c.max_component_bytes = 400 * 1024).await;
    let f = fixture(&host, "Org", "careful").await;
    json_of(
        deploy(&host, &f.slug, &f.tenant_key, guests::HELLO).await,
        201,
    )
    .await;
    let put = |body: Vec<u8>, content_type: &'static str| {
        host.api(
            Method::PUT,
            &format!("/tenant/{}/component", f.slug),
            Some(&f.tenant_key),
        )
        .header("content-type", content_type)
        .body(body)
        .send()
    };

    let not_wasm = put(b"#!/bin/sh\necho hi\n".to_vec(), "application/wasm")
        .await
        .expect("sent");
    let body = assert_error(not_wasm, 400, "invalid_component").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("not a WebAssembly binary")
    );

    let core = wat::parse_str("(module)").expect("wat");
    let body = assert_error(
        put(core, "application/wasm").await.expect("sent"),
        400,
        "invalid_component",
    )
    .await;
    let message = body["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("core WebAssembly module") && message.contains("wasm32-wasip2"),
        "{message}"
    );

    let foreign = wat::parse_str(r#"(component (import "acme:secret/vault@1.0.0" (instance)))"#)
        .expect("wat");
    let body = assert_error(
        put(foreign, "application/wasm").await.expect("sent"),
        400,
        "invalid_component",
    )
    .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("acme:secret/vault@1.0.0")
    );

    let truncated = wasm(guests::HELLO)[..1000].to_vec();
    assert_error(
        put(truncated, "application/wasm").await.expect("sent"),
        400,
        "invalid_component",
    )
    .await;

    let too_big = wasm(guests::HOSTILE);
    assert!(too_big.len() > 400 * 1024);
    assert_error(
        put(too_big, "application/wasm").await.expect("sent"),
        413,
        "payload_too_large",
    )
    .await;

    let wrong_type = put(wasm(guests::HELLO), "text/plain").await.expect("sent");
    assert_error(wrong_type, 415, "unsupported_media_type").await;

    assert_error(
        put(Vec::new(), "application/wasm").await.expect("sent"),
        400,
        "invalid_component",
    )
    .await;

    // Still version 1, still serving.
    let deployments = call(
        &host,
        Method::GET,
        &format!("/tenant/{}/deployments", f.slug),
        &f.tenant_key,
        None,
        200,
    )
    .await;
    assert_eq!(deployments["activeVersion"], 1);
    assert_eq!(deployments["deployments"].as_array().map(Vec::len), Some(1));
    assert_eq!(host.get(&f.slug, "/").await.status(), 200);
}

#[tokio::test]
async fn the_auth_matrix_is_consistent() {
    let host = TestHost::start().await;
    let mine = fixture(&host, "Mine", "mine").await;
    let theirs = fixture(&host, "Theirs", "theirs").await;
    // A sibling tenant in my own organization.
    let sibling = call(
        &host,
        Method::POST,
        "/tenant/spawn",
        &mine.org_key,
        Some(&json!({ "name": "sibling" })),
        201,
    )
    .await;
    let sibling_key = sibling["tenant"]["apiKey"]
        .as_str()
        .expect("key")
        .to_owned();
    // A revoked key: rotate a throwaway tenant's key.
    let revoked = fixture(&host, "Gone", "gone").await;
    call(
        &host,
        Method::POST,
        &format!("/tenant/{}/keys/rotate", revoked.slug),
        &revoked.tenant_key,
        None,
        200,
    )
    .await;

    let t = &mine.slug;
    let endpoints: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/tenant/{t}/status"), None),
        (Method::GET, format!("/tenant/{t}/logs"), None),
        (Method::GET, format!("/tenant/{t}/deployments"), None),
        (Method::GET, format!("/tenant/{t}/usage"), None),
        (
            Method::POST,
            format!("/tenant/{t}/rollback"),
            Some(json!({ "version": 1 })),
        ),
        (Method::POST, format!("/tenant/{t}/stop"), None),
        (Method::POST, format!("/tenant/{t}/start"), None),
        (
            Method::PUT,
            format!("/tenant/{t}/env"),
            Some(json!({ "vars": { "A": "1" } })),
        ),
        (Method::POST, format!("/tenant/{t}/keys/rotate"), None),
    ];
    let cases: Vec<(&str, Option<String>, u16)> = vec![
        ("no key", None, 401),
        ("malformed key", Some("not-a-key".to_owned()), 401),
        ("revoked key", Some(revoked.tenant_key.clone()), 401),
        ("another org's key", Some(theirs.org_key.clone()), 404),
        (
            "another org's tenant key",
            Some(theirs.tenant_key.clone()),
            404,
        ),
        ("a sibling tenant's key", Some(sibling_key.clone()), 404),
    ];
    for (method, path, body) in &endpoints {
        for (label, key, expected) in &cases {
            let mut request = host.api(method.clone(), path, key.as_deref());
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request.send().await.expect("sent");
            let status = response.status().as_u16();
            let text = response.text().await.unwrap_or_default();
            assert_eq!(status, *expected, "{method} {path} with {label}: {text}");
            assert!(
                text.contains("\"error\""),
                "{method} {path} with {label}: {text}"
            );
            // Another org's tenant looks exactly like one that does not exist.
            if *expected == 404 {
                let ghost = path.replace(t.as_str(), "no-such-tenant");
                let mut request = host.api(method.clone(), &ghost, key.as_deref());
                if let Some(body) = body {
                    request = request.json(body);
                }
                let ghost_text = request
                    .send()
                    .await
                    .expect("sent")
                    .text()
                    .await
                    .unwrap_or_default();
                assert_eq!(text, ghost_text, "{method} {path} with {label}");
            }
        }
    }
    // The right keys: the tenant's own, its organization's, the admin's.
    for key in [&mine.tenant_key, &mine.org_key, &ADMIN_TOKEN.to_owned()] {
        let response = host
            .api(Method::GET, &format!("/tenant/{t}/status"), Some(key))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 200);
    }
    // Organization-level endpoints.
    let forbidden = [
        (
            Method::POST,
            "/orgs",
            Some(json!({ "name": "x" })),
            mine.org_key.clone(),
        ),
        (
            Method::POST,
            "/orgs",
            Some(json!({ "name": "x" })),
            mine.tenant_key.clone(),
        ),
        (
            Method::POST,
            "/tenant/spawn",
            Some(json!({ "name": "x" })),
            mine.tenant_key.clone(),
        ),
        (Method::GET, "/tenant", None, mine.tenant_key.clone()),
    ];
    for (method, path, body, key) in forbidden {
        let mut request = host.api(method.clone(), path, Some(&key));
        if let Some(body) = body {
            request = request.json(&body);
        }
        assert_error(request.send().await.expect("sent"), 403, "forbidden").await;
    }
    for path in ["/tenant", "/orgs"] {
        let no_key = host
            .api(Method::GET, path, None)
            .send()
            .await
            .expect("sent");
        assert!(matches!(no_key.status().as_u16(), 401 | 405), "{path}");
    }
    // An org lists only its own tenants.
    let list = call(&host, Method::GET, "/tenant", &mine.org_key, None, 200).await;
    let slugs: Vec<&str> = list["tenants"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|t| t["slug"].as_str())
        .collect();
    assert_eq!(slugs, ["mine", "sibling"]);
    let all = call(
        &host,
        Method::GET,
        "/tenant?limit=2",
        ADMIN_TOKEN,
        None,
        200,
    )
    .await;
    assert_eq!(all["tenants"].as_array().map(Vec::len), Some(2));
    assert_eq!(all["nextOffset"], 2);
}

#[tokio::test]
async fn concurrent_spawns_of_one_name_create_one_tenant() {
    let host = TestHost::start().await;
    let (_, org_key) = org(&host, "Racers").await;
    let attempts: Vec<_> = (0..12)
        .map(|_| {
            host.api(Method::POST, "/tenant/spawn", Some(&org_key))
                .json(&json!({ "name": "Same Name" }))
                .send()
        })
        .collect();
    let mut statuses: Vec<u16> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.expect("sent").status().as_u16())
        .collect();
    statuses.sort_unstable();
    assert_eq!(statuses[0], 201);
    assert!(statuses[1..].iter().all(|s| *s == 409), "{statuses:?}");
}

#[tokio::test]
async fn every_failure_has_the_same_shape() {
    let host = TestHost::start().await;
    let bad_json = host
        .api(Method::POST, "/orgs", Some(ADMIN_TOKEN))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("sent");
    assert_error(bad_json, 400, "invalid_json").await;
    let unknown_field = host
        .api(Method::POST, "/orgs", Some(ADMIN_TOKEN))
        .json(&json!({ "name": "x", "colour": "blue" }))
        .send()
        .await
        .expect("sent");
    let body = assert_error(unknown_field, 400, "invalid_json").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("colour"),
        "{body}"
    );
    let no_type = host
        .api(Method::POST, "/orgs", Some(ADMIN_TOKEN))
        .body(r#"{"name":"x"}"#)
        .send()
        .await
        .expect("sent");
    assert_error(no_type, 415, "unsupported_media_type").await;
    let unknown_plan = host
        .api(Method::POST, "/orgs", Some(ADMIN_TOKEN))
        .json(&json!({ "name": "x", "plan": "platinum" }))
        .send()
        .await
        .expect("sent");
    assert_error(unknown_plan, 400, "invalid_request").await;
    let unknown_route = host
        .api(Method::GET, "/nope", Some(ADMIN_TOKEN))
        .send()
        .await
        .expect("sent");
    assert_error(unknown_route, 404, "not_found").await;
    let wrong_method = host
        .api(Method::DELETE, "/orgs", Some(ADMIN_TOKEN))
        .send()
        .await
        .expect("sent");
    assert_error(wrong_method, 405, "method_not_allowed").await;
    let bad_query = host
        .api(Method::GET, "/tenant?limit=lots", Some(ADMIN_TOKEN))
        .send()
        .await
        .expect("sent");
    assert_error(bad_query, 400, "invalid_query").await;
    let unauthorized = host
        .api(Method::GET, "/tenant", None)
        .send()
        .await
        .expect("sent");
    assert_eq!(unauthorized.headers()["www-authenticate"], "Bearer");
    assert_error(unauthorized, 401, "unauthorized").await;
}

#[tokio::test]
async fn the_api_documents_itself() {
    let host = TestHost::start().await;
    let doc: Value = host
        .client
        .get(format!("http://{}/api-docs/openapi.json", host.addr))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    let paths = doc["paths"].as_object().expect("paths");
    for path in [
        "/api/v1/orgs",
        "/api/v1/tenant/spawn",
        "/api/v1/tenant",
        "/api/v1/tenant/{id}/component",
        "/api/v1/tenant/{id}/logs",
        "/api/v1/tenant/{id}/rollback",
    ] {
        assert!(paths.contains_key(path), "{path} documented");
    }
    let page = host
        .client
        .get(format!("http://{}/api-docs", host.addr))
        .send()
        .await
        .expect("sent");
    assert_eq!(page.status(), 200);
    assert!(
        page.text()
            .await
            .expect("body")
            .contains("/api-docs/openapi.json")
    );
    let ready = host
        .client
        .get(format!("http://{}/readyz", host.addr))
        .send()
        .await
        .expect("sent");
    assert_eq!(ready.status(), 200);
}

/// A tenant's log page through the API (admin token).
async fn log_page(host: &TestHost, slug: &str) -> Vec<Value> {
    let page = call(
        host,
        Method::GET,
        &format!("/tenant/{slug}/logs?limit=1000"),
        ADMIN_TOKEN,
        None,
        200,
    )
    .await;
    page["lines"].as_array().expect("lines").clone()
}

#[tokio::test]
async fn archived_log_lines_are_read_back_after_a_restart_on_first_read() {
    let dir = tempfile::tempdir().expect("tmp");
    let host = TestHost::start_in(dir.path(), |_| {}).await;
    host.app("chatty", guests::HOSTILE, lodge_host::Limits::default())
        .await;
    for _ in 0..3 {
        assert_eq!(host.get("chatty", "/log").await.status(), 200);
    }
    let before = log_page(&host, "chatty").await;
    assert!(before.len() >= 6, "{before:?}");
    // A clean shutdown archives every queued line.
    host.shutdown().await;

    let host = TestHost::start_in(dir.path(), |_| {}).await;
    let tenant = host.lodge.registry.get("chatty").expect("restored");
    assert!(
        tenant.logs.snapshot().is_empty(),
        "nothing read back at start"
    );
    assert_eq!(host.get("chatty", "/log").await.status(), 200);
    let after = log_page(&host, "chatty").await;
    assert_eq!(&after[..before.len()], &before[..], "the history, first");
    let new = &after[before.len()..];
    assert!(
        new.iter()
            .any(|l| l["message"].as_str() == Some("hello on stderr")),
        "{new:?}"
    );
    let seqs: Vec<u64> = after
        .iter()
        .map(|l| l["seq"].as_u64().expect("seq"))
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "numbered on from the history, no line twice: {seqs:?}"
    );
    // Read once: the log is whole in memory from now on.
    assert_eq!(tenant.logs.snapshot().len(), after.len());
}

/// `(createdAt, id)` of each organization of a `GET /orgs` page, in order.
fn org_order(page: &Value) -> Vec<(String, String)> {
    page["orgs"]
        .as_array()
        .expect("orgs")
        .iter()
        .map(|o| {
            (
                o["createdAt"].as_str().expect("createdAt").to_owned(),
                o["id"].as_str().expect("id").to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn organizations_are_listed_to_the_operator_and_each_to_itself() {
    let host = TestHost::start().await;
    let first = fixture(&host, "First", "first-shop").await;
    call(
        &host,
        Method::POST,
        "/tenant/spawn",
        &first.org_key,
        Some(&json!({ "name": "first-blog" })),
        201,
    )
    .await;
    let (second_id, second_key) = org(&host, "Second").await;
    let (third_id, _) = org(&host, "Third").await;

    // The operator pages through all three, two at a time, by nextOffset.
    let page = call(&host, Method::GET, "/orgs?limit=2", ADMIN_TOKEN, None, 200).await;
    assert_eq!(page["orgs"].as_array().map(Vec::len), Some(2), "{page}");
    assert_eq!(page["nextOffset"], 2, "{page}");
    let next = page["nextOffset"].as_i64().expect("nextOffset");
    let rest = call(
        &host,
        Method::GET,
        &format!("/orgs?limit=2&offset={next}"),
        ADMIN_TOKEN,
        None,
        200,
    )
    .await;
    assert_eq!(rest["orgs"].as_array().map(Vec::len), Some(1), "{rest}");
    assert!(rest["nextOffset"].is_null(), "{rest}");
    let mut listed = org_order(&page);
    listed.extend(org_order(&rest));
    assert!(listed.is_sorted(), "oldest first: {listed:?}");
    let mut ids: Vec<&str> = listed.iter().map(|(_, id)| id.as_str()).collect();
    ids.sort_unstable();
    let mut expected = vec![first.org_id.as_str(), second_id.as_str(), third_id.as_str()];
    expected.sort_unstable();
    assert_eq!(ids, expected, "every organization, once");

    // Each with its fields and its live tenants counted; no key anywhere.
    let all = call(&host, Method::GET, "/orgs", ADMIN_TOKEN, None, 200).await;
    let shown = |id: &str| {
        all["orgs"]
            .as_array()
            .expect("orgs")
            .iter()
            .find(|o| o["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} listed: {all}"))
    };
    let first_shown = shown(&first.org_id);
    assert_eq!(first_shown["name"], "First");
    assert!(first_shown["plan"].is_string() && first_shown["createdAt"].is_string());
    assert_eq!(first_shown["tenants"], 2);
    assert_eq!(shown(&third_id)["tenants"], 0);
    let text = all.to_string();
    assert!(!text.contains("sk_") && !text.contains("apiKey"), "{text}");

    // An organization key lists its own organization only.
    let own = call(&host, Method::GET, "/orgs", &second_key, None, 200).await;
    let own_ids: Vec<String> = org_order(&own).into_iter().map(|(_, id)| id).collect();
    assert_eq!(own_ids, std::slice::from_ref(&second_id));
    assert!(own["nextOffset"].is_null(), "{own}");
    let past = call(&host, Method::GET, "/orgs?offset=1", &second_key, None, 200).await;
    assert_eq!(past["orgs"], json!([]));

    // A tenant key is refused as at every organization-level call; no key,
    // an unknown key and a bad query as everywhere.
    let refused = host
        .api(Method::GET, "/orgs", Some(&first.tenant_key))
        .send()
        .await
        .expect("sent");
    assert_error(refused, 403, "forbidden").await;
    let unknown = format!("sk_org_{}_{}", "0".repeat(12), "0".repeat(64));
    for key in [None, Some("not-a-key"), Some(unknown.as_str())] {
        let response = host
            .api(Method::GET, "/orgs", key)
            .send()
            .await
            .expect("sent");
        assert_error(response, 401, "unauthorized").await;
    }
    for query in ["limit=lots", "colour=blue"] {
        let response = host
            .api(Method::GET, &format!("/orgs?{query}"), Some(ADMIN_TOKEN))
            .send()
            .await
            .expect("sent");
        assert_error(response, 400, "invalid_query").await;
    }

    // A deleted tenant is no longer counted.
    call(
        &host,
        Method::DELETE,
        &format!("/tenant/{}", first.slug),
        &first.org_key,
        None,
        200,
    )
    .await;
    let after = call(&host, Method::GET, "/orgs", &first.org_key, None, 200).await;
    assert_eq!(after["orgs"][0]["tenants"], 1, "{after}");
}

#[tokio::test]
async fn whoami_names_the_key_and_never_a_secret() {
    let host = TestHost::start().await;
    let f = fixture(&host, "Whose", "whose-shop").await;

    let admin = call(&host, Method::GET, "/whoami", ADMIN_TOKEN, None, 200).await;
    assert_eq!(
        admin,
        json!({ "role": "admin", "org": null, "tenant": null })
    );
    let org = call(&host, Method::GET, "/whoami", &f.org_key, None, 200).await;
    assert_eq!(
        org,
        json!({ "role": "org", "org": { "id": f.org_id, "name": "Whose" }, "tenant": null })
    );
    let tenant = call(&host, Method::GET, "/whoami", &f.tenant_key, None, 200).await;
    assert_eq!(
        tenant,
        json!({
            "role": "tenant",
            "org": { "id": f.org_id, "name": "Whose" },
            "tenant": { "id": f.tenant_id, "slug": f.slug, "name": "whose-shop" },
        })
    );
    for (body, key) in [
        (&admin, ADMIN_TOKEN),
        (&org, f.org_key.as_str()),
        (&tenant, f.tenant_key.as_str()),
    ] {
        let text = body.to_string();
        let secret = key.rsplit('_').next().expect("secret part");
        assert!(
            !text.contains(key) && !text.contains(secret) && !text.contains("sk_"),
            "{text}"
        );
    }

    // Keys that are not: malformed, unknown, a real key's id with another
    // secret, a rotated key; and none. One answer for all.
    let unknown = format!("sk_tenant_{}_{}", "0".repeat(12), "0".repeat(64));
    let last = f.tenant_key.chars().last().expect("secret");
    let forged = format!(
        "{}{}",
        &f.tenant_key[..f.tenant_key.len() - 1],
        if last == '0' { '1' } else { '0' }
    );
    call(
        &host,
        Method::POST,
        &format!("/tenant/{}/keys/rotate", f.slug),
        &f.org_key,
        None,
        200,
    )
    .await;
    for key in [
        None,
        Some("not-a-key"),
        Some(unknown.as_str()),
        Some(forged.as_str()),
        Some(f.tenant_key.as_str()),
    ] {
        let response = host
            .api(Method::GET, "/whoami", key)
            .send()
            .await
            .expect("sent");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        assert_error(response, 401, "unauthorized").await;
    }
}
