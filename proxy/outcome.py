"""What happened to one request: the closed sets of rerank states and reasons, and `Outcome`.

The lowest layer of the request path: pure, imported by the planner, the flows, the metrics
and the app alike. States and reasons are closed sets (`StrEnum`), so each is safe as a
Prometheus label value and as a header value; nothing downstream builds a name from free
text. `Outcome` is filled in as a request goes through the proxy and read once at the end
for the response headers, the counters and the access line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class State(StrEnum):
    """What the proxy did to a search (`X-Rerank`)."""

    NONE = "none"  # not a search: plain pass-through
    APPLIED = "applied"
    SKIPPED = "skipped"  # left in the engine's order on purpose
    FAILED = "failed"  # the reranker failed: engine order, fail open
    SHADOW = "shadow"  # the engine's answer; the rerank runs afterwards, for the record


class Reason(StrEnum):
    """Why a search was skipped or failed (`X-Rerank-Reason`, the `reason` label)."""

    NONE = "none"
    # the client or the configuration said no
    CLIENT_OFF = "client_off"
    DISABLED = "disabled"
    MIXED_RULES = "mixed_rules"
    NOT_SAMPLED = "not_sampled"  # a sampled rollout left this search out
    SHADOW_ITEM = "shadow_item"  # an `_msearch` item of a shadow rule: left alone
    # the client's request
    BODY_TOO_LARGE = "body_too_large"
    UNPARSABLE_BODY = "unparsable_body"
    TEMPLATE_OPTIONS = "template_options"
    TEMPLATE_NOT_RENDERED = "template_not_rendered"
    TOO_MANY_ITEMS = "too_many_items"  # an `_msearch/template` past MAX_RENDERED_ITEMS
    BAD_FROM_SIZE = "bad_from_size"
    BAD_SOURCE = "bad_source"
    BAD_FILTER_PATH = "bad_filter_path"
    NO_QUERY_TEXT = "no_query_text"
    PAST_WINDOW = "past_window"
    SIZE_0 = "size_0"
    # searches whose order is not a relevance order the proxy may replace
    SCROLL = "scroll"
    SORT = "sort"
    STORED_FIELDS = "stored_fields"
    EXPLAIN = "explain"
    PROFILE = "profile"
    SEARCH_AFTER = "search_after"
    PIT = "pit"
    POINT_IN_TIME = "point_in_time"
    SLICE = "slice"
    RESCORE = "rescore"
    RETRIEVER = "retriever"
    KNN = "knn"
    RANK = "rank"
    COLLAPSE = "collapse"
    QUERY_TYPE = "query_type"
    # the engine's answer to the widened search
    UPSTREAM_STATUS = "upstream_status"
    RESPONSE_TOO_LARGE = "response_too_large"
    UNPARSABLE_RESPONSE = "unparsable_response"
    UNEXPECTED_RESPONSE = "unexpected_response"
    TIMED_OUT = "timed_out"
    SHARD_FAILURES = "shard_failures"
    NO_HITS = "no_hits"
    ITEM_ERROR = "item_error"
    # the reranker (errors.RerankError.reason)
    ERROR = "error"
    TIMEOUT = "timeout"
    OVERLOADED = "overloaded"
    INVALID_SCORES = "invalid_scores"
    NO_RERANKER = "no_reranker"


@dataclass(frozen=True, slots=True)
class ItemOutcome:
    """What happened to one search: a `_search`, or one `_msearch` item."""

    state: State
    reason: Reason = Reason.NONE

    def __str__(self) -> str:
        return str(self.state) if self.reason is Reason.NONE else f"{self.state}:{self.reason}"


@dataclass(slots=True)
class Outcome:
    """What happened to one request, for headers, counters and the access log.

    `searches` holds one entry per search the request carried: one for `_search`, one per
    item for `_msearch` (each counted in the metrics); `state`/`reason` summarise them.
    """

    state: State = State.NONE
    reason: Reason = Reason.NONE
    upstream_ms: float = 0.0
    rerank_ms: float = 0.0
    searches: list[ItemOutcome] = field(default_factory=list)
    multi: bool = False  # an `_msearch`: per-item states go in `X-Rerank-Items`
    target: str = ""  # the search's target indices, as the path names them
    rule: str = ""  # which index rule applied (its first `match` entry, or `defaults`)

    def single(self, state: State, reason: Reason = Reason.NONE) -> None:
        """Record the outcome of a request that carries one search."""
        self.state, self.reason = state, reason
        self.searches = [ItemOutcome(state, reason)]

    def items(self, items: list[ItemOutcome]) -> None:
        """Record the outcomes of an `_msearch`'s items, one per item."""
        self.multi = True
        self.searches = items
        states = {i.state for i in items}
        self.state = next(
            (s for s in (State.APPLIED, State.FAILED, State.SHADOW, State.SKIPPED) if s in states),
            State.NONE,
        )
        self.reason = Reason.NONE

    def reason_header(self) -> str:
        if not self.multi:
            return "" if self.reason is Reason.NONE else str(self.reason)
        if self.state is not State.SKIPPED:
            return ""
        # Every item skipped: the header names each distinct reason, like `disabled+sort`.
        return "+".join(sorted({str(i.reason) for i in self.searches}))

    def headers(self) -> dict[str, str]:
        if self.state is State.NONE:
            return {}
        out = {"X-Rerank": str(self.state), "X-Rerank-Took-Ms": f"{self.rerank_ms:.1f}"}
        reason = self.reason_header()
        if reason:
            out["X-Rerank-Reason"] = reason
        if self.multi:
            out["X-Rerank-Items"] = ",".join(str(i) for i in self.searches)
        return out
