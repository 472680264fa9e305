"""End-to-end fixtures: real OpenSearch 2.19, OpenSearch 3.x and Elasticsearch 7.10
(scripts/engine, no Docker), the SciFact collection indexed in each, and the proxy running as
its own process (`python -m proxy serve`) with the stand-in model on the real loading path.

An engine is started the first time a test needs it, so `pytest tests/e2e -k opensearch3`
starts OpenSearch 3 alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO_ROOT, SciFact
from tests.engines import ensure_engine, stop_engine

ENGINES = ("opensearch", "opensearch3", "elasticsearch")
OPENSEARCH_ENGINES = frozenset({"opensearch", "opensearch3"})  # driven with opensearch-py
SCIFACT_INDEX = "scifact-v2"
WINDOW = 30
ALIAS = "papers-v2"


@dataclass
class Stack:
    engine: str
    engine_url: str
    proxy_url: str
    log: Path

    def sync_client(self, url: str, **kw: Any) -> Any:
        if self.engine in OPENSEARCH_ENGINES:
            from opensearchpy import OpenSearch

            return OpenSearch(hosts=[url], timeout=60, **kw)
        return _es7().Elasticsearch([url], timeout=60, **kw)

    def async_client(self, url: str, **kw: Any) -> Any:
        if self.engine in OPENSEARCH_ENGINES:
            from opensearchpy import AsyncOpenSearch

            return AsyncOpenSearch(hosts=[url], timeout=60, **kw)
        return _es7().AsyncElasticsearch([url], timeout=60, **kw)

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def _es7() -> Any:
    """elasticsearch-py 7.13 (7.14+ refuse the runner's build flavour "unknown").

    7.13 names `np.float_`, which NumPy 2 removed; alias it back for that import only.
    """
    import numpy as np

    if "float_" not in np.__dict__:
        np.float_ = np.float64  # type: ignore[attr-defined]
    import elasticsearch7

    return elasticsearch7


def _index_scifact(client: Any, data: SciFact) -> None:
    if client.indices.exists(index=SCIFACT_INDEX):
        if client.count(index=SCIFACT_INDEX)["count"] == len(data.corpus):
            client.indices.put_alias(index=SCIFACT_INDEX, name=ALIAS)
            return
        client.indices.delete(index=SCIFACT_INDEX)
    client.indices.create(
        index=SCIFACT_INDEX,
        body={
            "settings": {"number_of_shards": 1, "number_of_replicas": 0},
            "mappings": {
                "properties": {
                    "title": {"type": "text"},
                    "text": {"type": "text"},
                    "n": {"type": "integer"},
                }
            },
        },
    )
    lines: list[str] = []
    for doc_id, doc in data.corpus.items():
        lines.append(json.dumps({"index": {"_index": SCIFACT_INDEX, "_id": doc_id}}))
        lines.append(json.dumps({**doc, "n": len(doc["text"])}))
        if len(lines) >= 2000:
            client.bulk(body="\n".join(lines) + "\n")
            lines = []
    if lines:
        client.bulk(body="\n".join(lines) + "\n")
    client.indices.refresh(index=SCIFACT_INDEX)
    client.indices.put_alias(index=SCIFACT_INDEX, name=ALIAS)


def proxy_config(engine_url: str, model_dir: Path, **rule: Any) -> dict[str, Any]:
    return {
        "listen": {"drain_delay": 0},
        "upstream": {"url": engine_url, "read_timeout": 120},
        "model": {
            "name": str(model_dir),
            "backend": "torch",
            "device": "cpu",
            "batch_wait_ms": 1,
        },
        "defaults": {"enabled": False},
        "indices": [
            {
                "match": [SCIFACT_INDEX, ALIAS, "scifact-*"],
                "fields": ["title", "text"],
                "window": WINDOW,
                "timeout_ms": 60_000,
                **rule,
            }
        ],
    }


def start_proxy(config: dict[str, Any], workdir: Path) -> tuple[subprocess.Popen[str], str, Path]:
    """Run `python -m proxy serve` on a free port; return (process, URL, log path)."""
    cfg_path = workdir / "proxy.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    log = workdir / "proxy.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "proxy", "serve", "--config", str(cfg_path)]
    with log.open("w") as log_fh:
        proc = subprocess.Popen(
            [*cmd, "--listen", "127.0.0.1:0"],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=log_fh,
            text=True,
            env=env,
        )
    assert proc.stdout is not None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("rerank-proxy listening on "):
            return proc, line.split()[-1], log
        if not line and proc.poll() is not None:
            break
    stop_proxy(proc)
    raise RuntimeError("proxy did not start:\n" + log.read_text(errors="replace")[-4000:])


def stop_proxy(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


class _Engines(dict[str, str]):
    """Engine name -> base URL; looking a name up starts that engine unless it runs already."""

    def __init__(self) -> None:
        super().__init__()
        self.started: list[str] = []

    def __missing__(self, name: str) -> str:
        url, ours = ensure_engine(name)
        if ours:
            self.started.append(name)
        self[name] = url
        return url


@pytest.fixture(scope="session")
def engines() -> Iterator[dict[str, str]]:
    urls = _Engines()
    yield urls
    if not os.environ.get("RERANK_PROXY_KEEP_ENGINES"):
        for name in urls.started:
            stop_engine(name)


@pytest.fixture(scope="session", params=ENGINES)
def stack(
    request: pytest.FixtureRequest,
    engines: dict[str, str],
    scifact: SciFact,
    tiny_model: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    name: str = request.param
    url = engines[name]
    probe = Stack(name, url, url, Path("/dev/null"))
    client = probe.sync_client(url)
    _index_scifact(client, scifact)
    client.close()
    workdir = tmp_path_factory.mktemp(f"proxy-{name}")
    proc, proxy_url, log = start_proxy(proxy_config(url, tiny_model), workdir)
    yield Stack(name, url, proxy_url, log)
    stop_proxy(proc)


@pytest.fixture(scope="session")
def reference_scorer(tiny_model: Path) -> Callable[[str, list[str]], list[float]]:
    """sentence-transformers' CrossEncoder on the same weights: the reference scores."""
    import torch
    from sentence_transformers import CrossEncoder

    # CrossEncoder would keep the fp16 checkpoint in fp16 on CPU; the proxy computes in fp32.
    model = CrossEncoder(str(tiny_model), device="cpu", model_kwargs={"dtype": torch.float32})

    def score(query: str, docs: list[str]) -> list[float]:
        if not docs:
            return []
        return [float(s) for s in model.predict([(query, d) for d in docs], batch_size=16)]

    return score
