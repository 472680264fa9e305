"""Less work per pair: highlight fragments, leading passages, max-over-passages."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from proxy.config import RuleConfig, parse_config
from proxy.plan import SearchPlan
from proxy.score import split_passages, window_texts


def _plan(**rule: Any) -> SearchPlan:
    r = dataclasses.replace(RuleConfig(), fields=("title", "body"), **rule)
    return SearchPlan({}, 0, 10, 10, "q", r, None, None)


def _doc(*hits: dict[str, Any]) -> dict[str, Any]:
    return {"hits": {"hits": list(hits)}}


def test_highlight_fragments_replace_the_document_when_present() -> None:
    hit_hl = {
        "_source": {"title": "T", "body": "long body"},
        "highlight": {"body": ["a <em>x</em>", "b"]},
    }
    hit_plain = {"_source": {"title": "T2", "body": "other"}}
    texts = window_texts(_doc(hit_hl, hit_plain), _plan(use_highlight=True))
    assert texts == ["a <em>x</em> b", "T2\nother"]
    assert window_texts(_doc(hit_hl), _plan())[0] == "T\nlong body"


def test_leading_words_cut_the_document() -> None:
    hit = {"_source": {"title": "one two", "body": "three four five six"}}
    assert window_texts(_doc(hit), _plan(leading_words=3)) == ["one two three"]


@pytest.mark.parametrize(
    ("words", "size", "stride", "most", "expected"),
    [
        (10, 20, 15, 4, 1),  # short: one passage, the text itself
        (50, 20, 15, 4, 3),  # starts 0, 15, 30 (30 + 20 = 50 covers the end)
        (500, 20, 15, 4, 4),  # capped by max_passages
    ],
)
def test_passages_overlap_and_are_bounded(
    words: int, size: int, stride: int, most: int, expected: int
) -> None:
    text = " ".join(f"w{i}" for i in range(words))
    rule = dataclasses.replace(
        RuleConfig(), passages="max", passage_words=size, passage_stride=stride, max_passages=most
    )
    got = split_passages(text, rule)
    assert len(got) == expected
    assert got[0].split()[0] == "w0"
    assert all(len(p.split()) <= max(size, words if expected == 1 else size) for p in got)
    if expected > 1:
        assert got[1].split()[0] == f"w{stride}"


def test_passages_off_keeps_one_pair_per_document() -> None:
    text = " ".join(["w"] * 1000)
    assert split_passages(text, RuleConfig()) == [text]


def test_passage_options_are_validated() -> None:
    with pytest.raises(Exception, match=r"indices\[0\]\.passages: must be one of 'off', 'max'"):
        parse_config({"indices": [{"match": ["x"], "passages": "all"}]})
