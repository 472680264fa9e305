"""Settings held for reload (static vs a per-request snapshot) and closed-set metric labels."""

from __future__ import annotations

import dataclasses

from prometheus_client.parser import text_string_to_metric_families

from proxy.config import ListenConfig, RuleConfig, parse_config
from proxy.metrics import Metrics
from proxy.outcome import ItemOutcome, Outcome, Reason, State
from proxy.settings import Settings


def test_a_snapshot_taken_before_a_replace_keeps_the_old_rules() -> None:
    old = parse_config({"indices": [{"match": ["a"], "window": 5}]})
    settings = Settings(old)
    before = settings.current
    new = parse_config({"indices": [{"match": ["a"], "window": 9}], "log_level": "DEBUG"})
    assert settings.replace(new) == []
    assert before.rules.indices[0].window == 5  # a request in flight keeps its own snapshot
    assert settings.current.rules.indices[0].window == 9
    assert settings.current.log_level == "DEBUG"


def test_static_changes_are_reported_and_not_applied() -> None:
    old = parse_config({})
    settings = Settings(old)
    new = dataclasses.replace(
        old,
        listen=ListenConfig(port=1234),
        model=dataclasses.replace(old.model, name="other/model"),
        defaults=RuleConfig(window=7),
    )
    assert settings.replace(new) == ["listen.port", "model"]
    assert settings.static == old
    assert settings.current.rules.defaults.window == 7


def test_msearch_items_skipped_for_different_reasons_make_a_valid_exposition() -> None:
    """Metric names were built from free text: `rerank_skipped_disabled+sort` broke scrapes."""
    metrics = Metrics()
    outcome = Outcome()
    outcome.items(
        [ItemOutcome(State.SKIPPED, Reason.DISABLED), ItemOutcome(State.SKIPPED, Reason.SORT)]
    )
    assert outcome.headers()["X-Rerank-Reason"] == "disabled+sort"
    metrics.record(outcome, "msearch", 200, 0.01)
    text = metrics.exposition().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    searches = {
        (s.labels["outcome"], s.labels["reason"]): s.value
        for s in families["rerank_proxy_searches"].samples
        if s.name.endswith("_total")
    }
    assert searches == {("skipped", "disabled"): 1.0, ("skipped", "sort"): 1.0}
    assert all(n.startswith(("rerank_proxy_", "process_")) for n in families)
    assert "disabled+sort" not in text


def test_every_reason_is_a_valid_label_and_header_value() -> None:
    metrics = Metrics()
    for reason in Reason:
        o = Outcome()
        o.single(State.FAILED, reason)
        metrics.record(o, "search", 200, 0.01)
    text = metrics.exposition().decode()
    parsed = list(text_string_to_metric_families(text))
    reasons = {
        s.labels["reason"] for f in parsed if f.name == "rerank_proxy_searches" for s in f.samples
    }
    assert reasons == {r.value for r in Reason}
    assert all(r.value.isidentifier() or r.value == "size_0" for r in Reason)


def test_worker_expositions_merge_into_one_valid_view() -> None:
    from proxy.worker_metrics import merge

    a, b = Metrics(), Metrics()
    for metrics, n in ((a, 2), (b, 3)):
        for _ in range(n):
            o = Outcome()
            o.single(State.APPLIED)
            metrics.record(o, "search", 200, 0.01)
    text = merge([("0", a.exposition().decode()), ("1", b.exposition().decode())]).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}  # parses: valid
    counts = {
        s.labels["worker"]: s.value
        for s in families["rerank_proxy_requests"].samples
        if s.name == "rerank_proxy_requests_total"
    }
    assert counts == {"0": 2.0, "1": 3.0}
    assert text.count("# TYPE rerank_proxy_requests_total counter") == 1  # one family, both
