#!/usr/bin/env bash
# Continuation of run_ablation.sh (same snapshot /work/run-abl, commit 3a81567), reordered by priority.
set -x
while kill -0 8714 2>/dev/null; do sleep 10; done
cd /work/run-abl
source /work/main/.venv/bin/activate
export PYTHONPATH=/work/run-abl/src
A="python benchmarks/ablation.py --config configs/ablation.toml --set train.optim.lr=5e-4"
O=/work/main/outputs
$A --output $O/ablation_fixed_s1 --set seed=1 --only full,inbatch_only
$A --output $O/ablation_fixed_s0 --set seed=0 --only full,inbatch_only,no_shots
$A --output $O/ablation_fixed_s0 --set seed=0 --only full,inbatch_only,no_shots,no_soft_labels
$A --output $O/ablation_fixed_s0 --set seed=0 --only full,inbatch_only,no_shots,no_soft_labels,label_layout
$A --output $O/ablation_fixed_s0 --set seed=0 --only full,inbatch_only,no_shots,no_soft_labels,label_layout,no_margin_filter
