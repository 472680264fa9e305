"""Score cache under churn at capacity: does RSS settle, or creep?

    python -m bench.cache_churn [--puts 4000000] [--capacity 50000]

The soak's default variant shows the proxy's RSS rising by a few MB after the score cache is
full. This isolates the cache: in a fresh process per contender, lookups and puts with the
soak's key shape (model id, max_length, two 16-byte digests; 3,000 queries x 5,183 documents,
20 documents a search, a put on every miss), RSS sampled every `--puts / 10` puts. The
competitor is the other usual LRU, a plain `dict` in recency order (pop and re-insert on a
hit, drop the first key when full), under the same sequence: if both step and then settle,
the steps are CPython's allocator, not this cache. Written to stdout and `bench/results/cache-churn.md`.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys

from bench.cpu import machine_line
from bench.paths import REPO
from bench.report import MB, md_table


def churn(kind: str, puts: int, capacity: int) -> list[tuple[int, float]]:
    """Run in the child: the RSS after every tenth of the puts."""
    import psutil

    from proxy.rerank.front import ScoreCache, cache_keys

    rng = random.Random(0)
    queries = [f"query {i}" for i in range(3000)]
    docs = [f"doc {i}" for i in range(5183)]
    if kind == "ScoreCache":
        cache = ScoreCache(capacity)
        get, put = cache.get, cache.put
    else:
        lru: dict[object, float] = {}  # insertion order is recency order

        def get(key: object) -> float | None:
            value = lru.pop(key, None)
            if value is not None:
                lru[key] = value
            return value

        def put(key: object, value: float) -> None:
            lru[key] = value
            if len(lru) > capacity:
                del lru[next(iter(lru))]

    done, out, step = 0, [], max(1, puts // 10)
    proc = psutil.Process()
    while done < puts:
        for key in cache_keys("m", 256, rng.choice(queries), rng.sample(docs, 20)):
            if get(key) is None:
                put(key, rng.random())
                done += 1
                if done % step == 0:
                    out.append((done, proc.memory_info().rss / MB))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--puts", type=int, default=4_000_000)
    parser.add_argument("--capacity", type=int, default=50_000)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(churn(args.child, args.puts, args.capacity)))
        return 0
    runs = {}
    for kind in ("ScoreCache", "dict"):
        cmd = [sys.executable, "-m", "bench.cache_churn", "--child", kind]
        cmd += ["--puts", str(args.puts), "--capacity", str(args.capacity)]
        runs[kind] = json.loads(subprocess.run(cmd, cwd=REPO, check=True, capture_output=True,
                                               text=True).stdout)  # fmt: skip
    rows = [
        [f"{a[0]:,}", f"{a[1]:.1f}", f"{b[1]:.1f}"]
        for a, b in zip(runs["ScoreCache"], runs["dict"], strict=True)
    ]
    settled = {k: v[-1][1] / v[len(v) // 2 - 1][1] for k, v in runs.items()}
    text = "\n".join(
        [
            "## Score cache under churn at capacity",
            "",
            f"- Command: `python -m bench.cache_churn --puts {args.puts} --capacity"
            f" {args.capacity}`",
            f"- Machine: {machine_line()}",
            "",
            md_table(["puts", "ScoreCache RSS MB", "dict LRU RSS MB"], rows),
            "",
            "RSS at the end over RSS at half the puts: "
            + ", ".join(f"{k} {v:.3f}x" for k, v in settled.items())
            + f"; ScoreCache / dict at the end:"
            f" {runs['ScoreCache'][-1][1] / runs['dict'][-1][1]:.2f}x.",
        ]
    )
    print(text)
    (REPO / "bench" / "results" / "cache-churn.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
