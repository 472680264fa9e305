"""Loading from the Hugging Face hub or a local directory, and pair tokenisation.

Shared by every model backend. Loading errors become `ModelLoadError` with instructions,
because the most common failure is a machine that cannot reach the hub.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError
from .sanity import DEFAULT_MODEL, looks_like_path, model_dir_problem

HUB_HELP = (
    "The model could not be fetched. If this machine cannot reach the Hugging Face hub,"
    " download the model elsewhere (`hf download {name} --local-dir DIR`) and set"
    " `model.name` to that directory, or point HF_ENDPOINT at a hub mirror, or set"
    " HF_HUB_OFFLINE=1 to use a warm local cache."
)
PATH_HELP = (
    "Correct model.name, or download the model (`hf download {default} --local-dir DIR`,"
    " on a machine that reaches the Hugging Face hub) and set model.name to DIR; or give a"
    " hub id instead of a path, with HF_ENDPOINT pointing at a hub mirror if the hub is"
    " unreachable."
)


def model_load_error(name: str, exc: BaseException) -> ModelLoadError:
    """The error for a model that cannot be found or read, with what to do about it."""
    problem = model_dir_problem(name)
    if problem is not None:
        help_ = PATH_HELP.format(default=DEFAULT_MODEL)
        return ModelLoadError(f"cannot load model {name!r}: {problem}. {help_}")
    reason = " ".join(str(exc).split()).rstrip(".") or type(exc).__name__
    if looks_like_path(name):  # a model directory that is there but does not load
        return ModelLoadError(f"cannot load model {name!r}: {reason}")
    return ModelLoadError(f"cannot load model {name!r}: {reason}. " + HUB_HELP.format(name=name))


def load_tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as exc:  # transformers, tokenizers and the hub raise many types
        raise model_load_error(name, exc) from exc


def local_model_dir(name: str) -> Path | None:
    """The directory holding the model files (local path, or the hub cache snapshot)."""
    path = Path(name)
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(name, local_files_only=os.environ.get("HF_HUB_OFFLINE") == "1")
        )
    except Exception:  # noqa: BLE001 - any hub failure means "not available locally"
        return None


class PairTokenizer:
    """`tokenizer.json` through the `tokenizers` library alone (no transformers, no torch).

    Encodes exactly as transformers' fast tokenizer does for the same file (the post-
    processor in tokenizer.json adds `[CLS] q [SEP] d [SEP]`); a test checks the ids agree.
    """

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(path))
        self._tok.no_padding()
        self.pad_token_id = self._tok.token_to_id("[PAD]") or 0

    def encode_pairs(
        self, pairs: Sequence[tuple[str, str]], max_length: int
    ) -> list[dict[str, list[int]]]:
        try:
            self._tok.enable_truncation(max_length, strategy="only_second")
            encs = self._tok.encode_batch(list(pairs))
        except Exception:  # noqa: BLE001 - the query alone is longer than max_length
            self._tok.enable_truncation(max_length, strategy="longest_first")
            encs = self._tok.encode_batch(list(pairs))
        return [{"input_ids": e.ids, "attention_mask": e.attention_mask} for e in encs]


def tokenize_pairs(
    tokenizer: Any, pairs: Sequence[tuple[str, str]], max_length: int
) -> list[dict[str, list[int]]]:
    """Encode `[CLS] q [SEP] d [SEP]`, truncating the document side to fit `max_length`.

    Falls back to truncating both sides when the query alone does not fit.
    """
    queries = [q for q, _ in pairs]
    docs = [d for _, d in pairs]
    try:
        enc = tokenizer(queries, docs, truncation="only_second", max_length=max_length)
    except Exception:  # noqa: BLE001 - the tokenizer raises when the query alone is too long
        enc = tokenizer(queries, docs, truncation="longest_first", max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    return [{k: enc[k][i] for k in keys} for i in range(len(pairs))]


def length_sorted_batches(
    encoded: Sequence[dict[str, list[int]]], batch_size: int
) -> Iterator[list[int]]:
    """Indices grouped into batches of similar token length (minimal padding)."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def pad_batch(
    encoded: Sequence[dict[str, list[int]]], idx: Sequence[int], pad_id: int
) -> dict[str, Any]:
    """Right-pad one batch to its longest member, as int64 numpy arrays."""
    import numpy as np

    width = max(len(encoded[i]["input_ids"]) for i in idx)
    out: dict[str, Any] = {}
    for key in encoded[idx[0]]:
        fill = pad_id if key == "input_ids" else 0
        arr = np.full((len(idx), width), fill, dtype=np.int64)
        for row, i in enumerate(idx):
            values = encoded[i][key]
            arr[row, : len(values)] = values
        out[key] = arr
    return out
