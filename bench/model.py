"""Model benchmark: our inference backends vs sentence-transformers and mixedbread's package.

    python -m bench.model [--device cpu|cuda] [--queries 8] [--window 30] [--max-length 256]
                          [--backends ...] [--rounds 2]

Same run, same inputs (SciFact queries and their BM25 top `window` hits), same weights (the
stand-in with the exact mxbai-rerank-xsmall-v1 geometry, so costs equal the real model's).
Each engine scores one query's window per call, as the proxy does. Prints pairs/s, the ratio
to `CrossEncoder.predict`, the max |score difference| to the fp32 reference, the top-10
overlap per query, and the fraction of a matrix-multiply peak measured in the same run.

Each engine runs in a fresh process of its own (as the proxy runs one backend), once per
round, rounds in alternating order; its time is the median over rounds. Sharing one process
distorted the figures (torch backends lost 10-25% behind CrossEncoder's allocations), and
running engines one after another in a single pass let the machine's speed drift (10-20% over
minutes on this shared VM) decide the ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import data

Scorer = Callable[[str, list[str]], list[float]]


def matmul_peak(device: str, dtype: Any) -> float:
    """FLOP/s of a large matrix product on this device and dtype (the compute limit)."""
    import torch

    n = 8192 if device == "cuda" else 1536
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    reps = 20 if device == "cuda" else 4
    for _ in range(2):
        torch.mm(a, b)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def pair_flops(tokens: int, cfg: dict[str, Any]) -> float:
    """Useful FLOPs of one DeBERTa-v2 forward pass over `tokens` tokens (no padding).

    Per layer: Q/K/V/O projections 8·T·d², feed-forward 4·T·d·ff, content attention 4·T²·d,
    disentangled c2p + p2c attention another 4·T²·d; plus the pooler and classifier.
    """
    d, ff, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    t = tokens
    per_layer = 8 * t * d * d + 4 * t * d * ff + 8 * t * t * d
    return layers * per_layer + 2 * d * d + 2 * d


def token_counts(tokenizer: Any, work: list[tuple[str, list[str]]], max_length: int) -> list[int]:
    from proxy.rerank.hf import tokenize_pairs

    counts = []
    for q, docs in work:
        counts += [
            len(e["input_ids"])
            for e in tokenize_pairs(tokenizer, [(q, d) for d in docs], max_length)
        ]
    return counts


def run(scorer: Scorer, work: list[tuple[str, list[str]]]) -> tuple[float, list[list[float]]]:
    scorer(work[0][0], work[0][1][:4])  # warm up
    t0 = time.perf_counter()
    scores = [scorer(q, docs) for q, docs in work]
    return time.perf_counter() - t0, scores


def run_worker(argv: list[str], name: str) -> tuple[float, list[list[float]]]:
    """Time one engine in a fresh process: `python -m bench.model --worker NAME ...`.

    One process per engine and round, as the proxy runs one backend per process: engines
    sharing a process disturb each other (torch backends ran 10-25% slower with
    CrossEncoder's large batches interleaved in the same process: allocator and thread-pool
    state), so each gets a clean one."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        # The caller's options as given; the trailing --json wins over any --json among them.
        cmd = [sys.executable, "-m", "bench.model", *argv, "--worker", name, "--json", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not out.exists():
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            raise RuntimeError(lines[-1] if lines else f"exit {proc.returncode}")
        result = json.loads(out.read_text())
    return result["elapsed"], result["scores"]


def top_overlap(a: list[float], b: list[float], k: int = 10) -> float:
    top = lambda s: set(sorted(range(len(s)), key=lambda i: -s[i])[:k])  # noqa: E731
    return len(top(a) & top(b)) / min(k, len(a))


def cross_encoder(model_dir: Path, device: str, dtype: Any, max_length: int) -> Scorer:
    from sentence_transformers import CrossEncoder

    kwargs = {"model_kwargs": {"dtype": dtype}} if dtype is not None else {}
    model = CrossEncoder(str(model_dir), device=device, max_length=max_length, **kwargs)
    return lambda q, docs: [float(s) for s in model.predict([(q, d) for d in docs])]


def mxbai(model_dir: Path, device: str, dtype: Any, max_length: int) -> Scorer:
    from mxbai_rerank import MxbaiRerankV1

    model = MxbaiRerankV1(str(model_dir), device=device, torch_dtype=dtype, max_length=max_length)

    def score(q: str, docs: list[str]) -> list[float]:
        out = model._compute_scores(
            queries=[q] * len(docs), documents=docs, batch_size=32, show_progress=False
        )
        return [float(s) for s in out]

    return score


def ours(
    model_dir: Path,
    backend: str,
    device: str,
    max_length: int,
    batch_size: int = 0,
    compile: bool = False,
) -> Scorer:
    from proxy.config import ModelConfig
    from proxy.rerank.loader import load_backend

    cfg = dataclasses.replace(
        ModelConfig(),
        name=str(model_dir),
        backend=backend,
        device=device,
        batch_size=batch_size,  # type: ignore[arg-type]
        compile=compile,
        max_length=max_length,
    )
    model = load_backend(cfg)
    return lambda q, docs: model.score_pairs([(q, d) for d in docs], max_length)


REFERENCE = "CrossEncoder fp32 (reference)"


def competitor_table(
    args: argparse.Namespace, model_dir: Path
) -> dict[str, tuple[str, Callable[[], Scorer]]]:
    """Engine name -> (precision of its matrix products, how to build it)."""
    import torch

    cuda = args.device == "cuda"
    table: dict[str, tuple[str, Callable[[], Scorer]]] = {
        # The fp32 reference for fidelity and speed: CrossEncoder forced to fp32.
        REFERENCE: (
            "fp32",
            lambda: cross_encoder(model_dir, args.device, torch.float32, args.max_length),
        ),
    }
    if cuda:
        table["CrossEncoder (its default dtype)"] = (
            "fp16",
            lambda: cross_encoder(model_dir, "cuda", None, args.max_length),
        )
    mx_dtype: Any = "auto" if cuda else torch.float32
    table[f"mxbai-rerank ({'auto dtype' if cuda else 'fp32'})"] = (
        "fp16" if cuda else "fp32",
        lambda: mxbai(model_dir, args.device, mx_dtype, args.max_length),
    )
    precisions = {
        "torch": "fp16" if cuda else "fp32",
        "onnx": "fp32",
        "onnx-int8": "fp32",
        "torch-bf16": "bf16",
        "openvino": "fp32",
        "openvino-bf16": "bf16",
    }
    default_backends = "torch" if cuda else ",".join(precisions)
    for b in (args.backends or default_backends).split(","):
        table[f"rerank-proxy {b}"] = (
            precisions[b],
            lambda b=b: ours(model_dir, b, args.device, args.max_length),
        )
    for b in filter(None, args.compile.split(",")):
        table[f"rerank-proxy {b} + compile"] = (
            precisions[b],
            lambda b=b: ours(model_dir, b, args.device, args.max_length, compile=True),
        )
    for bs in filter(None, args.batch_sizes.split(",")):
        table[f"rerank-proxy torch bs={bs}"] = (
            precisions["torch"],
            lambda bs=int(bs): ours(model_dir, "torch", args.device, args.max_length, bs),
        )
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--window", type=int, default=30)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--backends", default=None, help="comma list (default per device)")
    parser.add_argument(
        "--compile", default="", help="torch backends to add again with model.compile (comma list)"
    )
    parser.add_argument("--batch-sizes", default="", help="extra torch rows at these batch sizes")
    parser.add_argument(
        "--rounds", type=int, default=2, help="runs per engine, order reversed each round"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    raw_argv = list(sys.argv[1:] if argv is None else argv)

    import torch
    from transformers import AutoConfig, AutoTokenizer

    model_dir = args.model_dir or data.exact_model()
    work = data.workload(args.queries, args.window)
    table = competitor_table(args, model_dir)
    if args.worker is not None:  # one engine, timed in this fresh process
        elapsed, scores = run(table[args.worker][1](), work)
        assert args.json is not None
        args.json.write_text(json.dumps({"elapsed": elapsed, "scores": scores}))
        return 0

    n_pairs = sum(len(d) for _, d in work)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    arch = AutoConfig.from_pretrained(model_dir).to_dict()
    tokens = token_counts(tokenizer, work, args.max_length)
    flops = sum(pair_flops(t, arch) for t in tokens)
    cuda = args.device == "cuda"
    peak_dtypes = {
        "fp32": torch.float32,
        ("fp16" if cuda else "bf16"): (torch.float16 if cuda else torch.bfloat16),
    }
    peaks = {k: matmul_peak(args.device, v) for k, v in peak_dtypes.items()}
    print(
        f"# model benchmark — {platform.node()} {args.device}"
        + (
            f" ({torch.cuda.get_device_name()})"
            if cuda
            else f" ({torch.get_num_threads()} threads)"
        )
        + f"\n{len(work)} SciFact queries x {args.window} BM25 hits = {n_pairs} pairs,"
        f" max_length {args.max_length}, mean {statistics.mean(tokens):.0f} tokens/pair,"
        f" {flops / n_pairs / 1e9:.2f} GFLOP/pair; each engine in its own process,"
        f" {args.rounds} rounds in alternating order (median time)",
        flush=True,
    )
    names = list(table)
    times: dict[str, list[float]] = {n: [] for n in names}
    all_scores: dict[str, list[list[float]]] = {}
    failed: set[str] = set()
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            if name in failed:
                continue
            try:
                elapsed, scores = run_worker(raw_argv, name)
            except RuntimeError as exc:
                if name == REFERENCE:
                    raise
                failed.add(name)
                print(f"- {name}: not run ({exc})", flush=True)
                continue
            times[name].append(elapsed)
            all_scores.setdefault(name, scores)
            print(f"- round {r + 1}: {name}: {n_pairs / elapsed:.1f} pairs/s", flush=True)
    # The peak again after the runs; the higher of the two (the machine's speed drifts).
    for k, v in peak_dtypes.items():
        peaks[k] = max(peaks[k], matmul_peak(args.device, v))
    print(
        "matmul peak (higher of before and after): "
        + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in peaks.items()),
        flush=True,
    )
    ref_time, reference = statistics.median(times[REFERENCE]), all_scores[REFERENCE]
    rows: list[dict[str, Any]] = []
    for name in names:
        if name in failed:
            continue
        elapsed, scores = statistics.median(times[name]), all_scores[name]
        precision = table[name][0]
        pairs = zip(scores, reference, strict=True)
        diffs = [abs(a - b) for s, r in pairs for a, b in zip(s, r, strict=True)]
        overlaps = [top_overlap(s, r) for s, r in zip(scores, reference, strict=True)]
        rows.append(
            {
                "engine": name,
                "pairs_per_s": n_pairs / elapsed,
                "vs_crossencoder": ref_time / elapsed,
                "max_abs_diff": max(diffs),
                "top10_overlap_mean": statistics.mean(overlaps),
                "top10_overlap_min": min(overlaps),
                "peak_fraction": flops / elapsed / peaks.get(precision, peaks["fp32"]),
                "peak": precision if precision in peaks else "fp32",
                "seconds_per_round": times[name],
            }
        )

    print(
        "\n| engine | pairs/s | x CrossEncoder | max abs diff vs fp32 | top-10 overlap mean (min) | % of matmul peak |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['engine']} | {r['pairs_per_s']:.1f} | {r['vs_crossencoder']:.2f}x | {r['max_abs_diff']:.1e} |"
            f" {r['top10_overlap_mean']:.3f} ({r['top10_overlap_min']:.2f}) | {100 * r['peak_fraction']:.1f}% of {r['peak']} |"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"device": args.device, "pairs": n_pairs, "rows": rows}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
