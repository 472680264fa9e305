"""CPU threads from the affinity mask and the container's CPU quota (cgroup v1 and v2).

Each case lays out a fake cgroup file system in a temporary directory; the affinity mask is
pinned to 8 CPUs so the expected thread counts do not depend on the machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.rerank import device
from proxy.rerank.device import cgroup_cpu_limit, cpu_threads

AFFINITY = 8


@pytest.fixture(autouse=True)
def eight_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: set(range(AFFINITY)))


def lay_out(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="ascii")


V1_HOST = "4:memory:/user.slice\n2:cpu,cpuacct:/user.slice/app.scope\n0::/\n"

CASES: list[tuple[str, dict[str, str], float | None, int]] = [
    # (case, files under the cgroup root; "self" is /proc/self/cgroup, quota in CPUs, threads)
    ("no cgroup files", {}, None, AFFINITY),
    ("v2 no limit", {"cpu.max": "max 100000\n"}, None, AFFINITY),
    ("v2 two CPUs", {"cpu.max": "200000 100000\n"}, 2.0, 2),
    ("v2 1.5 CPUs rounds up", {"cpu.max": "150000 100000\n"}, 1.5, 2),
    ("v2 a tenth of a CPU is still one thread", {"cpu.max": "10000 100000\n"}, 0.1, 1),
    ("v2 more CPUs than the affinity mask", {"cpu.max": "1600000 100000\n"}, 16.0, AFFINITY),
    ("v2 quota without a period", {"cpu.max": "300000\n"}, 3.0, 3),
    ("v2 malformed", {"cpu.max": "lots 100000\n"}, None, AFFINITY),
    ("v2 empty file", {"cpu.max": ""}, None, AFFINITY),
    (
        "v2 host: the limit is on this process's cgroup, not the root",
        {
            "self": "0::/system.slice/proxy.service\n",
            "system.slice/proxy.service/cpu.max": "300000 100000",
        },
        3.0,
        3,
    ),
    (
        "v2 a parent's smaller limit bounds the child",
        {
            "self": "0::/a/b\n",
            "a/cpu.max": "100000 100000",
            "a/b/cpu.max": "400000 100000",
        },
        1.0,
        1,
    ),
    (
        "v1 no limit",
        {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"},
        None,
        AFFINITY,
    ),
    (
        "v1 three CPUs",
        {"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"},
        3.0,
        3,
    ),
    (
        "v1 cpu,cpuacct mount, period 50ms",
        {"cpu,cpuacct/cpu.cfs_quota_us": "125000", "cpu,cpuacct/cpu.cfs_period_us": "50000"},
        2.5,
        3,
    ),
    ("v1 quota without a period file", {"cpu/cpu.cfs_quota_us": "300000\n"}, None, AFFINITY),
    (
        "v1 host: the limit is on this process's cgroup",
        {
            "self": V1_HOST,
            "cpu,cpuacct/cpu.cfs_quota_us": "-1",
            "cpu,cpuacct/cpu.cfs_period_us": "100000",
            "cpu,cpuacct/user.slice/app.scope/cpu.cfs_quota_us": "200000",
            "cpu,cpuacct/user.slice/app.scope/cpu.cfs_period_us": "100000",
        },
        2.0,
        2,
    ),
    (
        "v1 container: the listed path is not below the mount (the mount is the container)",
        {
            "self": "2:cpu:/docker/0123abcd\n",
            "cpu/cpu.cfs_quota_us": "100000",
            "cpu/cpu.cfs_period_us": "100000",
        },
        1.0,
        1,
    ),
    (
        "v1 and v2 both limit: the smaller wins",
        {
            "cpu.max": "400000 100000",
            "cpu/cpu.cfs_quota_us": "200000",
            "cpu/cpu.cfs_period_us": "100000",
        },
        2.0,
        2,
    ),
]


@pytest.mark.parametrize(
    ("files", "quota", "threads"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_cpu_quota_bounds_the_threads(
    files: dict[str, str], quota: float | None, threads: int, tmp_path: Path
) -> None:
    root = tmp_path / "cgroup"
    root.mkdir()
    self_cgroup = tmp_path / "self-cgroup"
    if "self" in files:
        self_cgroup.write_text(files.pop("self"), encoding="ascii")
    lay_out(root, files)
    assert cgroup_cpu_limit(root, proc_cgroup=self_cgroup) == quota
    assert cpu_threads(0, cgroup_root=root, proc_cgroup=self_cgroup) == threads


def test_configured_threads_win(tmp_path: Path) -> None:
    lay_out(tmp_path, {"cpu.max": "100000 100000"})
    assert cpu_threads(6, cgroup_root=tmp_path, proc_cgroup=tmp_path / "none") == 6


def test_affinity_mask_bounds_the_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: {3})
    lay_out(tmp_path, {"cpu.max": "400000 100000"})
    assert cpu_threads(0, cgroup_root=tmp_path, proc_cgroup=tmp_path / "none") == 1


def test_unreadable_quota_counts_as_none(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").mkdir()  # reading a directory raises IsADirectoryError
    assert cgroup_cpu_limit(tmp_path, proc_cgroup=tmp_path / "none") is None


def test_this_machine() -> None:
    # Whatever the real files say, the answer is a thread count the process may use.
    assert 1 <= cpu_threads(0) <= AFFINITY


def test_odd_proc_cgroup_lines(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    lay_out(root, {"a/cpu.max": "100000 100000"})
    self_cgroup = tmp_path / "self"
    # A line without a path, and a path that climbs out: neither leads anywhere.
    self_cgroup.write_text("garbage\n0::/../a\n", encoding="ascii")
    assert cgroup_cpu_limit(root, proc_cgroup=self_cgroup) is None
    self_cgroup.write_text("garbage\n0::/a\n", encoding="ascii")
    assert cgroup_cpu_limit(root, proc_cgroup=self_cgroup) == 1.0
