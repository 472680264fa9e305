"""Table-driven tests for proxy.filtering: `_source` filtering and `filter_path`.

The expected values follow the engines' documented semantics and, for `_source`,
`XContentMapValues.filter` (Elasticsearch 7.x and OpenSearch). Cases whose ids end in
`-unsure` are points where Elasticsearch 8's streaming source filter may differ (empty
objects left behind, `*` crossing dots); the e2e suite compares them against real engines.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from proxy.filtering import (
    SourceFilter,
    apply_filter_path,
    pattern_reaches,
    source_filter_from_body,
    source_filter_from_params,
)

DOC: dict[str, Any] = {
    "title": "T",
    "body": "B",
    "meta": {"author": "A", "tags": ["x", "y"], "inner": {"deep": 1}},
    "comments": [{"user": "u1", "text": "c1"}, {"user": "u2"}],
    "a.b": "flat",
    "num": 3,
    "nothing": None,
    "matrix": [[1, 2], [{"k": "v", "z": 0}]],
}


def _without(doc: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in keys}


# (id, includes, excludes, expected)
SOURCE_CASES: list[tuple[str, tuple[str, ...], tuple[str, ...], Any]] = [
    ("include-top-field", ("title",), (), {"title": "T"}),
    ("include-order-is-source-order", ("body", "title"), (), {"title": "T", "body": "B"}),
    ("include-object-whole", ("meta",), (), {"meta": DOC["meta"]}),
    ("include-nested-field", ("meta.author",), (), {"meta": {"author": "A"}}),
    ("include-deep-field", ("meta.inner.deep",), (), {"meta": {"inner": {"deep": 1}}}),
    ("include-array-of-scalars", ("meta.tags",), (), {"meta": {"tags": ["x", "y"]}}),
    ("include-children-wildcard", ("meta.*",), (), {"meta": DOC["meta"]}),
    ("include-star-everything", ("*",), (), DOC),
    ("include-prefix-wildcard", ("ti*",), (), {"title": "T"}),
    # `*` crosses dots in XContentMapValues: `*.author` reaches meta.author
    ("include-any-parent-wildcard-unsure", ("*.author",), (), {"meta": {"author": "A"}}),
    ("include-middle-wildcard", ("meta.*.deep",), (), {"meta": {"inner": {"deep": 1}}}),
    (
        "include-field-of-array-objects",
        ("comments.user",),
        (),
        {"comments": [{"user": "u1"}, {"user": "u2"}]},
    ),
    # objects of an array that filter to nothing are dropped, not kept as {}
    ("include-sparse-array-field-unsure", ("comments.text",), (), {"comments": [{"text": "c1"}]}),
    ("include-array-of-arrays", ("matrix.k",), (), {"matrix": [[{"k": "v"}]]}),
    ("include-dotted-flat-key", ("a.b",), (), {"a.b": "flat"}),
    ("include-parent-of-flat-key", ("a",), (), {"a.b": "flat"}),
    ("include-null-value", ("nothing",), (), {"nothing": None}),
    ("include-no-match", ("missing",), (), {}),
    ("include-no-match-below-scalar", ("title.raw",), (), {}),
    # `?` and `[...]` are not wildcards in the engines' simple-match patterns
    ("question-mark-is-literal", ("ti?le",), (), {}),
    ("exclude-top-field", (), ("body",), _without(DOC, "body")),
    ("exclude-object", (), ("meta",), _without(DOC, "meta")),
    (
        "exclude-nested-field",
        (),
        ("meta.author",),
        {**DOC, "meta": {"tags": ["x", "y"], "inner": {"deep": 1}}},
    ),
    (
        "exclude-any-parent-wildcard-unsure",
        (),
        ("*.deep",),
        {**DOC, "meta": {"author": "A", "tags": ["x", "y"], "inner": {}}},
    ),
    ("exclude-prefix-wildcard", (), ("t*", "b*"), _without(DOC, "title", "body")),
    ("exclude-parent-of-flat-key", (), ("a",), _without(DOC, "a.b")),
    ("exclude-flat-key", (), ("a.b",), _without(DOC, "a.b")),
    (
        "exclude-field-of-array-objects",
        (),
        ("comments.text",),
        {**DOC, "comments": [{"user": "u1"}, {"user": "u2"}]},
    ),
    (
        "exclude-empties-array-object-unsure",
        (),
        ("comments.user",),
        {**DOC, "comments": [{"text": "c1"}]},
    ),
    ("exclude-everything", (), ("*",), {}),
    (
        "include-object-exclude-inner",
        ("meta",),
        ("meta.tags",),
        {"meta": {"author": "A", "inner": {"deep": 1}}},
    ),
    # an included object emptied by an exclusion stays, as {}
    (
        "included-object-emptied-unsure",
        ("meta.inner",),
        ("meta.inner.deep",),
        {"meta": {"inner": {}}},
    ),
    ("exclude-beats-include", ("title", "body"), ("b*",), {"title": "T"}),
    ("exclude-same-as-include", ("title",), ("title",), {}),
    (
        "include-wildcard-exclude-one",
        ("*",),
        ("comments", "matrix", "meta", "a", "nothing", "num"),
        {"title": "T", "body": "B"},
    ),
]


@pytest.mark.parametrize(
    ("includes", "excludes", "expected"),
    [c[1:] for c in SOURCE_CASES],
    ids=[c[0] for c in SOURCE_CASES],
)
def test_source_filter(includes: tuple[str, ...], excludes: tuple[str, ...], expected: Any) -> None:
    original = copy.deepcopy(DOC)
    assert SourceFilter(includes=includes, excludes=excludes).apply(DOC) == expected
    assert original == DOC  # the input is not modified


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ({"x[0]": 1, "x": [2]}, {"x[0]": 1}),
        ({"x": {"[0]": 1}}, {}),
    ],
    ids=["brackets-are-literal", "brackets-do-not-index"],
)
def test_brackets_are_not_pattern_syntax(source: dict[str, Any], expected: Any) -> None:
    assert SourceFilter(includes=("x[0]",)).apply(source) == expected


def test_identity_and_non_objects_are_returned_as_they_are() -> None:
    assert SourceFilter().apply(DOC) is DOC
    assert SourceFilter(includes=("a",)).apply(["not", "an", "object"]) == ["not", "an", "object"]
    assert SourceFilter().is_identity
    assert not SourceFilter(enabled=False).is_identity
    assert not SourceFilter(excludes=("x",)).is_identity


BODY_CASES: list[tuple[str, Any, SourceFilter | None]] = [
    ("absent", None, None),
    ("true", True, SourceFilter()),
    ("false", False, SourceFilter(enabled=False)),
    ("string", "title", SourceFilter(includes=("title",))),
    # a JSON string is one pattern; only URL parameters are comma-separated
    ("string-with-comma", "a,b", SourceFilter(includes=("a,b",))),
    ("list", ["a", "b.*"], SourceFilter(includes=("a", "b.*"))),
    ("empty-list", [], SourceFilter()),
    (
        "object",
        {"includes": ["a"], "excludes": ["b"]},
        SourceFilter(includes=("a",), excludes=("b",)),
    ),
    (
        "object-singular-keys",
        {"include": "a", "exclude": "b"},
        SourceFilter(includes=("a",), excludes=("b",)),
    ),
    ("object-excludes-only", {"excludes": ["vec"]}, SourceFilter(excludes=("vec",))),
]


@pytest.mark.parametrize(
    ("spec", "expected"), [c[1:] for c in BODY_CASES], ids=[c[0] for c in BODY_CASES]
)
def test_source_filter_from_body(spec: Any, expected: SourceFilter | None) -> None:
    assert source_filter_from_body(spec) == expected


@pytest.mark.parametrize(
    "spec",
    [{"fields": ["a"]}, 5, [1], {"includes": 5}, {"includes": [["a"]]}],
    ids=["unknown-key", "number", "list-of-numbers", "includes-number", "includes-nested-list"],
)
def test_source_filter_from_body_rejects(spec: Any) -> None:
    with pytest.raises(ValueError):
        source_filter_from_body(spec)


PARAM_CASES: list[tuple[str, list[tuple[str, str]], SourceFilter | None]] = [
    ("none", [], None),
    ("unrelated", [("q", "x"), ("size", "3")], None),
    ("false", [("_source", "false")], SourceFilter(enabled=False)),
    ("true", [("_source", "true")], SourceFilter()),
    ("blank", [("_source", "")], SourceFilter()),
    ("list", [("_source", "title,body")], SourceFilter(includes=("title", "body"))),
    # booleans are strict in the engines: anything but true/false is a field list
    ("no-is-a-field", [("_source", "no")], SourceFilter(includes=("no",))),
    ("zero-is-a-field", [("_source", "0")], SourceFilter(includes=("0",))),
    ("includes", [("_source_includes", "a,b")], SourceFilter(includes=("a", "b"))),
    ("excludes", [("_source_excludes", "v*")], SourceFilter(excludes=("v*",))),
    (
        "includes-replace-source-list",
        [("_source", "a"), ("_source_includes", "b")],
        SourceFilter(includes=("b",)),
    ),
    (
        "true-with-excludes",
        [("_source", "true"), ("_source_excludes", "vec")],
        SourceFilter(excludes=("vec",)),
    ),
    (
        "false-wins-over-includes",
        [("_source", "false"), ("_source_includes", "a")],
        SourceFilter(enabled=False),
    ),
    ("last-repeat-wins", [("_source", "a"), ("_source", "b")], SourceFilter(includes=("b",))),
]


@pytest.mark.parametrize(
    ("params", "expected"), [c[1:] for c in PARAM_CASES], ids=[c[0] for c in PARAM_CASES]
)
def test_source_filter_from_params(
    params: list[tuple[str, str]], expected: SourceFilter | None
) -> None:
    assert source_filter_from_params(params) == expected


REACH_CASES = [
    ("same", "title", "title", True),
    ("parent", "meta", "meta.title", True),
    ("child", "meta.title.raw", "meta.title", True),
    ("wildcard-same", "t*", "title", True),
    ("wildcard-child", "*.raw", "title", True),
    ("wildcard-parent", "me*", "meta.title", True),
    ("sibling", "body", "title", False),
    ("sibling-prefix", "tit", "title", False),
    ("longer-name", "title2", "title", False),
    ("other-branch", "meta.author", "meta.title", False),
    ("wildcard-other", "b*", "title", False),
]


@pytest.mark.parametrize(
    ("pattern", "path", "expected"), [c[1:] for c in REACH_CASES], ids=[c[0] for c in REACH_CASES]
)
def test_pattern_reaches(pattern: str, path: str, expected: bool) -> None:
    assert pattern_reaches(pattern, path) is expected


# -- filter_path -----------------------------------------------------------------------

RESP: dict[str, Any] = {
    "took": 3,
    "timed_out": False,
    "_shards": {"total": 1, "successful": 1, "failed": 0},
    "hits": {
        "total": {"value": 2, "relation": "eq"},
        "max_score": 1.0,
        "hits": [
            {"_index": "i", "_id": "1", "_score": 1.0, "_source": {"title": "a", "body": "x"}},
            {"_index": "i", "_id": "2", "_score": 0.5, "_source": {"body": "y"}},
        ],
    },
    "aggregations": {"by_tag": {"buckets": [{"key": "k", "doc_count": 2}]}},
    "empty_obj": {},
    "empty_list": [],
}
HIT1, HIT2 = RESP["hits"]["hits"]

FILTER_PATH_CASES: list[tuple[str, str, Any]] = [
    ("ids", "hits.hits._id", {"hits": {"hits": [{"_id": "1"}, {"_id": "2"}]}}),
    # hits without the field are dropped from the array, not kept as {}
    (
        "source-field-sparse",
        "hits.hits._source.title",
        {"hits": {"hits": [{"_source": {"title": "a"}}]}},
    ),
    ("two-paths", "took,hits.total", {"took": 3, "hits": {"total": RESP["hits"]["total"]}}),
    ("whole-array", "hits.hits", {"hits": {"hits": RESP["hits"]["hits"]}}),
    ("any-depth", "**._id", {"hits": {"hits": [{"_id": "1"}, {"_id": "2"}]}}),
    ("any-depth-middle", "hits.**.title", {"hits": {"hits": [{"_source": {"title": "a"}}]}}),
    ("any-depth-zero-levels", "hits.**.max_score", {"hits": {"max_score": 1.0}}),
    ("any-depth-trailing", "aggregations.**", {"aggregations": RESP["aggregations"]}),
    ("one-level-star", "hits.*.value", {"hits": {"total": {"value": 2}}}),
    ("star-top", "*", RESP),
    (
        "star-in-name",
        "hits.hits._s*",
        {"hits": {"hits": [{k: h[k] for k in ("_score", "_source")} for h in (HIT1, HIT2)]}},
    ),
    ("star-in-name-middle", "_sh*s.fail*", {"_shards": {"failed": 0}}),
    (
        "agg-buckets",
        "aggregations.*.buckets.key",
        {"aggregations": {"by_tag": {"buckets": [{"key": "k"}]}}},
    ),
    ("whitespace", " took , timed_out ", {"took": 3, "timed_out": False}),
    ("no-match", "nothing.here", {}),
    ("scalar-not-descended", "took.x", {}),
    ("empty-expression", "", RESP),
    ("exact-empty-object-kept", "empty_obj", {"empty_obj": {}}),
    ("exact-empty-list-kept", "empty_list", {"empty_list": []}),
    ("question-mark-literal", "t?ok", {}),
    (
        "exclude-source",
        "-hits.hits._source",
        {
            **RESP,
            "hits": {
                **RESP["hits"],
                "hits": [{k: v for k, v in h.items() if k != "_source"} for h in (HIT1, HIT2)],
            },
        },
    ),
    (
        "exclude-two",
        "-took,-_shards",
        {k: v for k, v in RESP.items() if k not in ("took", "_shards")},
    ),
    ("exclude-star-in-name", "-_*", {k: v for k, v in RESP.items() if k != "_shards"}),
    (
        "exclude-any-depth",  # `**` reaches into every container: the empty ones go (engines)
        "-**._score",
        {
            **{k: v for k, v in RESP.items() if k not in ("empty_obj", "empty_list")},
            "hits": {
                **RESP["hits"],
                "hits": [{k: v for k, v in h.items() if k != "_score"} for h in (HIT1, HIT2)],
            },
        },
    ),
    (
        "exclude-field-in-array",
        "-hits.hits._source.title",
        {**RESP, "hits": {**RESP["hits"], "hits": [{**HIT1, "_source": {"body": "x"}}, HIT2]}},
    ),
    # a container emptied by the exclusion goes; one that was empty already stays
    (
        "exclude-empties-object-unsure",
        "-hits.hits._source.body",
        {
            **RESP,
            "hits": {
                **RESP["hits"],
                "hits": [
                    {**HIT1, "_source": {"title": "a"}},
                    {k: v for k, v in HIT2.items() if k != "_source"},
                ],
            },
        },
    ),
    ("exclude-keeps-empty-containers", "-took", {k: v for k, v in RESP.items() if k != "took"}),
    ("exclude-no-match", "-nothing", RESP),
    ("exclude-everything", "-*", {}),
    # exclusions apply first, then inclusions (engine documentation)
    (
        "mix-include-then-exclude-inside",
        "hits.hits,-hits.hits._source",
        {"hits": {"hits": [{k: v for k, v in h.items() if k != "_source"} for h in (HIT1, HIT2)]}},
    ),
    ("mix-excluded-parent-unsure", "hits.hits._id,-hits.hits", {}),
    ("mix-unrelated", "took,-hits", {"took": 3}),
]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [c[1:] for c in FILTER_PATH_CASES],
    ids=[c[0] for c in FILTER_PATH_CASES],
)
def test_apply_filter_path(expression: str, expected: Any) -> None:
    original = copy.deepcopy(RESP)
    assert apply_filter_path(copy.deepcopy(RESP), expression) == expected
    assert original == RESP


MSEARCH = {
    "took": 1,
    "responses": [
        {"hits": {"hits": [{"_id": "1", "_score": 2.0}]}, "status": 200},
        {"error": {"type": "x"}, "status": 400},
        {"hits": {"hits": [{"_id": "2"}, {"_id": "3"}]}, "status": 200},
    ],
}


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        (
            "responses.hits.hits._id",
            {
                "responses": [
                    {"hits": {"hits": [{"_id": "1"}]}},
                    {"hits": {"hits": [{"_id": "2"}, {"_id": "3"}]}},
                ]
            },
        ),
        ("responses.status", {"responses": [{"status": 200}, {"status": 400}, {"status": 200}]}),
        ("responses.error.type", {"responses": [{"error": {"type": "x"}}]}),
    ],
    ids=["msearch-ids", "msearch-status", "msearch-sparse-unsure"],
)
def test_apply_filter_path_through_arrays(expression: str, expected: Any) -> None:
    assert apply_filter_path(copy.deepcopy(MSEARCH), expression) == expected


def test_apply_filter_path_on_a_top_level_array() -> None:
    assert apply_filter_path([{"a": 1, "b": 2}, {"b": 3}], "a") == [{"a": 1}]
