"""CPU accounting for the benchmarks: per process tree, the rest of the machine, idleness.

On a shared machine the figures only mean something next to the load of everything else, so
`CpuMeter` measures the named process trees and what other processes used in the same
interval, `wait_idle` lets a proxy finish executor work of cancelled searches, and
`machine_line` describes the box (cores, memory, load, CPU pressure) for the report.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


def _tree_cpu(pid: int, *, system_only: bool = False) -> float:
    """CPU seconds of a process and its children (kernel time only with `system_only`)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            t = p.cpu_times()
            total += t.system if system_only else t.user + t.system
    return total


def _system_busy() -> float:
    import psutil

    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


@dataclass
class CpuMeter:
    """CPU seconds used by named process trees during a measurement, and by everything
    else on the machine (other people's work: the noise floor of a shared box)."""

    groups: dict[str, int | None]
    _start: dict[str, float] = field(default_factory=dict)
    _busy: float = 0.0
    _children: float = 0.0
    _wall: float = 0.0

    @staticmethod
    def _reaped() -> float:
        """CPU of this process's reaped children: the load generator, once it exited."""
        import resource

        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    def _sample(self) -> dict[str, float]:
        out = {}
        for k, pid in self.groups.items():
            if pid:
                out[k] = _tree_cpu(pid)
                out[f"{k}_sys"] = _tree_cpu(pid, system_only=True)
        return out

    def start(self) -> None:
        self._start = self._sample()
        self._busy = _system_busy()
        self._children = self._reaped()
        self._wall = time.monotonic()

    def stop(self) -> dict[str, float]:
        """CPU seconds per group (and its kernel part, `GROUP_sys`), `loadgen`,
        `other_cores` (average cores used by everything else) and `wall`."""
        now = self._sample()
        out = {k: v - self._start[k] for k, v in now.items()}
        out["loadgen"] = self._reaped() - self._children
        wall = time.monotonic() - self._wall
        busy = _system_busy() - self._busy
        ours = sum(v for k, v in out.items() if not k.endswith("_sys"))
        out["other_cores"] = max(0.0, busy - ours) / (wall or 1)
        out["wall"] = wall
        return out


def wait_idle(pid: int, *, below: float = 0.1, max_s: float = 300.0) -> float:
    """Wait until process `pid` uses under `below` cores over 1 s (its executor may still
    finish work of cancelled requests); return seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_s:
        before = _tree_cpu(pid)
        time.sleep(1.0)
        if _tree_cpu(pid) - before < below:
            break
    return time.monotonic() - t0


def machine_line() -> str:
    import psutil

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    psi = ""
    with contextlib.suppress(OSError):
        first = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        psi = f"; CPU pressure (PSI some avg60) {first.split()[2].split('=')[1]}%"
    return (
        f"{psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB;"
        f" load average {load}{psi}; Python {sys.version.split()[0]}"
    )
