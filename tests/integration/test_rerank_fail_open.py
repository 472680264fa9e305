"""The fail-open rule of `proxy.flows`, counted in upstream requests.

Once the widened response is in hand the client gets its view of it (engine order when the
reranker fails or the answer cannot be reranked), and the search is never sent twice. The
client's own request is re-sent only when the proxy holds nothing it can serve: a response
too large to buffer, one that does not parse or has an unexpected shape, or a 4xx the
widening may have caused. A 401, 403, 429 or 5xx is served as it came: sending it again
would count twice against a secured cluster's failed-login lockout.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from proxy.rerank.base import Backend
from proxy.rerank.fake import FakeBackend
from proxy.rerank.front import RerankFront

from .fakes import http_response
from .rerank_support import (
    ENGINE_ORDER,
    ES_HEADERS,
    QUERY,
    RERANKED,
    WINDOW,
    Engine,
    Misbehaving,
    Proxies,
    body_of,
    counted,
    error_reply,
    has_engine_score,
    ids,
    json_bytes,
    ndjson,
    parse_lines,
    rerank_headers,
    search_answer,
    send,
    warnings,
)

# The client's own search, spelled as a client might: spacing and key order are its own.
CLIENT = {"size": 3, "from": 2, "query": {"match": {"title": QUERY}}}
CLIENT_RAW = b'{ "size": 3,  "from": 2, "query": {"match": {"title": "red apple"}} }'
TARGET = "/books/_search?rerank=true&track_total_hits=true"
UPSTREAM_TARGET = "/books/_search?track_total_hits=true"  # `rerank=` is the proxy's own


def assert_widened_once(engine: Engine) -> None:
    """Exactly one upstream request: the widened search."""
    [seen] = engine.requests
    assert seen.target == UPSTREAM_TARGET
    assert {k: json.loads(seen.body)[k] for k in ("from", "size")} == {"from": 0, "size": WINDOW}


# -- the reranker fails: one search, the engine's order ------------------------------------


@pytest.mark.parametrize(
    ("mode", "state", "reason"),
    [
        ("raise", "failed", "error"),
        ("block", "failed", "timeout"),
        ("nan", "failed", "invalid_scores"),
        ("count", "failed", "invalid_scores"),
        ("overload", "skipped", "overloaded"),
    ],
)
async def test_reranker_failure_serves_the_engines_order_from_one_search(
    proxies: Proxies,
    engine: Engine,
    caplog: pytest.LogCaptureFixture,
    mode: str,
    state: str,
    reason: str,
) -> None:
    caplog.set_level(logging.WARNING)
    # Overload: a healthy model whose queue (3 pairs) cannot take the 9-text window.
    backend: Backend = FakeBackend() if mode == "overload" else Misbehaving(mode)
    proxy = await proxies.start(
        backend,
        max_queue=3 if mode == "overload" else 4096,
        # `block` holds the model until teardown: only the budget can end the wait.
        books={"timeout_ms": 50} if mode == "block" else None,
    )
    resp = await send(proxy, TARGET, CLIENT_RAW)

    assert (resp.status, rerank_headers(resp)) == (200, (state, reason))
    doc = json.loads(resp.body)
    expected = search_answer("books", CLIENT)  # the engine's answer to the client's search
    # ... except `took`, which includes the proxy's own time (at least 1 ms once it scored)
    assert doc.pop("took") >= expected.pop("took") + 1
    assert doc == expected
    assert ids(doc) == ENGINE_ORDER[2:5]
    assert not has_engine_score(doc)
    assert_widened_once(engine)
    assert counted(proxy) == {(state, reason): 1}
    [warning] = warnings(caplog.records)
    assert reason in warning


# -- the widened answer cannot be reranked: one search, the engine's order -----------------


def _timed_out(doc: dict[str, Any]) -> dict[str, Any]:
    return {**doc, "timed_out": True}


def _shard_failed(doc: dict[str, Any]) -> dict[str, Any]:
    return {**doc, "_shards": {"total": 2, "successful": 1, "skipped": 0, "failed": 1}}


def _no_hits(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "hits"}


@pytest.mark.parametrize(
    ("change", "reason"),
    [(_timed_out, "timed_out"), (_shard_failed, "shard_failures"), (_no_hits, "no_hits")],
    ids=["timed_out", "shard_failures", "no_hits"],
)
async def test_unrerankable_answer_is_served_in_engine_order(
    proxies: Proxies,
    engine: Engine,
    change: Callable[[dict[str, Any]], dict[str, Any]],
    reason: str,
) -> None:
    backend = FakeBackend()
    engine.then("search", engine.tweaked(change))
    proxy = await proxies.start(backend)
    resp = await send(proxy, TARGET, CLIENT_RAW)

    assert (resp.status, rerank_headers(resp)) == (200, ("skipped", reason))
    assert json.loads(resp.body) == change(search_answer("books", CLIENT))
    assert_widened_once(engine)
    assert backend.calls == 0
    assert counted(proxy) == {("skipped", reason): 1}


# -- non-2xx answers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (401, "security_exception"),
        (403, "security_exception"),
        (429, "es_rejected_execution_exception"),
        (503, "cluster_block_exception"),
    ],
)
async def test_401_403_429_and_5xx_are_served_as_they_came(
    proxies: Proxies, engine: Engine, status: int, error_type: str
) -> None:
    body = body_of(error_reply(status, error_type))
    engine.then("search", http_response(status, [*ES_HEADERS, ("Retry-After", "7")], body))
    proxy = await proxies.start()
    resp = await send(proxy, TARGET, CLIENT_RAW)

    assert (resp.status, resp.body) == (status, body)
    assert resp.header("Retry-After") == "7"
    assert rerank_headers(resp) == ("skipped", "upstream_status")
    assert_widened_once(engine)  # not sent again to a cluster that is struggling
    assert counted(proxy) == {("skipped", "upstream_status"): 1}


TOO_LARGE = json_bytes(200, {**search_answer("books", {"size": 20}), "pad": "x" * 4096})


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (error_reply(400, "illegal_argument_exception"), "upstream_status"),
        (error_reply(404, "index_not_found_exception"), "upstream_status"),
        (TOO_LARGE, "response_too_large"),
        (http_response(200, ES_HEADERS, b'{"took": 3, "hits": {"hits": ['), "unparsable_response"),
        (http_response(200, ES_HEADERS, b'["not", "a", "search"]'), "unexpected_response"),
    ],
    ids=["400", "404", "too_large", "broken_json", "not_an_object"],
)
async def test_unservable_answer_resends_the_clients_own_request(
    proxies: Proxies, engine: Engine, reply: bytes, reason: str
) -> None:
    engine.then("search", reply)
    proxy = await proxies.start(max_buffer_bytes=2048)
    resp = await send(proxy, TARGET, CLIENT_RAW)

    assert (resp.status, rerank_headers(resp)) == (200, ("skipped", reason))
    assert json.loads(resp.body) == search_answer("books", CLIENT)  # its own request's answer
    widened, own = engine.requests
    assert (widened.target, json.loads(widened.body)["size"]) == (UPSTREAM_TARGET, WINDOW)
    assert (own.target, bytes(own.body)) == (UPSTREAM_TARGET, CLIENT_RAW)
    assert counted(proxy) == {("skipped", reason): 1}


# -- _msearch: items one by one -----------------------------------------------------------

FAILING = "broken words"


class FailsForOneQuery(RerankFront):
    async def score(self, query: str, docs: Sequence[str], *, max_length: int) -> list[float]:
        if query == FAILING:
            raise RuntimeError("model error on this query only")
        return await super().score(query, docs, max_length=max_length)


def _items(*queries: str, size: int = 4) -> list[Any]:
    return [
        x
        for q in queries
        for x in ({"index": "books"}, {"query": {"match": {"title": q}}, "size": size})
    ]


async def test_msearch_items_fail_open_one_by_one(
    proxies: Proxies, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    lines = _items(QUERY, FAILING)
    proxy = await proxies.start(front=FailsForOneQuery)
    resp = await send(
        proxy, "/_msearch?rerank=true", ndjson(*lines), content_type="application/x-ndjson"
    )

    assert resp.status == 200
    assert rerank_headers(resp) == ("applied", None)
    assert resp.header("X-Rerank-Items") == "applied,failed:error"
    first, second = json.loads(resp.body)["responses"]
    assert ids(first) == RERANKED[:4]
    assert has_engine_score(first)
    expected = {**search_answer("books", lines[3]), "status": 200}
    assert second.pop("took") >= expected.pop("took")  # plus the proxy's own time
    assert second == expected
    [seen] = engine.requests
    assert seen.target == "/_msearch"
    sent = parse_lines(bytes(seen.body))
    assert sent[::2] == lines[::2]
    assert [(b["from"], b["size"]) for b in sent[1::2]] == [(0, WINDOW), (0, WINDOW)]
    assert counted(proxy) == {("applied", "none"): 1, ("failed", "error"): 1}
    [warning] = warnings(caplog.records)
    assert "msearch item 1" in warning


async def test_msearch_item_error_is_skipped_alone(proxies: Proxies, engine: Engine) -> None:
    error = {
        "error": {"type": "index_not_found_exception", "reason": "no such index"},
        "status": 404,
    }
    engine.then(
        "msearch", engine.tweaked(lambda doc: {**doc, "responses": [error, doc["responses"][1]]})
    )
    proxy = await proxies.start()
    resp = await send(
        proxy, "/_msearch", ndjson(*_items(QUERY, QUERY)), content_type="application/x-ndjson"
    )

    assert (resp.status, rerank_headers(resp)) == (200, ("applied", None))
    assert resp.header("X-Rerank-Items") == "skipped:item_error,applied"
    first, second = json.loads(resp.body)["responses"]
    assert first == error
    assert ids(second) == RERANKED[:4]
    assert len(engine.requests) == 1
    assert counted(proxy) == {("applied", "none"): 1, ("skipped", "item_error"): 1}


async def test_msearch_with_every_item_skipped_sends_the_clients_own_request(
    proxies: Proxies, engine: Engine
) -> None:
    raw = ndjson(
        {"index": "archive"},
        {"query": {"match": {"title": QUERY}}},
        {"index": "books"},
        {"query": {"match": {"title": QUERY}}, "sort": ["year"]},
    )
    proxy = await proxies.start()
    resp = await send(proxy, "/_msearch?rerank=true", raw, content_type="application/x-ndjson")

    assert (resp.status, rerank_headers(resp)) == (200, ("skipped", "disabled+sort"))
    assert resp.header("X-Rerank-Items") == "skipped:disabled,skipped:sort"
    [seen] = engine.requests
    assert (seen.target, bytes(seen.body)) == ("/_msearch", raw)
    assert counted(proxy) == {("skipped", "disabled"): 1, ("skipped", "sort"): 1}


@pytest.mark.parametrize(
    ("reply", "reason", "requests"),
    [
        (
            json_bytes(200, {"took": 1, "responses": [search_answer("books", {})]}),
            "unexpected_response",
            2,
        ),
        (error_reply(503, "cluster_block_exception"), "upstream_status", 1),
        (error_reply(400, "illegal_argument_exception"), "upstream_status", 2),
    ],
    ids=["wrong_count", "503", "400"],
)
async def test_msearch_unservable_answer(
    proxies: Proxies, engine: Engine, reply: bytes, reason: str, requests: int
) -> None:
    engine.then("msearch", reply)
    raw = ndjson(*_items(QUERY, QUERY))
    proxy = await proxies.start()
    resp = await send(proxy, "/_msearch?rerank=true", raw, content_type="application/x-ndjson")

    assert rerank_headers(resp) == ("skipped", reason)
    assert resp.header("X-Rerank-Items") == f"skipped:{reason},skipped:{reason}"
    assert len(engine.requests) == requests
    widened = parse_lines(bytes(engine.requests[0].body))
    assert [b["size"] for b in widened[1::2]] == [WINDOW, WINDOW]
    if requests == 1:  # served as it came
        assert (resp.status, resp.body) == (503, body_of(reply))
    else:  # the client's own request, re-sent
        assert (engine.requests[1].target, bytes(engine.requests[1].body)) == ("/_msearch", raw)
        assert resp.status == 200
        assert [ids(r) for r in json.loads(resp.body)["responses"]] == [ENGINE_ORDER[:4]] * 2
    assert counted(proxy) == {("skipped", reason): 2}
