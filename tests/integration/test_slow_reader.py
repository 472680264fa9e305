"""A client that stops reading a streamed response is cut after `listen.send_timeout`, and
the upstream connection it held goes back to the pool (with a pool of one, the next request
would otherwise wait for ever)."""

from __future__ import annotations

import asyncio
import json

from proxy.app import create_app
from proxy.config import parse_config
from proxy.keys import METRICS

from .conftest import StartProxy
from .fakes import FakeUpstream, Received, eventually, held, http_response, proxy_config, start_app

BIG = 32 << 20  # far past what the sockets between the proxy and the client can buffer


async def test_a_client_that_stops_reading_is_cut_and_frees_the_upstream(
    upstream: FakeUpstream,
) -> None:
    async def answer(req: Received, writer: asyncio.StreamWriter) -> bool:
        if req.target == "/big":
            writer.write(http_response(200, [("Content-Length", str(BIG))], content_length=False))
            for _ in range(BIG >> 20):
                writer.write(b"x" * (1 << 20))
                await writer.drain()
        else:
            writer.write(http_response(200, [("Content-Type", "application/json")], b"{}"))
        return True

    upstream.handler = answer
    raw = {**proxy_config(upstream.url, max_connections=1), "listen": {"send_timeout": 0.3}}
    proxy = await start_app(create_app(parse_config(raw)))
    try:
        stalled = await proxy.connect()
        await stalled.send(b"GET /big HTTP/1.1\r\nHost: p\r\n\r\n")
        metrics = proxy.app[METRICS]
        await eventually(lambda: metrics.value("client_send_timeouts_total") == 1, timeout=30)
        resp = await proxy.get("/idx/_doc/1")  # the pool's one connection is free again
        assert (resp.status, resp.body) == (200, b"{}")
        try:  # the stalled client's connection was cut: what it can still read is short
            received = len(await asyncio.wait_for(stalled.reader.read(), 30))
        except ConnectionResetError:
            received = 0
        assert received < BIG
    finally:
        await proxy.close_clients()
        await proxy.stop()


async def test_a_request_waits_for_a_pool_connection_at_most_pool_timeout(
    start_proxy: StartProxy, upstream: FakeUpstream
) -> None:
    """All `max_connections` busy: the next request is an ES-shaped 503 after
    `upstream.pool_timeout` (clients retry it), not a request that hangs; once a connection
    is free again requests go through."""
    release = asyncio.Event()
    upstream.handler = held(release)
    proxy = await start_proxy(max_connections=1, pool_timeout=0.2)
    holder = await proxy.connect()
    await holder.send(b"POST /slow/_forcemerge HTTP/1.1\r\nHost: p\r\n\r\n")
    await eventually(lambda: bool(upstream.requests))
    busy = await proxy.get("/idx/_doc/1")
    assert busy.status == 503
    error = json.loads(busy.body)
    assert error["status"] == 503
    assert error["error"]["type"] == "proxy_upstream_busy"
    assert "127.0.0.1" not in busy.body.decode()  # the address is logged, not sent
    assert len(upstream.requests) == 1  # the busy request never reached the engine
    metrics = json.loads((await proxy.get("/_rerank_proxy/metrics?format=json")).body)
    assert metrics['rerank_proxy_upstream_errors_total{status="503"}'] == 1
    release.set()
    assert (await holder.response(method="POST")).status == 200
    assert (await proxy.get("/idx/_doc/1")).status == 200
