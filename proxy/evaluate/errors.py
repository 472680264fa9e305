"""The exceptions of `rerank-proxy eval`.

    EvalError
    ├── InputError      a judgments, topics or template file is missing or malformed
    │                   (`FILE[:LINE]: reason`); also a ValueError. The CLI exits 2.
    ├── UsageError      options that do not fit together; also a ValueError. Exit 2.
    └── ClusterError    the cluster or a proxy failed or answered with an error. Exit 1.

Third-party exceptions (aiohttp, OSError, JSON decoding) are translated where they occur.
"""

from __future__ import annotations

import os


class EvalError(Exception):
    """Base of every error `rerank-proxy eval` raises itself."""


class InputError(EvalError, ValueError):
    """An input file is missing or malformed; the message is `FILE[:LINE]: reason`."""

    def __init__(self, path: str | os.PathLike[str], reason: str, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        self.reason = reason
        super().__init__(f"{self.path}{'' if line is None else f':{line}'}: {reason}")

    def __reduce__(self) -> tuple[type[InputError], tuple[str, str, int | None]]:
        return type(self), (self.path, self.reason, self.line)


class UsageError(EvalError, ValueError):
    """Options that do not fit together (or a proxy config that would not rerank)."""


class ClusterError(EvalError):
    """The cluster or a proxy could not be reached, or answered with an error."""
