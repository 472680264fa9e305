"""Checks that a model directory holds a single-logit cross-encoder, before it is loaded.

transformers loads many things that are not rerankers without complaint: an NLI model
(three labels) scores with whichever logit comes first, and a base model gets a freshly,
randomly initialised classification head with only a warning. Either would serve
meaningless scores. This module reads what it needs straight from the files (`config.json`
and the safetensors header, no torch, no transformers), so every backend and the start-up
preflight can refuse such a model with a message that says what to do. Each check returns
a problem as text, or None; `check_model_dir` turns a problem into a `ModelLoadError`.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from ..errors import ModelLoadError

DEFAULT_MODEL: Final = "mixedbread-ai/mxbai-rerank-xsmall-v1"

#: top-level tensor name prefixes of the sequence-classification heads transformers builds
#: (`classifier.*`: BERT, DeBERTa, RoBERTa, ELECTRA, ModernBERT, ...; `score.*`: decoder
#: models; `classification_head.*`: BART, T5; `logits_proj.*`: XLNet)
HEAD_PREFIXES: Final = ("classifier.", "score.", "classification_head.", "logits_proj.")

#: the largest safetensors header read (safetensors itself refuses more than 100 MB)
_MAX_HEADER: Final = 100_000_000

_HEAD_HELP: Final = (
    "it is a base model, not a trained cross-encoder; use a model trained for reranking"
    f" (such as {DEFAULT_MODEL}), or fine-tune this one first"
)


def looks_like_path(name: str) -> bool:
    """Whether `model.name` means a local directory rather than a hub id (`org/name`).

    A path: absolute, `./` or `../` relative, `~`, more than one `/`, existing on disk, or
    `dir/name` whose first part is an existing local directory.
    """
    if name in (".", "..") or name.startswith(("/", "./", "../", "~")):
        return True
    if name.count("/") > 1 or (os.sep != "/" and os.sep in name):
        return True
    if os.path.lexists(name):
        return True
    head, sep, _ = name.partition("/")
    return bool(sep) and os.path.isdir(head)


def model_dir_problem(name: str) -> str | None:
    """What is wrong with `name` as a local model directory; None when it is one, or when
    `name` is a hub id (which may be in the hub cache: not checked here)."""
    if not looks_like_path(name):
        return None
    path = Path(name)  # as the loaders read it: `~` is not expanded
    if not path.exists():
        if name.startswith("~"):
            return f"no model directory at {name!r} ('~' is not expanded: write the full path)"
        return f"no model directory at {name!r} (a path: hub ids look like 'org/name')"
    if not path.is_dir():
        return f"{name!r} is a file, not a model directory"
    if not (path / "config.json").is_file():
        return f"{name!r} is not a model directory: it has no config.json"
    return None


# --- labels ---------------------------------------------------------------------------------


def read_model_config(model_dir: Path) -> dict[str, Any]:
    """`config.json` of a model directory (raises OSError or ValueError)."""
    with open(model_dir / "config.json", encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict):
        raise ValueError("config.json is not a JSON object")
    return data


def label_names(config: Mapping[str, Any]) -> list[str]:
    """The classification head's labels, in logit order, as transformers reads them:
    `id2label` when present, else `num_labels` (default 2) generic names."""
    id2label = config.get("id2label")
    if isinstance(id2label, Mapping) and id2label:
        try:
            order = sorted(id2label, key=int)
        except (TypeError, ValueError):
            order = list(id2label)
        return [str(id2label[k]) for k in order]
    count = config.get("num_labels")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        count = 2  # transformers' PretrainedConfig default
    return [f"LABEL_{i}" for i in range(count)]


def _describe(labels: Sequence[str]) -> str:
    shown = ", ".join(labels[:8]) + (", ..." if len(labels) > 8 else "")
    return f"{len(labels)} label{'s' if len(labels) != 1 else ''} ({shown})"


def label_problem(labels: Sequence[str], label: int | None) -> str | None:
    """None when the model scores with one logit: its only one, or column `label`."""
    if label is None:
        if len(labels) == 1:
            return None
        return (
            f"model has {_describe(labels)}: it is not a single-logit cross-encoder; set"
            " model.label to the index of the relevance logit if you really mean it"
        )
    if 0 <= label < len(labels):
        return None
    allowed = "0" if len(labels) == 1 else f"0 to {len(labels) - 1}"
    return (
        f"model.label is {label}, but the model has {_describe(labels)}: it must be"
        f" {allowed}{' (or null)' if len(labels) == 1 else ''}"
    )


# --- the classification head ----------------------------------------------------------------


def safetensors_names(path: Path) -> list[str]:
    """Tensor names in a safetensors file, from its header alone (raises OSError, or
    ValueError for a file that is no safetensors file or is shorter than its header says).

    The format: an 8-byte little-endian header length, then a JSON object of
    name -> {dtype, shape, data_offsets} (an optional `__metadata__` entry aside), then the
    tensor data, whose offsets count from the end of the header.
    """
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path.name} is too short for a safetensors file")
        (size,) = struct.unpack("<Q", raw)
        if size > _MAX_HEADER:
            raise ValueError(f"{path.name} is not a safetensors file")
        header = fh.read(size)
        data_bytes = os.fstat(fh.fileno()).st_size - 8 - size
    try:
        table = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError):
        table = None
    if len(header) != size or not isinstance(table, dict):
        raise ValueError(f"{path.name} is not a safetensors file (or is truncated)")
    names = [k for k in table if k != "__metadata__"]
    try:
        needed = max((int(table[k]["data_offsets"][1]) for k in names), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        raise ValueError(f"{path.name} has a malformed header") from None
    if needed > data_bytes:
        raise ValueError(
            f"{path.name} is truncated ({data_bytes:,} bytes of tensor data where its header"
            f" says {needed:,}): an interrupted download? Fetch it again"
        )
    return names


def checkpoint_names(model_dir: Path) -> tuple[str, list[str]] | None:
    """(file, tensor names) of the model's safetensors checkpoint (one file, or the shard
    index's weight map); None when it has none (a `pytorch_model.bin` is not read here)."""
    single = model_dir / "model.safetensors"
    if single.is_file():
        return single.name, safetensors_names(single)
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        with open(index, encoding="utf-8") as fh:
            weight_map = json.load(fh).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index.name} has no weight_map")
        return index.name, list(weight_map)
    return None


def head_problem(names: Collection[str], where: str = "model.safetensors") -> str | None:
    """None when the checkpoint holds classification head weights."""
    if any(n.startswith(HEAD_PREFIXES) for n in names):
        return None
    searched = ", ".join(f"{p}*" for p in HEAD_PREFIXES)
    return (
        f"model checkpoint has no classification head weights (no {searched} tensor in"
        f" {where}): {_HEAD_HELP}"
    )


def missing_head_problem(missing_keys: Collection[str], base_model_prefix: str) -> str | None:
    """From transformers' loading info: None unless weights outside the base model (the
    head: `classifier.*`, `pooler.*`, ...) were missing and freshly initialised."""
    prefix = f"{base_model_prefix}." if base_model_prefix else "\0"
    head = sorted(k for k in missing_keys if not k.startswith(prefix))
    if not head:
        return None
    shown = ", ".join(head[:6]) + (", ..." if len(head) > 6 else "")
    return f"model checkpoint has no classification head weights ({shown}): {_HEAD_HELP}"


def check_loaded(
    name: str,
    labels: Sequence[str],
    label: int | None,
    missing_keys: Collection[str],
    base_model_prefix: str,
) -> int:
    """The checks on a model transformers has loaded; returns the logit column to score."""
    problem = label_problem(labels, label) or missing_head_problem(missing_keys, base_model_prefix)
    if problem:
        raise ModelLoadError(f"cannot load model {name!r}: {problem}")
    return label or 0


def model_problem(model_dir: Path, label: int | None) -> str | None:
    """The file-level checks of a local model directory: labels, then the head."""
    try:
        config = read_model_config(model_dir)
    except (OSError, ValueError) as exc:
        return f"cannot read {model_dir / 'config.json'}: {_reason(exc)}"
    problem = label_problem(label_names(config), label)
    if problem:
        return problem
    try:
        found = checkpoint_names(model_dir)
    except (OSError, ValueError) as exc:
        return f"cannot read the checkpoint in {model_dir}: {_reason(exc)}"
    return head_problem(found[1], found[0]) if found else None


def check_model_dir(name: str, model_dir: Path, label: int | None) -> int:
    """Refuse anything but a single-logit cross-encoder (`ModelLoadError` saying what is
    wrong and what to do); returns the logit column to score with (`label`, else 0)."""
    problem = model_problem(model_dir, label)
    if problem:
        raise ModelLoadError(f"cannot load model {name!r}: {problem}")
    return label or 0


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return " ".join(str(exc).split())
