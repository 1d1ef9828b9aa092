#!/usr/bin/env python3
"""Lodge against `wasmtime serve`, measured from outside with wrk, alternating.

Each round starts every server in turn on the same component, drives it with
`wrk` (its own process, on the same cores, as a user would measure) at each
connection count, stops it, and moves on; rounds alternate the servers so
drift on a noisy machine hits them alike. Prints requests/s and p50/p99/p99.9
latency per server (median over rounds) and the ratios to Lodge.

Servers:
- lodge: the release binary, `lodge serve --app` with its default limits on
  (fuel, deadline, memory, concurrency, metering), a fresh instance per request,
  measured once its optimised code is in (as `wasmtime serve` compiles it
  before it serves);
- lodge-reuse: the same with the default plan's `instance_reuse = 128` (an
  instance serves up to 128 requests of its tenant, each under fresh limits);
- wasmtime-default: `wasmtime serve` with default flags;
- wasmtime-pooling: the pooling allocator tuned as Lodge's
  (`pooling-memory-keep-resident=2MiB, table 64KiB, pagemap scan`);
- wasmtime-reuse: the same + `--max-instance-reuse-count 128` (an instance
  serves many requests);
- wasmtime-reuse-fuel (only with --only): the same + `-W fuel=…`, fuel
  metering in the guest's code as Lodge always has.

`--header 'x-request-id: …'` sends a header to every server: with a request
id from the client, Lodge's guest and the peer's parse the same headers.

    apt-get install -y wrk
    cargo install wasmtime-cli --version 48.0.8 --locked
    cargo build --release -p lodge-host && cargo test --no-run
    python3 scripts/peer-bench.py --wasmtime "$(which wasmtime)" [--rounds 3] [--seconds 10]
"""

import argparse
import os
import signal
import statistics
import subprocess
import tempfile
import time

from benchlib import wait_optimized, wait_up, wrk_result, wrk_script

POOLING = "pooling-allocator=y,pooling-memory-keep-resident=2097152,pooling-table-keep-resident=65536,pooling-pagemap-scan=y"


def servers(args, port):
    data = tempfile.mkdtemp(prefix="lodge-peer-")
    lodge = ([args.lodge, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data,
              "--app", f"app={args.component}", "--max-concurrency", "1024"], "app.localhost", {})
    result = {"lodge": lodge}
    if not args.no_reuse:
        result["lodge-reuse"] = (lodge[0], lodge[1], {"LODGE__PLANS__DEFAULT__INSTANCE_REUSE": "128"})
    if args.wasmtime:
        base = [args.wasmtime, "serve", f"--addr=127.0.0.1:{port}", "-Scli"]
        result["wasmtime-default"] = (base + [args.component], None, {})
        result["wasmtime-pooling"] = (base + ["-O", POOLING, args.component], None, {})
        result["wasmtime-reuse"] = (base + ["-O", POOLING, "--max-instance-reuse-count", "128", args.component], None, {})
        # The same with fuel metering compiled into the guest's code, as Lodge
        # always has (not in the default set: --only to include it).
        result["wasmtime-reuse-fuel"] = (base + ["-O", POOLING, "-W", "fuel=1000000000000", "--max-instance-reuse-count", "128", args.component], None, {})
    return result


def run_wrk(port, host, connections, seconds, script):
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", script, f"http://127.0.0.1:{port}{PATH}"]
    if host:
        command[1:1] = ["-H", f"Host: {host}"]
    for header in HEADERS:
        command[1:1] = ["-H", header]
    return wrk_result(subprocess.run(command, capture_output=True, text=True, check=True).stdout)


PATH = "/"
HEADERS = []


def main():
    global PATH
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lodge", default="target/release/lodge")
    parser.add_argument("--wasmtime", default=None, help="a wasmtime 48 binary; without it only Lodge runs")
    parser.add_argument("--component", default="target/guests/wasm32-wasip2/guest/hello.wasm")
    parser.add_argument("--path", default="/")
    parser.add_argument("--connections", default="16,64")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=3919)
    parser.add_argument("--no-reuse", action="store_true", help="leave out lodge-reuse")
    parser.add_argument("--only", default=None, help="comma-separated server names to run")
    parser.add_argument("--header", action="append", default=[],
                        help="a request header for every server, e.g. 'x-request-id: 0123abcd' "
                             "(Lodge then passes the client's id instead of making one)")
    args = parser.parse_args()
    PATH = args.path
    HEADERS.extend(args.header)
    connections = [int(c) for c in args.connections.split(",")]
    script = wrk_script()

    samples = {}
    names = list(servers(args, args.port))
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    else:
        names = [n for n in names if n != "wasmtime-reuse-fuel"]
    for round_ in range(args.rounds):
        order = names if round_ % 2 == 0 else list(reversed(names))
        for name in order:
            command, host, extra_env = servers(args, args.port)[name]
            env = dict(os.environ, RUST_LOG="warn", LODGE_ADMIN_TOKEN="sk_admin_peer-bench-0123456789abcdef0123", **extra_env)
            process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_up(f"http://127.0.0.1:{args.port}{PATH}", host)
                if name.startswith("lodge"):
                    wait_optimized(f"http://127.0.0.1:{args.port}", env["LODGE_ADMIN_TOKEN"])
                for c in connections:
                    run_wrk(args.port, host, c, args.warmup, script)
                    sample = run_wrk(args.port, host, c, args.seconds, script)
                    samples.setdefault((name, c), []).append(sample)
                    print(f"round {round_ + 1} {name:18} c={c:<3} {sample['rps']:9.0f} req/s  p50 {sample['p50']:.2f} ms  p99 {sample['p99']:.2f} ms  p99.9 {sample['p999']:.2f} ms  errors {sample['errors']}", flush=True)
            finally:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                time.sleep(0.5)

    print()
    bases = [b for b in ("lodge", "lodge-reuse") if b in names]
    print(f"| server | connections | requests/s (median of {args.rounds}) | "
          + " | ".join(f"{b} ÷ this" for b in bases) + " | p50 | p99 | p99.9 | errors |")
    print("|---|---:|---:|" + "---:|" * len(bases) + "---:|---:|---:|---:|")
    for c in connections:
        base_rps = {b: statistics.median(s["rps"] for s in samples[(b, c)]) for b in bases}
        for name in names:
            runs = samples[(name, c)]
            rps = statistics.median(s["rps"] for s in runs)
            med = lambda key: statistics.median(s[key] for s in runs)
            ratios = " | ".join("—" if name == b else f"{base_rps[b] / rps:.2f}×" for b in bases)
            print(f"| {name} | {c} | {rps:,.0f} | {ratios} | {med('p50'):.2f} ms | {med('p99'):.2f} ms | {med('p999'):.2f} ms | {sum(s['errors'] for s in runs)} |")


if __name__ == "__main__":
    main()
