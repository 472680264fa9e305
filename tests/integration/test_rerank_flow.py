"""The rerank flow through HTTP: applied, the query text sources, and every skip the proxy
decides before it asks the engine anything (the client's own request then goes upstream,
once, as it was sent, minus `rerank=`).

The engine is `rerank_support.Engine` on the recording fake upstream; the model is the
deterministic word-overlap backend, recording the queries it was asked.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.keys import METRICS
from proxy.rerank.fake import FakeBackend

from .rerank_support import (
    ENGINE_ORDER,
    QUERY,
    RERANKED,
    WINDOW,
    Engine,
    Proxies,
    Recording,
    counted,
    error_reply,
    ids,
    rerank_headers,
    search_answer,
    send,
)

MATCH = {"match": {"title": QUERY}}


# -- applied -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("page", "expected"),
    [
        ({}, RERANKED[:10]),
        ({"size": 4}, RERANKED[:4]),
        ({"from": 1, "size": 3}, RERANKED[1:4]),
        ({"from": 8, "size": 4}, RERANKED[8:12]),  # past the window: engine order follows
    ],
    ids=["default", "size", "from", "past_window_edge"],
)
async def test_applied_reorders_the_window_and_slices_the_page(
    proxies: Proxies, engine: Engine, page: dict[str, int], expected: list[str]
) -> None:
    backend = Recording()
    proxy = await proxies.start(backend)
    resp = await send(proxy, "/books/_search", {"query": MATCH, **page})

    assert resp.status == 200
    assert rerank_headers(resp) == ("applied", None)
    doc = json.loads(resp.body)
    assert ids(doc) == expected
    for hit in doc["hits"]["hits"]:
        engine_score = float(20 - ENGINE_ORDER.index(hit["_id"]))
        in_window = ENGINE_ORDER.index(hit["_id"]) < WINDOW
        assert hit.get("fields") == ({"_engine_score": [engine_score]} if in_window else None)
    [top] = FakeBackend().score_pairs([(QUERY, "red apple")], 512)  # d3, the best
    assert doc["hits"]["max_score"] == top
    assert backend.queries == [QUERY]

    [seen] = engine.requests
    assert seen.target == "/books/_search"
    sent = json.loads(seen.body)
    assert (sent["from"], sent["size"]) == (
        0,
        max(WINDOW, page.get("from", 0) + page.get("size", 10)),
    )
    assert sent["query"] == MATCH
    assert counted(proxy) == {("applied", "none"): 1}
    assert proxy.app[METRICS].value("hits_without_text_total") == 1  # d9 has no title


async def test_applied_is_counted_in_the_exposition(proxies: Proxies, engine: Engine) -> None:
    proxy = await proxies.start()
    resp = await send(proxy, "/books/_search?rerank=true", {"query": MATCH, "size": 3})
    assert rerank_headers(resp) == ("applied", None)
    assert engine.requests[0].target == "/books/_search"  # `rerank=` is the proxy's own

    exposed = await proxy.get("/_rerank_proxy/metrics")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(exposed.body.decode())
        for s in family.samples
    }
    searches = {k[1]: v for k, v in samples.items() if k[0] == "rerank_proxy_searches_total"}
    assert searches == {(("outcome", "applied"), ("reason", "none")): 1}
    requests = ("rerank_proxy_requests_total", (("route", "search"), ("status_class", "2xx")))
    assert samples[requests] == 1
    assert samples[("rerank_proxy_hits_without_text_total", ())] == 1  # d9 has no title
    assert len(engine.requests) == 1  # the admin route is the proxy's own


# -- query text sources ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "body", "headers", "upstream_path"),
    [
        # The header overrides the DSL's text.
        (
            "/books/_search",
            {"query": {"match": {"title": "green"}}},
            {"X-Rerank-Query": QUERY},
            "/books/_search",
        ),
        # A JSON pointer into the body (a filter clause the DSL walk never reads).
        (
            "/ptr/_search",
            {"query": {"bool": {"must": [{"match": {"title": "green"}}], "filter": [MATCH]}}},
            {},
            "/ptr/_search",
        ),
        # A search template's `query_param`: the rendered query has no text at all.
        (
            "/tpl/_search/template",
            {
                "source": {"query": {"match_all": {}}, "size": "{{n}}"},
                "params": {"text": QUERY, "n": 4},
            },
            {},
            "/tpl/_search",
        ),
    ],
    ids=["header", "query_path", "query_param"],
)
async def test_query_text_sources(
    proxies: Proxies,
    engine: Engine,
    target: str,
    body: dict[str, Any],
    headers: dict[str, str],
    upstream_path: str,
) -> None:
    backend = Recording()
    proxy = await proxies.start(backend)
    resp = await send(proxy, target, body, headers=headers)
    assert (resp.status, rerank_headers(resp)) == (200, ("applied", None))
    assert backend.queries == [QUERY]
    assert ids(json.loads(resp.body))[:4] == RERANKED[:4]
    *renders, search = engine.requests
    assert search.target == upstream_path
    assert (json.loads(search.body)["from"], json.loads(search.body)["size"]) == (0, WINDOW)
    if target.endswith("/template"):
        [render] = renders
        assert render.target == "/_render/template"
        assert json.loads(render.body) == body
    else:
        assert renders == []
    assert counted(proxy) == {("applied", "none"): 1}


async def test_template_without_query_param_has_no_query_text(
    proxies: Proxies, engine: Engine
) -> None:
    backend = Recording()
    proxy = await proxies.start(backend)
    body = json.dumps({"source": {"query": {"match_all": {}}}, "params": {"text": QUERY}})
    resp = await send(proxy, "/books/_search/template?rerank=1", body.encode())
    assert (resp.status, rerank_headers(resp)) == (200, ("skipped", "no_query_text"))
    render, own = engine.requests
    assert render.target == "/_render/template"
    assert (own.target, bytes(own.body)) == ("/books/_search/template", body.encode())
    assert backend.queries == []
    assert counted(proxy) == {("skipped", "no_query_text"): 1}


# -- skips decided before the engine is asked --------------------------------------------

Q: dict[str, Any] = {"query": MATCH}
TEMPLATE = {"source": {"query": {"match": {"title": "{{text}}"}}}, "params": {"text": QUERY}}
BROKEN = b'{"query": {"match": '
SKIPS: list[tuple[str, str, bytes | Any, dict[str, str], str]] = [
    # (reason, client target, body, headers, target the engine must see)
    ("client_off", "/books/_search?rerank=true", Q, {"X-Rerank": "off"}, "/books/_search"),
    (
        "client_off",
        "/books/_search?rerank=false&track_total_hits=true",
        Q,
        {},
        "/books/_search?track_total_hits=true",
    ),
    ("disabled", "/archive/_search?rerank=true", Q, {}, "/archive/_search"),
    ("mixed_rules", "/books,magazines/_search", Q, {}, "/books,magazines/_search"),
    (
        "body_too_large",
        "/books/_search?rerank=true",
        {"query": {"match": {"title": "x " * 1500}}},
        {},
        "/books/_search",
    ),
    ("unparsable_body", "/books/_search", BROKEN, {}, "/books/_search"),
    ("unparsable_body", "/books/_search", b"[1, 2]", {}, "/books/_search"),
    (
        "template_options",
        "/books/_search/template",
        {**TEMPLATE, "explain": True},
        {},
        "/books/_search/template",
    ),
    (
        "template_options",
        "/books/_search/template",
        {**TEMPLATE, "profile": True},
        {},
        "/books/_search/template",
    ),
    ("sort", "/books/_search", {**Q, "sort": [{"year": "desc"}]}, {}, "/books/_search"),
    ("sort", "/books/_search?sort=year:desc", Q, {}, "/books/_search?sort=year:desc"),
    ("scroll", "/books/_search?scroll=1m", Q, {}, "/books/_search?scroll=1m"),
    ("size_0", "/books/_search", {**Q, "size": 0}, {}, "/books/_search"),
    ("past_window", "/books/_search", {**Q, "from": WINDOW}, {}, "/books/_search"),
    ("bad_from_size", "/books/_search", {**Q, "size": -1}, {}, "/books/_search"),
    ("bad_from_size", "/books/_search?size=ten", Q, {}, "/books/_search?size=ten"),
    ("no_query_text", "/books/_search", {"query": {"match_all": {}}}, {}, "/books/_search"),
    ("explain", "/books/_search", {**Q, "explain": True}, {}, "/books/_search"),
    ("explain", "/books/_search?explain", Q, {}, "/books/_search?explain"),
    ("profile", "/books/_search", {**Q, "profile": True}, {}, "/books/_search"),
    ("search_after", "/books/_search", {**Q, "search_after": [3.0, "d3"]}, {}, "/books/_search"),
    (
        "stored_fields",
        "/books/_search?stored_fields=title",
        Q,
        {},
        "/books/_search?stored_fields=title",
    ),
    (
        "pit",
        "/books/_search",
        {**Q, "pit": {"id": "abc", "keep_alive": "1m"}},
        {},
        "/books/_search",
    ),
    ("collapse", "/books/_search", {**Q, "collapse": {"field": "author"}}, {}, "/books/_search"),
    ("rescore", "/books/_search", {**Q, "rescore": {"window_size": 5}}, {}, "/books/_search"),
    (
        "query_type",
        "/books/_search",
        {"query": {"script_score": {"query": MATCH}}},
        {},
        "/books/_search",
    ),
]


@pytest.mark.parametrize(
    ("reason", "target", "body", "headers", "upstream_target"),
    SKIPS,
    ids=[f"{s[0]}-{i}" for i, s in enumerate(SKIPS)],
)
async def test_skip_before_fetch_sends_the_clients_own_request_once(
    proxies: Proxies,
    engine: Engine,
    reason: str,
    target: str,
    body: bytes | Any,
    headers: dict[str, str],
    upstream_target: str,
) -> None:
    backend = Recording()
    proxy = await proxies.start(backend, max_buffer_bytes=2048)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    resp = await send(proxy, target, raw, headers=headers)

    assert rerank_headers(resp) == ("skipped", reason)
    [seen] = engine.requests
    assert (seen.target, bytes(seen.body)) == (upstream_target, raw)
    if raw == BROKEN:  # the engine's own parse error, untouched
        assert resp.status == 400
        assert json.loads(resp.body)["error"]["type"] == "parsing_exception"
    else:
        assert resp.status == 200
    assert backend.queries == []
    assert counted(proxy) == {("skipped", reason): 1}


async def test_template_not_rendered_sends_the_clients_own_request(
    proxies: Proxies, engine: Engine
) -> None:
    engine.then("render", error_reply(400, "script_exception"))
    proxy = await proxies.start()
    raw = json.dumps(TEMPLATE).encode()
    resp = await send(proxy, "/books/_search/template?rerank=true&typed_keys", raw)

    assert (resp.status, rerank_headers(resp)) == (200, ("skipped", "template_not_rendered"))
    render, own = engine.requests
    assert (render.target, json.loads(render.body)) == ("/_render/template", TEMPLATE)
    assert (own.target, bytes(own.body)) == ("/books/_search/template?typed_keys", raw)
    assert json.loads(resp.body) == search_answer("books", {"query": MATCH})
    assert counted(proxy) == {("skipped", "template_not_rendered"): 1}


@pytest.mark.parametrize("extra", [0, 1])
async def test_msearch_template_fan_out_is_bounded(
    proxies: Proxies, engine: Engine, extra: int
) -> None:
    """300 items once made 300 sequential `_render` calls from one small request."""
    from proxy.flows import MAX_RENDERED_ITEMS

    proxy = await proxies.start()
    item = {"source": {"query": {"match": {"title": "{{q}}"}}}, "params": {"q": QUERY}}
    lines: list[Any] = []
    for _ in range(MAX_RENDERED_ITEMS + extra):
        lines += [{"index": "books"}, item]
    body = "".join(json.dumps(x) + "\n" for x in lines).encode()
    resp = await send(proxy, "/_msearch/template", body, content_type="application/x-ndjson")
    renders = [r for r in engine.requests if r.target.startswith("/_render/template")]
    if extra:
        assert rerank_headers(resp) == ("skipped", "too_many_items")
        assert renders == []
        [own] = engine.requests
        assert (own.target, bytes(own.body)) == ("/_msearch/template", body)
    else:
        assert len(renders) == MAX_RENDERED_ITEMS
