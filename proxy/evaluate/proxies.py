"""The proxies eval sends the reranked searches to: a running one, or one started in-process.

`proxy_model` asks a running proxy for its model (`/_rerank_proxy/ready`) and tells whether it
is the random-weight stand-in. `in_process_proxy` builds the app from a proxy config as
`rerank-proxy serve` does (`proxy.serve.load_reranker` loads the model before the port opens,
`proxy.app.create_app` builds the app) and serves it on a free loopback port for the length
of a block; `InProcessProxy.stats` reads its histograms, summed over the run (`time_split`:
the time at the proxy, in the engine, the model and the queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
from yarl import URL

from .errors import ClusterError
from .runner import Connection

if TYPE_CHECKING:
    from ..config import Config

WARM_UP = "rerank-proxy eval warm-up"


async def proxy_model(
    client: aiohttp.ClientSession, connection: Connection, base: str
) -> tuple[str | None, bool | None]:
    """(model, is it the random stand-in) of a running proxy, from `/_rerank_proxy/ready`."""
    from ..rerank.standin import is_standin

    url = URL(f"{base.rstrip('/')}/_rerank_proxy/ready", encoded=True)
    what = f"asking the proxy {URL(base).with_user(None)} for its model"
    try:
        async with client.get(url, headers=connection.headers()) as resp:
            status, raw = resp.status, await resp.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ClusterError(f"{what}: {exc or type(exc).__name__}") from exc
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or "ready" not in doc:
        raise ClusterError(f"{what}: HTTP {status}, not a rerank-proxy readiness answer")
    if status != 200:
        reasons = doc.get("reasons") or ["not ready"]
        raise ClusterError(f"{what}: not ready: {'; '.join(map(str, reasons))}")
    model = doc.get("model")
    if not isinstance(model, str):
        return None, None
    name = model.split("|", 1)[0]  # `NAME|backend|dtype`
    if is_standin(name):
        return name, True
    looks_local = name.startswith(("/", ".", "~")) or "\\" in name
    return name, None if looks_local else False


def time_split(snapshot: Mapping[str, float]) -> dict[str, float]:
    """Seconds summed over a run from an in-process proxy's histograms."""

    def total(metric: str) -> float:
        name = f"rerank_proxy_{metric}_sum"
        return sum(v for k, v in snapshot.items() if k == name or k.startswith(name + "{"))

    return {
        "request": total("request_duration_seconds"),
        "engine": total("upstream_duration_seconds"),
        "rerank": total("rerank_duration_seconds"),
        "queue": total("queue_wait_seconds"),
        "model": total("inference_duration_seconds"),
    }


@dataclass(slots=True)
class InProcessProxy:
    """A proxy app on a loopback port; `stats()` reads its histograms."""

    url: str
    snapshot: Callable[[], Mapping[str, float]]

    def stats(self) -> dict[str, float]:
        return time_split(self.snapshot())


@contextlib.asynccontextmanager
async def in_process_proxy(cfg: Config) -> AsyncIterator[InProcessProxy]:
    """Load the configured model (before the port opens, as `serve` does) and serve the
    proxy app on 127.0.0.1 (a free port, plain HTTP) until the block ends. The model
    scores one warm-up pair before the port opens."""
    from aiohttp import web

    from ..app import create_app, make_runner
    from ..keys import METRICS
    from ..serve import load_reranker

    loop = asyncio.get_running_loop()
    reranker = await loop.run_in_executor(None, load_reranker, cfg)
    try:
        # One pair first, before the app's metrics observe the model: a framework's first
        # forward pass (lazy initialisation, thread pools) would otherwise land on the first
        # query's latency.
        await reranker.score(WARM_UP, [WARM_UP], max_length=cfg.model.max_length)
        app = create_app(cfg, reranker=reranker)
    except BaseException:
        await reranker.close()
        raise
    runner = make_runner(app, shutdown_timeout=5.0)
    try:
        await runner.setup()
    except BaseException:
        await reranker.close()
        raise
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        yield InProcessProxy(f"http://127.0.0.1:{port}", app[METRICS].snapshot)
    finally:
        await runner.cleanup()
