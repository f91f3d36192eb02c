"""Issue 11, fifth round (session 2026-12-06, fifth): do the recipe's other pillars (mined hard negatives
after the margin filter, few-shot examples) pay at the budget where the students first clear 50 (2B =
120,296 encoded tokens, round four)? Every arm keeps round four's best soft labels (batch-wide, tau_t 0.1).

Phase 1 (validation only: STSBenchmark validation.jsonl + TwitterSemEval2015 dev.jsonl, seed 0, 2B):
  hardneg_distill          = no_shots + batch-wide soft labels: mined hard negatives (5% margin filter) + KL
  full_batch_t10           = full_batch (examples + hard negatives + KL over the batch), tau_t 0.1
  hardneg_distill_nofilter = hardneg_distill without the margin filter (the filter's share, validation only)
  References at 2B from round four (same machine, same frozen code ec84338): inbatch_only 67.48,
  inbatch_distill (tau_t 0.1) 67.81.
Rule (fixed before any run): the arm with the higher validation mean among the three goes to the test sets,
seeds 0 and 1 (paired with round four's inbatch_only / inbatch_distill runs of the same seeds); then, time
permitting, the runner-up, seed 0 then 1.
Library code frozen in /work/x13 (commit ec84338, as round four).
"""
import json, os, subprocess, sys, time
from pathlib import Path

ROOT = Path("/work/exp13")
CACHE = "/work/exp11/cache"
BUDGET = 120296
NINE = ("STS12,STS16,STS17,STSBenchmark,SICK-R,Banking77Classification,MassiveScenarioClassification,"
        "TwitterSemEval2015,SummEvalSummarization.v2")
TEN = NINE + ",SciFact"
T10 = ["train.loss.teacher_temperature=0.1"]
BATCH = ["train.loss.distill_scope=batch"]
ARMS = {  # name -> (variant, extra sets)
    "hardneg_distill": ("no_shots", BATCH + T10),
    "full_batch_t10": ("full_batch", T10),
    "hardneg_distill_nofilter": ("no_shots", BATCH + T10 + ["mine.relative_margin=none",
                                                            "mine.absolute_margin=none"]),
}
ENV = {**os.environ, "PYTHONPATH": "/work/x13/src", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}


def run(name, split, seed):
    variant, extra = ARMS[name]
    out = ROOT / split / f"s{seed}" / name
    if (out / variant / "eval" / "student" / "stage.json").is_file():
        return out / variant
    tasks = "STSBenchmark,TwitterSemEval2015" if split == "validation" else TEN
    sets = [f"seed={seed}", f"train.optim.max_tokens={BUDGET}", "train.optim.max_steps=2000",
            "eval.teacher=", "eval.base=false", f"eval.tasks={tasks}", f"eval.split={split}", *extra]
    c = [sys.executable, "benchmarks/ablation.py", "--config", "configs/ablation.toml", "--cache", CACHE,
         "--output", str(out), "--only", variant, *[a for s in sets for a in ("--set", s)]]
    with open(ROOT / "commands.txt", "a") as fh:
        fh.write(f"# {name} {split} seed {seed} budget {BUDGET}\ncd /work/x13 && PYTHONPATH=/work/x13/src python "
                 + " ".join(c[1:]) + "\n")
    t = time.time()
    with open(ROOT / "logs" / f"{name}-{split}-s{seed}.log", "a") as log:
        rc = subprocess.call(c, stdout=log, stderr=subprocess.STDOUT, cwd="/work/x13", env=ENV)
    print(f"{time.strftime('%H:%M:%S')} {name} {split} s{seed} rc={rc} {time.time() - t:.0f}s", flush=True)
    if rc:
        sys.exit(rc)
    return out / variant


def mean(f):
    scores = json.loads((f / "eval" / "student" / "run.json").read_text())["scores"]
    return round(sum(scores.values()) / len(scores), 2)


if __name__ == "__main__":
    val = {n: mean(run(n, "validation", 0)) for n in ARMS}
    ranked = sorted(val, key=lambda n: -val[n])
    choice = {"validation_mean": val, "reference_validation_mean_round4": {"inbatch_only": 67.48,
              "inbatch_distill_t10": 67.81}, "ranked": ranked,
              "rule": "the arm with the higher validation mean goes to the test sets (seeds 0, 1), then the runner-up"}
    (ROOT / "choices.json").write_text(json.dumps(choice, indent=2) + "\n")
    print("choices", choice, flush=True)
    for name in ranked[:2]:
        for seed in (0, 1):
            run(name, "test", seed)
    print("all done", flush=True)
