"""Real search engines for integration tests, via ``scripts/engine`` (no Docker).

Plain helpers, no pytest hooks or fixtures are registered on import; wire them into session
fixtures, e.g.::

    url, started = ensure_engine("opensearch")
    yield url
    if started:
        stop_engine("opensearch")

State, ports, heap and timeout follow the ``scripts/engine`` environment variables
(RERANK_PROXY_STATE, OPENSEARCH_PORT, OPENSEARCH3_PORT, ELASTICSEARCH_PORT, ENGINE_HEAP,
ENGINE_START_TIMEOUT, OPENSEARCH3_JAVA_HOME).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
ENGINE_SCRIPT = REPO_ROOT / "scripts" / "engine"
# opensearch: OpenSearch 2.19.1, opensearch3: OpenSearch 3.x (Java 21+), elasticsearch: 7.10.2 OSS
ENGINE_NAMES = ("opensearch", "opensearch3", "elasticsearch")


def _run(*args: str, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ENGINE_SCRIPT), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _check(name: str) -> None:
    if name not in ENGINE_NAMES:
        raise ValueError(f"unknown engine {name!r}; expected one of {ENGINE_NAMES}")


def engine_url(name: str) -> str | None:
    """Base URL of a running, healthy engine, else None. Never starts anything."""
    _check(name)
    proc = _run("url", name, timeout=30)
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else None


def ensure_engine(name: str) -> tuple[str, bool]:
    """Start ``name`` unless it already runs; returns (base URL, started_by_us).

    Raises RuntimeError carrying the engine log tail when it cannot be started.
    """
    _check(name)
    url = engine_url(name)
    if url:
        return url, False
    # scripts/engine enforces its own health timeout (ENGINE_START_TIMEOUT, default 180 s);
    # the outer limit only guards against a hung Maven resolve or similar.
    proc = _run("start", name, timeout=1800)
    url = proc.stdout.strip()
    if proc.returncode != 0 or not url:
        raise RuntimeError(
            f"scripts/engine start {name} failed (exit {proc.returncode}):\n{proc.stderr.strip()}"
        )
    return url, True


def stop_engine(name: str) -> None:
    """Stop ``name`` (SIGTERM, then SIGKILL after 30 s); no error if it was not running."""
    _check(name)
    proc = _run("stop", name, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(
            f"scripts/engine stop {name} failed (exit {proc.returncode}):\n{proc.stderr.strip()}"
        )
