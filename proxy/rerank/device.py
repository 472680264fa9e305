"""Device selection and thread settings, shared by the torch and ONNX backends."""

from __future__ import annotations

import os


def pick_device(device: str) -> str:
    """`auto` -> `cuda` when torch sees a GPU, else `cpu`."""
    if device != "auto":
        return device
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_threads(threads: int) -> int:
    """Threads for inference: the configured number, else the cores this process may use."""
    if threads > 0:
        return threads
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def default_batch_size(batch_size: int, device: str) -> int:
    """Small batches are faster on CPU (less padding), large ones on GPU."""
    if batch_size > 0:
        return batch_size
    return 64 if device == "cuda" else 8
