//! `wasi:keyvalue` through a real guest (`tests/fixtures/kv-app`, built on
//! `lodge_sdk::kv`): operations, tenant isolation, quotas, atomic increments
//! under concurrency, and persistence across a restart.

use lodge_host::Limits;
use lodge_tests::{TestHost, guests};
use reqwest::Method;

async fn send(
    host: &TestHost,
    method: Method,
    slug: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    let response = host
        .client
        .request(method, host.path_url(slug, path))
        .body(body.to_owned())
        .send()
        .await
        .expect("sent");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

#[tokio::test]
async fn store_atomics_and_batch_work_through_a_guest() {
    let host = TestHost::start().await;
    host.app("kv", guests::KV_APP, Limits::default()).await;

    assert_eq!(
        send(&host, Method::GET, "kv", "/kv/missing", "").await.0,
        404
    );
    assert_eq!(
        send(&host, Method::PUT, "kv", "/kv/greeting", "hello")
            .await
            .0,
        204
    );
    assert_eq!(
        send(&host, Method::GET, "kv", "/kv/greeting", "").await,
        (200, "hello".to_owned())
    );
    assert_eq!(
        send(&host, Method::PUT, "kv", "/kv/greeting", "hi again")
            .await
            .0,
        204
    );
    assert_eq!(
        send(&host, Method::GET, "kv", "/kv/greeting", "").await.1,
        "hi again"
    );
    assert_eq!(
        send(&host, Method::PUT, "kv", "/kv/other?bucket=second", "b2")
            .await
            .0,
        204
    );
    assert_eq!(
        send(&host, Method::GET, "kv", "/keys", "").await.1,
        r#"["greeting"]"#
    );
    assert_eq!(
        send(&host, Method::GET, "kv", "/keys?bucket=second", "")
            .await
            .1,
        r#"["other"]"#
    );

    assert_eq!(
        send(&host, Method::POST, "kv", "/incr/n?by=5", "").await.1,
        r#"{"value":5}"#
    );
    assert_eq!(
        send(&host, Method::POST, "kv", "/incr/n?by=-7", "").await.1,
        r#"{"value":-2}"#
    );
    let (status, message) = send(&host, Method::POST, "kv", "/incr/greeting", "").await;
    assert_eq!(status, 500);
    assert!(message.contains("not a decimal integer"), "{message}");

    assert_eq!(
        send(&host, Method::POST, "kv", "/batch", "").await.1,
        r#"["1","2",null]"#
    );
    assert_eq!(
        send(&host, Method::GET, "kv", "/kv/a", "").await.0,
        404,
        "delete-many removed a"
    );
    assert_eq!(send(&host, Method::GET, "kv", "/kv/b", "").await.1, "2");

    assert_eq!(
        send(&host, Method::POST, "kv", "/append/log", "").await.1,
        "x"
    );
    assert_eq!(
        send(&host, Method::POST, "kv", "/append/log", "").await.1,
        "xx"
    );

    assert_eq!(
        send(&host, Method::DELETE, "kv", "/kv/greeting", "")
            .await
            .0,
        204
    );
    assert_eq!(
        send(&host, Method::GET, "kv", "/kv/greeting", "").await.0,
        404
    );
    let (status, message) = send(&host, Method::GET, "kv", "/keys?bucket=no/such", "").await;
    assert_eq!(status, 400, "{message}");
}

#[tokio::test]
async fn one_tenant_cannot_reach_anothers_data() {
    let host = TestHost::start().await;
    host.app("alice", guests::KV_APP, Limits::default()).await;
    host.app("bob", guests::KV_APP, Limits::default()).await;
    assert_eq!(
        send(&host, Method::PUT, "alice", "/kv/secret", "alice's")
            .await
            .0,
        204
    );
    assert_eq!(
        send(&host, Method::POST, "alice", "/incr/count?by=10", "")
            .await
            .0,
        200
    );

    // Same bucket name, same key: bob sees nothing, and his writes do not touch alice's.
    assert_eq!(
        send(&host, Method::GET, "bob", "/kv/secret", "").await.0,
        404
    );
    assert_eq!(send(&host, Method::GET, "bob", "/keys", "").await.1, "[]");
    assert_eq!(
        send(&host, Method::DELETE, "bob", "/kv/secret", "").await.0,
        204
    );
    assert_eq!(
        send(&host, Method::PUT, "bob", "/kv/secret", "bob's")
            .await
            .0,
        204
    );
    assert_eq!(
        send(&host, Method::POST, "bob", "/incr/count", "").await.1,
        r#"{"value":1}"#
    );

    assert_eq!(
        send(&host, Method::GET, "alice", "/kv/secret", "").await.1,
        "alice's"
    );
    assert_eq!(
        send(&host, Method::POST, "alice", "/incr/count?by=0", "")
            .await
            .1,
        r#"{"value":10}"#
    );
    assert_eq!(
        send(&host, Method::GET, "bob", "/kv/secret", "").await.1,
        "bob's"
    );
}

#[tokio::test]
async fn increments_are_atomic_under_concurrency() {
    let host = TestHost::start().await;
    host.app(
        "counter",
        guests::KV_APP,
        Limits {
            max_concurrency: 200,
            ..Limits::default()
        },
    )
    .await;
    let values = lodge_tests::concurrent_increments(
        &host.client,
        &host.path_url("counter", "/incr/hits"),
        100,
        100,
    )
    .await;
    assert_eq!(
        values,
        (1..=100).collect::<Vec<_>>(),
        "every increment seen exactly once"
    );
    assert_eq!(
        send(&host, Method::POST, "counter", "/incr/hits?by=0", "")
            .await
            .1,
        r#"{"value":100}"#
    );
}

#[tokio::test]
async fn quotas_are_answered_not_trapped() {
    let host = TestHost::start().await;
    let limits = Limits {
        kv_max_keys: 3,
        kv_max_bytes: 1000,
        ..Limits::default()
    };
    host.app("small", guests::KV_APP, limits).await;
    for key in ["k1", "k2", "k3"] {
        assert_eq!(
            send(&host, Method::PUT, "small", &format!("/kv/{key}"), "v")
                .await
                .0,
            204
        );
    }
    let (status, message) = send(&host, Method::PUT, "small", "/kv/k4", "v").await;
    assert_eq!(status, 507, "{message}");
    assert!(message.contains("quota-exceeded"), "{message}");
    // Overwriting an existing key is not a new key.
    assert_eq!(
        send(&host, Method::PUT, "small", "/kv/k1", "v2").await.0,
        204
    );
    // Deleting frees room.
    assert_eq!(
        send(&host, Method::DELETE, "small", "/kv/k3", "").await.0,
        204
    );
    assert_eq!(
        send(&host, Method::PUT, "small", "/kv/k4", "v").await.0,
        204
    );
    // Bytes too.
    let (status, message) = send(&host, Method::PUT, "small", "/kv/k1", &"x".repeat(2000)).await;
    assert_eq!(status, 507, "{message}");
    assert_eq!(
        send(&host, Method::GET, "small", "/kv/k1", "").await.1,
        "v2",
        "the refused write changed nothing"
    );
    assert_eq!(
        send(&host, Method::GET, "small", "/keys", "").await.1,
        r#"["k1","k2","k4"]"#
    );
}

#[tokio::test]
async fn data_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let host = TestHost::start_in(dir.path(), |_| {}).await;
    host.app("durable", guests::KV_APP, Limits::default()).await;
    assert_eq!(
        send(&host, Method::PUT, "durable", "/kv/kept", "across restarts")
            .await
            .0,
        204
    );
    host.shutdown().await;
    let host = TestHost::start_in(dir.path(), |_| {}).await;
    assert_eq!(
        send(&host, Method::GET, "durable", "/kv/kept", "").await.1,
        "across restarts"
    );
}
