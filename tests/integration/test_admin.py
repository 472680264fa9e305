"""Admin endpoints answer from the proxy itself and never touch the upstream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from proxy import __version__

from .conftest import StartProxy
from .fakes import FakeUpstream, RunningProxy


async def eventually_async(
    get: Callable[[], Awaitable[Any]], check: Callable[[Any], bool], tries: int = 500
) -> None:
    """Poll `get()` until `check` holds (each try a real request; no clock involved)."""
    for _ in range(tries):
        if check(await get()):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"condition never held: {await get()}")


async def _ready(proxy: RunningProxy) -> tuple[int, dict[str, object]]:
    resp = await proxy.get("/_rerank_proxy/ready")
    return resp.status, json.loads(resp.body)


async def test_ready_follows_the_upstream_and_health_does_not(
    start_proxy: StartProxy, closed_port: int
) -> None:
    """Readiness is 503 while the cluster does not answer and 200 once it does; liveness
    (`/health`) is about the process alone."""
    proxy = await start_proxy(url=f"http://127.0.0.1:{closed_port}", probe_interval=0.05)
    health = await proxy.get("/_rerank_proxy/health")
    assert health.status == 200
    assert json.loads(health.body) == {"status": "ok", "version": __version__}
    await eventually_async(lambda: _ready(proxy), lambda r: r[0] == 503 and "reasons" in r[1])
    _, body = await _ready(proxy)
    assert body["ready"] is False
    assert body["reasons"] == ["upstream: upstream unreachable"]  # no address in it

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    # The cluster comes back (a secured one: 401 to the proxy's credential-less probe).
    server = await asyncio.start_server(answer, "127.0.0.1", closed_port)
    try:
        await eventually_async(lambda: _ready(proxy), lambda r: r[0] == 200)
        assert (await _ready(proxy))[1] == {"ready": True, "model": None}
        metrics = json.loads((await proxy.get("/_rerank_proxy/metrics?format=json")).body)
        assert metrics["rerank_proxy_ready"] == 1
        assert (await proxy.get("/_rerank_proxy/health")).status == 200
    finally:
        server.close()
        await server.wait_closed()


async def test_ready_is_503_when_the_upstream_tls_does_not_verify(
    start_proxy: StartProxy, upstream: FakeUpstream
) -> None:
    """An https:// upstream that speaks plain HTTP (or presents an untrusted certificate)
    never verifies: readiness says so."""
    proxy = await start_proxy(url=f"https://127.0.0.1:{upstream.port}", probe_interval=0.05)
    await eventually_async(lambda: _ready(proxy), lambda r: r[0] == 503 and "reasons" in r[1])
    await eventually_async(lambda: _ready(proxy), lambda r: "probed" not in str(r[1]["reasons"]))
    # The kind of failure (here the fake never answers the TLS hello), never the address: a
    # readiness endpoint is often public.
    assert (await _ready(proxy))[1]["reasons"] == ["upstream: upstream timed out"]


async def test_ready_says_when_the_upstream_tls_handshake_fails(
    start_proxy: StartProxy,
) -> None:
    async def plain_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(plain_http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        proxy = await start_proxy(url=f"https://127.0.0.1:{port}", probe_interval=0.05)
        failed = ["upstream: upstream unreachable (TLS handshake failed)"]
        await eventually_async(lambda: _ready(proxy), lambda r: r[1].get("reasons") == failed)
    finally:
        server.close()
        await server.wait_closed()


async def test_admin_requests_are_not_forwarded(
    proxy: RunningProxy, upstream: FakeUpstream
) -> None:
    for target in (
        "/_rerank_proxy/health",
        "/_rerank_proxy/ready",
        "/_rerank_proxy/metrics",
        "/_rerank_proxy/metrics?format=json",
        "/_rerank_proxy/nope",
    ):
        await proxy.get(target)
    assert upstream.connections == 0
    missing = await proxy.get("/_rerank_proxy/nope")
    assert missing.status == 404
    assert json.loads(missing.body)["error"]["type"] == "proxy_not_found"


async def test_metrics_count_forwarded_requests_and_upstream_errors(
    start_proxy: StartProxy, upstream: FakeUpstream, closed_port: int
) -> None:
    proxy = await start_proxy()
    for _ in range(3):
        assert (await proxy.get("/idx/_doc/1")).status == 200
    await proxy.get("/_rerank_proxy/health")  # admin calls are not counted

    doc = json.loads((await proxy.get("/_rerank_proxy/metrics?format=json")).body)
    assert doc['rerank_proxy_requests_total{route="pass",status_class="2xx"}'] == 3
    text = await proxy.get("/_rerank_proxy/metrics")
    assert text.status == 200
    assert (text.header("Content-Type") or "").startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(text.body.decode())}
    requests = families["rerank_proxy_requests"]
    assert requests.type == "counter"
    assert [(s.name, s.labels, s.value) for s in requests.samples if s.name.endswith("_total")] == [
        ("rerank_proxy_requests_total", {"route": "pass", "status_class": "2xx"}, 3.0)
    ]

    down = await start_proxy(url=f"http://127.0.0.1:{closed_port}")
    assert (await down.get("/idx/_doc/1")).status == 502
    doc = json.loads((await down.get("/_rerank_proxy/metrics?format=json")).body)
    counted = {
        k: v for k, v in doc.items() if k.startswith("rerank_proxy_") and "_total" in k and v
    }
    assert counted == {
        'rerank_proxy_requests_total{route="pass",status_class="5xx"}': 1,
        'rerank_proxy_upstream_errors_total{status="502"}': 1,
    }
