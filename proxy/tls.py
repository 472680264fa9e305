"""TLS on the listening side: the server context, and swapping certificates on reload.

Elasticsearch 8 serves HTTPS by default, so its clients use `https://` and a CA file; the
proxy terminates TLS itself so they change nothing but the host. The context allows TLS 1.2
and later only (Python's default ciphers), speaks HTTP/1.1 over ALPN, and asks for a client
certificate signed by `listen.client_ca` when one is configured (mutual TLS): a certificate
that does not verify fails the handshake; without one, only `/_rerank_proxy/health` and
`/ready` answer (`client_certificate_required` below), so orchestrators can probe.

Certificates are re-read on reload without closing the listener: the listening context's
SNI callback hands each new handshake the latest context (`ssl.SSLObject.context` may be
replaced there), while established connections keep the one they started with. A reload
whose files do not load leaves the running certificates in place.
"""

from __future__ import annotations

import ssl

from .config import ListenConfig


def _context(listen: ListenConfig) -> ssl.SSLContext:
    if not listen.tls_cert:
        raise ValueError("listen.tls_cert is not set")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.load_cert_chain(listen.tls_cert, listen.tls_key)
    if listen.client_ca:
        # OPTIONAL, not REQUIRED: a certificate that is presented must verify, and one that is
        # not presented leaves the connection able to reach the probes alone (kubelet has no
        # client certificate); `app` answers every other path 403 on such a connection.
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.load_verify_locations(cafile=listen.client_ca)
    return ctx


class ServerTLS:
    """The listening context, whose certificates `reload` can replace."""

    def __init__(self, listen: ListenConfig) -> None:
        self._current = _context(listen)
        self.context = _context(listen)
        self.context.sni_callback = self._pick

    def _pick(self, sslobj: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        sslobj.context = self._current

    def reload(self, listen: ListenConfig) -> None:
        """Load the (same-named or new) files; raises OSError/ssl.SSLError and keeps the old."""
        self._current = _context(listen)


#: what a connection without a client certificate may reach under mutual TLS
OPEN_PATHS = frozenset({"/_rerank_proxy/health", "/_rerank_proxy/ready"})


def client_certificate_missing(transport: object | None, path: str) -> bool:
    """Under mutual TLS: does this request lack the client certificate its path needs?"""
    if path in OPEN_PATHS:
        return False
    get = getattr(transport, "get_extra_info", None)
    return not (get and get("peercert"))


def server_tls(listen: ListenConfig) -> ServerTLS | None:
    return ServerTLS(listen) if listen.tls_cert else None
