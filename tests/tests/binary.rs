//! The real `lodge` binary: `serve --app`, its help, and its refusals.

use std::process::Command;
use std::time::Duration;

use lodge_tests::{LodgeProcess, guests, lodge_bin};

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
