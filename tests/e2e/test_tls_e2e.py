"""HTTPS on the listening side, with the official clients against the real engines.

A client of a secured cluster points at the proxy and changes nothing but the host: the
proxy terminates TLS with its own certificate (a test CA from `trustme`), the clients verify
it with the CA file as they would the cluster's, and the reranked answer equals the plain
HTTP proxy's. Mutual TLS: a client certificate from the configured client CA is required for
everything but the probes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.conftest import SciFact

from .conftest import (
    OPENSEARCH_ENGINES,
    SCIFACT_INDEX,
    Stack,
    proxy_config,
    start_proxy,
    stop_proxy,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("tls")
    server_ca, client_ca = trustme.CA(), trustme.CA()
    server = server_ca.issue_cert("127.0.0.1", "localhost")
    client = client_ca.issue_cert("search-app@example.com")
    paths = {
        name: str(d / name)
        for name in ("ca.pem", "clients.pem", "proxy.crt", "proxy.key", "client.crt", "client.key")
    }
    server_ca.cert_pem.write_to_path(paths["ca.pem"])
    client_ca.cert_pem.write_to_path(paths["clients.pem"])
    server.cert_chain_pems[0].write_to_path(paths["proxy.crt"])
    server.private_key_pem.write_to_path(paths["proxy.key"])
    client.cert_chain_pems[0].write_to_path(paths["client.crt"])
    client.private_key_pem.write_to_path(paths["client.key"])
    return paths


@pytest.fixture(scope="module")
def https_proxy(
    stack: Stack, tiny_model: Path, certs: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    config: dict[str, Any] = proxy_config(stack.engine_url, tiny_model)
    config["listen"] = {
        "drain_delay": 0,
        "tls_cert": certs["proxy.crt"],
        "tls_key": certs["proxy.key"],
        "client_ca": certs["clients.pem"],
    }
    proc, url, _ = start_proxy(config, tmp_path_factory.mktemp(f"https-{stack.engine}"))
    assert url.startswith("https://")
    yield url  # the certificate names 127.0.0.1
    stop_proxy(proc)


def _hits(resp: Any) -> list[tuple[str, float]]:
    body = resp.body if hasattr(resp, "body") else resp
    return [(h["_id"], h["_score"]) for h in body["hits"]["hits"]]


def test_official_clients_verify_the_proxy_and_get_the_reranked_answer(
    stack: Stack, https_proxy: str, certs: dict[str, str], scifact: SciFact
) -> None:
    query = scifact.queries[sorted(scifact.qrels, key=int)[0]]
    body = {"query": {"match": {"text": query}}, "size": 5}
    plain = stack.sync_client(stack.proxy_url)
    secure = stack.sync_client(
        https_proxy,
        ca_certs=certs["ca.pem"],
        verify_certs=True,
        client_cert=certs["client.crt"],
        client_key=certs["client.key"],
        **({"use_ssl": True} if stack.engine in OPENSEARCH_ENGINES else {}),
    )
    try:
        got = secure.search(index=SCIFACT_INDEX, body=body)
        expected = _hits(plain.search(index=SCIFACT_INDEX, body=body))
        # Two processes: the same model, different batch neighbours (float rounding only).
        assert [d for d, _ in _hits(got)] == [d for d, _ in expected]
        assert [s for _, s in _hits(got)] == pytest.approx([s for _, s in expected], abs=1e-5)
        assert all("_engine_score" in h["fields"] for h in got["hits"]["hits"])
    finally:
        plain.close()
        secure.close()


def test_without_a_client_certificate_searches_are_refused(
    stack: Stack, https_proxy: str, certs: dict[str, str]
) -> None:
    client = stack.sync_client(
        https_proxy,
        ca_certs=certs["ca.pem"],
        verify_certs=True,
        max_retries=0,
        **({"use_ssl": True} if stack.engine in OPENSEARCH_ENGINES else {}),
    )
    try:
        with pytest.raises(Exception, match="proxy_client_certificate_required") as info:
            client.search(index=SCIFACT_INDEX, body={"query": {"match_all": {}}})
        assert info.value.status_code == 403  # type: ignore[attr-defined]
    finally:
        client.close()
