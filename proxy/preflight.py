"""Start-up checks of what the configuration points at: files, hosts, the port, the model.

`load_config` checks the configuration's own values; `preflight(cfg, bind=...)` checks the
world they name, before anything slow starts: TLS files exist and load, host names resolve,
the port is free, a model directory is a model directory, a requested GPU is there. Each
problem is one line `KEY: message` naming the config key, as `load_config` reports its own,
so `check-config` and `serve` print them the same way and exit without a traceback. The
OS and TLS errors are translated here, at the edge; nothing here raises for a bad file,
host or port. Neither torch nor aiohttp is imported.
"""

from __future__ import annotations

import errno
import re
import socket
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .config import Config, ConfigError
from .rerank.device import cuda_device_count
from .rerank.registry import EXECUTORS
from .rerank.sanity import looks_like_path, model_dir_problem, model_problem


def preflight(cfg: Config, *, bind: bool) -> list[str]:
    """Every problem found, one line each (`listen.port: cannot listen on ...`); empty when
    all is well. `bind=True` also binds the listen port once and releases it (for `serve`;
    `check-config` may run where the proxy is already listening)."""
    problems: list[str] = []
    listen, upstream = cfg.listen, cfg.upstream
    server = ssl.PROTOCOL_TLS_SERVER
    client = ssl.PROTOCOL_TLS_CLIENT
    problems += _cert_chain(
        "listen.tls_cert", "listen.tls_key", listen.tls_cert, listen.tls_key, server
    )
    problems += _ca_bundle("listen.client_ca", listen.client_ca, server)
    problems += _listen(listen.host, listen.port, bind=bind, reuse_port=listen.reuse_port)
    problems += _upstream_host(upstream.url)
    problems += _ca_bundle("upstream.ca_file", upstream.ca_file, client)
    problems += _cert_chain(
        "upstream.client_cert",
        "upstream.client_key",
        upstream.client_cert,
        upstream.client_key,
        client,
    )
    problems += _model(cfg)
    problems += _compare(cfg)
    return problems


def _compare(cfg: Config) -> list[str]:
    """`compare.qrels` reads (the page would refuse to start otherwise)."""
    if not (cfg.compare.enabled and cfg.compare.qrels):
        return []
    from .compare.judgments import load_judgments  # pure: the file readers only

    try:
        load_judgments(cfg.compare.qrels)
    except ConfigError as exc:
        return list(exc.problems)
    return []


# --- TLS files ------------------------------------------------------------------------------


def _unreadable(key: str, path: str) -> str | None:
    """`KEY: cannot read 'PATH': No such file or directory`, or None when it reads."""
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        return f"{key}: cannot read {path!r}: {_os_reason(exc)}"
    return None


def _cert_chain(
    cert_key: str, key_key: str, cert: str | None, key: str | None, protocol: int
) -> list[str]:
    if not cert:
        return []  # a key without a certificate is `load_config`'s to report
    unreadable = [p for p in (_unreadable(cert_key, cert), key and _unreadable(key_key, key)) if p]
    if unreadable:
        return unreadable
    asked: list[bool] = []

    def no_passphrase() -> bytes:
        # Without a callback OpenSSL would prompt on the terminal for an encrypted key.
        asked.append(True)
        return b""

    try:
        ssl.SSLContext(protocol).load_cert_chain(cert, key, password=no_passphrase)
    except OSError as exc:  # ssl.SSLError is one
        files = f"{cert!r} and {key!r}" if key else repr(cert)
        if asked:
            return [
                f"{key_key if key else cert_key}: the private key in {key or cert!r} is"
                " encrypted; give an unencrypted key (`openssl pkey -in KEY -out NEW`)"
            ]
        return [
            f"{cert_key}: {files} do{'es' if not key else ''} not load as a certificate chain"
            f" and its key: {_ssl_reason(exc)}"
        ]
    return []


def _ca_bundle(key: str, path: str | None, protocol: int) -> list[str]:
    if not path:
        return []
    unreadable = _unreadable(key, path)
    if unreadable:
        return [unreadable]
    try:
        ssl.SSLContext(protocol).load_verify_locations(cafile=path)
    except OSError as exc:  # ssl.SSLError is one
        return [f"{key}: {path!r} does not load as a CA bundle (PEM): {_ssl_reason(exc)}"]
    return []


# --- hosts and the port ---------------------------------------------------------------------


def _listen(host: str, port: int, *, bind: bool, reuse_port: bool = False) -> list[str]:
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError) as exc:
        return [f"listen.host: cannot resolve {host!r}: {_gai_reason(exc)}"]
    if not bind or port == 0:
        return []
    return _bind_all(host, port, infos, reuse_port=reuse_port)


def _bind_all(
    host: str, port: int, infos: list[tuple[Any, ...]], *, reuse_port: bool = False
) -> list[str]:
    """Bind every address `host` resolves to, as asyncio's `create_server` (hence aiohttp)
    does: SO_REUSEADDR, IPv6 sockets v6-only, an address the host lacks skipped."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    bound = 0
    unavailable: OSError | None = None
    for family, kind, proto, _, address in {(i[0], i[1], i[2], "", i[4]): None for i in infos}:
        try:
            sock = socket.socket(family, kind, proto)
        except OSError as exc:  # the address family is not supported here
            unavailable = exc
            continue
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:  # a worker: the port is shared with its siblings on purpose
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL:  # asyncio skips these too (bpo-30945)
                    unavailable = exc
                    continue
                key = "listen.port" if exc.errno in _PORT_ERRORS else "listen.host"
                return [f"{key}: cannot listen on {where}: {_os_reason(exc).lower()}"]
            bound += 1
    if not bound:
        reason = _os_reason(unavailable).lower() if unavailable else "no address to bind"
        return [f"listen.host: cannot listen on {where}: {reason}"]
    return []


#: bind errors that are the port's fault (taken; below 1024 without the privilege)
_PORT_ERRORS = frozenset({errno.EADDRINUSE, errno.EACCES})


def _upstream_host(url: str) -> list[str]:
    parts = urlsplit(url)
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        return []  # a malformed URL is `load_config`'s to report
    if not host:
        return []
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        return [f"upstream.url: cannot resolve host {host!r}: {_gai_reason(exc)}"]
    return []


# --- the model ------------------------------------------------------------------------------


def _model(cfg: Config) -> list[str]:
    model = cfg.model
    problems: list[str] = []
    if model.backend == "remote" and not model.remote.urls:
        problems.append("model.remote.urls: backend remote needs at least one server URL")
    if model.remote.api_key_env and model.remote.api_key_file:
        problems.append("model.remote.api_key_file: set api_key_env or api_key_file, not both")
    if model.backend not in ("fake", *EXECUTORS):  # a remote server loads its own model
        problem = model_dir_problem(model.name)
        if problem:
            problems.append(f"model.name: {problem}")
        elif looks_like_path(model.name):
            # A local directory: what loading it would refuse, without loading it.
            refused = model_problem(Path(model.name), model.label)
            if refused:
                key = "model.label" if refused.startswith("model.label ") else "model.name"
                problems.append(f"{key}: {refused}")
    if model.backend != "fake" and model.device == "cuda" and cuda_device_count() == 0:
        problems.append("model.device: cuda requested but no CUDA device is visible")
    return problems


# --- messages -------------------------------------------------------------------------------

_SSL_LOCATION = re.compile(r"\s*\(_ssl\.c:\d+\)$")


def _ssl_reason(exc: OSError) -> str:
    """`[SSL] PEM lib`: OpenSSL's reason without the `(_ssl.c:4123)` source location."""
    if isinstance(exc, ssl.SSLError) and len(exc.args) > 1:
        return _SSL_LOCATION.sub("", str(exc.args[1]))
    return _os_reason(exc)


def _os_reason(exc: OSError) -> str:
    return exc.strerror or " ".join(str(exc).split()) or type(exc).__name__


def _gai_reason(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror) and exc.strerror:
        return exc.strerror
    return " ".join(str(exc).split()) or type(exc).__name__
