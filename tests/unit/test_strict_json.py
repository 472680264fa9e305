"""Strict parsing in proxy.jsoncodec, and the pure steps on the deepest documents it admits.

The engines (Jackson) reject `NaN`/`Infinity` and duplicate keys; the proxy parses as strictly,
so such a body goes to the engine unchanged and the client sees the engine's own error. Depth
is bounded explicitly (`MAX_DEPTH`, a `ValueError` past it), never by `RecursionError`, and
every recursive step after the codec (`_source` filtering, `filter_path`, the client view,
window texts, serialising) handles a document at the limit.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from proxy import jsoncodec
from proxy.answer import client_view
from proxy.config import RuleConfig
from proxy.filtering import SourceFilter, apply_filter_path
from proxy.plan import SearchPlan, plan_search
from proxy.score import document_text, window_texts

LIMIT = jsoncodec.MAX_DEPTH

# (id, text the engine rejects)
REJECTED: list[tuple[str, str]] = [
    ("nan", '{"boost":NaN}'),
    ("infinity", '{"boost":Infinity}'),
    ("minus-infinity", '{"boost":-Infinity}'),
    ("nan-in-array", "[1,NaN]"),
    ("nan-alone", "NaN"),
    ("infinity-nested", '{"query":{"match":{"t":{"query":"x","boost":Infinity}}}}'),
    ("duplicate-size", '{"size":1,"size":2}'),
    ("duplicate-query", '{"query":{"match_all":{}},"query":{"match":{"t":"x"}}}'),
    ("duplicate-nested", '{"query":{"match":{"t":"x","t":"y"}}}'),
    ("duplicate-in-array-item", '{"a":[{"b":1,"b":1}]}'),
    ("duplicate-by-escape", '{"a":1,"\\u0061":2}'),
    ("duplicate-empty-key", '{"":1,"":2}'),
]


@pytest.mark.parametrize("text", [c[1] for c in REJECTED], ids=[c[0] for c in REJECTED])
def test_what_the_engine_rejects_is_a_value_error(text: str) -> None:
    for data in (text, text.encode()):
        with pytest.raises(ValueError):
            jsoncodec.loads(data)


@pytest.mark.parametrize(
    "text",
    ['{"a":1,"A":2}', '{"a":{"b":1},"b":{"a":1}}', '[{"a":1},{"a":2}]', '{"s":"NaN"}', "1e400"],
    ids=["case-differs", "same-key-other-object", "same-key-other-item", "nan-string", "overflow"],
)
def test_what_the_engine_accepts_still_parses(text: str) -> None:
    assert jsoncodec.loads(text) == json.loads(text)


def nested(depth: int, inner: str = "1", *, kinds: str = "[{") -> str:
    """`depth` containers around `inner`, alternating the kinds given."""
    opens, closes = [], []
    for i in range(depth):
        if kinds[i % len(kinds)] == "[":
            opens.append("[")
            closes.append("]")
        else:
            opens.append('{"k":')
            closes.append("}")
    return "".join(opens) + inner + "".join(reversed(closes))


@pytest.mark.parametrize("kinds", ["[", "{", "[{"], ids=["arrays", "objects", "mixed"])
def test_depth_up_to_the_limit_parses_and_round_trips(kinds: str) -> None:
    text = nested(LIMIT, kinds=kinds)
    value = jsoncodec.loads(text)
    assert jsoncodec.dumps(value) == text.encode()


@pytest.mark.parametrize("depth", [LIMIT + 1, 990, 1000, 5000, 100_000])
@pytest.mark.parametrize("kinds", ["[", "{", "[{"], ids=["arrays", "objects", "mixed"])
def test_past_the_limit_is_a_value_error_not_a_recursion_error(depth: int, kinds: str) -> None:
    text = nested(depth, kinds=kinds)
    for data in (text, text.encode()):
        with pytest.raises(ValueError, match="nested"):
            jsoncodec.loads(data)


@pytest.mark.parametrize(
    "text",
    [
        # Unbalanced or broken: whatever the nesting, a ValueError.
        "[" * 100_000,
        "{" * 100_000,
        '{"a":' * 100_000,
        "]" * 100_000,
        "[" * 100_000 + "]" * 99_999,
    ],
    ids=["open-arrays", "open-braces", "open-objects", "closes", "one-short"],
)
def test_broken_deep_input_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        jsoncodec.loads(text)


def test_brackets_inside_strings_do_not_count() -> None:
    text = json.dumps({"s": "[" * 100_000 + '{\\"}' * 1000, "t": ["]]]\\\\", "{{{"]})
    assert jsoncodec.loads(text) == json.loads(text)
    assert jsoncodec.loads(text.encode()) == json.loads(text)


def test_many_shallow_containers_are_fine() -> None:
    text = json.dumps({"hits": [{"_source": {"a": [1, {"b": []}]}} for _ in range(5000)]})
    assert jsoncodec.loads(text) == json.loads(text)


def test_utf16_input_is_still_bounded() -> None:
    for encoding in ("utf-16", "utf-32"):
        assert jsoncodec.loads(nested(LIMIT).encode(encoding)) == json.loads(nested(LIMIT))
        with pytest.raises(ValueError, match="nested"):
            jsoncodec.loads(nested(LIMIT + 1).encode(encoding))


def test_dumps_of_a_value_nested_past_the_limit_is_a_value_error() -> None:
    value: Any = 1
    for _ in range(5000):
        value = [value]
    with pytest.raises(ValueError, match="nested"):
        jsoncodec.dumps(value)


# -- the steps after the codec, on a document at the limit -----------------------------

RULE = RuleConfig(fields=("title", "blob"), window=3)
# root { hits { hits [ hit { _source {: five containers above the stored value `blob`.
ABOVE_BLOB = 5


def deep_response(kinds: str) -> dict[str, Any]:
    blob = json.loads(nested(LIMIT - ABOVE_BLOB, '"leaf"', kinds=kinds))
    hits = [
        {"_index": "i", "_id": str(i), "_score": 3.0 - i, "_source": {"title": "t", "blob": blob}}
        for i in range(3)
    ]
    doc = {"took": 1, "hits": {"total": {"value": 3}, "max_score": 3.0, "hits": hits}}
    # What the codec admits is exactly what these steps may see: this is at the limit.
    text = json.dumps(doc)
    parsed: dict[str, Any] = jsoncodec.loads(text)
    with pytest.raises(ValueError, match="nested"):
        jsoncodec.loads(text.replace('"leaf"', '["leaf"]'))
    return parsed


def plan(params: list[tuple[str, str]], body: dict[str, Any] | None = None) -> SearchPlan:
    made = plan_search({"query": {"match": {"title": "t"}}, **(body or {})}, params, RULE)
    assert isinstance(made, SearchPlan), made
    return made


# (id, URL params, body extras): each takes a different recursive path through the hits.
VIEWS: list[tuple[str, list[tuple[str, str]], dict[str, Any]]] = [
    ("plain", [], {}),
    ("source-includes", [("_source_includes", "blob.k.k,title")], {}),
    ("source-excludes", [("_source_excludes", "blob.k.k.k.x")], {}),
    ("source-excludes-wildcard", [], {"_source": {"excludes": ["*.zz"]}}),
    ("source-includes-wildcard", [], {"_source": ["*k*"]}),
    ("filter-path-include", [("filter_path", "hits.hits._source.blob.**")], {}),
    ("filter-path-include-leaf", [("filter_path", "**.k,took")], {}),
    ("filter-path-exclude", [("filter_path", "-hits.hits._source.**.zz")], {}),
    ("filter-path-exclude-deep", [("filter_path", "-**.k.k")], {}),
]


@pytest.mark.parametrize("kinds", ["[", "{", "[{"], ids=["arrays", "objects", "mixed"])
@pytest.mark.parametrize(("params", "body"), [c[1:] for c in VIEWS], ids=[c[0] for c in VIEWS])
def test_client_view_of_a_document_at_the_limit(
    kinds: str, params: list[tuple[str, str]], body: dict[str, Any]
) -> None:
    doc = deep_response(kinds)
    p = plan(params, body)
    view = client_view(doc, p)
    out = jsoncodec.dumps(view)  # and it serialises
    assert jsoncodec.loads(out) == view


@pytest.mark.parametrize("kinds", ["[", "{", "[{"], ids=["arrays", "objects", "mixed"])
def test_window_texts_of_a_document_at_the_limit(kinds: str) -> None:
    doc = deep_response(kinds)
    texts = window_texts(doc, plan([]))
    # Only arrays all the way down reach the leaf: a field's text is its values, not objects.
    assert texts == (["t\nleaf"] * 3 if kinds == "[" else ["t"] * 3)
    # every field, no rule fields: the same walk over whatever the source holds
    assert document_text(doc["hits"]["hits"][0]["_source"], RuleConfig()) is not None


@pytest.mark.parametrize("kinds", ["[", "{", "[{"], ids=["arrays", "objects", "mixed"])
def test_filters_alone_on_a_value_at_the_limit(kinds: str) -> None:
    value = jsoncodec.loads(nested(LIMIT, '"leaf"', kinds=kinds))
    for expression in ("**", "-**.zz", "**.k", "-k.k"):
        jsoncodec.dumps(apply_filter_path(value, expression))
    if isinstance(value, dict):
        for sf in (SourceFilter(includes=("k.k",)), SourceFilter(excludes=("*.zz",))):
            jsoncodec.dumps(sf.apply(value))


def _depth(value: Any) -> int:
    """Containers along the deepest path (iteratively: this must not recurse itself)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        node, level = todo.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, level)
            todo += [(v, level + 1) for v in (node.values() if isinstance(node, dict) else node)]
    return deepest


def _deep_bool(clause: Any, levels: int) -> Any:
    for _ in range(levels):
        clause = {"bool": {"must": [clause]}}
    return clause


# (id, search body at the limit): planning reads each of these parts.
DEEP_BODIES: list[tuple[str, Any]] = [
    ("bool-query", {"query": _deep_bool({"match": {"title": "t"}}, (LIMIT - 3) // 3)}),
    ("sort", {"query": {"match": {"title": "t"}}, "sort": json.loads(nested(LIMIT - 1, '"x"'))}),
    ("ext", {"query": {"match": {"title": "t"}}, "ext": json.loads(nested(LIMIT - 1))}),
    (
        "aggs",
        {"query": {"match": {"title": "t"}}, "aggs": json.loads(nested(LIMIT - 1, kinds="{"))},
    ),
]


@pytest.mark.parametrize("body", [c[1] for c in DEEP_BODIES], ids=[c[0] for c in DEEP_BODIES])
def test_planning_a_body_at_the_limit(body: Any) -> None:
    text = json.dumps(body)
    assert LIMIT - 3 <= _depth(body) <= LIMIT
    parsed = jsoncodec.loads(text)
    made = plan_search(parsed, [("filter_path", "hits.hits._id")], RULE)
    if isinstance(made, SearchPlan):
        assert jsoncodec.loads(jsoncodec.dumps(made.body))["size"] == made.fetch
