"""A real `redis-server` for the shared-cache tests (and bench/shared_cache.py).

`RedisServer` runs one on 127.0.0.1 with no persistence (`--save "" --appendonly no`) in its
own directory, on a free port it picks (redis-server needs a concrete one), and waits for
PING. `stop()` ends it; `start()` again brings it back on the same port, as a restarted
Redis would come back; with `tls` it serves TLS only (a `rediss://` URL). `require_redis()`
is the skip rule: without `redis-server` or redis-py the tests skip with the reason, or fail
when `CI` is set.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

INSTALL = "apt-get install redis-server; pip install 'redis>=5'"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_redis() -> str:
    """The redis-server binary; skips (fails under CI=true) without it or without redis-py."""
    binary = shutil.which("redis-server")
    why = "" if binary else "redis-server is not on PATH"
    try:
        import redis.asyncio  # noqa: F401
    except ImportError:
        why = why or "redis-py is not installed"
    if why:
        if in_ci():
            pytest.fail(f"CI=true and {why} ({INSTALL})", pytrace=False)
        pytest.skip(f"{why} ({INSTALL}; CI=true: fail instead)")
    assert binary is not None
    return binary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True, slots=True)
class TLSFiles:
    cert: Path
    key: Path
    ca: Path


def ping(port: int, tls: TLSFiles | None = None, timeout: float = 0.2) -> bool:
    try:
        with contextlib.ExitStack() as stack:
            sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout))
            if tls is not None:
                context = ssl.create_default_context(cafile=str(tls.ca))
                sock = stack.enter_context(context.wrap_socket(sock, server_hostname="localhost"))
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process; `start`, `stop`, `start` again on the same port."""

    def __init__(self, binary: str, directory: Path, tls: TLSFiles | None = None) -> None:
        self.binary = binary
        self.directory = directory
        self.tls = tls
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.tls is not None:
            return f"rediss://localhost:{self.port}/0?ssl_ca_certs={self.tls.ca}"
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log(self) -> Path:
        return self.directory / "redis.log"

    def start(self, timeout: float = 10.0) -> None:
        """Start it (on its previous port once it has one) and wait until it answers PING."""
        for attempt in range(5):
            fresh = not self.port
            if fresh:
                self.port = free_port()
            if self._start_on(self.port, timeout):
                return
            if not fresh or attempt == 4:
                break
            self.port = 0  # someone took the port between picking and binding: pick again
        log = "".join(
            f.read_text(errors="replace")
            for f in (self.directory / "redis.out", self.log)
            if f.exists()
        )
        raise RuntimeError(f"redis-server did not answer PING on port {self.port}:\n{log}")

    def _start_on(self, port: int, timeout: float) -> bool:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [self.binary, "--bind", "127.0.0.1", "--save", ""]
        if self.tls is None:
            args += ["--port", str(port)]
        else:
            args += ["--port", "0", "--tls-port", str(port), "--tls-auth-clients", "no"]
            args += ["--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key)]
            args += ["--tls-ca-cert-file", str(self.tls.ca)]
        args += ["--appendonly", "no", "--dir", str(self.directory), "--daemonize", "no"]
        args += ["--logfile", str(self.log), "--loglevel", "warning"]
        # Config errors go to stderr before the log file opens: keep them for the message.
        with (self.directory / "redis.out").open("ab") as out:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                return False
            if ping(port, self.tls):
                return True
            time.sleep(0.01)
        self.stop()
        return False

    def stop(self) -> None:
        """End the process (SIGTERM, then SIGKILL) and wait until it is gone."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
