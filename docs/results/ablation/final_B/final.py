"""Issue 11 final ablation on the test sets, at the settings the validation sweep chose (choices.json).

Seed 0 reuses the sweep's trained models (same config, same seed: training is skipped, only the test
evaluation runs, in the sweep folder; its validation results were copied to docs/ first). Seed 1 trains
the same settings afresh. Order (so that a run cut short still has both seeds on the nine tasks):
seed 0 on the nine tasks + SciFact; seed 1 on the nine tasks; seed 1 + SciFact; then the other full
variant at seed 0. The evaluation-embedding cache of the previous ablation is reused (same base model,
prompts and shot draws give the same keys), so the base model and the teacher cost only SciFact.

    python docs/results/ablation/final/final.py SWEEP2_PID
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

O = Path("/work/main/outputs/final")
OLD_EVAL_CACHE = Path("/work/main/outputs/ablation_fixed_s0/cache/eval")
NINE = ("STS12,STS16,STS17,STSBenchmark,SICK-R,Banking77Classification,MassiveScenarioClassification,"
        "TwitterSemEval2015,SummEvalSummarization.v2")
TEN = NINE + ",SciFact"
ENV = {**os.environ, "PYTHONPATH": "/work/run-final/src", "OMP_NUM_THREADS": "2"}


def ablation(output: Path, variants: str, sets: list[str], *extra: str) -> None:
    cmd = [sys.executable, "benchmarks/ablation.py", "--config", "configs/ablation.toml",
           "--cache", str(O / "cache"), "--output", str(output), "--only", variants,
           "--set", "mine.reranker=bi:embeddinggemma-300m", *[a for s in sets for a in ("--set", s)], *extra]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd="/work/run-final", env=ENV, check=True)


def settings(choice: dict, B: int, seed: int = 1) -> list[str]:
    mult = {"B": 1, "B2": 0.5}[choice["budget"]]
    if seed == 0 and choice.get("steps80") and mult == 1:  # the first sweep run: 80 steps, which set B
        return [f"train.optim.lr={choice['lr']}", "train.optim.max_steps=80"]
    return [f"train.optim.lr={choice['lr']}", "train.optim.max_steps=2000", f"train.optim.max_tokens={int(B * mult)}"]


def sweep_dir(choice: dict) -> Path:
    return O / "sweep" / f"lr{choice['lr']}_{choice['budget']}"


if __name__ == "__main__":
    pid = int(sys.argv[1])
    while Path(f"/proc/{pid}").exists():
        time.sleep(10)
    ch = json.loads((O / "choices.json").read_text())
    B = ch["B"]
    best_full_val = max(ch["full"]["validation_at_lr"].values())
    best = "full_batch" if ch["full_batch"]["validation"] > best_full_val else "full"
    other = "full" if best == "full_batch" else "full_batch"
    ch["inbatch_only"]["steps80"] = ch["inbatch_only"]["lr"] == "5e-4"
    print("best full-recipe variant on validation:", best, flush=True)
    # keep the validation results of every sweep run before the test evaluation overwrites eval/
    keep = Path("/work/main/docs/results/ablation/final/sweep")
    for run in sorted((O / "sweep").iterdir()):
        for variant in sorted(p for p in run.iterdir() if (p / "eval" / "student").is_dir()):
            dst = keep / run.name / variant.name
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copy(variant / "eval" / "student" / "summary.md", dst / "validation_summary.md")
            shutil.copy(variant / "eval" / "student" / "run.json", dst / "validation_run.json")
            shutil.copy(variant / "train" / "model" / "training.json", dst / "training.json")
            for m in sorted(variant.glob("mine/*/mined.summary.txt")):
                shutil.copy(m, dst / f"mining_{m.parent.name}.summary.txt")
        for name in ("ablation.md", "ablation.json"):
            if (run / name).is_file():
                shutil.copy(run / name, keep / run.name / name)
    # the test-split embeddings of the base model and teacher are in the previous ablation's cache
    shutil.move(O / "cache" / "eval", O / "cache" / "eval_validation")
    (O / "cache" / "eval").symlink_to(OLD_EVAL_CACHE)
    test = ["eval.split=test"]
    # seed 0: the sweep's models, evaluated on the test sets
    for variant in ("inbatch_only", best):
        c = ch[variant]
        ablation(sweep_dir(c), variant, ["seed=0", *settings(c, B, 0), *test, f"eval.tasks={TEN}"])
    for seed in (0, 1):
        (O / f"seed{seed}").mkdir(exist_ok=True)
    for variant in ("inbatch_only", best):  # seed 0's report folder: links to the sweep folders
        link = O / "seed0" / variant
        if not link.exists():
            link.symlink_to(sweep_dir(ch[variant]) / variant)
    # seed 1: train and evaluate on the nine tasks, then add SciFact
    for tasks in (NINE, TEN):
        for variant in ("inbatch_only", best):
            ablation(O / "seed1", variant, ["seed=1", *settings(ch[variant], B), *test, f"eval.tasks={tasks}"])
    for seed in (0, 1):
        ablation(O / f"seed{seed}", f"inbatch_only,{best}", [f"seed={seed}", *test, f"eval.tasks={TEN}"],
                 "--report-only")
    # then the other full variant at seed 0 (its sweep model), if time remains
    c = ch[other]
    ablation(sweep_dir(c), other, ["seed=0", *settings(c, B, 0), *test, f"eval.tasks={TEN}"])
    (O / "seed0" / other).symlink_to(sweep_dir(c) / other)
    ablation(O / "seed0", "inbatch_only,full,full_batch", ["seed=0", *test, f"eval.tasks={TEN}"], "--report-only")
