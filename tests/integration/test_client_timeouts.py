"""Client connections cannot be held open for free (`proxy.listener`).

nginx's defaults as the anchors: a request head must arrive within `listen.header_timeout`
(slowloris, a silent connection), a body must keep coming (`listen.body_timeout` between
parts), an idle keep-alive connection is closed after `listen.keepalive_timeout`, and
`listen.max_connections` caps open connections with a 503. Each is counted in metrics; a
slow upstream never trips a client timer. The timeouts here are tenths of a second; each
test waits for the close (an event), never for a duration.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from proxy.listener import LISTENER

from .conftest import StartProxy
from .fakes import (
    FakeUpstream,
    RawClient,
    Received,
    RunningProxy,
    eventually,
    http_response,
)

SHORT = 0.3


@pytest.fixture
def start(start_proxy: StartProxy) -> StartProxy:
    async def start(**listen: object) -> RunningProxy:
        return await start_proxy(listen=listen, indices=[{"match": ["books"], "fields": ["title"]}])

    return start


async def metrics(proxy: RunningProxy) -> dict[str, float]:
    return json.loads((await proxy.get("/_rerank_proxy/metrics?format=json")).body)


def timeouts(doc: dict[str, float]) -> dict[str, float]:
    prefix = "rerank_proxy_client_timeouts_total"
    return {k[len(prefix) :]: v for k, v in doc.items() if k.startswith(prefix) and v}


async def test_a_request_head_sent_byte_by_byte_is_cut(start: Any, upstream: FakeUpstream) -> None:
    """Slowloris: every byte comes before any idle timer would fire, the head never ends."""
    proxy = await start(header_timeout=SHORT, keepalive_timeout=60)
    client = await proxy.connect()
    await client.send(b"GET /idx/_doc/1 HTTP/1.1\r\nHost: p\r\n")
    closed = False
    for _ in range(1000):  # a header line without end, a byte at a time
        try:
            await client.send(b"X")
        except ConnectionError:
            closed = True
            break
        if client.reader.at_eof() or client.reader._buffer:  # type: ignore[attr-defined]
            closed = True
            break
        await asyncio.sleep(SHORT / 10)
    assert closed
    resp = await client.response()
    assert resp.status == 408
    assert json.loads(resp.body)["error"]["type"] == "proxy_request_timeout"
    assert await client.at_eof()
    assert upstream.requests == []
    assert timeouts(await metrics(proxy)) == {'{phase="header"}': 1}


async def test_a_silent_connection_is_closed(start: Any, upstream: FakeUpstream) -> None:
    proxy = await start(header_timeout=SHORT, keepalive_timeout=60)
    client = await proxy.connect()
    assert await client.at_eof(timeout=10)
    assert timeouts(await metrics(proxy)) == {'{phase="header"}': 1}


async def test_an_idle_keep_alive_connection_is_closed(start: Any, upstream: FakeUpstream) -> None:
    proxy = await start(keepalive_timeout=SHORT, header_timeout=60)
    client = await proxy.connect()
    for _ in range(3):  # requests keep it open ...
        resp = await client.request(b"GET /idx/_doc/1 HTTP/1.1\r\nHost: p\r\n\r\n")
        assert resp.status == 200
    assert await client.at_eof(timeout=10)  # ... until none comes
    assert timeouts(await metrics(proxy)) == {'{phase="idle"}': 1}
    assert len(upstream.requests) == 3


@pytest.mark.parametrize("target", ["/idx/_bulk", "/books/_search"])
async def test_a_stalled_request_body_is_a_408(
    start: Any, upstream: FakeUpstream, target: str
) -> None:
    """Pass-through (streamed upstream as it comes) and a search (buffered to rerank)."""
    proxy = await start(body_timeout=SHORT)
    client = await proxy.connect()
    head = f"POST {target} HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\n"
    await client.send(head.encode() + b"Content-Length: 100\r\n\r\n" + b'{"query":')
    resp = await client.response(method="POST", timeout=10)
    assert resp.status == 408
    assert json.loads(resp.body)["error"]["type"] == "proxy_request_timeout"
    assert await client.at_eof()
    assert timeouts(await metrics(proxy)) == {'{phase="body"}': 1}
    # Nothing incomplete was presented to the engine as a whole request.
    assert all(not r.complete for r in upstream.requests)


async def test_connections_past_the_cap_get_a_503(start: Any, upstream: FakeUpstream) -> None:
    proxy = await start(max_connections=3)  # the metrics scrape below needs the third
    held = [await proxy.connect() for _ in range(2)]
    for client in held:  # both are open and served
        assert (await client.request(b"GET /x HTTP/1.1\r\nHost: p\r\n\r\n")).status == 200
    extra = await proxy.connect()
    also = await RawClient.connect(proxy.port)
    try:
        resp = await also.response(timeout=10)
        assert resp.status == 503
        assert json.loads(resp.body)["error"]["type"] == "proxy_too_many_connections"
        assert await also.at_eof()
    finally:
        await also.close()
    await extra.close()
    # The closed one is gone from the count once the proxy has seen it go.
    await eventually(lambda: len(proxy.app[LISTENER].guards) == 2)
    doc = await metrics(proxy)
    assert doc["rerank_proxy_client_connections_rejected_total"] == 1
    assert doc["rerank_proxy_client_connections"] == 3  # the two held and the scrape's own
    assert len(upstream.requests) == 2


async def test_a_slow_upstream_trips_no_client_timer(start: Any, upstream: FakeUpstream) -> None:
    """While a request is in progress no header or idle timer runs: an engine that takes
    several times the client timeouts to answer is waited for."""
    answered = asyncio.Event()

    async def slow(req: Received, writer: asyncio.StreamWriter) -> bool:
        for _ in range(5):  # well past both client timeouts
            await asyncio.sleep(SHORT)
        writer.write(http_response(200, [("Content-Type", "application/json")], b"{}"))
        answered.set()
        return True

    upstream.handler = slow
    proxy = await start(header_timeout=SHORT, keepalive_timeout=SHORT, body_timeout=SHORT)
    client = await proxy.connect()
    resp = await client.request(b"GET /idx/_forcemerge HTTP/1.1\r\nHost: p\r\n\r\n")
    assert answered.is_set()
    assert resp.status == 200
    assert timeouts(await metrics(proxy)) == {}
