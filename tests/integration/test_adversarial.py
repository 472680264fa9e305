"""Hostile client input, sent byte for byte with `RawClient`, in tables.

Every row says what the proxy may do with it: `REJECT` (a 4xx, nothing reaches the
upstream), `FORWARD` (exactly the listed requests reach the upstream, once each, in order, and
the client gets one answer per request, in order), or `EITHER` (one of the two, as the RFCs
allow). For every row: never a 5xx, never a hang (every read is bounded), never a request the
client smuggled (`/smuggled`) reaching the upstream on its own, and `/_rerank_proxy/health`
answers afterwards. A 4xx the proxy's app writes is in Elasticsearch's shape; one that
aiohttp's HTTP parser writes before any handler runs is plain text (as
`test_malformed.test_target_the_http_parser_rejects_is_400_and_not_forwarded` documents), so
the shape is checked only where the row says the app answers (`es=True`).

Already covered elsewhere and not repeated: CL+TE, two differing Content-Lengths and bad
chunk sizes without a smuggled payload, `Expect: 100-continue` on `_bulk`, absolute-form,
authority-form and asterisk-form targets (`test_malformed.py`); a client aborting mid-upload
(`test_client_abort.py`).

Slowloris and idle connections meet the `listen` timeouts (`listen.header_timeout`,
`body_timeout`, `keepalive_timeout`, `max_connections`); `test_client_timeouts.py` has the
metrics side of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import zlib
from dataclasses import dataclass
from functools import cache
from typing import Any

import pytest

from proxy.app import create_app
from proxy.config import parse_config

from .fakes import (
    FakeUpstream,
    RawClient,
    RawResponse,
    Received,
    RunningProxy,
    chunk,
    http_response,
    proxy_config,
    start_app,
)
from .rerank_support import ES_HEADERS, QUERY, RERANKED, Engine, Proxies, ids, kind_of, ndjson

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: p\r\n\r\n"

REJECT, FORWARD, EITHER = "reject", "forward", "either"


@dataclass(frozen=True, slots=True)
class Case:
    raw: bytes
    expect: str  # REJECT, FORWARD or EITHER
    # FORWARD/EITHER: what the upstream must see, in order: (method, target, body)
    forwarded: tuple[tuple[str, str, bytes], ...] = ()
    es: bool = False  # a rejection the app writes (Elasticsearch's error shape)


def _req(head: bytes, body: bytes = b"") -> bytes:
    return head + b"\r\n" + body


def _bulk(*header_lines: bytes, body: bytes = b"", version: bytes = b"HTTP/1.1") -> bytes:
    head = (
        b"POST /_bulk " + version + b"\r\nHost: p\r\n" + b"".join(h + b"\r\n" for h in header_lines)
    )
    return _req(head, body)


CHUNKED_HELLO = chunk(b"hello") + b"0\r\n\r\n"
# A chunked body that ends at once, followed by a request only a chunked reading sees.
ZERO_THEN_SMUGGLED = b"0\r\n\r\n" + SMUGGLED
CL_ZTS = b"Content-Length: %d" % len(ZERO_THEN_SMUGGLED)
BULK_HELLO = (("POST", "/_bulk", b"hello"),)
GET_DOC = (("GET", "/idx/_doc/1", b""),)

# -- request smuggling: framing the proxy and the upstream could read differently ----------

SMUGGLING: dict[str, Case] = {
    "cl-and-te-smuggled": Case(
        _bulk(CL_ZTS, b"Transfer-Encoding: chunked", body=ZERO_THEN_SMUGGLED), REJECT
    ),
    "te-and-cl-smuggled": Case(
        _bulk(b"Transfer-Encoding: chunked", CL_ZTS, body=ZERO_THEN_SMUGGLED), REJECT
    ),
    "two-content-lengths-smuggled": Case(
        _bulk(b"Content-Length: 0", CL_ZTS, body=ZERO_THEN_SMUGGLED), REJECT
    ),
    "te-xchunked": Case(
        _bulk(CL_ZTS, b"Transfer-Encoding: xchunked", body=ZERO_THEN_SMUGGLED), REJECT
    ),
    "te-xchunked-alone": Case(_bulk(b"Transfer-Encoding: xchunked", body=CHUNKED_HELLO), REJECT),
    "te-chunked-identity": Case(
        _bulk(b"Transfer-Encoding: chunked, identity", body=CHUNKED_HELLO), REJECT
    ),
    "te-identity-chunked-with-cl": Case(
        _bulk(CL_ZTS, b"Transfer-Encoding: identity, chunked", body=ZERO_THEN_SMUGGLED), REJECT
    ),
    "te-chunked-twice": Case(
        _bulk(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked", body=CHUNKED_HELLO),
        EITHER,
        BULK_HELLO,
    ),
    "te-chunked-chunked": Case(
        _bulk(b"Transfer-Encoding: chunked, chunked", body=CHUNKED_HELLO), EITHER, BULK_HELLO
    ),
    "te-value-leading-space-with-cl": Case(
        _bulk(CL_ZTS, b"Transfer-Encoding:   chunked", body=ZERO_THEN_SMUGGLED), REJECT
    ),
    "te-value-leading-tab-with-cl": Case(
        _bulk(CL_ZTS, b"Transfer-Encoding:\tchunked", body=ZERO_THEN_SMUGGLED), REJECT
    ),
    "te-value-trailing-space-with-cl": Case(
        _bulk(CL_ZTS, b"Transfer-Encoding: chunked ", body=ZERO_THEN_SMUGGLED), REJECT
    ),
    "te-line-leading-space": Case(
        _bulk(CL_ZTS, b" Transfer-Encoding: chunked", body=ZERO_THEN_SMUGGLED), REJECT
    ),
    "te-name-space-before-colon": Case(
        _bulk(CL_ZTS, b"Transfer-Encoding : chunked", body=ZERO_THEN_SMUGGLED), REJECT
    ),
    "te-name-mixed-case-with-cl": Case(
        _bulk(CL_ZTS, b"tRaNsFeR-EnCoDiNg: chunked", body=ZERO_THEN_SMUGGLED), REJECT
    ),
    "te-value-mixed-case-with-cl": Case(
        _bulk(CL_ZTS, b"Transfer-Encoding: ChUnKeD", body=ZERO_THEN_SMUGGLED), REJECT
    ),
    "te-value-mixed-case-alone": Case(
        _bulk(b"Transfer-Encoding: ChUnKeD", body=CHUNKED_HELLO), FORWARD, BULK_HELLO
    ),
    "te-value-ows-alone": Case(
        _bulk(b"Transfer-Encoding: \t chunked", body=CHUNKED_HELLO), EITHER, BULK_HELLO
    ),
    "te-obs-fold": Case(
        _bulk(CL_ZTS, b"Transfer-Encoding: identity", b" chunked", body=ZERO_THEN_SMUGGLED), REJECT
    ),
    "te-empty-with-cl": Case(
        _bulk(CL_ZTS, b"Transfer-Encoding:", body=ZERO_THEN_SMUGGLED),
        EITHER,
        (("POST", "/_bulk", ZERO_THEN_SMUGGLED),),
    ),
    "te-in-http-1.0-with-cl": Case(
        _bulk(CL_ZTS, b"Transfer-Encoding: chunked", body=ZERO_THEN_SMUGGLED, version=b"HTTP/1.0"),
        REJECT,
    ),
    "cl-hex": Case(_bulk(b"Content-Length: 0x5", body=b"hello"), REJECT),
    "cl-leading-zeros": Case(_bulk(b"Content-Length: 005", body=b"hello"), EITHER, BULK_HELLO),
    "cl-same-twice": Case(
        _bulk(b"Content-Length: 5", b"Content-Length: 5", body=b"hello"), EITHER, BULK_HELLO
    ),
    "cl-obs-fold": Case(_bulk(b"Content-Length: 0", b" 5", body=b"hello" + SMUGGLED), REJECT),
    "chunk-size-overflow": Case(
        _bulk(b"Transfer-Encoding: chunked", body=b"FFFFFFFFFFFFFFFFF1\r\nhello\r\n0\r\n\r\n"),
        REJECT,
    ),
    "chunk-size-0x": Case(
        _bulk(b"Transfer-Encoding: chunked", body=b"0x5\r\nhello\r\n0\r\n\r\n"), REJECT
    ),
    "chunk-lf-only": Case(
        _bulk(b"Transfer-Encoding: chunked", body=b"5\nhello\n0\n\n" + SMUGGLED), EITHER, BULK_HELLO
    ),
    "chunk-ext-with-lf": Case(
        _bulk(b"Transfer-Encoding: chunked", body=b"5;a\nb\r\nhello\r\n0\r\n\r\n"),
        EITHER,
        BULK_HELLO,
    ),
    "bare-lf-request": Case(b"GET /idx/_doc/1 HTTP/1.1\nHost: p\n\n", EITHER, GET_DOC),
    "bare-lf-before-te": Case(
        b"POST /_bulk HTTP/1.1\r\nHost: p\nTransfer-Encoding: chunked\r\n"
        + CL_ZTS
        + b"\r\n\r\n"
        + ZERO_THEN_SMUGGLED,
        EITHER,
        (("POST", "/_bulk", ZERO_THEN_SMUGGLED),),
    ),
    "bare-cr-in-header": Case(
        b"GET /idx/_doc/1 HTTP/1.1\r\nHost: p\r\nX-A: 1\rX-B: 2\r\n\r\n", EITHER, GET_DOC
    ),
    "obs-fold-benign": Case(
        b"GET /idx/_doc/1 HTTP/1.1\r\nHost: p\r\nX-A: 1\r\n  folded\r\n\r\n", EITHER, GET_DOC
    ),
    "connect-then-tunnel-bytes": Case(
        b"CONNECT upstream:443 HTTP/1.1\r\nHost: upstream:443\r\n\r\n" + SMUGGLED, REJECT, es=True
    ),
    "search-cl-and-te-smuggled": Case(
        b"POST /books/_search HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\n"
        + CL_ZTS
        + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
        + ZERO_THEN_SMUGGLED,
        REJECT,
    ),
}

# -- odd bytes in the request line and the headers -----------------------------------------

LONG = b"a" * 8000  # under aiohttp's 8190-byte line limit
MANY = b"".join(b"X-H%d: v%d\r\n" % (i, i) for i in range(200))
MANY_100 = b"".join(b"X-H%d: v%d\r\n" % (i, i) for i in range(100))
TOO_MANY = b"".join(b"X-H%d: v\r\n" % i for i in range(5000))

ODD_BYTES: dict[str, Case] = {
    "nul-in-target": Case(b"GET /idx/_doc/a\x00b HTTP/1.1\r\nHost: p\r\n\r\n", REJECT),
    "nul-in-header-value": Case(
        b"GET /idx/_doc/1 HTTP/1.1\r\nHost: p\r\nX-A: a\x00b\r\n\r\n", REJECT
    ),
    "nul-in-header-name": Case(
        b"GET /idx/_doc/1 HTTP/1.1\r\nHost: p\r\nX-\x00A: 1\r\n\r\n", REJECT
    ),
    "ctl-in-target": Case(b"GET /idx/_doc/a\x01b HTTP/1.1\r\nHost: p\r\n\r\n", REJECT),
    "invalid-utf8-in-target": Case(
        b"GET /idx/_doc/\xff\xfe HTTP/1.1\r\nHost: p\r\n\r\n",
        EITHER,
        (("GET", "/idx/_doc/\xff\xfe", b""),),
    ),
    "invalid-utf8-in-search-target": Case(
        b"POST /books\xc3\x28/_search HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\n\r\n{}",
        EITHER,
        (("POST", "/books\xc3\x28/_search", b"{}"),),
    ),
    "invalid-utf8-in-header-value": Case(
        b"GET /idx/_doc/1 HTTP/1.1\r\nHost: p\r\nX-A: \xff\xfe\xc3\x28\r\n\r\n", EITHER, GET_DOC
    ),
    "percent-encoded-invalid-utf8": Case(
        b"GET /idx/_doc/%FF%FE HTTP/1.1\r\nHost: p\r\n\r\n",
        FORWARD,
        (("GET", "/idx/_doc/%FF%FE", b""),),
    ),
    "one-64k-header": Case(
        b"GET /idx/_doc/1 HTTP/1.1\r\nHost: p\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n", REJECT
    ),
    "100-headers": Case(
        b"GET /idx/_doc/1 HTTP/1.1\r\nHost: p\r\n" + MANY_100 + b"\r\n", FORWARD, GET_DOC
    ),
    # aiohttp's request parser allows 128 header lines: past that, its plain-text 400.
    "200-headers": Case(
        b"GET /idx/_doc/1 HTTP/1.1\r\nHost: p\r\n" + MANY + b"\r\n", EITHER, GET_DOC
    ),
    "5000-headers": Case(
        b"GET /idx/_doc/1 HTTP/1.1\r\nHost: p\r\n" + TOO_MANY + b"\r\n", EITHER, GET_DOC
    ),
    "header-block-over-64k": Case(
        b"GET /idx/_doc/1 HTTP/1.1\r\nHost: p\r\n"
        + b"".join(b"X-K%d: %s\r\n" % (i, b"k" * 1000) for i in range(100))
        + b"\r\n",
        EITHER,
        GET_DOC,
    ),
    "long-request-line": Case(
        b"GET /idx/_doc/" + LONG + b" HTTP/1.1\r\nHost: p\r\n\r\n",
        FORWARD,
        (("GET", "/idx/_doc/" + LONG.decode(), b""),),
    ),
    "long-method": Case(b"X" * 8000 + b" /idx HTTP/1.1\r\nHost: p\r\n\r\n", EITHER, ()),
    "unknown-method": Case(
        b"BREW /idx/_doc/1 HTTP/1.1\r\nHost: p\r\n\r\n", EITHER, (("BREW", "/idx/_doc/1", b""),)
    ),
    "http-2-preface": Case(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", REJECT),
    "http-0.9": Case(b"GET /idx/_doc/1\r\n\r\n", REJECT),
    "http-version-1.2": Case(b"GET /idx/_doc/1 HTTP/1.2\r\nHost: p\r\n\r\n", EITHER, GET_DOC),
    "no-host-http-1.1": Case(b"GET /idx/_doc/1 HTTP/1.1\r\n\r\n", EITHER, GET_DOC),
    "two-hosts": Case(b"GET /idx/_doc/1 HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", EITHER, GET_DOC),
}


def _check_no_5xx(responses: list[RawResponse]) -> None:
    for resp in responses:
        assert resp.status < 500, (resp.status, resp.body[:300])


async def _exchange(client: RawClient, raw: bytes, count: int) -> tuple[list[RawResponse], bytes]:
    """Send `raw`, read up to `count` answers, then whatever else comes until EOF or quiet."""
    await client.send(raw)
    responses: list[RawResponse] = []
    for _ in range(count):
        try:
            responses.append(await client.response(timeout=10))
        except (asyncio.IncompleteReadError, ConnectionError):
            break
        if responses[-1].status < 200:  # an interim answer does not count
            continue
    extra = b""
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(0.5):
            while data := await client.reader.read(65536):
                extra += data
    return responses, extra


def _seen(upstream: FakeUpstream) -> list[tuple[str, str, bytes]]:
    return [(r.method, r.target, bytes(r.body)) for r in upstream.requests]


async def _healthy(proxy: RunningProxy) -> None:
    resp = await proxy.get("/_rerank_proxy/health")
    assert (resp.status, json.loads(resp.body)["status"]) == (200, "ok")


def _assert_es_error(resp: RawResponse) -> None:
    assert (resp.header("Content-Type") or "").startswith("application/json")
    doc = json.loads(resp.body)
    assert doc["status"] == resp.status
    assert doc["error"]["type"] and doc["error"]["reason"]


async def _run_case(proxy: RunningProxy, upstream: FakeUpstream, case: Case) -> None:
    client = await proxy.connect()
    count = max(1, len(case.forwarded))
    responses, extra = await _exchange(client, case.raw, count)
    await client.close()
    _check_no_5xx(responses)
    assert responses, "no answer at all: the connection was closed silently"
    seen = _seen(upstream)
    assert all("/smuggled" not in target for _, target, _ in seen), seen
    rejected = 400 <= responses[0].status < 500
    if case.expect == REJECT or (case.expect == EITHER and rejected):
        assert rejected, (responses[0].status, seen)
        assert seen == [], seen
        if case.es:
            _assert_es_error(responses[0])
    else:
        assert [r.status for r in responses] == [200] * len(case.forwarded), responses
        assert seen == list(case.forwarded)
        assert all(r.complete for r in upstream.requests)
    assert b"smuggled" not in extra and not extra.startswith(b"HTTP/"), extra[:200]
    await _healthy(proxy)


@pytest.fixture
async def proxy(proxies: Proxies, engine: Engine, upstream: FakeUpstream) -> RunningProxy:
    upstream.handler = echo_handler(engine)
    return await proxies.start()


def _rows(table: dict[str, Case]) -> list[str]:
    return list(table)


@pytest.mark.parametrize("name", _rows(SMUGGLING))
async def test_smuggling(proxy: RunningProxy, upstream: FakeUpstream, name: str) -> None:
    await _run_case(proxy, upstream, SMUGGLING[name])


@pytest.mark.parametrize("name", _rows(ODD_BYTES))
async def test_odd_bytes(proxy: RunningProxy, upstream: FakeUpstream, name: str) -> None:
    await _run_case(proxy, upstream, ODD_BYTES[name])


# -- pipelining: answers in order, each request forwarded once -----------------------------


def _get(target: str, version: bytes = b"HTTP/1.1", extra: bytes = b"") -> bytes:
    return b"GET %s %s\r\nHost: p\r\n%s\r\n" % (target.encode(), version, extra)


def _post(target: str, body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n%s\r\n" % (target.encode(), len(body), extra) + body
    )


SEARCH = json.dumps({"size": 3, "query": {"match": {"title": QUERY}}}).encode()
MSEARCH = ndjson({"index": "books"}, json.loads(SEARCH))

# (requests written in one go): each a (raw, target upstream sees, body upstream sees)
PIPELINES: dict[str, list[tuple[bytes, str, bytes]]] = {
    "two-gets": [(_get(f"/p/{i}"), f"/p/{i}", b"") for i in range(2)],
    "ten-gets": [(_get(f"/p/{i}"), f"/p/{i}", b"") for i in range(10)],
    "bulk-then-get": [
        (_post("/_bulk", b'{"index":{}}\n{"a":1}\n'), "/_bulk", b'{"index":{}}\n{"a":1}\n'),
        (_get("/p/after"), "/p/after", b""),
    ],
    "chunked-then-get": [
        (
            b"POST /_bulk HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n"
            + CHUNKED_HELLO,
            "/_bulk",
            b"hello",
        ),
        (_get("/p/after"), "/p/after", b""),
    ],
    "search-get-msearch": [
        (_post("/books/_search", SEARCH), "/books/_search", b"*"),
        (_get("/p/middle"), "/p/middle", b""),
        (_post("/_msearch", MSEARCH), "/_msearch", b"*"),
    ],
    "head-then-get": [
        (b"HEAD /idx HTTP/1.1\r\nHost: p\r\n\r\n", "/idx", b""),
        (_get("/p/after"), "/p/after", b""),
    ],
}


def echo_handler(engine: Engine) -> Any:
    """Searches answered by the stand-in engine; anything else echoes its target."""

    async def handle(req: Received, writer: asyncio.StreamWriter) -> bool:
        if kind_of(req) != "other":
            return await engine.handle(req, writer)
        body = json.dumps({"target": req.target}).encode()
        raw = http_response(200, ES_HEADERS, body)
        writer.write(raw[: -len(body)] if req.method == "HEAD" else raw)
        return True

    return handle


@pytest.mark.parametrize("name", PIPELINES)
async def test_pipelined_requests_are_answered_in_order_and_forwarded_once(
    proxy: RunningProxy, upstream: FakeUpstream, engine: Engine, name: str
) -> None:
    upstream.handler = echo_handler(engine)
    steps = PIPELINES[name]
    client = await proxy.connect()
    await client.send(b"".join(raw for raw, _, _ in steps))
    for raw, target, _ in steps:
        method = raw.split(b" ", 1)[0].decode()
        resp = await client.response(method=method, timeout=10)
        assert (resp.status, resp.complete) == (200, True)
        if method == "HEAD":
            continue
        doc = json.loads(resp.body)
        if "target" in doc:
            assert doc["target"] == target
        elif "responses" in doc:
            assert [ids(r) for r in doc["responses"]] == [RERANKED[:3]]
        else:
            assert ids(doc) == RERANKED[:3]
    await client.close()
    seen = [(r.method, r.target) for r in upstream.requests]
    assert seen == [(raw.split(b" ", 1)[0].decode(), t) for raw, t, _ in steps]
    for req, (_, _, body) in zip(upstream.requests, steps, strict=True):
        if body != b"*":  # a reranked search goes upstream widened, not as sent
            assert bytes(req.body) == body
    await _healthy(proxy)


# -- HTTP/1.0 -------------------------------------------------------------------------------


async def test_http_1_0_without_keep_alive_is_answered_then_closed(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    client = await proxy.connect()
    resp = await client.request(_get("/idx/_doc/1", b"HTTP/1.0"))
    assert (resp.status, resp.complete) == (200, True)
    assert await client.at_eof()
    assert [r.target for r in upstream.requests] == ["/idx/_doc/1"]
    await _healthy(proxy)


async def test_http_1_0_with_keep_alive_serves_a_second_request(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    client = await proxy.connect()
    for _ in range(2):
        resp = await client.request(_get("/idx/_doc/1", b"HTTP/1.0", b"Connection: keep-alive\r\n"))
        assert (resp.status, resp.complete) == (200, True)
        assert resp.header("Content-Length") is not None  # framing a 1.0 client can read
    assert len(upstream.requests) == 2
    await _healthy(proxy)


async def test_http_1_0_client_never_gets_chunked_framing(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    """A chunked upstream answer goes to an HTTP/1.0 client close-delimited, never chunked."""
    parts = [b"x" * 70_000, b"y" * 70_000]

    async def chunked(req: Received, writer: asyncio.StreamWriter) -> bool:
        head = http_response(200, [("Transfer-Encoding", "chunked")], content_length=False)
        writer.write(head + b"".join(chunk(p) for p in parts) + b"0\r\n\r\n")
        return True

    upstream.handler = chunked
    client = await proxy.connect()
    resp = await client.request(_get("/_search/scroll", b"HTTP/1.0"))
    assert resp.status == 200
    assert resp.header("Transfer-Encoding") is None
    assert resp.body == b"".join(parts)  # read to EOF: the whole body
    await _healthy(proxy)


async def test_http_1_0_reranked_search(proxy: RunningProxy, upstream: FakeUpstream) -> None:
    raw = _post("/books/_search", SEARCH).replace(b"HTTP/1.1", b"HTTP/1.0", 1)
    client = await proxy.connect()
    resp = await client.request(raw)
    assert (resp.status, resp.header("X-Rerank")) == (200, "applied")
    assert ids(json.loads(resp.body)) == RERANKED[:3]
    await _healthy(proxy)


# -- Expect: 100-continue (the plain `_bulk` case is in test_malformed.py) -------------------


async def test_expect_100_continue_on_a_reranked_search(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    client = await proxy.connect()
    await client.send(
        b"POST /books/_search HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(SEARCH)
    )
    interim = await client.response(timeout=5)
    assert interim.status == 100
    await client.send(SEARCH)
    final = await client.response(timeout=5)
    assert (final.status, final.header("X-Rerank")) == (200, "applied")
    assert all(r.header("Expect") is None for r in upstream.requests)
    await _healthy(proxy)


@pytest.mark.parametrize(
    "head",
    [
        b"POST http://other/_bulk HTTP/1.1\r\nHost: other\r\n",
        b"POST http://other/books/_search HTTP/1.1\r\nHost: other\r\n",
    ],
    ids=["absolute-bulk", "absolute-search"],
)
async def test_expect_100_continue_refused_without_the_body(
    proxy: RunningProxy, upstream: FakeUpstream, head: bytes
) -> None:
    """The proxy refuses the request from its head: the client gets the final 4xx without
    sending its body, and no hang."""
    client = await proxy.connect()
    await client.send(head + b"Expect: 100-continue\r\nContent-Length: 1000\r\n\r\n")
    resp = await client.response(timeout=5)
    if resp.status == 100:  # an interim answer first is allowed; the final one must follow
        resp = await client.response(timeout=5)
    assert resp.status == 400
    _assert_es_error(resp)
    await client.close()
    assert upstream.requests == []
    await _healthy(proxy)


async def test_expect_100_continue_on_http_1_0_sends_no_interim(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    body = b'{"index":{}}\n{"a":1}\n'
    raw = (
        b"POST /_bulk HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
    )
    client = await proxy.connect()
    resp = await client.request(raw)
    assert resp.status == 200  # not 100: HTTP/1.0 has no interim answers
    assert [bytes(r.body) for r in upstream.requests] == [body]
    await _healthy(proxy)


async def test_an_unknown_expectation_is_a_4xx_or_ignored(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    client = await proxy.connect()
    resp = await client.request(
        b"POST /_bulk HTTP/1.1\r\nHost: p\r\nExpect: teapot\r\nContent-Length: 5\r\n\r\nhello"
    )
    assert resp.status in (200, 417), resp.status
    assert len(upstream.requests) == (1 if resp.status == 200 else 0)
    await _healthy(proxy)


# -- gzip bombs ------------------------------------------------------------------------------


@cache
def gzip_bomb(expanded: int = 256 << 20) -> bytes:
    """A small gzip member that expands to `expanded` bytes (spaces: valid JSON whitespace)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b" " * (1 << 20)
    out = [comp.compress(block) for _ in range(expanded >> 20)]
    return b"".join(out) + comp.flush()


@pytest.mark.parametrize(
    ("target", "reranked"),
    [("/books/_search", True), ("/_msearch", True), ("/_bulk", False), ("/idx/_doc/1", False)],
)
async def test_gzip_bomb_goes_upstream_compressed_and_is_never_inflated_unbounded(
    proxy: RunningProxy, upstream: FakeUpstream, target: str, reranked: bool
) -> None:
    bomb = gzip_bomb()
    assert len(bomb) < 1 << 20
    client = await proxy.connect()
    resp = await client.request(_post(target, bomb, b"Content-Encoding: gzip\r\n"), timeout=30)
    assert resp.status < 500
    [seen] = upstream.requests  # the client's bytes, once, still compressed
    assert (bytes(seen.body), seen.header("Content-Encoding")) == (bomb, "gzip")
    if reranked:  # inflating stopped at the search body cap: the search went on as it came
        assert resp.header("X-Rerank") == "skipped"
        assert resp.header("X-Rerank-Reason") == "body_too_large"
    await _healthy(proxy)


# -- a Content-Length the client never delivers ---------------------------------------------


@pytest.mark.parametrize("target", ["/_bulk", "/books/_search"])
async def test_content_length_larger_than_the_body_then_close(
    proxy: RunningProxy, upstream: FakeUpstream, target: str
) -> None:
    client = await proxy.connect()
    head = _post(target, b"x" * 100)[:-100]
    await client.send(head + b'{"partial":')
    client.writer.write_eof()  # the client is done sending: 89 bytes short
    with contextlib.suppress(ConnectionError, TimeoutError, asyncio.IncompleteReadError):
        async with asyncio.timeout(10):
            data = await client.reader.read()
            assert not data.startswith(b"HTTP/1.1 5"), data[:200]
    await client.close()
    for req in upstream.requests:  # a pass-through upload started; a search never did
        await asyncio.wait_for(req.ended.wait(), 10)
        assert not req.complete  # never a complete request made of a partial one
    if target.endswith("_search"):
        assert upstream.requests == []
    await _healthy(proxy)


# -- slowloris and idle connections (listen timeouts: pending) -------------------------------


async def _start_with_listen(upstream: FakeUpstream, **listen: Any) -> RunningProxy:
    raw = {**proxy_config(upstream.url), "listen": listen}
    return await start_app(create_app(parse_config(raw)))


async def _closed_by_proxy(client: RawClient, trickle: bytes, every: float, limit: float) -> bool:
    """Send `trickle` a byte every `every` s until the proxy closes the connection; False when
    it is still open after `limit` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    for byte in trickle:
        if loop.time() > deadline:
            return False
        try:
            await client.send(bytes([byte]))
            async with asyncio.timeout(every):
                if await client.reader.read(65536) == b"" or client.reader.at_eof():
                    return True
        except TimeoutError:
            continue
        except ConnectionError:
            return True
        # Something came back (a 408): read on until the close.
        return await client.at_eof(limit)
    return False


async def test_slowloris_headers_are_cut_by_header_timeout(upstream: FakeUpstream) -> None:
    proxy = await _start_with_listen(upstream, header_timeout=0.5)
    try:
        client = await proxy.connect()
        trickle = b"GET /idx/_doc/1 HTTP/1.1\r\nHost: p\r\n" + b"X-Slow: " + b"a" * 500
        assert await _closed_by_proxy(client, trickle, every=0.2, limit=10)
        assert upstream.requests == []
        assert (await proxy.get("/_rerank_proxy/health")).status == 200
    finally:
        await proxy.close_clients()
        await proxy.stop()


async def test_a_body_that_stops_coming_is_cut_by_body_timeout(upstream: FakeUpstream) -> None:
    proxy = await _start_with_listen(upstream, body_timeout=0.5)
    try:
        client = await proxy.connect()
        await client.send(b"POST /_bulk HTTP/1.1\r\nHost: p\r\nContent-Length: 1000\r\n\r\n{")
        data = b""
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(10):  # closed (possibly after a 408), not held for ever
                while more := await client.reader.read(65536):
                    data += more
        assert data == b"" or data.startswith(b"HTTP/1.1 408 "), data[:200]
        for req in upstream.requests:
            await asyncio.wait_for(req.ended.wait(), 10)
            assert not req.complete
        assert (await proxy.get("/_rerank_proxy/health")).status == 200
    finally:
        await proxy.close_clients()
        await proxy.stop()


async def test_an_idle_keep_alive_connection_is_closed_by_keepalive_timeout(
    upstream: FakeUpstream,
) -> None:
    proxy = await _start_with_listen(upstream, keepalive_timeout=0.5)
    try:
        client = await proxy.connect()
        resp = await client.request(_get("/idx/_doc/1"))
        assert resp.status == 200
        assert await client.at_eof(10)
    finally:
        await proxy.close_clients()
        await proxy.stop()


async def test_connections_past_max_connections_are_refused_not_queued(
    upstream: FakeUpstream,
) -> None:
    proxy = await _start_with_listen(upstream, max_connections=2, header_timeout=30.0)
    try:
        held = [await proxy.connect() for _ in range(2)]
        for c in held:
            await c.send(b"GET /idx/_doc/1 HTTP/1.1\r\n")  # an unfinished head each
        extra = await proxy.connect()
        try:
            resp: RawResponse | None = await extra.request(_get("/idx/_doc/1"), timeout=10)
        except (ConnectionError, asyncio.IncompleteReadError):
            resp = None  # closed at once: also a refusal
        assert resp is None or resp.status == 503
        for c in held:
            await c.close()
        # Once the held ones are gone, new connections are served again.
        for _ in range(100):
            got = await proxy.get()
            if got.status == 200:
                break
            await asyncio.sleep(0.05)
        assert got.status == 200
    finally:
        await proxy.close_clients()
        await proxy.stop()


def test_table_sizes() -> None:
    """The documented cell counts (docs quote them)."""
    assert (len(SMUGGLING), len(ODD_BYTES), len(PIPELINES)) == (35, 21, 6)
