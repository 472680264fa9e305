"""Tests for proxy.cli: exit codes, problem lines on stderr, flags and env over the file."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from proxy.cli import build_config, main
from proxy.config import ConfigError, ListenConfig

BAD_YAML = "listen: {port: 70000}\ndefaults: {window: 0}\n"
BAD_LINES = [
    "proxy.yaml: listen.port: must be <= 65535",
    "proxy.yaml: defaults.window: must be >= 1",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No RERANK_PROXY_* variable of the caller's shell leaks in; run in a scratch dir."""
    for name in list(os.environ):
        if name.startswith("RERANK_PROXY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def _file(text: str, name: str = "proxy.yaml") -> str:
    Path(name).write_text(text, encoding="utf-8")
    return name


def _args(**given: Any) -> argparse.Namespace:
    names = ("config", "listen", "upstream", "model", "backend", "device", "log_level")
    values: dict[str, Any] = dict.fromkeys((*names, "log_format"))
    values.update(given)
    return argparse.Namespace(**values)


# -- check-config and serve: exit codes and messages -----------------------------------


def test_check_config_ok(capsys: pytest.CaptureFixture[str]) -> None:
    name = _file("defaults: {window: 20}\n")
    assert main(["check-config", name]) == 0
    out, err = capsys.readouterr()
    assert (out, err) == ("proxy.yaml: ok\n", "")


@pytest.mark.parametrize(
    ("argv", "lines"),
    [
        (["check-config", "proxy.yaml"], BAD_LINES),
        (["check-config", "absent.yaml"], ["absent.yaml: cannot read: No such file or directory"]),
        (["serve", "--config", "proxy.yaml"], BAD_LINES),
        (
            ["serve", "--config", "absent.yaml"],
            ["absent.yaml: cannot read: No such file or directory"],
        ),
        (["serve", "--listen", "nope"], ["--listen: expected HOST:PORT, got 'nope'"]),
        (["serve", "--listen", "host:"], ["--listen: expected HOST:PORT, got 'host:'"]),
        (["serve", "--listen", ":9280"], ["--listen: expected HOST:PORT, got ':9280'"]),
        (["serve", "--listen", "h:80x"], ["--listen: expected HOST:PORT, got 'h:80x'"]),
        (
            ["serve", "--upstream", "ftp://h"],
            ["--upstream: must be an http:// or https:// URL, got 'ftp://h'"],
        ),
        (
            ["serve", "--upstream", "localhost:9200"],
            ["--upstream: must be an http:// or https:// URL, got 'localhost:9200'"],
        ),
        (
            ["serve", "--backend", "gpu"],
            [
                "<flags>: model.backend: must be one of 'auto', 'torch', 'torch-fp32', 'onnx',"
                " 'onnx-int8', 'torch-bf16', 'openvino', 'openvino-bf16', 'fake',"
                " 'remote', got 'gpu'"
            ],
        ),
        (
            ["serve", "--device", "tpu"],
            ["<flags>: model.device: must be one of 'auto', 'cpu', 'cuda', got 'tpu'"],
        ),
        (
            ["serve", "--log-level", "loud"],
            ["<flags>: log_level: must be one of 'DEBUG', 'INFO', 'WARNING', 'ERROR', got 'LOUD'"],
        ),
        (
            ["serve", "--log-format", "xml"],
            ["<flags>: log_format: must be one of 'text', 'json', got 'xml'"],
        ),
    ],
    ids=[
        "check-bad-file",
        "check-missing-file",
        "serve-bad-file",
        "serve-missing-file",
        "listen-no-port",
        "listen-empty-port",
        "listen-empty-host",
        "listen-port-not-a-number",
        "upstream-scheme",
        "upstream-no-scheme",
        "backend",
        "device",
        "log-level",
        "log-format",
    ],
)
def test_config_problems_exit_2_with_the_lines_on_stderr(
    capsys: pytest.CaptureFixture[str], argv: list[str], lines: list[str]
) -> None:
    _file(BAD_YAML)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == lines


def test_serve_bad_config_from_env_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RERANK_PROXY_CONFIG", _file(BAD_YAML))
    assert main(["serve"]) == 2
    assert capsys.readouterr().err.splitlines() == BAD_LINES


def test_config_table_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config-table"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| key | type | default | description |\n")
    assert "| `defaults.window` |" in out


@pytest.mark.parametrize(
    ("content", "lines"),
    [
        (b"defaults: {window: 0}\n", ["proxy.yaml: defaults.window: must be >= 1"]),
        (
            b"a: [1, 2\n",
            [
                "proxy.yaml: invalid YAML (line 2, column 1): expected ',' or ']',"
                " but got '<stream end>'"
            ],
        ),
        (b"\xff\xfe\x00", ["proxy.yaml: cannot read: not UTF-8 text (byte 0)"]),
    ],
    ids=["invalid-value", "yaml-syntax", "not-utf8"],
)
def test_python_m_proxy_prints_no_traceback(content: bytes, lines: list[str]) -> None:
    """The real command, in a fresh interpreter: status 2 and only the problem lines."""
    Path("proxy.yaml").write_bytes(content)
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RERANK_PROXY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "check-config", "proxy.yaml"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr.splitlines()) == (2, "", lines)


# -- build_config: file, then environment, then flags --------------------------------

FILE = (
    "listen: {host: 10.0.0.1, port: 9000}\n"
    "upstream: {url: 'http://file:9200', read_timeout: 12.5}\n"
    "model: {name: file-model, backend: torch, device: cpu, max_length: 256}\n"
    "log_level: WARNING\n"
    "log_format: json\n"
)

# (flag attribute, env name, env value, flag value, getter, from file, from env, from flag)
OVERRIDES: list[tuple[str, str, str, str, Any, Any, Any, Any]] = [
    (
        "listen",
        "LISTEN",
        "0.0.0.0:9281",
        "[::1]:9282",
        lambda c: c.listen,
        ListenConfig("10.0.0.1", 9000),
        ListenConfig("0.0.0.0", 9281),
        ListenConfig("::1", 9282),
    ),
    (
        "upstream",
        "UPSTREAM",
        "https://env:9200",
        "http://flag:9201",
        lambda c: c.upstream.url,
        "http://file:9200",
        "https://env:9200",
        "http://flag:9201",
    ),
    (
        "model",
        "MODEL",
        "env-model",
        "flag-model",
        lambda c: c.model.name,
        "file-model",
        "env-model",
        "flag-model",
    ),
    ("backend", "BACKEND", "onnx", "fake", lambda c: c.model.backend, "torch", "onnx", "fake"),
    ("device", "DEVICE", "cuda", "auto", lambda c: c.model.device, "cpu", "cuda", "auto"),
    (
        "log_level",
        "LOG_LEVEL",
        "debug",
        "error",
        lambda c: c.log_level,
        "WARNING",
        "DEBUG",
        "ERROR",
    ),
    ("log_format", "LOG_FORMAT", "text", "json", lambda c: c.log_format, "json", "text", "json"),
]
OVERRIDE_IDS = [c[0] for c in OVERRIDES]


@pytest.mark.parametrize(
    ("attr", "env", "env_value", "flag_value", "get", "from_file", "from_env", "from_flag"),
    OVERRIDES,
    ids=OVERRIDE_IDS,
)
def test_file_then_env_then_flag(
    monkeypatch: pytest.MonkeyPatch,
    attr: str,
    env: str,
    env_value: str,
    flag_value: str,
    get: Any,
    from_file: Any,
    from_env: Any,
    from_flag: Any,
) -> None:
    name = _file(FILE)
    assert get(build_config(_args(config=name))) == from_file
    monkeypatch.setenv(f"RERANK_PROXY_{env}", env_value)
    assert get(build_config(_args(config=name))) == from_env
    assert get(build_config(_args(config=name, **{attr: flag_value}))) == from_flag


@pytest.mark.parametrize(
    ("attr", "flag_value", "get"),
    [(c[0], c[2], c[4]) for c in OVERRIDES],
    ids=OVERRIDE_IDS,
)
def test_an_override_changes_only_its_own_setting(attr: str, flag_value: str, get: Any) -> None:
    base = build_config(_args(config=_file(FILE)))
    changed = build_config(_args(config="proxy.yaml", **{attr: flag_value}))
    assert get(changed) != get(base)
    # the rest of the file survives (e.g. an override of model.name keeps max_length)
    assert changed.model.max_length == 256
    assert changed.upstream.read_timeout == 12.5
    for other, *_, other_get, _, _, _ in OVERRIDES:
        assert (other_get(base) == other_get(changed)) == (other != attr), other


def test_config_file_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RERANK_PROXY_CONFIG", _file(FILE))
    assert build_config(_args()).model.name == "file-model"


def test_no_file_gives_the_defaults() -> None:
    cfg = build_config(_args())
    assert (cfg.listen.port, cfg.upstream.url) == (9280, "http://127.0.0.1:9200")


def test_empty_env_values_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RERANK_PROXY_UPSTREAM", "")
    monkeypatch.setenv("RERANK_PROXY_CONFIG", "")
    assert build_config(_args()).upstream.url == "http://127.0.0.1:9200"


def test_bad_env_value_is_reported_like_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RERANK_PROXY_LISTEN", "nope")
    with pytest.raises(ConfigError) as info:
        build_config(_args())
    assert info.value.problems == ["--listen: expected HOST:PORT, got 'nope'"]


def test_listen_port_out_of_range_is_a_config_problem() -> None:
    with pytest.raises(ConfigError):
        build_config(_args(listen="127.0.0.1:70000"))


# -- every config key from the environment ---------------------------------------------

ENV_KEYS = [
    ("RERANK_PROXY_UPSTREAM__CA_FILE", "/etc/ca.pem", lambda c: c.upstream.ca_file, "/etc/ca.pem"),
    ("RERANK_PROXY_UPSTREAM__READ_TIMEOUT", "7.5", lambda c: c.upstream.read_timeout, 7.5),
    ("RERANK_PROXY_LISTEN__DRAIN_DELAY", "0", lambda c: c.listen.drain_delay, 0.0),
    ("RERANK_PROXY_MODEL__MAX_GROUP", "32", lambda c: c.model.max_group, 32),
    (
        "RERANK_PROXY_DEFAULTS__FIELDS",
        "[title, body]",
        lambda c: c.defaults.fields,
        ("title", "body"),
    ),
    ("RERANK_PROXY_DEFAULTS__ENABLED", "false", lambda c: c.defaults.enabled, False),
    ("RERANK_PROXY_ACCESS_LOG", "false", lambda c: c.access_log, False),
    (
        "RERANK_PROXY_INDICES",
        "[{match: [books], window: 7}]",
        lambda c: (c.indices[0].match, c.indices[0].window),
        (("books",), 7),
    ),
]


@pytest.mark.parametrize(
    ("name", "value", "get", "expected"), ENV_KEYS, ids=[k[0] for k in ENV_KEYS]
)
def test_every_config_key_has_an_environment_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, get: Any, expected: Any
) -> None:
    path = _file("upstream: {read_timeout: 12.5}\ndefaults: {window: 9}\n")
    monkeypatch.setenv(name, value)
    cfg = build_config(_args(config=path))
    assert get(cfg) == expected
    assert cfg.defaults.window == 9  # the rest of the file stays


def test_environment_keys_override_the_file_and_inherit_like_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = _file("indices: [{match: [books]}]\n")
    monkeypatch.setenv("RERANK_PROXY_DEFAULTS__WINDOW", "11")
    assert build_config(_args(config=path)).indices[0].window == 11  # rules inherit defaults


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        (
            "RERANK_PROXY_UPSTREAM__URI",
            "http://x:9200",
            "RERANK_PROXY_UPSTREAM__URI: names no config key"
            " (did you mean RERANK_PROXY_UPSTREAM__URL?); the rule is RERANK_PROXY_SECTION__KEY",
        ),
        (
            "RERANK_PROXY_NOPE",
            "1",
            "RERANK_PROXY_NOPE: names no config key; the rule is RERANK_PROXY_SECTION__KEY",
        ),
        (
            "RERANK_PROXY_MODEL__MAX_GROUP",
            "-1",
            "<environment>: model.max_group: must be >= 0",
        ),
        (
            "RERANK_PROXY_LISTEN__TLS_CERT",
            "/a.pem",
            "<environment>: listen.tls_key: listen.tls_cert and listen.tls_key go together",
        ),
    ],
    ids=["typo", "unknown", "bad-value", "cross-check"],
)
def test_environment_problems_are_one_line_each(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    name: str,
    value: str,
    problem: str,
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        build_config(_args())
    assert info.value.problems == [problem]
    assert main(["serve"]) == 2
    assert capsys.readouterr().err == problem + "\n"


def test_tooling_variables_are_not_config_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("STATE", "CACHE", "SHARED", "VENV", "HELM"):
        monkeypatch.setenv(f"RERANK_PROXY_{name}", "/tmp/x")
    build_config(_args())


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from proxy import __version__

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"rerank-proxy {__version__}\n"


STARTUP_MISTAKES = [
    ("missing-ca", "upstream: {ca_file: /nonexistent/ca.pem}\n", "upstream.ca_file: cannot read"),
    (
        "missing-cert",
        "listen: {tls_cert: /nonexistent/c.pem, tls_key: /nonexistent/k.pem}\n",
        "listen.tls_cert: cannot read",
    ),
    (
        "bad-host",
        "upstream: {url: 'http://nonexistent.invalid:9200'}\n",
        "upstream.url: cannot resolve",
    ),
    ("cuda", "model: {device: cuda, backend: onnx}\n", "model.device: cuda requested but no CUDA"),
    ("model-path", "model: {name: ./no/such/model}\n", "model.name: no model directory at"),
]


@pytest.mark.parametrize(
    ("text", "start"), [c[1:] for c in STARTUP_MISTAKES], ids=[c[0] for c in STARTUP_MISTAKES]
)
def test_startup_mistakes_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, text: str, start: str
) -> None:
    import proxy.preflight

    monkeypatch.setattr(proxy.preflight, "cuda_device_count", lambda: 0)
    name = _file(text)
    assert main(["check-config", name]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"{name}: {start}"), err
    assert all(line.startswith(f"{name}: ") for line in err)  # one line per problem
    assert main(["serve", "--config", name]) == 2  # before any model loads
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(start) and not any("Traceback" in line for line in err), err


def test_port_in_use_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        name = _file(f"listen: {{host: 127.0.0.1, port: {port}}}\nmodel: {{backend: fake}}\n")
        assert main(["serve", "--config", name]) == 2
    assert capsys.readouterr().err == (
        f"listen.port: cannot listen on 127.0.0.1:{port}: address already in use\n"
    )
