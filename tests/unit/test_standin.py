"""The random-weight stand-in (devtools.standin): hub layout, tokenizer, logits, cache reuse.

Builds the tiny variant once per module (a few seconds). Tests that need torch skip
without it; the corpus-reading and argument checks run everywhere.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from devtools import standin
from devtools.standin import VERSION, build_standin_model, ensure_standin_model
from devtools.texts import iter_corpus_texts, synthetic_texts
from proxy.rerank.standin import MARKER_FILE, is_standin, read_standin_marker

HUB_FILES = (
    "config.json",
    "model.safetensors",
    "spm.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
CORPUS = synthetic_texts(600, seed=1)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int]]:
    """The tiny stand-in in a fresh cache, and how many times its texts were asked for."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("sentencepiece")
    calls: list[int] = []

    def texts() -> Iterable[str]:
        calls.append(1)
        return CORPUS

    cache = tmp_path_factory.mktemp("standin-cache")
    path = ensure_standin_model(cache, texts, size="tiny", seed=0)
    return path, calls


@pytest.fixture(scope="module")
def model_dir(built: tuple[Path, list[int]]) -> Path:
    return built[0]


def eval_pairs(n: int = 64) -> list[tuple[str, str]]:
    """Pairs unlike the calibration ones: short queries against other texts."""
    texts = synthetic_texts(200, seed=7)
    return [(" ".join(texts[i].split()[:6]), texts[(i * 13 + 5) % len(texts)]) for i in range(n)]


@pytest.mark.model
def test_hub_layout_files(model_dir: Path) -> None:
    from safetensors import safe_open

    for name in (*HUB_FILES, "README.md", MARKER_FILE):
        assert (model_dir / name).is_file(), name
    assert "RANDOM-WEIGHT STAND-IN" in (model_dir / "README.md").read_text(encoding="utf-8")

    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    assert config["model_type"] == "deberta-v2"
    assert config["architectures"] == ["DebertaV2ForSequenceClassification"]
    assert len(config["id2label"]) == 1
    assert config.get("dtype", config.get("torch_dtype")) == "float16"
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as fh:
        dtypes = {fh.get_tensor(key).dtype for key in fh.keys()}  # noqa: SIM118
    assert {str(d) for d in dtypes} == {"torch.float16"}

    tok_config = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert tok_config["tokenizer_class"] in ("DebertaV2Tokenizer", "DebertaV2TokenizerFast")
    assert tok_config["model_max_length"] == 512
    special = json.loads((model_dir / "special_tokens_map.json").read_text(encoding="utf-8"))
    assert special["cls_token"] == "[CLS]" and special["mask_token"] == "[MASK]"


@pytest.mark.model
def test_special_token_ids(model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok: Any = AutoTokenizer.from_pretrained(str(model_dir))
    assert (tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    pieces = read_standin_marker(model_dir)["tokenizer_pieces"]
    assert tok.mask_token == "[MASK]" and tok.mask_token_id == pieces  # added after the pieces
    assert len(tok) == pieces + 1

    ids = tok("insulin resistance", "Insulin signaling in liver cells.")["input_ids"]
    assert ids[0] == 1 and ids[-1] == 2 and ids.count(2) == 2
    sep = ids.index(2)
    assert 1 < sep < len(ids) - 2  # [CLS] q... [SEP] d... [SEP], both sides non-empty
    assert 3 not in ids  # no [UNK] for text like the training corpus
    assert tok.decode(ids[1:sep]) == "insulin resistance"


@pytest.mark.model
def test_reloaded_logits_are_spread(model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok: Any = AutoTokenizer.from_pretrained(str(model_dir))
    model, info = AutoModelForSequenceClassification.from_pretrained(
        str(model_dir), dtype=torch.float32, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info["mismatched_keys"]
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    model.eval()

    pairs = eval_pairs()
    enc = tok(
        [q for q, _ in pairs],
        [d for _, d in pairs],
        truncation="only_second",
        max_length=256,
        padding=True,
        return_tensors="pt",
    )
    with torch.inference_mode():
        logits = model(**enc).logits[:, 0]
    assert 1.0 <= float(logits.std()) <= 3.0
    marker = read_standin_marker(model_dir)
    assert abs(marker["logit_mean"]) < 0.5 and 1.5 <= marker["logit_std"] <= 2.5


@pytest.mark.model
def test_cross_encoder_scores(model_dir: Path) -> None:
    pytest.importorskip("sentence_transformers")
    import torch
    from sentence_transformers import CrossEncoder

    # sentence-transformers keeps the checkpoint's fp16 on CPU unless told otherwise.
    ce = CrossEncoder(str(model_dir), device="cpu", model_kwargs={"dtype": torch.float32})
    scores = ce.predict(eval_pairs(16))
    assert len(set(scores.tolist())) > 1
    assert all(0.0 < s < 1.0 for s in scores.tolist())


@pytest.mark.model
def test_is_standin(model_dir: Path, tmp_path: Path) -> None:
    assert is_standin(model_dir)
    assert not is_standin(tmp_path)
    marker = read_standin_marker(model_dir)
    assert marker["size"] == "tiny" and marker["seed"] == 0 and marker["version"] == VERSION
    assert marker["vocab_size"] == 8000 and marker["tokenizer_pieces"] <= 8000


@pytest.mark.model
def test_ensure_reuses_cache(built: tuple[Path, list[int]]) -> None:
    path, calls = built
    assert path.name == f"standin-tiny-v{VERSION}-0"
    assert calls == [1]
    weights = path / "model.safetensors"
    mtime = weights.stat().st_mtime_ns

    def must_not_build() -> Iterable[str]:
        raise AssertionError("the cached stand-in was rebuilt")

    assert ensure_standin_model(path.parent, must_not_build, size="tiny", seed=0) == path
    assert weights.stat().st_mtime_ns == mtime
    assert calls == [1]
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary leftovers


def test_build_refuses_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(FileExistsError):
        build_standin_model(tmp_path, CORPUS, size="tiny")
    assert (tmp_path / "precious.txt").read_text(encoding="utf-8") == "keep me"


def test_build_checks_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="size"):
        build_standin_model(tmp_path / "a", CORPUS, size="huge")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="vocab_size"):
        build_standin_model(tmp_path / "b", CORPUS, size="tiny", vocab_size=10_000)
    with pytest.raises(ValueError, match="distinct"):
        build_standin_model(tmp_path / "c", ["same", "same", " "], size="tiny")
    assert not any(tmp_path.iterdir())


def test_architecture_is_the_published_geometry() -> None:
    exact = standin.architecture("exact")
    assert exact["vocab_size"] == 128100 and exact["hidden_size"] == 384
    assert exact["num_hidden_layers"] == 12 and exact["num_attention_heads"] == 6
    assert "_comment" not in exact
    tiny = standin.architecture("tiny")
    assert tiny["model_type"] == exact["model_type"] and tiny["hidden_size"] < 384
    assert tiny["vocab_size"] > 8000  # room for the default tokenizer plus [MASK]
    exact["hidden_size"] = 1
    assert standin.ARCHITECTURE["hidden_size"] == 384  # callers get copies


def test_iter_corpus_texts(tmp_path: Path) -> None:
    beir = tmp_path / "corpus.jsonl.gz"
    with gzip.open(beir, "wt", encoding="utf-8") as fh:
        fh.write(json.dumps({"_id": "1", "title": "Title", "text": "Body text."}) + "\n")
        fh.write(json.dumps({"_id": "2", "title": "", "text": "Only body."}) + "\n")
        fh.write("\n")
        fh.write(json.dumps({"_id": "3", "title": "", "text": ""}) + "\n")
    assert list(iter_corpus_texts(beir)) == ["Title Body text.", "Only body."]

    plain = tmp_path / "lines.txt"
    plain.write_text("first line\n\n  second line  \n", encoding="utf-8")
    assert list(iter_corpus_texts(plain)) == ["first line", "second line"]


def test_synthetic_texts_are_deterministic() -> None:
    assert synthetic_texts(50, seed=3) == synthetic_texts(50, seed=3)
    assert synthetic_texts(50, seed=3) != synthetic_texts(50, seed=4)
    assert len(set(synthetic_texts(50))) == 50


def test_the_product_keeps_only_the_marker_check() -> None:
    code = (
        "import json, sys, proxy.rerank.standin as m;"
        " print(json.dumps([sorted(sys.modules), sorted(vars(m))]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    modules, names = json.loads(out.stdout)
    assert not {m.split(".")[0] for m in modules} & {"devtools", "torch", "transformers"}
    assert {"MARKER_FILE", "is_standin", "read_standin_marker"} <= set(names)
    assert "build_standin_model" not in names
