"""Fixtures shared by every test layer: paths, the SciFact collection, the stand-in model."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxy import beir

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("RERANK_PROXY_SHARED", REPO_ROOT.parent / "shared"))
SCIFACT = SHARED / "data" / "scifact"
CACHE = Path(os.environ.get("RERANK_PROXY_STATE", Path.home() / ".cache" / "rerank-proxy"))


@dataclass(frozen=True, slots=True)
class SciFact:
    """SciFact's test split (read by `proxy.beir`) in the shapes the tests index and query."""

    corpus: dict[str, dict[str, str]]  # id -> {"title", "text"}
    queries: dict[str, str]  # id -> text
    qrels: dict[str, set[str]]  # query id -> relevant doc ids


def load_scifact() -> SciFact:
    if not SCIFACT.is_dir():
        pytest.skip(f"SciFact not found at {SCIFACT} (set RERANK_PROXY_SHARED)")
    data = beir.load_dataset(SCIFACT, "test")
    return SciFact(
        corpus={d.id: {"title": d.title, "text": d.text} for d in data.corpus.values()},
        queries={q.id: q.text for q in data.queries.values()},
        qrels={query_id: set(data.relevant(query_id)) for query_id in data.qrels},
    )


@pytest.fixture(scope="session")
def scifact() -> SciFact:
    return load_scifact()


def tiny_model_dir() -> Path:
    """The tiny stand-in model (same class, fewer and narrower layers), built once."""
    pytest.importorskip("torch")
    from devtools.standin import ensure_standin_model

    def texts() -> list[str]:
        data = load_scifact()
        return [f"{d['title']} {d['text']}" for d in list(data.corpus.values())[:3000]]

    return ensure_standin_model(CACHE / "models", texts, size="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    return tiny_model_dir()
