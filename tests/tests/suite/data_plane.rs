//! The data plane end to end: routing, standard components served unchanged,
//! every failure's status, hostile guests, streaming, logs and secure defaults.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use lodge_host::Limits;
use lodge_tests::{TestHost, assert_error, eventually, guests};

fn limits() -> Limits {
    Limits::default()
}

#[tokio::test]
async fn hello_answers_by_host_and_by_path() {
    let host = TestHost::start().await;
    host.app("hello", guests::HELLO, limits()).await;

    let by_host = host
        .client
        .get(format!("http://{}/greet?x=1", host.addr))
        .header("host", format!("hello.localhost:{}", host.addr.port()))
        .header("x-request-id", "my-request-1")
        .send()
        .await
        .expect("sent");
    assert_eq!(by_host.status(), 200);
    assert_eq!(by_host.headers()["x-request-id"], "my-request-1");
    let body = by_host.text().await.expect("body");
    assert!(body.contains("Hello from Lodge"), "{body}");
    assert!(body.contains("/greet"), "{body}");
    assert!(body.contains("my-request-1"), "{body}");

    let by_path = host.get("hello", "/greet").await;
    assert_eq!(by_path.status(), 200);
    let id = by_path.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_eq!(id.len(), 32, "a generated id: {id}");
    let body = by_path.text().await.expect("body");
    assert!(
        body.contains("You asked for /greet"),
        "prefix stripped: {body}"
    );
    assert!(body.contains(&id), "the guest saw the generated id: {body}");
}

#[tokio::test]
async fn base_domain_routes_subdomains() {
    let host = TestHost::start_with(|c| c.base_domain = Some("apps.example.test".into())).await;
    host.app("hello", guests::HELLO, limits()).await;
    let response = host
        .client
        .get(format!("http://{}/", host.addr))
        .header("host", "hello.apps.example.test")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    let other = host
        .client
        .get(format!("http://{}/", host.addr))
        .header("host", "hello.elsewhere.test")
        .send()
        .await
        .expect("sent");
    assert_error(other, 404, "tenant_not_found").await;
}

#[tokio::test]
async fn unknown_tenants_and_unrouted_paths_are_404() {
    let host = TestHost::start().await;
    host.app("hello", guests::HELLO, limits()).await;
    assert_error(host.get("nobody", "/").await, 404, "tenant_not_found").await;
    let unrouted = host
        .client
        .get(format!("http://{}/nothing", host.addr))
        .send()
        .await
        .expect("sent");
    assert!(unrouted.headers().contains_key("x-request-id"));
    assert_error(unrouted, 404, "tenant_not_found").await;
    let health = host
        .client
        .get(format!("http://{}/healthz", host.addr))
        .send()
        .await
        .expect("sent");
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn a_plain_wstd_component_is_served_unchanged() {
    let host = TestHost::start().await;
    host.app("echo", guests::WSTD_ECHO, limits()).await;

    let echoed = host
        .client
        .post(host.path_url("echo", "/echo"))
        .body("ping pong")
        .send()
        .await
        .expect("sent");
    assert_eq!(echoed.status(), 200);
    assert_eq!(echoed.text().await.expect("body"), "ping pong");

    let headers = host
        .client
        .get(host.path_url("echo", "/headers?a=b"))
        .header("x-custom-in", "hello")
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("body");
    assert!(headers.contains("x-custom-in: hello"), "{headers}");
    assert!(
        headers.contains("x-forwarded-prefix: /tenants/echo"),
        "{headers}"
    );
    assert!(headers.contains("x-request-id: "), "{headers}");
    assert!(headers.contains("path: /headers\n"), "{headers}");
    assert!(headers.contains("query: a=b"), "{headers}");

    let teapot = host.get("echo", "/status?code=418").await;
    assert_eq!(teapot.status(), 418);
    assert_eq!(teapot.headers()["x-custom"], "yes");

    let failed = host.get("echo", "/fail").await;
    assert_error(failed, 500, "app_failed").await;
    assert!(
        host.log_messages("echo")
            .iter()
            .any(|m| m.contains("error instead of a response")),
        "{:?}",
        host.log_messages("echo")
    );
}

#[tokio::test]
async fn response_bodies_stream() {
    let host = TestHost::start().await;
    host.app("echo", guests::WSTD_ECHO, limits()).await;
    let started = Instant::now();
    let response = host.get("echo", "/stream").await;
    assert_eq!(response.status(), 200);
    let mut chunks = response.bytes_stream();
    let mut body = Vec::new();
    let mut first_at = None;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.expect("chunk");
        if !chunk.is_empty() && first_at.is_none() {
            first_at = Some(started.elapsed());
        }
        body.extend_from_slice(&chunk);
    }
    let last_at = started.elapsed();
    let first_at = first_at.expect("a chunk arrived");
    assert_eq!(
        String::from_utf8_lossy(&body),
        "chunk 0\nchunk 1\nchunk 2\nchunk 3\nchunk 4\n"
    );
    // The guest sleeps 4 × 300 ms between chunks; the first must not wait for them.
    assert!(
        last_at - first_at >= Duration::from_millis(900),
        "first chunk at {first_at:?}, last at {last_at:?}"
    );
}

#[tokio::test]
async fn a_50_mb_streamed_response_arrives_intact() {
    let host = TestHost::start().await;
    host.app("hostile", guests::HOSTILE, limits()).await;
    let response = host.get("hostile", "/big?mb=50").await;
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let mut offset = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("chunk");
        for (i, byte) in chunk.iter().enumerate() {
            let expected = ((offset + i as u64) % 251) as u8;
            assert_eq!(*byte, expected, "byte {}", offset + i as u64);
        }
        offset += chunk.len() as u64;
    }
    assert_eq!(offset, 50 * 1024 * 1024);
}

#[tokio::test]
async fn an_infinite_loop_hits_the_deadline_while_others_keep_answering() {
    let host = TestHost::start().await;
    let spin = Limits {
        timeout: Duration::from_millis(1500),
        fuel: u64::MAX / 2,
        ..limits()
    };
    host.app("spin", guests::HOSTILE, spin).await;
    host.app("calm", guests::HELLO, limits()).await;
    // Warm both up so compilation is not measured.
    assert_eq!(host.get("calm", "/").await.status(), 200);

    let started = Instant::now();
    let spinners: Vec<_> = (0..4)
        .map(|_| {
            let client = host.client.clone();
            let url = host.path_url("spin", "/loop");
            tokio::spawn(async move { client.get(url).send().await.expect("sent") })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut calm_done = Vec::new();
    for _ in 0..10 {
        let response = host.get("calm", "/").await;
        assert_eq!(response.status(), 200);
        calm_done.push(started.elapsed());
    }
    for spinner in spinners {
        let response = spinner.await.expect("joined");
        assert_error(response, 504, "deadline_exceeded").await;
    }
    let spin_done = started.elapsed();
    assert!(
        spin_done < Duration::from_millis(1500 + 3000),
        "answered within the timeout plus slack: {spin_done:?}"
    );
    let last_calm = calm_done.last().copied().unwrap_or_default();
    assert!(
        last_calm < Duration::from_millis(1500),
        "calm tenant answered during the loop: {calm_done:?}"
    );
    assert!(
        host.log_messages("spin")
            .iter()
            .any(|m| m.contains("deadline"))
    );
}

#[tokio::test]
async fn running_out_of_fuel_is_503() {
    let host = TestHost::start().await;
    host.app(
        "spin",
        guests::HOSTILE,
        Limits {
            fuel: 20_000_000,
            ..limits()
        },
    )
    .await;
    assert_error(host.get("spin", "/loop").await, 503, "fuel_exhausted").await;
    assert!(
        host.log_messages("spin")
            .iter()
            .any(|m| m.contains("fuel exhausted"))
    );
    assert_eq!(
        host.get("spin", "/ok").await.status(),
        200,
        "the next request is fine"
    );
}

#[tokio::test]
async fn a_memory_bomb_traps_and_the_memory_comes_back() {
    let host = TestHost::start().await;
    host.app(
        "bomb",
        guests::HOSTILE,
        Limits {
            memory_bytes: 32 << 20,
            ..limits()
        },
    )
    .await;
    assert_error(host.get("bomb", "/alloc").await, 500, "app_failed").await;
    let logs = host.log_messages("bomb");
    assert!(
        logs.iter().any(|m| m.contains("plan memory limit")),
        "{logs:?}"
    );
    assert_eq!(host.get("bomb", "/ok").await.status(), 200);
    // Every instance is gone once its response is complete; the budget is whole again.
    let deadline = Instant::now() + Duration::from_secs(5);
    while host.lodge.runtime.memory_budget().used() != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(host.lodge.runtime.memory_budget().used(), 0);
}

#[tokio::test]
async fn the_host_memory_budget_is_shared_by_all_tenants() {
    let host = TestHost::start_with(|c| c.memory_budget_bytes = 40 << 20).await;
    host.app("bomb", guests::HOSTILE, limits()).await;
    // Refused for the host's memory, not its own fault: 503 to retry.
    let refused = host.get("bomb", "/alloc").await;
    assert!(refused.headers().contains_key("retry-after"));
    assert_error(refused, 503, "memory_busy").await;
    let logs = host.log_messages("bomb");
    assert!(
        logs.iter().any(|m| m.contains("host memory budget")),
        "{logs:?}"
    );
    assert_eq!(host.get("bomb", "/ok").await.status(), 200);
}

#[tokio::test]
async fn deep_recursion_and_panics_are_500_and_logged() {
    let host = TestHost::start().await;
    host.app("hostile", guests::HOSTILE, limits()).await;
    assert_error(host.get("hostile", "/recurse").await, 500, "app_failed").await;
    assert_error(host.get("hostile", "/panic").await, 500, "app_failed").await;
    let logs = host.log_messages("hostile");
    assert!(
        logs.iter().any(|m| m.contains("panicked on purpose")),
        "guest stderr kept: {logs:?}"
    );
    assert!(
        logs.iter().filter(|m| m.contains("app trapped")).count() >= 2,
        "{logs:?}"
    );
    assert_eq!(host.get("hostile", "/ok").await.status(), 200);
}

#[tokio::test]
async fn a_guest_that_never_responds_is_502() {
    let host = TestHost::start().await;
    host.app("silent", guests::NO_RESPONSE, limits()).await;
    assert_error(host.get("silent", "/").await, 502, "no_response").await;
}

#[tokio::test]
async fn oversized_uploads_are_413() {
    let host = TestHost::start().await;
    host.app(
        "hostile",
        guests::HOSTILE,
        Limits {
            max_request_body: 1 << 20,
            ..limits()
        },
    )
    .await;
    let declared = host
        .client
        .post(host.path_url("hostile", "/read-body"))
        .body(vec![7u8; 2 << 20])
        .send()
        .await
        .expect("sent");
    assert_error(declared, 413, "body_too_large").await;

    let chunks =
        futures::stream::iter((0..32).map(|_| Ok::<_, std::io::Error>(vec![1u8; 64 * 1024])));
    let streamed = host
        .client
        .post(host.path_url("hostile", "/read-body"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .expect("sent");
    assert_error(streamed, 413, "body_too_large").await;

    let fits = host
        .client
        .post(host.path_url("hostile", "/read-body"))
        .body(vec![7u8; 1 << 20])
        .send()
        .await
        .expect("sent");
    assert_eq!(
        fits.text().await.expect("body"),
        format!("read {}\n", 1 << 20)
    );
}

#[tokio::test]
async fn guest_output_becomes_tagged_bounded_logs() {
    let host = TestHost::start().await;
    host.app("hostile", guests::HOSTILE, limits()).await;
    let response = host.get("hostile", "/log").await;
    let id = response.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_eq!(response.status(), 200);
    let tenant = host.lodge.registry.get("hostile").expect("tenant");
    let lines = tenant.logs.snapshot();
    let out = lines
        .iter()
        .find(|l| l.message == "hello on stdout")
        .expect("stdout line");
    let err = lines
        .iter()
        .find(|l| l.message == "hello on stderr")
        .expect("stderr line");
    assert_eq!(out.request_id, id);
    assert_eq!(err.request_id, id);
    assert_eq!(format!("{:?}", out.stream), "Stdout");
    assert_eq!(format!("{:?}", err.stream), "Stderr");

    let chatty = host.get("hostile", "/print?lines=100000").await;
    assert_eq!(chatty.status(), 200);
    assert_eq!(chatty.text().await.expect("body"), "printed 100000\n");
    let lines = tenant.logs.snapshot();
    assert!(lines.len() <= 1000, "per-tenant bound: {}", lines.len());
    assert!(
        lines
            .iter()
            .any(|l| l.message.contains("log output truncated"))
    );
    let kept_bytes: usize = lines.iter().map(|l| l.message.len()).sum();
    assert!(
        kept_bytes <= 256 * 1024 + 1000 * 100,
        "per-request bound: {kept_bytes}"
    );
}

#[tokio::test]
async fn the_sandbox_grants_nothing_by_default() {
    let host = TestHost::start().await;
    host.app("probe", guests::HOSTILE, limits()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    assert!(
        std::env::var_os("PATH").is_some(),
        "the host has environment variables"
    );

    let report = host
        .get("probe", &format!("/secure?port={port}"))
        .await
        .text()
        .await
        .expect("body");
    assert!(report.contains("env: []"), "no host environment: {report}");
    assert!(report.contains("fs_root: Err"), "no preopens: {report}");
    assert!(report.contains("passwd: Err"), "no filesystem: {report}");
    assert!(report.contains("tcp: Err"), "no sockets: {report}");
    assert!(
        report.contains("raw_http: error ErrorCode::HttpRequestDenied"),
        "outbound HTTP denied: {report}"
    );
    assert!(
        report.contains("http: error"),
        "a client library sees a failure too: {report}"
    );
    let accepted = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
    assert!(accepted.is_err(), "nothing reached the listener");
}

#[tokio::test]
async fn two_hundred_concurrent_requests_succeed_or_get_the_documented_503() {
    let host = TestHost::start().await;
    host.app(
        "sleepy",
        guests::HOSTILE,
        Limits {
            max_concurrency: 64,
            ..limits()
        },
    )
    .await;
    assert_eq!(host.get("sleepy", "/ok").await.status(), 200);
    let requests: Vec<_> = (0..200)
        .map(|_| {
            let client = host.client.clone();
            let url = host.path_url("sleepy", "/sleep?ms=300");
            tokio::spawn(async move {
                let response = client.get(url).send().await.expect("sent");
                let status = response.status().as_u16();
                let retry = response.headers().get("retry-after").cloned();
                let body = response.text().await.expect("body");
                (status, retry, body)
            })
        })
        .collect();
    let results =
        tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(requests))
            .await
            .expect("no request hangs");
    let mut ok = 0;
    for result in results {
        let (status, retry, body) = result.expect("joined");
        match status {
            200 => {
                assert_eq!(body, "slept\n");
                ok += 1;
            }
            503 => {
                assert!(retry.is_some(), "503 carries Retry-After");
                assert!(body.contains("over_concurrency"), "{body}");
            }
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    assert!(ok >= 64, "at least the concurrency limit succeeded: {ok}");
}

#[tokio::test]
async fn precompiled_artifacts_are_reused_across_hosts() {
    let data = tempfile::tempdir().expect("tmp");
    let artifacts = data.path().join("artifacts");
    let first = TestHost::start_with(|c| c.artifacts_dir = Some(artifacts.clone())).await;
    let app = first
        .lodge
        .load(lodge_tests::wasm(guests::HELLO))
        .await
        .expect("loads");
    assert!(!app.from_cache);
    let second = TestHost::start_with(|c| c.artifacts_dir = Some(artifacts.clone())).await;
    let again = second
        .lodge
        .load(lodge_tests::wasm(guests::HELLO))
        .await
        .expect("loads");
    assert!(again.from_cache);
    assert_eq!(app.digest, again.digest);
    // While loaded, the component is shared, not read again.
    let shared = second
        .lodge
        .load(lodge_tests::wasm(guests::HELLO))
        .await
        .expect("loads");
    assert!(shared.from_cache);
    assert_eq!(second.lodge.runtime.components_loaded(), 1);
    drop((again, shared));
    assert_eq!(second.lodge.runtime.components_loaded(), 0);
    // Nothing maps the artifacts once both hosts' optimisers are idle and the
    // first host is gone (writing into a mapped file would pull code from under it).
    for host in [&first, &second] {
        eventually(
            Duration::from_secs(120),
            "the optimiser is idle",
            || async { (host.lodge.runtime.optimizing() == 0).then_some(()) },
        )
        .await;
    }
    drop(app);
    first.shutdown().await;

    // Nothing holds it now: a corrupted artifact is discarded and rebuilt, not trusted.
    for entry in std::fs::read_dir(&artifacts).expect("dir").flatten() {
        std::fs::write(entry.path(), b"garbage").expect("corrupt");
    }
    let rebuilt = second
        .lodge
        .load(lodge_tests::wasm(guests::HELLO))
        .await
        .expect("loads");
    assert!(!rebuilt.from_cache);
    second
        .lodge
        .add_app("hello", lodge_tests::wasm(guests::HELLO), None)
        .await
        .expect("deploys");
    assert_eq!(second.get("hello", "/").await.status(), 200);
}

#[tokio::test]
async fn bad_components_are_refused_with_a_precise_reason() {
    let host = TestHost::start().await;
    let err = |r: Result<_, lodge_host::instance::LoadError>| {
        r.err().map(|e| e.to_string()).unwrap_or_default()
    };

    let not_wasm = err(host.lodge.load(b"hello world".to_vec()).await);
    assert!(not_wasm.contains("not a WebAssembly binary"), "{not_wasm}");

    let core = wat::parse_str("(module (func (export \"_start\")))").expect("wat");
    let core = err(host.lodge.load(core).await);
    assert!(
        core.contains("core WebAssembly module, not a component"),
        "{core}"
    );
    assert!(core.contains("wasm32-wasip2"), "{core}");

    let foreign = wat::parse_str(
        r#"(component
             (import "acme:billing/invoices@1.0.0" (instance))
             (import "wasi:nn/graph@0.2.0" (instance)))"#,
    )
    .expect("wat");
    let foreign = err(host.lodge.load(foreign).await);
    assert!(foreign.contains("acme:billing/invoices@1.0.0"), "{foreign}");
    assert!(foreign.contains("wasi:nn/graph@0.2.0"), "{foreign}");

    let no_handler = wat::parse_str("(component)").expect("wat");
    let no_handler = err(host.lodge.load(no_handler).await);
    assert!(
        no_handler.contains("wasi:http/incoming-handler"),
        "{no_handler}"
    );

    let truncated = lodge_tests::wasm(guests::HELLO);
    let truncated = err(host
        .lodge
        .load(truncated[..truncated.len() / 2].to_vec())
        .await);
    assert!(truncated.contains("invalid component"), "{truncated}");
}

#[tokio::test]
async fn a_tenant_over_its_rate_gets_429_and_others_do_not() {
    let host = TestHost::start().await;
    host.app(
        "limited",
        guests::HELLO,
        Limits {
            // One request every two seconds past the burst: the six requests
            // below come far faster than that, however loaded the machine.
            rate_per_second: 0.5,
            rate_burst: 3,
            ..limits()
        },
    )
    .await;
    host.app("free", guests::HELLO, limits()).await;
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..6 {
        let response = host.get("limited", "/").await;
        statuses.push(response.status().as_u16());
        if response.status() == 429 && limited.is_none() {
            limited = Some(response);
        }
    }
    assert_eq!(
        &statuses[..3],
        [200, 200, 200],
        "the burst is allowed: {statuses:?}"
    );
    let limited = limited.expect("the rest is limited");
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .expect("a number of seconds");
    assert!((1..=2).contains(&retry_after), "retry after {retry_after}");
    assert_error(limited, 429, "rate_limited").await;
    for _ in 0..10 {
        assert_eq!(
            host.get("free", "/").await.status(),
            200,
            "other tenants are not limited"
        );
    }
    // At least one refill interval later (a lower bound: a slower machine
    // only waits longer). The bucket's exact timing is limits.rs's unit test,
    // on a fake clock.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        host.get("limited", "/").await.status(),
        200,
        "the bucket refills"
    );
}

#[tokio::test]
async fn idle_tenants_are_unloaded_and_come_back_on_their_next_request() {
    let artifacts = tempfile::tempdir().expect("dir");
    let dir = artifacts.path().to_owned();
    let host = TestHost::start_with(|c| {
        c.idle_unload = Duration::from_millis(300);
        c.artifacts_dir = Some(dir);
    })
    .await;
    host.app("sleepy", guests::HELLO, limits()).await;
    host.app("busy", guests::WSTD_ECHO, limits()).await;
    assert_eq!(host.get("sleepy", "/").await.status(), 200);
    let sleepy = host.lodge.registry.get("sleepy").expect("tenant");
    let busy = host.lodge.registry.get("busy").expect("tenant");

    // Sleepy gets no requests and is unloaded; busy keeps its component.
    eventually(Duration::from_secs(10), "sleepy unloaded", || async {
        assert_eq!(host.get("busy", "/status?code=200").await.status(), 200);
        sleepy
            .active()
            .expect("active")
            .app()
            .is_none()
            .then_some(())
    })
    .await;
    assert!(busy.active().expect("active").app().is_some());
    assert_eq!(host.lodge.runtime.components_loaded(), 1);

    // Its next request loads it again from the precompiled artifact.
    let body = host.get("sleepy", "/").await.text().await.expect("body");
    assert!(body.contains("Hello from Lodge"), "{body}");
    let app = sleepy
        .active()
        .expect("active")
        .app()
        .expect("loaded again");
    assert!(app.from_cache);
    assert_eq!(host.lodge.runtime.components_loaded(), 2);

    // With the artifact gone too, it is compiled again from the stored blob.
    drop(app);
    while sleepy.active().expect("active").app().is_some() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for entry in std::fs::read_dir(artifacts.path()).expect("dir").flatten() {
        std::fs::remove_file(entry.path()).expect("removed");
    }
    assert_eq!(host.get("sleepy", "/").await.status(), 200);
    let app = sleepy.active().expect("active").app().expect("loaded");
    assert!(!app.from_cache, "compiled from the stored component");
}

#[tokio::test]
async fn a_version_that_cannot_load_answers_503_and_says_why() {
    let data = tempfile::tempdir().expect("dir");
    let artifacts = tempfile::tempdir().expect("dir");
    let private = artifacts.path().to_owned();
    let config = move |c: &mut lodge_host::HostConfig| c.artifacts_dir = Some(private.clone());
    let host = TestHost::start_in(data.path(), config.clone()).await;
    host.app("fragile", guests::HELLO, limits()).await;
    host.app("sturdy", guests::WSTD_ECHO, limits()).await;
    host.shutdown().await;

    // Its artifact is gone and its stored component damaged.
    use sha2::Digest as _;
    let digest = hex::encode(sha2::Sha256::digest(lodge_tests::wasm(guests::HELLO)));
    for entry in std::fs::read_dir(artifacts.path()).expect("dir").flatten() {
        if entry.file_name().to_string_lossy().starts_with(&digest) {
            std::fs::remove_file(entry.path()).expect("removed");
        }
    }
    lodge_tests::db_execute(
        data.path(),
        &format!("UPDATE blobs SET bytes = x'00' WHERE sha256 = '{digest}'"),
        &format!("UPDATE blobs SET bytes = '\\x00'::bytea WHERE sha256 = '{digest}'"),
    )
    .await;

    let host = TestHost::start_in(data.path(), config).await;
    for _ in 0..2 {
        assert_error(host.get("fragile", "/").await, 503, "app_unloadable").await;
    }
    assert!(
        host.log_messages("fragile")
            .iter()
            .any(|m| m.contains("version 1 could not be loaded")),
        "{:?}",
        host.log_messages("fragile")
    );
    // Nobody else is affected.
    assert_eq!(host.get("sturdy", "/status?code=200").await.status(), 200);
}

#[tokio::test]
async fn a_client_that_hangs_up_cancels_its_request_and_still_pays_for_it() {
    let host = TestHost::start().await;
    host.app("spinner", guests::HOSTILE, limits()).await;
    let tenant = host.lodge.registry.get("spinner").expect("tenant");
    // The client gives up after 200 ms of a request that spins for 5 s.
    let gave_up = host
        .client
        .get(host.path_url("spinner", "/spin?ms=5000"))
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(gave_up.is_err(), "the client timed out");
    // The guest stops with it (its slot is free long before 5 s) and what it
    // burnt until then is metered.
    eventually(
        Duration::from_secs(3),
        "the cancelled request's instance is gone",
        || async { (host.lodge.runtime.pool().in_use() == 0).then_some(()) },
    )
    .await;
    let fuel = tenant
        .counters
        .fuel
        .load(std::sync::atomic::Ordering::Relaxed);
    let wall = tenant
        .counters
        .wall_us
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        fuel > 1_000_000,
        "fuel burnt before the hang-up is counted: {fuel}"
    );
    assert!(
        wall >= 150_000,
        "wall time until the hang-up is counted: {wall} µs"
    );
    assert_eq!(host.get("spinner", "/ok").await.status(), 200);
}
