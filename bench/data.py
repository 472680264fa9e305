"""Benchmark inputs: SciFact (read by `proxy.beir`), its BM25 top hits, and the stand-in model.

BM25 (k1=0.9, b=0.4 over lowercased alphanumeric tokens of title + text, the function the
engines use) ranks the corpus for each query; its top `window` documents are the pairs the
proxy would send to the model. The model is the random-weight stand-in with the exact
mxbai-rerank-xsmall-v1 geometry, built once by `devtools.standin` into the state root.
SciFact is CC BY-NC: benchmarks only, never packaged.
"""

from __future__ import annotations

import math
import re
import sys
from collections import Counter
from pathlib import Path

from bench.paths import CACHE, SCIFACT
from proxy import beir

_TOKEN = re.compile(r"[a-z0-9]+")


def load_scifact(path: Path = SCIFACT) -> beir.Dataset:
    """SciFact's test split; exits with the reason when it is missing or malformed."""
    if not path.is_dir():
        sys.exit(f"SciFact not found at {path} (set RERANK_PROXY_SHARED)")
    try:
        return beir.load_dataset(path, "test")
    except beir.BeirError as exc:
        sys.exit(f"SciFact: {exc}")


def doc_text(doc: beir.Document) -> str:
    """The text the model scores for a document: title, newline, text."""
    return f"{doc.title}\n{doc.text}"


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
    scifact = load_scifact()
    corpus = {doc_id: doc_text(doc) for doc_id, doc in scifact.corpus.items()}
    qids = sorted(scifact.qrels, key=int)[:n_queries]
    texts = [scifact.queries[q].text for q in qids]
    return [
        (q, [corpus[d] for d in top])
        for q, top in zip(texts, bm25_top(corpus, texts, window), strict=True)
    ]


def exact_model() -> Path:
    """The stand-in with the exact mxbai-rerank-xsmall-v1 geometry (built once, ~70-120 s)."""
    from devtools.standin import ensure_standin_model

    def texts() -> list[str]:
        return [doc_text(doc) for doc in list(load_scifact().corpus.values())[:5000]]

    return ensure_standin_model(CACHE / "models", texts, size="exact", seed=0)
