"""Helpers shared by the benchmark scripts in this directory."""


def rss_mib(pid):
    """A process's resident memory in MiB, from /proc."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")
