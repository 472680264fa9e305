"""The proxy in front of a secured OpenSearch: TLS upstream, the caller's own credentials, DLS, FLS.

A real OpenSearch 2.19.1 with its security plugin (`scripts/secured-engine`: HTTPS, internal
users) holds fifteen documents owned by alice, bob or "public". alice may read hers and the
public ones (document-level security); bob his and the public ones, without the `text` and
`secret` fields (field-level security); carol may log in but read no index. The proxy runs as
its own process with the cluster's CA and no credentials of its own; the clients send Basic
auth as they would to the cluster, and every answer is checked against the cluster's own
answer to the same user and against what the corpus says that user may see.

The rerank rule's text fields include the hidden ones, so a proxy that scored anything but
what the caller may read would show it in the scores: they are compared with the reference
cross-encoder on the visible text, and on the full text as the control.

Skips when java, mvn or openssl is missing (fails instead with CI=true); any other failure to
start the cluster fails.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from .conftest import proxy_config, start_proxy, stop_proxy
from .secured import (
    HIDDEN_FROM_BOB,
    INDEX,
    Cluster,
    User,
    ensure_cluster,
    in_ci,
    index_corpus,
    missing_tools,
    session,
    setup_security,
    stop_cluster,
    visible,
)

pytestmark = pytest.mark.e2e

Scorer = Callable[[str, list[str]], list[float]]
TOL = 1e-5
WINDOW = 30  # more than the corpus: every visible match is reranked
QUERY = "energy storage for solar panels and wind turbines"
ALL_FIELDS = ("title", "text", "secret")


@dataclass(frozen=True)
class Proxy:
    url: str
    log: Path
    config_file: Path


@dataclass(frozen=True)
class Secured:
    cluster: Cluster
    docs: dict[str, dict[str, Any]]


@pytest.fixture(scope="module")
def secured() -> Iterator[Secured]:
    missing = missing_tools()
    if missing:
        why = f"the secured OpenSearch (scripts/secured-engine) needs {', '.join(missing)}"
        if in_ci():
            pytest.fail(f"CI=true and {why}", pytrace=False)
        pytest.skip(f"{why}; CI=true fails instead")
    try:
        url, ca, started = ensure_cluster()
    except (RuntimeError, OSError) as exc:
        pytest.fail(f"the secured OpenSearch did not start: {exc}", pytrace=False)
    try:
        cluster = setup_security(url, ca)
        docs = index_corpus(cluster)
        yield Secured(cluster, docs)
    finally:
        if started and not os.environ.get("RERANK_PROXY_KEEP_ENGINES"):
            stop_cluster()


def _start(secured: Secured, model: Path, workdir: Path, **model_opts: Any) -> Iterator[Proxy]:
    config = proxy_config(secured.cluster.url, model, match=[INDEX], fields=list(ALL_FIELDS))
    config["indices"][0]["window"] = WINDOW
    config["upstream"]["ca_file"] = secured.cluster.ca  # verify_tls stays on (the default)
    config["model"].update(model_opts)
    config["log_level"] = "DEBUG"  # the most the proxy ever logs: still no credential
    proc, url, log = start_proxy(config, workdir)
    try:
        yield Proxy(url, log, workdir / "proxy.yaml")
    finally:
        stop_proxy(proc)


@pytest.fixture(scope="module")
def proxy(
    secured: Secured, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    yield from _start(secured, tiny_model, tmp_path_factory.mktemp("secured-proxy"))


@pytest.fixture(scope="module")
def cold_proxy(
    secured: Secured, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    """The same proxy with no score cache: what a cold cache gives."""
    yield from _start(secured, tiny_model, tmp_path_factory.mktemp("cold-proxy"), cache_size=0)


# ---------------------------------------------------------------- helpers


def _user(secured: Secured, name: str) -> User:
    return getattr(secured.cluster, name)  # type: ignore[no-any-return]


def _call(
    base: str,
    secured: Secured,
    method: str,
    path: str,
    auth: User | None,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> requests.Response:
    data = None
    hdrs = dict(headers or {})
    if body is not None:
        if isinstance(body, list):  # NDJSON
            data = "".join(json.dumps(line) + "\n" for line in body)
            hdrs.setdefault("Content-Type", "application/x-ndjson")
        else:
            data = json.dumps(body)
            hdrs.setdefault("Content-Type", "application/json")
    if auth is not None:
        hdrs.update(auth.header)
    with session(secured.cluster.ca if base.startswith("https") else None) as s:
        return s.request(method, base + path, data=data, headers=hdrs, timeout=60)


def _both(
    proxy: Proxy, secured: Secured, method: str, path: str, auth: User | None, **kw: Any
) -> tuple[requests.Response, requests.Response]:
    """(direct to the engine, through the proxy)."""
    return (
        _call(secured.cluster.url, secured, method, path, auth, **kw),
        _call(proxy.url, secured, method, path, auth, **kw),
    )


def _search(query: str, **extra: Any) -> dict[str, Any]:
    return {
        "query": {"multi_match": {"query": query, "fields": list(ALL_FIELDS)}},
        "size": WINDOW,
        **extra,
    }


def _ids(doc: dict[str, Any]) -> list[str]:
    return [h["_id"] for h in doc["hits"]["hits"]]


def _without_took(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_took(v) for k, v in value.items() if k != "took"}
    if isinstance(value, list):
        return [_without_took(v) for v in value]
    return value


def _assert_only_visible(secured: Secured, user: str, doc: dict[str, Any]) -> None:
    allowed = visible(user, secured.docs)
    for hit in doc["hits"]["hits"]:
        assert hit["_id"] in allowed, f"{user} got {hit['_id']}"
        assert hit["_source"] == allowed[hit["_id"]], f"{user} got fields of {hit['_id']}"


def _assert_no_leak(secured: Secured, user: str, raw: bytes) -> None:
    """No id or field value the user may not see appears anywhere in `raw`."""
    text = raw.decode()
    allowed = visible(user, secured.docs)
    for doc_id, doc in secured.docs.items():
        for field in ALL_FIELDS:  # `owner` values are user names, not secrets
            if field not in allowed.get(doc_id, {}):
                assert doc[field] not in text, f"{user} saw {doc_id}.{field}"
        if doc_id not in allowed:
            assert f'"{doc_id}"' not in text, f"{user} saw the id {doc_id}"
    if user == "bob":
        assert "TEXTMARK" not in text and "CANARY" not in text


def _cache_hits(proxy: Proxy) -> float:
    with session() as s:
        metrics = s.get(f"{proxy.url}/_rerank_proxy/metrics", timeout=30).text
    m = re.search(r'^rerank_proxy_cache_lookups_total\{result="hit"\} (\S+)$', metrics, re.M)
    return float(m.group(1)) if m else 0.0


def _official(url: str, user: User, ca: str | None) -> Any:
    from opensearchpy import OpenSearch

    tls = {"use_ssl": True, "verify_certs": True, "ca_certs": ca} if ca else {}
    return OpenSearch(hosts=[url], http_auth=user.auth, timeout=60, **tls)


# ---------------------------------------------------------------- the proxy holds nothing


def test_the_proxy_holds_no_credentials_and_anonymous_gets_the_engines_401(
    proxy: Proxy, secured: Secured
) -> None:
    config = yaml.safe_load(proxy.config_file.read_text())
    raw = proxy.config_file.read_text()
    for user in secured.cluster.users:
        assert user.password not in raw and user.token not in raw
    assert "@" not in config["upstream"]["url"]
    assert set(config["upstream"]) <= {"url", "read_timeout", "ca_file"}
    assert not re.search(r"password|authori[sz]ation|api_key|client_(cert|key)|header", raw, re.I)

    for method, path, body in (
        ("POST", f"/{INDEX}/_search", _search(QUERY)),
        ("GET", f"/{INDEX}/_count", None),
        ("GET", "/", None),
    ):
        direct, proxied = _both(proxy, secured, method, path, None, body=body)
        assert direct.status_code == 401, direct.text
        assert (proxied.status_code, proxied.content) == (401, direct.content)
        assert proxied.headers["WWW-Authenticate"] == direct.headers["WWW-Authenticate"]


# ---------------------------------------------------------------- 1: only what the user may see


@pytest.mark.parametrize("name", ["alice", "bob", "admin"])
def test_reranked_search_returns_exactly_the_engines_hits_for_that_user(
    proxy: Proxy, secured: Secured, name: str
) -> None:
    user = _user(secured, name)
    direct, proxied = _both(proxy, secured, "POST", f"/{INDEX}/_search", user, body=_search(QUERY))
    assert direct.status_code == proxied.status_code == 200, proxied.text
    assert proxied.headers["X-Rerank"] == "applied", proxied.headers
    d, p = direct.json(), proxied.json()
    assert set(_ids(p)) == set(_ids(d)) == set(visible(name, secured.docs))
    assert len(_ids(p)) == len(_ids(d))
    _assert_only_visible(secured, name, p)
    _assert_no_leak(secured, name, proxied.content)

    # The official client, pointed at the proxy, changes nothing but the host.
    via_client = _official(proxy.url, user, None).search(index=INDEX, body=_search(QUERY))
    assert _ids(via_client) == _ids(p)


@pytest.mark.parametrize("name", ["alice", "bob", "admin"])
def test_reranked_msearch_items_hold_only_that_users_documents(
    proxy: Proxy, secured: Secured, name: str
) -> None:
    user = _user(secured, name)
    body = [
        {"index": INDEX},
        _search(QUERY),
        {"index": INDEX},
        _search("heat pumps for energy", size=4),
    ]
    direct, proxied = _both(proxy, secured, "POST", "/_msearch", user, body=body)
    assert direct.status_code == proxied.status_code == 200, proxied.text
    assert proxied.headers["X-Rerank"] == "applied", proxied.headers
    d, p = direct.json()["responses"], proxied.json()["responses"]
    assert len(p) == 2
    assert set(_ids(p[0])) == set(_ids(d[0])) == set(visible(name, secured.docs))
    # A page of 4 from a reranked window is a subset of what the user may see, not the engine's
    # own top 4: compare with the whole window.
    assert len(_ids(p[1])) == len(_ids(d[1])) == 4
    for item in p:
        _assert_only_visible(secured, name, item)
    _assert_no_leak(secured, name, proxied.content)


@pytest.mark.parametrize("name", ["alice", "bob", "admin"])
def test_pass_through_search_count_and_get_are_the_engines_answers_for_that_user(
    proxy: Proxy, secured: Secured, name: str
) -> None:
    user = _user(secured, name)
    allowed = visible(name, secured.docs)

    for body, headers in (
        (_search(QUERY), {"X-Rerank": "off"}),  # the client said no
        (_search(QUERY, sort=[{"n": "asc"}]), {}),  # a sort: never reranked
    ):
        direct, proxied = _both(
            proxy, secured, "POST", f"/{INDEX}/_search", user, body=body, headers=headers
        )
        assert direct.status_code == proxied.status_code == 200, proxied.text
        assert proxied.headers.get("X-Rerank") in ("skipped", None), proxied.headers
        assert _without_took(proxied.json()) == _without_took(direct.json())
        assert set(_ids(proxied.json())) == set(allowed)
        _assert_only_visible(secured, name, proxied.json())
        _assert_no_leak(secured, name, proxied.content)

    direct, proxied = _both(proxy, secured, "GET", f"/{INDEX}/_count", user)
    assert (proxied.status_code, proxied.content) == (200, direct.content)
    assert proxied.json()["count"] == len(allowed)

    for doc_id in secured.docs:
        direct, proxied = _both(proxy, secured, "GET", f"/{INDEX}/_doc/{doc_id}", user)
        assert (proxied.status_code, proxied.content) == (direct.status_code, direct.content)
        if doc_id in allowed:
            assert proxied.status_code == 200
            assert proxied.json()["_source"] == allowed[doc_id]
            _assert_no_leak(secured, name, proxied.content)
        else:  # DLS: as if it did not exist
            assert proxied.status_code == 404, f"{name} read {doc_id}"
            assert proxied.json() == {"_index": INDEX, "_id": doc_id, "found": False}


# ---------------------------------------------------------------- 2: hidden fields never scored


@pytest.mark.parametrize(("name", "fields"), [("bob", ("title",)), ("alice", ALL_FIELDS)])
def test_the_model_scores_only_the_text_the_caller_may_read(
    proxy: Proxy, secured: Secured, reference_scorer: Scorer, name: str, fields: tuple[str, ...]
) -> None:
    user = _user(secured, name)
    resp = _call(proxy.url, secured, "POST", f"/{INDEX}/_search", user, body=_search(QUERY))
    assert resp.status_code == 200 and resp.headers["X-Rerank"] == "applied", resp.text
    hits = resp.json()["hits"]["hits"]
    ids = [h["_id"] for h in hits]
    docs = secured.docs

    def text(doc_id: str, names: tuple[str, ...]) -> str:
        return "\n".join(docs[doc_id][f] for f in names)

    seen = dict(zip(ids, reference_scorer(QUERY, [text(i, fields) for i in ids]), strict=True))
    full = dict(zip(ids, reference_scorer(QUERY, [text(i, ALL_FIELDS) for i in ids]), strict=True))
    for hit in hits:
        assert hit["_score"] == pytest.approx(seen[hit["_id"]], abs=TOL), hit["_id"]
    assert ids == sorted(ids, key=lambda i: -seen[i])
    if name == "bob":
        # The control: had the hidden fields been scored, the scores would differ.
        assert max(abs(full[i] - seen[i]) for i in ids) > 1e-3
        assert not any(f in h["_source"] for h in hits for f in HIDDEN_FROM_BOB)
        _assert_no_leak(secured, name, resp.content)


# ---------------------------------------------------------------- 3: the cache is per visible text


def test_the_score_cache_never_carries_one_users_view_to_another(
    proxy: Proxy, cold_proxy: Proxy, secured: Secured
) -> None:
    query = "heat pumps and grid balancing with battery storage"  # used by no other test
    body = _search(query)
    alice, bob = secured.cluster.alice, secured.cluster.bob

    def search(p: Proxy, user: User) -> requests.Response:
        resp = _call(p.url, secured, "POST", f"/{INDEX}/_search", user, body=body)
        assert resp.status_code == 200 and resp.headers["X-Rerank"] == "applied", resp.text
        return resp

    before = _cache_hits(proxy)
    search(proxy, alice)  # fills the cache with alice's view
    filled = _cache_hits(proxy)
    search(proxy, alice)
    warm = _cache_hits(proxy)
    assert warm - filled == len(visible("alice", secured.docs))  # the cache works
    assert filled == before

    bob_warm = search(proxy, bob)
    assert _cache_hits(proxy) == warm  # nothing of alice's view served to bob
    bob_cold = search(cold_proxy, bob)

    got, cold = bob_warm.json()["hits"]["hits"], bob_cold.json()["hits"]["hits"]
    assert [(h["_id"], h["_score"]) for h in got] == [(h["_id"], h["_score"]) for h in cold]
    assert set(_ids(bob_warm.json())) == set(visible("bob", secured.docs))
    _assert_only_visible(secured, "bob", bob_warm.json())
    _assert_no_leak(secured, "bob", bob_warm.content)


# ---------------------------------------------------------------- 4: the engine's 401 and 403


def test_a_wrong_password_gets_the_engines_401_unchanged(proxy: Proxy, secured: Secured) -> None:
    wrong = User("alice", secured.cluster.alice.password + "-wrong")
    for method, path, body in (
        ("POST", f"/{INDEX}/_search", _search(QUERY)),  # would be reranked
        ("POST", "/_msearch", [{"index": INDEX}, _search(QUERY)]),
        ("GET", f"/{INDEX}/_count", None),  # pass-through
        ("GET", f"/{INDEX}/_doc/alice-0", None),
    ):
        direct, proxied = _both(proxy, secured, method, path, wrong, body=body)
        assert direct.status_code == 401, direct.text
        assert (proxied.status_code, proxied.content) == (401, direct.content), path
        for name in ("WWW-Authenticate", "Content-Type"):
            assert proxied.headers[name] == direct.headers[name]


def test_a_wrong_password_through_the_proxy_counts_as_one_failed_login(
    proxy: Proxy, secured: Secured
) -> None:
    c = secured.cluster
    if c.allowed_tries < 4:
        pytest.fail("the cluster has no failed-login limit to count against", pytrace=False)
    tries = c.allowed_tries // 2 + 1  # under the limit once, over it if each counted twice

    def fail_logins(user: User, base: str) -> int:
        wrong = User(user.name, user.password + "-wrong")
        for _ in range(tries):
            resp = _call(base, secured, "POST", f"/{INDEX}/_search", wrong, body=_search(QUERY))
            if resp.status_code != 401:
                pytest.fail(f"a wrong password got {resp.status_code}", pytrace=False)
        return _call(c.url, secured, "GET", "/_plugins/_security/authinfo", user).status_code

    # The control, directly to the engine: that many failed logins leave erin able to log in.
    if fail_logins(c.erin, c.url) != 200:
        pytest.fail(f"{tries} failed logins already block a user on the engine", pytrace=False)
    assert fail_logins(c.dave, proxy.url) == 200, "the proxy doubled dave's failed logins"


def test_a_user_without_index_permission_gets_the_engines_403_unchanged(
    proxy: Proxy, secured: Secured
) -> None:
    carol = secured.cluster.carol
    whoami = _call(secured.cluster.url, secured, "GET", "/_plugins/_security/authinfo", carol)
    assert whoami.status_code == 200, whoami.text  # carol logs in; she may read no index
    for method, path, body in (
        ("POST", f"/{INDEX}/_search", _search(QUERY)),
        ("GET", f"/{INDEX}/_count", None),
        ("GET", f"/{INDEX}/_doc/public-0", None),
    ):
        direct, proxied = _both(proxy, secured, method, path, carol, body=body)
        assert direct.status_code == 403, direct.text
        assert (proxied.status_code, proxied.content) == (403, direct.content), path
        assert proxied.headers["Content-Type"] == direct.headers["Content-Type"]
        assert "security_exception" in proxied.text
    # In an _msearch the 403 is per item, inside a 200.
    body = [{"index": INDEX}, _search(QUERY)]
    direct, proxied = _both(proxy, secured, "POST", "/_msearch", carol, body=body)
    assert direct.status_code == proxied.status_code == 200
    assert _without_took(proxied.json()) == _without_took(direct.json())
    assert proxied.json()["responses"][0]["status"] == 403


# ---------------------------------------------------------------- 5: no credential in the log


def test_the_proxy_log_holds_no_credential_bytes(proxy: Proxy, secured: Secured) -> None:
    wrong = User("bob", secured.cluster.bob.password + "-wrong")
    for user in (*secured.cluster.users, wrong):  # at least one request each, even when alone
        _call(proxy.url, secured, "POST", f"/{INDEX}/_search", user, body=_search(QUERY))
    log = proxy.log.read_bytes()
    assert f"/{INDEX}/_search".encode() in log  # the requests were logged (at DEBUG)
    for user in (*secured.cluster.users, wrong):
        for secret in (user.password, user.token, f"Basic {user.token}"):
            assert secret.encode() not in log, f"{user.name}'s credentials in {proxy.log}"
