"""elasticsearch-py 8.x, sync and async, through the proxy to a fake Elasticsearch 8."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web
from elasticsearch8 import AsyncElasticsearch, Elasticsearch, UnsupportedProductError

from proxy.app import create_app, make_runner
from proxy.config import parse_config
from proxy.tls import server_tls

from .fakes import FakeUpstream, Received, RunningProxy, http_response, proxy_config

ES_MEDIA = "application/vnd.elasticsearch+json;compatible-with=8"
INFO = {
    "name": "node-1",
    "cluster_name": "fake",
    "cluster_uuid": "abc",
    "version": {"number": "8.15.0", "build_flavor": "default"},
    "tagline": "You Know, for Search",
}


class FakeElasticsearch:
    """Just enough of Elasticsearch 8 for info, index, get and indices.exists."""

    def __init__(self, *, product_header: bool = True) -> None:
        self.product_header = product_header
        self.docs: dict[str, Any] = {}

    def _reply(self, status: int, doc: object | None = None, head: bool = False) -> bytes:
        headers = [("Content-Type", ES_MEDIA)]
        if self.product_header:
            headers.append(("X-Elastic-Product", "Elasticsearch"))
        body = json.dumps(doc).encode() if doc is not None else b""
        raw = http_response(status, headers, body)
        return raw[: len(raw) - len(body)] if head else raw

    async def __call__(self, req: Received, writer: asyncio.StreamWriter) -> bool:
        path = req.target.split("?", 1)[0]
        parts = path.strip("/").split("/")
        if req.method == "GET" and path == "/":
            raw = self._reply(200, INFO)
        elif req.method == "HEAD" and len(parts) == 1:
            found = any(key.startswith(parts[0] + "/") for key in self.docs)
            raw = self._reply(200 if found else 404, {}, head=True)
        elif req.method == "PUT" and len(parts) == 3 and parts[1] == "_doc":
            self.docs[f"{parts[0]}/{parts[2]}"] = json.loads(req.body)
            raw = self._reply(
                201, {"_index": parts[0], "_id": parts[2], "_version": 1, "result": "created"}
            )
        elif req.method == "GET" and len(parts) == 3 and parts[1] == "_doc":
            source = self.docs.get(f"{parts[0]}/{parts[2]}")
            doc = {"_index": parts[0], "_id": parts[2], "found": source is not None}
            raw = self._reply(200 if source else 404, {**doc, "_source": source})
        else:
            raw = self._reply(400, {"error": "unexpected request"})
        writer.write(raw)
        return True


def _check_media_types(upstream: FakeUpstream) -> None:
    """The client's compatible-with media types arrive exactly as the client sent them."""
    for req in upstream.requests:
        assert req.header("Accept") == "application/vnd.elasticsearch+json; compatible-with=8"
        if req.body:
            assert req.header("Content-Type") == (
                "application/vnd.elasticsearch+json; compatible-with=8"
            )
        assert (req.header("x-elastic-client-meta") or "").startswith("es=8")


def _sync_session(url: str, **tls: Any) -> dict[str, Any]:
    with Elasticsearch(url, max_retries=0, **tls) as es:
        info = es.info()
        created = es.index(index="idx", id="a/b", document={"title": "café ☕"}, refresh=True)
        got = es.options(opaque_id="op-1").get(index="idx", id="a/b")
        return {
            "version": info["version"]["number"],
            "result": created["result"],
            "source": got["_source"],
            "exists": bool(es.indices.exists(index="idx")),
            "missing": bool(es.indices.exists(index="missing")),
        }


async def _async_session(url: str, **tls: Any) -> dict[str, Any]:
    async with AsyncElasticsearch(url, max_retries=0, **tls) as es:
        info = await es.info()
        created = await es.index(index="idx", id="a/b", document={"title": "café ☕"}, refresh=True)
        got = await es.options(opaque_id="op-1").get(index="idx", id="a/b")
        return {
            "version": info["version"]["number"],
            "result": created["result"],
            "source": got["_source"],
            "exists": bool(await es.indices.exists(index="idx")),
            "missing": bool(await es.indices.exists(index="missing")),
        }


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_elasticsearch8_client_works_through_the_proxy(
    proxy: RunningProxy, upstream: FakeUpstream, flavour: str
) -> None:
    upstream.handler = FakeElasticsearch()
    if flavour == "sync":  # the sync client blocks: keep the event loop (proxy) running
        result = await asyncio.to_thread(_sync_session, proxy.url)
    else:
        result = await _async_session(proxy.url)

    assert result == {
        "version": "8.15.0",
        "result": "created",
        "source": {"title": "café ☕"},
        "exists": True,
        "missing": False,
    }
    targets = [(r.method, r.target) for r in upstream.requests]
    assert targets == [
        ("GET", "/"),
        ("PUT", "/idx/_doc/a%2Fb?refresh=true"),
        ("GET", "/idx/_doc/a%2Fb"),
        ("HEAD", "/idx"),
        ("HEAD", "/missing"),
    ]
    assert upstream.requests[2].header("X-Opaque-Id") == "op-1"
    _check_media_types(upstream)


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_without_the_product_header_the_client_refuses(
    proxy: RunningProxy, upstream: FakeUpstream, flavour: str
) -> None:
    # The client itself insists on X-Elastic-Product: the proxy must forward it.
    upstream.handler = FakeElasticsearch(product_header=False)
    with pytest.raises(UnsupportedProductError):
        if flavour == "sync":
            await asyncio.to_thread(_sync_session, proxy.url)
        else:
            await _async_session(proxy.url)
    assert [r.target for r in upstream.requests] == ["/"]


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_elasticsearch8_client_with_ca_certs_through_the_https_listener(
    upstream: FakeUpstream, tmp_path: Path, flavour: str
) -> None:
    """Elasticsearch 8's clients use https:// and a CA file: against the proxy, the same."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "proxy.crt"))
    cert.private_key_pem.write_to_path(str(tmp_path / "proxy.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "http_ca.crt"))
    raw = proxy_config(upstream.url)
    raw["listen"] = {
        "tls_cert": str(tmp_path / "proxy.crt"),
        "tls_key": str(tmp_path / "proxy.key"),
    }
    cfg = parse_config(raw)
    tls = server_tls(cfg.listen)
    assert tls is not None
    runner = make_runner(create_app(cfg))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.context)
    await site.start()
    url = f"https://127.0.0.1:{runner.addresses[0][1]}"
    upstream.handler = FakeElasticsearch()
    options = {"ca_certs": str(tmp_path / "http_ca.crt")}
    try:
        if flavour == "sync":
            result = await asyncio.to_thread(_sync_session, url, **options)
        else:
            result = await _async_session(url, **options)
    finally:
        await runner.cleanup()
    assert result["version"] == "8.15.0" and result["source"] == {"title": "café ☕"}
    _check_media_types(upstream)
