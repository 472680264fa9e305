"""Helpers for the rerank-flow tests: a fake engine, misbehaving models, a proxy starter.

`Engine` replaces `FakeUpstream.handler` and plays Elasticsearch: `_search` (the hits
`[from, from+size)` of a fixed corpus, scores descending), `_msearch`, `_render/template`
and `_search/template`, all built from the request body it received. `then(kind, reply)`
queues a different answer for the next request of one kind (an error status, broken JSON,
a tweaked document, too many bytes); later requests get the normal answer again.

`Proxies.start` runs the real app in-process with a `RerankFront` over a `LocalExecutor`
and the index rules of `rules()`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any

from proxy.app import create_app
from proxy.config import parse_config
from proxy.keys import METRICS
from proxy.rerank.base import Backend, BatchPolicy
from proxy.rerank.fake import FakeBackend
from proxy.rerank.front import RerankFront
from proxy.rerank.local import LocalExecutor

from .fakes import (
    FakeUpstream,
    RawResponse,
    Received,
    RunningProxy,
    http_response,
    proxy_config,
    start_app,
)

WINDOW = 10
QUERY = "red apple"
# (id, title): the engine ranks them in this order. Against QUERY the FakeBackend's word
# overlap puts the window in RERANKED order; d9 has no title (scored by no one, kept last).
DOCS: list[tuple[str, str | None]] = [
    ("d0", "green pear tart"),
    ("d1", "red wine from the valley"),
    ("d2", "pear and plum jam"),
    ("d3", "red apple"),
    ("d4", "lemon curd"),
    ("d5", "apple"),
    ("d6", "fig rolls"),
    ("d7", "red apple pie recipe"),
    ("d8", "cherry cake"),
    ("d9", None),
] + [(f"d{i}", f"filler book {i}") for i in range(10, 20)]
ENGINE_ORDER = [d for d, _ in DOCS]
RERANKED = ["d3", "d5", "d7", "d1", "d0", "d2", "d4", "d6", "d8", "d9", *ENGINE_ORDER[WINDOW:]]


def rules(books: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The index rules: `books` reranks on `title` (override its keys with `books`)."""
    base = {"fields": ["title"], "window": WINDOW}
    return [
        {"match": ["books"], **base, **(books or {})},
        {"match": ["archive"], **base, "enabled": False},
        {"match": ["tpl"], **base, "query_param": "text"},
        {"match": ["ptr"], **base, "query_path": "/query/bool/filter/0/match/title"},
    ]


# -- the engine ------------------------------------------------------------------------

Reply = Callable[[Received], bytes]
ES_HEADERS = [("Content-Type", "application/json; charset=UTF-8"), ("X-Elastic-Product", "ES")]


def json_bytes(status: int, doc: Any) -> bytes:
    return http_response(status, ES_HEADERS, json.dumps(doc).encode())


def body_of(raw: bytes) -> bytes:
    """The body of raw HTTP response bytes."""
    return raw.split(b"\r\n\r\n", 1)[1]


def search_answer(index: str, body: Any) -> dict[str, Any]:
    """What the engine answers a search body: hits `[from, from+size)`, scores descending."""
    body = body if isinstance(body, dict) else {}
    start, size = int(body.get("from", 0)), int(body.get("size", 10))
    hits = []
    for i in range(start, min(start + size, len(DOCS))):
        doc_id, title = DOCS[i]
        source = {"title": title} if title is not None else {"body": "no title"}
        hits.append({"_index": index, "_id": doc_id, "_score": float(20 - i), "_source": source})
    return {
        "took": 3,
        "timed_out": False,
        "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
        "hits": {"total": {"value": len(DOCS), "relation": "eq"}, "max_score": 20.0, "hits": hits},
    }


def render(spec: Any) -> Any:
    """Mustache, as far as these tests need it: `{{name}}` replaced in the source."""
    source = spec.get("source")
    text = source if isinstance(source, str) else json.dumps(source)
    for key, value in (spec.get("params") or {}).items():
        text = text.replace("{{" + key + "}}", str(value))
    return json.loads(text)


def ndjson(*docs: Any) -> bytes:
    return b"".join(json.dumps(d).encode() + b"\n" for d in docs)


def parse_lines(body: bytes) -> list[Any]:
    return [json.loads(line) for line in body.split(b"\n") if line.strip()]


def error_reply(status: int, error_type: str = "illegal_argument_exception") -> bytes:
    root = {"type": error_type, "reason": f"engine says {status}"}
    return json_bytes(status, {"error": {"root_cause": [root], **root}, "status": status})


def kind_of(req: Received) -> str:
    path = req.target.split("?", 1)[0]
    for suffix, kind in (
        ("/_render/template", "render"),
        ("/_msearch", "msearch"),
        ("/_search/template", "search_template"),
        ("/_search", "search"),
    ):
        if path.endswith(suffix):
            return kind
    return "other"


def _fixed(raw: bytes) -> Reply:
    return lambda _req: raw


class Engine:
    """An Elasticsearch stand-in on a `FakeUpstream`; `then` queues special answers."""

    def __init__(self, upstream: FakeUpstream) -> None:
        self.upstream = upstream
        self.queued: dict[str, list[Reply]] = {}
        upstream.handler = self.handle

    @property
    def requests(self) -> list[Received]:
        return self.upstream.requests

    def then(self, kind: str, *replies: bytes | Reply) -> None:
        """Answer the next requests of `kind` (search, msearch, render) with these."""
        for r in replies:
            self.queued.setdefault(kind, []).append(r if callable(r) else _fixed(r))

    def tweaked(self, change: Callable[[dict[str, Any]], Any]) -> Reply:
        """The normal answer to a search, as `change(doc)` returns it."""
        return lambda req: json_bytes(200, change(json.loads(self.answer_doc(req))))

    async def handle(self, req: Received, writer: asyncio.StreamWriter) -> bool:
        queue = self.queued.get(kind_of(req))
        writer.write(queue.pop(0)(req) if queue else self.answer(req))
        return True

    def answer_doc(self, req: Received) -> bytes:
        kind = kind_of(req)
        index = req.target.lstrip("/").split("/", 1)[0]
        raw = bytes(req.body)
        if kind == "msearch":
            lines = parse_lines(raw)
            items = [
                {**search_answer(head.get("index", index), body), "status": 200}
                for head, body in zip(lines[::2], lines[1::2], strict=True)
            ]
            return json.dumps({"took": 5, "responses": items}).encode()
        body = json.loads(raw) if raw.strip() else {}
        if kind == "render":
            return json.dumps({"template_output": render(body)}).encode()
        if kind == "search_template":
            body = render(body)
        if kind in ("search", "search_template"):
            return json.dumps(search_answer(index, body)).encode()
        return b'{"acknowledged":true}'

    def answer(self, req: Received) -> bytes:
        try:
            body = self.answer_doc(req)
        except ValueError:
            return error_reply(400, "parsing_exception")
        return http_response(200, ES_HEADERS, body)


# -- models ----------------------------------------------------------------------------


class Recording(FakeBackend):
    """The word-overlap model, remembering which queries it was asked to score."""

    def __init__(self) -> None:
        super().__init__()
        self.queries: list[str] = []

    def score_pairs(self, pairs: Sequence[tuple[str, str]], max_length: int) -> list[float]:
        self.queries += [q for q in dict.fromkeys(q for q, _ in pairs) if q not in self.queries]
        return super().score_pairs(pairs, max_length)


class Misbehaving(Backend):
    """A model that raises, returns NaN or the wrong count, or blocks until `release`."""

    model_id = "misbehaving"

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.release = threading.Event()

    def score_pairs(self, pairs: Sequence[tuple[str, str]], max_length: int) -> list[float]:
        if self.mode == "raise":
            raise RuntimeError("CUDA error: device-side assert triggered")
        if self.mode == "nan":
            return [math.nan] + [0.5] * (len(pairs) - 1)
        if self.mode == "count":
            return [0.5] * (len(pairs) - 1)
        assert self.mode == "block", self.mode
        self.release.wait(timeout=60)  # set by `Proxies.close`, long after the rule's budget
        return [0.5] * len(pairs)


# -- the proxy -------------------------------------------------------------------------


class Proxies:
    """Starts proxies with a reranker; `close` releases blocked models, then stops them."""

    def __init__(self, upstream_url: str) -> None:
        self.url = upstream_url
        self.running: list[RunningProxy] = []
        self.backends: list[Backend] = []

    async def start(
        self,
        backend: Backend | None = None,
        *,
        front: type[RerankFront] = RerankFront,
        max_queue: int = 4096,
        books: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
        **upstream_cfg: object,
    ) -> RunningProxy:
        backend = backend if backend is not None else Recording()
        self.backends.append(backend)
        raw = {**proxy_config(self.url, **upstream_cfg), "indices": rules(books), **(config or {})}
        reranker = front(LocalExecutor(backend), BatchPolicy(max_queue=max_queue), cache_size=0)
        app = create_app(parse_config(raw), reranker=reranker)
        proxy = await start_app(app)
        self.running.append(proxy)
        return proxy

    async def close(self) -> None:
        for backend in self.backends:
            if isinstance(backend, Misbehaving):
                backend.release.set()  # the inference thread must end before shutdown
        for proxy in self.running:
            await proxy.close_clients()
            await proxy.stop()


async def send(
    proxy: RunningProxy,
    target: str,
    body: bytes | Any = b"",
    *,
    headers: dict[str, str] | None = None,
    content_type: str = "application/json",
) -> RawResponse:
    """POST `body` (bytes as they are, anything else as JSON) to the proxy."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    lines = [f"POST {target} HTTP/1.1", "Host: p", f"Content-Type: {content_type}"]
    lines += [f"Content-Length: {len(data)}"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
    return await proxy.request(("\r\n".join(lines) + "\r\n\r\n").encode() + data)


def rerank_headers(resp: RawResponse) -> tuple[str | None, str | None]:
    return resp.header("X-Rerank"), resp.header("X-Rerank-Reason")


def ids(doc: Any) -> list[str]:
    return [h["_id"] for h in doc["hits"]["hits"]]


def has_engine_score(doc: Any) -> bool:
    return any("_engine_score" in h.get("fields", {}) for h in doc["hits"]["hits"])


def counted(proxy: RunningProxy) -> dict[tuple[str, str], float]:
    """Every non-zero `searches_total{outcome,reason}` sample."""
    metrics = proxy.app[METRICS]
    out = {}
    for family in metrics.registry.collect():
        for s in family.samples:
            if s.name == "rerank_proxy_searches_total" and s.value:
                key = (s.labels["outcome"], s.labels["reason"])
                assert metrics.value("searches_total", outcome=key[0], reason=key[1]) == s.value
                out[key] = s.value
    return out


def warnings(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records if r.levelno >= logging.WARNING]
