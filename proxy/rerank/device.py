"""Device selection and thread settings, shared by the torch and ONNX backends."""

from __future__ import annotations

import ctypes
import os
import sys


def cuda_device_count() -> int:
    """GPUs the CUDA driver reports, asked through libcuda directly.

    Importing torch just to ask costs ~500 MB of RSS (its CUDA libraries get mapped), which
    the ONNX backend otherwise never needs.
    """
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if libcuda.cuInit(0) != 0 or libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def pick_device(device: str) -> str:
    """`auto` -> `cuda` when the CUDA driver reports a GPU, else `cpu`."""
    if device != "auto":
        return device
    return "cuda" if cuda_device_count() > 0 else "cpu"


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
