"""The comparison page's two columns, built from one engine response. Pure.

`side_by_side` takes the engine's answer to the widened search, the two client views built
from it by `answer.client_view` (the engine's order and the `Ranking`'s), the texts the model
scored (`score.window_texts`) and, optionally, the judged query it matched, and returns one
row per hit of each view: its rank in both orders, the engine's score, the model's score
(the blended score in `score_mode: blend`), how the reranker moved it, the text the model
saw and its judgment. Movement is what the reranker did to the hit, in both columns:

- `up` / `down` / `same`: its reranked rank is better / worse / equal;
- `new` (reranked column): it was not in the engine's top N;
- `out` (engine column): it is not in the reranked top N (moved down past N, or left out
  under `min_score`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from ..score import Ranking
from .judgments import Match, ndcg

Movement = Literal["up", "down", "same", "new", "out"]
Key = tuple[str, str]


def _key(hit: Any) -> Key:
    if not isinstance(hit, dict):
        return ("", "")
    return (str(hit.get("_index", "")), str(hit.get("_id", "")))


def _hits(doc: Any) -> list[Any]:
    hits = doc.get("hits") if isinstance(doc, dict) else None
    inner = hits.get("hits") if isinstance(hits, dict) else None
    return inner if isinstance(inner, list) else []


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _compare(before: int, after: int) -> Movement:
    return "up" if after < before else "down" if after > before else "same"


def side_by_side(
    doc: Mapping[str, Any],
    engine_view: Any,
    reranked_view: Any,
    ranking: Ranking | None,
    texts: Sequence[str | None],
    match: Match | None,
    size: int,
) -> dict[str, Any]:
    """The `engine` and `reranked` rows, and nDCG@size of both when the query is judged."""
    fetched = _hits(doc)
    engine_rank = {_key(h): i + 1 for i, h in enumerate(fetched)}
    engine_score = {_key(h): _number(h.get("_score")) for h in fetched if isinstance(h, dict)}
    text = {_key(h): t for h, t in zip(fetched, texts, strict=False)}
    model_score: dict[Key, float | None] = {}
    if ranking is not None:
        window = fetched[: ranking.window]
        for position, score in zip(ranking.order, ranking.scores, strict=True):
            model_score[_key(window[position])] = score
    engine_hits, reranked_hits = _hits(engine_view), _hits(reranked_view)
    reranked_rank = {_key(h): i + 1 for i, h in enumerate(reranked_hits)}

    def grade(hit: Any) -> int | None:
        if match is None or not isinstance(hit, dict):
            return None
        return match.grades.get(str(hit.get("_id", "")))

    def row(hit: Any, rank: int, column: Literal["engine", "reranked"]) -> dict[str, Any]:
        key = _key(hit)
        before = engine_rank.get(key, rank)
        after = reranked_rank.get(key)
        movement: Movement
        if column == "reranked":
            movement = "new" if before > size else _compare(before, rank)
        else:
            movement = "out" if after is None else _compare(rank, after)
        return {
            "rank": rank,
            "id": key[1],
            "index": key[0],
            "engine_rank": before,
            "reranked_rank": after,
            "delta": None if after is None else before - after,
            "movement": movement,
            "engine_score": engine_score.get(key),
            "model_score": model_score.get(key),
            "text": text.get(key),
            "judgment": grade(hit),
        }

    engine_rows = [row(h, i + 1, "engine") for i, h in enumerate(engine_hits)]
    reranked_rows = [row(h, i + 1, "reranked") for i, h in enumerate(reranked_hits)]
    metrics: dict[str, Any] | None = None
    if match is not None:
        metrics = {"k": size}
        for name, rows in (("engine", engine_rows), ("reranked", reranked_rows)):
            grades = [r["judgment"] for r in rows]
            metrics[name] = {
                "ndcg": ndcg(grades, match.grades, size),
                "relevant": sum(1 for g in grades if g is not None and g > 0),
                "judged": sum(1 for g in grades if g is not None),
            }
    return {"engine": engine_rows, "reranked": reranked_rows, "metrics": metrics}
