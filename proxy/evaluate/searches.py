"""The search each judged query sends: one body, the same for the engine and the proxies.

BEIR and TREC topics are plain text: they go into a default `multi_match` body (over
`--fields`, or the index's default fields) or into a user's template file, a JSON search body
with `{{query}}` inside a string (the text is JSON-escaped into it). A `_rank_eval` request
brings its own body (a template request is rendered by the cluster first, see `runner`).
Every body asks for the top `size` hits from rank 0 (`size` is set here, as `_rank_eval`
sets it from its metric's `k`; a template may not set `size` or `from` itself). Pure.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from .errors import InputError
from .judgments import Topic, read_text

PLACEHOLDER: Final = "{{query}}"
# Rendered once at load to check the template: quotes, a backslash and a newline must survive.
_PROBE: Final = 'a "quoted" \\ text\nline'


@dataclass(frozen=True, slots=True)
class Search:
    """One judged query's search. `send_text`: tell the proxy the query text in
    `X-Rerank-Query` (it came from template parameters, not from the DSL)."""

    topic_id: str
    body: Mapping[str, Any]
    text: str
    send_text: bool = False


@dataclass(frozen=True, slots=True)
class BodyTemplate:
    """A search body template file with `{{query}}` in it."""

    path: str
    raw: str

    def render(self, text: str, size: int) -> dict[str, Any]:
        escaped = json.dumps(text, ensure_ascii=False)[1:-1]
        body: dict[str, Any] = json.loads(self.raw.replace(PLACEHOLDER, escaped))
        body["size"] = size
        return body


def load_template(path: str | os.PathLike[str]) -> BodyTemplate:
    """Read and check a body template: JSON once `{{query}}` is filled in, an object, no
    `size` or `from` of its own."""
    raw = read_text(path)
    if PLACEHOLDER not in raw:
        raise InputError(path, f"no {PLACEHOLDER} placeholder: put it where the query text goes")
    escaped = json.dumps(_PROBE)[1:-1]
    try:
        body = json.loads(raw.replace(PLACEHOLDER, escaped))
    except json.JSONDecodeError as exc:
        raise InputError(
            path,
            f"not JSON once {PLACEHOLDER} is filled in: {exc.msg} (column {exc.colno});"
            f' {PLACEHOLDER} goes inside a JSON string, e.g. "query": "{PLACEHOLDER}"',
            exc.lineno,
        ) from exc
    if not isinstance(body, dict):
        raise InputError(path, "expected a JSON object (a search body)")
    for key in ("size", "from"):
        if key in body:
            raise InputError(path, f"sets {key!r}: leave it out, eval asks for the top --size hits")
    return BodyTemplate(str(path), raw)


def default_body(text: str, fields: Sequence[str], size: int) -> dict[str, Any]:
    """`multi_match` over `fields` (empty: the index's default fields), top `size` hits."""
    match: dict[str, Any] = {"query": text}
    if fields:
        match["fields"] = list(fields)
    return {"query": {"multi_match": match}, "size": size}


def topic_search(
    topic: Topic,
    *,
    size: int,
    fields: Sequence[str] = (),
    template: BodyTemplate | None = None,
) -> Search:
    """The search of a BEIR/TREC topic (text only)."""
    if topic.text is None:
        raise ValueError(f"topic {topic.id!r} has no text")
    body = (
        template.render(topic.text, size)
        if template is not None
        else default_body(topic.text, fields, size)
    )
    return Search(topic.id, body, topic.text)


def request_search(topic: Topic, request: Mapping[str, Any], text: str, *, size: int) -> Search:
    """The search of a `_rank_eval` request (its own body, or its rendered template)."""
    body = {k: v for k, v in request.items() if k != "from"}
    body["size"] = size
    return Search(topic.id, body, text, send_text=topic.text_from_params)
