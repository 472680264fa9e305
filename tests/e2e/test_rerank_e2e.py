"""Reranking through the proxy against real engines, with the official clients unchanged.

The reference is sentence-transformers' `CrossEncoder` on the same (stand-in) weights applied
to the engine's own top-`WINDOW` hits: the proxy's order and scores must match it, pages must
tile the reranked window, and every response must equal the engine's answer to the client's
own request except hit order, `_score`, `max_score` and the added `fields._engine_score`.
"""

from __future__ import annotations

import itertools
import json
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import SciFact

from .conftest import ALIAS, SCIFACT_INDEX, WINDOW, Stack

pytestmark = pytest.mark.e2e
Scorer = Callable[[str, list[str]], list[float]]
TOL = 1e-5


def _query(text: str, **extra: Any) -> dict[str, Any]:
    return {"query": {"multi_match": {"query": text, "fields": ["title", "text"]}}, **extra}


def _queries(data: SciFact, n: int) -> list[str]:
    return [data.queries[qid] for qid in sorted(data.qrels, key=int)[:n]]


def _body(resp: Any) -> Any:
    return getattr(resp, "body", resp)


def _texts(hits: list[dict[str, Any]]) -> list[str]:
    return [f"{h['_source']['title']}\n{h['_source']['text']}" for h in hits]


def _strip(doc: Any) -> Any:
    """A response minus what reranking may change: order, scores, `took`, `_engine_score`."""
    doc = json.loads(json.dumps(_body(doc)))
    doc.pop("took", None)
    hits = doc.get("hits")
    if isinstance(hits, dict):
        hits.pop("max_score", None)
        for hit in hits.get("hits", []):
            hit.pop("_score", None)
            fields = hit.get("fields")
            if isinstance(fields, dict):
                fields.pop("_engine_score", None)
                if not fields:
                    hit.pop("fields")
        if "hits" in hits:
            hits["hits"] = sorted(hits["hits"], key=lambda h: json.dumps(h, sort_keys=True))
    return doc


@pytest.fixture
def clients(stack: Stack) -> Any:
    direct = stack.sync_client(stack.engine_url)
    proxied = stack.sync_client(stack.proxy_url)
    yield direct, proxied
    direct.close()
    proxied.close()


def test_order_and_scores_match_the_reference_cross_encoder(
    stack: Stack, clients: Any, scifact: SciFact, reference_scorer: Scorer
) -> None:
    direct, proxied = clients
    for text in _queries(scifact, 6):
        window = _body(direct.search(index=SCIFACT_INDEX, body=_query(text, size=WINDOW)))
        window_hits = window["hits"]["hits"]
        ref = dict(
            zip(
                (h["_id"] for h in window_hits),
                reference_scorer(text, _texts(window_hits)),
                strict=True,
            )
        )
        got = _body(proxied.search(index=SCIFACT_INDEX, body=_query(text, size=10)))["hits"]
        ids = [h["_id"] for h in got["hits"]]
        assert len(ids) == min(10, len(window_hits)), stack.log_tail()
        for hit in got["hits"]:
            assert hit["_score"] == pytest.approx(ref[hit["_id"]], abs=TOL)
            engine = next(h["_score"] for h in window_hits if h["_id"] == hit["_id"])
            assert hit["fields"]["_engine_score"] == [pytest.approx(engine)]
        scores = [ref[i] for i in ids]
        assert all(a >= b - TOL for a, b in itertools.pairwise(scores))
        left_out = [s for i, s in ref.items() if i not in ids]
        if left_out:
            assert min(scores) >= max(left_out) - TOL
        assert got["max_score"] == pytest.approx(max(ref.values()), abs=TOL)
        assert ids != [h["_id"] for h in window_hits[:10]] or len(window_hits) < 2


def test_pages_tile_the_reranked_window(clients: Any, scifact: SciFact) -> None:
    _, proxied = clients
    text = _queries(scifact, 1)[0]

    def page(from_: int, size: int) -> list[str]:
        body = _query(text, **{"from": from_, "size": size})
        return [
            h["_id"] for h in _body(proxied.search(index=SCIFACT_INDEX, body=body))["hits"]["hits"]
        ]

    first20 = page(0, 20)
    assert page(0, 10) + page(10, 10) == first20
    assert len(set(first20)) == 20
    whole = page(0, WINDOW)
    assert whole[:20] == first20
    # A page that straddles the end of the window: reranked part, then the engine's order.
    direct_order = [h for h in page(WINDOW, 10)]
    straddle = page(WINDOW - 5, 10)
    assert straddle == whole[WINDOW - 5 :] + direct_order[:5]
    assert not set(straddle[:5]) & set(direct_order)


def test_past_the_window_is_the_engines_order(clients: Any, scifact: SciFact) -> None:
    direct, proxied = clients
    body = _query(_queries(scifact, 1)[0], **{"from": WINDOW, "size": 10})
    assert _strip(proxied.search(index=SCIFACT_INDEX, body=body)) == _strip(
        direct.search(index=SCIFACT_INDEX, body=body)
    )
    d = [h["_id"] for h in _body(direct.search(index=SCIFACT_INDEX, body=body))["hits"]["hits"]]
    p = [h["_id"] for h in _body(proxied.search(index=SCIFACT_INDEX, body=body))["hits"]["hits"]]
    assert p == d


@pytest.mark.parametrize(
    ("extra", "params"),
    [
        ({}, {}),
        ({"_source": False}, {}),
        ({"_source": ["title"]}, {}),
        ({"_source": {"excludes": ["text"]}}, {}),
        ({}, {"_source_includes": "title"}),
        ({}, {"filter_path": "hits.hits._id"}),
        ({}, {"filter_path": "hits.total,hits.hits._source.title"}),
        ({"highlight": {"fields": {"text": {}}}}, {}),
        ({"aggs": {"n": {"stats": {"field": "n"}}}}, {"rest_total_hits_as_int": "true"}),
        ({"aggs": {"n": {"terms": {"field": "n", "size": 3}}}}, {"typed_keys": "true"}),
        ({"track_total_hits": False}, {}),
    ],
    ids=[
        "plain",
        "source-false",
        "source-includes",
        "source-excludes",
        "source-param",
        "filter-path-ids",
        "filter-path-title",
        "highlight",
        "total-as-int",
        "typed-keys",
        "no-total",
    ],
)
def test_response_equals_the_engines_except_order_and_scores(
    clients: Any, scifact: SciFact, extra: dict[str, Any], params: dict[str, str]
) -> None:
    direct, proxied = clients
    body = _query(_queries(scifact, 2)[1], size=WINDOW, **extra)
    expected = direct.search(index=SCIFACT_INDEX, body=body, params=dict(params))
    got = proxied.search(index=SCIFACT_INDEX, body=body, params=dict(params))
    assert _strip(got) == _strip(expected)


@pytest.mark.parametrize(
    "body",
    [
        {"size": 0, "aggs": {"n": {"avg": {"field": "n"}}}},
        {"sort": [{"n": "asc"}], "size": 5},
        {"sort": [{"_score": "asc"}], "size": 5},
        {"size": 5, "explain": True},
    ],
    ids=["size-0", "sort-field", "sort-score-asc", "explain"],
)
def test_searches_left_alone_are_exactly_the_engines(
    clients: Any, scifact: SciFact, body: dict[str, Any]
) -> None:
    direct, proxied = clients
    full = {**_query(_queries(scifact, 1)[0]), **body}
    d = _body(direct.search(index=SCIFACT_INDEX, body=full))
    p = _body(proxied.search(index=SCIFACT_INDEX, body=full))
    d.pop("took")
    p.pop("took")
    assert p == d


def test_scroll_is_untouched(clients: Any, scifact: SciFact) -> None:
    direct, proxied = clients
    body = _query(_queries(scifact, 1)[0], size=5)
    d = _body(direct.search(index=SCIFACT_INDEX, body=body, scroll="1m"))
    p = _body(proxied.search(index=SCIFACT_INDEX, body=body, scroll="1m"))
    assert [h["_id"] for h in p["hits"]["hits"]] == [h["_id"] for h in d["hits"]["hits"]]
    nxt = _body(proxied.scroll(body={"scroll_id": p["_scroll_id"], "scroll": "1m"}))
    dnxt = _body(direct.scroll(body={"scroll_id": d["_scroll_id"], "scroll": "1m"}))
    assert [h["_id"] for h in nxt["hits"]["hits"]] == [h["_id"] for h in dnxt["hits"]["hits"]]


def test_msearch_reranks_item_by_item(clients: Any, scifact: SciFact) -> None:
    direct, proxied = clients
    q1, q2 = _queries(scifact, 2)
    items = [
        {"index": SCIFACT_INDEX},
        _query(q1, size=10),
        {"index": SCIFACT_INDEX},
        {**_query(q2, size=5), "sort": [{"n": "desc"}]},
        {},
        _query(q2, size=10),
    ]
    got = _body(proxied.msearch(body=items, index=SCIFACT_INDEX))["responses"]
    expected = _body(direct.msearch(body=items, index=SCIFACT_INDEX))["responses"]
    single = _body(proxied.search(index=SCIFACT_INDEX, body=_query(q1, size=10)))
    assert [h["_id"] for h in got[0]["hits"]["hits"]] == [h["_id"] for h in single["hits"]["hits"]]
    assert [h["_id"] for h in got[0]["hits"]["hits"]] != [
        h["_id"] for h in expected[0]["hits"]["hits"]
    ]
    for g, e in zip(got[1:2], expected[1:2], strict=True):
        g.pop("took")
        e.pop("took")
        assert g == e
    assert "_engine_score" in got[2]["hits"]["hits"][0]["fields"]


def test_search_template_is_reranked_like_the_rendered_search(
    clients: Any, scifact: SciFact
) -> None:
    direct, proxied = clients
    text = _queries(scifact, 3)[2]
    template = {
        "source": {"query": {"match": {"text": "{{q}}"}}, "size": 10},
        "params": {"q": text},
    }
    got = _body(proxied.search_template(index=SCIFACT_INDEX, body=template))
    plain = _body(proxied.search(index=SCIFACT_INDEX, body={"query": {"match": {"text": text}}}))
    engine = _body(direct.search_template(index=SCIFACT_INDEX, body=template))
    assert [h["_id"] for h in got["hits"]["hits"]] == [h["_id"] for h in plain["hits"]["hits"]]
    assert _strip(got) != _strip({}) and got["hits"]["total"] == engine["hits"]["total"]


def test_uri_search_and_alias_are_reranked(clients: Any, scifact: SciFact) -> None:
    _, proxied = clients
    text = _queries(scifact, 1)[0]
    words = " ".join(w for w in text.split() if w.isalnum())
    by_q = _body(proxied.search(index=SCIFACT_INDEX, q=words, size=5))
    by_alias = _body(proxied.search(index=ALIAS, q=words, size=5))
    assert "_engine_score" in by_q["hits"]["hits"][0]["fields"]
    assert [h["_id"] for h in by_q["hits"]["hits"]] == [h["_id"] for h in by_alias["hits"]["hits"]]


def test_headers_say_what_happened(stack: Stack, scifact: SciFact) -> None:
    text = _queries(scifact, 1)[0]

    def post(path: str, body: dict[str, Any], **headers: str) -> tuple[dict[str, str], Any]:
        req = urllib.request.Request(
            stack.proxy_url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **headers},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            return dict(resp.headers), json.loads(resp.read())

    headers, _ = post(f"/{SCIFACT_INDEX}/_search", _query(text))
    assert headers["X-Rerank"] == "applied"
    assert float(headers["X-Rerank-Took-Ms"]) >= 0
    headers, body = post(f"/{SCIFACT_INDEX}/_search?rerank=false", _query(text))
    assert (headers["X-Rerank"], headers["X-Rerank-Reason"]) == ("skipped", "client_off")
    assert "fields" not in body["hits"]["hits"][0]
    headers, _ = post(f"/{SCIFACT_INDEX}/_search", _query(text), **{"X-Rerank": "off"})
    assert headers["X-Rerank-Reason"] == "client_off"
    headers, _ = post(f"/{SCIFACT_INDEX}/_search", {"query": {"match_all": {}}})
    assert (headers["X-Rerank"], headers["X-Rerank-Reason"]) == ("skipped", "no_query_text")


async def test_async_client_gets_the_same_reranked_page(stack: Stack, scifact: SciFact) -> None:
    text = _queries(scifact, 1)[0]
    sync = stack.sync_client(stack.proxy_url)
    expected = [
        h["_id"] for h in _body(sync.search(index=SCIFACT_INDEX, body=_query(text)))["hits"]["hits"]
    ]
    sync.close()
    client = stack.async_client(stack.proxy_url)
    try:
        resp = _body(await client.search(index=SCIFACT_INDEX, body=_query(text)))
    finally:
        await client.close()
    assert [h["_id"] for h in resp["hits"]["hits"]] == expected


def test_compressed_requests_are_reranked_too(stack: Stack, scifact: SciFact) -> None:
    text = _queries(scifact, 1)[0]
    plain = stack.sync_client(stack.proxy_url)
    gzipped = stack.sync_client(stack.proxy_url, http_compress=True)
    try:
        a = _body(plain.search(index=SCIFACT_INDEX, body=_query(text)))
        b = _body(gzipped.search(index=SCIFACT_INDEX, body=_query(text)))
    finally:
        plain.close()
        gzipped.close()
    assert "_engine_score" in b["hits"]["hits"][0]["fields"]
    assert [h["_id"] for h in b["hits"]["hits"]] == [h["_id"] for h in a["hits"]["hits"]]


def test_msearch_template_items_are_reranked(clients: Any, scifact: SciFact) -> None:
    direct, proxied = clients
    q1, q2 = _queries(scifact, 2)
    template = {"source": {"query": {"match": {"text": "{{q}}"}}, "size": 5}}
    items = [
        {"index": SCIFACT_INDEX},
        {**template, "params": {"q": q1}},
        {"index": SCIFACT_INDEX},
        {**template, "params": {"q": q2}},
    ]
    got = _body(proxied.msearch_template(body=items))["responses"]
    engine = _body(direct.msearch_template(body=items))["responses"]
    plain = _body(
        proxied.search(index=SCIFACT_INDEX, body={"query": {"match": {"text": q2}}, "size": 5})
    )
    assert len(got) == 2
    assert all("_engine_score" in r["hits"]["hits"][0]["fields"] for r in got)
    assert [h["_id"] for h in got[1]["hits"]["hits"]] == [h["_id"] for h in plain["hits"]["hits"]]
    assert [r["hits"]["total"] for r in got] == [r["hits"]["total"] for r in engine]
