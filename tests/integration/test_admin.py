"""Admin endpoints answer from the proxy itself and never touch the upstream."""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families

from proxy import __version__

from .conftest import StartProxy
from .fakes import FakeUpstream, RunningProxy


async def test_health_and_ready_answer_without_the_upstream(
    start_proxy: StartProxy, closed_port: int
) -> None:
    # Liveness and readiness are about the proxy process: a down cluster changes neither.
    proxy = await start_proxy(url=f"http://127.0.0.1:{closed_port}")
    health = await proxy.get("/_rerank_proxy/health")
    assert health.status == 200
    assert json.loads(health.body) == {"status": "ok", "version": __version__}
    ready = await proxy.get("/_rerank_proxy/ready")
    assert ready.status == 200
    assert json.loads(ready.body)["ready"] is True


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
    assert doc['rerank_proxy_requests_total{route="pass"}'] == 3
    text = await proxy.get("/_rerank_proxy/metrics")
    assert text.status == 200
    assert (text.header("Content-Type") or "").startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(text.body.decode())}
    requests = families["rerank_proxy_requests"]
    assert requests.type == "counter"
    assert [(s.name, s.labels, s.value) for s in requests.samples if s.name.endswith("_total")] == [
        ("rerank_proxy_requests_total", {"route": "pass"}, 3.0)
    ]

    down = await start_proxy(url=f"http://127.0.0.1:{closed_port}")
    assert (await down.get("/idx/_doc/1")).status == 502
    doc = json.loads((await down.get("/_rerank_proxy/metrics?format=json")).body)
    counted = {k: v for k, v in doc.items() if v}
    assert counted == {
        'rerank_proxy_requests_total{route="pass"}': 1,
        'rerank_proxy_upstream_errors_total{status="502"}': 1,
    }
