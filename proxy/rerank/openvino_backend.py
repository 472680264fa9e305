"""OpenVINO backend on CPU: fp32 (exact) and bf16 (approximate, opt-in).

Runs the same fp32 ONNX graph as the ONNX Runtime backend (`onnx/model.onnx` from the model
directory, else the cached export), compiled for the CPU with the LATENCY hint (THROUGHPUT
measured 2x slower for these small batches). On CPUs with native bf16 (AVX512-BF16/AMX)
OpenVINO's default inference precision is bf16, so the exact backend asks for f32 explicitly;
`openvino-bf16` asks for bf16 and refuses to load on CPUs without native support, where it
would only be emulated. Compiled models are cached next to the ONNX export, so later starts
skip the compilation. Like the ONNX path, serving needs neither torch nor transformers.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ModelLoadError
from .base import Backend
from .device import cpu_threads, default_batch_size
from .hf import model_load_error
from .onnx_backend import OnnxGraphBackend, cache_root

if TYPE_CHECKING:
    from ..config import ModelConfig

logger = logging.getLogger(__name__)

#: backend precision -> OpenVINO's INFERENCE_PRECISION_HINT
_HINTS = {"fp32": "f32", "bf16": "bf16"}


def compiled_cache_dir() -> Path:
    """OpenVINO's compiled-model cache, beside the ONNX exports."""
    return cache_root().parent / "openvino"


def cpu_has_bf16(core: Any) -> bool:
    """Whether the CPU computes bf16 natively (OpenVINO's own capability report)."""
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoBackend(OnnxGraphBackend):
    def __init__(
        self,
        name: str,
        *,
        precision: str,
        batch_size: int,
        threads: int,
        label: int | None = None,
    ) -> None:
        import openvino

        core = openvino.Core()
        if precision == "bf16" and not cpu_has_bf16(core):
            raise ModelLoadError(
                f"cannot load model {name!r} with model.backend openvino-bf16: this CPU lacks"
                " native bf16 (AVX512-BF16 or AMX), so bf16 would only be emulated; choose"
                " another backend (`openvino` or `onnx` for exact fp32 scores)."
            )
        model_dir = self._prepare(name, label)
        cache = compiled_cache_dir()
        try:
            cache.mkdir(parents=True, exist_ok=True)
            core.set_property({"CACHE_DIR": str(cache)})
        except OSError as exc:  # a read-only home: compile at every start instead
            logger.warning("OpenVINO model cache disabled (%s): %s", cache, exc)
        settings = {
            # Explicit even for fp32: on CPUs with native bf16 the default is bf16.
            "INFERENCE_PRECISION_HINT": _HINTS[precision],
            "INFERENCE_NUM_THREADS": cpu_threads(threads),
            "PERFORMANCE_HINT": "LATENCY",
        }
        self.compiled: Any = self._open_graph(
            name, model_dir, lambda path: core.compile_model(str(path), "CPU", settings)
        )
        self.request: Any = self.compiled.create_infer_request()
        self.output = self.compiled.output(0)
        self.inputs = frozenset(n for i in self.compiled.inputs for n in i.get_names())
        self.batch_size = default_batch_size(batch_size, "cpu")
        self.model_id = f"{name}|openvino|{precision}" + ("" if label is None else f"|label{label}")

    def run_batch(self, feed: dict[str, Any]) -> Any:
        return self.request.infer(feed)[self.output]


def _load(cfg: ModelConfig, precision: str) -> Backend:
    backend = "openvino" if precision == "fp32" else f"openvino-{precision}"
    # OpenVINO runs on the CPU: `auto` means the CPU here; only an explicit cuda is refused.
    if cfg.device == "cuda":
        raise ModelLoadError(
            f"model.backend {backend} runs on the CPU only, but model.device is cuda;"
            " set model.device: cpu or auto, or choose a CUDA backend (`torch`, `torch-fp32`)."
        )
    try:
        import openvino  # noqa: F401
    except ImportError as exc:
        raise ModelLoadError(
            f"cannot load model {cfg.name!r}: model.backend {backend} needs the openvino"
            f" package (pip install 'rerank-proxy[openvino]'): {exc}"
        ) from exc
    try:
        return OpenVinoBackend(
            cfg.name,
            precision=precision,
            batch_size=cfg.batch_size,
            threads=cfg.threads,
            label=cfg.label,
        )
    except ImportError as exc:
        raise model_load_error(cfg.name, exc) from exc


def load_openvino(cfg: ModelConfig) -> Backend:
    return _load(cfg, "fp32")


def load_openvino_bf16(cfg: ModelConfig) -> Backend:
    return _load(cfg, "bf16")
