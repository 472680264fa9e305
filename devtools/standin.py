"""The builder of random-weight stand-ins for `mixedbread-ai/mxbai-rerank-xsmall-v1`.

The project's machines cannot reach the model hub, so tests, benchmarks and `scripts/demo`
build a model directory here: the real architecture (DeBERTa-v3-xsmall cross-encoder,
70,830,337 parameters, the same compute per pair; or a `tiny` variant of the same class) with
RANDOM weights, the classification head rescaled so logits on real text have mean 0 and
standard deviation 2 (random weights alone give nearly constant logits), and a SentencePiece
tokenizer trained on local text (`devtools.standin_tokenizer`), all saved in the hub's layout
so the product's normal loading path runs unchanged. Rankings from a stand-in are
meaningless: use it for speed, memory and plumbing, never for quality. The marker file that
says "stand-in" is defined by the product (`proxy.rerank.standin`, which warns when it serves
one); this module writes it last, and imports torch, transformers and sentencepiece only
inside the functions that need them.

Command line, from the checkout's root::

    python -m devtools.standin OUT_DIR [--size exact|tiny] [--corpus FILE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from devtools.standin_tokenizer import SPECIAL_IDS, build_tokenizer
from devtools.texts import iter_corpus_texts, synthetic_texts
from proxy.rerank.standin import MARKER_FILE, is_standin, read_standin_marker

if TYPE_CHECKING:
    import torch

MODEL_ID: Final = "mixedbread-ai/mxbai-rerank-xsmall-v1"
VERSION: Final = 1
"""Bump when the build changes in a way that should invalidate cached stand-ins."""

Size = Literal["exact", "tiny"]
SIZES: Final[tuple[Size, ...]] = ("exact", "tiny")

# Geometry of mixedbread-ai/mxbai-rerank-xsmall-v1 (copied from the architecture file kept
# beside the shared model notes; that folder does not ship with the package).
ARCHITECTURE: dict[str, Any] = {
    "architectures": ["DebertaV2ForSequenceClassification"],
    "model_type": "deberta-v2",
    "vocab_size": 128100,
    "hidden_size": 384,
    "num_hidden_layers": 12,
    "num_attention_heads": 6,
    "intermediate_size": 1536,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 0,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-7,
    "relative_attention": True,
    "max_relative_positions": -1,
    "position_buckets": 256,
    "norm_rel_ebd": "layer_norm",
    "share_att_key": True,
    "pos_att_type": ["p2c", "c2p"],
    "position_biased_input": False,
    "pad_token_id": 0,
    "pooler_dropout": 0,
    "pooler_hidden_act": "gelu",
    "pooler_hidden_size": 384,
    "num_labels": 1,
    "id2label": {"0": "LABEL_0"},
    "label2id": {"LABEL_0": 0},
    "torch_dtype": "float16",
}
EXACT_PARAMETERS: Final = 70_830_337

# Same class and code paths, scaled down for fast tests. The vocabulary keeps room for a
# tokenizer of up to 8,191 pieces plus the added [MASK]. A wider initialisation makes the
# small random network's output depend on its input: at 0.02 the [CLS] features vary by
# about 0.4% of their size across texts, so bf16 rounding alone reorders the scores
# (correlation with fp32 about 0.7); at 0.1 they vary by about 14% (the exact geometry at
# 0.02: about 6%) and bf16 scores correlate with fp32 at about 0.998.
TINY_OVERRIDES: dict[str, Any] = {
    "initializer_range": 0.1,
    "vocab_size": 8192,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 128,
    "position_buckets": 64,
    "pooler_hidden_size": 64,
}

#: the classification head's tensors in the checkpoint (what `drop_head` leaves out)
HEAD_TENSOR_PREFIXES: Final = ("classifier.", "pooler.")

TARGET_LOGIT_STD: Final = 2.0
CALIBRATION_PAIRS: Final = 256
CALIBRATION_MAX_LENGTH: Final = 128
_CALIBRATION_BATCH: Final = 32

README_TEXT: Final = f"""\
# RANDOM-WEIGHT STAND-IN - NOT {MODEL_ID}

**THIS MODEL HAS RANDOM WEIGHTS. ITS SCORES AND RANKINGS ARE MEANINGLESS.**

It was built locally by `devtools.standin` because the model hub cannot be reached:
the architecture of `{MODEL_ID}` with random weights (classification head rescaled so
logits on text have mean 0 and standard deviation 2), and a SentencePiece tokenizer trained
on local text, saved in the hub's layout so the normal loading code runs unchanged.

Use it only for speed, memory, and end-to-end plumbing tests. Never report ranking quality
(nDCG, MRR, ...) measured with it. `{MARKER_FILE}` in this directory marks it as a stand-in.
"""


def architecture(size: Size = "exact") -> dict[str, Any]:
    """The `DebertaV2Config` keyword arguments for `size` (a fresh copy)."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, not {size!r}")
    arch = json.loads(json.dumps(ARCHITECTURE))
    if size == "tiny":
        arch.update(TINY_OVERRIDES)
    return dict(arch)


def build_standin_model(
    out_dir: str | os.PathLike[str],
    texts: Iterable[str],
    *,
    size: Size = "exact",
    seed: int = 0,
    vocab_size: int = 8000,
    labels: Sequence[str] | None = None,
    drop_head: bool = False,
) -> Path:
    """Build a stand-in model directory at `out_dir` and return its path.

    `texts` trains the tokenizer (a SentencePiece unigram model; fewer pieces than
    `vocab_size` when the corpus is too small for more) and calibrates the classification
    head. `out_dir` must be missing, empty, or an earlier stand-in (which is overwritten).

    Two options build models the proxy must refuse, for its tests: `labels` names the
    head's outputs (a head with several logits, like an NLI model's; default: the one
    logit of a cross-encoder), and `drop_head` leaves the classification head's tensors
    (`classifier.*`, `pooler.*`) out of the checkpoint, as in a base model.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, not {size!r}")
    arch = architecture(size)
    if not len(SPECIAL_IDS) < vocab_size < arch["vocab_size"]:
        raise ValueError(
            f"vocab_size must be between {len(SPECIAL_IDS) + 1} and {arch['vocab_size'] - 1}"
            f" for size {size!r} (the embedding matrix has {arch['vocab_size']} rows,"
            " one more token is the added [MASK])"
        )
    if labels is not None:
        if not labels or len(set(labels)) != len(labels):
            raise ValueError("labels must be distinct names, at least one")
        arch.update(
            num_labels=len(labels),
            id2label={str(i): name for i, name in enumerate(labels)},
            label2id={name: i for i, name in enumerate(labels)},
        )
    corpus = [t for t in (" ".join(text.split()) for text in texts) if t]
    if len(set(corpus)) < 2:
        raise ValueError("need at least two distinct non-empty texts")

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not is_standin(out):
        raise FileExistsError(f"{out} is not empty and is not a stand-in model directory")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER_FILE).unlink(missing_ok=True)  # an interrupted rebuild must not look done

    with tempfile.TemporaryDirectory(prefix="standin-tok-") as work:
        tokenizer, pieces = build_tokenizer(corpus, Path(work), out, vocab_size)
    calibration = _build_model(out, arch, tokenizer, corpus, seed)
    options: dict[str, Any] = {}
    if labels is not None:
        options["labels"] = list(labels)
    if drop_head:
        _drop_tensors(out / "model.safetensors", HEAD_TENSOR_PREFIXES)
        options["drop_head"] = True

    (out / "README.md").write_text(README_TEXT, encoding="utf-8")
    marker = {
        "standin": True,
        "model": MODEL_ID,
        "version": VERSION,
        "size": size,
        "seed": seed,
        "vocab_size": vocab_size,
        "tokenizer_pieces": pieces,
        "tokenizer_length": len(tokenizer),
        "note": "RANDOM WEIGHTS: scores and rankings are meaningless",
        **calibration,
        **options,
    }
    # The marker goes last: its presence means the directory is complete.
    (out / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    return out


def ensure_standin_model(
    cache_root: str | os.PathLike[str],
    texts_factory: Callable[[], Iterable[str]],
    *,
    size: Size,
    seed: int = 0,
) -> Path:
    """The cached stand-in `cache_root/standin-<size>-v<VERSION>-<seed>`, built on first use.

    `texts_factory` is called only when a build is needed. The build happens in a temporary
    directory beside the final one and is renamed into place, so readers never see a partial
    model and concurrent builders do not clash (the first rename wins).
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, not {size!r}")
    root = Path(cache_root)
    final = root / f"standin-{size}-v{VERSION}-{seed}"
    if is_standin(final):
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=root))
    try:
        build_standin_model(tmp, texts_factory(), size=size, seed=seed)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared like any model dir
        try:
            tmp.rename(final)
        except OSError:
            if not is_standin(final):  # not a lost race: a stale, incomplete directory
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


# --- model ---------------------------------------------------------------------------------


def _build_model(
    out: Path, arch: dict[str, Any], tokenizer: Any, corpus: Sequence[str], seed: int
) -> dict[str, Any]:
    """Build, calibrate and save the model (fp16 safetensors); return calibration facts."""
    import torch
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    kwargs = dict(arch)
    # The saved dtype follows the weights (fp16); passing it here only triggers a
    # deprecation notice in transformers 5 (`torch_dtype` became `dtype`).
    kwargs.pop("torch_dtype", None)
    config = DebertaV2Config(**kwargs)
    torch.manual_seed(seed)
    model = DebertaV2ForSequenceClassification(config).eval()  # type: ignore[no-untyped-call]
    # Round every weight to fp16 first: calibration then sees exactly the weights that a
    # reload of the fp16 checkpoint in fp32 will see.
    model.half().float()

    features = _classifier_inputs(model, tokenizer, corpus)
    head = model.classifier
    with torch.no_grad():
        before = features @ head.weight.T.squeeze(-1) + head.bias
        mean, std = float(before.mean()), float(before.std())
        if not std > 0.0 or not torch.isfinite(before).all():
            raise RuntimeError(f"cannot calibrate the head: logit std {std!r} on the corpus")
        scale = TARGET_LOGIT_STD / std
        head.weight.mul_(scale)
        head.bias.sub_(mean).mul_(scale)
        head.half().float()
        after = features @ head.weight.T.squeeze(-1) + head.bias
    logit_mean, logit_std = float(after.mean()), float(after.std())
    if not (abs(logit_mean) < 0.5 and 1.5 <= logit_std <= 2.5):
        raise RuntimeError(
            f"calibration failed after fp16 rounding: mean {logit_mean:.3f}, std {logit_std:.3f}"
        )
    model.half().save_pretrained(str(out), safe_serialization=True)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "calibration_pairs": int(features.shape[0]),
        "calibration_max_length": CALIBRATION_MAX_LENGTH,
        "raw_logit_mean": mean,
        "raw_logit_std": std,
        "logit_mean": logit_mean,
        "logit_std": logit_std,
    }


def _drop_tensors(checkpoint: Path, prefixes: tuple[str, ...]) -> None:
    """Rewrite a safetensors checkpoint without the tensors whose names start with
    `prefixes`."""
    from safetensors.torch import load_file, save_file

    tensors = {k: v for k, v in load_file(str(checkpoint)).items() if not k.startswith(prefixes)}
    tmp = checkpoint.with_name(checkpoint.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, checkpoint)


def calibration_pairs(
    texts: Sequence[str], limit: int = CALIBRATION_PAIRS
) -> list[tuple[str, str]]:
    """The (query, document) pairs used to calibrate: text i with text (i*7+3) % n."""
    n = len(texts)
    return [(texts[i], texts[(i * 7 + 3) % n]) for i in range(min(limit, n))]


def _classifier_inputs(model: Any, tokenizer: Any, corpus: Sequence[str]) -> torch.Tensor:
    """The classifier's input features (fp32) over the calibration pairs."""
    import torch

    captured: list[torch.Tensor] = []

    def hook(_module: Any, inputs: tuple[torch.Tensor, ...]) -> None:
        captured.append(inputs[0].detach().float())

    pairs = calibration_pairs(corpus)
    handle = model.classifier.register_forward_pre_hook(hook)
    try:
        with torch.inference_mode():
            for start in range(0, len(pairs), _CALIBRATION_BATCH):
                chunk = pairs[start : start + _CALIBRATION_BATCH]
                enc = tokenizer(
                    [q for q, _ in chunk],
                    [d for _, d in chunk],
                    truncation=True,
                    max_length=CALIBRATION_MAX_LENGTH,
                    padding=True,
                    return_tensors="pt",
                )
                model(**enc)
    finally:
        handle.remove()
    # Leave inference mode's tensors behind so the head can be updated with them.
    return torch.cat(captured).clone()


# --- command line --------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.standin",
        description=f"Build a RANDOM-WEIGHT stand-in for {MODEL_ID} (meaningless rankings).",
    )
    parser.add_argument("out_dir", type=Path, help="directory to write (missing or empty)")
    parser.add_argument("--size", choices=SIZES, default="exact")
    parser.add_argument(
        "--corpus",
        type=Path,
        nargs="*",
        default=[],
        metavar="FILE",
        help="plain text lines, or BEIR .jsonl/.jsonl.gz with title/text (default: synthetic)",
    )
    parser.add_argument("--max-texts", type=int, default=5000, help="texts read in all (5000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab-size", type=int, default=8000)
    args = parser.parse_args(argv)

    texts: list[str] = []
    for path in args.corpus:
        for text in iter_corpus_texts(path):
            if len(texts) >= args.max_texts:
                break
            texts.append(text)
    if not args.corpus:
        print("no --corpus given: training the tokenizer on synthetic text", file=sys.stderr)
        texts = synthetic_texts(min(args.max_texts, 2000), args.seed)

    start = time.perf_counter()
    try:
        out = build_standin_model(
            args.out_dir, texts, size=args.size, seed=args.seed, vocab_size=args.vocab_size
        )
    except (ValueError, FileExistsError) as exc:
        parser.error(str(exc))
    marker = read_standin_marker(out)
    print(
        f"built RANDOM-WEIGHT stand-in ({args.size}) in {time.perf_counter() - start:.1f}s"
        f" at {out}:"
        f" {marker['parameters']:,} parameters, {marker['tokenizer_pieces']} tokenizer pieces"
        f" from {len(texts)} texts, logits mean {marker['logit_mean']:.3f}"
        f" std {marker['logit_std']:.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
