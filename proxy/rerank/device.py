"""Device selection and thread settings, shared by the torch and ONNX backends.

`cpu_threads(0)` counts the CPUs this process may really use: the affinity mask, bounded by
the container's CPU quota (cgroup v2 `cpu.max`, cgroup v1 `cpu.cfs_quota_us` over
`cpu.cfs_period_us`), because a container limited to 2 CPUs on a 64-core host still sees 64
cores in its affinity mask, and 64 inference threads sharing 2 CPUs' worth of time are much
slower than 2 (each is throttled in turn, and every barrier waits for the slowest).
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
from pathlib import Path, PurePosixPath
from typing import Final

#: where cgroup file systems are mounted (v2 directly, v1 one directory per controller)
CGROUP_ROOT: Final = Path("/sys/fs/cgroup")
#: this process's cgroup paths, one line per hierarchy (`0::/path` for v2)
PROC_CGROUP: Final = Path("/proc/self/cgroup")
#: the directories the v1 `cpu` controller is mounted at, by distribution habit
_V1_CPU_DIRS: Final = ("cpu", "cpu,cpuacct", "cpuacct,cpu")


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


def cpu_threads(
    threads: int, *, cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP
) -> int:
    """Threads for inference: the configured number, else the CPUs this process may use
    (the affinity mask, bounded by the cgroup CPU quota rounded up; at least 1)."""
    if threads > 0:
        return threads
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_limit(cgroup_root, proc_cgroup=proc_cgroup)
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, *, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """The CPU quota in CPUs (`200000 100000` -> 2.0), or None when there is none.

    Reads cgroup v2 `cpu.max` and cgroup v1 `cpu.cfs_quota_us`/`cpu.cfs_period_us` at the
    mount root (inside a container, the container's own cgroup) and along this process's
    cgroup path from `proc_cgroup` (on a host, where the root has no quota); a quota on any
    ancestor bounds its descendants, so the smallest one found applies. Unreadable or
    malformed files count as no quota.
    """
    v2_path, v1_path = _own_cgroup_paths(proc_cgroup)
    limits = [_v2_limit(d / "cpu.max") for d in _along(root, v2_path)]
    for name in _V1_CPU_DIRS:
        base = root / name
        if base.is_dir():
            limits.extend(_v1_limit(d) for d in _along(base, v1_path))
    found = [limit for limit in limits if limit is not None]
    return min(found) if found else None


def _own_cgroup_paths(proc_cgroup: Path) -> tuple[str, str]:
    """This process's (v2, v1 cpu controller) cgroup paths; "/" where not listed."""
    v2 = v1 = "/"
    try:
        lines = proc_cgroup.read_text(encoding="utf-8").splitlines()
    except OSError:
        return v2, v1
    for line in lines:
        _, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if not path.startswith("/"):
            continue
        if controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def _along(base: Path, cgroup_path: str) -> list[Path]:
    """`base` and the directories from it down to `cgroup_path` below it that exist."""
    dirs = [base]
    here = base
    for part in PurePosixPath(cgroup_path).parts[1:]:
        if part in ("", ".", ".."):
            break
        here = here / part
        if not here.is_dir():
            break
        dirs.append(here)
    return dirs


def _read_numbers(path: Path) -> list[str] | None:
    try:
        return path.read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError):
        return None


def _quota(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _v2_limit(cpu_max: Path) -> float | None:
    """`cpu.max`: "QUOTA PERIOD" in microseconds, QUOTA `max` for no limit."""
    fields = _read_numbers(cpu_max)
    if not fields or fields[0] == "max":
        return None
    return _quota(fields[0], fields[1] if len(fields) > 1 else "100000")


def _v1_limit(directory: Path) -> float | None:
    """`cpu.cfs_quota_us` (-1 for no limit) over `cpu.cfs_period_us`."""
    quota = _read_numbers(directory / "cpu.cfs_quota_us")
    period = _read_numbers(directory / "cpu.cfs_period_us")
    if not quota or not period:
        return None
    return _quota(quota[0], period[0])


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
