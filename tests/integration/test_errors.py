"""Upstream failures: the proxy's own 502/504 in Elasticsearch's shape, everything else as sent."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from proxy.keys import METRICS

from .conftest import StartProxy
from .fakes import (
    FakeUpstream,
    RawResponse,
    Received,
    RunningProxy,
    chunk,
    http_response,
    reset,
)


def _assert_es_error(resp: RawResponse, status: int, error_type: str) -> None:
    assert resp.status == status
    assert (resp.header("Content-Type") or "").startswith("application/json")
    doc = json.loads(resp.body)
    assert doc["status"] == status
    assert doc["error"]["type"] == error_type
    assert isinstance(doc["error"]["reason"], str) and doc["error"]["reason"]
    assert doc["error"]["root_cause"][0]["type"] == error_type


async def test_upstream_down_is_502_in_es_shape(start_proxy: StartProxy, closed_port: int) -> None:
    proxy = await start_proxy(url=f"http://127.0.0.1:{closed_port}")
    resp = await proxy.get()
    _assert_es_error(resp, 502, "proxy_upstream_unavailable")


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /idx/_doc/1 HTTP/1.1\r\nHost: p\r\n\r\n",
        b"POST /_search HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\n"
        b'Content-Length: 33\r\n\r\n{"query":{"match":{"t":"apple"}}}',
    ],
    ids=["pass-through", "search"],
)
async def test_502_names_no_upstream_address_and_the_log_does(
    start_proxy: StartProxy, closed_port: int, caplog: pytest.LogCaptureFixture, raw: bytes
) -> None:
    caplog.set_level(logging.WARNING)
    proxy = await start_proxy(url=f"http://127.0.0.1:{closed_port}")
    resp = await proxy.request(raw)
    _assert_es_error(resp, 502, "proxy_upstream_unavailable")
    assert json.loads(resp.body)["error"]["reason"] == "upstream unreachable"
    assert b"127.0.0.1" not in resp.body and str(closed_port).encode() not in resp.body
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"127.0.0.1:{closed_port}" in line for line in logged), logged


async def test_504_names_no_upstream_address(
    start_proxy: StartProxy, upstream: FakeUpstream
) -> None:
    async def silent(req: Received, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(60)
        return False

    upstream.handler = silent
    proxy = await start_proxy(read_timeout=0.5)
    resp = await proxy.get()
    _assert_es_error(resp, 504, "proxy_upstream_timeout")
    assert json.loads(resp.body)["error"]["reason"] == "upstream timed out"
    assert str(upstream.port).encode() not in resp.body


async def test_upstream_that_never_answers_is_504_after_read_timeout(
    start_proxy: StartProxy, upstream: FakeUpstream
) -> None:
    async def silent(req: Received, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(60)
        return False

    upstream.handler = silent
    proxy = await start_proxy(read_timeout=0.5)
    resp = await proxy.get()  # the upstream never answers: only the read timeout can end it
    _assert_es_error(resp, 504, "proxy_upstream_timeout")
    assert len(upstream.requests) == 1  # a timed-out request is not retried


async def test_garbage_from_upstream_is_502(proxy: RunningProxy, upstream: FakeUpstream) -> None:
    upstream.respond_with(b"SSH-2.0-OpenSSH_9.6\r\n\r\n", keep_alive=False)
    resp = await proxy.get()
    _assert_es_error(resp, 502, "proxy_upstream_unavailable")


@pytest.mark.parametrize(
    ("status", "headers", "body"),
    [
        (
            429,
            [("Retry-After", "7"), ("Content-Type", "application/json")],
            b'{"error":{"type":"es_rejected_execution_exception"},"status":429}',
        ),
        (
            503,
            [("Content-Type", "application/json"), ("X-Elastic-Product", "Elasticsearch")],
            b'{"error":{"type":"cluster_block_exception"},"status":503}',
        ),
        (502, [("Content-Type", "text/html")], b"<html>bad gateway from the LB</html>"),
        (504, [("Content-Type", "text/plain")], b"upstream LB timeout"),
        (401, [("WWW-Authenticate", 'Basic realm="security"')], b""),
    ],
    ids=lambda v: str(v) if isinstance(v, int) else None,
)
async def test_upstream_errors_pass_through_untouched(
    proxy: RunningProxy,
    upstream: FakeUpstream,
    status: int,
    headers: list[tuple[str, str]],
    body: bytes,
) -> None:
    upstream.respond_with(http_response(status, headers, body, reason="Upstream Reason"))
    resp = await proxy.get()
    assert (resp.status, resp.reason, resp.body) == (status, "Upstream Reason", body)
    for key, value in headers:
        assert resp.getall(key) == [value]
    assert resp.header("Content-Length") == str(len(body))


@pytest.mark.parametrize("ending", ["reset", "close"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_upstream_body_breaking_off_gives_a_truncated_response(
    proxy: RunningProxy, upstream: FakeUpstream, framing: str, ending: str
) -> None:
    first = b'{"hits":[' + b'{"_id":"x"},' * 2000

    async def broken(req: Received, writer: asyncio.StreamWriter) -> bool:
        if framing == "content-length":
            head = http_response(200, [("Content-Length", str(len(first) * 4))])
            writer.write(head + first)
        else:
            head = http_response(200, [("Transfer-Encoding", "chunked")], content_length=False)
            writer.write(head + chunk(first))
        await writer.drain()
        await asyncio.sleep(0.2)  # let the bytes reach the proxy before the connection goes
        if ending == "reset":
            reset(writer)
        return False

    upstream.handler = broken
    client = await proxy.connect()
    resp = await client.request(b"GET /idx/_doc/1 HTTP/1.1\r\nHost: p\r\n\r\n")
    assert resp.status == 200
    assert not resp.complete  # never a complete (and wrong) body
    assert resp.body == first
    assert await client.at_eof()
    await client.close()
    assert proxy.app[METRICS].value("upstream_broken_bodies_total") == 1


async def test_upstream_body_stalling_past_read_timeout_gives_a_truncated_response(
    start_proxy: StartProxy, upstream: FakeUpstream
) -> None:
    async def stall(req: Received, writer: asyncio.StreamWriter) -> bool:
        writer.write(http_response(200, [("Content-Length", "100")]) + b"x" * 10)
        await writer.drain()
        await asyncio.sleep(60)
        return False

    upstream.handler = stall
    proxy = await start_proxy(read_timeout=0.5)
    client = await proxy.connect()
    # The body never completes upstream: only the read timeout can end the response.
    resp = await client.request(b"GET /idx/_doc/1 HTTP/1.1\r\nHost: p\r\n\r\n")
    assert (resp.status, resp.body, resp.complete) == (200, b"x" * 10, False)
    await client.close()


@pytest.mark.parametrize(
    "request_bytes",
    [
        b'PUT /idx/_doc/1 HTTP/1.1\r\nHost: p\r\nContent-Length: 9\r\n\r\n{"a":1}\r\n',
        b'POST /_bulk HTTP/1.1\r\nHost: p\r\nContent-Length: 22\r\n\r\n{"index":{}}\n{"a":1}\n\n',
        b"DELETE /idx HTTP/1.1\r\nHost: p\r\n\r\n",
        b"PUT /idx HTTP/1.1\r\nHost: p\r\nContent-Length: 0\r\n\r\n",
    ],
    ids=["put-doc", "bulk", "delete-index", "create-index"],
)
async def test_request_delivered_then_connection_lost_is_not_retried(
    proxy: RunningProxy, upstream: FakeUpstream, request_bytes: bytes
) -> None:
    """Clients retry 502s themselves; a proxy retry on top would repeat delivered writes."""

    async def drop_second(req: Received, writer: asyncio.StreamWriter) -> bool:
        if len(upstream.requests) == 1:
            writer.write(http_response(200, [], b"{}"))
            return True
        reset(writer)  # the request arrived whole; the engine died before answering
        return False

    upstream.handler = drop_second
    # The first request leaves a pooled keep-alive connection, which the second reuses:
    # that is where aiohttp's client would retry "idempotent" methods by itself.
    assert (await proxy.get()).status == 200
    resp = await proxy.request(request_bytes)
    _assert_es_error(resp, 502, "proxy_upstream_unavailable")
    await asyncio.sleep(0.2)
    assert [r.method for r in upstream.requests] == ["GET", request_bytes.split()[0].decode()]
    assert upstream.requests[1].complete
    assert upstream.connections == 1
