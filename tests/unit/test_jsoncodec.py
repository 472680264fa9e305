"""Tests for proxy.jsoncodec: what the engine wrote comes back out as the engine wrote it."""

from __future__ import annotations

import copy
import gc
import json
import pickle
from typing import Any

import pytest

from proxy import jsoncodec
from proxy.jsoncodec import RawFloat

# Compact JSON as an engine writes it: loads() then dumps() gives back the same bytes.
ROUND_TRIP: list[tuple[str, bytes]] = [
    ("big-int-2-70", b'{"n":1180591620717411303424}'),
    ("big-negative-int", b'{"n":-1180591620717411303424}'),
    ("int64-max", b'{"seq_no":9223372036854775807}'),
    ("zero-int", b"[0,-1,1]"),
    ("float-upper-exponent", b'{"f":1.0E10}'),
    ("float-lower-exponent", b'{"f":1e-7}'),
    ("float-signed-exponent", b'{"f":1.5e+300}'),
    ("float-trailing-zero", b'{"f":0.10}'),
    ("float-negative-zero", b'{"f":-0.0}'),
    ("float-many-digits", b'{"f":0.30000000000000004441}'),
    ("float-integral", b'{"f":100.0}'),
    ("float-overflow", b'{"f":1e400}'),
    ("non-ascii", '{"t":"café 日本語 🎉 Ω"}'.encode()),
    ("escaped-quotes-backslash", b'{"s":"say \\"hi\\" \\\\ /"}'),
    ("escaped-controls", b'{"s":"a\\nb\\tc\\rd\\be\\ff\\u0000g\\u001f"}'),
    ("key-order", b'{"z":1,"a":2,"m":{"y":1,"b":2}}'),
    ("non-ascii-key", '{"ключ":1}'.encode()),
    ("empty-key", b'{"":1}'),
    ("nested", b'[[],[{}],[1,[2,[3,{"a":[null]}]]]]'),
    ("literals", b'{"t":true,"f":false,"n":null}'),
    ("empty-string", b'{"s":""}'),
    (
        "search-response",
        b'{"took":5,"timed_out":false,"hits":{"total":{"value":10000,"relation":"gte"},'
        b'"max_score":1.2345679E7,"hits":[{"_id":"a\\/b","_score":0.0,'
        b'"_source":{"price":19.990,"id":12345678901234567890}}]}}',
    ),
]


def _canonical(data: bytes) -> bytes:
    """`\\/` is the one escape an engine may write that a compact writer spells `/`."""
    return data.replace(b"\\/", b"/")


@pytest.mark.parametrize("data", [c[1] for c in ROUND_TRIP], ids=[c[0] for c in ROUND_TRIP])
def test_round_trip_is_byte_exact(data: bytes) -> None:
    assert jsoncodec.dumps(jsoncodec.loads(data)) == _canonical(data)


@pytest.mark.parametrize("data", [c[1] for c in ROUND_TRIP], ids=[c[0] for c in ROUND_TRIP])
def test_values_equal_the_standard_parser(data: bytes) -> None:
    assert jsoncodec.loads(data) == json.loads(data)
    assert jsoncodec.loads(data.decode()) == json.loads(data)


def test_raw_float_is_a_float_that_remembers_its_text() -> None:
    value = jsoncodec.loads(b"1.0E10")
    assert isinstance(value, RawFloat)
    assert isinstance(value, float)
    assert value == 1e10
    assert value.text == "1.0E10"
    assert value * 2 == 2e10
    assert type(value * 2) is float  # arithmetic gives a plain float, written with repr


def test_a_float_spelled_as_python_spells_it_is_a_plain_untracked_float() -> None:
    # A window of stored vectors is millions of these: as tracked objects (a RawFloat has a
    # slot) they made the collector's full passes, which hold every thread, last 0.6 s.
    doc = jsoncodec.loads(b'{"vec":[0.25,1e-07,-0.0,0.123456,1e+16],"odd":[0.10,1E5]}')
    assert [type(v) for v in doc["vec"]] == [float] * 5
    assert not any(gc.is_tracked(v) for v in doc["vec"])
    assert [type(v) for v in doc["odd"]] == [RawFloat, RawFloat]
    assert jsoncodec.dumps(doc) == b'{"vec":[0.25,1e-07,-0.0,0.123456,1e+16],"odd":[0.10,1E5]}'


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ([0.5, float("nan"), 2.0], b"[0.5,null,2.0]"),
        ([float("-inf"), 1e300], b"[null,1e+300]"),
        ([0.5, 1], b"[0.5,1]"),
        ([1.5, RawFloat("1.50")], b"[1.5,1.50]"),
    ],
    ids=["nan-among-floats", "infinity-among-floats", "float-and-int", "float-and-raw"],
)
def test_a_list_of_floats_is_written_as_item_by_item(value: list[Any], written: bytes) -> None:
    assert jsoncodec.dumps(value) == written


def test_a_list_of_floats_too_deep_is_still_refused() -> None:
    value: Any = [0.5]
    for _ in range(jsoncodec.MAX_DEPTH):
        value = [value]
    with pytest.raises(jsoncodec.TooDeep):
        jsoncodec.dumps(value)
    assert jsoncodec.dumps(value[0]).endswith(b"[0.5" + b"]" * jsoncodec.MAX_DEPTH)


def test_raw_float_survives_deepcopy_and_pickle() -> None:
    doc = jsoncodec.loads(b'{"a":[0.10,1.0E10]}')
    for copied in (copy.deepcopy(doc), pickle.loads(pickle.dumps(doc))):
        assert jsoncodec.dumps(copied) == b'{"a":[0.10,1.0E10]}'


def test_big_int_keeps_every_digit() -> None:
    value = jsoncodec.loads(b"1180591620717411303424")
    assert value == 2**70
    assert jsoncodec.dumps({"n": 2**70 + 1}) == b'{"n":1180591620717411303425}'


# Values the proxy itself puts in a document (scores) and what they are written as.
WRITTEN: list[tuple[str, Any, bytes]] = [
    ("python-float", 0.1, b"0.1"),
    ("python-float-exponent", 1e-7, b"1e-07"),
    ("python-float-integral", 2.0, b"2.0"),
    ("python-negative-zero", -0.0, b"-0.0"),
    ("nan-is-null", float("nan"), b"null"),
    ("inf-is-null", float("inf"), b"null"),
    ("bool-not-int", True, b"true"),
    ("tuple-is-list", (1, "a"), b'[1,"a"]'),
    ("int-key", {1: "a"}, b'{"1":"a"}'),
    ("escaped-non-ascii-input-written-as-utf8", json.loads('"\\u00e9"'), '"é"'.encode()),
    ("control-char", "\x01", b'"\\u0001"'),
    ("empty-containers", {"a": [], "b": {}}, b'{"a":[],"b":{}}'),
]


@pytest.mark.parametrize(
    ("value", "expected"), [c[1:] for c in WRITTEN], ids=[c[0] for c in WRITTEN]
)
def test_dumps(value: Any, expected: bytes) -> None:
    assert jsoncodec.dumps(value) == expected


@pytest.mark.parametrize(
    "data",
    [b'{"s":"\\ud800x"}', b'{"\\udfff":"caf\\u00e9"}', b'["\\ud83d"]'],
    ids=["lone-high-surrogate-value", "lone-low-surrogate-key", "truncated-emoji"],
)
def test_lone_surrogates_are_written_as_escapes(data: bytes) -> None:
    """They have no UTF-8 form; the output must still be valid UTF-8 JSON with the same value."""
    out = jsoncodec.dumps(jsoncodec.loads(data))
    out.decode("utf-8")
    assert json.loads(out) == json.loads(data)


def test_valid_surrogate_pairs_become_utf8() -> None:
    assert jsoncodec.dumps(jsoncodec.loads(b'"\\ud83c\\udf89"')) == '"🎉"'.encode()


def test_unsupported_types_raise() -> None:
    with pytest.raises(TypeError, match="cannot encode set"):
        jsoncodec.dumps({"a": {1}})


def test_invalid_json_raises_value_error() -> None:
    with pytest.raises(ValueError):
        jsoncodec.loads(b'{"a":')


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], b""),
        ([{}], b"{}\n"),
        (
            [{"index": "a"}, {"query": {"match": {"t": "ü"}}, "size": RawFloat("1.0E1")}],
            '{"index":"a"}\n{"query":{"match":{"t":"ü"}},"size":1.0E1}\n'.encode(),
        ),
    ],
    ids=["empty", "one", "header-and-body"],
)
def test_dumps_ndjson(values: list[Any], expected: bytes) -> None:
    out = jsoncodec.dumps_ndjson(values)
    assert out == expected
    assert [json.loads(line) for line in out.splitlines()] == [
        json.loads(jsoncodec.dumps(v)) for v in values
    ]
