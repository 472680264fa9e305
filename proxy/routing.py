"""Request routing: which requests may be reranked, decided from method and path alone.

Pure module. The body-dependent decision (scroll, sort, size 0, ...) is `search.plan_search`.
NDJSON endpoints are recognised by path, not by header: opensearch-py sends `_msearch` as
plain `application/json`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl, quote, unquote_plus

from .config import split_targets

RouteKind = Literal["pass", "search", "msearch", "search_template", "msearch_template", "admin"]
ADMIN_PREFIX = "/_rerank_proxy/"

_ENDPOINTS: dict[tuple[str, ...], RouteKind] = {
    ("_search",): "search",
    ("_msearch",): "msearch",
    ("_search", "template"): "search_template",
    ("_msearch", "template"): "msearch_template",
}


@dataclass(frozen=True, slots=True)
class Route:
    kind: RouteKind
    targets: tuple[str, ...] = ()


PASS = Route("pass")


def origin_form(method: str, raw_target: str) -> bool:
    """Is this request target origin-form (`/path?query`, RFC 9112 3.2.1)?

    The proxy is a gateway, not a forward proxy: absolute-form (`http://host/path`, any
    scheme), authority-form (`CONNECT host:port`) and asterisk-form (`OPTIONS *`) targets
    are errors, rejected before an upstream URL is built from them.
    """
    return method != "CONNECT" and raw_target.startswith("/")


def classify(method: str, raw_path: str) -> Route:
    """Classify a request by method and raw (still percent-encoded) path."""
    if raw_path.startswith(ADMIN_PREFIX) or raw_path == ADMIN_PREFIX.rstrip("/"):
        return Route("admin")
    if method not in ("GET", "POST"):
        return PASS
    segments = [s for s in raw_path.split("/") if s]
    if not segments:
        return PASS
    target: str | None = None
    if not segments[0].startswith("_") or (segments[0] == "_all" and len(segments) > 1):
        target, segments = segments[0], segments[1:]
    kind = _ENDPOINTS.get(tuple(segments))
    if kind is None:
        return PASS
    return Route(kind, tuple(split_targets(target)) if target else ())


def split_path_query(raw_path_qs: str) -> tuple[str, str]:
    path, _, query = raw_path_qs.partition("?")
    return path, query


def parse_params(raw_query: str) -> list[tuple[str, str]]:
    """Decoded query parameters, in order (used for decisions, never for forwarding)."""
    return parse_qsl(raw_query, keep_blank_values=True)


def without_params(raw_query: str, names: frozenset[str]) -> str:
    """The raw query string with the named parameters removed, the rest byte-exact.

    Names are compared decoded (`%5Fsource` is `_source`, as the engines read it); every
    other byte, empty `&&` pieces included, is kept as the client sent it.
    """
    if not raw_query:
        return raw_query
    kept = [
        part
        for part in raw_query.split("&")
        if not part or unquote_plus(part.split("=", 1)[0]) not in names
    ]
    return "&".join(kept)


def with_params(raw_query: str, extra: dict[str, str]) -> str:
    """Append parameters, percent-encoded (`extra` holds decoded names and values)."""
    parts = [raw_query] if raw_query else []
    parts.extend(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in extra.items())
    return "&".join(parts)


# RFC 9110 12.4.2: `0`, `0.x`, `1`, `1.0`, with at most three decimals.
_QVALUE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")


def _weight(params: list[str]) -> float:
    """The `q` of one `Accept-Encoding` member (1 when absent, 0 when malformed)."""
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            value = value.strip()
            return float(value) if _QVALUE.fullmatch(value) else 0.0
    return 1.0


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Does this `Accept-Encoding` value accept gzip (RFC 9110 12.5.3)?

    `gzip` (or its alias `x-gzip`) with a q-value above 0 does, and so does `*` above 0
    when gzip is not named; `gzip;q=0` and `*;q=0` do not. No header, an empty one, or a
    malformed q-value: identity, which every client accepts.
    """
    if not accept_encoding:
        return False
    named: list[float] = []
    star: list[float] = []
    for member in accept_encoding.split(","):
        coding, *params = member.split(";")
        coding = coding.strip().lower()
        if coding in ("gzip", "x-gzip"):
            named.append(_weight(params))
        elif coding == "*":
            star.append(_weight(params))
    weights = named or star
    return bool(weights) and min(weights) > 0
