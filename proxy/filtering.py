"""Response filtering the proxy re-applies itself: `_source` filtering and `filter_path`.

To rerank, the proxy must see `_id`, `_score` and the text fields even when the client's own
`_source` or `filter_path` parameters would strip them. It asks the engine for them, reranks,
then applies the client's parameters here, with the engines' semantics. Pure module.

`_source` filtering follows `XContentMapValues.filter` (Elasticsearch 7.x, OpenSearch): a
pattern is matched against the whole dotted path, `*` is the only wildcard and crosses dots,
a pattern that names an object covers everything below it, and dotted keys stored flat
(`{"a.b": 1}`) match like nested ones. `filter_path` follows the engines' `FilterPath`: one
pattern segment per key, `*` within a key, `**` for any depth, `-` for exclusions (applied
first), arrays transparent, and containers that end up empty dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class SourceFilter:
    """The client's view of `_source`: disabled, or includes/excludes patterns."""

    enabled: bool = True
    includes: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    # (includes, excludes, match-all) automata, built on first use and kept: one filter
    # object serves every hit of a response, and the steps they memoise repeat per hit.
    _compiled: tuple[_Automaton, _Automaton, _Automaton] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def is_identity(self) -> bool:
        return self.enabled and not self.includes and not self.excludes

    def apply(self, source: Any) -> Any:
        """Filter a `_source` object (never called when disabled)."""
        if self.is_identity or not isinstance(source, dict):
            return source
        if self._compiled is None:
            match_all = _Automaton(("*",))
            inc = _Automaton(self.includes) if self.includes else match_all
            object.__setattr__(self, "_compiled", (inc, _Automaton(self.excludes), match_all))
        assert self._compiled is not None
        inc, exc, match_all = self._compiled
        return _filter_map(source, inc, inc.start, exc, exc.start, match_all)


def _as_patterns(value: Any, *, split: bool) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        # URL parameters are comma-separated lists; a JSON string is one pattern.
        return tuple(p for p in value.split(",") if p) if split else (value,)
    if isinstance(value, list) and all(isinstance(p, str) for p in value):
        return tuple(value)
    raise ValueError("bad _source pattern list")


def source_filter_from_body(spec: Any) -> SourceFilter | None:
    """Parse a body `_source` value; None when absent. Raises ValueError when malformed."""
    if spec is None:
        return None
    if isinstance(spec, bool):
        return SourceFilter(enabled=spec)
    if isinstance(spec, (str, list)):
        return SourceFilter(includes=_as_patterns(spec, split=False))
    if isinstance(spec, dict):
        unknown = set(spec) - {"includes", "include", "excludes", "exclude"}
        if unknown:
            raise ValueError(f"unknown _source keys {sorted(unknown)}")
        inc = _as_patterns(spec.get("includes", spec.get("include")), split=False)
        exc = _as_patterns(spec.get("excludes", spec.get("exclude")), split=False)
        return SourceFilter(includes=inc, excludes=exc)
    raise ValueError("bad _source")


def source_filter_from_params(params: Sequence[tuple[str, str]]) -> SourceFilter | None:
    """Parse `_source`, `_source_includes`, `_source_excludes` URL parameters.

    As the engines do: `_source` is exactly `true`, exactly `false`, or a comma-separated
    list of includes (so `_source=no` asks for a field called `no`); `_source_includes`
    replaces the includes of `_source`; the last of repeated parameters counts.
    """
    values = {k: v for k, v in params if k in ("_source", "_source_includes", "_source_excludes")}
    if not values:
        return None
    includes: tuple[str, ...] = ()
    src = values.get("_source")
    if src == "false":
        return SourceFilter(enabled=False)
    if src is not None and src != "true":
        includes = _as_patterns(src, split=True)
    if "_source_includes" in values:
        includes = _as_patterns(values["_source_includes"], split=True)
    excludes = _as_patterns(values.get("_source_excludes"), split=True)
    return SourceFilter(includes=includes, excludes=excludes)


# -- `_source` filtering: a port of XContentMapValues.filter -----------------------------

# A state of `_Automaton`: the (pattern, position) pairs still alive; empty means dead.
_State = frozenset[tuple[int, int]]


class _Automaton:
    """Runs simple-match patterns (`*` the only wildcard) over a dotted path, one character
    at a time, like the engines' Lucene automaton. Each pattern `p` also matches `p.*`, so a
    pattern naming an object covers everything below it."""

    __slots__ = ("_accepting", "_memo", "_patterns", "start")

    def __init__(self, patterns: Iterable[str]) -> None:
        self._patterns = tuple(q for p in patterns for q in (p, p + ".*"))
        self._memo: dict[tuple[_State, str], _State] = {}
        self._accepting: dict[_State, bool] = {}
        self.start = self._closure((i, 0) for i in range(len(self._patterns)))

    def _closure(self, states: Iterable[tuple[int, int]]) -> _State:
        out: set[tuple[int, int]] = set()
        todo = list(states)
        while todo:
            i, j = todo.pop()
            if (i, j) in out:
                continue
            out.add((i, j))
            pattern = self._patterns[i]
            if j < len(pattern) and pattern[j] == "*":
                todo.append((i, j + 1))
        return frozenset(out)

    def step(self, state: _State, text: str) -> _State:
        if not state:
            return state
        key = (state, text)
        found = self._memo.get(key)
        if found is None:
            found = self._memo[key] = self._run(state, text)
        return found

    def _run(self, state: _State, text: str) -> _State:
        for ch in text:
            if not state:
                break
            nxt = []
            for i, j in state:
                pattern = self._patterns[i]
                if j < len(pattern):
                    if pattern[j] == "*":
                        nxt.append((i, j))
                    elif pattern[j] == ch:
                        nxt.append((i, j + 1))
            state = self._closure(nxt)
        return state

    def accepts(self, state: _State) -> bool:
        found = self._accepting.get(state)
        if found is None:
            found = self._accepting[state] = any(j == len(self._patterns[i]) for i, j in state)
        return found


def pattern_reaches(pattern: str, path: str) -> bool:
    """Could a `_source` pattern select any part of the field at `path`: the field itself,
    an object above it, or something below it?"""
    automaton = _Automaton((pattern,))
    state = automaton.step(automaton.start, path)
    return automaton.accepts(state) or bool(automaton.step(state, "."))


def _filter_map(
    obj: dict[str, Any],
    inc: _Automaton,
    inc_state: _State,
    exc: _Automaton,
    exc_state: _State,
    match_all: _Automaton,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        key_inc = inc.step(inc_state, key)
        if not key_inc:
            continue
        key_exc = exc.step(exc_state, key)
        if exc.accepts(key_exc):
            continue
        included = inc.accepts(key_inc)
        sub_inc, sub_state = inc, key_inc
        if included:
            if not exc.step(key_exc, "."):
                out[key] = value  # no exclusion can reach inside: keep it whole
                continue
            sub_inc, sub_state = match_all, match_all.start
        if isinstance(value, dict):
            sub_state = sub_inc.step(sub_state, ".")
            if not sub_state:
                continue
            inner = _filter_map(value, sub_inc, sub_state, exc, exc.step(key_exc, "."), match_all)
            if included or inner:
                out[key] = inner
        elif isinstance(value, list):
            items = _filter_list(value, sub_inc, sub_state, exc, key_exc, match_all)
            if included or items:
                out[key] = items
        elif included:
            out[key] = value
    return out


def _filter_list(
    items: list[Any],
    inc: _Automaton,
    inc_state: _State,
    exc: _Automaton,
    exc_state: _State,
    match_all: _Automaton,
) -> list[Any]:
    out: list[Any] = []
    included = inc.accepts(inc_state)
    for item in items:
        if isinstance(item, dict):
            inner = _filter_map(
                item, inc, inc.step(inc_state, "."), exc, exc.step(exc_state, "."), match_all
            )
            if inner:  # the engines drop objects of an array that filter to nothing
                out.append(inner)
        elif isinstance(item, list):
            nested = _filter_list(item, inc, inc_state, exc, exc_state, match_all)
            if nested:
                out.append(nested)
        elif included:
            out.append(item)
    return out


# -- filter_path -------------------------------------------------------------------------

_MISSING = object()


def _compile(paths: Sequence[str]) -> list[list[str]]:
    return [p.split(".") for p in paths if p]


def _glob(pattern: str, key: str) -> bool:
    """One `filter_path` segment against one key: `*` is the only wildcard."""
    if "*" not in pattern:
        return pattern == key
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, key, re.DOTALL) is not None


def _step(patterns: list[list[str]], key: str) -> tuple[list[list[str]], bool]:
    """Advance every pattern by one key; report whether one ends exactly here."""
    nxt: list[list[str]] = []
    done = False
    for pat in patterns:
        if not pat:
            continue
        head, rest = pat[0], pat[1:]
        if head == "**":
            if not rest:
                done = True  # a trailing `**` matches every key
                continue
            nxt.append(pat)  # `**` may swallow this key too
            sub, sub_done = _step([rest], key)
            nxt.extend(sub)
            done = done or sub_done
        elif _glob(head, key):
            if rest:
                nxt.append(rest)
            else:
                done = True
    return nxt, done


# The recursive walks below use plain loops, not comprehensions: before Python 3.12 a
# comprehension is a frame of its own, and one frame per level keeps a document at
# `jsoncodec.MAX_DEPTH` well inside the recursion limit.


def _fp_include(value: Any, patterns: list[list[str]]) -> Any:
    if isinstance(value, list):
        items: list[Any] = []
        for v in value:
            kept = _fp_include(v, patterns)
            if kept is not _MISSING:
                items.append(kept)
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
    """Drop what the patterns name. A container the patterns reach into is dropped when
    nothing in it is left, emptied or empty already, as the engines' filtering writer drops
    it (`-hits.hits._source` on no hits has no `hits.hits`); one they do not reach into is
    kept whole, empty or not."""
    if isinstance(value, list):
        kept: list[Any] = []
        for v in value:
            sub = _fp_exclude(v, patterns)
            if sub is not _MISSING:
                kept.append(sub)
        return kept if kept else _MISSING
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        nxt, done = _step(patterns, key)
        if done:
            continue
        sub = _fp_exclude(item, nxt) if nxt else item
        if sub is not _MISSING:
            out[key] = sub
    return out if out else _MISSING


def _filter_parts(filter_path: str) -> list[str]:
    """The comma-separated filters, trimmed as the engines trim them; an exclusion is
    trimmed again after its `-` (`- took` excludes `took`)."""
    parts = [p.strip() for p in filter_path.split(",") if p.strip()]
    return ["-" + p[1:].strip() if p.startswith("-") else p for p in parts]


def filter_path_valid(filter_path: str) -> bool:
    """Would the engines accept this `filter_path`? A bare `-` (an exclusion of nothing)
    is their 400 `filters cannot be null or empty`."""
    return all(p != "-" for p in _filter_parts(filter_path))


def apply_filter_path(doc: Any, filter_path: str) -> Any:
    """Apply an engine `filter_path` expression to a decoded response.

    Exclusions (`-path`) are applied first, then the inclusions, as the engines document;
    when nothing is left the result is `{}`. A bare `-` is ignored (see `filter_path_valid`:
    the proxy passes such a search through).
    """
    parts = [p for p in _filter_parts(filter_path) if p != "-"]
    includes = _compile([p for p in parts if not p.startswith("-")])
    excludes = _compile([p[1:] for p in parts if p.startswith("-")])
    if excludes:
        doc = _fp_exclude(doc, excludes)
        if doc is _MISSING:
            return {}
    if includes:
        doc = _fp_include(doc, includes)
        if doc is _MISSING:
            return {}
    return doc
