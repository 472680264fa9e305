"""Memory benchmark: peak RSS of the proxy process per inference backend.

    python -m bench.memory [--quick] [--backends auto,torch,onnx,onnx-int8,torch-bf16,...]

For each backend: `python -m proxy serve` with the stand-in that has the exact
mxbai-rerank-xsmall-v1 geometry (70.8M parameters; memory equals the real model's), then
~20 reranked SciFact searches (window 20, 4 clients, max_length 256) against the local
OpenSearch. RSS of the proxy and all its children is sampled with psutil every 50 ms from
spawn to exit. Reported: RSS once listening (model loaded), the peak while loading, the peak
while serving, and USS at the end (memory no other process shares). A backend that fails to
load is skipped with the reason from the proxy's log.

Target: peak RSS under 1 GB for the default CPU backend (`auto`).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import data, engine
from bench.cpu import machine_line
from bench.load import Req, run_load
from bench.proxyproc import proxy_config, start_proxy, workdir
from bench.report import MB, log, md_table

TARGET_BYTES = 1_000_000_000  # 1 GB
BACKENDS = ("auto", "torch", "onnx", "onnx-int8", "torch-bf16", "openvino", "openvino-bf16")
WINDOW = 20
ALIAS = "bench-mem"


@dataclass
class Sampler:
    """Sums the RSS of a process tree every `interval` seconds in a thread."""

    pid: int
    interval: float = 0.05
    phase: str = "load"
    peaks: dict[str, int] = field(default_factory=dict)
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def rss(self) -> int:
        import psutil

        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        total = 0
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                total += p.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            value = self.rss()
            self.samples += 1
            if value > self.peaks.get(self.phase, 0):
                self.peaks[self.phase] = value
            self._stop.wait(self.interval)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


@dataclass
class Row:
    backend: str
    resolved: str = "-"
    load_s: float = float("nan")
    rss_loaded: int = 0
    peak_load: int = 0
    peak_serve: int = 0
    uss_end: int = 0
    searches: str = "-"
    pairs_per_s: float = float("nan")
    note: str = ""
    mappings: list[tuple[str, int]] = field(default_factory=list)

    @property
    def peak(self) -> int:
        return max(self.peak_load, self.peak_serve)


def _uss(pid: int) -> int:
    import psutil

    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        return sum(p.memory_full_info().uss for p in [root, *root.children(recursive=True)])
    return 0


def _top_mappings(pid: int, n: int = 6) -> list[tuple[str, int]]:
    """The largest contributors to RSS: anonymous memory, then mapped files by name."""
    import psutil

    sizes: dict[str, int] = {}
    with contextlib.suppress(psutil.Error):
        for m in psutil.Process(pid).memory_maps(grouped=True):
            path = m.path
            name = "anonymous (heap, arenas, tensors)" if not path.startswith("/") else path
            if "site-packages/" in name:
                name = name.split("site-packages/", 1)[1]
            sizes[name] = sizes.get(name, 0) + m.rss
    return sorted(sizes.items(), key=lambda kv: -kv[1])[:n]


def _failure_reason(log_text: str) -> str:
    lines = [ln.strip() for ln in log_text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "ERROR" in ln or "Error" in ln or "error" in ln:
            return ln[-300:]
    return lines[-1][-300:] if lines else "no log output"


def measure_backend(
    backend: str,
    engine_url: str,
    model: Path,
    work: Path,
    queries: list[str],
    clients: int,
    max_length: int,
) -> Row:
    row = Row(backend)
    rule = {
        "match": [ALIAS],
        "fields": ["title", "text"],
        "window": WINDOW,
        "timeout_ms": 3_600_000,
    }
    cfg = proxy_config(
        engine_url, model=model, backend=backend, rules=[rule], max_length=max_length
    )
    samplers: list[Sampler] = []

    def on_spawn(pid: int) -> None:
        samplers.append(Sampler(pid))
        samplers[0].start()

    t0 = time.monotonic()
    try:
        proxy = start_proxy(cfg, work, name=f"proxy-{backend}", on_spawn=on_spawn)
    except RuntimeError as exc:
        row.note = f"SKIPPED: failed to load: {_failure_reason(str(exc))}"
        for sampler in samplers:
            sampler.stop()
        return row
    sampler = samplers[0]
    try:
        row.load_s = time.monotonic() - t0
        row.resolved = proxy.backend()
        row.rss_loaded = sampler.rss()
        sampler.phase = "serve"
        reqs = [Req("POST", f"/{ALIAS}/_search", engine.search_body(q).decode()) for q in queries]
        t1 = time.monotonic()
        res = run_load(
            proxy.url,
            reqs,
            concurrency=clients,
            duration_s=600,
            max_requests=len(reqs),
            once=True,
            grace_s=120,
            timeout_s=900,
        )
        elapsed = time.monotonic() - t1
        time.sleep(0.3)  # one more round of samples after the last answer
        applied = res.x_rerank.get("applied", 0)
        row.searches = f"{applied}/{len(reqs)}"
        row.pairs_per_s = applied * WINDOW / elapsed if elapsed else float("nan")
        if applied != len(reqs):
            row.note = (
                f"not all reranked: X-Rerank {res.x_rerank}, status {res.status},"
                f" errors {res.errors}, unfinished {res.unfinished}"
            )
        row.uss_end = _uss(proxy.pid)
        row.mappings = _top_mappings(proxy.pid)
    finally:
        proxy.stop()
        sampler.stop()
    row.peak_load = sampler.peaks.get("load", 0)
    row.peak_serve = sampler.peaks.get("serve", 0)
    if "exporting" in proxy.log_text() or "quantising" in proxy.log_text():
        row.note = (row.note + "; " if row.note else "") + "ONNX export ran during this load"
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="8 searches per backend")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--searches", type=int, help="reranked searches per backend (20)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    n = args.searches or (8 if args.quick else 20)
    backends = [b for b in args.backends.split(",") if b]

    t_start = time.monotonic()
    engine_url = engine.ensure_engine()
    scifact = data.load_scifact()
    engine.index_scifact(engine_url, scifact, aliases=[ALIAS])
    all_queries = [q.text for q in scifact.queries.values()]
    model = data.exact_model()
    machine = machine_line()
    rows = []
    with workdir("bench-memory-", keep=args.keep) as work:
        for backend in backends:
            log(f"backend {backend} ...")
            # The same queries for every backend: each proxy starts with an empty cache.
            queries = all_queries[:n]
            row = measure_backend(
                backend, engine_url, model, work, queries, args.clients, args.max_length
            )
            log(f"  {row}")
            rows.append(row)

    print(report(rows, machine, n, args))
    print(f"\nTotal bench time {time.monotonic() - t_start:.0f} s.")
    return 0


def report(rows: list[Row], machine: str, n: int, args: argparse.Namespace) -> str:
    def mb(v: int) -> str:
        return f"{v / MB:.0f}" if v else "-"

    table = md_table(
        [
            "backend",
            "resolved",
            "load s",
            "RSS loaded MB",
            "peak while loading MB",
            "peak while serving MB",
            "peak / 1 GB",
            "USS at end MB",
            "reranked",
            "pairs/s",
            "note",
        ],
        [
            (
                r.backend,
                r.resolved,
                f"{r.load_s:.0f}" if r.load_s == r.load_s else "-",
                mb(r.rss_loaded),
                mb(r.peak_load),
                mb(r.peak_serve),
                f"{r.peak / TARGET_BYTES:.2f}x" if r.peak else "-",
                mb(r.uss_end),
                r.searches,
                f"{r.pairs_per_s:.1f}" if r.pairs_per_s == r.pairs_per_s else "-",
                r.note,
            )
            for r in rows
        ],
    )
    auto = next((r for r in rows if r.backend == "auto" and r.peak), None)
    if auto is None:
        verdict = "Verdict: `auto` was not measured."
    else:
        ok = auto.peak < TARGET_BYTES
        verdict = (
            f"Verdict: default CPU backend `auto` (resolved to `{auto.resolved}`) peaks at"
            f" {auto.peak / MB:.0f} MB = {auto.peak / TARGET_BYTES:.2f}x of the 1 GB target:"
            f" {'PASS' if ok else 'FAIL'}."
        )
    where = ["", "Largest parts of RSS after serving (psutil memory_maps, grouped):", ""]
    for r in rows:
        if r.mappings:
            parts = ", ".join(f"{name} {rss / MB:.0f}" for name, rss in r.mappings)
            where.append(f"- `{r.backend}`: {parts} (MB)")
    return "\n".join(
        [
            "## Proxy memory per backend",
            "",
            f"- Machine: {machine}.",
            f"- Proxy: `python -m proxy serve`, exact-geometry stand-in (70.8M params), device"
            f" auto (CPU here), max_length {args.max_length}; {n} reranked searches, window"
            f" {WINDOW}, {args.clients} clients. RSS = proxy process + children, sampled every"
            " 50 ms with psutil (MB = 10^6 bytes).",
            "",
            table,
            "",
            verdict,
            *where,
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
