//! Builds every guest — `tenant-examples/*` and `tests/fixtures/*` — for
//! `wasm32-wasip2`, and writes one constant per guest with the path of its
//! `.wasm` into `$OUT_DIR/guests.rs`.
//!
//! Guests build in one cargo invocation into `target/guests`, a target dir of
//! their own, so the outer build's lock is not contended.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets this"));
    let root = manifest
        .parent()
        .expect("tests/ lives in the workspace")
        .to_owned();
    let target_dir = std::env::var_os("LODGE_GUEST_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target").join("guests"));

    let mut guests = Vec::new();
    for dir in ["tenant-examples", "tests/fixtures"] {
        let dir = root.join(dir);
        println!("cargo:rerun-if-changed={}", dir.display());
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("Cargo.toml").exists())
            .collect();
        entries.sort();
        for path in entries {
            rerun_if_changed_tree(&path);
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .expect("utf-8 name")
                .to_owned();
            guests.push(name);
        }
    }
    for shared in ["guest-sdk", "wit"] {
        rerun_if_changed_tree(&root.join(shared));
    }
    println!("cargo:rerun-if-env-changed=LODGE_GUEST_TARGET_DIR");

    ensure_wasm_target(&root);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .arg("build")
        .arg("--target=wasm32-wasip2")
        .arg("--profile=guest")
        .arg("--target-dir")
        .arg(&target_dir);
    for guest in &guests {
        cmd.arg("-p").arg(guest);
    }
    // The outer build's flags and target are for the host, not for guests.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_PROFILE_RELEASE_DEBUG",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("running cargo to build the guests");
    assert!(
        status.success(),
        "building the guest components failed: {status}"
    );

    let out_dir = target_dir.join("wasm32-wasip2").join("guest");
    let mut constants = String::new();
    for guest in &guests {
        let wasm = out_dir.join(format!("{guest}.wasm"));
        assert!(wasm.exists(), "{} was not built", wasm.display());
        let ident = guest.to_uppercase().replace('-', "_");
        constants.push_str(&format!(
            "/// Path of the `{guest}` guest component.\npub const {ident}: &str = {:?};\n",
            wasm.display().to_string()
        ));
    }
    let out =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets this")).join("guests.rs");
    std::fs::write(&out, constants).expect("writing guests.rs");
}

fn rerun_if_changed_tree(path: &Path) {
    let Ok(entries) = std::fs::read_dir(path) else {
        println!("cargo:rerun-if-changed={}", path.display());
        return;
    };
    println!("cargo:rerun-if-changed={}", path.display());
    for entry in entries.flatten() {
        let p = entry.path();
        if p.is_dir() {
            rerun_if_changed_tree(&p);
        } else {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
}

/// Adds the `wasm32-wasip2` target if the toolchain lacks it: rustup installs the
/// targets of `rust-toolchain.toml` only with a toolchain it installs itself, so
/// a machine that already had 1.95.0 would otherwise fail here on a fresh clone.
fn ensure_wasm_target(root: &Path) {
    let sysroot = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args(["--print", "sysroot"])
        .output();
    let installed = sysroot.ok().is_some_and(|out| {
        let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Path::new(&sysroot)
            .join("lib/rustlib/wasm32-wasip2")
            .exists()
    });
    if installed {
        return;
    }
    println!("cargo:warning=installing the wasm32-wasip2 target with rustup");
    let added = Command::new("rustup")
        .current_dir(root)
        .args(["target", "add", "wasm32-wasip2"])
        .status();
    if !added.is_ok_and(|s| s.success()) {
        println!(
            "cargo:warning=`rustup target add wasm32-wasip2` failed; install the target by hand"
        );
    }
}
