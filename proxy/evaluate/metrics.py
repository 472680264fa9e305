"""Measures, paired comparisons and latency figures for `rerank-proxy eval`.

Effectiveness comes from `ir_measures` (pytrec_eval for nDCG, recall and AP, its msmarco
provider for RR with a cut-off), never from hand-written formulas. A run is the ranked list of
document keys a system returned; `to_run` gives it the strictly decreasing scores the TREC run
files carry, so `trec_eval` and `ir_measures.read_trec_run` see the same order (the engines'
own scores tie and a reranked window's scores sit below the engine's past it). Every scored
query gets a value for every measure: a query a system returned nothing for scores 0 (as
`trec_eval -c`), instead of vanishing from the mean. Comparisons against the engine's order
are paired, per query: wins/ties/losses and a two-sided p-value (`scipy.stats.ttest_rel`
when scipy is installed, else a seeded sign-flip randomization test).
"""

from __future__ import annotations

import importlib
import math
import random
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from .errors import UsageError

CUTOFFS: Final = (1, 3, 5, 10, 20, 50, 100, 200, 500, 1000)
TIE: Final = 1e-9  # per-query differences smaller than this are ties
ROUNDS: Final = 10_000  # randomization test rounds


def cutoffs(size: int) -> list[int]:
    """The cut-offs k the curves are drawn at: the usual ones below `size`, and `size`."""
    return [k for k in CUTOFFS if k < size] + [size]


def canonical(name: str, *, option: str = "--metric") -> str:
    """The `ir_measures` spelling of a measure (`ndcg@10` -> `nDCG@10`); UsageError if it
    is none."""
    import ir_measures

    try:
        measure = ir_measures.parse_measure(name)
    except (ValueError, NameError, SyntaxError, TypeError, AttributeError) as exc:
        raise UsageError(
            f"{option}: {name!r} is not an ir_measures measure (e.g. nDCG@10, RR@10, R@100, AP)"
        ) from exc
    return str(measure)


def headline(primary: str, size: int) -> list[str]:
    """The measures of the summary table: the primary one first, then nDCG@10, RR@10,
    R@size and AP."""
    out = [canonical(primary)]
    for name in ("nDCG@10", "RR@10", f"R@{size}", "AP"):
        if name not in out:
            out.append(name)
    return out


def curve(size: int) -> list[str]:
    """The measures of the cut-off plot: nDCG@k and R@k for each cut-off."""
    return [f"{m}@{k}" for m in ("nDCG", "R") for k in cutoffs(size)]


def to_run(docs: Sequence[str]) -> dict[str, float]:
    """A ranked list as `ir_measures` runs and TREC run files hold it: document -> score,
    the scores strictly decreasing with rank (n, n-1, ..., 1)."""
    return {doc: float(len(docs) - rank) for rank, doc in enumerate(docs)}


@dataclass(frozen=True, slots=True)
class Scores:
    """One system's values: measure -> query id -> value, for every scored query."""

    per_query: Mapping[str, Mapping[str, float]]

    def mean(self, measure: str) -> float:
        values = self.per_query[measure]
        return math.fsum(values.values()) / len(values) if values else math.nan


def evaluate(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    measures: Sequence[str],
    queries: Sequence[str],
) -> Scores:
    """Every measure for every query of `queries` (0 where the run has nothing for it)."""
    import ir_measures

    parsed = [ir_measures.parse_measure(m) for m in measures]
    values: dict[str, dict[str, float]] = {str(m): dict.fromkeys(queries, 0.0) for m in parsed}
    judged = {q: dict(qrels[q]) for q in queries}
    ranked = {q: dict(run[q]) for q in queries if run.get(q)}
    if ranked:
        for metric in ir_measures.iter_calc(parsed, judged, ranked):
            values[str(metric.measure)][metric.query_id] = float(metric.value)
    return Scores(values)


# -- paired comparison ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Comparison:
    """`system` against `baseline` on one measure, query by query."""

    system: str
    baseline: str
    measure: str
    mean_delta: float
    wins: int
    ties: int
    losses: int
    test: str
    p_value: float | None  # None: too few queries (or no variation to test)


def compare(
    system: str,
    baseline: str,
    measure: str,
    ours: Mapping[str, float],
    theirs: Mapping[str, float],
    *,
    seed: int = 0,
) -> Comparison:
    """Wins, ties, losses and a two-sided paired p-value of `ours` against `theirs`."""
    queries = list(theirs)
    a = [theirs[q] for q in queries]
    b = [ours[q] for q in queries]
    deltas = [y - x for x, y in zip(a, b, strict=True)]
    test, p = paired_test(a, b, seed=seed)
    return Comparison(
        system=system,
        baseline=baseline,
        measure=measure,
        mean_delta=math.fsum(deltas) / len(deltas) if deltas else math.nan,
        wins=sum(d > TIE for d in deltas),
        ties=sum(abs(d) <= TIE for d in deltas),
        losses=sum(d < -TIE for d in deltas),
        test=test,
        p_value=p,
    )


def paired_test(
    a: Sequence[float], b: Sequence[float], *, seed: int = 0
) -> tuple[str, float | None]:
    """(test name, two-sided p-value) for paired samples; scipy's t-test when installed."""
    try:
        stats = importlib.import_module("scipy.stats")
    except ImportError:
        return (
            f"randomization test (sign flips, {ROUNDS} rounds, seed {seed})",
            randomization_test(a, b, seed=seed),
        )
    return "paired t-test (scipy.stats.ttest_rel)", t_test(a, b, stats)


def t_test(a: Sequence[float], b: Sequence[float], stats: Any = None) -> float | None:
    """Two-sided paired t-test p-value (`scipy.stats.ttest_rel`)."""
    if stats is None:
        stats = importlib.import_module("scipy.stats")
    deltas = [y - x for x, y in zip(a, b, strict=True)]
    if len(deltas) < 2:
        return None
    if max(deltas) - min(deltas) <= TIE:
        # No variation: scipy would divide by zero. Identical runs differ by nothing (p=1);
        # a constant non-zero shift on every query is as certain as a difference gets.
        return 1.0 if abs(deltas[0]) <= TIE else 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(stats.ttest_rel(list(b), list(a)).pvalue)
    return None if math.isnan(p) else p


def randomization_test(
    a: Sequence[float], b: Sequence[float], *, seed: int = 0, rounds: int = ROUNDS
) -> float | None:
    """Two-sided paired randomization test: how often randomly flipping the sign of each
    query's difference gives a mean at least as far from 0 as the observed one."""
    deltas = [y - x for x, y in zip(a, b, strict=True)]
    if not deltas:
        return None
    observed = abs(math.fsum(deltas))
    rng = random.Random(seed)
    extreme = 0
    for _ in range(rounds):
        flipped = math.fsum(d if rng.random() < 0.5 else -d for d in deltas)
        if abs(flipped) >= observed - TIE:
            extreme += 1
    return (extreme + 1) / (rounds + 1)


# -- latency --------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float | None:
    """Linear-interpolated percentile (p in 0..100); None for no values."""
    if not values:
        return None
    xs = sorted(values)
    k = (len(xs) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def latency_ms(seconds: Sequence[float]) -> dict[str, float | None]:
    """p50, p95 and mean of per-query latencies, in milliseconds."""
    ms = [s * 1000 for s in seconds]
    return {
        "p50": percentile(ms, 50),
        "p95": percentile(ms, 95),
        "mean": math.fsum(ms) / len(ms) if ms else None,
    }
