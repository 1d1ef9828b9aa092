#!/usr/bin/env bash
# Builds wstd's own `http_server` example (the component issue 15 measured
# Lodge and `wasmtime serve` with) from the wstd 0.6.8 crate cargo downloads,
# into target/bench-components/wstd-http-server.wasm. Nothing of wstd is
# committed here: the example is read from the downloaded crate at build time.
#
#   scripts/bench-components/wstd-http-server.sh
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
out="$repo/target/bench-components"
crate="$out/wstd-http-server"
mkdir -p "$crate/src"
cat > "$crate/Cargo.toml" <<'TOML'
[package]
name = "wstd-http-server"
version = "0.0.0"
edition = "2024"
publish = false

[[bin]]
name = "wstd-http-server"
path = "src/main.rs"

[dependencies]
wstd = "=0.6.8"
anyhow = "1"
futures-lite = "2"
http-body-util = "0.1"

[profile.release]
opt-level = 3
debug = false
strip = true

[workspace]
TOML
# Fetch the crate (and so its examples) into cargo's registry cache.
(cd "$crate" && : > src/main.rs && cargo fetch -q)
example=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/wstd-0.6.8/examples/http_server.rs | head -1)
cp "$example" "$crate/src/main.rs"
rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
(cd "$crate" && cargo build -q --release --target wasm32-wasip2 --target-dir "$out/wstd-target")
cp "$out/wstd-target/wasm32-wasip2/release/wstd-http-server.wasm" "$out/wstd-http-server.wasm"
ls -l "$out/wstd-http-server.wasm"
