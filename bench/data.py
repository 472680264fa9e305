"""Benchmark inputs: SciFact queries and their BM25 top hits, and the stand-in model.

BM25 (k1=0.9, b=0.4 over lowercased alphanumeric tokens of title + text, the function the
engines use) ranks the corpus for each query; its top `window` documents are the pairs the
proxy would send to the model. SciFact is CC BY-NC: benchmarks only, never packaged.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCIFACT = Path(os.environ.get("RERANK_PROXY_SHARED", REPO.parent / "shared")) / "data" / "scifact"
CACHE = Path(os.environ.get("RERANK_PROXY_STATE", Path.home() / ".cache" / "rerank-proxy"))
_TOKEN = re.compile(r"[a-z0-9]+")


def read_jsonl(path: Path) -> list[dict[str, str]]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load(scifact: Path = SCIFACT) -> tuple[dict[str, str], dict[str, str], dict[str, set[str]]]:
    """(doc id -> "title\\ntext", query id -> text, query id -> relevant doc ids)."""
    corpus = {
        d["_id"]: f"{d['title']}\n{d['text']}" for d in read_jsonl(scifact / "corpus.jsonl.gz")
    }
    queries = {q["_id"]: q["text"] for q in read_jsonl(scifact / "queries.jsonl.gz")}
    qrels: dict[str, set[str]] = {}
    with gzip.open(scifact / "qrels" / "test.tsv.gz", "rt", encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            qid, did, _ = line.rstrip("\n").split("\t")
            qrels.setdefault(qid, set()).add(did)
    return corpus, queries, qrels


def bm25_top(
    corpus: dict[str, str], queries: list[str], k: int, k1: float = 0.9, b: float = 0.4
) -> list[list[str]]:
    ids = list(corpus)
    docs = [Counter(_TOKEN.findall(corpus[i].lower())) for i in ids]
    lengths = [sum(d.values()) for d in docs]
    avg = sum(lengths) / len(lengths)
    df: Counter[str] = Counter()
    for d in docs:
        df.update(d.keys())
    n = len(docs)
    out = []
    for q in queries:
        terms = set(_TOKEN.findall(q.lower()))
        scores = []
        for j, d in enumerate(docs):
            s = 0.0
            for t in terms:
                tf = d.get(t)
                if tf:
                    idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
                    s += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * lengths[j] / avg))
            scores.append(s)
        top = sorted(range(n), key=lambda j: -scores[j])[:k]
        out.append([ids[j] for j in top])
    return out


def workload(n_queries: int, window: int) -> list[tuple[str, list[str]]]:
    """[(query, [document text, ...])] for the first `n_queries` judged SciFact queries."""
    corpus, queries, qrels = load()
    qids = sorted(qrels, key=int)[:n_queries]
    texts = [queries[q] for q in qids]
    return [
        (q, [corpus[d] for d in top])
        for q, top in zip(texts, bm25_top(corpus, texts, window), strict=True)
    ]


def exact_model() -> Path:
    """The stand-in with the exact mxbai-rerank-xsmall-v1 geometry (built once, cached)."""
    from proxy.rerank.standin import ensure_standin_model

    def texts() -> list[str]:
        corpus, _, _ = load()
        return list(corpus.values())[:5000]

    return ensure_standin_model(CACHE / "models", texts, size="exact", seed=0)
