"""`rerank-proxy eval` end to end on real OpenSearch and Elasticsearch.

SciFact is indexed in both engines by the `stack` fixture, which also runs a proxy process with
the tiny stand-in model. Eval runs the engine's order, that running proxy (`--proxy`) and the
same model in-process (`--config`), on 20 judged SciFact test queries, and must produce every
report file with the stand-in named on report.md's first line, TREC runs that give the
report's numbers, and the same reranked lists from both proxies. TREC topics with a query
whose relevant document is not in the index, a `_rank_eval` body with a template, and
`--load` of a small BEIR directory run through the running proxy only.
"""

from __future__ import annotations

import gzip
import json
import urllib.request
from pathlib import Path
from typing import Any

import ir_measures
import pytest
import yaml

from proxy.evaluate import cli
from tests.conftest import SCIFACT, SciFact

from .conftest import SCIFACT_INDEX, WINDOW, Stack, proxy_config

pytestmark = pytest.mark.e2e
N = 20


def _eval(*argv: str) -> int:
    return cli.main(["eval", *argv, "--quiet"])


def _report(out: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((out / "report.json").read_text())
    return doc


def _check_runs_give_the_numbers(out: Path, doc: dict[str, Any]) -> None:
    """Every system's means, recomputed by ir_measures from the files (0 for no hits)."""
    qrels = list(ir_measures.read_trec_qrels(str(out / "qrels.trec")))
    queries = sorted({q.query_id for q in qrels})
    assert len(queries) == doc["queries"]["scored"]
    measures = [ir_measures.parse_measure(m) for m in doc["measures"]]
    for system in doc["systems"]:
        run = list(ir_measures.read_trec_run(str(out / system["run_file"])))
        values = {str(m): dict.fromkeys(queries, 0.0) for m in measures}
        for metric in ir_measures.iter_calc(measures, qrels, run):
            values[str(metric.measure)][metric.query_id] = metric.value
        for name, per_query in values.items():
            mean = sum(per_query.values()) / len(queries)
            assert system["means"][name] == pytest.approx(mean, abs=1e-12), (system["name"], name)


def _run_lists(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        qid, _, doc, rank, _, _ = line.split()
        out.setdefault(qid, []).append(doc)
        assert len(out[qid]) == int(rank)
    return out


def _search(url: str, body: dict[str, Any], index: str = SCIFACT_INDEX) -> list[str]:
    req = urllib.request.Request(
        f"{url}/{index}/_search",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        return [h["_id"] for h in json.load(resp)["hits"]["hits"]]


def _config(stack: Stack, tiny_model: Path, tmp_path: Path) -> Path:
    raw = proxy_config(stack.engine_url, tiny_model)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_eval_beir_end_to_end(
    stack: Stack, tiny_model: Path, scifact: SciFact, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    status = _eval(
        "--beir",
        str(SCIFACT),
        "--index",
        SCIFACT_INDEX,
        "--cluster",
        stack.engine_url,
        "--proxy",
        stack.proxy_url,
        "--config",
        str(_config(stack, tiny_model, tmp_path)),
        "--fields",
        "title,text",
        "--limit",
        str(N),
        "--out",
        str(out),
    )
    assert status == 0, stack.log_tail()
    names = ["engine", "proxy", "tiny"]
    assert {p.name for p in out.iterdir()} == {
        "report.json",
        "report.md",
        "qrels.trec",
        "runs",
        "plots",
    }
    assert {p.name for p in (out / "runs").iterdir()} == {f"{n}.run" for n in names}
    assert {p.name for p in (out / "plots").iterdir()} == {
        "cutoffs.png",
        "delta-proxy.png",
        "delta-tiny.png",
    }
    first = (out / "report.md").read_text().splitlines()[0]
    assert "STAND-IN MODEL" in first and "MEANINGLESS" in first and str(tiny_model) in first

    doc = _report(out)
    assert [s["name"] for s in doc["systems"]] == names
    assert doc["size"] == WINDOW and doc["queries"]["scored"] == N
    assert doc["queries"]["absent"] == [] and doc["queries"]["no_relevant"] == []
    engine, proxy, tiny = doc["systems"]
    assert engine["rerank_outcomes"] == {} and engine["kind"] == "engine"
    for system in (proxy, tiny):
        assert system["rerank_outcomes"] == {"applied": N}
        assert system["standin"] is True and system["model"] == str(tiny_model)
    assert tiny["window"] == WINDOW and tiny["time_split_seconds"]["model"] > 0
    for system in doc["systems"]:
        assert (
            system["latency_ms"]["p50"] > 0
            and system["latency_ms"]["p95"] >= system["latency_ms"]["p50"]
        )
    _check_runs_give_the_numbers(out, doc)

    lists = {n: _run_lists(out / "runs" / f"{n}.run") for n in names}
    qids = [q for q in scifact.qrels if q in lists["engine"]]
    assert len(qids) == N
    # The engine's run is the engine's own order for the same search.
    for qid in qids[:3]:
        body = {
            "query": {"multi_match": {"query": scifact.queries[qid], "fields": ["title", "text"]}}
        }
        assert lists["engine"][qid] == _search(stack.engine_url, {**body, "size": WINDOW})
    # Both proxies rerank the same window with the same model: the same documents, and
    # (up to float noise between batch shapes) the same order.
    same = 0
    for qid in qids:
        assert set(lists["proxy"][qid]) == set(lists["tiny"][qid]) == set(lists["engine"][qid])
        same += lists["proxy"][qid] == lists["tiny"][qid]
    assert same >= N - 2
    assert any(lists["tiny"][q] != lists["engine"][q] for q in qids)  # it did rerank


def test_eval_trec_topics_with_an_absent_query(
    stack: Stack, scifact: SciFact, tmp_path: Path
) -> None:
    qids = sorted(scifact.qrels, key=int)[:5]
    topics = tmp_path / "topics.tsv"
    topics.write_text(
        "".join(f"{q}\t{scifact.queries[q]}\n" for q in qids) + "gone\tno such paper\n"
    )
    qrels = tmp_path / "qrels.txt"
    lines = [f"{q} 0 {d} 1" for q in qids for d in sorted(scifact.qrels[q])]
    qrels.write_text("\n".join([*lines, "gone 0 no-such-document 2", "gone 0 neither 1"]) + "\n")
    out = tmp_path / "out"
    status = _eval(
        "--topics",
        str(topics),
        "--qrels",
        str(qrels),
        "--index",
        SCIFACT_INDEX,
        "--cluster",
        stack.engine_url,
        "--proxy",
        stack.proxy_url,
        "--fields",
        "title,text",
        "--size",
        "30",
        "--out",
        str(out),
    )
    assert status == 0, stack.log_tail()
    doc = _report(out)
    assert doc["queries"] == {"scored": 5, "absent": ["gone"], "no_relevant": []}
    assert doc["systems"][1]["rerank_outcomes"] == {"applied": 5}
    assert "`gone`" in (out / "report.md").read_text()
    assert "gone" not in (out / "qrels.trec").read_text()
    _check_runs_give_the_numbers(out, doc)


def test_eval_rank_eval_body_with_a_template(
    stack: Stack, scifact: SciFact, tmp_path: Path
) -> None:
    qids = sorted(scifact.qrels, key=int)[:3]

    def ratings(qid: str) -> list[dict[str, Any]]:
        return [
            {"_index": SCIFACT_INDEX, "_id": d, "rating": 1} for d in sorted(scifact.qrels[qid])
        ]

    body = {
        "requests": [
            {
                "id": qids[0],
                "request": {"query": {"match": {"text": scifact.queries[qids[0]]}}},
                "ratings": ratings(qids[0]),
            },
            {
                "id": qids[1],
                "template_id": "by_title_and_text",
                "params": {"text": scifact.queries[qids[1]]},
                "ratings": ratings(qids[1]),
            },
            {
                "id": qids[2],
                "request": {
                    "query": {
                        "multi_match": {
                            "query": scifact.queries[qids[2]],
                            "fields": ["title", "text"],
                        }
                    }
                },
                "ratings": ratings(qids[2]),
            },
        ],
        "templates": [
            {
                "id": "by_title_and_text",
                "template": {
                    "inline": {
                        "query": {"multi_match": {"query": "{{text}}", "fields": ["title", "text"]}}
                    }
                },
            }
        ],
        "metric": {"dcg": {"k": 10, "normalize": True}},
    }
    path = tmp_path / "rank_eval.json"
    path.write_text(json.dumps(body, indent=2))
    out = tmp_path / "out"
    status = _eval(
        "--rank-eval",
        str(path),
        "--query-param",
        "text",
        "--index",
        SCIFACT_INDEX,
        "--cluster",
        stack.engine_url,
        "--proxy",
        stack.proxy_url,
        "--size",
        "30",
        "--out",
        str(out),
    )
    assert status == 0, stack.log_tail()
    doc = _report(out)
    assert doc["input"]["format"] == "rank_eval" and doc["queries"]["scored"] == 3
    assert doc["systems"][1]["rerank_outcomes"] == {"applied": 3}
    engine = _run_lists(out / "runs" / "engine.run")
    rendered = {
        "query": {"multi_match": {"query": scifact.queries[qids[1]], "fields": ["title", "text"]}}
    }
    assert engine[qids[1]] == _search(stack.engine_url, {**rendered, "size": 30})
    match = {"query": {"match": {"text": scifact.queries[qids[0]]}}, "size": 30}
    assert engine[qids[0]] == _search(stack.engine_url, match)
    _check_runs_give_the_numbers(out, doc)


def _mini_beir(root: Path, scifact: SciFact, qids: list[str], n_docs: int) -> list[str]:
    """A BEIR directory with `qids`' relevant documents plus others, `n_docs` in all."""
    docs = [d for q in qids for d in sorted(scifact.qrels[q])]
    docs += [d for d in scifact.corpus if d not in docs][: n_docs - len(docs)]
    (root / "qrels").mkdir(parents=True)
    corpus = "".join(json.dumps({"_id": d, **scifact.corpus[d]}) + "\n" for d in docs)
    (root / "corpus.jsonl.gz").write_bytes(gzip.compress(corpus.encode()))
    queries = "".join(json.dumps({"_id": q, "text": scifact.queries[q]}) + "\n" for q in qids)
    (root / "queries.jsonl").write_text(queries)
    judged = "".join(f"{q}\t{d}\t1\n" for q in qids for d in sorted(scifact.qrels[q]))
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + judged)
    return docs


def test_eval_load_indexes_a_beir_corpus(stack: Stack, scifact: SciFact, tmp_path: Path) -> None:
    index = f"scifact-evalload-{stack.engine}"  # `scifact-*`: the stack proxy reranks it
    delete = urllib.request.Request(f"{stack.engine_url}/{index}", method="DELETE")
    try:
        urllib.request.urlopen(delete, timeout=60).close()
    except urllib.error.HTTPError:
        pass
    qids = sorted(scifact.qrels, key=int)[:3]
    docs = _mini_beir(tmp_path / "mini", scifact, qids, 40)
    out = tmp_path / "out"
    try:
        status = _eval(
            "--beir",
            str(tmp_path / "mini"),
            "--load",
            "--index",
            index,
            "--cluster",
            stack.engine_url,
            "--proxy",
            stack.proxy_url,
            "--fields",
            "title,text",
            "--size",
            "30",
            "--out",
            str(out),
        )
        assert status == 0, stack.log_tail()
        with urllib.request.urlopen(f"{stack.engine_url}/{index}/_count", timeout=60) as resp:
            assert json.load(resp)["count"] == len(docs)
        doc = _report(out)
        assert doc["queries"]["scored"] == 3
        assert doc["systems"][1]["rerank_outcomes"] == {"applied": 3}
        _check_runs_give_the_numbers(out, doc)
        # Loading again overwrites by `_id`: still one copy of each document.
        assert (
            _eval(
                "--beir",
                str(tmp_path / "mini"),
                "--load",
                "--index",
                index,
                "--cluster",
                stack.engine_url,
                "--out",
                str(out),
            )
            == 0
        )
        with urllib.request.urlopen(f"{stack.engine_url}/{index}/_count", timeout=60) as resp:
            assert json.load(resp)["count"] == len(docs)
        _rank_eval_over_two_indices(stack, scifact, tmp_path, index, qids)
    finally:
        try:
            urllib.request.urlopen(delete, timeout=60).close()
        except urllib.error.HTTPError:
            pass


def _rank_eval_over_two_indices(
    stack: Stack, scifact: SciFact, tmp_path: Path, index: str, qids: list[str]
) -> None:
    """The same `_id`s in two indices: ratings name their `_index`, so documents are keyed
    `_index/_id` and a rating of an index that does not exist counts as absent."""
    requests = [
        {
            "id": qid,
            "request": {"query": {"multi_match": {"query": scifact.queries[qid]}}},
            "ratings": [
                {"_index": name, "_id": d, "rating": grade}
                for d in sorted(scifact.qrels[qid])
                for name, grade in ((SCIFACT_INDEX, 1), (index, 2))
            ],
        }
        for qid in qids
    ]
    requests.append(
        {
            "id": "elsewhere",
            "request": {"query": {"match": {"text": "anything"}}},
            "ratings": [{"_index": "scifact-no-such-index", "_id": "1", "rating": 1}],
        }
    )
    path = tmp_path / "two.json"
    path.write_text(json.dumps({"requests": requests}))
    out = tmp_path / "two"
    status = _eval(
        "--rank-eval",
        str(path),
        "--index",
        f"{SCIFACT_INDEX},{index}",
        "--cluster",
        stack.engine_url,
        "--proxy",
        stack.proxy_url,
        "--size",
        "30",
        "--out",
        str(out),
    )
    assert status == 0, stack.log_tail()
    doc = _report(out)
    assert doc["input"]["key_by_index"] is True
    assert doc["queries"] == {"scored": 3, "absent": ["elsewhere"], "no_relevant": []}
    assert doc["systems"][1]["rerank_outcomes"] == {"applied": 3}
    engine = _run_lists(out / "runs" / "engine.run")
    assert {d.split("/", 1)[0] for docs in engine.values() for d in docs} == {SCIFACT_INDEX, index}
    _check_runs_give_the_numbers(out, doc)
