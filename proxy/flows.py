"""The rerank flows for `_search`, `_msearch` and their template forms.

Each search goes through the same four steps, one module each: `plan` (rerank it, and what
to ask the engine for), `fetch` (ask the engine once for the widened window), `score` (a
permutation of the window; the engine's response is left as it was) and `answer` (the
client's view in either order). This module strings them together and owns the one
fail-open rule:

- Before the engine was asked, a search the proxy leaves alone is sent as the client sent
  it (streamed when no body is needed to decide). That includes a body the engine would
  reject: `jsoncodec` parses as strictly as the engine (no `NaN`, no duplicate keys, nesting
  bounded), so the client sees the engine's own error, never a rewritten body's answer.
- Once the widened response is in hand, the client gets its view of it: reranked, or in the
  engine's order when the search is skipped or the reranker fails (timeout, overload,
  invalid scores, any error). The search is never sent twice for that.
- The client's own request is re-sent only when the proxy holds nothing it can serve: the
  response was too large to buffer, did not parse (too deep included), had a shape no
  engine writes (`plan.rerankable_response`; for `_msearch`, any item's), or was a 4xx
  that the widening may have caused (`fetch.servable_as_is`).

Every skip and failure is a closed-set `Reason` on the request's `Outcome`; a failure logs
one WARNING.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable
from typing import Any

from aiohttp import web

from . import jsoncodec, offload
from .answer import client_view
from .config import RuleConfig, resolve_rule, split_targets
from .errors import RerankError, RerankOverloaded, UpstreamError
from .fetch import (
    BodyTooLarge,
    Fetched,
    SearchRequest,
    parse_ndjson,
    read_search,
    servable_as_is,
)
from .filtering import apply_filter_path, filter_path_valid
from .keys import METRICS, PROXY_PARAMS, RERANKER, SETTINGS, SHADOW
from .outcome import ItemOutcome, Outcome, Reason, State
from .passthrough import forward, upstream_error_response
from .plan import PLAN_PARAMS, SearchPlan, Skip, plan_search, rerankable_response, sampled
from .routing import Route, split_path_query, without_params
from .score import Ranking, score_window, window_texts
from .settings import Snapshot
from .shadow import ShadowJob

logger = logging.getLogger(__name__)
_SOURCE_PARAMS = frozenset({"source", "source_content_type"})
_OFF = ("off", "false", "0")
#: `_msearch/template` items rendered (and reranked) per request at most; past it the request
#: goes to the engine as it came
MAX_RENDERED_ITEMS = 32


async def rerank_request(
    request: web.Request, route: Route, outcome: Outcome, snapshot: Snapshot
) -> web.StreamResponse:
    """Answer one search request (`route.kind` is a search kind)."""
    single = route.kind in ("search", "search_template")
    outcome.target = ",".join(route.targets)
    if request.headers.get("X-Rerank", "").lower() in _OFF:
        return await _stream_skipped(request, outcome, Reason.CLIENT_OFF)
    rule: RuleConfig | None = None
    if single:
        # Decisions that need no body: the request streams through without buffering.
        rule = resolve_rule(snapshot.rules, route.targets)
        outcome.rule = rule_name(rule, snapshot.rules.defaults)
        if rule is None:
            return await _stream_skipped(request, outcome, Reason.MIXED_RULES)
        if not rule.enabled:
            return await _stream_skipped(request, outcome, Reason.DISABLED)
    made = await read_search(request, outcome, snapshot)
    if not isinstance(made, SearchRequest):
        return made
    flow: Awaitable[web.StreamResponse] = (
        _single(made, route, rule) if rule is not None else _multi(made, route)
    )
    try:
        return await flow
    except UpstreamError as exc:
        return upstream_error_response(request, exc)


def rule_name(rule: RuleConfig | None, defaults: RuleConfig) -> str:
    """How logs name a rule: its first `match` entry, `defaults`, or `mixed`."""
    if rule is None:
        return "mixed"
    return "defaults" if rule is defaults or not rule.match else rule.match[0]


async def _stream_skipped(
    request: web.Request, outcome: Outcome, reason: Reason
) -> web.StreamResponse:
    outcome.single(State.SKIPPED, reason)
    query = without_params(split_path_query(request.raw_path)[1], PROXY_PARAMS)
    return await forward(request, outcome, raw_query=query)


async def _skip(sr: SearchRequest, reason: Reason) -> web.StreamResponse:
    """Leave the search alone: the client's own request goes to the engine."""
    sr.outcome.single(State.SKIPPED, reason)
    return await sr.resend()


async def _unservable(sr: SearchRequest, fetched: Fetched, searches: int) -> web.StreamResponse:
    """The widened search brought back no document to build a view from."""
    reason = fetched.problem or Reason.UNEXPECTED_RESPONSE
    if searches > 1:
        sr.outcome.items([ItemOutcome(State.SKIPPED, reason)] * searches)
    else:
        sr.outcome.single(State.SKIPPED, reason)
    if fetched.up is not None and servable_as_is(fetched.up):
        return await sr.serve_as_is(fetched.up)
    return await sr.resend()


async def _rank(
    sr: SearchRequest, plan: SearchPlan, doc: dict[str, Any], what: str
) -> tuple[ItemOutcome, Ranking | None]:
    """Score one search's window; a reranker failure becomes an outcome (fail open)."""
    texts = window_texts(doc, plan)
    missing = texts.count(None)
    if missing:
        sr.app[METRICS].hits_without_text.inc(missing)
    max_length = plan.rule.max_length or sr.app[SETTINGS].static.model.max_length
    window = doc["hits"]["hits"][: plan.rule.window]
    logger.debug(
        "rerank %s: query %r, %d hits in the window, %d without text",
        what,
        plan.query,
        len(window),
        missing,
    )
    t0 = time.perf_counter()
    try:
        ranking = await score_window(
            sr.app.get(RERANKER), plan, window, texts, max_length=max_length
        )
    except RerankError as exc:
        state = State.SKIPPED if isinstance(exc, RerankOverloaded) else State.FAILED
        logger.warning("rerank %s open (%s) for %s: %s", state, exc.reason, what, exc)
        return ItemOutcome(state, exc.reason), None
    finally:
        seconds = time.perf_counter() - t0
        sr.outcome.rerank_ms += seconds * 1000
        sr.app[METRICS].rerank_duration.observe(seconds)
    if ranking is not None:
        sr.app[METRICS].pairs_per_search.observe(ranking.pairs)
    return ItemOutcome(State.APPLIED), ranking


async def _parse_single(sr: SearchRequest) -> tuple[Any, int]:
    """The search body (JSON body, `source=` parameter, or none) and its size in bytes;
    ValueError if unreadable, `BodyTooLarge` past the search body cap."""
    decoded = await offload.run(len(sr.raw_body), sr.decoded_body)
    if decoded is None:
        raise ValueError("undecodable body")
    if decoded.strip():
        return await offload.run(len(decoded), jsoncodec.loads, decoded), len(decoded)
    p = dict(sr.params)
    if "source" in p:
        return jsoncodec.loads(p["source"]), len(p["source"])
    return {}, 0


async def _single(sr: SearchRequest, route: Route, rule: RuleConfig) -> web.StreamResponse:
    try:
        body, size = await _parse_single(sr)
    except BodyTooLarge:
        return await _skip(sr, Reason.BODY_TOO_LARGE)
    except ValueError:
        return await _skip(sr, Reason.UNPARSABLE_BODY)
    override = sr.request.headers.get("X-Rerank-Query")
    if route.kind == "search_template":
        if not isinstance(body, dict) or body.get("explain") or body.get("profile"):
            return await _skip(sr, Reason.TEMPLATE_OPTIONS)
        params = body.get("params")
        value = (
            params.get(rule.query_param) if isinstance(params, dict) and rule.query_param else None
        )
        if override is None and isinstance(value, str):
            override = value
        body = await sr.render(body)
        if body is None:
            return await _skip(sr, Reason.TEMPLATE_NOT_RENDERED)
    plan = await offload.run(size, plan_search, body, sr.params, rule, query_override=override)
    if isinstance(plan, Skip):
        return await _skip(sr, plan.reason)
    if not sampled(rule, route.targets, plan.query):
        return await _skip(sr, Reason.NOT_SAMPLED)
    path = sr.path[: -len("/template")] if route.kind == "search_template" else sr.path
    query = without_params(sr.raw_query, PLAN_PARAMS | _SOURCE_PARAMS)
    if rule.mode == "shadow":
        return await _shadow(sr, plan, path + ("?" + query if query else ""))
    widened = await offload.run(size, jsoncodec.dumps, plan.body)
    fetched = await sr.fetch_window(path, query, widened)
    doc = fetched.doc
    if fetched.up is None or fetched.problem is not None:
        return await _unservable(sr, fetched, 1)
    reason = rerankable_response(doc)
    if reason is Reason.UNEXPECTED_RESPONSE:
        return await _unservable(sr, Fetched(None, problem=reason), 1)
    if reason is not None:
        sr.outcome.single(State.SKIPPED, reason)
        return await sr.respond(fetched.up, client_view(doc, plan))
    result, ranking = await _rank(sr, plan, doc, sr.path)
    sr.outcome.single(result.state, result.reason)
    view = client_view(doc, plan, ranking, took_ms=sr.outcome.rerank_ms)
    return await sr.respond(fetched.up, view)


async def _shadow(sr: SearchRequest, plan: SearchPlan, widened: str) -> web.StreamResponse:
    """The engine's answer to the client's own request now; the rerank afterwards."""
    sr.outcome.single(State.SHADOW)
    headers = sr.headers()  # the caller's, taken now: the request is gone by then
    resp = await sr.resend()
    if 200 <= resp.status < 300:
        max_length = plan.rule.max_length or sr.app[SETTINGS].static.model.max_length
        method = sr.request.method if sr.request.method in ("GET", "POST") else "POST"
        job = ShadowJob(
            method,
            widened,
            headers,
            jsoncodec.dumps(plan.body),
            plan,
            sr.outcome.target,
            max_length,
        )
        sr.app[SHADOW].submit(job)
    return resp


def _item_targets(head: dict[str, Any], route: Route) -> tuple[str, ...]:
    index = head.get("index")
    if isinstance(index, str):
        return tuple(split_targets(index))
    if isinstance(index, list):
        return tuple(index)
    return route.targets


def _item_unservable(plan: SearchPlan | Skip, item: Any) -> bool:
    """Is this `_msearch` item's answer to a widened search of a shape no engine writes?"""
    if isinstance(plan, Skip) or (isinstance(item, dict) and item.get("error")):
        return False  # the engine's answer to the client's own item, or its own error
    return rerankable_response(item) is Reason.UNEXPECTED_RESPONSE


async def _multi(sr: SearchRequest, route: Route) -> web.StreamResponse:
    filter_paths = [v for k, v in sr.params if k == "filter_path"]
    if not all(filter_path_valid(v) for v in filter_paths):
        return await _skip(sr, Reason.BAD_FILTER_PATH)
    try:
        decoded = await offload.run(len(sr.raw_body), sr.decoded_body)
    except BodyTooLarge:
        return await _skip(sr, Reason.BODY_TOO_LARGE)
    lines = await offload.run(len(decoded), parse_ndjson, decoded) if decoded is not None else None
    if not lines or len(lines) % 2 or not all(isinstance(h, dict) for _, h in lines[::2]):
        return await _skip(sr, Reason.UNPARSABLE_BODY)
    override = sr.request.headers.get("X-Rerank-Query")
    templated = route.kind == "msearch_template"
    if templated and len(lines) // 2 > MAX_RENDERED_ITEMS:
        # Each item is one `_render` call: a small request must not fan out into hundreds.
        return await _skip(sr, Reason.TOO_MANY_ITEMS)
    out_lines: list[bytes] = []
    plans: list[SearchPlan | Skip] = []
    for (head_raw, head), (body_raw, body) in zip(lines[::2], lines[1::2], strict=True):
        rule = resolve_rule(sr.snapshot.rules, _item_targets(head, route))  # per item
        item_override = override
        if templated:
            params = body.get("params") if isinstance(body, dict) else None
            if rule and item_override is None and rule.query_param and isinstance(params, dict):
                value = params.get(rule.query_param)
                item_override = value if isinstance(value, str) else None
            body = await sr.render(body)
            if body is None:
                return await _skip(sr, Reason.TEMPLATE_NOT_RENDERED)
            body_raw = jsoncodec.dumps(body)
        targets = _item_targets(head, route)
        size = len(body_raw)
        plan: SearchPlan | Skip = (
            Skip(Reason.MIXED_RULES)
            if rule is None
            else await offload.run(size, plan_search, body, [], rule, query_override=item_override)
        )
        if isinstance(plan, SearchPlan) and rule is not None:
            if rule.mode == "shadow":
                plan = Skip(Reason.SHADOW_ITEM)  # shadow mode covers `_search` only
            elif not sampled(rule, targets, plan.query):
                plan = Skip(Reason.NOT_SAMPLED)
        plans.append(plan)
        out_lines += [
            head_raw,
            await offload.run(size, jsoncodec.dumps, plan.body)
            if isinstance(plan, SearchPlan)
            else body_raw,
        ]
    skips = [p for p in plans if isinstance(p, Skip)]
    if len(skips) == len(plans):
        sr.outcome.items([ItemOutcome(State.SKIPPED, p.reason) for p in skips])
        return await sr.resend()
    query = without_params(sr.raw_query, PROXY_PARAMS | {"filter_path"})
    path = sr.path[: -len("/template")] if templated else sr.path
    fetched = await sr.fetch_window(path, query, b"\n".join(out_lines) + b"\n")
    doc = fetched.doc
    if fetched.up is None or fetched.problem is not None:
        return await _unservable(sr, fetched, len(plans))
    responses = doc.get("responses") if isinstance(doc, dict) else None
    if (
        not isinstance(responses, list)
        or len(responses) != len(plans)
        or any(_item_unservable(p, r) for p, r in zip(plans, responses, strict=True))
    ):
        # Nothing to build that item's view from: the client's own `_msearch` instead.
        return await _unservable(sr, Fetched(None, problem=Reason.UNEXPECTED_RESPONSE), len(plans))

    async def one(i: int, plan: SearchPlan | Skip) -> tuple[ItemOutcome, Any]:
        item = responses[i]
        if isinstance(plan, Skip):
            return ItemOutcome(State.SKIPPED, plan.reason), item
        if isinstance(item, dict) and item.get("error"):
            return ItemOutcome(State.SKIPPED, Reason.ITEM_ERROR), item
        reason = rerankable_response(item)
        if reason is not None:
            return ItemOutcome(State.SKIPPED, reason), client_view(item, plan, apply_path=False)
        t0 = time.perf_counter()
        result, ranking = await _rank(sr, plan, item, f"msearch item {i}")
        took_ms = (time.perf_counter() - t0) * 1000
        return result, client_view(item, plan, ranking, apply_path=False, took_ms=took_ms)

    t0 = time.perf_counter()
    results = await asyncio.gather(*(one(i, p) for i, p in enumerate(plans)))
    sr.outcome.items([r for r, _ in results])
    answer: Any = {**doc, "responses": [view for _, view in results]}
    took = answer.get("took")
    if isinstance(took, int) and not isinstance(took, bool):
        answer["took"] = took + math.ceil((time.perf_counter() - t0) * 1000)
    if filter_paths:
        answer = apply_filter_path(answer, filter_paths[-1])
    return await sr.respond(fetched.up, answer)
