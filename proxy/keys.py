"""The app's shared objects under typed `web.AppKey`s, and the proxy's own query parameters.

The vocabulary layer of the aiohttp side: everything above it (pass-through, admin routes,
the rerank flows, the app assembly) finds the upstream session, the reranker, the settings
and the metrics here, and nothing here imports those layers. Layers, bottom to top:

    pure:      config  routing  plan  score  answer  outcome  settings  filtering  jsoncodec
    objects:   upstream  metrics  rerank/  shadow
    keys       (this module)
    serving:   passthrough  admin  fetch
    flows      (plan -> fetch -> score -> answer, one fail-open rule)
    app        (create_app: routes, lifecycle, the catch-all handler)
    cli
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiohttp import web

from .metrics import Metrics
from .rerank.base import Reranker
from .settings import Settings
from .shadow import ShadowRunner
from .upstream import Upstream

#: query parameters the proxy consumes itself; never forwarded to the engine
PROXY_PARAMS = frozenset({"rerank"})


@dataclass(slots=True)
class AppState:
    """What readiness is made of, and the requests in flight."""

    started_up: bool = False  # the upstream session is open
    draining: bool = False  # SIGTERM received: finish, take no new traffic
    upstream_ok: bool = False  # the last background probe reached the cluster
    upstream_error: str = "not probed yet"
    inflight: int = 0
    started: float = field(default_factory=time.time)

    def not_ready(self, reranker: Reranker | None) -> list[str]:
        """Why the proxy should get no traffic now (empty: ready)."""
        reasons = []
        if self.draining:
            reasons.append("draining: shutting down")
        elif not self.started_up:
            reasons.append("starting")
        if not self.upstream_ok:
            reasons.append(f"upstream: {self.upstream_error}")
        if reranker is not None and not reranker.health().get("loaded"):
            reasons.append("model: not loaded")
        return reasons


SETTINGS = web.AppKey("settings", Settings)
UPSTREAM = web.AppKey("upstream", Upstream)
RERANKER = web.AppKey("reranker", Reranker)
METRICS = web.AppKey("metrics", Metrics)
STATE = web.AppKey("state", AppState)
SHADOW = web.AppKey("shadow", ShadowRunner)
