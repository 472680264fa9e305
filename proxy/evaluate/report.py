"""The output folder of `rerank-proxy eval`: report.json, report.md, TREC runs and qrels.

`Evaluation` holds everything a run found; `write` lays it out under `--out`:
`report.json` (every figure, per query too), `report.md` (the summary; its first line says
so when a system's model is the random-weight stand-in), `runs/<system>.run` (TREC run
files, `qid Q0 docid rank score tag`, the scores strictly decreasing with rank) and
`qrels.trec` (the judgements of the scored queries), so `trec_eval -c -m ndcg_cut.10
qrels.trec runs/engine.run` and `ir_measures` on the files give the report's numbers.
Identifiers with whitespace or `%` are percent-encoded in those two files (TREC files are
whitespace-separated). The plots are `plots`' job.
"""

from __future__ import annotations

import datetime
import json
import math
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from .. import __version__
from .judgments import Judgments
from .metrics import Comparison, Scores, latency_ms
from .runner import SystemRun

REAL_MODEL: Final = "mixedbread-ai/mxbai-rerank-xsmall-v1"
_UNSAFE: Final = re.compile(r"[\s%]")
# trec_eval's names for the measures of the summary, for the reproduction hint.
_TREC_EVAL: Final = {"nDCG": "ndcg_cut", "R": "recall", "P": "P", "AP": "map"}


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Everything one `eval` run found."""

    judgments: Judgments
    index: str
    cluster: str
    size: int
    primary: str
    measures: tuple[str, ...]  # the summary's, primary first
    curve: tuple[str, ...]  # nDCG@k and R@k for the cut-off plot
    scored: tuple[str, ...]  # the queries every mean is over
    absent: tuple[str, ...]  # judged relevant documents: none in the index
    no_relevant: tuple[str, ...]  # judged, but nothing judged relevant
    systems: tuple[SystemRun, ...]  # the engine's order first
    scores: Mapping[str, Scores]  # system -> values
    comparisons: tuple[Comparison, ...]  # each reranked system against the engine
    notes: tuple[str, ...] = ()

    @property
    def baseline(self) -> SystemRun:
        return self.systems[0]

    def comparison(self, system: str, measure: str) -> Comparison | None:
        for c in self.comparisons:
            if c.system == system and c.measure == measure:
                return c
        return None


def trec_id(value: str) -> str:
    """An identifier as TREC files can hold it: whitespace and `%` percent-encoded."""
    return _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), value)


def run_lines(system: SystemRun, queries: Sequence[str]) -> Iterator[str]:
    """`qid Q0 docid rank score tag` lines of `queries`, best first, score = n - rank + 1."""
    for qid in queries:
        result = system.results.get(qid)
        docs = result.docs if result is not None else ()
        for rank, doc in enumerate(docs, 1):
            yield f"{trec_id(qid)} Q0 {trec_id(doc)} {rank} {len(docs) - rank + 1} {system.name}"


def qrels_lines(qrels: Mapping[str, Mapping[str, int]], queries: Sequence[str]) -> Iterator[str]:
    """`qid 0 docid grade` lines of the judgements of `queries`."""
    for qid in queries:
        for doc, grade in qrels[qid].items():
            yield f"{trec_id(qid)} 0 {trec_id(doc)} {grade}"


def standins(ev: Evaluation) -> list[SystemRun]:
    """The systems whose model is the random-weight stand-in."""
    return [s for s in ev.systems if s.standin]


def write(ev: Evaluation, out: Path) -> dict[str, Path]:
    """Write the report files under `out`; name -> path of each file written."""
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for system in ev.systems:
        path = runs / f"{system.name}.run"
        path.write_text("".join(line + "\n" for line in run_lines(system, ev.scored)))
        written[f"run:{system.name}"] = path
    qrels = out / "qrels.trec"
    qrels.write_text("".join(line + "\n" for line in qrels_lines(ev.judgments.qrels, ev.scored)))
    written["qrels"] = qrels
    doc = to_json(ev)
    (out / "report.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    written["json"] = out / "report.json"
    (out / "report.md").write_text(markdown(ev))
    written["markdown"] = out / "report.md"
    return written


# -- report.json ----------------------------------------------------------------------------


def _number(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


def to_json(ev: Evaluation) -> dict[str, Any]:
    """The whole report as JSON-ready data."""
    j = ev.judgments
    systems = []
    for s in ev.systems:
        results = [s.results[q] for q in ev.scored if q in s.results]
        systems.append(
            {
                "name": s.name,
                "kind": s.kind,
                "url": s.url,
                "config": s.source,
                "window": s.window,
                "model": s.model,
                "standin": s.standin,
                "run_file": f"runs/{s.name}.run",
                "means": {m: _number(ev.scores[s.name].mean(m)) for m in ev.measures + ev.curve},
                "latency_ms": latency_ms([r.seconds for r in results]),
                "queries_per_second": len(results) / s.wall_seconds if s.wall_seconds else None,
                "wall_seconds": s.wall_seconds,
                "rerank_outcomes": dict(Counter(r.rerank for r in results if r.rerank)),
                "no_hits": [q for q in ev.scored if not s.results[q].docs],
                "partial_answers": [q for q in ev.scored if s.results[q].problem],
                "repeated_hits": sum(r.repeated for r in results),
                "time_split_seconds": dict(s.time_split),
            }
        )
    return {
        "tool": "rerank-proxy eval",
        "version": __version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "input": {
            "format": j.format,
            "source": j.source,
            "topics": len(j.topics),
            "judged": len(j.judged()),
            "key_by_index": j.key_by_index,
        },
        "index": ev.index,
        "cluster": ev.cluster,
        "size": ev.size,
        "primary": ev.primary,
        "measures": list(ev.measures),
        "queries": {
            "scored": len(ev.scored),
            "absent": list(ev.absent),
            "no_relevant": list(ev.no_relevant),
        },
        "systems": systems,
        "comparisons": [
            {
                "system": c.system,
                "baseline": c.baseline,
                "measure": c.measure,
                "mean_delta": _number(c.mean_delta),
                "wins": c.wins,
                "ties": c.ties,
                "losses": c.losses,
                "test": c.test,
                "p_value": c.p_value,
            }
            for c in ev.comparisons
        ],
        "per_query": {
            s.name: {
                "values": {m: dict(ev.scores[s.name].per_query[m]) for m in ev.measures},
                "latency_ms": {q: s.results[q].seconds * 1000 for q in ev.scored},
                "rerank": {q: s.results[q].rerank for q in ev.scored if s.results[q].rerank},
            }
            for s in ev.systems
        },
        "notes": list(ev.notes),
    }


# -- report.md ------------------------------------------------------------------------------


def _f(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _p(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "<0.0001" if value < 0.0001 else f"{value:.4f}"


def _trec_eval_name(measure: str) -> str | None:
    name, _, cut = measure.partition("@")
    if name == "AP" and not cut:
        return "map"
    if name in _TREC_EVAL and cut and name != "AP":
        return f"{_TREC_EVAL[name]}.{cut}"
    return None


def markdown(ev: Evaluation) -> str:
    """The Markdown summary; its first line warns when a model is the stand-in."""
    lines: list[str] = []
    fake = standins(ev)
    if fake:
        names = ", ".join(f"`{s.name}` ({s.model})" for s in fake)
        lines += [
            f"> **STAND-IN MODEL: random weights, the reranked order is MEANINGLESS** in {names}."
            f" Point model.name at the real {REAL_MODEL} for real numbers.",
            "",
        ]
    j = ev.judgments
    lines += [f"# rerank-proxy eval: `{ev.index}`", ""]
    lines.append(
        f"{len(ev.scored)} queries scored ({j.format} `{j.source}`: {len(j.topics)} topics,"
        f" {len(j.judged())} judged); top {ev.size} hits per query from {ev.cluster}."
    )
    if ev.absent or ev.no_relevant:
        lines.append(
            f"Not scored (see below): {len(ev.absent)} whose relevant documents are all absent"
            f" from the index, {len(ev.no_relevant)} with no document judged relevant."
        )
    lines.append("")
    head = ["system", *ev.measures, f"Δ {ev.primary}", "wins/ties/losses", "p", "p50 ms"]
    head += ["p95 ms", "reranked"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in ev.systems:
        results = [s.results[q] for q in ev.scored]
        lat = latency_ms([r.seconds for r in results])
        cells = [s.name + (" (stand-in)" if s.standin else "")]
        cells += [_f(ev.scores[s.name].mean(m)) for m in ev.measures]
        c = ev.comparison(s.name, ev.primary)
        if c is None:
            cells += ["", "", ""]
        else:
            cells += [f"{c.mean_delta:+.4f}", f"{c.wins}/{c.ties}/{c.losses}", _p(c.p_value)]
        cells += [_ms(lat["p50"]), _ms(lat["p95"])]
        outcomes = Counter(r.rerank for r in results if r.rerank)
        applied = outcomes.get("applied", 0)
        cells.append("-" if s.kind == "engine" else f"{applied}/{len(results)}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if ev.comparisons:
        test = ev.comparisons[0].test
        lines.append(
            f"Δ, wins/ties/losses and p: each system against `{ev.baseline.name}` (the engine's"
            f" own order), per query, on {ev.primary}; p from a two-sided {test}."
            " Other measures' comparisons are in report.json."
        )
        lines.append("")
    lines += _outcome_lines(ev)
    lines += _split_lines(ev)
    lines += _excluded_lines(ev)
    if ev.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in ev.notes] + [""]
    lines += _files_lines(ev)
    return "\n".join(lines).rstrip() + "\n"


def _outcome_lines(ev: Evaluation) -> list[str]:
    out: list[str] = []
    for s in ev.systems[1:]:
        outcomes = Counter(s.results[q].rerank or "no X-Rerank header" for q in ev.scored)
        if set(outcomes) != {"applied"}:
            shown = ", ".join(f"{k}: {v}" for k, v in outcomes.most_common())
            out.append(f"- `{s.name}`: not every search was reranked ({shown}).")
    if not out:
        return []
    return ["## Searches the proxy did not rerank", "", *out, ""]


def _split_lines(ev: Evaluation) -> list[str]:
    rows = []
    n = len(ev.scored)
    for s in ev.systems:
        t = s.time_split
        if not t or not t.get("request"):
            continue
        parts = [t["engine"], t["rerank"], t["request"] - t["engine"] - t["rerank"]]
        cells = [f"{1000 * t['request'] / n:.1f}"]
        cells += [f"{1000 * v / n:.1f} ({100 * v / t['request']:.0f}%)" for v in parts]
        cells.append(f"{1000 * t['model'] / n:.1f}")
        rows.append(f"| {s.name} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return [
        "## Where an in-process proxy's time goes (ms per query)",
        "",
        "| system | at the proxy | engine | rerank (cache, queue, model) | rest of the proxy"
        " | model busy |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "Per search, from the proxy's own histograms: its time = engine + rerank + rest;"
        " model busy is the inference time per query (groups are shared by concurrent"
        " searches).",
        "",
    ]


def _excluded_lines(ev: Evaluation) -> list[str]:
    out: list[str] = []
    if ev.absent:
        out += [
            "## Queries not scored: relevant documents absent from the index",
            "",
            "Every document judged relevant to these is missing from "
            f"`{ev.index}`, so any system would score 0; they are left out of every mean: "
            + ", ".join(f"`{q}`" for q in ev.absent),
            "",
        ]
    if ev.no_relevant:
        out += [
            "## Queries not scored: nothing judged relevant",
            "",
            ", ".join(f"`{q}`" for q in ev.no_relevant),
            "",
        ]
    return out


def _files_lines(ev: Evaluation) -> list[str]:
    base = ev.baseline.name
    runs = ", ".join(f"`runs/{s.name}.run`" for s in ev.systems)
    out = [
        "## Files",
        "",
        "`report.json` (every figure, per query too), `qrels.trec` (the scored queries'"
        f" judgements), one TREC run per system: {runs}; plots under `plots/`.",
    ]
    name = _trec_eval_name(ev.primary)
    if name is not None:
        out += [
            "",
            f"`trec_eval -c -m {name} qrels.trec runs/{base}.run` gives {ev.primary} above"
            " (`-c`: queries a system returned nothing for count as 0).",
        ]
    return out
