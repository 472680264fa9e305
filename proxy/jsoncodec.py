"""JSON that round-trips the engine's spelling: big integers, float spellings, key order.

Python's json module turns `1.0E10` into `10000000000.0` on the way back out. The proxy
rewrites only hit order and scores, so everything else must come back as the engine wrote
it: a float whose text is not Python's own spelling of it is parsed as `RawFloat` (a float
that remembers its text) and written back verbatim, and so is an integer `-0`
(`NegativeZero`); non-ASCII text is written as UTF-8, as the engines do. Pure module.

A float spelled as Python spells it (`0.25`, `1e-07`: most stored vectors) stays a plain
`float`, because `repr` gives its text back exactly. That is for the garbage collector: a
`RawFloat` has a slot, so each is an object the collector tracks, and a 20 MiB window of
vector floats made its full passes (which hold every thread) last over half a second. For the
same reason `dumps` hands a list of plain floats to the C encoder in one call.

Parsing is as strict as the engines' (Jackson): `NaN`, `Infinity` and `-Infinity` are not
JSON, and a key repeated in one object is an error, so a body the engine would reject is
never rewritten into one it accepts; the caller passes it on unchanged instead. Nesting is
bounded explicitly (`MAX_DEPTH`): deeper text is a `ValueError` before the recursive parser
sees it, and so is a deeper value given to `dumps`. Everything downstream (planning,
`_source` and `filter_path` filtering, the client view) sees only what `loads` admitted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from itertools import accumulate
from typing import Any

# Deeper than any search body or stored document needs, and far enough below Python's
# recursion limit (1000) that every recursive step after parsing has room.
MAX_DEPTH = 512

_encode_str = json.JSONEncoder(ensure_ascii=False).encode
_encode_str_ascii = json.JSONEncoder(ensure_ascii=True).encode
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_DELTA = [0] * 256
_DELTA[ord("[")] = _DELTA[ord("{")] = 1
_DELTA[ord("]")] = _DELTA[ord("}")] = -1


class RawFloat(float):
    """A float parsed from JSON that keeps the engine's spelling of it."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> RawFloat:
        obj = super().__new__(cls, text)
        obj.text = text
        return obj


class NegativeZero(int):
    """The integer `-0`: 0, written back as `-0` (the engines keep a stored `-0` as it is)."""

    __slots__ = ()

    def __new__(cls) -> NegativeZero:
        return super().__new__(cls, 0)


NEGATIVE_ZERO = NegativeZero()
# An integer `-0` somewhere (or a string that looks like one: then only the slower path).
_MAYBE_NEGATIVE_ZERO = re.compile(rb"-0(?![0-9.eE])")


def _parse_int(text: str) -> int:
    return NEGATIVE_ZERO if text == "-0" else int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    return value if _float_repr(value) == text else RawFloat(text)


_float_repr = float.__repr__
_NON_FINITE = frozenset(("nan", "inf", "-inf"))


def _float_text(value: float) -> str:
    text = _float_repr(value)
    return "null" if text in _NON_FINITE else text


# Compact, UTF-8 and without NaN/Infinity, as `_dump` writes; used for lists of plain floats,
# where `float.__repr__` is the spelling either way.
_encode_floats = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False, check_circular=False
).encode


class TooDeep(ValueError):
    """JSON nested deeper than `MAX_DEPTH`."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key!r}")
            seen.add(key)
    return obj


def _check_depth(raw: bytes) -> None:
    """Raise `TooDeep` when UTF-8 JSON text nests containers deeper than `MAX_DEPTH`.

    Counts the brackets outside strings, at C speed: escaped backslashes and quotes are
    dropped first, so the quotes left delimit the strings exactly. Text that is not JSON may
    be miscounted, never in a way that lets the parser recurse deeper than the limit
    before it fails.
    """
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return  # too few containers to nest that deep
    if b"\\" in raw:
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(raw.split(b'"')[::2])
    brackets = outside.translate(None, _NOT_BRACKETS)
    if max(accumulate(map(_DELTA.__getitem__, brackets)), default=0) > MAX_DEPTH:
        raise TooDeep(f"JSON nested deeper than {MAX_DEPTH} levels")


def loads(data: bytes | str) -> Any:
    """Parse JSON as strictly as the engines, keeping float spellings (`RawFloat`) and key
    order. Raises ValueError for what is not JSON to them: `NaN`/`Infinity`, duplicate keys,
    nesting past `MAX_DEPTH`."""
    if isinstance(data, str):
        raw = data.encode("utf-8", "surrogatepass")
    else:
        raw = bytes(data)
        encoding = json.detect_encoding(raw)
        if not encoding.startswith("utf-8"):  # UTF-16/32: count in UTF-8, as json decodes
            data = raw.decode(encoding, "surrogatepass")
            raw = data.encode("utf-8", "surrogatepass")
    _check_depth(raw)
    # Integers go through Python only when a `-0` may be among them: C is faster.
    parse_int = _parse_int if _MAYBE_NEGATIVE_ZERO.search(raw) else None
    return json.loads(
        data,
        parse_float=_parse_float,
        parse_int=parse_int,
        parse_constant=_reject_constant,
        object_pairs_hook=_object,
    )


def _dump(
    value: Any, out: list[str], encode_str: Callable[[str], str] = _encode_str, depth: int = 0
) -> None:
    cls = value.__class__
    if isinstance(value, str):
        out.append(encode_str(value))
    elif cls is float:  # before the checks for the other scalars: vectors are most values
        out.append(_float_text(value))
    elif cls is list and depth < MAX_DEPTH and value and all(x.__class__ is float for x in value):
        try:
            out.append(_encode_floats(value))
        except ValueError:  # NaN or an infinity among them: those are written as null
            out.append("[" + ",".join(map(_float_text, value)) + "]")
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, RawFloat):
        out.append(value.text)
    elif isinstance(value, int):
        out.append("-0" if value.__class__ is NegativeZero else int.__repr__(value))
    elif isinstance(value, float):
        out.append(_float_text(value))
    elif depth >= MAX_DEPTH and isinstance(value, (dict, list, tuple)):
        raise TooDeep(f"value nested deeper than {MAX_DEPTH} levels")
    elif isinstance(value, dict):
        out.append("{")
        first = True
        for key, item in value.items():
            if not first:
                out.append(",")
            first = False
            out.append(encode_str(str(key)))
            out.append(":")
            _dump(item, out, encode_str, depth + 1)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _dump(item, out, encode_str, depth + 1)
        out.append("]")
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def dumps(value: Any) -> bytes:
    """Compact JSON, UTF-8, with `RawFloat`s written as they were read; ValueError
    (`TooDeep`) for a value nested past `MAX_DEPTH`."""
    out: list[str] = []
    _dump(value, out)
    try:
        return "".join(out).encode()
    except UnicodeEncodeError:
        # A lone surrogate (an escaped `\ud800` in the input) has no UTF-8 form: write
        # every non-ASCII character as a `\uXXXX` escape instead, still the same JSON.
        out.clear()
        _dump(value, out, _encode_str_ascii)
        return "".join(out).encode()


def dumps_ndjson(values: list[Any]) -> bytes:
    """NDJSON: one compact document per line, with a trailing newline."""
    return b"".join(dumps(v) + b"\n" for v in values)
