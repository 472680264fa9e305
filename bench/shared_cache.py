"""Shared-cache benchmark: a warm search's scores from Redis vs from the local LRU.

    python -m bench.shared_cache [--rounds 3000] [--window 20] [--redis-url URL] [--asyncio]

In-process, one event loop (uvloop when installed, as `rerank-proxy serve` runs): a
`RerankFront` over the fake backend is asked for the scores of one search's window (20
documents of about 60 words, a 5-word query), after the scores are already cached:

- local LRU hit: a front with its LRU, warm: no I/O at all.
- Redis hit: a front with no LRU (`cache_size: 0`) and a warm Redis, as a proxy that has not
  seen the search yet finds it: one `MGET` of the window's keys per search, over a pooled
  connection to a redis-server on the loopback (started here unless `--redis-url`).

The table gives the median and p90 over `--rounds` searches per row (distinct queries,
interleaved so both rows see the same machine) and the milliseconds the Redis hit adds to
the median; the target is under 0.5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bench.report import fmt_ms, log, md_table, percentile
from proxy.rerank.base import BatchPolicy
from proxy.rerank.fake import FakeBackend
from proxy.rerank.front import RerankFront
from proxy.rerank.local import LocalExecutor
from proxy.rerank.shared_cache import RedisCache

TARGET_MS = 0.5
WORDS = [
    "apple",
    "pear",
    "tart",
    "valley",
    "wine",
    "plum",
    "jam",
    "lemon",
    "curd",
    "fig",
    "roll",
    "cherry",
    "cake",
    "recipe",
]


def document(i: int) -> str:
    return " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(60)) + f" doc{i}"


@contextlib.contextmanager
def redis_url(given: str | None) -> Iterator[str]:
    if given:
        yield given
        return
    from tests.integration.redis_support import RedisServer, require_redis

    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(require_redis(), Path(tmp))
        server.start()
        try:
            yield server.url
        finally:
            server.stop()


async def run(url: str, rounds: int, window: int) -> dict[str, list[float]]:
    docs = [document(i) for i in range(window)]
    queries = [f"red apple pie number {i}" for i in range(rounds)]
    policy = BatchPolicy(wait_ms=0)
    writer = RerankFront(
        LocalExecutor(FakeBackend()),
        policy,
        cache_size=0,
        shared=RedisCache(url, ttl=600, prefix="bench:", timeout_ms=50),
    )
    local = RerankFront(LocalExecutor(FakeBackend()), policy, cache_size=rounds * window)
    reader_cache = RedisCache(url, ttl=600, prefix="bench:", timeout_ms=50)
    reader = RerankFront(LocalExecutor(FakeBackend()), policy, cache_size=0, shared=reader_cache)
    try:
        log(f"warming: {rounds} searches of {window} documents into Redis and the local LRU")
        for q in queries:
            await writer.score(q, docs, max_length=256)
            await local.score(q, docs, max_length=256)
        assert writer.shared is not None
        await writer.shared.flush()
        await reader.score(queries[0], docs, max_length=256)  # the pool holds a connection

        times: dict[str, list[float]] = {"local LRU hit": [], "Redis hit": []}
        clock = time.perf_counter
        fronts: list[tuple[str, RerankFront]] = [("local LRU hit", local), ("Redis hit", reader)]
        for q in queries:
            for name, front in fronts:
                started = clock()
                await front.score(q, docs, max_length=256)
                times[name].append((clock() - started) * 1000)
        backend = reader.executor
        assert isinstance(backend, LocalExecutor) and isinstance(backend.backend, FakeBackend)
        assert backend.backend.pairs_scored == 0, "the Redis row computed scores: not all hits"
        assert reader.stats.shared_errors == 0, f"{reader.stats.shared_errors} lookups failed"
        return times
    finally:
        for front in (writer, local, reader):
            await front.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3000)
    parser.add_argument("--window", type=int, default=20)
    parser.add_argument("--redis-url", help="an existing Redis (default: start redis-server)")
    parser.add_argument("--asyncio", action="store_true", help="asyncio's loop, not uvloop")
    args = parser.parse_args(argv)
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if not args.asyncio:
        with contextlib.suppress(ImportError):
            import uvloop

            factory = uvloop.new_event_loop
    loop_name = "asyncio" if factory is None else "uvloop"
    with redis_url(args.redis_url) as url, asyncio.Runner(loop_factory=factory) as runner:
        times = runner.run(run(url, args.rounds, args.window))
    local = statistics.median(times["local LRU hit"])
    rows = []
    for name, values in times.items():
        median = statistics.median(values)
        added = "" if name == "local LRU hit" else fmt_ms(median - local)
        rows.append([name, fmt_ms(median), fmt_ms(percentile(values, 90)), added])
    print(
        f"Score lookups for one warm search, {args.window} documents, {args.rounds} rounds,"
        f" {loop_name}, Redis on the loopback (ms)\n"
    )
    print(md_table(["lookup", "median", "p90", "added (median)"], rows))
    added_ms = statistics.median(times["Redis hit"]) - local
    verdict = "met" if added_ms < TARGET_MS else "MISSED"
    print(f"\nTarget: a Redis hit adds under {TARGET_MS} ms: {verdict} ({added_ms:.3f} ms).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
