//! The binary's own smoke test. Having an integration test here also makes
//! `cargo test` build `target/debug/lodge`, which the end-to-end tests in
//! `tests/` run.

use std::process::Command;

#[test]
fn version_and_help() {
    let lodge = env!("CARGO_BIN_EXE_lodge");
    let out = Command::new(lodge).arg("--version").output().expect("runs");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("lodge "));
    let out = Command::new(lodge).arg("--help").output().expect("runs");
    let help = String::from_utf8_lossy(&out.stdout);
    for command in [
        "serve", "bench", "org", "tenant", "deploy", "logs", "env", "rollback", "keys",
    ] {
        assert!(help.contains(command), "{command} in:\n{help}");
    }
    let out = Command::new(lodge)
        .arg("frobnicate")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
}
