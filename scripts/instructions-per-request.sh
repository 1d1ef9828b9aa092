#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind: a figure the
# machine's noise does not move (wrk's requests/s on these 2-core machines
# swing ±15 % between runs), for A/B-ing a change to the request path.
#
# Serves tenant-examples/hello with instance reuse on (128 uses), sends 300
# requests to warm up, zeroes the counters, sends N more on one keep-alive
# connection, and prints the instructions per request grouped by where they
# ran (guest code, wasmtime, allocator, tracing, tokio, hyper, Lodge…).
# With WASMTIME=path it does the same for `wasmtime serve` with the peer
# benchmark's pooling flags and reuse, so the two can be compared.
#
#   apt-get install -y valgrind
#   cargo build --release -p lodge-host
#   cargo build --target wasm32-wasip2 --profile guest --target-dir target/guests -p hello
#   bash scripts/instructions-per-request.sh [N]            # Lodge
#   WASMTIME=~/.cargo/bin/wasmtime bash scripts/instructions-per-request.sh [N]
#   FRESH=1 bash scripts/instructions-per-request.sh        # a fresh instance per request
#
# Pools are shrunk to a few instances: valgrind cannot reserve the terabytes
# of address space the default pools take. Optimised code only (no tiering),
# so the count is of the code a long-running host serves.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000}
port=${PORT:-3929}
wasm=${WASM:-target/guests/wasm32-wasip2/guest/hello.wasm}
lodge=${LODGE:-target/release/lodge}
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install -y valgrind)" >&2; exit 1; }
[ -f "$wasm" ] || { echo "no $wasm: build the hello guest first (see the header)" >&2; exit 1; }
out=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$out"' EXIT

if [ -n "${WASMTIME:-}" ]; then
    name="wasmtime serve"
    host=localhost
    reuse=(--max-instance-reuse-count 128)
    [ -n "${FRESH:-}" ] && reuse=()
    server=("$WASMTIME" serve "--addr=127.0.0.1:$port" -Scli -O "pooling-allocator=y,pooling-memory-keep-resident=2097152,pooling-table-keep-resident=65536,pooling-pagemap-scan=y,pooling-total-memories=4,pooling-total-core-instances=8,pooling-total-component-instances=2,pooling-total-tables=8,pooling-total-stacks=2" "${reuse[@]}" "$wasm")
    env=()
else
    name="lodge"
    host=app.localhost
    env=(LODGE_COMPILE_TIERS=optimized)
    [ -z "${FRESH:-}" ] && env+=(LODGE__PLANS__DEFAULT__INSTANCE_REUSE=128)
    server=("$lodge" serve --listen "127.0.0.1:$port" --data-dir "$out/data" --app "app=$wasm" --max-instances 2)
fi

env "${env[@]}" valgrind --tool=callgrind --smc-check=all-non-file \
    --callgrind-out-file="$out/cg" "${server[@]}" >"$out/log" 2>&1 &
pid=$!

requests() {
    python3 - "$1" "$port" "$host" <<'EOF'
import http.client, sys
n, port, host = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
for _ in range(n):
    connection.request("GET", "/", headers={"Host": host})
    response = connection.getresponse()
    response.read()
    if response.status != 200:
        sys.exit(f"status {response.status}")
EOF
}

for _ in $(seq 600); do
    curl -sf -o /dev/null -H "Host: $host" "http://127.0.0.1:$port/" && break
    kill -0 "$pid" 2>/dev/null || { cat "$out/log" >&2; exit 1; }
    sleep 0.5
done
requests 300
callgrind_control -z "$pid" >/dev/null 2>&1
requests "$n"
callgrind_control -d "$pid" >/dev/null 2>&1
sleep 1
kill "$pid"; wait "$pid" 2>/dev/null || true

dump=$(ls "$out"/cg.* | head -1)
echo "$name, $n requests on one connection$([ -n "${FRESH:-}" ] && echo ', a fresh instance each' || echo ', instance reuse 128'): instructions per request"
callgrind_annotate --auto=no --threshold=100 "$dump" 2>/dev/null | awk -v n="$n" '
/^ *[0-9,]+ \(/ {
    count = $1; gsub(",", "", count); line = $0; group = "other (std, http, …)"
    if (line ~ /PROGRAM TOTALS/) group = "TOTAL"
    else if (line ~ /\?\?\?:0x/) group = "guest code (JIT)"
    else if (line ~ /malloc|arena\.c|memmove|memcpy|memset|rdl_alloc|rust_alloc|rust_dealloc|rdl_dealloc|realloc/) group = "allocator, memcpy"
    else if (line ~ /tracing|nu_ansi|fmt\/|fmt::/) group = "tracing, fmt"
    else if (line ~ /hyper/) group = "hyper"
    else if (line ~ /tokio/) group = "tokio"
    else if (line ~ /wasi_http|wasi-http|wasmtime_wasi|wasmtime-wasi/) group = "wasmtime-wasi(-http)"
    else if (line ~ /wasmtime/) group = "wasmtime"
    else if (line ~ /lodge_host|\/host\/src\//) group = "lodge"
    else if (line ~ /libc\.so/) group = "libc, other"
    sum[group] += count
}
END { for (g in sum) printf "%10.1fK  %s\n", sum[g] / n / 1000, g }' | sort -rn
