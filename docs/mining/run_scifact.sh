#!/usr/bin/env bash
# The real run whose summary, manifest and histogram are in docs/mining (see docs/MINING.md).
# Run from the repository root after: anna-embed convert beir ... --out outputs/mining/scifact_train.jsonl
set -euo pipefail
export OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1
nice -n 10 .venv/bin/anna-embed mine \
  --train outputs/mining/scifact_train.jsonl --corpus /work/shared/data/mteb/SciFact/corpus.jsonl \
  --retriever all-minilm-l6-v2 --reranker bi:all-mpnet-base-v2 --bm25 \
  --task SciFact --reranker-max-length 128 --top-k 30 --num-negatives 7 --relative-margin 0.05 --seed 0 \
  --out outputs/mining/scifact.mined.jsonl --report-dir docs/mining
