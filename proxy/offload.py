"""Heavy pure work off the event loop: parsing and writing big JSON, gzip of big bodies.

One event loop serves every connection, so one request's CPU work is every other request's
latency: a 28 MiB JSON array took 7 s to decode, parse and write again, and the health probe
waited all that time. Work on a body over `OFFLOAD_BYTES` runs here instead, in a small
thread pool of its own: the interpreter switches threads every few milliseconds, so the
loop keeps answering while a big response is parsed or written, and at most `WORKERS` such
jobs run at once (more wait their turn here, not on the loop). Smaller bodies, nearly all of
them, are handled inline: a thread hop costs more than their work.

Request bodies have a hard bound as well (`upstream.max_search_body_bytes`, see `fetch`);
this module bounds where the work of a body under it, or of the engine's response, runs.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

#: Bodies up to this many bytes are parsed and written on the loop (well under 1 ms of work)
OFFLOAD_BYTES = 64 * 1024
WORKERS = 2

_P = ParamSpec("_P")
_T = TypeVar("_T")
_pool: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="rerank-proxy-json")
    return _pool


async def run(size: int, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """`fn(*args, **kwargs)`, in the pool when `size` (the bytes it works on) is large."""
    if size <= OFFLOAD_BYTES:
        return fn(*args, **kwargs)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_executor(), functools.partial(fn, *args, **kwargs))
