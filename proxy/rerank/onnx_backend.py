"""ONNX Runtime backend: fp32 (exact, the CPU default) and int8 (approximate, opt-in).

Uses `onnx/model.onnx` / `onnx/model_quantized.onnx` from the model directory when the
model ships them (mixedbread publishes both); otherwise exports the fp32 graph from the
PyTorch weights once (and quantises it dynamically for int8) into a cache directory keyed by
the weights' identity, so later starts only load it. Thread counts are set explicitly:
ONNX Runtime's settings are separate from PyTorch's.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import subprocess
import sys
import tempfile
import warnings
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .base import Backend
from .device import cpu_threads, default_batch_size, pick_device
from .hf import (
    PairTokenizer,
    length_sorted_batches,
    load_tokenizer,
    local_model_dir,
    model_load_error,
    pad_batch,
    tokenize_pairs,
)

if TYPE_CHECKING:
    from ..config import ModelConfig

logger = logging.getLogger(__name__)


def cache_root() -> Path:
    """Where ONNX exports go: $RERANK_PROXY_CACHE (the documented setting; the container
    image points it at the model volume), else $RERANK_PROXY_STATE (the development
    scripts' state directory), else ~/.cache/rerank-proxy."""
    base = (
        os.environ.get("RERANK_PROXY_CACHE")
        or os.environ.get("RERANK_PROXY_STATE")
        or Path.home() / ".cache" / "rerank-proxy"
    )
    return Path(base) / "onnx"


def _weights_key(model_dir: Path) -> str:
    h = hashlib.sha256(str(model_dir.resolve()).encode())
    for name in ("model.safetensors", "pytorch_model.bin", "config.json"):
        f = model_dir / name
        if f.exists():
            st = f.stat()
            h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def export_onnx(model_dir: Path, out: Path) -> Path:
    """Export the sequence-classification model to ONNX (fp32, dynamic batch and length)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    ids = torch.ones((2, 16), dtype=torch.long)
    mask = torch.ones((2, 16), dtype=torch.long)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp_file = Path(tmp) / "model.onnx"
        # The TorchScript exporter handles DeBERTa's relative attention; tracing it warns
        # that it is the legacy path, that shapes are traced (they are dynamic axes here)
        # and about tensor copies inside transformers' model code. A one-off step: silence.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (ids, mask),
                str(tmp_file),
                input_names=["input_ids", "attention_mask"],
                output_names=["logits"],
                dynamic_axes={
                    "input_ids": {0: "batch", 1: "sequence"},
                    "attention_mask": {0: "batch", 1: "sequence"},
                    "logits": {0: "batch"},
                },
                opset_version=17,
                dynamo=False,
            )
        os.replace(tmp_file, out)
    return out


def quantize_int8(fp32: Path, out: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp_file = Path(tmp) / "model_int8.onnx"
        quantize_dynamic(str(fp32), str(tmp_file), weight_type=QuantType.QInt8)
        os.replace(tmp_file, out)
    return out


def onnx_model_path(model_dir: Path, *, int8: bool) -> Path:
    """The ONNX file to load: the model's own, else a cached export."""
    shipped = model_dir / "onnx" / ("model_quantized.onnx" if int8 else "model.onnx")
    if shipped.exists():
        return shipped
    cached = cache_root() / _weights_key(model_dir)
    fp32 = cached / "model.onnx"
    if not fp32.exists():
        logger.info("exporting %s to ONNX (once) at %s", model_dir, fp32)
        # In a child process: the export needs torch, serving does not (~500 MB of RSS).
        proc = subprocess.run(
            [sys.executable, "-m", "proxy.rerank.onnx_backend", str(model_dir), str(fp32)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0 or not fp32.exists():
            raise RuntimeError(f"ONNX export failed: {proc.stderr.strip()[-2000:]}")
    if not int8:
        return fp32
    q = cached / "model_int8.onnx"
    if not q.exists():
        logger.info("quantising %s to int8 (once)", fp32)
        quantize_int8(fp32, q)
    return q


class OnnxGraphBackend(Backend):
    """What the ONNX Runtime and OpenVINO backends share: the model directory, the tokenizer
    (`tokenizer.json` alone when present: no transformers, no torch), the fp32 ONNX graph and
    the scoring loop. Subclasses load the graph into their runtime and implement `run_batch`.
    """

    #: the graph's input names (a batch feeds only these)
    inputs: frozenset[str] = frozenset({"input_ids", "attention_mask"})

    def _prepare(self, name: str, *, int8: bool = False) -> Path:
        """Load the tokenizer; return the ONNX file (the model's own, else a cached export)."""
        model_dir = local_model_dir(name)
        if model_dir is None:
            raise model_load_error(name, FileNotFoundError("model files not available locally"))
        fast = model_dir / "tokenizer.json"
        self.tokenizer: Any = (
            PairTokenizer(fast) if fast.exists() else load_tokenizer(str(model_dir))
        )
        return onnx_model_path(model_dir, int8=int8)

    @abstractmethod
    def run_batch(self, feed: dict[str, Any]) -> Any:
        """Logits, shape (batch, labels), for one padded batch of int64 arrays."""

    def score_pairs(self, pairs: Sequence[tuple[str, str]], max_length: int) -> list[float]:
        if isinstance(self.tokenizer, PairTokenizer):
            encoded = self.tokenizer.encode_pairs(pairs, max_length)
        else:
            encoded = tokenize_pairs(self.tokenizer, pairs, max_length)
        scores = [0.0] * len(pairs)
        pad_id = self.tokenizer.pad_token_id or 0
        for idx in length_sorted_batches(encoded, self.batch_size):
            batch = pad_batch(encoded, idx, pad_id)
            logits = self.run_batch({k: v for k, v in batch.items() if k in self.inputs})
            for i, logit in zip(idx, logits[:, 0].tolist(), strict=True):
                scores[i] = 1.0 / (1.0 + math.exp(-logit)) if logit > -700 else 0.0
        return scores


class OnnxBackend(OnnxGraphBackend):
    def __init__(
        self, name: str, *, device: str, int8: bool, batch_size: int, threads: int
    ) -> None:
        import onnxruntime as ort

        path = self._prepare(name, int8=int8)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = cpu_threads(threads)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
            self.device = "cuda"
        self.session: Any = ort.InferenceSession(str(path), opts, providers=providers)
        self.inputs = frozenset(i.name for i in self.session.get_inputs())
        self.batch_size = default_batch_size(batch_size, self.device)
        self.model_id = f"{name}|onnx|{'int8' if int8 else 'fp32'}"

    def run_batch(self, feed: dict[str, Any]) -> Any:
        return self.session.run(None, feed)[0]


def _load(cfg: ModelConfig, *, int8: bool) -> Backend:
    try:
        return OnnxBackend(
            cfg.name,
            device=pick_device(cfg.device),
            int8=int8,
            batch_size=cfg.batch_size,
            threads=cfg.threads,
        )
    except ImportError as exc:
        raise model_load_error(cfg.name, exc) from exc


def load_onnx(cfg: ModelConfig) -> Backend:
    return _load(cfg, int8=False)


def load_onnx_int8(cfg: ModelConfig) -> Backend:
    return _load(cfg, int8=True)


if __name__ == "__main__":  # the export step, run in a child process by onnx_model_path
    export_onnx(Path(sys.argv[1]), Path(sys.argv[2]))
