"""Memory figures of the running process, for benchmarks that measure in child processes."""

from __future__ import annotations


def proc_status_mib(field: str) -> float:
    """A memory figure of this process from /proc, in MiB: ``VmRSS`` (now) or ``VmHWM`` (peak).

    Not ``getrusage``: its peak survives ``exec``, so a child would report its parent's peak.
    """
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return 0.0
