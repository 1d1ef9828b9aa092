//! Nothing reaches where it does not belong: webhooks and the host's own
//! network, plans an organization may not give itself, keys after rotation,
//! the operator's token, secrets at rest, and errors that say too much.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::post;
use futures::StreamExt as _;
use lodge_tests::{ADMIN_TOKEN, Api, LodgeProcess, TestHost, assert_error, lodge_bin};
use reqwest::Method;
use serde_json::{Value, json};

/// An org and a tenant in it; returns (org id, org key, tenant slug, tenant key).
async fn org_and_tenant(api: &Api, name: &str) -> (String, String, String, String) {
    api.org_and_tenant(name).await
}

/// A loopback listener counting every request it receives; `redirect_to`
/// makes it answer 302 to that URL.
async fn listener(redirect_to: Option<String>) -> (u16, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        let redirect_to = redirect_to.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            match redirect_to {
                Some(to) => {
                    (StatusCode::FOUND, [(axum::http::header::LOCATION, to)]).into_response()
                }
                None => StatusCode::OK.into_response(),
            }
        }
    });
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = socket.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(socket, app).await });
    (port, hits)
}

use axum::response::IntoResponse as _;

async fn submit_with_hook(api: &Api, key: &str, hook: &str) -> (u16, Value) {
    api.json(
        Method::POST,
        "/converge",
        Some(key),
        Some(&json!({ "prompt": "ping", "maxRounds": 1, "async": true, "webhookUrl": hook })),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_never_reach_the_hosts_own_network() {
    let (port, hits) = listener(None).await;
    let host = TestHost::start().await;
    let api = host.http();
    let (_, _, _, key) = org_and_tenant(&api, "prober").await;
    for hook in [
        format!("http://127.0.0.1:{port}/hook"),
        format!("http://localhost:{port}/hook"),
        format!("http://[::ffff:127.0.0.1]:{port}/hook"),
        format!("http://0.0.0.0:{port}/hook"),
        format!("http://[::1]:{port}/hook"),
        format!("http://127.1:{port}/hook"),
    ] {
        let (status, body) = submit_with_hook(&api, &key, &hook).await;
        assert_eq!(status, 400, "{hook}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("webhookUrl refused"), "{hook}: {message}");
    }
    let (status, body) = submit_with_hook(&api, &key, "ftp://example.com/x").await;
    assert_eq!(status, 400, "{body}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "nothing reached the listener"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_not_followed_even_where_private_targets_are_allowed() {
    let (inner, inner_hits) = listener(None).await;
    let (outer, outer_hits) = listener(Some(format!("http://127.0.0.1:{inner}/internal"))).await;
    let host = TestHost::start_with(|c| c.webhook_allow_private = true).await;
    let api = host.http();
    let (_, _, _, key) = org_and_tenant(&api, "redirector").await;
    let (status, queued) =
        submit_with_hook(&api, &key, &format!("http://127.0.0.1:{outer}/hook")).await;
    assert_eq!(status, 202, "{queued}");
    lodge_tests::eventually(
        Duration::from_secs(10),
        "the webhook was posted",
        || async { (outer_hits.load(Ordering::SeqCst) > 0).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(outer_hits.load(Ordering::SeqCst), 1, "a 302 is not retried");
    assert_eq!(inner_hits.load(Ordering::SeqCst), 0, "nor followed");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_secret_rotates() {
    let host = TestHost::start().await;
    let api = host.http();
    let (_, _, slug, key) = org_and_tenant(&api, "signer").await;
    let secret = |api: Api, method: Method, path: String, key: String| async move {
        let (status, body) = api.json(method, &path, Some(&key), None).await;
        assert_eq!(status, 200, "{body}");
        body["secret"].as_str().expect("secret").to_owned()
    };
    let path = format!("/tenant/{slug}/webhook-secret");
    let first = secret(api.clone(), Method::GET, path.clone(), key.clone()).await;
    assert_eq!(first.len(), 64);
    assert_eq!(
        secret(api.clone(), Method::GET, path.clone(), key.clone()).await,
        first
    );
    let rotated = secret(
        api.clone(),
        Method::POST,
        format!("{path}/rotate"),
        key.clone(),
    )
    .await;
    assert_ne!(rotated, first);
    assert_eq!(secret(api.clone(), Method::GET, path, key).await, rotated);
    host.shutdown().await;
}

const PLANS: &str = r#"
[plans.free]
max_concurrency = 2

[plans.pro]
max_concurrency = 100
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_organization_cannot_give_itself_a_better_plan() {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("lodge.toml");
    std::fs::write(&config, PLANS).expect("written");
    let host = TestHost::start_with(move |c| c.config_file = Some(config)).await;
    let api = host.http();
    let (status, org) = api
        .json(
            Method::POST,
            "/orgs",
            Some(ADMIN_TOKEN),
            Some(&json!({ "name": "climber", "plan": "free" })),
        )
        .await;
    assert_eq!(status, 201, "{org}");
    let org_id = org["org"]["id"].as_str().expect("id").to_owned();
    let org_key = org["apiKey"].as_str().expect("key").to_owned();
    let spawn = |key: String, body: Value| {
        let api = api.clone();
        async move {
            api.request(Method::POST, "/tenant/spawn", Some(&key))
                .json(&body)
                .send()
                .await
                .expect("sent")
        }
    };
    let refused = spawn(org_key.clone(), json!({ "name": "greedy", "plan": "pro" })).await;
    let body = assert_error(refused, 403, "forbidden").await;
    assert!(body.to_string().contains("operator"), "{body}");
    let same = spawn(org_key.clone(), json!({ "name": "honest", "plan": "free" })).await;
    assert_eq!(same.status(), 201);
    let inherited = spawn(org_key.clone(), json!({ "name": "plain" })).await;
    let inherited: Value = inherited.json().await.expect("json");
    assert_eq!(inherited["tenant"]["plan"], "free");
    let by_operator = spawn(
        ADMIN_TOKEN.to_owned(),
        json!({ "name": "gifted", "plan": "pro", "orgId": org_id }),
    )
    .await;
    assert_eq!(by_operator.status(), 201);

    // Only the operator changes the org's plan; its tenants on the old plan follow.
    let by_org = api
        .request(Method::PATCH, &format!("/orgs/{org_id}"), Some(&org_key))
        .json(&json!({ "plan": "pro" }))
        .send()
        .await
        .expect("sent");
    assert_error(by_org, 403, "forbidden").await;
    let (status, moved) = api
        .json(
            Method::PATCH,
            &format!("/orgs/{org_id}"),
            Some(ADMIN_TOKEN),
            Some(&json!({ "plan": "pro" })),
        )
        .await;
    assert_eq!(
        (status, &moved["org"]["plan"]),
        (200, &json!("pro")),
        "{moved}"
    );
    let (_, tenant) = api
        .json(Method::GET, "/tenant/plain/status", Some(&org_key), None)
        .await;
    assert_eq!(tenant["tenant"]["plan"], "pro", "{tenant}");
    let now_allowed = spawn(org_key, json!({ "name": "later", "plan": "pro" })).await;
    assert_eq!(now_allowed.status(), 201);
    host.shutdown().await;
}

/// Opens `logs?follow=true` with `key`; returns the stream of raw SSE text.
async fn follow(
    api: &Api,
    slug: &str,
    key: &str,
) -> impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + use<> {
    let response = api
        .request(
            Method::GET,
            &format!("/tenant/{slug}/logs?follow=true"),
            Some(key),
        )
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    response.bytes_stream()
}

/// Reads `stream` until an `end` event (failing if none comes within 5 s); returns its text.
async fn until_end(
    mut stream: impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin,
) -> String {
    let mut seen = String::new();
    while let Ok(Some(chunk)) = tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
        seen.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
        if seen.contains("event: end") {
            return seen;
        }
    }
    panic!("no end event: {seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_log_ends_when_its_key_is_rotated_or_the_tenant_stopped() {
    let host = TestHost::start().await;
    let api = host.http();
    let (_, org_key, slug, key) = org_and_tenant(&api, "watched").await;
    // Opened with `key`, ended by `action` (with the org key), for `reason`.
    for (key, action, reason) in [
        (&key, "keys/rotate", "rotated or revoked"),
        (&org_key, "stop", "stopped"),
    ] {
        let stream = Box::pin(follow(&api, &slug, key).await);
        let path = format!("/tenant/{slug}/{action}");
        let (status, _) = api.json(Method::POST, &path, Some(&org_key), None).await;
        assert_eq!(status, 200);
        let text = until_end(stream).await;
        assert!(text.contains(reason), "{text}");
    }
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn organization_keys_rotate_and_revoke() {
    let host = TestHost::start().await;
    let api = host.http();
    let (org_id, org_key, _, tenant_key) = org_and_tenant(&api, "keyed").await;
    let (status, rotated) = api
        .json(
            Method::POST,
            &format!("/orgs/{org_id}/keys/rotate"),
            Some(&org_key),
            None,
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new_key = rotated["apiKey"].as_str().expect("key").to_owned();
    let list = |key: String| {
        let api = api.clone();
        async move { api.json(Method::GET, "/tenant", Some(&key), None).await.0 }
    };
    assert_eq!(list(org_key.clone()).await, 401, "the old key is dead");
    assert_eq!(list(new_key.clone()).await, 200);
    let (status, _) = api
        .json(
            Method::POST,
            &format!("/orgs/{org_id}/keys/rotate"),
            Some(&tenant_key),
            None,
        )
        .await;
    assert_eq!(status, 403, "a tenant key cannot");
    let (status, _) = api
        .json(
            Method::POST,
            &format!("/orgs/{org_id}/keys/revoke"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(list(new_key).await, 401);
    let (status, _) = api
        .json(Method::GET, "/tenant/keyed/status", Some(&tenant_key), None)
        .await;
    assert_eq!(status, 200, "tenant keys stay");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_provider_errors_do_not_reach_tenants() {
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(|| async {
            (
                StatusCode::BAD_REQUEST,
                "upstream says: internal-detail-4711 at http://10.9.8.7/admin",
            )
        }),
    );
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/v1", socket.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(socket, app).await });
    let llm = lodge_host::convergence::provider::OpenAiConfig {
        base_url: url.clone(),
        model: "m".into(),
        api_key: None,
        timeout: Duration::from_secs(5),
        retries: 0,
        backoff: Duration::from_millis(10),
    };
    let host = TestHost::start_with(move |c| c.llm = Some(llm)).await;
    let api = host.http();
    let (_, _, _, key) = org_and_tenant(&api, "asker").await;
    let response = api
        .request(Method::POST, "/converge", Some(&key))
        .json(&json!({ "prompt": "hello", "maxRounds": 1 }))
        .send()
        .await
        .expect("sent");
    assert!(response.headers().contains_key("x-request-id"));
    let body = assert_error(response, 503, "provider_unavailable").await;
    let text = body.to_string();
    assert!(
        !text.contains("4711") && !text.contains(&url) && !text.contains("10.9.8.7"),
        "{text}"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_characters_are_refused_with_400_on_every_backend() {
    let host = TestHost::start().await;
    let api = host.http();
    let (org_id, org_key, slug, _) = org_and_tenant(&api, "nul").await;
    for (method, path, key, body) in [
        (
            Method::POST,
            "/tenant/spawn".to_owned(),
            &org_key,
            json!({ "name": "a\u{0}b" }),
        ),
        (
            Method::POST,
            "/orgs".to_owned(),
            &ADMIN_TOKEN.to_owned(),
            json!({ "name": "o\u{0}" }),
        ),
        (
            Method::POST,
            format!("/tenant/{slug}/wallet/fund"),
            &ADMIN_TOKEN.to_owned(),
            json!({ "amount": 5, "memo": "m\u{0}" }),
        ),
        (
            Method::PATCH,
            format!("/orgs/{org_id}"),
            &ADMIN_TOKEN.to_owned(),
            json!({ "plan": "\u{0}" }),
        ),
    ] {
        let response = api
            .request(method, &path, Some(key))
            .json(&body)
            .send()
            .await
            .expect("sent");
        let body = assert_error(response, 400, "invalid_request").await;
        assert!(body.to_string().contains("NUL"), "{path}: {body}");
    }
    let (status, _) = api
        .json(Method::GET, "/tenant/a%00b/status", Some(&org_key), None)
        .await;
    assert_eq!(status, 404);
    host.shutdown().await;
}

#[test]
fn any_admin_token_of_32_characters_works_and_a_short_one_is_refused() {
    let chosen = "correct horse battery staple and then some";
    let lodge = LodgeProcess::serve_with_env(&[], &[("LODGE_ADMIN_TOKEN", chosen)]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (status, _) =
        runtime.block_on(lodge.http().json(Method::GET, "/plans", Some(chosen), None));
    assert_eq!(status, 200);
    drop(lodge);

    let dir = tempfile::tempdir().expect("tmp");
    let output = Command::new(lodge_bin())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("LODGE_DATA_DIR", dir.path())
        .env("LODGE_ADMIN_TOKEN", "too-short")
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("at least 32"), "{stderr}");

    // A token file others may read is refused, with the fix.
    let file = dir.path().join("token");
    std::fs::write(&file, "x".repeat(40)).expect("written");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let output = Command::new(lodge_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-token-file"])
        .arg(&file)
        .env("LODGE_DATA_DIR", dir.path().join("data"))
        .env_remove("LODGE_ADMIN_TOKEN")
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("chmod 600"), "{stderr}");
}

/// Every file under `dir` (recursively) that contains `needle`.
fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if std::fs::read(&path)
            .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
        {
            found.push(path.display().to_string());
        }
    }
    found
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_sits_in_clear_in_the_data_dir_and_its_files_are_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let root = tempfile::tempdir().expect("tmp");
    let data = root.path().join("data");
    let lodge = LodgeProcess::serve_in(&data, &[]);
    let api = lodge.http();
    let (_, org_key, slug, tenant_key) = org_and_tenant(&api, "keeper").await;
    let secret_value = "hunter2-never-on-disk-9c1f";
    let (status, body) = api
        .json(
            Method::PUT,
            &format!("/tenant/{slug}/env"),
            Some(&tenant_key),
            Some(&json!({ "vars": { "DB_PASSWORD": secret_value } })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, hook) = api
        .json(
            Method::GET,
            &format!("/tenant/{slug}/webhook-secret"),
            Some(&tenant_key),
            None,
        )
        .await;
    let webhook_secret = hook["secret"].as_str().expect("secret").to_owned();
    lodge.kill();

    for needle in [
        secret_value,
        webhook_secret.as_str(),
        org_key.rsplit('_').next().expect("secret part"),
        tenant_key.rsplit('_').next().expect("secret part"),
    ] {
        let found = files_containing(&data, needle.as_bytes());
        assert!(found.is_empty(), "{needle:?} in clear in {found:?}");
    }
    // The search works: the variable's name (not a secret) is there.
    assert!(!files_containing(&data, b"DB_PASSWORD").is_empty());
    let mode = |path: std::path::PathBuf| {
        std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(data.clone()), 0o700);
    assert_eq!(mode(data.join("lodge.db")), 0o600);
    assert_eq!(mode(data.join("master-key")), 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_rotates_and_revokes_organization_keys() {
    let lodge = LodgeProcess::serve(&[]);
    let api = lodge.http();
    let (org_id, org_key, _, _) = org_and_tenant(&api, "cli-keys").await;
    let (code, out, err) = lodge.cli(&org_key, &["org", "keys", "rotate", &org_id]);
    assert_eq!(code, 0, "{out}{err}");
    let new_key = out
        .split_whitespace()
        .find(|w| w.starts_with("sk_org_"))
        .expect("a new key printed")
        .to_owned();
    assert_eq!(
        api.json(Method::GET, "/tenant", Some(&org_key), None)
            .await
            .0,
        401
    );
    assert_eq!(
        api.json(Method::GET, "/tenant", Some(&new_key), None)
            .await
            .0,
        200
    );
    let (code, _, err) = lodge.cli(&new_key, &["org", "keys", "revoke", &org_id]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        api.json(Method::GET, "/tenant", Some(&new_key), None)
            .await
            .0,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lodge_logs_follow_ends_when_its_key_is_rotated() {
    let lodge = LodgeProcess::serve(&[]);
    let api = lodge.http();
    let (_, org_key, slug, key) = org_and_tenant(&api, "tailed").await;
    let mut tail = Command::new(lodge_bin())
        .args(["logs", &slug, "--follow"])
        .env("LODGE_URL", format!("http://{}", lodge.addr))
        .env("LODGE_TOKEN", &key)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("lodge logs runs");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _) = api
        .json(
            Method::POST,
            &format!("/tenant/{slug}/keys/rotate"),
            Some(&org_key),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let exited = lodge_tests::eventually(Duration::from_secs(10), "lodge logs exited", || {
        let done = tail.try_wait().expect("waits");
        async move { done }
    })
    .await;
    assert!(exited.success(), "{exited}");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut tail.stderr.take().expect("piped"), &mut stderr)
        .expect("read");
    assert!(stderr.contains("log stream ended"), "{stderr}");
}

#[tokio::test]
async fn a_path_routed_app_cannot_put_a_service_worker_over_the_console() {
    // /tenants/SLUG/… shares the host's origin with /console and /api/v1: a
    // service worker registered from there could see every key typed into
    // the console if the app could widen its scope to `/`.
    let host = TestHost::start().await;
    host.app(
        "sw",
        lodge_tests::guests::HOSTILE,
        lodge_host::Limits::default(),
    )
    .await;
    let by_path = host.get("sw", "/sw").await;
    assert_eq!(by_path.status(), 200);
    assert!(
        !by_path.headers().contains_key("service-worker-allowed"),
        "{:?}",
        by_path.headers()
    );
    // On its own origin (host routing) the app's headers are its own business.
    let by_host = host
        .client
        .get(format!("http://{}/sw", host.addr))
        .header("host", "sw.localhost")
        .send()
        .await
        .expect("sent");
    assert_eq!(by_host.headers()["service-worker-allowed"], "/");
}
