"""The comparison page's routes: the static page and `POST .../compare/api/search`.

The API runs one search through the same steps as the rerank flow (`flows`): `plan_search`
against the index rule of the request's settings snapshot, one widened fetch with the
caller's own headers and credentials (`fetch.SearchRequest`: the cluster's security applies
as to any search through the proxy, and nothing is stored), `score_window` with the app's
reranker, and `answer.client_view` twice, in the engine's order and in the reranked one,
from that one response. `sides.side_by_side` turns the two views into the page's columns.

Unlike a client's search, the comparison ranks a rule that is disabled, sampled or in
shadow mode too (showing what turning it on would do); it reports the rule's settings with
the answer. It is not counted in the search metrics and not written to the access log.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import quote

from aiohttp import web

from .. import jsoncodec
from ..answer import client_view
from ..config import RuleConfig, resolve_rule, rule_text_fields
from ..errors import RerankError, RerankOverloaded, UpstreamError
from ..fetch import SearchRequest
from ..flows import rule_name
from ..keys import RERANKER, SETTINGS
from ..outcome import Outcome, Reason, State
from ..passthrough import error_response, upstream_error_response
from ..plan import SearchPlan, Skip, plan_search, rerankable_response
from ..routing import ADMIN_PREFIX
from ..score import Ranking, score_window, window_texts
from .judgments import Judgments, Match, load_judgments
from .sides import side_by_side

logger = logging.getLogger(__name__)

PREFIX = f"{ADMIN_PREFIX}compare"
API_PATH = f"{PREFIX}/api/search"
DEFAULT_SIZE = 10
MAX_SIZE = 100
MAX_BODY_BYTES = 1 << 20
_KEYS = frozenset({"index", "query", "query_id", "body", "size"})
JUDGMENTS = web.AppKey("compare_judgments", Judgments)

# The page loads nothing from anywhere but the proxy: the browser enforces it too.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
        " connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_ASSETS = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "style.css": "text/css",
    "favicon.svg": "image/svg+xml",
}


class BadRequest(ValueError):
    """The API request cannot be run; the message says what to change."""


@dataclass(frozen=True, slots=True)
class CompareRequest:
    """A validated API request."""

    index: str
    targets: tuple[str, ...]
    query: str | None
    query_id: str | None
    body: dict[str, Any] | None
    size: int

    @property
    def path(self) -> str:
        """The search path for the targets, each percent-encoded (date math included)."""
        return "/" + ",".join(quote(t, safe="*") for t in self.targets) + "/_search"


def parse_request(raw: bytes) -> CompareRequest:
    """Validate the API body: `index`, and `query` or `body`; `query_id`, `size` optional."""
    try:
        doc = jsoncodec.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequest("the request body must be a JSON object")
    unknown = sorted(set(doc) - _KEYS)
    if unknown:
        raise BadRequest(f"unknown key {unknown[0]!r}; expected {', '.join(sorted(_KEYS))}")
    index = doc.get("index")
    if not isinstance(index, str) or not index.strip():
        raise BadRequest("'index' must be a non-empty string (an index, alias or pattern)")
    targets = tuple(t.strip() for t in index.split(",") if t.strip())
    for target in targets:
        if target.startswith("_") and target != "_all":
            raise BadRequest(f"'index': {target!r} is not an index name")
    query = doc.get("query")
    if query is not None and (not isinstance(query, str) or not query.strip()):
        raise BadRequest("'query' must be a non-empty string")
    query_id = doc.get("query_id")
    if query_id is not None and (not isinstance(query_id, str) or not query_id.strip()):
        raise BadRequest("'query_id' must be a non-empty string")
    body = doc.get("body")
    if body is not None and not isinstance(body, dict):
        raise BadRequest("'body' must be a JSON object (a search body)")
    if query is None and body is None:
        raise BadRequest("give 'query' (the query text) or 'body' (a search body), or both")
    size = doc.get("size", DEFAULT_SIZE)
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_SIZE:
        raise BadRequest(f"'size' must be an integer from 1 to {MAX_SIZE}")
    return CompareRequest(
        index=index.strip(),
        targets=targets,
        query=query.strip() if query is not None else None,
        query_id=query_id.strip() if query_id is not None else None,
        body=body,
        size=size,
    )


def search_body(req: CompareRequest, rule: RuleConfig) -> dict[str, Any]:
    """The search to plan: the caller's body, or a `multi_match` over the rule's fields.

    The page always shows the top `size` hits: a body's own `from` and `size` are replaced.
    """
    if req.body is not None:
        body = {k: v for k, v in req.body.items() if k != "from"}
    else:
        match: dict[str, Any] = {"query": req.query}
        fields = rule_text_fields(rule)
        if fields:
            match["fields"] = list(fields)
        body = {"query": {"multi_match": match}}  # no fields: the index's default fields
    body["size"] = req.size
    return body


def _bad(reason: str, status: int = 400, error_type: str = "compare_bad_request") -> web.Response:
    return error_response(status, error_type, reason)


async def api_search(request: web.Request) -> web.StreamResponse:
    """`POST {PREFIX}/api/search`: both orders of one search, side by side."""
    if request.method != "POST":
        resp = _bad("use POST", 405, "compare_method_not_allowed")
        resp.headers["Allow"] = "POST"
        return resp
    if request.content_type != "application/json":
        # Also what keeps other sites' pages from posting here with the user's credentials:
        # a cross-origin JSON request needs a CORS preflight, which this route refuses.
        return _bad("Content-Type must be application/json", 415, "compare_unsupported_media_type")
    if request.headers.get("Content-Encoding", "identity").lower() != "identity":
        return _bad("send the body uncompressed", 415, "compare_unsupported_media_type")
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return _bad(f"the request body is over {MAX_BODY_BYTES} bytes", 413, "compare_too_large")
    try:
        req = parse_request(await request.read())
    except BadRequest as exc:
        return _bad(str(exc))
    snapshot = request.app[SETTINGS].current  # one snapshot for the whole request
    rule = resolve_rule(snapshot.rules, req.targets)
    if rule is None:
        return _bad(
            f"the targets {req.index!r} resolve to different index rules: compare one at a time"
        )
    # Show what the rule would do even while it is off (sampled or shadowed ones rank anyway).
    ranked_rule = rule if rule.enabled else dataclasses.replace(rule, enabled=True)
    plan = plan_search(search_body(req, ranked_rule), [], ranked_rule, query_override=req.query)
    if isinstance(plan, Skip):
        return _bad(
            f"this search is not reranked ({plan.reason}): the proxy passes it through as it is",
            error_type="compare_not_rerankable",
        )
    outcome = Outcome()
    sr = SearchRequest(request, outcome, snapshot, b"", req.path, "", [])
    try:
        fetched = await sr.fetch_window(req.path, "", jsoncodec.dumps(plan.body))
    except UpstreamError as exc:
        return upstream_error_response(request, exc)
    if fetched.up is None:
        return _bad(
            "the engine's answer is over upstream.max_buffer_bytes", 502, "compare_upstream"
        )
    if fetched.problem is Reason.UPSTREAM_STATUS:
        return await sr.serve_as_is(
            fetched.up
        )  # the engine's own error (401, index not found, ...)
    if (
        fetched.problem is not None
        or rerankable_response(fetched.doc) is Reason.UNEXPECTED_RESPONSE
    ):
        return _bad(
            f"the engine's answer cannot be read ({fetched.problem})", 502, "compare_upstream"
        )
    doc: dict[str, Any] = fetched.doc
    t0 = time.perf_counter()
    ranking, texts, state = await _rank(request, plan, doc)
    outcome.rerank_ms = (time.perf_counter() - t0) * 1000
    outcome.single(*state)
    judgments = request.app.get(JUDGMENTS)
    match = judgments.match(plan.query, req.query_id) if judgments is not None else None
    sides = side_by_side(
        doc,
        client_view(doc, plan),
        client_view(doc, plan, ranking),
        ranking,
        texts,
        match,
        req.size,
    )
    reranker = request.app.get(RERANKER)
    hits = doc.get("hits")
    answer = {
        "index": req.index,
        "query": plan.query,
        "size": req.size,
        "scored": len(texts) - texts.count(None),
        "window": len(texts),
        "rule": {
            "name": rule_name(rule, snapshot.rules.defaults),
            "enabled": rule.enabled,
            "mode": rule.mode,
            "score_mode": rule.score_mode,
            "window": rule.window,
        },
        "model": reranker.model_id if reranker is not None else None,
        "rerank": {
            "state": str(state[0]),
            "reason": None if state[1] is Reason.NONE else str(state[1]),
        },
        "took_ms": {"engine": round(outcome.upstream_ms, 1), "rerank": round(outcome.rerank_ms, 1)},
        "total": hits.get("total") if isinstance(hits, dict) else None,
        "judgments": _judgments_summary(judgments, match),
        "search": plan.body,
        **sides,
    }
    logger.info(
        "compare %s: %d hits, rerank %s", req.index, len(sides["reranked"]), outcome.searches[0]
    )
    logger.debug("compare %s: query %r", req.index, plan.query)
    headers = {"Cache-Control": "no-store", **outcome.headers()}
    return web.Response(
        body=jsoncodec.dumps(answer), content_type="application/json", headers=headers
    )


async def _rank(
    request: web.Request, plan: SearchPlan, doc: dict[str, Any]
) -> tuple[Ranking | None, list[str | None], tuple[State, Reason]]:
    """Score the window as the flow does; a failure is reported, not raised."""
    skip = rerankable_response(doc)
    if skip is Reason.NO_HITS:
        return None, [], (State.SKIPPED, skip)
    texts = window_texts(doc, plan)
    if skip is not None:  # timed out, shard failures: the flow leaves these alone
        return None, texts, (State.SKIPPED, skip)
    window = doc["hits"]["hits"][: plan.rule.window]
    max_length = plan.rule.max_length or request.app[SETTINGS].static.model.max_length
    try:
        ranking = await score_window(
            request.app.get(RERANKER), plan, window, texts, max_length=max_length
        )
    except RerankError as exc:
        state = State.SKIPPED if isinstance(exc, RerankOverloaded) else State.FAILED
        logger.warning("compare: rerank %s (%s): %s", state, exc.reason, exc)
        return None, texts, (state, exc.reason)
    return ranking, texts, (State.APPLIED, Reason.NONE)


def _judgments_summary(judgments: Judgments | None, match: Match | None) -> dict[str, Any] | None:
    if judgments is None:
        return None
    if match is None:
        return {"query_id": None, "matched_by": None, "judged": 0, "relevant": 0}
    return {
        "query_id": match.query_id,
        "matched_by": match.matched_by,
        "judged": len(match.grades),
        "relevant": sum(1 for g in match.grades.values() if g > 0),
    }


# -- the static page ---------------------------------------------------------------------


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _static(assets: Mapping[str, tuple[bytes, str]]) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        name = request.match_info.get("name") or "index.html"
        found = assets.get(name)
        if found is None:
            return error_response(404, "proxy_not_found", f"no admin endpoint {request.path!r}")
        body, content_type = found
        return web.Response(
            body=body, content_type=content_type, charset="utf-8", headers=_PAGE_HEADERS
        )

    return handler


async def _to_page(request: web.Request) -> web.StreamResponse:
    raise web.HTTPPermanentRedirect(f"{PREFIX}/")


def add_routes(app: web.Application) -> None:
    """Register the page and its API when `compare.enabled`; otherwise do nothing.

    Reads `compare.qrels` (a `ConfigError` when it cannot be read) and the page's files.
    Call before the app starts.
    """
    cfg = app[SETTINGS].static.compare
    if not cfg.enabled:
        return
    if cfg.qrels:
        judgments = app[JUDGMENTS] = load_judgments(cfg.qrels)
        logger.info(
            "compare: %d judged queries from %s (query texts: %s)",
            len(judgments.qrels),
            judgments.source,
            judgments.queries_file or "none; matched by query id only",
        )
    static = resources.files(__package__).joinpath("static")
    assets = {name: (static.joinpath(name).read_bytes(), ct) for name, ct in _ASSETS.items()}
    page = _static(assets)
    app.router.add_get(PREFIX, _to_page)
    app.router.add_get(f"{PREFIX}/", page)
    app.router.add_route("*", API_PATH, api_search)
    app.router.add_get(PREFIX + "/{name}", page)
