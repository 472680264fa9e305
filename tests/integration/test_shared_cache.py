"""The shared score cache against a real redis-server: two proxies share scores; keys name
the model and max_length, are short and expire; Redis stopped, restarted or slow never fails
a search, is counted, logged once per change, and sharing resumes by itself.

Each "proxy" is its own `RerankFront` over its own `LocalExecutor(FakeBackend())` and its own
`RedisCache` (its own connection pool); the backend's `pairs_scored` says what it computed.
The server comes from `redis_support.RedisServer` (skipped without redis-server outside CI).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from proxy.config import CacheConfig, parse_config
from proxy.keys import METRICS
from proxy.metrics import Metrics
from proxy.rerank.base import BatchPolicy
from proxy.rerank.fake import FakeBackend
from proxy.rerank.front import RerankFront
from proxy.rerank.local import LocalExecutor
from proxy.rerank.shared_cache import (
    RedisCache,
    SharedCache,
    load_shared_cache,
    pair_key,
    text_digest,
)
from proxy.serve import load_reranker

from .fakes import eventually, proxy_config
from .redis_support import RedisServer, TLSFiles, in_ci, require_redis
from .rerank_support import QUERY, RERANKED, Engine, Proxies, Recording, ids, rerank_headers, send

LOGGER = "proxy.rerank.shared_cache"
DOCS = [f"apple word{i} " * (1 + i % 3) + f"filler {i}" for i in range(12)]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(require_redis(), tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def admin(redis_server: RedisServer) -> AsyncIterator[Any]:
    """A plain redis-py client for looking at what the proxies stored."""
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


class OtherModel(FakeBackend):
    model_id = "fake-overlap-v2"


class Gated(FakeBackend):
    """Holds each group inside the model until `gate` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def score_pairs(self, pairs: Sequence[tuple[str, str]], max_length: int) -> list[float]:
        self.entered.set()
        assert self.gate.wait(10)
        return super().score_pairs(pairs, max_length)


class Proxy:
    """One proxy's reranker: a front, its backend, its Redis client and its metrics."""

    def __init__(
        self, url: str, backend: FakeBackend | None = None, cache_size: int = 1000, **cache: Any
    ) -> None:
        self.backend = backend or FakeBackend()
        settings = {"ttl": 3600, "prefix": "test:", "timeout_ms": 1000, "retry_s": 0.05, **cache}
        self.cache = RedisCache(url, **settings)
        policy = BatchPolicy(wait_ms=1, max_group=256, max_queue=4096)
        self.front = RerankFront(
            LocalExecutor(self.backend), policy, cache_size=cache_size, shared=self.cache
        )
        self.metrics = Metrics()
        self.front.set_observer(self.metrics)
        self.metrics.watch(lambda: True, self.front.health)

    async def score(self, query: str, docs: list[str] = DOCS, max_length: int = 64) -> list[float]:
        return await self.front.score(query, docs, max_length=max_length)

    def shared(self, result: str) -> float:
        return self.metrics.value("shared_cache_lookups_total", result=result)


Make = Callable[..., Proxy]


@pytest.fixture
async def make(redis_server: RedisServer) -> AsyncIterator[Make]:
    made: list[Proxy] = []

    def make(backend: FakeBackend | None = None, **settings: Any) -> Proxy:
        made.append(Proxy(redis_server.url, backend, **settings))
        return made[-1]

    yield make
    for p in made:
        await p.front.close()


def expected(query: str, docs: list[str] = DOCS, max_length: int = 64) -> list[float]:
    return FakeBackend().score_pairs([(query, d) for d in docs], max_length)


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


async def until(
    check: Callable[[], bool], act: Callable[[], Awaitable[object]], timeout: float = 10.0
) -> None:
    """Run `act()` until `check()` holds (polling a counter); fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await act()
        await asyncio.sleep(0.02)


# -- sharing -----------------------------------------------------------------------------


async def test_the_second_proxy_computes_nothing_the_first_one_scored(make: Make) -> None:
    first, second = make(), make()
    scores = await first.score("red apple")
    assert scores == expected("red apple")
    assert first.backend.pairs_scored == len(DOCS)
    assert first.shared("miss") == len(DOCS)
    await first.cache.flush()

    assert await second.score("red apple") == scores
    assert second.backend.pairs_scored == 0
    assert second.shared("hit") == len(DOCS) and second.shared("miss") == 0
    # Hits went into the second proxy's own LRU: it answers without waiting now.
    assert second.front.cached("red apple", DOCS, max_length=64) == scores

    # A wider window: only the new documents are computed.
    more = [*DOCS, "apple crumble", "pear"]
    assert await second.score("red apple", more) == expected("red apple", more)
    assert second.backend.pairs_scored == 2
    assert second.metrics.value("shared_cache_up") == 1


async def test_keys_name_the_model_identity_and_max_length(make: Make) -> None:
    first = make()
    await first.score("red apple", max_length=64)
    await first.cache.flush()

    other_model = make(OtherModel())
    await other_model.score("red apple", max_length=64)
    assert other_model.backend.pairs_scored == len(DOCS)

    same_model = make()
    await same_model.score("red apple", max_length=32)
    assert same_model.backend.pairs_scored == len(DOCS)
    await same_model.score("red apple", max_length=64)
    assert same_model.backend.pairs_scored == len(DOCS)  # this one was shared

    digest = hashlib.blake2b(DOCS[0].encode(), digest_size=16).digest()
    keys = {
        pair_key(model, length, text_digest("red apple"), digest)
        for model in ("fake-overlap-v1", "fake-overlap-v2")
        for length in (32, 64)
    }
    assert len(keys) == 4


async def test_entries_carry_the_ttl_the_prefix_and_the_score(make: Make, admin: Any) -> None:
    proxy = make(ttl=600, prefix="rp-test:")
    scores = await proxy.score("red apple")
    await proxy.cache.flush()

    keys = sorted(await admin.keys("*"))
    assert len(keys) == len(DOCS)
    assert all(k.startswith(b"rp-test:") for k in keys)
    for key in keys:
        assert 0 < await admin.ttl(key) <= 600
    doc = hashlib.blake2b(DOCS[0].encode(), digest_size=16).digest()
    name = "rp-test:" + pair_key(FakeBackend.model_id, 64, text_digest("red apple"), doc)
    assert await admin.get(name) == repr(scores[0]).encode()  # the shortest repr
    assert {float(v) for v in await admin.mget(keys)} == set(scores)


def test_keys_are_the_same_in_every_process() -> None:
    """No `hash()` in a key: another interpreter with another hash seed derives the same."""
    code = (
        "from proxy.rerank.shared_cache import pair_key, text_digest;"
        "print(pair_key('m', 64, text_digest('q'), text_digest('d')))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == pair_key("m", 64, text_digest("q"), text_digest("d"))


async def test_a_1_mib_query_makes_a_short_key(make: Make, admin: Any) -> None:
    query = ("red apple " * (1 << 17))[: 1 << 20]
    docs = DOCS[:3]
    first = make(prefix="p:")
    scores = await first.score(query, docs)
    await first.cache.flush()

    keys = await admin.keys("*")
    assert len(keys) == len(docs)
    assert {len(k) for k in keys} == {len("p:") + 32}
    second = make(prefix="p:")
    assert await second.score(query, docs) == scores
    assert second.backend.pairs_scored == 0


async def test_pairs_in_flight_are_not_looked_up_and_never_computed_twice(make: Make) -> None:
    gated = Gated()
    proxy = make(gated)
    try:
        first = asyncio.create_task(proxy.score("apple"))
        await asyncio.to_thread(gated.entered.wait, 5)  # its pairs are in the model
        assert proxy.shared("miss") == len(DOCS)
        second = asyncio.create_task(proxy.score("apple"))
        await eventually(lambda: proxy.front.stats.deduplicated == len(DOCS))
        assert proxy.shared("miss") + proxy.shared("hit") == len(DOCS)  # not asked again
    finally:
        gated.gate.set()
    assert await first == await second == expected("apple")
    assert gated.pairs_scored == len(DOCS)

    # Two searches that both missed in Redis at once: the pairs are computed once.
    both = await asyncio.gather(proxy.score("apple pie"), proxy.score("apple pie"))
    assert list(both) == [expected("apple pie")] * 2
    assert proxy.shared("miss") == 3 * len(DOCS)
    assert gated.pairs_scored == 2 * len(DOCS)


class Stalled(SharedCache):
    """A shared cache that answers (all misses) only once `release` is set."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self.release = asyncio.Event()
        self.stored: list[tuple[str, float]] = []

    async def get_many(self, keys: Sequence[str]) -> list[float | None]:
        self.asked.set()
        await self.release.wait()
        return [None] * len(keys)

    async def put_many(self, items: Sequence[tuple[str, float]]) -> None:
        self.stored += items

    def describe(self) -> dict[str, Any]:
        return {"kind": "stalled"}


async def test_a_search_cancelled_while_asking_the_shared_cache_leaves_nothing_behind() -> None:
    shared = Stalled()
    front = RerankFront(LocalExecutor(FakeBackend()), shared=shared)
    try:
        search = asyncio.create_task(front.score("apple", DOCS, max_length=64))
        await shared.asked.wait()
        search.cancel()
        with pytest.raises(asyncio.CancelledError):
            await search
        assert front.queued == 0 and front.stats.pairs == 0
        shared.release.set()
        assert await front.score("apple", DOCS[:2], max_length=64) == expected("apple", DOCS[:2])
        doc = hashlib.blake2b(DOCS[0].encode(), digest_size=16).digest()
        key = pair_key(FakeBackend.model_id, 64, text_digest("apple"), doc)
        assert shared.stored[0] == (key, expected("apple", DOCS[:1])[0])
        assert len(shared.stored) == 2
    finally:
        await front.close()


# -- Redis down, back, slow -------------------------------------------------------------


async def test_redis_stopped_mid_traffic_scores_locally_and_counts_errors(
    make: Make, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    proxy = make()
    done = asyncio.Event()
    served = 0
    after_stop = 0
    stopped = False

    async def client(n: int) -> None:
        nonlocal served, after_stop
        i = 0
        while not done.is_set():
            query = f"apple client{n} search{i}"
            assert await proxy.score(query) == expected(query)
            served += 1
            after_stop += stopped
            i += 1

    clients = [asyncio.create_task(client(n)) for n in range(4)]
    try:
        await until(lambda: served >= 20, lambda: asyncio.sleep(0))
        assert proxy.shared("miss") > 0 and proxy.shared("error") == 0
        await asyncio.to_thread(redis_server.stop)
        stopped = True
        await until(lambda: after_stop >= 40, lambda: asyncio.sleep(0))
    finally:
        done.set()
        await asyncio.gather(*clients)  # no search raised

    assert proxy.shared("error") > 0
    assert proxy.front.stats.shared_errors == proxy.shared("error")
    assert proxy.metrics.value("shared_cache_up") == 0
    [down] = messages(caplog, logging.WARNING)  # once, not once per search
    assert "unavailable" in down and "local cache only" in down
    assert messages(caplog, logging.INFO) == []


async def test_sharing_resumes_by_itself_when_redis_comes_back(
    make: Make, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    first, second = make(), make(cache_size=0)
    await first.score("before")  # the pools hold connections to the old process
    await second.score("before")
    await first.cache.flush()
    await second.cache.flush()
    redis_server.stop()
    assert await first.score("apple while down") == expected("apple while down")
    assert first.shared("error") == len(DOCS)
    assert first.metrics.value("shared_cache_up") == 0

    await asyncio.to_thread(redis_server.start)  # the same port, empty
    searches = iter(range(1000))
    misses = first.shared("miss")
    await until(
        lambda: first.shared("miss") > misses,
        lambda: first.score(f"apple probe {next(searches)}"),
    )
    assert first.metrics.value("shared_cache_up") == 1

    await first.score("apple after")
    await first.cache.flush()
    hits = second.shared("hit")  # the second proxy has no LRU: every search asks Redis
    await until(lambda: second.shared("hit") > hits, lambda: second.score("apple after"))
    computed, hits = second.backend.pairs_scored, second.shared("hit")
    assert await second.score("apple after") == expected("apple after")
    assert second.backend.pairs_scored == computed
    assert second.shared("hit") == hits + len(DOCS)
    # Logged once each way, by the first proxy. The second never saw an outage: its pooled
    # connection to the old process failed and was replaced within the same round trip.
    [down] = messages(caplog, logging.WARNING)
    assert "unavailable" in down
    assert messages(caplog, logging.INFO) == [f"shared score cache {first.cache.url} answers again"]
    assert second.shared("error") == 0


async def test_a_slow_redis_takes_the_timeout_path(
    make: Make, admin: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    pause_ms = 1500
    proxy = make(timeout_ms=50, retry_s=1.0)
    lookups = 0
    mget = proxy.cache._redis.mget

    async def counted_mget(*args: Any, **kwargs: Any) -> Any:
        nonlocal lookups
        lookups += 1
        return await mget(*args, **kwargs)

    monkeypatch.setattr(proxy.cache._redis, "mget", counted_mget)
    await proxy.score("apple warm")  # a pooled connection exists
    assert proxy.shared("error") == 0 and lookups == 1
    await admin.execute_command("CLIENT", "PAUSE", str(pause_ms), "ALL")
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await proxy.score("apple paused") == expected("apple paused")
    assert loop.time() - started < pause_ms / 1000 / 2  # it did not wait for Redis
    assert proxy.shared("error") == len(DOCS) and lookups == 2
    [slow] = messages(caplog, logging.WARNING)
    assert "no answer within 50 ms" in slow

    # Down: the next searches do not wait for Redis at all until the probe is due.
    for i in range(3):
        assert await proxy.score(f"apple skipped {i}") == expected(f"apple skipped {i}")
    assert lookups == 2 and proxy.shared("error") == 4 * len(DOCS)
    assert proxy.metrics.value("shared_cache_up") == 0

    # A probe every second; once the pause is over one finds Redis answering again.
    answered = proxy.shared("hit") + proxy.shared("miss")
    searches = iter(range(10_000))
    await until(
        lambda: proxy.shared("hit") + proxy.shared("miss") > answered,
        lambda: proxy.score(f"apple probe {next(searches)}"),
    )
    assert proxy.metrics.value("shared_cache_up") == 1
    assert len(messages(caplog, logging.WARNING)) == 1
    assert messages(caplog, logging.INFO) == [f"shared score cache {proxy.cache.url} answers again"]


async def test_writes_are_bounded(make: Make, redis_server: RedisServer) -> None:
    """Scores handed over beyond `max_pending_writes` are dropped and counted, not piled up."""
    proxy = make(max_pending_writes=5)
    await proxy.cache.put_many([(f"k{i}", 0.5) for i in range(8)])
    assert proxy.cache.stats.writes_dropped == 3
    await proxy.cache.flush()
    assert proxy.cache.stats.writes == 5
    redis_server.stop()
    await proxy.cache.put_many([(f"j{i}", 0.5) for i in range(4)])
    await proxy.cache.flush()  # returns: a failed write is dropped, never retried forever
    assert proxy.cache.stats.write_errors == 4


async def test_rediss_urls_work(tmp_path: Path) -> None:
    """TLS to Redis (`rediss://`), the CA given in the URL as redis-py reads it."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    files = TLSFiles(tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem")
    cert.cert_chain_pems[0].write_to_path(str(files.cert))
    cert.private_key_pem.write_to_path(str(files.key))
    ca.cert_pem.write_to_path(str(files.ca))
    server = RedisServer(require_redis(), tmp_path / "redis", tls=files)
    try:
        server.start()
    except RuntimeError as exc:
        if "tls" in str(exc).lower() and not in_ci():
            pytest.skip(f"this redis-server was built without TLS: {exc}")
        raise
    first = Proxy(server.url)
    second = Proxy(server.url)
    try:
        scores = await first.score("red apple")
        await first.cache.flush()
        assert await second.score("red apple") == scores
        assert second.backend.pairs_scored == 0 and second.shared("error") == 0
        assert first.front.describe()["shared_cache"]["url"].startswith("rediss://localhost:")
    finally:
        await first.front.close()
        await second.front.close()
        server.stop()


# -- configuration and the app -----------------------------------------------------------


async def test_the_config_builds_the_shared_cache_and_the_front_uses_it() -> None:
    require_redis()
    assert load_shared_cache(CacheConfig()) is None
    url = "redis://user:secret@127.0.0.1:1/0"
    cfg = parse_config({**proxy_config("http://127.0.0.1:9"), "cache": {"redis_url": url}})
    cache = load_shared_cache(cfg.cache)
    assert isinstance(cache, SharedCache) and isinstance(cache, RedisCache)
    assert cache.ttl == 7 * 24 * 3600 and cache.timeout_ms == 50
    assert cache.prefix == "rerank-proxy:"
    assert "secret" not in json.dumps(cache.describe())
    await cache.close()

    front = load_reranker(cfg)  # serve's start-up path
    try:
        assert isinstance(front.shared, RedisCache)
        assert front.describe()["shared_cache"]["url"] == "redis://127.0.0.1:1/0"
        # Nothing listens on port 1: the search is scored locally, the failure counted.
        assert await front.score("q", ["d"], max_length=64) == expected("q", ["d"])
        assert front.stats.shared_errors == 1 and front.health()["shared_cache_up"] is False
    finally:
        await front.close()


async def test_a_second_app_answers_the_same_search_without_computing(
    redis_server: RedisServer, engine: Engine, proxies: Proxies
) -> None:
    caches: list[RedisCache] = []

    def sharing() -> type[RerankFront]:
        cache = RedisCache(redis_server.url, ttl=3600, prefix="app:", timeout_ms=1000)
        caches.append(cache)

        class SharingFront(RerankFront):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs, shared=cache)

        return SharingFront

    first_model, second_model = Recording(), Recording()
    first = await proxies.start(first_model, front=sharing())
    second = await proxies.start(second_model, front=sharing())
    search = {"query": {"match": {"title": QUERY}}}

    one = await send(first, "/books/_search", search)
    assert rerank_headers(one) == ("applied", None)
    assert ids(json.loads(one.body)) == RERANKED[:10]
    assert first_model.pairs_scored > 0
    await caches[0].flush()

    two = await send(second, "/books/_search", search)
    assert rerank_headers(two) == ("applied", None)
    assert json.loads(two.body)["hits"] == json.loads(one.body)["hits"]  # the same scores
    assert second_model.pairs_scored == 0
    metrics = second.app[METRICS]
    assert metrics.value("shared_cache_lookups_total", result="hit") == first_model.pairs_scored
    assert b"rerank_proxy_shared_cache_up 1.0" in metrics.exposition()
    assert len(engine.requests) == 2
