"""Tests for proxy.offload: small work stays inline, big work goes to the pool, and the pool
makes the interpreter hand its lock back to the loop sooner."""

from __future__ import annotations

import sys
import threading

from proxy import offload


async def test_small_work_runs_on_the_loop_thread() -> None:
    assert await offload.run(offload.OFFLOAD_BYTES, threading.current_thread) is (
        threading.current_thread()
    )


async def test_big_work_runs_in_the_pool_and_shortens_the_switch_interval() -> None:
    worker = await offload.run(offload.OFFLOAD_BYTES + 1, threading.current_thread)
    assert worker is not threading.current_thread()
    assert worker.name.startswith("rerank-proxy-json")
    # 5 ms by default: a loop waiting on two parsing threads got the lock back 4x later
    assert sys.getswitchinterval() <= offload.SWITCH_INTERVAL_S
