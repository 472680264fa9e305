#!/usr/bin/env bash
# The `model` benchmark on a CUDA machine (how bench/RESULTS.md's GPU figures were made).
# Needs torch, transformers, sentence-transformers, sentencepiece and PyYAML there, and the
# SciFact folder under $RERANK_PROXY_SHARED/data/scifact. Writes to ${OUT:-bench/out}.
set -euo pipefail
out=${OUT:-bench/out}
mkdir -p "$out"
export RERANK_PROXY_STATE=${RERANK_PROXY_STATE:-/tmp/rerank-proxy} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c 'import torch, transformers, sentence_transformers as st; print("torch", torch.__version__, "transformers", transformers.__version__, "sentence-transformers", st.__version__)' | tee -a "$out/gpu.txt"
time python3 -m devtools.standin "$RERANK_PROXY_STATE/models/standin-exact-v1-0" --size exact \
  --corpus "$RERANK_PROXY_SHARED/data/scifact/corpus.jsonl.gz" 2>&1 | tail -2
python3 -m bench.model --device cuda --queries 30 --window 50 --max-length 512 \
  --model-dir "$RERANK_PROXY_STATE/models/standin-exact-v1-0" --batch-sizes 16,32,128 \
  --json "$out/model-cuda-512.json" 2>&1 | grep -v -E "Loading weights|Warning|warn" | tee "$out/model-cuda-512.md"
python3 -m bench.model --device cuda --queries 30 --window 50 --max-length 256 \
  --model-dir "$RERANK_PROXY_STATE/models/standin-exact-v1-0" \
  --json "$out/model-cuda-256.json" 2>&1 | grep -v -E "Loading weights|Warning|warn" | tee "$out/model-cuda-256.md"
