#!/usr/bin/env python3
"""Noisy neighbour, measured from outside: tenant B's latency alone and while
tenant A floods the host, each driven by its own `wrk` process.

One release `lodge serve` runs two tenants on the default plan with
`max_concurrency = 4`: A serves the hostile fixture (`/spin?ms=20`: 20 ms of
busy CPU per request), B the hello example. B is driven with `wrk -t1 -c4`
alone, then again while `wrk -t1 -c16` floods A (12 of A's 16 connections are
refused with 503 and send again at once). Rounds alternate "alone" and
"flooded"; prints B's p50/p99/p99.9 (medians over rounds) and the ratio.

    apt-get install -y wrk
    cargo build --release -p lodge-host && cargo test --no-run
    python3 scripts/noisy-neighbour.py [--rounds 3] [--seconds 10]
"""

import argparse
import os
import signal
import statistics
import subprocess
import tempfile
import time

from benchlib import wait_optimized, wait_up, wrk_result, wrk_script


WRK_PREFIX = []


def wrk(port, host, threads, connections, seconds, path, script):
    command = WRK_PREFIX + ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "-H", f"Host: {host}",
               "-s", script, f"http://127.0.0.1:{port}{path}"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def result(process):
    return wrk_result(process.communicate()[0])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lodge", default="target/release/lodge")
    parser.add_argument("--hostile", default="target/guests/wasm32-wasip2/guest/hostile.wasm")
    parser.add_argument("--hello", default="target/guests/wasm32-wasip2/guest/hello.wasm")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=3921)
    parser.add_argument("--extra", default="", help="more `lodge serve` flags, space-separated")
    parser.add_argument("--pin", action="store_true",
                        help="run Lodge on CPU 0 and the load generators on the others (taskset), so the kernel "
                             "scheduling wrk against Lodge's workers is not what sets B's latency")
    args = parser.parse_args()
    script = wrk_script()

    data = tempfile.mkdtemp(prefix="lodge-noisy-")
    command = [args.lodge, "serve", "--listen", f"127.0.0.1:{args.port}", "--data-dir", data,
               "--app", f"a={args.hostile}", "--app", f"b={args.hello}"] + args.extra.split()
    env = dict(os.environ, RUST_LOG="warn", LODGE_ADMIN_TOKEN="sk_admin_noisy-bench-0123456789abcdef0123",
               LODGE__PLANS__DEFAULT__MAX_CONCURRENCY="4")
    if args.pin:
        command = ["taskset", "-c", "0"] + command
        global WRK_PREFIX
        WRK_PREFIX = ["taskset", "-c", f"1-{os.cpu_count() - 1}"]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = {"alone": [], "flooded": []}
    flood_stats = []
    try:
        wait_up(f"http://127.0.0.1:{args.port}/", "b.localhost")
        wait_optimized(f"http://127.0.0.1:{args.port}", env["LODGE_ADMIN_TOKEN"])
        result(wrk(args.port, "b.localhost", 1, 4, 2, "/", script))  # warm-up
        for round_ in range(args.rounds):
            for case in (["alone", "flooded"] if round_ % 2 == 0 else ["flooded", "alone"]):
                flood = None
                if case == "flooded":
                    flood = wrk(args.port, "a.localhost", 1, 16, args.seconds + 2, "/spin?ms=20", script)
                    time.sleep(1)
                b = result(wrk(args.port, "b.localhost", 1, 4, args.seconds, "/", script))
                samples[case].append(b)
                if flood:
                    a = result(flood)
                    flood_stats.append(a)
                    print(f"round {round_ + 1} A flood: {a['requests'] - a['non_2xx']} served, {a['non_2xx']} refused", flush=True)
                print(f"round {round_ + 1} B {case:8} p50 {b['p50']:.2f} ms  p99 {b['p99']:.2f} ms  p99.9 {b['p999']:.2f} ms  "
                      f"{b['rps']:.0f} req/s  non-2xx {b['non_2xx']}  socket errors {b['socket_errors']}", flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()

    med = lambda case, key: statistics.median(s[key] for s in samples[case])
    print()
    print(f"| B | p50 | p99 | p99.9 | requests/s | B failed |")
    print("|---|---:|---:|---:|---:|---:|")
    for case in ("alone", "flooded"):
        failed = sum(s["non_2xx"] + s["socket_errors"] for s in samples[case])
        print(f"| {case} | {med(case, 'p50'):.2f} ms | {med(case, 'p99'):.2f} ms | {med(case, 'p999'):.2f} ms | {med(case, 'rps'):,.0f} | {failed} |")
    print(f"\nB's p99 flooded / alone: {med('flooded', 'p99') / med('alone', 'p99'):.2f}×")
    served = sum(a["requests"] - a["non_2xx"] for a in flood_stats)
    refused = sum(a["non_2xx"] for a in flood_stats)
    print(f"A during the floods: {served} served, {refused} refused")


if __name__ == "__main__":
    main()
