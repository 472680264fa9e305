"""Configuration: the models, `load_config(path)` and index-rule resolution.

This module is pure (no aiohttp, no torch). `load_config` is the only code that sees raw
YAML dicts: it validates them into frozen dataclasses, rejects unknown keys and impossible
values, and reports every problem as one line naming the file and the key path
(`proxy.yaml: indices[2].window: must be >= 1`). Each field carries its description in its
metadata; the README's configuration table is generated from it (`proxy.config.config_table`).
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import math
import re
import string
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union
from urllib.parse import unquote, urlsplit

import yaml

from .rerank.registry import BACKEND_CHOICES

ScoreMode = Literal["replace", "blend"]
RuleMode = Literal["rerank", "shadow"]
PassageMode = Literal["off", "max"]
Device = Literal["auto", "cpu", "cuda"]
LogFormat = Literal["text", "json"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


def opt(
    default: Any,
    help: str,
    *,
    ge: float | None = None,
    le: float | None = None,
    gt: float | None = None,
    choices: tuple[str, ...] | None = None,
) -> Any:
    """A config field with its description, numeric bounds and (for strings) choices."""
    meta = {"help": help, "ge": ge, "le": le, "gt": gt, "choices": choices}
    if isinstance(default, (list, dict, tuple)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


class ConfigError(Exception):
    """Raised by `load_config`; `.problems` holds one line per problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True, slots=True)
class ListenConfig:
    host: str = opt("127.0.0.1", "Address the proxy listens on.")
    port: int = opt(9280, "Port the proxy listens on.", ge=0, le=65535)
    tls_cert: str | None = opt(
        None,
        "Certificate chain (PEM) to serve HTTPS with (TLS 1.2+); re-read on reload. Clients of"
        " an HTTPS cluster (Elasticsearch 8's default) keep their `https://` URLs.",
    )
    tls_key: str | None = opt(None, "Private key (PEM) of `tls_cert`.")
    client_ca: str | None = opt(
        None, "CA bundle (PEM): require client certificates signed by it (mutual TLS)."
    )
    send_timeout: float = opt(
        60.0,
        "Seconds a client may go without reading a streamed response before it is cut, so a"
        " client that stops reading does not hold an upstream connection for ever.",
        gt=0,
    )
    header_timeout: float = opt(
        60.0,
        "Seconds a client has to send a whole request head, from its first byte (or from"
        " connecting); then it gets a 408 and is closed (nginx's `client_header_timeout`).",
        gt=0,
    )
    body_timeout: float = opt(
        60.0,
        "Longest wait, in seconds, for the next part of a request body the proxy is reading;"
        " then a 408 and the connection is closed (nginx's `client_body_timeout`).",
        gt=0,
    )
    keepalive_timeout: float = opt(
        75.0,
        "Seconds a connection with no request in progress stays open (nginx's"
        " `keepalive_timeout`).",
        gt=0,
    )
    max_connections: int = opt(
        1024,
        "Client connections open at once; one more gets a 503 and is closed at once. Keep it"
        " under the descriptor limit (`ulimit -n`) less `upstream.max_connections`.",
        ge=1,
    )
    workers: int = opt(
        1,
        "HTTP worker processes on one port (SO_REUSEPORT), each a pure proxy; a local model"
        " then runs once, in a model-server process they share. 1: everything in-process.",
        ge=1,
        le=256,
    )
    reuse_port: bool = opt(False, "Bind with SO_REUSEPORT (set for each worker by `workers` > 1).")
    drain_delay: float = opt(
        5.0,
        "Seconds between SIGTERM (readiness turns 503) and closing the listener, so load"
        " balancers stop sending first; in-flight requests then finish.",
        ge=0,
    )


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    url: str = opt("http://127.0.0.1:9200", "Base URL of the Elasticsearch or OpenSearch cluster.")
    connect_timeout: float = opt(10.0, "Seconds to open a connection upstream.", gt=0)
    read_timeout: float = opt(
        300.0,
        "Seconds without any byte from upstream before giving up (no total timeout,"
        " so long `_reindex` calls survive).",
        gt=0,
    )
    max_connections: int = opt(100, "Size of the upstream connection pool.", ge=1)
    pool_timeout: float = opt(
        10.0,
        "Seconds a request waits for a free pooled connection when all `max_connections` are"
        " in use; then it is answered 503 (`proxy_upstream_busy`), which clients retry.",
        gt=0,
    )
    verify_tls: bool = opt(True, "Verify the upstream's TLS certificate and host name.")
    ca_file: str | None = opt(None, "CA bundle (PEM) to verify the upstream with.")
    client_cert: str | None = opt(None, "Client certificate (PEM) for mutual TLS.")
    client_key: str | None = opt(None, "Private key (PEM) of `client_cert`.")
    probe_interval: float = opt(
        5.0,
        "Seconds between background checks that the cluster answers (and its TLS verifies);"
        " `/_rerank_proxy/ready` reports the last result. 0: no check, readiness ignores the"
        " cluster.",
        ge=0,
    )
    max_buffer_bytes: int = opt(
        32 * 1024 * 1024,
        "Largest search request or response body buffered for reranking; larger ones pass through.",
        ge=1024,
    )
    max_search_body_bytes: int = opt(
        1024 * 1024,
        "Largest search request body, after its Content-Encoding is undone, that the proxy"
        " parses and rewrites; a larger one (search bodies are kilobytes) goes to the engine"
        " untouched, so no single request's parsing cost can hold up the others.",
        ge=1024,
    )


@dataclass(frozen=True, slots=True)
class RemoteConfig:
    urls: tuple[str, ...] = opt(
        (),
        "Base URLs of the rerank server(s) for `backend: remote`, balanced client-side"
        " (e.g. http://tei:8080, https://api.cohere.com).",
    )
    api: Literal["cohere", "tei"] = opt(
        "cohere",
        "`cohere`: the Cohere/Jina family (`{query, documents, top_n}` ->"
        " `results[{index, relevance_score}]`: Cohere /v2/rerank, Jina, Infinity, vLLM, our"
        " model server); `tei`: text-embeddings-inference `/rerank` (`{query, texts}` ->"
        " `[{index, score}]`).",
    )
    path: str | None = opt(None, "Endpoint path; null: `/rerank` for tei, `/v1/rerank` for cohere.")
    model: str | None = opt(None, "Model name sent to the server (Cohere/Jina/vLLM need one).")
    api_key_env: str | None = opt(
        None, "Environment variable holding the API key (sent as Bearer; never logged)."
    )
    api_key_file: str | None = opt(None, "File holding the API key (instead of api_key_env).")
    timeout: float = opt(10.0, "Seconds for one call to the server.", gt=0)
    max_documents: int = opt(
        32, "Documents per call; larger groups are split (TEI's max_client_batch_size).", ge=1
    )
    connections: int = opt(16, "Connection pool size per server; also calls in flight.", ge=1)
    breaker_failures: int = opt(
        5, "Consecutive failures after which a server is skipped (circuit open).", ge=1
    )
    breaker_reset: float = opt(10.0, "Seconds an open circuit waits before one trial call.", gt=0)
    ca_file: str | None = opt(None, "CA bundle (PEM) to verify an https:// server with.")


@dataclass(frozen=True, slots=True)
class ModelConfig:
    name: str = opt(
        "mixedbread-ai/mxbai-rerank-xsmall-v1",
        "Hugging Face hub id or local directory of the cross-encoder.",
    )
    backend: str = opt(
        "auto",
        "Inference backend: `auto` (exact: torch fp16 on CUDA, ONNX Runtime fp32 on CPU when"
        " installed, else torch fp32), `torch`, `torch-fp32` (fp32 on CUDA too), `onnx`,"
        " `openvino` (OpenVINO fp32, CPU only), `onnx-int8`, `torch-bf16` and `openvino-bf16`"
        " (approximate, opt-in; `openvino-bf16` needs a CPU with native bf16), `fake` (tests).",
        choices=BACKEND_CHOICES,
    )
    device: Device = opt("auto", "`auto` picks CUDA when available, else CPU.")
    label: int | None = opt(
        None,
        "Which output of the classification head is the relevance logit. Null: the model"
        " must be a single-logit cross-encoder (`num_labels: 1`); a model with more labels"
        " (an NLI model, say) is refused unless this names one.",
        ge=0,
    )
    max_length: int = opt(512, "Token budget per (query, document) pair.", ge=8, le=512)
    batch_size: int = opt(0, "Pairs per forward pass; 0 picks per device (CPU 8, CUDA 64).", ge=0)
    threads: int = opt(
        0,
        "CPU threads for inference; 0: the CPUs this process may use (affinity mask, bounded"
        " by the container's CPU quota).",
        ge=0,
    )
    batch_wait_ms: float = opt(
        2.0, "How long a batch waits for pairs from concurrent searches.", ge=0, le=1000
    )
    max_group: int = opt(
        0,
        "Pairs handed to the model at once (one group, split into batches); 0 picks per"
        " device: two batches on CPU (a bigger group only makes every search in it wait for"
        " the slowest), 256 on CUDA (large groups are what make batching pay there).",
        ge=0,
    )
    max_queue: int = opt(
        4096, "Pairs waiting for the model before new searches fail open (overload).", ge=1
    )
    cache_size: int = opt(50_000, "Scores kept in the LRU score cache (0 disables).", ge=0)
    remote: RemoteConfig = opt(RemoteConfig(), "The rerank server(s) for `backend: remote`.")
    compile: bool = opt(
        False,
        "torch backends: wrap the model in torch.compile (dynamic shapes), compiled at start-up"
        " before the port opens. Measured 1.4x on CUDA fp16; start-up takes ~20 s longer.",
    )


@dataclass(frozen=True, slots=True)
class RuleConfig:
    """One index rule; `defaults` uses the same fields (its `match` is ignored)."""

    match: tuple[str, ...] = opt((), "Index names, aliases or wildcard patterns this rule covers.")
    enabled: bool = opt(
        True, "Rerank searches on these indices (index rules do not inherit it from `defaults`)."
    )
    window: int = opt(50, "How many top hits are reranked.", ge=1, le=10_000)
    fields: tuple[str, ...] = opt(
        (),
        "Document fields joined to form the text (dotted paths; arrays joined)."
        " Empty: every top-level string field of `_source`.",
    )
    template: str | None = opt(None, 'Text template instead of `fields`, e.g. "{title}\\n{body}".')
    query_path: str | None = opt(
        None,
        "JSON pointer into the search body holding the query text (e.g. /query/match/title/query).",
    )
    query_param: str | None = opt(None, "Search-template parameter holding the query text.")
    score_mode: ScoreMode = opt(
        "replace", "`replace`: `_score` becomes the model score; `blend`: weighted mix."
    )
    blend_weight: float = opt(
        0.5, "Model weight in `blend` mode over min-max normalised scores.", ge=0, le=1
    )
    min_score: float | None = opt(None, "Drop reranked hits whose model score is below this.")
    timeout_ms: int = opt(2000, "Rerank time budget; past it the search fails open.", ge=1)
    max_length: int | None = opt(
        None, "Per-rule token budget (overrides `model.max_length`).", ge=8
    )
    expose_engine_score: bool = opt(
        True, "Keep the engine's score in each hit's `fields._engine_score`."
    )
    use_highlight: bool = opt(
        False,
        "Score the hit's highlight fragments (when the search asked for highlighting)"
        " instead of the whole document text: less work per pair.",
    )
    leading_words: int | None = opt(
        None, "Score only the first N words of each document (a leading passage).", ge=1
    )
    passages: PassageMode = opt(
        "off",
        "`max`: split long documents into passages and score a document by its best"
        " passage (costs one pair per passage); `off`: one pair per document.",
    )
    passage_words: int = opt(200, "Words per passage in `passages: max` mode.", ge=8)
    passage_stride: int = opt(150, "Words between passage starts in `passages: max` mode.", ge=1)
    max_passages: int = opt(4, "Passages scored per document at most.", ge=1, le=64)
    mode: RuleMode = opt(
        "rerank",
        "`rerank`: clients get the reranked order. `shadow`: clients get the engine's answer"
        " with no added latency, and the rerank runs afterwards in the background to record"
        " what it would have changed (metrics, `shadow.log`).",
    )
    sample: float = opt(
        1.0,
        "Share of searches reranked (a sampled rollout), chosen by a stable hash of the index"
        " and query text, so every page of one search gets the same choice.",
        ge=0,
        le=1,
    )


@dataclass(frozen=True, slots=True)
class CacheConfig:
    redis_url: str | None = opt(
        None,
        "Redis or Valkey URL (redis://host:6379/0, rediss:// for TLS) of a score cache shared"
        " by every proxy, behind each process's own LRU. Null: local cache only.",
    )
    ttl: int = opt(7 * 24 * 3600, "Seconds a shared score lives.", ge=1)
    prefix: str = opt("rerank-proxy:", "Key prefix in the shared cache.")
    timeout_ms: int = opt(
        50, "Budget of one shared-cache round trip; past it: local only (counted).", ge=1
    )


@dataclass(frozen=True, slots=True)
class ModelServerConfig:
    api_key_env: str | None = opt(
        None,
        "`rerank-proxy model-server`: environment variable holding the API key clients must"
        " send as `Authorization: Bearer KEY` (null: no key).",
    )
    api_key_file: str | None = opt(None, "File holding that API key (instead of api_key_env).")
    max_documents: int = opt(
        1000, "Documents one rerank request may carry; more: 413 (a clear error).", ge=1
    )


@dataclass(frozen=True, slots=True)
class ShadowConfig:
    queue: int = opt(
        64, "Shadow reranks waiting at most; more are dropped (and counted) when busy.", ge=1
    )
    log: str | None = opt(
        None,
        "JSON Lines file to append sampled shadow comparisons to: one object per search with"
        " the query, the engine's and the reranked window ids, the scores, page overlap,"
        " displacement and promoted ids.",
    )
    log_sample: float = opt(1.0, "Share of shadow comparisons written to `shadow.log`.", ge=0, le=1)


@dataclass(frozen=True, slots=True)
class CompareConfig:
    enabled: bool = opt(
        False,
        "Serve the side-by-side comparison page at `/_rerank_proxy/compare/` (it queries the"
        " cluster with the caller's own credentials).",
    )
    qrels: str | None = opt(
        None, "TREC or BEIR qrels file whose judgments the comparison page shows."
    )


@dataclass(frozen=True, slots=True)
class Rules:
    """The index rules in force: what `resolve_rule` reads (reloadable, one snapshot per
    request)."""

    defaults: RuleConfig = RuleConfig()
    indices: tuple[RuleConfig, ...] = ()


@dataclass(frozen=True, slots=True)
class Config:
    listen: ListenConfig = opt(ListenConfig(), "Where the proxy listens.")
    upstream: UpstreamConfig = opt(UpstreamConfig(), "The cluster behind the proxy.")
    model: ModelConfig = opt(ModelConfig(), "The cross-encoder.")
    defaults: RuleConfig = opt(RuleConfig(), "Rule for indices no entry of `indices` matches.")
    indices: tuple[RuleConfig, ...] = opt((), "Index rules, first match wins (exact names first).")
    cache: CacheConfig = opt(CacheConfig(), "The shared score cache.")
    model_server: ModelServerConfig = opt(
        ModelServerConfig(), "`rerank-proxy model-server`: the rerank API it serves."
    )
    shadow: ShadowConfig = opt(ShadowConfig(), "Shadow mode (rules with `mode: shadow`).")
    compare: CompareConfig = opt(CompareConfig(), "The side-by-side comparison page.")
    log_level: LogLevel = opt("INFO", "Log level.")
    log_format: LogFormat = opt("text", "`text` or `json` log lines.")
    access_log: bool = opt(
        True, "One INFO line per request (costs ~15% of pass-through CPU at high request rates)."
    )

    @property
    def rules(self) -> Rules:
        return Rules(self.defaults, self.indices)


# -- validation ------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        item = typing.get_args(tp)[0]
        return "a list of " + ("mappings" if dataclasses.is_dataclass(item) else "strings")
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(
        tp, str(tp)
    )


class _Invalid(Exception):
    pass


class _WrongType(_Invalid):
    """The value is not of the field's type (as opposed to a type-correct bad value)."""


def _got(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _convert(tp: Any, value: Any, path: str, errors: list[str]) -> Any:
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise _WrongType(f"must be {_type_name(tp)}, got {_got(value)}")
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        try:
            return _convert(inner[0], value, path, errors)
        except _WrongType:
            raise _WrongType(f"must be {_type_name(tp)}, got {_got(value)}") from None
    if origin is tuple:
        item_tp = typing.get_args(tp)[0]
        if isinstance(value, str) and item_tp is str:
            value = [value]
        if isinstance(value, tuple):  # a validated config's own value, passed back in
            value = list(value)
        if not isinstance(value, list):
            raise _WrongType(f"must be {_type_name(tp)}, got {_got(value)}")
        out = []
        for i, item in enumerate(value):
            try:
                out.append(_convert(item_tp, item, f"{path}[{i}]", errors))
            except _Invalid as exc:
                errors.append(f"{path}[{i}]: {exc}")
        return tuple(out)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise _WrongType(f"must be a mapping, got {_got(value)}")
        return _build(tp, value, path, errors)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise _Invalid(f"must be a finite number, got {value!r}")
            return float(value)
    elif tp is str and isinstance(value, str):
        return value
    raise _WrongType(f"must be {_type_name(tp)}, got {_got(value)}")


def _check_bounds(meta: Mapping[str, Any], value: Any) -> None:
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise _Invalid(f"must be one of {', '.join(repr(c) for c in choices)}, got {_got(value)}")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    if meta.get("ge") is not None and value < meta["ge"]:
        raise _Invalid(f"must be >= {meta['ge']}")
    if meta.get("gt") is not None and value <= meta["gt"]:
        raise _Invalid(f"must be > {meta['gt']}")
    if meta.get("le") is not None and value > meta["le"]:
        raise _Invalid(f"must be <= {meta['le']}")


def unknown_key(key: Any, known: Sequence[str] | Mapping[str, Any]) -> str:
    """`unknown key (did you mean 'host'? known: ...)`: the message for a key no field has."""
    names = sorted(known)
    close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key ({hint}known: {', '.join(names)})"


def _build(
    cls: Any,
    raw: Mapping[str, Any],
    path: str,
    errors: list[str],
    inherited: Mapping[str, Any] | None = None,
) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = dict(inherited or {})
    prefix = f"{path}." if path else ""
    for key, value in raw.items():
        if key not in known:
            errors.append(f"{prefix}{key}: {unknown_key(key, known)}")
            continue
        try:
            converted = _convert(hints[key], value, f"{prefix}{key}", errors)
            _check_bounds(known[key].metadata, converted)
            kwargs[key] = converted
        except _Invalid as exc:
            errors.append(f"{prefix}{key}: {exc}")
    return cls(**kwargs)


# Not inherited from `defaults`: `match` names what a rule covers, and
# `defaults.enabled: false` means "leave indices that no rule names alone", not "disable
# every rule".
_NOT_INHERITED = ("match", "enabled")
# A rule that sets either of these chooses its document text itself: it inherits neither.
_TEXT_KEYS = ("fields", "template")


def _build_indices(raw: Any, defaults: RuleConfig, errors: list[str]) -> tuple[RuleConfig, ...]:
    """Index rules, each inheriting the *validated* `defaults` (so a bad default is
    reported once, at `defaults.KEY`, not again under every rule)."""
    if not isinstance(raw, list):
        errors.append(f"indices: must be a list of mappings, got {_got(raw)}")
        return ()
    rules = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping):
            errors.append(f"indices[{i}]: must be a mapping, got {_got(item)}")
            continue
        sets_text = any(k in item for k in _TEXT_KEYS)
        inherited = {
            f.name: getattr(defaults, f.name)
            for f in dataclasses.fields(RuleConfig)
            if f.name not in _NOT_INHERITED and not (sets_text and f.name in _TEXT_KEYS)
        }
        rules.append(_build(RuleConfig, item, f"indices[{i}]", errors, inherited))
    return tuple(rules)


def _cross_checks(cfg: Config, errors: list[str]) -> None:
    reported = [e.split(":", 1)[0] for e in errors]

    def add(key: str, message: str, *about: str) -> None:
        # A key whose value was already rejected fell back to its default: checking that
        # default against other keys would only add a confusing second line.
        for k in about or (key,):
            if any(r == k or r.startswith((k + ".", k + "[")) for r in reported):
                return
        errors.append(f"{key}: {message}")

    url = urlsplit(cfg.upstream.url)
    try:
        url.port  # noqa: B018  (raises ValueError for a port that is no number or out of range)
        url_ok = url.scheme in ("http", "https") and bool(url.hostname)
    except ValueError:
        url_ok = False
    if not url_ok:
        add("upstream.url", f"must be an http:// or https:// URL, got {cfg.upstream.url!r}")
    if cfg.upstream.client_key and not cfg.upstream.client_cert:
        add("upstream.client_key", "needs upstream.client_cert")
    if bool(cfg.listen.tls_cert) != bool(cfg.listen.tls_key):
        add("listen.tls_key", "listen.tls_cert and listen.tls_key go together")
    if cfg.listen.client_ca and not cfg.listen.tls_cert:
        add("listen.client_ca", "needs listen.tls_cert (mutual TLS is TLS)")
    rules = [("defaults", cfg.defaults)] + [(f"indices[{i}]", r) for i, r in enumerate(cfg.indices)]
    for where, rule in rules:
        # A value inherited from `defaults` was checked, and reported, there.
        def own(key: str, rule: RuleConfig = rule) -> bool:
            return rule is cfg.defaults or getattr(rule, key) != getattr(cfg.defaults, key)

        if rule.fields and rule.template and (own("fields") or own("template")):
            add(
                where,
                "set either fields or template, not both",
                f"{where}.fields",
                f"{where}.template",
            )
        qp = rule.query_path
        if own("query_path") and qp is not None and not qp.startswith("/"):
            add(f"{where}.query_path", "must be a JSON pointer starting with '/'")
        if own("template") and rule.template is not None:
            try:
                template_fields(rule.template)
            except ValueError as exc:
                add(f"{where}.template", str(exc))
        if (
            rule.enabled
            and rule.window > cfg.model.max_queue
            and (own("window") or where == "defaults")
        ):
            # The queue bound admits a search's pairs all at once or not at all.
            add(
                "model.max_queue",
                f"{cfg.model.max_queue} is below {where}.window ({rule.window}): every search"
                " there would fail open as overloaded",
                "model.max_queue",
                f"{where}.window",
            )
    for i, rule in enumerate(cfg.indices):
        if not rule.match:
            add(f"indices[{i}].match", "must name at least one index or pattern")
        for j, name in enumerate(rule.match):
            if not name.strip():
                add(f"indices[{i}].match[{j}]", "must not be empty")


def parse_config(raw: Any, source: str = "<config>") -> Config:
    """Validate an already-decoded YAML document; raise ConfigError with every problem."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError([f"{source}: must be a mapping at the top level"])
    errors: list[str] = []
    raw = dict(raw)
    has_indices = "indices" in raw
    raw_indices = raw.pop("indices", None)
    cfg = _build(Config, raw, "", errors)
    if has_indices:
        cfg = dataclasses.replace(cfg, indices=_build_indices(raw_indices, cfg.defaults, errors))
    _cross_checks(cfg, errors)
    if errors:
        raise ConfigError([f"{source}: {e}" for e in errors])
    return typing.cast(Config, cfg)


class _StrictLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that rejects a key repeated in one mapping (YAML requires unique
    keys; PyYAML keeps the last one silently, so a duplicated `window:` would be a typo that
    goes unnoticed)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` merges are overridden by explicit keys on purpose
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # unhashable key: SafeLoader reports it itself
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"duplicate key {key!r}",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file.

    Every problem line starts with the path as given (`config/proxy.yaml: ...`).
    """
    return parse_config(read_raw(path), str(path))


def read_raw(path: str | Path) -> Any:
    """The decoded YAML of a config file (not validated); ConfigError if it cannot be read."""
    p = Path(path)
    name = str(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{name}: cannot read: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{name}: cannot read: not UTF-8 text (byte {exc.start})"]) from exc
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{name}: invalid YAML{where}: {problem}"]) from exc
    return raw


# -- environment variables -----------------------------------------------------------------

ENV_PREFIX = "RERANK_PROXY_"
#: variables with a meaning of their own: the CLI flags' twins (`--listen HOST:PORT`,
#: `--upstream URL`, `--model NAME`, ...) and the tooling's (cache and state directories)
ENV_NOT_KEYS = frozenset(
    {
        "CONFIG",
        "LISTEN",
        "UPSTREAM",
        "MODEL",
        "BACKEND",
        "DEVICE",
        "LOG_LEVEL",
        "LOG_FORMAT",
        "CACHE",
        "STATE",
        "VENV",
        "SHARED",
        "HELM",
        "BIN",
        "KEEP_ENGINES",
        "WORKER_DIR",
        "WORKER_ID",
    }
)


def env_name(path: Sequence[str]) -> str:
    """A key path's variable: `("upstream", "ca_file")` -> `RERANK_PROXY_UPSTREAM__CA_FILE`."""
    return ENV_PREFIX + "__".join(p.upper() for p in path)


def _env_keys() -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(Config):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            for sub in dataclasses.fields(tp):
                out[env_name((f.name, sub.name))] = (f.name, sub.name)
        else:
            out[env_name((f.name,))] = (f.name,)
    return out


def env_overrides(environ: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """Config keys set by `RERANK_PROXY_<KEY PATH>` variables, and the problems found.

    The rule: the key path in capitals, levels joined by a double underscore
    (`RERANK_PROXY_UPSTREAM__CA_FILE`, `RERANK_PROXY_DEFAULTS__WINDOW`,
    `RERANK_PROXY_ACCESS_LOG`). Values are read as YAML (`true`, `5`, `[title, body]`). A
    variable with the prefix that names no key, and is none of `ENV_NOT_KEYS`, is a problem:
    a typo must not be ignored. Empty values are ignored.
    """
    keys = _env_keys()
    raw: dict[str, Any] = {}
    problems: list[str] = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or not environ[name]:
            continue
        if name[len(ENV_PREFIX) :] in ENV_NOT_KEYS:
            continue
        path = keys.get(name)
        if path is None:
            suffixes = [k[len(ENV_PREFIX) :] for k in keys]
            close = difflib.get_close_matches(name[len(ENV_PREFIX) :], suffixes, n=1, cutoff=0.75)
            hint = f" (did you mean {ENV_PREFIX}{close[0]}?)" if close else ""
            problems.append(
                f"{name}: names no config key{hint}; the rule is {env_name(('section', 'key'))}"
            )
            continue
        try:
            value = yaml.safe_load(environ[name])
        except yaml.YAMLError:
            value = environ[name]
        target = raw
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = value
    return raw, problems


def merge_raw(base: Any, over: Mapping[str, Any]) -> Any:
    """`over` laid on `base` (mappings merge key by key; anything else is replaced)."""
    if not isinstance(base, Mapping):
        return dict(over)
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_raw(out[key], value)
        else:
            out[key] = value
    return out


def template_fields(template: str) -> tuple[str, ...]:
    """Field paths named in a `{field}` template; raise ValueError if it is malformed.

    `{{` and `}}` are literal braces, as in `str.format`.
    """
    names = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"{exc}; write {{{{ or }}}} for a literal brace") from None
    for _, name, spec, conv in parsed:
        if name is None:
            continue
        if not name or spec or conv or not _FIELD_PATH.fullmatch(name):
            shown = "{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
            raise ValueError(f"bad placeholder {shown}: use plain {{field.path}} names")
        names.append(name)
    if not names:
        raise ValueError("names no field")
    return tuple(names)


# A dotted field path: no empty segment, no `[index]` or other format-spec syntax.
_FIELD_PATH = re.compile(r"[^.\[\]{}]+(?:\.[^.\[\]{}]+)*")


def rule_text_fields(rule: RuleConfig) -> tuple[str, ...]:
    """The document fields the reranker needs for this rule (empty: all string fields)."""
    if rule.template is not None:
        return template_fields(rule.template)
    return rule.fields


def split_targets(target: str) -> list[str]:
    """Targets of a search path segment: URL-decoded, then comma-separated.

    Decoding comes first, as in the engines: `a%2Cb` names two targets (the documented way
    to write several date-math names in one path). Date math itself is kept as written.
    """
    return [t for t in unquote(target).split(",") if t]


def _date_math_glob(name: str) -> str | None:
    """`<logs-{now/d}>` -> `logs-*`: the static text of a date-math name, with each
    `{...}` expression (nested braces included) as one literal `*`; None if not date math.

    The date the engine will resolve is unknown here, so a date-math target takes the rule
    of the patterns that cover every name it could resolve to: `logs-*` matches the literal
    `logs-*`, while an exact name such as `logs-2024.01.01` cannot.
    """
    if len(name) < 2 or name[0] != "<" or name[-1] != ">":
        return None
    out: list[str] = []
    depth = 0
    chars = iter(name[1:-1])
    for c in chars:
        if c == "\\":
            escaped = next(chars, "")
            if depth == 0:
                out.append(escaped)
        elif c == "{":
            if depth == 0:
                out.append("*")
            depth += 1
        elif c == "}" and depth:
            depth -= 1
        elif depth == 0:
            out.append(c)
    return "".join(out)


def _rule_for_one(rules: Rules, name: str) -> RuleConfig:
    for rule in rules.indices:
        if name in rule.match:
            return rule
    sample = _date_math_glob(name) or name
    for rule in rules.indices:
        if any(fnmatch.fnmatchcase(sample, pat) for pat in rule.match if _is_pattern(pat)):
            return rule
    return rules.defaults


def _is_pattern(pat: str) -> bool:
    return any(c in pat for c in "*?[")


def resolve_rule(rules: Rules, targets: Sequence[str]) -> RuleConfig | None:
    """The rule for a search over `targets`; None when they resolve to different rules.

    An empty target list (`/_search`) uses the rule for `_all`. Exclusions (`-logs`) do not
    take part. A search whose targets resolve to different rules is passed through, never
    guessed.
    """
    names = [t for t in targets if not t.startswith("-")] or ["_all"]
    found = {id(r): r for r in (_rule_for_one(rules, n) for n in names)}
    if len(found) != 1:
        return None
    return next(iter(found.values()))


def config_table() -> str:
    """Markdown table of every config key, generated from the field metadata."""
    rows = ["| key | type | default | description |", "| --- | --- | --- | --- |"]

    def walk(cls: Any, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            key = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(tp):
                walk(tp, key + ".")
                continue
            if typing.get_origin(tp) is tuple and dataclasses.is_dataclass(typing.get_args(tp)[0]):
                rows.append(f"| `{key}` | list of rules | `[]` | {f.metadata['help']} |")
                continue
            default = (
                f.default
                if f.default is not dataclasses.MISSING
                else typing.cast(Any, f.default_factory)()
            )
            shown = (
                "null"
                if default is None
                else repr(list(default) if isinstance(default, tuple) else default)
            )
            text = f.metadata["help"].replace("|", "/")
            choices = f.metadata.get("choices")
            kind = _type_name(Literal[choices]) if choices else _type_name(tp)
            rows.append(f"| `{key}` | {kind} | `{shown}` | {text} |")

    walk(Config, "")
    rows.append("")
    rows.append("Each entry of `indices` takes the same keys as `defaults` (they inherit from it):")
    rows.append("")
    return "\n".join(rows)
