"""Issue 11, final ablation at 2B (session 2026-12-06, sixth): every pillar variant of the acceptance at one
equal budget of 2B = 120,296 encoded tokens, EmbeddingGemma-300M rescoring, seeds 0 and 1, the nine tasks +
SciFact (test splits). Nothing is chosen here: every arm below runs on the test sets.

Common settings (chosen on validation in earlier rounds, never on a test set): configs/ablation.toml (lr 1e-3,
batch 8, LoRA r 8), train.optim.max_tokens=120296 (2B, round four), teacher temperature tau_t 0.1 (round three)
and soft labels over the whole batch (train.loss.distill_scope=batch; round four) for every arm with a KL term.
So here `full` is the full recipe with batch-wide soft labels (benchmarks/ablation.py's `full_batch`);
`full_group` is the paper's group-only soft labels.

Arms already run on the same frozen library code (ec84338) at the same settings, reused as they are:
  full             <- round five full_batch_t10         (/work/exp13/test/sS/full_batch_t10/full_batch)
  no_shots         <- round five hardneg_distill        (/work/exp13/test/sS/hardneg_distill/no_shots)
  inbatch_only     <- round four inbatch_only at 2B     (/work/exp12/test/sS/inbatch_only-120296/inbatch_only)
  inbatch_distill  <- round four distill_kl1_t10 at 2B  (extra row)
New arms (this driver), in this order, seed 0 then 1 for each:
  no_soft_labels   = full with train.loss.kl_weight=0
  no_margin_filter = full with both margins off
  curriculum       = full after hard_negatives_after=23 in-batch steps (a third of full's 69 planned steps
                     at 2B, the variant's own rule, fixed before any run)
  full_group       = full with train.loss.distill_scope=group (time permitting)
Library code frozen in /work/x14 (commit ec84338, as rounds four and five).
"""
import os, subprocess, sys, time
from pathlib import Path

ROOT = Path("/work/exp14")
CACHE = "/work/exp11/cache"
BUDGET = 120296
TEN = ("STS12,STS16,STS17,STSBenchmark,SICK-R,Banking77Classification,MassiveScenarioClassification,"
       "TwitterSemEval2015,SummEvalSummarization.v2,SciFact")
COMMON = ["train.loss.teacher_temperature=0.1", "train.loss.distill_scope=batch"]
ARMS = {  # name -> (variant, extra sets)
    "no_soft_labels": ("no_soft_labels", []),
    "no_margin_filter": ("no_margin_filter", []),
    "curriculum": ("curriculum", ["train.data.hard_negatives_after=23"]),
    "full_group": ("full", ["train.loss.distill_scope=group"]),
}
ENV = {**os.environ, "PYTHONPATH": "/work/x14/src", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}


def run(name, seed):
    variant, extra = ARMS[name]
    out = ROOT / "test" / f"s{seed}" / name
    if (out / variant / "eval" / "student" / "stage.json").is_file():
        return
    sets = [f"seed={seed}", f"train.optim.max_tokens={BUDGET}", "train.optim.max_steps=2000",
            "eval.teacher=", "eval.base=false", f"eval.tasks={TEN}", "eval.split=test", *COMMON, *extra]
    c = [sys.executable, "benchmarks/ablation.py", "--config", "configs/ablation.toml", "--cache", CACHE,
         "--output", str(out), "--only", variant, *[a for s in sets for a in ("--set", s)]]
    with open(ROOT / "commands.txt", "a") as fh:
        fh.write(f"# {name} test seed {seed} budget {BUDGET}\ncd /work/x14 && PYTHONPATH=/work/x14/src python "
                 + " ".join(c[1:]) + "\n")
    t = time.time()
    with open(ROOT / "logs" / f"{name}-test-s{seed}.log", "a") as log:
        rc = subprocess.call(c, stdout=log, stderr=subprocess.STDOUT, cwd="/work/x14", env=ENV)
    print(f"{time.strftime('%H:%M:%S')} {name} test s{seed} rc={rc} {time.time() - t:.0f}s", flush=True)
    if rc:
        sys.exit(rc)


if __name__ == "__main__":
    for name in ARMS:
        for seed in (0, 1):
            run(name, seed)
    print("all done", flush=True)
