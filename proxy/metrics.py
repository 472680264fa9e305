"""The proxy's metrics, owned by `prometheus_client`: one registry per app (no global state).

Every label takes its values from a closed set (`outcome.State`, `outcome.Reason`,
`routing.RouteKind`, the proxy's own error statuses), so no request can mint a new series or
an invalid name. `record(outcome, route)` is the one place a finished request is counted;
each search counts once, `_msearch` items one by one. The exposition is
`prometheus_client.generate_latest`; `?format=json` gives the same samples as a flat map.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest

from .outcome import Outcome, State

PREFIX = "rerank_proxy"


class Metrics:
    """Counters of one app instance, exposed at `/_rerank_proxy/metrics`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            f"{PREFIX}_requests",
            "Client requests forwarded, by route kind (admin requests are not counted).",
            ["route"],
            registry=r,
        )
        self.searches = Counter(
            f"{PREFIX}_searches",
            "Searches seen by the rerank flow (each _msearch item counts once),"
            " by outcome and reason.",
            ["outcome", "reason"],
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
        self.hits_without_text = Counter(
            f"{PREFIX}_hits_without_text",
            "Hits in a reranked window that had none of the rule's text fields.",
            registry=r,
        )

    def record(self, outcome: Outcome, route: str) -> None:
        """Count one finished (non-admin) request."""
        self.requests.labels(route=route).inc()
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
