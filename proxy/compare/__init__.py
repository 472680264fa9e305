"""The side-by-side comparison page (`compare.enabled`): the engine's order next to the model's.

`add_routes(app)` registers, under `/_rerank_proxy/compare/`, a static page (`static/`:
HTML, JS and CSS shipped with the package, nothing loaded from anywhere else) and one JSON
endpoint, `POST /_rerank_proxy/compare/api/search`, which runs a search through the rerank
pipeline once and answers with both orders (`routes`), built from one engine response
(`sides`), with the judgments of `compare.qrels` when configured (`judgments`).
"""

from __future__ import annotations

from .routes import API_PATH, JUDGMENTS, PREFIX, add_routes

__all__ = ["API_PATH", "JUDGMENTS", "PREFIX", "add_routes"]
