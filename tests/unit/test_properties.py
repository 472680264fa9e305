"""Property tests (hypothesis) for the pure parts every search goes through.

The table-driven tests (test_jsoncodec, test_strict_json, test_query_text, test_search) pin
known cases; these state what must hold for any input:

- `jsoncodec`: any JSON value round-trips (`loads(dumps(x)) == x`, types and the sign of zero
  included), its bytes are UTF-8 that `json.loads` reads back to the same value, and reading
  any text agrees with `json.loads` made as strict as the engines (duplicate keys and
  `NaN`/`Infinity` rejected). Nesting past `MAX_DEPTH` is the codec's own `TooDeep`, never a
  `RecursionError`, whatever the shape; broken deep text is a `ValueError`.
- `query_text`: extraction never raises, gives `None` or whitespace-normalised text, is
  deterministic, finds the one match/multi_match clause wherever a scoring slot puts it
  and never inside a filter-only slot, and composes (a `bool` holds exactly the words of its
  clauses).
- `plan_search`: any JSON body with any parameters gives a `SearchPlan` or a `Skip`, never an
  exception; a plan obeys its docstring (window from 0, query text bounded by
  `MAX_QUERY_CHARS`, the client's other keys untouched, the input not mutated), and the
  `_source` it asks for keeps the reranker's fields while the client still gets exactly
  its own filter's view.

Two proxy bugs found here and by tests/e2e/test_differential.py are fixed and pinned here:
the integer `-0` came back as `0`, and a `filter_path` exclusion kept an empty container it
walks into where the engines drop it.
"""

from __future__ import annotations

import copy
import json
import math
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from proxy import jsoncodec
from proxy.answer import client_view
from proxy.config import RuleConfig
from proxy.filtering import (
    SourceFilter,
    apply_filter_path,
    source_filter_from_body,
    source_filter_from_params,
)
from proxy.jsoncodec import MAX_DEPTH, RawFloat, TooDeep
from proxy.outcome import Reason
from proxy.plan import MAX_QUERY_CHARS, SearchPlan, Skip, plan_search
from proxy.query_text import extract_query_text, query_from_q_param, strip_query_syntax
from proxy.score import document_text

FAST = settings(
    max_examples=150,
    deadline=None,
    database=None,  # nothing written into the checkout
    derandomize=bool(os.environ.get("CI")),  # CI: the same examples each run; here: new ones
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FEW = settings(FAST, max_examples=30)

# -- JSON values --------------------------------------------------------------------------

# Every code point, lone surrogates included (an escaped `\ud800` is valid JSON text).
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
finite_floats = st.floats(allow_nan=False, allow_infinity=False)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), finite_floats, any_text)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=16,
)


def same(a: Any, b: Any) -> bool:
    """Equal as JSON values, kind by kind: 1 is not 1.0, True is not 1, -0.0 is not 0.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, float) or isinstance(b, float):
        return (
            isinstance(a, float)
            and isinstance(b, float)
            and a == b
            and math.copysign(1, a) == math.copysign(1, b)
        )
    if isinstance(a, dict):
        return (
            isinstance(b, dict) and list(a) == list(b) and all(same(v, b[k]) for k, v in a.items())
        )
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, int) and isinstance(b, int):  # the codec's `-0` is an int subclass
        return a == b
    return type(a) is type(b) and a == b


def _strict_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key")
    return dict(pairs)


def _no_constant(name: str) -> Any:
    raise ValueError(name)


def reference_loads(text: str | bytes) -> Any:
    """The standard parser, as strict as the engines' (Jackson)."""
    return json.loads(text, object_pairs_hook=_strict_pairs, parse_constant=_no_constant)


def outcome(parse: Any, text: str | bytes) -> tuple[str, Any]:
    try:
        return "ok", parse(text)
    except ValueError:
        return "error", None


@FAST
@given(json_values)
def test_any_value_round_trips_through_the_codec(value: Any) -> None:
    data = jsoncodec.dumps(value)
    data.decode("utf-8")  # always UTF-8, lone surrogates written as escapes
    assert same(jsoncodec.loads(data), value)
    assert same(jsoncodec.loads(data.decode("utf-8")), value)
    assert same(json.loads(data), value)
    assert jsoncodec.dumps(jsoncodec.loads(data)) == data  # the second trip changes nothing


@FAST
@given(
    json_values,
    st.booleans(),
    st.sampled_from([None, 0, 2]),
    st.sampled_from([(",", ":"), (", ", ": ")]),
)
def test_reading_any_spelling_agrees_with_the_standard_parser(
    value: Any, ascii_only: bool, indent: int | None, separators: tuple[str, str]
) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only, indent=indent, separators=separators)
    expected = json.loads(text)
    assert same(jsoncodec.loads(text), expected)
    assert same(jsoncodec.loads(text.encode("utf-8", "surrogatepass")), expected)
    if ascii_only:  # pure ASCII: the UTF-16/32 forms exist too, and read the same
        for encoding in ("utf-16", "utf-32", "utf-16-le", "utf-32-be"):
            assert same(jsoncodec.loads(text.encode(encoding)), expected)


# JSON numbers as an engine may spell them: any size, any exponent form.
number_texts = st.from_regex(
    r"-?(0|[1-9][0-9]{0,40})(\.[0-9]{1,20})?([eE][+-]?[0-9]{1,3})?", fullmatch=True
)


def _not_minus_zero(spelling: str) -> bool:
    return spelling != "-0"  # see test_integer_minus_zero_keeps_its_sign


@FAST
@given(
    st.lists(number_texts.filter(_not_minus_zero), min_size=1, max_size=4),
    st.sampled_from(["[{}]", '{{"f":[{}]}}']),
)
def test_numbers_are_written_back_as_they_were_spelled(spellings: list[str], wrap: str) -> None:
    text = wrap.format(",".join(spellings))
    assert jsoncodec.dumps(jsoncodec.loads(text)) == text.encode()
    assert same(jsoncodec.loads(text), json.loads(text))
    for spelling in spellings:
        value = jsoncodec.loads(spelling)
        if isinstance(value, RawFloat):
            assert value.text == spelling and value == float(spelling)
            assert repr(float(spelling)) != spelling  # Python's own spelling: a plain float
        elif type(value) is float:
            assert repr(value) == spelling
        else:
            assert type(value) is int and value == int(spelling)


@pytest.mark.parametrize("text", ["-0", '{"n":-0}', "[1,-0,2]"])
def test_integer_minus_zero_keeps_its_sign(text: str) -> None:
    assert jsoncodec.dumps(jsoncodec.loads(text)) == text.encode()


# Pieces that make text almost JSON: what breaks it, and what only looks like it does.
NOISE = st.sampled_from(
    [
        "NaN",
        "Infinity",
        "-Infinity",
        ",",
        "}",
        "]",
        "[",
        "{",
        '"a":1,',
        '"a":1',
        " ",
        "\n",
        "x",
        "\\",
        '"',
        "1e400",
        "-0",
        "01",
        "1.",
        ".5",
        "tru",
        "null",
        "\\ud800",
        "\ufeff",
    ]
)


@st.composite
def almost_json(draw: st.DrawFn) -> str:
    text = json.dumps(draw(json_values), ensure_ascii=draw(st.booleans()))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(NOISE) + text[at:]
    return text


@FAST
@given(almost_json())
def test_reading_any_text_agrees_with_the_strict_standard_parser(text: str) -> None:
    """Accepted or rejected as the strict standard parser decides, with the same value."""
    # Each form against the standard parser given the same form: bytes may open with a
    # UTF-8 byte order mark, which it skips (as Jackson does); a str may not.
    for data in (text, text.encode("utf-8", "surrogatepass")):
        expected = outcome(reference_loads, data)
        got = outcome(jsoncodec.loads, data)
        assert got[0] == expected[0], (text, got, expected)
        if got[0] == "ok":
            assert same(got[1], expected[1])


non_empty_objects = st.dictionaries(any_text, json_values, min_size=1, max_size=4)


@FAST
@given(non_empty_objects, st.data())
def test_a_repeated_key_anywhere_is_rejected(obj: dict[str, Any], data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(list(obj)))
    dup = json.dumps(key) + ":" + json.dumps(data.draw(json_values)) + ","
    inner = json.dumps(obj)
    wrap = data.draw(st.sampled_from(["{}", '{{"outer":{}}}', "[1,{}]", '[{{"a":[{}]}}]']))
    text = wrap.format("{" + dup + inner[1:])
    for blob in (text, text.encode("utf-8", "surrogatepass")):
        with pytest.raises(ValueError, match="duplicate key"):
            jsoncodec.loads(blob)


@FAST
@given(json_values, st.sampled_from(["NaN", "Infinity", "-Infinity"]), st.data())
def test_nan_and_infinity_are_rejected_wherever_they_stand(
    value: Any, constant: str, data: st.DataObject
) -> None:
    text = json.dumps([value, {"k": "v"}])
    # Replace one value slot (the `"v"`, or wrap alongside) with the constant.
    text = text.replace('"v"', constant) if data.draw(st.booleans()) else f"[{constant},{text}]"
    with pytest.raises(ValueError):
        jsoncodec.loads(text)


@FAST
@given(
    st.one_of(st.lists(json_values, max_size=3), st.dictionaries(any_text, json_values)),
    st.sampled_from(["x", "}", "]", ",", "1", '"s"', "{}", "[]", "null", "NaN", "/"]),
    st.sampled_from(["", " ", "\n"]),
)
def test_trailing_garbage_is_rejected(value: Any, garbage: str, gap: str) -> None:
    text = json.dumps(value) + gap + garbage
    for blob in (text, text.encode("utf-8", "surrogatepass")):
        with pytest.raises(ValueError):
            jsoncodec.loads(blob)
    assert same(jsoncodec.loads(json.dumps(value) + gap), value)  # whitespace is fine


def _nest(kinds: list[str], inner: str, key: str) -> str:
    opens = "".join("[" if k == "[" else "{" + json.dumps(key) + ":" for k in kinds)
    closes = "".join("]" if k == "[" else "}" for k in reversed(kinds))
    return opens + inner + closes


@FEW
@given(
    st.integers(MAX_DEPTH - 2, MAX_DEPTH + 2) | st.integers(1, 3 * MAX_DEPTH),
    st.lists(st.sampled_from("[{"), min_size=1, max_size=5),
    st.sampled_from(["k", "[[[", "{{", '\\"[', "\\\\", "]}]}", "ü\\u005b"]),
    st.sampled_from(["1", '"leaf"', "[]", "{}", '"[{[{"']),
)
def test_depth_limit_is_exact_and_raises_the_codecs_own_error(
    depth: int, pattern: list[str], key: str, inner: str
) -> None:
    """Containers nested `depth` deep (brackets in strings don't count): parsed up to
    `MAX_DEPTH`, `TooDeep` past it, for `loads` and `dumps` alike."""
    kinds = (pattern * depth)[:depth]
    extra = 1 if inner in ("[]", "{}") else 0  # an empty container is one level more
    text = _nest(kinds, inner, key)
    if depth + extra <= MAX_DEPTH:
        value = jsoncodec.loads(text)
        assert same(value, json.loads(text))
        assert jsoncodec.loads(jsoncodec.dumps(value)) == value
    else:
        for blob in (text, text.encode(), text.encode("utf-16")):
            with pytest.raises(TooDeep):
                jsoncodec.loads(blob)
        value: Any = json.loads(inner)
        for _ in range(depth):
            value = [value]
        with pytest.raises(TooDeep):
            jsoncodec.dumps(value)


@FEW
@given(
    st.text(st.sampled_from('[]{}",:1\\ a'), min_size=1, max_size=6),
    st.integers(1, 20_000),
    st.text(st.sampled_from('[]{}",:1\\ a'), max_size=6),
)
def test_no_text_makes_the_codec_recurse_too_deep(unit: str, times: int, tail: str) -> None:
    """Repeated fragments of JSON syntax, balanced or not: a value or a ValueError."""
    text = (unit * times)[:40_000] + tail
    try:
        jsoncodec.loads(text)
    except ValueError:
        pass


# -- query text ---------------------------------------------------------------------------

SCORING_WRAPS = (
    lambda q: {"bool": {"must": [q]}},
    lambda q: {"bool": {"should": q}},
    lambda q: {"bool": {"must": [{"match_all": {}}, q], "filter": [{"range": {"n": {"gt": 1}}}]}},
    lambda q: {"dis_max": {"queries": [{"exists": {"field": "x"}}, q]}},
    lambda q: {"boosting": {"positive": q, "negative": {"match_all": {}}, "negative_boost": 0.5}},
    lambda q: {"constant_score": {"filter": q, "boost": 2}},
    lambda q: {"function_score": {"query": q, "functions": [{"weight": 2}]}},
    lambda q: {"nested": {"path": "p", "query": q}},
)
FILTER_WRAPS = (
    lambda q: {"bool": {"filter": [q]}},
    lambda q: {"bool": {"must_not": q, "must": {"match_all": {}}}},
    lambda q: {"boosting": {"positive": {"match_all": {}}, "negative": q}},
    lambda q: {"has_child": {"type": "c", "query": q}},
    lambda q: {"has_parent": {"parent_type": "p", "query": q}},
    lambda q: {"function_score": {"functions": [{"filter": q, "weight": 2}]}},
)
QUIET = st.sampled_from(
    [
        {"match_all": {}},
        {"range": {"n": {"gte": 1}}},
        {"exists": {"field": "title"}},
        {"term": {"tag": "x"}},
        {"ids": {"values": ["1"]}},
    ]
)
words = st.text(st.characters(codec=None, exclude_categories=()), max_size=30)


@st.composite
def text_clause(draw: st.DrawFn, text: str) -> dict[str, Any]:
    field = draw(st.sampled_from(["title", "text", "a.b", ""]))
    return draw(
        st.sampled_from(
            [
                {"match": {field: text}},
                {"match": {field: {"query": text, "operator": "and"}}},
                {"match_phrase": {field: {"query": text, "slop": 1}}},
                {"match_bool_prefix": {field: text}},
                {"multi_match": {"query": text, "fields": ["title", "text"]}},
                {"combined_fields": {"query": text, "fields": ["title"]}},
            ]
        )
    )


@st.composite
def placed(draw: st.DrawFn, text: str, wraps: tuple[Any, ...]) -> Any:
    query = draw(text_clause(text))
    for _ in range(draw(st.integers(0, 12))):
        query = draw(st.sampled_from(wraps))(query)
        if draw(st.booleans()):  # quiet siblings around it
            query = {"bool": {"must": [draw(QUIET), query], "filter": draw(QUIET)}}
    return query


def normalised(text: str) -> str:
    return " ".join(text.split())


@FAST
@given(words, st.data())
def test_the_one_text_clause_is_found_in_any_scoring_slot(text: str, data: st.DataObject) -> None:
    query = data.draw(placed(text, SCORING_WRAPS))
    assert extract_query_text(query) == (normalised(text) or None)


@FAST
@given(words, st.data())
def test_a_text_clause_inside_a_filter_only_slot_is_never_the_query(
    text: str, data: st.DataObject
) -> None:
    clause = data.draw(placed(text, SCORING_WRAPS))
    query = data.draw(st.sampled_from(FILTER_WRAPS))(clause)
    for _ in range(data.draw(st.integers(0, 3))):
        query = data.draw(st.sampled_from(SCORING_WRAPS))(query)
    assert extract_query_text(query) is None


DSL_KEYS = st.sampled_from(
    [
        "match",
        "match_phrase",
        "multi_match",
        "combined_fields",
        "query_string",
        "simple_query_string",
        "term",
        "terms",
        "bool",
        "must",
        "should",
        "filter",
        "must_not",
        "dis_max",
        "queries",
        "boosting",
        "positive",
        "negative",
        "constant_score",
        "function_score",
        "nested",
        "has_child",
        "query",
        "value",
        "title",
        "text",
    ]
)
query_trees = st.recursive(
    scalars | words,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(DSL_KEYS | any_text, inner, max_size=3)
    ),
    max_leaves=30,
)
TEXT_FIELDS = st.none() | st.frozensets(st.sampled_from(["title", "text", "value", ""]))


def word_set(text: str | None) -> set[str]:
    return set(text.split()) if text else set()


@FAST
@given(query_trees | json_values, TEXT_FIELDS)
def test_extraction_never_raises_and_is_normalised_and_deterministic(
    query: Any, text_fields: frozenset[str] | None
) -> None:
    before = copy.deepcopy(query)
    got = extract_query_text(query, text_fields=text_fields)
    assert got is None or (isinstance(got, str) and got and got == normalised(got))
    assert extract_query_text(copy.deepcopy(query), text_fields=text_fields) == got
    assert repr(query) == repr(before)  # read, never changed
    # `term`/`terms` on the given fields only ever add text.
    assert word_set(extract_query_text(query)) <= word_set(got)


@FAST
@given(st.lists(query_trees, min_size=1, max_size=4), st.sampled_from(["must", "should"]))
def test_a_bool_holds_exactly_the_words_of_its_scoring_clauses(
    clauses: list[Any], slot: str
) -> None:
    combined = extract_query_text({"bool": {slot: clauses, "filter": clauses}})
    parts = [extract_query_text(c) for c in clauses if isinstance(c, dict)]
    assert word_set(combined) == set().union(*map(word_set, parts))


@FAST
@given(words)
def test_q_parameter_and_query_string_read_the_same_words(q: str) -> None:
    got = query_from_q_param(q)
    assert got == (strip_query_syntax(q) or None)
    assert got is None or got == normalised(got)
    assert extract_query_text({"query_string": {"query": q}}) == got
    assert extract_query_text({"simple_query_string": {"query": q}}) == got


@FAST
@given(st.lists(st.from_regex(r"[A-Za-z0-9]{1,8}", fullmatch=True), min_size=1, max_size=6))
def test_plain_words_are_no_query_syntax(tokens: list[str]) -> None:
    assume(not {"AND", "OR", "NOT"} & set(tokens))
    assert strip_query_syntax("  ".join(tokens)) == " ".join(tokens)


# -- planning -----------------------------------------------------------------------------

PARAM_NAMES = st.sampled_from(
    [
        "from",
        "size",
        "filter_path",
        "_source",
        "_source_includes",
        "_source_excludes",
        "rerank",
        "scroll",
        "sort",
        "explain",
        "stored_fields",
        "q",
        "typed_keys",
    ]
)
PARAM_VALUES = st.one_of(
    st.sampled_from(["", "10", " 10", "-1", "0", "+5", "2147483648", "true", "false", "-"]),
    st.sampled_from(["_score", "_score:desc", "n:asc", "title,-text", "**.title", "t*"]),
    st.text(max_size=12),
)
params = st.lists(st.tuples(PARAM_NAMES | st.text(max_size=6), PARAM_VALUES), max_size=5)
BODY_KEYS = st.sampled_from(
    [
        "query",
        "from",
        "size",
        "sort",
        "_source",
        "explain",
        "profile",
        "scroll",
        "search_after",
        "pit",
        "rescore",
        "collapse",
        "knn",
        "aggs",
        "highlight",
        "track_total_hits",
        "ext",
    ]
)
body_values = st.one_of(
    json_values,
    query_trees,
    st.sampled_from([0, 1, 10, 29, 30, 31, -1, 2**31, "10", " 10 ", 10.0, True, None]),
    st.sampled_from([["_score"], {"_score": "desc"}, "_score", [{"n": "asc"}]]),
)
bodies = st.one_of(
    json_values, st.none(), st.dictionaries(BODY_KEYS | any_text, body_values, max_size=6)
)
rules = st.builds(
    lambda window, fields, query_path: RuleConfig(
        window=window, fields=fields, query_path=query_path
    ),
    st.integers(1, 60),
    st.sampled_from([(), ("title",), ("title", "text"), ("meta.title", "body")]),
    st.sampled_from([None, "/ext/text", "/query/match/title", "/a~1b/0"]),
)


@FAST
@given(bodies, params, rules, st.none() | any_text)
def test_any_body_and_parameters_plan_or_skip_and_never_raise(
    body: Any, ps: list[tuple[str, str]], rule: RuleConfig, override: str | None
) -> None:
    before = copy.deepcopy(body)
    made = plan_search(body, ps, rule, query_override=override)
    assert repr(body) == repr(before)  # pure: the client's body is not changed
    assert isinstance(made, (SearchPlan, Skip))
    assert repr(plan_search(body, ps, rule, query_override=override)) == repr(made)
    if isinstance(made, Skip):
        return
    assert isinstance(body, dict) or body is None
    assert 0 <= made.from_ < rule.window and made.size >= 1
    assert made.body["from"] == 0
    assert made.fetch == made.body["size"] == max(rule.window, made.from_ + made.size)
    assert made.query and len(made.query) <= MAX_QUERY_CHARS
    for key, value in (body or {}).items():
        if key not in ("from", "size", "_source"):
            assert made.body[key] is value
    jsoncodec.dumps(made.body)  # what is sent upstream serialises


@FAST
@given(words.filter(str.strip), st.integers(1, 3), rules)
def test_plan_query_text_is_the_extracted_text_bounded(
    text: str, repeat: int, rule: RuleConfig
) -> None:
    long_text = " ".join([text] * repeat * (MAX_QUERY_CHARS // max(1, len(text)) + 1))
    body = {"query": {"bool": {"should": [{"match": {"title": long_text}}]}}}
    made = plan_search(body, [], rule)
    assert isinstance(made, SearchPlan)
    expected = extract_query_text(body["query"])
    assert expected is not None
    assert made.query == expected[:MAX_QUERY_CHARS]


SOURCE_PATHS = st.sampled_from(
    ["title", "text", "meta", "meta.title", "meta.*", "*", "t*", "*itle", "*.title", "a", "a.b"]
)
source_patterns = st.lists(SOURCE_PATHS, max_size=3)
source_specs = st.one_of(
    st.booleans(),
    SOURCE_PATHS,
    source_patterns,
    st.builds(
        lambda inc, exc: {k: v for k, v in (("includes", inc), ("excludes", exc)) if v},
        source_patterns,
        source_patterns,
    ),
)
source_params = st.lists(
    st.tuples(
        st.sampled_from(["_source", "_source_includes", "_source_excludes"]),
        st.one_of(st.sampled_from(["true", "false"]), source_patterns.map(",".join)),
    ),
    max_size=2,
)
leaf = st.one_of(st.text(max_size=5), st.integers(), st.none())
source_docs = st.recursive(
    leaf,
    lambda inner: (
        st.lists(inner, max_size=2)
        | st.dictionaries(st.sampled_from(["title", "text", "meta", "a", "b", "a.b"]), inner)
    ),
    max_leaves=12,
).map(lambda v: v if isinstance(v, dict) else {"title": v})


def _as_filter(spec: Any) -> SourceFilter:
    if spec in (None, True):
        return SourceFilter()
    made = source_filter_from_body(spec)
    assert made is not None
    return made


@FAST
@given(
    st.none() | source_specs,
    source_params,
    st.sampled_from([("title",), ("title", "text"), ("meta.title",), ("text", "meta")]),
    source_docs,
)
def test_the_widened_source_feeds_the_reranker_and_the_client_sees_its_own_view(
    spec: Any, ps: list[tuple[str, str]], fields: tuple[str, ...], source: dict[str, Any]
) -> None:
    rule = RuleConfig(fields=fields, window=5)
    body: dict[str, Any] = {"query": {"match": {"title": "fox"}}}
    if spec is not None:
        body["_source"] = spec
    made = plan_search(body, ps, rule)
    client = source_filter_from_params(ps) or source_filter_from_body(spec) or SourceFilter()
    in_body = source_filter_from_body(spec) or SourceFilter()
    if any(set(f.includes) & set(f.excludes) for f in (client, in_body)):
        # the engine's to answer (OpenSearch 3: 400, in the body even under a URL parameter)
        assert made == Skip(Reason.BAD_SOURCE)
        return
    assert isinstance(made, SearchPlan)
    engine_source = _as_filter(made.body.get("_source", True)).apply(source)
    # The engine's answer to the widened search still has every text the model reads ...
    assert document_text(engine_source, rule) == document_text(source, rule)
    # ... and the client gets what its own parameters ask of the stored source.
    doc = {"hits": {"hits": [{"_id": "1", "_score": 1.0, "_source": engine_source}]}}
    seen = client_view(doc, made)["hits"]["hits"][0]
    if client.enabled:
        assert seen["_source"] == client.apply(source)
    else:
        assert "_source" not in seen


# -- filter_path: empty containers, as OpenSearch 2.19 and Elasticsearch 7.10 answer -------
# (observed on both with real searches: see tests/e2e/test_differential.py)

EMPTY = {"total": {"value": 0}, "hits": []}


@pytest.mark.parametrize(
    ("doc", "expression", "engine"),
    [
        ({"took": 1, "hits": EMPTY}, "-took", {"hits": EMPTY}),
        ({"took": 1, "hits": EMPTY}, "-hits.x", {"took": 1, "hits": EMPTY}),
    ],
    ids=["untouched-by-took", "not-reached"],
)
def test_an_exclusion_keeps_the_empty_containers_it_does_not_reach(
    doc: Any, expression: str, engine: Any
) -> None:
    assert apply_filter_path(doc, expression) == engine


@pytest.mark.parametrize(
    ("doc", "expression", "engine"),
    [
        (
            {"took": 1, "hits": EMPTY},
            "-hits.hits._source",
            {"took": 1, "hits": {"total": {"value": 0}}},
        ),
        (
            {"hits": {"hits": [{"_id": "1", "_source": {}}]}},
            "-hits.hits._source.x",
            {"hits": {"hits": [{"_id": "1"}]}},
        ),
        ({"took": 1, "hits": EMPTY}, "-**._source", {"took": 1, "hits": {"total": {"value": 0}}}),
    ],
    ids=["no-hits", "emptied-source", "any-depth"],
)
def test_an_exclusion_drops_the_empty_containers_it_walks_into(
    doc: Any, expression: str, engine: Any
) -> None:
    assert apply_filter_path(doc, expression) == engine
