#!/usr/bin/env bash
# Issue 10 ablation, run from the frozen snapshot /work/run-abl (commit 3a81567), sequentially, 2 threads.
set -x
cd /work/run-abl
source /work/main/.venv/bin/activate
export PYTHONPATH=/work/run-abl/src
A="python benchmarks/ablation.py --config configs/ablation.toml --set train.optim.lr=5e-4"
O=/work/main/outputs
$A --output $O/ablation_fixed_s0 --set seed=0 --only full,inbatch_only
$A --output $O/ablation_fixed_s1 --set seed=1 --only full,inbatch_only
$A --output $O/ablation_fixed_s0 --set seed=0 --only full,inbatch_only,no_soft_labels,no_margin_filter,no_shots
$A --output $O/ablation_fixed_s0 --set seed=0 --only full,inbatch_only,no_soft_labels,no_margin_filter,no_shots,label_layout
$A --output $O/ablation_fixed_s1 --set seed=1 --only full,inbatch_only,label_layout
$A --output $O/ablation_fixed_s1 --set seed=1 --only full,inbatch_only,label_layout,no_soft_labels,no_margin_filter,no_shots
