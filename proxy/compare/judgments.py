"""Relevance judgments for the comparison page: reading `compare.qrels`, matching a query. Pure.

Two formats are read, told apart by the first non-blank line:

- BEIR: the header `query-id<TAB>corpus-id<TAB>score`, then one judgment per line (read by
  `proxy.beir.read_qrels`, strictly);
- TREC: `qid iteration docid relevance`, whitespace-separated, no header (the iteration
  column is ignored).

Either may be gzipped (`.gz`). A search is matched to a judged query by its query id when
the caller gives one, else by its text: a BEIR queries file (`queries.jsonl`, or
`queries.jsonl.gz`) in the qrels file's directory or the one above it (the BEIR layout:
`scifact/queries.jsonl` next to `scifact/qrels/test.tsv`) maps each query text, compared
with case and runs of whitespace ignored, to its id. Without a queries file only a given
query id matches. Every problem is one `ConfigError` line naming `compare.qrels`, the file
and the line. Standard library only, like the other pure modules.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .. import beir
from ..config import ConfigError

MatchedBy = Literal["query_id", "text"]
_INTEGER = re.compile(r"-?[0-9]+")


def normalise(text: str) -> str:
    """How query texts are compared: case and runs of whitespace ignored."""
    return " ".join(text.split()).casefold()


@dataclass(frozen=True, slots=True)
class Match:
    """The judged query a search was matched to."""

    query_id: str
    matched_by: MatchedBy
    grades: Mapping[str, int]  # document id -> graded relevance (0: judged not relevant)


@dataclass(frozen=True, slots=True)
class Judgments:
    """The judgments of `compare.qrels`, and the query texts that name them."""

    qrels: Mapping[str, Mapping[str, int]]  # query id -> document id -> grade
    texts: Mapping[str, str]  # normalised query text -> query id
    source: str  # the qrels file, for messages
    queries_file: str | None = None

    def match(self, query: str, query_id: str | None = None) -> Match | None:
        """The judged query for a search: by `query_id` if given, else by its text."""
        if query_id is not None:
            grades = self.qrels.get(query_id)
            return None if grades is None else Match(query_id, "query_id", grades)
        found = self.texts.get(normalise(query))
        if found is None or found not in self.qrels:
            return None
        return Match(found, "text", self.qrels[found])


def ndcg(grades: Sequence[int | None], judged: Mapping[str, int], k: int) -> float | None:
    """nDCG@k of a ranked list of grades (None: unjudged, counts as 0), gain 2^g - 1.

    None when the query has no relevant document at all (the ideal DCG is 0).
    """
    ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:k]
    if not ideal:
        return None

    def dcg(gs: Sequence[int]) -> float:
        return sum((math.pow(2, g) - 1) / math.log2(i + 2) for i, g in enumerate(gs) if g > 0)

    return dcg([g or 0 for g in grades[:k]]) / dcg(ideal)


def load_judgments(path: str | os.PathLike[str]) -> Judgments:
    """Read a TREC or BEIR qrels file and the queries file next to it, if there is one."""
    qrels_path = Path(path)
    try:
        first = _first_line(qrels_path)
        if first is None:
            raise beir.BeirError(qrels_path, "empty: no judgments")
        if first.split("\t") == list(beir.QRELS_HEADER):
            qrels = beir.read_qrels(qrels_path)
        else:
            qrels = _read_trec(qrels_path)
        queries_file = _queries_file(qrels_path)
        texts: dict[str, str] = {}
        if queries_file is not None:
            for query in beir.read_queries(queries_file).values():
                texts.setdefault(normalise(query.text), query.id)
    except beir.BeirError as exc:
        raise ConfigError([f"compare.qrels: {exc}"]) from exc
    return Judgments(
        qrels=qrels,
        texts=texts,
        source=str(qrels_path),
        queries_file=str(queries_file) if queries_file is not None else None,
    )


def _queries_file(qrels_path: Path) -> Path | None:
    for directory in (qrels_path.parent, qrels_path.parent.parent):
        for name in ("queries.jsonl", "queries.jsonl.gz"):
            if (directory / name).is_file():
                return beir.locate(directory, "queries.jsonl")  # both present: an error
    return None


def _read_trec(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    first_seen: dict[tuple[str, str], int] = {}
    for number, line in _lines(path):
        columns = line.split()
        if not columns:
            continue
        if len(columns) != 4:
            raise beir.BeirError(
                path,
                "expected a TREC qrels line `qid iteration docid relevance` (4 columns) or"
                f" the BEIR header {'<TAB>'.join(beir.QRELS_HEADER)!r}, got {line!r}",
                number,
            )
        query_id, _, doc_id, grade = columns
        if not _INTEGER.fullmatch(grade):
            raise beir.BeirError(path, f"relevance must be an integer, got {grade!r}", number)
        value = int(grade)
        if (first := first_seen.setdefault((query_id, doc_id), number)) != number:
            raise beir.BeirError(
                path,
                f"duplicate judgment of {query_id!r}, {doc_id!r} (first on line {first})",
                number,
            )
        qrels.setdefault(query_id, {})[doc_id] = value
    if not qrels:
        raise beir.BeirError(path, "empty: no judgments")
    return qrels


def _first_line(path: Path) -> str | None:
    with contextlib.closing(_lines(path)) as lines:
        for _, line in lines:
            if line.strip():
                return line
    return None


def _lines(path: Path) -> Generator[tuple[int, str], None, None]:
    return beir.read_lines(path)
