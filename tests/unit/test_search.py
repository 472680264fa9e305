"""Table-driven tests for the pure search steps: planning (proxy.plan), window texts and the
permutation (proxy.score), and the client view (proxy.answer)."""

from __future__ import annotations

import copy
import dataclasses
import random
from typing import Any

import pytest

from proxy.answer import ENGINE_SCORE_FIELD, client_view
from proxy.config import RuleConfig
from proxy.filtering import SourceFilter
from proxy.plan import (
    PLAN_PARAMS,
    SearchPlan,
    Skip,
    plan_search,
    rerankable_response,
)
from proxy.score import (
    document_text,
    field_text,
    rank,
    window_texts,
)

MATCH = {"match": {"title": "quick fox"}}
RULE = RuleConfig(fields=("title",))


def plan_of(
    body: Any,
    params: list[tuple[str, str]] | None = None,
    rule: RuleConfig = RULE,
    override: str | None = None,
) -> SearchPlan:
    plan = plan_search(body, params or [], rule, query_override=override)
    assert isinstance(plan, SearchPlan), plan
    return plan


# -- every pass-through reason ------------------------------------------------------------


def _q(**extra: Any) -> dict[str, Any]:
    return {"query": MATCH, **extra}


# (id, body, params, rule, reason)
SKIPS: list[tuple[str, Any, list[tuple[str, str]], RuleConfig, str]] = [
    ("scroll-param", _q(), [("scroll", "1m")], RULE, "scroll"),
    ("scroll-param-blank", _q(), [("scroll", "")], RULE, "scroll"),
    ("search-after", _q(search_after=[1, "a"], sort=["_score"]), [], RULE, "search_after"),
    ("pit", _q(pit={"id": "x"}), [], RULE, "pit"),
    ("slice", _q(slice={"id": 0, "max": 2}), [], RULE, "slice"),
    ("sort-field-body", _q(sort=[{"date": "desc"}]), [], RULE, "sort"),
    ("sort-field-string-body", _q(sort="date"), [], RULE, "sort"),
    ("sort-score-then-field", _q(sort=["_score", "date"]), [], RULE, "sort"),
    ("sort-score-asc-body", _q(sort={"_score": "asc"}), [], RULE, "sort"),
    ("sort-score-asc-object", _q(sort=[{"_score": {"order": "asc"}}]), [], RULE, "sort"),
    ("sort-score-bad-order", _q(sort={"_score": {"order": 1}}), [], RULE, "sort"),
    ("sort-empty-list", _q(sort=[]), [], RULE, "sort"),
    ("sort-param-field", _q(), [("sort", "date:desc")], RULE, "sort"),
    ("sort-param-score-asc", _q(), [("sort", "_score:asc")], RULE, "sort"),
    ("sort-param-list", _q(), [("sort", "_score:desc,date:asc")], RULE, "sort"),
    ("sort-param-blank", _q(), [("sort", "")], RULE, "sort"),
    ("size-0-body", _q(size=0), [], RULE, "size_0"),
    ("size-0-param", _q(size=10), [("size", "0")], RULE, "size_0"),
    ("rescore", _q(rescore={"window_size": 10, "query": {}}), [], RULE, "rescore"),
    ("retriever", {"retriever": {"standard": {"query": MATCH}}}, [], RULE, "retriever"),
    ("knn-top-level", _q(knn={"field": "v", "query_vector": [1.0]}), [], RULE, "knn"),
    ("rank-rrf", _q(rank={"rrf": {}}), [], RULE, "rank"),
    ("collapse", _q(collapse={"field": "user"}), [], RULE, "collapse"),
    ("explain-body", _q(explain=True), [], RULE, "explain"),
    ("explain-param", _q(), [("explain", "true")], RULE, "explain"),
    ("explain-param-no-value", _q(), [("explain", "")], RULE, "explain"),
    ("profile", _q(profile=True), [], RULE, "profile"),
    ("stored-fields-body", _q(stored_fields=["_none_"]), [], RULE, "stored_fields"),
    ("stored-fields-param", _q(), [("stored_fields", "a")], RULE, "stored_fields"),
    ("hybrid-query", {"query": {"hybrid": {"queries": [MATCH]}}}, [], RULE, "query_type"),
    ("knn-query", {"query": {"knn": {"v": {"vector": [1.0], "k": 3}}}}, [], RULE, "query_type"),
    ("neural-query", {"query": {"neural": {"v": {"query_text": "x"}}}}, [], RULE, "query_type"),
    ("rerank-false", _q(), [("rerank", "false")], RULE, "client_off"),
    ("rerank-0", _q(), [("rerank", "0")], RULE, "client_off"),
    ("rerank-off-any-case", _q(), [("rerank", "OFF")], RULE, "client_off"),
    ("disabled-rule", _q(), [], RuleConfig(enabled=False), "disabled"),
    ("past-window", _q(**{"from": 50}), [], RULE, "past_window"),
    ("past-window-param", _q(), [("from", "60")], RULE, "past_window"),
    ("past-small-window", _q(**{"from": 5}), [], RuleConfig(window=5), "past_window"),
    ("no-query", {}, [], RULE, "no_query_text"),
    ("no-body", None, [], RULE, "no_query_text"),
    ("match-all", {"query": {"match_all": {}}}, [], RULE, "no_query_text"),
    ("filter-only", {"query": {"bool": {"filter": [MATCH]}}}, [], RULE, "no_query_text"),
    ("blank-q", None, [("q", "  ")], RULE, "no_query_text"),
    ("from-negative", _q(**{"from": -1}), [], RULE, "bad_from_size"),
    ("size-negative", _q(size=-1), [], RULE, "bad_from_size"),
    ("size-word", _q(), [("size", "ten")], RULE, "bad_from_size"),
    ("size-blank-param", _q(), [("size", "")], RULE, "bad_from_size"),
    ("size-double-minus", _q(), [("size", "--5")], RULE, "bad_from_size"),
    ("from-non-ascii-digit", _q(), [("from", "٣")], RULE, "bad_from_size"),
    ("size-float", _q(size=2.5), [], RULE, "bad_from_size"),
    ("from-bool", _q(**{"from": True}), [], RULE, "bad_from_size"),
    # URL parameters are read as Java's Integer.parseInt reads them: no spaces, an int.
    ("param-with-spaces", _q(), [("size", " 7 ")], RULE, "bad_from_size"),
    ("from-param-leading-space", _q(), [("from", " 10")], RULE, "bad_from_size"),
    ("size-param-trailing-newline", _q(), [("size", "3\n")], RULE, "bad_from_size"),
    ("size-param-past-int", _q(), [("size", "2147483648")], RULE, "bad_from_size"),
    ("from-param-past-int", _q(), [("from", "99999999999")], RULE, "bad_from_size"),
    ("size-param-exponent", _q(), [("size", "1e1")], RULE, "bad_from_size"),
    ("size-body-past-int", _q(size=2**31), [], RULE, "bad_from_size"),
    ("size-body-string-nbsp", _q(size="\u00a03"), [], RULE, "bad_from_size"),
    # `filter_path` the engines reject: a bare `-` is "filters cannot be null or empty".
    ("filter-path-bare-dash", _q(), [("filter_path", "-")], RULE, "bad_filter_path"),
    ("filter-path-spaced-dash", _q(), [("filter_path", " - ")], RULE, "bad_filter_path"),
    ("filter-path-dash-item", _q(), [("filter_path", "took, - ")], RULE, "bad_filter_path"),
    (
        "filter-path-repeated-one-bad",
        _q(),
        [("filter_path", "-"), ("filter_path", "took")],
        RULE,
        "bad_filter_path",
    ),
    ("body-list", [MATCH], [], RULE, "unparsable_body"),
    ("bad-source-key", _q(_source={"fields": ["a"]}), [], RULE, "bad_source"),
    ("bad-source-type", _q(_source=5), [], RULE, "bad_source"),
]


@pytest.mark.parametrize(
    ("body", "params", "rule", "reason"), [c[1:] for c in SKIPS], ids=[c[0] for c in SKIPS]
)
def test_pass_through_reasons(
    body: Any, params: list[tuple[str, str]], rule: RuleConfig, reason: str
) -> None:
    assert plan_search(body, params, rule) == Skip(reason)


SCORE_SORTS: list[tuple[str, dict[str, Any], list[tuple[str, str]]]] = [
    ("body-string", _q(sort="_score"), []),
    ("body-list-string", _q(sort=["_score"]), []),
    ("body-object-order", _q(sort={"_score": "desc"}), []),
    ("body-object-order-object", _q(sort={"_score": {"order": "desc"}}), []),
    ("body-list-object-upper", _q(sort=[{"_score": {"order": "DESC"}}]), []),
    ("body-object-default-order", _q(sort=[{"_score": {}}]), []),
    ("param-score", _q(), [("sort", "_score")]),
    ("param-score-desc", _q(), [("sort", "_score:desc")]),
    ("param-score-desc-upper", _q(), [("sort", "_score:DESC")]),
    ("rerank-true", _q(), [("rerank", "true")]),
    ("explain-false", _q(explain=False), [("explain", "false")]),
    ("profile-false", _q(profile=False), []),
]


@pytest.mark.parametrize(
    ("body", "params"), [c[1:] for c in SCORE_SORTS], ids=[c[0] for c in SCORE_SORTS]
)
def test_reranked_despite_harmless_options(
    body: dict[str, Any], params: list[tuple[str, str]]
) -> None:
    assert isinstance(plan_search(body, params, RULE), SearchPlan)


# -- window arithmetic ------------------------------------------------------------------

# (id, body from/size, params, window, expected (from_, size, fetch))
WINDOWS: list[tuple[str, dict[str, Any], list[tuple[str, str]], int, tuple[int, int, int]]] = [
    ("defaults", {}, [], 50, (0, 10, 50)),
    ("page-2", {"from": 10, "size": 10}, [], 50, (10, 10, 50)),
    ("last-page-in-window", {"from": 40, "size": 10}, [], 50, (40, 10, 50)),
    ("page-straddles-window", {"from": 45, "size": 10}, [], 50, (45, 10, 55)),
    ("big-page", {"size": 100}, [], 50, (0, 100, 100)),
    ("last-hit-of-window", {"from": 49, "size": 1}, [], 50, (49, 1, 50)),
    ("window-1", {"size": 1}, [], 1, (0, 1, 1)),
    ("window-1-size-3", {"size": 3}, [], 1, (0, 3, 3)),
    ("params", {}, [("from", "20"), ("size", "5")], 50, (20, 5, 50)),
    ("params-beat-body", {"from": 5, "size": 50}, [("from", "10"), ("size", "3")], 50, (10, 3, 50)),
    ("param-plus-sign", {}, [("size", "+7")], 50, (0, 7, 50)),
    ("param-leading-zeros", {}, [("from", "010")], 50, (10, 10, 50)),
    ("param-int-max-size", {}, [("size", str(2**31 - 1))], 50, (0, 2**31 - 1, 2**31 - 1)),
    ("string-in-body", {"from": "2", "size": "4"}, [], 50, (2, 4, 50)),
    ("string-in-body-trimmed", {"size": " 4\n"}, [], 50, (0, 4, 50)),
    ("big-window", {}, [], 10000, (0, 10, 10000)),
]


@pytest.mark.parametrize(
    ("page", "params", "window", "expected"),
    [c[1:] for c in WINDOWS],
    ids=[c[0] for c in WINDOWS],
)
def test_window_arithmetic(
    page: dict[str, Any], params: list[tuple[str, str]], window: int, expected: tuple[int, int, int]
) -> None:
    body = {"query": MATCH, **page}
    original = copy.deepcopy(body)
    plan = plan_of(body, params, RuleConfig(window=window))
    assert (plan.from_, plan.size, plan.fetch) == expected
    assert (plan.body["from"], plan.body["size"]) == (0, expected[2])
    assert plan.body["query"] == MATCH
    assert body == original  # the client's body is not modified


def test_plan_params_are_those_the_proxy_reapplies() -> None:
    assert {
        "from",
        "size",
        "filter_path",
        "_source",
        "_source_includes",
        "_source_excludes",
        "rerank",
    } == PLAN_PARAMS


def test_other_body_keys_are_kept() -> None:
    body = _q(
        aggs={"a": {"terms": {"field": "t"}}},
        highlight={"fields": {"title": {}}},
        track_total_hits=True,
    )
    plan = plan_of(body)
    assert {k: plan.body[k] for k in ("aggs", "highlight", "track_total_hits")} == {
        k: body[k] for k in ("aggs", "highlight", "track_total_hits")
    }


# -- reordering -------------------------------------------------------------------------


def hit(i: int, score: float | None, text: str | None = "t", **extra: Any) -> dict[str, Any]:
    source = {"title": text} if text is not None else {"other": 1}
    return {"_index": "i", "_id": str(i), "_score": score, "_source": source, **extra}


def response(hits: list[dict[str, Any]]) -> dict[str, Any]:
    scores = [h["_score"] for h in hits if h["_score"] is not None]
    return {
        "took": 1,
        "timed_out": False,
        "_shards": {"total": 1, "successful": 1, "failed": 0},
        "hits": {
            "total": {"value": len(hits), "relation": "eq"},
            "max_score": max(scores, default=None),
            "hits": hits,
        },
    }


def rerank_hits(
    doc: dict[str, Any], plan: SearchPlan, scores: list[float | None]
) -> dict[str, Any]:
    """Every hit of `doc` (not just the page) in the order `rank` gives, as a new document."""
    ranking = rank(doc["hits"]["hits"][: plan.rule.window], plan.rule, scores)
    whole = dataclasses.replace(plan, from_=0, size=len(doc["hits"]["hits"]))
    view: dict[str, Any] = client_view(doc, whole, ranking)
    return view


def ids(doc: dict[str, Any]) -> list[str]:
    return [h["_id"] for h in doc["hits"]["hits"]]


def reranked(
    engine_scores: list[float],
    model: list[float | None],
    rule: RuleConfig = RULE,
    page: dict[str, Any] | None = None,
) -> dict[str, Any]:
    hits = [
        hit(i, s, None if m is None else "t")
        for i, (s, m) in enumerate(zip(engine_scores, model, strict=True))
    ]
    doc = response(hits)
    plan = plan_of({"query": MATCH, **(page or {})}, [], rule)
    texts = window_texts(doc, plan)
    assert [t is None for t in texts] == [m is None for m in model[: rule.window]]
    return rerank_hits(doc, plan, model[: rule.window])


ORDER_CASES: list[tuple[str, list[float | None], list[str]]] = [
    ("by-model-score", [0.1, 0.9, 0.5], ["1", "2", "0"]),
    ("ties-keep-engine-order", [1.0, 2.0, 2.0, 1.0], ["1", "2", "0", "3"]),
    ("all-tied", [0.5, 0.5, 0.5], ["0", "1", "2"]),
    ("negative-logits", [-3.0, -1.0, -2.0], ["1", "2", "0"]),
    ("no-text-follows-in-engine-order", [None, 0.1, None, 0.9], ["3", "1", "0", "2"]),
    ("no-text-at-all", [None, None], ["0", "1"]),
]


@pytest.mark.parametrize(
    ("model", "expected"), [c[1:] for c in ORDER_CASES], ids=[c[0] for c in ORDER_CASES]
)
def test_order(model: list[float | None], expected: list[str]) -> None:
    engine = [float(10 - i) for i in range(len(model))]
    assert ids(reranked(engine, model)) == expected


def test_scores_replace_engine_scores_and_max_score() -> None:
    doc = reranked([3.0, 2.0, 1.0], [0.2, 0.7, None])
    hits = doc["hits"]["hits"]
    assert [h["_score"] for h in hits] == [0.7, 0.2, 1.0]  # the text-less hit keeps its score
    assert doc["hits"]["max_score"] == 0.7


def test_max_score_unchanged_without_model_scores() -> None:
    doc = reranked([3.0, 2.0], [None, None])
    assert doc["hits"]["max_score"] == 3.0


def test_hits_past_the_window_keep_engine_order_and_scores() -> None:
    rule = RuleConfig(fields=("title",), window=3)
    doc = reranked([6.0, 5.0, 4.0, 3.0, 2.0], [0.1, 0.3, 0.2, None, None], rule, {"size": 5})
    assert ids(doc) == ["1", "2", "0", "3", "4"]
    assert [h["_score"] for h in doc["hits"]["hits"][3:]] == [3.0, 2.0]
    assert all(ENGINE_SCORE_FIELD not in h.get("fields", {}) for h in doc["hits"]["hits"][3:])


def test_min_score_drops_low_model_scores_only() -> None:
    rule = RuleConfig(fields=("title",), min_score=0.5)
    doc = reranked([4.0, 3.0, 2.0, 1.0], [0.4, 0.9, 0.5, None], rule)
    assert ids(doc) == ["1", "2", "3"]  # 0.5 is kept (>=), the text-less hit is not judged


@pytest.mark.parametrize(
    ("engine", "model", "weight", "expected_ids", "expected_scores"),
    [
        ([10.0, 5.0, 0.0], [0.0, 1.0, 0.5], 0.5, ["1", "0", "2"], [0.75, 0.5, 0.25]),
        ([10.0, 5.0, 0.0], [0.0, 1.0, 0.5], 1.0, ["1", "2", "0"], [1.0, 0.5, 0.0]),
        ([10.0, 5.0, 0.0], [0.0, 1.0, 0.5], 0.0, ["0", "1", "2"], [1.0, 0.5, 0.0]),
        # equal engine scores normalise to 1.0 each: the model decides
        ([2.0, 2.0, 2.0], [1.0, 3.0, 2.0], 0.5, ["1", "2", "0"], [1.0, 0.75, 0.5]),
        # equal model scores: the engine decides, ties by engine order
        ([1.0, 3.0, 2.0], [7.0, 7.0, 7.0], 0.5, ["1", "2", "0"], [1.0, 0.75, 0.5]),
        # scale-free: model logits and engine BM25 on different ranges
        ([30.0, 20.0, 10.0], [-5.0, 5.0, 0.0], 0.5, ["1", "0", "2"], [0.75, 0.5, 0.25]),
    ],
    ids=["half", "model-only", "engine-only", "flat-engine", "flat-model", "different-scales"],
)
def test_blend_mode(
    engine: list[float],
    model: list[float],
    weight: float,
    expected_ids: list[str],
    expected_scores: list[float],
) -> None:
    rule = RuleConfig(fields=("title",), score_mode="blend", blend_weight=weight)
    doc = reranked(engine, list(model), rule)
    assert ids(doc) == expected_ids
    assert [h["_score"] for h in doc["hits"]["hits"]] == pytest.approx(expected_scores)
    assert doc["hits"]["max_score"] == pytest.approx(expected_scores[0])


def test_blend_mode_ignores_text_less_hits_when_normalising() -> None:
    """The text-less hit's engine score (100) takes no part in the min-max range."""
    rule = RuleConfig(fields=("title",), score_mode="blend", blend_weight=0.75)
    doc = reranked([100.0, 10.0, 5.0], [None, 0.0, 1.0], rule)
    assert ids(doc) == ["2", "1", "0"]
    assert [h["_score"] for h in doc["hits"]["hits"]] == pytest.approx([0.75, 0.25, 100.0])


def test_engine_score_is_exposed_in_fields() -> None:
    hits = [hit(0, 2.5), hit(1, 1.5, fields={"tag": ["x"]}), hit(2, 0.5, None)]
    doc = response(hits)
    plan = plan_of(_q())
    doc = rerank_hits(doc, plan, [0.1, 0.9, None])
    by_id = {h["_id"]: h for h in doc["hits"]["hits"]}
    assert by_id["0"]["fields"] == {ENGINE_SCORE_FIELD: [2.5]}
    assert by_id["1"]["fields"] == {"tag": ["x"], ENGINE_SCORE_FIELD: [1.5]}
    assert by_id["2"]["fields"] == {ENGINE_SCORE_FIELD: [0.5]}


def test_engine_score_is_not_exposed_when_disabled() -> None:
    hits = [hit(0, 2.5), hit(1, 1.5, fields={"tag": ["x"]})]
    doc = response(hits)
    plan = plan_of(_q(), rule=RuleConfig(fields=("title",), expose_engine_score=False))
    doc = rerank_hits(doc, plan, [0.1, 0.9])
    assert [h.get("fields") for h in doc["hits"]["hits"]] == [{"tag": ["x"]}, None]


@pytest.mark.parametrize(
    ("scores", "message"),
    [
        ([0.1], "score count does not match the window"),
        ([0.1, 0.2, 0.3], "score count does not match the window"),
        ([float("nan"), 0.2], "non-finite score"),
        ([0.1, float("inf")], "non-finite score"),
    ],
    ids=["too-few", "too-many", "nan", "inf"],
)
def test_rank_rejects_bad_scores(scores: list[float], message: str) -> None:
    doc = response([hit(0, 1.0), hit(1, 0.5)])
    before = copy.deepcopy(doc)
    with pytest.raises(ValueError, match=message):
        rerank_hits(doc, plan_of(_q()), scores)
    assert doc == before  # failing open returns the engine's answer untouched


# -- pagination -----------------------------------------------------------------------


class Engine:
    """A fake engine over a fixed ranking, with a fake model scoring each document."""

    def __init__(self, engine_scores: list[float], model: list[float | None]) -> None:
        self.hits = [
            hit(i, s, None if m is None else f"doc {i}")
            for i, (s, m) in enumerate(zip(engine_scores, model, strict=True))
        ]
        self.model = model

    def page(self, rule: RuleConfig, from_: int, size: int) -> list[str]:
        """What the client gets for `from`/`size` through the proxy."""
        plan = plan_search({"query": MATCH, "from": from_, "size": size}, [], rule)
        if isinstance(plan, Skip):
            assert plan.reason == "past_window"
            return [h["_id"] for h in self.hits[from_ : from_ + size]]
        doc = response(copy.deepcopy(self.hits[: plan.fetch]))
        texts = window_texts(doc, plan)
        scores = [
            None if t is None else self.model[int(h["_id"])]
            for t, h in zip(texts, doc["hits"]["hits"], strict=False)
        ]
        before = copy.deepcopy(doc)
        view = client_view(doc, plan, rank(doc["hits"]["hits"][: rule.window], rule, scores))
        assert doc == before  # the engine's response is left as it was
        return ids(view)


@pytest.mark.parametrize("seed", range(40))
def test_page_1_plus_page_2_equals_one_big_page(seed: int) -> None:
    rnd = random.Random(seed)
    n = rnd.randint(0, 70)
    engine = sorted((round(rnd.uniform(0, 20), 1) for _ in range(n)), reverse=True)
    # few distinct values, so ties are common; some hits have no text
    model: list[float | None] = [
        None if rnd.random() < 0.15 else rnd.choice([0.1, 0.2, 0.5, 0.9]) for _ in range(n)
    ]
    window = rnd.choice([1, 5, 10, 15, 20, 25, 50])
    min_score = rnd.choice([None, None, 0.2])
    rule = RuleConfig(fields=("title",), window=window, min_score=min_score)
    fake = Engine(engine, model)

    big = fake.page(rule, 0, 20)
    pages = fake.page(rule, 0, 10) + fake.page(rule, 10, 10)
    assert pages == big
    assert len(set(pages)) == len(pages)

    # the big page itself: reranked window first, then the engine's order
    inside = [i for i in range(min(window, n))]
    scored = [
        i for i in inside if model[i] is not None and (min_score is None or model[i] >= min_score)
    ]  # type: ignore[operator]
    expected = sorted(scored, key=lambda i: (-model[i], i))  # type: ignore[operator]
    expected += [i for i in inside if model[i] is None]
    expected += list(range(min(window, n), min(max(window, 20), n)))  # fetched past the window
    assert big == [str(i) for i in expected[:20]]


def test_pages_never_repeat_a_hit() -> None:
    rnd = random.Random(7)
    n = 95
    model: list[float | None] = [rnd.random() for _ in range(n)]
    fake = Engine([float(n - i) for i in range(n)], model)
    rule = RuleConfig(fields=("title",), window=30)
    seen = [i for start in range(0, n, 10) for i in fake.page(rule, start, 10)]
    assert sorted(seen, key=int) == [str(i) for i in range(n)]


# -- client_view --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("from_", "size", "n", "expected"),
    [
        (0, 10, 50, [str(i) for i in range(10)]),
        (10, 10, 50, [str(i) for i in range(10, 20)]),
        (45, 10, 50, [str(i) for i in range(45, 50)]),
        (0, 10, 3, ["0", "1", "2"]),
        (5, 10, 3, []),
    ],
    ids=["page-1", "page-2", "short-last-page", "fewer-hits", "beyond-hits"],
)
def test_client_view_slices(from_: int, size: int, n: int, expected: list[str]) -> None:
    doc = response([hit(i, float(n - i)) for i in range(n)])
    plan = plan_of({"query": MATCH, "from": from_, "size": size})
    assert ids(client_view(doc, plan)) == expected


def test_client_view_applies_filter_path_and_keeps_the_rest() -> None:
    doc = response([hit(i, 1.0) for i in range(3)])
    plan = plan_of({"query": MATCH, "size": 2}, [("filter_path", "hits.hits._id,took")])
    assert client_view(copy.deepcopy(doc), plan) == {
        "took": 1,
        "hits": {"hits": [{"_id": "0"}, {"_id": "1"}]},
    }
    assert (
        client_view(copy.deepcopy(doc), plan, apply_path=False)["hits"]["total"]
        == doc["hits"]["total"]
    )


@pytest.mark.parametrize(
    "filter_path", ["-took", "- took", " -  took ", "-_shards, - took"], ids=repr
)
def test_filter_path_exclusions_are_trimmed_after_the_dash(filter_path: str) -> None:
    """The engines trim each filter, then its path after the `-`: `- took` drops `took`."""
    doc = response([hit(0, 1.0)])
    view = client_view(doc, plan_of({"query": MATCH, "size": 1}, [("filter_path", filter_path)]))
    assert "took" not in view
    assert view["hits"] == doc["hits"]


# -- _source ----------------------------------------------------------------------------

FULL = {
    "id": 7,
    "title": "T",
    "body": "B",
    "meta": {"title": "MT", "lang": "en"},
    "vec": [0.1, 0.2],
}

# (id, body _source or None, URL params, rule fields, upstream `_source` (absent: None),
#  client's filter)
SOURCE_PLANS: list[
    tuple[str, Any, list[tuple[str, str]], tuple[str, ...], Any, SourceFilter | None]
] = [
    ("not-given", None, [], ("title",), None, None),
    ("true", True, [], ("title",), True, None),  # left as written
    (
        "false",
        False,
        [],
        ("title", "body"),
        {"includes": ["title", "body"]},
        SourceFilter(enabled=False),
    ),
    ("false-all-fields", False, [], (), True, SourceFilter(enabled=False)),
    (
        "includes-list",
        ["id"],
        [],
        ("title",),
        {"includes": ["id", "title"]},
        SourceFilter(includes=("id",)),
    ),
    (
        "includes-string",
        "id",
        [],
        ("title",),
        {"includes": ["id", "title"]},
        SourceFilter(includes=("id",)),
    ),
    (
        "includes-already-there",
        {"includes": ["title"]},
        [],
        ("title",),
        {"includes": ["title"]},
        SourceFilter(includes=("title",)),
    ),
    ("includes-all-fields-rule", ["id"], [], (), True, SourceFilter(includes=("id",))),
    (
        "excludes-other",
        {"excludes": ["vec"]},
        [],
        ("title",),
        {"excludes": ["vec"]},
        SourceFilter(excludes=("vec",)),
    ),
    (
        "excludes-the-text",
        {"excludes": ["title"]},
        [],
        ("title",),
        True,
        SourceFilter(excludes=("title",)),
    ),
    (
        "excludes-wildcard-text",
        {"excludes": ["t*", "vec"]},
        [],
        ("title",),
        {"excludes": ["vec"]},
        SourceFilter(excludes=("t*", "vec")),
    ),
    (
        "excludes-parent",
        {"excludes": ["meta"]},
        [],
        ("meta.title",),
        True,
        SourceFilter(excludes=("meta",)),
    ),
    (
        "excludes-below",
        {"excludes": ["meta.title.raw"]},
        [],
        ("meta.title",),
        True,
        SourceFilter(excludes=("meta.title.raw",)),
    ),
    (
        "includes-and-excludes",
        {"includes": ["id", "b*"], "excludes": ["body", "vec"]},
        [],
        ("body",),
        {"includes": ["id", "b*", "body"], "excludes": ["vec"]},
        SourceFilter(includes=("id", "b*"), excludes=("body", "vec")),
    ),
    (
        "url-false",
        {"includes": ["x"]},
        [("_source", "false")],
        ("title",),
        {"includes": ["title"]},
        SourceFilter(enabled=False),
    ),
    ("url-true-beats-body-false", False, [("_source", "true")], ("title",), None, None),
    (
        "url-list",
        None,
        [("_source", "id,meta.lang")],
        ("title",),
        {"includes": ["id", "meta.lang", "title"]},
        SourceFilter(includes=("id", "meta.lang")),
    ),
    (
        "url-includes-excludes",
        None,
        [("_source_includes", "id"), ("_source_excludes", "vec")],
        ("title",),
        {"includes": ["id", "title"], "excludes": ["vec"]},
        SourceFilter(includes=("id",), excludes=("vec",)),
    ),
]


@pytest.mark.parametrize(
    ("spec", "params", "fields", "upstream", "client"),
    [c[1:] for c in SOURCE_PLANS],
    ids=[c[0] for c in SOURCE_PLANS],
)
def test_source_plan(
    spec: Any,
    params: list[tuple[str, str]],
    fields: tuple[str, ...],
    upstream: Any,
    client: SourceFilter | None,
) -> None:
    body = _q() if spec is None else _q(_source=spec)
    rule = RuleConfig(fields=fields)
    plan = plan_of(body, params, rule)
    assert plan.body.get("_source") == upstream
    assert plan.source_filter == client

    # What the engine sends for that plan still carries the text the model needs ...
    engine_view = (
        FULL
        if upstream in (None, True)
        else SourceFilter(
            includes=tuple(upstream.get("includes", ())),
            excludes=tuple(upstream.get("excludes", ())),
        ).apply(FULL)
    )
    assert document_text(engine_view, rule) == document_text(FULL, rule)
    # ... and the client gets exactly what its own parameters ask for.
    doc = response([{"_id": "1", "_score": 1.0, "_source": copy.deepcopy(engine_view)}])
    seen = client_view(doc, plan)["hits"]["hits"][0]
    wanted = client or SourceFilter()
    if not wanted.enabled:
        assert "_source" not in seen
    else:
        assert seen["_source"] == wanted.apply(FULL)


def test_template_rule_fetches_its_placeholders() -> None:
    rule = RuleConfig(template="{title}: {meta.title}")
    plan = plan_of(_q(_source=["id"]), rule=rule)
    assert plan.body["_source"] == {"includes": ["id", "title", "meta.title"]}


# -- query text -------------------------------------------------------------------------

QUERY_TEXT: list[tuple[str, Any, list[tuple[str, str]], RuleConfig, str | None, str]] = [
    ("dsl-match", _q(), [], RULE, None, "quick fox"),
    ("q-param", None, [("q", 'title:"new york" AND pizza')], RULE, None, "new york pizza"),
    ("q-param-with-empty-body", {}, [("q", "fox")], RULE, None, "fox"),
    ("body-query-beats-q", _q(), [("q", "other")], RULE, None, "quick fox"),
    (
        "query-path",
        {"query": {"bool": {"must": [{"term": {"x": 1}}]}}, "ext": {"text": " the words "}},
        [],
        RuleConfig(query_path="/ext/text"),
        None,
        "the words",
    ),
    (
        "query-path-into-array",
        {"query": {"bool": {"must": [{"multi_match": {"query": "mm"}}]}}},
        [],
        RuleConfig(query_path="/query/bool/must/0/multi_match/query"),
        None,
        "mm",
    ),
    (
        "query-path-escapes",
        {"a/b": {"c~d": "x"}},
        [],
        RuleConfig(query_path="/a~1b/c~0d"),
        None,
        "x",
    ),
    (
        "query-path-missing-falls-back",
        _q(),
        [],
        RuleConfig(query_path="/nope/0"),
        None,
        "quick fox",
    ),
    ("query-path-not-text-falls-back", _q(n=5), [], RuleConfig(query_path="/n"), None, "quick fox"),
    (
        "override",
        _q(),
        [("q", "q")],
        RuleConfig(query_path="/query"),
        " from header ",
        "from header",
    ),
    (
        "override-makes-match-all-rerankable",
        {"query": {"match_all": {}}},
        [],
        RULE,
        "words",
        "words",
    ),
    ("blank-override-ignored", _q(), [], RULE, "  ", "quick fox"),
]


@pytest.mark.parametrize(
    ("body", "params", "rule", "override", "expected"),
    [c[1:] for c in QUERY_TEXT],
    ids=[c[0] for c in QUERY_TEXT],
)
def test_query_text(
    body: Any, params: list[tuple[str, str]], rule: RuleConfig, override: str | None, expected: str
) -> None:
    assert plan_of(body, params, rule, override).query == expected


# -- document text ------------------------------------------------------------------------

SOURCE = {
    "title": "Fox",
    "body": {"text": "jumps", "lang": "en"},
    "tags": ["a", "b", ""],
    "authors": [{"name": "X"}, {"name": "Y"}, {"age": 3}],
    "meta.flat": "dotted",
    "n": 42,
    "ok": True,
    "empty": "  ",
}

DOC_TEXT: list[tuple[str, RuleConfig, str | None]] = [
    ("one-field", RuleConfig(fields=("title",)), "Fox"),
    ("fields-joined-by-newline", RuleConfig(fields=("title", "body.text")), "Fox\njumps"),
    ("array-joined-by-space", RuleConfig(fields=("tags",)), "a b"),
    ("array-of-objects", RuleConfig(fields=("authors.name",)), "X Y"),
    ("dotted-flat-key", RuleConfig(fields=("meta.flat",)), "dotted"),
    ("number", RuleConfig(fields=("n",)), "42"),
    ("bool-is-no-text", RuleConfig(fields=("ok",)), None),
    ("blank-is-no-text", RuleConfig(fields=("empty",)), None),
    ("object-is-no-text", RuleConfig(fields=("body",)), None),
    ("missing-fields-skipped", RuleConfig(fields=("nope", "title")), "Fox"),
    ("none-of-the-fields", RuleConfig(fields=("nope",)), None),
    ("all-top-level-strings", RuleConfig(), "Fox\na b\ndotted"),
    ("template", RuleConfig(template="{title} / {body.text}"), "Fox / jumps"),
    ("template-missing-part", RuleConfig(template="{nope}: {title}"), ": Fox"),
    ("template-nothing", RuleConfig(template="[{nope}]"), None),
    (
        "template-escaped-braces",
        RuleConfig(template="{{x}} {title} {{{body.lang}}}"),
        "{x} Fox {en}",
    ),
]


@pytest.mark.parametrize(
    ("rule", "expected"), [c[1:] for c in DOC_TEXT], ids=[c[0] for c in DOC_TEXT]
)
def test_document_text(rule: RuleConfig, expected: str | None) -> None:
    assert document_text(SOURCE, rule) == expected


def test_document_text_of_a_hit_without_source() -> None:
    assert document_text(None, RULE) is None
    assert field_text({"a": {"b": ["x", {"c": 1}]}}, "a.b") == "x"


def test_window_texts_cover_the_window_only() -> None:
    doc = response([hit(0, 3.0, "a"), hit(1, 2.0, None), hit(2, 1.0, "c")])
    plan = plan_of(_q(), rule=RuleConfig(fields=("title",), window=2))
    assert window_texts(doc, plan) == ["a", None]


# -- responses ---------------------------------------------------------------------------

RESPONSES: list[tuple[str, Any, str | None]] = [
    ("ok", response([hit(0, 1.0)]), None),
    ("no-hits-ok", response([]), None),
    ("timed-out", {**response([]), "timed_out": True}, "timed_out"),
    (
        "shard-failures",
        {**response([]), "_shards": {"total": 2, "successful": 1, "failed": 1}},
        "shard_failures",
    ),
    ("hits-filtered-away", {"took": 1}, "no_hits"),
    ("hits-not-a-list", {"hits": {"hits": {}}}, "no_hits"),
    ("not-an-object", [1], "unexpected_response"),
    ("score-null", response([hit(0, None)]), None),
    ("score-int", response([hit(0, 3)]), None),
    ("no-source", response([{"_id": "0", "_score": 1.0}]), None),
    ("highlight-lists", response([hit(0, 1.0, highlight={"title": ["<em>t</em>"]})]), None),
    # Shapes no engine writes: nothing in them can be served.
    ("hits-not-an-object", {"hits": [hit(0, 1.0)]}, "unexpected_response"),
    ("hits-null", {"hits": None}, "unexpected_response"),
    ("hits-of-scalars", {"hits": {"hits": [1, "x", None]}}, "unexpected_response"),
    ("one-scalar-hit", {"hits": {"hits": [hit(0, 1.0), 7]}}, "unexpected_response"),
    ("source-string", response([hit(0, 1.0, _source="t")]), "unexpected_response"),
    ("source-null", response([hit(0, 1.0, _source=None)]), "unexpected_response"),
    (
        "score-string",
        {"hits": {"hits": [{**hit(0, 1.0), "_score": "high"}]}},
        "unexpected_response",
    ),
    ("score-bool", response([hit(0, True)]), "unexpected_response"),
    ("fields-list", response([hit(0, 1.0, fields=[1])]), "unexpected_response"),
    ("highlight-string", response([hit(0, 1.0, highlight="t")]), "unexpected_response"),
    (
        "highlight-fragment-not-list",
        response([hit(0, 1.0, highlight={"title": 5})]),
        "unexpected_response",
    ),
    (
        "timed-out-and-broken",
        {**response([hit(0, 1.0, _source=1)]), "timed_out": True},
        "unexpected_response",
    ),
]


@pytest.mark.parametrize(
    ("doc", "reason"), [c[1:] for c in RESPONSES], ids=[c[0] for c in RESPONSES]
)
def test_rerankable_response(doc: Any, reason: str | None) -> None:
    assert rerankable_response(doc) == reason


@pytest.mark.parametrize(
    ("took", "took_ms", "expected"),
    [(3, 0.0, 3), (3, 0.2, 4), (3, 12.0, 15), (None, 5.0, None), (True, 5.0, True)],
    ids=["no-proxy-time", "rounded-up", "whole-ms", "no-took", "not-a-number"],
)
def test_took_includes_the_proxys_own_time(took: Any, took_ms: float, expected: Any) -> None:
    doc = response([hit(0, 1.0)])
    if took is None:
        doc.pop("took", None)
    else:
        doc["took"] = took
    before = copy.deepcopy(doc)
    view = client_view(doc, plan_of(_q()), took_ms=took_ms)
    assert view.get("took") == expected
    assert doc == before


def test_query_text_is_capped() -> None:
    from proxy.plan import MAX_QUERY_CHARS

    plan = plan_search({"query": {"match": {"title": "word " * 10_000}}}, [], RULE)
    assert isinstance(plan, SearchPlan) and len(plan.query) == MAX_QUERY_CHARS
