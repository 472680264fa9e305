"""A deterministic, dependency-free backend: word overlap between query and document.

For tests and demos of the proxy's mechanics; not a model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .base import Backend

if TYPE_CHECKING:
    from ..config import ModelConfig

_WORD = re.compile(r"\w+")


class FakeBackend(Backend):
    model_id = "fake-overlap-v1"

    def __init__(self, batch_size: int = 8) -> None:
        self.batch_size = batch_size
        self.calls = 0
        self.pairs_scored = 0

    def score_pairs(self, pairs: Sequence[tuple[str, str]], max_length: int) -> list[float]:
        self.calls += 1
        self.pairs_scored += len(pairs)
        out = []
        for query, doc in pairs:
            q = set(_WORD.findall(query.lower()))
            d = _WORD.findall(doc.lower())[:max_length]
            overlap = sum(1 for w in d if w in q) / (1 + len(d)) if q else 0.0
            out.append(1 / (1 + math.exp(-(10 * overlap - 1))))
        return out


def load_fake(cfg: ModelConfig) -> Backend:
    return FakeBackend(batch_size=cfg.batch_size or 8)
