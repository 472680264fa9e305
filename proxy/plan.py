"""Step 1 of a search, planning: is it reranked, and what to ask the engine for. Pure.

`plan_search` decides whether one search (a `_search` body, or one `_msearch` item) is
reranked and, if so, what to ask the engine for: hits `[0, max(window, from+size))` with the
fields the reranker needs (the client's `_source` widened, `filter_path` left to the
proxy). `rerankable_response` decides whether the engine's answer to that widened search
can be reranked. Every "no" is a `Skip` with a closed-set `Reason`. The next steps are
`fetch` (ask the engine), `score` (a permutation of the window) and `answer` (the client's
view).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .config import RuleConfig, rule_text_fields
from .filtering import (
    SourceFilter,
    filter_path_valid,
    pattern_reaches,
    source_filter_from_body,
    source_filter_from_params,
)
from .outcome import Reason
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
#: query text the reranker is given at most: far past what fits the model's 512-token window
#: beside a document, and short enough that a huge query costs nothing to hash, cache or send
MAX_QUERY_CHARS = 4096


@dataclass(frozen=True, slots=True)
class Skip:
    """This search is passed through unchanged; `reason` is reported and counted."""

    reason: Reason


@dataclass(frozen=True, slots=True)
class SearchPlan:
    """A search to rerank: the widened `body` to send, and what the client asked for."""

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


# What the engines accept, or less: a URL parameter is read with Java's `Integer.parseInt`
# (no spaces, `+`/`-` sign), a body string is trimmed first. Anything else is passed through
# for the engine to judge (`bad_from_size`), never read more leniently than it would.
_PARAM_INT = re.compile(r"[+-]?[0-9]+")
_BODY_INT = re.compile(r"[ \t\r\n]*[+-]?[0-9]+[ \t\r\n]*")
_INT_MAX = 2**31 - 1  # a Java int


def _int(value: Any, default: int, *, param: bool) -> int | None:
    if value is None:
        return default
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and (_PARAM_INT if param else _BODY_INT).fullmatch(value):
        value = int(value)
    if isinstance(value, int) and -_INT_MAX - 1 <= value <= _INT_MAX:
        return value
    return None


def _page_value(
    p: Mapping[str, str], body: Mapping[str, Any], key: str, default: int
) -> int | None:
    """`from` or `size`: the URL parameter wins over the body, as in the engines; None for
    a value they reject, in the body even when the URL has one (they parse the body first,
    and a `null`, `"10x"` or `2**40` there is their error)."""
    if key in body and (body[key] is None or _int(body[key], default, param=False) is None):
        return None
    if key in p:
        return _int(p[key], default, param=True)
    return _int(body.get(key), default, param=False)


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


def _spelled_as(client: Any, widened: Any) -> Any:
    """The widened `_source` with the client's key spellings: the deprecated `include` and
    `exclude` stay as written, so the engine's deprecation `Warning` still reaches the
    client. An `exclude` the widening dropped (it reached a field the reranker needs)
    becomes `[""]`, which excludes nothing (no field has an empty name): an empty list would
    draw warnings of its own from OpenSearch 3."""
    if not isinstance(client, dict):
        return widened
    out = dict(widened) if isinstance(widened, dict) else {}
    for old, new in (("include", "includes"), ("exclude", "excludes")):
        if old in client and new not in client:
            dropped = [""] if old == "exclude" and client[old] not in ([], "") else []
            out[old] = out.pop(new, dropped)
    return out or widened


def plan_search(
    body: Any,
    params: Sequence[tuple[str, str]],
    rule: RuleConfig,
    *,
    query_override: str | None = None,
) -> SearchPlan | Skip:
    """Decide how to rerank one search, or why it passes through."""
    if not rule.enabled:
        return Skip(Reason.DISABLED)
    if body is None:
        body = {}
    if not isinstance(body, dict):
        return Skip(Reason.UNPARSABLE_BODY)
    p = dict(params)
    if p.get("rerank", "").lower() in _FALSE:
        return Skip(Reason.CLIENT_OFF)
    if "scroll" in p:
        return Skip(Reason.SCROLL)
    if "sort" in p and not _is_score_sort(p["sort"]):
        return Skip(Reason.SORT)
    if "stored_fields" in p:
        return Skip(Reason.STORED_FIELDS)
    # `?explain` with no value means true to the engines: only an explicit false reranks.
    if p.get("explain", "false").lower() != "false" or _is_true(body.get("explain")):
        return Skip(Reason.EXPLAIN)
    if _is_true(body.get("profile")):
        return Skip(Reason.PROFILE)
    for key in _PASS_KEYS:
        if key in body:
            return Skip(Reason(key))
    if "sort" in body and not _is_score_sort(body["sort"]):
        return Skip(Reason.SORT)
    query = body.get("query")
    if isinstance(query, dict) and any(k in query for k in _PASS_QUERY_TYPES):
        return Skip(Reason.QUERY_TYPE)
    from_ = _page_value(p, body, "from", 0)
    size = _page_value(p, body, "size", 10)
    if from_ is None or size is None or from_ < 0 or size < 0:
        return Skip(Reason.BAD_FROM_SIZE)
    if not all(filter_path_valid(v) for k, v in params if k == "filter_path"):
        return Skip(Reason.BAD_FILTER_PATH)
    if size == 0:
        return Skip(Reason.SIZE_0)
    if from_ >= rule.window:
        return Skip(Reason.PAST_WINDOW)
    text = _query_text(body, p, rule, query_override)
    if text is None:
        return Skip(Reason.NO_QUERY_TEXT)
    text = text[:MAX_QUERY_CHARS]  # the model sees a few hundred tokens of it at most
    if "_source" in body and body["_source"] is None:
        return Skip(Reason.BAD_SOURCE)  # `null` is the engines' parsing error
    try:
        # The body's `_source` is the engine's error when malformed, whatever the URL says.
        body_filter = source_filter_from_body(body.get("_source"))
        client_filter = source_filter_from_params(params) or body_filter
    except ValueError:
        return Skip(Reason.BAD_SOURCE)
    if any(
        f is not None and set(f.includes) & set(f.excludes) for f in (client_filter, body_filter)
    ):
        # OpenSearch 3 rejects an entry both included and excluded (in the body even when
        # the URL overrides it); older engines answer an empty `_source`. Either way it is
        # the engine's to say.
        return Skip(Reason.BAD_SOURCE)
    new_body = dict(body)
    new_body["from"] = 0
    new_body["size"] = max(rule.window, from_ + size)
    source_filter = None
    keep_body_source = body_filter is None or body_filter.is_identity
    if client_filter is not None and not (client_filter.is_identity and keep_body_source):
        # (A body's own `true` or `{}` stays as written, under a URL `_source=true` too:
        # OpenSearch 3 warns of the `{}`. A body `false` under it must go: the text is needed.)
        new_body.pop("_source", None)
        if not client_filter.is_identity:
            source_filter = client_filter
            widened = _upstream_source(client_filter, rule_text_fields(rule))
            new_body["_source"] = _spelled_as(body.get("_source"), widened)
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


def sampled(rule: RuleConfig, targets: Sequence[str], query: str) -> bool:
    """Is this search in the rule's sampled rollout (`sample`)?

    A stable hash of the targets and the query text decides, so every page of one search,
    and every repeat of it, gets the same answer.
    """
    if rule.sample >= 1:
        return True
    if rule.sample <= 0:
        return False
    key = "\0".join([",".join(targets), query]).encode()
    point = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") / 2**64
    return point < rule.sample


def _is_score(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _hit_shape_ok(hit: Any) -> bool:
    """Is this a hit as the engines write it, in the parts the proxy reads or rewrites?"""
    if not isinstance(hit, dict) or not _is_score(hit.get("_score")):
        return False
    for key in ("_source", "fields"):
        if key in hit and not isinstance(hit[key], dict):
            return False
    fragments = hit.get("highlight")
    if fragments is None:
        return "highlight" not in hit
    return isinstance(fragments, dict) and all(isinstance(f, list) for f in fragments.values())


def rerankable_response(doc: Any) -> Reason | None:
    """None when the response can be reranked, else the reason it cannot.

    `UNEXPECTED_RESPONSE` is a shape no engine writes (not an object, `hits` not an object,
    a hit that is not an object, a `_source`, `fields` or `highlight` that is not one, a
    `_score` that is not a number): nothing in it can be served, so the flow re-sends the
    client's own request. The other reasons leave a response that can still be sliced.
    """
    if not isinstance(doc, dict):
        return Reason.UNEXPECTED_RESPONSE
    hits = doc.get("hits")
    if "hits" in doc and not isinstance(hits, dict):
        return Reason.UNEXPECTED_RESPONSE
    if isinstance(hits, dict):
        found = hits.get("hits")
        if isinstance(found, list) and not all(_hit_shape_ok(h) for h in found):
            return Reason.UNEXPECTED_RESPONSE
    if doc.get("timed_out") is True:
        return Reason.TIMED_OUT
    shards = doc.get("_shards")
    if isinstance(shards, dict) and shards.get("failed", 0):
        return Reason.SHARD_FAILURES
    hits = doc.get("hits")
    if not isinstance(hits, dict) or not isinstance(hits.get("hits"), list):
        return Reason.NO_HITS
    return None
