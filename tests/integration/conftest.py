"""Shared fixtures: the proxy in-process against a recording fake upstream (see `fakes.py`).

`start_proxy` runs the real app with `make_runner` (auto_decompress=False,
handler_cancellation=True) on a TCPSite at 127.0.0.1, port 0.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from proxy.app import create_app
from proxy.config import parse_config

from .fakes import FakeUpstream, RunningProxy, proxy_config, start_app
from .rerank_support import Engine, Proxies

StartProxy = Callable[..., Awaitable[RunningProxy]]


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    server = FakeUpstream()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def start_proxy(upstream: FakeUpstream) -> AsyncIterator[StartProxy]:
    """Start the proxy in-process; keyword arguments override `upstream.*` config keys,
    `listen` and `indices` replace those sections."""
    running: list[RunningProxy] = []

    async def start(
        *,
        shutdown_timeout: float = 5.0,
        listen: dict[str, object] | None = None,
        indices: list[dict[str, object]] | None = None,
        **upstream_cfg: object,
    ) -> RunningProxy:
        url = str(upstream_cfg.pop("url", upstream.url))
        raw = proxy_config(url, **upstream_cfg)
        if listen is not None:
            raw["listen"] = listen
        if indices is not None:
            raw["indices"] = indices
        app = create_app(parse_config(raw))
        proxy = await start_app(app, shutdown_timeout=shutdown_timeout)
        running.append(proxy)
        return proxy

    yield start
    for proxy in running:
        await proxy.close_clients()
        await proxy.stop()


@pytest.fixture
async def proxy(start_proxy: StartProxy) -> RunningProxy:
    return await start_proxy()


@pytest.fixture
def closed_port() -> int:
    """A local port with nothing listening on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def engine(upstream: FakeUpstream) -> Engine:
    """An Elasticsearch stand-in answering searches on the fake upstream."""
    return Engine(upstream)


@pytest.fixture
async def proxies(upstream: FakeUpstream) -> AsyncIterator[Proxies]:
    """Starts proxies with a reranker in front of the fake upstream."""
    started = Proxies(upstream.url)
    yield started
    await started.close()
