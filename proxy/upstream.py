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
from types import SimpleNamespace

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from .config import UpstreamConfig
from .errors import UpstreamBusy, UpstreamError, UpstreamTimeout, UpstreamUnavailable

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

    Repeated fields (`Warning`, `Set-Cookie`) keep their order. A repeated field is spelt
    as it first was: aiohttp's `ClientSession` keeps every repeat only when the names match
    exactly (`X-A: 1` then `x-a: 2` would send just `x-a: 2`).
    """
    drop = set(HOP_BY_HOP)
    getall = getattr(headers, "getall", None)
    connection_values = getall("Connection", []) if getall else [headers.get("Connection", "")]
    for value in connection_values:
        drop.update(token.strip().lower() for token in value.split(",") if token.strip())
    out: CIMultiDict[str] = CIMultiDict()
    spelling: dict[str, str] = {}
    for key, value in headers.items():
        lower = key.lower()
        if lower in drop or lower.startswith("proxy-"):
            continue
        out.add(spelling.setdefault(lower, key), value)
    return out


def _append(headers: CIMultiDictProxy[str], name: str, value: str) -> str:
    """Every line of a list-valued field, joined, with `value` appended."""
    return ", ".join([*headers.getall(name, []), value])


def request_headers(
    headers: CIMultiDictProxy[str], client_ip: str | None, *, keep_length: bool
) -> CIMultiDict[str]:
    """Headers to send upstream for a client request (Host is set from the upstream URL)."""
    out = end_to_end_headers(headers)
    for name in ("Host", "Expect"):
        out.popall(name, None)
    if not keep_length:
        out.popall("Content-Length", None)
    out["Via"] = _append(headers, "Via", VIA)
    if client_ip:
        out["X-Forwarded-For"] = _append(headers, "X-Forwarded-For", client_ip)
    return out


def response_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """Headers to send the client for an upstream response."""
    out = end_to_end_headers(headers)
    out["Via"] = _append(headers, "Via", VIA)
    return out


def _ssl_context(cfg: UpstreamConfig) -> ssl.SSLContext | bool:
    if not cfg.url.startswith("https"):
        return True
    if not cfg.verify_tls and not cfg.client_cert:
        return False
    ctx = ssl.create_default_context(cafile=cfg.ca_file)
    if not cfg.verify_tls:  # still present the client certificate (mutual TLS)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    if cfg.client_cert:
        ctx.load_cert_chain(cfg.client_cert, cfg.client_key)
    return ctx


@dataclass(slots=True)
class UpstreamResponse:
    """An upstream response whose body has been read whole (for reranking)."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


class _PoolWait:
    """Whether a request is waiting for a free pooled connection (aiohttp's trace events)."""

    __slots__ = ("waiting",)

    def __init__(self) -> None:
        self.waiting = False


async def _queued(_s: object, ctx: SimpleNamespace, _p: object) -> None:
    if isinstance(ctx.trace_request_ctx, _PoolWait):
        ctx.trace_request_ctx.waiting = True


async def _dequeued(_s: object, ctx: SimpleNamespace, _p: object) -> None:
    if isinstance(ctx.trace_request_ctx, _PoolWait):
        ctx.trace_request_ctx.waiting = False


class Upstream:
    """The cluster behind the proxy: one pooled ClientSession for the app's lifetime.

    A request waits at most `pool_timeout` for a free connection when all
    `max_connections` are in use (aiohttp's `connect` timeout covers that wait plus
    connecting; `sock_connect` the connecting alone); one still waiting then is
    `UpstreamBusy`, a 503 clients retry, rather than a request that hangs.
    """

    def __init__(self, cfg: UpstreamConfig) -> None:
        self.cfg = cfg
        base = URL(cfg.url)
        # Credentials in the URL are never used: aiohttp would send them on every request in
        # place of the caller's own (or fail requests that carry one), and the caller's
        # credentials must reach the cluster so that its security applies. They are kept out
        # of logs and error messages too.
        self.url_has_credentials = base.raw_user is not None or base.raw_password is not None
        base = base.with_user(None)
        self.display_url = str(base)
        self._origin = f"{base.scheme}://{base.raw_authority}"
        self._prefix = base.raw_path.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.cfg.max_connections, ssl=_ssl_context(self.cfg))
        pool = aiohttp.TraceConfig()
        pool.on_connection_queued_start.append(_queued)
        pool.on_connection_queued_end.append(_dequeued)
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=self.cfg.pool_timeout + self.cfg.connect_timeout,
                sock_connect=self.cfg.connect_timeout,
                sock_read=self.cfg.read_timeout,
            ),
            trace_configs=[pool],
            skip_auto_headers=("User-Agent", "Content-Type", "Accept", "Accept-Encoding"),
            requote_redirect_url=False,
        )
        # aiohttp resends PUT, DELETE, GET, ... by itself when a reused connection drops,
        # even after the engine received the whole request (and may have acted on it).
        # Clients retry the proxy's 502 under their own policy: a second, hidden retry here
        # would repeat delivered writes. There is no public switch; aiohttp's own test
        # client sets the same attribute.
        self._session._retry_connection = False

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
        pool = _PoolWait()
        try:
            return await self._session.request(
                method,
                self.url(raw_path_qs),
                headers=headers,
                data=body,
                allow_redirects=False,
                compress=None,
                auto_decompress=False,
                trace_request_ctx=pool,
            )
        except TimeoutError as exc:
            if pool.waiting:
                raise UpstreamBusy(
                    f"no connection to {self.display_url} came free in"
                    f" {self.cfg.pool_timeout:g} s (upstream.max_connections"
                    f" {self.cfg.max_connections} in use)"
                ) from exc
            raise UpstreamTimeout(f"upstream did not answer in time: {exc or 'timeout'}") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamUnavailable(f"cannot reach upstream {self.display_url}: {exc}") from exc

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

    async def probe(self) -> UpstreamError | None:
        """Is the cluster there? None when it answered anything over a verified connection.

        Any HTTP status counts (a secured cluster answers the proxy's own, credential-less
        request with 401): what readiness needs is a connection whose TLS verifies.
        """
        headers: CIMultiDict[str] = CIMultiDict({"Via": VIA})
        try:
            await self.fetch("GET", "/", headers, None, max_bytes=1 << 20)
        except UpstreamError as exc:
            return exc
        return None

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


def readiness_reason(exc: UpstreamError) -> str:
    """What `/ready` says of a failed probe: the kind of failure, never the address (the
    log line has that)."""
    cause = exc.__cause__
    while cause is not None and not isinstance(cause, ssl.SSLError):
        cause = cause.__cause__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"{exc.public_reason} (TLS certificate not verified)"
    if isinstance(cause, ssl.SSLError):
        return f"{exc.public_reason} (TLS handshake failed)"
    return exc.public_reason
