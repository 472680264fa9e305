"""`model.backend: remote` against a real Infinity server (infinity-emb 0.0.78, Cohere API).

`scripts/infinity` installs Infinity into an environment of its own (it needs transformers < 5
and numpy < 2) and serves the stand-in model directory with its torch engine on CPU in fp32,
with an API key. The remote executor's scores must match our own torch backend on the same
weights (Infinity returns sigmoid(logit) as `relevance_score`, kept as it is), and a search
through the proxy must come back in the same order as with the model in-process.

Infinity is installed on first use (a minute or two; torch is reused from the project's
environment). If it cannot be installed or started, the tests skip with the reason, or fail
with it when CI=true.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from proxy.app import create_app
from proxy.config import ModelConfig, parse_config
from proxy.rerank.base import BatchPolicy, Executor
from proxy.rerank.front import RerankFront
from proxy.rerank.loader import load_backend
from proxy.rerank.local import LocalExecutor
from proxy.rerank.remote import load_remote
from tests.conftest import REPO_ROOT, SciFact
from tests.integration.fakes import FakeUpstream, RunningProxy, proxy_config, start_app
from tests.integration.rerank_support import (
    ENGINE_ORDER,
    QUERY,
    Engine,
    ids,
    rerank_headers,
    rules,
    send,
)

pytestmark = pytest.mark.e2e

SCRIPT = REPO_ROOT / "scripts" / "infinity"
KEY = "infinity-e2e-key"  # the server requires it; the executor sends it as Bearer
TOLERANCE = 1e-4


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(why: str) -> None:
    if in_ci():
        pytest.fail(f"CI=true and no Infinity server: {why}", pytrace=False)
    pytest.skip(f"no Infinity server ({why}); CI=true fails instead")


@dataclass(frozen=True)
class Infinity:
    url: str
    model_dir: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def infinity(tiny_model: Path) -> Iterator[Infinity]:
    env = {**os.environ, "INFINITY_API_KEY": KEY}
    try:
        # The first start installs Infinity (a minute or two); later ones take seconds.
        proc = subprocess.run(
            [str(SCRIPT), "start", str(tiny_model), str(free_port())],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            timeout=1800,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        unavailable(f"scripts/infinity start: {exc}")
    if proc.returncode != 0:
        unavailable(f"scripts/infinity start exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    yield Infinity(proc.stdout.strip().splitlines()[-1], tiny_model)
    subprocess.run([str(SCRIPT), "stop"], stdin=subprocess.DEVNULL, capture_output=True)


def remote_config(url: str) -> ModelConfig:
    remote = {"urls": [url], "api": "cohere", "path": "/rerank", "api_key_env": "INFINITY_KEY"}
    return parse_config({"model": {"backend": "remote", "remote": remote}}).model


def torch_config(model_dir: Path) -> ModelConfig:
    model = {"name": str(model_dir), "backend": "torch", "device": "cpu", "batch_size": 8}
    return parse_config({"model": model}).model


def pairs_from(data: SciFact, n_queries: int = 4, per_query: int = 5) -> list[tuple[str, str]]:
    """20 (query, document) pairs: each query's relevant abstracts, then others, all short
    enough that no truncation applies (Infinity truncates longest-first, we the document)."""
    docs = list(data.corpus)
    pairs: list[tuple[str, str]] = []
    for i, (qid, query) in enumerate(list(data.queries.items())[:n_queries]):
        chosen = [d for d in sorted(data.qrels.get(qid, ())) if d in data.corpus]
        chosen += docs[i * per_query : (i + 1) * per_query]
        for doc_id in chosen[:per_query]:
            doc = data.corpus[doc_id]
            pairs.append((query.strip(), f"{doc['title']} {doc['text'][:600]}".strip()))
    return pairs


async def test_scores_match_the_torch_backend(
    infinity: Infinity, scifact: SciFact, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFINITY_KEY", KEY)
    pairs = pairs_from(scifact)
    assert len(pairs) == 20 and len({q for q, _ in pairs}) == 4  # one group, four queries
    executor = load_remote(remote_config(infinity.url))
    try:
        remote = await executor.run(pairs, 512)
    finally:
        await executor.close()
    local = load_backend(torch_config(infinity.model_dir)).score_pairs(pairs, 512)

    diff = max(abs(a - b) for a, b in zip(remote, local, strict=True))
    print(f"Infinity vs torch backend, {len(pairs)} pairs: max |diff| = {diff:.3g}")
    assert diff <= TOLERANCE
    assert len(set(remote)) > 1  # not a constant: the scores carry the model's ranking


async def test_a_bad_key_is_refused(infinity: Infinity, monkeypatch: pytest.MonkeyPatch) -> None:
    from proxy.errors import RemoteRefused

    monkeypatch.setenv("INFINITY_KEY", "not-the-key")
    executor = load_remote(remote_config(infinity.url))
    try:
        with pytest.raises(RemoteRefused, match="HTTP 401"):
            await executor.run([(QUERY, "apple")], 512)
    finally:
        await executor.close()
    assert "not-the-key" not in json.dumps(executor.describe())


@pytest.fixture
async def proxy_with() -> AsyncIterator[Callable[[Executor], Awaitable[RunningProxy]]]:
    upstream = FakeUpstream()
    await upstream.start()
    Engine(upstream)
    running: list[RunningProxy] = []

    async def start(executor: Executor) -> RunningProxy:
        raw: dict[str, Any] = {**proxy_config(upstream.url), "indices": rules()}
        front = RerankFront(executor, BatchPolicy(), cache_size=0)
        app = create_app(parse_config(raw), reranker=front)
        proxy = await start_app(app)
        running.append(proxy)
        return proxy

    yield start
    for proxy in running:
        await proxy.close_clients()
        await proxy.stop()
    await upstream.close()


async def test_a_search_through_the_proxy_orders_as_in_process(
    infinity: Infinity,
    proxy_with: Callable[[Executor], Awaitable[RunningProxy]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("INFINITY_KEY", KEY)
    search = {"size": 10, "query": {"match": {"title": QUERY}}}
    answers = []
    for executor in (
        load_remote(remote_config(infinity.url)),
        LocalExecutor(load_backend(torch_config(infinity.model_dir))),
    ):
        proxy = await proxy_with(executor)
        resp = await send(proxy, "/books/_search", search)
        assert (resp.status, rerank_headers(resp)) == (200, ("applied", None))
        answers.append(json.loads(resp.body))
    remote, local = answers
    assert ids(local) != ENGINE_ORDER[:10]  # the model did reorder: the comparison means something
    assert ids(remote) == ids(local)
    scores = [[h["_score"] for h in doc["hits"]["hits"]] for doc in answers]
    assert scores[0] == pytest.approx(scores[1], abs=TOLERANCE)
