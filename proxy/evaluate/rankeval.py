"""Judged queries from an Elasticsearch/OpenSearch `_rank_eval` request body.

The body the engines' `POST /INDEX/_rank_eval` takes: `requests[]`, each with an `id`, a
search (`request`, or `template_id` naming one of the body's `templates[]` plus `params`)
and `ratings[{_index, _id, rating}]` (integer grades, kept as given); `metric`,
`templates` and `max_concurrent_searches` may be present. Read strictly, as the engines
would: unknown keys, duplicate keys, NaN, a missing or mistyped field are each one
`InputError` naming the file, the line of the offending value and what was expected. The
JSON is decoded by the standard library's pure-Python scanner with position-keeping
containers (`_Object`, `_Array`), which is what gives every value its line. A request's query
text comes from its DSL (`proxy.query_text.extract_query_text`), or from the `params` key
named by `query_param`; a template request without one gets its text after rendering.
"""

from __future__ import annotations

import bisect
import json
import json.decoder
import json.scanner
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

from ..query_text import extract_query_text
from .errors import InputError
from .judgments import Judgments, Topic, read_text

_TOP_KEYS: Final = ("requests", "metric", "templates", "max_concurrent_searches")
_REQUEST_KEYS: Final = ("id", "request", "template_id", "params", "ratings", "summary_fields")
_RATING_KEYS: Final = ("_index", "_id", "rating")
Scan = Callable[[str, int], tuple[Any, int]]


class _Object(dict[str, Any]):
    """A decoded JSON object that knows its line and the line of each value."""

    __slots__ = ("line", "lines")

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.lines: dict[str, int] = {}


class _Array(list[Any]):
    """A decoded JSON array that knows its line and the line of each item."""

    __slots__ = ("line", "lines")

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.lines: list[int] = []


class _NotJson(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _reject_constant(name: str) -> Any:
    raise _NotJson(name)


def decode_json(text: str, path: str | os.PathLike[str]) -> Any:
    """Decode JSON strictly (no NaN/Infinity, no duplicate keys) into `_Object`/`_Array`."""
    starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def line_of(pos: int) -> int:
        return bisect.bisect_right(starts, pos)

    json_object: Callable[..., tuple[Any, int]] = getattr(json.decoder, "JSONObject")  # noqa: B009
    json_array: Callable[..., tuple[Any, int]] = getattr(json.decoder, "JSONArray")  # noqa: B009

    def located(scan: Scan, lines: list[int]) -> Scan:
        def wrapped(s: str, idx: int) -> tuple[Any, int]:
            lines.append(line_of(idx))
            try:
                return scan(s, idx)
            except _NotJson as exc:
                raise InputError(
                    path, f"invalid JSON: {exc.name} is not a JSON value", line_of(idx)
                ) from exc

        return wrapped

    def parse_object(s_and_end: tuple[str, int], strict: bool, scan: Scan, *rest: Any) -> Any:
        _, end = s_and_end
        lines: list[int] = []
        pairs, end_ = json_object(s_and_end, strict, located(scan, lines), None, list, rest[-1])
        obj = _Object(line_of(end - 1))
        for (key, value), value_line in zip(pairs, lines, strict=False):
            if key in obj:
                raise InputError(path, f"duplicate key {key!r}", value_line)
            obj[key] = value
            obj.lines[key] = value_line
        return obj, end_

    def parse_array(s_and_end: tuple[str, int], scan: Scan, *rest: Any) -> Any:
        _, end = s_and_end
        arr = _Array(line_of(end - 1))
        values, end_ = json_array(s_and_end, located(scan, arr.lines))
        arr.extend(values)
        del arr.lines[len(values) :]  # a failed scan at `]` recorded a line too
        return arr, end_

    decoder = json.JSONDecoder(parse_constant=_reject_constant)
    decoder.parse_object = parse_object  # type: ignore[attr-defined]
    decoder.parse_array = parse_array  # type: ignore[attr-defined]
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    try:
        return decoder.decode(text)
    except json.JSONDecodeError as exc:
        raise InputError(path, f"invalid JSON: {exc.msg} (column {exc.colno})", exc.lineno) from exc
    except _NotJson as exc:  # a top-level NaN
        raise InputError(path, f"invalid JSON: {exc.name} is not a JSON value", 1) from exc
    except RecursionError as exc:
        raise InputError(path, "invalid JSON: nested too deeply") from exc


# -- the body -------------------------------------------------------------------------------


def load_rank_eval(path: str | os.PathLike[str], *, query_param: str | None = None) -> Judgments:
    """Judged queries from a `_rank_eval` body file."""
    body = decode_json(read_text(path), path)
    checker = _Checker(path)
    top = checker.obj(body, "the body", 1)
    checker.keys(top, _TOP_KEYS, "")
    templates = _templates(checker, top)
    requests = checker.arr(top.get("requests"), "requests", _line(top, "requests"), need=True)
    if not requests:
        raise InputError(path, "requests: expected at least one request", requests.line)
    topics: dict[str, Topic] = {}
    qrels: dict[str, dict[tuple[str, str], int]] = {}
    for i, item in enumerate(requests):
        where = f"requests[{i}]"
        req = checker.obj(item, where, requests.lines[i])
        checker.keys(req, _REQUEST_KEYS, where)
        rid = checker.string(req, "id", where)
        if rid in topics:
            first = topics[rid].line
            raise InputError(
                path, f"{where}.id: duplicate request id {rid!r} (first on line {first})", req.line
            )
        topics[rid] = _topic(checker, req, where, rid, templates, query_param)
        qrels[rid] = _ratings(checker, req, where)
    indices = {index for ratings in qrels.values() for index, _ in ratings}
    by_index = len(indices) > 1

    def key(index: str, doc_id: str) -> str:
        return f"{index}/{doc_id}" if by_index else doc_id

    flat = {rid: {key(i, d): g for (i, d), g in r.items()} for rid, r in qrels.items()}
    return Judgments("rank_eval", str(path), topics, flat, key_by_index=by_index)


def _templates(checker: _Checker, top: _Object) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "templates" not in top:
        return out
    items = checker.arr(top["templates"], "templates", _line(top, "templates"))
    for i, item in enumerate(items):
        where = f"templates[{i}]"
        tpl = checker.obj(item, where, items.lines[i])
        checker.keys(tpl, ("id", "template"), where)
        tid = checker.string(tpl, "id", where)
        spec = checker.obj(tpl.get("template"), f"{where}.template", _line(tpl, "template"))
        checker.keys(spec, ("inline", "source"), f"{where}.template")
        sources = [k for k in ("inline", "source") if k in spec]
        if len(sources) != 1:
            raise InputError(
                checker.path,
                f"{where}.template: expected exactly one of 'inline', 'source'",
                spec.line,
            )
        source = spec[sources[0]]
        if not isinstance(source, (dict, str)) or not source:
            raise InputError(
                checker.path,
                f"{where}.template.{sources[0]}: expected an object or a non-empty string,"
                f" got {_kind(source)}",
                spec.lines[sources[0]],
            )
        if tid in out:
            raise InputError(checker.path, f"{where}.id: duplicate template id {tid!r}", tpl.line)
        out[tid] = source
    return out


def _topic(
    checker: _Checker,
    req: _Object,
    where: str,
    rid: str,
    templates: Mapping[str, Any],
    query_param: str | None,
) -> Topic:
    path = checker.path
    has_request, has_template = "request" in req, "template_id" in req
    if has_request == has_template:
        raise InputError(path, f"{where}: expected either 'request' or 'template_id'", req.line)
    if has_request:
        if "params" in req:
            raise InputError(
                path,
                f"{where}.params: only a 'template_id' request takes params",
                req.lines["params"],
            )
        search = checker.obj(req["request"], f"{where}.request", req.lines["request"])
        found = extract_query_text(search.get("query"))
        if found is None:
            raise InputError(
                path,
                f"{where}.request: no query text in its query (the proxy reads match,"
                " multi_match, query_string and similar clauses)",
                search.line,
            )
        return Topic(rid, found, req.line, request=search)
    template_id = checker.string(req, "template_id", where)
    if template_id not in templates:
        known = ", ".join(repr(t) for t in templates) or "none"
        raise InputError(
            path,
            f"{where}.template_id: {template_id!r} is not in the body's templates (known: {known})",
            req.lines["template_id"],
        )
    params = checker.obj(req.get("params"), f"{where}.params", _line(req, "params"), need=True)
    text: str | None = None
    if query_param is not None:
        value = params.get(query_param)
        if not isinstance(value, str) or not value.strip():
            raise InputError(
                path,
                f"{where}.params.{query_param}: expected the query text (a non-empty string),"
                f" got {_kind(value) if query_param in params else 'nothing'}",
                params.lines.get(query_param, params.line),
            )
        text = " ".join(value.split())
    return Topic(
        rid,
        text,
        req.line,
        template=templates[template_id],
        params=params,
        text_from_params=text is not None,
    )


def _ratings(checker: _Checker, req: _Object, where: str) -> dict[tuple[str, str], int]:
    path = checker.path
    items = checker.arr(req.get("ratings"), f"{where}.ratings", _line(req, "ratings"), need=True)
    out: dict[tuple[str, str], int] = {}
    first: dict[tuple[str, str], tuple[int, int]] = {}
    for j, item in enumerate(items):
        at = f"{where}.ratings[{j}]"
        rating = checker.obj(item, at, items.lines[j])
        checker.keys(rating, _RATING_KEYS, at)
        doc = (checker.string(rating, "_index", at), checker.string(rating, "_id", at))
        grade = rating.get("rating")
        if not isinstance(grade, int) or isinstance(grade, bool):
            got = _kind(grade) if "rating" in rating else "nothing"
            raise InputError(
                path, f"{at}.rating: expected an integer, got {got}", _line(rating, "rating")
            )
        if doc in first:
            raise InputError(
                path,
                f"{at}: duplicate rating of {doc[0]!r}, {doc[1]!r}"
                f" (first: ratings[{first[doc][0]}], line {first[doc][1]})",
                rating.line,
            )
        first[doc] = (j, rating.line)
        out[doc] = grade
    return out


# -- checks ---------------------------------------------------------------------------------


def _line(obj: _Object, key: str) -> int:
    return obj.lines.get(key, obj.line)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value!r}" if len(value) <= 40 else "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


class _Checker:
    """Type checks of decoded values, each failure an `InputError` at the value's line."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = path

    def obj(self, value: Any, where: str, line: int, *, need: bool = False) -> _Object:
        if not isinstance(value, _Object):
            got = "nothing" if value is None and need else _kind(value)
            raise InputError(self.path, f"{where}: expected an object, got {got}", line)
        return value

    def arr(self, value: Any, where: str, line: int, *, need: bool = False) -> _Array:
        if not isinstance(value, _Array):
            got = "nothing" if value is None and need else _kind(value)
            raise InputError(self.path, f"{where}: expected an array, got {got}", line)
        return value

    def string(self, obj: _Object, key: str, where: str) -> str:
        value = obj.get(key)
        if not isinstance(value, str) or not value:
            got = _kind(value) if key in obj else "nothing"
            raise InputError(
                self.path, f"{where}.{key}: expected a non-empty string, got {got}", _line(obj, key)
            )
        return value

    def keys(self, obj: _Object, known: tuple[str, ...], where: str) -> None:
        for key in obj:
            if key not in known:
                prefix = f"{where}." if where else ""
                raise InputError(
                    self.path,
                    f"{prefix}{key}: unknown key (expected one of {', '.join(known)})",
                    obj.lines[key],
                )
