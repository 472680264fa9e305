"""The client side of a connection: header, idle and body timeouts, and a connection cap.

aiohttp's server has one idle timer (`keepalive_timeout`) and nothing else: a client that
sends its request head one byte every few seconds, or its body that way, or that connects and
says nothing, holds a connection (and a file descriptor) for as long as it likes, and enough
of them lock every other client out. This module adds what nginx has by default, under the
same names and defaults (`listen.*`):

- `header_timeout` (nginx's `client_header_timeout`, 60 s): from the first byte of a request
  (or from accepting a connection) to its whole head. Past it the client gets a 408 and the
  connection is closed.
- `keepalive_timeout` (nginx's, 75 s): a connection with no request in progress is closed.
- `body_timeout` (nginx's `client_body_timeout`, 60 s): the longest wait for the next piece
  of a request body while the proxy is reading it; enforced where bodies are read
  (`ClientBody`), answered 408.
- `max_connections` (nginx's `worker_connections`): connections past it get a 503 and are
  closed at once, so the descriptors for the upstream pool are never the ones that run out.

Each is counted (`rerank_proxy_client_timeouts_total{phase}`,
`rerank_proxy_client_connections_rejected_total`, the `rerank_proxy_client_connections`
gauge).

How: `ProxyRunner` hands the listening socket a protocol factory that wraps each of aiohttp's
`RequestHandler`s in a `ConnectionGuard`, which passes every protocol callback on unchanged
and keeps the timers; the app's outermost middleware (`app._guarded`) tells the guard when a
request's head has been parsed and when its handler is done. Written by hand because aiohttp
has no such hooks, and no library adds them to an aiohttp server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from .config import ListenConfig
from .errors import ProxyError, es_error_body
from .metrics import Metrics

logger = logging.getLogger(__name__)


def raw_error(status: int, reason: str, error_type: str, text: str) -> bytes:
    """A whole HTTP/1.1 error response in the ES shape, for writing to a transport directly."""
    body = es_error_body(status, error_type, text)
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=UTF-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class ClientBodyTimeout(ProxyError):
    """The client sent no part of its request body for `listen.body_timeout` seconds."""


class ClientBody:
    """A request body as it arrives, each wait for more bounded by `listen.body_timeout`.

    A client disconnect raises (aborting an upstream request); a stall raises
    `ClientBodyTimeout` and keeps it in `timed_out`, so a caller that only sees its
    consumer's error (aiohttp's client, streaming the body upstream) can tell.
    """

    def __init__(self, request: web.Request, timeout: float) -> None:
        self.reader = request.content
        self.timeout = timeout
        self.timed_out: ClientBodyTimeout | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        while True:
            try:
                async with asyncio.timeout(self.timeout):
                    chunk = await self.reader.readany()
            except TimeoutError:
                self.timed_out = ClientBodyTimeout(
                    f"no request body byte for {self.timeout:g} s (listen.body_timeout)"
                )
                raise self.timed_out from None
            if not chunk:
                return
            yield chunk


async def body_timeout_response(request: web.Request, exc: ClientBodyTimeout) -> web.Response:
    """The 408 for a stalled body, sent now; then the connection is closed (aiohttp would
    otherwise linger, reading the rest of the body for seconds)."""
    logger.warning("client %s: %s", request.remote, exc)
    request.app[LISTENER].metrics.client_timeouts.labels(phase="body").inc()
    body = es_error_body(408, "proxy_request_timeout", str(exc))
    resp = web.Response(status=408, body=body, content_type="application/json", charset="UTF-8")
    resp.force_close()
    await resp.prepare(request)
    await resp.write_eof()
    if request.transport is not None:
        request.transport.close()
    return resp


class ConnectionGuard(asyncio.Protocol):
    """One client connection: aiohttp's handler inside, the header and idle timers here."""

    IDLE, HEAD, BUSY = "idle", "head", "busy"

    def __init__(self, inner: RequestHandler, listener: Listener) -> None:
        self.inner = inner
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.state = self.HEAD  # a new connection owes its first request head
        self.timer: asyncio.TimerHandle | None = None
        self.refused = False
        self.received = False  # any byte of the request head this timer is about

    # -- asyncio protocol callbacks, passed on

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.transport = transport
        listener = self.listener
        if len(listener.guards) >= listener.cfg.max_connections:
            self.refused = True
            listener.metrics.connections_rejected.inc()
            logger.warning(
                "connection refused: %d client connections open (listen.max_connections)",
                len(listener.guards),
            )
            transport.write(listener.busy_response)
            transport.close()
            return
        listener.guards[self.inner] = self
        listener.metrics.client_connections.inc()
        self.inner.connection_made(transport)
        self._arm(listener.cfg.header_timeout, self._header_timed_out)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        if self.state == self.IDLE:
            self.state = self.HEAD
            self._arm(self.listener.cfg.header_timeout, self._header_timed_out)
        self.received = True
        self.inner.data_received(data)

    def eof_received(self) -> None:
        if not self.refused:
            self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.refused:
            return
        if self.listener.guards.pop(self.inner, None) is not None:
            self.listener.metrics.client_connections.dec()
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if not self.refused:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if not self.refused:
            self.inner.resume_writing()

    # -- the request's progress, from the app's middleware

    def request_started(self) -> None:
        self.state = self.BUSY
        self._disarm()

    def request_finished(self) -> None:
        # A next request's head that arrived while this one was handled is bounded by the
        # idle timer, not the header timer: its bytes cannot be told from this one's body.
        self.state = self.IDLE
        self.received = False
        self._arm(self.listener.cfg.keepalive_timeout, self._idle_timed_out)

    # -- timers

    def _arm(self, seconds: float, fire: Callable[[], None]) -> None:
        self._disarm()
        self.timer = asyncio.get_running_loop().call_later(seconds, fire)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _header_timed_out(self) -> None:
        self.timer = None
        if self.state != self.HEAD or self.transport is None:
            return
        self.listener.metrics.client_timeouts.labels(phase="header").inc()
        logger.info(
            "closing a connection: no whole request head in %g s (listen.header_timeout)",
            self.listener.cfg.header_timeout,
        )
        if self.received and not self.transport.is_closing():  # a silent one just closes
            self.transport.write(self.listener.header_timeout_response)
        self.inner.force_close()

    def _idle_timed_out(self) -> None:
        self.timer = None
        if self.state != self.IDLE or self.transport is None:
            return
        if self.transport.get_write_buffer_size():  # the last answer is still going out
            self._arm(self.listener.cfg.keepalive_timeout, self._idle_timed_out)
            return
        self.listener.metrics.client_timeouts.labels(phase="idle").inc()
        self.inner.force_close()


class Listener:
    """The guards of one app's client connections, and its `listen` limits."""

    def __init__(self, cfg: ListenConfig, metrics: Metrics) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.guards: dict[RequestHandler, ConnectionGuard] = {}
        self.busy_response = raw_error(
            503,
            "Service Unavailable",
            "proxy_too_many_connections",
            "too many client connections (listen.max_connections); retry later",
        )
        self.header_timeout_response = raw_error(
            408,
            "Request Timeout",
            "proxy_request_timeout",
            f"no whole request head in {cfg.header_timeout:g} s (listen.header_timeout)",
        )

    def guard(self, request: web.BaseRequest) -> ConnectionGuard | None:
        handler = request.protocol
        return self.guards.get(handler) if isinstance(handler, RequestHandler) else None


LISTENER = web.AppKey("listener", Listener)


class _GuardedFactory:
    """The protocol factory the listening socket gets: aiohttp's, each handler guarded."""

    def __init__(self, server: web.Server, listener: Listener) -> None:
        self.server = server
        self.listener = listener

    def __call__(self) -> ConnectionGuard:
        return ConnectionGuard(self.server(), self.listener)


class ProxyRunner(web.AppRunner):
    """An AppRunner whose sites guard every client connection (see the module docstring)."""

    __slots__ = ("_listener",)

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        listener = app.get(LISTENER)
        if listener is not None:  # aiohttp's own idle timer stays, as a backstop to ours
            kwargs.setdefault("keepalive_timeout", listener.cfg.keepalive_timeout + 5)
        super().__init__(app, **kwargs)
        self._listener = listener

    @property
    def server(self) -> Any:
        inner = super().server
        if inner is None or self._listener is None:
            return inner
        return _GuardedFactory(inner, self._listener)
