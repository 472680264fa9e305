"""Table-driven tests for proxy.routing: which requests may be reranked, and query strings."""

from __future__ import annotations

import pytest

from proxy.routing import (
    PASS,
    Route,
    accepts_gzip,
    classify,
    origin_form,
    parse_params,
    split_path_query,
    with_params,
    without_params,
)

# (id, method, raw path, expected kind, expected targets)
CLASSIFY: list[tuple[str, str, str, str, tuple[str, ...]]] = [
    # rerankable searches
    ("get-search", "GET", "/_search", "search", ()),
    ("post-search", "POST", "/_search", "search", ()),
    ("index-search", "GET", "/articles/_search", "search", ("articles",)),
    ("list-search", "POST", "/a,b/_search", "search", ("a", "b")),
    ("all-search", "GET", "/_all/_search", "search", ("_all",)),
    ("wildcard-search", "GET", "/logs-*/_search", "search", ("logs-*",)),
    ("exclusion-search", "GET", "/logs-*,-logs-old/_search", "search", ("logs-*", "-logs-old")),
    ("dot-index-search", "GET", "/.kibana/_search", "search", (".kibana",)),
    (
        "date-math-encoded",
        "GET",
        "/%3Clogs-%7Bnow%2Fd%7D%3E/_search",
        "search",
        ("<logs-{now/d}>",),
    ),
    (
        "date-math-list-encoded-comma",
        "GET",
        "/%3Clogs-%7Bnow%2Fd-1d%7D%3E%2C%3Clogs-%7Bnow%2Fd%7D%3E/_search",
        "search",
        ("<logs-{now/d-1d}>", "<logs-{now/d}>"),
    ),
    ("encoded-index-name", "GET", "/caf%C3%A9/_search", "search", ("café",)),
    # a trailing slash is the same resource to the engines' router
    ("trailing-slash", "GET", "/articles/_search/", "search", ("articles",)),
    ("msearch", "POST", "/_msearch", "msearch", ()),
    ("index-msearch", "POST", "/articles/_msearch", "msearch", ("articles",)),
    ("get-msearch", "GET", "/a,b/_msearch", "msearch", ("a", "b")),
    ("all-msearch", "POST", "/_all/_msearch", "msearch", ("_all",)),
    ("search-template", "POST", "/_search/template", "search_template", ()),
    ("get-search-template", "GET", "/kb/_search/template", "search_template", ("kb",)),
    ("msearch-template", "POST", "/_msearch/template", "msearch_template", ()),
    ("index-msearch-template", "POST", "/kb/_msearch/template", "msearch_template", ("kb",)),
    # admin endpoints of the proxy itself, any method
    ("admin-get", "GET", "/_rerank_proxy/health", "admin", ()),
    ("admin-post", "POST", "/_rerank_proxy/cache/clear", "admin", ()),
    ("admin-head", "HEAD", "/_rerank_proxy/metrics", "admin", ()),
    ("admin-root", "GET", "/_rerank_proxy", "admin", ()),
    ("admin-lookalike", "GET", "/_rerank_proxyx", "pass", ()),
    # everything else passes through
    ("root", "GET", "/", "pass", ()),
    ("empty", "GET", "", "pass", ()),
    ("index-only", "HEAD", "/articles", "pass", ()),
    ("get-all", "GET", "/_all", "pass", ()),
    ("scroll", "POST", "/_search/scroll", "pass", ()),
    ("scroll-id-in-path", "GET", "/_search/scroll/FGluY2x1ZGU", "pass", ()),
    ("clear-scroll", "DELETE", "/_search/scroll", "pass", ()),
    ("count", "GET", "/articles/_count", "pass", ()),
    ("async-search", "POST", "/_async_search", "pass", ()),
    ("index-async-search", "POST", "/articles/_async_search", "pass", ()),
    ("opensearch-async", "POST", "/_plugins/_asynchronous_search", "pass", ()),
    # ES 8: GET /idx/_doc/_search is the document whose id is "_search" (POST/PUT index it);
    # ES 7 read it as a typed search (deprecated). Either way not ours to rewrite.
    ("doc-id-search", "GET", "/articles/_doc/_search", "pass", ()),
    ("doc-id-search-post", "POST", "/articles/_doc/_search", "pass", ()),
    ("put-search", "PUT", "/articles/_search", "pass", ()),
    ("delete-search", "DELETE", "/articles/_search", "pass", ()),
    ("head-search", "HEAD", "/_search", "pass", ()),
    ("options-search", "OPTIONS", "/_search", "pass", ()),
    ("patch-msearch", "PATCH", "/_msearch", "pass", ()),
    ("render-template", "POST", "/_render/template", "pass", ()),
    ("search-extra-segment", "GET", "/articles/_search/extra", "pass", ()),
    ("explain", "GET", "/articles/_explain/1", "pass", ()),
    ("validate", "GET", "/articles/_validate/query", "pass", ()),
    ("field-caps", "GET", "/articles/_field_caps", "pass", ()),
    ("terms-enum", "POST", "/articles/_terms_enum", "pass", ()),
    ("search-shards", "GET", "/articles/_search_shards", "pass", ()),
    ("knn-search", "POST", "/articles/_knn_search", "pass", ()),
    ("rank-eval", "POST", "/articles/_rank_eval", "pass", ()),
    ("pit", "POST", "/articles/_pit", "pass", ()),
    ("sql", "POST", "/_sql", "pass", ()),
    ("esql", "POST", "/_query", "pass", ()),
    ("eql", "POST", "/articles/_eql/search", "pass", ()),
    ("opensearch-sql", "POST", "/_plugins/_sql", "pass", ()),
    ("bulk", "POST", "/_bulk", "pass", ()),
    ("sniff", "GET", "/_nodes/_all/http", "pass", ()),
    ("cat", "GET", "/_cat/indices", "pass", ()),
    ("doc", "GET", "/articles/_doc/1", "pass", ()),
    # the endpoint name is matched as sent; an encoded one is left to the engine (safe)
    ("encoded-endpoint", "GET", "/articles/%5Fsearch", "pass", ()),
]


@pytest.mark.parametrize(
    ("method", "path", "kind", "targets"),
    [c[1:] for c in CLASSIFY],
    ids=[c[0] for c in CLASSIFY],
)
def test_classify(method: str, path: str, kind: str, targets: tuple[str, ...]) -> None:
    assert classify(method, path) == Route(kind, targets)  # type: ignore[arg-type]


def test_pass_is_a_plain_pass_route() -> None:
    assert Route("pass", ()) == PASS


# -- query strings -------------------------------------------------------------------

WITHOUT: list[tuple[str, str, frozenset[str], str]] = [
    ("empty", "", frozenset({"a"}), ""),
    ("nothing-removed", "a=1&b=2", frozenset({"c"}), "a=1&b=2"),
    ("remove-last", "a=1&b=2", frozenset({"b"}), "a=1"),
    ("remove-first", "a=1&b=2", frozenset({"a"}), "b=2"),
    ("remove-all", "a=1&b=2", frozenset({"a", "b"}), ""),
    (
        "encoded-values-kept",
        "q=title%3A%22new+york%22&from=10&x=%E2%82%AC",
        frozenset({"from"}),
        "q=title%3A%22new+york%22&x=%E2%82%AC",
    ),
    ("repeated-key-removed", "from=1&x=2&from=3", frozenset({"from"}), "x=2"),
    ("repeated-key-kept", "x=1&x=2&from=3", frozenset({"from"}), "x=1&x=2"),
    ("blank-values-kept", "a=&b&c=1&d=", frozenset({"c"}), "a=&b&d="),
    ("blank-value-removed", "a=&b&c=1", frozenset({"a", "b"}), "c=1"),
    ("encoded-name-matches", "%5Fsource=false&q=x", frozenset({"_source"}), "q=x"),
    ("plus-in-name-is-space", "a+b=1&c=2", frozenset({"a b"}), "c=2"),
    ("equals-in-value", "q=a%3Db=c&from=1", frozenset({"from"}), "q=a%3Db=c"),
    ("name-in-value-only", "q=from&size=1", frozenset({"from"}), "q=from&size=1"),
    ("prefix-name-not-matched", "from_x=1&from=2", frozenset({"from"}), "from_x=1"),
    ("empty-pieces-untouched", "a=1&&b=2", frozenset({"c"}), "a=1&&b=2"),
    ("invalid-escapes-untouched", "q=%ZZ%&x=%", frozenset({"y"}), "q=%ZZ%&x=%"),
    ("semicolon-not-a-separator", "a=1;from=2", frozenset({"from"}), "a=1;from=2"),
    ("case-sensitive", "From=1&from=2", frozenset({"from"}), "From=1"),
]


@pytest.mark.parametrize(
    ("raw", "names", "expected"), [c[1:] for c in WITHOUT], ids=[c[0] for c in WITHOUT]
)
def test_without_params(raw: str, names: frozenset[str], expected: str) -> None:
    assert without_params(raw, names) == expected


WITH: list[tuple[str, str, dict[str, str], str]] = [
    ("to-empty", "", {"size": "50"}, "size=50"),
    ("appended-in-order", "a=1", {"from": "0", "size": "50"}, "a=1&from=0&size=50"),
    ("nothing", "a=%20", {}, "a=%20"),
    ("raw-kept", "q=new+york", {"size": "5"}, "q=new+york&size=5"),
    ("value-encoded", "", {"q": "a b&c=d"}, "q=a%20b%26c%3Dd"),
    ("name-encoded", "", {"a&b": "1"}, "a%26b=1"),
]


@pytest.mark.parametrize(
    ("raw", "extra", "expected"), [c[1:] for c in WITH], ids=[c[0] for c in WITH]
)
def test_with_params(raw: str, extra: dict[str, str], expected: str) -> None:
    assert with_params(raw, extra) == expected
    # what with_params adds, without_params takes away again, byte for byte
    assert without_params(with_params(raw, extra), frozenset(extra)) == raw


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", []),
        ("a=1&b=&c&a=2", [("a", "1"), ("b", ""), ("c", ""), ("a", "2")]),
        ("q=new+york%21", [("q", "new york!")]),
        ("%5Fsource=a%2Cb", [("_source", "a,b")]),
        ("q=caf%C3%A9", [("q", "café")]),
        ("a=1&&b=2", [("a", "1"), ("b", "2")]),
    ],
    ids=["empty", "order-blank-repeated", "plus-and-escape", "encoded-name", "utf8", "empty-piece"],
)
def test_parse_params(raw: str, expected: list[tuple[str, str]]) -> None:
    assert parse_params(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/idx/_search", ("/idx/_search", "")),
        ("/idx/_search?", ("/idx/_search", "")),
        ("/idx/_search?q=a", ("/idx/_search", "q=a")),
        ("/idx/_search?q=a?b&c", ("/idx/_search", "q=a?b&c")),
    ],
    ids=["no-query", "empty-query", "query", "question-mark-in-query"],
)
def test_split_path_query(raw: str, expected: tuple[str, str]) -> None:
    assert split_path_query(raw) == expected


# (method, raw request target, origin-form?)
TARGETS: list[tuple[str, str, bool]] = [
    ("GET", "/", True),
    ("GET", "/idx/_doc/1?x=1", True),
    ("GET", "//x/path", True),  # origin-form with an empty first segment: still a path
    ("OPTIONS", "/", True),
    ("GET", "http://x/path", False),
    ("GET", "HTTP://X/_rerank_proxy/health", False),
    ("GET", "host://x/path", False),
    ("POST", "https://elsewhere:9200/_bulk", False),
    ("GET", "x/path", False),
    ("GET", "", False),
    ("OPTIONS", "*", False),
    ("CONNECT", "example.com:443", False),
    ("CONNECT", "/", False),  # CONNECT is never a request for a path
]


@pytest.mark.parametrize(
    ("method", "target", "expected"), TARGETS, ids=[t[1] or "empty" for t in TARGETS]
)
def test_origin_form(method: str, target: str, expected: bool) -> None:
    assert origin_form(method, target) is expected


# (Accept-Encoding, gzip acceptable?) per RFC 9110 12.5.3
ACCEPT_ENCODINGS: list[tuple[str | None, bool]] = [
    (None, False),
    ("", False),
    (" , ", False),
    ("gzip", True),
    ("GZip", True),
    ("x-gzip", True),
    ("gzip;q=1", True),
    ("gzip;q=1.000", True),
    ("gzip;q=0.001", True),
    ("gzip ; q = 0.5", True),
    ("deflate, gzip;q=0.5, br", True),
    ("*", True),
    ("*;q=0.5", True),
    ("identity;q=0, *", True),
    ("gzip;q=0", False),
    ("gzip;q=0.", False),
    ("gzip;q=0.000", False),
    ("gzip;Q=0", False),
    ("x-gzip;q=0", False),
    ("gzip;q=0, *", False),  # named beats the wildcard
    ("*, gzip;q=0", False),
    ("gzip, gzip;q=0", False),  # said both ways: not acceptable
    ("*;q=0", False),
    ("deflate, *;q=0", False),
    ("identity", False),
    ("deflate, br", False),
    ("gzip;q=1.5", False),  # malformed q-values: not acceptable
    ("gzip;q=-1", False),
    ("gzip;q=0.0001", False),
    ("gzip;q=", False),
    ("gzip;q=high", False),
    ("gzipped", False),
    ("not-gzip", False),
]


@pytest.mark.parametrize(
    ("header", "expected"), ACCEPT_ENCODINGS, ids=[repr(h) for h, _ in ACCEPT_ENCODINGS]
)
def test_accepts_gzip(header: str | None, expected: bool) -> None:
    assert accepts_gzip(header) is expected
