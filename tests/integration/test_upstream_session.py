"""The upstream ClientSession's settings, seen from outside: what aiohttp's defaults would break.

No redirects followed, no cookie jar shared between users, no environment proxies, no total
timeout, pooled keep-alive connections, early upstream answers relayed, and a client that
leaves mid-response releases the upstream connection.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

import psutil
import pytest

from .conftest import StartProxy
from .fakes import (
    FakeUpstream,
    Received,
    RunningProxy,
    chunk,
    eventually,
    http_response,
)


async def test_redirects_are_passed_through_not_followed(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    upstream.respond_with(http_response(307, [("Location", "/elsewhere")], b""))
    resp = await proxy.get()
    assert (resp.status, resp.header("Location")) == (307, "/elsewhere")
    assert [r.target for r in upstream.requests] == ["/idx/_doc/1"]


async def test_cookies_of_one_client_never_reach_another(
    start_proxy: StartProxy, upstream: FakeUpstream
) -> None:
    # A host name, not an IP: aiohttp's real cookie jar ignores cookies from IP addresses.
    proxy = await start_proxy(url=f"http://localhost:{upstream.port}")
    upstream.respond_with(http_response(200, [("Set-Cookie", "AWSALB=user-a; Path=/")], b"{}"))
    first = await proxy.get()
    assert first.getall("Set-Cookie") == ["AWSALB=user-a; Path=/"]  # relayed to its client
    await proxy.get()
    assert upstream.requests[1].header("Cookie") is None  # but not replayed by the proxy
    await proxy.get(headers=b"Cookie: mine=1\r\n")
    assert upstream.requests[2].getall("Cookie") == ["mine=1"]  # a client's own cookie passes


async def test_environment_proxy_settings_are_ignored(
    start_proxy: StartProxy,
    upstream: FakeUpstream,
    closed_port: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{closed_port}")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    proxy = await start_proxy()
    assert (await proxy.get()).status == 200
    assert len(upstream.requests) == 1


async def test_long_responses_survive_while_bytes_keep_coming(
    start_proxy: StartProxy, upstream: FakeUpstream
) -> None:
    """read_timeout bounds the silence between bytes, not the whole response (`_reindex`)."""

    async def trickle(req: Received, writer: asyncio.StreamWriter) -> bool:
        writer.write(http_response(200, [("Transfer-Encoding", "chunked")], content_length=False))
        for _ in range(8):
            await asyncio.sleep(0.15)
            writer.write(chunk(b"."))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        return True

    upstream.handler = trickle
    proxy = await start_proxy(read_timeout=0.4)
    resp = await proxy.get("/_reindex?wait_for_completion=true")
    assert (resp.status, resp.body, resp.complete) == (200, b"." * 8, True)


async def test_upstream_connections_are_pooled(proxy: RunningProxy, upstream: FakeUpstream) -> None:
    for _ in range(20):
        assert (await proxy.get()).status == 200
    assert upstream.connections == 1


async def test_early_upstream_answer_to_a_large_upload_is_relayed(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    """An engine may reject a request from its head (401, 413) and close without reading."""

    async def reject(req: Received, writer: asyncio.StreamWriter) -> bool:
        body = b'{"error":{"type":"security_exception"},"status":401}'
        writer.write(http_response(401, [("Content-Type", "application/json")], body))
        return False

    upstream.answer_before_body = True
    upstream.handler = reject
    client = await proxy.connect()
    size = 8 << 20
    await client.send(b"POST /_bulk HTTP/1.1\r\nHost: p\r\nContent-Length: %d\r\n\r\n" % size)
    sending = asyncio.create_task(client.send(b"x" * size))
    resp = await client.response(timeout=10)
    sending.cancel()
    await asyncio.gather(sending, return_exceptions=True)
    await client.close()
    assert resp.status == 401
    assert resp.body == b'{"error":{"type":"security_exception"},"status":401}'


async def test_client_gone_mid_response_releases_the_upstream_connection(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    stopped = asyncio.Event()

    async def endless(req: Received, writer: asyncio.StreamWriter) -> bool:
        writer.write(http_response(200, [("Transfer-Encoding", "chunked")], content_length=False))
        try:
            while True:
                writer.write(chunk(b"x" * 65536))
                await writer.drain()
                await asyncio.sleep(0.01)
        except ConnectionError:
            stopped.set()
            return False

    upstream.handler = endless
    client = await proxy.connect()
    await client.send(b"GET /_search/scroll HTTP/1.1\r\nHost: p\r\n\r\n")
    await client.reader.readuntil(b"\r\n\r\n")
    await client.reader.read(65536)
    client.reset()
    await asyncio.wait_for(stopped.wait(), 5)  # the proxy closed the upstream connection

    # And the next request gets a fresh connection, not the half-read one.
    upstream.handler = FakeUpstream().handler
    assert (await proxy.get()).status == 200
    assert [r.conn for r in upstream.requests] == [1, 2]


async def test_no_file_descriptors_leak_over_failures(
    start_proxy: StartProxy, upstream: FakeUpstream
) -> None:
    """A small soak over aborted and broken exchanges: every socket is closed afterwards."""
    proxy = await start_proxy(read_timeout=0.2)
    process = psutil.Process(os.getpid())
    await proxy.get()  # warm: the pooled upstream connection exists from here on
    baseline = process.num_fds()

    async def broken(req: Received, writer: asyncio.StreamWriter) -> bool:
        if req.target.endswith("stall"):
            await asyncio.sleep(1)
        else:
            writer.write(http_response(200, [("Content-Length", "100")]) + b"partial")
        return False

    def arrived(count: int) -> Callable[[], bool]:
        return lambda: len(upstream.requests) >= count

    upstream.handler = broken
    for i in range(30):
        client = await proxy.connect()
        if i % 3 == 0:  # client gives up mid-upload
            count = len(upstream.requests) + 1
            await client.send(b"PUT /idx/_doc/1 HTTP/1.1\r\nHost: p\r\nContent-Length: 99\r\n\r\n{")
            await eventually(arrived(count))
            client.reset()
        else:
            target = b"/stall" if i % 3 == 1 else b"/broken"
            await client.request(b"GET %s HTTP/1.1\r\nHost: p\r\n\r\n" % target)
            await client.close()
    upstream.handler = FakeUpstream().handler
    assert (await proxy.get()).status == 200
    await eventually(lambda: process.num_fds() <= baseline + 2, timeout=5)


async def test_credentials_in_the_upstream_url_are_never_sent_nor_shown(
    start_proxy: StartProxy,
    upstream: FakeUpstream,
    closed_port: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The caller's own credentials reach the cluster, so that its security applies."""
    caplog.set_level(logging.DEBUG)
    proxy = await start_proxy(url=f"http://elastic:s3cret@127.0.0.1:{upstream.port}")
    assert (await proxy.get(headers=b"Authorization: ApiKey Y2FsbGVy\r\n")).status == 200
    assert (await proxy.get()).status == 200
    assert [r.getall("Authorization") for r in upstream.requests] == [["ApiKey Y2FsbGVy"], []]

    down = await start_proxy(url=f"http://elastic:s3cret@127.0.0.1:{closed_port}")
    resp = await down.get()
    assert resp.status == 502
    assert b"s3cret" not in resp.body
    assert "s3cret" not in caplog.text
