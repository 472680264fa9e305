"""`preflight(cfg, bind=...)`: one `KEY: message` line per problem in what the config names.

Certificates come from `trustme` (a throwaway CA); a busy port is a socket the test holds
open; an unresolvable host is under `.invalid`, which no resolver answers (RFC 6761). The
resolver's own reason differs between systems, so expected lines name it `{gai}` and the
test fills in what this machine's resolver says.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy import preflight as preflight_module
from proxy.config import Config, parse_config
from proxy.preflight import preflight

trustme = pytest.importorskip("trustme")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of PEM files: a CA, two certificates and keys, an encrypted key, junk."""
    from cryptography.hazmat.primitives import serialization

    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    other = ca.issue_cert("other.example")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    server.cert_chain_pems[0].write_to_path(str(d / "cert.pem"))
    server.private_key_pem.write_to_path(str(d / "key.pem"))
    server.private_key_and_cert_chain_pem.write_to_path(str(d / "both.pem"))
    other.private_key_pem.write_to_path(str(d / "other.key"))
    key = serialization.load_pem_private_key(server.private_key_pem.bytes(), None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    (d / "encrypted.key").write_bytes(encrypted)
    (d / "junk.pem").write_text("not a PEM file\n", encoding="ascii")
    (d / "folder").mkdir()
    return d


@pytest.fixture(scope="module")
def gai() -> str:
    """What this machine's resolver says about a name that does not exist."""
    try:
        socket.getaddrinfo("nonexistent.invalid", 80)
    except socket.gaierror as exc:
        return str(exc.strerror)
    pytest.skip("this resolver answers for .invalid names")


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port with a listening socket on 127.0.0.1 (as a running server holds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def config(raw: dict[str, Any], d: Path) -> Config:
    """The test's config, with `@name` in any string value meaning the file `d/name`, and
    a listen port of 0 unless it says otherwise (so nothing here depends on 9280 being free)."""

    def fill(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        if isinstance(value, str) and value.startswith("@"):
            return str(d / value[1:])
        return value

    raw = fill(raw)
    raw.setdefault("listen", {}).setdefault("port", 0)
    return parse_config(raw, "<test>")


def expand(line: str, d: Path, gai: str = "") -> str:
    return line.replace("@", f"{d}/").replace("{gai}", gai)


# --- TLS files ------------------------------------------------------------------------------

CHAIN = "do not load as a certificate chain and its key"

TLS_CASES: list[tuple[str, dict[str, Any], list[str]]] = [
    (
        "listen: a valid chain, key and client CA",
        {"listen": {"tls_cert": "@cert.pem", "tls_key": "@key.pem", "client_ca": "@ca.pem"}},
        [],
    ),
    (
        "listen: the certificate file is missing",
        {"listen": {"tls_cert": "@missing.pem", "tls_key": "@key.pem"}},
        ["listen.tls_cert: cannot read '@missing.pem': No such file or directory"],
    ),
    (
        "listen: the key file is missing",
        {"listen": {"tls_cert": "@cert.pem", "tls_key": "@missing.key"}},
        ["listen.tls_key: cannot read '@missing.key': No such file or directory"],
    ),
    (
        "listen: both files are missing",
        {"listen": {"tls_cert": "@missing.pem", "tls_key": "@missing.key"}},
        [
            "listen.tls_cert: cannot read '@missing.pem': No such file or directory",
            "listen.tls_key: cannot read '@missing.key': No such file or directory",
        ],
    ),
    (
        "listen: the certificate is a directory",
        {"listen": {"tls_cert": "@folder", "tls_key": "@key.pem"}},
        ["listen.tls_cert: cannot read '@folder': Is a directory"],
    ),
    (
        "listen: the key belongs to another certificate",
        {"listen": {"tls_cert": "@cert.pem", "tls_key": "@other.key"}},
        [
            f"listen.tls_cert: '@cert.pem' and '@other.key' {CHAIN}:"
            " [X509: KEY_VALUES_MISMATCH] key values mismatch"
        ],
    ),
    (
        "listen: the key is not PEM",
        {"listen": {"tls_cert": "@cert.pem", "tls_key": "@junk.pem"}},
        [f"listen.tls_cert: '@cert.pem' and '@junk.pem' {CHAIN}: [SSL] PEM lib"],
    ),
    (
        "listen: the certificate is not PEM",
        {"listen": {"tls_cert": "@junk.pem", "tls_key": "@key.pem"}},
        [f"listen.tls_cert: '@junk.pem' and '@key.pem' {CHAIN}: [SSL] PEM lib"],
    ),
    (
        "listen: the key is encrypted (no terminal prompt)",
        {"listen": {"tls_cert": "@cert.pem", "tls_key": "@encrypted.key"}},
        [
            "listen.tls_key: the private key in '@encrypted.key' is encrypted; give an"
            " unencrypted key (`openssl pkey -in KEY -out NEW`)"
        ],
    ),
    (
        "listen: the client CA is missing",
        {"listen": {"tls_cert": "@cert.pem", "tls_key": "@key.pem", "client_ca": "@nope.pem"}},
        ["listen.client_ca: cannot read '@nope.pem': No such file or directory"],
    ),
    (
        "listen: the client CA holds no certificate",
        {"listen": {"tls_cert": "@cert.pem", "tls_key": "@key.pem", "client_ca": "@junk.pem"}},
        [
            "listen.client_ca: '@junk.pem' does not load as a CA bundle (PEM):"
            " [X509: NO_CERTIFICATE_OR_CRL_FOUND] no certificate or crl found"
        ],
    ),
    (
        "upstream: a valid CA and client certificate",
        {
            "upstream": {
                "url": "https://127.0.0.1:9200",
                "ca_file": "@ca.pem",
                "client_cert": "@cert.pem",
                "client_key": "@key.pem",
            }
        },
        [],
    ),
    (
        "upstream: a client certificate and its key in one file",
        {"upstream": {"client_cert": "@both.pem"}},
        [],
    ),
    (
        "upstream: the CA file is missing",
        {"upstream": {"ca_file": "@missing-ca.pem"}},
        ["upstream.ca_file: cannot read '@missing-ca.pem': No such file or directory"],
    ),
    (
        "upstream: the CA file is junk",
        {"upstream": {"ca_file": "@junk.pem"}},
        [
            "upstream.ca_file: '@junk.pem' does not load as a CA bundle (PEM):"
            " [X509: NO_CERTIFICATE_OR_CRL_FOUND] no certificate or crl found"
        ],
    ),
    (
        "upstream: the client key is missing",
        {"upstream": {"client_cert": "@cert.pem", "client_key": "@missing.key"}},
        ["upstream.client_key: cannot read '@missing.key': No such file or directory"],
    ),
    (
        "upstream: the client key does not match",
        {"upstream": {"client_cert": "@cert.pem", "client_key": "@other.key"}},
        [
            f"upstream.client_cert: '@cert.pem' and '@other.key' {CHAIN}:"
            " [X509: KEY_VALUES_MISMATCH] key values mismatch"
        ],
    ),
    (
        "upstream: a client certificate without its key",
        {"upstream": {"client_cert": "@cert.pem"}},
        [
            "upstream.client_cert: '@cert.pem' does not load as a certificate chain and its"
            " key: [SSL] PEM lib"
        ],
    ),
]


@pytest.mark.parametrize(
    ("raw", "expected"), [c[1:] for c in TLS_CASES], ids=[c[0] for c in TLS_CASES]
)
def test_tls_files(raw: dict[str, Any], expected: list[str], pki: Path) -> None:
    got = preflight(config(raw, pki), bind=False)
    assert got == [expand(line, pki) for line in expected]


# --- hosts and the port ---------------------------------------------------------------------


def test_free_port_binds_and_is_released() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cfg = parse_config({"listen": {"port": port}}, "<test>")
    assert preflight(cfg, bind=True) == []
    with socket.socket() as again:  # preflight did not keep it
        again.bind(("127.0.0.1", port))


def test_busy_port(busy_port: int) -> None:
    cfg = parse_config({"listen": {"host": "127.0.0.1", "port": busy_port}}, "<test>")
    expected = f"listen.port: cannot listen on 127.0.0.1:{busy_port}: address already in use"
    assert preflight(cfg, bind=True) == [expected]
    # check-config does not bind: the proxy it checks for may be the one listening.
    assert preflight(cfg, bind=False) == []


def test_port_zero_is_always_free() -> None:
    assert preflight(parse_config({"listen": {"port": 0}}, "<test>"), bind=True) == []


def test_address_not_on_this_machine() -> None:
    # 192.0.2.0/24 is TEST-NET-1 (RFC 5737): no interface of a real machine has it.
    cfg = parse_config({"listen": {"host": "192.0.2.1", "port": 9280}}, "<test>")
    expected = "listen.host: cannot listen on 192.0.2.1:9280: cannot assign requested address"
    assert preflight(cfg, bind=True) == [expected]


HOST_CASES: list[tuple[str, dict[str, Any], list[str]]] = [
    ("defaults resolve", {}, []),
    ("localhost", {"listen": {"host": "localhost"}, "upstream": {"url": "http://localhost"}}, []),
    (
        "listen host does not resolve",
        {"listen": {"host": "nonexistent.invalid"}},
        ["listen.host: cannot resolve 'nonexistent.invalid': {gai}"],
    ),
    (
        "upstream host does not resolve",
        {"upstream": {"url": "http://elasticsearhc.invalid:9200"}},
        ["upstream.url: cannot resolve host 'elasticsearhc.invalid': {gai}"],
    ),
    (
        "a host name with a label longer than DNS allows",
        {"upstream": {"url": f"http://{'a' * 64}.example"}},
        [
            f"upstream.url: cannot resolve host '{'a' * 64}.example': encoding with 'idna'"
            " codec failed (UnicodeError: label empty or too long)"
        ],
    ),
    (
        "upstream with credentials and a path",
        {"upstream": {"url": "https://user:pw@nonexistent.invalid/es/"}},
        ["upstream.url: cannot resolve host 'nonexistent.invalid': {gai}"],
    ),
]


@pytest.mark.parametrize(
    ("raw", "expected"), [c[1:] for c in HOST_CASES], ids=[c[0] for c in HOST_CASES]
)
def test_host_names(raw: dict[str, Any], expected: list[str], gai: str, tmp_path: Path) -> None:
    got = preflight(config(raw, tmp_path), bind=False)
    assert got == [expand(line, tmp_path, gai) for line in expected]


# --- the model ------------------------------------------------------------------------------


def model_dir(path: Path, config_json: dict[str, Any] | None) -> None:
    path.mkdir(parents=True)
    if config_json is not None:
        (path / "config.json").write_text(json.dumps(config_json), encoding="utf-8")


NLI = {"id2label": {"0": "contradiction", "1": "entailment", "2": "neutral"}}
NLI_LABELS = "3 labels (contradiction, entailment, neutral)"

MODEL_CASES: list[tuple[str, dict[str, Any], list[str]]] = [
    ("a hub id is not checked here", {"name": "org/name"}, []),
    ("the default hub id", {}, []),
    (
        "a relative path that does not exist",
        {"name": "./models/x"},
        ["model.name: no model directory at './models/x' (a path: hub ids look like 'org/name')"],
    ),
    (
        "an absolute path that does not exist",
        {"name": "@nowhere"},
        ["model.name: no model directory at '@nowhere' (a path: hub ids look like 'org/name')"],
    ),
    (
        "two slashes cannot be a hub id",
        {"name": "models/org/x"},
        ["model.name: no model directory at 'models/org/x' (a path: hub ids look like 'org/name')"],
    ),
    (
        "dir/name under an existing local directory",
        {"name": "models/y"},
        ["model.name: no model directory at 'models/y' (a path: hub ids look like 'org/name')"],
    ),
    (
        "a home-relative path",
        {"name": "~/no-such-model-dir"},
        [
            "model.name: no model directory at '~/no-such-model-dir' ('~' is not expanded:"
            " write the full path)"
        ],
    ),
    (
        "a file, not a directory",
        {"name": "@models/file.bin"},
        ["model.name: '@models/file.bin' is a file, not a model directory"],
    ),
    (
        "a directory without config.json",
        {"name": "@models/empty"},
        ["model.name: '@models/empty' is not a model directory: it has no config.json"],
    ),
    ("a single-logit model directory", {"name": "@models/single"}, []),
    (
        "a three-label model",
        {"name": "@models/nli"},
        [
            f"model.name: model has {NLI_LABELS}: it is not a single-logit cross-encoder; set"
            " model.label to the index of the relevance logit if you really mean it"
        ],
    ),
    ("a three-label model with model.label", {"name": "@models/nli", "label": 2}, []),
    (
        "model.label out of range",
        {"name": "@models/nli", "label": 3},
        [f"model.label: model.label is 3, but the model has {NLI_LABELS}: it must be 0 to 2"],
    ),
    (
        "a checkpoint without a classification head",
        {"name": "@models/base"},
        [
            "model.name: model checkpoint has no classification head weights (no"
            " classifier.*, score.*, classification_head.*, logits_proj.* tensor in"
            " model.safetensors): it is a base model, not a trained cross-encoder; use a"
            " model trained for reranking (such as mixedbread-ai/mxbai-rerank-xsmall-v1),"
            " or fine-tune this one first"
        ],
    ),
    ("the fake backend loads no model", {"name": "./models/x", "backend": "fake"}, []),
]


def safetensors_file(path: Path, names: list[str]) -> None:
    """A header-only safetensors file naming zero-size tensors."""
    header = {n: {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for n in names}
    raw = json.dumps({"__metadata__": {"format": "pt"}, **header}).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw)


@pytest.mark.parametrize(
    ("model", "expected"), [c[1:] for c in MODEL_CASES], ids=[c[0] for c in MODEL_CASES]
)
def test_model(
    model: dict[str, Any], expected: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    models = tmp_path / "models"
    models.mkdir()
    (models / "file.bin").write_bytes(b"")
    model_dir(models / "empty", None)
    model_dir(models / "single", {"id2label": {"0": "LABEL_0"}})
    model_dir(models / "nli", NLI)
    model_dir(models / "base", {"num_labels": 1})
    safetensors_file(models / "base" / "model.safetensors", ["deberta.embeddings.weight"])
    safetensors_file(models / "single" / "model.safetensors", ["m.w", "classifier.weight"])
    got = preflight(config({"model": model}, tmp_path), bind=False)
    assert got == [expand(line, tmp_path) for line in expected]


@pytest.mark.parametrize(("devices", "expected"), [(0, 1), (1, 0)])
def test_cuda_requested(devices: int, expected: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preflight_module, "cuda_device_count", lambda: devices)
    cfg = parse_config({"model": {"device": "cuda"}}, "<test>")
    lines = ["model.device: cuda requested but no CUDA device is visible"][:expected]
    assert preflight(cfg, bind=False) == lines
    # auto falls back to the CPU: nothing to report
    assert preflight(parse_config({}, "<test>"), bind=False) == []


def test_every_problem_is_reported_at_once(
    pki: Path, busy_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(preflight_module, "cuda_device_count", lambda: 0)
    raw = {
        "listen": {"tls_cert": "@missing.pem", "tls_key": "@key.pem", "port": busy_port},
        "upstream": {"url": "http://nonexistent.invalid:9200", "ca_file": "@junk.pem"},
        "model": {"name": "@no-model", "device": "cuda"},
    }
    keys = [line.split(":", 1)[0] for line in preflight(config(raw, pki), bind=True)]
    assert keys == [
        "listen.tls_cert",
        "listen.port",
        "upstream.url",
        "upstream.ca_file",
        "model.name",
        "model.device",
    ]


class FakeSocket:
    """A socket whose `bind` fails with `errno` (what the test cannot make a real one do:
    this test runs as root, where ports below 1024 bind)."""

    def __init__(self, err: int | None) -> None:
        self.err = err

    def __enter__(self) -> FakeSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def setsockopt(self, *args: object) -> None:
        pass

    def bind(self, address: object) -> None:
        if self.err is not None:
            raise OSError(self.err, os.strerror(self.err))


@pytest.mark.parametrize(
    ("err", "expected"),
    [
        (errno.EACCES, "listen.port: cannot listen on 127.0.0.1:80: permission denied"),
        (errno.EADDRINUSE, "listen.port: cannot listen on 127.0.0.1:80: address already in use"),
        (
            errno.EADDRNOTAVAIL,
            "listen.host: cannot listen on 127.0.0.1:80: cannot assign requested address",
        ),
        (errno.EINVAL, "listen.host: cannot listen on 127.0.0.1:80: invalid argument"),
        (
            "no socket",
            "listen.host: cannot listen on 127.0.0.1:80: address family not supported by protocol",
        ),
        (None, None),
    ],
)
def test_bind_errors(
    err: int | str | None, expected: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake_socket(*args: object) -> FakeSocket:
        if err == "no socket":
            raise OSError(errno.EAFNOSUPPORT, os.strerror(errno.EAFNOSUPPORT))
        return FakeSocket(err if isinstance(err, int) else None)

    monkeypatch.setattr(preflight_module.socket, "socket", fake_socket)
    cfg = parse_config({"listen": {"host": "127.0.0.1", "port": 80}}, "<test>")
    assert preflight(cfg, bind=True) == ([expected] if expected else [])


def test_ipv6_address_is_bracketed(busy_port: int) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("::1", 0))
            sock.listen()
            port = sock.getsockname()[1]
            cfg = parse_config({"listen": {"host": "::1", "port": port}}, "<test>")
            got = preflight(cfg, bind=True)
    except OSError:
        pytest.skip("::1 is not configured here")
    assert got == [f"listen.port: cannot listen on [::1]:{port}: address already in use"]


def test_values_load_config_rejects_are_left_to_it() -> None:
    # A Config built in code skips load_config's checks; preflight does not report them twice.
    cfg = parse_config({}, "<test>")
    for url in ("http://h:99999", "http:///no-host"):
        bad = dataclasses.replace(cfg, upstream=dataclasses.replace(cfg.upstream, url=url))
        assert preflight(bad, bind=False) == []
    keyless = dataclasses.replace(cfg, listen=dataclasses.replace(cfg.listen, tls_key="/x.key"))
    assert preflight(keyless, bind=False) == []


@pytest.mark.parametrize(
    ("remote", "expected"),
    [
        ({}, ["model.remote.urls: backend remote needs at least one server URL"]),
        (
            {"urls": ["http://127.0.0.1:1"], "api_key_env": "K", "api_key_file": "/k"},
            ["model.remote.api_key_file: set api_key_env or api_key_file, not both"],
        ),
        ({"urls": ["http://127.0.0.1:1"]}, []),  # no local model directory is looked for
    ],
    ids=["no-urls", "two-keys", "ok"],
)
def test_remote_backend_checks(remote: dict[str, object], expected: list[str]) -> None:
    from proxy.config import parse_config

    cfg = parse_config({"model": {"backend": "remote", "name": "./nowhere", "remote": remote}})
    assert [p for p in preflight(cfg, bind=False) if p.startswith("model.")] == expected
