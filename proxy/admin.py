"""The proxy's own endpoints under `/_rerank_proxy/`: health, readiness and metrics.

Registered as real routes ahead of the catch-all pass-through route (`app.create_app`), so
they never reach the engine and are not counted as proxied requests. `/health` is liveness
(the process answers); `/ready` says whether the proxy should get traffic; `/metrics` is the
Prometheus exposition (`?format=json`: the same samples as a flat map).
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from . import __version__
from .keys import METRICS, RERANKER, STATE
from .passthrough import error_response
from .routing import ADMIN_PREFIX


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "version": __version__})


async def ready(request: web.Request) -> web.Response:
    is_ready = request.app[STATE].ready
    reranker = request.app.get(RERANKER)
    model = reranker.model_id if reranker is not None else None
    return web.json_response({"ready": is_ready, "model": model}, status=200 if is_ready else 503)


async def metrics(request: web.Request) -> web.Response:
    m = request.app[METRICS]
    if "json" in request.query.get("format", ""):
        return web.json_response(m.snapshot())
    return web.Response(body=m.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def not_found(request: web.Request) -> web.Response:
    return error_response(404, "proxy_not_found", f"no admin endpoint {request.path!r}")


def add_routes(app: web.Application) -> None:
    """Register the admin routes; call before the catch-all route."""
    for name, handler in (("health", health), ("ready", ready), ("metrics", metrics)):
        app.router.add_route("*", f"{ADMIN_PREFIX}{name}", handler)
    app.router.add_route("*", ADMIN_PREFIX.rstrip("/") + "{tail:(/.*)?}", not_found)
