"""`serve` with `listen.workers: N`: N worker processes on one port, one model they share.

Python serves one request at a time per process, so past one process's CPU the proxy scales
by processes. The supervisor (this module, in the `serve` process) reserves the listen port
with `SO_REUSEPORT` (the kernel then spreads connections over every worker bound to it),
and starts N workers: each is a plain `rerank-proxy serve`, a pure proxy, bound to that port
with `reuse_port`. Inference does not repeat per worker: with a local model the supervisor
first starts one `rerank-proxy model-server` on a loopback port and the workers use it as
`backend: remote`; with `backend: remote` already configured they use that.

The workers get the supervisor's validated configuration as a file (the environment's
`RERANK_PROXY_*` keys are already folded in, and are not passed on). Signals: SIGTERM or
SIGINT goes to every worker (each drains as a single proxy does), then the model server
stops; SIGHUP re-reads the configuration, rewrites the workers' file and reloads each
worker. A worker that exits unexpectedly is started again. Metrics are one view: whichever
worker a scrape reaches serves every worker's samples with a `worker` label
(`worker_metrics`); the model server's own `/metrics` counts the inference for all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import yaml

from .config import Config, ConfigError
from .rerank.registry import EXECUTORS

logger = logging.getLogger("proxy")
LISTENING = "rerank-proxy listening on "


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def config_document(cfg: Config) -> dict[str, Any]:
    """A validated config as the YAML document that parses back to it."""
    doc: dict[str, Any] = _plain(cfg)
    return doc


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (not listen) with SO_REUSEPORT, so port 0 becomes one concrete port for all."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    # The workers' file holds the whole configuration; a RERANK_PROXY_* key left in the
    # environment would override the supervisor's choices (the model server's address).
    keep = ("RERANK_PROXY_CACHE", "RERANK_PROXY_STATE")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RERANK_PROXY_") or k in keep}
    return env | (extra or {})


class _Child:
    """One `python -m proxy ...` process and where it listens."""

    def __init__(
        self, command: str, config: Path, name: str, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", command, "--config", str(config)],
            stdout=subprocess.PIPE,
            text=True,
            env=_child_env(env),
        )
        self.url = self._wait_listening()

    def _wait_listening(self) -> str:
        out: IO[str] | None = self.proc.stdout
        while out is not None:
            line = out.readline()
            if not line:
                break
            if line.startswith(LISTENING):
                return line[len(LISTENING) :].strip()
        code = self.proc.wait()
        raise ConfigError([f"listen.workers: {self.name} exited with status {code} at start"])

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)


class Supervisor:
    """Runs the model server (if needed) and the workers until SIGTERM/SIGINT."""

    def __init__(self, cfg: Config, read_config: Callable[[], Config]) -> None:
        self.cfg = cfg
        self.read_config = read_config
        self.dir = Path(tempfile.mkdtemp(prefix="rerank-proxy-"))
        self.model_server: _Child | None = None
        self.workers: list[_Child] = []
        self.stopping = threading.Event()
        self.port = 0

    def _worker_config(self, cfg: Config) -> Path:
        doc = config_document(cfg)
        doc["listen"].update(port=self.port, workers=1, reuse_port=True)
        if self.model_server is not None:
            doc["model"]["backend"] = "remote"
            doc["model"]["remote"].update(
                urls=[self.model_server.url], api="cohere", path="/v1/rerank", model=None
            )
            doc["model"]["cache_size"] = 0  # the model server caches, once for all
        path = self.dir / "worker.yaml"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(doc), encoding="utf-8")
        tmp.replace(path)  # a worker reloading mid-write never reads half a file
        return path

    def _start_model_server(self) -> None:
        doc = config_document(self.cfg)
        doc["listen"] = {**doc["listen"], "host": "127.0.0.1", "port": 0, "workers": 1}
        for key in ("tls_cert", "tls_key", "client_ca"):
            doc["listen"][key] = None  # loopback only: no TLS between processes on one host
        path = self.dir / "model-server.yaml"
        path.write_text(yaml.safe_dump(doc), encoding="utf-8")
        self.model_server = _Child("model-server", path, "the model server")
        logger.info("model server for the workers at %s", self.model_server.url)

    def run(self) -> int:
        reserved = reserve_port(self.cfg.listen.host, self.cfg.listen.port)
        self.port = reserved.getsockname()[1]
        try:
            if self.cfg.model.backend not in EXECUTORS:
                self._start_model_server()
            config = self._worker_config(self.cfg)
            for i in range(self.cfg.listen.workers):
                self.workers.append(self._worker(config, i))
            scheme = "https" if self.cfg.listen.tls_cert else "http"
            print(f"{LISTENING}{scheme}://{self.cfg.listen.host}:{self.port}", flush=True)
            logger.info("%d workers on port %d", len(self.workers), self.port)
            self._loop()
        finally:
            self._stop()
            reserved.close()
        return 0

    def _loop(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        signal.signal(signal.SIGINT, lambda *_: self.stopping.set())
        signal.signal(signal.SIGHUP, lambda *_: self._reload())
        while not self.stopping.wait(0.5):
            for i, worker in enumerate(self.workers):
                if worker.proc.poll() is not None and not self.stopping.is_set():
                    code = worker.proc.returncode
                    logger.warning("%s exited (%s); starting it again", worker.name, code)
                    self.workers[i] = self._worker(self.dir / "worker.yaml", i)

    def _worker(self, config: Path, i: int) -> _Child:
        env = {"RERANK_PROXY_WORKER_DIR": str(self.dir), "RERANK_PROXY_WORKER_ID": str(i)}
        return _Child("serve", config, f"worker {i}", env)

    def _reload(self) -> None:
        try:
            cfg = self.read_config()
        except ConfigError as exc:
            for line in exc.problems:
                logger.error("reload failed, keeping the running configuration: %s", line)
            return
        self._worker_config(cfg)
        for worker in self.workers:
            worker.signal(signal.SIGHUP)

    def _stop(self) -> None:
        for worker in self.workers:
            worker.signal(signal.SIGTERM)
        for worker in self.workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(timeout=120)
        if self.model_server is not None:
            self.model_server.signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.model_server.proc.wait(timeout=60)
        for path in self.dir.glob("*"):
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.dir.rmdir()
