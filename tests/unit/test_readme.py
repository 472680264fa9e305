"""The README's configuration table is the one the code generates."""

from __future__ import annotations

from proxy.config import config_table
from tests.conftest import REPO_ROOT


def test_readme_config_table_is_current() -> None:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("<!-- config-table:start -->\n") + len("<!-- config-table:start -->\n")
    end = text.index("<!-- config-table:end -->")
    assert text[start:end].strip() == config_table().strip(), "run: rerank-proxy config-table"
