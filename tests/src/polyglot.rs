//! Tenants in JavaScript and Python, built once per test binary by the
//! project's own scripts (`scripts/build-js-guests.sh`,
//! `scripts/build-py-guests.sh`), which install their pinned toolchains
//! (componentize-js from the npm registry, componentize-py from PyPI) on first
//! use. A failed build fails the test: these tenants are never skipped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_owned()
}

/// Runs `script` once, then returns `output` (relative to the workspace).
fn built(cell: &'static OnceLock<String>, script: &str, output: &str) -> &'static str {
    cell.get_or_init(|| {
        let root = root();
        let status = Command::new("bash")
            .arg(root.join(script))
            .current_dir(&root)
            .status()
            .unwrap_or_else(|e| panic!("running {script}: {e}"));
        assert!(status.success(), "{script} failed: {status}");
        let path = root.join(output);
        assert!(path.exists(), "{script} did not build {}", path.display());
        path.to_string_lossy().into_owned()
    })
}

/// `tenant-examples/convergence-app-js`, built with componentize-js.
pub fn js_example() -> &'static str {
    static CELL: OnceLock<String> = OnceLock::new();
    built(
        &CELL,
        "scripts/build-js-guests.sh",
        "target/guests/js/convergence-app-js.wasm",
    )
}

/// `tenant-examples/agent-bot-py`, built with componentize-py.
pub fn py_example() -> &'static str {
    static CELL: OnceLock<String> = OnceLock::new();
    built(
        &CELL,
        "scripts/build-py-guests.sh",
        "target/guests/py/agent-bot-py.wasm",
    )
}
