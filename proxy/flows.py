"""The reranking flows: `_search`, `_msearch` and their template forms.

Each flow buffers the (bounded) request, plans every search with `search.plan_search`,
asks the engine for the window, reranks it and gives the client the response to its own
request. Anything the proxy cannot or should not rerank goes to the engine unchanged.
Reranking fails open: on any reranker error, timeout or overload the client gets the engine's
answer in the engine's order, one WARNING is logged, a counter moves and `X-Rerank` says why.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import time
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from . import jsoncodec
from .app import (
    CONFIG,
    METRICS,
    PROXY_PARAMS,
    RERANKER,
    UPSTREAM,
    Outcome,
    error_response,
    forward,
)
from .config import RuleConfig, resolve_rule, split_targets
from .errors import RerankError, RerankOverloaded, RerankTimeout, UpstreamError
from .rerank.base import check_scores
from .routing import Route, parse_params, split_path_query, without_params
from .search import (
    PLAN_PARAMS,
    SearchPlan,
    Skip,
    client_view,
    plan_search,
    rerank_hits,
    response_is_rerankable,
    split_passages,
    window_texts,
)
from .upstream import UpstreamResponse, iter_stream, request_headers, response_headers

logger = logging.getLogger(__name__)
_SOURCE_PARAMS = frozenset({"source", "source_content_type"})


class _TooLarge(Exception):
    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix


async def _read_bounded(request: web.Request, cap: int) -> bytes:
    if request.content_length is not None and request.content_length > cap:
        raise _TooLarge(b"")
    chunks, size = [], 0
    async for chunk in iter_stream(request.content):
        chunks.append(chunk)
        size += len(chunk)
        if size > cap:
            raise _TooLarge(b"".join(chunks))
    return b"".join(chunks)


async def _prefixed(prefix: bytes, request: web.Request) -> AsyncIterator[bytes]:
    if prefix:
        yield prefix
    async for chunk in iter_stream(request.content):
        yield chunk


def _decode_body(raw: bytes, encoding: str, cap: int) -> bytes | None:
    """The request body without Content-Encoding (bounded), or None if it cannot be read."""
    encoding = encoding.strip().lower()
    if not encoding or encoding == "identity":
        return raw
    if encoding not in ("gzip", "x-gzip", "deflate"):
        return None
    try:
        wbits = 16 + zlib.MAX_WBITS if "gzip" in encoding else zlib.MAX_WBITS
        d = zlib.decompressobj(wbits)
        out = d.decompress(raw, cap + 1)
        if len(out) > cap or not d.eof:
            return None
        return out
    except zlib.error:
        return None


@dataclass(slots=True)
class _Ctx:
    request: web.Request
    outcome: Outcome
    raw_body: bytes
    path: str
    raw_query: str
    params: list[tuple[str, str]]

    @property
    def app(self) -> web.Application:
        return self.request.app

    def headers(self, *, json_body: bool = False) -> CIMultiDict[str]:
        """The caller's headers for an upstream request the proxy makes (credentials kept).

        `json_body`: the body is one JSON document even if the client sent NDJSON, so an
        `x-ndjson` media type (plain or `vnd.elasticsearch+x-ndjson; compatible-with=N`)
        becomes its JSON twin.
        """
        h = request_headers(self.request.headers, self.request.remote, keep_length=False)
        h.popall("Content-Encoding", None)
        h.popall("Accept-Encoding", None)
        if "Content-Type" not in h:
            h["Content-Type"] = "application/json"
        elif json_body:
            h["Content-Type"] = h["Content-Type"].replace("x-ndjson", "json")
        return h

    async def pass_through(self, status: str, reason: str) -> web.StreamResponse:
        """Send the client's own request (minus proxy parameters) and stream the answer."""
        self.outcome.rerank, self.outcome.reason = status, reason
        if status == "failed":
            logger.warning("rerank failed open (%s) for %s", reason, self.path)
        query = without_params(self.raw_query, PROXY_PARAMS)
        return await forward(self.request, self.outcome, body=self.raw_body, raw_query=query)

    async def fetch(
        self, path: str, query: str, body: bytes, *, json_body: bool = False
    ) -> UpstreamResponse | None:
        cfg = self.app[CONFIG]
        t0 = time.perf_counter()
        result = await self.app[UPSTREAM].fetch(
            self.request.method if self.request.method in ("GET", "POST") else "POST",
            path + ("?" + query if query else ""),
            self.headers(json_body=json_body),
            body,
            max_bytes=cfg.upstream.max_buffer_bytes,
        )
        self.outcome.upstream_ms += (time.perf_counter() - t0) * 1000
        return result

    def respond(self, up: UpstreamResponse, doc: Any) -> web.Response:
        body = jsoncodec.dumps(doc)
        headers = response_headers(up.headers)  # hop-by-hop filtered, Via appended
        for name in ("Content-Length", "Content-Encoding"):
            headers.popall(name, None)
        if "gzip" in self.request.headers.get("Accept-Encoding", "").lower():
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        headers.update(self.outcome.headers())
        return web.Response(status=up.status, body=body, headers=headers)


async def _score(ctx: _Ctx, plan: SearchPlan, doc: dict[str, Any]) -> None:
    """Rerank one search response in place; raises RerankError to fail open."""
    reranker = ctx.app.get(RERANKER)
    if reranker is None:
        raise RerankError("no reranker loaded")
    texts = window_texts(doc, plan)
    docs = [t for t in texts if t is not None]
    missing = len(texts) - len(docs)
    if missing:
        ctx.app[METRICS].inc("hits_without_text", missing)
    if not docs:
        return
    max_length = plan.rule.max_length or ctx.app[CONFIG].model.max_length
    # One pair per passage; a document scores as its best passage (`passages: max`).
    passages = [split_passages(d, plan.rule) for d in docs]
    flat = [p for ps in passages for p in ps]
    t0 = time.perf_counter()
    cached = getattr(reranker, "cached", None)
    try:
        # A warm cache answers without a task, a timer or the batcher.
        raw: Sequence[float] | None = (
            cached(plan.query, flat, max_length=max_length) if cached else None
        )
        if raw is None:
            raw = await asyncio.wait_for(
                reranker.score(plan.query, flat, max_length=max_length),
                timeout=plan.rule.timeout_ms / 1000,
            )
        flat_scores = iter(check_scores(raw, len(flat)))
        scores = iter([max(next(flat_scores) for _ in ps) for ps in passages])
        aligned = [None if t is None else next(scores) for t in texts]
        rerank_hits(doc, plan, aligned)
    except TimeoutError as exc:
        raise RerankTimeout(f"rerank exceeded {plan.rule.timeout_ms} ms") from exc
    except RerankError:
        raise
    except Exception as exc:
        raise RerankError(f"{type(exc).__name__}: {exc}") from exc
    finally:
        ctx.outcome.rerank_ms += (time.perf_counter() - t0) * 1000


def _failure(exc: RerankError) -> tuple[str, str]:
    return ("skipped" if isinstance(exc, RerankOverloaded) else "failed", exc.reason)


async def _make_ctx(request: web.Request, outcome: Outcome) -> _Ctx | web.StreamResponse:
    cfg = request.app[CONFIG]
    path, query = split_path_query(request.raw_path)
    try:
        raw = await _read_bounded(request, cfg.upstream.max_buffer_bytes)
    except _TooLarge as big:
        outcome.rerank, outcome.reason = "skipped", "body_too_large"
        query = without_params(query, PROXY_PARAMS)  # the engine would reject `rerank=`
        return await forward(request, outcome, body=_prefixed(big.prefix, request), raw_query=query)
    return _Ctx(request, outcome, raw, path, query, parse_params(query))


async def rerank_request(
    request: web.Request, route: Route, outcome: Outcome
) -> web.StreamResponse:
    # Decisions that need no body: stream the request through without buffering it.
    reason = None
    single = route.kind in ("search", "search_template")
    rule = resolve_rule(request.app[CONFIG], route.targets) if single else None
    if request.headers.get("X-Rerank", "").lower() in ("off", "false", "0"):
        reason = "client_off"
    elif single:
        reason = "mixed_rules" if rule is None else None if rule.enabled else "disabled"
    if reason is not None:
        outcome.rerank, outcome.reason = "skipped", reason
        query = without_params(split_path_query(request.raw_path)[1], PROXY_PARAMS)
        return await forward(request, outcome, raw_query=query)
    made = await _make_ctx(request, outcome)
    if not isinstance(made, _Ctx):
        return made
    ctx = made
    try:
        if single:
            assert rule is not None  # mixed rules were passed through above
            return await _single(ctx, route, rule)
        return await _multi(ctx, route)
    except UpstreamError as exc:
        logger.warning("upstream request failed: %s", exc)
        return error_response(exc.status, exc.error_type, str(exc))


def _decoded_body(ctx: _Ctx) -> bytes | None:
    cap = ctx.app[CONFIG].upstream.max_buffer_bytes
    return _decode_body(ctx.raw_body, ctx.request.headers.get("Content-Encoding", ""), cap)


async def _render(ctx: _Ctx, template: Any) -> Any | None:
    """Render a search template with the engine itself; None when it cannot be rendered."""
    if not isinstance(template, dict):
        return None
    spec = {k: template[k] for k in ("id", "source", "params") if k in template}
    up = await ctx.fetch("/_render/template", "", jsoncodec.dumps(spec), json_body=True)
    if up is None or up.status != 200:
        return None
    try:
        return jsoncodec.loads(up.body).get("template_output")
    except ValueError:
        return None


async def _single(ctx: _Ctx, route: Route, rule: RuleConfig) -> web.StreamResponse:
    decoded = _decoded_body(ctx)
    p = dict(ctx.params)
    try:
        if decoded is None:
            raise ValueError("undecodable body")
        if decoded.strip():
            body = jsoncodec.loads(decoded)
        elif "source" in p:
            body = jsoncodec.loads(p["source"])
        else:
            body = {}
    except ValueError:
        return await ctx.pass_through("skipped", "unparsable_body")
    override = ctx.request.headers.get("X-Rerank-Query")
    if route.kind == "search_template":
        if not isinstance(body, dict) or body.get("explain") or body.get("profile"):
            return await ctx.pass_through("skipped", "template_options")
        params = body.get("params")
        value = (
            params.get(rule.query_param) if isinstance(params, dict) and rule.query_param else None
        )
        if override is None and isinstance(value, str):
            override = value
        body = await _render(ctx, body)
        if body is None:
            return await ctx.pass_through("skipped", "template_not_rendered")
    plan = plan_search(body, ctx.params, rule, query_override=override)
    if isinstance(plan, Skip):
        return await ctx.pass_through("skipped", plan.reason)
    search_path = ctx.path[: -len("/template")] if route.kind == "search_template" else ctx.path
    query = without_params(ctx.raw_query, PLAN_PARAMS | _SOURCE_PARAMS)
    up = await ctx.fetch(search_path, query, jsoncodec.dumps(plan.body))
    if up is None or not 200 <= up.status < 300:
        return await ctx.pass_through("skipped", "upstream_status" if up else "response_too_large")
    try:
        doc = jsoncodec.loads(up.body)
    except ValueError:
        return await ctx.pass_through("skipped", "unparsable_response")
    reason = response_is_rerankable(doc)
    if reason is not None:
        return await ctx.pass_through("skipped", reason)
    try:
        await _score(ctx, plan, doc)
    except RerankError as exc:
        ctx.app[METRICS].inc("rerank_errors")
        return await ctx.pass_through(*_failure(exc))
    ctx.outcome.rerank = "applied"
    return ctx.respond(up, client_view(doc, plan))


def _ndjson(decoded: bytes) -> list[tuple[bytes, Any]] | None:
    lines = [ln for ln in decoded.split(b"\n") if ln.strip()]
    try:
        return [(ln, jsoncodec.loads(ln)) for ln in lines]
    except ValueError:
        return None


async def _multi(ctx: _Ctx, route: Route) -> web.StreamResponse:
    cfg = ctx.app[CONFIG]
    decoded = _decoded_body(ctx)
    lines = _ndjson(decoded) if decoded is not None else None
    if not lines or len(lines) % 2 or not all(isinstance(h, dict) for _, h in lines[::2]):
        return await ctx.pass_through("skipped", "unparsable_body")
    override = ctx.request.headers.get("X-Rerank-Query")
    templated = route.kind == "msearch_template"
    out_lines: list[bytes] = []
    plans: list[SearchPlan | Skip] = []
    for (head_raw, head), (body_raw, body) in zip(lines[::2], lines[1::2], strict=True):
        index = head.get("index")
        targets = (
            tuple(split_targets(index))
            if isinstance(index, str)
            else tuple(index)
            if isinstance(index, list)
            else route.targets
        )
        rule = resolve_rule(cfg, targets)
        item_override = override
        if templated:
            params = body.get("params") if isinstance(body, dict) else None
            if rule and item_override is None and rule.query_param and isinstance(params, dict):
                value = params.get(rule.query_param)
                item_override = value if isinstance(value, str) else None
            body = await _render(ctx, body)
            if body is None:
                return await ctx.pass_through("skipped", "template_not_rendered")
            body_raw = jsoncodec.dumps(body)
        plan: SearchPlan | Skip = (
            Skip("mixed_rules")
            if rule is None
            else plan_search(body, [], rule, query_override=item_override)
        )
        plans.append(plan)
        out_lines += [
            head_raw,
            jsoncodec.dumps(plan.body) if isinstance(plan, SearchPlan) else body_raw,
        ]
    if not any(isinstance(p, SearchPlan) for p in plans):
        reasons = sorted({p.reason for p in plans if isinstance(p, Skip)})
        return await ctx.pass_through("skipped", "+".join(reasons))
    params = [(k, v) for k, v in ctx.params if k == "filter_path"]
    query = without_params(ctx.raw_query, PROXY_PARAMS | {"filter_path"})
    path = ctx.path[: -len("/template")] if templated else ctx.path
    up = await ctx.fetch(path, query, b"\n".join(out_lines) + b"\n")
    if up is None or not 200 <= up.status < 300:
        return await ctx.pass_through("skipped", "upstream_status" if up else "response_too_large")
    try:
        doc = jsoncodec.loads(up.body)
        responses = doc["responses"]
        assert isinstance(responses, list) and len(responses) == len(plans)
    except (ValueError, KeyError, TypeError, AssertionError):
        return await ctx.pass_through("skipped", "unexpected_response")

    async def one(i: int, plan: SearchPlan | Skip) -> str:
        if isinstance(plan, Skip):
            return f"skipped:{plan.reason}"
        item = responses[i]
        reason = response_is_rerankable(item) if not item.get("error") else "item_error"
        if reason is not None:
            if reason == "item_error":
                return f"skipped:{reason}"
            responses[i] = client_view(item, plan, apply_path=False)
            return f"skipped:{reason}"
        try:
            await _score(ctx, plan, item)
            result = "applied"
        except RerankError as exc:
            ctx.app[METRICS].inc("rerank_errors")
            status, why = _failure(exc)
            logger.warning("rerank failed open (%s) for msearch item %d", why, i)
            result = f"{status}:{why}"
        responses[i] = client_view(item, plan, apply_path=False)
        return result

    ctx.outcome.items = list(await asyncio.gather(*(one(i, p) for i, p in enumerate(plans))))
    kinds = {s.split(":")[0] for s in ctx.outcome.items}
    ctx.outcome.rerank = next(k for k in ("applied", "failed", "skipped") if k in kinds)
    if params:
        from .filtering import apply_filter_path

        doc = apply_filter_path(doc, params[-1][1])
    return ctx.respond(up, doc)
