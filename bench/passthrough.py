"""Pass-through benchmark: un-reranked traffic direct, through our proxy, through nginx.

    python -m bench.passthrough [--quick] [--duration S] [--rounds N] [--profile]

Real OpenSearch (scripts/engine) with SciFact indexed. Two kinds of traffic the proxy does
not rerank: `GET /bench-scifact/_doc/ID` (cycling over 200 ids) and a small `match` search
(size 3) on an index the proxy config leaves disabled. Each goes to the engine directly,
through `python -m proxy serve` (backend `fake`: no model is loaded) and through nginx (a
plain reverse proxy, bench/nginx.conf.tmpl), with the same load generator in the same run:
wrk (one thread, N connections, closed loop) when installed, else the aiohttp load
generator of bench.load in its own process. Targets run back to back per concurrency, in
a rotating order, after a 1 s warm-up each. Nothing is pinned: engine, proxy, nginx and the
load generator share the machine's cores, which the output says.

Targets: p50 added latency of the proxy over direct < 1 ms; proxy throughput >= 80% of
nginx's. `--profile` then samples the proxy under one load per kind and prints where its
CPU goes (py-spy: `pip install py-spy`, or PY_SPY=path).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import string
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import data, engine
from bench.cpu import CpuMeter, machine_line
from bench.engine import INDEX
from bench.load import Req, run_load
from bench.loopback import LOOPBACK
from bench.proxyproc import proxy_config, proxy_metrics, start_proxy, workdir
from bench.report import fmt_ms, fmt_ratio, log, md_table
from bench.sampling import py_spy, sample_report, sampled
from proxy import beir

HERE = Path(__file__).resolve().parent
TARGET_ADDED_P50_MS = 1.0
TARGET_THROUGHPUT = 0.80
TERMS = ("cancer", "cell", "protein", "gene", "insulin", "vitamin", "virus", "mouse",
         "brain", "heart", "blood", "tumor", "receptor", "immune", "kinase", "obesity",
         "diabetes", "stem", "mutation", "therapy")  # fmt: skip


@dataclass(slots=True)
class Cell:
    kind: str
    conc: int
    target: str
    rps: float
    p50: float
    p95: float
    p99: float
    requests: int
    errors: int
    hop_cpu_us: float  # CPU of the proxy or nginx per request (NaN for direct)
    hop_sys_us: float  # its kernel part
    engine_cpu_us: float
    other_cores: float


def workloads(scifact: beir.Dataset) -> dict[str, list[Req]]:
    ids = list(scifact.corpus)[:200]
    docs = [Req("GET", f"/{INDEX}/_doc/{i}") for i in ids]
    searches = [
        Req("POST", f"/{INDEX}/_search", json.dumps({"query": {"match": {"title": t}}, "size": 3}))
        for t in TERMS
    ]
    return {"doc": docs, "search": searches}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


class Nginx:
    def __init__(self, upstream: str, workdir: Path, workers: int) -> None:
        self.dir = workdir / "nginx"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        host = upstream.split("://", 1)[1].rstrip("/")
        conf = string.Template((HERE / "nginx.conf.tmpl").read_text()).substitute(
            dir=self.dir,
            port=self.port,
            upstream=host,
            workers=workers,
            # As root, nginx would switch its workers to `nobody`; keep them as root so they
            # can write the temp-directory logs (nothing here listens beyond 127.0.0.1).
            user_line="user root;" if os.geteuid() == 0 else "",
        )
        self.conf = self.dir / "nginx.conf"
        self.conf.write_text(conf)
        exe = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = subprocess.Popen(
            [exe, "-c", str(self.conf), "-p", str(self.dir), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.url = f"http://{LOOPBACK}:{self.port}"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"nginx exited: {err}")
            try:
                with socket.create_connection((LOOPBACK, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("nginx did not start listening")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: fast shutdown of master and workers
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- load generation ---------------------------------------------------------------------

_WRK_LUA = """
local reqs = {%s}
local i = 0
local headers = {["Content-Type"] = "application/json"}
request = function()
  i = i + 1
  local r = reqs[(i %% #reqs) + 1]
  return wrk.format(r[1], r[2], headers, r[3])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%%d,"duration_us":%%d,"p50":%%d,"p95":%%d,"p99":%%d,' ..
    '"errors":%%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def _lua_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid Lua string literal for this ASCII


def wrk_script(reqs: list[Req], path: Path) -> Path:
    def item(r: Req) -> str:
        body = _lua_string(r.body) if r.body else "nil"
        return "{" + f"{_lua_string(r.method)}, {_lua_string(r.path)}, {body}" + "}"

    items = ", ".join(item(r) for r in reqs)
    path.write_text(_WRK_LUA % items)
    return path


def run_wrk(
    url: str, script: Path, conc: int, seconds: float, pids: list[int]
) -> tuple[float, float, float, float, int, int]:
    """(req/s, p50, p95, p99 in ms, requests, errors) from one wrk run."""
    cmd = [
        "wrk",
        "-t1",
        f"-c{conc}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids.append(proc.pid)
    out, err = proc.communicate(timeout=seconds + 60)
    line = next((ln for ln in out.splitlines() if ln.startswith("WRKJSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {out[-800:]} {err[-800:]}")
    r = json.loads(line[len("WRKJSON ") :])
    secs = r["duration_us"] / 1e6
    return (
        r["requests"] / secs,
        r["p50"] / 1000,
        r["p95"] / 1000,
        r["p99"] / 1000,
        r["requests"],
        r["errors"],
    )


def run_py(
    url: str, reqs: list[Req], conc: int, seconds: float, pids: list[int], warmup: float
) -> tuple[float, float, float, float, int, int]:
    res = run_load(
        url,
        reqs,
        concurrency=conc,
        duration_s=seconds,
        max_requests=10_000_000,
        grace_s=15,
        warmup_s=warmup,
        timeout_s=30,
        pid_out=pids,
    )
    errors = sum(res.errors.values()) + sum(n for s, n in res.status.items() if s != "200")
    return res.rps, res.p(50), res.p(95), res.p(99), res.completed, errors + res.unfinished


# -- the run -----------------------------------------------------------------------------


def measure(
    kind: str,
    conc: int,
    target: str,
    url: str,
    reqs: list[Req],
    script: Path | None,
    seconds: float,
    hop_pid: int | None,
    engine_pid: int | None,
) -> Cell:
    gen: list[int] = []
    if script is not None:  # wrk: a separate 1 s warm-up run
        run_wrk(url, script, conc, 1, gen)
    meter = CpuMeter({"hop": hop_pid, "engine": engine_pid})
    meter.start()
    if script is not None:
        rps, p50, p95, p99, n, errors = run_wrk(url, script, conc, seconds, gen)
    else:
        rps, p50, p95, p99, n, errors = run_py(url, reqs, conc, seconds, gen, warmup=1.0)
    cpu = meter.stop()
    hop_us = cpu["hop"] / n * 1e6 if hop_pid and n else float("nan")
    sys_us = cpu["hop_sys"] / n * 1e6 if hop_pid and n else float("nan")
    engine_us = cpu["engine"] / n * 1e6 if engine_pid and n else float("nan")
    # The load generator is part of "other" here: subtract nothing we cannot attribute.
    return Cell(kind, conc, target, rps, p50, p95, p99, n, errors, hop_us, sys_us, engine_us,
                cpu["other_cores"])  # fmt: skip


def median_cell(cells: list[Cell]) -> Cell:
    first = cells[0]

    def med(attr: str) -> float:
        return statistics.median(getattr(c, attr) for c in cells)

    return Cell(
        first.kind,
        first.conc,
        first.target,
        med("rps"),
        med("p50"),
        med("p95"),
        med("p99"),
        sum(c.requests for c in cells),
        sum(c.errors for c in cells),
        med("hop_cpu_us"),
        med("hop_sys_us"),
        med("engine_cpu_us"),
        med("other_cores"),
    )


def profile_proxy(
    engine_url: str, work: Path, loads: dict[str, list[Req]], seconds: float, use_wrk: bool
) -> str:
    """Where the proxy's CPU goes under one load per kind (8 connections), by py-spy."""
    out = []
    for kind, reqs in loads.items():
        samples = work / f"proxy-{kind}.txt"
        proxy = start_proxy(proxy_config(engine_url), work, name="proxy-profiled")
        try:
            script = wrk_script(reqs, work / f"prof-{kind}.lua") if use_wrk else None
            measure(kind, 8, "proxy", proxy.url, reqs, script, 1, proxy.pid, None)  # warm-up
            with sampled(proxy.pid, samples, seconds):
                cell = measure(kind, 8, "proxy", proxy.url, reqs, script, seconds, None, None)
        finally:
            proxy.stop()
        report = sample_report(samples)
        out.append(f"#### {kind}: {cell.requests} requests, 8 connections\n\n{report}\n")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.passthrough", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="concurrency 1 and 8, 3 s runs")
    parser.add_argument("--duration", type=float, help="seconds per measurement (default 8)")
    parser.add_argument("--rounds", type=int, help="repeat each measurement, report medians")
    parser.add_argument("--nginx-workers", type=int, default=1)
    parser.add_argument(
        "--proxy-workers", type=int, default=1, help="the proxy's listen.workers (processes)"
    )
    parser.add_argument("--proxy-log-level", default="INFO", help="the proxy's log level")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--profile", action="store_true", help="also profile the proxy")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    seconds = args.duration or (3.0 if args.quick else 8.0)
    rounds = args.rounds or (1 if args.quick else 2)
    levels = (1, 8) if args.quick else (1, 8, 32)
    use_wrk = args.loadgen == "wrk" or (args.loadgen == "auto" and shutil.which("wrk"))
    if args.loadgen == "wrk" and not shutil.which("wrk"):
        sys.exit("wrk not found (apt-get install -y wrk)")
    if not shutil.which("nginx") and not Path("/usr/sbin/nginx").exists():
        sys.exit("nginx not found (apt-get install -y nginx)")
    if args.profile and py_spy() is None:
        sys.exit("--profile needs py-spy (pip install py-spy, or set PY_SPY to its path)")

    t_start = time.monotonic()
    engine_url = engine.ensure_engine()
    scifact = data.load_scifact()
    engine.index_scifact(engine_url, scifact)
    loads = workloads(scifact)
    engine_pid = engine.engine_pid()
    machine_before = machine_line()

    with workdir("bench-passthrough-", keep=args.keep) as work:
        cfg = proxy_config(engine_url, log_level=args.proxy_log_level)
        cfg["listen"]["workers"] = args.proxy_workers
        proxy = start_proxy(cfg, work)
        nginx = Nginx(engine_url, work, args.nginx_workers)
        targets = {
            "direct": (engine_url, None),
            "proxy": (proxy.url, proxy.pid),
            "nginx": (nginx.url, nginx.pid),
        }
        order = list(targets)
        raw: dict[tuple[str, int, str], list[Cell]] = {}
        try:
            for kind, reqs in loads.items():
                script = wrk_script(reqs, work / f"{kind}.lua") if use_wrk else None
                for conc in levels:
                    for r in range(rounds):
                        rotated = order[r % 3 :] + order[: r % 3]
                        for target in rotated:
                            url, hop = targets[target]
                            log(f"{kind} c={conc} {target} (round {r + 1}/{rounds})")
                            cell = measure(
                                kind, conc, target, url, reqs, script, seconds, hop, engine_pid
                            )
                            raw.setdefault((kind, conc, target), []).append(cell)
            counters = proxy_metrics(proxy.url)
        finally:
            nginx.stop()
            proxy.stop()
        profile = profile_proxy(engine_url, work, loads, seconds, bool(use_wrk)) if (
            args.profile
        ) else ""  # fmt: skip

    cells = {k: median_cell(v) for k, v in raw.items()}
    print(report(cells, loads, levels, args, seconds, rounds, bool(use_wrk), machine_before))
    print(f"\nProxy counters after the run: `{json.dumps(counters)}`")
    print(f"\nTotal bench time {time.monotonic() - t_start:.0f} s.")
    if profile:
        print("\n### Where the proxy's CPU goes\n")
        print(profile)
    return 0


def report(
    cells: dict[tuple[str, int, str], Cell],
    loads: dict[str, list[Req]],
    levels: tuple[int, ...],
    args: argparse.Namespace,
    seconds: float,
    rounds: int,
    use_wrk: bool,
    machine: str,
) -> str:
    gen = (
        "wrk 1 thread, N keep-alive connections, closed loop"
        if use_wrk
        else "aiohttp load generator (own process), N connections, closed loop"
    )
    out = [
        "## Pass-through: direct vs rerank-proxy vs nginx",
        "",
        f"- Machine: {machine}. Nothing pinned: OpenSearch, the proxy, nginx and the load"
        " generator share these cores (and other work on the box: `other cores` is the"
        " average CPU used by processes outside this benchmark during each measurement).",
        f"- Load: {gen}; {seconds:.0f} s per measurement after a 1 s warm-up, {rounds}"
        " round(s) in rotating target order, medians reported.",
        "- Traffic: `doc` = `GET /bench-scifact/_doc/ID` over 200 ids (~1-2 KB JSON);"
        " `search` = `POST /bench-scifact/_search` `match` on title, size 3, an index the"
        " proxy config leaves disabled (it is parsed, then passed through).",
        f"- Proxy: `python -m proxy serve` with {args.proxy_workers} worker process(es) (CPU"
        " counted over the supervisor's process tree), backend `fake`, log level"
        f" {args.proxy_log_level} (one access line per request to a file).",
        f"- nginx: {args.nginx_workers} worker, access log on, HTTP/1.1 upstream keepalive,"
        " `proxy_buffering off` and `proxy_request_buffering off` (our proxy streams both"
        " ways), no per-connection request cap (bench/nginx.conf.tmpl).",
        "- `hop CPU` = CPU time of the proxy (or nginx master+worker) per request.",
        "",
        md_table(
            [
                "traffic",
                "conc",
                "target",
                "req/s",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "errors",
                "hop CPU µs/req (kernel part)",
                "engine CPU µs/req",
                "other cores",
            ],
            [
                (
                    c.kind,
                    c.conc,
                    c.target,
                    f"{c.rps:.0f}",
                    fmt_ms(c.p50),
                    fmt_ms(c.p95),
                    fmt_ms(c.p99),
                    c.errors,
                    "-" if c.target == "direct" else f"{c.hop_cpu_us:.0f} ({c.hop_sys_us:.0f})",
                    f"{c.engine_cpu_us:.0f}",
                    f"{c.other_cores:.2f}",
                )
                for c in cells.values()
            ],
        ),
        "",
        "### Against the targets",
        "",
    ]
    rows = []
    verdicts = []
    for kind in loads:
        for conc in levels:
            d, p, n = (cells[(kind, conc, t)] for t in ("direct", "proxy", "nginx"))
            added = p.p50 - d.p50
            frac = p.rps / n.rps if n.rps else float("nan")
            ok_lat = added < TARGET_ADDED_P50_MS
            ok_tp = frac >= TARGET_THROUGHPUT
            verdicts.append(ok_lat and ok_tp)
            rows.append(
                (
                    kind,
                    conc,
                    f"{added:+.2f}",
                    f"{n.p50 - d.p50:+.2f}",
                    f"{(added / TARGET_ADDED_P50_MS):.2f}x {'PASS' if ok_lat else 'FAIL'}",
                    f"{frac:.0%} ({fmt_ratio(frac / TARGET_THROUGHPUT)} of target)"
                    f" {'PASS' if ok_tp else 'FAIL'}",
                    f"{p.rps / d.rps:.0%}",
                    "yes" if p.errors == 0 and n.errors == 0 and d.errors == 0 else "NO",
                )
            )
    out.append(
        md_table(
            [
                "traffic",
                "conc",
                "proxy added p50 ms",
                "nginx added p50 ms",
                "added / 1 ms target",
                "proxy req/s vs nginx (>= 80%)",
                "proxy req/s vs direct",
                "error-free",
            ],
            rows,
        )
    )
    out.append("")
    out.append(
        f"Verdict: {sum(verdicts)}/{len(verdicts)} cells meet both targets"
        f" (p50 added < {TARGET_ADDED_P50_MS:g} ms and throughput >= {TARGET_THROUGHPUT:.0%}"
        " of nginx)."
    )
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
