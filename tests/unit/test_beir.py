"""The BEIR loader: a valid collection, one exact message per kind of bad input, real SciFact."""

from __future__ import annotations

import gzip
import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from proxy import beir
from tests.conftest import SCIFACT

CORPUS = (
    '{"_id": "d1", "title": "First", "text": "Alpha."}\n'
    '{"_id": "d2", "text": "No title."}\n'
    "\n"
    '{"_id": "d3", "title": "", "text": "Gamma.", "metadata": {}}\n'
)
QUERIES = (
    '{"_id": "q1", "text": "alpha?", "metadata": {"x": 1}}\n'
    '{"_id": "q2", "text": "gamma?"}\n'
    '{"_id": "q9", "text": "unjudged"}\n'
)
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t0\nq2\td3\t2\n"
COLUMNS = "expected 3 tab-separated columns (query-id, corpus-id, score), "
VALID = {"corpus.jsonl": CORPUS, "queries.jsonl": QUERIES, "qrels/test.tsv": QRELS}


def write(root: Path, files: dict[str, str | bytes | None]) -> Path:
    """The valid collection under `root`, with `files` replacing (None: removing) some."""
    for name, content in {**VALID, **files}.items():
        path = root / name
        if content is None:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".gz"):
            raw = content.encode() if isinstance(content, str) else content
            path.write_bytes(gzip.compress(raw))
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return root


def test_loads_a_valid_collection_in_file_order(tmp_path: Path) -> None:
    data = beir.load_dataset(write(tmp_path, {}))
    assert list(data.corpus) == ["d1", "d2", "d3"]
    assert data.corpus["d1"] == beir.Document("d1", "First", "Alpha.")
    assert data.corpus["d2"].title == ""  # no title key
    assert data.queries["q1"] == beir.Query("q1", "alpha?")
    assert list(data.queries) == ["q1", "q2", "q9"]  # unjudged queries are kept
    assert data.qrels == {"q1": {"d1": 1, "d2": 0}, "q2": {"d3": 2}}
    assert data.split == "test"
    assert data.relevant("q1") == {"d1"}  # score 0: judged, not relevant
    assert data.relevant("q9") == frozenset()


def test_gzipped_files_and_splits(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "corpus.jsonl": None,
            "corpus.jsonl.gz": CORPUS,
            "queries.jsonl": None,
            "queries.jsonl.gz": QUERIES,
            "qrels/test.tsv": None,
            "qrels/test.tsv.gz": QRELS,
            "qrels/train.tsv": "query-id\tcorpus-id\tscore\r\nq2\td1\t1\r\n",
        },
    )
    assert beir.splits(root) == ("test", "train")
    assert beir.load_dataset(root).qrels["q2"] == {"d3": 2}
    assert beir.load_dataset(root, "train").qrels == {"q2": {"d1": 1}}
    assert beir.splits(tmp_path / "nowhere") == ()


def case(name: str, files: dict[str, str | bytes | None], message: str, split: str = "test") -> Any:
    """One bad input: files replaced in the valid collection, the message after tmp_path/."""
    return pytest.param(files, split, message, id=name)


BAD_CASES = [
    case(
        "no corpus",
        {"corpus.jsonl": None},
        "corpus.jsonl: file not found (nor corpus.jsonl.gz)",
    ),
    case(
        "no queries",
        {"queries.jsonl": None},
        "queries.jsonl: file not found (nor queries.jsonl.gz)",
    ),
    case(
        "plain and gzipped",
        {"corpus.jsonl.gz": CORPUS},
        "corpus.jsonl: both corpus.jsonl and corpus.jsonl.gz exist: keep one",
    ),
    case(
        "bad JSON",
        {"corpus.jsonl": '{"_id": "d1", "text": "a"}\n{"_id": "d2" "text": "b"}\n'},
        "corpus.jsonl:2: invalid JSON: Expecting ',' delimiter (column 14)",
    ),
    case(
        "truncated JSON",
        {"queries.jsonl": '{"_id": "q1", "text": "a'},
        "queries.jsonl:1: invalid JSON: Unterminated string starting at (column 23)",
    ),
    case(
        "not an object",
        {"corpus.jsonl": '["d1", "a"]\n'},
        "corpus.jsonl:1: expected a JSON object, got an array",
    ),
    case(
        "missing _id",
        {"corpus.jsonl": CORPUS + '{"title": "t", "text": "x"}\n'},
        "corpus.jsonl:5: missing '_id'",
    ),
    case(
        "numeric _id",
        {"queries.jsonl": '{"_id": 1, "text": "a"}\n'},
        "queries.jsonl:1: '_id' must be a string, got a number",
    ),
    case(
        "empty _id",
        {"queries.jsonl": '{"_id": "", "text": "a"}\n'},
        "queries.jsonl:1: '_id' must not be empty",
    ),
    case(
        "missing text",
        {"queries.jsonl": '{"_id": "q1"}\n'},
        "queries.jsonl:1: missing 'text'",
    ),
    case(
        "null title",
        {"corpus.jsonl": '{"_id": "d1", "title": null, "text": "a"}\n'},
        "corpus.jsonl:1: 'title' must be a string, got null",
    ),
    case(
        "duplicate _id",
        {"corpus.jsonl": CORPUS + '{"_id": "d1", "text": "again"}\n'},
        "corpus.jsonl:5: duplicate _id 'd1' (first on line 1)",
    ),
    case(
        "not UTF-8",
        {"queries.jsonl": b'{"_id": "q1", "text": "a"}\n{"_id": "q2", "text": "\xff"}\n'},
        "queries.jsonl:2: not UTF-8 text (byte 24 of the line)",
    ),
    case(
        "qrels: two columns",
        {"qrels/test.tsv": "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td3\n"},
        "qrels/test.tsv:3: " + COLUMNS + "got 2: 'q2\\td3'",
    ),
    case(
        "qrels: four columns",
        {"qrels/test.tsv": "query-id\tcorpus-id\tscore\nq1\td1\t1\t0\n"},
        "qrels/test.tsv:2: " + COLUMNS + "got 4: 'q1\\td1\\t1\\t0'",
    ),
    case(
        "qrels: spaces, not tabs",
        {"qrels/test.tsv": "query-id\tcorpus-id\tscore\nq1 d1 1\n"},
        "qrels/test.tsv:2: " + COLUMNS + "got 1: 'q1 d1 1'",
    ),
    case(
        "qrels: fractional score",
        {"qrels/test.tsv": "query-id\tcorpus-id\tscore\nq1\td1\t1.5\n"},
        "qrels/test.tsv:2: score must be an integer, got '1.5'",
    ),
    case(
        "qrels: word score",
        {"qrels/test.tsv": "query-id\tcorpus-id\tscore\nq1\td1\tyes\n"},
        "qrels/test.tsv:2: score must be an integer, got 'yes'",
    ),
    case(
        "qrels: empty score",
        {"qrels/test.tsv": "query-id\tcorpus-id\tscore\nq1\td1\t\n"},
        "qrels/test.tsv:2: score must be an integer, got ''",
    ),
    case(
        "qrels: empty query id",
        {"qrels/test.tsv": "query-id\tcorpus-id\tscore\n\td1\t1\n"},
        "qrels/test.tsv:2: query-id must be non-empty, without surrounding spaces, got ''",
    ),
    case(
        "qrels: no header",
        {"qrels/test.tsv": "q1\td1\t1\n"},
        "qrels/test.tsv:1: expected the header 'query-id\\tcorpus-id\\tscore', got 'q1\\td1\\t1'",
    ),
    case(
        "qrels: empty file",
        {"qrels/test.tsv": ""},
        "qrels/test.tsv: empty: no 'query-id\\tcorpus-id\\tscore' header",
    ),
    case(
        "qrels: header only",
        {"qrels/test.tsv": "query-id\tcorpus-id\tscore\n"},
        "qrels/test.tsv: no judgements after the header",
    ),
    case(
        "qrels: unknown query",
        {"qrels/test.tsv": QRELS + "q7\td1\t1\n"},
        "qrels/test.tsv:5: query-id 'q7' is not in the queries file",
    ),
    case(
        "qrels: unknown document",
        {"qrels/test.tsv": QRELS + "q2\td7\t1\n"},
        "qrels/test.tsv:5: corpus-id 'd7' is not in the corpus",
    ),
    case(
        "qrels: duplicate judgement",
        {"qrels/test.tsv": QRELS + "q1\td1\t2\n"},
        "qrels/test.tsv:5: duplicate judgement of 'q1', 'd1' (first on line 2)",
    ),
    case(
        "unknown split",
        {"qrels/train.tsv.gz": QRELS},
        "qrels/dev.tsv: no such split; present: test, train",
        split="dev",
    ),
    case(
        "no qrels folder",
        {"qrels/test.tsv": None},
        "qrels/test.tsv: no such split; present: none",
    ),
]


@pytest.mark.parametrize(("files", "split", "message"), BAD_CASES)
def test_bad_input_is_one_clear_error(
    tmp_path: Path, files: dict[str, str | bytes | None], split: str, message: str
) -> None:
    root = write(tmp_path, files)
    with pytest.raises(beir.BeirError) as info:
        beir.load_dataset(root, split)
    assert isinstance(info.value, ValueError)
    assert str(info.value) == f"{root}/{message}"


def test_unreadable_gzip_and_missing_directory(tmp_path: Path) -> None:
    root = write(tmp_path, {"corpus.jsonl": None})
    (root / "corpus.jsonl.gz").write_bytes(b"not gzip at all\n")
    with pytest.raises(beir.BeirError, match=r"corpus\.jsonl\.gz: cannot read: Not a gzipped file"):
        beir.load_dataset(root)
    truncated = gzip.compress(CORPUS.encode())[:-12]
    (root / "corpus.jsonl.gz").write_bytes(truncated)
    with pytest.raises(beir.BeirError, match=r"corpus\.jsonl\.gz(:\d+)?: cannot read: "):
        beir.load_dataset(root)
    with pytest.raises(beir.BeirError) as info:
        beir.load_dataset(tmp_path / "absent")
    assert str(info.value) == f"{tmp_path / 'absent'}: not a directory"


def test_error_carries_file_and_line_and_pickles(tmp_path: Path) -> None:
    root = write(tmp_path, {"queries.jsonl": '{"_id": "q1", "text": "a"}\n{"text": "b"}\n'})
    with pytest.raises(beir.BeirError) as info:
        beir.load_dataset(root)
    err = info.value
    assert (err.path, err.line, err.reason) == (str(root / "queries.jsonl"), 2, "missing '_id'")
    again = pickle.loads(pickle.dumps(err))
    assert (str(again), again.line) == (str(err), 2)


def test_readers_work_on_single_files(tmp_path: Path) -> None:
    root = write(tmp_path, {})
    assert list(beir.read_corpus(root / "corpus.jsonl")) == ["d1", "d2", "d3"]
    assert beir.read_qrels(root / "qrels" / "test.tsv")["q2"] == {"d3": 2}  # no cross-check
    with pytest.raises(beir.BeirError, match=r"missing\.jsonl: cannot read: No such file"):
        beir.read_queries(root / "missing.jsonl")


def test_imports_neither_aiohttp_nor_torch() -> None:
    code = "import json, sys, proxy.beir; print(json.dumps([m.split('.')[0] for m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    assert not loaded & {"aiohttp", "torch", "yaml", "numpy"}


def _count_lines(path: Path) -> int:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return sum(1 for line in fh if line.strip())


def test_real_scifact() -> None:
    if not SCIFACT.is_dir():
        pytest.skip(f"SciFact not found at {SCIFACT} (set RERANK_PROXY_SHARED)")
    data = beir.load_dataset(SCIFACT)
    # Counted from the files themselves: one object per line, one judgement per line after
    # the header (SOURCE.txt beside them: 5,183 documents, 300 queries, 339 judgements).
    assert len(data.corpus) == _count_lines(SCIFACT / "corpus.jsonl.gz") == 5183
    assert len(data.queries) == _count_lines(SCIFACT / "queries.jsonl.gz") == 300
    judgements = _count_lines(SCIFACT / "qrels" / "test.tsv.gz") - 1
    assert sum(len(j) for j in data.qrels.values()) == judgements == 339
    assert len(data.qrels) == 300  # every query is judged in the test split
    assert {s for j in data.qrels.values() for s in j.values()} == {1}
    assert beir.splits(SCIFACT) == ("test",)
    assert data.queries["1"].text == "0-dimensional biomaterials show inductive properties."
    assert next(iter(data.corpus.values())).id == "4983"  # file order
    assert data.relevant("1") == {"31715818"}
