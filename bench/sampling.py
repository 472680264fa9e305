"""Where a process's CPU goes: py-spy sampling of a running proxy, summarised as tables.

`sampled` records a process with py-spy while a block runs (Python-level CPU, GIL held), and
`sample_report` turns the collapsed stacks into shares by area (rerank-proxy code, aiohttp,
the event loop, ...), by function itself and by function with its callees.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from bench.report import log, md_table


def py_spy() -> str | None:
    """The py-spy executable (`pip install py-spy`; or set PY_SPY), if any."""
    return os.environ.get("PY_SPY") or shutil.which("py-spy")


@contextlib.contextmanager
def sampled(pid: int, out: Path, seconds: float) -> Iterator[None]:
    """Sample `pid` with py-spy while the block runs: 250 Hz, without pausing it, and only
    while it holds the GIL (`--gil`): Python-level CPU. Time inside send/recv is left out
    on purpose: on a shared 2-core box a thread preempted inside a syscall looks busy to a
    sampler; the kernel's share is measured instead as the process's system CPU time."""
    exe = py_spy()
    if exe is None:
        raise RuntimeError("py-spy not found (pip install py-spy, or set PY_SPY)")
    cmd = [exe, "record", "--pid", str(pid), "--duration", str(math.ceil(seconds) + 1)]
    cmd += ["--rate", "250", "--nonblocking", "--gil", "--function", "--format", "raw"]
    cmd += ["-o", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # attach
    try:
        yield
    finally:
        try:
            _, err = proc.communicate(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if proc.returncode != 0:
            log(f"py-spy failed ({proc.returncode}): {err[-500:]}")


def _area(frame: str) -> str:
    where = frame.rsplit("(", 1)[-1]
    for key, name in (
        ("proxy/", "rerank-proxy code"),
        ("aiohttp/", "aiohttp"),
        ("multidict/", "aiohttp"),
        ("yarl/", "aiohttp"),
        ("asyncio/", "asyncio event loop"),
        ("selectors", "asyncio event loop"),
        ("logging/", "logging"),
        ("json/", "json (stdlib)"),
    ):
        if key in where:
            return name
    return "other"


def sample_report(path: Path, *, top: int = 25) -> str:
    """py-spy collapsed stacks -> share of samples by area (leaf frame), by function
    itself (self) and by function including callees (inclusive)."""
    self_n: Counter[str] = Counter()
    incl_n: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = 0
    if not path.exists():
        return "(no samples written)"
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f and not f.startswith("process ")]
        if not frames:
            continue
        total += n
        self_n[frames[-1]] += n
        areas[_area(frames[-1])] += n
        for f in set(frames):
            incl_n[f] += n
    if not total:
        return "(no samples)"

    def rows(counter: Counter[str]) -> list[tuple[str, str]]:
        return [(f"{n / total:.1%}", f"`{f}`") for f, n in counter.most_common(top)]

    return "\n".join(
        [
            f"{total} samples (py-spy --gil, 250 Hz, non-blocking): Python-level CPU only;"
            " kernel time in send/recv is the `sys` share of the CPU columns.",
            "",
            md_table(["share", "area (where the CPU was: leaf frame)"], rows(areas)),
            "",
            md_table(["self", "function"], rows(self_n)),
            "",
            md_table(["inclusive", "function"], rows(incl_n)),
        ]
    )
