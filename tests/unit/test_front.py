"""The reranker front over local and async executors: own scores under concurrency,
cancellation, cache, bounds, bounded stats, concurrent groups."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import threading
from collections.abc import Sequence

import pytest

from proxy.errors import InvalidScores, RerankOverloaded
from proxy.metrics import Metrics
from proxy.rerank.base import Backend, BatchPolicy, Executor
from proxy.rerank.fake import FakeBackend
from proxy.rerank.front import RerankFront, ScoreCache, cache_key
from proxy.rerank.local import LocalExecutor


class GatedBackend(FakeBackend):
    """Blocks inside score_pairs until released, recording every group it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.groups: list[list[tuple[str, str]]] = []

    def score_pairs(self, pairs: Sequence[tuple[str, str]], max_length: int) -> list[float]:
        self.groups.append(list(pairs))
        self.entered.set()
        assert self.gate.wait(10)
        return super().score_pairs(pairs, max_length)


class BadBackend(Backend):
    def __init__(self, mode: str) -> None:
        self.mode = mode

    def score_pairs(self, pairs: Sequence[tuple[str, str]], max_length: int) -> list[float]:
        if self.mode == "raise":
            raise RuntimeError("model exploded")
        if self.mode == "nan":
            return [math.nan] * len(pairs)
        return [0.5] * (len(pairs) + 1)


def make_front(
    backend: Backend, *, wait_ms: float = 2.0, max_queue: int = 4096, cache_size: int = 50_000
) -> RerankFront:
    policy = BatchPolicy(wait_ms=wait_ms, max_group=256, max_queue=max_queue)
    return RerankFront(LocalExecutor(backend), policy, cache_size=cache_size)


def docs_for(q: int) -> list[str]:
    return [f"query{q} word{i} " * (1 + i % 3) + f"filler {q * 100 + i}" for i in range(12)]


async def test_each_caller_gets_exactly_its_own_scores() -> None:
    backend = FakeBackend()
    service = make_front(backend, wait_ms=5, cache_size=0)
    try:
        queries = [f"query{q} word{q % 4}" for q in range(20)]
        results = await asyncio.gather(
            *(service.score(q, docs_for(i), max_length=64) for i, q in enumerate(queries))
        )
        for i, (q, got) in enumerate(zip(queries, results, strict=True)):
            expected = FakeBackend().score_pairs([(q, d) for d in docs_for(i)], 64)
            assert got == expected
        # Concurrent searches shared forward passes.
        assert service.stats.batches < len(queries)
    finally:
        await service.close()


async def test_cancelled_caller_does_not_disturb_others_and_its_pairs_are_dropped() -> None:
    backend = GatedBackend()
    service = make_front(backend, wait_ms=0, cache_size=0)
    try:
        first = asyncio.create_task(service.score("a", ["a1", "a2"], max_length=64))
        await asyncio.to_thread(backend.entered.wait, 5)  # group 1 is inside the model
        doomed = asyncio.create_task(service.score("b", ["b1", "b2", "b3"], max_length=64))
        survivor = asyncio.create_task(service.score("c", ["c1"], max_length=64))
        await asyncio.sleep(0.01)
        doomed.cancel()
        backend.gate.set()
        assert len(await first) == 2
        assert await survivor == FakeBackend().score_pairs([("c", "c1")], 64)
        with pytest.raises(asyncio.CancelledError):
            await doomed
        scored = [p for g in backend.groups for p in g]
        assert ("b", "b1") not in scored
        assert service.stats.dropped == 3
    finally:
        backend.gate.set()
        await service.close()


async def test_cache_hits_return_identical_scores_without_the_model() -> None:
    backend = FakeBackend()
    service = make_front(backend, cache_size=1000)
    try:
        docs = docs_for(1)
        first = await service.score("query1 word1", docs, max_length=64)
        pairs_before = backend.pairs_scored
        again = await service.score("query1 word1", docs, max_length=64)
        assert again == first
        assert backend.pairs_scored == pairs_before
        # A different max_length is a different key.
        await service.score("query1 word1", docs, max_length=32)
        assert backend.pairs_scored == pairs_before + len(docs)
    finally:
        await service.close()


async def test_identical_pairs_in_flight_are_computed_once() -> None:
    backend = FakeBackend()
    service = make_front(backend, wait_ms=5, cache_size=0)
    try:
        docs = docs_for(2)
        a, b = await asyncio.gather(
            service.score("q", docs, max_length=64), service.score("q", docs, max_length=64)
        )
        assert a == b
        assert backend.pairs_scored == len(docs)
        assert service.stats.deduplicated == len(docs)
    finally:
        await service.close()


def test_cache_stays_within_its_bound_and_evicts_least_recently_used() -> None:
    cache = ScoreCache(3)
    keys = [cache_key("m", 64, "q", f"d{i}") for i in range(5)]
    for i, k in enumerate(keys[:3]):
        cache.put(k, float(i))
    assert cache.get(keys[0]) == 0.0  # touch: keys[1] is now the oldest
    cache.put(keys[3], 3.0)
    cache.put(keys[4], 4.0)
    assert len(cache) == 3
    assert cache.get(keys[1]) is None and cache.get(keys[2]) is None
    assert cache.get(keys[0]) == 0.0 and cache.get(keys[4]) == 4.0


def test_cache_put_says_how_many_scores_made_room() -> None:
    cache = ScoreCache(2)
    keys = [cache_key("m", 64, "q", f"d{i}") for i in range(3)]
    assert [cache.put(k, 1.0) for k in keys] == [0, 0, 1]
    assert cache.put(keys[2], 2.0) == 0  # a key already held replaces, evicts nothing
    assert ScoreCache(0).put(keys[0], 1.0) == 0


async def test_evictions_reach_the_metric() -> None:
    metrics = Metrics()
    service = make_front(FakeBackend(), wait_ms=0, cache_size=3)
    service.set_observer(metrics)
    try:
        await service.score("q", ["a", "b"], max_length=64)
        assert metrics.registry.get_sample_value("rerank_proxy_cache_evictions_total") == 0
        await service.score("q", ["c", "d", "e"], max_length=64)
        assert metrics.registry.get_sample_value("rerank_proxy_cache_evictions_total") == 2
        await service.score("q", ["d", "e"], max_length=64)  # hits: nothing new to hold
        assert metrics.registry.get_sample_value("rerank_proxy_cache_evictions_total") == 2
    finally:
        await service.close()


async def test_full_queue_raises_overloaded_before_reaching_the_model() -> None:
    backend = GatedBackend()
    service = make_front(backend, wait_ms=0, max_queue=4, cache_size=0)
    try:
        first = asyncio.create_task(service.score("a", ["1", "2", "3"], max_length=64))
        await asyncio.to_thread(backend.entered.wait, 5)
        queued = asyncio.create_task(service.score("b", ["1", "2", "3"], max_length=64))
        await asyncio.sleep(0.01)
        with pytest.raises(RerankOverloaded):
            await service.score("c", ["1", "2"], max_length=64)
        backend.gate.set()
        await asyncio.gather(first, queued)
    finally:
        backend.gate.set()
        await service.close()


@pytest.mark.parametrize(
    ("mode", "error"),
    [("raise", RuntimeError), ("nan", InvalidScores), ("count", InvalidScores)],
)
async def test_backend_failures_reach_every_caller(mode: str, error: type[Exception]) -> None:
    service = make_front(BadBackend(mode), cache_size=100)
    try:
        results = await asyncio.gather(
            service.score("q", ["a", "b"], max_length=64),
            service.score("r", ["c"], max_length=64),
            return_exceptions=True,
        )
        assert all(isinstance(r, error) for r in results)
        assert len(service.cache) == 0
    finally:
        await service.close()


async def test_cached_answers_only_when_every_document_is_cached() -> None:
    backend = FakeBackend()
    service = make_front(backend, cache_size=100)
    try:
        docs = docs_for(3)
        assert service.cached("q", docs, max_length=64) is None
        scores = await service.score("q", docs, max_length=64)
        assert service.cached("q", docs, max_length=64) == scores
        assert service.cached("q", [*docs, "new document"], max_length=64) is None
    finally:
        await service.close()


async def test_stats_stay_constant_in_size_however_many_batches() -> None:
    """The stats held a list with one entry per batch: a leak in a long-running server."""
    front = make_front(FakeBackend(), wait_ms=0, cache_size=0)
    try:
        for i in range(30):
            await front.score(f"q{i}", [f"doc {i}"], max_length=64)
        stats = dataclasses.asdict(front.stats)
        assert stats["batches"] == 30 and stats["pairs"] == 30 and stats["largest_batch"] == 1
        assert all(isinstance(v, int) for v in stats.values()), stats
    finally:
        await front.close()


class GatedExecutor(Executor):
    """An async executor (as a remote server would be) that holds each group until released."""

    model_id = "gated"

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self.release = asyncio.Event()
        self.running = 0
        self.most_at_once = 0
        self.entered = asyncio.Condition()
        self.groups: list[int] = []

    async def run(self, pairs: Sequence[tuple[str, str]], max_length: int) -> list[float]:
        async with self.entered:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            self.groups.append(len(pairs))
            self.entered.notify_all()
        await self.release.wait()
        self.running -= 1
        return [0.5] * len(pairs)


@pytest.mark.parametrize("concurrency", [1, 2, 3])
async def test_groups_run_up_to_the_executors_concurrency(concurrency: int) -> None:
    executor = GatedExecutor(concurrency)
    front = RerankFront(executor, BatchPolicy(wait_ms=0, max_group=2), cache_size=0)
    try:
        calls = [
            asyncio.create_task(front.score(f"q{i}", ["a", "b"], max_length=64)) for i in range(4)
        ]
        async with executor.entered:
            await executor.entered.wait_for(lambda: executor.running == concurrency)
        # No further group starts while every slot is busy.
        for _ in range(20):
            await asyncio.sleep(0)
        assert executor.running == concurrency
        executor.release.set()
        results = await asyncio.gather(*calls)
        assert results == [[0.5, 0.5]] * 4
        assert executor.most_at_once == concurrency
        assert executor.groups == [2, 2, 2, 2]
    finally:
        await front.close()


async def test_describe_and_health_say_what_runs_and_how_busy() -> None:
    front = make_front(FakeBackend(batch_size=4), wait_ms=3, max_queue=100, cache_size=10)
    try:
        info = front.describe()
        assert info["model"] == FakeBackend.model_id and info["execution"] == "local"
        assert info["backend"] == "FakeBackend" and info["batch_size"] == 4
        assert info["policy"] == {"wait_ms": 3, "max_group": 256, "max_queue": 100}
        await front.score("q", ["x", "y"], max_length=64)
        health = front.health()
        assert health == {
            "loaded": True,
            "queued_pairs": 0,
            "running_groups": 0,
            "cache_entries": 2,
            "cache_hit_ratio": 0.0,
        }
    finally:
        await front.close()


def test_batch_policy_comes_from_config_and_device() -> None:
    from proxy.config import ModelConfig

    auto = ModelConfig(batch_wait_ms=1.5, max_queue=99)
    assert BatchPolicy.for_model(auto, device="cpu", batch_size=8) == BatchPolicy(1.5, 16, 99)
    assert BatchPolicy.for_model(auto, device="cuda", batch_size=64).max_group == 256
    fixed = ModelConfig(max_group=7)
    assert BatchPolicy.for_model(fixed, device="cuda", batch_size=64).max_group == 7


async def test_a_huge_query_makes_small_cache_keys() -> None:
    """Keys held the whole query text: 300 searches with a 1 MiB query kept ~300 MiB."""
    front = make_front(FakeBackend(), wait_ms=0)
    try:
        huge = "apple " * (1 << 18)  # 1.5 MiB
        for i in range(3):
            await front.score(huge + str(i), [f"doc {i}"], max_length=64)
        sizes = {
            sum(len(part) if isinstance(part, bytes) else 0 for part in key)
            for key in front.cache._data
        }
        assert sizes == {32}  # two 16-byte digests, whatever the query
        assert all(
            not isinstance(part, str) or len(part) < 100 for k in front.cache._data for part in k
        )
    finally:
        await front.close()
