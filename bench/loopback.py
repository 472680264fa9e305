"""Set-up HTTP calls with the standard library (create an index, bulk, alias, read counters).

Every benchmark target is on `LOOPBACK`, and these calls never go through an http(s)_proxy
from the environment. They are not measured: the load itself comes from `bench.load`.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

LOOPBACK = "127.0.0.1"


def http(
    method: str, url: str, body: bytes | None = None, *, timeout: float = 60.0
) -> tuple[int, bytes]:
    """(status, body) of one request; an HTTP error status is returned, not raised."""
    # Never go through an http(s)_proxy from the environment: every target is loopback.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    req = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        ctype = "application/x-ndjson" if url.endswith("_bulk") else "application/json"
        req.add_header("Content-Type", ctype)
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_json(method: str, url: str, doc: Any = None, *, timeout: float = 60.0) -> Any:
    status, raw = http(
        method, url, None if doc is None else json.dumps(doc).encode(), timeout=timeout
    )
    if not 200 <= status < 300:
        raise RuntimeError(f"{method} {url}: HTTP {status}: {raw[:300]!r}")
    return json.loads(raw)
