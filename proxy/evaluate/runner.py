"""Running the judged queries over HTTP: the engine's order and the proxies' reranked order.

One aiohttp `ClientSession` (no cookie jar, no environment proxies, a bounded pool) sends one
search per judged query, at most `concurrency` at a time, to a base URL: the cluster itself
for the engine's order, or a proxy (a running one, or one `proxies` starts in-process).
Credentials and TLS are taken as the official clients take them (basic auth or an API key; a
CA file or no verification); a proxy forwards the credentials to the cluster as it does for
any client. Each query's latency is the client's wall time from sending to the last byte; a
proxy's `X-Rerank` outcome and `X-Rerank-Took-Ms` are kept. Also here: which judged documents
exist in the index, and rendering `_rank_eval` templates (`_render/template`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp
from yarl import URL

from .errors import ClusterError
from .searches import Search

Kind = Literal["engine", "proxy", "config"]
Progress = Callable[[], None]
_CHUNK = 1000  # document ids per existence check


@dataclass(frozen=True, slots=True)
class Connection:
    """How to talk to the cluster and the proxies: an `Authorization` value, TLS, timeout."""

    authorization: str | None = None
    ssl: ssl.SSLContext | bool = True
    timeout_s: float = 300.0

    @classmethod
    def build(
        cls,
        *,
        user: str | None = None,
        password: str | None = None,
        api_key: str | None = None,
        ca_certs: str | None = None,
        insecure: bool = False,
        timeout_s: float = 300.0,
    ) -> Connection:
        """From the official clients' options: `basic_auth=(user, password)`, `api_key` (the
        encoded key, or `id:key`), `ca_certs`, `verify_certs=False`."""
        auth = None
        if user is not None:
            token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
            auth = f"Basic {token}"
        elif api_key is not None:
            key = api_key
            if ":" in key:  # `id:api_key`, as the clients take it in a tuple
                key = base64.b64encode(key.encode()).decode()
            auth = f"ApiKey {key}"
        context: ssl.SSLContext | bool = True
        if insecure:
            context = False
        elif ca_certs is not None:
            try:
                context = ssl.create_default_context(cafile=ca_certs)
            except (OSError, ssl.SSLError) as exc:
                raise ClusterError(f"--ca-certs {ca_certs}: cannot be read: {exc}") from exc
        return cls(auth, context, timeout_s)

    def headers(self) -> dict[str, str]:
        out = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.authorization:
            out["Authorization"] = self.authorization
        return out


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """`http://u:p@host:9200` -> (`http://host:9200`, u, p): credentials in a URL are
    sent as basic auth, never logged or written to a report."""
    parts = urlsplit(url)
    if parts.username is None:
        return url.rstrip("/"), None, None
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    bare = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return bare.rstrip("/"), parts.username, parts.password


def session(connection: Connection, concurrency: int) -> aiohttp.ClientSession:
    """The one client session of a run."""
    connector = aiohttp.TCPConnector(limit=concurrency + 2, ssl=connection.ssl)
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        timeout=aiohttp.ClientTimeout(total=connection.timeout_s, connect=30),
    )


def target_url(base: str, index: str, endpoint: str | None = None) -> URL:
    """`base/index[/endpoint]`, the target percent-encoded as the engines decode it."""
    tail = "" if endpoint is None else f"/{endpoint}"
    return URL(f"{base.rstrip('/')}/{quote(index, safe=',*')}{tail}", encoded=True)


# -- results --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueryResult:
    """One query's answer: document keys in rank order (repeats dropped, and counted)."""

    docs: tuple[str, ...]
    seconds: float
    rerank: str | None = None  # a proxy's `X-Rerank` outcome, `skipped(reason)` style
    rerank_ms: float | None = None  # a proxy's `X-Rerank-Took-Ms`
    repeated: int = 0
    problem: str | None = None  # "timed_out" or "shard_failures": the answer is partial


@dataclass(frozen=True, slots=True)
class SystemRun:
    """One system's answers to every query, and what is known about it."""

    name: str
    kind: Kind
    url: str  # where the searches went (no credentials)
    results: Mapping[str, QueryResult]
    wall_seconds: float
    source: str | None = None  # the config file of an in-process proxy
    window: int | None = None  # the rule's window (in-process proxies)
    model: str | None = None
    standin: bool | None = None  # None: could not be told
    time_split: Mapping[str, float] = field(default_factory=dict)  # seconds, summed


async def run_searches(
    client: aiohttp.ClientSession,
    connection: Connection,
    name: str,
    base: str,
    index: str,
    searches: Sequence[Search],
    *,
    concurrency: int,
    proxy: bool,
    key_by_index: bool = False,
    progress: Progress | None = None,
) -> tuple[dict[str, QueryResult], float]:
    """Send every search to `base` (at most `concurrency` at a time); (results, wall s)."""
    gate = asyncio.Semaphore(concurrency)
    url = target_url(base, index, "_search")
    results: dict[str, QueryResult] = {}

    async def one(search: Search) -> None:
        headers = connection.headers()
        if proxy and search.send_text:
            headers["X-Rerank-Query"] = search.text
        payload = json.dumps(search.body, ensure_ascii=False).encode()
        async with gate:
            started = time.perf_counter()
            status, raw, resp_headers = await _post(client, url, payload, headers, name, search)
            seconds = time.perf_counter() - started
        if status >= 300:
            raise ClusterError(
                f"{name}: query {search.topic_id!r}: HTTP {status} from"
                f" {URL(base).with_user(None)}: {error_reason(raw)}"
            )
        results[search.topic_id] = _result(raw, resp_headers, seconds, key_by_index, name, search)
        if progress is not None:
            progress()

    started = time.perf_counter()
    try:
        async with asyncio.TaskGroup() as group:
            for search in searches:
                group.create_task(one(search))
    except* ClusterError as errors:
        raise errors.exceptions[0] from None
    wall = time.perf_counter() - started
    return {s.topic_id: results[s.topic_id] for s in searches}, wall


async def _post(
    client: aiohttp.ClientSession,
    url: URL,
    payload: bytes,
    headers: Mapping[str, str],
    name: str,
    search: Search,
) -> tuple[int, bytes, Mapping[str, str]]:
    try:
        async with client.post(url, data=payload, headers=headers) as resp:
            return resp.status, await resp.read(), resp.headers
    except (aiohttp.ClientError, TimeoutError) as exc:
        detail = str(exc) or type(exc).__name__
        raise ClusterError(
            f"{name}: query {search.topic_id!r}: {url.with_user(None).origin()}: {detail}"
        ) from exc


def _result(
    raw: bytes,
    headers: Mapping[str, str],
    seconds: float,
    key_by_index: bool,
    name: str,
    search: Search,
) -> QueryResult:
    try:
        doc = json.loads(raw)
        hits = doc["hits"]["hits"]
        if not isinstance(hits, list):
            raise TypeError("hits.hits is not a list")
        keys = [_key(hit, key_by_index) for hit in hits]
    except (ValueError, KeyError, TypeError) as exc:
        raise ClusterError(
            f"{name}: query {search.topic_id!r}: not a search response ({exc})"
        ) from exc
    unique = list(dict.fromkeys(keys))
    problem = None
    shards = doc.get("_shards")
    if doc.get("timed_out") is True:
        problem = "timed_out"
    elif isinstance(shards, dict) and shards.get("failed"):
        problem = "shard_failures"
    outcome = headers.get("X-Rerank")
    reason = headers.get("X-Rerank-Reason")
    if outcome is not None and reason:
        outcome = f"{outcome}({reason})"
    took = headers.get("X-Rerank-Took-Ms")
    try:
        rerank_ms = float(took) if took is not None else None
    except ValueError:
        rerank_ms = None
    return QueryResult(
        docs=tuple(unique),
        seconds=seconds,
        rerank=outcome,
        rerank_ms=rerank_ms,
        repeated=len(keys) - len(unique),
        problem=problem,
    )


def _key(hit: Any, key_by_index: bool) -> str:
    doc_id = hit["_id"]
    if not isinstance(doc_id, str):
        raise TypeError("a hit's _id is not a string")
    return f"{hit['_index']}/{doc_id}" if key_by_index else doc_id


def error_reason(raw: bytes) -> str:
    """The engine's error reason from an error body, else the body's start."""
    try:
        error = json.loads(raw).get("error")
        if isinstance(error, dict):
            causes = error.get("root_cause") or [error]
            cause = causes[0] if isinstance(causes, list) and causes else error
            return f"{cause.get('type', '?')}: {cause.get('reason', '?')}"
        if isinstance(error, str):
            return error
    except (ValueError, AttributeError):
        pass
    return raw[:300].decode("utf-8", "replace")


# -- the cluster: existence checks and templates --------------------------------------------


async def _call(
    client: aiohttp.ClientSession,
    connection: Connection,
    url: URL,
    body: Any,
    what: str,
) -> Any:
    payload = json.dumps(body, ensure_ascii=False).encode()
    try:
        async with client.post(url, data=payload, headers=connection.headers()) as resp:
            status, raw = resp.status, await resp.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        detail = str(exc) or type(exc).__name__
        raise ClusterError(f"{what}: {url.with_user(None).origin()}: {detail}") from exc
    if status >= 300:
        raise ClusterError(f"{what}: HTTP {status}: {error_reason(raw)}")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ClusterError(f"{what}: the answer is not JSON") from exc


async def present_keys(
    client: aiohttp.ClientSession,
    connection: Connection,
    base: str,
    index: str,
    keys: Sequence[str],
    *,
    key_by_index: bool = False,
) -> set[str]:
    """The document keys of `keys` that exist in `index` (or, for `_index/_id` keys, in
    their own index)."""
    found: set[str] = set()
    wanted = list(dict.fromkeys(keys))
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start : start + _CHUNK]
        if key_by_index:
            docs = [dict(zip(("_index", "_id"), k.split("/", 1), strict=True)) for k in chunk]
            url = URL(f"{base.rstrip('/')}/_mget", encoded=True)
            what = "checking which judged documents exist (_mget)"
            answer = await _call(client, connection, url, {"docs": docs}, what)
            for doc in answer.get("docs", []):
                if isinstance(doc, dict) and doc.get("found") is True:
                    found.add(f"{doc['_index']}/{doc['_id']}")
            continue
        body = {
            "query": {"ids": {"values": chunk}},
            "size": min(10_000, 10 * len(chunk)),
            "_source": False,
        }
        url = target_url(base, index, "_search")
        what = f"checking which judged documents exist in {index!r}"
        answer = await _call(client, connection, url, body, what)
        hits = answer.get("hits", {}).get("hits", [])
        found.update(
            h["_id"] for h in hits if isinstance(h, dict) and isinstance(h.get("_id"), str)
        )
    return found


async def render_template(
    client: aiohttp.ClientSession,
    connection: Connection,
    base: str,
    template: Any,
    params: Mapping[str, Any],
    what: str,
) -> dict[str, Any]:
    """The search body a `_rank_eval` template renders to (`POST _render/template`)."""
    url = URL(f"{base.rstrip('/')}/_render/template", encoded=True)
    answer = await _call(client, connection, url, {"source": template, "params": params}, what)
    output = answer.get("template_output") if isinstance(answer, dict) else None
    if not isinstance(output, dict):
        raise ClusterError(f"{what}: _render/template gave no template_output object")
    return output
