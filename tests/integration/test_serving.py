"""The `serve` process: HTTPS and mutual TLS on the listening side, hot reload, SIGTERM drain.

Each test runs the real `python -m proxy serve` (fake backend) as a process, with test
certificates from `trustme`, against the recording fake upstream. Signals are real signals.
Waits are for events (a log line, a status, a closed port), never for a duration.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import sys
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO_ROOT

from .fakes import FakeUpstream, Received

SEARCH = json.dumps({"query": {"match": {"title": "apple"}}}).encode()


@dataclass
class Proc:
    proc: asyncio.subprocess.Process
    url: str
    config: Path
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    async def wait_log(self, needle: str, count: int = 1) -> None:
        """Wait until `needle` has appeared `count` times in the log (polling the file)."""
        for _ in range(2000):
            if self.log_text().count(needle) >= count:
                return
            if self.proc.returncode is not None:
                break
            await asyncio.sleep(0.01)
        raise AssertionError(f"{needle!r} never logged; log:\n{self.log_text()[-3000:]}")


def _config(upstream: str, **listen: Any) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": 0, "drain_delay": 0, **listen},
        "upstream": {"url": upstream, "probe_interval": 0},
        "model": {"backend": "fake", "name": "fake"},
        "defaults": {"enabled": False},
        "indices": [{"match": ["books"], "fields": ["title"], "window": 5}],
        "log_level": "INFO",
    }


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Any]:
    procs: list[Proc] = []

    async def start(config: dict[str, Any], command: str = "serve") -> Proc:
        path = tmp_path / f"proxy-{len(procs)}.yaml"
        path.write_text(yaml.safe_dump(config))
        log = tmp_path / f"proxy-{len(procs)}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with log.open("w") as fh:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "proxy",
                command,
                "--config",
                str(path),
                cwd=REPO_ROOT,
                stdout=asyncio.subprocess.PIPE,
                stderr=fh,
                env=env,
            )
        assert proc.stdout is not None
        line = (await proc.stdout.readline()).decode()
        assert line.startswith("rerank-proxy listening on "), log.read_text()
        p = Proc(proc, line.split()[-1], path, log)
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.proc.returncode is None:
            p.proc.send_signal(signal.SIGTERM)
            await p.proc.wait()


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def _write_cert(ca: trustme.CA, tmp_path: Path, name: str) -> tuple[str, str]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(cert_path), append=True)
    cert.private_key_pem.write_to_path(str(key_path))
    return str(cert_path), str(key_path)


def _client_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


async def _get(url: str, ctx: ssl.SSLContext | bool, path: str) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(url + path, ssl=ctx) as resp,
    ):
        return resp.status, await resp.read()


async def test_https_listener_serves_clients_that_trust_its_ca(
    spawn: Any, upstream: FakeUpstream, ca: trustme.CA, tmp_path: Path
) -> None:
    cert, key = _write_cert(ca, tmp_path, "proxy")
    proc = await spawn(_config(upstream.url, tls_cert=cert, tls_key=key))
    assert proc.url.startswith("https://127.0.0.1:")
    assert await _get(proc.url, _client_ctx(ca), "/_rerank_proxy/health") == (
        200,
        json.dumps({"status": "ok", "version": _version()}).encode(),
    )
    status, _ = await _get(proc.url, _client_ctx(ca), "/idx/_doc/1")
    assert status == 200 and upstream.requests[-1].target == "/idx/_doc/1"
    # A client that does not trust the CA, and one that speaks plain HTTP, get nothing.
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await _get(proc.url, ssl.create_default_context(), "/_rerank_proxy/health")
    with pytest.raises(aiohttp.ClientError):
        await _get(proc.url.replace("https://", "http://"), False, "/_rerank_proxy/health")
    # TLS 1.1 is refused.
    old = _client_ctx(ca)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # ssl deprecates asking for 1.1
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((aiohttp.ClientError, ssl.SSLError)):
        await _get(proc.url, old, "/_rerank_proxy/health")


async def test_mutual_tls_requires_a_client_certificate_from_the_client_ca(
    spawn: Any, upstream: FakeUpstream, ca: trustme.CA, tmp_path: Path
) -> None:
    cert, key = _write_cert(ca, tmp_path, "proxy")
    client_ca = trustme.CA()
    client_ca.cert_pem.write_to_path(str(tmp_path / "clients.pem"))
    config = _config(upstream.url, tls_cert=cert, tls_key=key)
    config["listen"]["client_ca"] = str(tmp_path / "clients.pem")
    proc = await spawn(config)
    # A certificate from another CA fails the handshake.
    stranger = _client_ctx(ca)
    trustme.CA().issue_cert("client@example.com").configure_cert(stranger)
    with pytest.raises(aiohttp.ClientError):
        await _get(proc.url, stranger, "/_rerank_proxy/health")
    # No certificate: the probes answer (kubelet has none), nothing else does.
    bare = _client_ctx(ca)
    assert (await _get(proc.url, bare, "/_rerank_proxy/health"))[0] == 200
    assert (await _get(proc.url, bare, "/_rerank_proxy/ready"))[0] == 200
    for path in ("/idx/_doc/1", "/_rerank_proxy/metrics", "/books/_search"):
        status, body = await _get(proc.url, bare, path)
        assert status == 403, path
        assert json.loads(body)["error"]["type"] == "proxy_client_certificate_required"
    assert upstream.requests == []  # nothing reached the cluster
    mine = _client_ctx(ca)
    client_ca.issue_cert("client@example.com").configure_cert(mine)
    assert (await _get(proc.url, mine, "/idx/_doc/1"))[0] == 200
    assert (await _get(proc.url, mine, "/_rerank_proxy/metrics"))[0] == 200


async def test_reload_swaps_certificates_for_new_connections(
    spawn: Any, upstream: FakeUpstream, ca: trustme.CA, tmp_path: Path
) -> None:
    cert, key = _write_cert(ca, tmp_path, "proxy")
    proc = await spawn(_config(upstream.url, tls_cert=cert, tls_key=key))
    assert (await _get(proc.url, _client_ctx(ca), "/_rerank_proxy/health"))[0] == 200
    other = trustme.CA()
    _write_cert(other, tmp_path, "proxy")  # same file names, new certificates
    proc.proc.send_signal(signal.SIGHUP)
    await proc.wait_log("configuration reloaded")
    assert (await _get(proc.url, _client_ctx(other), "/_rerank_proxy/health"))[0] == 200
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await _get(proc.url, _client_ctx(ca), "/_rerank_proxy/health")


async def _search_header(url: str) -> str | None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            url + "/books/_search", data=SEARCH, headers={"Content-Type": "application/json"}
        ) as resp,
    ):
        await resp.read()
        return resp.headers.get("X-Rerank-Reason")


def _hits_reply(upstream: FakeUpstream) -> None:
    body = json.dumps(
        {
            "took": 1,
            "timed_out": False,
            "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
            "hits": {
                "total": {"value": 1, "relation": "eq"},
                "max_score": 1.0,
                "hits": [{"_id": "1", "_score": 1.0, "_source": {"title": "apple pie"}}],
            },
        }
    ).encode()
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )

    async def handler(req: Received, writer: asyncio.StreamWriter) -> bool:
        writer.write(head.encode() + body)
        return True

    upstream.handler = handler


async def metrics_of(url: str) -> dict[str, float]:
    status, body = await _get(url, False, "/_rerank_proxy/metrics?format=json")
    assert status == 200
    return dict(json.loads(body))


async def test_reload_applies_rules_keeps_the_running_config_on_a_bad_file_and_logs_restarts(
    spawn: Any, upstream: FakeUpstream
) -> None:
    _hits_reply(upstream)
    config = _config(upstream.url)
    proc = await spawn(config)
    assert await _search_header(proc.url) is None  # reranked: no skip reason

    # A good file: the rule is now disabled, for the very next search.
    config["indices"][0]["enabled"] = False
    proc.config.write_text(yaml.safe_dump(config))
    proc.proc.send_signal(signal.SIGHUP)
    await proc.wait_log("configuration reloaded")
    assert await _search_header(proc.url) == "disabled"

    # A bad file: every problem logged as check-config says it, the running config kept.
    proc.config.write_text(yaml.safe_dump({**config, "indices": [{"match": [], "windw": 3}]}))
    proc.proc.send_signal(signal.SIGHUP)
    await proc.wait_log("reload failed, keeping the running configuration")
    log = proc.log_text()
    assert "indices[0].windw: unknown key (did you mean 'window'?" in log
    assert "indices[0].match: must name at least one index or pattern" in log
    assert await _search_header(proc.url) == "disabled"

    # A restart-only change is named and not applied; the rest of the file is.
    config["indices"][0]["enabled"] = True
    config["model"] = {"backend": "fake", "name": "another-model"}
    proc.config.write_text(yaml.safe_dump(config))
    proc.proc.send_signal(signal.SIGHUP)
    await proc.wait_log("configuration reloaded", count=2)
    assert "reload: model changed; it needs a restart and was not applied" in proc.log_text()
    assert await _search_header(proc.url) is None
    metrics = await metrics_of(proc.url)
    assert metrics['rerank_proxy_reloads_total{result="ok"}'] == 2
    assert metrics['rerank_proxy_reloads_total{result="failed"}'] == 1


async def test_sigterm_turns_readiness_off_then_drains_in_flight_requests(
    spawn: Any, upstream: FakeUpstream
) -> None:
    release = asyncio.Event()
    arrived = asyncio.Event()

    async def slow(req: Received, writer: asyncio.StreamWriter) -> bool:
        arrived.set()
        await release.wait()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        return True

    upstream.handler = slow
    proc = await spawn(
        {**_config(upstream.url), "listen": {"host": "127.0.0.1", "port": 0, "drain_delay": 3600}}
    )
    assert (await _get(proc.url, False, "/_rerank_proxy/ready"))[0] == 200

    async def in_flight() -> tuple[int, bytes]:
        return await _get(proc.url, False, "/idx/_forcemerge")

    request = asyncio.create_task(in_flight())
    await arrived.wait()
    proc.proc.send_signal(signal.SIGTERM)
    await proc.wait_log("shutting down: readiness is 503")
    status, body = await _get(proc.url, False, "/_rerank_proxy/ready")
    assert status == 503 and json.loads(body)["reasons"] == ["draining: shutting down"]
    # Still listening during the drain delay; a second signal cuts it short.
    proc.proc.send_signal(signal.SIGTERM)
    await proc.wait_log("closing the listener; finishing in-flight requests")
    release.set()
    assert await request == (200, b"{}")  # the in-flight request finished
    assert await proc.proc.wait() == 0
    with pytest.raises(aiohttp.ClientConnectorError):
        await _get(proc.url, False, "/_rerank_proxy/health")


def _version() -> str:
    from proxy import __version__

    return __version__


async def test_json_logs_carry_fields_and_never_credentials(
    spawn: Any, upstream: FakeUpstream
) -> None:
    _hits_reply(upstream)
    proc = await spawn({**_config(upstream.url), "log_format": "json", "log_level": "DEBUG"})
    headers = {
        "Content-Type": "application/json",
        "Authorization": "Basic ZWxhc3RpYzpzM2NyZXQ=",  # elastic:s3cret
        "X-Opaque-Id": "req-42",
    }
    async with (
        aiohttp.ClientSession() as http,
        http.post(proc.url + "/books/_search?q=x", data=SEARCH, headers=headers) as resp,
    ):
        assert resp.headers["X-Rerank"] == "applied"
        sent = int(resp.headers["Content-Length"])  # on the wire (gzip: aiohttp asks for it)
    assert (await _get(proc.url, False, "/_rerank_proxy/health"))[0] == 200
    await proc.wait_log("GET /_rerank_proxy/health 200")
    proc.proc.send_signal(signal.SIGTERM)
    await proc.proc.wait()
    lines = [json.loads(line) for line in proc.log_text().splitlines() if line.strip()]
    [access] = [r for r in lines if r["logger"] == "proxy.access"]
    assert {k: access[k] for k in ("level", "method", "path", "status", "target", "rule")} == {
        "level": "INFO",
        "method": "POST",
        "path": "/books/_search",
        "status": 200,
        "target": "books",
        "rule": "books",
    }
    assert (access["outcome"], access["reason"], access["request_id"]) == (
        "applied",
        None,
        "req-42",
    )
    assert access["bytes"] == sent and access["client"] == "127.0.0.1"
    assert access["upstream_ms"] >= 0 and access["rerank_ms"] >= 0 and "ts" in access
    # Query text only at DEBUG; health probes only at DEBUG; no credential anywhere.
    assert all(r["level"] == "DEBUG" for r in lines if "apple" in r["message"])
    assert any("apple" in r["message"] for r in lines)
    [probe] = [r for r in lines if "/_rerank_proxy/health" in r["message"]]
    assert probe["level"] == "DEBUG"
    text = proc.log_text()
    assert "s3cret" not in text and "ZWxhc3RpYzpzM2NyZXQ=" not in text


async def test_probe_checks_the_listener_the_config_describes(
    spawn: Any, upstream: FakeUpstream, ca: trustme.CA, tmp_path: Path
) -> None:
    """`rerank-proxy probe` (the container health check) speaks HTTPS when the config does."""
    cert, key = _write_cert(ca, tmp_path, "proxy")
    proc = await spawn(_config(upstream.url, tls_cert=cert, tls_key=key))
    listen = ["--listen", proc.url.split("//", 1)[1]]

    async def probe() -> int:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "proxy",
            "probe",
            "--config",
            str(proc.config),
            *listen,
            cwd=REPO_ROOT,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return await child.wait()

    assert await probe() == 0
    proc.proc.send_signal(signal.SIGTERM)
    await proc.proc.wait()
    assert await probe() == 1


async def test_model_server_command_serves_the_rerank_api(
    spawn: Any, upstream: FakeUpstream
) -> None:
    proc = await spawn(_config(upstream.url), "model-server")
    body = {"query": "apple", "documents": ["pear", "apple pie"]}
    async with (
        aiohttp.ClientSession() as http,
        http.post(proc.url + "/v1/rerank", json=body) as resp,
    ):
        doc = await resp.json()
    assert resp.status == 200 and [r["index"] for r in doc["results"]] == [1, 0]
    assert upstream.requests == []  # a model server has no cluster behind it
    assert (await _get(proc.url, False, "/_rerank_proxy/ready"))[0] == 200


async def test_workers_share_one_port_and_one_model_server(
    spawn: Any, upstream: FakeUpstream
) -> None:
    """`listen.workers: 2`: two worker processes on one port (SO_REUSEPORT), both reranking
    through one model server; a worker that dies is started again; SIGTERM stops them all."""
    _hits_reply(upstream)
    config = {**_config(upstream.url), "log_format": "json"}
    config["listen"]["workers"] = 2
    proc = await spawn(config)
    await proc.wait_log('"message": "2 workers on port')
    pids: set[int] = set()
    for _ in range(60):  # new connections: the kernel spreads them over both workers
        assert await _search_header(proc.url) is None  # reranked, through the model server
        lines = [json.loads(x) for x in proc.log_text().splitlines() if x.startswith("{")]
        pids = {r["process"] for r in lines if r["logger"] == "proxy.access"}
        if len(pids) == 2:
            break
    assert len(pids) == 2, "every search went to one worker"
    assert proc.proc.pid not in pids  # the supervisor itself serves nothing
    # One metrics view: whichever worker answers the scrape, it holds both, labelled.
    status, text = await _get(proc.url, False, "/_rerank_proxy/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    per_worker = {
        s.labels["worker"]: s.value
        for s in families["rerank_proxy_requests"].samples
        if s.name.endswith("_total") and s.labels.get("route") == "search"
    }
    assert set(per_worker) == {"0", "1"} and all(v >= 1 for v in per_worker.values())
    os.kill(next(iter(pids)), signal.SIGKILL)
    await proc.wait_log("starting it again")
    for _ in range(10):
        assert await _search_header(proc.url) is None
    proc.proc.send_signal(signal.SIGTERM)
    assert await proc.proc.wait() == 0
    with pytest.raises(aiohttp.ClientConnectorError):
        await _get(proc.url, False, "/_rerank_proxy/health")
