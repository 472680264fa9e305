"""Logging set-up for the CLI: text or JSON lines. Only the CLI configures handlers.

JSON lines come from `python-json-logger` (one object per line; `extra=` fields become keys;
tracebacks and warnings go through the same formatter). The access logger passes its fields
as `extra`, so in JSON mode every access line carries method, path, status, target index,
rule, outcome, reason, times, bytes, client address and request id as separate keys. A
malformed request's parser error is logged without its bytes (they can hold a credential).
Libraries
that print on their own (transformers, huggingface_hub, tqdm progress bars) are routed
through the root handler, and progress bars are off in JSON mode.
"""

from __future__ import annotations

import logging
import os
import sys

from aiohttp.http_exceptions import HttpProcessingError
from pythonjsonlogger.json import JsonFormatter

_LIBRARIES = ("transformers", "huggingface_hub", "sentence_transformers", "onnxruntime", "torch")


def json_formatter() -> logging.Formatter:
    return JsonFormatter(
        "%(levelname)s %(name)s %(process)d %(message)s",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp="ts",
        json_ensure_ascii=False,
    )


def adopt_library_loggers() -> None:
    """Send libraries' own log handlers through ours (call again after importing them)."""
    for name in _LIBRARIES:
        lib = logging.getLogger(name)
        lib.handlers[:] = []
        lib.propagate = True


class _ParserErrorRedaction(logging.Filter):
    """aiohttp logs a malformed request's parser error with the offending bytes (an over-long
    `Authorization` header's first 100): keep the error's kind, drop the bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = "rejected a malformed request (%s, status %s); its bytes are not logged"
            record.args = (type(exc).__name__, exc.code)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def redact_parser_errors() -> None:
    """Install the redaction on aiohttp's server logger (idempotent)."""
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _ParserErrorRedaction) for f in server.filters):
        server.addFilter(_ParserErrorRedaction())


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(json_formatter())
        # No progress bars or colours in machine-read logs.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TQDM_DISABLE", "1")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)  # warnings.warn(...) becomes a `py.warnings` log record
    adopt_library_loggers()
