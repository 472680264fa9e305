"""Heavy pure work off the event loop: parsing and writing big JSON, gzip of big bodies.

One event loop serves every connection, so one request's CPU work is every other request's
latency: a 28 MiB JSON array took 7 s to decode, parse and write again, and the health probe
waited all that time. Work on a body over `OFFLOAD_BYTES` runs here instead, in a small
thread pool of its own: the interpreter switches threads every few milliseconds, so the
loop keeps answering while a big response is parsed or written, and at most `WORKERS` such
jobs run at once (more wait their turn here, not on the loop). Smaller bodies, nearly all of
them, are handled inline: a thread hop costs more than their work.

The interpreter hands its lock to a waiting thread only every `sys.getswitchinterval()`
(5 ms by default), and a probe's answer needs the lock a few times: with two pool threads
parsing 20 MiB windows, the loop waited 30 ms p50, 220 ms p99 (`bench.hostile`,
`huge-window`). When the pool starts, the interval drops to `SWITCH_INTERVAL_S` (1 ms):
the same attack then cost the probe 8 ms p50, 90-130 ms p99. Nothing switches while one
thread alone wants the lock, so this costs nothing when the pool is idle; while it works,
the work takes about 4% longer (four parse-and-write rounds of a 20 MiB window against a
ticking loop: 9.6-10.1 s at 5 ms, 10.0-10.5 s at 1 ms).

Request bodies have a hard bound as well (`upstream.max_search_body_bytes`, see `fetch`);
this module bounds where the work of a body under it, or of the engine's response, runs.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

#: Bodies up to this many bytes are parsed and written on the loop (well under 1 ms of work)
OFFLOAD_BYTES = 64 * 1024
WORKERS = 2
#: The interpreter's thread switch interval once the pool exists (see above)
SWITCH_INTERVAL_S = 0.001

_P = ParamSpec("_P")
_T = TypeVar("_T")
_pool: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
        _pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="rerank-proxy-json")
    return _pool


async def run(size: int, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """`fn(*args, **kwargs)`, in the pool when `size` (the bytes it works on) is large."""
    if size <= OFFLOAD_BYTES:
        return fn(*args, **kwargs)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_executor(), functools.partial(fn, *args, **kwargs))
