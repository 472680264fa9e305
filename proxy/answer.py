"""Step 4 of a search, answering: the client's view of the engine's response. Pure.

`client_view` builds what the client's own request asked for from the engine's answer to
the widened search: hits in the `Ranking`'s order (or the engine's, when there is none:
skips and fail-open), the `[from, from+size)` page, the client's `_source` filtering and its
`filter_path`. It returns a new document and never changes the engine's, so both orders can
be served from one response (fail-open, shadow mode, side-by-side comparison).
"""

from __future__ import annotations

import math
from typing import Any

from .filtering import apply_filter_path
from .plan import SearchPlan
from .score import Ranking

ENGINE_SCORE_FIELD = "_engine_score"


def _ordered(hits: list[Any], ranking: Ranking | None) -> list[tuple[Any, bool, float | None]]:
    """(hit, reranked window member, new score) in the order the client sees them."""
    if ranking is None:
        return [(h, False, None) for h in hits]
    window = hits[: ranking.window]
    out = [(window[i], True, s) for i, s in zip(ranking.order, ranking.scores, strict=True)]
    out.extend((h, False, None) for h in hits[ranking.window :])
    return out


def _hit_view(hit: Any, plan: SearchPlan, reranked: bool, score: float | None, expose: bool) -> Any:
    if not isinstance(hit, dict):
        return hit
    out = dict(hit)
    if reranked and expose:
        fields = out.get("fields", {})
        if isinstance(fields, dict):
            out["fields"] = {**fields, ENGINE_SCORE_FIELD: [hit.get("_score")]}
    if score is not None:
        out["_score"] = score
        if isinstance(out.get("sort"), list) and len(out["sort"]) == 1:
            out["sort"] = [score]  # an explicit `sort: _score` reports the score it sorted by
    sf = plan.source_filter
    if sf is not None:
        if not sf.enabled:
            out.pop("_source", None)
        elif "_source" in out:
            out["_source"] = sf.apply(out["_source"])
    return out


def client_view(
    doc: dict[str, Any],
    plan: SearchPlan,
    ranking: Ranking | None = None,
    *,
    apply_path: bool = True,
    took_ms: float = 0.0,
) -> Any:
    """What the client's own request asks for, in `ranking`'s order (None: the engine's).

    `apply_path=False` leaves `filter_path` out (an `_msearch` applies it once, to the whole
    response). `took_ms`, the proxy's own time for this search, is added to the engine's
    `took` (rounded up), so dashboards built on `took` see the search as the client waited
    for it; `X-Rerank-Took-Ms` keeps the split.
    """
    took = doc.get("took")
    if took_ms > 0 and isinstance(took, int) and not isinstance(took, bool):
        doc = {**doc, "took": took + math.ceil(took_ms)}
    hits = doc.get("hits")
    if isinstance(hits, dict) and isinstance(hits.get("hits"), list):
        page = _ordered(hits["hits"], ranking)[plan.from_ : plan.from_ + plan.size]
        expose = plan.rule.expose_engine_score
        new_hits = dict(hits)
        new_hits["hits"] = [_hit_view(h, plan, r, s, expose) for h, r, s in page]
        if ranking is not None and ranking.max_score is not None:
            new_hits["max_score"] = ranking.max_score
        doc = {**doc, "hits": new_hits}
    if apply_path and plan.filter_path:
        return apply_filter_path(doc, plan.filter_path)
    return doc
