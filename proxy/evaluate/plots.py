"""The PNG plots of `rerank-proxy eval`, drawn with matplotlib's Agg canvas (no display).

`plots/delta-<system>.png`: each scored query's difference in the primary measure between the
system and the engine's order, sorted (above zero: reranking helped that query).
`plots/cutoffs.png`: nDCG@k and R@k against the cut-off k for every system.
`plots/windows.png`: the primary measure against the reranked window, when in-process proxy
configs with different windows ran. Figures are built with `matplotlib.figure.Figure`, not
pyplot, so nothing global (backend, open figures) is touched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .report import Evaluation


def _figure(width: float = 8.0, height: float = 4.5) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def write_plots(ev: Evaluation, out: Path) -> list[Path]:
    """Draw every plot that applies under `out/plots`; the files written."""
    folder = out / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    written = [delta_plot(ev, s.name, folder) for s in ev.systems[1:]]
    written.append(cutoff_plot(ev, folder))
    windows = window_plot(ev, folder)
    if windows is not None:
        written.append(windows)
    return written


def delta_plot(ev: Evaluation, system: str, folder: Path) -> Path:
    base = ev.scores[ev.baseline.name].per_query[ev.primary]
    ours = ev.scores[system].per_query[ev.primary]
    deltas = sorted((ours[q] - base[q] for q in ev.scored), reverse=True)
    fig = _figure()
    ax = fig.add_subplot()
    colors = ["tab:green" if d > 0 else "tab:red" if d < 0 else "tab:gray" for d in deltas]
    ax.bar(range(len(deltas)), deltas, width=1.0, color=colors)
    ax.axhline(0, color="black", linewidth=0.8)
    c = ev.comparison(system, ev.primary)
    summary = "" if c is None else f": {c.wins} better, {c.ties} tied, {c.losses} worse"
    ax.set_title(f"{system} vs {ev.baseline.name}, {ev.primary} per query{summary}")
    ax.set_xticks([])
    ax.set_xlabel(f"{len(deltas)} queries, sorted by Δ")
    ax.set_ylabel(f"Δ {ev.primary}")
    path = folder / f"delta-{system}.png"
    fig.savefig(path)
    return path


def cutoff_plot(ev: Evaluation, folder: Path) -> Path:
    fig = _figure(10.0, 4.5)
    axes = fig.subplots(1, 2)
    for ax, measure in zip(axes, ("nDCG", "R"), strict=True):
        names = [m for m in ev.curve if m.startswith(f"{measure}@")]
        ks = [int(m.split("@", 1)[1]) for m in names]
        for s in ev.systems:
            scores = ev.scores[s.name]
            ax.plot(ks, [scores.mean(m) for m in names], marker="o", label=s.name)
        if len(ks) > 1:
            ax.set_xscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("cut-off k")
        ax.set_ylabel(f"{measure}@k")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(f"{ev.index}: {len(ev.scored)} queries")
    path = folder / "cutoffs.png"
    fig.savefig(path)
    return path


def window_plot(ev: Evaluation, folder: Path) -> Path | None:
    points = sorted(
        (s.window, ev.scores[s.name].mean(ev.primary), s.name)
        for s in ev.systems
        if s.kind == "config" and s.window is not None
    )
    if len({w for w, _, _ in points}) < 2:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot([w for w, _, _ in points], [v for _, v, _ in points], marker="o", label="reranked")
    for w, v, name in points:
        ax.annotate(name, (w, v), textcoords="offset points", xytext=(4, 4), fontsize=8)
    engine = ev.scores[ev.baseline.name].mean(ev.primary)
    ax.axhline(engine, color="gray", linestyle="--", label=f"{ev.baseline.name} (no rerank)")
    ax.set_xlabel("window (hits reranked)")
    ax.set_ylabel(ev.primary)
    ax.grid(True, alpha=0.3)
    ax.legend()
    path = folder / "windows.png"
    fig.savefig(path)
    return path
