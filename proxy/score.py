"""Step 3 of a search, scoring: the window's texts, the model's scores, a permutation.

`window_texts` picks the text the model scores for each hit of the window (document fields,
a template, highlight fragments or a leading passage); `split_passages` cuts long documents
for `passages: max`. `score_window` awaits the `Reranker` (its cache first: a warm cache
answers without a task or a timer) within the rule's time budget and turns every failure into
a `RerankError`, which the flow fails open on. `rank` is pure: it returns a `Ranking`, a
permutation of the window with the new scores, and leaves the engine's response as it was,
so the engine's order stays available next to the new one (`answer.client_view` applies
either).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .config import RuleConfig, rule_text_fields
from .errors import NoReranker, RerankError, RerankTimeout
from .plan import SearchPlan
from .rerank.base import Reranker, check_scores

# -- the text the model scores -------------------------------------------------------


def _values_at(obj: Any, parts: Sequence[str]) -> list[str]:
    if isinstance(obj, list):
        # A loop, not a comprehension: one frame per level (see `filtering._fp_include`).
        out: list[str] = []
        for item in obj:
            out.extend(_values_at(item, parts))
        return out
    if not parts:
        if isinstance(obj, str):
            return [obj] if obj.strip() else []
        if isinstance(obj, (int, float)) and not isinstance(obj, bool):
            return [str(obj)]
        return []
    if not isinstance(obj, dict):
        return []
    # A dotted key stored flat ("a.b": ...) is as valid as a nested object.
    for cut in range(len(parts), 0, -1):
        key = ".".join(parts[:cut])
        if key in obj:
            return _values_at(obj[key], parts[cut:])
    return []


def field_text(source: Any, path: str) -> str:
    """Text of one (dotted) field; array values joined with spaces."""
    return " ".join(_values_at(source, path.split(".")))


def document_text(source: Any, rule: RuleConfig) -> str | None:
    """The text the model scores for one hit, or None when it has none of the fields."""
    if not isinstance(source, dict):
        return None
    if rule.template is not None:
        pieces = list(string.Formatter().parse(rule.template))
        values = {name: field_text(source, name) for _, name, _, _ in pieces if name}
        if not any(values.values()):
            return None
        # Rendered piece by piece (not with str.replace) so `{{`/`}}` become literal braces.
        text = "".join(literal + (values[name] if name else "") for literal, name, _, _ in pieces)
        return text.strip() or None
    if rule.fields:
        parts = [field_text(source, f) for f in rule.fields]
    else:
        parts = [" ".join(_values_at(v, [])) for v in source.values() if isinstance(v, (str, list))]
    joined = "\n".join(p for p in parts if p)
    return joined or None


def _highlight_text(hit: Mapping[str, Any], rule: RuleConfig) -> str | None:
    fragments = hit.get("highlight")
    if not isinstance(fragments, dict):
        return None
    wanted = rule_text_fields(rule) or tuple(fragments)
    lists = [fragments.get(name) for name in wanted]
    parts = [" ".join(f for f in fs if isinstance(f, str)) for fs in lists if isinstance(fs, list)]
    text = "\n".join(p for p in parts if p)
    return text or None


def window_texts(doc: Mapping[str, Any], plan: SearchPlan) -> list[str | None]:
    """Texts of the window's hits, in engine order (None: nothing to score)."""
    rule = plan.rule
    out: list[str | None] = []
    for hit in doc["hits"]["hits"][: rule.window]:
        text = _highlight_text(hit, rule) if rule.use_highlight else None
        if text is None:
            text = document_text(hit.get("_source"), rule)
        if text is not None and rule.leading_words is not None:
            text = " ".join(text.split()[: rule.leading_words])
        out.append(text)
    return out


def split_passages(text: str, rule: RuleConfig) -> list[str]:
    """Overlapping word windows of a document (`passages: max`); the whole text otherwise."""
    if rule.passages == "off":
        return [text]
    words = text.split()
    if len(words) <= rule.passage_words:
        return [text]
    starts = range(
        0, max(1, len(words) - rule.passage_words + rule.passage_stride), rule.passage_stride
    )
    return [" ".join(words[s : s + rule.passage_words]) for s in starts][: rule.max_passages]


# -- the permutation ----------------------------------------------------------------


def _normalise(values: Sequence[float]) -> list[float]:
    lo, hi = min(values), max(values)
    if hi - lo <= 0:
        return [1.0 for _ in values]
    return [(v - lo) / (hi - lo) for v in values]


@dataclass(frozen=True, slots=True)
class Ranking:
    """A new order for the window `[0, window)` of the engine's hits.

    `order` lists window positions best first: the scored hits by final score (ties keep
    the engine's order), then the hits without text in engine order; hits under `min_score`
    are left out. `scores[i]` is the new `_score` of `order[i]` (None: an unscored hit keeps
    the engine's). Hits past the window follow in engine order.
    """

    order: tuple[int, ...]
    scores: tuple[float | None, ...]
    window: int
    max_score: float | None
    pairs: int = 0  # (query, passage) pairs scored for it


def rank(
    window: Sequence[Mapping[str, Any]], rule: RuleConfig, scores: Sequence[float | None]
) -> Ranking:
    """The window's new order from model scores aligned with `window_texts`. Pure."""
    if len(scores) != len(window):
        raise ValueError("score count does not match the window")
    scored = [(i, s) for i, s in enumerate(scores) if s is not None]
    unscored = [i for i, s in enumerate(scores) if s is None]
    if any(not math.isfinite(s) for _, s in scored):
        raise ValueError("non-finite score")
    if rule.score_mode == "blend" and scored:
        engine = [_engine_score(window[i]) for i, _ in scored]
        model_n = _normalise([s for _, s in scored])
        engine_n = _normalise(engine)
        w = rule.blend_weight
        final = [w * m + (1 - w) * e for m, e in zip(model_n, engine_n, strict=True)]
    else:
        final = [s for _, s in scored]
    ranked = sorted(zip(scored, final, strict=True), key=lambda t: (-t[1], t[0][0]))
    if rule.min_score is not None:
        ranked = [r for r in ranked if r[0][1] >= rule.min_score]
    order = tuple([i for (i, _), _ in ranked] + unscored)
    new_scores: tuple[float | None, ...] = tuple([f for _, f in ranked] + [None] * len(unscored))
    return Ranking(
        order=order,
        scores=new_scores,
        window=len(window),
        max_score=max((f for _, f in ranked), default=None),
    )


def _engine_score(hit: Mapping[str, Any]) -> float:
    score = hit.get("_score")
    return float(score) if isinstance(score, (int, float)) else 0.0


async def score_window(
    reranker: Reranker | None,
    plan: SearchPlan,
    window: Sequence[Mapping[str, Any]],
    texts: Sequence[str | None],
    *,
    max_length: int,
) -> Ranking | None:
    """Score the window's texts and rank it; None when no hit has text (nothing to reorder).

    Raises `RerankError` (timeout, overload, invalid scores, any reranker failure): the
    caller serves the engine's order instead.
    """
    if reranker is None:
        raise NoReranker("no reranker loaded")
    docs = [t for t in texts if t is not None]
    if not docs:
        return None
    # One pair per passage; a document scores as its best passage (`passages: max`).
    passages = [split_passages(d, plan.rule) for d in docs]
    flat = [p for ps in passages for p in ps]
    try:
        # A warm cache answers without a task, a timer or the batcher.
        raw: Sequence[float] | None = reranker.cached(plan.query, flat, max_length=max_length)
        if raw is None:
            raw = await asyncio.wait_for(
                reranker.score(plan.query, flat, max_length=max_length),
                timeout=plan.rule.timeout_ms / 1000,
            )
        flat_scores = iter(check_scores(raw, len(flat)))
        scores = iter([max(next(flat_scores) for _ in ps) for ps in passages])
        aligned = [None if t is None else next(scores) for t in texts]
        return dataclasses.replace(rank(window, plan.rule, aligned), pairs=len(flat))
    except TimeoutError as exc:
        raise RerankTimeout(f"rerank exceeded {plan.rule.timeout_ms} ms") from exc
    except RerankError:
        raise
    except Exception as exc:
        raise RerankError(f"{type(exc).__name__}: {exc}") from exc
