//! Compile tiers: a deploy goes live on Winch's baseline code and Cranelift's
//! optimised code replaces it for every tenant running that component; every
//! limit holds on both tiers.

use std::time::Duration;

use lodge_host::{Limits, TierPolicy};
use lodge_tests::{TestHost, assert_error, eventually, guests, wasm};
use reqwest::Method;
use serde_json::Value;

/// A host whose artifact cache is its own (so nothing is compiled yet) under `policy`.
async fn fresh_host(policy: TierPolicy, artifacts: &std::path::Path) -> TestHost {
    let artifacts = artifacts.to_owned();
    TestHost::start_with(move |c| {
        c.engine.tiers = policy;
        c.artifacts_dir = Some(artifacts);
    })
    .await
}

async fn deploy(host: &TestHost, slug: &str, key: &str, path: &str) -> (u16, Value) {
    let response = host
        .api(Method::PUT, &format!("/tenant/{slug}/component"), Some(key))
        .header("content-type", "application/wasm")
        .body(wasm(path))
        .send()
        .await
        .expect("sent");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn status(host: &TestHost, slug: &str, key: &str) -> Value {
    let (code, status) = host
        .http()
        .json(
            Method::GET,
            &format!("/tenant/{slug}/status"),
            Some(key),
            None,
        )
        .await;
    assert_eq!(code, 200, "{status}");
    status
}

fn artifacts_of(dir: &std::path::Path, tier: &str) -> usize {
    std::fs::read_dir(dir)
        .expect("artifacts dir")
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.contains(&format!("-{tier}-")) && name.ends_with(".cwasm")
        })
        .count()
}

#[tokio::test]
async fn a_deploy_goes_live_on_baseline_code_and_every_tenant_running_it_gets_optimised_code() {
    let artifacts = tempfile::tempdir().expect("tmp");
    let host = fresh_host(TierPolicy::Tiered, artifacts.path()).await;
    let api = host.http();
    let (_, org_key, a, a_key) = api.org_and_tenant("first").await;
    let b_key = api.spawn_tenant(&org_key, "second").await;

    let (code, deployed) = deploy(&host, &a, &a_key, guests::WSTD_ECHO).await;
    assert_eq!(code, 201, "{deployed}");
    assert_eq!(deployed["tier"], "baseline", "{deployed}");
    assert!(
        deployed["optimizedInMs"].as_u64().is_some(),
        "the answer says when optimised code is due: {deployed}"
    );
    // Served at once, on baseline code.
    let (code, _) = api.tenant_json(&a, "/status?code=201").await;
    assert_eq!(code, 201);
    // A second tenant deploying the same bytes shares the code, whatever its tier.
    let (code, second) = deploy(&host, "second", &b_key, guests::WSTD_ECHO).await;
    assert_eq!(code, 201, "{second}");

    for (slug, key) in [(a.as_str(), a_key.as_str()), ("second", b_key.as_str())] {
        eventually(
            Duration::from_secs(120),
            "the optimised code replaces the baseline code",
            || async { (status(&host, slug, key).await["tier"] == "optimized").then_some(()) },
        )
        .await;
    }
    assert_eq!(artifacts_of(artifacts.path(), "baseline"), 1);
    assert_eq!(artifacts_of(artifacts.path(), "optimized"), 1);
    // Requests keep working on the new code.
    for _ in 0..5 {
        let (code, _) = api.tenant_json("second", "/status?code=202").await;
        assert_eq!(code, 202);
    }
    let metrics = host.metrics().await;
    assert!(
        metrics.contains("lodge_tier_ups_total 1"),
        "one component raised, once for both tenants:\n{metrics}"
    );
    assert!(
        metrics.contains(r#"lodge_components_loaded_by_tier{tier="optimized"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"lodge_components_loaded_by_tier{tier="baseline"} 0"#),
        "{metrics}"
    );
    assert!(metrics.contains("lodge_optimize_queue 0"), "{metrics}");
    for tenant in [a.as_str(), "second"] {
        let series = format!(r#"lodge_tenant_code_tier{{tenant="{tenant}",tier="optimized"}} 1"#);
        assert!(metrics.contains(&series), "{series}:\n{metrics}");
    }
}

#[tokio::test]
async fn a_restart_loads_the_best_tier_cached_and_compiles_the_missing_one() {
    let data = tempfile::tempdir().expect("tmp");
    let artifacts = tempfile::tempdir().expect("tmp");
    let config = |policy| {
        let artifacts = artifacts.path().to_owned();
        move |c: &mut lodge_host::HostConfig| {
            c.engine.tiers = policy;
            c.artifacts_dir = Some(artifacts);
        }
    };
    // Deployed by a baseline-only host: only the baseline artifact exists.
    let host = TestHost::start_in(data.path(), config(TierPolicy::Baseline)).await;
    let api = host.http();
    let (_, _, slug, key) = api.org_and_tenant("restarted").await;
    let (code, deployed) = deploy(&host, &slug, &key, guests::HELLO).await;
    assert_eq!(code, 201, "{deployed}");
    assert_eq!(deployed["tier"], "baseline");
    assert!(
        deployed.get("optimizedInMs").is_none(),
        "baseline-only: no optimised code to wait for: {deployed}"
    );
    assert_eq!(api.tenant_json(&slug, "/").await.0, 200);
    assert_eq!(artifacts_of(artifacts.path(), "optimized"), 0);
    host.shutdown().await;

    // Tiered now: the first request loads the cached baseline code, and the
    // optimised build follows in the background.
    let host = TestHost::start_in(data.path(), config(TierPolicy::Tiered)).await;
    let api = host.http();
    assert_eq!(api.tenant_json(&slug, "/").await.0, 200);
    eventually(
        Duration::from_secs(120),
        "the restarted tenant's code is raised to optimised",
        || async { (status(&host, &slug, &key).await["tier"] == "optimized").then_some(()) },
    )
    .await;
    assert_eq!(artifacts_of(artifacts.path(), "optimized"), 1);
    host.shutdown().await;

    // Optimised-only: the optimised artifact is loaded, nothing compiled.
    let host = TestHost::start_in(data.path(), config(TierPolicy::Optimized)).await;
    let api = host.http();
    assert_eq!(api.tenant_json(&slug, "/").await.0, 200);
    assert_eq!(status(&host, &slug, &key).await["tier"], "optimized");
    assert_eq!(
        host.lodge
            .runtime
            .stats()
            .compiles
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

/// The hostile and conformance fixtures on one tier, through the whole host.
async fn limits_hold_on(policy: TierPolicy, tier: &str) {
    let host = TestHost::start_with(move |c| c.engine.tiers = policy).await;
    let small = Limits {
        memory_bytes: 32 << 20,
        ..Limits::default()
    };
    host.app("hostile", guests::HOSTILE, small).await;
    // Fuel apart: Cranelift's code also charges fuel per byte of `memory.fill`
    // and `memory.copy`, Winch's does not, so a memory bomb on little fuel
    // runs out of fuel first on one tier and out of memory on the other.
    let little_fuel = Limits {
        fuel: 20_000_000,
        ..Limits::default()
    };
    host.app("fuel", guests::HOSTILE, little_fuel).await;
    let spin = Limits {
        fuel: u64::MAX / 2,
        timeout: Duration::from_millis(700),
        ..Limits::default()
    };
    host.app("spin", guests::HOSTILE, spin).await;
    host.app("echo", guests::WSTD_ECHO, Limits::default()).await;
    let app = host
        .lodge
        .registry
        .get("hostile")
        .and_then(|t| t.active())
        .and_then(|a| a.app())
        .expect("loaded");
    assert_eq!(app.tier().as_str(), tier, "{policy:?}");

    assert_error(host.get("fuel", "/loop").await, 503, "fuel_exhausted").await;
    assert!(
        host.log_messages("fuel")
            .iter()
            .any(|m| m.contains("fuel exhausted"))
    );
    assert_error(host.get("spin", "/loop").await, 504, "deadline_exceeded").await;
    assert_error(host.get("hostile", "/alloc").await, 500, "app_failed").await;
    assert_error(host.get("hostile", "/recurse").await, 500, "app_failed").await;
    assert_error(host.get("hostile", "/panic").await, 500, "app_failed").await;
    let logs = host.log_messages("hostile");
    for expected in ["plan memory limit", "panicked on purpose"] {
        assert!(
            logs.iter().any(|m| m.contains(expected)),
            "{tier}: {expected}: {logs:?}"
        );
    }
    assert!(
        host.log_messages("spin")
            .iter()
            .any(|m| m.contains("deadline"))
    );
    // And then ordinary requests are fine, and the memory is back.
    assert_eq!(host.get("hostile", "/ok").await.status(), 200);
    assert_eq!(host.get("fuel", "/ok").await.status(), 200);
    let (code, _) = host.http().tenant_json("echo", "/status?code=418").await;
    assert_eq!(code, 418);
    let echoed = host
        .client
        .post(host.path_url("echo", "/echo"))
        .body(vec![7u8; 256 * 1024])
        .send()
        .await
        .expect("sent");
    assert_eq!(echoed.status(), 200);
    assert_eq!(echoed.bytes().await.expect("body").len(), 256 * 1024);
    eventually(
        Duration::from_secs(5),
        "memory budget whole again",
        || async { (host.lodge.runtime.memory_budget().used() == 0).then_some(()) },
    )
    .await;
    // Nothing was raised behind the test's back.
    assert_eq!(app.tier().as_str(), tier);
}

#[tokio::test]
async fn fuel_deadline_memory_and_traps_hold_on_baseline_code() {
    limits_hold_on(TierPolicy::Baseline, "baseline").await;
}

#[tokio::test]
async fn fuel_deadline_memory_and_traps_hold_on_optimised_code() {
    limits_hold_on(TierPolicy::Optimized, "optimized").await;
}

#[tokio::test]
async fn a_trim_moves_code_to_fresh_pools_while_requests_in_flight_finish_and_keep_their_deadline()
{
    let host = TestHost::start_with(|c| c.idle_trim = Duration::from_secs(3600)).await;
    let spin = Limits {
        fuel: u64::MAX / 2,
        timeout: Duration::from_millis(1500),
        ..Limits::default()
    };
    host.app("hostile", guests::HOSTILE, Limits::default())
        .await;
    host.app("spin", guests::HOSTILE, spin).await;
    assert_eq!(host.get("hostile", "/ok").await.status(), 200);
    let sleeper = {
        let (client, url) = (
            host.client.clone(),
            host.path_url("hostile", "/sleep?ms=800"),
        );
        tokio::spawn(async move { client.get(url).send().await.expect("sent") })
    };
    let looper = {
        let (client, url) = (host.client.clone(), host.path_url("spin", "/loop"));
        tokio::spawn(async move { client.get(url).send().await.expect("sent") })
    };
    eventually(Duration::from_secs(10), "both requests running", || async {
        (host.lodge.runtime.pool().in_use() == 2).then_some(())
    })
    .await;
    let runtime = host.lodge.runtime.clone();
    let moved = tokio::task::spawn_blocking(move || runtime.trim())
        .await
        .expect("joined")
        .expect("trimmed");
    assert!(
        moved >= 1,
        "the component in memory moved to the new engines"
    );
    // In flight on the old engines: the sleeper finishes, the loop still hits
    // its deadline (its fuel yields let the deadline in).
    let slept = sleeper.await.expect("joined");
    assert_eq!(slept.status(), 200);
    assert_eq!(slept.text().await.expect("body"), "slept\n");
    assert_error(looper.await.expect("joined"), 504, "deadline_exceeded").await;
    // New requests run on the new engines, limits and all.
    assert_eq!(host.get("hostile", "/ok").await.status(), 200);
    assert_error(host.get("spin", "/loop").await, 504, "deadline_exceeded").await;
}

#[tokio::test]
async fn a_quiet_host_gives_idle_instance_memory_back() {
    let host = TestHost::start_with(|c| c.idle_trim = Duration::from_secs(2)).await;
    host.app("hello", guests::HELLO, Limits::default()).await;
    // A burst leaves warm slots: memory kept resident for the next instances.
    let burst: Vec<_> = (0..16)
        .map(|_| {
            let (client, url) = (host.client.clone(), host.path_url("hello", "/"));
            tokio::spawn(async move { client.get(url).send().await.expect("sent").status() })
        })
        .collect();
    for request in burst {
        assert_eq!(request.await.expect("joined"), 200);
    }
    assert!(
        host.lodge.runtime.idle_resident_bytes() > 0,
        "warm slots hold memory after the burst"
    );
    eventually(
        Duration::from_secs(30),
        "idle memory given back",
        || async {
            let metrics = host.metrics().await;
            (host.lodge.runtime.idle_resident_bytes() == 0
                && !metrics.contains("lodge_idle_trims_total 0"))
            .then_some(())
        },
    )
    .await;
    assert_eq!(host.get("hello", "/").await.status(), 200);
}

#[tokio::test]
async fn a_host_shut_down_lets_go_of_its_engines() {
    let host = TestHost::start().await;
    host.app("hello", guests::HELLO, Limits::default()).await;
    assert_eq!(host.get("hello", "/").await.status(), 200);
    let _ = host.metrics().await;
    let runtime = std::sync::Arc::downgrade(&host.lodge.runtime);
    host.shutdown().await;
    // Each engine reserves terabytes of address space for its pools: a host
    // that leaked them (a reference cycle) would exhaust a process's mappings.
    eventually(
        Duration::from_secs(30),
        "the runtime is dropped",
        || async { runtime.upgrade().is_none().then_some(()) },
    )
    .await;
}
