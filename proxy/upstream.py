"""The upstream side: the one ClientSession, header filtering and streaming forwarding.

Owns every aiohttp client call. The session follows no redirects, keeps no cookies, ignores
environment proxies, never decompresses (bytes pass through exactly as the engine sent
them), adds no automatic headers, and has connect and per-read timeouts but no total
timeout, so long `_reindex` calls survive. aiohttp client exceptions are translated into
`UpstreamUnavailable` / `UpstreamTimeout` here and nowhere else.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from .config import UpstreamConfig
from .errors import UpstreamTimeout, UpstreamUnavailable

# RFC 9110 7.6.1 connection-specific fields, plus the de-facto hop-by-hop ones.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
VIA = "1.1 rerank-proxy"
_CHUNK = 64 * 1024


def end_to_end_headers(
    headers: Mapping[str, str] | CIMultiDictProxy[str],
) -> CIMultiDict[str]:
    """Headers minus hop-by-hop ones, `Proxy-*` and every field `Connection` names.

    Repeated fields (`Warning`, `Set-Cookie`) keep their order.
    """
    drop = set(HOP_BY_HOP)
    getall = getattr(headers, "getall", None)
    connection_values = getall("Connection", []) if getall else [headers.get("Connection", "")]
    for value in connection_values:
        drop.update(token.strip().lower() for token in value.split(",") if token.strip())
    out: CIMultiDict[str] = CIMultiDict()
    for key, value in headers.items():
        lower = key.lower()
        if lower in drop or lower.startswith("proxy-"):
            continue
        out.add(key, value)
    return out


def request_headers(
    headers: CIMultiDictProxy[str], client_ip: str | None, *, keep_length: bool
) -> CIMultiDict[str]:
    """Headers to send upstream for a client request (Host is set from the upstream URL)."""
    out = end_to_end_headers(headers)
    for name in ("Host", "Expect"):
        out.popall(name, None)
    if not keep_length:
        out.popall("Content-Length", None)
    via = headers.get("Via")
    out["Via"] = f"{via}, {VIA}" if via else VIA
    if client_ip:
        prior = ", ".join(headers.getall("X-Forwarded-For", []))
        out["X-Forwarded-For"] = f"{prior}, {client_ip}" if prior else client_ip
    return out


def response_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """Headers to send the client for an upstream response."""
    out = end_to_end_headers(headers)
    via = headers.get("Via")
    out["Via"] = f"{via}, {VIA}" if via else VIA
    return out


async def iter_stream(reader: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """Yield a request body as it arrives; a client disconnect raises, aborting upstream."""
    while True:
        chunk = await reader.readany()
        if not chunk:
            return
        yield chunk


def _ssl_context(cfg: UpstreamConfig) -> ssl.SSLContext | bool:
    if not cfg.url.startswith("https"):
        return True
    if not cfg.verify_tls:
        return False
    ctx = ssl.create_default_context(cafile=cfg.ca_file)
    if cfg.client_cert:
        ctx.load_cert_chain(cfg.client_cert, cfg.client_key)
    return ctx


@dataclass(slots=True)
class UpstreamResponse:
    """An upstream response whose body has been read whole (for reranking)."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


class Upstream:
    """The cluster behind the proxy: one pooled ClientSession for the app's lifetime."""

    def __init__(self, cfg: UpstreamConfig) -> None:
        self.cfg = cfg
        base = URL(cfg.url)
        self._origin = f"{base.scheme}://{base.raw_authority}"
        self._prefix = base.raw_path.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.cfg.max_connections, ssl=_ssl_context(self.cfg))
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=self.cfg.connect_timeout, sock_read=self.cfg.read_timeout
            ),
            skip_auto_headers=("User-Agent", "Content-Type", "Accept", "Accept-Encoding"),
            requote_redirect_url=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url(self, raw_path_qs: str) -> URL:
        """The upstream URL for a raw path and query, byte-exact (no re-quoting)."""
        return URL(self._origin + self._prefix + raw_path_qs, encoded=True)

    async def open(
        self,
        method: str,
        raw_path_qs: str,
        headers: CIMultiDict[str],
        body: bytes | AsyncIterable[bytes] | None,
    ) -> aiohttp.ClientResponse:
        """Send a request; the caller reads (streams) and releases the response."""
        assert self._session is not None, "Upstream.start() was not awaited"
        try:
            return await self._session.request(
                method,
                self.url(raw_path_qs),
                headers=headers,
                data=body,
                allow_redirects=False,
                compress=None,
                auto_decompress=False,
            )
        except TimeoutError as exc:
            raise UpstreamTimeout(f"upstream did not answer in time: {exc or 'timeout'}") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamUnavailable(f"cannot reach upstream {self.cfg.url}: {exc}") from exc

    async def fetch(
        self,
        method: str,
        raw_path_qs: str,
        headers: CIMultiDict[str],
        body: bytes | None,
        *,
        max_bytes: int,
    ) -> UpstreamResponse | None:
        """Send a request and read the body whole; None when it is over `max_bytes`."""
        resp = await self.open(method, raw_path_qs, headers, body)
        length = resp.content_length
        if length is not None and length > max_bytes:
            resp.close()
            return None
        try:
            chunks: list[bytes] = []
            size = 0
            while True:
                chunk = await resp.content.readany()
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > max_bytes:
                    resp.close()
                    return None
            data = b"".join(chunks)
        except TimeoutError as exc:
            resp.release()
            raise UpstreamTimeout(
                f"upstream body did not arrive in time: {exc or 'timeout'}"
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            resp.release()
            raise UpstreamUnavailable(f"upstream body broke off: {exc}") from exc
        resp.release()
        return UpstreamResponse(resp.status, resp.headers, data)

    @staticmethod
    async def iter_body(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        """Stream a response body; errors are translated."""
        try:
            while True:
                chunk = await resp.content.readany()
                if not chunk:
                    return
                yield chunk
        except TimeoutError as exc:
            raise UpstreamTimeout("upstream body stalled") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamUnavailable(f"upstream body broke off: {exc}") from exc
