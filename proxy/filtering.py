"""Response filtering the proxy re-applies itself: `_source` filtering and `filter_path`.

To rerank, the proxy must see `_id`, `_score` and the text fields even when the client's own
`_source` or `filter_path` parameters would strip them. It asks the engine for them, reranks,
then applies the client's parameters here, with the engines' semantics: dotted paths, `*`
wildcards, `**` for any depth in `filter_path`, `-` exclusions, arrays transparent. Pure module.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_MISSING = object()


@dataclass(frozen=True, slots=True)
class SourceFilter:
    """The client's view of `_source`: disabled, or includes/excludes patterns."""

    enabled: bool = True
    includes: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()

    @property
    def is_identity(self) -> bool:
        return self.enabled and not self.includes and not self.excludes

    def apply(self, source: Any) -> Any:
        """Filter a `_source` object (never called when disabled)."""
        if self.is_identity or not isinstance(source, dict):
            return source
        return _filter_source_obj(source, "", self.includes, self.excludes)


def _as_patterns(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(p for p in value.split(",") if p)
    if isinstance(value, list):
        return tuple(str(p) for p in value)
    raise ValueError("bad _source pattern list")


def source_filter_from_body(spec: Any) -> SourceFilter | None:
    """Parse a body `_source` value; None when absent. Raises ValueError when malformed."""
    if spec is None:
        return None
    if isinstance(spec, bool):
        return SourceFilter(enabled=spec)
    if isinstance(spec, (str, list)):
        return SourceFilter(includes=_as_patterns(spec))
    if isinstance(spec, dict):
        unknown = set(spec) - {"includes", "include", "excludes", "exclude"}
        if unknown:
            raise ValueError(f"unknown _source keys {sorted(unknown)}")
        inc = _as_patterns(spec.get("includes", spec.get("include")))
        exc = _as_patterns(spec.get("excludes", spec.get("exclude")))
        return SourceFilter(includes=inc, excludes=exc)
    raise ValueError("bad _source")


def source_filter_from_params(params: Sequence[tuple[str, str]]) -> SourceFilter | None:
    """Parse `_source`, `_source_includes`, `_source_excludes` URL parameters."""
    values = {k: v for k, v in params if k in ("_source", "_source_includes", "_source_excludes")}
    if not values:
        return None
    includes: tuple[str, ...] = ()
    src = values.get("_source")
    if src is not None:
        low = src.lower()
        if low in ("false", "no", "off", "0"):
            return SourceFilter(enabled=False)
        if low not in ("true", "yes", "on", "1", ""):
            includes = _as_patterns(src)
    if "_source_includes" in values:
        includes = _as_patterns(values["_source_includes"])
    return SourceFilter(includes=includes, excludes=_as_patterns(values.get("_source_excludes")))


def _path_match(patterns: Sequence[str], path: str) -> bool:
    return any(fnmatch.fnmatchcase(path, p) for p in patterns)


def _could_match_below(patterns: Sequence[str], path: str) -> bool:
    """Can some pattern match `path` or a path below it?"""
    for p in patterns:
        if fnmatch.fnmatchcase(path, p):
            return True
        prefix = path + "."
        literal = p.split("*", 1)[0]
        if p.startswith(prefix) or (
            "*" in p and (literal.startswith(prefix) or prefix.startswith(literal))
        ):
            return True
    return False


def _filter_source_obj(
    obj: dict[str, Any], prefix: str, inc: Sequence[str], exc: Sequence[str]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        path = f"{prefix}{key}"
        if exc and _path_match(exc, path):
            continue
        included = not inc or _path_match(inc, path)
        kept = _filter_source_value(value, path, () if included else inc, exc, included)
        if kept is not _MISSING:
            out[key] = kept
    return out


def _filter_source_value(
    value: Any, path: str, inc: Sequence[str], exc: Sequence[str], included: bool
) -> Any:
    if isinstance(value, dict):
        if not included and not _could_match_below(inc, path):
            return _MISSING
        inner = _filter_source_obj(value, path + ".", inc, exc)
        if not inner and not included:
            return _MISSING
        return inner
    if isinstance(value, list):
        if not included and not _could_match_below(inc, path):
            return _MISSING
        items = []
        for item in value:
            kept = _filter_source_value(item, path, inc, exc, included)
            if kept is not _MISSING:
                items.append(kept)
        if not items and not included:
            return _MISSING
        return items
    return value if included else _MISSING


# -- filter_path -------------------------------------------------------------------------


def _compile(paths: Sequence[str]) -> list[list[str]]:
    return [p.split(".") for p in paths if p]


def _step(patterns: list[list[str]], key: str) -> tuple[list[list[str]], bool]:
    """Advance every pattern by one key; report whether one ends exactly here."""
    nxt: list[list[str]] = []
    done = False
    for pat in patterns:
        if not pat:
            continue
        head, rest = pat[0], pat[1:]
        if head == "**":
            nxt.append(pat)  # `**` may swallow this key too
            sub, sub_done = _step([rest], key)
            nxt.extend(sub)
            done = done or sub_done
        elif fnmatch.fnmatchcase(key, head):
            if rest:
                nxt.append(rest)
            else:
                done = True
    return nxt, done


def _fp_include(value: Any, patterns: list[list[str]]) -> Any:
    if isinstance(value, list):
        items = [_fp_include(v, patterns) for v in value]
        items = [v for v in items if v is not _MISSING]
        return items if items else _MISSING
    if not isinstance(value, dict):
        return _MISSING
    out: dict[str, Any] = {}
    for key, item in value.items():
        nxt, done = _step(patterns, key)
        if done:
            out[key] = item
        elif nxt:
            kept = _fp_include(item, nxt)
            if kept is not _MISSING:
                out[key] = kept
    return out if out else _MISSING


def _fp_exclude(value: Any, patterns: list[list[str]]) -> Any:
    if isinstance(value, list):
        return [_fp_exclude(v, patterns) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        nxt, done = _step(patterns, key)
        if done:
            continue
        out[key] = _fp_exclude(item, nxt) if nxt else item
    return out


def apply_filter_path(doc: Any, filter_path: str) -> Any:
    """Apply an engine `filter_path` expression to a decoded response."""
    parts = [p.strip() for p in filter_path.split(",") if p.strip()]
    includes = _compile([p for p in parts if not p.startswith("-")])
    excludes = _compile([p[1:] for p in parts if p.startswith("-")])
    if includes:
        doc = _fp_include(doc, includes)
        if doc is _MISSING:
            return {}
    if excludes:
        doc = _fp_exclude(doc, excludes)
    return doc
