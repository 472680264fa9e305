"""The reranker's front: score cache, in-flight dedupe, queue bound, batching and stats.

Implements `Reranker` over any `Executor` and does not know which one it has. Concurrent
searches put their pairs into one bounded queue. A worker takes what is waiting (after a
short, bounded wait for more) as one group of at most `policy.max_group` pairs of one
`max_length`, and hands it to the executor; up to `executor.concurrency` groups run at once
(one for a local inference thread, more for a remote server). The queue is bounded before
work reaches the executor; a full queue raises `RerankOverloaded` and the search fails open.
Scores are cached in an LRU keyed by model, max_length, query and a hash of the document;
behind it an optional `SharedCache` (Redis) shared by every proxy is asked once per search for
the pairs the LRU misses and that are not in flight, and told the scores of every group after
it is scored; when it is down or slow the search goes on with the local cache. Identical
pairs already in flight are computed once. A caller that is cancelled drops its
pairs if no one else waits for them and they have not reached the executor yet. Stats are
counters only: nothing grows with the number of batches served.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import RerankError, RerankOverloaded, SharedCacheUnavailable
from .base import BatchPolicy, Executor, RerankObserver, check_scores
from .shared_cache import SharedCache, pair_key, text_digest

logger = logging.getLogger(__name__)

#: (model id, max_length, digest of the query, digest of the document): every entry is the
#: same few dozen bytes whatever the texts' sizes, so bounding entries bounds bytes (a 1 MiB
#: query no longer holds 1 MiB per cached pair)
CacheKey = tuple[str, int, bytes, bytes]


def cache_keys(model_id: str, max_length: int, query: str, docs: Sequence[str]) -> list[CacheKey]:
    """The cache keys of a query's documents (the query hashed once)."""
    q = text_digest(query)
    return [(model_id, max_length, q, text_digest(doc)) for doc in docs]


def cache_key(model_id: str, max_length: int, query: str, doc: str) -> CacheKey:
    return cache_keys(model_id, max_length, query, [doc])[0]


class ScoreCache:
    """A bounded LRU of pair scores."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data: OrderedDict[CacheKey, float] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: CacheKey, *, count: bool = True) -> float | None:
        """The cached score, or None; `count=False` for a look that is not a lookup."""
        value = self._data.get(key)
        if value is None:
            self.misses += count
            return None
        self._data.move_to_end(key)
        self.hits += count
        return value

    @property
    def hit_ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def put(self, key: CacheKey, value: float) -> int:
        """Keep `value`; return how many least recently used scores made room for it."""
        if self.capacity <= 0:
            return 0
        self._data[key] = value
        self._data.move_to_end(key)
        evicted = 0
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)
            evicted += 1
        return evicted


@dataclass(slots=True, eq=False)
class _Pending:
    key: CacheKey
    query: str
    doc: str
    max_length: int
    future: asyncio.Future[float]
    queued_at: float = 0.0
    waiters: int = 1
    shared_key: str = ""  # its key in the shared cache ("" without one)


@dataclass(slots=True)
class FrontStats:
    """Monotonic counters (and one maximum): constant size however long the server runs."""

    batches: int = 0
    pairs: int = 0
    deduplicated: int = 0
    dropped: int = 0
    failed_batches: int = 0
    largest_batch: int = 0
    shared_hits: int = 0
    shared_misses: int = 0
    shared_errors: int = 0  # pairs looked up while the shared cache was down or slow


class RerankFront:
    """`Reranker` over an `Executor`."""

    def __init__(
        self,
        executor: Executor,
        policy: BatchPolicy | None = None,
        *,
        cache_size: int = 50_000,
        shared: SharedCache | None = None,
    ) -> None:
        self.executor = executor
        self.model_id = executor.model_id
        self.policy = policy or BatchPolicy()
        self.cache = ScoreCache(cache_size)
        self.shared = shared
        self.stats = FrontStats()
        self._queue: list[_Pending] = []
        self._inflight: dict[CacheKey, _Pending] = {}
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(max(1, executor.concurrency))
        self._running: set[asyncio.Task[None]] = set()
        self._worker: asyncio.Task[None] | None = None
        self._observer: RerankObserver | None = None

    # -- Reranker --------------------------------------------------------------------------

    def set_observer(self, observer: RerankObserver | None) -> None:
        self._observer = observer

    def cached(self, query: str, docs: Sequence[str], *, max_length: int) -> list[float] | None:
        # A look, not a lookup: a miss here is followed by `score`, which counts the pairs.
        out = []
        for key in cache_keys(self.model_id, max_length, query, docs):
            score = self.cache.get(key, count=False)
            if score is None:
                return None
            out.append(score)
        self.cache.hits += len(out)
        if self._observer is not None:
            self._observer.observe_lookups(len(out), 0)
        return out

    async def score(self, query: str, docs: Sequence[str], *, max_length: int) -> list[float]:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(
                self._run(), name="rerank-batcher"
            )
        keys = cache_keys(self.model_id, max_length, query, docs)
        results: list[float | None] = [self.cache.get(key) for key in keys]
        missing = [i for i, r in enumerate(results) if r is None]
        if self._observer is not None:
            self._observer.observe_lookups(len(docs) - len(missing), len(missing))
        shared_keys: dict[int, str] = {}
        looked_up = False
        if self.shared is not None and missing:
            query_digest = text_digest(query)
            for i in missing:
                shared_keys[i] = pair_key(self.model_id, max_length, query_digest, keys[i][3])
            ask = [i for i in missing if keys[i] not in self._inflight]
            if ask:
                await self._lookup_shared(self.shared, ask, keys, shared_keys, results)
                looked_up = True
        mine: list[tuple[int, _Pending]] = []
        new: list[_Pending] = []
        loop = asyncio.get_running_loop()
        for i in missing:
            if results[i] is not None:
                continue
            key = keys[i]
            if looked_up:
                # Scored by another search while this one waited for the shared cache.
                late = self.cache.get(key, count=False)
                if late is not None:
                    results[i] = late
                    continue
            pending = self._inflight.get(key)
            if pending is not None:
                pending.waiters += 1
                self.stats.deduplicated += 1
            else:
                pending = _Pending(
                    key,
                    query,
                    docs[i],
                    max_length,
                    loop.create_future(),
                    loop.time(),
                    shared_key=shared_keys.get(i, ""),
                )
                new.append(pending)
            mine.append((i, pending))
        if len(self._queue) + len(new) > self.policy.max_queue:
            for _, p in mine:
                p.waiters -= 1
            raise RerankOverloaded(
                f"{len(self._queue)} pairs queued, {len(new)} more would exceed"
                f" {self.policy.max_queue}"
            )
        for p in new:
            self._inflight[p.key] = p
            self._queue.append(p)
        if new:
            self._wakeup.set()
        try:
            for i, p in mine:
                results[i] = await asyncio.shield(p.future)
        except asyncio.CancelledError:
            for _, p in mine:
                p.waiters -= 1
            raise
        return [r for r in results if r is not None]

    async def _lookup_shared(
        self,
        shared: SharedCache,
        ask: list[int],
        keys: list[CacheKey],
        shared_keys: dict[int, str],
        results: list[float | None],
    ) -> None:
        """One shared-cache round trip for the pairs at `ask`; hits fill the LRU and `results`.

        Down, slow or erroring: nothing found, the pairs go to the model (counted as errors).
        """
        try:
            found = await shared.get_many([shared_keys[i] for i in ask])
        except SharedCacheUnavailable:
            found = []
        if len(found) != len(ask):
            errors, hits = len(ask), 0
        else:
            errors = hits = evicted = 0
            for i, score in zip(ask, found, strict=True):
                if score is not None:
                    hits += 1
                    results[i] = score
                    evicted += self.cache.put(keys[i], score)
            self._evicted(evicted)
        misses = len(ask) - hits - errors
        self.stats.shared_hits += hits
        self.stats.shared_misses += misses
        self.stats.shared_errors += errors
        if self._observer is not None:
            self._observer.observe_shared(hits, misses, errors)

    def _evicted(self, n: int) -> None:
        if n and self._observer is not None:
            self._observer.observe_evictions(n)

    def describe(self) -> dict[str, Any]:
        return {
            **self.executor.describe(),
            "policy": asdict(self.policy),
            "cache_size": self.cache.capacity,
            **({"shared_cache": self.shared.describe()} if self.shared is not None else {}),
        }

    def health(self) -> dict[str, Any]:
        return {
            "loaded": True,
            "queued_pairs": len(self._queue),
            "running_groups": len(self._running),
            "cache_entries": len(self.cache),
            "cache_hit_ratio": self.cache.hit_ratio,
            **({"shared_cache_up": self.shared.up} if self.shared is not None else {}),
        }

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
        try:
            await self.executor.close()
        finally:
            if self.shared is not None:
                await self.shared.close()

    # -- the batcher -----------------------------------------------------------------------

    @property
    def queued(self) -> int:
        return len(self._queue)

    def _take_group(self) -> list[_Pending]:
        alive = [p for p in self._queue if p.waiters > 0]
        dropped = len(self._queue) - len(alive)
        if dropped:
            self.stats.dropped += dropped
            for p in self._queue:
                if p.waiters <= 0:
                    self._inflight.pop(p.key, None)
                    p.future.cancel()
        first_len = alive[0].max_length if alive else 0
        group = [p for p in alive if p.max_length == first_len][: self.policy.max_group]
        taken = {id(p) for p in group}
        self._queue = [p for p in alive if id(p) not in taken]
        return group

    async def _run(self) -> None:
        wait = self.policy.wait_ms / 1000
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if wait > 0 and len(self._queue) < self.policy.max_group:
                await asyncio.sleep(wait)
            while self._queue:
                # The group is formed once a slot is free, so pairs that arrive while the
                # executor is busy join it.
                await self._slots.acquire()
                group = self._take_group()
                if not group:
                    self._slots.release()
                    break
                task = asyncio.get_running_loop().create_task(self._infer(group))
                self._running.add(task)
                task.add_done_callback(self._running.discard)

    async def _infer(self, group: list[_Pending]) -> None:
        pairs = [(p.query, p.doc) for p in group]
        self.stats.batches += 1
        self.stats.pairs += len(pairs)
        self.stats.largest_batch = max(self.stats.largest_batch, len(pairs))
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            raw = await self.executor.run(pairs, group[0].max_length)
            scores = check_scores(raw, len(pairs))
            if self._observer is not None:
                waited = started - min(p.queued_at for p in group)
                self._observer.observe_group(len(pairs), waited, loop.time() - started)
        except asyncio.CancelledError:
            self._fail(group, RerankError("the reranker is shutting down"))
            raise
        except Exception as exc:  # noqa: BLE001 - every caller of this group fails open
            self.stats.failed_batches += 1
            self._fail(group, exc)
            return
        finally:
            self._slots.release()
        evicted = 0
        for p, s in zip(group, scores, strict=True):
            self._inflight.pop(p.key, None)
            evicted += self.cache.put(p.key, s)
            if not p.future.done():
                p.future.set_result(s)
        self._evicted(evicted)
        if self.shared is not None:
            # Queued, not awaited on Redis: the callers already have their scores.
            stored = [(p.shared_key, s) for p, s in zip(group, scores, strict=True) if p.shared_key]
            if stored:
                await self.shared.put_many(stored)

    def _fail(self, group: list[_Pending], exc: BaseException) -> None:
        for p in group:
            self._inflight.pop(p.key, None)
            if not p.future.done():
                p.future.set_exception(exc)
                p.future.exception()  # mark retrieved: callers may have gone
