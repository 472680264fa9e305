"""Every backend against the fp32 reference on a fixed set of real (query, document) pairs.

The reference is sentence-transformers' `CrossEncoder` in fp32 on the same weights (the tiny
stand-in: same class as the real model, fewer and narrower layers). Exact backends must agree
within 1e-5; approximate ones (int8, bf16) within their stated tolerance and must keep the
ranking.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from proxy.config import ModelConfig
from proxy.rerank.loader import load_backend
from tests.conftest import SciFact

pytestmark = pytest.mark.model
torch = pytest.importorskip("torch")

MAX_LENGTH = 96  # short enough that long abstracts are truncated on the document side


@pytest.fixture(scope="module")
def pairs(scifact: SciFact) -> list[tuple[str, str]]:
    queries = [scifact.queries[q] for q in sorted(scifact.qrels, key=int)[:6]]
    docs = [f"{d['title']}\n{d['text']}" for d in list(scifact.corpus.values())[:8]]
    return [(q, d) for q in queries for d in docs]


@pytest.fixture(scope="module")
def reference(tiny_model: Path, pairs: list[tuple[str, str]]) -> list[float]:
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(
        str(tiny_model), device="cpu", max_length=MAX_LENGTH, model_kwargs={"dtype": torch.float32}
    )
    return [float(s) for s in model.predict(pairs, batch_size=7)]


def _config(model_dir: Path, backend: str) -> ModelConfig:
    return dataclasses.replace(
        ModelConfig(),
        name=str(model_dir),
        backend=backend,
        device="cpu",
        batch_size=5,  # type: ignore[arg-type]
    )


def _ranks(values: list[float]) -> list[int]:
    return sorted(range(len(values)), key=lambda i: -values[i])


def _skip_unless_available(backend: str) -> None:
    """The OpenVINO backends need openvino installed, and bf16 a CPU that computes it."""
    if not backend.startswith("openvino"):
        return
    openvino = pytest.importorskip("openvino")
    from proxy.rerank.openvino_backend import cpu_has_bf16

    if backend == "openvino-bf16" and not cpu_has_bf16(openvino.Core()):
        pytest.skip("this CPU lacks native bf16 (openvino-bf16 refuses to load)")


@pytest.mark.parametrize(
    ("backend", "tolerance"),
    [
        ("torch", 1e-5),
        ("onnx", 1e-5),
        ("openvino", 1e-5),
        ("onnx-int8", 0.25),
        ("torch-bf16", 0.06),
        ("openvino-bf16", 0.08),  # measured 5.5e-2 on the tiny stand-in
    ],
)
def test_backend_matches_the_fp32_reference(
    backend: str,
    tolerance: float,
    tiny_model: Path,
    pairs: list[tuple[str, str]],
    reference: list[float],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _skip_unless_available(backend)
    monkeypatch.setenv("RERANK_PROXY_STATE", str(tmp_path))
    model = load_backend(_config(tiny_model, backend))
    got = model.score_pairs(pairs, MAX_LENGTH)
    assert len(got) == len(reference)
    worst = max(abs(a - b) for a, b in zip(got, reference, strict=True))
    assert worst <= tolerance, f"{backend}: max |diff| {worst:.2e}"
    # Per query, the top 3 documents stay the top 3.
    per_query = 8
    for start in range(0, len(pairs), per_query):
        ref_top = set(_ranks(reference[start : start + per_query])[:3])
        got_top = set(_ranks(got[start : start + per_query])[:3])
        assert len(ref_top & got_top) >= (3 if tolerance <= 1e-5 else 2)


def test_onnx_export_is_cached(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from proxy.rerank import onnx_backend

    monkeypatch.setenv("RERANK_PROXY_STATE", str(tmp_path))
    first = onnx_backend.onnx_model_path(tiny_model, int8=False)
    stamp = first.stat().st_mtime_ns
    calls = []
    monkeypatch.setattr(onnx_backend.subprocess, "run", lambda *a, **k: calls.append(a))
    assert onnx_backend.onnx_model_path(tiny_model, int8=False) == first
    assert first.stat().st_mtime_ns == stamp and not calls


def test_missing_model_says_what_to_do(tmp_path: Path) -> None:
    from proxy.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match=r"local-dir DIR.*HF_ENDPOINT"):
        load_backend(_config(tmp_path / "nowhere", "torch"))


def test_compiled_torch_backend_matches_the_reference(
    tiny_model: Path, pairs: list[tuple[str, str]], reference: list[float]
) -> None:
    # torch.compile is opt-in (model.compile); it is compiled at load, before the port opens.
    cfg = dataclasses.replace(_config(tiny_model, "torch"), compile=True, max_length=MAX_LENGTH)
    model = load_backend(cfg)
    got = model.score_pairs(pairs, MAX_LENGTH)
    assert max(abs(a - b) for a, b in zip(got, reference, strict=True)) <= 1e-5


def test_pair_tokenizer_matches_transformers(
    tiny_model: Path, pairs: list[tuple[str, str]]
) -> None:
    from transformers import AutoTokenizer

    from proxy.rerank.hf import PairTokenizer, tokenize_pairs

    ours = PairTokenizer(tiny_model / "tokenizer.json")
    theirs = AutoTokenizer.from_pretrained(tiny_model)
    long_query = [(" ".join(["protein"] * 200), "short document")]
    for max_length in (MAX_LENGTH, 512):
        for batch in (pairs, long_query):
            got = ours.encode_pairs(batch, max_length)
            want = tokenize_pairs(theirs, batch, max_length)
            assert [g["input_ids"] for g in got] == [w["input_ids"] for w in want]
            assert [g["attention_mask"] for g in got] == [w["attention_mask"] for w in want]


@pytest.mark.parametrize(
    ("backend", "device", "cls"),
    [("auto", "auto", "OnnxBackend"), ("openvino", "cpu", "OpenVinoBackend")],
)
def test_onnx_graph_backends_serve_without_torch_or_transformers(
    backend: str, device: str, cls: str, tiny_model: Path, tmp_path: Path
) -> None:
    # torch maps ~500 MB of CUDA libraries into the process: the ONNX graph paths (ONNX
    # Runtime, OpenVINO) must not need it.
    import os
    import subprocess
    import sys

    _skip_unless_available(backend)
    code = (
        "import sys, dataclasses\n"
        "from proxy.config import ModelConfig\n"
        "from proxy.rerank.loader import load_backend\n"
        "cfg = dataclasses.replace(\n"
        f"    ModelConfig(), name={str(tiny_model)!r}, backend={backend!r}, device={device!r}\n"
        ")\n"
        "b = load_backend(cfg)\n"
        "assert len(b.score_pairs([('q', 'a document')], 64)) == 1\n"
        "print(type(b).__name__, 'torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    env = {**os.environ, "RERANK_PROXY_STATE": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == [cls, "False", "False"]


@pytest.mark.parametrize("backend", ["openvino", "openvino-bf16"])
def test_openvino_refuses_cuda(backend: str, tmp_path: Path) -> None:
    from proxy.errors import ModelLoadError

    cfg = dataclasses.replace(_config(tmp_path, backend), device="cuda")
    with pytest.raises(ModelLoadError, match=r"CPU only.*model\.device: cpu"):
        load_backend(cfg)


def test_openvino_bf16_refuses_a_cpu_without_native_bf16(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("openvino")
    from proxy.errors import ModelLoadError
    from proxy.rerank import openvino_backend

    monkeypatch.setattr(openvino_backend, "cpu_has_bf16", lambda core: False)
    with pytest.raises(ModelLoadError, match=r"lacks native bf16.*another backend"):
        load_backend(_config(tmp_path, "openvino-bf16"))


def test_openvino_with_device_auto_runs_on_the_cpu_even_where_a_gpu_is_seen(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("openvino")
    from proxy.rerank import device

    monkeypatch.setenv("RERANK_PROXY_STATE", str(tmp_path))
    monkeypatch.setattr(device, "cuda_device_count", lambda: 1)
    assert device.pick_device("auto") == "cuda"
    model = load_backend(dataclasses.replace(_config(tiny_model, "openvino"), device="auto"))
    assert model.device == "cpu"  # the service sizes its groups for a CPU
    assert len(model.score_pairs([("q", "a document")], 64)) == 1


def test_export_cache_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from proxy.rerank.onnx_backend import cache_root

    # The container image sets RERANK_PROXY_CACHE (its model volume); it wins.
    monkeypatch.setenv("RERANK_PROXY_CACHE", str(tmp_path / "volume"))
    monkeypatch.setenv("RERANK_PROXY_STATE", str(tmp_path / "state"))
    assert cache_root() == tmp_path / "volume" / "onnx"
    monkeypatch.delenv("RERANK_PROXY_CACHE")
    assert cache_root() == tmp_path / "state" / "onnx"
    monkeypatch.delenv("RERANK_PROXY_STATE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "rerank-proxy" / "onnx"


def test_torch_on_cpu_keeps_freed_memory_for_reuse(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import platform

    from proxy.rerank import device, torch_backend

    if platform.libc_ver()[0] == "glibc":
        assert device.keep_freed_memory() is True  # mallopt accepted both settings
    calls: list[int] = []
    monkeypatch.setattr(torch_backend, "keep_freed_memory", lambda: calls.append(1) or True)
    load_backend(_config(tiny_model, "torch"))
    assert calls == [1]
