"""The compose files parse with a real compose implementation (no engine needed)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.opensearch.yml"])
def test_compose_file_is_valid(name: str) -> None:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose is not installed (.ci/run installs it)")
    proc = subprocess.run(
        [exe, "-f", str(REPO_ROOT / "docker" / name), "config"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "rerank-proxy" in proc.stdout or "proxy" in proc.stdout
