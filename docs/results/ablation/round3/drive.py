"""Issue 11, third round (session 2026-12-06, third): can the teacher's pillars beat in-batch InfoNCE?

Phase 1 (validation only: STSBenchmark validation.jsonl + TwitterSemEval2015 dev.jsonl, seed 0), every
point at the same budget B = 60,148 encoded tokens, lr 1e-3 (inbatch_only's choice), library code frozen
in /work/x11:
  inbatch_only                      the reference
  inbatch_distill at (kl_weight, teacher_temperature) in (1, 0.05) (0.3, 0.05) (1, 0.1)
  no_shots + hard_negatives_after in (40, 60): in-batch negatives without examples first, then mined
     hard negatives + soft labels (still no examples): the curriculum the last round asked for
Phase 2 (test sets, the nine tasks + SciFact, seeds 0 and 1): the best distill point and the best
curriculum point by validation Mean(Task), chosen by this script from phase 1's numbers only.
Then, if time is left: inbatch_only on this machine and code, seeds 0 and 1.
"""
import json, os, subprocess, sys, time
from pathlib import Path

ROOT = Path("/work/exp11b")
CACHE = "/work/exp11/cache"
B = 60148
NINE = ("STS12,STS16,STS17,STSBenchmark,SICK-R,Banking77Classification,MassiveScenarioClassification,"
        "TwitterSemEval2015,SummEvalSummarization.v2")
TEN = NINE + ",SciFact"
SWEEP = {  # name -> (variant, extra sets)
    "inbatch_only": ("inbatch_only", []),
    "distill_kl1_t05": ("inbatch_distill", []),
    "distill_kl03_t05": ("inbatch_distill", ["train.loss.kl_weight=0.3"]),
    "distill_kl1_t10": ("inbatch_distill", ["train.loss.teacher_temperature=0.1"]),
    "curr_noshots_40": ("no_shots", ["train.data.hard_negatives_after=40"]),
    "curr_noshots_60": ("no_shots", ["train.data.hard_negatives_after=60"]),
}
ENV = {**os.environ, "PYTHONPATH": "/work/x11/src", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}


def run(name, split, seed):
    variant, extra = SWEEP[name]
    out = ROOT / split / f"s{seed}" / name
    if (out / variant / "eval" / "student" / "stage.json").is_file():
        return out / variant
    tasks = "STSBenchmark,TwitterSemEval2015" if split == "validation" else TEN
    sets = [f"seed={seed}", f"train.optim.max_tokens={B}", "train.optim.max_steps=2000",
            "eval.teacher=", "eval.base=false", f"eval.tasks={tasks}", f"eval.split={split}", *extra]
    c = [sys.executable, "benchmarks/ablation.py", "--config", "configs/ablation.toml", "--cache", CACHE,
         "--output", str(out), "--only", variant, *[a for s in sets for a in ("--set", s)]]
    with open(ROOT / "commands.txt", "a") as fh:
        fh.write(f"# {name} {split} seed {seed}\ncd /work/x11 && PYTHONPATH=/work/x11/src python "
                 + " ".join(c[1:]) + "\n")
    t = time.time()
    with open(ROOT / "logs" / f"{name}-{split}-s{seed}.log", "a") as log:
        rc = subprocess.call(c, stdout=log, stderr=subprocess.STDOUT, cwd="/work/x11", env=ENV)
    print(f"{time.strftime('%H:%M:%S')} {name} {split} s{seed} rc={rc} {time.time() - t:.0f}s", flush=True)
    if rc:
        sys.exit(rc)
    return out / variant


def mean(folder):
    scores = json.loads((folder / "eval" / "student" / "run.json").read_text())["scores"]
    return round(100 * sum(scores.values()) / len(scores), 2) if max(scores.values()) <= 1 else \
        round(sum(scores.values()) / len(scores), 2)


if __name__ == "__main__":
    val = {name: mean(run(name, "validation", 0)) for name in SWEEP}
    best_distill = max((n for n in val if n.startswith("distill")), key=val.get)
    best_curr = max((n for n in val if n.startswith("curr")), key=val.get)
    choice = {"validation_mean_task": val, "best_distill": best_distill, "best_curriculum": best_curr}
    (ROOT / "choices.json").write_text(json.dumps(choice, indent=2) + "\n")
    print("choices", choice, flush=True)
    for seed in (0, 1):
        for name in (best_distill, best_curr):
            run(name, "test", seed)
    for seed in (0, 1):
        run("inbatch_only", "test", seed)
    print("all done", flush=True)
