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


#: mallopt(3) parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(limit: int = 1 << 30) -> bool:
    """Have glibc keep freed blocks of up to `limit` bytes for reuse.

    By default glibc serves every large allocation (from 128 KB, rising to at most 32 MB)
    with its own mmap and unmaps it on free, so each PyTorch forward pass on the CPU
    page-faults and zeroes its activations afresh (tens of MB per batch; more with bf16,
    which adds cast copies). Keeping them: torch fp32 +22%, torch bf16 +57% pairs/s on the
    benchmark machine (bench/RESULTS.md). The cost is that RSS stays at the peak of one
    batch instead of falling back between batches. Returns False where it does not apply
    (not glibc).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, limit)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 * limit))
