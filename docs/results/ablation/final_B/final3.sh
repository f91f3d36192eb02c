#!/usr/bin/env bash
# After final.py: `full` at the full budget B (lr 1e-3, 36 steps; the sweep's model, seed 0) on the test
# sets, so that one full-recipe run sits at exactly inbatch_only's token budget.
set -euo pipefail
while kill -0 "$1" 2>/dev/null; do sleep 10; done
cd /work/run-final
source /work/main/.venv/bin/activate
export PYTHONPATH=/work/run-final/src OMP_NUM_THREADS=2
O=/work/main/outputs/final
TEN=STS12,STS16,STS17,STSBenchmark,SICK-R,Banking77Classification,MassiveScenarioClassification,TwitterSemEval2015,SummEvalSummarization.v2,SciFact
python benchmarks/ablation.py --config configs/ablation.toml --cache $O/cache --output $O/sweep/lr1e-3_B \
  --only full --set mine.reranker=bi:embeddinggemma-300m --set seed=0 --set train.optim.lr=1e-3 \
  --set train.optim.max_steps=2000 --set train.optim.max_tokens=60148 --set eval.split=test --set eval.tasks=$TEN
