"""Helpers shared by the benchmark scripts in this directory."""

import tempfile
import time
import urllib.request

# wrk's Lua `done` hook: one line with requests, duration, p50/p99/p99.9 (µs),
# non-2xx answers and socket errors.
WRK_SCRIPT = """
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %d %d %d %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


def wrk_script():
    """The path of a file holding WRK_SCRIPT, for `wrk -s`."""
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    script.write(WRK_SCRIPT)
    script.close()
    return script.name


def wrk_result(out):
    """What a wrk run with WRK_SCRIPT printed: requests/s, latencies in ms, failures."""
    line = next(l for l in out.splitlines() if l.startswith("RESULT"))
    requests, duration_us, p50, p99, p999, non_2xx, socket_errors = map(int, line.split()[1:])
    return {"rps": requests / (duration_us / 1e6), "p50": p50 / 1000, "p99": p99 / 1000,
            "p999": p999 / 1000, "requests": requests, "non_2xx": non_2xx,
            "socket_errors": socket_errors, "errors": non_2xx + socket_errors}


def wait_up(url, host=None, within=60):
    """Waits until `url` (with `Host: host`) answers without a server error."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            request = urllib.request.Request(url, headers={"host": host} if host else {})
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status < 500:
                    return
        except Exception:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


def wait_optimized(base_url, admin_token, within=60):
    """Waits until a Lodge host serves all its code optimised (its `/metrics`
    shows no component on baseline code), so a benchmark measures the code a
    long-running host serves. `lodge serve` starts a new component on baseline
    code and its optimiser (at nice 19) swaps optimised code in: about 0.3 s
    on an idle machine, seconds under a warm-up's full load."""
    deadline = time.monotonic() + within
    request = urllib.request.Request(f"{base_url}/metrics", headers={"authorization": f"Bearer {admin_token}"})
    while time.monotonic() < deadline:
        with urllib.request.urlopen(request, timeout=2) as response:
            text = response.read().decode()
        baseline = [l for l in text.splitlines() if l.startswith('lodge_components_loaded_by_tier{tier="baseline"}')]
        if baseline and float(baseline[0].split()[-1]) == 0:
            return
        time.sleep(0.05)
    raise RuntimeError(f"{base_url}: code still on baseline after {within} s")


def rss_mib(pid):
    """A process's resident memory in MiB, from /proc."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")
