"""Differential fuzzing: every generated search, sent to the engine and through the proxy,
gets the same answer except hit order and scores.

Hypothesis builds `_search` requests from the parts a client can vary: `_source` (body, and
the `_source`/`_source_includes`/`_source_excludes` parameters), `filter_path` (odd ones
included), `from`/`size` (negative, zero, past the window, strings, in the body or the URL),
the query (match, multi_match, bool, match_all, query_string, term, none, invalid ones),
`sort`, the method and the target. Each request goes once to the engine and once through the
proxy, on the reranked SciFact index, a reranked index of richer documents (objects, arrays,
dotted keys, big integers, float spellings, non-ASCII text) and the same documents in an
index the proxy leaves alone.

What must hold (the proxy checklist's golden rule):

- the same status, `Content-Type` and `Warning` headers;
- an error body byte-for-byte the engine's (the proxy re-sends the client's own request);
- a 2xx body equal to the engine's except `took`, `max_score`, each hit's `_score`, the
  `fields._engine_score` the proxy adds to reranked hits (`expose_engine_score`, on by
  default) and the `sort` value of an explicit `_score` sort (it reports the new score);
- hits in the engine's order when the proxy says it left the search alone (`X-Rerank`);
- reranked hits: the same multiset as the engine's when the page covers the whole window;
  otherwise every hit is one of the engine's top `max(window, from+size)` for the same
  parameters, and when `_id`s are visible the page is a slice of a permutation of the
  window followed by the engine's own order past it.

Each proxy bug this found has an explicit test below and is fixed: a lost deprecation
`Warning` for `_source` `include`/`exclude`; a body `from`/`size`/`_source` the engine
rejects that the widened search replaced (engine error, proxy 200); a `_source` entry both
included and excluded (OpenSearch 3's 400, proxy 200); an empty array or object that a
`filter_path` exclusion walks into (the engines drop it, the proxy kept it); an integer `-0`
written back as `0`. One difference is kept, counted (printed as "known findings") and
pinned by a strict xfail: the float spelling of a `_source` the engine would have filtered
itself (values equal). Anything else fails.

Floats are compared by their spelling, not their value. The examples run per engine are
printed (`-s`) and recorded as the `differential_examples` property. Reranking on a CPU
costs most of the time, so the run is bounded by `DIFFERENTIAL_EXAMPLES` (1000) and by
`DIFFERENTIAL_SECONDS` (120 per engine) whichever comes first; not `RERANK_PROXY_*`, which
the proxy reads as its configuration.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from tests.conftest import SciFact

from .conftest import ALIAS, SCIFACT_INDEX, WINDOW, Stack

pytestmark = pytest.mark.e2e

RICH_RERANKED = "scifact-difftest"  # `scifact-*`: the stack's proxy reranks it
RICH_PLAIN = "difftest-plain"  # no rule matches: the proxy leaves it alone
RICH_DOCS = 240
# At most this many examples per engine, and no new one started after the time budget
# (the explicit examples, and the shrinking of a failure, always run to the end).
EXAMPLES = int(os.environ.get("DIFFERENTIAL_EXAMPLES", "1000"))
BUDGET_S = float(os.environ.get("DIFFERENTIAL_SECONDS", "120"))

# -- the documents of the two rich indices ------------------------------------------------

RICH_MAPPING = {
    "settings": {"number_of_shards": 1, "number_of_replicas": 0},
    "mappings": {
        "properties": {
            "title": {"type": "text"},
            "text": {"type": "text"},
            "n": {"type": "integer"},
            "tag": {"type": "keyword"},
            "f": {"type": "double"},
            "meta": {
                "properties": {
                    "author": {"properties": {"name": {"type": "text"}}},
                    "year": {"type": "integer"},
                    "flat": {"type": "keyword"},
                }
            },
            "authors": {"properties": {"name": {"type": "keyword"}, "affil": {"type": "text"}}},
            "raw": {"type": "object", "enabled": False},
            "uni": {"type": "text"},
        }
    },
}
# Spellings an engine stores and returns verbatim in `_source`.
FLOAT_SPELLINGS = ("1.0E10", "0.10", "-0.0", "1e-7", "1.5e+300", "100.0", "0.30000000000000004")
TAGS = ("alpha", "beta", "gamma", "Δelta")


def _rich_line(i: int, doc_id: str, title: str, text: str) -> str:
    """One `_source`, written by hand so odd float spellings and big integers stay as typed."""
    doc: dict[str, Any] = {"n": i, "tag": TAGS[i % len(TAGS)]}
    if i % 7:
        doc["title"] = title
    doc["text"] = [text[:200], text[200:]] if i % 11 == 0 else text
    if i % 3 == 0:
        doc["meta"] = {"author": {"name": f"Ann {i}"}, "year": 1990 + i % 30}
    if i % 5 == 0:
        doc["meta.flat"] = f"dotted-{i}"
    if i % 4 == 0:
        doc["authors"] = [{"name": "Bo", "affil": "Zürich lab"}, {"name": f"Cy{i}"}]
    if i % 9 == 0:
        doc["uni"] = "日本語 🎉 Ω café"
    head = json.dumps(doc, ensure_ascii=i % 2 == 0)[:-1]
    spelling = FLOAT_SPELLINGS[i % len(FLOAT_SPELLINGS)]
    raw = f'{{"big":{10**22 + i},"f":{spelling},"s":"\\ud83c\\udf89 \\u00e9 {doc_id}"}}'
    return f'{head}, "f": {spelling}, "raw": {raw}}}'


def _index_rich(base: str, index: str, data: SciFact) -> None:
    call(base, "DELETE", f"/{index}")
    status, _, body = call(base, "PUT", f"/{index}", json.dumps(RICH_MAPPING).encode())
    assert status == 200, body
    lines = []
    for i, (doc_id, doc) in enumerate(sorted(data.corpus.items())[:RICH_DOCS]):
        lines.append(json.dumps({"index": {"_index": index, "_id": doc_id}}))
        lines.append(_rich_line(i, doc_id, doc["title"], doc["text"]))
    status, _, body = call(
        base, "POST", "/_bulk?refresh=true", ("\n".join(lines) + "\n").encode(), ndjson=True
    )
    assert status == 200 and b'"errors":false' in body, body[:2000]


# -- plain HTTP: the requests go out exactly as generated ---------------------------------

_CONNECTIONS: dict[str, http.client.HTTPConnection] = {}


def call(
    base: str, method: str, target: str, body: bytes | None = None, *, ndjson: bool = False
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request on a kept-alive connection (one retry on a fresh one if it was closed)."""
    # OpenSearch sends a deprecation `Warning` once per (message, X-Opaque-Id) only: a fresh
    # id makes every request get the warnings it earns, so the two answers can be compared.
    headers = {"X-Opaque-Id": uuid.uuid4().hex}
    if body is not None:
        headers["Content-Type"] = "application/x-ndjson" if ndjson else "application/json"
    for attempt in (0, 1):
        conn = _CONNECTIONS.get(base)
        if conn is None:
            url = urllib.parse.urlsplit(base)
            conn = _CONNECTIONS[base] = http.client.HTTPConnection(
                url.hostname, url.port, timeout=120
            )
        try:
            conn.request(method, target, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            if resp.getheader("X-Opaque-Id") not in (None, headers["X-Opaque-Id"]):
                raise AssertionError(f"X-Opaque-Id came back as {resp.getheader('X-Opaque-Id')}")
            return resp.status, resp.headers, data
        except (http.client.HTTPException, ConnectionError):
            conn.close()
            del _CONNECTIONS[base]
            if attempt:
                raise
    raise AssertionError("unreachable")


# -- the generated request ----------------------------------------------------------------


@dataclass(frozen=True)
class Search:
    method: str
    index: str
    params: tuple[tuple[str, str], ...]
    body: dict[str, Any] | None
    raw_body: bytes | None = None  # sent instead of `body` when set (invalid JSON)

    def target(self, params: tuple[tuple[str, str], ...] | None = None) -> str:
        ps = self.params if params is None else params
        query = "&".join(
            f"{urllib.parse.quote(k, safe='_')}={urllib.parse.quote(v, safe=',*')}" for k, v in ps
        )
        return f"/{self.index}/_search" + ("?" + query if query else "")

    def payload(self) -> bytes | None:
        if self.raw_body is not None:
            return self.raw_body
        return None if self.body is None else json.dumps(self.body).encode()


WORDS = (
    "vitamin",
    "cancer",
    "cells",
    "protein",
    "risk",
    "mutations",
    "infection",
    "blood",
    "pregnancy",
    "bone",
    "gene",
    "expression",
    "mice",
    "tumor",
    "dna",
    "Zürich",
    "日本",
)
texts = st.lists(st.sampled_from(WORDS), min_size=1, max_size=4).map(" ".join)
FIELDS = st.sampled_from(["title", "text", "uni", "meta.author.name"])

text_queries = st.one_of(
    st.builds(lambda f, t: {"match": {f: t}}, FIELDS, texts),
    st.builds(
        lambda f, t, op: {"match": {f: {"query": t, "operator": op}}},
        FIELDS,
        texts,
        st.sampled_from(["and", "or"]),
    ),
    st.builds(
        lambda t, fs: {"multi_match": {"query": t, "fields": fs}},
        texts,
        st.sampled_from([["title", "text"], ["title^2", "text"], ["t*"]]),
    ),
    st.builds(
        lambda t, fmt: {"query_string": {"query": fmt.format(t)}},
        texts,
        st.sampled_from(["{}", "title:({})", "{} AND cells", '"{}"~2', "text:{}*"]),
    ),
)
quiet_queries = st.one_of(  # no text to rerank on
    st.just({"match_all": {}}),
    st.builds(lambda t: {"term": {"tag": t}}, st.sampled_from(TAGS)),
    st.builds(lambda i: {"term": {"_id": i}}, st.sampled_from(["4983", "5836", "nope"])),
    st.builds(lambda lo: {"range": {"n": {"gte": lo}}}, st.integers(0, 300)),
)
leaf_queries = text_queries | quiet_queries
INVALID_QUERIES = st.sampled_from(
    [
        {"match": {}},
        {"nope": {}},
        {"bool": {"must": "x"}},
        {"match": {"title": {"query": "x", "bogus": 1}}},
        {"query_string": {"query": "title:(unclosed"}},
        {"match": {"title": "a", "text": "b"}},
        {"term": {"n": "not a number"}},
        {},
    ]
)
queries = st.one_of(
    text_queries,
    text_queries,
    quiet_queries,
    st.builds(
        lambda must, should, filt: {
            "bool": {k: v for k, v in (("must", must), ("should", should), ("filter", filt)) if v}
        },
        st.lists(leaf_queries, max_size=2),
        st.lists(leaf_queries, max_size=2),
        st.lists(leaf_queries, max_size=2),
    ),
    INVALID_QUERIES,
)

PATHS = (
    "title",
    "text",
    "n",
    "tag",
    "meta",
    "meta.author",
    "meta.author.name",
    "meta.year",
    "meta.flat",
    "authors",
    "authors.name",
    "raw",
    "raw.big",
    "*",
    "t*",
    "*.name",
    "meta.*",
    "*itle",
    "m*.a*",
    "nope",
    "",
)
patterns = st.lists(st.sampled_from(PATHS), min_size=1, max_size=3)
source_bodies = st.one_of(
    st.booleans(),
    st.sampled_from(PATHS),
    patterns,
    st.builds(
        lambda key_i, inc, key_e, exc: {
            k: v for k, v in ((key_i, inc), (key_e, exc)) if v is not None
        },
        st.sampled_from(["includes", "include"]),
        st.none() | patterns,
        st.sampled_from(["excludes", "exclude"]),
        st.none() | patterns,
    ),
    st.sampled_from([{"foo": ["title"]}, 5, None, [1], {"includes": "title"}]),
)
FILTER_PATHS = (
    "",
    "-",
    "took",
    "- took",
    "hits.hits._id",
    "-hits.hits._source",
    "**.title",
    "hits.total",
    "hits.hits._source.title",
    "hits.hits._source.meta.*",
    "hits.**",
    "**",
    "*",
    "-**.name",
    "hits.hits._score",
    "hits.max_score",
    "hits.hits._source.authors.name",
    "-hits.hits._source.text",
    "hits.hits._source.raw",
    "-hits.hits._source.**.big",
    "_shards,hits.total.value",
    "hits.hits._i*",
)
filter_paths = st.lists(st.sampled_from(FILTER_PATHS), min_size=1, max_size=3).map(",".join)
INT_TEXT = ("10", " 10", "10 ", "+5", "-1", "0", "1", "3", "29", "31", "1000", "10x", "")
BIG = (WINDOW - 1, WINDOW, WINDOW + 1, 100, 5000, 9990, 10_000, 2**31, -(2**31) - 1)
body_ints = st.one_of(
    st.integers(-2, 45),
    st.sampled_from(BIG),
    st.sampled_from(INT_TEXT),
    st.sampled_from([10.0, 2.5, True, None, [10]]),
)
param_ints = st.one_of(st.integers(-2, 45).map(str), st.sampled_from((*INT_TEXT, "31", "9990")))
SORTS = st.sampled_from(
    [["_score"], [{"_score": "desc"}], [{"_score": {"order": "asc"}}], [{"n": "asc"}], "_score"]
)
# Reranked targets twice as often as the others.
INDICES = st.sampled_from(
    [
        SCIFACT_INDEX,
        RICH_RERANKED,
        ALIAS,
        RICH_RERANKED,
        RICH_PLAIN,
        f"{RICH_RERANKED},{RICH_PLAIN}",
    ]
)
PARAMS = st.lists(
    st.one_of(
        st.tuples(st.just("_source"), st.sampled_from(["true", "false", "title", "meta.*,n"])),
        st.tuples(st.just("_source"), patterns.map(",".join)),
        st.tuples(st.just("_source_includes"), patterns.map(",".join)),
        st.tuples(st.just("_source_excludes"), patterns.map(",".join)),
        st.tuples(st.just("filter_path"), filter_paths),
        st.tuples(st.sampled_from(["from", "size"]), param_ints),
        st.tuples(st.just("q"), texts),
        st.tuples(st.just("rest_total_hits_as_int"), st.just("true")),
        st.tuples(st.just("track_total_hits"), st.sampled_from(["false", "5", "true"])),
    ),
    max_size=4,
).map(tuple)


@st.composite
def searches(draw: st.DrawFn) -> Search:
    body: dict[str, Any] = {}
    if draw(st.integers(0, 6)):
        body["query"] = draw(queries)
    for key, values in (("_source", source_bodies), ("from", body_ints), ("size", body_ints)):
        if draw(st.integers(0, 2)) == 0:
            body[key] = draw(values)
    if draw(st.integers(0, 5)) == 0:
        body["sort"] = draw(SORTS)
    if draw(st.integers(0, 7)) == 0:
        body["track_total_hits"] = draw(st.sampled_from([False, True, 7]))
    if draw(st.integers(0, 9)) == 0:
        body["highlight"] = {"fields": {"text": {}}}
    if draw(st.integers(0, 9)) == 0:
        body["aggs"] = {"n": {"stats": {"field": "n"}}}
    kind = draw(st.sampled_from(["post", "post", "post", "get-body", "get", "post-empty"]))
    method = "GET" if kind.startswith("get") else "POST"
    payload: dict[str, Any] | None = body if kind in ("post", "get-body") else None
    raw = b"" if kind == "post-empty" else None
    if kind == "post" and draw(st.integers(0, 14)) == 0:
        raw = draw(st.sampled_from([b'{"query":', b'{"size":1,"size":2}', b"[1]", b'{"a":NaN}']))
    return Search(method, draw(INDICES), draw(PARAMS), payload, raw)


# -- comparing the answers ----------------------------------------------------------------


class FloatText(str):
    """A JSON number with a fraction or exponent, kept as the characters it was written in."""


def _parse(body: bytes) -> Any:
    return json.loads(body, parse_float=lambda s: FloatText("<float " + s + ">"))


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _strip_hit(hit: Any, *, proxied: bool, score_sort: bool) -> Any:
    if not isinstance(hit, dict):
        return hit
    hit = dict(hit)
    hit.pop("_score", None)
    if score_sort:
        hit.pop("sort", None)
    fields = hit.get("fields")
    if proxied and isinstance(fields, dict) and "_engine_score" in fields:
        fields = {k: v for k, v in fields.items() if k != "_engine_score"}
        if fields:
            hit["fields"] = fields
        else:
            del hit["fields"]
    return hit


def _split(doc: Any, *, proxied: bool, score_sort: bool) -> tuple[Any, list[Any] | None]:
    """(the response minus `took`, `max_score` and hits; the hits, scores removed)."""
    if not isinstance(doc, dict):
        return doc, None
    doc = dict(doc)
    doc.pop("took", None)
    hits = doc.get("hits")
    if not isinstance(hits, dict):
        return doc, None
    hits = dict(hits)
    hits.pop("max_score", None)
    found = hits.pop("hits", None)
    doc["hits"] = hits
    if not isinstance(found, list):
        return doc, None
    return doc, [_strip_hit(h, proxied=proxied, score_sort=score_sort) for h in found]


def _score_sort(search: Search) -> bool:
    sort = (search.body or {}).get("sort")
    return sort is not None and "_score" in json.dumps(sort) and "n" not in json.dumps(sort)


def _page(search: Search) -> tuple[int, int]:
    """`from` and `size` as the engine read them (the search was answered, so they parsed)."""

    def value(key: str, default: int) -> int:
        ps = [v for k, v in search.params if k == key]
        if ps:
            return int(ps[-1].strip())
        v = (search.body or {}).get(key)
        return default if v is None else int(str(v).strip())

    return value("from", 0), value("size", 10)


@dataclass
class Tally:
    examples: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    findings: Counter[str] = field(default_factory=Counter)
    over_budget: int = 0
    failures: int = 0
    started: float = field(default_factory=time.monotonic)


def check(stack: Stack, search: Search, tally: Tally) -> None:
    target, payload = search.target(), search.payload()
    d_status, d_headers, d_body = call(stack.engine_url, search.method, target, payload)
    p_status, p_headers, p_body = call(stack.proxy_url, search.method, target, payload)
    outcome = p_headers.get("X-Rerank", "none")
    tally.examples += 1
    tally.statuses[str(d_status)] += 1
    tally.outcomes[f"{outcome}:{p_headers.get('X-Rerank-Reason', '-')}"] += 1
    where = f"{search.method} {target} {payload!r}\nproxy said {outcome}"
    assert p_status == d_status, f"{where}\nengine {d_body[:800]!r}\nproxy {p_body[:800]!r}"
    assert p_headers.get("Content-Type") == d_headers.get("Content-Type"), where
    d_warnings, p_warnings = d_headers.get_all("Warning") or [], p_headers.get_all("Warning") or []
    assert p_warnings == d_warnings, where
    if not 200 <= d_status < 300:
        # The client's own request was sent: the engine's error, byte for byte.
        assert p_body == d_body, f"{where}\nengine {d_body!r}\nproxy {p_body!r}"
        return
    d_doc, p_doc = _parse(d_body), _parse(p_body)
    # The one known difference, tolerated only where it can apply (see its explicit test).
    tolerated: list[tuple[str, Callable[[Any], Any]]] = [("", lambda doc: doc)]
    if _filters_source(search):
        # See `test_an_engine_filtered_source_has_the_engines_float_spelling`.
        tolerated.append(("float spelling of a _source the engine would filter", _float_values))
    first: AssertionError | None = None
    for label, norm in tolerated:
        try:
            _compare_2xx(stack, search, outcome, d_doc, p_doc, where, norm=norm)
        except AssertionError as exc:
            first = first or exc
            continue
        if label:
            tally.findings[label] += 1
        return
    assert first is not None
    raise first


def _filters_source(search: Search) -> bool:
    """Does the engine filter `_source` for this search (so re-encode it)?"""
    names = {k for k, _ in search.params}
    return bool(names & {"filter_path", "_source", "_source_includes", "_source_excludes"}) or (
        "_source" in (search.body or {})
    )


def _float_values(value: Any) -> Any:
    if isinstance(value, FloatText):
        return float(value[len("<float ") : -1])
    if isinstance(value, dict):
        return {k: _float_values(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_float_values(v) for v in value]
    return value


def _compare_2xx(
    stack: Stack,
    search: Search,
    outcome: str,
    d_doc: Any,
    p_doc: Any,
    where: str,
    norm: Callable[[Any], Any],
) -> None:
    score_sort = _score_sort(search)
    d_rest, d_hits = _split(norm(d_doc), proxied=False, score_sort=score_sort)
    p_rest, p_hits = _split(norm(p_doc), proxied=True, score_sort=score_sort)
    assert p_rest == d_rest, f"{where}\nengine {d_rest}\nproxy {p_rest}"
    assert (p_hits is None) == (d_hits is None), where
    if p_hits is None or d_hits is None:
        return
    if outcome != "applied":
        # Left alone (or failed open): the engine's own order.
        assert p_hits == d_hits, f"{where}\nengine {d_hits}\nproxy {p_hits}"
        return
    from_, size = _page(search)
    if from_ == 0 and size >= WINDOW:
        # The page holds the whole reranked window: the same hits, in another order.
        assert Counter(map(_key, p_hits)) == Counter(map(_key, d_hits)), where
        return
    # A page inside the window: compare with the engine's top max(window, from+size).
    kept = [(k, v) for k, v in search.params if k not in ("from", "size")]
    wide = (*kept, ("from", "0"), ("size", str(max(WINDOW, from_ + size))))
    payload = search.payload()
    w_status, _, w_body = call(stack.engine_url, search.method, search.target(wide), payload)
    assert w_status == 200, (where, w_body[:500])
    _, w_hits = _split(norm(_parse(w_body)), proxied=False, score_sort=score_sort)
    assert w_hits is not None, where
    assert not Counter(map(_key, p_hits)) - Counter(map(_key, w_hits)), (
        f"{where}\nnot among the engine's top {max(WINDOW, from_ + size)}"
    )
    ids = [h.get("_id") if isinstance(h, dict) else None for h in p_hits]
    wide_ids = [h.get("_id") if isinstance(h, dict) else None for h in w_hits]
    if None in ids or None in wide_ids or len(wide_ids) != len(set(wide_ids)):
        return  # `_id` filtered out: the multiset check above is what can be said
    assert len(ids) == len(set(ids)), where
    in_window = max(0, min(from_ + size, WINDOW) - from_)
    assert set(ids[:in_window]) <= set(wide_ids[:WINDOW]), where
    assert ids[in_window:] == wide_ids[max(from_, WINDOW) : from_ + size], where
    # Whatever `_id` a hit has, the rest of it is the engine's rendering of that hit.
    by_id = {h["_id"]: h for h in w_hits}
    assert all(h == by_id[h["_id"]] for h in p_hits), where


# -- the tests ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rich(stack: Stack, scifact: SciFact) -> Iterator[Stack]:
    """The stack with the two rich indices in its engine (made fresh, deleted afterwards)."""
    for index in (RICH_RERANKED, RICH_PLAIN):
        _index_rich(stack.engine_url, index, scifact)
    yield stack
    for index in (RICH_RERANKED, RICH_PLAIN):
        call(stack.engine_url, "DELETE", f"/{index}")
    for conn in _CONNECTIONS.values():
        conn.close()
    _CONNECTIONS.clear()


SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # nothing written into the shared checkout
    derandomize=bool(os.environ.get("CI")),  # CI: the same examples each run; here: new ones
    phases=(Phase.explicit, Phase.generate, Phase.shrink),
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)

# Requests worth keeping whatever hypothesis draws.
EXPLICIT = [
    Search("POST", SCIFACT_INDEX, (("filter_path", "-"),), {"query": {"match": {"text": "cells"}}}),
    Search("POST", SCIFACT_INDEX, (("filter_path", ""),), {"query": {"match": {"text": "dna"}}}),
    Search(
        "POST",
        RICH_RERANKED,
        (("filter_path", "**.title"),),
        {"query": {"match": {"title": "cells"}}, "size": WINDOW},
    ),
    Search(
        "POST",
        RICH_RERANKED,
        (("_source_excludes", "meta.*,raw"), ("size", " 10")),
        {"query": {"match": {"text": "cells"}}},
    ),
    Search("POST", RICH_RERANKED, (("size", "10"),), {"query": {"match": {"text": "gene"}}}),
    Search("POST", RICH_RERANKED, (), {"query": {"match": {"text": "gene"}}, "size": " 10"}),
    Search("POST", RICH_RERANKED, (), {"query": {"match": {"text": "gene"}}, "from": -1}),
    Search("POST", RICH_RERANKED, (), {"query": {"match": {"text": "gene"}}, "from": 25}),
    Search(
        "POST",
        RICH_RERANKED,
        (("filter_path", "-hits.hits._source"),),
        {"query": {"multi_match": {"query": "risk", "fields": ["title", "text"]}}, "from": 5},
    ),
    Search(
        "POST",
        RICH_RERANKED,
        (),
        {
            "query": {"match": {"text": "protein"}},
            "_source": {"includes": ["m*.a*", "title"], "excludes": ["*.name"]},
        },
    ),
    Search("GET", RICH_RERANKED, (("q", "cancer risk"), ("_source", "false")), None),
    Search("POST", RICH_RERANKED, (), {"query": {"term": {"tag": "alpha"}}}),
    Search("POST", RICH_PLAIN, (("filter_path", "hits.hits._id"),), {"query": {"match_all": {}}}),
]


def test_engine_and_proxy_agree_on_generated_searches(
    rich: Stack, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    tally = Tally()

    @SETTINGS
    @given(searches())
    def run(search: Search) -> None:
        late = time.monotonic() - tally.started > BUDGET_S
        if late and not tally.failures and tally.examples >= len(EXPLICIT):
            tally.over_budget += 1
            return
        try:
            check(rich, search, tally)
        except BaseException:
            tally.failures += 1
            raise

    for search in EXPLICIT:
        run = example(search)(run)
    try:
        run()
    finally:
        seconds = time.monotonic() - tally.started
        request.node.user_properties.append(("differential_examples", tally.examples))
        with capsys.disabled():
            if tally.failures:
                print(f"\nproxy log ({rich.engine}):\n{rich.log_tail(60)}")
            print(
                f"\ndifferential[{rich.engine}]: {tally.examples} examples in {seconds:.0f} s "
                f"({tally.over_budget} drawn past the time budget, not run); "
                f"engine statuses {dict(tally.statuses)}; "
                f"proxy outcomes {dict(tally.outcomes.most_common())}; "
                f"known findings {dict(tally.findings)}"
            )


@pytest.mark.parametrize(
    "source",
    [{"include": ["title"]}, {"exclude": ["title"]}, {}],
    ids=["include", "exclude", "empty-object"],
)
def test_deprecated_source_keys_keep_the_engines_warning(
    stack: Stack, request: pytest.FixtureRequest, source: dict[str, Any]
) -> None:
    """The engine's warning about the client's `_source` reaches the client.

    Where the engine emits one (OpenSearch 2.19 and 3 deprecate `include`/`exclude`;
    OpenSearch 3 also warns about `_source: {}`; Elasticsearch 7.10 says nothing), it reaches
    the client through the proxy too: the widened search keeps the client's spelling
    (`include`/`exclude`) and a `_source: {}` as written. (Found by this suite: the widened
    search used to respell or drop them.)
    """
    body = {"query": {"match": {"text": "cells"}}, "_source": source}
    target, payload = f"/{SCIFACT_INDEX}/_search", json.dumps(body).encode()
    _, d_headers, _ = call(stack.engine_url, "POST", target, payload)
    _, p_headers, _ = call(stack.proxy_url, "POST", target, payload)
    assert p_headers.get("X-Rerank") == "applied"
    assert p_headers.get_all("Warning") == d_headers.get_all("Warning")


@pytest.mark.parametrize(
    ("params", "source"),
    [
        ("_source_includes=title&_source_excludes=title", None),
        ("_source=title,text&_source_excludes=text", None),
        ("", {"includes": ["title"], "excludes": ["title"]}),
    ],
    ids=["params", "params-list", "body"],
)
def test_a_source_entry_both_included_and_excluded_is_the_engines_error(
    stack: Stack, request: pytest.FixtureRequest, params: str, source: Any
) -> None:
    """Where the engine rejects a `_source` that includes and excludes one entry (OpenSearch
    3 does, with a 400; OpenSearch 2.19 and Elasticsearch 7.10 accept it), the client gets
    that 400 through the proxy too.

    The proxy passes such a search through (`bad_source`): its widened search would drop the
    exclusion that reaches a field the reranker needs, so the engine would see no conflict.
    (Found by this suite: it used to answer 200.)
    """
    body: dict[str, Any] = {"query": {"match": {"text": "cells"}}}
    if source is not None:
        body["_source"] = source
    target = f"/{SCIFACT_INDEX}/_search" + ("?" + params if params else "")
    payload = json.dumps(body).encode()
    d_status, _, d_body = call(stack.engine_url, "POST", target, payload)
    p_status, p_headers, p_body = call(stack.proxy_url, "POST", target, payload)
    assert p_headers.get("X-Rerank") is not None, p_body[:500]  # the proxy planned it
    assert p_status == d_status, p_body[:500]
    if d_status != 200:
        assert p_body == d_body


@pytest.mark.parametrize(
    ("params", "extra"),
    [
        ("size=1", {"size": "10x"}),
        ("size=5", {"size": True}),
        ("from=0", {"from": "x"}),
        ("size=3", {"size": 2**40}),
        ("", {"size": None}),
        ("", {"from": None}),
        ("_source=true", {"_source": {"foo": ["title"]}}),
        ("_source_includes=title", {"_source": 5}),
    ],
    ids=[
        "size-text-under-url",
        "size-bool-under-url",
        "from-text-under-url",
        "size-too-big-under-url",
        "size-null",
        "from-null",
        "source-bad-under-url",
        "source-number-under-url",
    ],
)
def test_a_body_value_the_engine_rejects_stays_its_error(
    stack: Stack, request: pytest.FixtureRequest, params: str, extra: dict[str, Any]
) -> None:
    """A body `from`, `size` or `_source` the engine cannot read is its error (400; 500 for
    an int overflow on OpenSearch 2 and Elasticsearch 7), even when a URL parameter would
    override it: the engine parses the body first.

    The proxy checks the body's values whatever the URL says and passes a search with a bad
    one through, so the engine sees it. (Found by this suite: the widened search used to
    replace them, and the engine's error became a 200.)
    """
    body = {"query": {"match": {"title": "vitamin"}}, **extra}
    target = f"/{SCIFACT_INDEX}/_search" + ("?" + params if params else "")
    payload = json.dumps(body).encode()
    d_status, _, d_body = call(stack.engine_url, "POST", target, payload)
    p_status, p_headers, p_body = call(stack.proxy_url, "POST", target, payload)
    assert p_headers.get("X-Rerank") is not None, p_body[:500]  # the proxy planned it
    assert p_status == d_status, p_body[:500]
    if d_status != 200:
        assert p_body == d_body


def test_a_stored_minus_zero_comes_back_as_stored(
    stack: Stack, request: pytest.FixtureRequest
) -> None:
    """The engines hand `_source` back as it was indexed, `-0` included; so must the proxy."""
    index = "scifact-difftest-minus0"  # `scifact-*`: reranked
    call(stack.engine_url, "DELETE", f"/{index}")
    doc = b'{"title":"vitamin d","text":"vitamin d and bone","v":-0}'
    try:
        status, _, _ = call(stack.engine_url, "PUT", f"/{index}/_doc/1?refresh=true", doc)
        assert status == 201
        target, payload = f"/{index}/_search", b'{"query":{"match":{"text":"vitamin"}}}'
        _, _, d_body = call(stack.engine_url, "POST", target, payload)
        _, p_headers, p_body = call(stack.proxy_url, "POST", target, payload)
    finally:
        call(stack.engine_url, "DELETE", f"/{index}")
    assert b'"v":-0}' in d_body
    assert p_headers.get("X-Rerank") == "applied"
    assert b'"v":-0}' in p_body, p_body


@pytest.mark.parametrize(
    ("params", "text", "where"),
    [
        ("filter_path=-hits.hits._source", "zzzzqqq", "hits.hits"),
        ("filter_path=-hits.hits._source.x&_source_includes=nope", "cells", "hits.hits._source"),
    ],
    ids=["no-hits", "empty-source"],
)
def test_an_exclusion_drops_the_empty_containers_it_walks_into(
    stack: Stack, request: pytest.FixtureRequest, params: str, text: str, where: str
) -> None:
    """The engines drop an array or object that a `filter_path` exclusion descends into and
    that ends up with nothing in it, even one that was empty already: `-hits.hits._source`
    on a search with no hits has no `hits.hits`, and `-hits.hits._source.x` drops a
    `_source` that `_source_includes` emptied. (An exclusion that does not reach it, such
    as `-took`, keeps `"hits": []`.)

    So does the proxy's `filtering._fp_exclude`. (Found by this suite: it used to keep a
    container that was empty already, answering `"hits": []` and `"_source": {}` there.)
    """
    target = f"/{SCIFACT_INDEX}/_search?{params}"
    payload = json.dumps({"query": {"match": {"text": text}}}).encode()

    def present(body: bytes) -> bool:
        hits = json.loads(body)["hits"]
        if where == "hits.hits":
            return "hits" in hits
        assert hits["hits"]
        return any("_source" in h for h in hits["hits"])

    d_status, _, d_body = call(stack.engine_url, "POST", target, payload)
    p_status, p_headers, p_body = call(stack.proxy_url, "POST", target, payload)
    assert (d_status, p_status) == (200, 200)
    assert p_headers.get("X-Rerank") == "applied"
    assert present(p_body) == present(d_body), p_body[:600]


@pytest.mark.parametrize(
    "params",
    ["_source_excludes=title", "filter_path=hits.hits._source", "filter_path=-hits.hits._id"],
)
def test_an_engine_filtered_source_has_the_engines_float_spelling(
    stack: Stack, request: pytest.FixtureRequest, params: str
) -> None:
    """When the client's parameters make the engine filter `_source` (`_source_excludes`,
    any `filter_path`), the engine re-encodes it: `0.10` comes back `0.1`, `1e-7` as
    `1.0E-7` (the stored bytes are returned only when nothing filters them).

    The proxy asks for the unfiltered `_source` (it needs `title`/`text`, and applies
    `filter_path` itself), so the stored bytes' spelling reaches the client instead.
    """
    index = "scifact-difftest-floats"  # `scifact-*`: reranked
    call(stack.engine_url, "DELETE", f"/{index}")
    doc = b'{"title":"vitamin d","text":"vitamin d and bone","f":0.10,"h":1e-7}'
    try:
        status, _, _ = call(stack.engine_url, "PUT", f"/{index}/_doc/1?refresh=true", doc)
        assert status == 201
        target = f"/{index}/_search?{params}"
        payload = b'{"query":{"match":{"text":"vitamin"}}}'
        _, _, d_body = call(stack.engine_url, "POST", target, payload)
        _, p_headers, p_body = call(stack.proxy_url, "POST", target, payload)
    finally:
        call(stack.engine_url, "DELETE", f"/{index}")
    assert p_headers.get("X-Rerank") == "applied"

    def spelled(body: bytes) -> list[str]:
        return re.findall(r'"[fh]":([^,}]+)', body.decode())

    if spelled(d_body) != ["0.10", "1e-7"]:
        request.applymarker(
            pytest.mark.xfail(
                strict=True,
                reason="KNOWN DIFFERENCE (kept): the proxy filters the stored _source bytes "
                "itself, so their float spelling survives where the engine's own filtering "
                "re-encodes them (Java's Double.toString, key order of a Java HashMap); the "
                "values are equal",
            )
        )
    assert spelled(p_body) == spelled(d_body)
