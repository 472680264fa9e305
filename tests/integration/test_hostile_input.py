"""Hostile and broken input through the real app: the engine's own answer, never a 500.

- A body the engine would reject (`NaN`, `Infinity`, duplicate keys, nesting too deep to
  parse) goes to it unchanged, once, and the client gets the engine's own error.
- A 200 from the engine that is too deep or of the wrong shape fails open: the client's
  own request is re-sent (nothing the proxy holds can be served) and the client gets the
  engine's answer to it. A table of broken shapes, then a seeded generator of many more.
- `Accept-Encoding` q-values decide whether a built response is gzipped.
- `filter_path` and `from`/`size` parameters the engine rejects are passed through.
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Callable
from typing import Any

import pytest

from proxy import jsoncodec

from .fakes import http_response
from .rerank_support import (
    ENGINE_ORDER,
    ES_HEADERS,
    QUERY,
    RERANKED,
    Engine,
    Proxies,
    body_of,
    error_reply,
    ids,
    json_bytes,
    ndjson,
    rerank_headers,
    search_answer,
    send,
)

MATCH = {"match": {"title": QUERY}}
CLIENT = {"size": 3, "query": MATCH}
NDJSON = "application/x-ndjson"
ENGINE_400 = error_reply(400, "x_content_parse_exception")


def own_request_once(engine: Engine, target: str, raw: bytes) -> None:
    """The engine saw one request: the client's own, byte for byte."""
    [seen] = engine.requests
    assert (seen.target, bytes(seen.body)) == (target, raw)


# -- bodies the engine rejects go to it unchanged -----------------------------------------

Q = '"query":{"match":{"title":"red apple"}}'
# (id, body): each is a 400 from Elasticsearch and OpenSearch.
REJECTED_BODIES: list[tuple[str, bytes]] = [
    ("boost-infinity", b'{"query":{"match":{"title":{"query":"red apple","boost":Infinity}}}}'),
    ("boost-nan", b'{"query":{"match":{"title":{"query":"red apple","boost":NaN}}}}'),
    (
        "boost-minus-infinity",
        b'{"query":{"match":{"title":{"query":"red apple","boost":-Infinity}}}}',
    ),
    ("duplicate-size", b'{"size":3,' + Q.encode() + b',"size":4}'),
    ("duplicate-query", b"{" + Q.encode() + b',"query":{"match":{"title":"pear"}}}'),
    ("duplicate-nested", b'{"query":{"match":{"title":"red apple","title":"pear"}}}'),
    ("duplicate-source", b'{"_source":["a"],"_source":false,' + Q.encode() + b"}"),
]


@pytest.mark.parametrize(
    "raw", [c[1] for c in REJECTED_BODIES], ids=[c[0] for c in REJECTED_BODIES]
)
async def test_search_body_the_engine_rejects_goes_to_it_unchanged(
    proxies: Proxies, engine: Engine, raw: bytes
) -> None:
    engine.then("search", ENGINE_400)
    proxy = await proxies.start()
    resp = await send(proxy, "/books/_search?rerank=true", raw)

    assert (resp.status, resp.body) == (400, body_of(ENGINE_400))
    assert rerank_headers(resp) == ("skipped", "unparsable_body")
    own_request_once(engine, "/books/_search", raw)


MSEARCH_REJECTED: list[tuple[str, bytes]] = [
    ("body-duplicate-size", b'{"index":"books"}\n{"size":3,' + Q.encode() + b',"size":4}\n'),
    ("body-infinity", b'{"index":"books"}\n{"query":{"match_all":{"boost":Infinity}}}\n'),
    ("header-duplicate-index", b'{"index":"books","index":"archive"}\n{' + Q.encode() + b"}\n"),
]


@pytest.mark.parametrize(
    "raw", [c[1] for c in MSEARCH_REJECTED], ids=[c[0] for c in MSEARCH_REJECTED]
)
async def test_msearch_body_the_engine_rejects_goes_to_it_unchanged(
    proxies: Proxies, engine: Engine, raw: bytes
) -> None:
    engine.then("msearch", ENGINE_400)
    proxy = await proxies.start()
    resp = await send(proxy, "/_msearch", raw, content_type=NDJSON)

    assert (resp.status, resp.body) == (400, body_of(ENGINE_400))
    assert rerank_headers(resp) == ("skipped", "unparsable_body")
    own_request_once(engine, "/_msearch", raw)


def _spliced(doc: Any, old: str, new: str) -> bytes:
    text = json.dumps(doc, separators=(",", ":"))
    assert old in text
    return text.replace(old, new, 1).encode()


ANSWER = search_answer("books", {"size": 10})
# (id, the engine's 200 body to the widened search): JSON to Python, not to the engines.
UNPARSABLE_RESPONSES: list[tuple[str, bytes]] = [
    ("duplicate-took", _spliced(ANSWER, '"took":3', '"took":3,"took":4')),
    ("duplicate-hits", _spliced(ANSWER, '"hits":{"total"', '"hits":{},"hits":{"total"')),
    ("duplicate-in-source", _spliced(ANSWER, '"title":"red apple"', '"title":"x","title":"y"')),
    ("nan-score", _spliced(ANSWER, '"_score":20.0', '"_score":NaN')),
    ("infinity-max-score", _spliced(ANSWER, '"max_score":20.0', '"max_score":Infinity')),
]


@pytest.mark.parametrize(
    "reply", [c[1] for c in UNPARSABLE_RESPONSES], ids=[c[0] for c in UNPARSABLE_RESPONSES]
)
async def test_response_the_engines_would_not_write_resends_the_clients_own_request(
    proxies: Proxies, engine: Engine, reply: bytes
) -> None:
    engine.then("search", http_response(200, ES_HEADERS, reply))
    proxy = await proxies.start()
    raw = json.dumps(CLIENT).encode()
    resp = await send(proxy, "/books/_search", raw)

    assert (resp.status, rerank_headers(resp)) == (200, ("skipped", "unparsable_response"))
    assert json.loads(resp.body) == search_answer("books", CLIENT)
    assert (engine.requests[1].target, bytes(engine.requests[1].body)) == ("/books/_search", raw)


# -- nesting: bounded, never a RecursionError --------------------------------------------


def nested(depth: int, inner: str = '"leaf"', *, arrays: bool = False) -> str:
    """`depth` containers around `inner`: objects and arrays by turns, or arrays only."""
    opens = "".join("[" if arrays or i % 2 else '{"k":' for i in range(depth))
    closes = "".join("]" if arrays or i % 2 else "}" for i in reversed(range(depth)))
    return opens + inner + closes


# 600 parses with Python's json and is past the proxy's limit; the others blew the stack.
DEEP = [jsoncodec.MAX_DEPTH + 1, 600, 2_000, 100_000]


@pytest.mark.parametrize("depth", DEEP)
async def test_search_body_too_deep_goes_to_the_engine_unchanged(
    proxies: Proxies, engine: Engine, depth: int
) -> None:
    raw = ("{" + Q + ',"ext":' + nested(depth) + "}").encode()
    engine.then("search", ENGINE_400)
    proxy = await proxies.start()
    resp = await send(proxy, "/books/_search", raw)

    assert (resp.status, resp.body) == (400, body_of(ENGINE_400))
    assert rerank_headers(resp) == ("skipped", "unparsable_body")
    own_request_once(engine, "/books/_search", raw)


@pytest.mark.parametrize("depth", DEEP)
async def test_msearch_line_too_deep_goes_to_the_engine_unchanged(
    proxies: Proxies, engine: Engine, depth: int
) -> None:
    raw = b'{"index":"books"}\n' + ("{" + Q + ',"ext":' + nested(depth) + "}\n").encode()
    engine.then("msearch", ENGINE_400)
    proxy = await proxies.start()
    resp = await send(proxy, "/_msearch", raw, content_type=NDJSON)

    assert (resp.status, resp.body) == (400, body_of(ENGINE_400))
    assert rerank_headers(resp) == ("skipped", "unparsable_body")
    own_request_once(engine, "/_msearch", raw)


def with_blob(doc: dict[str, Any], blob_text: str) -> bytes:
    """The engine's answer with a stored value (an `enabled: false` field) in hit 0."""
    text = json.dumps(doc)
    marker = '"title": "green pear tart"}'
    assert marker in text
    return text.replace(marker, marker[:-1] + ', "blob": ' + blob_text + "}", 1).encode()


@pytest.mark.parametrize("depth", DEEP)
async def test_search_response_too_deep_resends_the_clients_own_request(
    proxies: Proxies, engine: Engine, depth: int
) -> None:
    # The stored document comes back in the widened window and in the client's own page.
    deep = with_blob(search_answer("books", {"size": 10}), nested(depth))
    own = with_blob(search_answer("books", CLIENT), nested(depth))
    engine.then("search", http_response(200, ES_HEADERS, deep), http_response(200, ES_HEADERS, own))
    proxy = await proxies.start()
    raw = json.dumps(CLIENT).encode()
    resp = await send(proxy, "/books/_search", raw)

    assert (resp.status, resp.body) == (200, own)  # the engine's answer, byte for byte
    assert rerank_headers(resp) == ("skipped", "unparsable_response")
    widened, again = engine.requests
    assert json.loads(widened.body)["size"] == 10
    assert (again.target, bytes(again.body)) == ("/books/_search", raw)


async def test_msearch_response_too_deep_resends_the_clients_own_request(
    proxies: Proxies, engine: Engine
) -> None:
    item = json.loads(with_blob(search_answer("books", {"size": 10}), "0"))
    text = json.dumps({"took": 5, "responses": [{**item, "status": 200}]})
    deep = text.replace('"blob": 0', '"blob": ' + nested(5000)).encode()
    engine.then("msearch", http_response(200, ES_HEADERS, deep))
    raw = ndjson({"index": "books"}, CLIENT)
    proxy = await proxies.start()
    resp = await send(proxy, "/_msearch", raw, content_type=NDJSON)

    assert (resp.status, rerank_headers(resp)) == (200, ("skipped", "unparsable_response"))
    assert [ids(r) for r in json.loads(resp.body)["responses"]] == [ENGINE_ORDER[:3]]
    assert (engine.requests[1].target, bytes(engine.requests[1].body)) == ("/_msearch", raw)


# Hit 0 sits at depth 4 (root, hits, hits, hit); `_source` is 5, the blob's own containers
# come below it. At the limit the response parses, and every step after it must cope.
AT_LIMIT = jsoncodec.MAX_DEPTH - 5

# (id, query string, rule overrides): each walks the deep blob by another recursive path.
AT_LIMIT_CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("plain", "", {}),
    ("blob-is-a-text-field", "", {"fields": ["title", "blob"]}),
    ("every-field-is-text", "", {"fields": []}),
    ("source-includes", "?_source_includes=title,blob.k", {}),
    ("source-excludes", "?_source_excludes=blob.k.zz", {}),
    ("filter-path-include", "?filter_path=hits.hits._id,hits.hits._source.blob.**", {}),
    ("filter-path-exclude", "?filter_path=-**.zz", {}),
]


@pytest.mark.parametrize("arrays", [False, True], ids=["mixed", "arrays"])
@pytest.mark.parametrize(
    ("query", "books"), [c[1:] for c in AT_LIMIT_CASES], ids=[c[0] for c in AT_LIMIT_CASES]
)
async def test_search_response_at_the_depth_limit_is_reranked(
    proxies: Proxies, engine: Engine, query: str, books: dict[str, Any], arrays: bool
) -> None:
    deep = with_blob(search_answer("books", {"size": 10}), nested(AT_LIMIT, arrays=arrays))
    jsoncodec.loads(deep)  # at the limit, not past it
    engine.then("search", http_response(200, ES_HEADERS, deep))
    proxy = await proxies.start(books=books)
    resp = await send(proxy, "/books/_search" + query, {"size": 10, "query": MATCH})

    assert (resp.status, rerank_headers(resp)) == (200, ("applied", None))
    doc = json.loads(resp.body)
    assert sorted(ids(doc)) == sorted(ENGINE_ORDER[:10])
    assert len(engine.requests) == 1


# -- garbage 200s: fail open, never a 500 -------------------------------------------------

Change = Callable[[Any], Any]


def hits_are(value: Any) -> Change:
    return lambda doc: {**doc, "hits": {**doc["hits"], "hits": value}}


def hit_0(**fields: Any) -> Change:
    def change(doc: Any) -> Any:
        hits = [dict(h) for h in doc["hits"]["hits"]]
        hits[0].update(fields)
        return {**doc, "hits": {**doc["hits"], "hits": hits}}

    return change


def keep_3_then(value: Any) -> Change:
    return lambda doc: hits_are([*doc["hits"]["hits"][:3], value])(doc)


# (id, change to the engine's answer to the widened search, rule overrides)
GARBAGE: list[tuple[str, Change, dict[str, Any]]] = [
    ("hits-of-scalars", hits_are([1, "x", None]), {}),
    ("one-scalar-hit", keep_3_then(7), {}),
    ("one-list-hit", keep_3_then([{"_id": "x"}]), {}),
    ("one-null-hit", keep_3_then(None), {}),
    ("source-string", hit_0(_source="red apple"), {}),
    ("source-list", hit_0(_source=["red apple"]), {}),
    ("source-number", hit_0(_source=5), {}),
    ("source-null", hit_0(_source=None), {}),
    ("score-string", hit_0(_score="high"), {}),
    ("score-bool", hit_0(_score=True), {}),
    ("score-object", hit_0(_score={"value": 1}), {}),
    ("score-string-blend", hit_0(_score="high"), {"score_mode": "blend"}),
    ("fields-not-object", hit_0(fields=[1]), {}),
    ("highlight-not-object", hit_0(highlight="red"), {"use_highlight": True}),
    ("highlight-fragments-not-list", hit_0(highlight={"title": 5}), {"use_highlight": True}),
    ("hits-a-list", lambda doc: {**doc, "hits": []}, {}),
    ("hits-a-string", lambda doc: {**doc, "hits": "x"}, {}),
    ("response-a-list", lambda doc: [doc], {}),
    ("response-a-string", lambda doc: "x", {}),
    ("response-null", lambda doc: None, {}),
    ("response-a-number", lambda doc: 1, {}),
]


@pytest.mark.parametrize(("change", "books"), [c[1:] for c in GARBAGE], ids=[c[0] for c in GARBAGE])
async def test_search_garbage_200_fails_open(
    proxies: Proxies, engine: Engine, change: Change, books: dict[str, Any]
) -> None:
    engine.then("search", engine.tweaked(change))
    proxy = await proxies.start(books=books)
    raw = json.dumps(CLIENT).encode()
    resp = await send(proxy, "/books/_search", raw)

    assert resp.status == 200
    assert rerank_headers(resp) == ("skipped", "unexpected_response")
    assert json.loads(resp.body) == search_answer("books", CLIENT)  # its own request's answer
    widened, again = engine.requests
    assert json.loads(widened.body)["size"] == 10
    assert (again.target, bytes(again.body)) == ("/books/_search", raw)


def item_is(value: Any) -> Change:
    return lambda doc: {**doc, "responses": [doc["responses"][0], value]}


def item_1(change: Change) -> Change:
    return lambda doc: {**doc, "responses": [doc["responses"][0], change(doc["responses"][1])]}


MSEARCH_GARBAGE: list[tuple[str, Change]] = [
    ("responses-of-scalars", lambda doc: {**doc, "responses": [1, "x"]}),
    ("item-a-number", item_is(1)),
    ("item-a-string", item_is("x")),
    ("item-null", item_is(None)),
    ("item-a-list", item_is([])),
    ("item-hits-of-scalars", item_1(hits_are([1, "x", None]))),
    ("item-source-string", item_1(hit_0(_source="x"))),
    ("item-score-string", item_1(hit_0(_score="x"))),
    ("item-hits-a-string", item_1(lambda d: {**d, "hits": "x"})),
    ("responses-an-object", lambda doc: {**doc, "responses": {"a": 1}}),
    ("responses-missing", lambda doc: {"took": 1}),
    ("response-a-list", lambda doc: [doc]),
]


@pytest.mark.parametrize(
    "change", [c[1] for c in MSEARCH_GARBAGE], ids=[c[0] for c in MSEARCH_GARBAGE]
)
async def test_msearch_garbage_200_fails_open(
    proxies: Proxies, engine: Engine, change: Change
) -> None:
    engine.then("msearch", engine.tweaked(change))
    proxy = await proxies.start()
    raw = ndjson({"index": "books"}, CLIENT, {"index": "books"}, CLIENT)
    resp = await send(proxy, "/_msearch", raw, content_type=NDJSON)

    assert resp.status == 200
    assert rerank_headers(resp) == ("skipped", "unexpected_response")
    assert (
        resp.header("X-Rerank-Items") == "skipped:unexpected_response,skipped:unexpected_response"
    )
    assert [ids(r) for r in json.loads(resp.body)["responses"]] == [ENGINE_ORDER[:3]] * 2
    assert (engine.requests[1].target, bytes(engine.requests[1].body)) == ("/_msearch", raw)


async def test_msearch_item_without_hits_is_skipped_alone(proxies: Proxies, engine: Engine) -> None:
    engine.then("msearch", engine.tweaked(item_1(lambda d: {"took": 1, "status": 200})))
    proxy = await proxies.start()
    raw = ndjson({"index": "books"}, CLIENT, {"index": "books"}, CLIENT)
    resp = await send(proxy, "/_msearch", raw, content_type=NDJSON)

    assert (resp.status, resp.header("X-Rerank-Items")) == (200, "applied,skipped:no_hits")
    first, second = json.loads(resp.body)["responses"]
    assert ids(first) == RERANKED[:3]
    assert second == {"took": 1, "status": 200}


# A seeded generator: any node of the engine's answer replaced by any value. Whatever comes
# back, the client gets a JSON 200 and an outcome, never a 500.
VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    2**70,
    1.5,
    "",
    "x",
    [],
    {},
    [1, "x", None],
    {"a": [{}]},
    {"hits": "x"},
    {"_source": 1, "_score": "s"},
    json.loads(nested(40)),
]


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _paths(item, (*path, i))
    return out


def _replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replaced(value[head], rest, new)}
    return [_replaced(v, rest, new) if i == head else v for i, v in enumerate(value)]


def mutations(doc: Any, seed: int, count: int) -> list[tuple[tuple[Any, ...], Any]]:
    rng = random.Random(seed)
    paths = _paths(doc)
    return [(rng.choice(paths), rng.choice(VALUES)) for _ in range(count)]


def _widened_search(size: int) -> Any:
    return search_answer("books", {"size": size})


def _widened_msearch(size: int) -> Any:
    item = {**search_answer("books", {"size": size}), "status": 200}
    return {"took": 5, "responses": [item, item]}


@pytest.mark.parametrize(
    ("target", "raw", "widened"),
    [
        ("/books/_search", json.dumps(CLIENT).encode(), _widened_search(10)),
        (
            "/_msearch",
            ndjson({"index": "books"}, CLIENT, {"index": "books"}, CLIENT),
            _widened_msearch(10),
        ),
    ],
    ids=["search", "msearch"],
)
async def test_any_mutation_of_a_200_is_never_a_500(
    proxies: Proxies, engine: Engine, target: str, raw: bytes, widened: Any
) -> None:
    proxy = await proxies.start(books={"fields": ["title", "body"], "use_highlight": True})
    kind = target.rsplit("_", 1)[1]
    content_type = NDJSON if kind == "msearch" else "application/json"
    problems = []
    for path, value in mutations(widened, seed=20240601, count=150):
        engine.then(kind, json_bytes(200, _replaced(widened, path, value)))
        resp = await send(proxy, target, raw, content_type=content_type)
        assert kind not in engine.queued or not engine.queued[kind]  # the mutation was served
        state = resp.header("X-Rerank")
        try:
            json.loads(resp.body)
            ok = resp.status == 200 and state in ("applied", "skipped", "failed")
        except ValueError:
            ok = False
        if not ok:
            problems.append((path, value, resp.status, state, resp.body[:200]))
    assert problems == []


# -- Accept-Encoding: q-values decide ----------------------------------------------------

# (Accept-Encoding, gzip expected) for a response the proxy builds.
ENCODINGS: list[tuple[str | None, bool]] = [
    (None, False),
    ("", False),
    ("gzip", True),
    ("GZIP", True),
    ("x-gzip", True),
    ("gzip;q=1.0", True),
    ("gzip;q=0.001", True),
    ("deflate, gzip;q=0.5", True),
    ("*", True),
    ("*;q=0.5", True),
    ("identity", False),
    ("deflate, br", False),
    ("gzip;q=0", False),
    ("gzip; q=0", False),
    ("gzip;Q=0.000", False),
    ("gzip ;q=0.0", False),
    ("gzip;q=0, *", False),
    ("*, gzip;q=0", False),
    ("*;q=0", False),
    ("br, *;q=0", False),
    ("identity, *;q=0", False),
    ("gzip;q=bogus", False),
    ("gzip;q=1.5", False),
    ("gzipped", False),
]


@pytest.mark.parametrize(("accept", "gzipped"), ENCODINGS, ids=[repr(a) for a, _ in ENCODINGS])
async def test_accept_encoding_q_values(
    proxies: Proxies, engine: Engine, accept: str | None, gzipped: bool
) -> None:
    proxy = await proxies.start()
    headers = {} if accept is None else {"Accept-Encoding": accept}
    resp = await send(proxy, "/books/_search", CLIENT, headers=headers)

    assert (resp.status, rerank_headers(resp)) == (200, ("applied", None))
    assert resp.header("Content-Encoding") == ("gzip" if gzipped else None)
    body = gzip.decompress(resp.body) if gzipped else resp.body
    assert ids(json.loads(body)) == RERANKED[:3]


# -- parameters the engine rejects: passed through ----------------------------------------


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("filter_path=-", "bad_filter_path"),
        ("filter_path=%20-%20", "bad_filter_path"),
        ("filter_path=took,-", "bad_filter_path"),
        ("filter_path=-,took", "bad_filter_path"),
        ("from=%2010", "bad_from_size"),
        ("from=0%20", "bad_from_size"),
        ("size=+3", "bad_from_size"),
        ("size=3%0A", "bad_from_size"),
        ("size=99999999999", "bad_from_size"),
        ("from=99999999999", "bad_from_size"),
    ],
)
async def test_parameter_the_engine_rejects_goes_to_it_unchanged(
    proxies: Proxies, engine: Engine, query: str, reason: str
) -> None:
    engine.then("search", ENGINE_400)
    proxy = await proxies.start()
    raw = json.dumps(CLIENT).encode()
    resp = await send(proxy, "/books/_search?" + query, raw)

    assert (resp.status, resp.body) == (400, body_of(ENGINE_400))
    assert rerank_headers(resp) == ("skipped", reason)
    own_request_once(engine, "/books/_search?" + query, raw)


async def test_msearch_filter_path_the_engine_rejects_goes_to_it_unchanged(
    proxies: Proxies, engine: Engine
) -> None:
    engine.then("msearch", ENGINE_400)
    proxy = await proxies.start()
    raw = ndjson({"index": "books"}, CLIENT)
    resp = await send(proxy, "/_msearch?filter_path=responses,-", raw, content_type=NDJSON)

    assert (resp.status, resp.body) == (400, body_of(ENGINE_400))
    assert rerank_headers(resp) == ("skipped", "bad_filter_path")
    own_request_once(engine, "/_msearch?filter_path=responses,-", raw)


async def test_filter_path_exclusion_is_trimmed_as_the_engines_do(
    proxies: Proxies, engine: Engine
) -> None:
    proxy = await proxies.start()
    resp = await send(proxy, "/books/_search?filter_path=-%20took,-%20_shards", CLIENT)

    assert (resp.status, rerank_headers(resp)) == (200, ("applied", None))
    doc = json.loads(resp.body)
    assert sorted(doc) == ["hits", "timed_out"]
    assert ids(doc) == RERANKED[:3]
