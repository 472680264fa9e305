"""The remote execution part (`model.backend: remote`): an HTTP client for rerank servers.

`RemoteExecutor` is an `Executor` like the local inference thread, so the front (cache,
dedupe, queue bound, batching) does not know which one it has. A group of pairs may mix the
queries of concurrent searches: it is split by query and into chunks of at most
`max_documents` documents, one call per chunk (concurrently), and the scores are stitched back
in input order. Two API shapes (`model.remote.api`), each normalised to the sigmoid
probability the local backends return:

- `cohere` (Cohere /v2/rerank, Jina /v1/rerank, Infinity /rerank, vLLM /rerank and
  /v1/rerank): `{"model", "query", "documents", "top_n", "return_documents": false}` ->
  `{"results": [{"index", "relevance_score"}]}`. `relevance_score` is already a probability
  (Infinity and vLLM apply the model's sigmoid to the logit, as Cohere and Jina document), so it
  is kept as it is; a score outside [0, 1] means the server uses another convention and is
  refused (`InvalidScores`) rather than mixed with probabilities.
- `tei` (text-embeddings-inference /rerank): `{"query", "texts", "raw_scores": true,
  "truncate": true}` -> `[{"index", "score"}]`. Raw scores are the logits; the sigmoid is
  applied here, in double precision (TEI's own would be in f32).

Results may come back in any order (both sort by score): they are mapped by index, and a
missing or duplicate index, a non-finite score or the wrong count is `InvalidScores`. The
server truncates to its own limit; `max_length` is only part of the front's cache key.

One `ClientSession` (created lazily on the running loop, closed by `close`) with `connections`
connections per server, `timeout` seconds per call, no cookies, redirects or environment
proxies. Calls go round robin over the servers whose circuit is closed. Each server has a
circuit breaker: `breaker_failures` consecutive failures (connection errors, timeouts, 5xx,
429, unusable bodies; not other 4xx, which are the request's fault) open it; after
`breaker_reset` seconds one trial call goes through (half-open), and its success closes it.
With every circuit open a call fails at once (`RemoteUnavailable`), so searches fail open fast
instead of waiting out their budget. The API key (`Authorization: Bearer`, read at load) is
never logged, described or put in an error message.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import os
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from yarl import URL

from .. import __version__
from ..errors import (
    InvalidScores,
    ModelLoadError,
    RemoteRefused,
    RemoteUnavailable,
    RerankError,
    RerankOverloaded,
    RerankTimeout,
)
from .base import Executor

if TYPE_CHECKING:
    from ..config import ModelConfig, RemoteConfig

logger = logging.getLogger(__name__)

DEFAULT_PATHS = {"cohere": "/v1/rerank", "tei": "/rerank"}
#: bytes of a response body read at most: the fixed part plus this much per document
BODY_BASE, BODY_PER_DOC = 1 << 20, 4096


@dataclass(slots=True, eq=False)
class _Server:
    """One base URL and its circuit breaker."""

    url: URL  # without credentials
    auth: str | None  # Basic credentials from the URL, as a header value
    failures: int = 0  # consecutive
    opened_at: float | None = None  # when the circuit opened; None: closed
    trial: bool = False  # the half-open trial call is in flight

    @property
    def label(self) -> str:
        return str(self.url)

    def state(self, now: float, reset: float) -> str:
        if self.opened_at is None:
            return "closed"
        return "half_open" if now - self.opened_at >= reset else "open"


def sigmoid(x: float) -> float:
    """The logistic function, without overflow for large |x|."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def parse_results(api: str, body: Any, expected: int) -> list[float]:
    """Scores in document order from a server's answer; `InvalidScores` if unusable."""
    items = body
    if api == "cohere":
        items = body.get("results") if isinstance(body, dict) else None
    if not isinstance(items, list):
        want = '{"results": [...]}' if api == "cohere" else "a JSON array"
        raise InvalidScores(f"the rerank server's answer is not {want}")
    if len(items) != expected:
        raise InvalidScores(f"rerank server returned {len(items)} scores for {expected} documents")
    field = "relevance_score" if api == "cohere" else "score"
    scores: list[float | None] = [None] * expected
    for item in items:
        index = item.get("index") if isinstance(item, dict) else None
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < expected:
            raise InvalidScores(f"rerank server returned an index out of range: {index!r}")
        if scores[index] is not None:
            raise InvalidScores(f"rerank server returned index {index} twice")
        score = _number(item.get(field))
        if score is None or not math.isfinite(score):
            raise InvalidScores(f"rerank server returned a non-finite score for index {index}")
        if api == "tei":
            score = sigmoid(score)
        elif not 0.0 <= score <= 1.0:
            raise InvalidScores(
                f"rerank server returned relevance_score {score} outside [0, 1] (not a probability)"
            )
        scores[index] = score
    return [s for s in scores if s is not None]  # every index seen once: all are set


def _read_key(cfg: RemoteConfig) -> str | None:
    if cfg.api_key_env and cfg.api_key_file:
        raise ModelLoadError("model.remote: set api_key_env or api_key_file, not both")
    if cfg.api_key_env:
        key = os.environ.get(cfg.api_key_env, "").strip()
        if not key:
            raise ModelLoadError(
                f"model.remote.api_key_env: environment variable {cfg.api_key_env} is not set"
            )
        return key
    if cfg.api_key_file:
        try:
            key = Path(cfg.api_key_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeError) as exc:
            # A decoding error quotes bytes of the key: say only what kind of error it was.
            why = getattr(exc, "strerror", None) or type(exc).__name__
            raise ModelLoadError(
                f"model.remote.api_key_file: cannot read {cfg.api_key_file}: {why}"
            ) from None
        if not key:
            raise ModelLoadError(f"model.remote.api_key_file: {cfg.api_key_file} is empty")
        return key
    return None


def _servers(cfg: RemoteConfig) -> list[_Server]:
    if not cfg.urls:
        raise ModelLoadError("model.remote.urls: backend remote needs at least one server URL")
    out = []
    for i, raw in enumerate(cfg.urls):
        try:
            url = URL(raw)
        except ValueError:
            url = URL()
        if url.scheme not in ("http", "https") or not url.host:
            where = f"model.remote.urls[{i}]"
            raise ModelLoadError(f"{where}: not an http:// or https:// URL with a host")
        auth = None
        if url.user is not None:
            token = base64.b64encode(f"{url.user}:{url.password or ''}".encode())
            auth = f"Basic {token.decode()}"
        out.append(_Server(url.with_user(None).with_query(None).with_fragment(None), auth))
    return out


class RemoteExecutor(Executor):
    """Scores groups of pairs on HTTP rerank servers (see the module docstring)."""

    device = "remote"

    def __init__(
        self,
        cfg: RemoteConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.api = cfg.api
        self._servers = _servers(cfg)
        self._key = _read_key(cfg)
        if self._key is not None and any(s.auth for s in self._servers):
            raise ModelLoadError("model.remote: credentials in a URL and an API key; pick one")
        self.path = cfg.path or DEFAULT_PATHS[cfg.api]
        if not self.path.startswith("/"):
            self.path = "/" + self.path
        self.model_id = f"remote|{cfg.api}|{cfg.model or self._servers[0].label}"
        self.batch_size = cfg.max_documents
        self.concurrency = cfg.connections
        self._ssl: ssl.SSLContext | bool = True
        if cfg.ca_file:
            try:
                self._ssl = ssl.create_default_context(cafile=cfg.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ModelLoadError(f"model.remote.ca_file: {cfg.ca_file}: {exc}") from exc
        self._clock = clock
        self._next = 0
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:  # no key, no credentials
        urls = ", ".join(s.label for s in self._servers)
        return f"RemoteExecutor(api={self.api!r}, urls=[{urls}], model={self.cfg.model!r})"

    # -- Executor ---------------------------------------------------------------------------

    async def run(self, pairs: Sequence[tuple[str, str]], max_length: int) -> list[float]:
        by_query: dict[str, list[int]] = {}
        for i, (query, _) in enumerate(pairs):
            by_query.setdefault(query, []).append(i)
        n = self.cfg.max_documents
        chunks = [
            (query, idx[start : start + n])
            for query, idx in by_query.items()
            for start in range(0, len(idx), n)
        ]
        calls = [self.rerank(query, [pairs[i][1] for i in idx]) for query, idx in chunks]
        if len(calls) == 1:
            results = [await calls[0]]
        else:
            tasks = [asyncio.ensure_future(c) for c in calls]
            try:
                results = await asyncio.gather(*tasks)
            except RemoteUnavailable:
                # No circuit let this chunk through, maybe because a sibling is the half-open
                # trial: that one must finish, or the circuit never closes (its cancelled
                # trial would count for nothing, and the next group's would be cancelled too).
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
            except BaseException:
                # One failed chunk fails the group: stop the others (not counted as failures).
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        out = [0.0] * len(pairs)
        for (_, idx), scores in zip(chunks, results, strict=True):
            for i, score in zip(idx, scores, strict=True):
                out[i] = score
        return out

    def describe(self) -> dict[str, Any]:
        now = self._clock()
        reset = self.cfg.breaker_reset
        return {
            **super().describe(),
            "backend": "remote",
            "execution": "remote",
            "api": self.api,
            "urls": [s.label for s in self._servers],
            "path": self.path,
            "remote_model": self.cfg.model,
            "max_documents": self.cfg.max_documents,
            "timeout": self.cfg.timeout,
            "open_circuits": self.open_circuits,
            "circuits": {s.label: s.state(now, reset) for s in self._servers},
        }

    def health(self) -> dict[str, Any]:
        """How many servers are skipped now (for the front's health report)."""
        return {"servers": len(self._servers), "open_circuits": self.open_circuits}

    @property
    def open_circuits(self) -> int:
        return sum(s.opened_at is not None for s in self._servers)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- one call ---------------------------------------------------------------------------

    async def rerank(self, query: str, docs: Sequence[str]) -> list[float]:
        """Scores for one query's documents from one server (one call)."""
        server, trial = self._pick()
        try:
            scores = await self._call(server, query, docs)
        except RemoteRefused:
            self._succeeded(server)  # it answered; the request was at fault
            raise
        except RerankError:
            self._failed(server, trial)
            raise
        except BaseException:
            if trial:  # cancelled: neither a success nor a failure; another call may try
                server.trial = False
            raise
        self._succeeded(server)
        return scores

    def _pick(self) -> tuple[_Server, bool]:
        """The next server round robin whose circuit lets a call through, and whether this
        call is its half-open trial; `RemoteUnavailable` when there is none."""
        now, reset = self._clock(), self.cfg.breaker_reset
        count = len(self._servers)
        for step in range(count):
            server = self._servers[(self._next + step) % count]
            state = server.state(now, reset)
            if state == "open" or (state == "half_open" and server.trial):
                continue
            self._next = (self._next + step + 1) % count
            if state == "half_open":
                server.trial = True
            return server, state == "half_open"
        raise RemoteUnavailable(
            f"every rerank server's circuit is open ({count} server{'s' * (count > 1)});"
            f" next trial within {reset:g}s"
        )

    def _succeeded(self, server: _Server) -> None:
        if server.opened_at is not None:
            logger.info("rerank server %s answered again: circuit closed", server.label)
        server.failures, server.opened_at, server.trial = 0, None, False

    def _failed(self, server: _Server, trial: bool) -> None:
        server.failures += 1
        if trial:
            server.trial, server.opened_at = False, self._clock()
            logger.warning("rerank server %s failed its trial call: circuit open", server.label)
        elif server.opened_at is None and server.failures >= self.cfg.breaker_failures:
            server.opened_at = self._clock()
            logger.warning(
                "rerank server %s failed %d times in a row: circuit open for %gs",
                server.label,
                server.failures,
                self.cfg.breaker_reset,
            )

    def _body(self, query: str, docs: Sequence[str]) -> dict[str, Any]:
        if self.api == "tei":
            return {"query": query, "texts": list(docs), "raw_scores": True, "truncate": True}
        body: dict[str, Any] = {"model": self.cfg.model} if self.cfg.model else {}
        return {
            **body,
            "query": query,
            "documents": list(docs),
            "top_n": len(docs),
            "return_documents": False,
        }

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            conn = aiohttp.TCPConnector(
                limit=self.cfg.connections * len(self._servers),
                limit_per_host=self.cfg.connections,
                ssl=self._ssl,
            )
            self._session = aiohttp.ClientSession(
                connector=conn,
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
                timeout=aiohttp.ClientTimeout(total=self.cfg.timeout),
                headers={"User-Agent": f"rerank-proxy/{__version__}"},
            )
        return self._session

    async def _call(self, server: _Server, query: str, docs: Sequence[str]) -> list[float]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key is not None:
            headers["Authorization"] = f"Bearer {self._key}"
        elif server.auth is not None:
            headers["Authorization"] = server.auth
        data = json.dumps(self._body(query, docs), ensure_ascii=False).encode()
        url = server.url.with_path(server.url.path.rstrip("/") + self.path)
        limit = BODY_BASE + BODY_PER_DOC * len(docs)
        where = f"rerank server {server.label}"
        try:
            async with self._get_session().post(
                url, data=data, headers=headers, allow_redirects=False
            ) as resp:
                status = resp.status
                raw = bytearray()
                async for block in resp.content.iter_chunked(1 << 16):
                    raw += block
                    if len(raw) > limit:
                        raise RerankError(f"{where}: answer larger than {limit} bytes")
        except TimeoutError as exc:
            raise RerankTimeout(f"{where}: no answer within {self.cfg.timeout:g}s") from exc
        except aiohttp.ClientError as exc:
            raise RerankError(f"{where}: {type(exc).__name__}: {exc}") from exc
        if status == 429:
            raise RerankOverloaded(f"{where} is overloaded (HTTP 429)")
        if not 200 <= status < 300:
            message = f"{where} answered HTTP {status}: {_snippet(raw, self._key)}"
            raise (RemoteRefused if 400 <= status < 500 else RerankError)(message)
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise RerankError(
                f"{where}: the answer is not JSON ({_snippet(raw, self._key)})"
            ) from exc
        return parse_results(self.api, body, len(docs))


def _snippet(raw: bytes | bytearray, secret: str | None, limit: int = 200) -> str:
    """The start of a body for an error message, with the key redacted should it echo it."""
    text = bytes(raw).decode("utf-8", "replace")
    if secret:
        text = text.replace(secret, "<api key>")
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


def load_remote(cfg: ModelConfig, *, clock: Callable[[], float] = time.monotonic) -> RemoteExecutor:
    """The `remote` executor from `model.remote` (reads the API key; opens no connection)."""
    return RemoteExecutor(cfg.remote, clock=clock)
