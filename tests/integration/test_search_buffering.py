"""Searches too large to buffer for reranking are streamed through like any other request."""

from __future__ import annotations

from .conftest import StartProxy
from .fakes import FakeUpstream


async def test_oversized_search_streams_through_without_proxy_parameters(
    start_proxy: StartProxy, upstream: FakeUpstream
) -> None:
    proxy = await start_proxy(max_buffer_bytes=1024)
    body = b'{"query": {"match": {"title": "' + b"x" * 4000 + b'"}}}'
    resp = await proxy.request(
        b"POST /idx/_search?rerank=true&q%2Bx=1 HTTP/1.1\r\nHost: p\r\n"
        b"Content-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    assert resp.status == 200
    assert (resp.header("X-Rerank"), resp.header("X-Rerank-Reason")) == (
        "skipped",
        "body_too_large",
    )
    [seen] = upstream.requests
    # The proxy's own `rerank=` is stripped (the engine would reject it); the rest is verbatim.
    assert seen.target == "/idx/_search?q%2Bx=1"
    assert bytes(seen.body) == body
