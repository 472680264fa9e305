"""The `serve` process: load the model, listen (HTTP or HTTPS), drain on SIGTERM, reload on SIGHUP.

Start-up order: the model is loaded before the port opens, so a proxy that listens can
rerank. SIGTERM (or SIGINT) first turns readiness to 503, then after `listen.drain_delay`
seconds (a second signal cuts the wait short) closes the listener and lets in-flight requests
finish. SIGHUP re-reads the configuration: index rules, defaults, log level, access log and
the listener's certificate files change for new requests at once; a file with problems keeps
the running configuration and logs each problem as `check-config` prints it; a change that
needs a restart (model, listen address, upstream, log format) is logged as such and not
applied. Reloads are counted by result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
from collections.abc import Callable

from aiohttp import web
from yarl import URL

from .app import create_app, make_runner
from .config import Config, ConfigError
from .errors import ModelLoadError
from .keys import METRICS, SETTINGS, STATE
from .log import adopt_library_loggers
from .rerank.front import RerankFront
from .tls import ServerTLS, server_tls
from .worker_metrics import announce, serve_own_metrics, worker_identity

logger = logging.getLogger("proxy")

STANDIN_WARNING = (
    "STAND-IN MODEL %s: random weights, the reranked order is MEANINGLESS."
    " Point model.name at the real %s for real rankings."
)


def load_reranker(cfg: Config) -> RerankFront:
    """Load the configured model behind the reranker front (blocking)."""
    from .rerank.base import BatchPolicy, Executor
    from .rerank.loader import load_executor, resolve_backend_name
    from .rerank.standin import is_standin

    backend_name = resolve_backend_name(cfg.model)
    logger.info(
        "loading model %s (backend %s, device %s)", cfg.model.name, backend_name, cfg.model.device
    )
    executor: Executor = load_executor(cfg.model)
    if is_standin(cfg.model.name):
        logger.warning(STANDIN_WARNING, cfg.model.name, "mixedbread-ai/mxbai-rerank-xsmall-v1")
    policy = BatchPolicy.for_model(
        cfg.model, device=executor.device, batch_size=executor.batch_size
    )
    from .rerank.shared_cache import load_shared_cache

    return RerankFront(
        executor, policy, cache_size=cfg.model.cache_size, shared=load_shared_cache(cfg.cache)
    )


def scheme_of(tls: ServerTLS | None) -> str:
    return "https" if tls else "http"


def reload(app: web.Application, tls: ServerTLS | None, read: Callable[[], Config]) -> bool:
    """Apply a re-read configuration, or keep the running one; True when it was applied."""
    metrics = app[METRICS]
    try:
        cfg = read()
        if tls is not None and cfg.listen.tls_cert:
            tls.reload(cfg.listen)
    except ConfigError as exc:
        for line in exc.problems:
            logger.error("reload failed, keeping the running configuration: %s", line)
        metrics.reloads.labels(result="failed").inc()
        return False
    except (OSError, ssl.SSLError) as exc:
        logger.error("reload failed, keeping the running configuration: listen.tls_cert: %s", exc)
        metrics.reloads.labels(result="failed").inc()
        return False
    for key in app[SETTINGS].replace(cfg):
        logger.warning("reload: %s changed; it needs a restart and was not applied", key)
    logging.getLogger().setLevel(cfg.log_level)
    metrics.reloads.labels(result="ok").inc()
    logger.info("configuration reloaded: %d index rules", len(cfg.indices))
    return True


async def serve(
    cfg: Config, read_config: Callable[[], Config], *, model_server: bool = False
) -> None:
    """Run the proxy (or, with `model_server`, the model server) until SIGTERM/SIGINT, then
    drain and stop."""
    loop = asyncio.get_running_loop()
    reranker = await loop.run_in_executor(None, load_reranker, cfg)
    adopt_library_loggers()  # transformers & co. installed handlers of their own on import
    if model_server:
        from .model_server import create_model_server

        app = create_model_server(cfg, reranker)
    else:
        app = create_app(cfg, reranker=reranker)
    tls = server_tls(cfg.listen)
    runner = make_runner(app)
    await runner.setup()
    site = web.TCPSite(
        runner,
        cfg.listen.host,
        cfg.listen.port,
        ssl_context=tls.context if tls else None,
        reuse_port=cfg.listen.reuse_port or None,
    )
    try:
        await site.start()
    except OSError as exc:  # taken since the preflight check: one line, no traceback
        await runner.cleanup()
        raise ModelLoadError(
            f"listen.port: cannot listen on {cfg.listen.host}:{cfg.listen.port}: {exc.strerror}"
        ) from exc
    addresses = runner.addresses
    port = addresses[0][1] if addresses else cfg.listen.port
    worker = worker_identity()
    private: web.AppRunner | None = None
    if worker is not None:  # a private loopback port, for the merged metrics scrape only
        private = await serve_own_metrics(app[METRICS])
        announce(worker[0], worker[1], f"http://127.0.0.1:{private.addresses[0][1]}")
    scheme = scheme_of(tls)
    upstream = URL(cfg.upstream.url).with_user(None)  # never log credentials
    behind = "the rerank API" if model_server else str(upstream)
    logger.info("listening on %s://%s:%s -> %s", scheme, cfg.listen.host, port, behind)
    print(f"rerank-proxy listening on {scheme}://{cfg.listen.host}:{port}", flush=True)

    stop = asyncio.Event()
    signals = 0

    def on_stop() -> None:
        nonlocal signals
        signals += 1
        stop.set()
        if signals == 1:
            app[STATE].draining = True
            logger.info(
                "shutting down: readiness is 503; closing the listener in %.1f s",
                app[SETTINGS].static.listen.drain_delay,
            )

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop)
    loop.add_signal_handler(signal.SIGHUP, lambda: reload(app, tls, read_config))
    await stop.wait()
    second = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, second.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(second.wait(), app[SETTINGS].static.listen.drain_delay)
    logger.info("closing the listener; finishing in-flight requests")
    await runner.cleanup()
    if private is not None:
        await private.cleanup()
