"""Graceful shutdown: requests in flight when the runner is cleaned up still complete."""

from __future__ import annotations

import asyncio

import pytest

from proxy.keys import STATE

from .conftest import StartProxy
from .fakes import FakeUpstream, RawClient, Received, chunk, eventually, held, http_response

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


async def test_a_request_on_an_idle_connection_during_shutdown_is_not_left_hanging(
    start_proxy: StartProxy, upstream: FakeUpstream
) -> None:
    """While one request keeps the shutdown waiting, a kept-alive idle connection that sends
    another gets an answer or a close at once, not silence until the shutdown timeout."""
    release = asyncio.Event()
    upstream.handler = held(release)
    proxy = await start_proxy(shutdown_timeout=3600.0)
    idle = await proxy.connect()
    assert (await idle.request(b"GET /idx/_doc/1 HTTP/1.1\r\nHost: p\r\n\r\n")).status == 200
    busy = await proxy.connect()
    await busy.send(b"POST /slow/_forcemerge HTTP/1.1\r\nHost: p\r\n\r\n")
    await eventually(lambda: len(upstream.requests) == 2)

    cleanup = asyncio.create_task(proxy.stop())
    await eventually(lambda: proxy.app[STATE].started_up is False or not proxy.runner.sites)
    try:
        await idle.send(b"GET /idx/_doc/2 HTTP/1.1\r\nHost: p\r\n\r\n")
    except ConnectionError:
        pass  # closed already: as good as an answer
    else:
        # Either a response or the connection closed, while the shutdown still waits.
        got = await asyncio.wait_for(idle.reader.read(1), timeout=10)
        assert got in (b"", b"H")
    assert not cleanup.done()
    release.set()
    assert (await busy.response(method="POST")).status == 200
    await asyncio.wait_for(cleanup, timeout=60)
