"""Shadow mode and sampled rollout, end to end in the app against the fake engine.

Shadow: the client gets the engine's own bytes for its own request (one upstream request
before the answer), and the rerank runs afterwards: one more, widened, upstream search with
the caller's credentials, then the comparison in metrics and in the JSON Lines log.
Sampling: a stable hash of index and query text decides, the same for every page.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from proxy.config import RuleConfig
from proxy.keys import METRICS, SHADOW
from proxy.plan import sampled

from .fakes import FakeUpstream, Received
from .rerank_support import (
    ENGINE_ORDER,
    QUERY,
    RERANKED,
    WINDOW,
    Engine,
    Proxies,
    Recording,
    counted,
    rerank_headers,
    send,
)

MATCH = {"match": {"title": QUERY}}


async def test_shadow_serves_the_engines_bytes_then_records_the_would_be_order(
    proxies: Proxies, engine: Engine, tmp_path: Path
) -> None:
    log = tmp_path / "shadow.jsonl"
    backend = Recording()
    proxy = await proxies.start(
        backend, books={"mode": "shadow"}, config={"shadow": {"log": str(log)}}
    )
    body = {"query": MATCH, "size": 4}
    raw = json.dumps(body).encode()
    resp = await send(proxy, "/books/_search", raw, headers={"Authorization": "ApiKey k1"})

    assert rerank_headers(resp) == ("shadow", None)
    [first] = engine.requests
    assert (first.target, bytes(first.body)) == ("/books/_search", raw)  # the client's own
    assert resp.body == engine.answer(first).split(b"\r\n\r\n", 1)[1]  # the engine's bytes

    runner = proxy.app[SHADOW]
    await runner.done.wait()
    widened = engine.requests[1]
    assert json.loads(widened.body)["size"] == WINDOW and widened.header("Authorization") == (
        "ApiKey k1"
    )
    assert backend.queries == [QUERY]
    metrics = proxy.app[METRICS]
    assert metrics.value("shadow_total", result="compared") == 1
    promoted = [d for d in RERANKED[:4] if d not in ENGINE_ORDER[:4]]
    assert metrics.value("shadow_promoted_total") == len(promoted)
    assert counted(proxy) == {("shadow", "none"): 1}
    [record] = [json.loads(line) for line in log.read_text().splitlines()]
    assert record["engine"] == ENGINE_ORDER[:WINDOW]
    assert record["reranked"] == RERANKED[:WINDOW]
    assert record["promoted"] == promoted and record["query"] == QUERY
    assert record["page_overlap"] == pytest.approx(1 - len(promoted) / 4)


async def test_a_full_shadow_queue_drops_and_counts_without_delaying_the_client(
    proxies: Proxies, engine: Engine, upstream: FakeUpstream
) -> None:
    release, held = asyncio.Event(), asyncio.Event()

    async def hold_widened(req: Received, writer: asyncio.StreamWriter) -> bool:
        if req.body and json.loads(req.body).get("size") == WINDOW:  # the shadow's search
            held.set()
            await release.wait()
        return await engine.handle(req, writer)

    upstream.handler = hold_widened
    proxy = await proxies.start(books={"mode": "shadow"}, config={"shadow": {"queue": 1}})
    metrics = proxy.app[METRICS]
    first = await send(proxy, "/books/_search", {"query": MATCH})
    await held.wait()  # the worker is busy with the first search's rerank
    # The second waits in the queue (size 1), the third finds it full: dropped, counted.
    for _ in range(2):
        resp = await send(proxy, "/books/_search", {"query": MATCH})
        assert resp.status == 200 and rerank_headers(resp) == ("shadow", None)
    assert rerank_headers(first) == ("shadow", None)
    assert metrics.value("shadow_total", result="dropped") == 1
    release.set()
    while metrics.value("shadow_total", result="compared") < 2:
        proxy.app[SHADOW].done.clear()
        await proxy.app[SHADOW].done.wait()
    assert metrics.value("shadow_total", result="compared") == 2


def _sample_rule(share: float) -> RuleConfig:
    return RuleConfig(fields=("title",), sample=share)


def test_sampling_is_stable_and_close_to_its_share() -> None:
    rule = _sample_rule(0.3)
    queries = [f"query {i}" for i in range(2000)]
    chosen = [q for q in queries if sampled(rule, ("books",), q)]
    assert 0.25 < len(chosen) / len(queries) < 0.35
    assert chosen == [q for q in queries if sampled(rule, ("books",), q)]  # stable
    assert all(sampled(_sample_rule(1.0), ("books",), q) for q in queries[:50])
    assert not any(sampled(_sample_rule(0.0), ("books",), q) for q in queries[:50])


async def test_sampled_rollout_gives_every_page_of_a_search_the_same_choice(
    proxies: Proxies, engine: Engine
) -> None:
    rule = _sample_rule(0.5)
    texts = [f"apple {i}" for i in range(40)]
    inside = next(t for t in texts if sampled(rule, ("books",), t))
    outside = next(t for t in texts if not sampled(rule, ("books",), t))
    proxy = await proxies.start(books={"sample": 0.5})
    for text, expected in ((inside, ("applied", None)), (outside, ("skipped", "not_sampled"))):
        for page in ({"size": 3}, {"from": 3, "size": 3}):
            body = {"query": {"match": {"title": text}}, **page}
            resp = await send(proxy, "/books/_search", body)
            assert rerank_headers(resp) == expected, (text, page)
    assert counted(proxy) == {("applied", "none"): 2, ("skipped", "not_sampled"): 2}
