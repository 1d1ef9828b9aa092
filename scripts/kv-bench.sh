#!/usr/bin/env bash
# Key-value throughput from outside the process (wrk), for comparing two
# `lodge` binaries on this machine, alternately: reads (GET /kv/k) and atomic
# increments (POST /incr/n) of the kv-app fixture on the default SQLite store.
#
#   scripts/kv-bench.sh BINARY_A BINARY_B [ROUNDS] [SECONDS]
#
# Needs wrk and the fixture built by `cargo test` (target/guests/...).
set -euo pipefail
a=$1; b=$2; rounds=${3:-3}; secs=${4:-8}
wasm=${KV_WASM:-target/guests/wasm32-wasip2/guest/kv-app.wasm}
port=3900
post=$(mktemp); echo 'wrk.method = "POST"' > "$post"
run() { # binary label
    local dir; dir=$(mktemp -d)
    "$1" serve --listen 127.0.0.1:$port --data-dir "$dir" --app "kv=$wasm" >"$dir/log" 2>&1 &
    local pid=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
    curl -sf -X PUT --data 'value' "http://127.0.0.1:$port/tenants/kv/kv/k" >/dev/null
    local get incr
    get=$(wrk -t2 -c16 -d"${secs}s" "http://127.0.0.1:$port/tenants/kv/kv/k" | awk '/Requests\/sec/ {print $2}')
    incr=$(wrk -t2 -c16 -d"${secs}s" -s "$post" "http://127.0.0.1:$port/tenants/kv/incr/n" | awk '/Requests\/sec/ {print $2}')
    local value; value=$(curl -sf "http://127.0.0.1:$port/tenants/kv/kv/n")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
    echo "$2 get=$get incr=$incr counter=$value"
}
for r in $(seq "$rounds"); do
    run "$a" "A(round $r)"
    run "$b" "B(round $r)"
done
rm -f "$post"
