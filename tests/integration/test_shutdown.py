"""Graceful shutdown: requests in flight when the runner is cleaned up still complete."""

from __future__ import annotations

import asyncio

import pytest

from .conftest import StartProxy
from .fakes import FakeUpstream, RawClient, Received, chunk, eventually, http_response

BODY = b'{"acknowledged":true,"pad":"' + b"x" * 100_000 + b'"}'


@pytest.mark.parametrize("slow", ["headers", "body"])
async def test_in_flight_request_completes_during_cleanup(
    start_proxy: StartProxy, upstream: FakeUpstream, slow: str
) -> None:
    async def slow_answer(req: Received, writer: asyncio.StreamWriter) -> bool:
        if slow == "headers":  # a slow `_forcemerge`: nothing until it is done
            await asyncio.sleep(0.8)
            writer.write(http_response(200, [("Content-Type", "application/json")], BODY))
        else:  # a response that trickles out
            writer.write(
                http_response(200, [("Transfer-Encoding", "chunked")], content_length=False)
            )
            for i in range(0, len(BODY), len(BODY) // 8 + 1):
                writer.write(chunk(BODY[i : i + len(BODY) // 8 + 1]))
                await writer.drain()
                await asyncio.sleep(0.1)
            writer.write(b"0\r\n\r\n")
        return True

    upstream.handler = slow_answer
    # A shutdown timeout far past the test's own bound: if the proxy waited for it rather
    # than for the in-flight request, `wait_for` below fails.
    proxy = await start_proxy(shutdown_timeout=3600.0)
    client = await proxy.connect()
    await client.send(b"POST /idx/_forcemerge HTTP/1.1\r\nHost: p\r\n\r\n")
    await eventually(lambda: bool(upstream.requests))

    cleanup = asyncio.create_task(proxy.stop())
    resp = await client.response(timeout=10)
    assert (resp.status, resp.complete, resp.body) == (200, True, BODY)
    await asyncio.wait_for(cleanup, timeout=60)  # done once the request is, not at 3600 s
    await client.close()

    with pytest.raises(OSError):  # and no longer listens
        await RawClient.connect(proxy.port)
