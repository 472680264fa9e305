"""The fakes behind the integration tests: a recording upstream and a raw socket client.

`FakeUpstream` is a raw asyncio HTTP/1.1 server. It records every request exactly as it
arrived (request line, header lines in order, body bytes on the wire and decoded, whether the
body was complete) and answers through a replaceable `handler`, which writes whatever bytes a
test wants: exact responses, stalls, resets, broken bodies. `RawClient` is a raw socket client
for what aiohttp's client would normalise.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

Handler = Callable[["Received", asyncio.StreamWriter], Awaitable[bool]]

_REASONS = {
    100: "Continue",
    200: "OK",
    201: "Created",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def _parse_head(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = head.rstrip(b"\r\n").split(b"\r\n")
    fields = []
    for line in lines[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        fields.append((name, value.strip(" \t")))
    return lines[0].decode("latin-1"), fields


class _Fields:
    headers: list[tuple[str, str]]

    def getall(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def header(self, name: str) -> str | None:
        values = self.getall(name)
        return values[0] if values else None

    def names(self) -> list[str]:
        return [k.lower() for k, _ in self.headers]


@dataclass(eq=False)
class Received(_Fields):
    """One request as the fake upstream saw it."""

    conn: int  # 1-based number of the upstream connection it came on
    method: str
    target: str  # the raw request target, exactly as sent
    version: str
    head: bytes = field(repr=False)  # request line and header block, as on the wire
    headers: list[tuple[str, str]] = field(repr=False)
    chunked: bool = False
    declared_length: int | None = None
    body: bytearray = field(
        default_factory=bytearray, repr=False
    )  # decoded, first `store_limit` bytes
    wire: bytearray = field(
        default_factory=bytearray, repr=False
    )  # as on the wire (chunk framing kept)
    body_size: int = 0
    complete: bool = False  # Content-Length satisfied, or the last chunk and trailers seen
    ended: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _sha: hashlib._Hash = field(default_factory=hashlib.sha256, repr=False)

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()


def http_response(
    status: int,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    *,
    reason: str | None = None,
    content_length: bool = True,
) -> bytes:
    """Exact response bytes; adds Content-Length unless given or `content_length=False`."""
    headers = list(headers or [])
    if content_length and not any(k.lower() == "content-length" for k, _ in headers):
        headers.append(("Content-Length", str(len(body))))
    lines = [f"HTTP/1.1 {status} {reason or _REASONS.get(status, 'Unknown')}"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


def reset(writer: asyncio.StreamWriter) -> None:
    """Abort a connection with a TCP RST (SO_LINGER 0) instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def read_chunks(
    reader: asyncio.StreamReader, wire: Callable[[bytes], None]
) -> AsyncIterator[bytes]:
    """Decode a chunked body (up to the end of its trailers); `wire` sees the raw bytes.

    A body that breaks off raises `asyncio.IncompleteReadError`.
    """
    while True:
        size_line = await reader.readuntil(b"\r\n")
        wire(size_line)
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while True:  # trailer section, up to the empty line
                trailer = await reader.readuntil(b"\r\n")
                wire(trailer)
                if trailer == b"\r\n":
                    return
        data = await reader.readexactly(size + 2)
        wire(data)
        yield data[:-2]


async def reply_json(req: Received, writer: asyncio.StreamWriter) -> bool:
    """The default handler: 200 with a small JSON body (none for HEAD)."""
    body = b'{"acknowledged":true}'
    raw = http_response(200, [("Content-Type", "application/json")], body)
    writer.write(raw[: -len(body)] if req.method == "HEAD" else raw)
    return True


class FakeUpstream:
    """A recording HTTP/1.1 server; `handler(req, writer) -> keep_alive` answers."""

    def __init__(self, *, store_limit: int = 16 << 20) -> None:
        self.requests: list[Received] = []
        self.connections = 0
        self.handler: Handler = reply_json
        self.store_limit = store_limit
        # Answer as soon as the request head arrives, before reading the body (an engine
        # rejecting a request early, e.g. 401 or 413), then close the connection the way
        # servers do (nginx's "lingering close"): send FIN, read and drop what still comes.
        self.answer_before_body = False
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=1 << 20)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def respond_with(self, raw: bytes, *, keep_alive: bool = True) -> None:
        """Answer every request with these exact bytes."""

        async def handler(req: Received, writer: asyncio.StreamWriter) -> bool:
            writer.write(raw)
            return keep_alive

        self.handler = handler

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        conn = self.connections
        try:
            while True:
                if self.answer_before_body:
                    head = await self._read_head(reader, conn)
                    if head is not None:
                        await self.handler(head, writer)
                        await writer.drain()
                        writer.write_eof()
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(5):
                                while await reader.read(1 << 16):
                                    pass
                    break
                req = await self._read_request(reader, conn)
                if req is None or not req.complete:
                    break
                keep = await self.handler(req, writer)
                await writer.drain()
                if not keep:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read_head(self, reader: asyncio.StreamReader, conn: int) -> Received | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return None
        line, headers = _parse_head(head)
        method, target, version = line.split(" ", 2)
        req = Received(conn, method, target, version, head, headers)
        self.requests.append(req)
        return req

    async def _read_request(self, reader: asyncio.StreamReader, conn: int) -> Received | None:
        req = await self._read_head(reader, conn)
        if req is None:
            return None
        try:
            te = (req.header("Transfer-Encoding") or "").lower()
            if "chunked" in te:
                req.chunked = True
                await self._read_chunked(reader, req)
            else:
                length = req.header("Content-Length")
                req.declared_length = int(length) if length is not None else 0
                await self._read_length(reader, req, req.declared_length)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            req.ended.set()
        return req

    def _take(self, req: Received, data: bytes) -> None:
        req._sha.update(data)
        req.body_size += len(data)
        room = self.store_limit - len(req.body)
        if room > 0:
            req.body += data[:room]

    def _wire(self, req: Received, data: bytes) -> None:
        room = self.store_limit - len(req.wire)
        if room > 0:
            req.wire += data[:room]

    async def _read_length(self, reader: asyncio.StreamReader, req: Received, length: int) -> None:
        left = length
        while left:
            data = await reader.read(min(left, 1 << 18))
            if not data:
                return
            left -= len(data)
            self._wire(req, data)
            self._take(req, data)
        req.complete = True

    async def _read_chunked(self, reader: asyncio.StreamReader, req: Received) -> None:
        async for data in read_chunks(reader, lambda raw: self._wire(req, raw)):
            self._take(req, data)
        req.complete = True


@dataclass(eq=False)
class RawResponse(_Fields):
    status: int
    reason: str
    headers: list[tuple[str, str]]
    head: bytes
    body: bytes
    complete: bool  # False when the body broke off before its framing said it ends
    chunked: bool


class RawClient:
    """A raw HTTP/1.1 client on one TCP connection: exact bytes out, exact bytes in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def request(self, data: bytes, *, timeout: float = 10.0) -> RawResponse:
        await self.send(data)
        method = data.split(b" ", 1)[0].decode()
        return await self.response(method=method, timeout=timeout)

    async def response(self, *, method: str = "GET", timeout: float = 10.0) -> RawResponse:
        """Read one response; a body that breaks off gives `complete=False`."""
        async with asyncio.timeout(timeout):
            head = await self.reader.readuntil(b"\r\n\r\n")
            line, headers = _parse_head(head)
            version, status, *reason = line.split(" ", 2)
            assert version in ("HTTP/1.1", "HTTP/1.0"), f"bad status line {line!r}"
            assert len(status) == 3 and status.isdigit(), f"bad status line {line!r}"
            resp = RawResponse(
                int(status), reason[0] if reason else "", headers, head, b"", True, False
            )
            code = resp.status
            if method == "HEAD" or code < 200 or code in (204, 304):
                return resp
            if "chunked" in (resp.header("Transfer-Encoding") or "").lower():
                resp.chunked = True
                resp.body, resp.complete = await self._read_chunked()
            elif (length := resp.header("Content-Length")) is not None:
                try:
                    resp.body = await self.reader.readexactly(int(length))
                except asyncio.IncompleteReadError as exc:
                    resp.body, resp.complete = exc.partial, False
            else:
                resp.body = await self.reader.read()
            return resp

    async def _read_chunked(self) -> tuple[bytes, bool]:
        body = bytearray()
        try:
            async for data in read_chunks(self.reader, lambda raw: None):
                body += data
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            return bytes(body), False
        return bytes(body), True

    async def at_eof(self, timeout: float = 5.0) -> bool:
        """True when the peer closed the connection (nothing more is read)."""
        try:
            async with asyncio.timeout(timeout):
                return await self.reader.read(1) == b""
        except ConnectionError:
            return True

    def reset(self) -> None:
        reset(self.writer)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


@dataclass(eq=False)
class RunningProxy:
    app: web.Application
    runner: web.AppRunner
    port: int
    stopped: bool = False
    clients: list[RawClient] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def connect(self) -> RawClient:
        """A raw client connection, closed at the latest when the test ends."""
        client = await RawClient.connect(self.port)
        self.clients.append(client)
        return client

    async def request(self, raw: bytes) -> RawResponse:
        """Send one raw request on a new connection and read the response."""
        client = await self.connect()
        try:
            return await client.request(raw)
        finally:
            await client.close()

    async def get(self, target: str = "/idx/_doc/1", headers: bytes = b"") -> RawResponse:
        """`GET target`; `headers` are extra raw header lines, each ending in CRLF."""
        return await self.request(
            b"GET %s HTTP/1.1\r\nHost: p\r\n%s\r\n" % (target.encode(), headers)
        )

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await self.runner.cleanup()

    async def close_clients(self) -> None:
        for client in self.clients:
            await client.close()


async def start_app(app: web.Application, *, shutdown_timeout: float = 5.0) -> RunningProxy:
    """Serve a built app the way `serve` does (`make_runner`) on a loopback port."""
    from proxy.app import make_runner

    runner = make_runner(app, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return RunningProxy(app, runner, int(runner.addresses[0][1]))


def proxy_config(upstream_url: str, **upstream: object) -> dict[str, object]:
    """The raw config the tests use: fake backend, short timeouts, no readiness probe (its
    requests would add to what the fake upstream counts; tests of the probe turn it on)."""
    settings: dict[str, object] = {
        "url": upstream_url,
        "connect_timeout": 2.0,
        "read_timeout": 5.0,
        "probe_interval": 0,
        **upstream,
    }
    return {"upstream": settings, "model": {"backend": "fake"}, "log_level": "WARNING"}


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until `check()` holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)


def drop_connections(upstream: FakeUpstream) -> None:
    """Close every connection the fake upstream holds (a FIN each), as an engine closing its
    idle keep-alive connections does."""
    for writer in list(upstream._writers):
        writer.close()


def held(release: asyncio.Event, target: str = "/slow/_forcemerge") -> Handler:
    """A handler answering `{}` at once, except `target`, answered once `release` is set."""

    async def answer(req: Received, writer: asyncio.StreamWriter) -> bool:
        if req.target == target:
            await release.wait()
        writer.write(http_response(200, [("Content-Type", "application/json")], b"{}"))
        return True

    return answer
