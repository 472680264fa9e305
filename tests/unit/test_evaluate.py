"""`rerank-proxy eval` without a cluster: measures against pytrec_eval itself, every input
format (BEIR from SciFact; TREC and `_rank_eval` written here) with its errors and their exact
messages, the report's TREC files re-read by ir_measures, significance on constructed cases,
the queries that are reported instead of scored, and the CLI's exit statuses."""

from __future__ import annotations

import base64
import gzip
import json
import shutil
from pathlib import Path
from typing import Any

import ir_measures
import pytest
import pytrec_eval
import scipy.stats
import yaml

from proxy import beir
from proxy.evaluate import cli, metrics, pipeline, report, searches
from proxy.evaluate.errors import InputError, UsageError
from proxy.evaluate.judgments import (
    Judgments,
    Topic,
    load_beir,
    load_trec,
    read_topics,
    read_trec_qrels,
)
from proxy.evaluate.rankeval import load_rank_eval
from proxy.evaluate.runner import Connection, QueryResult, SystemRun, split_credentials
from tests.conftest import SCIFACT

# -- measures against pytrec_eval -----------------------------------------------------------

QRELS = {
    "q1": {"d1": 2, "d2": 1, "d3": 0, "d9": 1},
    "q2": {"d5": 1},
    "q3": {"d7": 3, "d8": 1},
    "q4": {"d6": 1},  # judged, but no system returns anything for it
}
RANKED = {
    "q1": ["d3", "d1", "d4", "d2"],
    "q2": [f"x{i}" for i in range(10)] + ["d5"],  # the relevant one at rank 11
    "q3": ["d8", "d7"],
    "q4": [],
}
QUERIES = list(QRELS)


def _pytrec(run: dict[str, dict[str, float]], measure: str) -> dict[str, float]:
    evaluator = pytrec_eval.RelevanceEvaluator(QRELS, {measure})
    out = evaluator.evaluate(run)
    key = next(iter(next(iter(out.values()))))
    return {q: v[key] for q, v in out.items()}


def test_measures_equal_pytrec_eval_on_the_same_runs() -> None:
    run = {q: metrics.to_run(docs) for q, docs in RANKED.items()}
    measures = ["nDCG@10", "R@5", "AP", "RR@10", "nDCG@3", "R@10"]
    scores = metrics.evaluate(QRELS, run, measures, QUERIES)
    with_hits = {q: r for q, r in run.items() if r}
    for ours, theirs in (
        ("nDCG@10", "ndcg_cut_10"),
        ("R@5", "recall_5"),
        ("AP", "map"),
        ("nDCG@3", "ndcg_cut_3"),
        ("R@10", "recall_10"),
    ):
        expected = _pytrec(with_hits, theirs)
        for q in QUERIES:
            assert scores.per_query[ours][q] == pytest.approx(expected.get(q, 0.0), abs=1e-12)
    # RR@10 is pytrec_eval's reciprocal rank of the run cut at 10.
    top10 = {q: metrics.to_run(RANKED[q][:10]) for q in with_hits}
    rr = _pytrec(top10, "recip_rank")
    assert scores.per_query["RR@10"] == {q: pytest.approx(rr.get(q, 0.0)) for q in QUERIES}
    assert scores.per_query["RR@10"]["q2"] == 0.0  # rank 11 is past the cut-off
    assert _pytrec(with_hits, "recip_rank")["q2"] == pytest.approx(1 / 11)
    # graded relevance is kept: d7 (grade 3) below d8 (grade 1) costs nDCG
    assert 0 < scores.per_query["nDCG@10"]["q3"] < 1
    # a query with no hits is a 0 in the mean, not a query fewer
    assert scores.per_query["nDCG@10"]["q4"] == 0.0
    assert scores.mean("nDCG@10") == pytest.approx(sum(scores.per_query["nDCG@10"].values()) / 4)


def test_run_scores_strictly_decrease_with_rank() -> None:
    assert metrics.to_run(["a", "b", "c"]) == {"a": 3.0, "b": 2.0, "c": 1.0}
    assert metrics.cutoffs(30) == [1, 3, 5, 10, 20, 30]
    assert metrics.cutoffs(10) == [1, 3, 5, 10]
    assert metrics.headline("AP", 50) == ["AP", "nDCG@10", "RR@10", "R@50"]
    assert metrics.canonical("nDCG@20") == "nDCG@20"
    with pytest.raises(UsageError, match=r"--metric: 'ndcg@10' is not an ir_measures measure"):
        metrics.canonical("ndcg@10")


# -- significance ---------------------------------------------------------------------------

BASE = [0.2, 0.4, 0.5, 0.3, 0.6, 0.1, 0.7, 0.35]
BETTER = [b + d for b, d in zip(BASE, [0.1, 0.12, 0.09, 0.11, 0.1, 0.13, 0.08, 0.1], strict=True)]


def _scores(values: list[float]) -> dict[str, float]:
    return {f"q{i}": v for i, v in enumerate(values)}


def test_paired_t_test_is_scipys_ttest_rel() -> None:
    c = metrics.compare("rr", "engine", "nDCG@10", _scores(BETTER), _scores(BASE))
    assert c.test == "paired t-test (scipy.stats.ttest_rel)"
    assert c.p_value == pytest.approx(scipy.stats.ttest_rel(BETTER, BASE).pvalue)
    assert c.p_value is not None and c.p_value < 0.001
    assert (c.wins, c.ties, c.losses) == (8, 0, 0)
    assert c.mean_delta == pytest.approx(0.10375)


def test_randomization_test_on_a_constructed_case() -> None:
    # Every query better: only the all-plus and all-minus sign patterns (2 of 2^8) are as
    # extreme, so the two-sided p-value is near 2/256.
    p = metrics.randomization_test(BASE, BETTER, seed=1)
    assert p is not None and 0.004 < p < 0.013
    assert metrics.randomization_test(BASE, BETTER, seed=1) == p  # seeded
    mixed = [b + d for b, d in zip(BASE, [0.1, -0.1, 0.05, -0.05, 0.02, -0.02, 0, 0], strict=True)]
    p_mixed = metrics.randomization_test(BASE, mixed, seed=1)
    assert p_mixed is not None and p_mixed > 0.9
    assert metrics.randomization_test([], []) is None


def test_no_difference_is_p_1_and_all_ties() -> None:
    c = metrics.compare("rr", "engine", "AP", _scores(BASE), _scores(BASE))
    assert (c.wins, c.ties, c.losses, c.p_value, c.mean_delta) == (0, 8, 0, 1.0, 0.0)
    shifted = [b + 0.1 for b in BASE]
    assert metrics.t_test(BASE, shifted) == 0.0
    assert metrics.t_test([0.5], [0.7]) is None


def test_latency_percentiles() -> None:
    lat = metrics.latency_ms([0.010, 0.020, 0.030, 0.040, 0.100])
    assert lat == {"p50": pytest.approx(30.0), "p95": pytest.approx(88.0), "mean": 40.0}
    assert metrics.latency_ms([]) == {"p50": None, "p95": None, "mean": None}


# -- BEIR -----------------------------------------------------------------------------------


def _scifact() -> Path:
    if not SCIFACT.is_dir():
        pytest.skip(f"SciFact not found at {SCIFACT}")
    return SCIFACT


def test_beir_from_scifact() -> None:
    j = load_beir(_scifact(), "test")
    reference = beir.load_dataset(SCIFACT, "test")
    assert j.format == "beir" and j.corpus is None
    assert {q: dict(d) for q, d in j.qrels.items()} == {
        q: dict(d) for q, d in reference.qrels.items()
    }
    assert len(j.judged()) == 300 and len(j.topics) == len(reference.queries)
    assert all(j.topics[q].text == reference.queries[q].text for q in j.judged())
    assert j.relevant("1") == reference.relevant("1")
    with_corpus = load_beir(SCIFACT, "test", with_corpus=True)
    assert with_corpus.corpus is not None and len(with_corpus.corpus) == 5183


def test_beir_errors_name_file_and_line(tmp_path: Path) -> None:
    root = tmp_path / "mini"
    (root / "qrels").mkdir(parents=True)
    shutil.copy(_scifact() / "queries.jsonl.gz", root / "queries.jsonl.gz")
    qrels = root / "qrels" / "test.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\n1\t31715818\t1\n3\t14717500\t1.5\n")
    with pytest.raises(InputError) as info:
        load_beir(root, "test")
    assert str(info.value) == f"{qrels}:3: score must be an integer, got '1.5'"
    assert (info.value.path, info.value.line) == (str(qrels), 3)
    with pytest.raises(InputError, match=r"dev\.tsv: no such split; present: test$"):
        load_beir(root, "dev")
    qrels.write_text("query-id\tcorpus-id\tscore\nnot-a-query\t31715818\t1\n")
    with pytest.raises(InputError, match=r"test\.tsv:2: query-id 'not-a-query' is not in the"):
        load_beir(root, "test")


# -- TREC -----------------------------------------------------------------------------------

SGML = """\
<top>
<num> Number: 301
<title> International Organized
Crime

<desc> Description:
Identify organizations that participate in international criminal activity.

<narr> Narrative:
A relevant document must as a minimum identify the organization.
</top>

<top>
<num>302</num>
<title>Poliomyelitis and Post-Polio</title>
<desc>Is the disease still a problem?</desc>
</top>
"""
QRELS_TXT = "301 0 FBIS3-10082 1\n301 0 FBIS3-10169 0\n301 0 FT921-7107 2\n302 0 LA0101-0001 1\n"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    if name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def test_trec_sgml_topics_and_qrels(tmp_path: Path) -> None:
    topics = _write(tmp_path, "topics.txt", SGML)
    qrels = _write(tmp_path, "qrels.txt.gz", QRELS_TXT)
    j = load_trec(topics, qrels)
    assert j.format == "trec"
    assert {t.id: t.text for t in j.topics.values()} == {
        "301": "International Organized Crime",
        "302": "Poliomyelitis and Post-Polio",
    }
    assert j.qrels == {
        "301": {"FBIS3-10082": 1, "FBIS3-10169": 0, "FT921-7107": 2},
        "302": {"LA0101-0001": 1},
    }
    assert j.relevant("301") == {"FBIS3-10082", "FT921-7107"}
    desc = read_topics(topics, field="desc")
    assert desc["301"].text == (
        "Identify organizations that participate in international criminal activity."
    )


def test_trec_tsv_topics_and_beir_style_qrels(tmp_path: Path) -> None:
    topics = _write(tmp_path, "q.tsv", "1\tfirst  query\n\n2\tsecond\n")
    qrels = _write(tmp_path, "q.qrels", "query-id\tcorpus-id\tscore\n1\td1\t1\n2\td2\t0\n")
    j = load_trec(topics, qrels)
    assert {t.id: t.text for t in j.topics.values()} == {"1": "first query", "2": "second"}
    assert j.qrels == {"1": {"d1": 1}, "2": {"d2": 0}}


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        (
            SGML.replace("<num>302</num>", "<num>301</num>"),
            13,
            "duplicate topic '301' (first on line 1)",
        ),
        (SGML.replace("<num>302</num>", ""), 13, "topic without <num>"),
        (
            SGML.replace("<num>302</num>", "<num>3 02</num>"),
            14,
            "expected one topic number after <num>, got '3 02'",
        ),
        (SGML.replace("</top>\n\n<top>", "\n<top>"), 12, "<top> inside <top> (opened on line 1)"),
        (SGML[: -len("</top>\n")], 13, "<top> is not closed by </top>"),
        (
            SGML.replace("Post-Polio</title>", "Post-Polio</desc>"),
            15,
            "</desc> where </title> was expected (<title> opened on line 15)",
        ),
        (
            SGML.replace("<title>Poliomyelitis and Post-Polio</title>", "<title> </title>"),
            15,
            "topic 302: <title> is empty",
        ),
        (
            SGML.replace("<title>Poliomyelitis and Post-Polio</title>", ""),
            13,
            "topic 302: no <title> (the query text field)",
        ),
        (SGML + "stray words\n", 18, "text outside <top> ... </top>: 'stray words'"),
        (
            SGML.replace("<top>\n<num>302", "<top> early\n<num>302"),
            13,
            "text outside any field tag: 'early'",
        ),
        (SGML + "</desc>\n", 18, "</desc> outside <top>"),
        ("1\tfirst query\n2\n", 2, "expected 2 tab-separated columns (query id, text), got 1: '2'"),
        (
            "1\tfirst\tquery\n",
            1,
            "expected 2 tab-separated columns (query id, text), got 3: '1\\tfirst\\tquery'",
        ),
        ("1\tfirst query\n1\tagain\n", 2, "duplicate topic '1' (first on line 1)"),
        ("1\t  \n", 1, "query '1' has no text"),
        (" 1\tx\n", 1, "query id must be one word without spaces, got ' 1'"),
        ("", None, "empty: expected TREC topics (<top> ... </top>, or qid<TAB>text)"),
        (b"1\tcaf\xe9\n", 1, "not UTF-8 text (byte 6 of the line)"),
    ],
)
def test_trec_topic_errors(
    tmp_path: Path, text: str | bytes, line: int | None, reason: str
) -> None:
    path = tmp_path / "topics.txt"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(InputError) as info:
        read_topics(path)
    where = "" if line is None else f":{line}"
    assert str(info.value) == f"{path}{where}: {reason}"


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        (
            "301 0 d1 1\n301 0 d2\n",
            2,
            "expected 4 whitespace-separated columns (query id, iteration, document id, relevance),"
            " got 3: '301 0 d2'",
        ),
        ("301 0 d1 1.5\n", 1, "relevance must be an integer, got '1.5'"),
        ("301 0 d1 1\n\n301 Q0 d1 2\n", 3, "duplicate judgement of '301', 'd1' (first on line 1)"),
        ("999 0 d1 1\n", 1, "query id '999' is not in the topics file (TOPICS)"),
        ("\n\n", None, "no judgements: expected lines of 'qid iteration docid relevance'"),
    ],
)
def test_trec_qrels_errors(tmp_path: Path, text: str, line: int | None, reason: str) -> None:
    topics_path = _write(tmp_path, "topics.txt", SGML)
    topics = read_topics(topics_path)
    path = _write(tmp_path, "qrels.txt", text)
    with pytest.raises(InputError) as info:
        read_trec_qrels(path, topics=topics, topics_path=topics_path)
    where = "" if line is None else f":{line}"
    assert str(info.value) == f"{path}{where}: {reason.replace('TOPICS', str(topics_path))}"


def test_negative_grades_are_kept_as_not_relevant(tmp_path: Path) -> None:
    topics = _write(tmp_path, "t.tsv", "1\tq\n")
    j = load_trec(topics, _write(tmp_path, "q.txt", "1 0 spam -2\n1 0 good 3\n"))
    assert j.qrels == {"1": {"spam": -2, "good": 3}} and j.relevant("1") == {"good"}


# -- _rank_eval -----------------------------------------------------------------------------

RANK_EVAL = """\
{
  "requests": [
    {"id": "q1", "request": {"query": {"match": {"text": "cancer cells"}}, "size": 3},
     "ratings": [{"_index": "docs", "_id": "d1", "rating": 2},
                 {"_index": "docs", "_id": "d2", "rating": 0}]},
    {"id": "q2", "template_id": "by_text", "params": {"q": "heart  disease"},
     "ratings": [{"_index": "docs", "_id": "d3", "rating": 1}]}
  ],
  "templates": [
    {"id": "by_text", "template": {"inline": {"query": {"match": {"text": "{{q}}"}}}}}
  ],
  "metric": {"dcg": {"k": 10, "normalize": true}}
}
"""


def test_rank_eval_body(tmp_path: Path) -> None:
    path = _write(tmp_path, "rank_eval.json", RANK_EVAL)
    j = load_rank_eval(path, query_param="q")
    assert j.format == "rank_eval" and not j.key_by_index
    assert j.qrels == {"q1": {"d1": 2, "d2": 0}, "q2": {"d3": 1}}
    q1, q2 = j.topics["q1"], j.topics["q2"]
    assert (q1.text, q1.line, q1.request) == (
        "cancer cells",
        3,
        {"query": {"match": {"text": "cancer cells"}}, "size": 3},
    )
    assert (q2.text, q2.text_from_params, q2.line) == ("heart disease", True, 6)
    assert q2.template == {"query": {"match": {"text": "{{q}}"}}}
    # Without --query-param the template's text is read after rendering.
    assert load_rank_eval(path).topics["q2"].text is None
    # Ratings of several indices: documents are keyed `_index/_id`.
    two = _write(
        tmp_path,
        "two.json",
        RANK_EVAL.replace('"_index": "docs", "_id": "d3"', '"_index": "other", "_id": "d3"'),
    )
    j2 = load_rank_eval(two)
    assert j2.key_by_index and j2.qrels["q2"] == {"other/d3": 1}
    search = searches.request_search(q1, q1.request or {}, "cancer cells", size=20)
    assert search.body == {"query": {"match": {"text": "cancer cells"}}, "size": 20}


@pytest.mark.parametrize(
    ("old", "new", "line", "reason"),
    [
        (
            '"rating": 2',
            '"rating": 2.5',
            4,
            "requests[0].ratings[0].rating: expected an integer, got the number 2.5",
        ),
        (
            '"rating": 2',
            '"rating": true',
            4,
            "requests[0].ratings[0].rating: expected an integer, got a boolean",
        ),
        ('"rating": 2', '"rating": NaN', 4, "invalid JSON: NaN is not a JSON value"),
        (
            '"_id": "d2"',
            '"_id": "d1"',
            5,
            "requests[0].ratings[1]: duplicate rating of 'docs', 'd1' (first: ratings[0], line 4)",
        ),
        (
            '"id": "q2"',
            '"id": "q1"',
            6,
            "requests[1].id: duplicate request id 'q1' (first on line 3)",
        ),
        (
            '"metric"',
            '"metrics"',
            12,
            "metrics: unknown key"
            " (expected one of requests, metric, templates, max_concurrent_searches)",
        ),
        (
            '"rating": 0}',
            '"rating": 0, "score": 1}',
            5,
            "requests[0].ratings[1].score: unknown key (expected one of _index, _id, rating)",
        ),
        (
            '"template_id": "by_text"',
            '"template_id": "nope"',
            6,
            "requests[1].template_id: 'nope' is not in the body's templates (known: 'by_text')",
        ),
        (
            '{"match": {"text": "cancer cells"}}',
            '{"term": {"n": 1}}',
            3,
            "requests[0].request: no query text in its query (the proxy reads match,"
            " multi_match, query_string and similar clauses)",
        ),
        (
            '"_index": "docs", "_id": "d1"',
            '"_id": "d1"',
            4,
            "requests[0].ratings[0]._index: expected a non-empty string, got nothing",
        ),
        (
            '"ratings": [{"_index": "docs", "_id": "d3", "rating": 1}]',
            '"ratings": {}',
            7,
            "requests[1].ratings: expected an array, got an object",
        ),
        ('"id": "q1", ', "", 3, "requests[0].id: expected a non-empty string, got nothing"),
        (
            '"id": "q1", "request"',
            '"id": "q1", "template_id": "by_text", "request"',
            3,
            "requests[0]: expected either 'request' or 'template_id'",
        ),
        (
            '"params": {"q": "heart  disease"}',
            '"params": {"text": "heart"}',
            6,
            "requests[1].params.q: expected the query text (a non-empty string), got nothing",
        ),
        (
            '"inline"',
            '"script"',
            10,
            "templates[0].template.script: unknown key (expected one of inline, source)",
        ),
        (
            '"size": 3}',
            '"size": 3,}',
            3,
            "invalid JSON: Expecting property name enclosed in double quotes (column 86)",
        ),
    ],
)
def test_rank_eval_errors(tmp_path: Path, old: str, new: str, line: int, reason: str) -> None:
    assert old in RANK_EVAL
    path = _write(tmp_path, "rank_eval.json", RANK_EVAL.replace(old, new, 1))
    with pytest.raises(InputError) as info:
        load_rank_eval(path, query_param="q")
    assert str(info.value) == f"{path}:{line}: {reason}"


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("[]", 1, "the body: expected an object, got an array"),
        ('{"requests": []}', 1, "requests: expected at least one request"),
        ('{"requests": [1]}', 1, "requests[0]: expected an object, got the number 1"),
        ('{"metric": {}}', 1, "requests: expected an array, got nothing"),
        ('{"requests": [\n  {"id": "a", "id": "b"}]}', 2, "duplicate key 'id'"),
        (
            '{"requests": [\n{"id": "a",\n "request": {}, ',
            4,
            "invalid JSON: Expecting property name enclosed in double quotes (column 1)",
        ),
    ],
)
def test_rank_eval_shape_errors(tmp_path: Path, text: str, line: int, reason: str) -> None:
    path = _write(tmp_path, "body.json", text)
    with pytest.raises(InputError) as info:
        load_rank_eval(path)
    assert str(info.value) == f"{path}:{line}: {reason}"


# -- search bodies --------------------------------------------------------------------------


def test_default_body_and_template(tmp_path: Path) -> None:
    topic = Topic("7", 'a "quoted" \\ query')
    plain = searches.topic_search(topic, size=30, fields=("title", "text"))
    assert plain.body == {
        "query": {"multi_match": {"query": 'a "quoted" \\ query', "fields": ["title", "text"]}},
        "size": 30,
    }
    assert searches.default_body("x", (), 5) == {
        "query": {"multi_match": {"query": "x"}},
        "size": 5,
    }
    path = _write(
        tmp_path,
        "t.json",
        '{"query": {"match": {"body": {"query": "{{query}}"}}}, "_source": false}',
    )
    template = searches.load_template(path)
    body = searches.topic_search(topic, size=10, template=template).body
    assert body == {
        "query": {"match": {"body": {"query": 'a "quoted" \\ query'}}},
        "_source": False,
        "size": 10,
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '{"query": {"match_all": {}}}',
            "T: no {{query}} placeholder: put it where the query text goes",
        ),
        (
            '{"query": {"match": {"t": {{query}}}}}',
            "T:1: not JSON once {{query}} is filled in: Expecting value (column 27);"
            ' {{query}} goes inside a JSON string, e.g. "query": "{{query}}"',
        ),
        ('["{{query}}"]', "T: expected a JSON object (a search body)"),
        (
            '{"query": {"match": {"t": "{{query}}"}}, "size": 5}',
            "T: sets 'size': leave it out, eval asks for the top --size hits",
        ),
    ],
)
def test_template_errors(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, "t.json", text)
    with pytest.raises(InputError) as info:
        searches.load_template(path)
    assert str(info.value) == message.replace("T", str(path), 1)


# -- the report and its TREC files ----------------------------------------------------------


def _judgments(qrels: dict[str, dict[str, int]]) -> Judgments:
    topics = {q: Topic(q, f"text of {q}") for q in qrels}
    return Judgments("trec", "topics.txt", topics, qrels)


def _system(name: str, ranked: dict[str, list[str]], **kw: Any) -> SystemRun:
    results = {q: QueryResult(tuple(d), 0.01 * (i + 1)) for i, (q, d) in enumerate(ranked.items())}
    return SystemRun(name, kw.pop("kind", "config"), "http://127.0.0.1:9200", results, 1.0, **kw)


def _plan(judgments: Judgments, out: Path, size: int = 11) -> pipeline.Plan:
    return pipeline.Plan(
        judgments=judgments,
        index="docs",
        cluster="http://127.0.0.1:9200",
        connection=Connection(),
        out=out,
        size=size,
    )


RERANKED = {
    "q1": ["d1", "d2", "d3", "d4"],
    "q2": ["d5"] + [f"x{i}" for i in range(10)],
    "q3": ["d7", "d8"],
    "q4": [],
}


def test_trec_files_give_the_reports_numbers(tmp_path: Path) -> None:
    qrels = {**QRELS, "q5": {"gone": 1}}  # q5: its relevant document is not in the index
    judgments = _judgments(qrels)
    present = {"d1", "d2", "d5", "d7", "d6", "d8"}
    scorable, absent, no_relevant = pipeline.split_queries(judgments, present)
    assert (scorable, absent, no_relevant) == (["q1", "q2", "q3", "q4"], ["q5"], [])
    systems = [
        _system("engine", RANKED, kind="engine"),
        _system("reranked", RERANKED, window=11, model="/m", standin=False),
    ]
    ev = pipeline.finish(_plan(judgments, tmp_path), systems, scorable, absent, no_relevant, [])
    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["queries"] == {"scored": 4, "absent": ["q5"], "no_relevant": []}
    file_qrels = list(ir_measures.read_trec_qrels(str(tmp_path / "qrels.trec")))
    assert {q.query_id for q in file_qrels} == {"q1", "q2", "q3", "q4"}
    measures = [ir_measures.parse_measure(m) for m in ev.measures + ev.curve]
    for system in doc["systems"]:
        run = list(ir_measures.read_trec_run(str(tmp_path / system["run_file"])))
        assert {r.query_id for r in run} == {"q1", "q2", "q3"}  # q4: no hits, no lines
        per_query = {str(m): dict.fromkeys(scorable, 0.0) for m in measures}
        for metric in ir_measures.iter_calc(measures, file_qrels, run):
            per_query[str(metric.measure)][metric.query_id] = metric.value
        for name, values in per_query.items():
            assert system["means"][name] == pytest.approx(sum(values.values()) / 4, abs=1e-12)
            assert doc["per_query"][system["name"]]["values"].get(name, values) == pytest.approx(
                values
            )
    reranked = next(s for s in doc["systems"] if s["name"] == "reranked")
    assert reranked["means"]["RR@10"] == pytest.approx(0.75)  # q1, q2, q3 first; q4 none
    comparison = next(
        c for c in doc["comparisons"] if c["system"] == "reranked" and c["measure"] == "nDCG@10"
    )
    assert (comparison["wins"], comparison["ties"], comparison["losses"]) == (3, 1, 0)
    assert (tmp_path / "runs" / "engine.run").read_text().splitlines()[0] == "q1 Q0 d3 1 4 engine"
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# rerank-proxy eval: `docs`\n")
    assert "relevant documents absent from the index" in md and "`q5`" in md
    assert "| reranked |" in md
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {"delta-reranked.png", "cutoffs.png"}
    assert (tmp_path / "plots" / "cutoffs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_queries_with_nothing_judged_relevant_are_reported(tmp_path: Path) -> None:
    judgments = _judgments({"a": {"d1": 1}, "b": {"d2": 0}, "c": {"d3": 1}})
    assert pipeline.split_queries(judgments, {"d1", "d2"}) == (["a"], ["c"], ["b"])


def test_standin_is_the_first_line_and_windows_are_plotted(tmp_path: Path) -> None:
    judgments = _judgments({"q1": QRELS["q1"], "q3": QRELS["q3"]})
    ranked = {q: RANKED[q] for q in judgments.qrels}
    systems = [
        _system("engine", ranked, kind="engine"),
        _system(
            "w2",
            {q: list(reversed(d)) for q, d in ranked.items()},
            window=2,
            model="/s",
            standin=True,
        ),
        _system("w4", ranked, window=4, model="/s", standin=True),
    ]
    pipeline.finish(_plan(judgments, tmp_path, size=4), systems, ["q1", "q3"], [], [], [])
    first = (tmp_path / "report.md").read_text().splitlines()[0]
    assert first.startswith(
        "> **STAND-IN MODEL: random weights, the reranked order is MEANINGLESS**"
    )
    assert "`w2` (/s), `w4` (/s)" in first
    assert (tmp_path / "plots" / "windows.png").is_file()


def test_trec_ids_with_spaces_are_encoded() -> None:
    assert report.trec_id("a b%c\td") == "a%20b%25c%09d"
    assert report.trec_id("plain-id_1") == "plain-id_1"


# -- options and the CLI --------------------------------------------------------------------


def test_credentials_as_the_official_clients_take_them() -> None:
    basic = Connection.build(user="elastic", password="pw")
    assert basic.headers()["Authorization"] == "Basic " + base64.b64encode(b"elastic:pw").decode()
    api = Connection.build(api_key="id1:secret")
    assert api.headers()["Authorization"] == "ApiKey " + base64.b64encode(b"id1:secret").decode()
    assert Connection.build(api_key="ZW5jb2RlZA==").authorization == "ApiKey ZW5jb2RlZA=="
    assert Connection.build(insecure=True).ssl is False
    assert split_credentials("https://u:p@es:9200/") == ("https://es:9200", "u", "p")
    assert split_credentials("http://es:9200/") == ("http://es:9200", None, None)


def _config(tmp_path: Path, **rule: Any) -> Path:
    raw = {
        "upstream": {"url": "http://127.0.0.1:9"},
        "model": {"name": "fake", "backend": "fake"},
        "defaults": {"enabled": False},
        "indices": [{"match": ["docs"], "window": 7, **rule}],
    }
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_proxy_configs_that_would_not_rerank_are_refused(tmp_path: Path) -> None:
    pc = pipeline.proxy_config(str(_config(tmp_path)), "docs", "proxy")
    assert (pc.window, pc.config.listen.host, pc.config.listen.port) == (7, "127.0.0.1", 0)
    with pytest.raises(UsageError, match=r"reranking is off for 'other'"):
        pipeline.proxy_config(str(_config(tmp_path)), "other", "proxy")
    with pytest.raises(UsageError, match=r"is in shadow mode"):
        pipeline.proxy_config(str(_config(tmp_path, mode="shadow")), "docs", "proxy")


def _eval(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    status = cli.main(["eval", *argv])
    return status, capsys.readouterr().err


def test_cli_exit_2_with_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, err = _eval(capsys, "--index", "docs", "--cluster", "http://127.0.0.1:9")
    assert (status, err) == (
        2,
        "rerank-proxy eval: give one of --beir DIR, --topics FILE --qrels FILE, --rank-eval FILE\n",
    )
    topics = _write(tmp_path, "t.tsv", "1\tq\n")
    qrels = _write(tmp_path, "q.txt", "1 0 d1 x\n")
    status, err = _eval(
        capsys,
        "--topics",
        str(topics),
        "--qrels",
        str(qrels),
        "--index",
        "d",
        "--cluster",
        "http://h:1",
    )
    assert (status, err) == (
        2,
        f"rerank-proxy eval: {qrels}:1: relevance must be an integer, got 'x'\n",
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("defaults:\n  window: 0\n")
    status, err = _eval(
        capsys, "--topics", str(topics), "--qrels", str(qrels), "--index", "d", "--config", str(bad)
    )
    assert (status, err) == (2, f"{bad}: defaults.window: must be >= 1\n")
    status, err = _eval(capsys, "--topics", str(topics), "--qrels", str(qrels), "--index", "d")
    assert status == 2 and "--cluster URL is needed" in err
    status, err = _eval(
        capsys, "--beir", "x", "--index", "d", "--cluster", "http://h:1", "--metric", "nope"
    )
    assert (status, err) == (
        2,
        "rerank-proxy eval: --metric: 'nope' is not an ir_measures measure"
        " (e.g. nDCG@10, RR@10, R@100, AP)\n",
    )
    status, err = _eval(
        capsys, "--rank-eval", "x", "--fields", "t", "--index", "d", "--cluster", "http://h:1"
    )
    assert status == 2 and "bring their own search bodies" in err
    status, err = _eval(
        capsys,
        "--topics",
        str(topics),
        "--qrels",
        str(qrels),
        "--index",
        "d",
        "--cluster",
        "http://h:1",
        "--load",
    )
    assert (status, err) == (
        2,
        "rerank-proxy eval: --load indexes a BEIR corpus: it needs --beir\n",
    )


def test_cli_exit_1_when_the_cluster_cannot_be_reached(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topics = _write(tmp_path, "t.tsv", "1\tq\n")
    qrels = _write(tmp_path, "q.txt", "1 0 d1 1\n")
    status, err = _eval(
        capsys,
        "--topics",
        str(topics),
        "--qrels",
        str(qrels),
        "--index",
        "d",
        "--cluster",
        "http://127.0.0.1:9",
        "--out",
        str(tmp_path / "out"),
        "--quiet",
    )
    assert status == 1
    assert err.startswith("rerank-proxy eval: checking which judged documents exist in 'd':")
    assert not (tmp_path / "out").exists()


def test_serving_never_imports_the_evaluation_libraries() -> None:
    import subprocess
    import sys

    code = (
        "import sys, argparse; import proxy.cli, proxy.serve, proxy.evaluate.cli as c;"
        " c.add_parser(argparse.ArgumentParser().add_subparsers());"
        " bad = [m for m in ('ir_measures', 'matplotlib', 'tqdm', 'scipy', 'pytrec_eval')"
        " if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
