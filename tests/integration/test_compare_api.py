"""The comparison page's API (`POST /_rerank_proxy/compare/api/search`) and its static files.

The proxy runs in-process (`create_app` registers `proxy.compare`'s routes) against
`rerank_support.Engine` on the recording fake upstream; the model is the deterministic
word-overlap backend. What is proven here: both orders come from ONE upstream search, the
caller's own credentials go to the engine (never the configured ones), judgments from TREC
and BEIR qrels files are attached, the page is absent (404) unless `compare.enabled`, and
bad requests get a 400 naming what is wrong without the engine being asked.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from proxy.app import create_app
from proxy.compare import API_PATH, PREFIX
from proxy.config import ConfigError, parse_config
from proxy.rerank.base import Backend
from proxy.rerank.front import RerankFront
from proxy.rerank.local import LocalExecutor

from .fakes import FakeUpstream, RawResponse, RunningProxy, http_response, proxy_config, start_app
from .rerank_support import (
    ENGINE_ORDER,
    ES_HEADERS,
    QUERY,
    RERANKED,
    WINDOW,
    Engine,
    Misbehaving,
    Recording,
    error_reply,
    kind_of,
    rules,
    send,
)

Start = Callable[..., Awaitable[RunningProxy]]


@pytest.fixture
def engine(upstream: FakeUpstream) -> Engine:
    return Engine(upstream)


@pytest.fixture
async def start(upstream: FakeUpstream) -> AsyncIterator[Start]:
    """Start a proxy with the compare routes; `compare` is the `compare:` config section."""
    running: list[RunningProxy] = []

    async def go(
        *,
        compare: dict[str, Any] | None = None,
        backend: Backend | None = None,
        url: str | None = None,
    ) -> RunningProxy:
        raw = {
            **proxy_config(url or upstream.url),
            "indices": rules(),
            "compare": {"enabled": True} if compare is None else compare,
        }
        reranker = RerankFront(LocalExecutor(backend or Recording()), cache_size=0)
        app = create_app(parse_config(raw), reranker=reranker)  # compare's routes included
        proxy = await start_app(app)
        running.append(proxy)
        return proxy

    yield go
    for proxy in running:
        await proxy.close_clients()
        await proxy.stop()


async def compare(proxy: RunningProxy, body: Any, **kw: Any) -> tuple[RawResponse, Any]:
    resp = await send(proxy, API_PATH, body, **kw)
    return resp, json.loads(resp.body)


def ids(rows: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in rows]


def by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in rows}


def searches(engine: Engine) -> list[Any]:
    return [r for r in engine.requests if kind_of(r) == "search"]


# -- both orders from one search ---------------------------------------------------------


async def test_both_orders_come_from_one_upstream_search(engine: Engine, start: Start) -> None:
    proxy = await start()
    resp, doc = await compare(proxy, {"index": "books", "query": QUERY})
    assert resp.status == 200, resp.body
    assert (resp.header("Content-Type") or "").startswith("application/json")
    assert len(engine.requests) == 1 and len(searches(engine)) == 1
    sent = json.loads(bytes(engine.requests[0].body))
    assert engine.requests[0].target == "/books/_search"
    assert sent == {
        "query": {"multi_match": {"query": QUERY, "fields": ["title"]}},
        "size": WINDOW,
        "from": 0,
    }
    assert ids(doc["engine"]) == ENGINE_ORDER[:10]
    assert ids(doc["reranked"]) == RERANKED[:10]
    assert doc["rerank"] == {"state": "applied", "reason": None}
    assert doc["query"] == QUERY and doc["size"] == 10 and doc["window"] == WINDOW
    assert doc["scored"] == WINDOW - 1  # d9 has no title
    assert doc["rule"] == {
        "name": "books",
        "enabled": True,
        "mode": "rerank",
        "score_mode": "replace",
        "window": WINDOW,
    }
    assert doc["model"] == "fake-overlap-v1"
    assert doc["judgments"] is None and doc["metrics"] is None
    assert doc["search"] == sent

    top = doc["reranked"][0]
    assert top["id"] == "d3" and top["rank"] == 1 and top["engine_rank"] == 4
    assert (top["movement"], top["delta"], top["reranked_rank"]) == ("up", 3, 1)
    assert top["engine_score"] == 17.0 and top["text"] == "red apple"
    assert 0.5 < top["model_score"] < 1 and top["judgment"] is None
    assert top["index"] == "books"
    scores = [r["model_score"] for r in doc["reranked"] if r["model_score"] is not None]
    assert scores == sorted(scores, reverse=True) and len(scores) == WINDOW - 1
    untexted = by_id(doc["reranked"])["d9"]
    assert untexted["text"] is None and untexted["model_score"] is None

    engine_rows = by_id(doc["engine"])
    assert [r["rank"] for r in doc["engine"]] == list(range(1, 11))
    assert engine_rows["d0"]["reranked_rank"] == 5 and engine_rows["d0"]["movement"] == "down"
    assert engine_rows["d0"]["delta"] == -4
    assert engine_rows["d3"]["model_score"] == top["model_score"]  # model scores in both columns
    assert engine_rows["d6"]["movement"] == "down"
    assert engine_rows["d8"]["movement"] == engine_rows["d9"]["movement"] == "same"


async def test_a_short_page_marks_hits_new_and_out(engine: Engine, start: Start) -> None:
    proxy = await start()
    _, doc = await compare(proxy, {"index": "books", "query": QUERY, "size": 4})
    assert json.loads(bytes(engine.requests[0].body))["size"] == WINDOW  # the whole window
    assert ids(doc["engine"]) == ENGINE_ORDER[:4]
    assert ids(doc["reranked"]) == RERANKED[:4]
    moves = {r["id"]: r["movement"] for r in doc["reranked"]}
    assert moves == {"d3": "up", "d5": "new", "d7": "new", "d1": "down"}
    assert by_id(doc["reranked"])["d7"]["engine_rank"] == 8
    moves = {r["id"]: r["movement"] for r in doc["engine"]}
    assert moves == {"d0": "out", "d1": "down", "d2": "out", "d3": "up"}
    assert by_id(doc["engine"])["d0"]["reranked_rank"] is None
    assert by_id(doc["engine"])["d0"]["model_score"] is not None  # scored, just not in the top 4


async def test_a_page_past_the_window_keeps_the_engine_order_there(
    engine: Engine, start: Start
) -> None:
    proxy = await start()
    _, doc = await compare(proxy, {"index": "books", "query": QUERY, "size": 15})
    assert json.loads(bytes(engine.requests[0].body))["size"] == 15
    assert ids(doc["reranked"]) == RERANKED[:15]
    past = doc["reranked"][WINDOW:]
    assert all(r["movement"] == "same" and r["model_score"] is None for r in past)


async def test_a_pasted_body_is_planned_like_a_client_search(engine: Engine, start: Start) -> None:
    proxy = await start()
    body = {"query": {"match": {"title": QUERY}}, "from": 5, "size": 3, "_source": ["title"]}
    _, doc = await compare(proxy, {"index": "books", "body": body, "size": 4})
    sent = json.loads(bytes(engine.requests[0].body))
    assert sent["query"] == body["query"] and sent["from"] == 0 and sent["size"] == WINDOW
    assert doc["query"] == QUERY  # extracted from the DSL, as for a client's search
    assert ids(doc["reranked"]) == RERANKED[:4]
    assert len(searches(engine)) == 1


async def test_query_text_with_a_body_is_what_the_model_scores(
    engine: Engine, start: Start
) -> None:
    backend = Recording()
    proxy = await start(backend=backend)
    body = {"query": {"match": {"title": "red wine"}}}
    _, doc = await compare(proxy, {"index": "books", "body": body, "query": "apple"})
    assert doc["query"] == "apple" and backend.queries == ["apple"]
    assert json.loads(bytes(engine.requests[0].body))["query"] == body["query"]


async def test_a_disabled_rule_is_compared_and_says_so(engine: Engine, start: Start) -> None:
    proxy = await start()
    resp, doc = await compare(proxy, {"index": "archive", "query": QUERY})
    assert resp.status == 200
    assert doc["rule"]["enabled"] is False and doc["rule"]["name"] == "archive"
    assert ids(doc["reranked"]) == RERANKED[:10]


# -- credentials -------------------------------------------------------------------------


async def test_the_callers_credentials_go_to_the_engine(
    engine: Engine, start: Start, upstream: FakeUpstream
) -> None:
    # Credentials in upstream.url are never used: the caller's own are forwarded.
    proxy = await start(url=f"http://stored:secret@127.0.0.1:{upstream.port}")
    headers = {
        "Authorization": "Basic Y2FsbGVyOnB3",
        "es-security-runas-user": "alice",
        "X-Opaque-Id": "compare-1",
    }
    resp, _ = await compare(proxy, {"index": "books", "query": QUERY}, headers=headers)
    assert resp.status == 200
    (req,) = engine.requests
    for name, value in headers.items():
        assert req.getall(name) == [value]
    assert b"stored" not in req.head and b"c2VjcmV0" not in req.head
    assert req.header("Content-Type") == "application/json"


async def test_no_credentials_means_none_are_sent(engine: Engine, start: Start) -> None:
    proxy = await start()
    await compare(proxy, {"index": "books", "query": QUERY})
    assert engine.requests[0].header("Authorization") is None


async def test_the_engines_own_error_is_handed_on(engine: Engine, start: Start) -> None:
    proxy = await start()
    engine.then("search", error_reply(404, "index_not_found_exception"))
    resp, doc = await compare(proxy, {"index": "books", "query": QUERY})
    assert resp.status == 404 and doc["error"]["type"] == "index_not_found_exception"

    # A secured cluster's challenge reaches the browser, which then asks for credentials.
    challenge = [("WWW-Authenticate", 'Basic realm="security" charset="UTF-8"'), *ES_HEADERS]
    body = json.dumps({"error": {"type": "security_exception"}, "status": 401}).encode()
    engine.then("search", http_response(401, challenge, body))
    resp, doc = await compare(proxy, {"index": "books", "query": QUERY})
    assert resp.status == 401 and doc["error"]["type"] == "security_exception"
    assert resp.header("WWW-Authenticate") == 'Basic realm="security" charset="UTF-8"'
    assert len(searches(engine)) == 2  # once per comparison, never re-sent


async def test_an_unreachable_engine_is_a_502(start: Start, closed_port: int) -> None:
    proxy = await start(url=f"http://127.0.0.1:{closed_port}")
    resp, doc = await compare(proxy, {"index": "books", "query": QUERY})
    assert resp.status == 502 and doc["error"]["type"] == "proxy_upstream_unavailable"


async def test_a_reranker_failure_is_reported_with_the_engine_order(
    engine: Engine, start: Start
) -> None:
    proxy = await start(backend=Misbehaving("raise"))
    resp, doc = await compare(proxy, {"index": "books", "query": QUERY})
    assert resp.status == 200
    assert doc["rerank"] == {"state": "failed", "reason": "error"}
    assert ids(doc["reranked"]) == ids(doc["engine"]) == ENGINE_ORDER[:10]  # what clients get
    assert all(r["model_score"] is None for r in doc["reranked"])
    assert doc["engine"][0]["text"] == "green pear tart"  # the text it would have scored


# -- judgments ---------------------------------------------------------------------------

GRADES = {"d3": 2, "d7": 1, "d0": 0, "d19": 1}
QUERIES = [{"_id": "q1", "text": "Red  APPLE"}, {"_id": "q2", "text": "lemon"}]


def write_qrels(tmp_path: Path, fmt: str) -> Path:
    """A qrels file in `fmt` with a BEIR queries file next to it (as BEIR lays them out)."""
    queries = "".join(json.dumps(q) + "\n" for q in QUERIES)
    if fmt == "beir":
        (tmp_path / "qrels").mkdir()
        path = tmp_path / "qrels" / "test.tsv"
        rows = [f"q1\t{d}\t{g}" for d, g in GRADES.items()] + ["q2\td4\t1"]
        path.write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")
        (tmp_path / "queries.jsonl").write_text(queries)
    else:
        path = tmp_path / "qrels.txt"
        rows = [f"q1 0 {d} {g}" for d, g in GRADES.items()] + ["q2 0 d4 1"]
        path.write_text("\n".join(rows) + "\n")
        (tmp_path / "queries.jsonl").write_text(queries)
    return path


def expected_ndcg(ranked: list[str], k: int) -> float:
    def dcg(grades: list[int]) -> float:
        return sum((math.pow(2, g) - 1) / math.log2(i + 2) for i, g in enumerate(grades))

    ideal = dcg(sorted(GRADES.values(), reverse=True)[:k])
    return dcg([GRADES.get(d, 0) for d in ranked[:k]]) / ideal


@pytest.mark.parametrize("fmt", ["trec", "beir"])
async def test_judgments_are_attached_by_query_text(
    engine: Engine, start: Start, tmp_path: Path, fmt: str
) -> None:
    qrels = write_qrels(tmp_path, fmt)
    proxy = await start(compare={"enabled": True, "qrels": str(qrels)})
    _, doc = await compare(proxy, {"index": "books", "query": QUERY})
    assert doc["judgments"] == {"query_id": "q1", "matched_by": "text", "judged": 4, "relevant": 3}
    for column in ("engine", "reranked"):
        rows = by_id(doc[column])
        assert {d: rows[d]["judgment"] for d in ("d3", "d7", "d0", "d1")} == {
            "d3": 2,
            "d7": 1,
            "d0": 0,
            "d1": None,
        }
    metrics = doc["metrics"]
    assert metrics["k"] == 10
    assert metrics["engine"]["ndcg"] == pytest.approx(expected_ndcg(ENGINE_ORDER, 10))
    assert metrics["reranked"]["ndcg"] == pytest.approx(expected_ndcg(RERANKED, 10))
    assert metrics["reranked"]["ndcg"] > metrics["engine"]["ndcg"]
    assert metrics["engine"] == {**metrics["engine"], "relevant": 2, "judged": 3}


async def test_judgments_by_query_id_and_unmatched_queries(
    engine: Engine, start: Start, tmp_path: Path
) -> None:
    qrels = write_qrels(tmp_path, "trec")
    proxy = await start(compare={"enabled": True, "qrels": str(qrels)})
    _, doc = await compare(proxy, {"index": "books", "query": "fig", "query_id": "q1"})
    assert doc["judgments"]["query_id"] == "q1" and doc["judgments"]["matched_by"] == "query_id"
    assert by_id(doc["engine"])["d3"]["judgment"] == 2

    for request in ({"query": "no such query"}, {"query": QUERY, "query_id": "q9"}):
        _, doc = await compare(proxy, {"index": "books", **request})
        assert doc["judgments"] == {
            "query_id": None,
            "matched_by": None,
            "judged": 0,
            "relevant": 0,
        }
        assert doc["metrics"] is None
        assert all(r["judgment"] is None for r in doc["engine"] + doc["reranked"])


async def test_trec_qrels_without_a_queries_file_match_by_id_only(
    engine: Engine, start: Start, tmp_path: Path
) -> None:
    path = tmp_path / "qrels.txt"
    path.write_text("q1 0 d3 2\n")
    proxy = await start(compare={"enabled": True, "qrels": str(path)})
    _, doc = await compare(proxy, {"index": "books", "query": "red apple"})
    assert doc["judgments"]["query_id"] is None
    _, doc = await compare(proxy, {"index": "books", "query": "red apple", "query_id": "q1"})
    assert doc["metrics"]["reranked"]["ndcg"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("q1 0 d3\n", ":1: expected a TREC qrels line"),
        ("q1 0 d3 2\nq1 0 d3 1\n", ":2: duplicate judgment of 'q1', 'd3' (first on line 1)"),
        ("q1 0 d3 high\n", ":1: relevance must be an integer, got 'high'"),
        ("q1 0 d3 1_0\n", ":1: relevance must be an integer, got '1_0'"),
        ("\n\n", ": empty: no judgments"),
        ("query-id\tcorpus-id\tscore\nq1\td3\t1.5\n", ":2: score must be an integer"),
    ],
)
def test_unreadable_qrels_are_a_config_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "qrels.txt"
    path.write_text(content)
    with pytest.raises(ConfigError) as err:
        create_app(parse_config({"compare": {"enabled": True, "qrels": str(path)}}))
    (line,) = err.value.problems
    assert line.startswith(f"compare.qrels: {path}") and message in line, line


def test_a_missing_qrels_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"compare.qrels: .*/no: cannot read"):
        create_app(parse_config({"compare": {"enabled": True, "qrels": str(tmp_path / "no")}}))


# -- off unless enabled; bad requests ----------------------------------------------------


async def test_disabled_compare_is_not_there(engine: Engine, start: Start) -> None:
    proxy = await start(compare={"enabled": False})
    for target in (f"{PREFIX}/", f"{PREFIX}/app.js", PREFIX):
        resp = await proxy.get(target)
        assert resp.status == 404, target
        assert json.loads(resp.body)["error"]["type"] == "proxy_not_found"
    resp = await send(proxy, API_PATH, {"index": "books", "query": QUERY})
    assert resp.status == 404 and json.loads(resp.body)["error"]["type"] == "proxy_not_found"
    assert engine.requests == []


BAD = [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    ({"query": "x"}, "'index' must be a non-empty string"),
    ({"index": "", "query": "x"}, "'index' must be a non-empty string"),
    ({"index": "_cat", "query": "x"}, "'_cat' is not an index name"),
    ({"index": "books"}, "give 'query'"),
    ({"index": "books", "query": "   "}, "'query' must be a non-empty string"),
    ({"index": "books", "query": 3}, "'query' must be a non-empty string"),
    ({"index": "books", "body": [1]}, "'body' must be a JSON object"),
    ({"index": "books", "query": "x", "query_id": 1}, "'query_id' must be a non-empty string"),
    ({"index": "books", "query": "x", "sise": 5}, "unknown key 'sise'"),
    ({"index": "books", "query": "x", "size": 0}, "'size' must be an integer from 1 to 100"),
    ({"index": "books", "query": "x", "size": 101}, "'size' must be an integer from 1 to 100"),
    ({"index": "books", "query": "x", "size": "10"}, "'size' must be an integer"),
    ({"index": "books", "query": "x", "size": True}, "'size' must be an integer"),
    ({"index": "books,archive", "query": "x"}, "resolve to different index rules"),
]


@pytest.mark.parametrize(("body", "reason"), BAD)
async def test_a_bad_request_is_a_clear_400(
    engine: Engine, start: Start, body: Any, reason: str
) -> None:
    proxy = await start()
    resp, doc = await compare(proxy, body)
    assert resp.status == 400
    assert doc["status"] == 400 and doc["error"]["type"] == "compare_bad_request"
    assert reason in doc["error"]["reason"]
    assert engine.requests == []


@pytest.mark.parametrize(
    ("search", "reason"),
    [
        ({"query": {"match": {"title": "x"}}, "sort": [{"year": "desc"}]}, "(sort)"),
        ({"query": {"match_all": {}}}, "(no_query_text)"),
        ({"query": {"match": {"title": "x"}}, "search_after": [1]}, "(search_after)"),
    ],
)
async def test_a_search_the_proxy_would_not_rerank_is_a_400(
    engine: Engine, start: Start, search: dict[str, Any], reason: str
) -> None:
    proxy = await start()
    resp, doc = await compare(proxy, {"index": "books", "body": search})
    assert resp.status == 400 and doc["error"]["type"] == "compare_not_rerankable"
    assert reason in doc["error"]["reason"]
    assert engine.requests == []


async def test_only_json_posts_are_taken(engine: Engine, start: Start) -> None:
    proxy = await start()
    resp = await send(proxy, API_PATH, {"index": "books", "query": "x"}, content_type="text/plain")
    assert resp.status == 415
    assert json.loads(resp.body)["error"]["type"] == "compare_unsupported_media_type"
    resp = await proxy.get(API_PATH)
    assert resp.status == 405 and resp.header("Allow") == "POST"
    assert engine.requests == []


# -- the static page ---------------------------------------------------------------------


async def test_the_page_and_its_files_are_served(engine: Engine, start: Start) -> None:
    proxy = await start()
    resp = await proxy.get(PREFIX)
    assert resp.status == 308 and resp.header("Location") == f"{PREFIX}/"
    page = await proxy.get(f"{PREFIX}/")
    assert page.status == 200 and page.header("Content-Type") == "text/html; charset=utf-8"
    csp = page.header("Content-Security-Policy") or ""
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    # Every file the page names is served, with its type.
    names = re.findall(rb'(?:src|href)="([^"]+)"', page.body)
    assert sorted(names) == [b"app.js", b"favicon.svg", b"style.css"]
    types = {b"app.js": "text/javascript", b"style.css": "text/css", b"favicon.svg": "image/svg"}
    for name in names:
        resp = await proxy.get(f"{PREFIX}/{name.decode()}")
        assert resp.status == 200 and (resp.header("Content-Type") or "").startswith(types[name])
    assert (await proxy.get(f"{PREFIX}/nope.js")).status == 404
    assert (await proxy.get(f"{PREFIX}/../admin.py")).status == 404
    assert engine.requests == []  # nothing of the page reaches the engine


def test_the_page_names_nothing_outside_the_proxy() -> None:
    """No CDN, no external font, no absolute URL: the page works offline."""
    static = resources.files("proxy.compare").joinpath("static")
    for name in ("index.html", "app.js", "style.css", "favicon.svg"):
        # An XML namespace is a name, not something fetched.
        text = static.joinpath(name).read_text().replace('xmlns="http://www.w3.org/2000/svg"', "")
        urls = re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}", text)
        assert urls == [], (name, urls)
        assert "@import" not in text and "url(" not in text, name
