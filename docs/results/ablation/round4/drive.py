"""Issue 11, fourth round (session 2026-12-06, fourth): does a longer token budget lift the students toward
the goal (>= 50 Mean(Task) on the nine tasks) and does batch-wide distillation's edge over in-batch InfoNCE
hold or grow with it?

Phase 1 (validation only: STSBenchmark validation.jsonl + TwitterSemEval2015 dev.jsonl, seed 0):
  inbatch_only and inbatch_distill (kl_weight 1, teacher_temperature 0.1: round three's validated point)
  at 2B = 120,296 encoded tokens, lr 1e-3. Their numbers at B = 60,148 come from round three (same machine;
  the library changes since are behaviour-preserving: the demo prints the same table).
  One budget for both arms (equal compute): the budget with the higher validation mean over the two arms.
Phase 2 (test sets: the nine tasks + SciFact): both arms at the chosen budget, seeds 0, 1, then 2.
Library code frozen in /work/x12 (commit ec84338).
"""
import json, os, subprocess, sys, time
from pathlib import Path

ROOT = Path("/work/exp12")
R3 = Path("/work/exp11b")
CACHE = "/work/exp11/cache"
B = 60148
NINE = ("STS12,STS16,STS17,STSBenchmark,SICK-R,Banking77Classification,MassiveScenarioClassification,"
        "TwitterSemEval2015,SummEvalSummarization.v2")
TEN = NINE + ",SciFact"
ARMS = {  # name -> (variant, extra sets); names as in round three
    "inbatch_only": ("inbatch_only", []),
    "distill_kl1_t10": ("inbatch_distill", ["train.loss.teacher_temperature=0.1"]),
}
ENV = {**os.environ, "PYTHONPATH": "/work/x12/src", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}


def folder(root, name, split, seed, budget):
    tag = "" if root == R3 else f"-{budget}"
    return root / split / f"s{seed}" / f"{name}{tag}" / ARMS[name][0]


def run(name, split, seed, budget):
    if budget == B and (f := folder(R3, name, split, seed, budget)).joinpath("eval/student/stage.json").is_file():
        return f
    variant, extra = ARMS[name]
    out = ROOT / split / f"s{seed}" / f"{name}-{budget}"
    if (out / variant / "eval" / "student" / "stage.json").is_file():
        return out / variant
    tasks = "STSBenchmark,TwitterSemEval2015" if split == "validation" else TEN
    sets = [f"seed={seed}", f"train.optim.max_tokens={budget}", "train.optim.max_steps=2000",
            "eval.teacher=", "eval.base=false", f"eval.tasks={tasks}", f"eval.split={split}", *extra]
    c = [sys.executable, "benchmarks/ablation.py", "--config", "configs/ablation.toml", "--cache", CACHE,
         "--output", str(out), "--only", variant, *[a for s in sets for a in ("--set", s)]]
    with open(ROOT / "commands.txt", "a") as fh:
        fh.write(f"# {name} {split} seed {seed} budget {budget}\ncd /work/x12 && PYTHONPATH=/work/x12/src python "
                 + " ".join(c[1:]) + "\n")
    t = time.time()
    with open(ROOT / "logs" / f"{name}-{budget}-{split}-s{seed}.log", "a") as log:
        rc = subprocess.call(c, stdout=log, stderr=subprocess.STDOUT, cwd="/work/x12", env=ENV)
    print(f"{time.strftime('%H:%M:%S')} {name} {budget} {split} s{seed} rc={rc} {time.time() - t:.0f}s", flush=True)
    if rc:
        sys.exit(rc)
    return out / variant


def mean(f):
    scores = json.loads((f / "eval" / "student" / "run.json").read_text())["scores"]
    return round(sum(scores.values()) / len(scores), 2)


if __name__ == "__main__":
    val = {b: {n: mean(run(n, "validation", 0, b)) for n in ARMS} for b in (B, 2 * B)}
    budget = max(val, key=lambda b: sum(val[b].values()))
    choice = {"validation_mean": {str(b): v for b, v in val.items()}, "budget": budget,
              "rule": "the budget with the higher validation mean over both arms; both arms train at it"}
    (ROOT / "choices.json").write_text(json.dumps(choice, indent=2) + "\n")
    print("choices", choice, flush=True)
    for seed in (0, 1, 2):
        for n in ARMS:
            run(n, "test", seed, budget)
    print("all done", flush=True)
