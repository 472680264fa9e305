"""Step 2 of a search, fetching: the client's request buffered, the engine asked for the window.

`read_search` buffers a search request (bounded by `upstream.max_search_body_bytes`, before
and after its Content-Encoding is undone; a larger one goes to the engine untouched). Parsing
a big window response and writing the client's view of it run off the event loop
(`offload`). `SearchRequest` holds it and makes the proxy's own upstream
calls for it — the widened search (`fetch_window`), a template render — always with the
caller's own headers and credentials, so the cluster's security applies to them as to the
client. It also sends answers: `respond` for a view the proxy built, `serve_as_is` for an
engine response handed on unchanged, and `resend` for the client's own request, used only
when the proxy holds nothing it can serve.
"""

from __future__ import annotations

import gzip
import logging
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from . import jsoncodec, offload
from .keys import PROXY_PARAMS, SETTINGS, UPSTREAM
from .listener import ClientBody, ClientBodyTimeout, body_timeout_response
from .outcome import Outcome, Reason, State
from .passthrough import forward
from .routing import accepts_gzip, parse_params, split_path_query, without_params
from .settings import Snapshot
from .upstream import UpstreamResponse, request_headers, response_headers

logger = logging.getLogger(__name__)


class _TooLarge(Exception):
    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix


class BodyTooLarge(ValueError):
    """A compressed search body that expands past the search body cap."""


async def _read_bounded(request: web.Request, body: ClientBody, cap: int) -> bytes:
    if request.content_length is not None and request.content_length > cap:
        raise _TooLarge(b"")
    chunks, size = [], 0
    async for chunk in body:
        chunks.append(chunk)
        size += len(chunk)
        if size > cap:
            raise _TooLarge(b"".join(chunks))
    return b"".join(chunks)


async def _prefixed(prefix: bytes, body: ClientBody) -> AsyncIterator[bytes]:
    if prefix:
        yield prefix
    async for chunk in body:
        yield chunk


def decode_body(raw: bytes, encoding: str, cap: int) -> bytes | None:
    """The request body without Content-Encoding, or None if it cannot be read; raises
    `BodyTooLarge` when it expands past `cap` (the rest is never inflated)."""
    encoding = encoding.strip().lower()
    if not encoding or encoding == "identity":
        return raw
    if encoding not in ("gzip", "x-gzip", "deflate"):
        return None
    try:
        wbits = 16 + zlib.MAX_WBITS if "gzip" in encoding else zlib.MAX_WBITS
        d = zlib.decompressobj(wbits)
        out = d.decompress(raw, cap + 1)
        if len(out) > cap:
            raise BodyTooLarge(f"the body expands past {cap} bytes")
        return out if d.eof else None
    except zlib.error:
        return None


def parse_ndjson(decoded: bytes) -> list[tuple[bytes, Any]] | None:
    """The non-blank lines of an NDJSON body with their decoded values; None if any is bad."""
    lines = [ln for ln in decoded.split(b"\n") if ln.strip()]
    try:
        return [(ln, jsoncodec.loads(ln)) for ln in lines]
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Fetched:
    """The engine's answer to a widened search.

    `doc` is set when the answer is a 2xx JSON document; otherwise `problem` says why not and
    `up` is the response (None when it was too large to buffer).
    """

    up: UpstreamResponse | None
    doc: Any = None
    problem: Reason | None = None


def servable_as_is(up: UpstreamResponse | None) -> bool:
    """Can this non-2xx answer to the widened search be handed on as the client's answer?

    A 429 or a 5xx is the cluster's state, whatever the search: it goes to the client
    unchanged, and the search is not sent again to a cluster that is already struggling. So
    is a 401 or 403: the client's own credentials and permissions, the same for any body,
    and asking again would count twice against the cluster's failed-login lockout and in
    its audit log. Another 4xx may be of the widening's own making (a window over
    `index.max_result_window`, error positions in a re-serialised body), so the client's own
    request is asked instead.
    """
    return up is not None and (up.status in (401, 403, 429) or up.status >= 500)


@dataclass(slots=True)
class SearchRequest:
    """A buffered search request and the upstream calls the proxy makes for it."""

    request: web.Request
    outcome: Outcome
    snapshot: Snapshot
    raw_body: bytes
    path: str
    raw_query: str
    params: list[tuple[str, str]]

    @property
    def app(self) -> web.Application:
        return self.request.app

    @property
    def max_bytes(self) -> int:
        return self.app[SETTINGS].static.upstream.max_buffer_bytes

    def decoded_body(self) -> bytes | None:
        """See `decode_body` (may raise `BodyTooLarge`)."""
        encoding = self.request.headers.get("Content-Encoding", "")
        return decode_body(self.raw_body, encoding, search_body_cap(self.app))

    def headers(self, *, json_body: bool = False) -> CIMultiDict[str]:
        """The caller's headers for an upstream request the proxy makes (credentials kept).

        `json_body`: the body is one JSON document even if the client sent NDJSON, so an
        `x-ndjson` media type (plain or `vnd.elasticsearch+x-ndjson; compatible-with=N`)
        becomes its JSON twin.
        """
        h = request_headers(self.request.headers, self.request.remote, keep_length=False)
        h.popall("Content-Encoding", None)
        h.popall("Accept-Encoding", None)
        if "Content-Type" not in h:
            h["Content-Type"] = "application/json"
        elif json_body:
            h["Content-Type"] = h["Content-Type"].replace("x-ndjson", "json")
        return h

    async def fetch(
        self, path: str, query: str, body: bytes, *, json_body: bool = False
    ) -> UpstreamResponse | None:
        """One upstream call of the proxy's own, read whole; None when over the buffer cap."""
        t0 = time.perf_counter()
        try:
            return await self.app[UPSTREAM].fetch(
                self.request.method if self.request.method in ("GET", "POST") else "POST",
                path + ("?" + query if query else ""),
                self.headers(json_body=json_body),
                body,
                max_bytes=self.max_bytes,
            )
        finally:
            self.outcome.upstream_ms += (time.perf_counter() - t0) * 1000

    async def fetch_window(self, path: str, query: str, body: bytes) -> Fetched:
        """Send the widened search once and parse a 2xx answer."""
        up = await self.fetch(path, query, body)
        if up is None:
            return Fetched(None, problem=Reason.RESPONSE_TOO_LARGE)
        if not 200 <= up.status < 300:
            return Fetched(up, problem=Reason.UPSTREAM_STATUS)
        try:
            return Fetched(up, await offload.run(len(up.body), jsoncodec.loads, up.body))
        except ValueError:
            return Fetched(up, problem=Reason.UNPARSABLE_RESPONSE)

    async def render(self, template: Any) -> Any | None:
        """Render a search template with the engine itself; None when it cannot be rendered."""
        if not isinstance(template, dict):
            return None
        spec = {k: template[k] for k in ("id", "source", "params") if k in template}
        up = await self.fetch("/_render/template", "", jsoncodec.dumps(spec), json_body=True)
        if up is None or up.status != 200:
            return None
        try:
            doc = jsoncodec.loads(up.body)
        except ValueError:
            return None
        return doc.get("template_output") if isinstance(doc, dict) else None

    async def resend(self) -> web.StreamResponse:
        """Send the client's own request (minus proxy parameters) and stream the answer."""
        query = without_params(self.raw_query, PROXY_PARAMS)
        return await forward(self.request, self.outcome, body=self.raw_body, raw_query=query)

    async def _send(self, up: UpstreamResponse, body: bytes) -> web.Response:
        headers = response_headers(up.headers)  # hop-by-hop filtered, Via appended
        for name in ("Content-Length", "Content-Encoding"):
            headers.popall(name, None)
        accept = self.request.headers.getall("Accept-Encoding", [])
        if accepts_gzip(", ".join(accept)):
            body = await offload.run(len(body), gzip.compress, body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        headers.update(self.outcome.headers())
        return web.Response(status=up.status, body=body, headers=headers)

    async def respond(self, up: UpstreamResponse, doc: Any) -> web.Response:
        """A response document the proxy built, with the engine's status and headers.

        The document is about as large as the engine's response it was built from, which
        sizes the work of writing it."""
        return await self._send(up, await offload.run(len(up.body), jsoncodec.dumps, doc))

    async def serve_as_is(self, up: UpstreamResponse) -> web.Response:
        """The engine's response body unchanged (the proxy asked for it uncompressed)."""
        return await self._send(up, up.body)


def search_body_cap(app: web.Application) -> int:
    """The largest search body the proxy reads and parses (on the wire and decoded)."""
    upstream = app[SETTINGS].static.upstream
    return min(upstream.max_buffer_bytes, upstream.max_search_body_bytes)


async def read_search(
    request: web.Request, outcome: Outcome, snapshot: Snapshot
) -> SearchRequest | web.StreamResponse:
    """Buffer a search request; one over the cap is streamed through and answered here."""
    path, query = split_path_query(request.raw_path)
    cap = search_body_cap(request.app)
    body = ClientBody(request, request.app[SETTINGS].static.listen.body_timeout)
    try:
        raw = await _read_bounded(request, body, cap)
    except ClientBodyTimeout as exc:
        return await body_timeout_response(request, exc)
    except _TooLarge as big:
        outcome.single(State.SKIPPED, Reason.BODY_TOO_LARGE)
        query = without_params(query, PROXY_PARAMS)  # the engine would reject `rerank=`
        rest = _prefixed(big.prefix, body)
        return await forward(request, outcome, body=rest, raw_query=query, client_body=body)
    return SearchRequest(request, outcome, snapshot, raw, path, query, parse_params(query))
