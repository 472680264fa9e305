"""Where the benchmarks find things: the checkout, the shared data folder and the state root.

`RERANK_PROXY_SHARED` overrides the shared folder (default `../shared` beside the checkout;
SciFact is under `data/scifact` there) and `RERANK_PROXY_STATE` the state root (default
`~/.cache/rerank-proxy`: local engines, built stand-in models), as for the tests.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("RERANK_PROXY_SHARED", REPO.parent / "shared"))
SCIFACT = SHARED / "data" / "scifact"
CACHE = Path(os.environ.get("RERANK_PROXY_STATE", Path.home() / ".cache" / "rerank-proxy"))
