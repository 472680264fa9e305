"""Through the proxy, the official clients see exactly what the engine gives them directly.

The same sequence of operations runs on two fresh indices, one through the proxy and one
directly; every response must be equal once the index name and `took` are set aside.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from .conftest import Stack

pytestmark = pytest.mark.e2e

DOCS = [
    {"title": "Zürich lake swimming", "n": 12345678901234567, "f": 0.1, "tags": ["a", "b"]},
    {"title": "Protein folding in cells", "n": 2, "f": 1.5e-7, "tags": []},
    {"title": "Graph databases", "n": 3, "f": -2.0, "tags": ["db"]},
]


def _normalise(value: Any, index: str) -> Any:
    if isinstance(value, dict):
        return {k: _normalise(v, index) for k, v in value.items() if k != "took"}
    if isinstance(value, list):
        return [_normalise(v, index) for v in value]
    if isinstance(value, str):
        return value.replace(index, "<index>")
    return value


def _body(resp: Any) -> Any:
    return getattr(resp, "body", resp)


def _bulk_body(index: str) -> str:
    lines = []
    for i, doc in enumerate(DOCS):
        lines.append(json.dumps({"index": {"_index": index, "_id": f"doc/{i} ü"}}))
        lines.append(json.dumps(doc))
    return "\n".join(lines) + "\n"


def run_sync(client: Any, index: str) -> list[Any]:
    out: list[Any] = []
    settings = {"settings": {"number_of_shards": 1, "number_of_replicas": 0}}
    out.append(client.indices.create(index=index, body=settings))
    out.append(client.indices.exists(index=index))
    out.append(client.indices.exists(index=index + "-missing"))
    out.append(client.bulk(body=_bulk_body(index), refresh="true"))
    out.append(client.get(index=index, id="doc/0 ü"))
    out.append(client.update(index=index, id="doc/1 ü", body={"doc": {"n": 20}}, refresh="true"))
    out.append(client.count(index=index))
    out.append(client.search(index=index, body={"query": {"match": {"title": "graph"}}}))
    out.append(client.search(index=index, body={"query": {"match_all": {}}, "sort": ["n"]}))
    out.append(
        client.delete_by_query(index=index, body={"query": {"term": {"n": 3}}}, refresh="true")
    )
    out.append(client.count(index=index))
    out.append(client.indices.delete(index=index))
    return [_normalise(_body(r), index) for r in out]


async def run_async(client: Any, index: str) -> list[Any]:
    out: list[Any] = []
    settings = {"settings": {"number_of_shards": 1, "number_of_replicas": 0}}
    out.append(await client.indices.create(index=index, body=settings))
    out.append(await client.indices.exists(index=index))
    out.append(await client.indices.exists(index=index + "-missing"))
    out.append(await client.bulk(body=_bulk_body(index), refresh="true"))
    out.append(await client.get(index=index, id="doc/0 ü"))
    out.append(
        await client.update(index=index, id="doc/1 ü", body={"doc": {"n": 20}}, refresh="true")
    )
    out.append(await client.count(index=index))
    out.append(await client.search(index=index, body={"query": {"match": {"title": "graph"}}}))
    out.append(
        await client.delete_by_query(
            index=index, body={"query": {"term": {"n": 3}}}, refresh="true"
        )
    )
    out.append(await client.count(index=index))
    out.append(await client.indices.delete(index=index))
    return [_normalise(_body(r), index) for r in out]


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "http_compress"])
def test_sync_client_sees_no_difference(stack: Stack, compress: bool) -> None:
    tag = uuid.uuid4().hex[:8]
    direct = stack.sync_client(stack.engine_url, http_compress=compress)
    proxied = stack.sync_client(stack.proxy_url, http_compress=compress)
    try:
        expected = run_sync(direct, f"plain-d-{tag}")
        got = run_sync(proxied, f"plain-p-{tag}")
    finally:
        direct.close()
        proxied.close()
    assert got[1] is True and got[2] is False
    assert got == expected


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "http_compress"])
async def test_async_client_sees_no_difference(stack: Stack, compress: bool) -> None:
    tag = uuid.uuid4().hex[:8]
    direct = stack.async_client(stack.engine_url, http_compress=compress)
    proxied = stack.async_client(stack.proxy_url, http_compress=compress)
    try:
        expected = await run_async(direct, f"plain-d-{tag}")
        got = await run_async(proxied, f"plain-p-{tag}")
    finally:
        await direct.close()
        await proxied.close()
    assert got[1] is True and got[2] is False
    assert got == expected


def test_missing_document_error_is_the_engines(stack: Stack) -> None:
    direct = stack.sync_client(stack.engine_url)
    proxied = stack.sync_client(stack.proxy_url)
    errors = []
    for client in (direct, proxied):
        try:
            client.get(index="scifact", id="no-such-doc")
        except Exception as exc:
            errors.append((type(exc).__name__, getattr(exc, "status_code", None), exc.info))
        finally:
            client.close()
    assert len(errors) == 2
    assert errors[0] == errors[1]
