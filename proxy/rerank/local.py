"""The local execution part: a `Backend` on one dedicated inference thread.

Inference never runs on the event loop. The front bounds what is queued before a group gets
here (work handed to a thread cannot be cancelled), and this executor runs one group at a
time: a second thread would only make two groups compete for the same cores.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .base import Backend, Executor


class LocalExecutor(Executor):
    """Runs `backend.score_pairs` on a single inference thread."""

    concurrency = 1

    def __init__(self, backend: Backend, *, name: str = "") -> None:
        self.backend = backend
        self.name = name or type(backend).__name__
        self.model_id = backend.model_id
        self.device = backend.device
        self.batch_size = backend.batch_size
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rerank-infer")

    async def run(self, pairs: Sequence[tuple[str, str]], max_length: int) -> list[float]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.backend.score_pairs, pairs, max_length)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "backend": self.name, "execution": "local"}

    async def close(self) -> None:
        # A group still on the thread finishes first; waiting for it must not block the loop.
        await asyncio.to_thread(self._pool.shutdown, wait=True, cancel_futures=True)
        self.backend.close()
