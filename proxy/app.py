"""App assembly: `create_app(cfg, reranker=...)`, its lifecycle and the catch-all handler.

The top of the package: it builds the shared objects (under `keys`), registers the admin
routes ahead of one catch-all route, and dispatches each request by `routing.classify`:
searches to `flows`, everything else to `passthrough.forward`. Each request reads the
reloadable settings once (`Settings.current`) and is counted once, at its end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from . import admin
from .config import Config
from .flows import rerank_request
from .keys import METRICS, RERANKER, SETTINGS, STATE, UPSTREAM, AppState
from .metrics import Metrics
from .outcome import Outcome
from .passthrough import forward
from .rerank.base import Reranker
from .routing import classify
from .settings import Settings
from .upstream import Upstream

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("proxy.access")


async def handle(request: web.Request) -> web.StreamResponse:
    """The catch-all handler: every method, every path that is not an admin route."""
    snapshot = request.app[SETTINGS].current  # one snapshot for the whole request
    state = request.app[STATE]
    started = time.perf_counter()
    outcome = Outcome()
    state.inflight += 1
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
        if route.kind != "admin":
            request.app[METRICS].record(outcome, route.kind)
        if snapshot.access_log:
            access_logger.info(
                "%s %s %s upstream_ms=%.1f rerank_ms=%.1f total_ms=%.1f rerank=%s%s",
                request.method,
                path,
                resp.status if resp is not None else "-",
                outcome.upstream_ms,
                outcome.rerank_ms,
                (time.perf_counter() - started) * 1000,
                outcome.state,
                f"({outcome.reason_header()})" if outcome.reason_header() else "",
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
    app[SETTINGS] = Settings(cfg)
    app[UPSTREAM] = Upstream(cfg.upstream)
    app[METRICS] = Metrics()
    app[STATE] = AppState()
    if reranker is not None:
        app[RERANKER] = reranker
    app.cleanup_ctx.append(_lifecycle)
    admin.add_routes(app)
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
