"""The score cache shared by every proxy (Redis or Valkey), behind each front's own LRU.

`SharedCache` is what the front awaits: `get_many` for the pairs its LRU misses (one round
trip before scoring) and `put_many` for the pairs a group has just scored (queued, written
after, never awaited by a search). `RedisCache` implements it over one `redis.asyncio`
connection pool (`redis://`, `rediss://`, `unix://`): a lookup is one `MGET`, writes are
pipelined `SET key value EX ttl` batches from one writer task, at most `max_pending_writes`
queued (more are dropped and counted). Every round trip is bounded by `cache.timeout_ms`.

A key is `prefix` + `pair_key(...)`: a 128-bit BLAKE2b digest of the model identity, the
max_length and digests of the query and the document text, so it is the same in every
process and short whatever the query's size. A value is the score's shortest `repr`.

Redis down, slow or erroring never fails a search: `get_many` raises
`SharedCacheUnavailable` and the front scores from its local cache and the model. After a
failure the cache is `down` and skips Redis, except for one probe round trip every
`retry_s`; the first one that succeeds brings it back (the pool reconnects by itself). Each
change of state is logged once. `redis` is imported only when a `RedisCache` is built.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import math
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from ..errors import ModelLoadError, SharedCacheUnavailable

if TYPE_CHECKING:
    from ..config import CacheConfig

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: the key digest's personalisation: bumped when the key's encoding changes, so entries in
#: the old encoding are simply never read again
KEY_VERSION = b"rrproxy-score-v1"


def text_digest(text: str) -> bytes:
    """16 bytes naming a text (a query or a document) in a shared key."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def pair_key(model_id: str, max_length: int, query_digest: bytes, doc_digest: bytes) -> str:
    """The shared cache's key of one (query, document) score, without the prefix.

    Stable across processes and machines (no `hash()`), 32 characters whatever the texts'
    sizes. The document text is what the rule's text settings produced, so they are covered.
    """
    model = model_id.encode()
    h = hashlib.blake2b(digest_size=16, person=KEY_VERSION)
    h.update(len(model).to_bytes(4, "big") + model)
    h.update(max_length.to_bytes(8, "big", signed=True))
    h.update(query_digest)
    h.update(doc_digest)
    return h.hexdigest()


def encode_score(score: float) -> bytes:
    return repr(float(score)).encode()


def decode_score(raw: bytes | str | None) -> float | None:
    """A stored score, or None for a miss or anything that is not a finite number."""
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


class SharedCache(ABC):
    """Pair scores shared between processes; keys come from `pair_key`."""

    @abstractmethod
    async def get_many(self, keys: Sequence[str]) -> list[float | None]:
        """One score or None per key, in order; raises `SharedCacheUnavailable`."""

    @abstractmethod
    async def put_many(self, items: Sequence[tuple[str, float]]) -> None:
        """Hand scores over to be stored; returns at once and never raises."""

    async def flush(self) -> None:  # noqa: B027 - optional hook
        """Wait until the scores handed over so far are written (or dropped)."""

    @property
    def up(self) -> bool:
        """False while the cache is known to be unreachable."""
        return True

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What it is and where, for operators (never credentials)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Write what is queued (bounded) and release connections."""


@dataclass(slots=True)
class SharedCacheStats:
    """Monotonic counters, per pair."""

    hits: int = 0
    misses: int = 0
    errors: int = 0  # pairs looked up while it was down, slow or erroring
    writes: int = 0
    write_errors: int = 0  # pairs whose write failed (or was skipped while down)
    writes_dropped: int = 0  # pairs not queued: `max_pending_writes` were waiting


def redact_url(url: str) -> str:
    """The URL without user name or password."""
    parts = urlsplit(url)
    if parts.hostname is None:
        return f"{parts.scheme}://{parts.path}"
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class RedisCache(SharedCache):
    """`SharedCache` over Redis or Valkey (one `redis.asyncio` connection pool)."""

    def __init__(
        self,
        url: str,
        *,
        ttl: int,
        prefix: str,
        timeout_ms: int,
        max_connections: int = 32,
        max_pending_writes: int = 8192,
        write_batch: int = 512,
        retry_s: float = 1.0,
    ) -> None:
        from redis.asyncio import BlockingConnectionPool, Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.url = redact_url(url)
        self.ttl = ttl
        self.prefix = prefix
        self.timeout_ms = timeout_ms
        self.retry_s = retry_s
        self.max_pending_writes = max_pending_writes
        self.write_batch = write_batch
        self.stats = SharedCacheStats()
        timeout = timeout_ms / 1000
        # One retry inside redis-py, within the same `timeout`: a pooled connection that Redis
        # (a restart, its idle `timeout`) or a middlebox closed is replaced without counting as
        # an outage. A broken connection leaves the pool and the next round trip opens a new
        # one, which is how a restarted Redis is picked up; while down, the probe after
        # `retry_s` is the retry.
        self._pool: BlockingConnectionPool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
        )
        self._redis: Redis = Redis(connection_pool=self._pool)
        self._timeout = timeout
        self._up = True
        self._epoch = 0  # bumped at each change of state
        self._retry_at = 0.0
        self._probing = False
        self._pending: deque[tuple[str, bytes]] = deque()
        self._writing = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._writer: asyncio.Task[None] | None = None

    # -- SharedCache ------------------------------------------------------------------------

    @property
    def up(self) -> bool:
        return self._up

    async def get_many(self, keys: Sequence[str]) -> list[float | None]:
        if not keys:
            return []
        names = [self.prefix + k for k in keys]
        try:
            raw: list[bytes | str | None] = await self._round_trip(lambda: self._redis.mget(names))
        except SharedCacheUnavailable:
            self.stats.errors += len(keys)
            raise
        found = [decode_score(v) for v in raw]
        hits = sum(1 for v in found if v is not None)
        self.stats.hits += hits
        self.stats.misses += len(found) - hits
        return found

    async def put_many(self, items: Sequence[tuple[str, float]]) -> None:
        room = max(0, self.max_pending_writes - len(self._pending))
        if len(items) > room:
            self.stats.writes_dropped += len(items) - room
            items = items[:room]
        if not items:
            return
        self._pending.extend((self.prefix + k, encode_score(v)) for k, v in items)
        self._idle.clear()
        self._wake.set()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(
                self._write_loop(), name="shared-cache-writer"
            )

    async def flush(self) -> None:
        if self._writer is not None and not self._writer.done():
            await self._idle.wait()

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "redis",
            "url": self.url,
            "ttl": self.ttl,
            "prefix": self.prefix,
            "timeout_ms": self.timeout_ms,
            "up": self._up,
            "pending_writes": len(self._pending) + self._writing,
            **asdict(self.stats),
        }

    async def close(self) -> None:
        if self._writer is not None:
            if self._up:
                # What is queued gets about one write round trip per batch, then is dropped.
                batches = 1 + len(self._pending) // self.write_batch
                try:
                    async with asyncio.timeout(self._timeout * batches):
                        await self.flush()
                except TimeoutError:
                    pass
            self._writer.cancel()
            try:
                await self._writer
            except asyncio.CancelledError:
                pass
            self._writer = None
        await self._pool.disconnect()

    # -- the round trip and its state -------------------------------------------------------

    async def _round_trip(self, op: Callable[[], Awaitable[T]]) -> T:
        """`op()` within the timeout, or `SharedCacheUnavailable`; keeps the up/down state."""
        epoch, probe = self._epoch, False
        if not self._up:
            if self._probing or time.monotonic() < self._retry_at:
                raise SharedCacheUnavailable(f"shared cache {self.url} is down")
            probe = self._probing = True
        try:
            async with asyncio.timeout(self._timeout):
                result = await op()
        except Exception as exc:  # any failure of Redis or its client: local cache only
            if epoch == self._epoch:
                self._went_down(exc)
            why = _why(exc, self.timeout_ms)
            raise SharedCacheUnavailable(f"shared cache {self.url}: {why}") from exc
        finally:
            if probe:
                self._probing = False
        # A round trip that started before the last failure says nothing about Redis now.
        if not self._up and epoch == self._epoch:
            self._up = True
            self._epoch += 1
            logger.info("shared score cache %s answers again", self.url)
        return result

    def _went_down(self, exc: Exception) -> None:
        self._retry_at = time.monotonic() + self.retry_s
        if self._up:
            self._up = False
            self._epoch += 1
            logger.warning(
                "shared score cache %s unavailable (%s): local cache only until it answers;"
                " trying again every %g s",
                self.url,
                _why(exc, self.timeout_ms),
                self.retry_s,
            )

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = [
                    self._pending.popleft()
                    for _ in range(min(self.write_batch, len(self._pending)))
                ]
                self._writing = len(batch)
                try:
                    await self._round_trip(functools.partial(self._set_all, batch))
                    self.stats.writes += len(batch)
                except SharedCacheUnavailable:
                    self.stats.write_errors += len(batch)
                finally:
                    self._writing = 0
            self._idle.set()

    async def _set_all(self, batch: Sequence[tuple[str, bytes]]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for name, value in batch:
                pipe.set(name, value, ex=self.ttl)
            await pipe.execute()


def _why(exc: BaseException, timeout_ms: int | None = None) -> str:
    if isinstance(exc, TimeoutError) and not str(exc):
        return f"no answer within {timeout_ms} ms" if timeout_ms else "timed out"
    return f"{type(exc).__name__}: {exc}"


def load_shared_cache(cfg: CacheConfig) -> SharedCache | None:
    """The configured shared cache (`cache.redis_url`), or None for the local cache only.

    Opens no connection: the first lookup does.
    """
    if cfg.redis_url is None:
        return None
    try:
        import redis.asyncio  # noqa: F401
    except ImportError as exc:
        raise ModelLoadError(
            "cache.redis_url is set but the redis package is not installed:"
            " pip install 'rerank-proxy[redis]'"
        ) from exc
    try:
        cache = RedisCache(cfg.redis_url, ttl=cfg.ttl, prefix=cfg.prefix, timeout_ms=cfg.timeout_ms)
    except ValueError as exc:
        raise ModelLoadError(f"cache.redis_url: {exc}") from exc
    logger.info(
        "shared score cache %s (ttl %d s, prefix %r, timeout %d ms)",
        cache.url,
        cfg.ttl,
        cfg.prefix,
        cfg.timeout_ms,
    )
    return cache
