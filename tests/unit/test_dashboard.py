"""The Grafana dashboard (deploy/grafana/rerank-proxy.json) asks only for what the proxy exports.

Every panel's PromQL is read with a small scanner: the metric names it selects, the labels it
matches and groups by, the function each selector sits in, and the labels its legend prints.
Each name must be a family of `proxy.metrics.Metrics()`'s exposition (parsed with
`prometheus_client`), used as its type allows (`rate` over counters and histogram series,
never over gauges; `histogram_quantile` over `_bucket` grouped by `le`), and each label one
the metric has (or a scrape target label). The metric names in the dashboard's contract must
all appear in some panel.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from proxy.metrics import Metrics
from proxy.outcome import Reason, State
from tests.conftest import REPO_ROOT

DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "rerank-proxy.json"
# Added by Prometheus to every series of a scrape target (job/instance) or by the usual
# Kubernetes relabelling (namespace/pod).
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod"})
RANGE_FUNCTIONS = frozenset({"rate", "irate", "increase"})
AGGREGATIONS = frozenset(
    {"sum", "avg", "min", "max", "count", "stddev", "stdvar", "topk", "bottomk", "quantile"}
)
GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = GROUPING | frozenset({"and", "or", "unless", "bool", "offset"})
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# The names the dashboard promises to chart (the metrics contract of the issue).
CONTRACT = frozenset(
    {
        "rerank_proxy_requests_total",
        "rerank_proxy_request_duration_seconds",
        "rerank_proxy_searches_total",
        "rerank_proxy_rerank_duration_seconds",
        "rerank_proxy_upstream_duration_seconds",
        "rerank_proxy_queue_wait_seconds",
        "rerank_proxy_queue_depth",
        "rerank_proxy_batch_size",
        "rerank_proxy_cache_hit_ratio",
        "rerank_proxy_cache_lookups_total",
        "rerank_proxy_cache_evictions_total",
        "rerank_proxy_inflight_requests",
        "rerank_proxy_model_loaded",
        "rerank_proxy_ready",
        "rerank_proxy_upstream_errors_total",
        "rerank_proxy_reloads_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    }
)
# Label values from closed sets: a matcher on another value would select nothing.
CLOSED_VALUES = {
    "outcome": {s.value for s in State},
    "reason": {r.value for r in Reason},
}


@dataclass(frozen=True, slots=True)
class Family:
    name: str  # as in the exposition: counters without `_total`
    type: str
    labels: frozenset[str]


@dataclass(slots=True)
class Selector:
    name: str
    functions: list[str]  # enclosing function calls, innermost last
    matchers: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass(slots=True)
class Query:
    selectors: list[Selector] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)
    aggregated: bool = False


def scan(expr: str) -> Query:
    """The selectors, grouping labels and aggregation of a PromQL expression."""
    q = Query()
    stack: list[str] = []  # one entry per open parenthesis: function name or ""
    i, n = 0, len(expr)
    pending: str | None = None  # the identifier just read, before what follows decides
    last: Selector | None = None

    def word_at(j: int) -> tuple[str, int]:
        m = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*").match(expr, j)
        assert m, expr[j:]
        return m.group(0), m.end()

    def skip_space(j: int) -> int:
        while j < n and expr[j].isspace():
            j += 1
        return j

    while i < n:
        ch = expr[i]
        if ch.isspace():
            i += 1
        elif ch == '"':
            i = expr.index('"', i + 1) + 1
        elif ch == "[":
            i = expr.index("]", i) + 1  # a range or subquery: durations only
        elif ch == "{":
            end = expr.index("}", i)
            body = expr[i + 1 : end]
            matchers = re.findall(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"', body)
            assert last is not None, f"label matchers without a metric name: {expr}"
            last.matchers.extend(matchers)
            i = end + 1
        elif ch == "(":
            stack.append(pending or "")  # `sum by (x) (` opens the sum's argument
            pending = None
            i += 1
        elif ch == ")":
            stack.pop()
            i += 1
        elif ch.isdigit() or (ch == "." and i + 1 < n and expr[i + 1].isdigit()):
            i = re.compile(r"[0-9.eE+]+").match(expr, i).end()  # type: ignore[union-attr]
        elif ch == "$":
            i = re.compile(r"\$[A-Za-z0-9_]+").match(expr, i).end()  # type: ignore[union-attr]
        elif ch.isalpha() or ch in "_:":
            word, i = word_at(i)
            j = skip_space(i)
            if word in GROUPING and j < n and expr[j] == "(":
                end = expr.index(")", j)
                q.grouping.update(x.strip() for x in expr[j + 1 : end].split(",") if x.strip())
                i = end + 1
            elif word in KEYWORDS:
                pass
            elif j < n and expr[j] == "(":
                if word in AGGREGATIONS:
                    q.aggregated = True
                stack.append(word)
                i = j + 1
            elif word in AGGREGATIONS and j < n and expr[j].isalpha() and word_at(j)[0] in GROUPING:
                q.aggregated = True  # `sum by (x) (...)`: the grouping comes first
                pending = word
            else:
                last = Selector(word, [f for f in stack if f])
                q.selectors.append(last)
        else:
            i += 1  # operators and commas
    assert not stack, f"unbalanced parentheses: {expr}"
    return q


def test_scanner_reads_selectors_grouping_and_functions() -> None:
    q = scan(
        'histogram_quantile(0.95, sum by (route, le) (rate(m_bucket{job=~"$job",'
        ' a!="x"}[$__rate_interval]))) / sum(g{b="1"}) by (c)'
    )
    assert [(s.name, s.functions) for s in q.selectors] == [
        ("m_bucket", ["histogram_quantile", "sum", "rate"]),
        ("g", ["sum"]),
    ]
    assert q.selectors[0].matchers == [("job", "=~", "$job"), ("a", "!=", "x")]
    assert q.grouping == {"route", "le", "c"} and q.aggregated


@pytest.fixture(scope="module")
def families() -> dict[str, Family]:
    """Every family the proxy exports, with its type and label names."""
    metrics = Metrics()
    labels = {
        m._name: frozenset(m._labelnames)
        for m in vars(metrics).values()
        if isinstance(m, MetricWrapperBase)
    }
    text = metrics.exposition().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        out[fam.name] = Family(fam.name, fam.type, labels.get(fam.name, frozenset()))
        for sample in fam.samples:  # sample names: `_total`, `_bucket`, ...
            out.setdefault(sample.name, Family(fam.name, fam.type, out[fam.name].labels))
    return out


def resolve(name: str, families: dict[str, Family]) -> tuple[Family, str]:
    """The family a selected series belongs to, and which of its series it is."""
    for suffix in HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and base in families and families[base].type in ("histogram", "summary"):
            return families[base], suffix
    if name.endswith("_total") and name.removesuffix("_total") in families:
        fam = families[name.removesuffix("_total")]
        if fam.type == "counter":
            return fam, "_total"
    if name in families and families[name].type in ("gauge", "unknown"):
        return families[name], ""
    raise LookupError(name)


def _load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def _panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dash["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _targets() -> Iterator[tuple[str, dict[str, Any]]]:
    for panel in _panels(_load()):
        for target in panel.get("targets", []):
            yield panel["title"], target


TARGETS = list(_targets())


def test_dashboard_is_an_importable_model_with_a_datasource_variable() -> None:
    dash = _load()
    assert dash["uid"] == "rerank-proxy" and dash["title"] and dash.get("id") is None
    assert isinstance(dash["schemaVersion"], int)
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in _panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for panel in _panels(dash):
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, panel["title"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert target["expr"].strip()
    for name in ("job", "instance"):
        assert variables[name]["datasource"]["uid"] == "${datasource}"


def test_every_contract_metric_is_charted() -> None:
    used = {s.name for _, t in TARGETS for s in scan(t["expr"]).selectors}
    base = {n.removesuffix(s) for n in used for s in HISTOGRAM_SUFFIXES if n.endswith(s)}
    missing = CONTRACT - used - base
    assert not missing, f"no panel charts {sorted(missing)}"


@pytest.mark.parametrize(
    ("panel", "target"), TARGETS, ids=[f"{p}/{t['refId']}" for p, t in TARGETS]
)
def test_every_query_uses_exported_metrics_as_their_type_allows(
    panel: str, target: dict[str, Any], families: dict[str, Family]
) -> None:
    q = scan(target["expr"])
    assert q.selectors, target["expr"]
    labels_in_query: set[str] = set(TARGET_LABELS)
    for sel in q.selectors:
        try:
            fam, series = resolve(sel.name, families)
        except LookupError:
            pytest.fail(f"{panel}: {sel.name} is not exported by proxy.metrics.Metrics()")
        in_range = bool(sel.functions) and sel.functions[-1] in RANGE_FUNCTIONS
        if fam.type == "gauge":
            assert not in_range, f"{panel}: {sel.name} is a gauge; rate() of it is meaningless"
        else:
            assert in_range, f"{panel}: {sel.name} ({fam.type}) must be read through rate()"
        if "histogram_quantile" in sel.functions:
            assert series == "_bucket", f"{panel}: histogram_quantile over {sel.name}"
            assert "le" in q.grouping, f"{panel}: histogram_quantile must keep `le`"
        allowed = fam.labels | TARGET_LABELS | ({"le"} if series == "_bucket" else set())
        for label, op, value in sel.matchers:
            assert label in allowed, f"{panel}: {sel.name} has no label {label!r}"
            if op in ("=", "!=") and label in CLOSED_VALUES:
                assert value in CLOSED_VALUES[label], f"{panel}: {label}={value!r} never occurs"
        # Every panel can be narrowed to the chosen job and instances.
        assert ("job", "=~", "$job") in sel.matchers, f"{panel}: {sel.name} ignores $job"
        assert ("instance", "=~", "$instance") in sel.matchers, f"{panel}: {sel.name}"
        labels_in_query |= allowed
    unknown = q.grouping - labels_in_query
    assert not unknown, f"{panel}: groups by {sorted(unknown)}, which no selected metric has"
    legend_labels = set(
        re.findall(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", target["legendFormat"])
    )
    shown = q.grouping if q.aggregated else labels_in_query
    assert legend_labels <= shown, f"{panel}: legend prints {legend_labels - shown}, always empty"
