"""Table-driven tests for proxy.query_text (pure query-text extraction)."""

from __future__ import annotations

import pytest

from proxy.query_text import extract_query_text, query_from_q_param, strip_query_syntax


def _match(text: str, field: str = "title") -> dict[str, object]:
    return {"match": {field: text}}


# (id, query, expected) with text_fields=None.
EXTRACT_CASES: list[tuple[str, object, str | None]] = [
    # --- leaf full-text clauses -------------------------------------------------
    ("match-short", {"match": {"title": "quick fox"}}, "quick fox"),
    (
        "match-long",
        {"match": {"title": {"query": "quick fox", "fuzziness": 1}}},
        "quick fox",
    ),
    ("match-long-no-query", {"match": {"title": {"operator": "and"}}}, None),
    (
        "match-syntax-kept",
        {"match": {"title": "title:foo AND bar"}},
        "title:foo AND bar",
    ),
    ("match-phrase", {"match_phrase": {"body": "to be or not"}}, "to be or not"),
    (
        "match-phrase-long",
        {"match_phrase": {"body": {"query": "to be", "slop": 2}}},
        "to be",
    ),
    (
        "match-phrase-prefix",
        {"match_phrase_prefix": {"body": "quick bro"}},
        "quick bro",
    ),
    (
        "match-bool-prefix",
        {"match_bool_prefix": {"body": {"query": "quick bro"}}},
        "quick bro",
    ),
    (
        "multi-match",
        {"multi_match": {"query": "brown fox", "fields": ["title^2", "body"]}},
        "brown fox",
    ),
    (
        "combined-fields",
        {"combined_fields": {"query": "db tuning", "fields": ["a"]}},
        "db tuning",
    ),
    (
        "query-string",
        {"query_string": {"query": 'title:"new york" AND (pizza OR bagel)'}},
        "new york pizza bagel",
    ),
    (
        "simple-query-string",
        {"simple_query_string": {"query": '"fried eggs" +(eggplant | potato) -frittata'}},
        "fried eggs eggplant potato frittata",
    ),
    ("query-string-match-all", {"query_string": {"query": "*:*"}}, None),
    # --- non-string values --------------------------------------------------------
    ("match-int", {"match": {"year": 2024}}, None),
    ("match-float-long", {"match": {"price": {"query": 9.5}}}, None),
    ("match-bool-value", {"match": {"flag": True}}, None),
    ("match-null", {"match": {"title": None}}, None),
    ("multi-match-int", {"multi_match": {"query": 42, "fields": ["a"]}}, None),
    ("query-string-list", {"query_string": {"query": ["a", "b"]}}, None),
    # --- term / terms are ignored without text_fields -----------------------------
    ("term-ignored", {"term": {"title": "fox"}}, None),
    ("terms-ignored", {"terms": {"title": ["fox", "dog"]}}, None),
    # --- bool -----------------------------------------------------------------------
    ("bool-must-dict", {"bool": {"must": _match("alpha")}}, "alpha"),
    (
        "bool-must-list",
        {"bool": {"must": [_match("alpha"), _match("beta")]}},
        "alpha beta",
    ),
    (
        "bool-should",
        {"bool": {"should": [_match("gamma"), _match("delta")]}},
        "gamma delta",
    ),
    ("bool-filter-only", {"bool": {"filter": [_match("hidden")]}}, None),
    ("bool-must-not-only", {"bool": {"must_not": _match("hidden")}}, None),
    (
        "bool-excludes-filter-and-must-not",
        {
            "bool": {
                "must": _match("shown"),
                "filter": [_match("filtered"), {"term": {"status": "x"}}],
                "must_not": [_match("negated")],
                "should": [_match("also")],
                "minimum_should_match": 1,
            }
        },
        "shown also",
    ),
    (
        "bool-document-order",
        {"bool": {"should": _match("first"), "must": _match("second")}},
        "first second",
    ),
    (
        "bool-in-bool",
        {"bool": {"must": {"bool": {"should": [_match("deep"), _match("er")]}}}},
        "deep er",
    ),
    (
        "bool-filter-hides-nested-bool",
        {
            "bool": {
                "filter": {"bool": {"must": _match("hidden")}},
                "must": _match("ok"),
            }
        },
        "ok",
    ),
    # --- other compounds --------------------------------------------------------------
    (
        "dis-max",
        {
            "dis_max": {
                "queries": [_match("one"), {"match_phrase": {"b": "two"}}],
                "tie_breaker": 0.7,
            }
        },
        "one two",
    ),
    ("dis-max-dict", {"dis_max": {"queries": _match("solo")}}, "solo"),
    (
        "boosting-positive-only",
        {
            "boosting": {
                "positive": _match("apple"),
                "negative": _match("pie"),
                "negative_boost": 0.5,
            }
        },
        "apple",
    ),
    (
        "constant-score-filter",
        {"constant_score": {"filter": _match("steady"), "boost": 1.2}},
        "steady",
    ),
    (
        "function-score-query",
        {
            "function_score": {
                "query": _match("scored"),
                "functions": [{"filter": _match("fn-filter"), "weight": 2}],
            }
        },
        "scored",
    ),
    (
        "nested-query",
        {"nested": {"path": "comments", "query": _match("great")}},
        "great",
    ),
    ("has-child", {"has_child": {"type": "answer", "query": _match("child")}}, None),
    (
        "has-parent",
        {"has_parent": {"parent_type": "q", "query": _match("parent")}},
        None,
    ),
    (
        "has-child-beside-match",
        {
            "bool": {
                "must": [
                    {"has_child": {"type": "a", "query": _match("x")}},
                    _match("kept"),
                ]
            }
        },
        "kept",
    ),
    # --- nested combinations ------------------------------------------------------------
    (
        "bool-in-function-score-in-nested",
        {
            "nested": {
                "path": "p",
                "query": {
                    "function_score": {
                        "query": {
                            "bool": {
                                "must": [{"multi_match": {"query": "lorem"}}],
                                "should": {"query_string": {"query": "ipsum^2"}},
                                "filter": _match("no"),
                            }
                        }
                    }
                },
            }
        },
        "lorem ipsum",
    ),
    (
        "everything-wrapped",
        {
            "constant_score": {
                "filter": {
                    "dis_max": {
                        "queries": [
                            {
                                "boosting": {
                                    "positive": {"nested": {"path": "n", "query": _match("a1")}}
                                }
                            },
                            {
                                "bool": {
                                    "should": [
                                        _match("b2"),
                                        {"combined_fields": {"query": "c3"}},
                                    ]
                                }
                            },
                        ]
                    }
                }
            }
        },
        "a1 b2 c3",
    ),
    # --- dedupe and whitespace ------------------------------------------------------------
    (
        "dedupe-exact",
        {"bool": {"should": [_match("same text"), {"multi_match": {"query": "same text"}}]}},
        "same text",
    ),
    (
        "dedupe-after-whitespace",
        {"bool": {"should": [_match("same  text"), _match(" same\ttext\n")]}},
        "same text",
    ),
    (
        "dedupe-keeps-first-position",
        {"bool": {"should": [_match("a"), _match("b"), _match("a")]}},
        "a b",
    ),
    (
        "dedupe-case-sensitive",
        {"bool": {"should": [_match("Fox"), _match("fox")]}},
        "Fox fox",
    ),
    ("whitespace-collapse", _match("  lots \n of\t\tspace  "), "lots of space"),
    ("whitespace-only", _match(" \n\t "), None),
    ("empty-string", _match(""), None),
    (
        "empty-among-texts",
        {"bool": {"must": [_match(""), _match("real"), {"query_string": {"query": "()"}}]}},
        "real",
    ),
    # --- clauses that contribute nothing ------------------------------------------------------
    ("match-all", {"match_all": {}}, None),
    ("range", {"range": {"age": {"gte": 10}}}, None),
    ("exists", {"exists": {"field": "title"}}, None),
    ("ids", {"ids": {"values": ["1"]}}, None),
    ("knn", {"knn": {"field": "v", "query_vector": [0.1], "k": 3}}, None),
    ("script", {"script": {"script": {"source": "true"}}}, None),
    ("wildcard", {"wildcard": {"title": {"value": "fo*"}}}, None),
    ("prefix", {"prefix": {"title": "fo"}}, None),
    ("fuzzy", {"fuzzy": {"title": "fxo"}}, None),
    ("regexp", {"regexp": {"title": "f.o"}}, None),
    ("unknown-key", {"semantic_magic": {"query": "text"}}, None),
    (
        "unknown-beside-match",
        {
            "bool": {
                "must": [
                    {"range": {"a": {"lt": 1}}},
                    {"frob": {"query": "z"}},
                    _match("ok"),
                ]
            }
        },
        "ok",
    ),
    # --- malformed shapes: never raise ---------------------------------------------------------
    ("none", None, None),
    ("string-query", "just a string", None),
    ("int-query", 7, None),
    ("top-level-list", [_match("listed")], None),
    ("empty-dict", {}, None),
    ("match-body-list", {"match": ["title", "fox"]}, None),
    ("match-body-string", {"match": "fox"}, None),
    ("multi-match-body-list", {"multi_match": [{"query": "x"}]}, None),
    ("bool-body-list", {"bool": [{"must": _match("x")}]}, None),
    ("bool-must-string", {"bool": {"must": "fox"}}, None),
    ("bool-must-list-of-junk", {"bool": {"must": [1, "x", None, [_match("x")]]}}, None),
    (
        "malformed-beside-valid",
        {
            "bool": {
                "must": [
                    {"match": ["junk"]},
                    {"bool": 3},
                    {"nested": {"query": []}},
                    _match("ok"),
                ]
            }
        },
        "ok",
    ),
    ("dis-max-queries-string", {"dis_max": {"queries": "fox"}}, None),
    ("nested-query-int", {"nested": {"path": "p", "query": 1}}, None),
    ("non-string-key", {1: {"query": "x"}, "match": {"t": "y"}}, "y"),
    ("empty-nested-bool", {"bool": {"should": [{"bool": {"must": [{}]}}]}}, None),
]


@pytest.mark.parametrize(
    ("query", "expected"),
    [pytest.param(q, e, id=i) for i, q, e in EXTRACT_CASES],
)
def test_extract_query_text(query: object, expected: str | None) -> None:
    assert extract_query_text(query) == expected


TEXT_FIELDS = frozenset({"title", "tags"})

# (id, query, expected) with text_fields=TEXT_FIELDS.
TERM_CASES: list[tuple[str, object, str | None]] = [
    ("term-short", {"term": {"title": "fox"}}, "fox"),
    ("term-long", {"term": {"title": {"value": "fox", "boost": 2}}}, "fox"),
    ("term-other-field", {"term": {"status": "published"}}, None),
    ("term-int", {"term": {"title": 3}}, None),
    ("term-long-no-value", {"term": {"title": {"boost": 2}}}, None),
    ("terms-strings", {"terms": {"tags": ["red", "green"], "boost": 1.0}}, "red green"),
    (
        "terms-mixed-types",
        {"terms": {"tags": ["red", 5, None, True, "blue"]}},
        "red blue",
    ),
    ("terms-other-field", {"terms": {"colour": ["red"]}}, None),
    ("terms-lookup", {"terms": {"tags": {"index": "i", "id": "1", "path": "p"}}}, None),
    ("terms-not-list", {"terms": {"tags": "red"}}, None),
    (
        "term-in-bool-must",
        {"bool": {"must": [{"term": {"title": "fox"}}, _match("jumps")]}},
        "fox jumps",
    ),
    ("term-in-filter-ignored", {"bool": {"filter": {"term": {"title": "fox"}}}}, None),
    (
        "term-in-constant-score",
        {"constant_score": {"filter": {"terms": {"tags": ["x", "y"]}}}},
        "x y",
    ),
    (
        "term-dedupe-with-match",
        {"bool": {"should": [{"term": {"title": "fox"}}, _match("fox")]}},
        "fox",
    ),
    ("match-unaffected", _match("plain", field="body"), "plain"),
]


@pytest.mark.parametrize(
    ("query", "expected"),
    [pytest.param(q, e, id=i) for i, q, e in TERM_CASES],
)
def test_extract_query_text_with_text_fields(query: object, expected: str | None) -> None:
    assert extract_query_text(query, text_fields=TEXT_FIELDS) == expected


def test_empty_text_fields_ignores_terms() -> None:
    assert extract_query_text({"term": {"title": "fox"}}, text_fields=frozenset()) is None


def test_extreme_nesting_does_not_raise() -> None:
    query: dict[str, object] = _match("bottom")
    for _ in range(5000):
        query = {"bool": {"must": query}}
    assert extract_query_text(query) is None


def test_moderate_nesting_is_followed() -> None:
    query: dict[str, object] = _match("bottom")
    for _ in range(50):
        query = {"bool": {"must": query}}
    assert extract_query_text(query) == "bottom"


# (id, text, expected) for strip_query_syntax.
STRIP_CASES: list[tuple[str, str, str]] = [
    ("plain", "quick brown fox", "quick brown fox"),
    ("field-prefix", "title:foo bar", "foo bar"),
    ("dotted-field", "title.en:foo", "foo"),
    ("wildcard-field", "title.*:foo", "foo"),
    ("field-group", "title:(quick OR brown)", "quick brown"),
    ("field-phrase", 'body:"big data"', "big data"),
    ("and-or-not", "a AND b OR c NOT d", "a b c d"),
    ("lowercase-operators-are-words", "cats and dogs or not", "cats and dogs or not"),
    ("double-ampersand-pipe", "a && b || c", "a b c"),
    ("plus-minus", "+must -mustnot maybe", "must mustnot maybe"),
    ("bang", "!excluded kept", "excluded kept"),
    ("pipe", "eggplant | potato|leek", "eggplant potato leek"),
    ("inner-hyphen-kept", "e-mail well-known", "e-mail well-known"),
    ("quotes", '"exact phrase" more', "exact phrase more"),
    ("parentheses", "((a) (b c))", "a b c"),
    ("fuzzy", "roam~ foam~1 loam~0.8", "roam foam loam"),
    ("proximity", '"fox quick"~5 end', "fox quick end"),
    ("boost", "quick^2 fox^0.5", "quick fox"),
    ("group-boost", "(a b)^3 c", "a b c"),
    ("fuzzy-and-boost", "word~2^4", "word"),
    ("wildcards", "qu*ck f?x *", "quck fx"),
    ("escaped-colon", r"http\://example.com", "http://example.com"),
    ("escaped-specials", r"C\+\+ \(beta\) 1\/2", "C++ (beta) 1/2"),
    ("escaped-backslash", "a\\\\b", "a\\b"),
    ("escaped-space", r"new\ york", "new york"),
    ("escaped-quote", r"say \"hi\"", 'say "hi"'),
    ("escaped-star", r"5 \* 3", "5 * 3"),
    ("trailing-backslash", "end\\", "end"),
    ("inclusive-range", "date:[2012-01-01 TO 2012-12-31] news", "news"),
    ("exclusive-range", "count:{1 TO 5} items", "items"),
    ("mixed-range", "age:[10 TO 20} people", "people"),
    ("open-range", "price:[* TO 100] cheap", "cheap"),
    ("comparison-range", "age:>=10 adults age:<5", "adults"),
    ("exists", "_exists_:title hello", "hello"),
    ("regex", "name:/joh?n(ath[oa]n)/ smith", "smith"),
    ("slash-in-word-kept", "TCP/IP stack", "TCP/IP stack"),
    ("match-all", "*:*", ""),
    ("only-operators", "AND OR NOT && || + -", ""),
    ("empty", "", ""),
    ("whitespace", "  a \n\t b  ", "a b"),
    ("unicode", "título:café ñandú", "café ñandú"),
    (
        "kitchen-sink",
        'title:(+"new york"~2 -pizza^3) AND body:bagel* OR tags:[a TO b] NOT status:draft',
        "new york pizza bagel draft",
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [pytest.param(t, e, id=i) for i, t, e in STRIP_CASES],
)
def test_strip_query_syntax(text: str, expected: str) -> None:
    assert strip_query_syntax(text) == expected


# (id, q, expected) for query_from_q_param.
Q_PARAM_CASES: list[tuple[str, str, str | None]] = [
    ("field-and-bare", "title:foo bar", "foo bar"),
    ("bare-words", "foo bar", "foo bar"),
    ("phrase", '"hello world"', "hello world"),
    ("operators", "user:kimchy AND message:trying", "kimchy trying"),
    ("match-all", "*:*", None),
    ("star", "*", None),
    ("empty", "", None),
    ("blank", "   ", None),
    ("range-only", "date:[now-1d TO now]", None),
    ("boost-fuzzy", "elastic^2 serch~1", "elastic serch"),
]


@pytest.mark.parametrize(
    ("q", "expected"),
    [pytest.param(q, e, id=i) for i, q, e in Q_PARAM_CASES],
)
def test_query_from_q_param(q: str, expected: str | None) -> None:
    assert query_from_q_param(q) == expected


def test_query_string_clause_matches_q_param() -> None:
    q = 'title:"deep learning" AND (gpu OR tpu)^2'
    assert extract_query_text({"query_string": {"query": q}}) == query_from_q_param(q)
