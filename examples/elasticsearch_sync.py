#!/usr/bin/env python3
"""Search Elasticsearch through rerank-proxy with the official client (elasticsearch-py, sync).

The only change an application makes is the URL: it points the client at the proxy instead of
the cluster. This script creates the index `articles` from sample-data/articles.jsonl when it
is missing (indexing passes through the proxy untouched), runs one search twice, once with
reranking switched off for that request (`X-Rerank: off`) to get the engine's order and once
normally, and prints the reranked hits next to their engine rank.

    python examples/elasticsearch_sync.py [--url http://127.0.0.1:9280] [--query TEXT]

Written against `elasticsearch` (8.x/9.x, the usual install). Where only the versioned
packages `elasticsearch8` / `elasticsearch7` are installed, the one matching the server's major
version is used; with 7.x, which returns plain dicts without headers, the outcome is read from
the `fields._engine_score` the proxy adds to reranked hits.

Exit status: 0 when the search was reranked, 1 on an error or no hits, 3 when the proxy
answered but did not rerank (the X-Rerank-Reason header says why).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

SAMPLE = Path(__file__).resolve().parent / "sample-data" / "articles.jsonl"
MAPPINGS = {"properties": {"title": {"type": "text"}, "body": {"type": "text"}}}


def client_module(url: str) -> ModuleType:
    """`elasticsearch` when installed, else the versioned package matching the server."""
    try:
        return importlib.import_module("elasticsearch")
    except ImportError:
        pass
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url.rstrip("/") + "/", timeout=10) as resp:
        major = json.load(resp)["version"]["number"].split(".")[0]
    if major != "7":
        return importlib.import_module("elasticsearch8")
    # elasticsearch7 before 7.14 (the versions that accept OSS/runner builds) names
    # `numpy.float_`, which NumPy 2 removed: alias it back before the import.
    try:
        import numpy

        if not hasattr(numpy, "float_"):
            numpy.float_ = numpy.float64  # type: ignore[attr-defined]
    except ImportError:
        pass
    return importlib.import_module("elasticsearch7")


def connect(es: ModuleType, url: str) -> Any:
    # No sniffing: sniffing asks the cluster for its nodes' addresses and then connects to
    # them directly, which bypasses the proxy (and its reranking) altogether.
    if es.VERSION[0] >= 8:
        return es.Elasticsearch(
            url,
            sniff_on_start=False,
            sniff_before_requests=False,
            sniff_on_node_failure=False,
            request_timeout=30,
        )
    return es.Elasticsearch(
        [url],
        sniff_on_start=False,
        sniff_on_connection_fail=False,
        sniffer_timeout=None,
        timeout=30,
    )


def search(es: ModuleType, client: Any, index: str, body: dict[str, Any], **headers: str) -> Any:
    if es.VERSION[0] >= 8:
        # Per-request headers go through .options(); the body's keys are keyword arguments.
        return (client.options(headers=headers) if headers else client).search(index=index, **body)
    return client.search(index=index, body=body, headers=headers or None)


def ensure_index(es: ModuleType, client: Any, index: str) -> None:
    if client.indices.exists(index=index):
        return
    if es.VERSION[0] >= 8:
        client.indices.create(index=index, mappings=MAPPINGS)
    else:  # 7.x before 7.15 takes request bodies only as `body`
        client.indices.create(index=index, body={"mappings": MAPPINGS})
    with SAMPLE.open(encoding="utf-8") as f:
        docs = [json.loads(line) for line in f if line.strip()]
    helpers = importlib.import_module(es.__name__ + ".helpers")
    ok, _ = helpers.bulk(client, ({"_index": index, **d} for d in docs), refresh=True)
    print(f"created index {index!r} with {ok} articles")


def rerank_outcome(resp: Any) -> tuple[str, str]:
    """(outcome, the X-Rerank* headers as text) from the response."""
    meta = getattr(resp, "meta", None)  # elasticsearch-py 8+: ObjectApiResponse
    if meta is not None:
        found = {k: v for k, v in meta.headers.items() if k.lower().startswith("x-rerank")}
        text = "  ".join(f"{k}: {v}" for k, v in sorted(found.items()))
        return meta.headers.get("X-Rerank", "none"), text or "no X-Rerank header"
    hits = resp["hits"]["hits"]
    reranked = bool(hits) and all("_engine_score" in h.get("fields", {}) for h in hits)
    return ("applied" if reranked else "unknown"), (
        "7.x client: no response headers; "
        + (
            "hits carry fields._engine_score, so they were reranked"
            if reranked
            else "no fields._engine_score in the hits"
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("PROXY_URL", "http://127.0.0.1:9280"))
    parser.add_argument("--index", default="articles")
    parser.add_argument("--query", default="how does a search engine rank documents")
    parser.add_argument("--size", type=int, default=5)
    args = parser.parse_args()

    try:
        es = client_module(args.url)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    errors = tuple(
        getattr(es, name)
        for name in ("ApiError", "TransportError", "ElasticsearchException")
        if hasattr(es, name)
    )
    client = connect(es, args.url)
    try:
        ensure_index(es, client, args.index)
        body = {
            "query": {"multi_match": {"query": args.query, "fields": ["title^2", "body"]}},
            "size": args.size,
        }
        # Per-request opt-out: the proxy passes this search through in the engine's order.
        # (size 50: deep enough to find where each reranked hit was in the engine's order)
        engine = search(es, client, args.index, {**body, "size": 50}, **{"X-Rerank": "off"})
        resp = search(es, client, args.index, body)
    except errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()

    outcome, header_text = rerank_outcome(resp)
    engine_rank = {h["_id"]: i for i, h in enumerate(engine["hits"]["hits"], 1)}
    print(f"query: {args.query!r} via {args.url} (client {es.__name__} {es.__versionstr__})")
    print(header_text)
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
    if outcome != "applied":
        print("the proxy did not rerank this search (see X-Rerank-Reason)", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
