#!/usr/bin/env python3
"""Search OpenSearch through rerank-proxy with the official client (opensearch-py, async).

The only change an application makes is the URL: it points the client at the proxy instead of
the cluster. This script creates the index `articles` from sample-data/articles.jsonl when it
is missing (indexing passes through the proxy untouched), runs one search twice, once with
reranking switched off for that request (`X-Rerank: off`) to get the engine's order and once
normally, and prints the reranked hits next to their engine rank.

    python examples/opensearch_async.py [--url http://127.0.0.1:9280] [--query TEXT]

Exit status: 0 when the search was reranked, 1 on an error or no hits, 3 when the proxy
answered but did not rerank (the X-Rerank-Reason header says why).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from opensearchpy import AIOHttpConnection, AsyncOpenSearch, helpers
from opensearchpy.exceptions import OpenSearchException

SAMPLE = Path(__file__).resolve().parent / "sample-data" / "articles.jsonl"
MAPPINGS = {"properties": {"title": {"type": "text"}, "body": {"type": "text"}}}


class HeaderRecordingConnection(AIOHttpConnection):
    """Remembers the X-Rerank* headers of the last response.

    opensearch-py returns only the body of a response, so the proxy's headers are read at the
    connection level. (Rerank outcome without headers: each reranked hit also carries the
    engine's score in `fields._engine_score`.)
    """

    last: dict[str, str] = {}

    async def perform_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        status, headers, data = await super().perform_request(*args, **kwargs)
        HeaderRecordingConnection.last = {
            k: v for k, v in headers.items() if k.lower().startswith("x-rerank")
        }
        return status, headers, data


async def ensure_index(client: AsyncOpenSearch, index: str) -> None:
    if await client.indices.exists(index=index):
        return
    await client.indices.create(index=index, body={"mappings": MAPPINGS})
    with SAMPLE.open(encoding="utf-8") as f:
        docs = [json.loads(line) for line in f if line.strip()]
    ok, _ = await helpers.async_bulk(client, ({"_index": index, **d} for d in docs), refresh=True)
    print(f"created index {index!r} with {ok} articles")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("PROXY_URL", "http://127.0.0.1:9280"))
    parser.add_argument("--index", default="articles")
    parser.add_argument("--query", default="how does a search engine rank documents")
    parser.add_argument("--size", type=int, default=5)
    args = parser.parse_args()

    client = AsyncOpenSearch(
        hosts=[args.url],
        connection_class=HeaderRecordingConnection,
        # No sniffing: sniffing asks the cluster for its nodes' addresses and then connects
        # to them directly, which bypasses the proxy (and its reranking) altogether.
        sniff_on_start=False,
        sniff_on_connection_fail=False,
        sniffer_timeout=None,
        timeout=30,
    )
    try:
        await ensure_index(client, args.index)
        body = {
            "query": {"multi_match": {"query": args.query, "fields": ["title^2", "body"]}},
            "size": args.size,
        }
        # Per-request opt-out: the proxy passes this search through in the engine's order.
        # (size 50: deep enough to find where each reranked hit was in the engine's order)
        engine = await client.search(
            index=args.index, body={**body, "size": 50}, headers={"X-Rerank": "off"}
        )
        resp = await client.search(index=args.index, body=body)
        rerank = HeaderRecordingConnection.last
    except OpenSearchException as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        await client.close()

    engine_rank = {h["_id"]: i for i, h in enumerate(engine["hits"]["hits"], 1)}
    print(f"query: {args.query!r} via {args.url}")
    print("  ".join(f"{k}: {v}" for k, v in sorted(rerank.items())) or "no X-Rerank header")
    hits = resp["hits"]["hits"]
    for i, hit in enumerate(hits, 1):
        was = engine_rank.get(hit["_id"], "-")
        engine_score = hit.get("fields", {}).get("_engine_score", ["-"])[0]
        print(
            f"{i:2d}. (engine #{was}) score {hit['_score']:.4f}  engine {engine_score}"
            f"  {hit['_source']['title']}"
        )
    if not hits:
        print("error: no hits", file=sys.stderr)
        return 1
    if {k.lower(): v for k, v in rerank.items()}.get("x-rerank") != "applied":
        print("the proxy did not rerank this search (see X-Rerank-Reason)", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
