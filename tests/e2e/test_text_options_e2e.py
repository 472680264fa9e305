"""Max-over-passages through the proxy: a document scores as its best passage."""

from __future__ import annotations

import json
from collections.abc import Sequence

import aiohttp
import pytest

from proxy.rerank.fake import FakeBackend
from tests.conftest import SciFact

from .conftest import SCIFACT_INDEX
from .test_fail_open_e2e import _proxy, engine_url  # noqa: F401 - fixture

pytestmark = pytest.mark.e2e


class Recording(FakeBackend):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str]] = []

    def score_pairs(self, pairs: Sequence[tuple[str, str]], max_length: int) -> list[float]:
        self.seen += pairs
        return super().score_pairs(pairs, max_length)


async def test_documents_score_as_their_best_passage(engine_url: str, scifact: SciFact) -> None:  # noqa: F811
    text = scifact.queries[sorted(scifact.qrels, key=int)[0]]
    body = json.dumps({"query": {"match": {"text": text}}, "size": 10}).encode()
    backend = Recording()
    rule = {"passages": "max", "passage_words": 40, "passage_stride": 30, "max_passages": 3}
    async with aiohttp.ClientSession() as http:
        async for url, _app in _proxy(engine_url, backend, timeout_ms=60_000, **rule):
            async with http.post(
                f"{url}/{SCIFACT_INDEX}/_search",
                data=body,
                headers={"Content-Type": "application/json"},
            ) as r:
                assert r.headers["X-Rerank"] == "applied"
                hits = (await r.json())["hits"]["hits"]
    passages_of: dict[str, list[str]] = {}
    for hit in hits:
        doc = f"{hit['_source']['title']}\n{hit['_source']['text']}"
        words = doc.split()
        starts = range(0, max(1, len(words) - 40 + 30), 30)
        ps = [" ".join(words[s : s + 40]) for s in starts][:3] if len(words) > 40 else [doc]
        passages_of[hit["_id"]] = ps
        expected = max(FakeBackend().score_pairs([(text, p) for p in ps], 512))
        assert hit["_score"] == pytest.approx(expected)
    assert any(len(ps) > 1 for ps in passages_of.values())
    assert all((text, p) in backend.seen for ps in passages_of.values() for p in ps)
