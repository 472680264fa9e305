"""The compose files parse with a real compose implementation (no engine needed), the secure
Elasticsearch 8 stack is wired as its README promises, and so is the scale-out stack.

`docker-compose config` resolves each file (interpolation, relative paths, defaults); the
resolved model is then read for what would otherwise only show at `up` time: the proxy's
config mount and the files it names, the certificate volume the init step fills and every
service reads, the start-up order, TLS on both sides, and no password anywhere near the proxy.
For docker-compose.scale.yml: both proxies' configs (loaded as `serve` loads them) call the
model server's service and port and share the Redis service, only the model server holds the
model cache, every step waits for the previous one's health check, and the nginx front
balances over exactly the two proxies' listeners (`nginx -t` checks its syntax where nginx is
installed).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from proxy.config import Config, env_overrides, load_config
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


# -- docker-compose.scale.yml: one model server, two proxies, Redis, an nginx front ---------

SCALE = "docker-compose.scale.yml"
PROXIES = ("proxy-1", "proxy-2")
NGINX_CONF = DOCKER / "nginx-scale.conf"
# The model server's routes for the Cohere/Jina shape and TEI's (proxy/model_server.py).
MODEL_SERVER_ROUTES = {"cohere": {"/v1/rerank", "/v2/rerank", "/rerank"}, "tei": {"/rerank"}}


@pytest.fixture(scope="module")
def scale() -> dict[str, Any]:
    services: dict[str, Any] = _resolved(SCALE)["services"]
    return services


def _config_of(service: dict[str, Any]) -> tuple[Path, Config]:
    """The config file bound over the image's /etc/rerank-proxy/config.yaml, loaded."""
    (bind,) = [m for m in _mounts(service) if m[1] == PROXY_CONFIG]
    source, _, mode = bind
    assert mode == "ro"
    return Path(source), load_config(source)


def _seconds(duration: str) -> float:
    """A compose duration as `config` prints it (`1m30s`, `5m`, `300ms`) in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
    parts = re.findall(r"([0-9.]+)(ms|us|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def test_scale_stack_has_its_six_services(scale: dict[str, Any]) -> None:
    assert set(scale) == {"opensearch", "redis", "model-server", *PROXIES, "front"}
    assert scale["opensearch"]["image"].startswith("opensearchproject/opensearch:2.")
    assert scale["redis"]["image"] in ("redis:7", "valkey/valkey:8")
    assert scale["front"]["image"].startswith("nginx:")
    # One image for the model server and both proxies, with redis-py in it.
    for name in ("model-server", *PROXIES):
        build = scale[name]["build"]
        assert build["dockerfile"] == "docker/Dockerfile", name
        assert scale[name]["image"] == "rerank-proxy:latest", name
        assert "redis" in build["args"]["EXTRAS"].split(","), name
    # Only the front (and the engine, to load data) is reachable from the host.
    published = {n: s["ports"] for n, s in scale.items() if s.get("ports")}
    assert published == {
        "opensearch": ["127.0.0.1:9200:9200/tcp"],
        "front": ["127.0.0.1:9280:9280/tcp"],
    }


def test_both_proxies_rerank_through_the_model_server_and_share_redis(
    scale: dict[str, Any],
) -> None:
    _, server = _config_of(scale["model-server"])
    assert scale["model-server"]["command"] == ["model-server"]
    # The image's RERANK_PROXY_LISTEN (0.0.0.0:9280) would win over the file's port.
    assert scale["model-server"]["environment"]["RERANK_PROXY_LISTEN"] == ""
    assert server.model.backend != "remote"
    configs = {}
    for name in PROXIES:
        path, cfg = _config_of(scale[name])
        assert path == REPO_ROOT / "config" / "scale-proxy.yaml"
        configs[name] = cfg
        assert cfg.model.backend == "remote"
        (url,) = cfg.model.remote.urls
        parts = urlsplit(url)
        want = ("http", "model-server", server.listen.port)
        assert (parts.scheme, parts.hostname, parts.port) == want, name
        assert cfg.model.remote.path in MODEL_SERVER_ROUTES[cfg.model.remote.api]
        assert cfg.model.remote.max_documents <= server.model_server.max_documents
        # The model's name keys every cached score: the one the model server loads.
        assert cfg.model.remote.model == server.model.name
        assert cfg.model.max_length == server.model.max_length
        redis = urlsplit(cfg.cache.redis_url or "")
        assert (redis.scheme, redis.hostname, redis.port or 6379) == ("redis", "redis", 6379)
        assert "--port" not in scale["redis"]["command"]  # so Redis listens on 6379
        assert cfg.upstream.url == "http://opensearch:9200"
        assert (cfg.listen.host, cfg.listen.port) == ("0.0.0.0", 9280)
        # Nothing in the environment undoes the file (backend, model, cache, upstream).
        env = scale[name].get("environment", {})
        overrides, problems = env_overrides(env)
        assert problems == [] and overrides == {}, name
        flags = {f"RERANK_PROXY_{flag}" for flag in ("UPSTREAM", "BACKEND", "MODEL", "DEVICE")}
        assert not flags & set(env), name
    assert configs["proxy-1"] == configs["proxy-2"]
    assert server.cache.redis_url is None  # the proxies' caches sit in front of it


def test_only_the_model_server_has_the_model_cache(scale: dict[str, Any]) -> None:
    holders = {
        name: target
        for name, service in scale.items()
        for source, target, _ in _mounts(service)
        if source == "model-cache"
    }
    assert holders == {"model-server": "/models"}
    for name in PROXIES:
        # The proxies mount their config and nothing else: no model, no volume.
        assert [t for _, t, _ in _mounts(scale[name])] == [PROXY_CONFIG], name


def test_scale_stack_starts_in_order_of_health(scale: dict[str, Any]) -> None:
    healthy = {"condition": "service_healthy"}
    for name in PROXIES:
        assert scale[name]["depends_on"] == {
            "opensearch": healthy,
            "redis": healthy,
            "model-server": healthy,
        }, name
    assert scale["front"]["depends_on"] == {p: healthy for p in PROXIES}
    assert not {"opensearch", "redis", "model-server"} & {
        n for n, s in scale.items() if s.get("depends_on")
    }
    # Every service something waits for has a health check; ours ask `rerank-proxy probe`,
    # which reads the config the image points RERANK_PROXY_CONFIG at: the mounted file.
    waited = {d for s in scale.values() for d in s.get("depends_on", {})}
    assert waited == {"opensearch", "redis", "model-server", *PROXIES}
    for name in waited:
        assert scale[name]["healthcheck"]["test"], name
    for name in ("model-server", *PROXIES):
        check = scale[name]["healthcheck"]
        assert check["test"] == ["CMD", "rerank-proxy", "probe"], name
        assert "RERANK_PROXY_CONFIG" not in scale[name].get("environment", {})
    assert "redis-cli ping" in " ".join(scale["redis"]["healthcheck"]["test"])
    # The model server downloads the model on its first start: it gets the longest grace.
    grace = {
        n: _seconds(scale[n]["healthcheck"]["start_period"]) for n in ("model-server", *PROXIES)
    }
    assert grace["model-server"] >= 180 and grace["model-server"] > max(grace[p] for p in PROXIES)


def _nginx_upstream(text: str) -> tuple[str, list[tuple[str, int]], int]:
    """(upstream name, its servers as (host, port), the port the server block listens on)."""
    text = re.sub(r"#[^\n]*", "", text)
    (name, body) = re.findall(r"upstream\s+(\S+)\s*\{([^}]*)\}", text)[0]
    servers = [(h, int(p)) for h, p in re.findall(r"^\s*server\s+([\w.-]+):(\d+)", body, re.M)]
    (listen,) = re.findall(r"^\s*listen\s+(\d+)\s*;", text, re.M)
    assert re.search(rf"proxy_pass\s+http://{re.escape(name)}\s*;", text)
    return name, servers, int(listen)


def test_front_balances_over_exactly_the_two_proxies(scale: dict[str, Any]) -> None:
    front = scale["front"]
    (source,) = [s for s, t, m in _mounts(front) if t == "/etc/nginx/conf.d/default.conf"]
    assert Path(source) == NGINX_CONF
    _, servers, listen = _nginx_upstream(NGINX_CONF.read_text(encoding="utf-8"))
    wanted = sorted((name, _config_of(scale[name])[1].listen.port) for name in PROXIES)
    assert sorted(servers) == wanted
    assert front["ports"] == [f"127.0.0.1:9280:{listen}/tcp"]
    check = " ".join(front["healthcheck"]["test"])
    assert f"127.0.0.1:{listen}/" in check


def test_front_config_is_valid_nginx(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if nginx is None:
        pytest.skip("nginx is not installed")
    # The compose service names resolve only inside the compose network: loopback here.
    conf = NGINX_CONF.read_text(encoding="utf-8")
    for name in PROXIES:
        conf = conf.replace(f"{name}:", "127.0.0.1:")
    (tmp_path / "front.conf").write_text(conf, encoding="utf-8")
    # Every path nginx opens (or creates) at -t inside tmp_path: no root needed.
    temp = " ".join(
        f"{kind}_temp_path {tmp_path}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nevents {{}}\n"
        f"http {{ access_log {tmp_path}/access.log; {temp}\n"
        f"include {tmp_path}/front.conf; }}\n",
        encoding="utf-8",
    )
    proc = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-e", "stderr", "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
