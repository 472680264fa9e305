"""Judged queries for `rerank-proxy eval`: BEIR directories, TREC topics and TREC qrels.

Every input becomes one `Judgments`: the topics (query id -> `Topic`, file order), the graded
relevance judgements (query id -> document id -> integer grade, kept as given) and, for BEIR
with `--load`, the corpus. Reading is strict: every malformed line is one `InputError` naming
the file, the line and what was expected (`qrels.txt:7: relevance must be an integer, got
'1.5'`); blank lines are the only lines skipped, no row is dropped or silently replaced by a
later one. BEIR goes through `proxy.beir` (its `BeirError`s are re-raised as `InputError`s
with the same text). TREC topics come as the classic SGML (`<top> <num> Number: 301 <title>
...</top>`) or as a `qid<TAB>text` TSV; TREC qrels as `qid iteration docid relevance` (a BEIR
`query-id corpus-id score` TSV is accepted too). Files may be gzipped (`.gz`). The engines'
`_rank_eval` body is read by `rankeval`. Standard library only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from .. import beir
from .errors import InputError

Format = Literal["beir", "trec", "rank_eval"]
_INTEGER: Final = re.compile(r"-?[0-9]+")
_TAG: Final = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9_-]*)>")
# The labels TREC topic files put after a tag: `<num> Number: 301`, `<desc> Description:`.
_LABELS: Final = {
    "num": "number:",
    "title": "topic:",
    "desc": "description:",
    "narr": "narrative:",
}


@dataclass(frozen=True, slots=True)
class Topic:
    """One query. `text` is None only for a `_rank_eval` template request whose text comes
    from the rendered template; `request`/`template`/`params` are set for `_rank_eval`."""

    id: str
    text: str | None
    line: int | None = None  # where it is defined (for messages about it later)
    request: Mapping[str, Any] | None = None  # `_rank_eval`: the search body
    template: Any = None  # `_rank_eval`: the inline template (an object or a string)
    params: Mapping[str, Any] | None = None  # `_rank_eval`: the template's parameters
    text_from_params: bool = False  # the text is a template parameter, not in the DSL


@dataclass(frozen=True, slots=True)
class Judgments:
    """Judged queries; mappings keep file order. Document keys are `_id`s, or
    `_index/_id` when `key_by_index` (a `_rank_eval` body rating documents of several
    indices)."""

    format: Format
    source: str  # the file or directory as given
    topics: Mapping[str, Topic]
    qrels: Mapping[str, Mapping[str, int]]  # query id -> document key -> grade
    key_by_index: bool = False
    corpus: Mapping[str, beir.Document] | None = None  # BEIR, read only when asked for

    def judged(self) -> list[str]:
        """Topic ids that have at least one judgement, in topic order."""
        return [tid for tid in self.topics if self.qrels.get(tid)]

    def relevant(self, topic_id: str) -> frozenset[str]:
        """Documents judged relevant (grade > 0) to `topic_id`."""
        return frozenset(d for d, g in self.qrels.get(topic_id, {}).items() if g > 0)


# -- BEIR -----------------------------------------------------------------------------------


def load_beir(
    directory: str | os.PathLike[str], split: str = "test", *, with_corpus: bool = False
) -> Judgments:
    """Queries and one split's judgements of a BEIR directory (the corpus only when asked:
    it is needed to load an index, not to evaluate one)."""
    root = Path(directory)
    try:
        if not root.is_dir():
            raise beir.BeirError(root, "not a directory")
        present = beir.splits(root)
        if split not in present:
            raise beir.BeirError(
                root / "qrels" / f"{split}.tsv",
                f"no such split; present: {', '.join(present) or 'none'}",
            )
        queries = beir.read_queries(beir.locate(root, "queries.jsonl"))
        corpus = beir.read_corpus(beir.locate(root, "corpus.jsonl")) if with_corpus else None
        qrels = beir.read_qrels(
            beir.locate(root / "qrels", f"{split}.tsv"), queries=queries, corpus=corpus
        )
    except beir.BeirError as exc:
        raise InputError(exc.path, exc.reason, exc.line) from exc
    topics = {q.id: Topic(q.id, q.text) for q in queries.values()}
    return Judgments("beir", str(directory), topics, qrels, corpus=corpus)


# -- TREC -----------------------------------------------------------------------------------


def load_trec(
    topics_path: str | os.PathLike[str],
    qrels_path: str | os.PathLike[str],
    *,
    field: str = "title",
) -> Judgments:
    """TREC topics (SGML, or `qid<TAB>text`) and qrels; `field` picks the SGML field
    (`title`, `desc`, ...) that is the query text."""
    topics = read_topics(topics_path, field=field)
    qrels = read_trec_qrels(qrels_path, topics=topics, topics_path=topics_path)
    return Judgments("trec", str(topics_path), topics, qrels)


def read_topics(path: str | os.PathLike[str], *, field: str = "title") -> dict[str, Topic]:
    """Topics by id; the format is SGML when the first non-blank line starts with `<`."""
    for _, line in _lines(path):
        if line.strip():
            if line.lstrip().startswith("<"):
                return _sgml_topics(path, field)
            return _tsv_topics(path)
    raise InputError(path, "empty: expected TREC topics (<top> ... </top>, or qid<TAB>text)")


def _tsv_topics(path: str | os.PathLike[str]) -> dict[str, Topic]:
    topics: dict[str, Topic] = {}
    for number, line in _lines(path):
        if not line.strip():
            continue
        columns = line.split("\t")
        if len(columns) != 2:
            raise InputError(
                path,
                f"expected 2 tab-separated columns (query id, text), got {len(columns)}: {line!r}",
                number,
            )
        qid, text = columns
        _check_id("query id", qid, path, number)
        if not text.strip():
            raise InputError(path, f"query {qid!r} has no text", number)
        _no_duplicate(topics, qid, path, number)
        topics[qid] = Topic(qid, " ".join(text.split()), number)
    return topics


def _sgml_topics(path: str | os.PathLike[str], field: str) -> dict[str, Topic]:
    topics: dict[str, Topic] = {}
    fields: dict[str, tuple[int, list[str]]] | None = None  # tag -> (line, text pieces)
    opened = 0  # line of the open <top>
    tag: str | None = None  # the field text goes to
    number = 0
    for number, line in _lines(path):
        rest = line
        while True:
            match = _TAG.search(rest)
            text = rest if match is None else rest[: match.start()]
            if text.strip():
                if fields is None:
                    raise InputError(
                        path, f"text outside <top> ... </top>: {text.strip()!r}", number
                    )
                if tag is None:
                    raise InputError(path, f"text outside any field tag: {text.strip()!r}", number)
                fields[tag][1].append(text)
            if match is None:
                break
            rest = rest[match.end() :]
            closing, name = match.group(1) == "/", match.group(2).lower()
            if name == "top" and not closing:
                if fields is not None:
                    raise InputError(path, f"<top> inside <top> (opened on line {opened})", number)
                fields, opened, tag = {}, number, None
            elif name == "top":
                if fields is None:
                    raise InputError(path, "</top> without <top>", number)
                topic = _sgml_topic(path, fields, opened, field)
                _no_duplicate(topics, topic.id, path, opened)
                topics[topic.id] = topic
                fields, tag = None, None
            elif fields is None:
                raise InputError(path, f"<{'/' if closing else ''}{name}> outside <top>", number)
            elif closing:
                if tag is None:
                    raise InputError(path, f"</{name}> without an open <{name}>", number)
                if tag != name:
                    raise InputError(
                        path,
                        f"</{name}> where </{tag}> was expected (<{tag}> opened on line"
                        f" {fields[tag][0]})",
                        number,
                    )
                tag = None
            else:
                if name in fields:
                    first = fields[name][0]
                    raise InputError(
                        path, f"a second <{name}> in one topic (first on line {first})", number
                    )
                fields[name], tag = (number, []), name
        if fields is not None and tag is not None:
            fields[tag][1].append("\n")
    if fields is not None:
        raise InputError(path, "<top> is not closed by </top>", opened)
    if not topics:
        raise InputError(path, "no <top> ... </top> topics")
    return topics


def _sgml_topic(
    path: str | os.PathLike[str], fields: dict[str, tuple[int, list[str]]], opened: int, field: str
) -> Topic:
    if "num" not in fields:
        raise InputError(path, "topic without <num>", opened)
    num_line, pieces = fields["num"]
    num = _unlabel("num", "".join(pieces))
    if not num or len(num.split()) != 1:
        raise InputError(path, f"expected one topic number after <num>, got {num!r}", num_line)
    if field not in fields:
        raise InputError(path, f"topic {num}: no <{field}> (the query text field)", opened)
    text_line, pieces = fields[field]
    text = _unlabel(field, "".join(pieces))
    if not text:
        raise InputError(path, f"topic {num}: <{field}> is empty", text_line)
    return Topic(num, text, opened)


def _unlabel(tag: str, text: str) -> str:
    """Whitespace collapsed, without the label TREC files put after some tags."""
    text = " ".join(text.split())
    label = _LABELS.get(tag)
    if label and text.lower().startswith(label):
        text = text[len(label) :].strip()
    return text


def read_trec_qrels(
    path: str | os.PathLike[str],
    *,
    topics: Mapping[str, Topic] | None = None,
    topics_path: str | os.PathLike[str] | None = None,
) -> dict[str, dict[str, int]]:
    """Query id -> document id -> grade from `qid iteration docid relevance` lines (or a
    BEIR qrels TSV, recognised by its header). With `topics`, every query must be one."""
    first = next((line for _, line in _lines(path) if line.strip()), None)
    if first is not None and tuple(first.split("\t")) == beir.QRELS_HEADER:
        try:
            return beir.read_qrels(path, queries=topics)
        except beir.BeirError as exc:
            raise InputError(exc.path, exc.reason, exc.line) from exc
    qrels: dict[str, dict[str, int]] = {}
    first_seen: dict[tuple[str, str], int] = {}
    for number, line in _lines(path):
        if not line.strip():
            continue
        columns = line.split()
        if len(columns) != 4:
            raise InputError(
                path,
                "expected 4 whitespace-separated columns (query id, iteration, document id,"
                f" relevance), got {len(columns)}: {line!r}",
                number,
            )
        qid, _, doc_id, grade = columns
        if not _INTEGER.fullmatch(grade):
            raise InputError(path, f"relevance must be an integer, got {grade!r}", number)
        if topics is not None and qid not in topics:
            where = f" ({topics_path})" if topics_path is not None else ""
            raise InputError(path, f"query id {qid!r} is not in the topics file{where}", number)
        if (seen := first_seen.setdefault((qid, doc_id), number)) != number:
            raise InputError(
                path, f"duplicate judgement of {qid!r}, {doc_id!r} (first on line {seen})", number
            )
        qrels.setdefault(qid, {})[doc_id] = int(grade)
    if not qrels:
        raise InputError(path, "no judgements: expected lines of 'qid iteration docid relevance'")
    return qrels


# -- reading lines --------------------------------------------------------------------------


def _check_id(name: str, value: str, path: str | os.PathLike[str], number: int) -> None:
    if not value or value != value.strip() or len(value.split()) != 1:
        raise InputError(path, f"{name} must be one word without spaces, got {value!r}", number)


def _no_duplicate(
    seen: Mapping[str, Topic], topic_id: str, path: str | os.PathLike[str], number: int
) -> None:
    if topic_id in seen:
        first = seen[topic_id].line
        raise InputError(path, f"duplicate topic {topic_id!r} (first on line {first})", number)


def _lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 file, gunzipped if `.gz` (`proxy.beir`'s reader)."""
    return beir.read_lines(path, InputError)


def read_text(path: str | os.PathLike[str]) -> str:
    """A whole UTF-8 file (gunzipped if `.gz`), with the same errors as the line reader."""
    return "".join(line + "\n" for _, line in _lines(path))
