"""Pass-through: forward one request upstream and stream the answer back unchanged.

Every request the proxy does not rerank goes through `forward`, and so does a search the
rerank flow decides to leave alone before it has asked the engine anything. Request bodies
go upstream as the client sent them (aiohttp's request decompression is off, see
`app.make_runner`); response bodies come back streamed, small ones in one write. A response
that breaks off after its headers were sent cuts the client connection, so the client sees
a truncated body rather than a complete wrong one. `error_response` gives the proxy's own
errors Elasticsearch's shape.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable

from aiohttp import web

from .errors import UpstreamError, UpstreamUnavailable, es_error_body
from .keys import METRICS, SETTINGS, UPSTREAM
from .listener import ClientBody, body_timeout_response
from .outcome import Outcome
from .routing import split_path_query
from .upstream import request_headers, response_headers

logger = logging.getLogger(__name__)

SMALL_BODY = 64 * 1024  # responses up to this size are sent in one write


def error_response(status: int, error_type: str, reason: str) -> web.Response:
    return web.Response(
        status=status,
        body=es_error_body(status, error_type, reason),
        content_type="application/json",
        charset="UTF-8",
    )


def upstream_error_response(request: web.Request, exc: UpstreamError) -> web.Response:
    """The proxy's 502/504 for an upstream that could not be used (logged and counted).

    The log line has the details (the upstream's address among them); the client's body
    says only what kind of failure it was, so the cluster's address does not leak out.
    """
    logger.warning("upstream request failed: %s", exc)
    request.app[METRICS].upstream_errors.labels(status=str(exc.status)).inc()
    return error_response(exc.status, exc.error_type, exc.public_reason)


async def forward(
    request: web.Request,
    outcome: Outcome,
    *,
    body: bytes | AsyncIterable[bytes] | None = None,
    raw_query: str | None = None,
    client_body: ClientBody | None = None,
) -> web.StreamResponse:
    """Forward a request upstream and stream the response back unchanged.

    The client's body is streamed upstream as it arrives (`client_body`, when the caller
    has begun reading it); one that stalls past `listen.body_timeout` is a 408."""
    upstream = request.app[UPSTREAM]
    path, query = split_path_query(request.raw_path)
    if raw_query is not None:
        query = raw_query
    keep_length = body is None
    if body is None and request.body_exists:
        body = client_body = ClientBody(request, request.app[SETTINGS].static.listen.body_timeout)
    headers = request_headers(request.headers, request.remote, keep_length=keep_length)
    t0 = time.perf_counter()
    try:
        up = await upstream.open(
            request.method, path + ("?" + query if query else ""), headers, body
        )
    except UpstreamError as exc:
        if client_body is not None and client_body.timed_out is not None:
            return await body_timeout_response(request, client_body.timed_out)
        return upstream_error_response(request, exc)
    outcome.upstream_ms += (time.perf_counter() - t0) * 1000
    headers = response_headers(up.headers)
    headers.update(outcome.headers())
    chunks: list[bytes] = []
    length = up.content_length
    small = length is not None and length <= SMALL_BODY and request.method != "HEAD"
    try:
        if small:
            # Small bodies (most responses) go out in one write instead of three.
            async for chunk in upstream.iter_body(up):
                chunks.append(chunk)
            body = b"".join(chunks)
            if len(body) == length:
                up.release()
                return web.Response(status=up.status, reason=up.reason, body=body, headers=headers)
            chunks = [body]  # short body: send what came, then cut the connection below
            raise UpstreamUnavailable("upstream body ended early")
    except UpstreamError:
        pass  # handled below, after the headers, exactly like a stream that broke off
    resp = web.StreamResponse(status=up.status, reason=up.reason, headers=headers)
    send_timeout = request.app[SETTINGS].static.listen.send_timeout
    try:
        await resp.prepare(request)
        for chunk in chunks:
            await resp.write(chunk)
        if small:
            raise UpstreamUnavailable("upstream body broke off")
        async for chunk in upstream.iter_body(up):
            # A client that stops reading must not hold the upstream connection for ever.
            async with asyncio.timeout(send_timeout):
                await resp.write(chunk)
        await resp.write_eof()
    except TimeoutError:
        logger.warning(
            "client %s stopped reading for %.1f s: response cut", request.remote, send_timeout
        )
        request.app[METRICS].client_send_timeouts.inc()
        resp.force_close()
        if request.transport is not None:
            request.transport.abort()
    except UpstreamError as exc:
        # Headers are gone: all that is left is to cut the connection so the client
        # sees a truncated body rather than a complete wrong one.
        logger.warning("upstream response broke off: %s", exc)
        request.app[METRICS].upstream_broken_bodies.inc()
        resp.force_close()
        if request.transport is not None:
            request.transport.close()
    finally:
        up.release()
    return resp
