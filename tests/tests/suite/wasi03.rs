//! WASI 0.3 components (`wasi:http/service@0.3.0`, fixture `p3-hello`, built
//! with wit-bindgen's async support) served beside WASI 0.2 ones, under the
//! same limits, logs and failure statuses; components of no world Lodge
//! serves are refused with what was found and what is accepted.

use std::sync::atomic::Ordering;
use std::time::Duration;

use lodge_host::Limits;
use lodge_tests::{TestHost, assert_error, eventually, guests};

fn limits() -> Limits {
    Limits::default()
}

fn refusal<T, E: std::fmt::Display>(loaded: Result<T, E>) -> String {
    match loaded {
        Ok(_) => panic!("loaded, not refused"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn a_wasi_0_3_component_is_served_beside_a_0_2_one() {
    let host = TestHost::start().await;
    host.app("p3", guests::P3_HELLO, limits()).await;
    host.app("p2", guests::HELLO, limits()).await;

    let hello = host.get("p3", "/").await;
    assert_eq!(hello.status(), 200);
    assert!(hello.headers().contains_key("x-request-id"));
    assert_eq!(hello.text().await.expect("body"), "hello from p3");
    assert_eq!(host.get("p2", "/").await.status(), 200);
    assert_eq!(host.get("p3", "/nothing").await.status(), 404);

    // A body streamed back by a task that outlives `handle`, and passed through.
    let big: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8).collect();
    for path in ["/echo", "/echo?direct"] {
        let echoed = host
            .client
            .post(host.path_url("p3", path))
            .body(big.clone())
            .send()
            .await
            .expect("sent");
        assert_eq!(echoed.status(), 200, "{path}");
        assert_eq!(
            echoed.bytes().await.expect("body").as_ref(),
            &big[..],
            "{path}"
        );
    }

    // Lodge's capabilities from a 0.3 handler (lodge-sdk's key-value), per tenant.
    host.app("p3-other", guests::P3_HELLO, limits()).await;
    for expected in ["1", "2"] {
        let counted = host.get("p3", "/count").await;
        assert_eq!(counted.status(), 200);
        assert_eq!(counted.text().await.expect("body"), expected);
    }
    assert_eq!(
        host.get("p3-other", "/count")
            .await
            .text()
            .await
            .expect("body"),
        "1"
    );

    let tenant = host.lodge.registry.get("p3").expect("tenant");
    let fuel = tenant.counters.fuel.load(Ordering::Relaxed);
    assert!(fuel > 0, "0.3 requests are metered: {fuel}");
    eventually(Duration::from_secs(5), "six requests counted", || async {
        (tenant.counters.requests.load(Ordering::Relaxed) >= 6).then_some(())
    })
    .await;
}

#[tokio::test]
async fn wasi_0_2_components_never_run_on_the_engine_with_concurrency_support() {
    // Concurrency support makes every store carry async state, which costs a
    // 0.2 request a quarter of its throughput: 0.2 components get an engine
    // without it, and the 0.3 engine is made only when a 0.3 component comes.
    let host = TestHost::start().await;
    host.app("p2", guests::HELLO, limits()).await;
    let runtime = host.lodge.runtime.clone();
    let tiers = runtime.engines_made();
    assert!(tiers >= 1);
    assert_eq!(host.get("p2", "/").await.status(), 200);
    assert_eq!(
        runtime.engines_made(),
        tiers,
        "a 0.2 request made no engine"
    );

    host.app("p3", guests::P3_HELLO, limits()).await;
    // The tier it loaded on (the optimised one follows when its build is done).
    let made = runtime.engines_made();
    assert!(
        made > tiers && made <= 2 * tiers,
        "{made} engines: a WASI 0.3 engine per tier that has 0.3 code"
    );
    assert_eq!(host.get("p3", "/").await.status(), 200);
    assert_eq!(host.get("p2", "/").await.status(), 200);

    // A trim replaces the engines: both worlds move and serve on.
    let trimmer = runtime.clone();
    let moved = tokio::task::spawn_blocking(move || trimmer.trim())
        .await
        .expect("joined")
        .expect("trimmed");
    assert!(moved >= 2, "{moved}");
    assert_eq!(
        host.get("p3", "/").await.text().await.expect("body"),
        "hello from p3"
    );
    assert_eq!(host.get("p2", "/").await.status(), 200);
    assert_eq!(host.get("p3", "/count").await.status(), 200);
}

#[tokio::test]
async fn a_restarted_host_serves_0_3_and_0_2_components_from_their_cached_artifacts() {
    let data = tempfile::tempdir().expect("tmp");
    let artifacts = tempfile::tempdir().expect("tmp");
    let dir = artifacts.path().to_owned();
    let config = move |c: &mut lodge_host::HostConfig| c.artifacts_dir = Some(dir.clone());
    let host = TestHost::start_in(data.path(), config.clone()).await;
    host.app("p3", guests::P3_HELLO, limits()).await;
    host.app("p2", guests::HELLO, limits()).await;
    assert_eq!(host.get("p3", "/").await.status(), 200);
    host.shutdown().await;

    // Each world's artifacts are named apart: the 0.3 component's end in `-async`.
    let names: Vec<String> = std::fs::read_dir(artifacts.path())
        .expect("artifacts")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let p3 = names.iter().filter(|n| n.ends_with("-async.cwasm")).count();
    assert!(p3 >= 1, "{names:?}");
    assert!(names.len() > p3, "the 0.2 component's artifacts: {names:?}");

    let host = TestHost::start_in(data.path(), config).await;
    assert_eq!(
        host.get("p3", "/").await.text().await.expect("body"),
        "hello from p3"
    );
    assert_eq!(host.get("p2", "/").await.status(), 200);
    let stats = host.lodge.runtime.stats();
    assert_eq!(
        stats.cache_misses.load(Ordering::Relaxed),
        0,
        "nothing compiled again after the restart"
    );
    host.shutdown().await;
}

#[tokio::test]
async fn wasi_0_3_output_lands_in_the_tenant_log_with_the_request_id() {
    let host = TestHost::start().await;
    host.app("p3", guests::P3_HELLO, limits()).await;
    let mut ids = Vec::new();
    for path in ["/log", "/log?stderr", "/log?std"] {
        let response = host.get("p3", path).await;
        assert_eq!(response.status(), 200, "{path}");
        ids.push(
            response.headers()["x-request-id"]
                .to_str()
                .expect("id")
                .to_owned(),
        );
    }
    let tenant = host.lodge.registry.get("p3").expect("tenant");
    let lines = eventually(Duration::from_secs(5), "three log lines", || async {
        let lines: Vec<_> = tenant
            .logs
            .snapshot()
            .into_iter()
            .filter(|l| l.message.contains("a line for the tenant log"))
            .collect();
        (lines.len() == 3).then_some(lines)
    })
    .await;
    for (line, id) in lines.iter().zip(&ids) {
        assert_eq!(&line.request_id, id, "{line:?}");
    }
}

#[tokio::test]
async fn hostile_wasi_0_3_guests_get_the_same_statuses_as_0_2_ones() {
    let host = TestHost::start().await;
    host.app(
        "fuel",
        guests::P3_HELLO,
        Limits {
            fuel: 20_000_000,
            ..limits()
        },
    )
    .await;
    host.app(
        "slow",
        guests::P3_HELLO,
        Limits {
            fuel: u64::MAX / 2,
            timeout: Duration::from_millis(500),
            ..limits()
        },
    )
    .await;
    host.app(
        "small",
        guests::P3_HELLO,
        Limits {
            memory_bytes: 32 << 20,
            ..limits()
        },
    )
    .await;

    assert_error(host.get("fuel", "/spin").await, 503, "fuel_exhausted").await;
    assert!(
        host.log_messages("fuel")
            .iter()
            .any(|m| m.contains("fuel exhausted"))
    );
    // Spinning, and blocked in the host (a clock wait): both end at the deadline.
    assert_error(host.get("slow", "/spin").await, 504, "deadline_exceeded").await;
    assert_error(
        host.get("slow", "/sleep?ms=60000").await,
        504,
        "deadline_exceeded",
    )
    .await;
    let slept = host.get("slow", "/sleep?ms=10").await;
    assert_eq!(slept.status(), 200);

    assert_error(host.get("small", "/hog?mb=64").await, 500, "app_failed").await;
    assert!(
        host.log_messages("small")
            .iter()
            .any(|m| m.contains("plan memory limit")),
        "{:?}",
        host.log_messages("small")
    );
    assert_eq!(host.get("small", "/hog?mb=4").await.status(), 200);

    assert_error(host.get("small", "/panic").await, 500, "app_failed").await;
    assert!(
        host.log_messages("small")
            .iter()
            .any(|m| m.contains("app trapped")),
    );
    // An error code instead of a response: 500, and the code in the log.
    assert_error(host.get("small", "/error").await, 500, "app_failed").await;
    assert!(
        host.log_messages("small")
            .iter()
            .any(|m| m.contains("InternalError")),
        "{:?}",
        host.log_messages("small")
    );
    // Streams live in wasmtime's own table, outside the memory limiter: a
    // guest making a million of them meets the store's handle limit and traps.
    assert_error(
        host.get("fuel", "/streams?n=1000000").await,
        500,
        "app_failed",
    )
    .await;
    assert!(
        host.log_messages("fuel")
            .iter()
            .any(|m| m.contains("handle limit")),
        "{:?}",
        host.log_messages("fuel")
    );
    for slug in ["fuel", "slow", "small"] {
        assert_eq!(
            host.get(slug, "/").await.status(),
            200,
            "{slug} still serves"
        );
    }
    // Every instance is gone once its request ended; the budget is whole again.
    eventually(
        Duration::from_secs(5),
        "the memory budget is whole",
        || async { (host.lodge.runtime.memory_budget().used() == 0).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn concurrency_limits_hold_for_wasi_0_3_guests() {
    let host = TestHost::start().await;
    host.app(
        "p3",
        guests::P3_HELLO,
        Limits {
            max_concurrency: 2,
            ..limits()
        },
    )
    .await;
    let sleepers: Vec<_> = (0..2)
        .map(|_| {
            let request = host
                .client
                .get(host.path_url("p3", "/sleep?ms=1500"))
                .send();
            tokio::spawn(request)
        })
        .collect();
    eventually(Duration::from_secs(5), "two requests in flight", || async {
        let tenant = host.lodge.registry.get("p3")?;
        (tenant.load.in_flight() == 2).then_some(())
    })
    .await;
    assert_error(host.get("p3", "/").await, 503, "over_concurrency").await;
    for sleeper in sleepers {
        let response = sleeper.await.expect("joined").expect("sent");
        assert_eq!(response.status(), 200);
    }
}

#[tokio::test]
async fn components_of_no_world_lodge_serves_are_refused_naming_what_they_export() {
    let host = TestHost::start().await;

    let command = wat::parse_str(
        r#"(component
             (core module $m (func (export "run") (result i32) i32.const 0))
             (core instance $i (instantiate $m))
             (func $run (result (result)) (canon lift (core func $i "run")))
             (instance $e (export "run" (func $run)))
             (export "wasi:cli/run@0.2.0" (instance $e)))"#,
    )
    .expect("wat");
    let refused = refusal(host.lodge.load(command).await);
    assert!(refused.contains("`wasi:cli/run@0.2.0`"), "{refused}");
    assert!(refused.contains("a command"), "{refused}");
    assert!(
        refused.contains("wasi:http/incoming-handler@0.2.x"),
        "{refused}"
    );
    assert!(refused.contains("wasi:http/handler@0.3.x"), "{refused}");

    let candidate = wat::parse_str(
        r#"(component
             (instance $e)
             (export "wasi:http/handler@0.3.0-rc-2025-09-16" (instance $e)))"#,
    )
    .expect("wat");
    let refused = refusal(host.lodge.load(candidate).await);
    assert!(refused.contains("release candidate"), "{refused}");

    // The right name with the wrong type is refused too, by its world's check.
    let hollow = wat::parse_str(
        r#"(component
             (instance $e)
             (export "wasi:http/handler@0.3.0" (instance $e)))"#,
    )
    .expect("wat");
    let refused = refusal(host.lodge.load(hollow).await);
    assert!(refused.contains("does not have the type"), "{refused}");
}

#[tokio::test]
async fn a_host_with_wasi_0_3_off_refuses_0_3_components_saying_why() {
    let host = TestHost::start_with(|c| c.engine.wasi_p3 = false).await;
    let refused = refusal(host.lodge.load(lodge_tests::wasm(guests::P3_HELLO)).await);
    assert!(refused.contains("--wasi-p3 false"), "{refused}");
    assert!(refused.contains("wasi:http/handler@0.3.x"), "{refused}");
    // WASI 0.2 components are served as ever.
    host.app("p2", guests::HELLO, limits()).await;
    assert_eq!(host.get("p2", "/").await.status(), 200);
}
