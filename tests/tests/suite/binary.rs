//! The real `lodge` binary: `serve --app`, its help, and its refusals.

use std::process::Command;
use std::time::Duration;

use lodge_tests::{ADMIN_TOKEN, LodgeProcess, guests, lodge_bin};

fn get(addr: std::net::SocketAddr, host: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, response)
}

#[test]
fn serve_runs_apps_given_on_the_command_line() {
    let hello = format!("hello={}", guests::HELLO);
    let echo = format!("echo={}", guests::WSTD_ECHO);
    let lodge = LodgeProcess::serve(&["--app", &hello, "--app", &echo, "--timeout-ms", "2000"]);
    let port = lodge.addr.port();

    let (status, body) = get(lodge.addr, &format!("hello.localhost:{port}"), "/");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Hello from Lodge"), "{body}");
    assert!(
        body.to_ascii_lowercase().contains("x-request-id: "),
        "{body}"
    );

    let (status, body) = get(lodge.addr, "127.0.0.1", "/tenants/echo/status?code=201");
    assert_eq!(status, 201, "{body}");

    let (status, body) = get(lodge.addr, "127.0.0.1", "/tenants/ghost/");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains(r#""code":"tenant_not_found""#), "{body}");

    let stderr = lodge.stderr();
    assert!(stderr.contains("lodge listening on http://"), "{stderr}");
    assert!(stderr.contains("curl http://hello.localhost"), "{stderr}");
}

#[test]
fn serve_refuses_bad_apps_with_a_clear_message() {
    let output = Command::new(lodge_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--app",
            "x=/definitely/not/here.wasm",
        ])
        .env("LODGE_DATA_DIR", tempfile::tempdir().expect("tmp").path())
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/definitely/not/here.wasm"), "{stderr}");

    let output = Command::new(lodge_bin())
        .args(["serve", "--app", "Not_A_Slug=x.wasm"])
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2), "usage errors exit 2");
    assert!(String::from_utf8_lossy(&output.stderr).contains("invalid slug"));
}

#[test]
fn serve_help_documents_every_limit_and_its_default() {
    let output = Command::new(lodge_bin())
        .args(["serve", "--help"])
        .output()
        .expect("runs");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "--listen",
        "127.0.0.1:3000",
        "--data-dir",
        "./lodge-data",
        "--app",
        "--base-domain",
        "--fuel",
        "--memory-mib",
        "--timeout-ms",
        "--max-concurrency",
        "--max-request-body",
    ] {
        assert!(help.contains(needle), "help mentions {needle}:\n{help}");
    }
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[test]
fn the_cli_drives_a_host_end_to_end() {
    let lodge = LodgeProcess::serve(&[]);
    let port = lodge.addr.port();

    let (code, out, err) = lodge.cli(ADMIN_TOKEN, &["org", "create", "Acme", "--json"]);
    assert_eq!(code, 0, "{err}");
    let org_key = json(&out)["apiKey"].as_str().expect("key").to_owned();

    let (code, out, err) = lodge.cli(&org_key, &["tenant", "create", "Shop Front", "--json"]);
    assert_eq!(code, 0, "{err}");
    let tenant = json(&out);
    assert_eq!(tenant["tenant"]["slug"], "shop-front");
    let tenant_key = tenant["tenant"]["apiKey"].as_str().expect("key").to_owned();

    let (code, out, err) = lodge.cli(&tenant_key, &["deploy", "shop-front", guests::HELLO]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("as version 1"), "{out}");
    assert!(
        out.contains(&format!("url: http://shop-front.localhost:{port}/")),
        "{out}"
    );
    let (status, body) = get(lodge.addr, &format!("shop-front.localhost:{port}"), "/");
    assert_eq!(status, 200, "{body}");

    let (code, out, _) = lodge.cli(&tenant_key, &["deploy", "shop-front", guests::WSTD_ECHO]);
    assert_eq!(code, 0);
    assert!(out.contains("as version 2"), "{out}");
    let (code, out, _) = lodge.cli(&tenant_key, &["rollback", "shop-front", "1"]);
    assert_eq!(code, 0);
    assert!(out.contains("version 1 is active again"), "{out}");
    let (code, out, _) = lodge.cli(&tenant_key, &["tenant", "deployments", "shop-front"]);
    assert_eq!(code, 0);
    assert!(out.contains("1*"), "{out}");

    let (code, out, _) = lodge.cli(&tenant_key, &["env", "set", "shop-front", "A=1", "B=two"]);
    assert_eq!(code, 0);
    assert!(out.contains("A, B"), "{out}");
    let (code, out, _) = lodge.cli(&tenant_key, &["tenant", "status", "shop-front"]);
    assert_eq!(code, 0);
    assert!(out.contains("status:   running"), "{out}");
    assert!(out.contains("version:  1"), "{out}");

    let (code, _, _) = lodge.cli(&tenant_key, &["tenant", "stop", "shop-front"]);
    assert_eq!(code, 0);
    assert_eq!(
        get(lodge.addr, &format!("shop-front.localhost:{port}"), "/").0,
        503
    );
    let (code, _, _) = lodge.cli(&tenant_key, &["tenant", "start", "shop-front"]);
    assert_eq!(code, 0);

    let (code, out, _) = lodge.cli(&tenant_key, &["logs", "shop-front", "--json"]);
    assert_eq!(code, 0, "{out}");

    let (code, out, _) = lodge.cli(&org_key, &["tenant", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains("shop-front"), "{out}");

    // Usage: the requests above, as a table and as JSON.
    let (code, out, err) = lodge.cli(&tenant_key, &["tenant", "usage", "shop-front"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("PERIOD (UTC)"), "{out}");
    assert!(out.contains("estimated cost:"), "{out}");
    let (code, out, _) = lodge.cli(
        &tenant_key,
        &[
            "tenant",
            "usage",
            "shop-front",
            "--granularity",
            "hour",
            "--json",
        ],
    );
    assert_eq!(code, 0);
    let usage = json(&out);
    assert_eq!(usage["granularity"], "hour");
    assert!(
        usage["total"]["requests"].as_i64().expect("requests") >= 2,
        "{usage}"
    );
    let (code, _, err) = lodge.cli(
        &tenant_key,
        &["tenant", "usage", "shop-front", "--from", "yesterday"],
    );
    assert_eq!(code, 5, "{err}");

    // Limits: anyone with access reads them; only the operator changes them.
    let (code, out, err) = lodge.cli(&tenant_key, &["tenant", "limits", "shop-front"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("plan:      default"), "{out}");
    let (code, _, err) = lodge.cli(
        &tenant_key,
        &[
            "tenant",
            "limits",
            "shop-front",
            "--set",
            "rate_per_second=5",
        ],
    );
    assert_eq!(code, 3, "{err}");
    let (code, out, err) = lodge.cli(
        ADMIN_TOKEN,
        &[
            "tenant",
            "limits",
            "shop-front",
            "--set",
            "rate_per_second=5",
            "--set",
            "max_concurrency=3",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let limits = json(&out);
    assert_eq!(limits["overrides"]["rate_per_second"], 5.0);
    assert_eq!(limits["effective"]["max_concurrency"], 3);
    let (code, out, _) = lodge.cli(
        ADMIN_TOKEN,
        &[
            "tenant",
            "limits",
            "shop-front",
            "--unset",
            "max_concurrency",
            "--json",
        ],
    );
    assert_eq!(code, 0);
    assert_eq!(
        json(&out)["overrides"],
        serde_json::json!({ "rate_per_second": 5.0 })
    );
    let (code, _, err) = lodge.cli(
        ADMIN_TOKEN,
        &["tenant", "limits", "shop-front", "--set", "fuel=-1"],
    );
    assert_eq!(code, 5, "{err}");
    let (code, _, err) = lodge.cli(
        ADMIN_TOKEN,
        &[
            "tenant",
            "limits",
            "shop-front",
            "--unset",
            "max_concurency",
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is not a limit"), "{err}");
    let (code, out, _) = lodge.cli(
        ADMIN_TOKEN,
        &["tenant", "limits", "shop-front", "--clear", "--json"],
    );
    assert_eq!(code, 0);
    assert_eq!(json(&out)["overrides"], serde_json::json!({}));

    // Exit codes that mean something.
    assert_eq!(lodge.cli(&org_key, &["tenant", "status", "no-such"]).0, 4);
    assert_eq!(
        lodge
            .cli("sk_tenant_nope", &["tenant", "status", "shop-front"])
            .0,
        3
    );
    assert_eq!(lodge.cli(&tenant_key, &["tenant", "list"]).0, 3);
    let (code, _, err) = lodge.cli(&tenant_key, &["deploy", "shop-front", "Cargo.toml"]);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("not a WebAssembly binary"), "{err}");

    let (code, _, _) = lodge.cli(&org_key, &["tenant", "delete", "shop-front"]);
    assert_eq!(code, 0);
    assert_eq!(
        get(lodge.addr, &format!("shop-front.localhost:{port}"), "/").0,
        404
    );
    assert_eq!(
        lodge.cli(&org_key, &["tenant", "status", "shop-front"]).0,
        4
    );
}

#[test]
fn a_killed_host_comes_back_with_its_tenants() {
    let dir = tempfile::tempdir().expect("tmp");
    let hello = format!("hello={}", guests::HELLO);
    let lodge = LodgeProcess::serve_in(dir.path(), &["--app", &hello]);
    let (code, out, err) = lodge.cli(ADMIN_TOKEN, &["org", "create", "Acme", "--json"]);
    assert_eq!(code, 0, "{err}");
    let org_key = json(&out)["apiKey"].as_str().expect("key").to_owned();
    let (code, _, err) = lodge.cli(&org_key, &["tenant", "create", "api"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = lodge.cli(&org_key, &["deploy", "api", guests::WSTD_ECHO]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        get(lodge.addr, "127.0.0.1", "/tenants/api/status?code=202").0,
        202
    );
    lodge.kill();

    let lodge = LodgeProcess::serve_in(dir.path(), &["--app", &hello]);
    // The first request after the restart is served, from the stored artifact.
    assert_eq!(
        get(lodge.addr, "127.0.0.1", "/tenants/api/status?code=202").0,
        202
    );
    assert_eq!(get(lodge.addr, "127.0.0.1", "/tenants/hello/").0, 200);
    // `--app` with the same file again does not make a new version.
    let (code, out, _) = lodge.cli(ADMIN_TOKEN, &["tenant", "deployments", "hello", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(
        json(&out)["deployments"].as_array().map(Vec::len),
        Some(1),
        "{out}"
    );
    let stderr = lodge.stderr();
    assert!(
        stderr.contains("unchanged; loads on the first request") && !stderr.contains("compiled in"),
        "{stderr}"
    );
}

/// A raw HTTP/1.1 request; returns (status, body).
fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn the_ledger_total_survives_kill_9_during_transfers() {
    let dir = tempfile::tempdir().expect("tmp");
    let apps: Vec<String> = (0..3)
        .map(|i| format!("w{i}={}", guests::WALLET_APP))
        .collect();
    let mut args = Vec::new();
    for app in &apps {
        args.extend(["--app", app.as_str()]);
    }
    let lodge = LodgeProcess::serve_in(dir.path(), &args);
    let mut addresses = Vec::new();
    for i in 0..3 {
        let (status, body) = request(
            lodge.addr,
            "POST",
            &format!("/api/v1/tenant/w{i}/wallet/fund"),
            Some(ADMIN_TOKEN),
            r#"{"amount":10000}"#,
        );
        assert_eq!(status, 200, "{body}");
        addresses.push(json(&body)["address"].as_str().expect("address").to_owned());
    }
    // Transfers from three threads, round and round, while the host is killed.
    let addr = lodge.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..3)
        .map(|i| {
            let to = addresses[(i + 1) % 3].clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let path = format!(
                        "/tenants/w{i}/transfer?to={to}&amount={}&key=k{n}&memo=m",
                        1 + n % 7
                    );
                    let _ = std::panic::catch_unwind(|| request(addr, "POST", &path, None, ""));
                    n += 1;
                }
                n
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    lodge.kill();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let attempts: usize = workers.into_iter().map(|w| w.join().unwrap_or(0)).sum();
    assert!(attempts > 10, "transfers were in flight: {attempts}");

    let lodge = LodgeProcess::serve_in(dir.path(), &[]);
    let mut total = 0;
    for i in 0..3 {
        let (status, body) = request(
            lodge.addr,
            "GET",
            &format!("/api/v1/tenant/w{i}/wallet"),
            Some(ADMIN_TOKEN),
            "",
        );
        assert_eq!(status, 200, "{body}");
        let balance = json(&body)["balance"].as_i64().expect("balance");
        assert!(balance >= 0);
        total += balance;
    }
    assert_eq!(total, 30_000, "no funds created or lost across kill -9");
}

#[test]
fn the_scrape_port_serves_metrics_without_a_token_and_nothing_else() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let scrape = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let echo = format!("echo={}", guests::WSTD_ECHO);
    let lodge = LodgeProcess::serve(&["--app", &echo, "--metrics-listen", &scrape.to_string()]);
    let host = format!("echo.localhost:{}", lodge.addr.port());
    assert_eq!(get(lodge.addr, &host, "/status?code=200").0, 200);

    let mut metrics = (0, String::new());
    for _ in 0..100 {
        match std::net::TcpStream::connect(scrape) {
            Ok(_) => {
                metrics = get(scrape, "127.0.0.1", "/metrics");
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    assert_eq!(metrics.0, 200, "{}", lodge.stderr());
    assert!(
        metrics.1.contains("lodge_requests_total{tenant=\"echo\""),
        "{}",
        metrics.1
    );
    // Only metrics there: not the API, not tenants.
    assert_eq!(get(scrape, "127.0.0.1", "/api/v1/orgs").0, 404);
    assert_eq!(get(scrape, &host, "/status?code=200").0, 404);
    // The main address still wants the admin token.
    assert_eq!(get(lodge.addr, "127.0.0.1", "/metrics").0, 401);
}

/// A chat-completions endpoint that always answers "agreed".
fn agreeable_model() -> axum::Router {
    axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(|| async {
            axum::Json(serde_json::json!({
                "choices": [{ "message": { "role": "assistant", "content": "agreed" } }],
                "usage": { "prompt_tokens": 5, "completion_tokens": 3 },
            }))
        }),
    )
}

async fn converge_once(lodge: &LodgeProcess) -> (u16, serde_json::Value) {
    let api = lodge.http();
    let org_key = api.org("tls").await;
    let key = api.spawn_tenant(&org_key, "thinker").await;
    api.json(
        reqwest::Method::POST,
        "/converge",
        Some(&key),
        Some(&serde_json::json!({ "prompt": "pick a port", "maxRounds": 1 })),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_model_endpoints_are_reached_over_verified_tls() {
    let (addr, cert) = lodge_tests::tls_server(agreeable_model()).await;
    let url = format!("https://localhost:{}/v1", addr.port());
    let dir = tempfile::tempdir().expect("dir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, cert).expect("ca written");

    // A CA the operator trusts (SSL_CERT_FILE, as for any rustls/OpenSSL program).
    let trusting = LodgeProcess::serve_with_env(
        &["--llm-url", &url],
        &[("SSL_CERT_FILE", ca.to_str().expect("utf-8"))],
    );
    let (status, outcome) = converge_once(&trusting).await;
    assert_eq!(status, 200, "{outcome}\n{}", trusting.stderr());
    assert_eq!(outcome["provider"], "openai-compatible", "{outcome}");

    // Not trusted: refused; the host's log says why, the tenant is told
    // nothing about the provider (not its URL, not the TLS error).
    let wary = LodgeProcess::serve(&["--llm-url", &url]);
    let (status, refused) = converge_once(&wary).await;
    assert_eq!(status, 503, "{refused}");
    let message = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(
        !message.contains("certificate") && !message.contains("localhost"),
        "{refused}"
    );
    assert!(wary.stderr().contains("certificate"), "{}", wary.stderr());
}

#[test]
fn a_trap_logs_the_guest_backtrace_but_never_the_hosts() {
    // With RUST_BACKTRACE set, the host's own errors carry a Rust backtrace
    // (file paths of the host's build); none of it may reach the tenant's log.
    let hostile = format!("hostile={}", guests::HOSTILE);
    let lodge = LodgeProcess::serve_with_env(
        &["--app", &hostile],
        &[("RUST_BACKTRACE", "1"), ("RUST_LIB_BACKTRACE", "1")],
    );
    let (status, body) = get(lodge.addr, "127.0.0.1", "/tenants/hostile/panic");
    assert_eq!(status, 500, "{body}");
    let (code, out, err) = lodge.cli(ADMIN_TOKEN, &["logs", "hostile", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("app trapped"), "{out}");
    assert!(
        out.contains("wasm backtrace"),
        "the guest's frames stay: {out}"
    );
    for host_detail in [
        "stack backtrace",
        ".cargo/registry",
        "wasmtime::runtime",
        "lodge_host::",
    ] {
        assert!(
            !out.contains(host_detail),
            "{host_detail} in the tenant's log: {out}"
        );
    }
}
