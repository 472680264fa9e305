"""Fault matrix: every upstream fault crossed with every flow, then the model side's faults.

`FAULTS` (what the cluster does wrong) x `FLOWS` (what the client asked) is one parametrised
cross product; `expected(fault, flow)` is the whole rule in one place:

- The proxy's own error in Elasticsearch's shape when nothing usable came back before the
  client saw a byte: 502 (`proxy_upstream_unavailable`) for a refused connection, a reset, a
  body that breaks off while the proxy buffers it, or a pooled connection the cluster closed
  under a request; 504 (`proxy_upstream_timeout`) for a stall past `upstream.read_timeout`.
  Counted in `upstream_errors_total{status}`.
- A streamed response that breaks off after its headers went out is cut: the client sees the
  connection closed with the body short of its framing (`complete=False`), never a short body
  presented as whole. Counted in `upstream_broken_bodies_total`.
- A search the proxy cannot rerank from what came back fails open with the engine's own
  bytes (`X-Rerank: skipped`, `X-Rerank-Reason`), counted in `searches_total`.

After every cell `/_rerank_proxy/health` answers. Cells already covered elsewhere (502/504 on
`GET`, bodies breaking off on `GET`, no retry of delivered writes) are in `test_errors.py`; the
matrix repeats them only as part of the cross product.

The model side: a remote rerank server (`model.backend: remote`) that fails in each way makes
the search fail open; a Redis shared cache killed and restarted mid-traffic is bypassed and
then used again; a model server process killed and restarted mid-traffic makes searches fail
open and then rerank again, all without restarting the proxy. Events and polling only.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import signal
import struct
import sys
import termios
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.app import create_app
from proxy.config import parse_config
from proxy.keys import METRICS, UPSTREAM
from proxy.rerank.base import BatchPolicy
from proxy.rerank.front import RerankFront
from proxy.rerank.remote import load_remote

from .fakes import (
    FakeUpstream,
    RawResponse,
    Received,
    RunningProxy,
    chunk,
    drop_connections,
    eventually,
    http_response,
    proxy_config,
    reset,
    start_app,
)
from .redis_support import RedisServer, free_port, require_redis
from .rerank_support import (
    ENGINE_ORDER,
    ES_HEADERS,
    QUERY,
    RERANKED,
    Engine,
    Proxies,
    counted,
    ids,
    kind_of,
    ndjson,
    rules,
)
from .test_remote_backend import FakeRerankServer

REPO_ROOT = Path(__file__).resolve().parents[2]
READ_TIMEOUT = 0.3  # upstream.read_timeout in every cell: the stalls end on it
BUFFER_CAP = 4096  # upstream.max_buffer_bytes in the huge-body cells
HUGE = 256 * 1024  # bytes of padding: far past BUFFER_CAP and past SMALL_BODY (64 KiB)

# -- flows ---------------------------------------------------------------------------------

SEARCH = {"size": 3, "query": {"match": {"title": QUERY}}}
TEMPLATE = {
    "source": {"size": 3, "query": {"match": {"title": "{{text}}"}}},
    "params": {"text": QUERY},
}


def _post(target: str, body: bytes, content_type: str = "application/json") -> bytes:
    return (
        f"POST {target} HTTP/1.1\r\nHost: p\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


@dataclass(frozen=True, slots=True)
class Flow:
    raw: bytes
    streamed: bool  # the answer streams back (pass-through, or a search sent on as it came)
    ok: tuple[str | None, str | None]  # (X-Rerank, X-Rerank-Reason) on a normal answer
    multi: bool = False  # an `_msearch`: per-item outcomes
    # X-Rerank-Reason when the engine's answer is unusable: (invalid JSON, too large)
    unusable: tuple[str, str] = ("unparsable_response", "response_too_large")
    searches: int = 1  # searches it carries (each `_msearch` item counts)


FLOWS: dict[str, Flow] = {
    "get": Flow(b"GET /idx/_doc/1 HTTP/1.1\r\nHost: p\r\n\r\n", True, (None, None)),
    "bulk": Flow(
        _post("/_bulk", ndjson({"index": {"_index": "idx"}}, {"a": 1}), "application/x-ndjson"),
        True,
        (None, None),
    ),
    "search": Flow(_post("/books/_search", json.dumps(SEARCH).encode()), False, ("applied", None)),
    "msearch": Flow(
        _post(
            "/_msearch",
            ndjson({"index": "books"}, SEARCH, {"index": "books"}, SEARCH),
            "application/x-ndjson",
        ),
        False,
        ("applied", None),
        multi=True,
        searches=2,
    ),
    "search_template": Flow(
        _post("/tpl/_search/template", json.dumps(TEMPLATE).encode()),
        False,
        ("applied", None),
        unusable=("template_not_rendered", "template_not_rendered"),
    ),
    "msearch_template": Flow(
        _post(
            "/_msearch/template",
            ndjson({"index": "tpl"}, TEMPLATE, {"index": "tpl"}, TEMPLATE),
            "application/x-ndjson",
        ),
        False,
        ("applied", None),
        multi=True,
        unusable=("template_not_rendered", "template_not_rendered"),
        searches=2,
    ),
    # A scroll search is buffered, planned, then sent on as it came (skipped: scroll) and
    # its answer streamed; the scroll continuation is plain pass-through.
    "scroll_search": Flow(
        _post("/books/_search?scroll=1m", json.dumps(SEARCH).encode()),
        True,
        ("skipped", "scroll"),
        unusable=("scroll", "scroll"),
    ),
    "scroll_next": Flow(
        _post("/_search/scroll", b'{"scroll":"1m","scroll_id":"c2Nyb2xs"}'), True, (None, None)
    ),
}

# -- faults --------------------------------------------------------------------------------

PARTIAL = b'{"took":1,"hits":{"hits":[' + b'{"_id":"x"},' * 4000  # ~48 KiB, then it breaks off
INVALID = b'{"took": 3, "timed_out": false, "hits": {"hits": ['  # a 200 that is not JSON
SHORT = b'{"took":1,"hits":{"total":{"value":1},"hits":[{"_id":"d0"'  # a truncated small 200


async def delivered(writer: asyncio.StreamWriter) -> None:
    """Until every byte written has been acknowledged by the peer's kernel (TIOCOUTQ == 0):
    a reset after that cannot overtake them, so the proxy reads them before the error."""
    await writer.drain()
    sock = writer.get_extra_info("socket")

    def unsent() -> int:
        out = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
        return int(struct.unpack("i", out)[0])

    await eventually(lambda: unsent() == 0)


def normal_handler(engine: Engine) -> Callable[[Received, asyncio.StreamWriter], Awaitable[bool]]:
    """The stand-in engine, with a plain acknowledgement for what it does not play (`_bulk`,
    scroll continuations)."""

    async def handle(req: Received, writer: asyncio.StreamWriter) -> bool:
        if kind_of(req) == "other":
            writer.write(http_response(200, ES_HEADERS, b'{"acknowledged":true}'))
            return True
        return await engine.handle(req, writer)

    return handle


FaultHandler = Callable[[Engine, Received, asyncio.StreamWriter], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class Fault:
    handler: FaultHandler | None  # None: the engine answers normally (see `sequence`)
    result: str  # "502", "504", "cut" (502 when buffered), "cut504", "bytes", "keepalive"
    upstream: dict[str, Any] = field(default_factory=dict)  # upstream.* config overrides
    refused: bool = False
    sequence: str = ""  # "idle-close" / "race": a keep-alive connection closed by the engine


async def _reset_now(engine: Engine, req: Received, writer: asyncio.StreamWriter) -> bool:
    reset(writer)
    return False


async def _reset_mid_cl(engine: Engine, req: Received, writer: asyncio.StreamWriter) -> bool:
    head = http_response(200, [*ES_HEADERS[:1], ("Content-Length", str(len(PARTIAL) * 4))])
    writer.write(head + PARTIAL)
    await delivered(writer)
    reset(writer)
    return False


async def _reset_mid_chunked(engine: Engine, req: Received, writer: asyncio.StreamWriter) -> bool:
    head = http_response(
        200, [*ES_HEADERS[:1], ("Transfer-Encoding", "chunked")], content_length=False
    )
    writer.write(head + chunk(PARTIAL))
    await delivered(writer)
    reset(writer)
    return False


async def _stall_head(engine: Engine, req: Received, writer: asyncio.StreamWriter) -> bool:
    await asyncio.Event().wait()  # cancelled when the fake upstream closes
    return False


async def _stall_mid(engine: Engine, req: Received, writer: asyncio.StreamWriter) -> bool:
    head = http_response(200, [*ES_HEADERS[:1], ("Content-Length", str(len(PARTIAL) * 4))])
    writer.write(head + PARTIAL)
    await writer.drain()
    await asyncio.Event().wait()
    return False


async def _invalid_json(engine: Engine, req: Received, writer: asyncio.StreamWriter) -> bool:
    writer.write(http_response(200, ES_HEADERS, INVALID))
    return True


def huge_body(engine: Engine, req: Received) -> bytes:
    """The engine's normal answer padded far past the buffering cap (valid JSON)."""
    try:
        doc = json.loads(engine.answer_doc(req))
    except ValueError:  # an NDJSON body the stand-in engine does not read (`_bulk`)
        doc = {"acknowledged": True}
    return json.dumps({**doc, "pad": "x" * HUGE}).encode()


async def _huge(engine: Engine, req: Received, writer: asyncio.StreamWriter) -> bool:
    writer.write(http_response(200, ES_HEADERS, huge_body(engine, req)))
    return True


async def _truncated(engine: Engine, req: Received, writer: asyncio.StreamWriter) -> bool:
    writer.write(http_response(200, [*ES_HEADERS, ("Content-Length", str(len(SHORT) * 2))], SHORT))
    return False  # then a FIN: the body ends short of its Content-Length


FAULTS: dict[str, Fault] = {
    "refused": Fault(None, "502", refused=True),
    "reset_before_headers": Fault(_reset_now, "502"),
    "reset_mid_body_cl": Fault(_reset_mid_cl, "cut"),
    "reset_mid_body_chunked": Fault(_reset_mid_chunked, "cut"),
    "stall_before_headers": Fault(_stall_head, "504"),
    "stall_mid_body": Fault(_stall_mid, "cut504"),
    "keepalive_idle_close": Fault(None, "keepalive", sequence="idle-close"),
    "keepalive_race": Fault(None, "502", sequence="race"),
    "invalid_json_200": Fault(_invalid_json, "bytes"),
    "huge_body": Fault(_huge, "bytes", upstream={"max_buffer_bytes": BUFFER_CAP}),
    "truncated_200": Fault(_truncated, "cut"),
}


def expected(fault: Fault, flow: Flow) -> str:
    """What the client must see: `502`, `504`, `cut` (streamed, cut), `fail_open`, `normal`."""
    if fault.result in ("502", "504", "keepalive"):
        return "normal" if fault.result == "keepalive" else fault.result
    if fault.result in ("cut", "cut504"):
        if flow.streamed:
            return "cut"
        return "504" if fault.result == "cut504" else "502"
    assert fault.result == "bytes"
    return "bytes"


CELLS = [(f, fl) for f in FAULTS for fl in FLOWS]


def test_matrix_size() -> None:
    """The documented cell counts (docs quote them; a new row or column updates both)."""
    assert (len(FAULTS), len(FLOWS), len(CELLS)) == (11, 8, 88)
    assert len(MODEL_FAULTS) * len(MODEL_FLOWS) == 15


# -- checks --------------------------------------------------------------------------------


def assert_es_error(resp: RawResponse, status: int) -> None:
    error_type = {502: "proxy_upstream_unavailable", 504: "proxy_upstream_timeout"}[status]
    assert resp.status == status, (resp.status, resp.body[:300])
    assert resp.complete
    assert (resp.header("Content-Type") or "").startswith("application/json")
    doc = json.loads(resp.body)
    assert doc["status"] == status
    assert doc["error"]["type"] == doc["error"]["root_cause"][0]["type"] == error_type
    assert doc["error"]["reason"]


def rerank_state(resp: RawResponse) -> tuple[str | None, str | None]:
    return resp.header("X-Rerank"), resp.header("X-Rerank-Reason")


def live_upstream_connections(proxy: RunningProxy) -> int:
    """Pooled upstream connections the proxy still believes open (aiohttp's pool)."""
    session = proxy.app[UPSTREAM]._session
    assert session is not None
    conns = session.connector._conns  # type: ignore[union-attr]
    return sum(proto.is_connected() for pool in conns.values() for proto, _ in pool)


async def healthy(proxy: RunningProxy) -> None:
    resp = await proxy.get("/_rerank_proxy/health")
    assert (resp.status, json.loads(resp.body)["status"]) == (200, "ok")


def assert_normal(resp: RawResponse, flow: Flow) -> None:
    assert (resp.status, resp.complete) == (200, True), (resp.status, resp.body[:300])
    assert rerank_state(resp) == flow.ok
    if flow.ok[0] == "applied":
        doc = json.loads(resp.body)
        docs = doc["responses"] if flow.multi else [doc]
        assert [ids(d) for d in docs] == [RERANKED[:3]] * len(docs)


# -- the cross product --------------------------------------------------------------------


@pytest.mark.parametrize(("fault_name", "flow_name"), CELLS)
async def test_upstream_fault(
    proxies: Proxies,
    engine: Engine,
    upstream: FakeUpstream,
    closed_port: int,
    fault_name: str,
    flow_name: str,
) -> None:
    fault, flow = FAULTS[fault_name], FLOWS[flow_name]
    upstream.handler = normal_handler(engine)
    cfg: dict[str, Any] = {"read_timeout": READ_TIMEOUT, **fault.upstream}
    if fault.refused:
        cfg["url"] = f"http://127.0.0.1:{closed_port}"
    proxy = await proxies.start(**cfg)
    metrics = proxy.app[METRICS]
    want = expected(fault, flow)

    if fault.sequence:
        client = await proxy.connect()
        assert_normal(await client.request(flow.raw), flow)  # leaves a pooled connection
        await client.close()
        before = len(upstream.requests)
        if fault.sequence == "idle-close":
            drop_connections(upstream)
            # The engine closed its idle keep-alive connection; the proxy has seen the FIN.
            await eventually(lambda: live_upstream_connections(proxy) == 0)
        else:
            # The next request lands on the pooled connection; the engine closes it unanswered.
            async def close_unanswered(req: Received, writer: asyncio.StreamWriter) -> bool:
                upstream.handler = normal_handler(engine)
                return False

            upstream.handler = close_unanswered

    elif fault.handler is not None:
        handler = fault.handler

        async def faulty(req: Received, writer: asyncio.StreamWriter) -> bool:
            return await handler(engine, req, writer)

        upstream.handler = faulty

    client = await proxy.connect()
    resp = await client.request(flow.raw, timeout=15)

    if want in ("502", "504"):
        assert_es_error(resp, int(want))
        assert metrics.value("upstream_errors_total", status=want) == 1
        if fault.sequence == "race":
            # Delivered once on the pooled connection, never re-sent by the proxy.
            assert len(upstream.requests) == before + 1
    elif want == "cut":
        assert resp.status == 200
        assert not resp.complete  # never a short body presented as whole
        assert resp.body in (PARTIAL, SHORT)
        assert await client.at_eof()
        assert metrics.value("upstream_broken_bodies_total") == 1
        assert rerank_state(resp) == flow.ok
    elif want == "normal":
        assert_normal(resp, flow)
        assert len(upstream.requests) == 2 * before  # each request delivered once, no retry
        assert upstream.connections == 2  # the second on a fresh connection
    else:
        assert want == "bytes"
        assert (resp.status, resp.complete) == (200, True)
        last = upstream.requests[-1]
        sent = INVALID if fault_name == "invalid_json_200" else huge_body(engine, last)
        assert resp.body == sent  # the engine's own bytes, unchanged
        reason = flow.unusable[0 if fault_name == "invalid_json_200" else 1]
        if flow.ok[0] is None:
            assert rerank_state(resp) == (None, None)
        else:
            assert rerank_state(resp) == ("skipped", reason)
            per_item = flow.multi and reason != "template_not_rendered"
            assert counted(proxy) == {("skipped", reason): flow.searches if per_item else 1}
            if per_item:
                assert resp.header("X-Rerank-Items") == ",".join([f"skipped:{reason}"] * 2)
    await client.close()
    await healthy(proxy)


# -- the model side: a remote rerank server failing ----------------------------------------


def _drop_last(doc: Any) -> Any:
    return {**doc, "results": doc["results"][:-1]}


ModelFault = Callable[[FakeRerankServer], None]
MODEL_FAULTS: dict[str, tuple[ModelFault, str]] = {
    "status_500": (lambda s: s.status(500), "error"),
    "reset": (lambda s: s.reset(), "error"),
    "stall": (lambda s: s.stall(), "timeout"),
    "invalid_json": (lambda s: s.raw("{not json"), "error"),
    "wrong_count": (lambda s: s.doc(_drop_last), "invalid_scores"),
}
MODEL_FLOWS = ("search", "msearch", "search_template")


@pytest.fixture
async def remote_proxy(
    upstream: FakeUpstream,
) -> AsyncIterator[Callable[..., Awaitable[RunningProxy]]]:
    running: list[RunningProxy] = []

    async def start(urls: list[str], timeout_ms: int = 300, **remote: Any) -> RunningProxy:
        raw = {
            **proxy_config(upstream.url),
            "model": {"backend": "remote", "remote": {"urls": urls, "timeout": 5, **remote}},
            "indices": [{**r, "timeout_ms": timeout_ms} for r in rules()],
        }
        cfg = parse_config(raw)
        front = RerankFront(load_remote(cfg.model), BatchPolicy(), cache_size=0)
        proxy = await start_app(create_app(cfg, reranker=front))
        running.append(proxy)
        return proxy

    yield start
    for proxy in running:
        await proxy.close_clients()
        await proxy.stop()


@pytest.fixture
async def rerank_server() -> AsyncIterator[FakeRerankServer]:
    server = FakeRerankServer("a")
    await server.start()
    yield server
    await server.close()


@pytest.mark.parametrize("flow_name", MODEL_FLOWS)
@pytest.mark.parametrize("fault_name", MODEL_FAULTS)
async def test_remote_model_fault_fails_open(
    remote_proxy: Callable[..., Awaitable[RunningProxy]],
    rerank_server: FakeRerankServer,
    engine: Engine,
    fault_name: str,
    flow_name: str,
) -> None:
    make_fault, reason = MODEL_FAULTS[fault_name]
    make_fault(rerank_server)
    flow = FLOWS[flow_name]
    proxy = await remote_proxy([rerank_server.url])
    resp = await proxy.request(flow.raw)

    assert (resp.status, resp.complete) == (200, True)
    assert rerank_state(resp)[0] == "failed"
    doc = json.loads(resp.body)
    docs = doc["responses"] if flow.multi else [doc]
    assert [ids(d) for d in docs] == [ENGINE_ORDER[:3]] * len(docs)  # the engine's order
    if flow.multi:
        assert resp.header("X-Rerank-Items") == f"failed:{reason},failed:{reason}"
    else:
        assert rerank_state(resp) == ("failed", reason)
    searches = [k for k in map(kind_of, engine.requests) if k != "render"]
    assert len(searches) == 1  # failing open costs no second search
    assert counted(proxy) == {("failed", reason): len(docs)}
    await healthy(proxy)


# -- Redis killed and restarted mid-traffic -----------------------------------------------


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(require_redis(), tmp_path / "redis")
    server.start()
    yield server
    server.stop()


async def test_redis_killed_mid_traffic_is_bypassed_then_used_again(
    redis_server: RedisServer, engine: Engine, proxies: Proxies
) -> None:
    from proxy.rerank.shared_cache import RedisCache

    cache = RedisCache(redis_server.url, ttl=3600, prefix="fm:", timeout_ms=200, retry_s=0.05)

    class SharingFront(RerankFront):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs, shared=cache)

    proxy = await proxies.start(front=SharingFront)  # cache_size=0: every search asks Redis
    metrics = proxy.app[METRICS]

    def shared(result: str) -> float:
        return metrics.value("shared_cache_lookups_total", result=result)

    served = {"before": 0, "down": 0, "back": 0}
    phase = "before"
    done = asyncio.Event()
    failures: list[Any] = []

    async def traffic(n: int) -> None:
        i = 0
        while not done.is_set():
            body = {"size": 3, "query": {"match": {"title": f"{QUERY} c{n} s{i}"}}}
            resp = await proxy.request(_post("/books/_search", json.dumps(body).encode()))
            if (resp.status, rerank_state(resp)) != (200, ("applied", None)):
                failures.append((phase, resp.status, rerank_state(resp)))
            served[phase] += 1
            i += 1

    clients = [asyncio.create_task(traffic(n)) for n in range(3)]
    try:
        await eventually(lambda: served["before"] >= 10, timeout=30)
        assert shared("miss") > 0 and shared("error") == 0
        await asyncio.to_thread(redis_server.stop)  # SIGTERM: the process is gone
        phase = "down"
        await eventually(lambda: served["down"] >= 20 and shared("error") > 0, timeout=30)
        assert metrics.value("shared_cache_up") == 0
        await asyncio.to_thread(redis_server.start)  # the same port, empty
        answered = shared("hit") + shared("miss")
        phase = "back"
        await eventually(lambda: shared("hit") + shared("miss") > answered, timeout=30)
        await eventually(lambda: served["back"] >= 10, timeout=30)
        assert metrics.value("shared_cache_up") == 1
    finally:
        done.set()
        await asyncio.gather(*clients)
    assert failures == []  # every search was reranked: Redis down only meant local scoring
    await cache.flush()
    await healthy(proxy)


# -- the model server process killed and restarted mid-traffic ----------------------------


class ModelServerProcess:
    """`rerank-proxy model-server` (fake backend) as a child process on a fixed port."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.config = directory / "model-server.yaml"
        self.log = directory / "model-server.log"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "listen": {"host": "127.0.0.1", "port": self.port, "drain_delay": 0},
                    "model": {"backend": "fake", "name": "fake"},
                    "log_level": "WARNING",
                }
            )
        )
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log.open("a") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "proxy",
                "model-server",
                "--config",
                str(self.config),
                cwd=REPO_ROOT,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                env=env,
            )
        assert self.proc.stdout is not None
        async with asyncio.timeout(60):
            line = (await self.proc.stdout.readline()).decode()
        assert line.startswith("rerank-proxy listening on "), self.log.read_text()

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()


async def test_model_server_killed_mid_traffic_fails_open_then_recovers(
    remote_proxy: Callable[..., Awaitable[RunningProxy]], engine: Engine, tmp_path: Path
) -> None:
    server = ModelServerProcess(tmp_path)
    await server.start()
    try:
        proxy = await remote_proxy(
            [server.url],
            api="cohere",
            path="/v1/rerank",
            breaker_reset=0.1,
            timeout=2,
            timeout_ms=20_000,  # a model server starting up on a busy machine is slow at first
        )
        seen: dict[str, int] = {}
        phase = "before"
        done = asyncio.Event()
        bad: list[Any] = []

        async def traffic(n: int) -> None:
            i = 0
            while not done.is_set():
                body = {"size": 3, "query": {"match": {"title": f"{QUERY} c{n} s{i}"}}}
                resp = await proxy.request(_post("/books/_search", json.dumps(body).encode()))
                state = rerank_state(resp)
                key = f"{phase}:{state[0]}"
                seen[key] = seen.get(key, 0) + 1
                doc = json.loads(resp.body)
                if resp.status != 200 or state[0] not in ("applied", "failed"):
                    bad.append((phase, resp.status, state))
                elif state[0] == "failed" and ids(doc) != ENGINE_ORDER[:3]:
                    bad.append((phase, "not engine order", ids(doc)))
                i += 1
                await asyncio.sleep(0.01)  # pace: a circuit-open failure takes no time at all

        clients = [asyncio.create_task(traffic(n)) for n in range(2)]
        try:
            await eventually(lambda: seen.get("before:applied", 0) >= 5, timeout=30)
            await server.kill()
            phase = "down"
            await eventually(lambda: seen.get("down:failed", 0) >= 10, timeout=30)
            await server.start()  # the same port: the proxy is not restarted
            phase = "back"
            try:
                await eventually(lambda: seen.get("back:applied", 0) >= 5, timeout=60)
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {seen}; {server.log.read_text()[-2000:]}") from None
        finally:
            done.set()
            await asyncio.gather(*clients)
        assert bad == []
        await healthy(proxy)
    finally:
        await server.kill()
