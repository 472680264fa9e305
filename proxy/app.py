"""The aiohttp application: lifecycle, admin endpoints, pass-through and dispatch.

`create_app(cfg, reranker=...)` builds everything; shared objects live under typed AppKeys.
Every request is forwarded unchanged except searches, which `flows.py` may rerank. Pass-
through traffic streams in both directions; request bodies are forwarded as the client sent
them (aiohttp's request decompression is switched off in `make_runner`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web

from . import __version__
from .config import Config
from .errors import UpstreamError, UpstreamUnavailable, es_error_body
from .metrics import Metrics
from .rerank.base import Reranker
from .routing import ADMIN_PREFIX, classify, split_path_query
from .upstream import Upstream, iter_stream, request_headers, response_headers

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("proxy.access")

CONFIG = web.AppKey("config", Config)
UPSTREAM = web.AppKey("upstream", Upstream)
RERANKER = web.AppKey("reranker", Reranker)
METRICS = web.AppKey("metrics", Metrics)
PROXY_PARAMS = frozenset({"rerank"})
SMALL_BODY = 64 * 1024  # responses up to this size are sent in one write


@dataclass(slots=True)
class AppState:
    ready: bool = False
    inflight: int = 0
    started: float = field(default_factory=time.time)


STATE = web.AppKey("state", AppState)


@dataclass(slots=True)
class Outcome:
    """What happened to one request, for headers, counters and the access log."""

    rerank: str = "none"  # none | applied | skipped | failed
    reason: str = ""
    upstream_ms: float = 0.0
    rerank_ms: float = 0.0
    items: list[str] = field(default_factory=list)

    def headers(self) -> dict[str, str]:
        if self.rerank == "none":
            return {}
        out = {"X-Rerank": self.rerank, "X-Rerank-Took-Ms": f"{self.rerank_ms:.1f}"}
        if self.reason:
            out["X-Rerank-Reason"] = self.reason
        if self.items:
            out["X-Rerank-Items"] = ",".join(self.items)
        return out


def error_response(status: int, error_type: str, reason: str) -> web.Response:
    return web.Response(
        status=status,
        body=es_error_body(status, error_type, reason),
        content_type="application/json",
        charset="UTF-8",
    )


async def forward(
    request: web.Request,
    outcome: Outcome,
    *,
    body: bytes | AsyncIterable[bytes] | None = None,
    raw_query: str | None = None,
) -> web.StreamResponse:
    """Forward a request upstream and stream the response back unchanged."""
    upstream = request.app[UPSTREAM]
    path, query = split_path_query(request.raw_path)
    if raw_query is not None:
        query = raw_query
    keep_length = body is None
    if body is None and request.body_exists:
        body = iter_stream(request.content)
    headers = request_headers(request.headers, request.remote, keep_length=keep_length)
    t0 = time.perf_counter()
    try:
        up = await upstream.open(
            request.method, path + ("?" + query if query else ""), headers, body
        )
    except UpstreamError as exc:
        logger.warning("upstream request failed: %s", exc)
        request.app[METRICS].inc(f"upstream_errors_{exc.status}")
        return error_response(exc.status, exc.error_type, str(exc))
    outcome.upstream_ms = (time.perf_counter() - t0) * 1000
    headers = response_headers(up.headers)
    headers.update(outcome.headers())
    chunks: list[bytes] = []
    length = up.content_length
    small = length is not None and length <= SMALL_BODY and request.method != "HEAD"
    try:
        if small:
            # Small bodies (most responses) go out in one write instead of three.
            async for chunk in upstream.iter_body(up):
                chunks.append(chunk)
            body = b"".join(chunks)
            if len(body) == length:
                up.release()
                return web.Response(status=up.status, reason=up.reason, body=body, headers=headers)
            chunks = [body]  # short body: send what came, then cut the connection below
            raise UpstreamUnavailable("upstream body ended early")
    except UpstreamError:
        pass  # handled below, after the headers, exactly like a stream that broke off
    resp = web.StreamResponse(status=up.status, reason=up.reason, headers=headers)
    try:
        await resp.prepare(request)
        for chunk in chunks:
            await resp.write(chunk)
        if small:
            raise UpstreamUnavailable("upstream body broke off")
        async for chunk in upstream.iter_body(up):
            await resp.write(chunk)
        await resp.write_eof()
    except UpstreamError as exc:
        # Headers are gone: all that is left is to cut the connection so the client
        # sees a truncated body rather than a complete wrong one.
        logger.warning("upstream response broke off: %s", exc)
        request.app[METRICS].inc("upstream_broken_bodies")
        resp.force_close()
        if request.transport is not None:
            request.transport.close()
    finally:
        up.release()
    return resp


async def _admin(request: web.Request) -> web.StreamResponse:
    name = request.path[len(ADMIN_PREFIX) :].strip("/")
    state = request.app[STATE]
    if name == "health":
        return web.json_response({"status": "ok", "version": __version__})
    if name == "ready":
        ready = state.ready
        model = getattr(request.app.get(RERANKER), "model_id", None)
        return web.json_response({"ready": ready, "model": model}, status=200 if ready else 503)
    if name == "metrics":
        metrics = request.app[METRICS]
        if "json" in request.query.get("format", ""):
            return web.json_response(metrics.snapshot())
        return web.Response(text=metrics.prometheus(), content_type="text/plain")
    return error_response(404, "proxy_not_found", f"no admin endpoint {request.path!r}")


async def handle(request: web.Request) -> web.StreamResponse:
    """The one handler: every method, every path."""
    state = request.app[STATE]
    metrics = request.app[METRICS]
    started = time.perf_counter()
    outcome = Outcome()
    state.inflight += 1
    resp: web.StreamResponse | None = None
    path = request.raw_path.split("?", 1)[0]
    try:
        route = classify(request.method, path)
        if route.kind == "admin":
            resp = await _admin(request)
            return resp
        metrics.inc("requests")
        if route.kind != "pass":
            # Imported here: flows imports this module. Pass-through never loads it.
            from .flows import rerank_request

            resp = await rerank_request(request, route, outcome)
        else:
            resp = await forward(request, outcome)
        return resp
    finally:
        state.inflight -= 1
        if outcome.rerank != "none":
            metrics.inc(f"rerank_{outcome.rerank}")
            if outcome.reason:
                metrics.inc(f"rerank_{outcome.rerank}_{outcome.reason}")
        if request.app[CONFIG].access_log:
            access_logger.info(
                "%s %s %s upstream_ms=%.1f rerank_ms=%.1f total_ms=%.1f rerank=%s%s",
                request.method,
                path,
                resp.status if resp is not None else "-",
                outcome.upstream_ms,
                outcome.rerank_ms,
                (time.perf_counter() - started) * 1000,
                outcome.rerank,
                f"({outcome.reason})" if outcome.reason else "",
            )


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    upstream = app[UPSTREAM]
    await upstream.start()
    app[STATE].ready = True
    logger.info("proxying to %s", upstream.display_url)
    if upstream.url_has_credentials:
        logger.warning("credentials in upstream.url are ignored: clients' own are forwarded")
    try:
        yield
    finally:
        app[STATE].ready = False
        await upstream.close()
        reranker = app.get(RERANKER)
        if reranker is not None:
            await reranker.close()


def create_app(cfg: Config, *, reranker: Reranker | None = None) -> web.Application:
    """Build the application. Pass `reranker` (already loaded) to enable reranking."""
    app = web.Application(client_max_size=cfg.upstream.max_buffer_bytes)
    app[CONFIG] = cfg
    app[UPSTREAM] = Upstream(cfg.upstream)
    app[METRICS] = Metrics()
    app[STATE] = AppState()
    if reranker is not None:
        app[RERANKER] = reranker
    app.cleanup_ctx.append(_lifecycle)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def make_runner(app: web.Application, *, shutdown_timeout: float = 30.0) -> web.AppRunner:
    """An AppRunner that forwards request bodies byte-exact and cancels abandoned handlers."""
    return web.AppRunner(
        app,
        auto_decompress=False,  # pass-through must forward the client's gzip bytes as sent
        handler_cancellation=True,  # a client that goes away aborts its upstream request
        access_log=None,
        shutdown_timeout=shutdown_timeout,
    )
