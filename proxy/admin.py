"""The proxy's own endpoints under `/_rerank_proxy/`: health, readiness and metrics.

Registered as real routes ahead of the catch-all pass-through route (`app.create_app`), so
they never reach the engine and are not counted as proxied requests. `/health` is liveness
(the process answers); `/ready` says whether the proxy should get traffic: 503, with the
reasons, while it starts, while the cluster does not answer or its TLS does not verify (the
background probe's last result: cheap, never a request per probe), while the model is not
loaded, and while it drains after SIGTERM. `/metrics` is the Prometheus exposition
(`?format=json`: the same samples as a flat map). Probes log at DEBUG only.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from . import __version__
from .keys import METRICS, RERANKER, STATE
from .passthrough import error_response
from .routing import ADMIN_PREFIX
from .worker_metrics import gather, worker_identity

logger = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.Response]]


def _logged(handler: Handler) -> Handler:
    """Probes and scrapes come every few seconds: one DEBUG line each, never INFO."""

    async def wrapped(request: web.Request) -> web.Response:
        resp = await handler(request)
        logger.debug("%s %s %s", request.method, request.path, resp.status)
        return resp

    return wrapped


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "version": __version__})


async def ready(request: web.Request) -> web.Response:
    """200 when the proxy should get traffic; 503 with the reasons while it should not."""
    reranker = request.app.get(RERANKER)
    reasons = request.app[STATE].not_ready(reranker)
    model = reranker.model_id if reranker is not None else None
    body: dict[str, object] = {"ready": not reasons, "model": model}
    if reasons:
        body["reasons"] = reasons
    return web.json_response(body, status=503 if reasons else 200)


async def metrics(request: web.Request) -> web.Response:
    m = request.app[METRICS]
    if "json" in request.query.get("format", ""):
        return web.json_response(m.snapshot())
    body = m.exposition()
    worker = worker_identity()
    if worker is not None:  # one view over every worker
        body, missing = await gather(worker[0], (worker[1], body))
        if missing:
            m.worker_scrape_errors.inc(missing)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def not_found(request: web.Request) -> web.Response:
    return error_response(404, "proxy_not_found", f"no admin endpoint {request.path!r}")


def add_routes(app: web.Application) -> None:
    """Register the admin routes; call before the catch-all route."""
    for name, handler in (("health", health), ("ready", ready), ("metrics", metrics)):
        app.router.add_route("*", f"{ADMIN_PREFIX}{name}", _logged(handler))
    app.router.add_route("*", ADMIN_PREFIX.rstrip("/") + "{tail:(/.*)?}", _logged(not_found))
