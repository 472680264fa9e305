"""Shadow mode: rerank after the client has its answer, and record what would have changed.

A search under a `mode: shadow` rule is sent to the engine exactly as the client sent it and
the engine's bytes go back unchanged, with no added latency. After the response, a
`ShadowJob` (the planned, widened search and the caller's own headers, so the cluster's
security applies) goes into a bounded queue; when the queue is full the job is dropped and
counted, never waited for. A background worker fetches the window, scores it with the same
reranker, and compares the two orders with `compare`: top-k overlap of the client's page,
the mean rank displacement over the window, and the hits the reranker would have promoted
into the page. These go to metrics and, sampled, to a JSON Lines log (`shadow.log`), one
object per search, for comparing the orders on real traffic offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multidict import CIMultiDict

from . import jsoncodec, offload
from .config import ShadowConfig
from .errors import ProxyError
from .metrics import Metrics
from .plan import SearchPlan, rerankable_response
from .rerank.base import Reranker
from .score import Ranking, score_window, window_texts
from .upstream import Upstream

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ShadowJob:
    """One search to rerank in the background."""

    method: str
    path: str  # the widened search's raw path and query
    headers: CIMultiDict[str]
    body: bytes
    plan: SearchPlan
    target: str
    max_length: int


@dataclass(frozen=True, slots=True)
class Comparison:
    """What the reranker would have changed for one search."""

    engine: tuple[str, ...]  # window ids in the engine's order
    reranked: tuple[str, ...]  # window ids in the reranker's order
    page_overlap: float  # share of the client's page that both orders put there
    displacement: float  # mean |new rank - engine rank| over the window
    promoted: tuple[str, ...]  # ids the reranker would have brought into the page


def _hit_id(hit: Any, i: int) -> str:
    return str(hit.get("_id", i)) if isinstance(hit, Mapping) else str(i)


def compare(window: Sequence[Any], plan: SearchPlan, ranking: Ranking) -> Comparison:
    """Compare the engine's window with the reranked one, for the client's page. Pure."""
    engine = [_hit_id(h, i) for i, h in enumerate(window)]
    reranked = [engine[i] for i in ranking.order]
    lo, hi = plan.from_, plan.from_ + plan.size
    engine_page, new_page = engine[lo:hi], reranked[lo:hi]
    size = max(1, len(engine_page))
    overlap = len(set(engine_page) & set(new_page)) / size
    rank_of = {doc: r for r, doc in enumerate(reranked)}
    moves = [abs(rank_of[d] - r) for r, d in enumerate(engine) if d in rank_of]
    return Comparison(
        engine=tuple(engine),
        reranked=tuple(reranked),
        page_overlap=overlap,
        displacement=sum(moves) / len(moves) if moves else 0.0,
        promoted=tuple(d for d in new_page if d not in set(engine_page)),
    )


def _logged(cfg: ShadowConfig, job: ShadowJob) -> bool:
    if cfg.log is None or cfg.log_sample <= 0:
        return False
    key = f"{job.target}\0{job.plan.query}".encode()
    point = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") / 2**64
    return point < cfg.log_sample


class ShadowRunner:
    """The bounded background queue and its worker."""

    def __init__(
        self, cfg: ShadowConfig, upstream: Upstream, reranker: Reranker | None, metrics: Metrics
    ) -> None:
        self.cfg = cfg
        self.upstream = upstream
        self.reranker = reranker
        self.metrics = metrics
        self._queue: asyncio.Queue[ShadowJob] = asyncio.Queue(maxsize=cfg.queue)
        self._worker: asyncio.Task[None] | None = None
        self.done = asyncio.Event()  # set after each job (tests wait on it)

    def submit(self, job: ShadowJob) -> bool:
        """Queue a job; False (and counted) when the queue is full."""
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="shadow")
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self.metrics.shadow.labels(result="dropped").inc()
            return False
        return True

    async def _run(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                await self._one(job)
            except asyncio.CancelledError:
                raise
            except (ProxyError, ValueError, KeyError, TypeError) as exc:
                # Nothing here can reach a client: count it and carry on.
                self.metrics.shadow.labels(result="failed").inc()
                logger.info("shadow rerank failed for %s: %s", job.target, exc)
            finally:
                self._queue.task_done()
                self.done.set()

    async def _one(self, job: ShadowJob) -> None:
        up = await self.upstream.fetch(
            job.method, job.path, job.headers, job.body, max_bytes=16 << 20
        )
        if up is None or not 200 <= up.status < 300:
            self.metrics.shadow.labels(result="failed").inc()
            return
        doc = await offload.run(len(up.body), jsoncodec.loads, up.body)
        if rerankable_response(doc) is not None:
            self.metrics.shadow.labels(result="failed").inc()
            return
        window = doc["hits"]["hits"][: job.plan.rule.window]
        texts = window_texts(doc, job.plan)
        t0 = time.perf_counter()
        ranking = await score_window(
            self.reranker, job.plan, window, texts, max_length=job.max_length
        )
        self.metrics.rerank_duration.observe(time.perf_counter() - t0)
        if ranking is None:
            self.metrics.shadow.labels(result="failed").inc()
            return
        result = compare(window, job.plan, ranking)
        self.metrics.shadow.labels(result="compared").inc()
        self.metrics.shadow_overlap.observe(result.page_overlap)
        self.metrics.shadow_displacement.observe(result.displacement)
        self.metrics.shadow_promoted.inc(len(result.promoted))
        if _logged(self.cfg, job):
            self._write(job, result, ranking)

    def _write(self, job: ShadowJob, result: Comparison, ranking: Ranking) -> None:
        if self.cfg.log is None:
            return
        record = {
            "ts": time.time(),
            "target": job.target,
            "query": job.plan.query,
            "from": job.plan.from_,
            "size": job.plan.size,
            "engine": list(result.engine),
            "reranked": list(result.reranked),
            "scores": list(ranking.scores),
            "page_overlap": result.page_overlap,
            "displacement": result.displacement,
            "promoted": list(result.promoted),
        }
        try:
            with Path(self.cfg.log).open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        except OSError as exc:
            logger.warning("shadow log %s: %s", self.cfg.log, exc)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
