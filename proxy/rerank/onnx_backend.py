"""ONNX Runtime backend: fp32 (exact, the CPU default) and int8 (approximate, opt-in).

Uses `onnx/model.onnx` / `onnx/model_quantized.onnx` from the model directory when the
model ships them (mixedbread publishes both); otherwise exports the fp32 graph from the
PyTorch weights once (and quantises it dynamically for int8) into a cache directory keyed by
the weights' identity, so later starts only load it. The export runs in a child process
and is renamed into the cache only when it succeeded; when it fails, the `ModelLoadError`
carries the exporter's own error, and a cached export that does not load is discarded and
made again. Thread counts are set explicitly: ONNX Runtime's settings are separate from
PyTorch's.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from abc import abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import ModelLoadError
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
from .sanity import check_model_dir, missing_head_problem, model_dir_problem

if TYPE_CHECKING:
    from ..config import ModelConfig

logger = logging.getLogger(__name__)

#: the export child's exit status when it refuses the model (its message is the last line)
_EXIT_REFUSED = 3


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
    """Export the sequence-classification model to ONNX (fp32, dynamic batch and length).

    Raises `ModelLoadError` when the checkpoint lacks the classification head's weights
    (transformers would only warn and initialise them randomly).
    """
    import torch
    from transformers import AutoModelForSequenceClassification

    model, info = AutoModelForSequenceClassification.from_pretrained(
        model_dir, dtype=torch.float32, output_loading_info=True
    )
    problem = missing_head_problem(info["missing_keys"], model.base_model_prefix)
    if problem:
        raise ModelLoadError(problem)
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


def shipped_onnx(model_dir: Path, *, int8: bool) -> Path:
    """Where a model that ships its own ONNX graph keeps it (mixedbread's layout)."""
    return model_dir / "onnx" / ("model_quantized.onnx" if int8 else "model.onnx")


def export_dir(model_dir: Path) -> Path:
    """The cache directory of this model's exports (keyed by the weights' identity)."""
    return cache_root() / _weights_key(model_dir)


def onnx_model_path(model_dir: Path, *, int8: bool, name: str | None = None) -> Path:
    """The ONNX file to load: the model's own, else a cached export (made once).

    Raises `ModelLoadError` when the export fails, with the exporter's own error.
    """
    shipped = shipped_onnx(model_dir, int8=int8)
    if shipped.exists():
        return shipped
    cached = export_dir(model_dir)
    fp32 = cached / "model.onnx"
    if not fp32.exists():
        logger.info("exporting %s to ONNX (once) at %s", model_dir, fp32)
        _export_in_child(model_dir, fp32, name or str(model_dir))
    if not int8:
        return fp32
    q = cached / "model_int8.onnx"
    if not q.exists():
        logger.info("quantising %s to int8 (once)", fp32)
        quantize_int8(fp32, q)
    return q


def _export_in_child(model_dir: Path, out: Path, name: str) -> None:
    """Run `export_onnx` in a child process (the export needs torch, serving does not:
    ~500 MB of RSS) into a temporary directory beside `out`, renamed into place only once
    the child succeeded: the cache never holds a partial export, even if the child dies."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out.parent))
    except OSError as exc:
        raise ModelLoadError(
            f"cannot load model {name!r}: cannot write its ONNX export to {out.parent}:"
            f" {exc.strerror or exc}; set RERANK_PROXY_CACHE to a writable directory"
        ) from exc
    try:
        tmp_file = tmp / out.name
        proc = subprocess.run(
            [sys.executable, "-m", "proxy.rerank.onnx_backend", str(model_dir), str(tmp_file)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0 or not tmp_file.is_file() or tmp_file.stat().st_size == 0:
            raise _export_error(name, model_dir, proc)
        os.replace(tmp_file, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _export_error(
    name: str, model_dir: Path, proc: subprocess.CompletedProcess[str]
) -> ModelLoadError:
    """The export's own error, as one line; the tail of its output is logged."""
    output = (proc.stderr or "").strip()
    if output:
        logger.error(
            "ONNX export of %s failed; its output ends with:\n%s", model_dir, output[-4000:]
        )
    error = exporter_error(output)
    if proc.returncode == _EXIT_REFUSED:  # the exporter refused the model: say only why
        return ModelLoadError(f"cannot load model {name!r}: {error}")
    if proc.returncode < 0:
        how = f"killed by signal {-proc.returncode}"
    elif proc.returncode:
        how = f"exit status {proc.returncode}"
    else:
        how = "it wrote no model"
    return ModelLoadError(
        f"cannot load model {name!r}: the ONNX export failed ({how}): {error or 'no output'}"
    )


def exporter_error(output: str, limit: int = 800) -> str:
    """The error in a child's stderr, as one line: the exception (message included) of the
    last traceback, else the last line written."""
    # Progress bars rewrite their line with carriage returns: keep what was written last.
    lines = [line.rsplit("\r", 1)[-1].rstrip() for line in output.splitlines()]
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent")]
    text = ""
    if starts:
        after = lines[starts[-1] + 1 :]
        # The frames are indented; the exception and its message are not.
        first = next((i for i, line in enumerate(after) if line and not line[0].isspace()), None)
        if first is not None:
            text = " ".join(" ".join(after[first:]).split())
    if not text:
        text = next((line.strip() for line in reversed(lines) if line.strip()), "")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def discard_export(model_dir: Path) -> None:
    """Remove this model's cached exports (the fp32 graph and the int8 one made from it)."""
    cached = export_dir(model_dir)
    for file in ("model.onnx", "model_int8.onnx"):
        (cached / file).unlink(missing_ok=True)


_T = TypeVar("_T")


class OnnxGraphBackend(Backend):
    """What the ONNX Runtime and OpenVINO backends share: the model directory and its
    checks, the tokenizer (`tokenizer.json` alone when present: no transformers, no torch),
    the fp32 ONNX graph (a cached export that does not load is made again, once) and the
    scoring loop. Subclasses load the graph into their runtime and implement `run_batch`.
    """

    #: the graph's input names (a batch feeds only these)
    inputs: frozenset[str] = frozenset({"input_ids", "attention_mask"})
    #: the logits' column that is the relevance logit (`model.label`, else the only one)
    column: int = 0

    def _prepare(self, name: str, label: int | None = None) -> Path:
        """Find and check the model directory, load the tokenizer; return the directory."""
        if model_dir_problem(name):
            raise model_load_error(name, FileNotFoundError(name))
        model_dir = local_model_dir(name)
        if model_dir is None:
            raise model_load_error(name, FileNotFoundError("model files not available locally"))
        self.column = check_model_dir(name, model_dir, label)
        fast = model_dir / "tokenizer.json"
        self.tokenizer: Any = (
            PairTokenizer(fast) if fast.exists() else load_tokenizer(str(model_dir))
        )
        return model_dir

    def _open_graph(
        self, name: str, model_dir: Path, open_graph: Callable[[Path], _T], *, int8: bool = False
    ) -> _T:
        """`open_graph(path)` on the ONNX file; a cached export that does not load (a file
        damaged after it was written, or by an older exporter) is discarded and made again."""
        try:
            return open_graph(onnx_model_path(model_dir, int8=int8, name=name))
        except ModelLoadError:
            raise
        except Exception as exc:  # onnxruntime, OpenVINO and onnx raise their own types
            shipped = shipped_onnx(model_dir, int8=int8)
            if shipped.exists():
                raise ModelLoadError(
                    f"cannot load model {name!r}: {shipped} does not load: {_one_line(exc)}"
                ) from exc
            logger.warning(
                "the cached ONNX export of %s does not load (%s): exporting it again",
                model_dir,
                _one_line(exc),
            )
            discard_export(model_dir)
        try:
            return open_graph(onnx_model_path(model_dir, int8=int8, name=name))
        except ModelLoadError:
            raise
        except Exception as exc:  # onnxruntime, OpenVINO and onnx raise their own types
            raise ModelLoadError(
                f"cannot load model {name!r}: its fresh ONNX export does not load:"
                f" {_one_line(exc)} (model.backend: torch serves without the export)"
            ) from exc

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
            for i, logit in zip(idx, logits[:, self.column].tolist(), strict=True):
                scores[i] = 1.0 / (1.0 + math.exp(-logit)) if logit > -700 else 0.0
        return scores


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class OnnxBackend(OnnxGraphBackend):
    def __init__(
        self,
        name: str,
        *,
        device: str,
        int8: bool,
        batch_size: int,
        threads: int,
        label: int | None = None,
    ) -> None:
        import onnxruntime as ort

        model_dir = self._prepare(name, label)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = cpu_threads(threads)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
            self.device = "cuda"
        self.session: Any = self._open_graph(
            name,
            model_dir,
            lambda path: ort.InferenceSession(str(path), opts, providers=providers),
            int8=int8,
        )
        self.inputs = frozenset(i.name for i in self.session.get_inputs())
        self.batch_size = default_batch_size(batch_size, self.device)
        self.model_id = f"{name}|onnx|{'int8' if int8 else 'fp32'}" + (
            "" if label is None else f"|label{label}"
        )

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
            label=cfg.label,
        )
    except ImportError as exc:
        raise model_load_error(cfg.name, exc) from exc


def load_onnx(cfg: ModelConfig) -> Backend:
    return _load(cfg, int8=False)


def load_onnx_int8(cfg: ModelConfig) -> Backend:
    return _load(cfg, int8=True)


def _export_main(argv: Sequence[str]) -> int:
    """The export step, run in a child process by `onnx_model_path`: MODEL_DIR OUT."""
    try:
        export_onnx(Path(argv[0]), Path(argv[1]))
    except ModelLoadError as exc:
        print(exc, file=sys.stderr)
        return _EXIT_REFUSED
    return 0


if __name__ == "__main__":
    raise SystemExit(_export_main(sys.argv[1:]))
