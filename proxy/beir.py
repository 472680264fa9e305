"""Reading BEIR collections (a corpus, its queries and one split's relevance judgements).

A BEIR directory holds `corpus.jsonl` (one JSON object per line: `_id`, `text`, optional
`title`), `queries.jsonl` (`_id`, `text`) and `qrels/<split>.tsv` (the header
`query-id<TAB>corpus-id<TAB>score`, then one judgement per line with an integer score); any of
them may be gzipped instead (`corpus.jsonl.gz`, ...). This module owns reading them, strictly,
into frozen value objects: every problem is one `BeirError` naming the file and the line
(`.../qrels/test.tsv:7: score must be an integer, got '1.5'`), blank lines are the only lines
skipped, and no row is dropped or silently replaced by a later one. Standard library only (no
aiohttp, no torch), like the other pure modules. The loader is product code; the collections
are data, and some (SciFact: CC BY-NC) must never ship with the package.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import zlib
from collections.abc import Container, Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

QRELS_HEADER: Final = ("query-id", "corpus-id", "score")
_HEADER_TEXT: Final = "\t".join(QRELS_HEADER)
_INTEGER: Final = re.compile(r"-?[0-9]+")


class BeirError(ValueError):
    """A BEIR file is missing or malformed; the message is `FILE[:LINE]: reason`."""

    def __init__(self, path: str | os.PathLike[str], reason: str, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        self.reason = reason
        super().__init__(f"{self.path}{'' if line is None else f':{line}'}: {reason}")

    def __reduce__(self) -> tuple[type[BeirError], tuple[str, str, int | None]]:
        return type(self), (self.path, self.reason, self.line)


@dataclass(frozen=True, slots=True)
class Document:
    id: str
    title: str  # "" when the corpus has no title for it
    text: str


@dataclass(frozen=True, slots=True)
class Query:
    id: str
    text: str


@dataclass(frozen=True, slots=True)
class Dataset:
    """A BEIR collection with the judgements of one split; mappings keep file order."""

    corpus: Mapping[str, Document]  # document id -> document
    queries: Mapping[str, Query]  # query id -> query (every split's queries)
    qrels: Mapping[str, Mapping[str, int]]  # query id -> document id -> graded relevance
    split: str

    def relevant(self, query_id: str) -> frozenset[str]:
        """The documents judged relevant (score > 0) to `query_id`; empty if it is unjudged."""
        judged = self.qrels.get(query_id, {})
        return frozenset(doc_id for doc_id, score in judged.items() if score > 0)


def splits(directory: str | os.PathLike[str]) -> tuple[str, ...]:
    """The splits that have a judgements file under `directory/qrels`, sorted."""
    qrels_dir = Path(directory) / "qrels"
    if not qrels_dir.is_dir():
        return ()
    found = set()
    for path in qrels_dir.iterdir():
        for suffix in (".tsv", ".tsv.gz"):
            if path.name.endswith(suffix) and len(path.name) > len(suffix) and path.is_file():
                found.add(path.name[: -len(suffix)])
    return tuple(sorted(found))


def load_dataset(directory: str | os.PathLike[str], split: str = "test") -> Dataset:
    """Read the BEIR collection in `directory` with the judgements of `split`.

    Every judgement must name a query of the queries file and a document of the corpus.
    """
    root = Path(directory)
    if not root.is_dir():
        raise BeirError(root, "not a directory")
    present = splits(root)
    if split not in present:
        raise BeirError(
            root / "qrels" / f"{split}.tsv",
            f"no such split; present: {', '.join(present) or 'none'}",
        )
    corpus = read_corpus(locate(root, "corpus.jsonl"))
    queries = read_queries(locate(root, "queries.jsonl"))
    qrels = read_qrels(locate(root / "qrels", f"{split}.tsv"), queries=queries, corpus=corpus)
    return Dataset(corpus, queries, qrels, split)


def locate(directory: str | os.PathLike[str], name: str) -> Path:
    """`directory/name`, or else `directory/name.gz`; exactly one of them must exist."""
    plain = Path(directory) / name
    packed = plain.with_name(f"{name}.gz")
    if plain.is_file() and packed.is_file():
        raise BeirError(plain, f"both {name} and {packed.name} exist: keep one")
    if plain.is_file():
        return plain
    if packed.is_file():
        return packed
    raise BeirError(plain, f"file not found (nor {packed.name})")


def read_corpus(path: str | os.PathLike[str]) -> dict[str, Document]:
    """Documents by id from a corpus file (`_id`, `text`, optional `title`)."""
    docs: dict[str, Document] = {}
    for number, doc_id, obj in _objects(path):
        title = _text(obj, "title", path, number, required=False)
        docs[doc_id] = Document(doc_id, title, _text(obj, "text", path, number))
    return docs


def read_queries(path: str | os.PathLike[str]) -> dict[str, Query]:
    """Queries by id from a queries file (`_id`, `text`; other keys are ignored)."""
    queries: dict[str, Query] = {}
    for number, query_id, obj in _objects(path):
        queries[query_id] = Query(query_id, _text(obj, "text", path, number))
    return queries


def read_qrels(
    path: str | os.PathLike[str],
    *,
    queries: Container[str] | None = None,
    corpus: Container[str] | None = None,
) -> dict[str, dict[str, int]]:
    """Query id -> document id -> score from a judgements file.

    With `queries` or `corpus`, every judged query or document must be in it.
    """
    qrels: dict[str, dict[str, int]] = {}
    first_seen: dict[tuple[str, str], int] = {}
    header = False
    for number, line in read_lines(path):
        if not line.strip():
            continue
        columns = line.split("\t")
        if not header:
            if tuple(columns) != QRELS_HEADER:
                raise BeirError(path, f"expected the header {_HEADER_TEXT!r}, got {line!r}", number)
            header = True
            continue
        if len(columns) != len(QRELS_HEADER):
            raise BeirError(
                path,
                f"expected 3 tab-separated columns (query-id, corpus-id, score),"
                f" got {len(columns)}: {line!r}",
                number,
            )
        query_id, doc_id, score = columns
        for name, value in (("query-id", query_id), ("corpus-id", doc_id)):
            if not value or value != value.strip():
                raise BeirError(
                    path,
                    f"{name} must be non-empty, without surrounding spaces, got {value!r}",
                    number,
                )
        if not _INTEGER.fullmatch(score):
            raise BeirError(path, f"score must be an integer, got {score!r}", number)
        if queries is not None and query_id not in queries:
            raise BeirError(path, f"query-id {query_id!r} is not in the queries file", number)
        if corpus is not None and doc_id not in corpus:
            raise BeirError(path, f"corpus-id {doc_id!r} is not in the corpus", number)
        if (first := first_seen.setdefault((query_id, doc_id), number)) != number:
            raise BeirError(
                path,
                f"duplicate judgement of {query_id!r}, {doc_id!r} (first on line {first})",
                number,
            )
        qrels.setdefault(query_id, {})[doc_id] = int(score)
    if not header:
        raise BeirError(path, f"empty: no {_HEADER_TEXT!r} header")
    if not qrels:
        raise BeirError(path, "no judgements after the header")
    return qrels


# -- reading lines --------------------------------------------------------------------------


def _objects(path: str | os.PathLike[str]) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """(line number, `_id`, object) for each non-blank line of a JSON-lines file; an `_id`
    seen on an earlier line is an error."""
    first_line: dict[str, int] = {}
    for number, line in read_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BeirError(path, f"invalid JSON: {exc.msg} (column {exc.colno})", number) from exc
        if not isinstance(obj, dict):
            raise BeirError(path, f"expected a JSON object, got {_json_type(obj)}", number)
        row_id = _text(obj, "_id", path, number)
        if (first := first_line.setdefault(row_id, number)) != number:
            raise BeirError(path, f"duplicate _id {row_id!r} (first on line {first})", number)
        yield number, row_id, obj


class _LineError(Protocol):
    def __call__(
        self, path: str | os.PathLike[str], reason: str, line: int | None = None
    ) -> Exception: ...


def read_lines(
    path: str | os.PathLike[str], error: _LineError = BeirError
) -> Generator[tuple[int, str], None, None]:
    """(line number, text without its line break) for each line of a UTF-8 file, gzipped
    when its name ends in `.gz`; a problem raises `error(path, reason, line)` (the BEIR,
    TREC and judgment readers share this reader, each with its own error type)."""
    number = 0
    try:
        with _open(Path(path)) as fh:
            for number, raw in enumerate(fh, 1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise error(
                        path, f"not UTF-8 text (byte {exc.start + 1} of the line)", number
                    ) from exc
                yield number, text.rstrip("\r\n")
    except (OSError, EOFError, zlib.error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise error(path, f"cannot read: {reason}", number + 1 if number else None) from exc


def _open(path: Path) -> gzip.GzipFile | io.BufferedReader:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def _text(
    obj: Mapping[str, Any],
    key: str,
    path: str | os.PathLike[str],
    number: int,
    *,
    required: bool = True,
) -> str:
    if key not in obj:
        if required:
            raise BeirError(path, f"missing {key!r}", number)
        return ""
    value = obj[key]
    if not isinstance(value, str):
        raise BeirError(path, f"{key!r} must be a string, got {_json_type(value)}", number)
    if key == "_id" and not value:
        raise BeirError(path, "'_id' must not be empty", number)
    return value


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)
