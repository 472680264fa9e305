"""Hostile-request benchmark: the worst single requests must not stall everyone else.

    python -m bench.hostile [--quick] [--base COMMIT] [--keep]

Two proxies (`python -m proxy serve`, backend `fake`, rules on `books` and `huge` with
`fields: [title]`) run at once in front of one small upstream of our own (raw asyncio on
loopback, its own process): this checkout, and the commit before the fixes of #12 (the
competitor) from a `git worktree` in /tmp, started with that tree as working directory and
`PYTHONPATH` so it imports the old `proxy`, not the editable install. Per attack and proxy, a
process of its own sends sequential `GET /_rerank_proxy/health` probes on one keep-alive
connection while this process runs the attack in a loop: a gzip bomb search body, a search
whose engine response is 20 MiB, 200 slowloris connections, 50 clients that never read a big
pass-through body. The report (probe p50/p99/max, failed probes, the proxy's RSS, what the
attack got, the counters that moved) goes to stdout and `bench/results/hostile.md`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import http.client
import json
import multiprocessing as mp
import os
import random
import shlex
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.cpu import machine_line, wait_idle
from bench.loopback import LOOPBACK
from bench.memory import Sampler
from bench.paths import REPO
from bench.proxyproc import ProxyProcess, proxy_config, proxy_metrics, start_proxy, workdir
from bench.report import MB, fmt_ms, fmt_ratio, log, md_table, percentile

BASE = "ea99a28"  # the commit before "Reliability: no single request stalls or pins the proxy"
BASE_TREE = Path("/tmp/hostile-base")
PHASES = ("idle", "gzip-bomb", "huge-window", "slowloris", "unread")
TIMEOUT_S = 5.0  # listen.header_timeout and body_timeout (new only), send_timeout (both)
HUGE_HITS, HUGE_FLOATS = 100, 23_000  # ~20 MiB of window response
BIG_BYTES, BOMB_BYTES = 32 * 2**20, 28 * 2**20
RULES = [
    {"match": ["books"], "fields": ["title"], "window": 10},
    {"match": ["huge"], "fields": ["title"], "window": HUGE_HITS},
]
QUERY = json.dumps({"query": {"match": {"title": "red apple"}}}).encode()

# -- the upstream (its own process) ------------------------------------------------------


def _http(body: bytes) -> bytes:
    head = "HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=UTF-8\r\n"
    return (
        f"{head}X-Elastic-Product: Elasticsearch\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


def _search(index: str, n: int, floats: int, rng: random.Random) -> bytes:
    words = ("red", "apple", "pear", "green", "tart", "plum", "pie", "fig", "jam", "cake")
    hits = []
    for i in range(n):
        src: dict[str, Any] = {"title": " ".join(rng.choice(words) for _ in range(4))}
        if floats:
            src["vec"] = [round(rng.random(), 6) for _ in range(floats)]
        hits.append({"_index": index, "_id": f"d{i}", "_score": float(n - i), "_source": src})
    shards = {"total": 1, "successful": 1, "skipped": 0, "failed": 0}
    total = {"value": n, "relation": "eq"}
    doc = {"took": 1, "timed_out": False, "_shards": shards,
           "hits": {"total": total, "max_score": float(n), "hits": hits}}  # fmt: skip
    return json.dumps(doc, separators=(",", ":")).encode()


async def _drop_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> None:
    """Read a request body (Content-Length or chunked) and drop it, never inflating it."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while size := int((await reader.readline()).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        return
    left = int(headers.get("content-length", "0"))
    while left:
        if not (chunk := await reader.read(min(left, 1 << 20))):
            raise ConnectionResetError
        left -= len(chunk)


def upstream_main(ready: Any) -> None:
    """Process target: serve on a free loopback port and put the port on `ready`."""
    rng = random.Random(12)
    small = _http(_search("books", 10, 0, rng))
    huge = _http(_search("huge", HUGE_HITS, HUGE_FLOATS, rng))
    big = _http(b'{"pad":"' + b"x" * (BIG_BYTES - 10) + b'"}')
    root = _http(b'{"name":"hostile","version":{"number":"7.10.2"}}')

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ValueError):
            while True:
                line, *rest = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                target = line.split(" ")[1]
                headers = {
                    k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in rest)
                }
                await _drop_body(reader, headers)
                search = "_search" in target
                writer.write(huge if target.startswith("/huge/") and search else big if
                             target.startswith("/big/") else small if search else root)  # fmt: skip
                await writer.drain()
        writer.close()

    async def serve() -> None:
        server = await asyncio.start_server(handle, LOOPBACK, 0, backlog=1024)
        ready.put(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    asyncio.run(serve())


# -- the probe (its own process) ---------------------------------------------------------


def probe_main(port: int, n: int, interval: float, deadline: float, out: Any) -> None:
    """Process target: up to `n` sequential health probes on one keep-alive connection until
    `deadline` (time.monotonic: one clock for all processes); puts (ms of successful probes,
    ms waited by failed ones, failures by kind) on `out`. Each probe may wait as long as the
    whole phase lasts, so one that starts just before the deadline is not cut short."""
    ok: list[float] = []
    waited: list[float] = []  # ms until a failed probe gave up
    failed: Counter[str] = Counter()
    conn, limit = None, deadline - time.monotonic()
    while len(ok) + len(waited) < n and time.monotonic() < deadline:
        t0 = time.perf_counter()
        try:
            if conn is None:
                conn = http.client.HTTPConnection(LOOPBACK, port, timeout=limit)
            conn.request("GET", "/_rerank_proxy/health")
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                failed[f"HTTP {resp.status}"] += 1
        except (OSError, http.client.HTTPException) as exc:
            failed["timeout" if isinstance(exc, TimeoutError) else type(exc).__name__] += 1
            conn.close() if conn is not None else None
            conn = None
        ms = (time.perf_counter() - t0) * 1000
        (waited if sum(failed.values()) > len(waited) else ok).append(ms)
        time.sleep(interval)
    out.put((ok, waited, dict(failed)))


def run_probe(url: str, args: Any) -> tuple[list[float], list[float], dict[str, int]]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    deadline = time.monotonic() + args.seconds
    port = int(url.rsplit(":", 1)[1])
    p = ctx.Process(target=probe_main, args=(port, args.probes, args.interval, deadline, q))
    p.start()
    result = q.get(timeout=2 * args.seconds + 60)
    p.join()
    return result


# -- the attacks (this process) ----------------------------------------------------------


async def search_loop(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str], st: Counter
) -> None:
    while True:
        try:
            async with session.post(url, data=body, headers=headers) as resp:
                async for _ in resp.content.iter_chunked(1 << 20):
                    pass
                st[f"HTTP {resp.status} X-Rerank {resp.headers.get('X-Rerank', '-')}"] += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            st[f"error {type(exc).__name__}"] += 1
            await asyncio.sleep(0.1)


async def reconnecting(port: int, delay: float, st: Counter, once: Any) -> None:
    """`once(reader, writer)` on a fresh connection, again and again (after `delay`)."""
    await asyncio.sleep(delay)  # stagger the connects
    while True:
        writer = None
        try:
            reader, writer = await asyncio.open_connection(LOOPBACK, port, limit=1024)
            await once(reader, writer, st)
        except OSError as exc:
            st[f"error {type(exc).__name__}"] += 1
            await asyncio.sleep(1.0)
        finally:
            if writer is not None:
                writer.transport.abort()


async def slowloris(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, st: Counter
) -> None:
    """One byte of a request head a second, until the proxy answers or closes."""
    st["connects"] += 1
    answer = asyncio.ensure_future(reader.read(1024))
    try:
        for b in b"GET /books/_search HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000:
            writer.write(bytes([b]))
            await writer.drain()
            await asyncio.wait([answer], timeout=1.0)
            if answer.done():
                st["cut: " + (answer.result()[:12].decode(errors="replace") or "EOF")] += 1
                return
    finally:
        answer.cancel()


async def unread(_: asyncio.StreamReader, writer: asyncio.StreamWriter, st: Counter) -> None:
    """Ask for the big pass-through body and never read it (for `send_timeout` + 2 s)."""
    writer.write(b"GET /big/_doc/1 HTTP/1.1\r\nHost: x\r\n\r\n")
    st["requests"] += 1
    await asyncio.sleep(TIMEOUT_S + 2)


def attacks(phase: str, url: str, session: aiohttp.ClientSession, bomb: bytes, st: Counter):
    port, json_h = int(url.rsplit(":", 1)[1]), {"Content-Type": "application/json"}
    if phase == "gzip-bomb":
        h = {**json_h, "Content-Encoding": "gzip"}
        return [search_loop(session, f"{url}/books/_search", bomb, h, st) for _ in range(4)]
    if phase == "huge-window":
        return [search_loop(session, f"{url}/huge/_search", QUERY, json_h, st) for _ in range(4)]
    if phase == "slowloris":
        return [reconnecting(port, i * 0.005, st, slowloris) for i in range(200)]
    if phase == "unread":
        return [reconnecting(port, i * 0.01, st, unread) for i in range(50)]
    return []


# -- the proxies -------------------------------------------------------------------------


def git(*cmd: str, check: bool = True) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *cmd], check=check, capture_output=True, text=True
    ).stdout.strip()


def start_base(config: dict[str, Any], work: Path) -> ProxyProcess:
    """As `start_proxy`, but importing `proxy` from BASE_TREE (its cwd and PYTHONPATH)."""
    env = {"PYTHONPATH": str(BASE_TREE)}
    where = subprocess.run(
        [sys.executable, "-c", "import proxy; print(proxy.__file__)"],
        cwd=BASE_TREE, env={**os.environ, **env}, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    if not where.startswith(f"{BASE_TREE}/"):
        raise RuntimeError(f"the base proxy would import {where}, not {BASE_TREE}")
    return start_proxy(config, work, name="proxy-base", cwd=BASE_TREE, env=env)


def configs(upstream: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(new, base): the base gets only keys its strict config loader knows."""
    base = proxy_config(upstream, rules=RULES, log_level="WARNING")
    base["upstream"].update({"read_timeout": 60, "probe_interval": 0})
    base["listen"]["send_timeout"] = TIMEOUT_S
    new = json.loads(json.dumps(base))
    new["listen"].update({"header_timeout": TIMEOUT_S, "body_timeout": TIMEOUT_S})
    return new, base


# -- one phase ---------------------------------------------------------------------------


@dataclass
class Row:
    phase: str
    target: str
    ok: list[float]  # ms of successful probes
    waited: list[float]  # ms until a failed probe gave up (its latency is at least that)
    failed: dict[str, int]
    rss_peak: int
    fds: int
    attack: Counter
    counters: dict[str, float]

    def p(self, q: float) -> float:
        """Percentile over all probes (a lower bound when some failed)."""
        return percentile(self.ok + self.waited, q)

    def ms(self, q: float) -> str:
        return ("≥" if self.waited else "") + fmt_ms(self.p(q))

    def cells(self) -> list[Any]:
        failed = ", ".join(f"{n} {k}" for k, n in self.failed.items()) or 0
        ms = [self.ms(q) for q in (50, 99, 100)]
        return [self.phase, self.target, len(self.ok), failed, *ms, self.rss_peak // MB, self.fds]


def counters(url: str) -> dict[str, float]:
    try:
        return proxy_metrics(url)
    except (OSError, RuntimeError):
        return {}


async def run_phase(phase: str, target: str, proxy: ProxyProcess, sampler: Sampler,
                    bomb: bytes, args: Any) -> Row:  # fmt: skip
    import psutil

    before, st = counters(proxy.url), Counter()
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=300),
        auto_decompress=False, trust_env=False, skip_auto_headers=("Accept-Encoding",),
    ) as session:  # fmt: skip
        tasks = [asyncio.create_task(a) for a in attacks(phase, proxy.url, session, bomb, st)]
        await asyncio.sleep(args.warmup if tasks else 0)
        sampler.peaks[phase], sampler.phase = sampler.rss(), phase
        ok, waited, failed = await asyncio.to_thread(run_probe, proxy.url, args)
        fds = -1
        with contextlib.suppress(psutil.Error):
            fds = psutil.Process(proxy.pid).num_fds()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    sampler.phase = f"{phase} (after)"
    idle_s = await asyncio.to_thread(wait_idle, proxy.pid, max_s=120)
    after = counters(proxy.url)
    moved = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    r = Row(phase, target, ok, waited, failed, sampler.peaks.get(phase, 0), fds, st, moved)
    log(f"{phase:11s} {target}: {len(ok)} ok, {len(waited)} failed; p50 {r.ms(50)} p99"
        f" {r.ms(99)} max {r.ms(100)} ms; RSS {r.rss_peak / MB:.0f} MB; idle after {idle_s:.0f} s")  # fmt: skip
    return r


# -- the run -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.hostile", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="60 probes per phase, not 200")
    parser.add_argument("--base", default=BASE, help=f"the competitor's commit ({BASE})")
    parser.add_argument("--phases", default=",".join(PHASES[1:]), help="attacks to run")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    phases = ("idle", *(p for p in args.phases.split(",") if p in PHASES[1:]))
    args.argv = sys.argv[1:] if argv is None else argv
    # probes, s between them, longest phase (s), attack before probing (s)
    args.probes, args.interval, args.seconds, args.warmup = (
        (60, 0.1, 15.0, 1.0) if args.quick else (200, 0.05, 30.0, 2.0)
    )
    started, machine_before = time.monotonic(), machine_line()
    ctx = mp.get_context("spawn")
    ready = ctx.Queue()
    upstream = ctx.Process(target=upstream_main, args=(ready,), daemon=True)
    upstream.start()
    upstream_url = f"http://{LOOPBACK}:{ready.get(timeout=120)}"
    bomb = gzip.compress(b"[" + b"0.5," * (BOMB_BYTES // 4 - 1) + b"0.5]", compresslevel=9)
    if BASE_TREE.exists():
        git("worktree", "remove", "--force", str(BASE_TREE), check=False)
    git("worktree", "add", "--detach", str(BASE_TREE), args.base)
    base_sha = git("rev-parse", "--short", args.base)
    rows: list[Row] = []
    try:
        with workdir("bench-hostile-", keep=args.keep) as work:
            new_cfg, base_cfg = configs(upstream_url)
            proxies = {"new": start_proxy(new_cfg, work), "old": start_base(base_cfg, work)}
            samplers = {k: Sampler(p.pid, interval=0.1, phase="start") for k, p in proxies.items()}
            for s in samplers.values():
                s.start()
            try:
                for i, phase in enumerate(phases):
                    for t in ("new", "old") if i % 2 == 0 else ("old", "new"):
                        rows.append(
                            asyncio.run(run_phase(phase, t, proxies[t], samplers[t], bomb, args))
                        )
            finally:
                for s in samplers.values():
                    s.stop()
                for p in proxies.values():
                    p.stop()
    finally:
        upstream.terminate()
        git("worktree", "remove", "--force", str(BASE_TREE), check=False)
    text = report(rows, args, base_sha, machine_before, len(bomb), time.monotonic() - started)
    print(text)
    (REPO / "bench" / "results" / "hostile.md").write_text(text + "\n")
    return 0


def report(rows: list[Row], args: Any, base: str, machine: str, bomb: int, elapsed: float) -> str:
    by = {(r.phase, r.target): r for r in rows}

    def ratio(o: Row, n: Row) -> str:
        value = fmt_ratio(o.p(99) / n.p(99))
        return value if not (o.waited or n.waited) else ("≥" if not n.waited else "~") + value

    out = [
        "## Hostile requests: health-probe latency, new code vs the commit before the fixes",
        "",
        f"- Command: `{shlex.join(['python', '-m', 'bench.hostile', *args.argv])}`",
        f"- Machine at the start: {machine}; at the end: {machine_line()}.",
        f"- Proxies: `python -m proxy serve`, backend `fake`, rules `books` (window 10) and `huge`"
        f" (window {HUGE_HITS}) on `fields: [title]`. `new` = this checkout, `old` = `{base}` from"
        " a git worktree (its cwd and PYTHONPATH; `proxy.__file__` checked). Both"
        f" `send_timeout: {TIMEOUT_S:g}`; new only `header_timeout`, `body_timeout` {TIMEOUT_S:g}"
        " (the old config has no such keys). Both run all along, one attacked at a time (order"
        " alternating per phase), then left to go idle (queued work finishes) before the next.",
        f"- Upstream (raw asyncio, own process): 10-hit searches; `huge/_search` {HUGE_HITS} hits x"
        f" {HUGE_FLOATS} floats in `_source` (~{HUGE_HITS * HUGE_FLOATS * 9 / 2**20:.0f} MiB);"
        f" `big/_doc/1` {BIG_BYTES >> 20} MiB.",
        f"- Probe (own process): sequential `GET /_rerank_proxy/health` on one keep-alive"
        f" connection, {args.interval * 1000:.0f} ms apart, up to {args.probes} probes or"
        f" {args.seconds:g} s (no probe starts later), after {args.warmup:g} s of attack. A probe waits"
        f" up to {args.seconds:g} s; a failed one counts with the time it waited (≥: lower bound).",
        f"- Attacks, in a loop: `gzip-bomb` 4 clients, {bomb / 1024:.0f} KiB gzip body"
        f" (`Content-Encoding: gzip`) inflating to a {BOMB_BYTES >> 20} MiB JSON array;"
        " `huge-window` 4 clients search `huge`; `slowloris` 200 connections sending a head byte"
        " a second; `unread` 50 clients that never read `big/_doc/1` (reconnecting after"
        " send_timeout + 2 s). RSS: peak of the proxy's process tree during the probes (MB ="
        " 10^6 B; cumulative: memory a phase took is often kept); fds: open at the probes' end.",
        "",
        md_table(
            ["phase", "code", "probes ok", "failed", "p50 ms", "p99 ms", "max ms", "RSS MB", "fds"],
            [r.cells() for r in rows],
        ),
        "",
        "### Old p99 / new p99",
        "",
        md_table(
            ["phase", "old p99 ms", "new p99 ms", "old / new", "failed old / new"],
            [
                (ph, o.ms(99), n.ms(99), ratio(o, n), f"{len(o.waited)} / {len(n.waited)}")
                for ph in dict.fromkeys(r.phase for r in rows)
                for o, n in [(by[(ph, "old")], by[(ph, "new")])]
            ],
        ),
        "",
        "### What the attacks got, and the proxy counters that moved",
        "",
    ]
    for r in rows:
        got = ", ".join(f"{k}: {v}" for k, v in sorted(r.attack.items())) or "nothing answered"
        moved = ", ".join(f"`{k}` +{v:g}" for k, v in sorted(r.counters.items())) or "-"
        out += [] if r.phase == "idle" else [f"- {r.phase}, {r.target}: {got}. Counters: {moved}"]
    out += ["", f"Total bench time {elapsed:.0f} s."]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
