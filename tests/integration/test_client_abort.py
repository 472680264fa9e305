"""A client that goes away mid-upload never yields a complete request upstream, nor a retry."""

from __future__ import annotations

import asyncio

import pytest

from proxy.keys import STATE

from .fakes import FakeUpstream, RunningProxy, chunk, eventually

ANNOUNCED = 10 << 20
SENT = 1 << 20


@pytest.mark.parametrize("how", ["close", "reset"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_client_gone_mid_upload_aborts_the_upstream_request(
    proxy: RunningProxy, upstream: FakeUpstream, framing: str, how: str
) -> None:
    if framing == "content-length":
        head = b"POST /_bulk HTTP/1.1\r\nHost: p\r\nContent-Length: %d\r\n\r\n" % ANNOUNCED
        body = b"x" * SENT
    else:
        head = b"POST /_bulk HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n"
        body = b"".join(chunk(b"x" * (64 << 10)) for _ in range(SENT // (64 << 10)))
    client = await proxy.connect()
    await client.send(head + body)
    # Wait until the upload is flowing upstream, then vanish without finishing it.
    await eventually(lambda: bool(upstream.requests) and upstream.requests[0].body_size > 0)
    if how == "reset":
        client.reset()
    else:
        await client.close()

    req = upstream.requests[0]
    await asyncio.wait_for(req.ended.wait(), 5)  # the proxy closed its upstream connection
    assert not req.complete
    assert req.body_size <= SENT
    if framing == "chunked":
        assert not bytes(req.wire).endswith(b"0\r\n\r\n")  # no terminating chunk upstream
    else:
        assert req.declared_length == ANNOUNCED
    await asyncio.sleep(0.3)  # room for a retry, which must not come
    assert len(upstream.requests) == 1
    assert upstream.connections == 1
    await eventually(lambda: proxy.app[STATE].inflight == 0)


async def test_proxy_keeps_serving_after_an_aborted_upload(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    client = await proxy.connect()
    await client.send(b"PUT /idx/_doc/1 HTTP/1.1\r\nHost: p\r\nContent-Length: 1000\r\n\r\n{")
    await eventually(lambda: bool(upstream.requests))
    client.reset()
    await asyncio.wait_for(upstream.requests[0].ended.wait(), 5)

    client = await proxy.connect()
    resp = await client.request(
        b"PUT /idx/_doc/1 HTTP/1.1\r\nHost: p\r\nContent-Length: 2\r\n\r\n{}"
    )
    await client.close()
    assert resp.status == 200
    assert [r.complete for r in upstream.requests] == [False, True]
