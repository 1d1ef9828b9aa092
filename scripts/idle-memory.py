#!/usr/bin/env python3
"""Idle memory back: the host's RSS after a burst of requests, and after it was quiet.

Starts the release `lodge` binary serving the hostile fixture, sends a burst
from many connections at once to `/hog?mb=4&ms=0` (each request a fresh
instance touching 4 MiB, so the pools keep up to 2 MiB of each used slot
resident), then waits past `--idle-trim` and reads the RSS again, with the
host's own figure (`lodge_idle_instance_resident_bytes`).

    cargo build --release -p lodge-host && cargo test --no-run
    python3 scripts/idle-memory.py [--connections 128] [--seconds 5] [--idle-trim 5]
"""

import argparse
import http.client
import os
import signal
import subprocess
import tempfile
import threading
import time

from benchlib import rss_mib

TOKEN = "sk_admin_idle-memory-0123456789abcdef012"


def metric(port, name):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics", headers={"authorization": f"Bearer {TOKEN}"})
    for line in conn.getresponse().read().decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default="target/release/lodge")
    parser.add_argument("--component", default="target/guests/wasm32-wasip2/guest/hostile.wasm")
    parser.add_argument("--path", default="/hog?mb=4&ms=0")
    parser.add_argument("--connections", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--idle-trim", type=int, default=5)
    parser.add_argument("--port", type=int, default=3918)
    args = parser.parse_args()

    data = tempfile.mkdtemp(prefix="lodge-idle-")
    env = dict(os.environ, LODGE_ADMIN_TOKEN=TOKEN, RUST_LOG="warn")
    host = subprocess.Popen(
        [args.binary, "serve", "--listen", f"127.0.0.1:{args.port}", "--data-dir", data,
         "--app", f"app={args.component}", "--max-concurrency", str(args.connections * 2),
         "--idle-trim", f"{args.idle_trim}s"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(1000):
            try:
                conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=5)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.01)
        before = rss_mib(host.pid)
        stop = time.monotonic() + args.seconds
        counts = []

        def worker():
            conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=30)
            done = 0
            while time.monotonic() < stop:
                conn.request("GET", args.path, headers={"host": "app.localhost"})
                response = conn.getresponse()
                response.read()
                assert response.status == 200, response.status
                done += 1
            counts.append(done)

        threads = [threading.Thread(target=worker) for _ in range(args.connections)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        after_burst = rss_mib(host.pid)
        held = metric(args.port, "lodge_idle_instance_resident_bytes") / 2**20
        time.sleep(args.idle_trim + 3)
        after_quiet = rss_mib(host.pid)
        held_quiet = metric(args.port, "lodge_idle_instance_resident_bytes") / 2**20
        trims = metric(args.port, "lodge_idle_trims_total")
    finally:
        host.send_signal(signal.SIGTERM)
        host.wait(timeout=60)

    print(f"| `{args.path}`, {args.connections} connections for {args.seconds:.0f} s ({sum(counts):,} requests), then quiet | RSS | pools' idle resident memory |")
    print("|---|---:|---:|")
    print(f"| started, before traffic | {before:.0f} MiB | — |")
    print(f"| right after the burst | {after_burst:.0f} MiB | {held:.0f} MiB |")
    print(f"| after {args.idle_trim + 3} s quiet (`--idle-trim {args.idle_trim}s`; trims: {trims:.0f}) | {after_quiet:.0f} MiB | {held_quiet:.0f} MiB |")


if __name__ == "__main__":
    main()
