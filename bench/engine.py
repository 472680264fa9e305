"""The engine side of the end-to-end benchmarks: the local OpenSearch and SciFact in it.

Owns starting OpenSearch through `scripts/engine` (left running afterwards: other work shares
it), finding its process for CPU accounting, indexing SciFact into `INDEX` once (kept between
runs, re-indexed when the document count differs) with aliases, and the client's search body.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.loopback import http, http_json
from bench.paths import CACHE, REPO
from bench.report import log
from proxy import beir

ENGINE = "opensearch"
INDEX = "bench-scifact"


def search_body(query: str, size: int = 10) -> bytes:
    """The client's search: `multi_match` over title and text, top `size` hits."""
    body = {"query": {"multi_match": {"query": query, "fields": ["title", "text"]}}, "size": size}
    return json.dumps(body).encode()


def ensure_engine() -> str:
    """Start OpenSearch unless it runs (it is left running: other work shares it)."""
    script = [sys.executable, str(REPO / "scripts" / "engine")]
    probe = subprocess.run([*script, "url", ENGINE], capture_output=True, text=True, timeout=60)
    if probe.returncode == 0 and probe.stdout.strip():
        return probe.stdout.strip()
    log(f"starting {ENGINE} (scripts/engine start {ENGINE}) ...")
    proc = subprocess.run(
        [*script, "start", ENGINE],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        sys.exit(f"scripts/engine start {ENGINE} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout.strip()


def engine_pid() -> int | None:
    """The engine's process id (from scripts/engine's state), if it can be read."""
    state = Path(os.environ.get("RERANK_PROXY_STATE", CACHE)) / "engines" / ENGINE / "pid"
    try:
        return int(state.read_text().strip())
    except (OSError, ValueError):
        return None


def index_scifact(url: str, data: beir.Dataset, aliases: Sequence[str] = ()) -> None:
    """Index the SciFact corpus into `INDEX` once (kept between runs), plus aliases."""
    status, raw = http("GET", f"{url}/{INDEX}/_count")
    if status != 200 or json.loads(raw)["count"] != len(data.corpus):
        if status == 200:
            http("DELETE", f"{url}/{INDEX}")
        log(f"indexing {len(data.corpus)} SciFact documents into {INDEX} ...")
        http_json(
            "PUT",
            f"{url}/{INDEX}",
            {
                "settings": {"number_of_shards": 1, "number_of_replicas": 0},
                "mappings": {"properties": {"title": {"type": "text"}, "text": {"type": "text"}}},
            },
        )
        lines: list[str] = []
        items = list(data.corpus.items())
        for i, (doc_id, doc) in enumerate(items, 1):
            lines.append(json.dumps({"index": {"_index": INDEX, "_id": doc_id}}))
            lines.append(json.dumps({"title": doc.title, "text": doc.text}))
            if len(lines) >= 2000 or i == len(items):
                status, raw = http(
                    "POST", f"{url}/_bulk", ("\n".join(lines) + "\n").encode(), timeout=300
                )
                if status != 200 or json.loads(raw).get("errors"):
                    sys.exit(f"bulk indexing into {INDEX} failed: HTTP {status}: {raw[:300]!r}")
                lines = []
        http_json("POST", f"{url}/{INDEX}/_refresh")
    for alias in aliases:
        http_json("PUT", f"{url}/{INDEX}/_alias/{alias}")
