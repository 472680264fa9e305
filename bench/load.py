"""The load generator: a closed loop of aiohttp clients, run in a process of its own.

`run_load` writes the requests and limits to a spec file, runs `python -m bench.load SPEC OUT`
(so the generator never shares the proxy's core or event loop) and returns its `LoadResult`:
latencies, status codes, `X-Rerank` outcomes, errors, and which requests completed. Every
loop is bounded in request count and in time, and only loopback targets are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.loopback import LOOPBACK
from bench.paths import REPO
from bench.report import percentile


@dataclass(frozen=True, slots=True)
class Req:
    """One request of a load: method, path and (JSON) body."""

    method: str
    path: str
    body: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "path": self.path, "body": self.body}


@dataclass(slots=True)
class LoadResult:
    """What one load run measured (the load generator's JSON output)."""

    latencies_ms: list[float]
    completed: int
    unfinished: int
    elapsed_s: float
    status: dict[str, int]
    x_rerank: dict[str, int]
    errors: dict[str, int]
    took_ms: list[float]
    done_requests: list[int]  # indexes into the request list that completed with 2xx
    by_index: list[tuple[int, float]]  # (n-th request sent, latency ms), completed ones

    @classmethod
    def merge(cls, parts: Sequence[LoadResult]) -> LoadResult:
        """Several runs of the same load as one (interleaved slices of a measurement)."""

        def add(dicts: Iterable[dict[str, int]]) -> dict[str, int]:
            total: Counter[str] = Counter()
            for d in dicts:
                total.update(d)
            return dict(total)

        return cls(
            latencies_ms=[x for p in parts for x in p.latencies_ms],
            completed=sum(p.completed for p in parts),
            unfinished=sum(p.unfinished for p in parts),
            elapsed_s=sum(p.elapsed_s for p in parts),
            status=add(p.status for p in parts),
            x_rerank=add(p.x_rerank for p in parts),
            errors=add(p.errors for p in parts),
            took_ms=[x for p in parts for x in p.took_ms],
            done_requests=[x for p in parts for x in p.done_requests],
            by_index=[x for p in parts for x in p.by_index],
        )

    def first(self, n: int) -> list[float]:
        """Latencies of the first `n` requests sent (one per client: the opening burst)."""
        return [ms for i, ms in self.by_index if i < n]

    @property
    def rps(self) -> float:
        return self.completed / self.elapsed_s if self.elapsed_s > 0 else math.nan

    def p(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

    @property
    def ok(self) -> bool:
        return not self.errors and not self.unfinished and set(self.status) <= {"200"}


def run_load(
    base: str,
    requests: Sequence[Req],
    *,
    concurrency: int,
    duration_s: float,
    max_requests: int,
    once: bool = False,
    grace_s: float = 30.0,
    warmup_s: float = 0.0,
    timeout_s: float = 600.0,
    pid_out: list[int] | None = None,
) -> LoadResult:
    """Run the aiohttp load generator in its own process and wait for its result.

    Closed loop: `concurrency` workers, each sends its next request when its last one
    answered. No new request starts after `duration_s` or `max_requests`; in-flight ones
    get `grace_s` more, then are cancelled and counted as unfinished. `once`: each request
    of the list is sent at most once (distinct queries: a cold cache), else they cycle.
    """
    if not base.startswith(f"http://{LOOPBACK}:"):
        raise ValueError(f"load targets must be http://{LOOPBACK}:PORT, not {base}")
    spec = {
        "base": base,
        "requests": [r.to_json() for r in requests],
        "concurrency": concurrency,
        "duration_s": duration_s,
        "max_requests": max_requests,
        "once": once,
        "grace_s": grace_s,
        "warmup_s": warmup_s,
        "timeout_s": timeout_s,
    }
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps(spec))
        cmd = [sys.executable, "-m", "bench.load", str(spec_path), str(out_path)]
        proc = subprocess.Popen(cmd, cwd=REPO)
        if pid_out is not None:
            pid_out.append(proc.pid)
        try:
            proc.wait(timeout=warmup_s + duration_s + grace_s + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise RuntimeError("load generator did not finish in time") from None
        if proc.returncode != 0:
            raise RuntimeError(f"load generator failed (exit {proc.returncode})")
        out = json.loads(out_path.read_text())
    return LoadResult(**out)


async def _loadgen(spec: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    base = spec["base"]
    reqs = spec["requests"]
    conc = int(spec["concurrency"])
    once = bool(spec["once"])
    cap = min(int(spec["max_requests"]), len(reqs) if once else int(spec["max_requests"]))
    latencies: list[float] = []
    took: list[float] = []
    status: Counter[str] = Counter()
    x_rerank: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    done: list[int] = []
    by_index: list[tuple[int, float]] = []
    counter = 0
    last_end = 0.0
    timeout = aiohttp.ClientTimeout(total=float(spec["timeout_s"]))
    connector = aiohttp.TCPConnector(limit=conc, limit_per_host=conc)
    headers = {"Content-Type": "application/json"}
    # Like the official clients' defaults: no `Accept-Encoding: gzip` (aiohttp would add it,
    # and both the engine and the proxy would then spend CPU compressing).
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,
        skip_auto_headers=("Accept-Encoding", "User-Agent"),
    ) as session:

        async def one(i: int, record: bool) -> None:
            nonlocal last_end
            r = reqs[i % len(reqs)]
            body = r["body"].encode() if r["body"] is not None else None
            t0 = time.perf_counter()
            try:
                async with session.request(
                    r["method"], base + r["path"], data=body, headers=headers
                ) as resp:
                    await resp.read()
                    code = resp.status
                    outcome = resp.headers.get("X-Rerank")
                    took_ms = resp.headers.get("X-Rerank-Took-Ms")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if record:
                    errors[type(exc).__name__] += 1
                return
            t1 = time.perf_counter()
            if not record:
                return
            latencies.append((t1 - t0) * 1000)
            status[str(code)] += 1
            if outcome is not None:
                x_rerank[outcome] += 1
            if took_ms is not None:
                took.append(float(took_ms))
            if 200 <= code < 300:
                done.append(i % len(reqs))
            by_index.append((i, (t1 - t0) * 1000))
            last_end = t1

        warm_end = time.perf_counter() + float(spec["warmup_s"])

        async def warm_worker(w: int) -> None:
            i = w
            while time.perf_counter() < warm_end:
                await one(i, record=False)
                i += conc

        if spec["warmup_s"] > 0:
            await asyncio.gather(*(warm_worker(w) for w in range(conc)))

        t_start = time.perf_counter()
        stop_at = t_start + float(spec["duration_s"])

        async def worker() -> None:
            nonlocal counter
            while time.perf_counter() < stop_at and counter < cap:
                i = counter
                counter += 1
                await one(i, record=True)

        tasks = [asyncio.create_task(worker()) for _ in range(conc)]
        deadline = float(spec["duration_s"]) + float(spec["grace_s"])
        finished, pending = await asyncio.wait(tasks, timeout=deadline)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for t in finished:
            t.result()
        unfinished = counter - len(latencies) - sum(errors.values())
    end = last_end if last_end else time.perf_counter()
    return {
        "latencies_ms": latencies,
        "completed": len(latencies),
        "unfinished": unfinished,
        "elapsed_s": end - t_start,
        "status": dict(status),
        "x_rerank": dict(x_rerank),
        "errors": dict(errors),
        "took_ms": took,
        "done_requests": done,
        "by_index": by_index,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.load", description="Run one load spec (started by run_load)."
    )
    parser.add_argument("spec", help="the spec JSON written by run_load")
    parser.add_argument("out", help="where to write the result JSON")
    args = parser.parse_args(argv)
    spec = json.loads(Path(args.spec).read_text())
    Path(args.out).write_text(json.dumps(asyncio.run(_loadgen(spec))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
