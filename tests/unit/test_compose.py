"""The compose files parse with a real compose implementation (no engine needed), and the
secure Elasticsearch 8 stack is wired as its README promises.

`docker-compose config` resolves each file (interpolation, relative paths, defaults); the
resolved model is then read for what would otherwise only show at `up` time: the proxy's
config mount and the files it names, the certificate volume the init step fills and every
service reads, the start-up order, TLS on both sides, and no password anywhere near the proxy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from proxy.config import Config, load_config
from tests.conftest import REPO_ROOT

DOCKER = REPO_ROOT / "docker"
FILES = ["docker-compose.yml", "docker-compose.insecure.yml", "docker-compose.opensearch.yml"]
PASSWORD = "test-Pa55word-not-real"
PROXY_CONFIG = "/etc/rerank-proxy/config.yaml"


def _compose(name: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose is not installed (.ci/run installs it)")
    # A clean environment: nothing from the caller's shell (ES_VERSION, ...) leaks in.
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
    return subprocess.run(
        [exe, "-f", str(DOCKER / name), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        env=base | (env or {}),
        cwd=REPO_ROOT,
    )


def _resolved(name: str) -> dict[str, Any]:
    proc = _compose(name, {"ELASTIC_PASSWORD": PASSWORD})
    assert proc.returncode == 0, proc.stderr
    model: dict[str, Any] = yaml.safe_load(proc.stdout)
    return model


@pytest.mark.parametrize("name", FILES)
def test_compose_file_is_valid(name: str) -> None:
    model = _resolved(name)
    assert "rerank-proxy" in model["services"]
    proxy = model["services"]["rerank-proxy"]
    assert proxy["build"]["dockerfile"] == "docker/Dockerfile"
    assert "127.0.0.1:9280:9280/tcp" in proxy["ports"]


def _mounts(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(source, target, mode) of each volume entry, as `docker-compose config` prints them."""
    out = []
    for entry in service.get("volumes", []):
        source, target, *mode = entry.split(":")
        out.append((source, target, mode[0] if mode else "rw"))
    return out


@pytest.fixture(scope="module")
def secure() -> dict[str, Any]:
    return _resolved("docker-compose.yml")


@pytest.fixture(scope="module")
def proxy_config(secure: dict[str, Any]) -> tuple[Path, Config]:
    """The config file mounted into the proxy, loaded as `serve --config` loads it."""
    (bind,) = [m for m in _mounts(secure["services"]["rerank-proxy"]) if m[1] == PROXY_CONFIG]
    source, _, mode = bind
    assert mode == "ro"
    path = Path(source)
    assert path == REPO_ROOT / "config" / "docker-secure.yaml"
    return path, load_config(path)


def test_secure_stack_needs_the_elastic_password() -> None:
    proc = _compose("docker-compose.yml")
    assert proc.returncode != 0
    assert "ELASTIC_PASSWORD" in proc.stderr


def test_elasticsearch_runs_with_security_and_http_tls(secure: dict[str, Any]) -> None:
    es = secure["services"]["elasticsearch"]
    env = es["environment"]
    assert env["xpack.security.enabled"] == "true"
    assert env["xpack.security.http.ssl.enabled"] == "true"
    assert env["ELASTIC_PASSWORD"] == PASSWORD
    assert es["image"].startswith("docker.elastic.co/elasticsearch/elasticsearch:8.")
    check = " ".join(es["healthcheck"]["test"])
    assert "https://localhost:9200" in check and "--cacert" in check


def _certs_volume(services: dict[str, Any], name: str, target: str) -> str:
    """The named volume `name` mounts at `target`."""
    (source,) = [s for s, t, _ in _mounts(services[name]) if t == target]
    assert not source.startswith("/"), f"{name}: {target} is a bind mount, not a volume"
    return source


def _instances(certs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The certutil instances the init step writes (one `  - {name: ...}` line each)."""
    script = certs["command"][-1]
    lines = [ln.strip().strip("'\\ ").removeprefix("- ") for ln in script.splitlines()]
    found = [yaml.safe_load(ln) for ln in lines if ln.startswith("{name:")]
    return {i["name"]: i for i in found}


def test_init_step_makes_the_ca_and_certificates_every_service_reads(
    secure: dict[str, Any], proxy_config: tuple[Path, Config]
) -> None:
    services = secure["services"]
    certs = services["certs"]
    assert certs["image"] == services["elasticsearch"]["image"]
    assert "elasticsearch-certutil ca" in certs["command"][-1]
    assert "elasticsearch-certutil cert" in certs["command"][-1]
    es_dir = "/usr/share/elasticsearch/config/certs"
    volume = _certs_volume(services, "certs", es_dir)
    assert volume in secure["volumes"]
    # The same named volume, read-only, in both consumers.
    assert (volume, es_dir, "ro") in _mounts(services["elasticsearch"])
    (proxy_mount,) = [(t, m) for s, t, m in _mounts(services["rerank-proxy"]) if s == volume]
    proxy_dir, mode = proxy_mount
    assert mode == "ro"

    instances = _instances(certs)
    made = {"ca/ca.crt"} | {f"{n}/{n}.{ext}" for n in instances for ext in ("crt", "key")}
    es_env = services["elasticsearch"]["environment"]
    for key in ("certificate", "key", "certificate_authorities"):
        path = es_env[f"xpack.security.http.ssl.{key}"]
        assert path.removeprefix("certs/") in made, path
    _, cfg = proxy_config
    named = [cfg.listen.tls_cert, cfg.listen.tls_key, cfg.upstream.ca_file]
    for path in named:
        assert path is not None
        rel = PurePosixPath(path).relative_to(proxy_dir)
        assert str(rel) in made, path
    # Each certificate is valid for the name it is reached by.
    es_host = urlsplit(cfg.upstream.url).hostname
    assert es_host == "elasticsearch" and es_host in instances["elasticsearch"]["dns"]
    assert {"rerank-proxy", "localhost"} <= set(instances["rerank-proxy"]["dns"])


def test_proxy_serves_https_and_verifies_elasticsearch(
    secure: dict[str, Any], proxy_config: tuple[Path, Config]
) -> None:
    _, cfg = proxy_config
    assert cfg.listen.tls_cert and cfg.listen.tls_key
    assert cfg.listen.host == "0.0.0.0" and cfg.listen.port == 9280
    assert cfg.upstream.url == "https://elasticsearch:9200"
    assert cfg.upstream.verify_tls and cfg.upstream.ca_file
    proxy = secure["services"]["rerank-proxy"]
    # The environment must not undo the file: no upstream override, no other port.
    env = proxy.get("environment", {})
    assert "RERANK_PROXY_UPSTREAM" not in env and "RERANK_PROXY_CONFIG" not in env
    assert env.get("RERANK_PROXY_LISTEN", "0.0.0.0:9280") in ("", "0.0.0.0:9280")
    check = " ".join(proxy["healthcheck"]["test"])
    assert "https://localhost:9280/_rerank_proxy/health" in check
    assert cfg.upstream.ca_file in check


def test_proxy_starts_after_the_certificates_and_a_healthy_elasticsearch(
    secure: dict[str, Any],
) -> None:
    services = secure["services"]
    assert services["rerank-proxy"]["depends_on"] == {
        "certs": {"condition": "service_completed_successfully"},
        "elasticsearch": {"condition": "service_healthy"},
    }
    assert services["elasticsearch"]["depends_on"] == {
        "certs": {"condition": "service_completed_successfully"}
    }


def test_no_password_reaches_the_proxy(
    secure: dict[str, Any], proxy_config: tuple[Path, Config]
) -> None:
    proxy = secure["services"]["rerank-proxy"]
    for key, value in proxy.get("environment", {}).items():
        assert "PASSWORD" not in key.upper() and PASSWORD not in str(value), key
    assert PASSWORD not in yaml.safe_dump(proxy)
    path, cfg = proxy_config
    text = path.read_text(encoding="utf-8").lower()
    assert "password" not in text
    assert urlsplit(cfg.upstream.url).password is None and "@" not in cfg.upstream.url


def test_insecure_and_opensearch_stacks_point_the_proxy_at_their_engine() -> None:
    for name, engine in (
        ("docker-compose.insecure.yml", "elasticsearch"),
        ("docker-compose.opensearch.yml", "opensearch"),
    ):
        services = _resolved(name)["services"]
        assert set(services) == {engine, "rerank-proxy"}, name
        proxy = services["rerank-proxy"]
        assert proxy["environment"]["RERANK_PROXY_UPSTREAM"] == f"http://{engine}:9200"
        assert proxy["depends_on"] == {engine: {"condition": "service_healthy"}}
    es = _resolved("docker-compose.insecure.yml")["services"]["elasticsearch"]
    assert es["environment"]["xpack.security.enabled"] == "false"
