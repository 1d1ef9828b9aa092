//! Instance reuse within a tenant (plan `instance_reuse = N`): an instance
//! serves up to N requests of its own tenant and deployment, each under fresh
//! limits, and is dropped the moment it traps, times out, hits a limit, holds
//! on to a request, grows, or its deployment changes. Never another tenant's.

use std::time::Duration;

use lodge_host::Limits;
use lodge_tests::{TestHost, assert_error, eventually, guests};

fn reusing(n: u32) -> Limits {
    Limits {
        instance_reuse: n,
        ..Limits::default()
    }
}

/// Instances `slug` keeps now.
fn kept(host: &TestHost, slug: &str) -> usize {
    host.lodge
        .registry
        .get(slug)
        .map_or(0, |tenant| tenant.warm.len())
}

/// GETs `path` of `slug` and waits until the instance that served it is
/// parked again (the answer can reach the client a moment before), or until
/// `kept` instances are parked.
async fn get_then_parked(host: &TestHost, slug: &str, path: &str, parked: usize) -> String {
    let response = host.get(slug, path).await;
    assert_eq!(response.status(), 200, "{slug}{path}");
    let text = response.text().await.expect("body");
    eventually(Duration::from_secs(5), "the instance is parked", || async {
        (kept(host, slug) == parked).then_some(())
    })
    .await;
    text
}

/// `/count` of the hostile guest: requests its instance served, this one included.
async fn count(host: &TestHost, slug: &str) -> u64 {
    let text = get_then_parked(host, slug, "/count", 1).await;
    text.trim().parse().expect("a number")
}

async fn count_fresh(host: &TestHost, slug: &str) -> u64 {
    let response = host.get(slug, "/count").await;
    assert_eq!(response.status(), 200);
    response
        .text()
        .await
        .expect("body")
        .trim()
        .parse()
        .expect("a number")
}

#[tokio::test]
async fn state_persists_within_a_tenant_and_never_crosses_to_another() {
    let host = TestHost::start().await;
    host.app("alpha", guests::HOSTILE, reusing(4)).await;
    host.app("beta", guests::HOSTILE, reusing(4)).await;
    host.app("fresh", guests::HOSTILE, Limits::default()).await;

    assert_eq!(count(&host, "alpha").await, 1);
    assert_eq!(count(&host, "alpha").await, 2);
    // The same component, another tenant: its own instance, its own memory.
    assert_eq!(count(&host, "beta").await, 1);
    assert_eq!(count(&host, "alpha").await, 3);
    // The fourth use is the last: the fifth request gets a fresh instance.
    let fourth = host
        .get("alpha", "/count")
        .await
        .text()
        .await
        .expect("body");
    assert_eq!(fourth.trim(), "4");
    assert_eq!(
        count(&host, "alpha").await,
        1,
        "after N requests, a fresh instance"
    );
    assert_eq!(count(&host, "beta").await, 2);

    // Without reuse in its plan a tenant never sees an earlier request's state.
    for _ in 0..3 {
        assert_eq!(count_fresh(&host, "fresh").await, 1);
    }
    assert_eq!(kept(&host, "fresh"), 0);

    let metrics = host.metrics().await;
    let reuses = metrics
        .lines()
        .find_map(|l| l.strip_prefix("lodge_instance_reuses_total "))
        .and_then(|v| v.parse::<f64>().ok())
        .expect("lodge_instance_reuses_total exported");
    assert!(reuses >= 4.0, "{reuses}");
    assert!(
        metrics.contains("lodge_instances_kept 2"),
        "alpha and beta keep one each"
    );
}

#[tokio::test]
async fn a_trap_a_timeout_or_a_refused_limit_drops_the_instance() {
    let host = TestHost::start().await;
    let limits = Limits {
        fuel: 200_000_000,
        timeout: Duration::from_millis(500),
        memory_bytes: 16 << 20,
        ..reusing(100)
    };
    host.app("fragile", guests::HOSTILE, limits).await;

    for failing in [
        ("/panic", 500, "app_failed"),
        ("/loop", 503, "fuel_exhausted"),
        ("/sleep?ms=5000", 504, "deadline_exceeded"),
        ("/alloc", 500, "app_failed"),
    ] {
        assert_eq!(count(&host, "fragile").await, 1, "before {}", failing.0);
        assert_eq!(count(&host, "fragile").await, 2);
        let (path, status, code) = failing;
        assert_error(host.get("fragile", path).await, status, code).await;
        // The kept instance served the failing request and is gone.
        assert_eq!(kept(&host, "fragile"), 0, "after {path}");
        assert_eq!(count(&host, "fragile").await, 1, "fresh after {path}");
        // Start the next round from a fresh instance too.
        host.lodge
            .registry
            .get("fragile")
            .expect("tenant")
            .warm
            .invalidate();
    }
}

#[tokio::test]
async fn every_request_on_a_kept_instance_gets_its_own_limits() {
    let host = TestHost::start().await;
    host.app("meter", guests::HOSTILE, reusing(100)).await;
    let tenant = host.lodge.registry.get("meter").expect("tenant");

    // What one `/burn?n=2000` costs.
    let before = tenant
        .counters
        .fuel
        .load(std::sync::atomic::Ordering::Relaxed);
    get_then_parked(&host, "meter", "/burn?n=2000", 1).await;
    let one = tenant
        .counters
        .fuel
        .load(std::sync::atomic::Ordering::Relaxed)
        - before;
    assert!(one > 1_000_000, "{one}");

    // A plan with room for one and a half of them per request.
    let limits = Limits {
        fuel: one * 3 / 2,
        timeout: Duration::from_millis(1500),
        ..reusing(100)
    };
    host.app("meter", guests::HOSTILE, limits).await;
    assert_eq!(count(&host, "meter").await, 1);
    for round in 0..5 {
        // Fuel is refilled for each request: five burns fit, one at a time.
        get_then_parked(&host, "meter", "/burn?n=2000", 1).await;
        // So is the deadline: each 400 ms sleep fits in its own 1.5 s (five
        // would not fit in one; the margin is for a loaded debug build).
        get_then_parked(&host, "meter", "/sleep?ms=400", 1).await;
        assert_eq!(
            count(&host, "meter").await,
            round + 2,
            "the same instance served them all"
        );
    }
    // And a request past its own budget is still refused.
    assert_error(
        host.get("meter", "/burn?n=4000").await,
        503,
        "fuel_exhausted",
    )
    .await;

    // Each request's log lines carry its own request id.
    let before = count(&host, "meter").await;
    let ids: std::collections::BTreeSet<String> =
        (0..3).map(|i| format!("req-reuse-{i}")).collect();
    for id in &ids {
        let response = host
            .client
            .get(host.path_url("meter", "/log"))
            .header("x-request-id", id)
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 200);
        eventually(Duration::from_secs(5), "parked", || async {
            (kept(&host, "meter") == 1).then_some(())
        })
        .await;
    }
    assert_eq!(
        count(&host, "meter").await,
        before + 1,
        "one instance served the logging requests"
    );
    let lines = tenant.logs.snapshot();
    for id in &ids {
        let tagged = lines
            .iter()
            .filter(|l| l.request_id == *id && l.message == "hello on stdout")
            .count();
        assert_eq!(tagged, 1, "{id}: {lines:?}");
    }
}

#[tokio::test]
async fn an_instance_whose_memory_grows_is_replaced() {
    let host = TestHost::start().await;
    host.app("leaky", guests::HOSTILE, reusing(100)).await;
    // Small additions stay within the bound: the same instance holds them all.
    assert_eq!(
        get_then_parked(&host, "leaky", "/leak?kb=16", 1)
            .await
            .trim(),
        "holding 16384"
    );
    assert_eq!(
        get_then_parked(&host, "leaky", "/leak?kb=16", 1)
            .await
            .trim(),
        "holding 32768"
    );
    // 8 MiB more is past twice its size after instantiation: not kept.
    let grown = host.get("leaky", "/leak?kb=8192").await;
    assert_eq!(grown.text().await.expect("body").trim(), "holding 8421376");
    assert_eq!(kept(&host, "leaky"), 0);
    assert_eq!(
        get_then_parked(&host, "leaky", "/leak?kb=16", 1)
            .await
            .trim(),
        "holding 16384",
        "a fresh instance"
    );
}

#[tokio::test]
async fn a_deploy_an_env_change_or_a_plan_change_drops_kept_instances() {
    let host = TestHost::start().await;
    host.app("changing", guests::HOSTILE, reusing(100)).await;
    let record = host
        .lodge
        .storage
        .get_tenant("changing")
        .await
        .expect("record");

    assert_eq!(count(&host, "changing").await, 1);
    assert_eq!(count(&host, "changing").await, 2);
    host.lodge
        .update_env(&record, vec![("MODE".into(), Some("blue".into()))])
        .await
        .expect("env set");
    assert_eq!(kept(&host, "changing"), 0, "an env change drops them");
    assert_eq!(count(&host, "changing").await, 1);

    // A new deployment (the same bytes: still a new version).
    host.lodge
        .deploy(&record, lodge_tests::wasm(guests::HOSTILE).into(), None)
        .await
        .expect("deployed");
    assert_eq!(count(&host, "changing").await, 1, "a deploy drops them");
    assert_eq!(count(&host, "changing").await, 2);

    let limits = Limits {
        memory_bytes: 64 << 20,
        ..reusing(100)
    };
    host.lodge
        .registry
        .get("changing")
        .expect("tenant")
        .set_limits(limits);
    assert_eq!(kept(&host, "changing"), 0, "a plan change drops them");
    assert_eq!(count(&host, "changing").await, 1);
}

#[tokio::test]
async fn a_guest_cannot_keep_a_request_open_across_requests() {
    let host = TestHost::start().await;
    host.app("hoarder", guests::NO_RESPONSE, reusing(100)).await;
    let slow = Duration::from_secs(10);

    // It keeps the out-parameter of the request in a global and returns: a
    // kept instance would leave the client waiting (and answer it later).
    for _ in 0..2 {
        let response = tokio::time::timeout(slow, host.get("hoarder", "/keep-outparam"))
            .await
            .expect("answered, not held open");
        assert_error(response, 502, "no_response").await;
        assert_eq!(
            kept(&host, "hoarder"),
            0,
            "an instance holding a request is dropped"
        );
    }

    // It returns with its response's body still open: the body ends (cut
    // short) instead of staying open for the next request to write into.
    let response = tokio::time::timeout(slow, host.get("hoarder", "/keep-body"))
        .await
        .expect("headers");
    assert_eq!(response.status(), 200);
    let body = tokio::time::timeout(slow, response.bytes())
        .await
        .expect("the body ends");
    if let Ok(body) = body {
        assert_eq!(&body[..], b"first chunk\n");
    }
    assert_eq!(kept(&host, "hoarder"), 0);
}

#[tokio::test]
async fn kept_instances_give_way_to_other_tenants_and_expire() {
    let host = TestHost::start_with(|c| {
        c.max_instances = 4;
        c.reuse_idle = Duration::from_millis(300);
    })
    .await;
    host.app("keeper", guests::HOSTILE, reusing(1000)).await;
    host.app("other", guests::HOSTILE, Limits::default()).await;

    // Four requests at once leave up to four instances parked: every slot.
    let concurrent: Vec<_> = (0..4)
        .map(|_| host.get("keeper", "/sleep?ms=200"))
        .collect();
    for response in futures::future::join_all(concurrent).await {
        assert_eq!(response.status(), 200);
    }
    let parked = eventually(Duration::from_secs(5), "instances parked", || async {
        let n = kept(&host, "keeper");
        (n >= 3).then_some(n)
    })
    .await;
    assert!(parked <= 4, "{parked}");

    // Another tenant's requests take the slots the parked instances held.
    let others: Vec<_> = (0..3).map(|_| host.get("other", "/sleep?ms=100")).collect();
    for response in futures::future::join_all(others).await {
        assert_eq!(response.status(), 200);
    }
    let metrics = host.metrics().await;
    assert!(
        !metrics.contains("lodge_kept_instance_evictions_total 0\n"),
        "parked instances were evicted"
    );

    // Left alone, parked instances are dropped after `reuse_idle`.
    eventually(Duration::from_secs(5), "idle instances dropped", || async {
        (kept(&host, "keeper") == 0).then_some(())
    })
    .await;
    assert_eq!(
        host.lodge.runtime.pool().in_use(),
        0,
        "their slots are free"
    );
}
