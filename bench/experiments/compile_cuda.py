"""Experiment: does torch.compile speed up the fp16 CUDA path for this architecture?

    python -m bench.experiments.compile_cuda --model-dir DIR

Scores the `model` benchmark's workload with our torch backend as is, then with the model
wrapped in torch.compile (dynamic shapes, so the length-sorted batches do not recompile each
time), and prints pairs/s, compile time and the max score difference.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from bench import data


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--max-length", type=int, default=512)
    args = parser.parse_args()

    import torch

    from proxy.config import ModelConfig
    from proxy.rerank.loader import load_backend

    work = data.workload(30, 50)
    cfg = dataclasses.replace(
        ModelConfig(), name=str(args.model_dir), backend="torch", device="cuda"
    )
    backend = load_backend(cfg)

    def run() -> tuple[float, list[float]]:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = [
            s
            for q, docs in work
            for s in backend.score_pairs([(q, d) for d in docs], args.max_length)
        ]
        return time.perf_counter() - t0, out

    run()
    base_t, base = run()
    n = len(base)
    print(f"eager fp16: {n / base_t:.1f} pairs/s")
    eager = backend.model  # type: ignore[attr-defined]
    for mode in ("default", "max-autotune-no-cudagraphs"):
        backend.model = torch.compile(eager, dynamic=True, mode=mode)  # type: ignore[attr-defined]
        t0 = time.perf_counter()
        run()
        first = time.perf_counter() - t0
        t, out = run()
        diff = max(abs(a - b) for a, b in zip(out, base, strict=True))
        print(
            f"compiled ({mode}): {n / t:.1f} pairs/s ({base_t / t:.2f}x eager), first pass {first:.0f} s, max |diff| {diff:.1e}",
            flush=True,
        )


if __name__ == "__main__":
    main()
