"""`rerank-proxy model-server`: the Cohere/Jina and TEI rerank APIs over our own reranker.

The app runs in-process with the fake backend (`FakeBackend`'s word-overlap scores are the
reference); the request and response shapes are the ones Cohere's, Jina's, Infinity's and
text-embeddings-inference's clients send and read, and the ones an Elasticsearch inference
endpoint of the Cohere kind and an OpenSearch ml-commons remote connector exchange.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.config import parse_config
from proxy.model_server import create_model_server
from proxy.rerank.base import BatchPolicy
from proxy.rerank.fake import FakeBackend
from proxy.rerank.front import RerankFront
from proxy.rerank.local import LocalExecutor

QUERY = "red apple pie"
DOCS = ["a green pear", "red apple pie recipe", "apple", "nothing here"]
EXPECTED = FakeBackend().score_pairs([(QUERY, d) for d in DOCS], 512)
BEST_FIRST = sorted(range(len(DOCS)), key=lambda i: -EXPECTED[i])


async def _start(raw: dict[str, Any] | None = None, **front: Any) -> tuple[str, web.AppRunner]:
    cfg = parse_config({"model": {"backend": "fake"}, **(raw or {})})
    reranker = RerankFront(LocalExecutor(FakeBackend()), BatchPolicy(**front), cache_size=0)
    runner = web.AppRunner(create_model_server(cfg, reranker))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return f"http://127.0.0.1:{runner.addresses[0][1]}", runner


@pytest.fixture
async def server() -> AsyncIterator[str]:
    url, runner = await _start()
    yield url
    await runner.cleanup()


async def _post(url: str, body: Any, **headers: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.post(url, json=body, headers=headers) as r:
        return r.status, await r.json()


@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank", "/rerank"])
async def test_cohere_family_shape(server: str, path: str) -> None:
    # Cohere's, Jina's and Infinity's clients; also what Elasticsearch's `cohere` inference
    # service and an OpenSearch ml-commons connector (request_body with query/documents) send.
    body = {"model": "any", "query": QUERY, "documents": DOCS, "top_n": 3}
    status, doc = await _post(server + path, body)
    assert status == 200
    assert [r["index"] for r in doc["results"]] == BEST_FIRST[:3]
    assert [r["relevance_score"] for r in doc["results"]] == [EXPECTED[i] for i in BEST_FIRST[:3]]
    assert "document" not in doc["results"][0] and doc["id"] and doc["meta"]["model"]


async def test_cohere_documents_as_objects_and_returned(server: str) -> None:
    docs = [{"text": d} for d in DOCS]
    body = {"query": QUERY, "documents": docs, "return_documents": True}
    _, doc = await _post(server + "/v1/rerank", body)
    assert [r["document"]["text"] for r in doc["results"]] == [DOCS[i] for i in BEST_FIRST]


async def test_tei_shape_with_raw_scores_and_text(server: str) -> None:
    status, doc = await _post(server + "/rerank", {"query": QUERY, "texts": DOCS})
    assert status == 200
    assert [(r["index"], r["score"]) for r in doc] == [(i, EXPECTED[i]) for i in BEST_FIRST]
    _, raw = await _post(
        server + "/rerank", {"query": QUERY, "texts": DOCS, "raw_scores": True, "return_text": True}
    )
    for r in raw:  # raw scores are logits: their sigmoid is the probability
        assert 1 / (1 + math.exp(-r["score"])) == pytest.approx(EXPECTED[r["index"]], abs=1e-9)
        assert r["text"] == DOCS[r["index"]]


@pytest.mark.parametrize(
    ("path", "body", "status", "error"),
    [
        ("/v1/rerank", {"documents": DOCS}, 400, {"message": "`query` must be a non-empty string"}),
        (
            "/v1/rerank",
            {"query": QUERY, "documents": []},
            400,
            {"message": "`documents` must be a non-empty list"},
        ),
        (
            "/v1/rerank",
            {"query": QUERY, "documents": [1]},
            400,
            {"message": "`documents[0]` must be a string or an object with `text`"},
        ),
        (
            "/v1/rerank",
            {"query": QUERY, "documents": DOCS, "top_n": 0},
            400,
            {"message": "`top_n` must be a positive integer"},
        ),
        (
            "/rerank",
            {"query": "", "texts": DOCS},
            400,
            {"error": "`query` must be a non-empty string", "error_type": "Validation"},
        ),
        ("/v1/rerank", [1, 2], 400, {"message": "the body must be a JSON object"}),
    ],
    ids=["no-query", "no-documents", "bad-document", "bad-top-n", "tei-empty-query", "not-object"],
)
async def test_bad_requests_get_the_shapes_own_error(
    server: str, path: str, body: Any, status: int, error: Any
) -> None:
    assert await _post(server + path, body) == (status, error)


async def test_too_many_documents_is_413_and_overload_429() -> None:
    url, runner = await _start({"model_server": {"max_documents": 3}}, max_queue=2, wait_ms=0)
    try:
        status, doc = await _post(url + "/v1/rerank", {"query": QUERY, "documents": DOCS})
        assert (status, doc["message"]) == (413, "`documents` holds 4 items; at most 3 per request")
        status, doc = await _post(url + "/v1/rerank", {"query": QUERY, "documents": DOCS[:3]})
        assert status == 429 and doc["message"].startswith("overloaded")
    finally:
        await runner.cleanup()


async def test_api_key_is_required_except_for_the_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MS_KEY", "s3cret")
    url, runner = await _start({"model_server": {"api_key_env": "MS_KEY"}})
    try:
        body = {"query": QUERY, "documents": DOCS}
        assert (await _post(url + "/v1/rerank", body))[0] == 401
        assert (await _post(url + "/v1/rerank", body, Authorization="Bearer nope"))[0] == 401
        assert (await _post(url + "/v1/rerank", body, Authorization="Bearer s3cret"))[0] == 200
        async with aiohttp.ClientSession() as http:
            for path in ("/health", "/_rerank_proxy/ready"):
                async with http.get(url + path) as r:
                    assert r.status == 200, path
            async with http.get(url + "/_rerank_proxy/metrics") as r:
                assert r.status == 401
            async with http.get(
                url + "/_rerank_proxy/metrics", headers={"Authorization": "Bearer s3cret"}
            ) as r:
                text = await r.text()
        assert "rerank_proxy_batch_size_count" in text and "rerank_proxy_model_loaded 1.0" in text
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(("api", "path"), [("cohere", "/v1/rerank"), ("tei", "/rerank")])
async def test_remote_backend_against_our_model_server_equals_in_process(
    server: str, api: str, path: str
) -> None:
    """`backend: remote` pointed at our own model server scores exactly as in-process."""
    from proxy.rerank.remote import load_remote

    cfg = parse_config(
        {"model": {"backend": "remote", "remote": {"urls": [server], "api": api, "path": path}}}
    )
    executor = load_remote(cfg.model)
    pairs = [(QUERY, d) for d in DOCS] + [("pear", d) for d in DOCS]
    try:
        got = await executor.run(pairs, 512)
    finally:
        await executor.close()
    assert got == pytest.approx(FakeBackend().score_pairs(pairs, 512), abs=1e-12)
