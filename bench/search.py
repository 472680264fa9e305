"""Search benchmark: reranked searches through the proxy vs the same searches sent directly.

    python -m bench.search [--quick] [--backend auto] [--max-length 256] [--profile]

Real OpenSearch (scripts/engine) with SciFact indexed; the client's search is `multi_match`
over title and text with a SciFact query, size 10. The proxy (`python -m proxy serve`, the
stand-in with the exact mxbai-rerank-xsmall-v1 geometry, fields [title, text]) reranks the
top `window` hits: windows 20 and 50 are two aliases of one index with one rule each.

Cells, for each window and each number of concurrent clients (closed loop):
- cold: distinct queries the proxy has not seen, so every pair goes to the model. Bounded
  by a time budget: no new search starts after it, in-flight ones get as long again, then
  are cancelled and counted as unfinished (a cell with unfinished searches has no valid
  latency: its percentiles are lower bounds).
- warm: the queries the cold cells completed, repeated: the score cache answers and the
  model is skipped. Compared with `direct`, the same searches sent to the engine in the
  same minute (target: warm p50 within 1.2x of direct).
- direct-window: the same search with size = window, i.e. what the proxy asks the engine
  for; the gap between it and warm is the proxy's own cost.
- micro-batching: cold cells with `model.batch_wait_ms: 2` (the default) against one search
  per model group and no wait (`nobatch`: `model.max_group` = window in that proxy's config;
  `batch_wait_ms: 0` alone still groups every search queued while the model is busy).
  `--modes batch2,wait0,nobatch` adds `batch_wait_ms: 0`.

Every response's X-Rerank header is counted; a cell with anything but `applied` is not a
valid latency figure and is flagged. `--profile` then profiles the proxy answering warm
searches from one client (py-spy: `pip install py-spy`, or PY_SPY=path).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import data, engine
from bench.cpu import CpuMeter, machine_line, wait_idle
from bench.load import LoadResult, Req, run_load
from bench.proxyproc import ProxyProcess, proxy_config, proxy_metrics, start_proxy, workdir
from bench.report import fmt_ms, fmt_ratio, log, md_table, percentile
from bench.sampling import py_spy, sample_report, sampled

TARGET_WARM_RATIO = 1.2
MODES = {
    "batch2": "batch_wait_ms 2 (default)",
    "wait0": "batch_wait_ms 0",
    "nobatch": "one search per model group, no wait",
}
LABELS = {"direct": "direct (size 10)", "direct-w": "direct (size = window)", **MODES}


@dataclass(slots=True)
class Cell:
    mode: str  # direct | direct-w | batch2 | wait0 | nobatch
    window: int
    clients: int
    cache: str  # cold | warm | -
    result: LoadResult
    other_cores: float
    proxy_cpu_ms: float  # proxy CPU per search
    engine_cpu_ms: float  # engine CPU per search

    @property
    def valid(self) -> bool:
        """No errors, nothing cancelled, and every proxied search reranked."""
        r = self.result
        if not r.ok or r.completed == 0:
            return False
        if self.mode.startswith("direct"):
            return not r.x_rerank
        return r.x_rerank.get("applied", 0) == r.completed


@dataclass(frozen=True, slots=True)
class Plan:
    windows: list[int]
    clients: list[int]
    modes: list[str]
    budget: float  # seconds of new cold searches per cell (and as long again to finish)
    warm_s: float
    slices: dict[tuple[int, int], list[str]]  # distinct cold queries per (window, clients)


def cold_cap(clients: int) -> int:
    """Most cold searches per cell: two rounds of the clients (one round from 32 on)."""
    return max(4, 2 * clients) if clients < 32 else clients


def alias(window: int) -> str:
    return f"bench-w{window}"


def search_reqs(queries: list[str], window: int, size: int = 10) -> list[Req]:
    path = f"/{alias(window)}/_search"
    return [Req("POST", path, engine.search_body(q, size).decode()) for q in queries]


def rule(window: int) -> dict[str, Any]:
    return {
        "match": [alias(window)],
        "fields": ["title", "text"],
        "window": window,
        # Never fail open during the bench: a failed-open search is no latency figure.
        "timeout_ms": 3_600_000,
    }


def measure(
    mode: str,
    window: int,
    clients: int,
    cache: str,
    base: str,
    reqs: list[Req],
    *,
    duration: float,
    max_requests: int,
    once: bool,
    grace: float,
    proxy_pid: int | None,
    engine_pid: int | None,
    warmup: float = 0.0,
) -> Cell:
    meter = CpuMeter({"proxy": proxy_pid, "engine": engine_pid})
    meter.start()
    res = run_load(
        base,
        reqs,
        concurrency=clients,
        duration_s=duration,
        max_requests=max_requests,
        once=once,
        grace_s=grace,
        warmup_s=warmup,
        timeout_s=duration + grace + 60,
    )
    cpu = meter.stop()
    n = res.completed or math.nan
    proxy_ms = cpu.get("proxy", math.nan) / n * 1000
    engine_ms = cpu.get("engine", math.nan) / n * 1000
    log(
        f"  {mode} w={window} c={clients} {cache}: {res.completed} done,"
        f" {res.unfinished} unfinished, p50 {fmt_ms(res.p(50))} ms, {res.rps:.2f}/s,"
        f" X-Rerank {res.x_rerank}, status {res.status}, errors {res.errors}"
    )
    return Cell(mode, window, clients, cache, res, cpu["other_cores"], proxy_ms, engine_ms)


def run_mode(
    mode: str,
    wins: list[int],
    max_group: int | None,
    plan: Plan,
    args: argparse.Namespace,
    engine_url: str,
    engine_pid: int | None,
    model: Path,
    work: Path,
    started: dict[str, tuple[str, float]],
) -> list[Cell]:
    """Start one proxy; its cold cells, then (default mode only) warm and direct cells.

    `max_group` (pairs per model group; None: the proxy's per-device default) set to the
    window puts one search in each group: no cross-request batching."""
    group: dict[str, Any] = {} if max_group is None else {"max_group": max_group}
    cfg = proxy_config(
        engine_url,
        model=model,
        backend=args.backend,
        rules=[rule(w) for w in wins],
        max_length=args.max_length,
        batch_wait_ms=2.0 if mode == "batch2" else 0.0,
        **group,
    )
    name = f"proxy-{mode}" + (f"-w{max_group}" if max_group else "")
    log(f"starting {name} (backend {args.backend}) ...")
    proxy = start_proxy(cfg, work, name=name)
    started[name] = (proxy.backend(), proxy.started_s)
    log(f"  {name} up in {proxy.started_s:.0f} s, backend {proxy.backend()}")
    cells: list[Cell] = []
    try:
        for w in wins:
            done: list[str] = []
            for c in plan.clients:
                if mode != "batch2" and c == 1:
                    continue  # nothing to batch with one client
                queries = plan.slices[(w, c)]
                cell = measure(
                    mode,
                    w,
                    c,
                    "cold",
                    proxy.url,
                    search_reqs(queries, w),
                    duration=plan.budget,
                    max_requests=len(queries),
                    once=True,
                    grace=plan.budget,
                    proxy_pid=proxy.pid,
                    engine_pid=engine_pid,
                )
                cells.append(cell)
                # Cancelled searches' pairs may still be on the model (executor work
                # cannot be cancelled): let it finish before the next cell.
                waited = wait_idle(proxy.pid)
                if waited > 2:
                    log(f"  waited {waited:.0f} s for the proxy to go idle")
                done += [queries[i] for i in cell.result.done_requests]
            if mode == "batch2":
                cells += warm_cells(w, plan, done, proxy, engine_url, engine_pid)
        log(f"  {name} counters: {json.dumps(proxy_metrics(proxy.url))}")
    finally:
        proxy.stop()
    return cells


def warm_cells(
    window: int,
    plan: Plan,
    queries: list[str],
    proxy: ProxyProcess,
    engine_url: str,
    engine_pid: int | None,
) -> list[Cell]:
    """Per client count: direct (size 10), direct (size window) and the warm proxy, in
    interleaved slices (3 rounds), so all three see the same background load."""
    if not queries:
        log(f"  no cold search completed at window {window}: no warm cells")
        return []
    rounds = 3
    out = []
    for c in plan.clients:
        targets = (
            ("direct", engine_url, None, search_reqs(queries, window)),
            ("direct-w", engine_url, None, search_reqs(queries, window, size=window)),
            ("batch2", proxy.url, proxy.pid, search_reqs(queries, window)),
        )
        parts: dict[str, list[Cell]] = {}
        for _ in range(rounds):
            for mode, base, pid, reqs in targets:
                cell = measure(
                    mode,
                    window,
                    c,
                    "warm" if mode == "batch2" else "-",
                    base,
                    reqs,
                    duration=plan.warm_s / rounds,
                    max_requests=1_000_000,
                    once=False,
                    grace=30,
                    proxy_pid=pid,
                    engine_pid=engine_pid,
                    warmup=0.5,
                )
                parts.setdefault(mode, []).append(cell)
        out += [_merge(cells) for cells in parts.values()]
    return out


def _merge(cells: list[Cell]) -> Cell:
    first = cells[0]
    result = LoadResult.merge([c.result for c in cells])
    n = result.completed or math.nan

    def per_search(attr: str) -> float:
        return sum(getattr(c, attr) * c.result.completed for c in cells) / n

    wall = sum(c.result.elapsed_s for c in cells) or math.nan
    other = sum(c.other_cores * c.result.elapsed_s for c in cells) / wall
    return Cell(
        first.mode,
        first.window,
        first.clients,
        first.cache,
        result,
        other,
        per_search("proxy_cpu_ms"),
        per_search("engine_cpu_ms"),
    )


def profile_warm(
    engine_url: str, work: Path, model: Path, args: argparse.Namespace, plan: Plan
) -> str:
    """Where the proxy's CPU goes answering warm searches (4 primed queries, repeated, one
    client), by py-spy."""
    window = plan.windows[0]
    samples = work / "proxy-warm.txt"
    cfg = proxy_config(
        engine_url,
        model=model,
        backend=args.backend,
        rules=[rule(window)],
        max_length=args.max_length,
    )
    proxy = start_proxy(cfg, work, name="proxy-profiled")
    seconds = max(plan.warm_s, 5.0)
    try:
        reqs = search_reqs(plan.slices[(window, plan.clients[0])][:4], window)
        run_load(proxy.url, reqs, concurrency=1, duration_s=300, max_requests=4)
        log("profiling warm searches ...")
        with sampled(proxy.pid, samples, seconds):
            res = run_load(
                proxy.url, reqs, concurrency=1, duration_s=seconds, max_requests=1_000_000
            )
    finally:
        proxy.stop()
    head = f"{res.completed} warm searches, window {window}, 1 client\n\n"
    return head + sample_report(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.search", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="window 20, clients 1 and 8")
    parser.add_argument("--backend", default="auto", help="model.backend (default auto)")
    parser.add_argument("--max-length", type=int, default=256, help="model.max_length")
    parser.add_argument("--windows", help="comma-separated (default 20,50; quick 20)")
    parser.add_argument("--clients", help="comma-separated (default 1,8,32; quick 1,8)")
    parser.add_argument(
        "--modes", default="batch2,nobatch", help=f"comma-separated of {','.join(MODES)}"
    )
    parser.add_argument("--cold-budget", type=float, help="seconds per cold cell (18; quick 15)")
    parser.add_argument("--warm-duration", type=float, help="seconds per warm cell (5; quick 4.5)")
    parser.add_argument("--profile", action="store_true", help="also profile warm searches")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    windows = _ints(args.windows or ("20" if args.quick else "20,50"))
    clients = _ints(args.clients or ("1,8" if args.quick else "1,8,32"))
    modes = args.modes.split(",")
    if unknown := set(modes) - set(MODES):
        sys.exit(f"unknown modes: {', '.join(sorted(unknown))}")
    if "batch2" not in modes:
        sys.exit("--modes must include batch2 (the warm and direct cells run on it)")
    modes = ["batch2", *(m for m in modes if m != "batch2")]
    if args.profile and py_spy() is None:
        sys.exit("--profile needs py-spy (pip install py-spy, or set PY_SPY to its path)")

    t_start = time.monotonic()
    engine_url = engine.ensure_engine()
    scifact = data.load_scifact()
    engine.index_scifact(engine_url, scifact, aliases=[alias(w) for w in windows])
    queries = [q.text for q in scifact.queries.values()]
    engine_pid = engine.engine_pid()
    log("model: ensuring the exact stand-in ...")
    model = data.exact_model()
    machine = machine_line()

    # Disjoint query slices per (window, clients): a query seen at window 20 would make
    # its window-50 search partly warm. Every mode uses the same slice for a cell.
    slices: dict[tuple[int, int], list[str]] = {}
    start = 0
    for w in windows:
        for c in clients:
            slices[(w, c)] = queries[start : start + cold_cap(c)]
            start += cold_cap(c)
    if start > len(queries):
        sys.exit(f"need {start} distinct queries for the cold cells, SciFact has {len(queries)}")
    plan = Plan(
        windows,
        clients,
        modes,
        args.cold_budget or (15.0 if args.quick else 18.0),
        args.warm_duration or (4.5 if args.quick else 5.0),
        slices,
    )

    cells: list[Cell] = []
    started: dict[str, tuple[str, float]] = {}
    profile = ""
    with workdir("bench-search-", keep=args.keep) as work:
        for mode in modes:
            # One search per group needs max_group = window: one proxy per window.
            groups: list[int | None] = list(windows) if mode == "nobatch" else [None]
            for group in groups:
                wins = [group] if group else windows
                cells += run_mode(
                    mode, wins, group, plan, args, engine_url, engine_pid, model, work, started
                )
        if args.profile:
            profile = profile_warm(engine_url, work, model, args, plan)

    print(report(cells, args, machine, started, plan))
    print(f"\nTotal bench time {time.monotonic() - t_start:.0f} s.")
    if profile:
        print("\n### Where the proxy's CPU goes on warm searches\n")
        print(profile)
    return 0


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _xr(r: LoadResult) -> str:
    applied = r.x_rerank.get("applied", 0)
    failed = r.x_rerank.get("failed", 0)
    other = sum(r.x_rerank.values()) - applied - failed
    return f"{applied}/{failed}/{other}"


def _lb(c: Cell, q: float) -> str:
    """A percentile; `>=` when searches were cancelled (the true value is higher)."""
    value = fmt_ms(c.result.p(q))
    return f">= {value}" if c.result.unfinished and value != "n/a" else value


def _find(cells: list[Cell], mode: str, w: int, n: int, cache: str) -> Cell | None:
    for c in cells:
        if (c.mode, c.window, c.clients, c.cache) == (mode, w, n, cache):
            return c
    return None


def report(
    cells: list[Cell],
    args: argparse.Namespace,
    machine: str,
    started: dict[str, tuple[str, float]],
    plan: Plan,
) -> str:
    procs = "; ".join(f"{k}: backend {b}, up in {s:.0f} s" for k, (b, s) in started.items())
    out = [
        "## Reranked search: proxy vs direct",
        "",
        f"- Machine: {machine}. Nothing pinned: OpenSearch, the proxy (model threads = all"
        " cores) and the load generator share the cores; `other` = cores used by processes"
        " outside this benchmark during the cell.",
        f"- Model: exact-geometry stand-in (70.8M params, random weights), max_length"
        f" {args.max_length}, requested backend `{args.backend}` ({procs}).",
        "- Search: `multi_match` (title, text) with a SciFact query, size 10; the proxy asks"
        " the engine for `window` hits and reranks them. Load: aiohttp load generator in its"
        " own process, closed loop, N clients.",
        f"- Cold cells: distinct unseen queries, at most {plan.budget:.0f} s of new searches"
        " then as long again for in-flight ones; `unfinished` ones were cancelled"
        f" (percentiles are then lower bounds, marked >=). Warm and direct cells:"
        f" {plan.warm_s:.0f} s each, in 3 interleaved slices (direct, direct size=window, proxy)"
        " after 0.5 s warm-ups, cycling the queries the cold cells completed (the score"
        " cache answers every pair).",
        "- X-Rerank = applied/failed/other responses; a cell is valid only if all applied.",
        "",
        md_table(
            [
                "mode",
                "window",
                "clients",
                "cache",
                "searches",
                "unfinished",
                "searches/s",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "rerank ms p50",
                "proxy CPU ms/search",
                "engine CPU ms/search",
                "X-Rerank a/f/o",
                "other cores",
                "valid",
            ],
            [
                (
                    LABELS[c.mode],
                    c.window,
                    c.clients,
                    c.cache,
                    c.result.completed,
                    c.result.unfinished,
                    f"{c.result.rps:.2f}" if c.result.rps < 100 else f"{c.result.rps:.0f}",
                    _lb(c, 50),
                    _lb(c, 95),
                    _lb(c, 99),
                    fmt_ms(percentile(c.result.took_ms, 50)),
                    "-" if c.mode.startswith("direct") else fmt_ms(c.proxy_cpu_ms),
                    fmt_ms(c.engine_cpu_ms),
                    "-" if c.mode.startswith("direct") else _xr(c.result),
                    f"{c.other_cores:.2f}",
                    "yes" if c.valid else "NO",
                )
                for c in cells
            ],
        ),
        "",
        "### Warm cache vs direct (target: p50 within 1.2x of direct)",
        "",
    ]
    rows, passes = [], []
    for w in plan.windows:
        for n in plan.clients:
            d = _find(cells, "direct", w, n, "-")
            dw = _find(cells, "direct-w", w, n, "-")
            p = _find(cells, "batch2", w, n, "warm")
            if d is None or p is None or dw is None:
                rows.append((w, n, *["n/a"] * 8, "no data"))
                continue
            r50 = p.result.p(50) / d.result.p(50)
            ok = r50 <= TARGET_WARM_RATIO and p.valid and d.valid
            passes.append(ok)
            rows.append(
                (
                    w,
                    n,
                    fmt_ms(d.result.p(50)),
                    fmt_ms(dw.result.p(50)),
                    fmt_ms(p.result.p(50)),
                    f"{fmt_ratio(r50)} ({fmt_ratio(r50 / TARGET_WARM_RATIO)} of target)",
                    fmt_ratio(p.result.p(95) / d.result.p(95)),
                    fmt_ratio(p.result.p(99) / d.result.p(99)),
                    f"{p.result.p(50) - dw.result.p(50):+.2f}",
                    f"{p.result.rps / d.result.rps:.0%}",
                    ("PASS" if ok else "FAIL") + ("" if p.valid else " (invalid cell)"),
                )
            )
    out.append(
        md_table(
            [
                "window",
                "clients",
                "direct p50 ms",
                "direct size=window p50 ms",
                "warm p50 ms",
                "p50 ratio",
                "p95 ratio",
                "p99 ratio",
                "proxy's own p50 ms (warm - size=window)",
                "searches/s vs direct",
                "p50 <= 1.2x",
            ],
            rows,
        )
    )
    out += ["", f"Verdict: {sum(passes)}/{len(passes)} warm cells within 1.2x of direct p50.", ""]
    others = [m for m in plan.modes if m != "batch2"]
    if others:
        out += ["### Micro-batching (cold cache)", ""]
        head = ["window", "clients"]
        for m in plan.modes:
            head += [
                f"{m}: p50 / p95 ms",
                f"{m}: first burst p50 / max ms",
                f"{m}: searches/s",
                f"{m}: done/unfinished",
            ]
        rows = []
        for w in plan.windows:
            for n in plan.clients:
                if n == 1:
                    continue
                row: list[Any] = [w, n]
                for m in plan.modes:
                    c = _find(cells, m, w, n, "cold")
                    if c is None:
                        row += ["n/a"] * 4
                    else:
                        burst = c.result.first(n)
                        done = len(burst) == n
                        row += [
                            f"{_lb(c, 50)} / {_lb(c, 95)}",
                            f"{fmt_ms(percentile(burst, 50))} / "
                            f"{fmt_ms(max(burst)) if done else 'unfinished'}"
                            if burst
                            else "unfinished",
                            f"{c.result.rps:.2f}",
                            f"{c.result.completed}/{c.result.unfinished}",
                        ]
                rows.append(row)
        out.append(md_table(head, rows))
        out.append("")
        out.append(
            "Modes: "
            + "; ".join(f"`{m}` = {MODES[m]}" for m in plan.modes)
            + ". First burst: the first search of each client, all sent at once (an opening"
            " burst: where grouping matters). Closed loop afterwards: by Little's law every"
            " mode's steady-state latency is clients / throughput."
        )
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
