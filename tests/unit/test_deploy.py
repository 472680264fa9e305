"""The Helm chart (deploy/helm/rerank-proxy), linted, rendered and read like a cluster would.

Helm renders the chart with its default values, with deploy/helm/ci-values.yaml (every
optional part of the single-tier proxy on: TLS, mutual TLS, upstream CA, PVC, model fetch,
queue-depth HPA) and with deploy/helm/ci-scale-values.yaml (the scale-out layout: CPU proxy
pods with workers, a GPU model server, the in-release Redis). Every
rendered object is validated offline against the Kubernetes OpenAPI schemas of the oldest
version the chart supports and the newest `kubernetes_validate` ships, in strict mode (an
unknown field is an error). Then the properties a deployment relies on are checked: the probes
hit the admin paths with the listener's scheme, the ConfigMap is a config the proxy accepts,
every file the config names is mounted from the right Secret key, and the PDB, Service and HPA
point at the Deployment's pods. For the scale-out layout: the proxies' ConfigMap names the model
server's Service and the Redis Service, the model server's ConfigMap is a config
`rerank-proxy model-server` accepts whose port is its Service's and probes', only the model
server asks for a GPU and holds the model, and one Secret's API key reaches both sides under the
name both configs give.

Helm comes from scripts/helm (built once from the Go module proxy). Outside CI a missing helm
skips these tests with the reason; with CI=true it fails them.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import posixpath
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from proxy.app import make_runner
from proxy.config import Config, env_overrides, load_config, parse_config
from tests.conftest import REPO_ROOT

CHART = REPO_ROOT / "deploy" / "helm" / "rerank-proxy"
CI_VALUES = REPO_ROOT / "deploy" / "helm" / "ci-values.yaml"
CI_SCALE_VALUES = REPO_ROOT / "deploy" / "helm" / "ci-scale-values.yaml"
RELEASE = "rel"
NAMESPACE = "search"
# The chart's Chart.yaml kubeVersion floor, and the newest schemas the package has.
KUBE_VERSIONS = ("1.25.0", kubernetes_validate.utils.latest_version())
# Each value set: values files and inline overrides, applied in order over values.yaml.
Overlay = Path | dict[str, Any]
VALUE_SETS: dict[str, list[Overlay]] = {
    "default": [],
    "tls": [{"tls": {"enabled": True, "secretName": "proxy-tls"}}],
    "ci": [CI_VALUES],
    "ci-httpget-probes": [CI_VALUES, {"probes": {"clientAuthProbe": "httpGet"}}],
    "scale": [CI_SCALE_VALUES],
    # ... with the proxy's TLS, mutual TLS and upstream CA on as well.
    "ci-scale": [CI_VALUES, CI_SCALE_VALUES],
    # The model server without its extras: no API key, no fetch (the hub on first start),
    # an emptyDir cache, an external Redis, the default worker count.
    "scale-plain": [
        {
            "modelServer": {"enabled": True},
            "redis": {"url": "rediss://cache.search.svc:6380/1"},
        }
    ],
}
ADMIN = "/_rerank_proxy"
MODEL_SERVER = "model-server"  # app.kubernetes.io/component of the model server's objects
REDIS = "cache"  # ... and of the in-release Redis
COMPONENT = "app.kubernetes.io/component"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def helm() -> str:
    """Path of the helm binary: built by scripts/helm in CI, only looked up elsewhere."""
    cmd = [str(REPO_ROOT / "scripts" / "helm")] + ([] if _in_ci() else ["--no-build"])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    path = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if proc.returncode == 0 and path:
        return path
    why = proc.stderr.strip() or f"scripts/helm exited {proc.returncode}"
    if _in_ci():
        pytest.fail(f"CI=true and no helm: {why}", pytrace=False)
    pytest.skip(f"no helm ({why}); run scripts/helm once to build it (CI=true: fail instead)")


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)


def _template(helm: str, values: list[Path], *extra: str, chart: Path = CHART) -> str:
    cmd = [helm, "template", RELEASE, str(chart), "--namespace", NAMESPACE, *extra]
    for path in values:
        cmd += ["-f", str(path)]
    proc = _run(cmd)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@dataclass(frozen=True)
class Rendered:
    """One `helm template` run: the objects by kind and the proxy config they carry."""

    name: str
    values: dict[str, Any]
    objects: list[dict[str, Any]]

    def kinds(self) -> set[str]:
        return {o["kind"] for o in self.objects}

    def parts(self) -> list[tuple[str, str | None]]:
        """(kind, component) of every object: component None is the proxy's own."""
        return sorted(
            ((o["kind"], o["metadata"]["labels"].get(COMPONENT)) for o in self.objects),
            key=str,
        )

    def _of(self, kind: str, component: str | None) -> list[dict[str, Any]]:
        return [
            o
            for o in self.objects
            if o["kind"] == kind and o["metadata"]["labels"].get(COMPONENT) == component
        ]

    def one(self, kind: str, component: str | None = None) -> dict[str, Any]:
        """The one `kind` of the proxy (component None), the model server or the Redis."""
        found = self._of(kind, component)
        assert len(found) == 1, f"{self.name}: expected one {kind} {component}, got {len(found)}"
        return found[0]

    def maybe(self, kind: str, component: str | None = None) -> dict[str, Any] | None:
        found = self._of(kind, component)
        return found[0] if found else None

    @property
    def scaled(self) -> bool:
        """The model runs in the model server's pods (modelServer.enabled)."""
        return bool(self.values["modelServer"]["enabled"])

    @property
    def pod(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.one("Deployment")["spec"]["template"]["spec"]
        return spec

    @property
    def server_pod(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.one("Deployment", MODEL_SERVER)["spec"]["template"]["spec"]
        return spec

    @property
    def server(self) -> dict[str, Any]:
        (container,) = [c for c in self.server_pod["containers"] if c["name"] == "model-server"]
        return container

    @property
    def server_config_text(self) -> str:
        text: str = self.one("ConfigMap", MODEL_SERVER)["data"]["config.yaml"]
        return text

    @property
    def server_config(self) -> Config:
        raw = yaml.safe_load(self.server_config_text)
        return parse_config(raw, f"{self.name}: model server ConfigMap")

    @property
    def model_pod(self) -> dict[str, Any]:
        """The pod that loads the model: the model server's, else the proxy's."""
        return self.server_pod if self.scaled else self.pod

    @property
    def model_container(self) -> dict[str, Any]:
        return self.server if self.scaled else self.proxy

    @property
    def proxy(self) -> dict[str, Any]:
        (container,) = [c for c in self.pod["containers"] if c["name"] == "rerank-proxy"]
        return container

    @property
    def config_text(self) -> str:
        text: str = self.one("ConfigMap")["data"]["config.yaml"]
        return text

    @property
    def config(self) -> Config:
        return parse_config(yaml.safe_load(self.config_text), f"{self.name}: ConfigMap")

    @property
    def tls(self) -> bool:
        return bool(self.values["tls"]["enabled"])


def _merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Helm's merge of a values file over another: maps merge, everything else replaces."""
    out = dict(a)
    for k, v in b.items():
        both = isinstance(v, Mapping) and isinstance(a.get(k), Mapping)
        out[k] = _merge(a[k], v) if both else v
    return out


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return data


Render = Callable[..., Rendered]


@pytest.fixture(scope="session")
def value_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Each value set as the `-f` files helm gets (inline overrides written out)."""
    tmp = tmp_path_factory.mktemp("values")
    files: dict[str, list[Path]] = {}
    for name, overlays in VALUE_SETS.items():
        files[name] = []
        for i, overlay in enumerate(overlays):
            if isinstance(overlay, dict):
                path = tmp / f"{name}-{i}.yaml"
                path.write_text(yaml.safe_dump(overlay), encoding="utf-8")
                overlay = path
            files[name].append(overlay)
    return files


@pytest.fixture(scope="session")
def render(helm: str, value_files: dict[str, list[Path]]) -> Render:
    """`render(name, kube)`: the value set `name` rendered for Kubernetes `kube`, once."""
    cache: dict[tuple[str, str], Rendered] = {}

    def get(name: str, kube: str = KUBE_VERSIONS[-1]) -> Rendered:
        if (name, kube) not in cache:
            text = _template(helm, value_files[name], "--kube-version", kube)
            objects = [doc for doc in yaml.safe_load_all(text) if doc]
            values = _load(CHART / "values.yaml")
            for path in value_files[name]:
                values = _merge(values, _load(path))
            cache[name, kube] = Rendered(name, values, objects)
        return cache[name, kube]

    return get


@pytest.fixture(params=sorted(VALUE_SETS))
def rendered(request: pytest.FixtureRequest, render: Render) -> Rendered:
    return render(request.param)


# -- helm itself --------------------------------------------------------------------------


def test_scripts_helm_prints_a_helm_3(helm: str) -> None:
    proc = _run([helm, "version", "--short"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("v3."), proc.stdout


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint_strict(helm: str, value_files: dict[str, list[Path]], name: str) -> None:
    cmd = [helm, "lint", "--strict", str(CHART)]
    for path in value_files[name]:
        cmd += ["-f", str(path)]
    proc = _run(cmd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_manifest_is_valid_for_kubernetes(render: Render, name: str, kube: str) -> None:
    r = render(name, kube)
    expected = {
        "ConfigMap",
        "Deployment",
        "Service",
        "ServiceAccount",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    }
    if name.startswith("ci") or name == "scale":  # model.cache.type: pvc
        expected.add("PersistentVolumeClaim")
    assert r.kinds() == expected
    parts = {(kind, None) for kind in expected}
    if r.scaled:
        parts |= {("ConfigMap", MODEL_SERVER), ("Deployment", MODEL_SERVER)}
        parts |= {("Service", MODEL_SERVER)}
    if r.values["redis"]["enabled"]:
        parts |= {("Deployment", REDIS), ("Service", REDIS)}
    assert r.parts() == sorted(parts, key=str)  # each at most once
    for obj in r.objects:
        try:
            kubernetes_validate.validate(obj, kube, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            pytest.fail(f"{name} {obj['kind']} invalid for {kube} at {where}: {exc.message}")
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


def test_chart_refuses_a_kubernetes_older_than_it_supports(helm: str) -> None:
    proc = _run([helm, "template", RELEASE, str(CHART), "--kube-version", "1.24.0"])
    assert proc.returncode != 0
    assert "kubeVersion" in proc.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--set", "tls.enabled=true"], "tls.enabled needs tls.secretName"),
        (["--set", "tls.clientAuth=true"], "tls.clientAuth needs tls.enabled"),
        (["--set", "upstreamCA.enabled=true"], "upstreamCA.enabled needs upstreamCA.secretName"),
        (["--set", "model.cache.type=hostPath"], "model.cache.type must be emptyDir or pvc"),
        (["--set", "probes.clientAuthProbe=exec"], "probes.clientAuthProbe must be tcpSocket"),
        (
            ["--set", "model.fetch.enabled=true", "--set", "model.fetch.dir=../etc"],
            "model.fetch.dir must be one directory name",
        ),
        (["--set", "workers=0"], "workers must be between 1 and 256"),
        (["--set", "cpuPerWorker=lots"], "cpuPerWorker must be a CPU quantity"),
        (
            ["--set", "redis.enabled=true", "--set", "redis.url=redis://cache:6379/0"],
            "redis: set one of redis.enabled, redis.url and redis.urlSecret.name",
        ),
        (["--set", "redis.url=http://cache:6379"], "redis.url must be a redis://"),
        (
            [
                "--set",
                "modelServer.enabled=true",
                "--set",
                "modelServer.config.model.backend=remote",
            ],
            "the model server runs the model itself",
        ),
        (
            [
                *("--set", "modelServer.enabled=true"),
                *("--set", "modelServer.apiKey.secretName=key"),
                *("--set", "modelServer.apiKey.env=RERANK_PROXY_API_KEY"),
            ],
            "modelServer.apiKey.env must not start with RERANK_PROXY_",
        ),
        (
            [
                *("--set", "modelServer.enabled=true"),
                *("--set", "config.model.remote.max_documents=2000"),
            ],
            "exceeds the model server's model_server.max_documents (1000)",
        ),
        (
            [
                *("--set", "modelServer.enabled=true", "--set", "modelServer.gpu=0"),
                *("--set", "modelServer.config.model.device=cuda"),
            ],
            "modelServer.gpu is 0 but the model server's model.device is cuda",
        ),
    ],
)
def test_impossible_values_fail_at_render_time(helm: str, flags: list[str], message: str) -> None:
    proc = _run([helm, "template", RELEASE, str(CHART), *flags])
    assert proc.returncode != 0
    assert message in proc.stderr


# -- the proxy's configuration -------------------------------------------------------------


def test_configmap_is_a_config_the_proxy_accepts(rendered: Rendered, tmp_path: Path) -> None:
    cfg = rendered.config  # raises ConfigError (one line per problem) if not
    # The file as `serve --config` reads it (its loader also refuses duplicate keys).
    (tmp_path / "config.yaml").write_text(rendered.config_text, encoding="utf-8")
    assert load_config(tmp_path / "config.yaml") == cfg
    assert cfg.listen.host == "0.0.0.0"
    assert cfg.listen.port == rendered.values["containerPort"]
    assert cfg.listen.drain_delay == rendered.values["shutdown"]["drainDelaySeconds"]
    assert cfg.upstream.url == rendered.values["config"]["upstream"]["url"]
    if rendered.tls:
        assert cfg.listen.tls_cert and cfg.listen.tls_key
    else:
        assert cfg.listen.tls_cert is None and cfg.listen.tls_key is None
    assert bool(cfg.listen.client_ca) == bool(rendered.values["tls"]["clientAuth"])
    assert bool(cfg.upstream.ca_file) == bool(rendered.values["upstreamCA"]["enabled"])
    # Credentials are the clients' own (forwarded untouched): none in the config.
    assert "password" not in rendered.config_text.lower()


def test_proxy_reads_the_mounted_configmap(rendered: Rendered) -> None:
    args = rendered.proxy["args"]
    assert args[0] == "serve"  # the image's entrypoint is `rerank-proxy`
    path = args[args.index("--config") + 1]
    assert path == "/etc/rerank-proxy/config.yaml"
    source = _file_source(rendered, path)
    assert source == ("configMap", rendered.one("ConfigMap")["metadata"]["name"], "config.yaml")


def test_env_cannot_override_the_config_files_listen_address(rendered: Rendered) -> None:
    # docker/Dockerfile sets RERANK_PROXY_LISTEN, which wins over the config's listen.host and
    # port; the chart blanks it so the ConfigMap decides.
    env = {e["name"]: e.get("value") for e in rendered.proxy["env"]}
    assert env["RERANK_PROXY_LISTEN"] == ""
    assert env["RERANK_PROXY_CONFIG"] == "/etc/rerank-proxy/config.yaml"
    assert rendered.pod["enableServiceLinks"] is False


def _file_source(
    r: Rendered, path: str, *, pod: dict[str, Any] | None = None, container: Any = None
) -> tuple[str, str, str]:
    """(volume type, its name, the key or sub-path) a file in a container (the proxy's by
    default) comes from, resolved as the kubelet would: the deepest mount that contains it."""
    pod = r.pod if pod is None else pod
    container = r.proxy if container is None else container
    mounts = [
        m
        for m in container["volumeMounts"]
        if posixpath.commonpath([m["mountPath"], path]) == m["mountPath"]
    ]
    assert mounts, f"{path} is on no volume mount"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    rel = posixpath.relpath(path, mount["mountPath"])
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    if "secret" in volume:
        items = {i["path"]: i["key"] for i in volume["secret"].get("items", [])}
        return ("secret", volume["secret"]["secretName"], items.get(rel, rel))
    if "configMap" in volume:
        items = {i["path"]: i["key"] for i in volume["configMap"].get("items", [])}
        return ("configMap", volume["configMap"]["name"], items.get(rel, rel))
    if "persistentVolumeClaim" in volume:
        return ("persistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"], rel)
    if "emptyDir" in volume:
        return ("emptyDir", volume["name"], rel)
    raise AssertionError(f"{path}: unexpected volume {volume}")


def test_secret_mounts_match_the_files_the_config_names(rendered: Rendered) -> None:
    cfg, v = rendered.config, rendered.values
    wanted: dict[str | None, tuple[str, str, str]] = {}
    if v["tls"]["enabled"]:
        secret = v["tls"]["secretName"]
        wanted[cfg.listen.tls_cert] = ("secret", secret, "tls.crt")
        wanted[cfg.listen.tls_key] = ("secret", secret, "tls.key")
        if v["tls"]["clientAuth"]:
            wanted[cfg.listen.client_ca] = ("secret", secret, "ca.crt")
    if v["upstreamCA"]["enabled"]:
        wanted[cfg.upstream.ca_file] = (
            "secret",
            v["upstreamCA"]["secretName"],
            v["upstreamCA"]["key"],
        )
    if rendered.name.startswith("ci"):
        assert len(wanted) == 4
    for path, source in wanted.items():
        assert path is not None and path.startswith("/")
        assert _file_source(rendered, path) == source, path
    for mount in rendered.proxy["volumeMounts"]:
        volume = next(x for x in rendered.pod["volumes"] if x["name"] == mount["name"])
        if "secret" in volume or "configMap" in volume:
            assert mount.get("readOnly") is True, mount


def test_model_lives_on_the_cache_volume(rendered: Rendered) -> None:
    v = rendered.values
    cache = v["model"]["cache"]
    pod, container = rendered.model_pod, rendered.model_container
    (models,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/models"]
    volume = next(x for x in pod["volumes"] if x["name"] == models["name"])
    if cache["type"] == "pvc":
        claim = rendered.one("PersistentVolumeClaim")
        assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        assert claim["spec"]["accessModes"] == cache["pvc"]["accessModes"]
        assert claim["spec"]["resources"]["requests"]["storage"] == cache["pvc"]["size"]
    else:
        assert "emptyDir" in volume and rendered.maybe("PersistentVolumeClaim") is None
    cfg = rendered.server_config if rendered.scaled else rendered.config
    name = cfg.model.name
    if v["model"]["fetch"]["enabled"]:
        assert name == "/models/" + v["model"]["name"].rsplit("/", 1)[-1]
        source = _file_source(rendered, name, pod=pod, container=container)
        assert source[0] == next(iter(volume.keys() - {"name"}))
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["HF_HUB_OFFLINE"] == "1"
        (init,) = pod["initContainers"]
        assert init["name"] == "model-fetch"
        assert {"name": "models", "mountPath": "/models"} in init["volumeMounts"]
    else:
        assert name == v["model"]["name"]
        assert "initContainers" not in pod
    if rendered.scaled:
        # The proxy pods hold no model: no cache volume, no download, no hub settings.
        assert all(m["mountPath"] != "/models" for m in rendered.proxy["volumeMounts"])
        assert "models" not in {x["name"] for x in rendered.pod["volumes"]}
        assert "initContainers" not in rendered.pod
        assert not {"HF_HUB_OFFLINE", "HF_TOKEN"} & {e["name"] for e in rendered.proxy["env"]}


# -- the pod ------------------------------------------------------------------------------


def test_probes_hit_the_admin_paths_with_the_listeners_scheme(rendered: Rendered) -> None:
    c, v = rendered.proxy, rendered.values
    scheme = "HTTPS" if rendered.tls else "HTTP"
    paths = {
        "readinessProbe": f"{ADMIN}/ready",
        "livenessProbe": f"{ADMIN}/health",
        "startupProbe": f"{ADMIN}/health",
    }
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    # The proxy requires a client certificate at the handshake with mutual TLS, and kubelet
    # presents none: a TCP check, unless the values say the proxy exempts its admin paths.
    tcp = v["tls"]["clientAuth"] and v["probes"]["clientAuthProbe"] != "httpGet"
    for probe, path in paths.items():
        if tcp:
            assert "httpGet" not in c[probe], probe
            port = c[probe]["tcpSocket"]["port"]
        else:
            get = c[probe]["httpGet"]
            assert get["path"] == path, probe
            assert get["scheme"] == scheme, probe
            port = get["port"]
        assert ports[port] == rendered.config.listen.port, probe
    service_port = rendered.one("Service")["spec"]["ports"][0]
    assert service_port["targetPort"] in ports
    assert service_port["appProtocol"] == scheme.lower()


def test_prometheus_scrape_annotations(rendered: Rendered) -> None:
    ann = rendered.one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert ann["prometheus.io/path"] == f"{ADMIN}/metrics"
    assert int(ann["prometheus.io/port"]) == rendered.config.listen.port
    assert ann["prometheus.io/scheme"] == ("https" if rendered.tls else "http")
    assert len(ann["checksum/config"]) == 64


def test_every_container_has_requests_and_limits(rendered: Rendered) -> None:
    fetch = rendered.values["model"]["fetch"]["enabled"]
    containers = rendered.pod["containers"] + rendered.pod.get("initContainers", [])
    assert len(containers) == (2 if fetch and not rendered.scaled else 1)
    for deployment in [o for o in rendered.objects if o["kind"] == "Deployment"]:
        pod = deployment["spec"]["template"]["spec"]
        for c in pod["containers"] + pod.get("initContainers", []):
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), (c["name"], kind)
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False


def test_grace_period_outlasts_the_proxys_own_drain(rendered: Rendered) -> None:
    # The proxy drains itself on SIGTERM (readiness 503 for listen.drain_delay, then in-flight
    # requests get the runner's shutdown_timeout), so there is no preStop hook.
    inflight = inspect.signature(make_runner).parameters["shutdown_timeout"].default
    assert rendered.values["shutdown"]["inflightSeconds"] >= inflight
    grace = rendered.pod["terminationGracePeriodSeconds"]
    assert grace > rendered.config.listen.drain_delay + inflight
    assert "lifecycle" not in rendered.proxy


def test_pdb_service_and_hpa_select_the_deployments_pods(rendered: Rendered) -> None:
    deployment = rendered.one("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    pdb = rendered.one("PodDisruptionBudget")["spec"]
    assert pdb["selector"] == {"matchLabels": selector}
    assert ("minAvailable" in pdb) != ("maxUnavailable" in pdb)
    assert rendered.one("Service")["spec"]["selector"] == selector
    hpa = rendered.one("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert "replicas" not in deployment["spec"]  # the HPA owns the count
    assert hpa["minReplicas"] > pdb.get("minAvailable", 0)
    metrics = {m["type"]: m for m in hpa["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    if rendered.values["autoscaling"]["queueDepth"]["enabled"]:
        pods = metrics["Pods"]["pods"]
        assert pods["metric"]["name"] == "rerank_proxy_queue_depth"
        assert pods["target"]["type"] == "AverageValue"
    else:
        assert "Pods" not in metrics
    for spread in rendered.pod.get("topologySpreadConstraints", []):
        assert spread["labelSelector"]["matchLabels"] == selector


def test_each_service_selects_its_own_pods_only(rendered: Rendered) -> None:
    # The proxy's selector (name + instance, immutable since the first release) must not pick
    # the model server's or the Redis' pods: its Service, PDB and HPA would count them.
    deployments = [o for o in rendered.objects if o["kind"] == "Deployment"]
    for service in [o for o in rendered.objects if o["kind"] == "Service"]:
        selector = service["spec"]["selector"]
        picked = [
            d["metadata"]["name"]
            for d in deployments
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert picked == [service["metadata"]["name"]], (service["metadata"]["name"], picked)
        (target,) = [d for d in deployments if d["metadata"]["name"] == picked[0]]
        ports = {
            p["name"]: p["containerPort"]
            for c in target["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])
        }
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, (service["metadata"]["name"], port)


def test_config_checksums_follow_each_configmap(rendered: Rendered) -> None:
    # rollOnConfigChange: each Deployment's checksum is of its own ConfigMap's config.
    pairs = [(rendered.one("Deployment"), rendered.config_text)]
    if rendered.scaled:
        pairs.append((rendered.one("Deployment", MODEL_SERVER), rendered.server_config_text))
    for deployment, text in pairs:
        ann = deployment["spec"]["template"]["metadata"]["annotations"]
        want = hashlib.sha256(text.rstrip("\n").encode()).hexdigest()
        assert ann["checksum/config"] == want, deployment["metadata"]["name"]


def test_container_environment_names_only_config_keys(rendered: Rendered) -> None:
    # A RERANK_PROXY_* variable that names no config key stops the proxy at start-up; the
    # API key's variable must not look like one.
    containers = [rendered.proxy] + ([rendered.server] if rendered.scaled else [])
    for c in containers:
        env = {e["name"]: e.get("value") or "x" for e in c["env"]}
        _, problems = env_overrides(env)
        assert problems == [], (c["name"], problems)


# -- scale-out: the model server, Redis, workers --------------------------------------------


SCALED = sorted(n for n in VALUE_SETS if "scale" in n)


@pytest.fixture(params=SCALED)
def scaled(request: pytest.FixtureRequest, render: Render) -> Rendered:
    r = render(request.param)
    assert r.scaled
    return r


def _port(service: dict[str, Any]) -> dict[str, Any]:
    (port,) = service["spec"]["ports"]
    assert isinstance(port, dict)
    return port


def _container_port(container: dict[str, Any], name: str) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    assert isinstance(port, int)
    return port


def _env_from(container: dict[str, Any], name: str) -> dict[str, Any]:
    (entry,) = [e for e in container["env"] if e["name"] == name]
    assert isinstance(entry, dict)
    return entry


def test_proxy_config_calls_the_model_servers_service(scaled: Rendered) -> None:
    cfg, v = scaled.config, scaled.values
    service = scaled.one("Service", MODEL_SERVER)
    assert cfg.model.backend == "remote"
    remote = cfg.model.remote
    (url,) = remote.urls
    parts = urlsplit(url)
    # The Service's own name, in the release's namespace, and its port.
    assert (parts.scheme, parts.hostname) == ("http", service["metadata"]["name"])
    assert parts.port == _port(service)["port"] == v["modelServer"]["service"]["port"]
    assert parts.path == ""
    assert (remote.api, remote.path) == ("cohere", "/v1/rerank")  # a route the server has
    # The model's name is part of every cache key: a new model never reads old scores.
    assert remote.model == v["model"]["name"]
    # Local-model settings are the model server's; `cuda` here would fail the proxy's preflight.
    assert cfg.model.device == "auto" and cfg.model.compile is False
    assert remote.max_documents <= scaled.server_config.model_server.max_documents
    # The proxy's configured call settings survive the chart's own keys.
    for key, value in (v["config"]["model"].get("remote") or {}).items():
        assert getattr(remote, key) == value, key


def test_model_server_config_is_one_the_server_accepts(scaled: Rendered, tmp_path: Path) -> None:
    cfg, v = scaled.server_config, scaled.values
    (tmp_path / "config.yaml").write_text(scaled.server_config_text, encoding="utf-8")
    assert load_config(tmp_path / "config.yaml") == cfg
    assert cfg.model.backend != "remote"
    assert cfg.listen.host == "0.0.0.0" and cfg.listen.tls_cert is None
    assert cfg.listen.drain_delay == v["shutdown"]["drainDelaySeconds"]
    for key, value in v["modelServer"]["config"]["model"].items():
        assert getattr(cfg.model, key) == value, key
    # It reads its own ConfigMap, not the proxy's.
    args = scaled.server["args"]
    assert args[0] == "model-server"
    path = args[args.index("--config") + 1]
    source = _file_source(scaled, path, pod=scaled.server_pod, container=scaled.server)
    name = scaled.one("ConfigMap", MODEL_SERVER)["metadata"]["name"]
    assert source == ("configMap", name, "config.yaml")
    assert name != scaled.one("ConfigMap")["metadata"]["name"]
    env = {e["name"]: e.get("value") for e in scaled.server["env"]}
    assert env["RERANK_PROXY_LISTEN"] == "" and env["RERANK_PROXY_CONFIG"] == path


def test_model_server_listens_where_its_service_and_probes_point(scaled: Rendered) -> None:
    port = scaled.server_config.listen.port
    assert _container_port(scaled.server, "http") == port
    assert _port(scaled.one("Service", MODEL_SERVER))["targetPort"] == "http"
    paths = {
        "readinessProbe": f"{ADMIN}/ready",
        "livenessProbe": "/health",
        "startupProbe": "/health",
    }
    for probe, path in paths.items():
        get = scaled.server[probe]["httpGet"]
        assert (get["path"], get["scheme"]) == (path, "HTTP"), probe
        assert _container_port(scaled.server, get["port"]) == port, probe
    ann = scaled.one("Deployment", MODEL_SERVER)["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/path"] == f"{ADMIN}/metrics"
    assert int(ann["prometheus.io/port"]) == port
    grace = scaled.server_pod["terminationGracePeriodSeconds"]
    assert grace > scaled.server_config.listen.drain_delay


def test_only_the_model_server_asks_for_a_gpu(scaled: Rendered) -> None:
    ms = scaled.values["modelServer"]
    gpu = ms["gpuResource"]
    for deployment in [o for o in scaled.objects if o["kind"] == "Deployment"]:
        pod = deployment["spec"]["template"]["spec"]
        for c in pod["containers"] + pod.get("initContainers", []):
            res = c["resources"]
            wanted = ms["gpu"] if c["name"] == "model-server" else None
            assert res.get("limits", {}).get(gpu) == wanted, (c["name"], res)
            assert gpu not in res.get("requests", {}), c["name"]
    # Placed on GPU nodes (their taint tolerated, their label selected), the proxy anywhere.
    assert scaled.server_pod["tolerations"] == ms["tolerations"]
    assert scaled.server_pod.get("nodeSelector", {}) == ms["nodeSelector"]
    v = scaled.values
    assert scaled.pod.get("tolerations", []) == v["tolerations"]
    assert scaled.pod.get("nodeSelector", {}) == v["nodeSelector"]
    assert all(t.get("key") != gpu for t in v["tolerations"])  # GPU taints not tolerated
    strategy = scaled.one("Deployment", MODEL_SERVER)["spec"]["strategy"]
    assert (strategy["type"] == "Recreate") == ("rollingUpdate" not in strategy)


def test_the_api_key_reaches_both_sides_from_one_secret(scaled: Rendered) -> None:
    key = scaled.values["modelServer"]["apiKey"]
    proxy_env = scaled.config.model.remote.api_key_env
    server_env = scaled.server_config.model_server.api_key_env
    if not key["secretName"]:
        assert proxy_env is None and server_env is None
        return
    assert proxy_env == server_env == key["env"]
    assert not proxy_env.startswith("RERANK_PROXY_")
    ref = {"secretKeyRef": {"name": key["secretName"], "key": key["key"]}}
    assert _env_from(scaled.proxy, proxy_env)["valueFrom"] == ref
    assert _env_from(scaled.server, server_env)["valueFrom"] == ref
    # Never in a ConfigMap, never a file the server would need mounted.
    assert scaled.config.model.remote.api_key_file is None
    assert scaled.server_config.model_server.api_key_file is None


def test_proxies_share_the_redis_score_cache(scaled: Rendered) -> None:
    url = scaled.config.cache.redis_url
    redis = scaled.values["redis"]
    if not redis["enabled"]:
        assert url == redis["url"] and scaled.maybe("Deployment", REDIS) is None
        return
    service = scaled.one("Service", REDIS)
    parts = urlsplit(url)
    assert (parts.scheme, parts.hostname) == ("redis", service["metadata"]["name"])
    assert parts.port == _port(service)["port"]
    pod = scaled.one("Deployment", REDIS)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert _container_port(container, _port(service)["targetPort"]) == 6379
    args = container["args"]
    # A cache: bounded, evicting, no persistence.
    assert args[args.index("--maxmemory") + 1] == redis["maxmemory"]
    assert args[args.index("--maxmemory-policy") + 1] == "allkeys-lru"
    assert args[args.index("--save") + 1] == "" and args[args.index("--appendonly") + 1] == "no"
    # The model server scores what the proxies' caches (local and shared) missed.
    assert scaled.server_config.cache.redis_url is None


def test_workers_set_listen_workers_and_scale_the_cpu_request(render: Render) -> None:
    r = render("scale")
    v = r.values
    assert r.config.listen.workers == v["workers"] == 4
    cpu = r.proxy["resources"]["requests"]["cpu"]
    assert cpu == str(v["workers"] * int(v["cpuPerWorker"]))
    assert r.proxy["resources"]["limits"]["cpu"] == cpu
    assert render("scale-plain").config.listen.workers == 1


@pytest.mark.parametrize(
    ("flags", "cpu"),
    [
        # The model in the pod: the workers' cores plus the inference threads.
        (["--set", "workers=3", "--set", "cpuPerWorker=500m"], "3500m"),
        # The model in the model server: the workers' cores only.
        (
            [
                "--set",
                "workers=3",
                "--set",
                "cpuPerWorker=500m",
                "--set",
                "modelServer.enabled=true",
            ],
            "1500m",
        ),
        # Without cpuPerWorker the resources are as given.
        (["--set", "workers=3"], "2"),
    ],
)
def test_cpu_per_worker(helm: str, flags: list[str], cpu: str) -> None:
    text = _template(helm, [], *flags)
    (deployment,) = [
        d
        for d in yaml.safe_load_all(text)
        if d and d["kind"] == "Deployment" and COMPONENT not in d["metadata"]["labels"]
    ]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["requests"]["cpu"] == cpu
    assert container["resources"]["limits"]["cpu"] == cpu


def test_config_listen_workers_is_kept_without_the_workers_value(helm: str) -> None:
    text = _template(helm, [], "--set", "config.listen.workers=2")
    (cm,) = [d for d in yaml.safe_load_all(text) if d and d["kind"] == "ConfigMap"]
    assert parse_config(yaml.safe_load(cm["data"]["config.yaml"])).listen.workers == 2


def test_redis_url_from_a_secret_stays_out_of_the_configmap(helm: str) -> None:
    text = _template(helm, [], "--set", "redis.urlSecret.name=redis-url")
    objects = [d for d in yaml.safe_load_all(text) if d]
    (cm,) = [d for d in objects if d["kind"] == "ConfigMap"]
    assert parse_config(yaml.safe_load(cm["data"]["config.yaml"])).cache.redis_url is None
    (deployment,) = [d for d in objects if d["kind"] == "Deployment"]
    (proxy,) = deployment["spec"]["template"]["spec"]["containers"]
    entry = _env_from(proxy, "RERANK_PROXY_CACHE__REDIS_URL")
    assert entry["valueFrom"] == {"secretKeyRef": {"name": "redis-url", "key": "url"}}
    # The proxy reads that variable as cache.redis_url.
    overrides, problems = env_overrides({entry["name"]: "rediss://:pw@cache:6380/0"})
    assert problems == [] and overrides == {"cache": {"redis_url": "rediss://:pw@cache:6380/0"}}


def test_without_autoscaling_the_deployment_sets_replicas(helm: str) -> None:
    text = _template(helm, [], "--set", "autoscaling.enabled=false", "--set", "replicaCount=3")
    objects = [d for d in yaml.safe_load_all(text) if d]
    assert "HorizontalPodAutoscaler" not in {o["kind"] for o in objects}
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    assert deployment["spec"]["replicas"] == 3


# -- the model-fetch initContainer, run for real with a stand-in `hf` -------------------------


@pytest.fixture
def fetch_script(render: Render) -> str:
    r = render("ci")
    (init,) = r.pod["initContainers"]
    assert init["command"][:2] == ["sh", "-ec"]
    assert [m["mountPath"] for m in init["volumeMounts"] if m["name"] == "models"] == ["/models"]
    script: str = init["command"][2]
    assert '"$cli" download "$MODEL_REPO" --local-dir' in script
    return script


def _fake_hf(bin_dir: Path, log: Path, *, complete: bool) -> None:
    """An `hf` that records its arguments and writes what a download of a model leaves."""
    bin_dir.mkdir()
    body = 'mkdir -p "$dir" && echo "{}" > "$dir/config.json"' if complete else 'mkdir -p "$dir"'
    (bin_dir / "hf").write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> "{log}"\n'
        'dir=""; prev=""\n'
        'for a in "$@"; do [ "$prev" = --local-dir ] && dir="$a"; prev="$a"; done\n'
        f"{body}\n",
        encoding="utf-8",
    )
    (bin_dir / "hf").chmod(0o755)


def _run_fetch(script: str, models: Path, bin_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOSTNAME": "pod-1",
        "MODEL_REPO": "mixedbread-ai/mxbai-rerank-xsmall-v1",
        "MODEL_REVISION": "main",
        "MODEL_DIR": "mxbai-rerank-xsmall-v1",
    }
    local = script.replace('"/models/', f'"{models}/')
    assert local != script
    sh = shutil.which("sh") or "/bin/sh"
    return subprocess.run([sh, "-ec", local], capture_output=True, text=True, env=env, timeout=30)


def test_model_fetch_downloads_once_then_skips(fetch_script: str, tmp_path: Path) -> None:
    models, log = tmp_path / "models", tmp_path / "hf.log"
    models.mkdir()
    _fake_hf(tmp_path / "bin", log, complete=True)
    first = _run_fetch(fetch_script, models, tmp_path / "bin")
    assert first.returncode == 0, first.stderr
    assert (models / "mxbai-rerank-xsmall-v1" / "config.json").is_file()
    assert sorted(p.name for p in models.iterdir()) == ["mxbai-rerank-xsmall-v1"]  # no leftovers
    (call,) = log.read_text(encoding="utf-8").splitlines()
    assert call.startswith("download mixedbread-ai/mxbai-rerank-xsmall-v1 --local-dir ")
    assert "--revision main" in call and "--exclude onnx/model_*.onnx" in call
    second = _run_fetch(fetch_script, models, tmp_path / "bin")
    assert second.returncode == 0, second.stderr
    assert "not downloading" in second.stdout
    assert len(log.read_text(encoding="utf-8").splitlines()) == 1


def test_model_fetch_fails_without_config_json(fetch_script: str, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    _fake_hf(tmp_path / "bin", tmp_path / "hf.log", complete=False)
    proc = _run_fetch(fetch_script, models, tmp_path / "bin")
    assert proc.returncode != 0
    assert "no config.json" in proc.stderr
    assert not (models / "mxbai-rerank-xsmall-v1").exists()


# -- NOTES.txt ----------------------------------------------------------------------------


def _notes(helm: str, tmp_path: Path, values: list[Path]) -> str:
    # `helm template` does not render NOTES.txt; render it through `tpl` in a copy.
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "NOTES.txt").rename(chart / "NOTES.src")
    (chart / "templates" / "notes.yaml").write_text(
        'notes: {{ tpl ($.Files.Get "NOTES.src") $ | toJson }}\n', encoding="utf-8"
    )
    text = _template(helm, values, "--show-only", "templates/notes.yaml", chart=chart)
    notes: str = yaml.safe_load(text)["notes"]
    return notes


def test_notes_name_the_service_url_and_warn_about_mtls(helm: str, tmp_path: Path) -> None:
    plain = _notes(helm, tmp_path / "a", [])
    assert f"http://{RELEASE}-rerank-proxy.{NAMESPACE}.svc:9280" in plain
    assert "WARNING" not in plain
    secure = _notes(helm, tmp_path / "b", [CI_VALUES])
    assert f"https://rerank-proxy.{NAMESPACE}.svc:9280" in secure
    assert "tls.clientAuth requires client certificates" in secure
    assert "model server" not in plain + secure and "score cache" not in plain + secure


def test_notes_name_the_model_server_and_the_shared_cache(helm: str, tmp_path: Path) -> None:
    notes = _notes(helm, tmp_path, [CI_SCALE_VALUES])
    assert f"http://{RELEASE}-rerank-proxy-model-server:8080" in notes
    assert f"redis://{RELEASE}-rerank-proxy-redis:6379/0" in notes
    assert "4 worker processes" in notes
    assert "WARNING" not in notes  # one model server pod (Recreate) on the RWO claim


def _iter_strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from _iter_strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _iter_strings(v)


def test_no_template_leftovers_in_rendered_objects(rendered: Rendered) -> None:
    for obj in rendered.objects:
        for s in _iter_strings(obj):
            assert "{{" not in s and "<no value>" not in s and "%!" not in s, (obj["kind"], s)
