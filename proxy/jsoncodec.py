"""JSON that round-trips the engine's spelling: big integers, float spellings, key order.

Python's json module turns `1.0E10` into `10000000000.0` on the way back out. The proxy
rewrites only hit order and scores, so everything else must come back as the engine wrote
it: floats are parsed as `RawFloat` (a float that remembers its text) and written back
verbatim; non-ASCII text is written as UTF-8, as the engines do. Pure module.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

_encode_str = json.JSONEncoder(ensure_ascii=False).encode
_encode_str_ascii = json.JSONEncoder(ensure_ascii=True).encode


class RawFloat(float):
    """A float parsed from JSON that keeps the engine's spelling of it."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> RawFloat:
        obj = super().__new__(cls, text)
        obj.text = text
        return obj


def loads(data: bytes | str) -> Any:
    """Parse JSON keeping float spellings (`RawFloat`) and key order."""
    return json.loads(data, parse_float=RawFloat)


def _dump(value: Any, out: list[str], encode_str: Callable[[str], str] = _encode_str) -> None:
    if isinstance(value, str):
        out.append(encode_str(value))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, RawFloat):
        out.append(value.text)
    elif isinstance(value, int):
        out.append(int.__repr__(value))
    elif isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            out.append("null")
        else:
            out.append(repr(value))
    elif isinstance(value, dict):
        out.append("{")
        first = True
        for key, item in value.items():
            if not first:
                out.append(",")
            first = False
            out.append(encode_str(str(key)))
            out.append(":")
            _dump(item, out, encode_str)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _dump(item, out, encode_str)
        out.append("]")
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def dumps(value: Any) -> bytes:
    """Compact JSON, UTF-8, with `RawFloat`s written as they were read."""
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
