"""Model sanity: only a single-logit cross-encoder loads, and refusals say what to do.

The refusals are asserted through `load_backend`, for the torch and ONNX backends, on tiny
stand-ins built for it (`devtools.standin`'s `labels` and `drop_head` options, or a built
stand-in with tensors removed); the file-level checks are also table-driven without any
model. A three-label model with `model.label` set scores with that logit column, compared
with transformers' own logits.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from proxy.config import ModelConfig
from proxy.errors import ModelLoadError
from proxy.rerank import sanity
from proxy.rerank.loader import load_backend
from proxy.rerank.sanity import (
    check_model_dir,
    label_names,
    label_problem,
    looks_like_path,
    missing_head_problem,
    model_dir_problem,
    safetensors_names,
)

NLI = ("contradiction", "entailment", "neutral")
NLI_LABELS = "3 labels (contradiction, entailment, neutral)"
HEAD_HELP = (
    "it is a base model, not a trained cross-encoder; use a model trained for reranking"
    " (such as mixedbread-ai/mxbai-rerank-xsmall-v1), or fine-tune this one first"
)
NO_HEAD = (
    "model checkpoint has no classification head weights (no classifier.*, score.*,"
    f" classification_head.*, logits_proj.* tensor in model.safetensors): {HEAD_HELP}"
)
NOT_SINGLE = (
    f"model has {NLI_LABELS}: it is not a single-logit cross-encoder; set model.label to the"
    " index of the relevance logit if you really mean it"
)
PAIRS = [
    ("insulin resistance", "Insulin signalling in liver cells is impaired in obesity."),
    ("insulin resistance", "The river floods every spring."),
    ("gene expression in yeast", "Yeast cells regulate gene expression under heat stress."),
    ("gene expression in yeast", "A short note on medieval poetry and its metre."),
    ("x", "y"),
]


# --- pure checks: no model needed -----------------------------------------------------------

LABEL_CASES: list[tuple[str, dict[str, Any], list[str]]] = [
    ("one label", {"id2label": {"0": "LABEL_0"}}, ["LABEL_0"]),
    (
        "in index order",
        {"id2label": {"2": "neutral", "0": "contradiction", "1": "entailment"}},
        list(NLI),
    ),
    ("integer keys", {"id2label": {0: "a", 1: "b"}}, ["a", "b"]),
    ("num_labels only", {"num_labels": 1}, ["LABEL_0"]),
    ("neither: transformers' default of two", {}, ["LABEL_0", "LABEL_1"]),
    ("a nonsense num_labels counts as the default", {"num_labels": "3"}, ["LABEL_0", "LABEL_1"]),
]


@pytest.mark.parametrize(
    ("config", "names"), [c[1:] for c in LABEL_CASES], ids=[c[0] for c in LABEL_CASES]
)
def test_label_names(config: dict[str, Any], names: list[str]) -> None:
    assert label_names(config) == names


LABEL_PROBLEMS: list[tuple[str, list[str], int | None, str | None]] = [
    ("single logit", ["LABEL_0"], None, None),
    ("single logit, label 0", ["LABEL_0"], 0, None),
    ("three labels", list(NLI), None, NOT_SINGLE),
    ("three labels, label 1", list(NLI), 1, None),
    (
        "three labels, label 3",
        list(NLI),
        3,
        f"model.label is 3, but the model has {NLI_LABELS}: it must be 0 to 2",
    ),
    (
        "single logit, label 1",
        ["LABEL_0"],
        1,
        "model.label is 1, but the model has 1 label (LABEL_0): it must be 0 (or null)",
    ),
    (
        "many labels are shortened",
        [f"L{i}" for i in range(10)],
        None,
        "model has 10 labels (L0, L1, L2, L3, L4, L5, L6, L7, ...): it is not a single-logit"
        " cross-encoder; set model.label to the index of the relevance logit if you really"
        " mean it",
    ),
]


@pytest.mark.parametrize(
    ("labels", "label", "problem"),
    [c[1:] for c in LABEL_PROBLEMS],
    ids=[c[0] for c in LABEL_PROBLEMS],
)
def test_label_problem(labels: list[str], label: int | None, problem: str | None) -> None:
    assert label_problem(labels, label) == problem


@pytest.mark.parametrize(
    ("missing", "problem"),
    [
        (set(), None),
        ({"deberta.embeddings.position_ids"}, None),  # inside the base model: not the head
        (
            {"classifier.weight", "classifier.bias", "pooler.dense.weight"},
            "model checkpoint has no classification head weights (classifier.bias,"
            f" classifier.weight, pooler.dense.weight): {HEAD_HELP}",
        ),
    ],
)
def test_missing_head_problem(missing: set[str], problem: str | None) -> None:
    assert missing_head_problem(missing, "deberta") == problem


PATH_CASES = [
    ("mixedbread-ai/mxbai-rerank-xsmall-v1", False),
    ("bert-base-uncased", False),
    ("org/name", False),
    ("/abs/model", True),
    ("./model", True),
    ("../model", True),
    ("~/model", True),
    (".", True),
    ("a/b/c", True),
    ("models/x", True),  # `models/` exists in the test's working directory
    ("present", True),  # exists
]


@pytest.mark.parametrize(("name", "is_path"), PATH_CASES)
def test_looks_like_path(
    name: str, is_path: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "present").mkdir()
    assert looks_like_path(name) is is_path
    if not is_path:
        assert model_dir_problem(name) is None  # a hub id is not checked here


def write_safetensors(path: Path, tensors: dict[str, int], data: int | None = None) -> None:
    """A safetensors file with uint8 tensors of the given sizes (`data`: bytes written)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, size in tensors.items():
        header[name] = {"dtype": "U8", "shape": [size], "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(
        len(raw).to_bytes(8, "little") + raw + b"\0" * (offset if data is None else data)
    )


def test_safetensors_names_match_safetensors(tmp_path: Path) -> None:
    safe_open = pytest.importorskip("safetensors").safe_open
    path = tmp_path / "model.safetensors"
    write_safetensors(path, {"a.weight": 4, "classifier.weight": 3, "b": 0})
    with safe_open(str(path), framework="numpy") as fh:
        assert sorted(safetensors_names(path)) == sorted(fh.keys())


def framed(header: bytes) -> bytes:
    return len(header).to_bytes(8, "little") + header


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "model.safetensors is too short for a safetensors file"),
        (b"\xff" * 8, "model.safetensors is not a safetensors file"),
        (framed(b"{oops"), "model.safetensors is not a safetensors file (or is truncated)"),
        (b"\x40\0\0\0\0\0\0\0{}", "model.safetensors is not a safetensors file (or is truncated)"),
        (framed(b"[1, 2]"), "model.safetensors is not a safetensors file (or is truncated)"),
        (framed(b'{"a": "b"}'), "model.safetensors has a malformed header"),
        (framed(b'{"a": {"data_offsets": [0]}}'), "model.safetensors has a malformed header"),
    ],
)
def test_not_a_safetensors_file(content: bytes, problem: str, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"num_labels": 1}', encoding="utf-8")
    (tmp_path / "model.safetensors").write_bytes(content)
    with pytest.raises(ValueError, match=f"^{re.escape(problem)}$"):
        safetensors_names(tmp_path / "model.safetensors")
    with pytest.raises(ModelLoadError, match="cannot read the checkpoint in "):
        check_model_dir("m", tmp_path, None)


def test_truncated_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"num_labels": 1}', encoding="utf-8")
    write_safetensors(tmp_path / "model.safetensors", {"classifier.weight": 2000}, data=1000)
    with pytest.raises(ModelLoadError) as info:
        check_model_dir("m", tmp_path, None)
    assert str(info.value) == (
        f"cannot load model 'm': cannot read the checkpoint in {tmp_path}: model.safetensors"
        " is truncated (1,000 bytes of tensor data where its header says 2,000): an"
        " interrupted download? Fetch it again"
    )


def test_sharded_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"num_labels": 1}', encoding="utf-8")
    index = {"weight_map": {"deberta.x": "model-00001.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")
    with pytest.raises(ModelLoadError, match=r"in model\.safetensors\.index\.json"):
        check_model_dir("m", tmp_path, None)
    index["weight_map"]["score.weight"] = "model-00002.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")
    assert check_model_dir("m", tmp_path, None) == 0


def test_no_safetensors_is_left_to_the_loader(tmp_path: Path) -> None:
    # A pytorch_model.bin is not read here; transformers' loading info covers it.
    (tmp_path / "config.json").write_text('{"num_labels": 1}', encoding="utf-8")
    assert check_model_dir("m", tmp_path, None) == 0


# --- through the backends, on tiny stand-ins ------------------------------------------------

torch_backends = pytest.mark.model
BACKENDS = ["torch", "onnx"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny stand-ins: `nli` (three labels) and `base` (no classification head)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from devtools.standin import build_standin_model
    from devtools.texts import synthetic_texts

    root = tmp_path_factory.mktemp("sanity-models")
    texts = synthetic_texts(400, seed=3)
    return {
        "nli": build_standin_model(root / "nli", texts, size="tiny", vocab_size=800, labels=NLI),
        "base": build_standin_model(
            root / "base", texts, size="tiny", vocab_size=800, drop_head=True
        ),
    }


@pytest.fixture(scope="module")
def export_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ONNX export cache for the module (an export takes seconds)."""
    return tmp_path_factory.mktemp("onnx-state")


@pytest.fixture
def state(export_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RERANK_PROXY_STATE", str(export_cache))
    monkeypatch.delenv("RERANK_PROXY_CACHE", raising=False)
    return export_cache


def model_config(name: str | Path, backend: str, label: int | None = None) -> ModelConfig:
    return dataclasses.replace(
        ModelConfig(), name=str(name), backend=backend, device="cpu", batch_size=2, label=label
    )


def refusal(name: str | Path, backend: str, label: int | None = None) -> str:
    with pytest.raises(ModelLoadError) as info:
        load_backend(model_config(name, backend, label))
    return str(info.value)


@torch_backends
def test_standin_options_are_recorded(built: dict[str, Path]) -> None:
    from devtools.standin import HEAD_TENSOR_PREFIXES
    from proxy.rerank.standin import read_standin_marker

    config = json.loads((built["nli"] / "config.json").read_text(encoding="utf-8"))
    assert label_names(config) == list(NLI)
    assert read_standin_marker(built["nli"])["labels"] == list(NLI)
    assert read_standin_marker(built["base"])["drop_head"] is True
    names = safetensors_names(built["base"] / "model.safetensors")
    assert names and not [n for n in names if n.startswith(HEAD_TENSOR_PREFIXES)]


@torch_backends
@pytest.mark.parametrize("backend", BACKENDS)
def test_three_labels_are_refused(backend: str, built: dict[str, Path], state: Path) -> None:
    assert (
        refusal(built["nli"], backend) == f"cannot load model {str(built['nli'])!r}: {NOT_SINGLE}"
    )


@torch_backends
@pytest.mark.parametrize("backend", BACKENDS)
def test_label_out_of_range_is_refused(backend: str, built: dict[str, Path], state: Path) -> None:
    assert refusal(built["nli"], backend, label=3) == (
        f"cannot load model {str(built['nli'])!r}: model.label is 3, but the model has"
        f" {NLI_LABELS}: it must be 0 to 2"
    )


@torch_backends
@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_head_is_refused(backend: str, built: dict[str, Path], state: Path) -> None:
    assert refusal(built["base"], backend) == f"cannot load model {str(built['base'])!r}: {NO_HEAD}"
    assert not any(state.rglob("*.onnx"))  # refused before any export


def transformers_logits(model_dir: Path, max_length: int) -> Any:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), dtype=torch.float32)
    enc = tok(
        [q for q, _ in PAIRS],
        [d for _, d in PAIRS],
        truncation="only_second",
        max_length=max_length,
        padding=True,
        return_tensors="pt",
    )
    with torch.inference_mode():
        return model.eval()(**enc).logits


@torch_backends
@pytest.mark.parametrize("backend", [*BACKENDS, "openvino"])
def test_model_label_scores_with_that_logit(
    backend: str, built: dict[str, Path], state: Path
) -> None:
    if backend == "openvino":
        pytest.importorskip("openvino")
    logits = transformers_logits(built["nli"], 64)
    assert logits.shape == (len(PAIRS), 3)
    columns = {}
    for label in (1, 2):
        model = load_backend(model_config(built["nli"], backend, label))
        assert model.model_id.endswith(f"|label{label}")  # a cache key per column
        got = model.score_pairs(PAIRS, 64)
        want = [1 / (1 + math.exp(-float(x))) for x in logits[:, label]]
        assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 1e-5
        columns[label] = got
    assert columns[1] != columns[2]


@pytest.fixture(scope="module")
def no_pooler(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny stand-in with `pooler.*` removed: `classifier.*` is there, so the file
    check passes, but transformers would initialise the pooler randomly."""
    from safetensors.torch import load_file, save_file

    out = tmp_path_factory.mktemp("no-pooler") / "model"
    shutil.copytree(tiny_model, out)
    tensors = {k: v for k, v in load_file(str(out / "model.safetensors")).items()}
    kept = {k: v for k, v in tensors.items() if not k.startswith("pooler.")}
    assert len(kept) < len(tensors)
    save_file(kept, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


@torch_backends
@pytest.mark.parametrize("backend", BACKENDS)
def test_head_missing_from_loading_info_is_refused(
    backend: str, no_pooler: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ONNX: the export child finds it and refuses; nothing is left in the cache.
    monkeypatch.setenv("RERANK_PROXY_STATE", str(tmp_path))
    assert refusal(no_pooler, backend) == (
        f"cannot load model {str(no_pooler)!r}: model checkpoint has no classification head"
        f" weights (pooler.dense.bias, pooler.dense.weight): {HEAD_HELP}"
    )
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == []


@pytest.fixture
def unknown_type(tiny_model: Path, tmp_path: Path) -> Path:
    """A model whose config names an architecture this transformers does not know."""
    out = tmp_path / "model"
    shutil.copytree(tiny_model, out)
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    config["model_type"] = "no-such-model"
    (out / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return out


@torch_backends
def test_failed_export_shows_its_error_and_leaves_no_file(
    unknown_type: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = tmp_path / "state"
    monkeypatch.setenv("RERANK_PROXY_STATE", str(state))
    message = refusal(unknown_type, "onnx")
    # The exporter's own error (transformers' words), whole, after what failed.
    assert message.startswith(
        f"cannot load model {str(unknown_type)!r}: the ONNX export failed (exit status 1):"
        " ValueError: "
    )
    assert "`no-such-model`" in message
    assert "\n" not in message
    assert "Traceback" in caplog.text  # the whole tail is in the log
    leftovers = [p for p in (state / "onnx").rglob("*")] if (state / "onnx").exists() else []
    assert [p for p in leftovers if not p.is_dir()] == []
    assert [p.name for p in leftovers if p.name.startswith(".export-")] == []


@torch_backends
def test_cached_export_that_does_not_load_is_made_again(
    built: dict[str, Path], state: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from proxy.rerank.onnx_backend import export_dir

    cfg = model_config(built["nli"], "onnx", label=1)
    want = load_backend(cfg).score_pairs(PAIRS, 64)
    cached = export_dir(built["nli"]) / "model.onnx"
    good = cached.stat().st_size
    cached.write_bytes(b"half an export")
    with caplog.at_level(logging.WARNING, logger="proxy.rerank.onnx_backend"):
        again = load_backend(cfg)
    assert "does not load" in caplog.text and "exporting it again" in caplog.text
    assert again.score_pairs(PAIRS, 64) == want
    assert cached.stat().st_size == good


def test_exporter_error_lines() -> None:
    from proxy.rerank.onnx_backend import exporter_error

    traceback = (
        "Loading weights:  50%|##  \rLoading weights: 100%|####\n"
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1, in <module>\n'
        "    boom()\n"
        "    ^^^^^^\n"
        "KeyError: 'gelu_new2'\n"
        "\n"
        "A second line of the message.\n"
    )
    assert exporter_error(traceback) == "KeyError: 'gelu_new2' A second line of the message."
    assert (
        exporter_error("warning: x\nmodel checkpoint has no ...\n") == "model checkpoint has no ..."
    )
    assert exporter_error("") == ""
    assert exporter_error("E" * 900, limit=10) == "EEEEEEE..."


# --- the missing-model message ----------------------------------------------------------------

PATH_HELP = (
    "Correct model.name, or download the model (`hf download"
    " mixedbread-ai/mxbai-rerank-xsmall-v1 --local-dir DIR`, on a machine that reaches the"
    " Hugging Face hub) and set model.name to DIR; or give a hub id instead of a path, with"
    " HF_ENDPOINT pointing at a hub mirror if the hub is unreachable."
)


@torch_backends
@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_model_directory(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)
    assert refusal("./models/x", backend) == (
        "cannot load model './models/x': no model directory at './models/x' (a path: hub ids"
        f" look like 'org/name'). {PATH_HELP}"
    )


@torch_backends
@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_hub_model(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("transformers")
    # The hub reads HF_HUB_OFFLINE once, at import: set both, so nothing waits on a network.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(pytest.importorskip("huggingface_hub").constants, "HF_HUB_OFFLINE", True)
    message = refusal("some-org/some-reranker", backend)
    assert message.startswith("cannot load model 'some-org/some-reranker': ")
    assert "(`hf download some-org/some-reranker --local-dir DIR`)" in message
    assert "HF_ENDPOINT" in message and "\n" not in message


def test_default_model_name_is_the_readme_one() -> None:
    assert ModelConfig().name == sanity.DEFAULT_MODEL
    assert os.sep == "/" or looks_like_path("a\\b")


@pytest.mark.parametrize(
    ("returncode", "stderr", "message"),
    [
        (
            3,
            "warning\nmodel checkpoint has no head\n",
            "cannot load model 'm': model checkpoint has no head",
        ),
        (-9, "", "cannot load model 'm': the ONNX export failed (killed by signal 9): no output"),
        (0, "", "cannot load model 'm': the ONNX export failed (it wrote no model): no output"),
        (1, "Killed\n", "cannot load model 'm': the ONNX export failed (exit status 1): Killed"),
    ],
)
def test_export_error_messages(returncode: int, stderr: str, message: str) -> None:
    import subprocess

    from proxy.rerank.onnx_backend import _export_error

    proc = subprocess.CompletedProcess(["export"], returncode, "", stderr)
    assert str(_export_error("m", Path("/m"), proc)) == message


@torch_backends
def test_unwritable_export_cache(
    built: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("", encoding="utf-8")
    monkeypatch.setenv("RERANK_PROXY_CACHE", str(blocker))
    message = refusal(built["nli"], "onnx", label=1)
    assert message.startswith(
        f"cannot load model {str(built['nli'])!r}: cannot write its ONNX export to {blocker}/onnx/"
    )
    assert message.endswith("; set RERANK_PROXY_CACHE to a writable directory")


@torch_backends
def test_shipped_onnx_that_does_not_load(tiny_model: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    out = tmp_path / "model"
    shutil.copytree(tiny_model, out)
    (out / "onnx").mkdir()
    (out / "onnx" / "model.onnx").write_bytes(b"not a graph")
    message = refusal(out, "onnx")
    assert message.startswith(
        f"cannot load model {str(out)!r}: {out}/onnx/model.onnx does not load: [ONNXRuntimeError]"
    )
    assert (out / "onnx" / "model.onnx").read_bytes() == b"not a graph"  # the model's own: kept


@pytest.mark.parametrize(
    ("config_json", "problem"),
    [
        (None, "cannot read {d}/config.json: No such file or directory"),
        ("[1]", "cannot read {d}/config.json: config.json is not a JSON object"),
        (
            "{",
            "cannot read {d}/config.json: Expecting property name enclosed in double quotes:"
            " line 1 column 2 (char 1)",
        ),
        (
            '{"id2label": {"a": "x", "b": "y"}}',
            "model has 2 labels (x, y): it is not a single-logit cross-encoder; set"
            " model.label to the index of the relevance logit if you really mean it",
        ),
    ],
)
def test_unreadable_model_config(config_json: str | None, problem: str, tmp_path: Path) -> None:
    if config_json is not None:
        (tmp_path / "config.json").write_text(config_json, encoding="utf-8")
    assert sanity.model_problem(tmp_path, None) == problem.format(d=tmp_path)


def test_shard_index_without_weight_map(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"num_labels": 1}', encoding="utf-8")
    (tmp_path / "model.safetensors.index.json").write_text("{}", encoding="utf-8")
    assert sanity.model_problem(tmp_path, None) == (
        f"cannot read the checkpoint in {tmp_path}: model.safetensors.index.json has no weight_map"
    )
