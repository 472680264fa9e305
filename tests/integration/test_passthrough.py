"""Byte-exact pass-through: request line, raw path, headers and bodies, both directions."""

from __future__ import annotations

import asyncio
import gzip

import pytest

from .fakes import (
    LAST_CHUNK,
    FakeUpstream,
    Received,
    RunningProxy,
    chunk,
    http_response,
)

ES_JSON = "application/vnd.elasticsearch+json;compatible-with=8"


def _request(method: str, target: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: proxy.example:9280"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _only(upstream: FakeUpstream) -> Received:
    assert len(upstream.requests) == 1, [r.target for r in upstream.requests]
    return upstream.requests[0]


# Raw request targets exactly as a client puts them on the wire. Document ids with `/ ? # % +`,
# spaces and non-ASCII are percent-encoded by the clients; re-quoting or decoding any of these
# addresses a different document.
TARGETS = [
    ("GET", "/idx/_doc/a%2Fb"),
    ("PUT", "/idx/_doc/q%3Fx%23y%25z%2Bw?routing=r%2B1&refresh=true"),
    ("GET", "/idx/_doc/with%20space+plus"),
    ("DELETE", "/idx/_doc/caf%C3%A9%E2%9C%93?if_seq_no=1&if_primary_term=1"),
    ("GET", "/idx/_doc/x?q=a+b%20c&_source_includes=a,b*&flag&empty="),
    ("POST", "/%3Clogs-%7Bnow%2Fd%7D%3E/_doc/1?pretty"),
    ("GET", "/idx/_doc/.%2F..%2F./x/../y"),
    ("GET", "/idx/_doc/%2e%2E?a=%2f&b=%2F"),
    ("POST", "/idx/_update/%25%2525?x=%25"),
    ("GET", "/idx//_doc/1"),
    ("HEAD", "/idx/_doc/%E6%97%A5%E6%9C%AC"),
]


@pytest.mark.parametrize(("method", "target"), TARGETS, ids=[t for _, t in TARGETS])
async def test_request_line_and_raw_path_are_byte_exact(
    proxy: RunningProxy, upstream: FakeUpstream, method: str, target: str
) -> None:
    body = b'{"doc":{"n":1}}' if method in ("PUT", "POST") else b""
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    client = await proxy.connect()
    resp = await client.request(_request(method, target, headers if body else [], body))
    await client.close()

    assert resp.status == 200
    req = _only(upstream)
    assert (req.method, req.target, req.version) == (method, target, "HTTP/1.1")
    assert bytes(req.body) == body


async def test_request_headers_end_to_end_kept_hop_by_hop_dropped(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    body = b'{"title":"x"}'
    sent = [
        ("Authorization", "ApiKey c2VjcmV0OmtleQ=="),
        ("X-Custom", "one"),
        ("x-custom", "two, three"),
        ("X-Opaque-Id", "req-42"),
        ("es-security-runas-user", "bob"),
        ("securitytenant", "global"),
        ("Accept", ES_JSON),
        ("Content-Type", ES_JSON),
        ("Connection", "keep-alive, X-Hop-Secret"),
        ("X-Hop-Secret", "must-not-pass"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Upgrade", "h2c"),
        ("Proxy-Authorization", "Basic cHJveHk6cHc="),
        ("Proxy-Connection", "keep-alive"),
        ("Via", "1.0 edge"),
        ("X-Forwarded-For", "10.0.0.1"),
        ("Content-Length", str(len(body))),
    ]
    client = await proxy.connect()
    resp = await client.request(_request("PUT", "/idx/_doc/1", sent, body))
    await client.close()
    assert resp.status == 200

    req = _only(upstream)
    host = upstream.url.removeprefix("http://")
    # The exact header set: end-to-end fields in the client's order with their values,
    # Host for the upstream, Via and X-Forwarded-For, and nothing else (no User-Agent,
    # Accept-Encoding or Content-Type invented by aiohttp, no hop-by-hop field).
    got = sorted((k.lower(), v) for k, v in req.headers if k.lower() != "connection")
    assert got == sorted(
        [
            ("host", host),
            ("authorization", "ApiKey c2VjcmV0OmtleQ=="),
            ("x-custom", "one"),
            ("x-custom", "two, three"),
            ("x-opaque-id", "req-42"),
            ("es-security-runas-user", "bob"),
            ("securitytenant", "global"),
            ("accept", ES_JSON),
            ("content-type", ES_JSON),
            ("via", "1.0 edge, 1.1 rerank-proxy"),
            ("x-forwarded-for", "10.0.0.1, 127.0.0.1"),
            ("content-length", str(len(body))),
        ]
    )
    assert req.getall("X-Custom") == ["one", "two, three"]  # order kept
    # aiohttp may manage its own connection, but never with the client's tokens.
    assert "hop" not in (req.header("Connection") or "").lower()
    assert bytes(req.body) == body


async def test_no_headers_invented_for_minimal_requests(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    client = await proxy.connect()
    await client.request(b"GET /idx/_doc/1 HTTP/1.1\r\nHost: p\r\n\r\n")
    # A streamed (chunked) body without Content-Type must not gain application/octet-stream.
    await client.request(
        b"POST /idx/_bulk HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunk(b'{"index":{}}\n{"a":1}\n')
        + LAST_CHUNK
    )
    await client.close()

    get, bulk = upstream.requests
    assert sorted(get.names()) == ["host", "via", "x-forwarded-for"]
    assert sorted(n for n in bulk.names() if n != "transfer-encoding") == [
        "host",
        "via",
        "x-forwarded-for",
    ]
    assert bytes(bulk.body) == b'{"index":{}}\n{"a":1}\n'


async def test_multiple_via_and_forwarded_for_lines_are_all_kept(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    headers = [
        ("Via", "1.0 a"),
        ("Via", "1.1 b"),
        ("X-Forwarded-For", "10.0.0.1"),
        ("X-Forwarded-For", "10.0.0.2, 10.0.0.3"),
    ]
    client = await proxy.connect()
    await client.request(_request("GET", "/", headers))
    await client.close()
    req = _only(upstream)
    assert ", ".join(req.getall("Via")) == "1.0 a, 1.1 b, 1.1 rerank-proxy"
    assert ", ".join(req.getall("X-Forwarded-For")) == "10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.1"


async def test_chunked_request_body_is_forwarded_chunked(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    parts = [b'{"index":{"_id":"1"}}\n', b'{"a":1}\n', b"x" * 70_000 + b"\n"]
    raw = _request(
        "POST",
        "/_bulk",
        [("Content-Type", "application/x-ndjson"), ("Transfer-Encoding", "chunked")],
        b"".join(chunk(p) for p in parts) + LAST_CHUNK,
    )
    client = await proxy.connect()
    resp = await client.request(raw)
    await client.close()
    assert resp.status == 200
    req = _only(upstream)
    assert req.chunked and req.complete
    assert req.header("Content-Length") is None
    assert bytes(req.body) == b"".join(parts)


async def test_gzip_request_body_arrives_compressed_and_unchanged(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    plain = b'{"index":{}}\n{"msg":"hello"}\n' * 1000
    packed = gzip.compress(plain, mtime=0)
    raw = _request(
        "POST",
        "/_bulk",
        [
            ("Content-Type", "application/x-ndjson"),
            ("Content-Encoding", "gzip"),
            ("Content-Length", str(len(packed))),
        ],
        packed,
    )
    client = await proxy.connect()
    await client.request(raw)
    await client.close()
    req = _only(upstream)
    assert req.header("Content-Encoding") == "gzip"
    assert req.header("Content-Length") == str(len(packed))
    assert bytes(req.body) == packed


UP_HEADERS = [
    ("Content-Type", ES_JSON),
    ("X-Elastic-Product", "Elasticsearch"),
    ("Warning", '299 Elasticsearch-8.15.0 "first deprecation"'),
    ("X-Opaque-Id", "req-42"),
    ("Warning", '299 Elasticsearch-8.15.0 "second, with a comma"'),
    ("Warning", '299 Elasticsearch-8.15.0 "third"'),
    ("Set-Cookie", "a=1"),
    ("Set-Cookie", "b=2"),
    ("Connection", "keep-alive, X-Up-Hop"),
    ("X-Up-Hop", "secret"),
    ("Keep-Alive", "timeout=60"),
    ("Proxy-Authenticate", 'Basic realm="x"'),
    ("Trailer", "X-Checksum"),
]


async def test_response_headers_and_body_byte_exact(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    body = '{"_id":"1","big":12345678901234567890,"f":1.0e0,"t":"café"}'.encode()
    upstream.respond_with(http_response(200, UP_HEADERS, body))
    client = await proxy.connect()
    resp = await client.request(_request("GET", "/idx/_doc/1", [("X-Opaque-Id", "req-42")]))
    await client.close()

    assert resp.status == 200 and resp.reason == "OK"
    assert resp.body == body
    assert resp.header("Content-Type") == ES_JSON
    assert resp.header("X-Elastic-Product") == "Elasticsearch"
    assert resp.header("X-Opaque-Id") == "req-42"
    assert resp.getall("Warning") == [
        '299 Elasticsearch-8.15.0 "first deprecation"',
        '299 Elasticsearch-8.15.0 "second, with a comma"',
        '299 Elasticsearch-8.15.0 "third"',
    ]
    assert resp.getall("Set-Cookie") == ["a=1", "b=2"]
    assert resp.header("Content-Length") == str(len(body))
    assert resp.header("Via") == "1.1 rerank-proxy"
    for hop in ("x-up-hop", "keep-alive", "proxy-authenticate", "trailer"):
        assert hop not in resp.names()
    assert "x-up-hop" not in (resp.header("Connection") or "").lower()


async def test_gzip_response_passes_through_compressed(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    packed = gzip.compress(b'{"hits":{"hits":[]}}' * 500, mtime=0)
    upstream.respond_with(
        http_response(
            200, [("Content-Type", "application/json"), ("Content-Encoding", "gzip")], packed
        )
    )
    client = await proxy.connect()
    resp = await client.request(_request("GET", "/idx/_doc/1", [("Accept-Encoding", "gzip")]))
    await client.close()
    assert _only(upstream).header("Accept-Encoding") == "gzip"
    assert resp.header("Content-Encoding") == "gzip"
    assert resp.header("Content-Length") == str(len(packed))
    assert resp.body == packed


async def test_chunked_response_is_streamed_whole(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    parts = [b'{"took":1,', b'"items":[' + b'{"index":{}},' * 5000, b"{}]}"]
    upstream.respond_with(
        http_response(
            200,
            [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")],
            b"".join(chunk(p) for p in parts) + LAST_CHUNK,
            content_length=False,
        )
    )
    client = await proxy.connect()
    resp = await client.request(_request("POST", "/_bulk", [("Content-Length", "0")]))
    await client.close()
    assert resp.complete
    assert resp.body == b"".join(parts)


async def test_head_responses_have_no_body_and_connections_stay_usable(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    async def es(req: Received, writer: asyncio.StreamWriter) -> bool:
        product = [("X-Elastic-Product", "Elasticsearch")]
        if req.method == "HEAD" and req.target == "/idx":
            raw = http_response(200, [*product, ("Content-Length", "231")])
        elif req.method == "HEAD":
            raw = http_response(404, [*product, ("Content-Type", ES_JSON), ("Content-Length", "0")])
        else:
            raw = http_response(200, [*product, ("Content-Type", ES_JSON)], b'{"found":true}')
        writer.write(raw)
        return True

    upstream.handler = es
    client = await proxy.connect()
    exists = await client.request(_request("HEAD", "/idx", []))
    missing = await client.request(_request("HEAD", "/missing", []))
    # The same client connection carries the next request: no stray body bytes after HEAD.
    got = await client.request(_request("GET", "/idx/_doc/1", []))
    await client.close()

    assert (exists.status, exists.header("Content-Length")) == (200, "231")
    assert exists.header("X-Elastic-Product") == "Elasticsearch"
    assert missing.status == 404
    assert missing.header("X-Elastic-Product") == "Elasticsearch"
    assert (got.status, got.body) == (200, b'{"found":true}')
    # The proxy's pooled upstream connection was reused after both HEAD responses.
    assert [r.conn for r in upstream.requests] == [1, 1, 1]


async def test_product_header_forwarded_on_every_status(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    for status in (201, 400, 404, 409, 500, 503):
        upstream.respond_with(
            http_response(
                status,
                [("X-Elastic-Product", "Elasticsearch"), ("Content-Type", ES_JSON)],
                b'{"status":%d}' % status,
            )
        )
        client = await proxy.connect()
        resp = await client.request(_request("GET", f"/s{status}", []))
        await client.close()
        assert (resp.status, resp.body) == (status, b'{"status":%d}' % status)
        assert resp.header("X-Elastic-Product") == "Elasticsearch"
