#!/usr/bin/env python3
"""Many tenants on one host: restart time, memory, cold first requests, list speed.

Starts the release `lodge` binary on a data dir (embedded SQLite), creates N
tenants through the API, each deployed with the hello component (one
component, N tenants), then restarts the host and measures, from outside:

- restart → `/healthz` answering;
- the host's RSS before any traffic;
- a cold tenant's first request after another tenant already loaded its component;
- every tenant hit once, and the RSS after;
- the control plane's list (first and a deep page) and status endpoints.

    cargo build --release && cargo test   # the binary and target/guests/…/hello.wasm
    python3 scripts/many-tenants.py 100000

Standard library only. Creating 100,000 tenants takes a few minutes; the data
dir is kept (`--data-dir`) so a second run can skip it (`--reuse`).
"""

import argparse
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from benchlib import rss_mib

TOKEN = "sk_admin_many-tenants-0123456789abcdef01"


class Client:
    """One keep-alive connection per thread."""

    def __init__(self, port):
        self.port = port
        self.local = threading.local()

    def request(self, method, path, body=None, headers=None):
        for attempt in range(3):
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
                self.local.conn = conn
            try:
                conn.request(method, path, body=body, headers=headers or {})
                response = conn.getresponse()
                data = response.read()
                return response.status, data
            except (ConnectionError, http.client.HTTPException, OSError):
                conn.close()
                self.local.conn = None
                if attempt == 2:
                    raise
        raise RuntimeError("unreachable")

    def api(self, method, path, payload=None, raw=None, content_type="application/json"):
        headers = {"authorization": f"Bearer {TOKEN}"}
        body = raw
        if payload is not None:
            body = json.dumps(payload).encode()
        if body is not None:
            headers["content-type"] = content_type
        return self.request(method, "/api/v1" + path, body, headers)


def start(binary, data_dir, port, log):
    env = dict(os.environ, LODGE_ADMIN_TOKEN=TOKEN, RUST_LOG="warn")
    return subprocess.Popen(
        [binary, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data_dir],
        env=env,
        stdout=log,
        stderr=log,
    )


def wait_healthy(client, started, within=600):
    while time.monotonic() - started < within:
        try:
            status, _ = client.request("GET", "/healthz")
            if status == 200:
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.005)
    raise RuntimeError("the host did not answer /healthz")


def stop(process):
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def timed(fn):
    started = time.monotonic()
    result = fn()
    return result, (time.monotonic() - started) * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tenants", type=int, nargs="?", default=100_000)
    parser.add_argument("--binary", default="target/release/lodge")
    parser.add_argument("--component", default="target/guests/wasm32-wasip2/guest/hello.wasm")
    parser.add_argument("--data-dir", default=None, help="kept after the run (default: a temporary one, removed)")
    parser.add_argument("--reuse", action="store_true", help="the data dir already holds the tenants")
    parser.add_argument("--port", type=int, default=3917)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()

    data_dir = args.data_dir or tempfile.mkdtemp(prefix="lodge-many-")
    os.makedirs(data_dir, exist_ok=True)
    log = open(os.path.join(data_dir, "host.log"), "ab")
    client = Client(args.port)
    wasm = open(args.component, "rb").read()
    n = args.tenants
    slugs = [f"t{i:06d}" for i in range(n)]

    if not args.reuse:
        host = start(args.binary, data_dir, args.port, log)
        try:
            wait_healthy(client, time.monotonic())
        except Exception:
            stop(host)
            raise
        status, body = client.api("POST", "/orgs", {"name": "many"})
        assert status == 201, body
        org_id = json.loads(body)["org"]["id"]

        def create(slug):
            status, body = client.api("POST", "/tenant/spawn", {"name": slug, "orgId": org_id})
            assert status == 201, (slug, status, body)
            while True:
                status, body = client.api("PUT", f"/tenant/{slug}/component", raw=wasm, content_type="application/wasm")
                if status != 503:  # the host takes a few uploads at once: wait for a slot
                    break
                time.sleep(0.01)
            assert status == 201, (slug, status, body)

        started = time.monotonic()
        done = 0
        try:
            with ThreadPoolExecutor(args.threads) as pool:
                for _ in pool.map(create, slugs):
                    done += 1
                    if done % 10_000 == 0:
                        print(f"  {done} tenants created and deployed ({time.monotonic() - started:.0f} s)", file=sys.stderr)
        finally:
            stop(host)
        print(f"created and deployed {n} tenants in {time.monotonic() - started:.0f} s", file=sys.stderr)

    # The restart, measured.
    started = time.monotonic()
    host = start(args.binary, data_dir, args.port, log)
    try:
        healthy = wait_healthy(client, started)
        time.sleep(1.0)  # let start-up settle (jobs begin), then read memory before traffic
        rss_idle = rss_mib(host.pid)

        # A cold tenant whose component another tenant already loaded.
        status, _ = client.request("GET", f"/tenants/{slugs[0]}/")
        assert status == 200, status
        cold = []
        for slug in slugs[1:21]:
            (status, _), ms = timed(lambda: client.request("GET", f"/tenants/{slug}/"))
            assert status == 200, status
            cold.append(ms)
        cold.sort()

        # Every tenant once.
        def hit(slug):
            status, _ = client.request("GET", f"/tenants/{slug}/")
            assert status == 200, (slug, status)

        hit_started = time.monotonic()
        with ThreadPoolExecutor(args.threads) as pool:
            list(pool.map(hit, slugs))
        hit_s = time.monotonic() - hit_started
        rss_all = rss_mib(host.pid)

        # The control plane at this size.
        (status, first_page), list_ms = timed(lambda: client.api("GET", "/tenant?limit=100"))
        assert status == 200, first_page
        (status, deep_page), deep_ms = timed(lambda: client.api("GET", f"/tenant?limit=100&offset={max(n - 100, 0)}"))
        assert status == 200, deep_page
        (status, _), status_ms = timed(lambda: client.api("GET", f"/tenant/{slugs[n // 2]}/status"))
        assert status == 200
    finally:
        stop(host)

    print(f"| tenants (each deployed, one component) | {n:,} |")
    print("|---|---:|")
    print(f"| restart → /healthz | {healthy:.2f} s |")
    print(f"| RSS before traffic | {rss_idle:.0f} MiB |")
    print(f"| cold tenant's first request, its component already loaded (median / max of 20) | {cold[len(cold) // 2]:.2f} ms / {cold[-1]:.2f} ms |")
    print(f"| every tenant hit once ({args.threads} threads) | {hit_s:.1f} s ({n / hit_s:,.0f} tenants/s) |")
    print(f"| RSS after every tenant was hit | {rss_all:.0f} MiB |")
    print(f"| list tenants, first page of 100 | {list_ms:.1f} ms |")
    print(f"| list tenants, last page of 100 (offset {max(n - 100, 0):,}) | {deep_ms:.1f} ms |")
    print(f"| one tenant's status | {status_ms:.1f} ms |")
    if args.data_dir is None:
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
