"""Malformed requests get 400 and never reach the upstream; `Expect: 100-continue` works."""

from __future__ import annotations

import asyncio
import json

import pytest

from .fakes import FakeUpstream, RunningProxy

MALFORMED = {
    # Request smuggling (RFC 9112 6.3): a message with both framings is an error.
    "cl-and-te": b"POST /_bulk HTTP/1.1\r\nHost: p\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-and-cl": b"POST /_bulk HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Length: 5\r\n\r\n0\r\n\r\n",
    "cl-not-a-number": b"POST /_bulk HTTP/1.1\r\nHost: p\r\nContent-Length: abc\r\n\r\n",
    "cl-negative": b"POST /_bulk HTTP/1.1\r\nHost: p\r\nContent-Length: -1\r\n\r\n",
    "cl-plus-sign": b"POST /_bulk HTTP/1.1\r\nHost: p\r\nContent-Length: +5\r\n\r\nhello",
    "cl-list": b"POST /_bulk HTTP/1.1\r\nHost: p\r\nContent-Length: 5, 5\r\n\r\nhello",
    "cl-twice-differing": b"POST /_bulk HTTP/1.1\r\nHost: p\r\nContent-Length: 5\r\n"
    b"Content-Length: 6\r\n\r\nhello!",
    "te-not-chunked": b"POST /_bulk HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: gzip\r\n\r\nxx",
    "bad-chunk-size": b"POST /_bulk HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\nhello\r\n0\r\n\r\n",
    "space-before-colon": b"GET / HTTP/1.1\r\nHost: p\r\nX-Bad : 1\r\n\r\n",
    "header-line-over-8k": b"GET / HTTP/1.1\r\nHost: p\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
    "request-line-over-8k": b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: p\r\n\r\n",
    "bare-lf-in-header": b"GET / HTTP/1.1\r\nHost: p\r\nX-A: 1\nX-B: 2\r\n\r\n",
}


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_request_is_400_and_not_forwarded(
    proxy: RunningProxy, upstream: FakeUpstream, raw: bytes
) -> None:
    client = await proxy.connect()
    resp = await client.request(raw)
    await client.close()
    assert resp.status == 400
    await asyncio.sleep(0.05)
    assert upstream.requests == []
    assert upstream.connections == 0


async def test_expect_100_continue(proxy: RunningProxy, upstream: FakeUpstream) -> None:
    body = b'{"index":{}}\n{"a":1}\n'
    client = await proxy.connect()
    await client.send(
        b"POST /_bulk HTTP/1.1\r\nHost: p\r\nContent-Type: application/x-ndjson\r\n"
        b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    interim = await client.response(timeout=5)
    assert (interim.status, interim.head) == (100, b"HTTP/1.1 100 Continue\r\n\r\n")
    await client.send(body)
    final = await client.response(timeout=5)
    await client.close()

    assert final.status == 200
    req = upstream.requests[0]
    assert bytes(req.body) == body and req.complete
    assert req.header("Expect") is None  # the proxy already answered it


# Request targets that are not origin-form (RFC 9112 3.2): the proxy is a gateway to one
# cluster, never a forward proxy, so none of them may reach the upstream URL builder.
NOT_ORIGIN_FORM = {
    "absolute-http": b"GET http://x/idx/_doc/1 HTTP/1.1\r\nHost: x\r\n\r\n",
    "absolute-upper-case": b"GET HTTP://X/idx/_doc/1 HTTP/1.1\r\nHost: x\r\n\r\n",
    "absolute-other-scheme": b"GET host://x/idx/_doc/1 HTTP/1.1\r\nHost: x\r\n\r\n",
    "absolute-search": b"POST http://x/books/_search HTTP/1.1\r\nHost: x\r\n"
    b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    "absolute-bulk": b"POST https://elsewhere:9200/_bulk HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: 0\r\n\r\n",
    "absolute-admin": b"GET http://x/_rerank_proxy/health HTTP/1.1\r\nHost: x\r\n\r\n",
    "absolute-no-path": b"GET http://x HTTP/1.1\r\nHost: x\r\n\r\n",
    "options-asterisk": b"OPTIONS * HTTP/1.1\r\nHost: p\r\n\r\n",
    "connect-authority": b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
}


@pytest.mark.parametrize("raw", NOT_ORIGIN_FORM.values(), ids=NOT_ORIGIN_FORM.keys())
async def test_non_origin_form_target_is_an_es_shaped_400_and_not_forwarded(
    proxy: RunningProxy, upstream: FakeUpstream, raw: bytes
) -> None:
    client = await proxy.connect()
    resp = await client.request(raw)
    await client.close()
    assert resp.status == 400
    assert (resp.header("Content-Type") or "").startswith("application/json")
    doc = json.loads(resp.body)
    assert doc["status"] == 400
    assert doc["error"]["type"] == doc["error"]["root_cause"][0]["type"] == "proxy_bad_request"
    await asyncio.sleep(0.05)
    assert upstream.requests == []
    assert upstream.connections == 0


@pytest.mark.parametrize(
    "raw",
    [b"GET x/idx HTTP/1.1\r\nHost: p\r\n\r\n", b"GET mailto:a@b HTTP/1.1\r\nHost: p\r\n\r\n"],
    ids=["relative", "no-authority"],
)
async def test_target_the_http_parser_rejects_is_400_and_not_forwarded(
    proxy: RunningProxy, upstream: FakeUpstream, raw: bytes
) -> None:
    """aiohttp's parser answers these itself (plain text), before any handler runs."""
    client = await proxy.connect()
    resp = await client.request(raw)
    await client.close()
    assert resp.status == 400
    await asyncio.sleep(0.05)
    assert upstream.requests == []


async def test_origin_form_with_an_empty_first_segment_is_a_path(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    resp = await proxy.get("//idx/_doc/1")
    assert resp.status == 200
    assert [r.target for r in upstream.requests] == ["//idx/_doc/1"]


@pytest.mark.parametrize("header", ["Authorization: Basic ", "X-Api-Key: "])
async def test_an_over_long_credential_header_never_reaches_the_log(
    proxy: RunningProxy, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture, header: str
) -> None:
    """aiohttp logged the parser error with the line's first 100 bytes: a credential."""
    import logging

    caplog.set_level(logging.DEBUG)
    secret = "c2VjcmV0LXBhc3N3b3Jk" * 500  # ~10 KB, past aiohttp's 8190-byte line limit
    raw = f"GET /idx/_doc/1 HTTP/1.1\r\nHost: p\r\n{header}{secret}\r\n\r\n".encode()
    resp = await proxy.request(raw)
    assert resp.status == 400
    assert upstream.requests == []
    assert "c2VjcmV0" not in caplog.text
    assert any("LineTooLong" in r.getMessage() for r in caplog.records)
