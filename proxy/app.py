"""App assembly: `create_app(cfg, reranker=...)`, its lifecycle and the catch-all handler.

The top of the package: it builds the shared objects (under `keys`), registers the admin
routes ahead of one catch-all route, and dispatches each request by `routing.classify`:
searches to `flows`, everything else to `passthrough.forward`. Each request reads the
reloadable settings once (`Settings.current`) and is counted once, at its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import HttpVersion10, web

from . import admin, compare
from .config import Config
from .flows import rerank_request
from .keys import METRICS, RERANKER, SETTINGS, SHADOW, STATE, UPSTREAM, AppState
from .listener import LISTENER, Listener, ProxyRunner, raw_error
from .log import redact_parser_errors
from .metrics import Metrics
from .outcome import Outcome
from .passthrough import error_response, forward
from .rerank.base import Reranker
from .routing import classify, origin_form
from .settings import Settings
from .shadow import ShadowRunner
from .tls import client_certificate_missing
from .upstream import Upstream, readiness_reason

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("proxy.access")


async def handle(request: web.Request) -> web.StreamResponse:
    """The catch-all handler: every method, every path that is not an admin route."""
    snapshot = request.app[SETTINGS].current  # one snapshot for the whole request
    state = request.app[STATE]
    metrics = request.app[METRICS]
    started = time.perf_counter()
    outcome = Outcome()
    state.inflight += 1
    metrics.inflight.inc()
    resp: web.StreamResponse | None = None
    path = request.raw_path.split("?", 1)[0]
    route = classify(request.method, path)
    try:
        if route.kind == "pass":
            resp = await forward(request, outcome)
        elif route.kind == "admin":  # an admin path the router did not match (encoded)
            resp = await admin.not_found(request)
        else:
            resp = await rerank_request(request, route, outcome, snapshot)
        return resp
    finally:
        state.inflight -= 1
        metrics.inflight.dec()
        seconds = time.perf_counter() - started
        if route.kind != "admin":
            metrics.record(outcome, route.kind, resp.status if resp else None, seconds)
        if snapshot.access_log:
            _access_line(request, path, resp, outcome, seconds)


def _sent_bytes(resp: web.StreamResponse | None) -> int:
    if resp is None:
        return 0
    # A streamed response was written already; a plain one is written after the handler.
    return resp.body_length or resp.content_length or 0


def _access_line(
    request: web.Request,
    path: str,
    resp: web.StreamResponse | None,
    outcome: Outcome,
    seconds: float,
) -> None:
    """One INFO line per request; in JSON mode its fields are keys. No query text here
    (DEBUG only) and never a credential: headers are not logged, only `X-Opaque-Id`."""
    reason = outcome.reason_header()
    access_logger.info(
        "%s %s %s upstream_ms=%.1f rerank_ms=%.1f total_ms=%.1f rerank=%s%s",
        request.method,
        path,
        resp.status if resp is not None else "-",
        outcome.upstream_ms,
        outcome.rerank_ms,
        seconds * 1000,
        outcome.state,
        f"({reason})" if reason else "",
        extra={
            "method": request.method,
            "path": path,
            "status": resp.status if resp is not None else None,
            "target": outcome.target or None,
            "rule": outcome.rule or None,
            "outcome": str(outcome.state),
            "reason": reason or None,
            "upstream_ms": round(outcome.upstream_ms, 2),
            "rerank_ms": round(outcome.rerank_ms, 2),
            "total_ms": round(seconds * 1000, 2),
            "bytes": _sent_bytes(resp),
            "client": request.remote,
            "request_id": request.headers.get("X-Opaque-Id"),
        },
    )


async def _probe_upstream(app: web.Application) -> None:
    """Check in the background that the cluster answers; readiness reports the last result."""
    upstream, state = app[UPSTREAM], app[STATE]
    interval = app[SETTINGS].static.upstream.probe_interval
    while True:
        error = await upstream.probe()
        if (error is None) != state.upstream_ok:
            if error is None:
                logger.info("upstream %s answers", upstream.display_url)
            else:
                logger.warning("upstream not ready: %s", error)
        state.upstream_ok = error is None
        state.upstream_error = readiness_reason(error) if error is not None else ""
        await asyncio.sleep(interval)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    upstream, state = app[UPSTREAM], app[STATE]
    await upstream.start()
    state.started_up = True
    logger.info("proxying to %s", upstream.display_url)
    if upstream.url_has_credentials:
        logger.warning("credentials in upstream.url are ignored: clients' own are forwarded")
    probe: asyncio.Task[None] | None = None
    if app[SETTINGS].static.upstream.probe_interval > 0:
        probe = asyncio.get_running_loop().create_task(_probe_upstream(app), name="upstream-probe")
    else:
        state.upstream_ok = True  # not checked: readiness ignores the cluster
    try:
        yield
    finally:
        state.started_up = False
        await app[SHADOW].close()
        if probe is not None:
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe
        await upstream.close()
        reranker = app.get(RERANKER)
        if reranker is not None:
            await reranker.close()


@web.middleware
async def _guarded(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Tells the connection's guard (`listener`) when a request is in progress: no header or
    idle timer runs meanwhile."""
    guard = request.app[LISTENER].guard(request)
    if guard is None:
        return await handler(request)
    guard.request_started()
    try:
        return await handler(request)
    finally:
        guard.request_finished()


@web.middleware
async def _origin_form_only(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Only origin-form targets reach a handler: `GET http://elsewhere/path`, `CONNECT` and
    `OPTIONS *` would otherwise be routed by their path alone (or not at all: aiohttp's
    plain-text 404), and the upstream URL built from the raw target."""
    if request.version < HttpVersion10:
        # HTTP/0.9 has no headers and no status line to answer with: aiohttp would answer
        # in kind with an invalid `HTTP/0.9 200` line. Say 400 in HTTP/1.1 and close.
        logger.debug("rejected an HTTP/0.9 request")
        if request.transport is not None:
            request.transport.write(HTTP09_REJECTED)
            request.transport.close()
        return _closing(error_response(400, "proxy_bad_request", "HTTP/1.0 or later only"))
    if not origin_form(request.method, request.raw_path):
        logger.debug("rejected a %s request with a non-origin-form target", request.method)
        # Closed after the answer: what follows a CONNECT is tunnel data to anything in
        # between that saw it, never a next request.
        return _closing(
            error_response(
                400,
                "proxy_bad_request",
                "the request target must be a path starting with '/' (origin-form); "
                "this is a gateway to one cluster, not a forward proxy",
            )
        )
    return await handler(request)


def _closing(resp: web.Response) -> web.Response:
    resp.force_close()
    return resp


HTTP09_REJECTED = raw_error(400, "Bad Request", "proxy_bad_request", "HTTP/1.0 or later only")


@web.middleware
async def _require_client_certificate(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Mutual TLS: no client certificate, no request (except the probes; see `tls`)."""
    if client_certificate_missing(request.transport, request.path):
        return error_response(
            403, "proxy_client_certificate_required", "this proxy requires a client certificate"
        )
    return await handler(request)


def create_app(cfg: Config, *, reranker: Reranker | None = None) -> web.Application:
    """Build the application. Pass `reranker` (already loaded) to enable reranking."""
    redact_parser_errors()  # aiohttp would log an over-long header's bytes (credentials)
    middlewares = [_guarded, _origin_form_only]
    if cfg.listen.client_ca:
        middlewares.append(_require_client_certificate)
    app = web.Application(client_max_size=cfg.upstream.max_buffer_bytes, middlewares=middlewares)
    app[SETTINGS] = Settings(cfg)
    app[UPSTREAM] = Upstream(cfg.upstream)
    app[METRICS] = Metrics()
    app[LISTENER] = Listener(cfg.listen, app[METRICS])
    app[STATE] = state = AppState()
    if reranker is not None:
        app[RERANKER] = reranker
        reranker.set_observer(app[METRICS])
    app[SHADOW] = ShadowRunner(cfg.shadow, app[UPSTREAM], reranker, app[METRICS])
    app[METRICS].watch(
        lambda: not state.not_ready(reranker), reranker.health if reranker is not None else None
    )
    app.cleanup_ctx.append(_lifecycle)
    compare.add_routes(app)  # the comparison page (only when compare.enabled)
    admin.add_routes(app)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def make_runner(app: web.Application, *, shutdown_timeout: float = 30.0) -> web.AppRunner:
    """An AppRunner that forwards request bodies byte-exact, cancels abandoned handlers and
    guards each client connection (`listener`: header, idle and body timeouts, a cap)."""
    return ProxyRunner(
        app,
        auto_decompress=False,  # pass-through must forward the client's gzip bytes as sent
        handler_cancellation=True,  # a client that goes away aborts its upstream request
        access_log=None,
        shutdown_timeout=shutdown_timeout,
    )
