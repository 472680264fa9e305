"""`model.backend: remote` against recording fake rerank servers (aiohttp, 127.0.0.1:0).

`FakeRerankServer` plays a Cohere-family or TEI server: it records every call (path, headers,
JSON body) and answers through a replaceable `answer`, by default with word-overlap scores
(the `FakeBackend`'s, as a logit for TEI) sorted best first, so results come back out of
input order as real servers send them. Circuit-breaker time is a `FakeClock`: no sleeps and
no wall-clock assertions. The last tests run the proxy in-process with a `RerankFront` over
the remote executor against the fake engine of `rerank_support`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.app import create_app
from proxy.config import ModelConfig, parse_config
from proxy.errors import (
    InvalidScores,
    ModelLoadError,
    RemoteRefused,
    RemoteUnavailable,
    RerankError,
    RerankOverloaded,
    RerankTimeout,
)
from proxy.rerank import remote
from proxy.rerank.base import BatchPolicy
from proxy.rerank.fake import FakeBackend
from proxy.rerank.front import RerankFront
from proxy.rerank.loader import load_executor
from proxy.rerank.remote import RemoteExecutor, load_remote

from .fakes import FakeUpstream, RunningProxy, proxy_config, start_app
from .rerank_support import (
    ENGINE_ORDER,
    QUERY,
    RERANKED,
    Engine,
    ids,
    kind_of,
    rerank_headers,
    rules,
    send,
)

KEY = "sk-test-0123456789-do-not-leak"
Answer = Callable[["Call", web.Request], Awaitable[web.StreamResponse]]


def overlap(query: str, doc: str) -> float:
    """The fake servers' relevance: the `FakeBackend`'s word-overlap probability."""
    return FakeBackend().score_pairs([(query, doc)], 512)[0]


def logit(p: float) -> float:
    return math.log(p / (1 - p))


@dataclass
class Call:
    server: str
    path: str
    headers: dict[str, str]
    body: Any

    @property
    def query(self) -> str:
        return str(self.body["query"])

    @property
    def docs(self) -> list[str]:
        return list(self.body.get("documents") or self.body.get("texts") or [])


def results(call: Call, api: str) -> Any:
    """The correct answer for `call`, best first (out of input order)."""
    scored = [(i, overlap(call.query, d)) for i, d in enumerate(call.docs)]
    scored.sort(key=lambda item: (-item[1], item[0]))
    if api == "tei":
        return [{"index": i, "score": logit(p)} for i, p in scored]
    return {"results": [{"index": i, "relevance_score": p} for i, p in scored], "model": "m"}


@dataclass(eq=False)
class FakeRerankServer:
    name: str
    api: str = "cohere"
    calls: list[Call] = field(default_factory=list)
    answer: Answer | None = None  # None: the correct answer
    release: asyncio.Event = field(default_factory=asyncio.Event)  # ends `stall` answers
    arrived: asyncio.Event = field(default_factory=asyncio.Event)  # set on every call
    runner: web.AppRunner | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self.runner.addresses[0][1])

    async def wait_for_calls(self, n: int) -> None:
        """Until `n` calls have arrived (fails the test after 5 s)."""
        async with asyncio.timeout(5):
            while len(self.calls) < n:
                self.arrived.clear()
                await self.arrived.wait()

    async def close(self) -> None:
        self.release.set()
        if self.runner is not None:
            await self.runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        call = Call(self.name, request.path, dict(request.headers), await request.json())
        self.calls.append(call)
        self.arrived.set()
        if self.answer is not None:
            return await self.answer(call, request)
        return web.json_response(results(call, self.api))

    # -- answers -------------------------------------------------------------------------

    def status(self, code: int, text: str = '{"error": "no"}') -> None:
        async def answer(call: Call, request: web.Request) -> web.StreamResponse:
            return web.Response(status=code, text=text, content_type="application/json")

        self.answer = answer

    def raw(self, text: str) -> None:
        self.status(200, text)

    def doc(self, change: Callable[[Any], Any]) -> None:
        """Answer what `change` makes of the correct answer."""

        async def answer(call: Call, request: web.Request) -> web.StreamResponse:
            return web.json_response(change(results(call, self.api)))

        self.answer = answer

    def stall(self) -> None:
        """Answer only once `release` is set (a slow server; the test ends the wait)."""

        async def answer(call: Call, request: web.Request) -> web.StreamResponse:
            await self.release.wait()
            return web.json_response(results(call, self.api))

        self.answer = answer

    def reset(self) -> None:
        """Abort the connection with a TCP RST instead of answering."""

        async def answer(call: Call, request: web.Request) -> web.StreamResponse:
            transport = request.transport
            assert transport is not None
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
            return web.Response()  # never sent: the connection is gone

        self.answer = answer

    def ok(self) -> None:
        self.answer = None


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def servers() -> AsyncIterator[Callable[..., Awaitable[FakeRerankServer]]]:
    started: list[FakeRerankServer] = []

    async def start(name: str = "a", api: str = "cohere") -> FakeRerankServer:
        server = FakeRerankServer(name, api)
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def executors() -> AsyncIterator[list[RemoteExecutor]]:
    made: list[RemoteExecutor] = []
    yield made
    for executor in made:
        await executor.close()


def model_config(urls: Sequence[str], **remote: Any) -> ModelConfig:
    """`model:` of a parsed config (so the keys are the real config's), backend remote."""
    raw = {"model": {"backend": "remote", "remote": {"urls": list(urls), **remote}}}
    return parse_config(raw).model


@pytest.fixture
def make(executors: list[RemoteExecutor], clock: FakeClock) -> Callable[..., RemoteExecutor]:
    def make(*servers: FakeRerankServer, **remote: Any) -> RemoteExecutor:
        remote.setdefault("api", servers[0].api if servers else "cohere")
        executor = load_remote(model_config([s.url for s in servers], **remote), clock=clock)
        executors.append(executor)
        return executor

    return make


Make = Callable[..., RemoteExecutor]
Servers = Callable[..., Awaitable[FakeRerankServer]]
DOCS = ["red apple pie", "green pear", "apple", "a red apple", "fig rolls"]


def expected(query: str, docs: Sequence[str]) -> list[float]:
    return [overlap(query, d) for d in docs]


# -- the two API shapes ----------------------------------------------------------------


async def test_cohere_shape_body_headers_and_bearer_key(
    servers: Servers, make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RERANK_TEST_KEY", KEY)
    server = await servers("a", "cohere")
    executor = make(server, model="rerank-v3.5", api_key_env="RERANK_TEST_KEY")
    scores = await executor.run([(QUERY, d) for d in DOCS], 512)

    assert scores == pytest.approx(expected(QUERY, DOCS), abs=1e-12)
    [call] = server.calls
    assert call.path == "/v1/rerank"
    assert call.body == {
        "model": "rerank-v3.5",
        "query": QUERY,
        "documents": DOCS,
        "top_n": len(DOCS),
        "return_documents": False,
    }
    assert call.headers["Authorization"] == f"Bearer {KEY}"
    assert call.headers["Content-Type"] == "application/json"
    assert call.headers["User-Agent"].startswith("rerank-proxy/")


async def test_tei_shape_applies_the_sigmoid_to_raw_scores(
    servers: Servers, make: Make, tmp_path: Path
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    server = await servers("a", "tei")
    executor = make(server, api_key_file=str(key_file))
    scores = await executor.run([(QUERY, d) for d in DOCS], 512)

    # The server sent logits; the executor returns probabilities.
    assert scores == pytest.approx(expected(QUERY, DOCS), abs=1e-12)
    assert all(0 < s < 1 for s in scores)
    [call] = server.calls
    assert call.path == "/rerank"
    assert call.body == {"query": QUERY, "texts": DOCS, "raw_scores": True, "truncate": True}
    assert call.headers["Authorization"] == f"Bearer {KEY}"


async def test_path_and_a_base_url_with_a_prefix(servers: Servers, make: Make) -> None:
    server = await servers()
    executor = load_remote(
        model_config([server.url + "/infinity/"], path="rerank"), clock=FakeClock()
    )
    try:
        await executor.run([(QUERY, "apple")], 512)
    finally:
        await executor.close()
    [call] = server.calls
    assert call.path == "/infinity/rerank"
    assert "Authorization" not in call.headers
    assert "model" not in call.body  # no model configured: the server's only one


async def test_results_out_of_order_are_mapped_by_index(servers: Servers, make: Make) -> None:
    server = await servers()
    server.doc(lambda doc: {"results": doc["results"][::-1]})  # worst first this time
    executor = make(server)
    assert await executor.run([(QUERY, d) for d in DOCS], 512) == pytest.approx(
        expected(QUERY, DOCS)
    )


async def test_groups_are_split_at_max_documents(servers: Servers, make: Make) -> None:
    server = await servers()
    executor = make(server, max_documents=2)
    scores = await executor.run([(QUERY, d) for d in DOCS], 512)

    assert scores == pytest.approx(expected(QUERY, DOCS))
    assert sorted(c.docs for c in server.calls) == sorted([DOCS[0:2], DOCS[2:4], DOCS[4:]])
    assert executor.batch_size == 2  # the front's default group is two calls' worth


async def test_a_group_mixing_queries_makes_one_call_per_query(
    servers: Servers, make: Make
) -> None:
    server = await servers()
    executor = make(server)
    other = "green fig"
    pairs = [(QUERY if i % 2 else other, d) for i, d in enumerate(DOCS)]
    scores = await executor.run(pairs, 512)

    assert scores == pytest.approx([overlap(q, d) for q, d in pairs])
    by_query = {c.query: c.docs for c in server.calls}
    assert by_query == {other: DOCS[0::2], QUERY: DOCS[1::2]}


# -- failures: each is a RerankError (the search fails open) -------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [(500, RerankError), (503, RerankError), (429, RerankOverloaded), (400, RemoteRefused)],
)
async def test_error_statuses(
    servers: Servers, make: Make, status: int, error: type[RerankError]
) -> None:
    server = await servers()
    server.status(status, '{"error": "model says no"}')
    executor = make(server)
    with pytest.raises(error) as info:
        await executor.run([(QUERY, "apple")], 512)
    assert type(info.value) is error
    assert f"HTTP {status}" in str(info.value)
    assert server.url.split("//")[1] in str(info.value)  # names the server


async def test_a_slow_answer_past_the_timeout(servers: Servers, make: Make) -> None:
    server = await servers()
    server.stall()  # answers only at teardown, long after the timeout
    executor = make(server, timeout=0.2)
    with pytest.raises(RerankTimeout, match=re.escape("no answer within 0.2s")):
        await executor.run([(QUERY, "apple")], 512)


def _drop_last(doc: Any) -> Any:
    return {"results": doc["results"][:-1]}


def _duplicate(doc: Any) -> Any:
    first = doc["results"][0]
    return {"results": [first, first, *doc["results"][2:]]}


def _out_of_range(doc: Any) -> Any:
    return {"results": [{**doc["results"][0], "index": 7}, *doc["results"][1:]]}


def _score(value: Any) -> Callable[[Any], Any]:
    return lambda doc: {
        "results": [{**doc["results"][0], "relevance_score": value}, *doc["results"][1:]]
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_drop_last, "returned 2 scores for 3 documents"),
        (lambda doc: {"results": [*doc["results"], doc["results"][0]]}, "4 scores for 3"),
        (_duplicate, "twice"),
        (_out_of_range, "index out of range: 7"),
        (lambda doc: {"results": [{"index": "0", "relevance_score": 0.5}] * 3}, "out of range"),
        (_score(None), "non-finite"),
        (_score("0.9"), "non-finite"),
        (_score(4.2), "outside [0, 1]"),
        (lambda doc: doc["results"], 'is not {"results"'),
    ],
    ids=[
        "missing",
        "extra",
        "duplicate",
        "out_of_range",
        "string_index",
        "null",
        "string_score",
        "logit",
        "bare_list",
    ],
)
async def test_unusable_scores_are_invalid(
    servers: Servers, make: Make, change: Callable[[Any], Any], message: str
) -> None:
    server = await servers()
    server.doc(change)
    executor = make(server)
    with pytest.raises(InvalidScores, match=re.escape(message)):
        await executor.run([(QUERY, d) for d in DOCS[:3]], 512)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
async def test_non_finite_scores_are_invalid(servers: Servers, make: Make, literal: str) -> None:
    server = await servers("a", "tei")
    server.raw(f'[{{"index": 0, "score": {literal}}}, {{"index": 1, "score": 0.1}}]')
    executor = make(server)
    with pytest.raises(InvalidScores, match="non-finite score for index 0"):
        await executor.run([(QUERY, "apple"), (QUERY, "pear")], 512)


async def test_a_body_that_is_not_json(servers: Servers, make: Make) -> None:
    server = await servers()
    server.raw("<html>gateway</html>")
    executor = make(server)
    with pytest.raises(RerankError, match="not JSON"):
        await executor.run([(QUERY, "apple")], 512)


async def test_an_answer_too_large(
    servers: Servers, make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(remote, "BODY_BASE", 10)
    monkeypatch.setattr(remote, "BODY_PER_DOC", 10)
    server = await servers()
    executor = make(server)
    with pytest.raises(RerankError, match="answer larger than 20 bytes"):
        await executor.run([(QUERY, "apple")], 512)


async def test_a_connection_reset(servers: Servers, make: Make) -> None:
    server = await servers()
    server.reset()
    executor = make(server)
    with pytest.raises(RerankError) as info:
        await executor.run([(QUERY, "apple")], 512)
    assert isinstance(info.value.__cause__, aiohttp.ClientError)


async def test_a_dead_server(make: Make, closed_port: int, clock: FakeClock) -> None:
    executor = load_remote(model_config([f"http://127.0.0.1:{closed_port}"]), clock=clock)
    try:
        with pytest.raises(RerankError, match="ClientConnectorError") as info:
            await executor.run([(QUERY, "apple")], 512)
    finally:
        await executor.close()
    assert isinstance(info.value.__cause__, aiohttp.ClientConnectorError)


# -- several servers: round robin and circuit breakers -----------------------------------


async def test_round_robin_across_two_servers(servers: Servers, make: Make) -> None:
    a, b = await servers("a"), await servers("b")
    executor = make(a, b)
    for i in range(4):
        await executor.run([(QUERY, f"doc {i}")], 512)
    order = sorted((c for c in a.calls + b.calls), key=lambda c: c.docs[0])
    assert [c.server for c in order] == ["a", "b", "a", "b"]


async def fail(executor: RemoteExecutor, error: type[Exception] = RerankError) -> Exception:
    with pytest.raises(error) as info:
        await executor.run([(QUERY, "apple")], 512)
    return info.value


async def test_the_breaker_opens_after_n_failures_and_then_fails_fast(
    servers: Servers, make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    server = await servers()
    server.status(500)
    executor = make(server, breaker_failures=3, breaker_reset=30)
    for _ in range(3):
        await fail(executor)
    assert executor.describe()["open_circuits"] == 1
    assert [r.getMessage() for r in caplog.records] == [
        f"rerank server {server.url} failed 3 times in a row: circuit open for 30s"
    ]

    # Open: the call fails at once, and the server sees nothing.
    error = await fail(executor, RemoteUnavailable)
    assert "every rerank server's circuit is open (1 server)" in str(error)
    assert len(server.calls) == 3
    assert executor.describe()["circuits"] == {server.url: "open"}


async def test_a_success_resets_the_count_of_consecutive_failures(
    servers: Servers, make: Make
) -> None:
    server = await servers()
    executor = make(server, breaker_failures=2)
    for _ in range(3):
        server.status(500)
        await fail(executor)
        server.ok()
        await executor.run([(QUERY, "apple")], 512)
    assert executor.describe()["open_circuits"] == 0


async def test_refusals_do_not_open_the_circuit(servers: Servers, make: Make) -> None:
    server = await servers()
    server.status(400)
    executor = make(server, breaker_failures=2)
    for _ in range(4):
        await fail(executor, RemoteRefused)
    assert executor.describe()["open_circuits"] == 0
    assert len(server.calls) == 4


@pytest.mark.parametrize("how", ["status_503", "status_429", "timeout", "reset", "invalid"])
async def test_each_kind_of_failure_counts(servers: Servers, make: Make, how: str) -> None:
    server = await servers()
    if how.startswith("status"):
        server.status(int(how.split("_")[1]))
    elif how == "timeout":
        server.stall()
    elif how == "reset":
        server.reset()
    else:
        server.doc(_drop_last)
    executor = make(server, breaker_failures=1, timeout=0.2)
    await fail(executor)
    assert executor.describe()["open_circuits"] == 1


async def test_an_open_server_is_skipped_while_others_serve(servers: Servers, make: Make) -> None:
    a, b = await servers("a"), await servers("b")
    a.status(500)
    executor = make(a, b, breaker_failures=1)
    await fail(executor)  # round robin starts at a: it fails once, its circuit opens
    for i in range(4):
        await executor.run([(QUERY, f"doc {i}")], 512)
    assert (len(a.calls), len(b.calls)) == (1, 4)
    assert executor.describe()["circuits"] == {a.url: "open", b.url: "closed"}
    assert executor.health() == {"servers": 2, "open_circuits": 1}


async def test_half_open_trial_then_closed_again(
    servers: Servers, make: Make, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="proxy.rerank.remote")
    server = await servers()
    server.status(500)
    executor = make(server, breaker_failures=2, breaker_reset=10)
    await fail(executor)
    await fail(executor)
    clock.now += 9.9
    await fail(executor, RemoteUnavailable)
    assert len(server.calls) == 2

    # After breaker_reset seconds exactly one trial goes through; it fails: open again.
    clock.now += 0.1
    assert executor.describe()["circuits"] == {server.url: "half_open"}
    await fail(executor, RerankError)
    assert len(server.calls) == 3
    await fail(executor, RemoteUnavailable)
    assert "failed its trial call: circuit open" in caplog.records[-1].getMessage()

    # The next trial succeeds: closed, every call goes through again.
    clock.now += 10
    server.ok()
    assert await executor.run([(QUERY, "apple")], 512) == pytest.approx([overlap(QUERY, "apple")])
    assert executor.describe()["open_circuits"] == 0
    assert caplog.records[-1].getMessage() == (
        f"rerank server {server.url} answered again: circuit closed"
    )
    for _ in range(3):
        await executor.run([(QUERY, "apple")], 512)
    assert len(server.calls) == 7


async def test_a_trial_in_a_group_of_several_queries_closes_the_circuit(
    servers: Servers, make: Make, clock: FakeClock
) -> None:
    """A group mixing two queries makes two calls; while half-open one is the trial and the
    other finds no circuit to go through. The trial must still finish and close the circuit:
    cancelled with its sibling, it never would, for every group after it too (found in the
    fault matrix: a model server back after an outage was never used again)."""
    server = await servers()
    server.status(500)
    executor = make(server, breaker_failures=1, breaker_reset=5)
    await fail(executor)
    clock.now += 5
    server.ok()
    pairs = [(QUERY, "apple"), ("another query", "apple")]
    with pytest.raises(RemoteUnavailable):
        await executor.run(pairs, 512)
    assert executor.describe()["open_circuits"] == 0  # the trial answered: closed
    assert len(await executor.run(pairs, 512)) == 2


async def test_only_one_trial_call_while_half_open(
    servers: Servers, make: Make, clock: FakeClock
) -> None:
    server = await servers()
    server.status(500)
    executor = make(server, breaker_failures=1, breaker_reset=5)
    await fail(executor)
    clock.now += 5
    server.stall()
    trial = asyncio.ensure_future(executor.run([(QUERY, "apple")], 512))
    await server.wait_for_calls(2)  # the trial has reached the server
    await fail(executor, RemoteUnavailable)  # no second trial while the first is out
    server.release.set()
    assert await trial == pytest.approx([overlap(QUERY, "apple")])
    assert executor.describe()["open_circuits"] == 0


async def test_a_cancelled_trial_lets_the_next_call_try(
    servers: Servers, make: Make, clock: FakeClock
) -> None:
    server = await servers()
    server.status(500)
    executor = make(server, breaker_failures=1, breaker_reset=5)
    await fail(executor)
    clock.now += 5
    server.stall()
    trial = asyncio.ensure_future(executor.run([(QUERY, "apple")], 512))
    await server.wait_for_calls(2)
    trial.cancel()
    with pytest.raises(asyncio.CancelledError):
        await trial
    server.ok()
    assert await executor.run([(QUERY, "apple")], 512) == pytest.approx([overlap(QUERY, "apple")])


async def test_one_failed_chunk_fails_the_group(servers: Servers, make: Make) -> None:
    server = await servers()

    async def answer(call: Call, request: web.Request) -> web.StreamResponse:
        if "fig rolls" in call.docs:
            return web.Response(status=500)
        return web.json_response(results(call, "cohere"))

    server.answer = answer
    executor = make(server, max_documents=1)
    with pytest.raises(RerankError, match="HTTP 500"):
        await executor.run([(QUERY, d) for d in DOCS], 512)


# -- the key, credentials, loading -------------------------------------------------------


async def test_the_key_is_never_logged_described_or_in_an_error(
    servers: Servers, make: Make, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("RERANK_TEST_KEY", KEY)
    server = await servers()
    executor = make(server, api_key_env="RERANK_TEST_KEY", breaker_failures=3, timeout=0.2)
    errors: list[Exception] = []
    for setup in (lambda: server.status(500, KEY), server.stall, server.reset):
        setup()  # a 500 whose body echoes the key: the message quoting it redacts it
        errors.append(await fail(executor))
    errors.append(await fail(executor, RemoteUnavailable))

    seen = [repr(executor), json.dumps(executor.describe()), json.dumps(executor.health())]
    seen += [str(e) for e in errors] + [repr(e) for e in errors]
    seen += [str(e.__cause__) for e in errors if e.__cause__ is not None]
    seen += [r.getMessage() for r in caplog.records] + [caplog.text]
    assert all(KEY not in text for text in seen)
    assert KEY[-8:] not in caplog.text
    assert [c.headers["Authorization"] for c in server.calls] == [f"Bearer {KEY}"] * 3


async def test_credentials_in_a_url_are_sent_as_basic_and_never_shown(
    servers: Servers, make: Make
) -> None:
    server = await servers()
    url = server.url.replace("http://", "http://reranker:s3cret-pw@")
    executor = load_remote(model_config([url]), clock=FakeClock())
    try:
        await executor.run([(QUERY, "apple")], 512)
        described = json.dumps(executor.describe())
    finally:
        await executor.close()
    assert server.calls[0].headers["Authorization"] == "Basic cmVyYW5rZXI6czNjcmV0LXB3"
    assert "s3cret" not in described + repr(executor) + executor.model_id
    assert executor.describe()["urls"] == [server.url]


def test_describe_and_identity() -> None:
    cfg = model_config(["http://tei:8080", "http://tei-2:8080"], api="tei", connections=4)
    executor = load_remote(cfg)
    assert executor.model_id == "remote|tei|http://tei:8080"
    assert (executor.device, executor.concurrency, executor.batch_size) == ("remote", 4, 32)
    described = executor.describe()
    assert described["urls"] == ["http://tei:8080", "http://tei-2:8080"]
    assert described["api"] == "tei" and described["path"] == "/rerank"
    assert described["open_circuits"] == 0
    named = load_remote(model_config(["http://x:1"], model="jina-reranker-v2"))
    assert named.model_id == "remote|cohere|jina-reranker-v2"
    # The registry's loader is this one.
    assert type(load_executor(cfg)) is RemoteExecutor


@pytest.mark.parametrize(
    ("remote", "message"),
    [
        ({"urls": []}, "model.remote.urls: backend remote needs at least one server URL"),
        ({"urls": ["tei:8080"]}, "model.remote.urls[0]: not an http:// or https:// URL"),
        ({"urls": ["http://a:1", "ftp://b"]}, "model.remote.urls[1]: not an http://"),
        ({"urls": ["http://[::1"]}, "model.remote.urls[0]: not an http://"),
        (
            {"urls": ["http://u:p@tei:8080"], "api_key_env": "RERANK_TEST_KEY"},
            "credentials in a URL and an API key; pick one",
        ),
        (
            {"api_key_env": "RERANK_TEST_UNSET_KEY"},
            "model.remote.api_key_env: environment variable RERANK_TEST_UNSET_KEY is not set",
        ),
        ({"api_key_file": "/nonexistent/key"}, "model.remote.api_key_file: cannot read"),
        ({"api_key_env": "X", "api_key_file": "/k"}, "api_key_env or api_key_file, not both"),
        ({"ca_file": "/nonexistent/ca.pem"}, "model.remote.ca_file: /nonexistent/ca.pem"),
    ],
)
def test_load_errors_name_the_key(
    remote: dict[str, Any], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RERANK_TEST_UNSET_KEY", raising=False)
    monkeypatch.setenv("RERANK_TEST_KEY", KEY)
    urls = remote.pop("urls", ["http://tei:8080"])
    with pytest.raises(ModelLoadError) as info:
        load_remote(model_config(urls, **remote))
    assert message in str(info.value)


def test_an_empty_key_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("\n")
    with pytest.raises(ModelLoadError, match="is empty"):
        load_remote(model_config(["http://x:1"], api_key_file=str(tmp_path / "key")))


async def test_nothing_connects_before_the_first_call_and_close_is_idempotent(
    servers: Servers,
) -> None:
    server = await servers()
    executor = load_remote(model_config([server.url]))
    await executor.close()  # never opened
    assert server.calls == []
    await executor.run([(QUERY, "apple")], 512)
    await executor.close()
    await executor.close()


# -- through the proxy -------------------------------------------------------------------


@pytest.fixture
async def proxy_over(
    upstream: FakeUpstream,
) -> AsyncIterator[Callable[[list[str]], Awaitable[RunningProxy]]]:
    running: list[RunningProxy] = []

    async def start(urls: list[str]) -> RunningProxy:
        raw = {
            **proxy_config(upstream.url),
            "model": {"backend": "remote", "remote": {"urls": urls, "timeout": 2}},
            "indices": rules(),
        }
        cfg = parse_config(raw)
        front = RerankFront(load_remote(cfg.model), BatchPolicy(), cache_size=0)
        app = create_app(cfg, reranker=front)
        proxy = await start_app(app)
        running.append(proxy)
        return proxy

    yield start
    for proxy in running:
        await proxy.close_clients()
        await proxy.stop()


SEARCH = {"size": 10, "query": {"match": {"title": QUERY}}}


async def test_a_search_reranked_by_the_remote_server(
    proxy_over: Callable[[list[str]], Awaitable[RunningProxy]],
    engine: Engine,
    servers: Servers,
) -> None:
    server = await servers()
    proxy = await proxy_over([server.url])
    resp = await send(proxy, "/books/_search", SEARCH)

    assert (resp.status, rerank_headers(resp)) == (200, ("applied", None))
    # The fake server scores as the FakeBackend does, so the order is the one it gives.
    assert ids(json.loads(resp.body)) == RERANKED[:10]
    [call] = server.calls
    assert call.query == QUERY and len(call.docs) == 9  # d9 has no title: not scored
    assert [kind_of(r) for r in engine.requests] == ["search"]


async def test_a_dead_server_fails_open_with_one_upstream_search(
    proxy_over: Callable[[list[str]], Awaitable[RunningProxy]],
    engine: Engine,
    closed_port: int,
) -> None:
    proxy = await proxy_over([f"http://127.0.0.1:{closed_port}"])
    resp = await send(proxy, "/books/_search", SEARCH)

    assert (resp.status, rerank_headers(resp)) == (200, ("failed", "error"))
    assert ids(json.loads(resp.body)) == ENGINE_ORDER[:10]
    assert [kind_of(r) for r in engine.requests] == ["search"]
