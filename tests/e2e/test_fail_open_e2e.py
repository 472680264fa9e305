"""Fail open: whatever the model does, the client gets the engine's answer and a header.

The proxy runs in-process against the real OpenSearch with a model that raises, hangs past
its budget, returns NaN or the wrong number of scores, or is overloaded. Single searches get
the engine's bytes for the client's own request; `_msearch` items fail one by one.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.app import create_app, make_runner
from proxy.config import parse_config
from proxy.keys import METRICS
from proxy.rerank.base import Backend, BatchPolicy
from proxy.rerank.fake import FakeBackend
from proxy.rerank.front import RerankFront
from proxy.rerank.local import LocalExecutor
from tests.conftest import SciFact

from .conftest import SCIFACT_INDEX, proxy_config

pytestmark = pytest.mark.e2e


class Misbehaving(Backend):
    model_id = "misbehaving"

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def score_pairs(self, pairs: Sequence[tuple[str, str]], max_length: int) -> list[float]:
        if self.mode == "raise":
            raise RuntimeError("CUDA error: device-side assert triggered")
        if self.mode == "hang":
            time.sleep(1.5)
            return [0.5] * len(pairs)
        if self.mode == "nan":
            return [math.nan] + [0.5] * (len(pairs) - 1)
        if self.mode == "count":
            return [0.5] * (len(pairs) - 1)
        raise AssertionError(self.mode)


async def _proxy(
    engine_url: str,
    backend: Backend,
    *,
    max_queue: int = 4096,
    service_class: type[RerankFront] = RerankFront,
    **rule: Any,
) -> AsyncIterator[tuple[str, web.Application]]:
    raw = proxy_config(engine_url, Path("unused"), **{"timeout_ms": 300, **rule})
    policy = BatchPolicy(max_queue=max_queue)
    service = service_class(LocalExecutor(backend), policy, cache_size=0)
    app = create_app(parse_config(raw), reranker=service)
    runner = make_runner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        await runner.cleanup()


@pytest.fixture
def engine_url(engines: dict[str, str], stack: Any) -> str:
    # `stack` makes sure SciFact is indexed; only OpenSearch is needed here.
    if stack.engine != "opensearch":
        pytest.skip("fail-open is engine-independent; run once, on OpenSearch")
    return engines["opensearch"]


def _search_body(scifact: SciFact) -> bytes:
    text = scifact.queries[sorted(scifact.qrels, key=int)[0]]
    return json.dumps({"query": {"match": {"text": text}}, "size": 5, "from": 2}).encode()


def _no_took(raw: bytes) -> Any:
    doc = json.loads(raw)
    doc.pop("took", None)
    for item in doc.get("responses", []):
        item.pop("took", None)
    return doc


@pytest.mark.parametrize(
    ("mode", "status", "reason"),
    [
        ("raise", "failed", "error"),
        ("hang", "failed", "timeout"),
        ("nan", "failed", "invalid_scores"),
        ("count", "failed", "invalid_scores"),
        ("overload", "skipped", "overloaded"),
    ],
)
async def test_single_search_gets_the_engines_answer(
    engine_url: str, scifact: SciFact, mode: str, status: str, reason: str
) -> None:
    body = _search_body(scifact)
    headers = {"Content-Type": "application/json"}
    # Overload: a healthy model whose queue (3 pairs) cannot take the window.
    backend = FakeBackend() if mode == "overload" else Misbehaving(mode)
    max_queue = 3 if mode == "overload" else 4096
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{engine_url}/{SCIFACT_INDEX}/_search", data=body, headers=headers
        ) as r:
            direct = await r.read()
        async for url, app in _proxy(engine_url, backend, max_queue=max_queue):
            async with http.post(f"{url}/{SCIFACT_INDEX}/_search", data=body, headers=headers) as r:
                assert r.status == 200
                assert (r.headers["X-Rerank"], r.headers["X-Rerank-Reason"]) == (status, reason)
                got = await r.read()
                assert r.headers["Content-Type"] == "application/json; charset=UTF-8"
            assert app[METRICS].value("searches_total", outcome=status, reason=reason) == 1
    assert _no_took(got) == _no_took(direct)
    assert b"_engine_score" not in got


async def test_msearch_items_fail_open_one_by_one(engine_url: str, scifact: SciFact) -> None:
    q = [scifact.queries[k] for k in sorted(scifact.qrels, key=int)[:2]]
    lines = [
        {"index": SCIFACT_INDEX},
        {"query": {"match": {"text": q[0]}}, "size": 5},
        {"index": SCIFACT_INDEX},
        {"query": {"match": {"text": q[1]}}, "size": 5},
    ]
    body = "".join(json.dumps(x) + "\n" for x in lines).encode()
    headers = {"Content-Type": "application/x-ndjson"}

    class FailsOnSecond(RerankFront):
        async def score(self, query: str, docs: Sequence[str], *, max_length: int) -> list[float]:
            if query == q[1]:
                raise RuntimeError("model error on this query only")
            return await super().score(query, docs, max_length=max_length)

    async with aiohttp.ClientSession() as http:
        async with http.post(f"{engine_url}/_msearch", data=body, headers=headers) as r:
            direct = _no_took(await r.read())
        async for url, _app in _proxy(engine_url, FakeBackend(), service_class=FailsOnSecond):
            async with http.post(f"{url}/_msearch", data=body, headers=headers) as r:
                items = r.headers["X-Rerank-Items"].split(",")
                got = _no_took(await r.read())
    assert items == ["applied", "failed:error"]
    assert "_engine_score" in got["responses"][0]["hits"]["hits"][0]["fields"]
    assert got["responses"][1] == direct["responses"][1]
