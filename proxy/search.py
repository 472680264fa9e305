"""Search planning and hit reordering. Pure: no aiohttp, no torch.

`plan_search` decides whether one search (a `_search` body, or one `_msearch` item) is
reranked and, if so, what to ask the engine for: hits `[0, max(window, from+size))` with the
fields the reranker needs. `rerank_hits` reorders the window by model score (ties keep the
engine's order; hits without text follow the scored ones), and `client_view` gives the client
exactly what its own request asked for: the `[from, from+size)` slice, its `_source`
filtering and its `filter_path`.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .config import RuleConfig, rule_text_fields
from .filtering import (
    SourceFilter,
    apply_filter_path,
    pattern_reaches,
    source_filter_from_body,
    source_filter_from_params,
)
from .query_text import extract_query_text, query_from_q_param

# Body keys whose presence means the engine's order is not a score order we may replace.
_PASS_KEYS = (
    "scroll",
    "search_after",
    "pit",
    "point_in_time",
    "slice",
    "rescore",
    "retriever",
    "knn",
    "rank",
    "collapse",
    "stored_fields",
)
_PASS_QUERY_TYPES = ("hybrid", "knn", "neural", "neural_sparse", "script_score", "rank_feature")
# Parameters the proxy consumes or re-applies itself; never sent upstream as they came.
PLAN_PARAMS = frozenset(
    {"from", "size", "filter_path", "_source", "_source_includes", "_source_excludes", "rerank"}
)
_FALSE = ("false", "0", "no", "off")
ENGINE_SCORE_FIELD = "_engine_score"


@dataclass(frozen=True, slots=True)
class Skip:
    """This search is passed through unchanged; `reason` is reported and counted."""

    reason: str


@dataclass(frozen=True, slots=True)
class SearchPlan:
    body: dict[str, Any]
    from_: int
    size: int
    fetch: int
    query: str
    rule: RuleConfig
    source_filter: SourceFilter | None
    filter_path: str | None


def _is_true(value: Any) -> bool:
    return bool(value is True or (isinstance(value, str) and value.lower() in ("true", "1", "yes")))


def _is_score_sort(sort: Any) -> bool:
    """Is this `sort` (body value or `sort=` parameter) plain `_score` descending?"""
    if isinstance(sort, list):
        return len(sort) == 1 and _is_score_sort(sort[0])
    if isinstance(sort, dict) and list(sort) == ["_score"]:
        spec = sort["_score"]
        order = spec.get("order", "desc") if isinstance(spec, dict) else spec
        return isinstance(order, str) and order.lower() == "desc"
    if isinstance(sort, str):
        # `_score` sorts descending by default; the `sort=` parameter spells `_score:desc`.
        return sort.replace(" ", "").lower() in ("_score", "_score:desc")
    return False


def _json_pointer(doc: Any, pointer: str) -> Any:
    for raw in pointer.split("/")[1:]:
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(doc, dict):
            doc = doc.get(token)
        elif isinstance(doc, list) and token.isdigit() and int(token) < len(doc):
            doc = doc[int(token)]
        else:
            return None
    return doc


_INT = re.compile(r"\s*-?[0-9]+\s*")


def _int(value: Any, default: int) -> int | None:
    if value is None:
        return default
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _INT.fullmatch(value):
        return int(value)
    return None


def _query_text(
    body: Mapping[str, Any], params: Mapping[str, str], rule: RuleConfig, override: str | None
) -> str | None:
    if override is not None and override.strip():
        return override.strip()
    if rule.query_path is not None:
        value = _json_pointer(body, rule.query_path)
        if isinstance(value, str) and value.strip():
            return value.strip()
    text = extract_query_text(body.get("query"))
    if text is None and "q" in params:
        text = query_from_q_param(params["q"])
    return text


def _upstream_source(client: SourceFilter, needed: tuple[str, ...]) -> Any:
    """The `_source` to ask the engine for: the client's view plus the text fields.

    `client_view` re-applies the client's own filter afterwards, so this may ask for more
    than the client sees, never less than the reranker needs: any exclusion that could
    reach a needed field (itself, a parent object or anything below it; wildcards count)
    is left out.
    """
    if not needed:
        return True
    if not client.enabled:
        return {"includes": list(needed)}
    excludes = [e for e in client.excludes if not any(pattern_reaches(e, n) for n in needed)]
    spec: dict[str, Any] = {}
    if client.includes:
        spec["includes"] = list(client.includes) + [n for n in needed if n not in client.includes]
    if excludes:
        spec["excludes"] = excludes
    return spec or True


def plan_search(
    body: Any,
    params: Sequence[tuple[str, str]],
    rule: RuleConfig,
    *,
    query_override: str | None = None,
) -> SearchPlan | Skip:
    """Decide how to rerank one search, or why it passes through."""
    if not rule.enabled:
        return Skip("disabled")
    if body is None:
        body = {}
    if not isinstance(body, dict):
        return Skip("unparsable_body")
    p = dict(params)
    if p.get("rerank", "").lower() in _FALSE:
        return Skip("client_off")
    if "scroll" in p:
        return Skip("scroll")
    if "sort" in p and not _is_score_sort(p["sort"]):
        return Skip("sort")
    if "stored_fields" in p:
        return Skip("stored_fields")
    # `?explain` with no value means true to the engines: only an explicit false reranks.
    if p.get("explain", "false").lower() != "false" or _is_true(body.get("explain")):
        return Skip("explain")
    if _is_true(body.get("profile")):
        return Skip("profile")
    for key in _PASS_KEYS:
        if key in body:
            return Skip(key)
    if "sort" in body and not _is_score_sort(body["sort"]):
        return Skip("sort")
    query = body.get("query")
    if isinstance(query, dict) and any(k in query for k in _PASS_QUERY_TYPES):
        return Skip("query_type")
    from_ = _int(p.get("from", body.get("from")), 0)
    size = _int(p.get("size", body.get("size")), 10)
    if from_ is None or size is None or from_ < 0 or size < 0:
        return Skip("bad_from_size")
    if size == 0:
        return Skip("size_0")
    if from_ >= rule.window:
        return Skip("past_window")
    text = _query_text(body, p, rule, query_override)
    if text is None:
        return Skip("no_query_text")
    try:
        client_filter = source_filter_from_params(params) or source_filter_from_body(
            body.get("_source")
        )
    except ValueError:
        return Skip("bad_source")
    new_body = dict(body)
    new_body["from"] = 0
    new_body["size"] = max(rule.window, from_ + size)
    source_filter = None
    if client_filter is not None:
        new_body.pop("_source", None)
        if not client_filter.is_identity:
            source_filter = client_filter
            new_body["_source"] = _upstream_source(client_filter, rule_text_fields(rule))
    return SearchPlan(
        body=new_body,
        from_=from_,
        size=size,
        fetch=new_body["size"],
        query=text,
        rule=rule,
        source_filter=source_filter,
        filter_path=p.get("filter_path"),
    )


# -- document text ---------------------------------------------------------------------


def _values_at(obj: Any, parts: Sequence[str]) -> list[str]:
    if isinstance(obj, list):
        return [v for item in obj for v in _values_at(item, parts)]
    if not parts:
        if isinstance(obj, str):
            return [obj] if obj.strip() else []
        if isinstance(obj, (int, float)) and not isinstance(obj, bool):
            return [str(obj)]
        return []
    if not isinstance(obj, dict):
        return []
    # A dotted key stored flat ("a.b": ...) is as valid as a nested object.
    for cut in range(len(parts), 0, -1):
        key = ".".join(parts[:cut])
        if key in obj:
            return _values_at(obj[key], parts[cut:])
    return []


def field_text(source: Any, path: str) -> str:
    """Text of one (dotted) field; array values joined with spaces."""
    return " ".join(_values_at(source, path.split(".")))


def document_text(source: Any, rule: RuleConfig) -> str | None:
    """The text the model scores for one hit, or None when it has none of the fields."""
    if not isinstance(source, dict):
        return None
    if rule.template is not None:
        pieces = list(string.Formatter().parse(rule.template))
        values = {name: field_text(source, name) for _, name, _, _ in pieces if name}
        if not any(values.values()):
            return None
        # Rendered piece by piece (not with str.replace) so `{{`/`}}` become literal braces.
        text = "".join(literal + (values[name] if name else "") for literal, name, _, _ in pieces)
        return text.strip() or None
    if rule.fields:
        parts = [field_text(source, f) for f in rule.fields]
    else:
        parts = [" ".join(_values_at(v, [])) for v in source.values() if isinstance(v, (str, list))]
    joined = "\n".join(p for p in parts if p)
    return joined or None


# -- the response ----------------------------------------------------------------------


def response_is_rerankable(doc: Any) -> str | None:
    """None when the response can be reranked, else the reason it cannot."""
    if not isinstance(doc, dict):
        return "unexpected_response"
    if doc.get("timed_out") is True:
        return "timed_out"
    shards = doc.get("_shards")
    if isinstance(shards, dict) and shards.get("failed", 0):
        return "shard_failures"
    hits = doc.get("hits")
    if not isinstance(hits, dict) or not isinstance(hits.get("hits"), list):
        return "no_hits"
    return None


def _highlight_text(hit: Mapping[str, Any], rule: RuleConfig) -> str | None:
    fragments = hit.get("highlight")
    if not isinstance(fragments, dict):
        return None
    wanted = rule_text_fields(rule) or tuple(fragments)
    parts = [" ".join(f for f in fragments.get(name, []) if isinstance(f, str)) for name in wanted]
    text = "\n".join(p for p in parts if p)
    return text or None


def window_texts(doc: dict[str, Any], plan: SearchPlan) -> list[str | None]:
    """Texts of the window's hits, in engine order (None: nothing to score)."""
    rule = plan.rule
    out: list[str | None] = []
    for hit in doc["hits"]["hits"][: rule.window]:
        text = _highlight_text(hit, rule) if rule.use_highlight else None
        if text is None:
            text = document_text(hit.get("_source"), rule)
        if text is not None and rule.leading_words is not None:
            text = " ".join(text.split()[: rule.leading_words])
        out.append(text)
    return out


def split_passages(text: str, rule: RuleConfig) -> list[str]:
    """Overlapping word windows of a document (`passages: max`); the whole text otherwise."""
    if rule.passages == "off":
        return [text]
    words = text.split()
    if len(words) <= rule.passage_words:
        return [text]
    starts = range(
        0, max(1, len(words) - rule.passage_words + rule.passage_stride), rule.passage_stride
    )
    return [" ".join(words[s : s + rule.passage_words]) for s in starts][: rule.max_passages]


def _normalise(values: Sequence[float]) -> list[float]:
    lo, hi = min(values), max(values)
    if hi - lo <= 0:
        return [1.0 for _ in values]
    return [(v - lo) / (hi - lo) for v in values]


def rerank_hits(doc: dict[str, Any], plan: SearchPlan, scores: Sequence[float | None]) -> None:
    """Reorder `doc`'s window in place by model scores (aligned with `window_texts`)."""
    hits: list[dict[str, Any]] = doc["hits"]["hits"]
    window, rest = hits[: plan.rule.window], hits[plan.rule.window :]
    if len(scores) != len(window):
        raise ValueError("score count does not match the window")
    scored = [(i, s) for i, s in enumerate(scores) if s is not None]
    unscored = [i for i, s in enumerate(scores) if s is None]
    if any(not math.isfinite(s) for _, s in scored):
        raise ValueError("non-finite score")
    rule = plan.rule
    if rule.score_mode == "blend" and scored:
        engine = [_engine_score(window[i]) for i, _ in scored]
        model_n = _normalise([s for _, s in scored])
        engine_n = _normalise(engine)
        w = rule.blend_weight
        final = [w * m + (1 - w) * e for m, e in zip(model_n, engine_n, strict=True)]
    else:
        final = [s for _, s in scored]
    ranked = sorted(zip(scored, final, strict=True), key=lambda t: (-t[1], t[0][0]))
    if rule.min_score is not None:
        ranked = [r for r in ranked if r[0][1] >= rule.min_score]
    new_window = []
    for (i, _model), score in ranked:
        hit = window[i]
        _expose_engine_score(hit, rule)
        hit["_score"] = score
        if isinstance(hit.get("sort"), list) and len(hit["sort"]) == 1:
            hit["sort"] = [score]  # an explicit `sort: _score` reports the score it sorted by
        new_window.append(hit)
    for i in unscored:
        _expose_engine_score(window[i], rule)
        new_window.append(window[i])
    doc["hits"]["hits"] = new_window + rest
    if ranked:
        doc["hits"]["max_score"] = max(score for _, score in ranked)


def _engine_score(hit: Mapping[str, Any]) -> float:
    score = hit.get("_score")
    return float(score) if isinstance(score, (int, float)) else 0.0


def _expose_engine_score(hit: dict[str, Any], rule: RuleConfig) -> None:
    if rule.expose_engine_score:
        fields = hit.setdefault("fields", {})
        if isinstance(fields, dict):
            fields[ENGINE_SCORE_FIELD] = [hit.get("_score")]


def client_view(doc: dict[str, Any], plan: SearchPlan, *, apply_path: bool = True) -> Any:
    """What the client's own request asks for: its page, `_source` view and `filter_path`."""
    hits = doc["hits"]
    hits["hits"] = hits["hits"][plan.from_ : plan.from_ + plan.size]
    if plan.source_filter is not None:
        for hit in hits["hits"]:
            if not plan.source_filter.enabled:
                hit.pop("_source", None)
            elif "_source" in hit:
                hit["_source"] = plan.source_filter.apply(hit["_source"])
    if apply_path and plan.filter_path:
        return apply_filter_path(doc, plan.filter_path)
    return doc
