"""The stand-in's tokenizer: a SentencePiece unigram model trained on local text.

`build_tokenizer` trains it, wraps it in transformers' DeBERTa-v2 tokenizer class with the
real model's special tokens and ids, and saves it in the hub's layout (`spm.model`,
`tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json`). sentencepiece and
transformers are imported inside the function, so this module imports without them.
"""

from __future__ import annotations

import json
import os
import shutil
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

SPECIAL_TOKENS: Final[dict[str, str]] = {
    "bos_token": "[CLS]",
    "eos_token": "[SEP]",
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}
SPECIAL_IDS: Final[dict[str, int]] = {"[PAD]": 0, "[CLS]": 1, "[SEP]": 2, "[UNK]": 3}
MODEL_MAX_LENGTH: Final = 512
# Keys `from_pretrained` records about the load it did, not about the tokenizer.
_LOADER_ARTEFACTS: Final = ("is_local", "local_files_only", "name_or_path")


def build_tokenizer(
    corpus: Sequence[str], work: Path, out: Path, vocab_size: int
) -> tuple[Any, int]:
    """Train the SentencePiece model, save the tokenizer files into `out`; (tokenizer, pieces)."""
    import sentencepiece as spm
    import transformers

    text_file = work / "corpus.txt"
    with open(text_file, "w", encoding="utf-8") as fh:
        for text in corpus:
            fh.write(text + "\n")
        # Every printable ASCII character gets a piece, so queries never hit [UNK] on them.
        fh.write(" ".join(string.ascii_letters + string.digits + string.punctuation) + "\n")
    spm_dir = work / "spm"
    spm_dir.mkdir()
    spm.SentencePieceTrainer.train(
        input=str(text_file),
        model_prefix=str(spm_dir / "spm"),
        model_type="unigram",
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # small corpora: fewer pieces instead of an error
        character_coverage=1.0,
        pad_id=SPECIAL_IDS["[PAD]"],
        bos_id=SPECIAL_IDS["[CLS]"],
        eos_id=SPECIAL_IDS["[SEP]"],
        unk_id=SPECIAL_IDS["[UNK]"],
        pad_piece="[PAD]",
        bos_piece="[CLS]",
        eos_piece="[SEP]",
        unk_piece="[UNK]",
        max_sentence_length=1 << 16,
        num_threads=max(1, min(os.cpu_count() or 1, 8)),
        minloglevel=2,
    )
    spm_file = spm_dir / "spm.model"
    pieces = int(spm.SentencePieceProcessor(model_file=str(spm_file)).get_piece_size())

    # transformers 4 converts the slow (sentencepiece) tokenizer into the fast class; in
    # transformers 5 both names are the one tokenizers-backed class, which converts the
    # SentencePiece model itself.
    tok_cls: Any = getattr(transformers, "DebertaV2TokenizerFast", None)
    if tok_cls is None:
        tok_cls = transformers.DebertaV2Tokenizer
    tokenizer = tok_cls.from_pretrained(
        str(spm_dir), model_max_length=MODEL_MAX_LENGTH, **SPECIAL_TOKENS
    )
    if tokenizer.mask_token_id is None or tokenizer.mask_token_id == tokenizer.unk_token_id:
        tokenizer.add_special_tokens({"mask_token": "[MASK]"})
    for piece, want in SPECIAL_IDS.items():
        got = tokenizer.convert_tokens_to_ids(piece)
        if got != want:
            raise RuntimeError(f"tokenizer maps {piece} to {got}, expected {want}")
    if tokenizer.convert_tokens_to_ids("[MASK]") != pieces:
        raise RuntimeError("[MASK] is not the added token right after the SentencePiece pieces")

    tokenizer.save_pretrained(str(out))
    shutil.copyfile(spm_file, out / "spm.model")
    stm = out / "special_tokens_map.json"
    if not stm.exists():  # transformers 5 no longer writes it; the hub layout has it
        stm.write_text(json.dumps(SPECIAL_TOKENS, indent=2) + "\n", encoding="utf-8")
    _tidy_tokenizer_config(out / "tokenizer_config.json")
    return tokenizer, pieces


def _tidy_tokenizer_config(path: Path) -> None:
    """Drop what describes this build rather than the tokenizer.

    `from_pretrained` records `is_local`/`local_files_only` about the temporary directory it
    read. transformers 5 also lists the SentencePiece control pieces ([PAD], [CLS], [SEP])
    as `extra_special_tokens`, a list; they are already the named special tokens, and
    transformers 4 expects a mapping under that key, so a redundant list is removed.
    """
    with open(path, encoding="utf-8") as fh:
        cfg: dict[str, Any] = json.load(fh)
    for key in _LOADER_ARTEFACTS:
        cfg.pop(key, None)
    extra = cfg.get("extra_special_tokens")
    if isinstance(extra, list) and set(map(str, extra)) <= set(SPECIAL_TOKENS.values()):
        del cfg["extra_special_tokens"]
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
