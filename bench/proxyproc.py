"""The proxy as its own process (`python -m proxy serve`), as the benchmarks run it.

Owns the benchmark's proxy config (reranking only on the given index rules; everything in
`model` is a config key: group size, batch wait, backend), starting the proxy on a free
loopback port and waiting until it listens, reading its log and counters, stopping it, and the
temporary work directory that holds its config and log files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.loopback import LOOPBACK, http_json
from bench.paths import REPO
from bench.report import log


@dataclass
class ProxyProcess:
    """A running `python -m proxy serve` and where it listens and logs."""

    proc: subprocess.Popen[str]
    url: str
    log_path: Path
    started_s: float

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def backend(self) -> str:
        """The backend the proxy resolved (from its `loading model ... (backend X, ...)`)."""
        for line in self.log_text().splitlines():
            if "loading model" in line and "(backend " in line:
                return line.split("(backend ", 1)[1].split(",", 1)[0]
        return "?"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def proxy_config(
    upstream: str,
    *,
    model: Path | str = "fake",
    backend: str = "fake",
    rules: Sequence[dict[str, Any]] = (),
    log_level: str = "INFO",
    **model_opts: Any,
) -> dict[str, Any]:
    """A proxy config: reranking only on the given index rules (`defaults` disabled);
    `model_opts` are further `model` keys (`max_length`, `batch_wait_ms`, `max_group`, ...)."""
    return {
        "listen": {"drain_delay": 0},
        "upstream": {"url": upstream, "read_timeout": 900},
        "model": {"name": str(model), "backend": backend, **model_opts},
        "defaults": {"enabled": False},
        "indices": list(rules),
        "log_level": log_level,
    }


def start_proxy(
    config: dict[str, Any],
    workdir: Path,
    *,
    name: str = "proxy",
    on_spawn: Callable[[int], None] | None = None,
    timeout_s: float = 900.0,
    cwd: Path = REPO,
    env: dict[str, str] | None = None,
) -> ProxyProcess:
    """Run `python -m proxy serve` with `config` on a free loopback port; return once it
    listens. `on_spawn(pid)` is called as soon as the process exists (memory sampling
    starts there). `cwd` and `env` (added to this process's environment) let a bench run
    another checkout's `proxy`."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg_path = workdir / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
    log_path = workdir / f"{name}.log"
    cmd = [sys.executable, "-m", "proxy", "serve", "--config", str(cfg_path)]
    cmd += ["--listen", f"{LOOPBACK}:0"]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    t0 = time.monotonic()
    with log_path.open("w") as log_fh:
        proc = subprocess.Popen(
            cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=log_fh, text=True, env=full_env
        )
    assert proc.stdout is not None
    if on_spawn is not None:
        on_spawn(proc.pid)
    ready: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("rerank-proxy listening on "):
                ready.append(line.split()[-1])
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout_s)
    if not ready:
        proc.kill()
        proc.wait()
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"proxy {name} did not start in {timeout_s:.0f} s:\n{tail}")
    return ProxyProcess(proc, ready[0], log_path, time.monotonic() - t0)


def proxy_metrics(url: str) -> dict[str, float]:
    """The proxy's own counters that moved (`/_rerank_proxy/metrics?format=json`)."""
    samples = http_json("GET", f"{url}/_rerank_proxy/metrics?format=json", timeout=10)
    return {
        k: v for k, v in samples.items() if k.startswith("rerank_proxy_") and "_total" in k and v
    }


@contextlib.contextmanager
def workdir(prefix: str, keep: bool = False) -> Iterator[Path]:
    """A temporary directory for one run's configs and logs; removed after, unless `keep`."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if keep:
            log(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)
