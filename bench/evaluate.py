"""Evaluation benchmark: `rerank-proxy eval` on SciFact's test queries, in-process proxy.

    python -m bench.evaluate [--quick] [--model tiny|exact] [--window 20] [--concurrency 1]
                             [--backend auto] [--max-length 256] [--keep]

Real OpenSearch (scripts/engine, left running) with SciFact in `bench-scifact` (bench.engine);
the proxy runs inside the eval process from a config (fields title + text, one window, the
random-weight stand-in: `tiny`, or `exact`, the mxbai-rerank-xsmall-v1 geometry). Eval runs
the engine's own order and then the reranked order on SciFact's 300 test queries (`--quick`:
the first 20), through the product's own CLI entry (`proxy.evaluate.cli.main`), and this
prints a Markdown table from its report.json: queries/s and latency of each system, and for
the proxy the share of its time (per search, from its own histograms) in the engine, in the
model (inference), in the rest of the rerank step (queue, batching, cache) and in the rest
of the proxy (JSON, planning, hit reordering). With one client (the default) the shares add
up per search; with more, the model's groups are shared by several searches and its share
is of the summed search time. nDCG@10 is printed
for completeness: with random weights it measures nothing but the plumbing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from bench import data, engine
from bench.cpu import machine_line
from bench.paths import CACHE, SCIFACT
from bench.proxyproc import workdir
from bench.report import fmt_ms, log, md_table


def _model(size: str) -> Path:
    if size == "exact":
        return data.exact_model()
    from devtools.standin import ensure_standin_model

    def texts() -> list[str]:
        return [data.doc_text(d) for d in list(data.load_scifact().corpus.values())[:3000]]

    return ensure_standin_model(CACHE / "models", texts, size="tiny", seed=0)


def _config(url: str, model: Path, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "listen": {"drain_delay": 0},
        "upstream": {"url": url, "read_timeout": 300},
        "model": {
            "name": str(model),
            "backend": args.backend,
            "device": "cpu",
            "max_length": args.max_length,
        },
        "defaults": {"enabled": False},
        "indices": [
            {
                "match": [engine.INDEX],
                "fields": ["title", "text"],
                "window": args.window,
                "timeout_ms": 600_000,  # a benchmark measures the model; never fail open
            }
        ],
        "access_log": False,
    }


def _share(part: float, whole: float) -> str:
    if whole <= 0:
        return "n/a"
    pct = 100 * part / whole
    return f"{pct:.1f}%" if pct < 10 else f"{pct:.0f}%"


def table(doc: dict[str, Any]) -> str:
    """The Markdown table of one eval report."""
    rows = []
    n = doc["queries"]["scored"]
    for s in doc["systems"]:
        lat = s["latency_ms"]
        split = s["time_split_seconds"]
        if split.get("request"):
            total = split["request"]
            parts = [
                split["engine"],
                split["model"],
                max(0.0, split["rerank"] - split["model"]),
                total - split["engine"] - split["rerank"],
            ]
            shares = [_share(v, total) for v in parts]
            at_proxy = fmt_ms(1000 * total / n)
        else:
            shares, at_proxy = ["100%", "-", "-", "-"], "-"
        rows.append(
            [
                s["name"],
                n,
                f"{s['queries_per_second']:.2f}",
                fmt_ms(lat["p50"]),
                fmt_ms(lat["p95"]),
                at_proxy,
                *shares,
                f"{s['means'][doc['primary']]:.4f}",
            ]
        )
    headers = ["system", "queries", "queries/s", "p50 ms", "p95 ms", "ms at the proxy"]
    headers += ["engine", "model", "queue & batching", "rest of the proxy", doc["primary"]]
    return md_table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the first 20 queries only")
    parser.add_argument("--model", choices=("tiny", "exact"), default="exact")
    parser.add_argument("--window", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)

    url = engine.ensure_engine()
    engine.index_scifact(url, data.load_scifact())
    model = _model(args.model)
    with workdir("bench-evaluate-", keep=args.keep) as work:
        cfg = work / f"rerank-w{args.window}.yaml"  # the system's name in the report
        cfg.write_text(yaml.safe_dump(_config(url, model, args)))
        out = work / "out"
        argv_eval = [
            "eval",
            "--beir",
            str(SCIFACT),
            "--index",
            engine.INDEX,
            "--cluster",
            url,
            "--config",
            str(cfg),
            "--fields",
            "title,text",
            "--size",
            str(args.window),
            "--concurrency",
            str(args.concurrency),
            "--out",
            str(out),
            "--quiet",
        ]
        if args.quick:
            argv_eval += ["--limit", "20"]
        from proxy.evaluate import cli

        log(f"eval: {' '.join(argv_eval)}")
        started = time.perf_counter()
        status = cli.main(argv_eval)
        if status != 0:
            log(f"eval failed with exit status {status}")
            return status
        doc = json.loads((out / "report.json").read_text())
        log(f"eval done in {time.perf_counter() - started:.1f} s (model load included)")
    print(f"## rerank-proxy eval on SciFact ({'quick' if args.quick else 'full'})\n")
    print(machine_line())
    print(
        f"\nmodel: stand-in `{args.model}` ({model.name}), backend {args.backend}, window"
        f" {args.window}, max_length {args.max_length}, {args.concurrency} client(s)\n"
    )
    print(table(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
