"""Loading what `model:` names: the backend name for `auto`, a local Backend, an Executor.

Above `base` (the interfaces) and `local` (the inference thread): `load_executor` picks a
registered executor (`remote`) or puts the local model on its thread. Blocking: call before
the port opens.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from .base import Backend, Executor
from .registry import BACKENDS, EXECUTORS

if TYPE_CHECKING:
    from ..config import ModelConfig


def resolve_backend_name(cfg: ModelConfig) -> str:
    """`auto`: torch fp16 on CUDA, ONNX Runtime fp32 on CPU when installed, else torch."""
    if cfg.backend != "auto":
        return cfg.backend
    from .device import pick_device

    if pick_device(cfg.device) == "cuda":
        return "torch"
    try:
        importlib.import_module("onnxruntime")
        importlib.import_module("onnx")
    except ImportError:
        return "torch"
    return "onnx"


def load_backend(cfg: ModelConfig) -> Backend:
    """Load the configured backend (blocking: call before the port opens)."""
    module_name, _, attr = BACKENDS[resolve_backend_name(cfg)].partition(":")
    factory: Callable[[ModelConfig], Backend] = getattr(importlib.import_module(module_name), attr)
    return factory(cfg)


def load_executor(cfg: ModelConfig) -> Executor:
    """The configured execution part: a registered executor (`remote`), or the local model
    on its inference thread (blocking: call before the port opens)."""
    name = resolve_backend_name(cfg)
    if name in EXECUTORS:
        module_name, _, attr = EXECUTORS[name].partition(":")
        make: Callable[[ModelConfig], Executor] = getattr(
            importlib.import_module(module_name), attr
        )
        return make(cfg)
    from .local import LocalExecutor

    return LocalExecutor(load_backend(cfg), name=name)
