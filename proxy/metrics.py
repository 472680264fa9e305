"""The proxy's metrics, owned by `prometheus_client`: one registry per app (no global state).

Every label takes its values from a closed set (`outcome.State`, `outcome.Reason`,
`routing.RouteKind`, status classes, the proxy's own error statuses), so no request can mint
a new series or an invalid name. What is measured follows text-embeddings-inference's
`prometheus.rs`: request duration, upstream time, rerank time, queue wait, batch size and
pairs per search as histograms (seconds), failures by kind as counters, and the reranker's
queue depth, cache and model state as gauges read at scrape time. `record(outcome, ...)` is
the one place a finished request is counted; each search counts once, `_msearch` items one
by one. The exposition is `prometheus_client.generate_latest`; `?format=json` gives the same
samples as a flat map.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from .outcome import Outcome, State

PREFIX = "rerank_proxy"
#: seconds; from a warm-cache hit (~0.1 ms) to a cold CPU window (seconds)
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def status_class(status: int | None) -> str:
    """`2xx`, `4xx`, ...; `none` when no response was sent (the client went away)."""
    return f"{status // 100}xx" if status is not None and 100 <= status < 600 else "none"


class Metrics:
    """Counters, histograms and gauges of one app instance, at `/_rerank_proxy/metrics`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._children: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        ProcessCollector(registry=r)
        self.requests = Counter(
            f"{PREFIX}_requests",
            "Client requests forwarded, by route kind and status class (admin requests are"
            " not counted).",
            ["route", "status_class"],
            registry=r,
        )
        self.request_duration = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Time from a request's arrival to its response, by route kind.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_duration = Histogram(
            f"{PREFIX}_upstream_duration_seconds",
            "Time spent waiting for the cluster per request, by route kind.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.searches = Counter(
            f"{PREFIX}_searches",
            "Searches seen by the rerank flow (each _msearch item counts once),"
            " by outcome and reason.",
            ["outcome", "reason"],
            registry=r,
        )
        self.rerank_duration = Histogram(
            f"{PREFIX}_rerank_duration_seconds",
            "Time to score one search's window (cache, queue and model), reranked or failed.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.pairs_per_search = Histogram(
            f"{PREFIX}_pairs_per_search",
            "(query, passage) pairs one search asks the reranker to score.",
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            f"{PREFIX}_queue_wait_seconds",
            "Time pairs wait in the reranker's queue before their group starts.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            f"{PREFIX}_batch_size",
            "Pairs per group handed to the model (or the remote inference server).",
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.inference_duration = Histogram(
            f"{PREFIX}_inference_duration_seconds",
            "Time the model takes for one group of pairs.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            f"{PREFIX}_upstream_errors",
            "Requests the proxy answered with its own 502/504 (upstream unreachable or slow).",
            ["status"],
            registry=r,
        )
        self.upstream_broken_bodies = Counter(
            f"{PREFIX}_upstream_broken_bodies",
            "Upstream responses that broke off after their headers were sent on.",
            registry=r,
        )
        self.client_send_timeouts = Counter(
            f"{PREFIX}_client_send_timeouts",
            "Streamed responses cut because the client stopped reading (listen.send_timeout).",
            registry=r,
        )
        self.client_timeouts = Counter(
            f"{PREFIX}_client_timeouts",
            "Client connections closed for a timeout, by phase: header (no whole request head"
            " in listen.header_timeout), body (listen.body_timeout between body bytes), idle"
            " (no request for listen.keepalive_timeout).",
            ["phase"],
            registry=r,
        )
        for phase in ("header", "body", "idle"):
            self.client_timeouts.labels(phase=phase)  # a closed set, exported from the start
        self.connections_rejected = Counter(
            f"{PREFIX}_client_connections_rejected",
            "Client connections answered 503 and closed at once: listen.max_connections open.",
            registry=r,
        )
        self.client_connections = Gauge(
            f"{PREFIX}_client_connections",
            "Client connections open now.",
            registry=r,
        )
        self.hits_without_text = Counter(
            f"{PREFIX}_hits_without_text",
            "Hits in a reranked window that had none of the rule's text fields.",
            registry=r,
        )
        self.reloads = Counter(
            f"{PREFIX}_reloads",
            "Configuration reloads (SIGHUP), by result.",
            ["result"],
            registry=r,
        )
        self.cache_lookups = Counter(
            f"{PREFIX}_cache_lookups",
            "Score cache lookups, one per pair, by result (hit or miss).",
            ["result"],
            registry=r,
        )
        self.cache_evictions = Counter(
            f"{PREFIX}_cache_evictions",
            "Scores dropped from the score cache (least recently used first) to make room for"
            " new ones: a rate near the miss rate means model.cache_size is too small.",
            registry=r,
        )
        self.shared_cache_lookups = Counter(
            f"{PREFIX}_shared_cache_lookups",
            "Shared score cache (cache.redis_url) lookups, one per pair the local cache missed,"
            " by result: hit, miss, error (Redis down, slow or erroring: scored locally).",
            ["result"],
            registry=r,
        )
        self.shadow = Counter(
            f"{PREFIX}_shadow",
            "Shadow reranks (rules in `mode: shadow`), by result: compared, dropped (queue"
            " full), failed.",
            ["result"],
            registry=r,
        )
        self.shadow_overlap = Histogram(
            f"{PREFIX}_shadow_page_overlap",
            "Share of the client's page the reranker would have kept (shadow mode).",
            buckets=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
            registry=r,
        )
        self.shadow_displacement = Histogram(
            f"{PREFIX}_shadow_displacement",
            "Mean rank displacement over the window the reranker would have caused (shadow).",
            buckets=(0, 0.5, 1, 2, 3, 5, 8, 13, 21, 34),
            registry=r,
        )
        self.shadow_promoted = Counter(
            f"{PREFIX}_shadow_promoted",
            "Hits the reranker would have brought into the client's page (shadow mode).",
            registry=r,
        )
        self.worker_scrape_errors = Counter(
            f"{PREFIX}_worker_scrape_errors",
            "Sibling workers (serve --workers) that did not answer a merged metrics scrape.",
            registry=r,
        )
        self.inflight = Gauge(
            f"{PREFIX}_inflight_requests", "Requests being handled now.", registry=r
        )
        self.ready = Gauge(
            f"{PREFIX}_ready", "1 while /_rerank_proxy/ready answers 200, else 0.", registry=r
        )
        self.model_loaded = Gauge(
            f"{PREFIX}_model_loaded", "1 when a reranker is loaded and can score.", registry=r
        )
        self.queue_depth = Gauge(
            f"{PREFIX}_queue_depth", "Pairs waiting for the model now.", registry=r
        )
        self.cache_entries = Gauge(
            f"{PREFIX}_cache_entries", "Scores held in the score cache.", registry=r
        )
        self.shared_cache_up = Gauge(
            f"{PREFIX}_shared_cache_up",
            "1 while the shared score cache answers, 0 while it is down or slow (local cache"
            " only) or when none is configured.",
            registry=r,
        )
        self.cache_hit_ratio = Gauge(
            f"{PREFIX}_cache_hit_ratio",
            "Share of score cache lookups answered from the cache since start.",
            registry=r,
        )

    def watch(
        self, ready: Callable[[], bool], health: Callable[[], Mapping[str, Any]] | None
    ) -> None:
        """Gauges read at scrape time from the app's readiness and the reranker's health."""
        self.ready.set_function(lambda: 1.0 if ready() else 0.0)
        if health is None:
            self.model_loaded.set(0)
            return

        def field(name: str) -> Callable[[], float]:
            return lambda: float(health().get(name, 0) or 0)

        self.model_loaded.set_function(lambda: 1.0 if health().get("loaded") else 0.0)
        self.queue_depth.set_function(field("queued_pairs"))
        self.cache_entries.set_function(field("cache_entries"))
        self.cache_hit_ratio.set_function(field("cache_hit_ratio"))
        self.shared_cache_up.set_function(field("shared_cache_up"))

    def observe_group(self, size: int, queue_wait_s: float, inference_s: float) -> None:
        """One group of pairs through the model (called by the reranker front)."""
        self.batch_size.observe(size)
        self.queue_wait.observe(queue_wait_s)
        self.inference_duration.observe(inference_s)

    def observe_lookups(self, hits: int, misses: int) -> None:
        if hits:
            self.cache_lookups.labels(result="hit").inc(hits)
        if misses:
            self.cache_lookups.labels(result="miss").inc(misses)

    def observe_evictions(self, n: int) -> None:
        """Scores the local score cache dropped (called by the reranker front)."""
        self.cache_evictions.inc(n)

    def observe_shared(self, hits: int, misses: int, errors: int) -> None:
        """Pairs looked up in the shared score cache (called by the reranker front)."""
        for result, n in (("hit", hits), ("miss", misses), ("error", errors)):
            if n:
                self.shared_cache_lookups.labels(result=result).inc(n)

    def record(self, outcome: Outcome, route: str, status: int | None, seconds: float) -> None:
        """Count one finished (non-admin) request (on every request: label children are
        looked up once per label set and kept)."""
        key = (route, status_class(status))
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(route=route, status_class=key[1]),
                self.request_duration.labels(route=route),
                self.upstream_duration.labels(route=route),
            )
        count, duration, upstream = children
        count.inc()
        duration.observe(seconds)
        upstream.observe(outcome.upstream_ms / 1000)
        if outcome.state is State.NONE:
            return
        for item in outcome.searches:
            self.searches.labels(outcome=item.state.value, reason=item.reason.value).inc()

    def value(self, name: str, **labels: str) -> float:
        """One sample's current value (0 when it was never set); `name` without the prefix."""
        got = self.registry.get_sample_value(f"{PREFIX}_{name}", labels)
        return got if got is not None else 0.0

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def snapshot(self) -> dict[str, float]:
        """Every sample as `name{label="value",...}` -> value (creation times left out)."""
        out: dict[str, float] = {}
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                out[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
        return dict(sorted(out.items()))
