"""`--load`: index a BEIR corpus into the cluster, so eval runs end to end from a download.

The index is created when it does not exist (`title` and `text` as `text` fields, everything
else dynamic); documents go in with `_bulk` `index` actions under their BEIR `_id`, so loading
twice overwrites rather than duplicates. Batches are bounded by documents and bytes; any item
the engine rejects stops the load with its reason. The index is refreshed at the end, so the
searches that follow see every document.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
from yarl import URL

from ..beir import Document
from .errors import ClusterError
from .runner import Connection, error_reason, target_url

BATCH_DOCS = 500
BATCH_BYTES = 8 * 1024 * 1024
MAPPINGS = {"properties": {"title": {"type": "text"}, "text": {"type": "text"}}}


async def load_corpus(
    client: aiohttp.ClientSession,
    connection: Connection,
    base: str,
    index: str,
    corpus: Mapping[str, Document],
    *,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Index every document of `corpus` into `index`; the number indexed."""
    try:
        return await _load(client, connection, base, index, corpus, progress)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ClusterError(f"--load into {index!r}: {exc or type(exc).__name__}") from exc


async def _load(
    client: aiohttp.ClientSession,
    connection: Connection,
    base: str,
    index: str,
    corpus: Mapping[str, Document],
    progress: Callable[[int], None] | None,
) -> int:
    headers = connection.headers()
    index_url = target_url(base, index)
    async with client.head(index_url, headers=headers) as resp:
        exists = resp.status == 200
        if resp.status not in (200, 404):
            raise ClusterError(f"--load: HEAD {index}: HTTP {resp.status}")
    if not exists:
        body = json.dumps({"mappings": MAPPINGS}).encode()
        async with client.put(index_url, data=body, headers=headers) as resp:
            if resp.status >= 300:
                raise ClusterError(f"--load: creating {index!r}: {error_reason(await resp.read())}")
    bulk_url = target_url(base, index, "_bulk")
    bulk_headers = {**headers, "Content-Type": "application/x-ndjson"}
    lines: list[bytes] = []
    size = count = 0
    for doc in corpus.values():
        action = json.dumps({"index": {"_id": doc.id}}).encode()
        source = json.dumps({"title": doc.title, "text": doc.text}, ensure_ascii=False).encode()
        lines += [action, source]
        size += len(action) + len(source) + 2
        if len(lines) >= 2 * BATCH_DOCS or size >= BATCH_BYTES:
            count += await _bulk(client, bulk_url, bulk_headers, lines, index)
            if progress is not None:
                progress(len(lines) // 2)
            lines, size = [], 0
    if lines:
        count += await _bulk(client, bulk_url, bulk_headers, lines, index)
        if progress is not None:
            progress(len(lines) // 2)
    async with client.post(target_url(base, index, "_refresh"), headers=headers) as resp:
        if resp.status >= 300:
            raise ClusterError(f"--load: refreshing {index!r}: {error_reason(await resp.read())}")
    return count


async def _bulk(
    client: aiohttp.ClientSession,
    url: URL,
    headers: Mapping[str, str],
    lines: list[bytes],
    index: str,
) -> int:
    payload = b"\n".join(lines) + b"\n"
    async with client.post(url, data=payload, headers=headers) as resp:
        status, raw = resp.status, await resp.read()
    if status >= 300:
        raise ClusterError(f"--load: _bulk into {index!r}: HTTP {status}: {error_reason(raw)}")
    try:
        answer = json.loads(raw)
    except ValueError as exc:
        raise ClusterError(f"--load: _bulk into {index!r}: the answer is not JSON") from exc
    if answer.get("errors"):
        for item in answer.get("items", []):
            result: Any = next(iter(item.values()), {})
            error = result.get("error")
            if error:
                reason = error.get("reason") if isinstance(error, dict) else error
                raise ClusterError(
                    f"--load: document {result.get('_id')!r} rejected by {index!r}: {reason}"
                )
    return len(answer.get("items", []))
