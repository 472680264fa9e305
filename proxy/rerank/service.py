"""The async reranker: cross-request micro-batching and a score cache over one Backend.

Concurrent searches put their pairs into one bounded queue. A single worker takes what is
waiting (after a short, bounded wait for more), hands it to the inference thread as one group
— the backend sorts it by token length into padding-minimal batches — and resolves each
caller's futures. The queue is bounded before work reaches the executor (executor work cannot
be cancelled); a full queue raises `RerankOverloaded` and the search fails open. Scores are
cached in an LRU keyed by model, max_length, query and a hash of the document; identical
pairs already in flight are computed once. A caller that is cancelled drops its pairs if no
one else waits for them and they have not reached the model yet.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..errors import RerankOverloaded
from .base import Backend, check_scores

logger = logging.getLogger(__name__)

CacheKey = tuple[str, int, str, bytes]


def cache_key(model_id: str, max_length: int, query: str, doc: str) -> CacheKey:
    return (model_id, max_length, query, hashlib.blake2b(doc.encode(), digest_size=16).digest())


class ScoreCache:
    """A bounded LRU of pair scores."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data: OrderedDict[CacheKey, float] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: CacheKey) -> float | None:
        value = self._data.get(key)
        if value is None:
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: CacheKey, value: float) -> None:
        if self.capacity <= 0:
            return
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)


@dataclass(slots=True, eq=False)
class _Pending:
    key: CacheKey
    query: str
    doc: str
    max_length: int
    future: asyncio.Future[float]
    waiters: int = 1


@dataclass(slots=True)
class ServiceStats:
    batches: int = 0
    pairs: int = 0
    deduplicated: int = 0
    dropped: int = 0
    sizes: list[int] = field(default_factory=list)


class RerankService:
    """Implements `Reranker` over a Backend."""

    def __init__(
        self,
        backend: Backend,
        *,
        batch_wait_ms: float = 2.0,
        max_queue: int = 4096,
        cache_size: int = 50_000,
        max_group: int = 256,  # pairs handed to the model at once (see cli: per device)
    ) -> None:
        self.backend = backend
        self.model_id = backend.model_id
        self.batch_wait = batch_wait_ms / 1000
        self.max_queue = max_queue
        self.max_group = max_group
        self.cache = ScoreCache(cache_size)
        self.stats = ServiceStats()
        self._queue: list[_Pending] = []
        self._inflight: dict[CacheKey, _Pending] = {}
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rerank-infer")
        self._worker: asyncio.Task[None] | None = None

    def cached(self, query: str, docs: Sequence[str], *, max_length: int) -> list[float] | None:
        """Every document's score from the cache, or None if any is missing (no waiting)."""
        out = []
        for doc in docs:
            score = self.cache.get(cache_key(self.model_id, max_length, query, doc))
            if score is None:
                return None
            out.append(score)
        return out

    async def score(self, query: str, docs: Sequence[str], *, max_length: int) -> list[float]:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(
                self._run(), name="rerank-batcher"
            )
        results: list[float | None] = [None] * len(docs)
        mine: list[tuple[int, _Pending]] = []
        new: list[_Pending] = []
        loop = asyncio.get_running_loop()
        for i, doc in enumerate(docs):
            key = cache_key(self.model_id, max_length, query, doc)
            cached = self.cache.get(key)
            if cached is not None:
                results[i] = cached
                continue
            pending = self._inflight.get(key)
            if pending is not None:
                pending.waiters += 1
                self.stats.deduplicated += 1
            else:
                pending = _Pending(key, query, doc, max_length, loop.create_future())
                new.append(pending)
            mine.append((i, pending))
        if len(self._queue) + len(new) > self.max_queue:
            for _, p in mine:
                p.waiters -= 1
            raise RerankOverloaded(
                f"{len(self._queue)} pairs queued, {len(new)} more would exceed {self.max_queue}"
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
        group = [p for p in alive if p.max_length == first_len][: self.max_group]
        taken = {id(p) for p in group}
        self._queue = [p for p in alive if id(p) not in taken]
        return group

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self.batch_wait > 0 and len(self._queue) < self.max_group:
                await asyncio.sleep(self.batch_wait)
            while self._queue:
                group = self._take_group()
                if not group:
                    break
                await self._infer(loop, group)

    async def _infer(self, loop: asyncio.AbstractEventLoop, group: list[_Pending]) -> None:
        pairs = [(p.query, p.doc) for p in group]
        self.stats.batches += 1
        self.stats.pairs += len(pairs)
        self.stats.sizes.append(len(pairs))
        try:
            raw = await loop.run_in_executor(
                self._executor, self.backend.score_pairs, pairs, group[0].max_length
            )
            scores = check_scores(raw, len(pairs))
        except Exception as exc:  # noqa: BLE001 - every caller of this group fails open
            for p in group:
                self._inflight.pop(p.key, None)
                if not p.future.done():
                    p.future.set_exception(exc)
                    p.future.exception()  # mark retrieved: callers may have gone
            return
        for p, s in zip(group, scores, strict=True):
            self._inflight.pop(p.key, None)
            self.cache.put(p.key, s)
            if not p.future.done():
                p.future.set_result(s)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        self._executor.shutdown(wait=True, cancel_futures=True)
        self.backend.close()
