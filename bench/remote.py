"""Remote inference benchmark: in-process vs our model server vs Infinity, same model, same CPU.

    python -m bench.remote [--windows 20,50] [--searches 4] [--max-length 256] [--rounds 2]
                           [--backend onnx] [--no-infinity]

Each system reranks the same searches (SciFact queries and their BM25 top `window` hits, one
search per call, as the proxy sends them), through the same `RerankFront` (cache off):

- `in-process`: the front over a `LocalExecutor` (the proxy's default);
- `model server`: the front over `backend: remote` against `rerank-proxy model-server` (a
  separate process on loopback, same backend), i.e. what `--workers` and a GPU fleet use;
- `infinity`: the front over `backend: remote` against a real Infinity 0.0.78 server
  (`scripts/infinity`) on the same model directory (torch fp32, its own batching).

The model is the stand-in with the exact mxbai-rerank-xsmall-v1 geometry, so costs are the
real model's. Rounds alternate the order of the systems; each figure is the median over
rounds. Printed: pairs/s, per-search p50, and the ratios the issue sets targets for (model
server >= 95% of in-process pairs/s at window 50, < 2 ms added p50; ours faster than
Infinity).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml

from bench.cpu import machine_line
from bench.data import exact_model, workload
from bench.paths import REPO
from bench.report import fmt_ms, fmt_ratio, log, md_table

Searches = list[tuple[str, list[str]]]


def _front(executor: Any) -> Any:
    from proxy.rerank.base import BatchPolicy
    from proxy.rerank.front import RerankFront

    return RerankFront(executor, BatchPolicy(wait_ms=0, max_group=512), cache_size=0)


async def _run(front: Any, searches: Searches, max_length: int) -> tuple[float, list[float]]:
    """Score each search in turn; (pairs/s, per-search seconds)."""
    times = []
    pairs = 0
    for query, docs in searches:
        t0 = time.perf_counter()
        await front.score(query, docs, max_length=max_length)
        times.append(time.perf_counter() - t0)
        pairs += len(docs)
    return pairs / sum(times), times


def _remote_cfg(
    url: str, *, api: str = "cohere", path: str = "/v1/rerank", model: str | None = None
) -> Any:
    from proxy.config import parse_config

    remote = {
        "urls": [url],
        "api": api,
        "path": path,
        "model": model,
        "timeout": 600,
        "max_documents": 512,
    }
    return parse_config({"model": {"backend": "remote", "remote": remote}}).model


class ModelServer:
    def __init__(self, model: Path, backend: str, max_length: int, workdir: Path) -> None:
        cfg = {
            "listen": {"host": "127.0.0.1", "port": 0, "drain_delay": 0},
            "model": {
                "name": str(model),
                "backend": backend,
                "device": "cpu",
                "max_length": max_length,
                "cache_size": 0,
                "batch_wait_ms": 0,
                "max_group": 512,
            },
            "log_level": "WARNING",
        }
        path = workdir / "model-server.yaml"
        path.write_text(yaml.safe_dump(cfg))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "model-server", "--config", str(path)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("rerank-proxy listening on "):
            raise SystemExit(f"model server did not start: {line!r}")
        self.url = line.split()[-1]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def _infinity(model: Path, port: int) -> str | None:
    script = REPO / "scripts" / "infinity"
    done = subprocess.run(
        [str(script), "start", str(model), str(port)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        log(f"infinity not available: {done.stderr.strip()[-400:]}")
        return None
    return done.stdout.strip().splitlines()[-1]


async def bench(args: argparse.Namespace) -> str:
    from proxy.config import parse_config
    from proxy.rerank.loader import load_executor
    from proxy.rerank.remote import load_remote

    model = exact_model()
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / "bench-remote"
    workdir.mkdir(exist_ok=True)
    local_cfg = parse_config(
        {
            "model": {
                "name": str(model),
                "backend": args.backend,
                "device": "cpu",
                "max_length": args.max_length,
            }
        }
    ).model
    log(f"loading {args.backend} in-process and in a model server (stand-in {model})")
    local = _front(load_executor(local_cfg))
    server = ModelServer(model, args.backend, args.max_length, workdir)
    infinity_url = (
        None if args.no_infinity else await asyncio.to_thread(_infinity, model, args.infinity_port)
    )
    systems: dict[str, Callable[[], Any]] = {
        "in-process": lambda: local,
        "model server": lambda: _front(load_remote(_remote_cfg(server.url))),
    }
    if infinity_url:
        systems["infinity"] = lambda: _front(
            load_remote(_remote_cfg(infinity_url, path="/rerank", model=model.name))
        )
    rows = []
    summary: dict[tuple[str, int], tuple[float, float]] = {}
    try:
        for window in args.windows:
            searches = workload(args.searches, window)
            warm = workload(1, window)
            results: dict[str, list[tuple[float, list[float]]]] = {name: [] for name in systems}
            fronts = {name: make() for name, make in systems.items()}
            for front in fronts.values():  # warm-up: sessions, graph caches, threads
                await _run(front, warm, args.max_length)
            for r in range(args.rounds):
                order = list(fronts) if r % 2 == 0 else list(reversed(fronts))
                for name in order:
                    log(f"window {window} round {r + 1}: {name}")
                    results[name].append(await _run(fronts[name], searches, args.max_length))
            for name, runs in results.items():
                pps = statistics.median(p for p, _ in runs)
                p50 = statistics.median(statistics.median(t) for _, t in runs)
                summary[(name, window)] = (pps, p50)
            base_pps, base_p50 = summary[("in-process", window)]
            for name in systems:
                pps, p50 = summary[(name, window)]
                rows.append(
                    [
                        window,
                        name,
                        f"{pps:.1f}",
                        fmt_ms(p50 * 1000),
                        fmt_ratio(pps / base_pps),
                        f"{(p50 - base_p50) * 1000:+.1f}",
                    ]
                )
            for name, front in fronts.items():
                if name != "in-process":
                    await front.close()
    finally:
        await local.close()
        server.stop()
        if infinity_url:
            stop = [str(REPO / "scripts" / "infinity"), "stop"]
            await asyncio.to_thread(subprocess.run, stop, check=False, capture_output=True)
    out = [
        "## Remote inference: in-process vs model server vs Infinity",
        "",
        f"- Machine: {machine_line()}",
        f"- Model: exact-geometry stand-in, backend `{args.backend}` (in-process and model"
        f" server), Infinity torch fp32; max_length {args.max_length}; {args.searches}"
        f" searches per window, {args.rounds} rounds, medians.",
        "",
        md_table(
            [
                "window",
                "system",
                "pairs/s",
                "p50 per search",
                "pairs/s vs in-process",
                "added p50 ms",
            ],
            rows,
        ),
        "",
    ]
    w = max(args.windows)
    if ("model server", w) in summary:
        ratio = summary[("model server", w)][0] / summary[("in-process", w)][0]
        added = (summary[("model server", w)][1] - summary[("in-process", w)][1]) * 1000
        out.append(
            f"Model server at window {w}: {ratio:.1%} of in-process pairs/s (target"
            f" >= 95%), {added:+.1f} ms p50 per search (target < 2 ms)."
        )
    if ("infinity", w) in summary:
        ratio = summary[("model server", w)][0] / summary[("infinity", w)][0]
        out.append(
            f"Our model server vs Infinity at window {w}: {ratio:.2f}x pairs/s (target > 1)."
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--windows", type=lambda v: [int(x) for x in v.split(",")], default=[20, 50]
    )
    parser.add_argument("--searches", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--backend", default="onnx")
    parser.add_argument("--no-infinity", action="store_true")
    parser.add_argument("--infinity-port", type=int, default=19371)
    args = parser.parse_args(argv)
    run: Awaitable[str] = bench(args)
    print(asyncio.run(run))  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
