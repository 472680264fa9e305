"""The reranking interfaces and the backend registry.

`Backend` is the synchronous model: it scores (query, document) pairs on the inference
thread. `Reranker` is what the app awaits; `RerankService` (service.py) implements it with
micro-batching and a score cache on top of one Backend. Adding a backend touches one new file
and one line of `_REGISTRY`.
"""

from __future__ import annotations

import importlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from ..errors import InvalidScores

if TYPE_CHECKING:
    from ..config import ModelConfig


class Reranker(Protocol):
    """Scores documents against a query; awaited on the event loop."""

    model_id: str

    async def score(self, query: str, docs: Sequence[str], *, max_length: int) -> list[float]: ...

    async def close(self) -> None: ...


class Backend(ABC):
    """A synchronous cross-encoder; never called on the event loop."""

    #: stable identity of the weights and numerics (part of every cache key)
    model_id: str = "backend"
    #: pairs per forward pass
    batch_size: int = 8
    #: where the forward passes run: "cpu" or "cuda" (sizes the service's groups)
    device: str = "cpu"

    @abstractmethod
    def score_pairs(self, pairs: Sequence[tuple[str, str]], max_length: int) -> list[float]:
        """Scores in (0, 1) for each (query, document) pair, in input order."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""


def check_scores(scores: Sequence[float], expected: int) -> list[float]:
    """Reject the wrong number of scores and NaN/inf (the search then fails open)."""
    if len(scores) != expected:
        raise InvalidScores(f"model returned {len(scores)} scores for {expected} documents")
    out = [float(s) for s in scores]
    if not all(math.isfinite(s) for s in out):
        raise InvalidScores("model returned a non-finite score")
    return out


# backend name -> "module:factory"; factories take (ModelConfig) and return a Backend.
_REGISTRY: dict[str, str] = {
    "torch": "proxy.rerank.torch_backend:load_torch",
    "torch-bf16": "proxy.rerank.torch_backend:load_torch_bf16",
    "torch-fp32": "proxy.rerank.torch_backend:load_torch_fp32",
    "onnx": "proxy.rerank.onnx_backend:load_onnx",
    "onnx-int8": "proxy.rerank.onnx_backend:load_onnx_int8",
    "openvino": "proxy.rerank.openvino_backend:load_openvino",
    "openvino-bf16": "proxy.rerank.openvino_backend:load_openvino_bf16",
    "fake": "proxy.rerank.fake:load_fake",
}


def resolve_backend_name(cfg: ModelConfig) -> str:
    """`auto`: torch fp16 on CUDA, ONNX Runtime fp32 on CPU when installed, else torch."""
    if cfg.backend != "auto":
        return cfg.backend
    from .device import pick_device

    if pick_device(cfg.device) == "cuda":
        return "torch"
    try:
        importlib.import_module("onnxruntime")
        importlib.import_module("onnx")
    except ImportError:
        return "torch"
    return "onnx"


def load_backend(cfg: ModelConfig) -> Backend:
    """Load the configured backend (blocking: call before the port opens)."""
    module_name, _, attr = _REGISTRY[resolve_backend_name(cfg)].partition(":")
    factory: Callable[[ModelConfig], Backend] = getattr(importlib.import_module(module_name), attr)
    return factory(cfg)
