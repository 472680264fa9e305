"""PyTorch backend: transformers' AutoModelForSequenceClassification.

fp32 on CPU (the published checkpoint is fp16, which is several times slower on CPU), fp16 on
CUDA, bf16 on CPU as an explicit, approximate choice. bf16 is mixed precision: the weights
stay fp32 and matrix products run in bf16 under autocast, while layer norms, softmax and the
residual stream stay fp32; on the stand-in this is about 4x closer to the fp32 scores than
casting the whole model to bf16, for about 5% less speed. Score = sigmoid(logit), as
mixedbread's `mxbai-rerank` and sentence-transformers' `CrossEncoder` compute it; with
`model.label` set, the logit is that column of the head's output. A model that is not a
single-logit cross-encoder is refused (`sanity`): from its files before loading when it is a
local directory, and from transformers' loading info (missing head weights) in every case.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .base import Backend
from .device import cpu_threads, default_batch_size, keep_freed_memory, pick_device
from .hf import length_sorted_batches, load_tokenizer, model_load_error, pad_batch, tokenize_pairs
from .sanity import check_loaded, check_model_dir, label_names, model_dir_problem

if TYPE_CHECKING:
    from ..config import ModelConfig


class TorchBackend(Backend):
    def __init__(
        self,
        name: str,
        *,
        device: str,
        dtype: str,
        batch_size: int,
        threads: int,
        compile: bool = False,
        max_length: int = 512,
        label: int | None = None,
    ) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification

        self.device = device
        if device == "cpu":
            torch.set_num_threads(cpu_threads(threads))
            keep_freed_memory()  # activations reused, not re-faulted, batch after batch
        # bf16 on CPU: fp32 weights, bf16 matrix products under autocast (see above).
        self.autocast = dtype == "bf16" and device == "cpu"
        torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
            "fp32" if self.autocast else dtype
        ]
        if model_dir_problem(name):
            raise model_load_error(name, FileNotFoundError(name))
        if Path(name).is_dir():  # refuse a wrong model before spending the load on it
            check_model_dir(name, Path(name), label)
        self.tokenizer = load_tokenizer(name)
        try:
            model, info = AutoModelForSequenceClassification.from_pretrained(
                name, dtype=torch_dtype, output_loading_info=True
            )
        except Exception as exc:  # the hub, transformers and safetensors raise many types
            raise model_load_error(name, exc) from exc
        labels = label_names({"id2label": dict(model.config.id2label)})
        #: the head's output column that is the relevance logit
        self.column = check_loaded(
            name, labels, label, info["missing_keys"], model.base_model_prefix
        )
        self.model: Any = model.to(device).eval()
        self.batch_size = default_batch_size(batch_size, device)
        self.model_id = f"{name}|torch|{dtype}" + ("" if label is None else f"|label{label}")
        self._torch = torch
        if compile:
            self.model = torch.compile(self.model, dynamic=True)
            # Compile now, before the port opens: a short and a full-length batch.
            for words in (4, max_length):
                self.score_pairs([("warm up", " ".join(["token"] * words))] * 2, max_length)

    def score_pairs(self, pairs: Sequence[tuple[str, str]], max_length: int) -> list[float]:
        torch = self._torch
        encoded = tokenize_pairs(self.tokenizer, pairs, max_length)
        pad_id = self.tokenizer.pad_token_id or 0
        order: list[int] = []
        outputs = []
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=self.autocast):
            # Results stay on the device until the end, so preparing the next batch on the
            # CPU overlaps the GPU's work on this one (one synchronisation per call).
            for idx in length_sorted_batches(encoded, self.batch_size):
                batch = {
                    k: torch.from_numpy(v).to(self.device, non_blocking=True)
                    for k, v in pad_batch(encoded, idx, pad_id).items()
                }
                outputs.append(torch.sigmoid(self.model(**batch).logits.float()[:, self.column]))
                order.extend(idx)
            flat = torch.cat(outputs).tolist() if outputs else []
        scores = [0.0] * len(pairs)
        for i, s in zip(order, flat, strict=True):
            scores[i] = s
        return scores


def _load(cfg: ModelConfig, cpu_dtype: str, cuda_dtype: str = "fp16") -> Backend:
    device = pick_device(cfg.device)
    dtype = cuda_dtype if device == "cuda" else cpu_dtype
    return TorchBackend(
        cfg.name,
        device=device,
        dtype=dtype,
        batch_size=cfg.batch_size,
        threads=cfg.threads,
        compile=cfg.compile,
        max_length=cfg.max_length,
        label=cfg.label,
    )


def load_torch(cfg: ModelConfig) -> Backend:
    return _load(cfg, "fp32")


def load_torch_fp32(cfg: ModelConfig) -> Backend:
    """fp32 everywhere: exact on CUDA too, at fp32 speed."""
    return _load(cfg, "fp32", "fp32")


def load_torch_bf16(cfg: ModelConfig) -> Backend:
    return _load(cfg, "bf16")
