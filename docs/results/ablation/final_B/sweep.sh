#!/usr/bin/env bash
# Issue 11 schedule sweep (seed 0) on validation data only: STSBenchmark validation.jsonl and
# TwitterSemEval2015 dev.jsonl (eval.split=validation). Run from the frozen snapshot /work/run-final
# (commit bc7ce3f), one training at a time, 2 threads. Budget B = the tokens inbatch_only encodes in 80 steps.
set -euo pipefail
set -x
cd /work/run-final
source /work/main/.venv/bin/activate
export PYTHONPATH=/work/run-final/src OMP_NUM_THREADS=2
O=/work/main/outputs/final
A=(python benchmarks/ablation.py --config configs/ablation.toml --cache $O/cache
   --set seed=0 --set mine.reranker=bi:embeddinggemma-300m
   --set eval.split=validation --set eval.tasks=STSBenchmark,TwitterSemEval2015)
"${A[@]}" --output $O/sweep/lr5e-4_B --only inbatch_only --set train.optim.lr=5e-4 --set train.optim.max_steps=80
B=$(python -c "import json;print(json.load(open('$O/sweep/lr5e-4_B/inbatch_only/train/model/training.json'))['tokens'])")
echo "B=$B" > $O/budget.txt
run() {  # lr budget-multiplier variants
  local tok=$(( B * $2 ))
  "${A[@]}" --output $O/sweep/lr$1_$3 --only $4 --set train.optim.lr=$1 \
    --set train.optim.max_steps=2000 --set train.optim.max_tokens=$tok
}
run 5e-4 1 B full
run 1e-3 1 B inbatch_only,full
run 5e-4 2 2B inbatch_only,full
run 1e-3 2 2B inbatch_only,full
