"""The mark of a random-weight stand-in model directory, and the check for it.

Machines that cannot reach the model hub run tests, benchmarks and the demo on a stand-in:
the real architecture with RANDOM weights, built by the development tool `devtools.standin`
(not part of the installed package). A stand-in directory holds `MARKER_FILE`, a JSON object
describing the build; this module owns that file's name and reading it, so the product can
warn that a stand-in's rankings are meaningless and the builder writes the same mark.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Final

MARKER_FILE: Final = "standin.json"


def is_standin(model_dir: str | os.PathLike[str]) -> bool:
    """Whether `model_dir` holds a random-weight stand-in (its marker file)."""
    return (Path(model_dir) / MARKER_FILE).is_file()


def read_standin_marker(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The marker's contents (size, seed, vocabulary size, builder version, calibration)."""
    with open(Path(model_dir) / MARKER_FILE, encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    return data
