"""`rerank-proxy model-server`: our backends, batching and cache behind the standard rerank APIs.

One GPU machine can serve many proxies (each with `model.backend: remote`), and other systems
can use it too. Two request shapes, the ones rerank servers in the field speak:

- Cohere/Jina family, `POST /v1/rerank` (also `/v2/rerank`, and `/rerank` when the body has
  `documents`, as Infinity serves it): `{"query", "documents": [str | {"text"}], "top_n"?,
  "return_documents"?, "model"?}` -> `{"id", "results": [{"index", "relevance_score",
  "document"?}], "meta"}`, best first. `relevance_score` is the model's sigmoid probability.
- text-embeddings-inference, `POST /rerank` with `texts`: `{"query", "texts", "raw_scores"?,
  "return_text"?}` -> `[{"index", "score", "text"?}]`, best first; `raw_scores: true` gives
  the logit (the inverse sigmoid of the probability), as TEI does.

Scores come from the same `RerankFront` (cache, in-flight dedupe, cross-request batching,
queue bound) as the proxy's in-process reranker. Overload is a 429, bad input a 4xx with the
shape's own error body, a model failure a 500. `/health`, `/ready` and `/metrics` are the
proxy's admin endpoints under `/_rerank_proxy/` (and `/health` at the root, as TEI has). An
optional API key (`model_server.api_key_env` / `api_key_file`) is required as a Bearer token.
"""

from __future__ import annotations

import hmac
import logging
import math
import os
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web

from . import admin
from .config import Config
from .errors import ModelLoadError, RerankError, RerankOverloaded
from .keys import METRICS, RERANKER, SETTINGS, STATE, AppState
from .metrics import Metrics
from .rerank.base import Reranker
from .settings import Settings

logger = logging.getLogger(__name__)
API_KEY = web.AppKey("api_key", str)


class BadRequest(ValueError):
    """The request body is not a rerank request of its shape; the message says why."""


def _api_key(cfg: Config) -> str | None:
    ms = cfg.model_server
    if ms.api_key_env:
        key = os.environ.get(ms.api_key_env)
        if not key:
            raise ModelLoadError(f"model_server.api_key_env: {ms.api_key_env} is not set")
        return key
    if ms.api_key_file:
        try:
            return Path(ms.api_key_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ModelLoadError(f"model_server.api_key_file: {exc.strerror}") from exc
    return None


def _texts(body: Any, key: str, limit: int) -> tuple[str, list[str]]:
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    query = body.get("query")
    if not isinstance(query, str) or not query.strip():
        raise BadRequest("`query` must be a non-empty string")
    items = body.get(key)
    if not isinstance(items, list) or not items:
        raise BadRequest(f"`{key}` must be a non-empty list")
    if len(items) > limit:
        raise BadRequest(f"`{key}` holds {len(items)} items; at most {limit} per request")
    texts = []
    for i, item in enumerate(items):
        text = item.get("text") if isinstance(item, dict) else item
        if not isinstance(text, str):
            raise BadRequest(f"`{key}[{i}]` must be a string or an object with `text`")
        texts.append(text)
    return query, texts


def _logit(p: float) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return math.log(p / (1 - p))


async def _score(request: web.Request, query: str, texts: list[str]) -> list[float]:
    reranker = request.app[RERANKER]
    max_length = request.app[SETTINGS].static.model.max_length
    return await reranker.score(query, texts, max_length=max_length)


def _error(status: int, message: str, *, tei: bool) -> web.Response:
    if tei:
        kind = {400: "Validation", 413: "Validation", 429: "Overloaded"}.get(status, "Backend")
        return web.json_response({"error": message, "error_type": kind}, status=status)
    return web.json_response({"message": message}, status=status)


async def _handle(request: web.Request, *, tei: bool | None) -> web.Response:
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "the body is not JSON", tei=bool(tei))
    if tei is None:  # `/rerank`: TEI's when it names `texts`, else the Cohere family's
        tei = isinstance(body, dict) and "texts" in body and "documents" not in body
    limit = request.app[SETTINGS].static.model_server.max_documents
    try:
        query, texts = _texts(body, "texts" if tei else "documents", limit)
        top_n = body.get("top_n")
        if top_n is not None and (not isinstance(top_n, int) or top_n < 1):
            raise BadRequest("`top_n` must be a positive integer")
    except BadRequest as exc:
        status = 413 if "at most" in str(exc) else 400
        return _error(status, str(exc), tei=tei)
    try:
        scores = await _score(request, query, texts)
    except RerankOverloaded as exc:
        return _error(429, f"overloaded: {exc}", tei=tei)
    except RerankError as exc:
        logger.warning("rerank failed: %s", exc)
        return _error(500, f"rerank failed: {exc.reason}", tei=tei)
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    if tei:
        raw = bool(body.get("raw_scores"))
        with_text = bool(body.get("return_text"))
        return web.json_response(
            [
                {
                    "index": i,
                    "score": _logit(scores[i]) if raw else scores[i],
                    **({"text": texts[i]} if with_text else {}),
                }
                for i in order
            ]
        )
    if top_n is not None:
        order = order[:top_n]
    with_docs = bool(body.get("return_documents"))
    results = [
        {
            "index": i,
            "relevance_score": scores[i],
            **({"document": {"text": texts[i]}} if with_docs else {}),
        }
        for i in order
    ]
    meta = {"billed_units": {"search_units": 1}, "model": request.app[RERANKER].model_id}
    return web.json_response({"id": str(uuid.uuid4()), "results": results, "meta": meta})


async def cohere(request: web.Request) -> web.Response:
    return await _handle(request, tei=False)


async def rerank(request: web.Request) -> web.Response:
    return await _handle(request, tei=None)


@web.middleware
async def _authorised(request: web.Request, handler: Any) -> web.StreamResponse:
    key = request.app.get(API_KEY)
    open_paths = ("/health", "/_rerank_proxy/health", "/_rerank_proxy/ready")
    if key is not None and request.path not in open_paths:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            return web.json_response({"message": "invalid or missing API key"}, status=401)
    resp: web.StreamResponse = await handler(request)
    return resp


def create_model_server(cfg: Config, reranker: Reranker) -> web.Application:
    """The model server's application around an already loaded reranker."""
    app = web.Application(middlewares=[_authorised], client_max_size=64 << 20)
    key = _api_key(cfg)
    if key is not None:
        app[API_KEY] = key
    app[SETTINGS] = Settings(cfg)
    app[METRICS] = metrics = Metrics()
    app[STATE] = state = AppState(started_up=True, upstream_ok=True)  # no cluster behind it
    app[RERANKER] = reranker
    reranker.set_observer(metrics)
    metrics.watch(lambda: not state.not_ready(reranker), reranker.health)

    async def close(app: web.Application) -> None:
        await reranker.close()

    app.on_cleanup.append(close)
    admin.add_routes(app)
    app.router.add_get("/health", admin.health)
    for path in ("/v1/rerank", "/v2/rerank"):
        app.router.add_post(path, cohere)
    app.router.add_post("/rerank", rerank)
    return app
