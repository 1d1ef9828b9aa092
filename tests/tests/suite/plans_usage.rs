//! Plans (config file and API, applied live), usage metering and cost,
//! outbound HTTP policy, `/metrics`, and fair sharing between tenants.

use std::collections::HashMap;
use std::io::Write as _;
use std::time::{Duration, Instant};

use lodge_host::Limits;
use lodge_tests::{ADMIN_TOKEN, TestHost, guests, wasm};
use reqwest::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn limits() -> Limits {
    Limits {
        timeout: Duration::from_secs(10),
        ..Limits::default()
    }
}

/// An organization, and one tenant of it serving `guest`: (org id, org key, tenant id).
async fn org_with_tenant(
    host: &TestHost,
    name: &str,
    plan: Option<&str>,
    guest: &str,
) -> (String, String, String) {
    let (status, org) = host
        .api_json(
            Method::POST,
            "/orgs",
            Some(ADMIN_TOKEN),
            // The operator puts the org on the plan; its tenants take it.
            Some(&json!({ "name": name, "plan": plan })),
        )
        .await;
    assert_eq!(status, 201, "{org}");
    let org_key = org["apiKey"].as_str().expect("key").to_owned();
    let org_id = org["org"]["id"].as_str().expect("id").to_owned();
    let tenant_id = spawn(host, &org_key, name, plan, guest).await;
    (org_id, org_key, tenant_id)
}

async fn spawn(
    host: &TestHost,
    org_key: &str,
    name: &str,
    plan: Option<&str>,
    guest: &str,
) -> String {
    let mut body = json!({ "name": name });
    if let Some(plan) = plan {
        body["plan"] = json!(plan);
    }
    let (status, spawned) = host
        .api_json(Method::POST, "/tenant/spawn", Some(org_key), Some(&body))
        .await;
    assert_eq!(status, 201, "{spawned}");
    let id = spawned["tenant"]["id"].as_str().expect("id").to_owned();
    let deployed = host
        .api(
            Method::PUT,
            &format!("/tenant/{id}/component"),
            Some(org_key),
        )
        .header("content-type", "application/wasm")
        .body(wasm(guest))
        .send()
        .await
        .expect("deploy");
    assert_eq!(deployed.status(), 201);
    id
}

async fn post(host: &TestHost, slug: &str, path: &str, body: Vec<u8>) -> reqwest::Response {
    host.client
        .post(host.path_url(slug, path))
        .body(body)
        .send()
        .await
        .expect("request")
}

#[tokio::test]
async fn usage_counts_match_the_requests_sent_exactly() {
    let data = tempfile::tempdir().expect("dir");
    let host = TestHost::start_in(data.path(), |_| {}).await;
    let (org_id, org_key, _) = org_with_tenant(&host, "metered", None, guests::WSTD_ECHO).await;
    let other = spawn(&host, &org_key, "metered-two", None, guests::WSTD_ECHO).await;
    for _ in 0..20 {
        assert_eq!(
            post(&host, "metered", "/echo", vec![7; 1000])
                .await
                .status(),
            200
        );
    }
    for _ in 0..7 {
        assert_eq!(host.get("metered", "/status?code=404").await.status(), 404);
    }
    for _ in 0..3 {
        assert_eq!(host.get("metered", "/fail").await.status(), 500);
    }
    for _ in 0..4 {
        assert_eq!(
            host.get("metered-two", "/status?code=302").await.status(),
            302
        );
    }

    let (status, usage) = host
        .api_json(
            Method::GET,
            "/tenant/metered/usage?granularity=hour",
            Some(&org_key),
            None,
        )
        .await;
    assert_eq!(status, 200, "{usage}");
    let total = &usage["total"];
    assert_eq!(total["requests"], 30, "{usage}");
    assert_eq!(total["status2xx"], 20);
    assert_eq!(total["status4xx"], 7);
    assert_eq!(total["status5xx"], 3);
    assert_eq!(
        total["failures"], 3,
        "guest errors are Lodge-answered failures"
    );
    assert_eq!(total["bytesIn"], 20_000, "every body byte read");
    assert!(total["bytesOut"].as_i64().unwrap_or(0) >= 20_000, "{usage}");
    assert!(total["fuel"].as_i64().unwrap_or(0) > 0);
    assert!(total["wallMs"].as_i64().is_some());
    assert!(total["peakMemoryBytes"].as_i64().unwrap_or(0) > 0);
    let buckets = usage["buckets"].as_array().expect("buckets");
    assert_eq!(buckets.len(), 1, "one hour: {usage}");
    assert!(
        buckets[0]["start"]
            .as_str()
            .is_some_and(|s| s.ends_with(":00:00Z"))
    );
    assert_eq!(usage["cost"]["currency"], "USD");
    assert!(usage["cost"]["total"].as_f64().unwrap_or(0.0) > 0.0);

    // Periods and bad periods.
    let (_, future) = host
        .api_json(
            Method::GET,
            "/tenant/metered/usage?from=2999-01-01&to=2999-01-02",
            Some(&org_key),
            None,
        )
        .await;
    assert_eq!(future["total"]["requests"], 0, "{future}");
    for bad in [
        "from=yesterday",
        "from=2026-13-01",
        "to=2026-01-01T24",
        "granularity=week",
        "from=2026-02-02&to=2026-02-01",
    ] {
        let (status, body) = host
            .api_json(
                Method::GET,
                &format!("/tenant/metered/usage?{bad}"),
                Some(&org_key),
                None,
            )
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }

    // The organization's roll-up sums its tenants.
    let (status, org) = host
        .api_json(
            Method::GET,
            &format!("/org/{org_id}/usage"),
            Some(&org_key),
            None,
        )
        .await;
    assert_eq!(status, 200, "{org}");
    assert_eq!(org["total"]["requests"], 34, "{org}");
    assert_eq!(org["total"]["status3xx"], 4);
    let tenants = org["tenants"].as_array().expect("tenants");
    assert_eq!(tenants.len(), 2);
    assert!(
        tenants
            .iter()
            .any(|t| t["tenantId"] == other.as_str() && t["usage"]["requests"] == 4)
    );
    let (stranger, _, _) = org_with_tenant(&host, "stranger", None, guests::HELLO).await;
    let (status, _) = host
        .api_json(
            Method::GET,
            &format!("/org/{stranger}/usage"),
            Some(&org_key),
            None,
        )
        .await;
    assert_eq!(status, 404, "another organization's usage is not found");

    // A clean shutdown loses nothing: the counters since the last read survive.
    for _ in 0..5 {
        assert_eq!(host.get("metered", "/status?code=201").await.status(), 201);
    }
    host.shutdown().await;
    let host = TestHost::start_in(data.path(), |_| {}).await;
    let (_, usage) = host
        .api_json(Method::GET, "/tenant/metered/usage", Some(&org_key), None)
        .await;
    assert_eq!(usage["total"]["requests"], 35, "{usage}");
    assert_eq!(usage["total"]["status2xx"], 25);
    assert_eq!(usage["granularity"], "day");
}

const PLANS: &str = r#"
[plans.free]
max_request_body = 100
fuel = 2_000_000_000

[prices]
currency = "EUR"
"#;

fn write_config(path: &std::path::Path, text: &str) {
    let mut tmp = tempfile::NamedTempFile::new_in(path.parent().expect("dir")).expect("tmp");
    tmp.write_all(text.as_bytes()).expect("write");
    tmp.persist(path).expect("persist");
}

async fn eventually(mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn plans_from_the_config_file_apply_live_and_a_broken_file_changes_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("lodge.toml");
    write_config(&config, PLANS);
    let path = config.clone();
    let host = TestHost::start_with(move |c| {
        c.config_file = Some(path);
        c.config_poll = Duration::from_millis(50);
    })
    .await;
    let (_, org_key, _) = org_with_tenant(&host, "frugal", Some("free"), guests::WSTD_ECHO).await;
    let (status, body) = host
        .api_json(
            Method::POST,
            "/tenant/spawn",
            Some(&org_key),
            Some(&json!({"name": "x", "plan": "gold"})),
        )
        .await;
    assert_eq!(status, 400, "unknown plans are refused: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("free")),
        "{body}"
    );

    assert_eq!(
        post(&host, "frugal", "/echo", vec![1; 200]).await.status(),
        413
    );
    write_config(
        &config,
        &PLANS.replace("max_request_body = 100", "max_request_body = 1000"),
    );
    assert!(
        eventually(async || post(&host, "frugal", "/echo", vec![1; 200]).await.status() == 200)
            .await,
        "the new limit applies without a restart"
    );
    let (_, plans) = host
        .api_json(Method::GET, "/plans", Some(&org_key), None)
        .await;
    assert_eq!(plans["plans"]["free"]["max_request_body"], 1000, "{plans}");
    assert_eq!(plans["prices"]["currency"], "EUR");

    write_config(&config, "[plans.free]\nmax_request_body = \"lots\"\n");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        post(&host, "frugal", "/echo", vec![1; 200]).await.status(),
        200,
        "plans in force stay"
    );
    let (_, plans) = host
        .api_json(Method::GET, "/plans", Some(&org_key), None)
        .await;
    assert_eq!(plans["plans"]["free"]["max_request_body"], 1000);
}

#[tokio::test]
async fn per_tenant_overrides_through_the_api_apply_at_once_and_persist() {
    let data = tempfile::tempdir().expect("dir");
    let host = TestHost::start_in(data.path(), |_| {}).await;
    let (_, org_key, id) = org_with_tenant(&host, "limited", None, guests::HELLO).await;
    let path = format!("/tenant/{id}/limits");
    let change = json!({ "overrides": { "rate_per_second": 0.5, "rate_burst": 1 } });
    let (status, _) = host
        .api_json(Method::PATCH, &path, Some(&org_key), Some(&change))
        .await;
    assert_eq!(status, 403, "tenants' owners cannot raise their own limits");
    for bad in [
        json!({ "overrides": { "rate_per_sec": 1 } }),
        json!({ "overrides": { "memory_mib": 1_000_000 } }),
        json!({ "overrides": { "max_concurrency": 0 } }),
        json!({ "overrides": { "outbound_allow": ["http://x/"] } }),
        json!({ "plan": "platinum" }),
    ] {
        let (status, body) = host
            .api_json(Method::PATCH, &path, Some(ADMIN_TOKEN), Some(&bad))
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, body) = host
        .api_json(Method::PATCH, &path, Some(ADMIN_TOKEN), Some(&change))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["effective"]["rate_burst"], 1);
    assert_eq!(
        body["overrides"],
        json!({ "rate_per_second": 0.5, "rate_burst": 1 })
    );

    assert_eq!(host.get("limited", "/").await.status(), 200);
    let limited = host.get("limited", "/").await;
    assert_eq!(
        limited.status(),
        429,
        "the override applies to the next request"
    );
    assert_eq!(
        limited.headers()["retry-after"],
        "2",
        "one token at 0.5/s takes 2 s"
    );
    assert!(
        eventually(async || {
            host.log_messages("limited")
                .iter()
                .any(|m| m.contains("over the plan's rate"))
        })
        .await,
        "the tenant's log says why"
    );

    host.shutdown().await;
    let host = TestHost::start_in(data.path(), |_| {}).await;
    let (_, body) = host
        .api_json(Method::GET, &path, Some(&org_key), None)
        .await;
    assert_eq!(body["overrides"]["rate_burst"], 1, "{body}");
    assert_eq!(host.get("limited", "/").await.status(), 200);
    assert_eq!(
        host.get("limited", "/").await.status(),
        429,
        "still limited after a restart"
    );

    let clear = json!({ "overrides": {} });
    let (status, _) = host
        .api_json(Method::PATCH, &path, Some(ADMIN_TOKEN), Some(&clear))
        .await;
    assert_eq!(status, 200);
    for _ in 0..5 {
        assert_eq!(
            host.get("limited", "/").await.status(),
            200,
            "back to the plan"
        );
    }
}

/// A one-shot upstream HTTP server: answers each connection with `body`; counts connections.
async fn upstream(body: &'static str) -> (u16, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (seen, connections) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = seen.send(());
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                if body == "hang" {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    return;
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    (port, connections)
}

#[tokio::test]
async fn outbound_http_follows_the_allowlist_the_private_rule_and_the_caps() {
    let (port, mut connections) = upstream("hello-from-upstream").await;
    let host = TestHost::start().await;
    host.app("closed", guests::HOSTILE, limits()).await;
    host.app(
        "public-only",
        guests::HOSTILE,
        Limits {
            outbound_allow: vec!["localhost".into(), "127.0.0.1".into()],
            ..limits()
        },
    )
    .await;
    host.app(
        "open",
        guests::HOSTILE,
        Limits {
            outbound_allow: vec!["127.0.0.1".into()],
            outbound_allow_private: true,
            outbound_max_requests: 2,
            outbound_timeout: Duration::from_millis(500),
            ..limits()
        },
    )
    .await;
    let fetch = async |slug: &str, n: u32, url: String| {
        host.get(slug, &format!("/fetch?n={n}&url={url}"))
            .await
            .text()
            .await
            .expect("body")
    };
    let url = format!("http://127.0.0.1:{port}/");

    let denied = fetch("closed", 1, url.clone()).await;
    assert!(
        denied.contains("error ErrorCode::HttpRequestDenied"),
        "{denied}"
    );
    let private = fetch("public-only", 1, format!("http://localhost:{port}/")).await;
    assert!(
        private.contains("error ErrorCode::DestinationIpProhibited"),
        "{private}"
    );
    let private = fetch("public-only", 1, url.clone()).await;
    assert!(
        private.contains("error ErrorCode::DestinationIpProhibited"),
        "{private}"
    );
    let other_host = fetch("open", 1, format!("http://localhost:{port}/")).await;
    assert!(
        other_host.contains("HttpRequestDenied"),
        "not on the list: {other_host}"
    );
    assert!(
        connections.try_recv().is_err(),
        "nothing refused reached the upstream"
    );

    let report = fetch("open", 3, url.clone()).await;
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines.len(), 3, "{report}");
    assert_eq!(lines[0], "status 200 hello-from-upstream");
    assert_eq!(lines[1], "status 200 hello-from-upstream");
    assert_eq!(
        lines[2], "error ErrorCode::HttpRequestDenied",
        "the third is over the cap"
    );
    assert!(
        host.log_messages("open")
            .iter()
            .any(|m| m.contains("outbound request limit"))
    );
    assert!(
        host.log_messages("public-only")
            .iter()
            .any(|m| m.contains("private address"))
    );

    let (hang_port, _hang) = upstream("hang").await;
    let slow = fetch("open", 1, format!("http://127.0.0.1:{hang_port}/")).await;
    assert!(slow.starts_with("error"), "{slow}");
    assert!(
        slow.to_ascii_lowercase().contains("timeout"),
        "the plan's outbound timeout cut it: {slow}"
    );

    let open = host.lodge.registry.get("open").expect("tenant");
    host.lodge.flush_usage_of(&open).await;
    let (_, usage) = host
        .api_json(
            Method::GET,
            &format!("/tenant/{}/usage", open.id),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(
        usage["total"]["outboundRequests"], 3,
        "two sent, one timed out: {usage}"
    );
}

/// Parses the text exposition into `name{labels}` → value.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("series and value");
            (series.to_owned(), value.parse().expect("numeric value"))
        })
        .collect()
}

#[tokio::test]
async fn metrics_parse_and_count_with_bounded_tenant_labels() {
    let host = TestHost::start_with(|c| c.metrics_tenant_labels = 2).await;
    host.app("m-one", guests::HELLO, limits()).await;
    host.app(
        "m-two",
        guests::HELLO,
        Limits {
            rate_per_second: 0.1,
            rate_burst: 2,
            ..limits()
        },
    )
    .await;
    host.app("m-three", guests::HELLO, limits()).await;
    host.app("m-four", guests::HELLO, limits()).await;
    for _ in 0..6 {
        assert_eq!(host.get("m-one", "/").await.status(), 200);
    }
    let mut limited = 0;
    for _ in 0..5 {
        if host.get("m-two", "/").await.status() == 429 {
            limited += 1;
        }
    }
    assert_eq!(limited, 3);
    host.get("m-three", "/").await;
    host.get("m-four", "/").await;

    let url = format!("http://{}/metrics", host.addr);
    let anonymous = host.client.get(&url).send().await.expect("metrics");
    assert_eq!(anonymous.status(), 401);
    let response = host
        .client
        .get(&url)
        .bearer_auth(ADMIN_TOKEN)
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .send()
        .await
        .expect("metrics");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("text");
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    // Without asking for OpenMetrics: the classic format, counters named as their samples.
    let classic = host.metrics().await;
    assert!(!classic.contains("# EOF"), "{classic}");
    assert!(
        classic.contains("# TYPE lodge_requests_total counter\n"),
        "{classic}"
    );
    let m = parse_metrics(&text);
    assert_eq!(
        m.get(r#"lodge_requests_total{tenant="m-one",status="2xx"}"#),
        Some(&6.0),
        "{text}"
    );
    assert_eq!(
        m.get(r#"lodge_requests_total{tenant="m-two",status="4xx"}"#),
        Some(&3.0)
    );
    assert_eq!(
        m.get(r#"lodge_limits_hit_total{tenant="m-two",limit="rate_limited"}"#),
        Some(&3.0)
    );
    assert_eq!(
        m.get(r#"lodge_requests_total{tenant="_other",status="2xx"}"#),
        Some(&2.0),
        "past the label cap"
    );
    assert_eq!(
        m.get(r#"lodge_request_duration_seconds_count{tenant="m-one"}"#),
        Some(&6.0)
    );
    assert_eq!(m.get("lodge_instances_in_use"), Some(&0.0));
    assert_eq!(
        m.get("lodge_components_loaded"),
        Some(&1.0),
        "four tenants running one component share it"
    );
    assert!(
        m.get("lodge_instantiations_total")
            .is_some_and(|v| *v >= 10.0)
    );
    assert!(m.contains_key("lodge_artifact_cache_hits_total"));
    assert!(m.contains_key("lodge_compile_seconds_total"));
    assert!(
        !text.contains("m-three") && !text.contains("m-four"),
        "labels stay bounded"
    );
}

#[tokio::test]
async fn the_database_check_and_the_log_archive_queue_are_exported() {
    let host = TestHost::start_with(|c| c.log_archive_queue = 500).await;
    host.app("archived", guests::HOSTILE, limits()).await;
    assert_eq!(host.get("archived", "/log").await.status(), 200);
    let classic = host.metrics().await;
    assert!(
        classic.contains("# TYPE lodge_database_up gauge\n"),
        "{classic}"
    );
    let m = parse_metrics(&classic);
    assert_eq!(
        m.get("lodge_database_up"),
        Some(&1.0),
        "the database answers: {classic}"
    );
    assert_eq!(m.get("lodge_log_archive_queue_capacity"), Some(&500.0));
    let queued = m.get("lodge_log_archive_queue").copied();
    assert!(
        queued.is_some_and(|n| (0.0..=500.0).contains(&n)),
        "{queued:?}"
    );
    assert_eq!(m.get("lodge_log_archive_lines_lost_total"), Some(&0.0));
    // Written, the queue drains (the archive writes every 50 ms).
    let drained = eventually(async || {
        let m = parse_metrics(&host.metrics().await);
        m.get("lodge_log_archive_queue") == Some(&0.0)
    })
    .await;
    assert!(drained, "the archive queue drains");
}

#[tokio::test]
async fn a_tenant_flooding_the_host_leaves_room_for_another() {
    // A pool of 10 instances; the flooder may run 40 at once by its plan.
    let host = TestHost::start_with(|c| c.max_instances = 10).await;
    host.app(
        "flood",
        guests::HOSTILE,
        Limits {
            max_concurrency: 40,
            ..limits()
        },
    )
    .await;
    host.app("quiet", guests::HOSTILE, limits()).await;
    let flood: Vec<_> = (0..40)
        .map(|_| {
            let client = host.client.clone();
            let url = host.path_url("flood", "/spin?ms=1500");
            tokio::spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..10 {
        let response = host.get("quiet", "/ok").await;
        assert_eq!(
            response.status(),
            200,
            "the reserve and the CPU lanes serve the quiet tenant"
        );
    }
    let quiet_done = Instant::now();
    let mut statuses = Vec::new();
    for task in flood {
        statuses.push(task.await.expect("task").expect("response"));
    }
    assert!(
        quiet_done.elapsed() > Duration::from_millis(500),
        "the quiet tenant did not wait for the flood"
    );
    let served = statuses.iter().filter(|s| **s == 200).count();
    assert!(
        (1..=9).contains(&served),
        "the flooder keeps at most the shared part: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
}
