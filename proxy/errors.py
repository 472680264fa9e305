"""The proxy's exception hierarchy and Elasticsearch-shaped error bodies.

    ProxyError
    ├── UpstreamError            the cluster could not be used
    │   ├── UpstreamUnavailable  connect/reset/protocol failure -> 502
    │   ├── UpstreamTimeout      connect or read timeout        -> 504
    │   └── UpstreamBusy         no pooled connection free in time -> 503
    ├── RerankError              reranking failed; the search fails open
    │   ├── RerankTimeout        the rule's time budget ran out
    │   ├── RerankOverloaded     the inference queue is full
    │   ├── InvalidScores        NaN/inf scores or the wrong number of them
    │   ├── NoReranker           no model is loaded
    │   ├── RemoteUnavailable    every rerank server's circuit is open (fails at once)
    │   └── RemoteRefused        a rerank server refused the request (a 4xx but 429)
    ├── SharedCacheUnavailable   the shared score cache did not answer: local cache only
    └── ModelLoadError           the model could not be loaded at start

Third-party exceptions are translated at the edges (`raise X(...) from exc`).
"""

from __future__ import annotations

import json

from .outcome import Reason


class ProxyError(Exception):
    """Base of every error the proxy raises itself."""


class UpstreamError(ProxyError):
    """The message (logged) may name the upstream's address; `public_reason` (the client's
    error body) never does."""

    status = 502
    error_type = "proxy_upstream_error"
    public_reason = "upstream error"


class UpstreamUnavailable(UpstreamError):
    status = 502
    error_type = "proxy_upstream_unavailable"
    public_reason = "upstream unreachable"


class UpstreamTimeout(UpstreamError):
    status = 504
    error_type = "proxy_upstream_timeout"
    public_reason = "upstream timed out"


class UpstreamBusy(UpstreamError):
    """Every pooled connection stayed in use for `upstream.pool_timeout`."""

    status = 503
    error_type = "proxy_upstream_busy"
    public_reason = "all upstream connections are in use; retry later"


class RerankError(ProxyError):
    reason = Reason.ERROR


class RerankTimeout(RerankError):
    reason = Reason.TIMEOUT


class RerankOverloaded(RerankError):
    reason = Reason.OVERLOADED


class InvalidScores(RerankError):
    reason = Reason.INVALID_SCORES


class NoReranker(RerankError):
    reason = Reason.NO_RERANKER


class RemoteUnavailable(RerankError):
    """Every rerank server's circuit is open: the call fails at once (the search fails open)."""


class RemoteRefused(RerankError):
    """The server refused the request (a 4xx other than 429): its circuit does not count it."""


class SharedCacheUnavailable(ProxyError):
    """The shared cache could not answer (down, slow or erroring); use the local cache."""


class ModelLoadError(ProxyError):
    """The model could not be loaded; the message says what to do."""


def es_error_body(status: int, error_type: str, reason: str) -> bytes:
    """An error body in Elasticsearch's shape, for errors the proxy itself produces."""
    root = {"type": error_type, "reason": reason}
    body = {"error": {"root_cause": [root], **root}, "status": status}
    return json.dumps(body, ensure_ascii=False).encode()
