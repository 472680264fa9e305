"""Process-wide counters of one app instance (no module-level state: one per app)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(slots=True)
class Metrics:
    """Monotonic counters, exposed at `/_rerank_proxy/metrics`."""

    counters: Counter[str] = field(default_factory=Counter)

    def inc(self, name: str, amount: int = 1) -> None:
        self.counters[name] += amount

    def get(self, name: str) -> int:
        return self.counters[name]

    def snapshot(self) -> dict[str, int]:
        return dict(sorted(self.counters.items()))

    def prometheus(self) -> str:
        lines = []
        for name, value in sorted(self.counters.items()):
            metric = "rerank_proxy_" + name.replace(".", "_").replace("-", "_")
            lines.append(f"# TYPE {metric} counter\n{metric} {value}")
        return "\n".join(lines) + "\n"
