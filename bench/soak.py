"""Soak benchmark: minutes of mixed traffic through the proxy; errors, lost writes, RSS drift.

    python -m bench.soak [--minutes 10 | --quick] [--variant default|tiny-cache|model-server|
                         redis|all] [--model tiny|exact|fake] [--workers 8]

The real OpenSearch (scripts/engine) with SciFact in `bench-scifact` (alias `bench-soak`,
reranked: window 20, fields title and text) behind `python -m proxy serve`. `--workers`
aiohttp clients in a closed loop, no pacing, send a mix of: reranked searches (SciFact
queries, most from a small repeated set so the score cache answers, some never seen;
`from`/`size` varied, in the body or the URL, pages inside the window and a few past it),
`_msearch` with reranked items, pass-through GETs (`_doc/ID` of the corpus and of the
scratch documents just written, `_cat/indices`, `_cluster/health`) and `_bulk` `create`s of
uniquely identified documents into a scratch index. Every id the engine acknowledged as
created (item status 201) is kept; at the end the scratch index is refreshed and its
`_count` and an `_mget` of every acknowledged id (sent to the engine directly) must agree.

Variants (each a fresh proxy, the same traffic): `default`; `tiny-cache` (`model.cache_size`
64 entries, under four windows: entries are evicted all the time); `model-server` (the proxy
on `backend: remote` against `rerank-proxy model-server` in its own process, its RSS sampled
too); `redis` (`cache.redis_url` on a redis-server started here in a temporary directory,
and the 64-entry LRU: with the default LRU one proxy never reads a score back from Redis,
every pair it wrote being still in its own LRU).

Errors, by kind: non-2xx status, connection errors, a body that does not parse, a response
of the wrong shape (hit count, `found`, `_msearch` item errors, `_bulk` item failures), and a
repeated search whose reranked order changed. RSS (psutil, process and children) is sampled
every 2 s. "Flat after warm-up" is the median RSS of the last minute (last quarter for short
runs) over the median right after warm-up (the first quarter, at most 2 minutes); the score
cache filling towards `cache_size` is growth by design and is shown next to it. Written to
`bench/results/soak-<variant>.md`; exit 1 if any variant had errors or lost documents.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import data, engine
from bench.cpu import machine_line
from bench.loopback import http, http_json
from bench.memory import Sampler
from bench.paths import CACHE, REPO
from bench.proxyproc import proxy_config, start_proxy, workdir
from bench.report import MB, fmt_ms, log, md_table, percentile
from proxy.config import ModelConfig

VARIANTS = ("default", "tiny-cache", "model-server", "redis")
ALIAS = "bench-soak"
SCRATCH = "bench-soak-scratch"
WINDOW = 20
HOT = 30  # repeated queries (cache hits)
TINY_CACHE = 64
FLAT = 1.05  # last-minute RSS / RSS after warm-up: "flat"
SAMPLE_S = 2.0
#: (kind, weight) of the traffic; searches split further into repeated and fresh
MIX = (("search", 50), ("msearch", 10), ("get doc", 20), ("cat", 5), ("health", 5), ("bulk", 10))
FRESH = 0.2  # share of searches with a query the proxy has not seen
PAGES = ((0, 10), (10, 10), (0, 20), (5, 5), (15, 5), (0, 3), (18, 2), (3, 7))
PAST_WINDOW = ((20, 10), (15, 10))  # from + size > window: passed through (skipped)
SUFFIXES = ("evidence", "patients", "risk", "mechanism", "trial", "cells", "effect", "study")


@dataclass(slots=True)
class Tally:
    """What the traffic saw: latencies and counts per kind, errors by kind with an example."""

    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    x_rerank: Counter[str] = field(default_factory=Counter)
    acked: list[str] = field(default_factory=list)
    bulk_docs: int = 0

    def error(self, kind: str, what: str, example: str) -> None:
        key = f"{kind}: {what}"
        self.errors[key] += 1
        self.examples.setdefault(key, example[:400])

    @property
    def requests(self) -> int:
        return sum(len(v) for v in self.latencies.values()) + self.connection_errors

    @property
    def connection_errors(self) -> int:
        return sum(n for k, n in self.errors.items() if "connection" in k)


class Traffic:
    """The mixed closed-loop load; one instance per variant run."""

    def __init__(self, base: str, queries: list[str], doc_ids: list[str], tag: str) -> None:
        self.base = base
        self.hot = queries[:HOT]
        self.pool = queries[HOT:]
        self.doc_ids = doc_ids
        self.tag = tag
        self.fresh_n = 0
        self.orders: dict[str, dict[int, tuple[str, float]]] = {}  # query -> rank -> hit
        self.t = Tally()

    def fresh_query(self) -> str:
        i, self.fresh_n = self.fresh_n, self.fresh_n + 1
        base = self.pool[i % len(self.pool)]
        rnd = i // len(self.pool)
        return base if rnd == 0 else f"{base} {SUFFIXES[rnd % len(SUFFIXES)]} {rnd}"

    async def call(
        self, session: Any, kind: str, method: str, path: str, body: bytes | None = None
    ) -> tuple[int, dict[str, str], Any] | None:
        """One request; its latency and errors are recorded. (status, headers, JSON) or None."""
        ctype = (
            "application/x-ndjson" if path.endswith(("_bulk", "_msearch")) else "application/json"
        )
        headers = {"Content-Type": ctype} if body is not None else {}
        what = f"{method} {path}" + (f" {body[:200]!r}" if body else "")
        t0 = time.perf_counter()
        try:
            async with session.request(method, self.base + path, data=body, headers=headers) as r:
                raw = await r.read()
                status, resp_headers = r.status, dict(r.headers)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.t.error(kind, f"connection {type(exc).__name__}", f"{what}: {exc}")
            return None
        self.t.latencies.setdefault(kind, []).append((time.perf_counter() - t0) * 1000)
        if not 200 <= status < 300:
            self.t.error(kind, f"HTTP {status}", f"{what} -> {raw[:300]!r}")
            return None
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            self.t.error(kind, "unparsable body", f"{what} -> {exc}: {raw[:300]!r}")
            return None
        return status, resp_headers, doc

    def hits_ok(
        self, kind: str, doc: Any, from_: int, size: int, what: str
    ) -> list[tuple[str, float]] | None:
        """The page's (_id, _score)s if it has as many hits as `from`/`size` and the total
        allow; else None, and the error is counted."""
        hits = doc.get("hits") if isinstance(doc, dict) else None
        if not isinstance(hits, dict) or not isinstance(hits.get("hits"), list):
            self.t.error(kind, "no hits.hits", f"{what} -> {str(doc)[:300]}")
            return None
        total = hits.get("total", {})
        n = min(int(total.get("value", 0)), 10_000) if isinstance(total, dict) else 0
        expect = size if total.get("relation") == "gte" else min(size, max(0, n - from_))
        ids = [(h.get("_id"), h.get("_score")) for h in hits["hits"]]
        if len(ids) != expect:
            self.t.error(kind, "wrong hit count", f"{what}: {len(ids)} hits, expected {expect}")
            return None
        return ids

    async def search(self, session: Any, rng: random.Random) -> None:
        fresh = rng.random() < FRESH
        query = self.fresh_query() if fresh else rng.choice(self.hot)
        kind = "search (fresh)" if fresh else "search (repeat)"
        from_, size = rng.choice(PAST_WINDOW if rng.random() < 0.05 else PAGES)
        body: dict[str, Any] = {
            "query": {"multi_match": {"query": query, "fields": ["title", "text"]}}
        }
        path = f"/{ALIAS}/_search"
        if rng.random() < 0.2:
            path += f"?from={from_}&size={size}"
        else:
            body.update({"from": from_, "size": size})
        raw = json.dumps(body).encode()
        got = await self.call(session, kind, "POST", path, raw)
        if got is None:
            return
        _, headers, doc = got
        outcome = headers.get("X-Rerank", "-")
        reason = headers.get("X-Rerank-Reason")
        self.t.x_rerank[f"{kind} {outcome}" + (f" ({reason})" if reason else "")] += 1
        ids = self.hits_ok(kind, doc, from_, size, f"POST {path} {raw!r}")
        if ids is None or fresh or outcome != "applied":
            return
        order = self.orders.setdefault(query, {})
        for rank, hit in enumerate(ids, from_):
            seen = order.setdefault(rank, hit)
            if seen[0] != hit[0]:
                self.t.error(
                    kind,
                    "reranked order changed",
                    f"POST {path} {raw!r}: rank {rank} is {hit} (_id, _score), was {seen}",
                )
                order[rank] = hit

    async def msearch(self, session: Any, rng: random.Random) -> None:
        items = []
        lines = []
        index_in_path = rng.random() < 0.5
        for _ in range(rng.randint(2, 4)):
            query = self.fresh_query() if rng.random() < FRESH else rng.choice(self.hot)
            from_, size = rng.choice(PAGES)
            items.append((from_, size))
            lines.append(json.dumps({} if index_in_path else {"index": ALIAS}))
            match = {"multi_match": {"query": query, "fields": ["title", "text"]}}
            lines.append(json.dumps({"query": match, "from": from_, "size": size}))
        path = f"/{ALIAS}/_msearch" if index_in_path else "/_msearch"
        raw = ("\n".join(lines) + "\n").encode()
        got = await self.call(session, "msearch", "POST", path, raw)
        if got is None:
            return
        _, headers, doc = got
        self.t.x_rerank[f"msearch {headers.get('X-Rerank', '-')}"] += 1
        responses = doc.get("responses") if isinstance(doc, dict) else None
        if not isinstance(responses, list) or len(responses) != len(items):
            self.t.error("msearch", "wrong item count", f"POST {path} -> {str(doc)[:300]}")
            return
        for (from_, size), item in zip(items, responses, strict=True):
            if not isinstance(item, dict) or "error" in item or item.get("status", 200) != 200:
                self.t.error("msearch", "item error", f"POST {path} -> {str(item)[:300]}")
            else:
                self.hits_ok("msearch", item, from_, size, f"POST {path} item")

    async def get_doc(self, session: Any, rng: random.Random) -> None:
        scratch = bool(self.t.acked) and rng.random() < 0.5
        index, doc_id = (
            (SCRATCH, rng.choice(self.t.acked[-200:]))
            if scratch
            else (
                engine.INDEX,
                rng.choice(self.doc_ids),
            )
        )
        path = f"/{index}/_doc/{doc_id}"
        got = await self.call(session, "get doc", "GET", path)
        if got is not None and (got[2].get("found") is not True or got[2].get("_id") != doc_id):
            self.t.error("get doc", "not found", f"GET {path} -> {str(got[2])[:300]}")

    async def cat(self, session: Any, rng: random.Random) -> None:
        got = await self.call(session, "cat", "GET", "/_cat/indices?format=json")
        if got is not None and not (isinstance(got[2], list) and got[2]):
            self.t.error("cat", "not a list of indices", str(got[2])[:300])

    async def health(self, session: Any, rng: random.Random) -> None:
        got = await self.call(session, "health", "GET", "/_cluster/health")
        if got is not None and got[2].get("status") not in ("green", "yellow"):
            self.t.error("health", "cluster status", str(got[2])[:300])

    async def bulk(self, session: Any, rng: random.Random) -> None:
        ids = []
        lines = []
        for _ in range(10):
            doc_id = f"{self.tag}-{self.t.bulk_docs}"
            self.t.bulk_docs += 1
            ids.append(doc_id)
            lines.append(json.dumps({"create": {"_index": SCRATCH, "_id": doc_id}}))
            lines.append(json.dumps({"title": rng.choice(self.hot), "text": rng.choice(self.pool)}))
        got = await self.call(session, "bulk", "POST", "/_bulk", ("\n".join(lines) + "\n").encode())
        if got is None:
            return
        items = got[2].get("items") if isinstance(got[2], dict) else None
        if not isinstance(items, list) or len(items) != len(ids):
            self.t.error("bulk", "wrong item count", str(got[2])[:300])
            return
        for doc_id, item in zip(ids, items, strict=True):
            result = item.get("create", {})
            if result.get("status") == 201 and result.get("_id") == doc_id:
                self.t.acked.append(doc_id)
            else:
                err = result.get("error", {})
                what = f"item {result.get('status')} {err.get('type', '') if isinstance(err, dict) else err}"
                self.t.error("bulk", what, f"create {doc_id} -> {str(result)[:300]}")

    async def run(self, workers: int, stop_at: float, on_tick: Any) -> None:
        import aiohttp

        ops = {"search": self.search, "msearch": self.msearch, "get doc": self.get_doc}
        ops.update({"cat": self.cat, "health": self.health, "bulk": self.bulk})
        kinds, weights = zip(*MIX, strict=True)
        timeout = aiohttp.ClientTimeout(total=120)
        connector = aiohttp.TCPConnector(limit=workers + 2)
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, skip_auto_headers=("Accept-Encoding",)
        ) as session:

            async def worker(w: int) -> None:
                rng = random.Random(w)
                while time.monotonic() < stop_at:
                    await ops[rng.choices(kinds, weights)[0]](session, rng)

            ticker = asyncio.create_task(on_tick(session))
            try:
                await asyncio.gather(*(worker(w) for w in range(workers)))
            finally:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker


@dataclass(slots=True)
class Sample:
    t: float
    rss: dict[str, int]
    cache_entries: float
    requests: int
    errors: int


@contextlib.contextmanager
def redis_server() -> Iterator[tuple[str, int]]:
    """A redis-server on the loopback in a temporary directory: (URL, pid)."""
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("--variant redis needs redis-server on PATH (apt-get install redis-server)")
    from tests.integration.redis_support import RedisServer

    with tempfile.TemporaryDirectory(prefix="bench-soak-redis-") as tmp:
        server = RedisServer(binary, Path(tmp))
        server.start()
        assert server.proc is not None
        try:
            yield server.url, server.proc.pid
        finally:
            server.stop()


def scrape(url: str) -> dict[str, float]:
    """The proxy's Prometheus exposition as `name{label="v",...}` -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    status, raw = http("GET", f"{url}/_rerank_proxy/metrics", timeout=30)
    if status != 200:
        raise RuntimeError(f"metrics scrape: HTTP {status}")
    out = {}
    for family in text_string_to_metric_families(raw.decode()):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[s.name + (f"{{{labels}}}" if labels else "")] = s.value
    return out


def verify(engine_url: str, acked: list[str]) -> dict[str, Any]:
    """Refresh the scratch index; `_count` and an `_mget` of every acknowledged id."""
    http_json("POST", f"{engine_url}/{SCRATCH}/_refresh")
    count = http_json("GET", f"{engine_url}/{SCRATCH}/_count")["count"]
    missing = []
    for i in range(0, len(acked), 1000):
        batch = acked[i : i + 1000]
        got = http_json(
            "POST", f"{engine_url}/{SCRATCH}/_mget?_source=false", {"ids": batch}, timeout=120
        )
        missing += [d["_id"] for d in got["docs"] if not d.get("found")]
    return {"count": count, "acked": len(acked), "unique": len(set(acked)), "missing": missing}


def resolve_model(name: str) -> tuple[str, str]:
    """(model.name, model.backend) for `--model`."""
    if name == "fake":
        return "fake", "fake"
    if name == "exact":
        return str(data.exact_model()), "auto"
    from devtools.standin import ensure_standin_model

    def texts() -> list[str]:
        return [data.doc_text(d) for d in list(data.load_scifact().corpus.values())[:5000]]

    return str(ensure_standin_model(CACHE / "models", texts, size="tiny", seed=0)), "auto"


def run_variant(
    variant: str, args: argparse.Namespace, engine_url: str, queries: list[str], ids: list[str]
) -> tuple[str, bool]:
    """One variant: start what it needs and the proxy, run the traffic, verify, report."""
    model, backend = resolve_model(args.model)
    duration = args.minutes * 60
    warmup = min(120.0, duration / 4)
    tail = min(60.0, duration / 4)
    rule = {"match": [ALIAS], "fields": ["title", "text"], "window": WINDOW, "timeout_ms": 10_000}
    http("DELETE", f"{engine_url}/{SCRATCH}")
    shards = {"number_of_shards": 1, "number_of_replicas": 0}
    http_json("PUT", f"{engine_url}/{SCRATCH}", {"settings": shards})
    watched: dict[str, int] = {}
    with contextlib.ExitStack() as stack:
        work = stack.enter_context(workdir(f"bench-soak-{variant}-", keep=args.keep))
        opts: dict[str, Any] = {"max_length": 256}
        if variant in ("tiny-cache", "redis"):
            opts["cache_size"] = TINY_CACHE
        if variant == "model-server":
            from bench.remote import ModelServer

            server = ModelServer(Path(model), backend, 256, work)
            stack.callback(server.stop)
            watched["model server"] = server.proc.pid
            remote = {"urls": [server.url], "timeout": 60, "max_documents": 64}
            backend, opts["remote"] = "remote", remote
        cfg = proxy_config(engine_url, model=model, backend=backend, rules=[rule], **opts)
        if variant == "redis":
            url, pid = stack.enter_context(redis_server())
            cfg["cache"] = {"redis_url": url}
            watched["redis"] = pid
        proxy = start_proxy(cfg, work, name=f"proxy-{variant}")
        stack.callback(proxy.stop)
        watched = {"proxy": proxy.pid, **watched}
        log(f"{variant}: proxy up in {proxy.started_s:.1f} s (backend {proxy.backend()})")
        traffic = Traffic(proxy.url, queries, ids, f"{variant}-{int(time.time())}")
        samples: list[Sample] = []
        t0 = time.monotonic()

        async def tick(session: Any) -> None:
            samplers = {name: Sampler(pid) for name, pid in watched.items()}
            while True:
                rss = {n: await asyncio.to_thread(s.rss) for n, s in samplers.items()}
                entries = float("nan")
                with contextlib.suppress(Exception):
                    metrics_url = f"{proxy.url}/_rerank_proxy/metrics?format=json"
                    async with session.get(metrics_url) as resp:
                        entries = (await resp.json()).get("rerank_proxy_cache_entries", entries)
                t = time.monotonic() - t0
                errs = sum(traffic.t.errors.values())
                samples.append(Sample(t, rss, entries, traffic.t.requests, errs))
                if len(samples) % 15 == 0:
                    log(
                        f"  {t:.0f} s: {traffic.t.requests} requests, {errs} errors, RSS "
                        + ", ".join(f"{n} {v / MB:.0f} MB" for n, v in rss.items())
                    )
                await asyncio.sleep(SAMPLE_S)

        asyncio.run(traffic.run(args.workers, t0 + duration, tick))
        elapsed = time.monotonic() - t0
        if proxy.proc.poll() is not None:
            traffic.t.error("proxy", "process exited", f"exit status {proxy.proc.returncode}")
        try:
            metrics = scrape(proxy.url)
        except (OSError, RuntimeError) as exc:
            metrics = {}
            traffic.t.error("metrics", "scrape failed", f"GET /_rerank_proxy/metrics: {exc}")
        final = {n: Sampler(pid).rss() for n, pid in watched.items()}
        samples.append(
            Sample(
                elapsed,
                final,
                metrics.get("rerank_proxy_cache_entries", 0),
                traffic.t.requests,
                sum(traffic.t.errors.values()),
            )
        )
        proxy_log = proxy.log_text()
    checked = verify(engine_url, traffic.t.acked)
    if not args.keep:
        http("DELETE", f"{engine_url}/{SCRATCH}")
    text, ok = report(
        variant, args, traffic.t, samples, metrics, checked, proxy_log, warmup, tail, elapsed
    )
    return text, ok


def rss_flat(
    samples: list[Sample], name: str, start: float, tail: float
) -> tuple[float, float, float, float]:
    """(median RSS of the `tail` s from `start`, median RSS of the last `tail` s, their
    ratio, least-squares slope in MB/min from `start`)."""
    end = samples[-1].t
    after = [s.rss[name] for s in samples if start <= s.t < start + tail]
    last = [s.rss[name] for s in samples if s.t >= end - tail]
    base, fin = statistics.median(after or [0]), statistics.median(last or [0])
    pts = [(s.t, s.rss[name]) for s in samples if s.t >= start]
    slope = float("nan")
    if len(pts) >= 3:
        slope = statistics.linear_regression([t for t, _ in pts], [v for _, v in pts]).slope
    return base, fin, fin / base if base else float("nan"), slope * 60 / MB


def report(
    variant: str,
    args: argparse.Namespace,
    t: Tally,
    samples: list[Sample],
    m: dict[str, float],
    checked: dict[str, Any],
    proxy_log: str,
    warmup: float,
    tail: float,
    elapsed: float,
) -> tuple[str, bool]:
    names = list(samples[0].rss)
    errors = sum(t.errors.values())
    lost = len(checked["missing"])
    ok = errors == 0 and lost == 0 and checked["unique"] == checked["acked"]
    out = [
        f"## Soak: `{variant}`",
        "",
        f"- Command: `python -m bench.soak {shlex.join(args.argv)}`",
        f"- Machine: {machine_line()}",
        f"- Proxy: `python -m proxy serve`, model `{args.model}`"
        + (f", cache_size {TINY_CACHE}" if variant in ("tiny-cache", "redis") else "")
        + (
            ", `backend: remote` on `rerank-proxy model-server`"
            if variant == "model-server"
            else ""
        )
        + (", `cache.redis_url` on a local redis-server" if variant == "redis" else "")
        + f"; rule on `{ALIAS}`: window {WINDOW}, timeout_ms 10000. Real OpenSearch"
        f" ({engine.INDEX}, SciFact). {args.workers} aiohttp clients, closed loop, no pacing,"
        f" {elapsed:.0f} s (warm-up {warmup:.0f} s).",
        "",
        "### Requests",
        "",
        md_table(
            ["kind", "requests", "req/s", "p50 ms", "p99 ms", "errors"],
            [
                (
                    k,
                    len(v),
                    f"{len(v) / elapsed:.1f}",
                    fmt_ms(percentile(v, 50)),
                    fmt_ms(percentile(v, 99)),
                    sum(n for e, n in t.errors.items() if e.startswith(k + ":")),
                )
                for k, v in sorted(t.latencies.items())
            ]
            + [("all", t.requests, f"{t.requests / elapsed:.1f}", "", "", errors)],
        ),
        "",
        "X-Rerank: " + ", ".join(f"{k} {n}" for k, n in sorted(t.x_rerank.items())) + ".",
        "",
        "### Errors",
        "",
    ]
    if t.errors:
        out.append(
            md_table(
                ["kind", "count", "first example"],
                [(k, n, f"`{t.examples[k]}`") for k, n in t.errors.most_common()],
            )
        )
    else:
        out.append("None: every response 2xx, parsed, and of the expected shape.")
    rows = []
    step = max(5.0, args.minutes * 60 / 20)
    next_t = 0.0
    for s in samples:
        if s.t >= next_t or s is samples[-1]:
            rows.append(
                (
                    f"{s.t:.0f}",
                    *(f"{s.rss[n] / MB:.0f}" for n in names),
                    f"{s.cache_entries:.0f}",
                    s.requests,
                    s.errors,
                )
            )
            next_t = s.t + step
    out += [
        "",
        "### RSS over time (process and children, MB = 10^6 bytes)",
        "",
        md_table(["t s", *(f"{n} MB" for n in names), "cache entries", "requests", "errors"], rows),
        "",
    ]
    for n in names:
        base, fin, ratio, slope = rss_flat(samples, n, warmup, tail)
        verdict = "flat" if ratio <= FLAT else "GREW"
        out.append(
            f"- {n}: {base / MB:.0f} MB after warm-up, {fin / MB:.0f} MB over the last"
            f" {tail:.0f} s: **{ratio:.3f}x** ({verdict}, target <= {FLAT}x); slope after"
            f" warm-up {slope:+.2f} MB/min; max {max(s.rss[n] for s in samples) / MB:.0f} MB."
        )
    cap = TINY_CACHE if variant in ("tiny-cache", "redis") else ModelConfig().cache_size
    full = next((s.t for s in samples if s.cache_entries >= cap), None)
    if full is None:
        out.append(f"- The score cache did not fill ({cap} entries) in this run.")
    elif full > warmup and full < samples[-1].t - 2 * tail:
        base, fin, ratio, slope = rss_flat(samples, "proxy", full, tail)
        out.append(
            f"- proxy once the score cache was full ({cap} entries, from {full:.0f} s):"
            f" {base / MB:.0f} -> {fin / MB:.0f} MB, **{ratio:.3f}x**, {slope:+.2f} MB/min."
        )
    c = m.get
    hits, misses = (
        c('rerank_proxy_cache_lookups_total{result="hit"}', 0),
        c('rerank_proxy_cache_lookups_total{result="miss"}', 0),
    )
    shared = {
        r: c(f'rerank_proxy_shared_cache_lookups_total{{result="{r}"}}', 0)
        for r in ("hit", "miss", "error")
    }
    scored = c("rerank_proxy_batch_size_sum", 0)
    entries = c("rerank_proxy_cache_entries", 0)
    evicted = c("rerank_proxy_cache_evictions_total", 0)
    failed = {
        k.split("reason=")[1].strip('"}'): v
        for k, v in m.items()
        if k.startswith("rerank_proxy_searches_total") and 'outcome="failed"' in k and v
    }
    searches = {
        k[len("rerank_proxy_searches_total") :]: v
        for k, v in m.items()
        if k.startswith("rerank_proxy_searches_total") and v
    }
    out += [
        "",
        "### Proxy metrics at the end (`/_rerank_proxy/metrics`)",
        "",
        f"- Score cache: {hits:.0f} hits, {misses:.0f} misses"
        f" ({hits / (hits + misses) if hits + misses else 0:.1%} hit), {entries:.0f} entries held;"
        f" pairs scored {scored:.0f}; evicted {evicted:.0f}"
        f" (pairs scored + shared hits - entries: {scored + shared['hit'] - entries:.0f}).",
        f"- Shared cache: {', '.join(f'{k} {v:.0f}' for k, v in shared.items())}, up"
        f" {c('rerank_proxy_shared_cache_up', 0):.0f}."
        if variant == "redis"
        else "- Shared cache: none.",
        f"- Fail-open (searches `failed`): {sum(failed.values()):.0f}"
        + (f" ({', '.join(f'{k} {v:.0f}' for k, v in failed.items())})" if failed else "")
        + ".",
        "- Searches by outcome: "
        + ", ".join(f"`{k}` {v:.0f}" for k, v in sorted(searches.items()))
        + ".",
        f"- Upstream errors (own 502/504) {sum(v for k, v in m.items() if k.startswith('rerank_proxy_upstream_errors_total')):.0f},"
        f" broken upstream bodies {c('rerank_proxy_upstream_broken_bodies_total', 0):.0f},"
        f" client send timeouts {c('rerank_proxy_client_send_timeouts_total', 0):.0f};"
        f" the proxy's own process_resident_memory_bytes {c('process_resident_memory_bytes', 0) / MB:.0f} MB.",
    ]
    # Every line but the stand-in's start-up warning; time stamps cut so repeats group.
    bad = Counter(
        (ln.split(" ", 2)[-1] if ln[:4].isdigit() else ln)[:240]
        for ln in proxy_log.splitlines()
        if any(w in ln for w in ("WARNING", "ERROR", "CRITICAL", "Traceback"))
        and "STAND-IN MODEL" not in ln
    )
    out.append(
        f"- Proxy log: {sum(bad.values())} WARNING/ERROR lines (the stand-in's warning aside)"
        + ("." if not bad else ": " + "; ".join(f"{n}x `{m}`" for m, n in bad.most_common(5)))
    )
    out += [
        "",
        "### Writes: acknowledged vs indexed",
        "",
        f"`_bulk` creates sent {t.bulk_docs}, acknowledged (201) {checked['acked']}"
        f" ({checked['unique']} distinct); after `_refresh`: `_count` {checked['count']},"
        f" acknowledged ids missing from `_mget` {lost}"
        + (f" (first: {', '.join(checked['missing'][:10])})" if lost else "")
        + f"; indexed but not acknowledged {checked['count'] - checked['acked'] + lost}."
        f" **lost = {lost}**.",
        "",
        f"Verdict: {errors} errors, {lost} lost documents: {'PASS' if ok else 'FAIL'}.",
    ]
    return "\n".join(out), ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="1 minute")
    parser.add_argument("--variant", choices=(*VARIANTS, "all"), default="default")
    parser.add_argument(
        "--model",
        choices=("tiny", "exact", "fake"),
        default="tiny",
        help="tiny: the small stand-in through the real ONNX backend (default);"
        " exact: the mxbai-rerank-xsmall geometry (~2 s per fresh search on 2"
        " cores); fake: word overlap, no model",
    )
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--keep", action="store_true", help="keep work dirs and the scratch index")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    if args.quick:
        args.minutes = 1.0
    started = time.monotonic()
    engine_url = engine.ensure_engine()
    scifact = data.load_scifact()
    engine.index_scifact(engine_url, scifact, aliases=[ALIAS])
    queries = [q.text for q in scifact.queries.values()]
    ids = list(scifact.corpus)
    ok = True
    for variant in VARIANTS if args.variant == "all" else (args.variant,):
        log(f"variant {variant}: {args.minutes:g} min of traffic ...")
        text, passed = run_variant(variant, args, engine_url, queries, ids)
        ok &= passed
        print(text + "\n", flush=True)
        (REPO / "bench" / "results" / f"soak-{variant}.md").write_text(text + "\n")
    log(f"total bench time {time.monotonic() - started:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
