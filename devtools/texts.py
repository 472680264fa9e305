"""Text for building stand-in models: corpus files and deterministic synthetic sentences.

The stand-in builder (`devtools.standin`) trains its tokenizer and calibrates its head on
plain text. This module owns where that text comes from: a corpus file (one text per line,
or JSON lines with `title`/`text`/`body` keys such as a BEIR corpus, gzipped or not), or
pseudo-scientific sentences generated from a seed when no corpus is at hand. It is lenient on
purpose (it harvests text, it does not load a collection); `proxy.beir` is the strict loader.
"""

from __future__ import annotations

import gzip
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Final


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def iter_corpus_texts(path: str | os.PathLike[str]) -> Iterator[str]:
    """Texts from a corpus file: `.jsonl`/`.jsonl.gz` with `title`/`text` keys (BEIR), else
    one text per non-empty line (`.gz` allowed)."""
    p = Path(path)
    is_jsonl = p.name.endswith((".jsonl", ".jsonl.gz"))
    with _open_text(p) as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            if is_jsonl:
                doc = json.loads(line)
                parts = [str(doc.get(k) or "").strip() for k in ("title", "text", "body")]
                line = " ".join(part for part in parts if part)
                if not line:
                    continue
            yield line


_SYNTHETIC_WORDS: Final = (
    "cell cells protein proteins gene genes expression tumor tumour cancer immune response"
    " patient patients study studies clinical trial blood brain mouse mice model models risk"
    " effect effects level levels increase increased reduce reduced receptor signaling"
    " pathway activity binding mutation mutations therapy treatment dose disease infection"
    " virus bacterial human mammalian tissue liver heart lung kidney insulin glucose"
    " metabolism inflammation antibody antigen vaccine sequence analysis data method results"
    " significant association outcome mortality cohort randomized placebo control group"
    " the of and in to with for by on from that was were is are not no than after during"
)


def synthetic_texts(n: int = 2000, seed: int = 0) -> list[str]:
    """Deterministic pseudo-scientific sentences, for when no corpus file is at hand."""
    words = _SYNTHETIC_WORDS.split()
    rng = random.Random(seed)
    out: list[str] = []
    for i in range(n):
        body = " ".join(rng.choice(words) for _ in range(rng.randint(6, 40)))
        unit = rng.choice(["mg", "ml", "kDa", "%"])
        extra = f" ({rng.randint(1, 999)} {unit}, p<0.{rng.randint(1, 5)})"
        out.append(f"{body.capitalize()}{extra if i % 3 == 0 else ''}.")
    return out
