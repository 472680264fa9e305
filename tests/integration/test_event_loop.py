"""No request may stall the others: heavy work stays off the event loop, or is not done.

- A search body past `upstream.max_search_body_bytes` (on the wire, or once its gzip is
  undone: a 28 KiB gzip bomb is a 28 MiB JSON array) goes to the engine untouched, and is
  never inflated past the cap.
- Parsing and writing bodies over `offload.OFFLOAD_BYTES` (a big search body under the cap,
  a big window response, gzip of a big answer) run off the loop: every such call is
  recorded with the thread it ran on, and none may run on the loop's.
- The event-based proof: the work of writing a big reranked answer is held in its thread
  until the health probe has been answered; on the loop, the probe could not be answered.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from proxy import fetch, jsoncodec, offload

from .rerank_support import RERANKED, Engine, Proxies, ndjson, rerank_headers, send

MATCH = {"match": {"title": "red apple"}}
BIG = offload.OFFLOAD_BYTES * 4


def gzip_bomb(size: int = 28 << 20) -> bytes:
    """A JSON array of `size` bytes, gzipped to a few tens of KiB."""
    return gzip.compress(b"[" + b"0," * (size // 2 - 1) + b"0]", compresslevel=9)


def padded_hits(doc: dict[str, Any]) -> dict[str, Any]:
    for hit in doc["hits"]["hits"]:
        hit["_source"]["pad"] = [1.5] * (BIG // 4)  # floats: the codec's slow path
    return doc


class Calls:
    """`jsoncodec.loads`/`dumps`, `fetch.decode_body` and `gzip.compress` on big inputs,
    each with whether it ran on the loop's thread."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.on_loop: list[str] = []
        self.off_loop: list[str] = []
        self.loop_thread = threading.current_thread()
        for module, name in (
            (jsoncodec, "loads"),
            (jsoncodec, "dumps"),
            (fetch, "decode_body"),
            (gzip, "compress"),
        ):
            monkeypatch.setattr(module, name, self._recorded(name, getattr(module, name)))

    def _recorded(self, name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(value: Any, *args: Any, **kwargs: Any) -> Any:
            result = real(value, *args, **kwargs)
            out = result if isinstance(result, (bytes, str)) else b""
            size = max(len(value) if isinstance(value, (bytes, str)) else 0, len(out))
            if size > offload.OFFLOAD_BYTES:
                on_loop = threading.current_thread() is self.loop_thread
                (self.on_loop if on_loop else self.off_loop).append(name)
            return result

        return call


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Calls]:
    yield Calls(monkeypatch)


@pytest.mark.parametrize("target", ["/books/_search", "/books/_msearch"])
async def test_a_gzip_bomb_goes_to_the_engine_untouched(
    proxies: Proxies, engine: Engine, calls: Calls, target: str
) -> None:
    bomb = gzip_bomb()
    engine.then("search", b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\n{}")
    engine.then("msearch", b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\n{}")
    proxy = await proxies.start()
    resp = await send(proxy, target, bomb, headers={"Content-Encoding": "gzip"})
    assert resp.status == 400  # the engine's own answer
    [seen] = engine.requests
    assert bytes(seen.body) == bomb  # as the client sent it, once
    if target.endswith("_search"):
        assert rerank_headers(resp) == ("skipped", "body_too_large")
    # Inflating stopped at the cap: nothing of 28 MiB was ever produced or parsed.
    assert "loads" not in calls.on_loop + calls.off_loop


async def test_a_search_body_over_the_search_cap_is_not_parsed(
    proxies: Proxies, engine: Engine, calls: Calls
) -> None:
    proxy = await proxies.start(max_search_body_bytes=4096)
    body = {"query": MATCH, "size": 3, "stored_fields": ["f"] * 2000}
    resp = await send(proxy, "/books/_search", body)
    assert resp.status == 200
    assert rerank_headers(resp) == ("skipped", "body_too_large")
    [seen] = engine.requests
    assert json.loads(bytes(seen.body)) == body  # not widened: the client's own request
    assert calls.on_loop == []


def big_request() -> dict[str, Any]:
    terms = [f"tag-{i:06d}" for i in range(BIG // 10)]
    return {"size": 3, "query": {"bool": {"must": [MATCH], "filter": [{"terms": {"t": terms}}]}}}


@pytest.mark.parametrize("kind", ["search", "msearch"])
@pytest.mark.parametrize("big", ["request", "response", "both"])
async def test_big_bodies_are_parsed_and_written_off_the_loop(
    proxies: Proxies, engine: Engine, calls: Calls, kind: str, big: str
) -> None:
    body = big_request() if big in ("request", "both") else {"size": 3, "query": MATCH}
    if big in ("response", "both"):
        if kind == "search":
            engine.then("search", engine.tweaked(padded_hits))
        else:
            engine.then(
                "msearch",
                engine.tweaked(lambda d: {**d, "responses": [padded_hits(d["responses"][0])]}),
            )
    proxy = await proxies.start()
    gz = {"Accept-Encoding": "gzip"}
    if kind == "search":
        resp = await send(proxy, "/books/_search", body, headers=gz)
    else:
        raw = ndjson({"index": "books"}, body)
        resp = await send(proxy, "/_msearch", raw, headers=gz, content_type="application/x-ndjson")
    assert resp.status == 200, resp.body[:300]
    doc = json.loads(gzip.decompress(resp.body))
    hits = doc["hits"]["hits"] if kind == "search" else doc["responses"][0]["hits"]["hits"]
    assert [h["_id"] for h in hits] == RERANKED[:3]
    assert calls.off_loop  # the big ones were seen ...
    assert calls.on_loop == []  # ... and none ran on the loop


async def test_health_answers_while_a_big_answer_is_being_written(
    proxies: Proxies, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered, release = threading.Event(), threading.Event()
    loop_thread = threading.current_thread()
    on_loop: list[bool] = []
    real = jsoncodec.dumps

    def held_dumps(value: Any) -> bytes:
        out = real(value)
        if len(out) > offload.OFFLOAD_BYTES:
            on_loop.append(threading.current_thread() is loop_thread)
            entered.set()
            if not on_loop[-1]:  # blocking the loop would only hang this test
                release.wait(timeout=30)
        return out

    monkeypatch.setattr(jsoncodec, "dumps", held_dumps)
    engine.then("search", engine.tweaked(padded_hits))
    proxy = await proxies.start()
    search = asyncio.ensure_future(send(proxy, "/books/_search", {"size": 3, "query": MATCH}))
    try:
        assert await asyncio.to_thread(entered.wait, 30)
        health = await proxy.get("/_rerank_proxy/health")
        assert health.status == 200
        assert not search.done()  # the big answer is still being written
    finally:
        release.set()
    resp = await search
    assert resp.status == 200
    assert rerank_headers(resp)[0] == "applied"
    assert on_loop == [False]
