"""Fixtures shared by every test layer: paths, the SciFact collection, the stand-in model."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("RERANK_PROXY_SHARED", REPO_ROOT.parent / "shared"))
SCIFACT = SHARED / "data" / "scifact"
CACHE = Path(os.environ.get("RERANK_PROXY_STATE", Path.home() / ".cache" / "rerank-proxy"))


@dataclass(frozen=True, slots=True)
class SciFact:
    corpus: dict[str, dict[str, str]]  # id -> {"title", "text"}
    queries: dict[str, str]  # id -> text
    qrels: dict[str, set[str]]  # query id -> relevant doc ids


def _jsonl(path: Path) -> Iterator[dict[str, str]]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def load_scifact() -> SciFact:
    if not SCIFACT.is_dir():
        pytest.skip(f"SciFact not found at {SCIFACT} (set RERANK_PROXY_SHARED)")
    corpus = {
        d["_id"]: {"title": d["title"], "text": d["text"]}
        for d in _jsonl(SCIFACT / "corpus.jsonl.gz")
    }
    queries = {q["_id"]: q["text"] for q in _jsonl(SCIFACT / "queries.jsonl.gz")}
    qrels: dict[str, set[str]] = {}
    with gzip.open(SCIFACT / "qrels" / "test.tsv.gz", "rt", encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            qid, did, _score = line.rstrip("\n").split("\t")
            qrels.setdefault(qid, set()).add(did)
    return SciFact(corpus, queries, qrels)


@pytest.fixture(scope="session")
def scifact() -> SciFact:
    return load_scifact()


def tiny_model_dir() -> Path:
    """The tiny stand-in model (same class, fewer and narrower layers), built once."""
    pytest.importorskip("torch")
    from proxy.rerank.standin import ensure_standin_model

    def texts() -> list[str]:
        data = load_scifact()
        return [f"{d['title']} {d['text']}" for d in list(data.corpus.values())[:3000]]

    return ensure_standin_model(CACHE / "models", texts, size="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    return tiny_model_dir()
