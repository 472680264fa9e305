"""Table-driven tests for proxy.config: validation messages, inheritance, rule resolution."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import pytest

from proxy.config import (
    Config,
    ConfigError,
    RuleConfig,
    config_table,
    load_config,
    parse_config,
    resolve_rule,
    rule_text_fields,
    split_targets,
    template_fields,
)

KNOWN_TOP = (
    "access_log, cache, compare, defaults, indices, listen, log_format, log_level, model,"
    " model_server, shadow, upstream"
)
KNOWN_LISTEN = (
    "body_timeout, client_ca, drain_delay, header_timeout, host, keepalive_timeout,"
    " max_connections, port, reuse_port, send_timeout, tls_cert, tls_key, workers"
)
KNOWN_UPSTREAM = (
    "ca_file, client_cert, client_key, connect_timeout, max_buffer_bytes, max_connections,"
    " max_search_body_bytes, pool_timeout, probe_interval, read_timeout, url, verify_tls"
)
KNOWN_MODEL = (
    "backend, batch_size, batch_wait_ms, cache_size, compile, device, label, max_group,"
    " max_length, max_queue, name, remote, threads"
)
KNOWN_RULE = (
    "blend_weight, enabled, expose_engine_score, fields, leading_words, match, max_length,"
    " max_passages, min_score, mode, passage_stride, passage_words, passages, query_param,"
    " query_path, sample, score_mode, template, timeout_ms, use_highlight, window"
)


@pytest.fixture
def write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> typing.Callable[[str], str]:
    """Write `proxy.yaml` in a temporary working directory; return the relative name."""
    monkeypatch.chdir(tmp_path)

    def _write(text: str) -> str:
        Path("proxy.yaml").write_text(text, encoding="utf-8")
        return "proxy.yaml"

    return _write


def problems(name: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(name)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


# -- every validation message, exactly ------------------------------------------------

# (id, yaml, the one problem line after "proxy.yaml: ")
ONE_PROBLEM: list[tuple[str, str, str]] = [
    # unknown keys, at every level
    ("unknown-far", "zzz: {}\n", f"zzz: unknown key (known: {KNOWN_TOP})"),
    (
        "unknown-top",
        "lisen: {}\n",
        f"lisen: unknown key (did you mean 'listen'? known: {KNOWN_TOP})",
    ),
    (
        "unknown-listen",
        "listen: {hots: x}\n",
        f"listen.hots: unknown key (did you mean 'host'? known: {KNOWN_LISTEN})",
    ),
    (
        "unknown-upstream",
        "upstream: {uri: http://x}\n",
        f"upstream.uri: unknown key (did you mean 'url'? known: {KNOWN_UPSTREAM})",
    ),
    (
        "unknown-model",
        "model: {nme: x}\n",
        f"model.nme: unknown key (did you mean 'name'? known: {KNOWN_MODEL})",
    ),
    (
        "unknown-defaults",
        "defaults: {windw: 3}\n",
        f"defaults.windw: unknown key (did you mean 'window'? known: {KNOWN_RULE})",
    ),
    (
        "unknown-in-indices-item",
        "indices:\n  - match: a\n  - match: b\n    feilds: [t]\n",
        f"indices[1].feilds: unknown key (did you mean 'fields'? known: {KNOWN_RULE})",
    ),
    # wrong types
    ("listen-not-mapping", "listen: [1]\n", "listen: must be a mapping, got a list"),
    ("port-string", "listen: {port: '80'}\n", "listen.port: must be an integer, got '80'"),
    ("port-bool", "listen: {port: true}\n", "listen.port: must be an integer, got True"),
    ("port-float", "listen: {port: 1.5}\n", "listen.port: must be an integer, got 1.5"),
    ("host-int", "listen: {host: 5}\n", "listen.host: must be a string, got 5"),
    (
        "verify-tls-string",
        "upstream: {verify_tls: 'yes'}\n",
        "upstream.verify_tls: must be true or false, got 'yes'",
    ),
    (
        "timeout-string",
        "upstream: {connect_timeout: 10s}\n",
        "upstream.connect_timeout: must be a number, got '10s'",
    ),
    (
        "timeout-nan",
        "upstream: {read_timeout: .nan}\n",
        "upstream.read_timeout: must be a finite number, got nan",
    ),
    (
        "blend-weight-inf",
        "defaults: {blend_weight: .inf}\n",
        "defaults.blend_weight: must be a finite number, got inf",
    ),
    (
        "ca-file-int",
        "upstream: {ca_file: 5}\n",
        "upstream.ca_file: must be a string or null, got 5",
    ),
    (
        "backend-literal",
        "model: {backend: gpu}\n",
        "model.backend: must be one of 'auto', 'torch', 'torch-fp32', 'onnx', 'onnx-int8',"
        " 'torch-bf16', 'openvino', 'openvino-bf16', 'fake', 'remote', got 'gpu'",
    ),
    (
        "device-literal",
        "model: {device: tpu}\n",
        "model.device: must be one of 'auto', 'cpu', 'cuda', got 'tpu'",
    ),
    (
        "log-level-lowercase",
        "log_level: info\n",
        "log_level: must be one of 'DEBUG', 'INFO', 'WARNING', 'ERROR', got 'info'",
    ),
    (
        "log-format-literal",
        "log_format: xml\n",
        "log_format: must be one of 'text', 'json', got 'xml'",
    ),
    (
        "score-mode-literal",
        "defaults: {score_mode: mix}\n",
        "defaults.score_mode: must be one of 'replace', 'blend', got 'mix'",
    ),
    ("fields-int", "defaults: {fields: 5}\n", "defaults.fields: must be a list of strings, got 5"),
    (
        "fields-mapping",
        "defaults: {fields: {a: 1}}\n",
        "defaults.fields: must be a list of strings, got a mapping",
    ),
    (
        "fields-item-int",
        "defaults: {fields: [t, 5]}\n",
        "defaults.fields[1]: must be a string, got 5",
    ),
    (
        "min-score-string",
        "defaults: {min_score: high}\n",
        "defaults.min_score: must be a number or null, got 'high'",
    ),
    (
        "max-length-string",
        "defaults: {max_length: big}\n",
        "defaults.max_length: must be an integer or null, got 'big'",
    ),
    (
        "enabled-string",
        "defaults: {enabled: 'no'}\n",
        "defaults.enabled: must be true or false, got 'no'",
    ),
    ("defaults-list", "defaults: [1]\n", "defaults: must be a mapping, got a list"),
    ("defaults-null", "defaults:\n", "defaults: must be a mapping, got None"),
    (
        "indices-mapping",
        "indices: {match: a}\n",
        "indices: must be a list of mappings, got a mapping",
    ),
    ("indices-null", "indices:\n", "indices: must be a list of mappings, got None"),
    ("indices-item-scalar", "indices: [logs]\n", "indices[0]: must be a mapping, got 'logs'"),
    (
        "window-float",
        "indices: [{match: a, window: 2.5}]\n",
        "indices[0].window: must be an integer, got 2.5",
    ),
    # bounds
    (
        "window-0",
        "indices: [{match: a}, {match: b}, {match: c, window: 0}]\n",
        "indices[2].window: must be >= 1",
    ),
    ("window-too-big", "defaults: {window: 10001}\n", "defaults.window: must be <= 10000"),
    ("port-negative", "listen: {port: -1}\n", "listen.port: must be >= 0"),
    ("port-too-big", "listen: {port: 65536}\n", "listen.port: must be <= 65535"),
    (
        "connect-timeout-0",
        "upstream: {connect_timeout: 0}\n",
        "upstream.connect_timeout: must be > 0",
    ),
    (
        "read-timeout-negative",
        "upstream: {read_timeout: -1.5}\n",
        "upstream.read_timeout: must be > 0",
    ),
    (
        "max-connections-0",
        "upstream: {max_connections: 0}\n",
        "upstream.max_connections: must be >= 1",
    ),
    (
        "buffer-too-small",
        "upstream: {max_buffer_bytes: 1023}\n",
        "upstream.max_buffer_bytes: must be >= 1024",
    ),
    ("model-max-length-big", "model: {max_length: 513}\n", "model.max_length: must be <= 512"),
    ("model-max-length-small", "model: {max_length: 7}\n", "model.max_length: must be >= 8"),
    ("batch-size-negative", "model: {batch_size: -1}\n", "model.batch_size: must be >= 0"),
    ("threads-negative", "model: {threads: -2}\n", "model.threads: must be >= 0"),
    ("batch-wait-big", "model: {batch_wait_ms: 1000.5}\n", "model.batch_wait_ms: must be <= 1000"),
    ("max-queue-0", "model: {max_queue: 0}\n", "model.max_queue: must be >= 1"),
    ("cache-size-negative", "model: {cache_size: -1}\n", "model.cache_size: must be >= 0"),
    ("blend-weight-big", "defaults: {blend_weight: 1.5}\n", "defaults.blend_weight: must be <= 1"),
    (
        "blend-weight-negative",
        "defaults: {blend_weight: -0.1}\n",
        "defaults.blend_weight: must be >= 0",
    ),
    ("timeout-ms-0", "defaults: {timeout_ms: 0}\n", "defaults.timeout_ms: must be >= 1"),
    ("rule-max-length-small", "defaults: {max_length: 4}\n", "defaults.max_length: must be >= 8"),
    # cross-field rules
    (
        "fields-and-template-defaults",
        "defaults: {fields: [a], template: '{a}'}\n",
        "defaults: set either fields or template, not both",
    ),
    (
        "fields-and-template-rule",
        "indices: [{match: a, fields: [a], template: '{a}'}]\n",
        "indices[0]: set either fields or template, not both",
    ),
    (
        "template-conversion",
        "defaults: {template: '{title!r}'}\n",
        "defaults.template: bad placeholder {title!r}: use plain {field.path} names",
    ),
    (
        "template-format-spec",
        "defaults: {template: '{title:>10}'}\n",
        "defaults.template: bad placeholder {title:>10}: use plain {field.path} names",
    ),
    (
        "template-empty-placeholder",
        "defaults: {template: 'x {} y'}\n",
        "defaults.template: bad placeholder {}: use plain {field.path} names",
    ),
    (
        "template-index",
        "defaults: {template: '{tags[0]}'}\n",
        "defaults.template: bad placeholder {tags[0]}: use plain {field.path} names",
    ),
    (
        "template-empty-segment",
        "defaults: {template: '{a..b}'}\n",
        "defaults.template: bad placeholder {a..b}: use plain {field.path} names",
    ),
    (
        "template-no-field",
        "defaults: {template: 'plain text'}\n",
        "defaults.template: names no field",
    ),
    (
        "template-only-escaped-braces",
        "defaults: {template: '{{title}}'}\n",
        "defaults.template: names no field",
    ),
    (
        "template-unclosed",
        "indices: [{match: a, template: '{title'}]\n",
        "indices[0].template: expected '}' before end of string; write {{ or }} for a"
        " literal brace",
    ),
    (
        "template-stray-close",
        "defaults: {template: '{a} }'}\n",
        "defaults.template: Single '}' encountered in format string; write {{ or }} for a"
        " literal brace",
    ),
    (
        "query-path-relative",
        "indices: [{match: a, query_path: query/match/title}]\n",
        "indices[0].query_path: must be a JSON pointer starting with '/'",
    ),
    (
        "url-ftp",
        "upstream: {url: 'ftp://h:21'}\n",
        "upstream.url: must be an http:// or https:// URL, got 'ftp://h:21'",
    ),
    (
        "url-no-scheme",
        "upstream: {url: 'localhost:9200'}\n",
        "upstream.url: must be an http:// or https:// URL, got 'localhost:9200'",
    ),
    (
        "url-no-host",
        "upstream: {url: 'http://'}\n",
        "upstream.url: must be an http:// or https:// URL, got 'http://'",
    ),
    (
        "url-bad-port",
        "upstream: {url: 'http://h:port'}\n",
        "upstream.url: must be an http:// or https:// URL, got 'http://h:port'",
    ),
    (
        "url-port-out-of-range",
        "upstream: {url: 'http://h:99999'}\n",
        "upstream.url: must be an http:// or https:// URL, got 'http://h:99999'",
    ),
    (
        "client-key-without-cert",
        "upstream: {client_key: k.pem}\n",
        "upstream.client_key: needs upstream.client_cert",
    ),
    (
        "match-empty-list",
        "indices: [{match: []}]\n",
        "indices[0].match: must name at least one index or pattern",
    ),
    (
        "match-missing",
        "indices: [{window: 3}]\n",
        "indices[0].match: must name at least one index or pattern",
    ),
    ("match-blank-name", "indices: [{match: [a, '']}]\n", "indices[0].match[1]: must not be empty"),
    # a rejected value is reported once: no second line about the default it fell back to
    (
        "match-wrong-type-once",
        "indices: [{match: 5}]\n",
        "indices[0].match: must be a list of strings, got 5",
    ),
    (
        "match-item-wrong-type-once",
        "indices: [{match: [5]}]\n",
        "indices[0].match[0]: must be a string, got 5",
    ),
    # a bad default is reported at `defaults`, not again under every rule that inherits it
    (
        "bad-default-reported-once",
        "defaults: {window: 0}\nindices: [{match: a}, {match: b}]\n",
        "defaults.window: must be >= 1",
    ),
    (
        "bad-default-template-reported-once",
        "defaults: {template: '{a!s}'}\nindices: [{match: a}, {match: b, window: 3}]\n",
        "defaults.template: bad placeholder {a!s}: use plain {field.path} names",
    ),
    (
        "bad-default-query-path-reported-once",
        "defaults: {query_path: q}\nindices: [{match: a, fields: [t]}]\n",
        "defaults.query_path: must be a JSON pointer starting with '/'",
    ),
    # YAML and file-level problems
    ("top-level-list", "- a\n- b\n", "must be a mapping at the top level"),
    ("top-level-scalar", "hello\n", "must be a mapping at the top level"),
    (
        "yaml-unclosed-flow",
        "listen: [1, 2\n",
        "invalid YAML (line 2, column 1): expected ',' or ']', but got '<stream end>'",
    ),
    (
        "yaml-bad-mapping",
        "listen:\n  host: a: b\n",
        "invalid YAML (line 2, column 10): mapping values are not allowed here",
    ),
    (
        "yaml-tab-indent",
        "listen:\n\thost: x\n",
        "invalid YAML (line 2, column 1): found character '\\t' that cannot start any token",
    ),
    (
        "yaml-duplicate-key",
        "listen:\n  port: 1\n  port: 2\n",
        "invalid YAML (line 3, column 3): duplicate key 'port'",
    ),
    (
        "yaml-duplicate-top-key",
        "log_level: INFO\nlog_level: DEBUG\n",
        "invalid YAML (line 2, column 1): duplicate key 'log_level'",
    ),
    (
        "yaml-two-documents",
        "log_level: INFO\n---\nlog_level: INFO\n",
        "invalid YAML (line 2, column 1): but found another document",
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in ONE_PROBLEM], ids=[c[0] for c in ONE_PROBLEM]
)
def test_each_problem_has_its_exact_message(write: Any, text: str, expected: str) -> None:
    assert problems(write(text)) == [f"proxy.yaml: {expected}"]


def test_several_problems_are_reported_together_in_order(write: Any) -> None:
    name = write(
        "listen: {port: 70000, hots: x}\n"
        "upstream: {url: 'ftp://x', client_key: k}\n"
        "model: {backend: gpu}\n"
        "defaults: {window: 0, fields: [a], template: '{b}'}\n"
        "indices:\n"
        "  - {match: a, window: -1}\n"
        "  - {match: [], query_path: nope}\n"
        "  - logs\n"
        "log_level: LOUD\n"
    )
    assert problems(name) == [
        "proxy.yaml: listen.port: must be <= 65535",
        f"proxy.yaml: listen.hots: unknown key (did you mean 'host'? known: {KNOWN_LISTEN})",
        "proxy.yaml: model.backend: must be one of 'auto', 'torch', 'torch-fp32', 'onnx',"
        " 'onnx-int8', 'torch-bf16', 'openvino', 'openvino-bf16', 'fake', 'remote',"
        " got 'gpu'",
        "proxy.yaml: defaults.window: must be >= 1",
        "proxy.yaml: log_level: must be one of 'DEBUG', 'INFO', 'WARNING', 'ERROR', got 'LOUD'",
        "proxy.yaml: indices[0].window: must be >= 1",
        "proxy.yaml: indices[2]: must be a mapping, got 'logs'",
        "proxy.yaml: upstream.url: must be an http:// or https:// URL, got 'ftp://x'",
        "proxy.yaml: upstream.client_key: needs upstream.client_cert",
        "proxy.yaml: defaults: set either fields or template, not both",
        "proxy.yaml: indices[1].query_path: must be a JSON pointer starting with '/'",
        "proxy.yaml: indices[1].match: must name at least one index or pattern",
    ]


def test_lines_name_the_path_as_given(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "proxy.yaml"
    path.parent.mkdir()
    path.write_text("defaults: {window: 0}\n", encoding="utf-8")
    assert problems(str(path)) == [f"{path}: defaults.window: must be >= 1"]


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        pytest.param(
            lambda p: None, "missing.yaml: cannot read: No such file or directory", id="missing"
        ),
        pytest.param(
            lambda p: p.mkdir(), "missing.yaml: cannot read: Is a directory", id="directory"
        ),
        pytest.param(
            lambda p: p.write_bytes(b"log_level: INFO\n# \xff\n"),
            "missing.yaml: cannot read: not UTF-8 text (byte 18)",
            id="not-utf8",
        ),
    ],
)
def test_unreadable_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setup: Any, expected: str
) -> None:
    monkeypatch.chdir(tmp_path)
    setup(Path("missing.yaml"))
    assert problems("missing.yaml") == [expected]


@pytest.mark.parametrize(
    "text",
    ["", "# only a comment\n", "{}\n"],
    ids=["empty-file", "comment-only", "empty-mapping"],
)
def test_empty_documents_give_the_defaults(write: Any, text: str) -> None:
    assert load_config(write(text)) == Config()


def test_yaml_merge_keys_may_be_overridden(write: Any) -> None:
    """`<<: *base` followed by an explicit key is an override, not a duplicate."""
    cfg = load_config(
        write(
            "indices:\n  - &base {match: a, window: 5, fields: [t]}\n  - <<: *base\n    match: b\n"
        )
    )
    assert [(r.match, r.window, r.fields) for r in cfg.indices] == [
        (("a",), 5, ("t",)),
        (("b",), 5, ("t",)),
    ]


@pytest.mark.parametrize(
    "name",
    sorted(p.name for p in (Path(__file__).parents[2] / "config").glob("*.yaml")),
)
def test_shipped_configs_are_valid(name: str) -> None:
    load_config(Path(__file__).parents[2] / "config" / name)


def test_parse_config_names_its_source() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"log_level": "x"}, "<flags>")
    assert info.value.problems == [
        "<flags>: log_level: must be one of 'DEBUG', 'INFO', 'WARNING', 'ERROR', got 'x'"
    ]
    with pytest.raises(ConfigError) as info:
        parse_config([1], "<flags>")
    assert info.value.problems == ["<flags>: must be a mapping at the top level"]


# -- accepted values --------------------------------------------------------------------

ACCEPTED: list[tuple[str, str, typing.Callable[[Config], Any], Any]] = [
    (
        "fields-single-string",
        "defaults: {fields: title}\n",
        lambda c: c.defaults.fields,
        ("title",),
    ),
    ("match-single-string", "indices: [{match: kb}]\n", lambda c: c.indices[0].match, ("kb",)),
    (
        "int-for-float",
        "upstream: {connect_timeout: 3}\n",
        lambda c: c.upstream.connect_timeout,
        3.0,
    ),
    ("null-optional", "defaults: {min_score: null}\n", lambda c: c.defaults.min_score, None),
    ("bound-inclusive-low", "defaults: {window: 1}\n", lambda c: c.defaults.window, 1),
    (
        "bound-inclusive-high",
        "defaults: {window: 10000}\nmodel: {max_queue: 10000}\n",
        lambda c: c.defaults.window,
        10000,
    ),
    (
        "https-url",
        "upstream: {url: 'https://h:9200/es'}\n",
        lambda c: c.upstream.url,
        "https://h:9200/es",
    ),
    (
        "ipv6-url",
        "upstream: {url: 'http://[::1]:9200'}\n",
        lambda c: c.upstream.url,
        "http://[::1]:9200",
    ),
    (
        "client-cert-and-key",
        "upstream: {client_cert: c.pem, client_key: k.pem}\n",
        lambda c: (c.upstream.client_cert, c.upstream.client_key),
        ("c.pem", "k.pem"),
    ),
    (
        "template-escaped-braces",
        "defaults: {template: '{{{title}}} {body.text}'}\n",
        lambda c: rule_text_fields(c.defaults),
        ("title", "body.text"),
    ),
]


@pytest.mark.parametrize(
    ("text", "get", "expected"), [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED]
)
def test_accepted_values(write: Any, text: str, get: Any, expected: Any) -> None:
    assert get(load_config(write(text))) == expected


# -- defaults inherited by index rules ---------------------------------------------------

# field -> (a value for `defaults`, a different value for the rule's own override)
INHERITED: dict[str, tuple[Any, Any]] = {
    "window": (7, 9),
    "fields": (["a"], ["b"]),
    "template": ("{a}", "{b}"),
    "query_path": ("/q", "/r"),
    "query_param": ("q", "r"),
    "score_mode": ("blend", "replace"),
    "blend_weight": (0.2, 0.7),
    "min_score": (0.1, 0.3),
    "timeout_ms": (99, 100),
    "max_length": (64, 128),
    "expose_engine_score": (False, True),
    "use_highlight": (True, False),
    "leading_words": (50, 80),
    "passages": ("max", "off"),
    "passage_words": (100, 120),
    "passage_stride": (60, 70),
    "max_passages": (2, 3),
    "mode": ("shadow", "rerank"),
    "sample": (0.5, 0.25),
}
NOT_INHERITED = {"match", "enabled"}


def test_inheritance_table_covers_every_rule_field() -> None:
    names = {f.name for f in dataclasses.fields(RuleConfig)}
    assert set(INHERITED) | NOT_INHERITED == names


def _norm(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@pytest.mark.parametrize("key", sorted(INHERITED))
def test_rule_inherits_each_default(key: str) -> None:
    default_value, _ = INHERITED[key]
    cfg = parse_config({"defaults": {key: default_value}, "indices": [{"match": "a"}]})
    assert getattr(cfg.indices[0], key) == _norm(default_value)


@pytest.mark.parametrize("key", sorted(INHERITED))
def test_rule_overrides_each_default(key: str) -> None:
    default_value, own = INHERITED[key]
    cfg = parse_config(
        {"defaults": {key: default_value}, "indices": [{"match": "a", key: own}, {"match": "b"}]}
    )
    assert getattr(cfg.indices[0], key) == _norm(own)
    assert getattr(cfg.indices[1], key) == _norm(default_value)
    assert getattr(cfg.defaults, key) == _norm(default_value)


def test_enabled_is_not_inherited() -> None:
    """`defaults.enabled: false` leaves unnamed indices alone; rules stay enabled."""
    cfg = parse_config({"defaults": {"enabled": False}, "indices": [{"match": "a"}]})
    assert cfg.defaults.enabled is False
    assert cfg.indices[0].enabled is True


def test_defaults_match_is_not_inherited() -> None:
    cfg = parse_config({"defaults": {"match": ["x"]}, "indices": [{"match": "a"}]})
    assert cfg.indices[0].match == ("a",)


@pytest.mark.parametrize(
    ("defaults", "rule", "fields", "template"),
    [
        ({"fields": ["a"]}, {"template": "{b}"}, (), "{b}"),
        ({"template": "{a}"}, {"fields": ["b"]}, ("b",), None),
        ({"fields": ["a"]}, {"fields": []}, (), None),
        ({"template": "{a}"}, {"template": None}, (), None),
        ({"fields": ["a"]}, {"window": 3}, ("a",), None),
    ],
    ids=[
        "rule-template-replaces-default-fields",
        "rule-fields-replace-default-template",
        "rule-empty-fields-means-all-strings",
        "rule-null-template",
        "rule-setting-neither-inherits",
    ],
)
def test_document_text_keys_are_inherited_as_a_pair(
    defaults: dict[str, Any], rule: dict[str, Any], fields: tuple[str, ...], template: str | None
) -> None:
    cfg = parse_config({"defaults": defaults, "indices": [{"match": "x", **rule}]})
    assert (cfg.indices[0].fields, cfg.indices[0].template) == (fields, template)


# -- templates and text fields ----------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (RuleConfig(), ()),
        (RuleConfig(fields=("title", "body.text")), ("title", "body.text")),
        (RuleConfig(template="{name}\n{brand}: {description}"), ("name", "brand", "description")),
        (RuleConfig(template="{{literal}} {a.b}"), ("a.b",)),
    ],
    ids=["all-string-fields", "fields", "template-order", "template-escaped-braces"],
)
def test_rule_text_fields(rule: RuleConfig, expected: tuple[str, ...]) -> None:
    assert rule_text_fields(rule) == expected


def test_template_fields_rejects_what_config_rejects() -> None:
    with pytest.raises(ValueError, match="names no field"):
        template_fields("no placeholder")


# -- resolve_rule ------------------------------------------------------------------------

RULES_CFG = parse_config(
    {
        "indices": [
            {"match": ["articles", "kb"], "window": 1},  # kb: an alias, listed by name
            {"match": ["logs-*", "metrics-*"], "window": 2},
            {"match": ["art*"], "window": 3},
            {"match": ["logs-app*", "logs-2024.01.01"], "window": 4},
        ]
    }
)
WITH_ALL_CFG = parse_config({"indices": [{"match": ["_all"], "window": 5}]})


def _name(rule: RuleConfig | None) -> str | None:
    if rule is None:
        return None
    if rule is RULES_CFG.defaults or rule is WITH_ALL_CFG.defaults:
        return "defaults"
    return f"window{rule.window}"


RESOLVE_CASES: list[tuple[str, Config, tuple[str, ...], str | None]] = [
    ("no-target-uses-all-defaults", RULES_CFG, (), "defaults"),
    ("no-target-uses-all-rule", WITH_ALL_CFG, (), "window5"),
    ("explicit-all", WITH_ALL_CFG, ("_all",), "window5"),
    ("exact", RULES_CFG, ("articles",), "window1"),
    ("alias-by-name", RULES_CFG, ("kb",), "window1"),
    ("exact-beats-earlier-pattern", RULES_CFG, ("articles",), "window1"),
    ("pattern", RULES_CFG, ("artsy",), "window3"),
    ("first-matching-pattern-wins", RULES_CFG, ("logs-app-1",), "window2"),
    ("exact-in-later-rule-beats-pattern", RULES_CFG, ("logs-2024.01.01",), "window4"),
    ("pattern-string-as-target", RULES_CFG, ("logs-*",), "window2"),
    ("narrower-wildcard-target", RULES_CFG, ("logs-2025*",), "window2"),
    # `*` is looked up by name like `_all` (targets are not expanded against the cluster)
    ("star-by-name", RULES_CFG, ("*",), "defaults"),
    ("no-match", RULES_CFG, ("other",), "defaults"),
    ("same-rule-list", RULES_CFG, ("articles", "kb"), "window1"),
    ("same-pattern-list", RULES_CFG, ("logs-a", "metrics-b"), "window2"),
    ("defaults-list", RULES_CFG, ("x", "y"), "defaults"),
    ("different-rules", RULES_CFG, ("articles", "logs-1"), None),
    ("rule-and-defaults", RULES_CFG, ("articles", "other"), None),
    ("exclusion-ignored", RULES_CFG, ("articles", "-logs-1"), "window1"),
    ("wildcard-with-exclusion", RULES_CFG, ("logs-*", "-logs-app-1"), "window2"),
    ("only-exclusions-use-all", WITH_ALL_CFG, ("-logs",), "window5"),
    ("date-math", RULES_CFG, ("<logs-{now/d}>",), "window2"),
    ("date-math-format-and-zone", RULES_CFG, ("<logs-{now/d{yyyy.MM.dd|+12:00}}>",), "window2"),
    ("date-math-two", RULES_CFG, ("<logs-{now/d}>", "<metrics-{now/d-1d}>"), "window2"),
    ("date-math-no-rule", RULES_CFG, ("<other-{now/d}>",), "defaults"),
    ("date-math-escaped-brace", RULES_CFG, ("<logs-\\{x\\}-{now/M}>",), "window2"),
    # a date-math name never equals an exact name listed in a rule
    ("date-math-vs-exact", RULES_CFG, ("<logs-2024.01.{now/d{dd}}>",), "window2"),
    ("date-math-mixed-rules", RULES_CFG, ("<logs-{now/d}>", "articles"), None),
]


@pytest.mark.parametrize(
    ("cfg", "targets", "expected"),
    [c[1:] for c in RESOLVE_CASES],
    ids=[c[0] for c in RESOLVE_CASES],
)
def test_resolve_rule(cfg: Config, targets: tuple[str, ...], expected: str | None) -> None:
    assert _name(resolve_rule(cfg.rules, targets)) == expected


SPLIT_CASES = [
    ("plain", "articles", ["articles"]),
    ("list", "a,b", ["a", "b"]),
    ("empty-items", "a,,b,", ["a", "b"]),
    ("empty", "", []),
    ("encoded-comma", "a%2Cb", ["a", "b"]),
    ("date-math", "%3Clogs-%7Bnow%2Fd%7D%3E", ["<logs-{now/d}>"]),
    (
        "date-math-list",
        "%3Clogs-%7Bnow%2Fd-1d%7D%3E%2C%3Clogs-%7Bnow%2Fd%7D%3E",
        ["<logs-{now/d-1d}>", "<logs-{now/d}>"],
    ),
    ("plus-is-literal-in-paths", "a+b", ["a+b"]),
    ("exclusion", "logs-*,-logs-old", ["logs-*", "-logs-old"]),
]


@pytest.mark.parametrize(
    ("raw", "expected"), [c[1:] for c in SPLIT_CASES], ids=[c[0] for c in SPLIT_CASES]
)
def test_split_targets(raw: str, expected: list[str]) -> None:
    assert split_targets(raw) == expected


def test_resolve_encoded_path_targets() -> None:
    targets = split_targets("%3Clogs-%7Bnow%2Fd%7D%3E%2Cmetrics-1")
    assert _name(resolve_rule(RULES_CFG.rules, targets)) == "window2"
    assert resolve_rule(RULES_CFG.rules, split_targets("articles,logs-1")) is None


# -- config_table ------------------------------------------------------------------------


def _all_keys(cls: Any, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += _all_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def test_config_table_has_one_row_per_key() -> None:
    table = config_table()
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    keys = _all_keys(Config)
    assert {"listen.port", "upstream.client_key", "model.cache_size", "defaults.window"} <= set(
        keys
    )
    assert [row.split("`")[1] for row in rows] == keys


@pytest.mark.parametrize(
    "row",
    [
        "| `listen.port` | an integer | `9280` | Port the proxy listens on. |",
        "| `defaults.fields` | a list of strings | `[]` |",
        "| `defaults.min_score` | a number or null | `null` |",
        "| `model.backend` | one of 'auto', 'torch', 'torch-fp32', 'onnx', 'onnx-int8',"
        " 'torch-bf16', 'openvino', 'openvino-bf16', 'fake', 'remote' |",
        "| `indices` | list of rules | `[]` | Index rules, first match wins (exact names first). |",
        "| `upstream.verify_tls` | true or false | `True` |",
    ],
    ids=["int", "list", "optional", "literal", "rules", "bool"],
)
def test_config_table_rows(row: str) -> None:
    assert any(line.startswith(row) for line in config_table().splitlines())


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (
            {"model": {"max_queue": 10}},
            "<config>: model.max_queue: 10 is below defaults.window (50): every search there"
            " would fail open as overloaded",
        ),
        (
            {"model": {"max_queue": 60}, "indices": [{"match": ["a"], "window": 100}]},
            "<config>: model.max_queue: 60 is below indices[0].window (100): every search there"
            " would fail open as overloaded",
        ),
    ],
    ids=["defaults", "rule"],
)
def test_a_queue_smaller_than_a_window_is_refused(raw: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert info.value.problems == [problem]


def test_a_disabled_rule_may_have_any_window() -> None:
    parse_config({"model": {"max_queue": 10}, "defaults": {"enabled": False}})
