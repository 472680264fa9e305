"""The reranking interfaces, the batching policy and backend loading.

Three layers, each knowing only the one below it:

- `Reranker` is what the request path awaits: scores for a query's documents, a cache
  lookup that never waits, a description and a health report. `front.RerankFront` implements
  it (score cache, in-flight dedupe, queue bound, cross-request batching, stats).
- `Executor` is the pluggable execution part the front hands groups of pairs to, awaited:
  `local.LocalExecutor` runs a `Backend` on its inference thread; a remote inference server
  is another `Executor` (an HTTP client) behind the same front.
- `Backend` is a synchronous cross-encoder (torch, ONNX Runtime, OpenVINO, fake), never
  called on the event loop. The names come from `registry.BACKENDS`.

How the front batches is configuration (`BatchPolicy.for_model`), not a backend attribute.
Loading what the config names is `loader.py`'s.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import InvalidScores

if TYPE_CHECKING:
    from ..config import ModelConfig


class RerankObserver(Protocol):
    """Told what the reranker does, for metrics (`metrics.Metrics` is one)."""

    def observe_group(self, size: int, queue_wait_s: float, inference_s: float) -> None: ...

    def observe_lookups(self, hits: int, misses: int) -> None: ...

    def observe_evictions(self, n: int) -> None:
        """Scores dropped from the local cache to make room for new ones."""
        ...

    def observe_shared(self, hits: int, misses: int, errors: int) -> None:
        """Pairs looked up in the shared cache: found, not found, not answered (down/slow)."""
        ...


class Reranker(Protocol):
    """Scores documents against a query; awaited on the event loop."""

    model_id: str

    def set_observer(self, observer: RerankObserver | None) -> None:
        """Report groups and cache lookups to `observer` from now on."""
        ...

    def cached(self, query: str, docs: Sequence[str], *, max_length: int) -> list[float] | None:
        """Every document's score from the cache, or None if any is missing (never waits)."""
        ...

    async def score(self, query: str, docs: Sequence[str], *, max_length: int) -> list[float]:
        """One score per document, in order; raises `RerankError` subclasses to fail open."""
        ...

    def describe(self) -> Mapping[str, Any]:
        """What runs behind it (model, backend, device, batching policy), for operators."""
        ...

    def health(self) -> Mapping[str, Any]:
        """Whether it can score now (`loaded`) and how busy it is."""
        ...

    async def close(self) -> None: ...


class Executor(ABC):
    """Scores one group of pairs, awaited; the front decides what goes in a group."""

    #: stable identity of the weights and numerics (part of every cache key)
    model_id: str = "executor"
    #: where the forward passes run: "cpu", "cuda" or "remote"
    device: str = "cpu"
    #: pairs per forward pass (the default group is a couple of these on CPU)
    batch_size: int = 8
    #: groups it can run at once (one inference thread: 1; a remote server: more)
    concurrency: int = 1

    @abstractmethod
    async def run(self, pairs: Sequence[tuple[str, str]], max_length: int) -> list[float]:
        """Scores in (0, 1) for each (query, document) pair, in input order."""

    def describe(self) -> dict[str, Any]:
        return {"model": self.model_id, "device": self.device, "batch_size": self.batch_size}

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""


class Backend(ABC):
    """A synchronous cross-encoder; never called on the event loop."""

    #: stable identity of the weights and numerics (part of every cache key)
    model_id: str = "backend"
    #: pairs per forward pass
    batch_size: int = 8
    #: where the forward passes run: "cpu" or "cuda"
    device: str = "cpu"

    @abstractmethod
    def score_pairs(self, pairs: Sequence[tuple[str, str]], max_length: int) -> list[float]:
        """Scores in (0, 1) for each (query, document) pair, in input order."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """How the front groups pairs from concurrent searches before the executor sees them."""

    wait_ms: float = 2.0  # how long a group waits for pairs from other searches
    max_group: int = 256  # pairs handed to the executor at once
    max_queue: int = 4096  # pairs waiting before new searches fail open (overload)

    @classmethod
    def for_model(cls, cfg: ModelConfig, *, device: str, batch_size: int) -> BatchPolicy:
        """The configured policy; `max_group: 0` picks per device.

        On CPU a group bigger than a couple of batches only makes every search in it wait
        for the slowest (bench.search); on GPU large groups are what make batching pay.
        """
        group = cfg.max_group or (256 if device == "cuda" else 2 * batch_size)
        return cls(wait_ms=cfg.batch_wait_ms, max_group=group, max_queue=cfg.max_queue)


def check_scores(scores: Sequence[float], expected: int) -> list[float]:
    """Reject the wrong number of scores and NaN/inf (the search then fails open)."""
    if len(scores) != expected:
        raise InvalidScores(f"model returned {len(scores)} scores for {expected} documents")
    out = [float(s) for s in scores]
    if not all(math.isfinite(s) for s in out):
        raise InvalidScores("model returned a non-finite score")
    return out
