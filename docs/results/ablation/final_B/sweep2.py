"""Issue 11 sweep, continued greedily (replaces the tail of sweep.sh, stopped after `full` at lr 5e-4, B).

Validation data only (STSBenchmark validation.jsonl, TwitterSemEval2015 dev.jsonl), seed 0, from the
frozen snapshot /work/run-final. Steps: lr 1e-3 at budget B for inbatch_only and full; each variant's
better lr (validation Mean(Task)) then for `full_batch` (batch-wide soft labels) at `full`'s lr. Every choice is printed and written to OUT/choices.json.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

O = Path("/work/main/outputs/final")
B = int((O / "budget.txt").read_text().split("=")[1])
BASE = [
    sys.executable, "benchmarks/ablation.py", "--config", "configs/ablation.toml", "--cache", str(O / "cache"),
    "--set", "seed=0", "--set", "mine.reranker=bi:embeddinggemma-300m",
    "--set", "eval.split=validation", "--set", "eval.tasks=STSBenchmark,TwitterSemEval2015",
]
ENV = {**os.environ, "PYTHONPATH": "/work/run-final/src", "OMP_NUM_THREADS": "2"}


def wait(pid: int) -> None:
    while Path(f"/proc/{pid}").exists():
        time.sleep(10)


def run(lr: str, mult: float, variants: str) -> None:
    tag = {1: "B", 0.5: "B2"}.get(mult, f"{mult}B")  # B2: half of B
    cmd = [*BASE, "--output", str(O / "sweep" / f"lr{lr}_{tag}"), "--only", variants,
           "--set", f"train.optim.lr={lr}", "--set", "train.optim.max_steps=2000",
           "--set", f"train.optim.max_tokens={int(B * mult)}"]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd="/work/run-final", env=ENV, check=True)


def score(lr: str, tag: str, variant: str) -> float:
    """Validation Mean(Task) of one student (its own run.json: a folder's ablation.json holds only the
    variants of its last call)."""
    run = json.loads((O / "sweep" / f"lr{lr}_{tag}" / variant / "eval" / "student" / "run.json").read_text())
    scores = list(run["scores"].values())
    return round(sum(scores) / len(scores), 2)


if __name__ == "__main__":
    # The 2B arm was dropped before it started (sized while other jobs slowed `full` to ~20 s a step, it
    # would have left no time for the final ablation's second seed); the budget axis is B/2 against B.
    wait(int(sys.argv[1]))
    if "--resume" not in sys.argv:
        run("1e-3", 1, "inbatch_only,full")
    choices: dict = {"B": B}
    for v in ("inbatch_only", "full"):
        s = {lr: score(lr, "B", v) for lr in ("5e-4", "1e-3")}
        choices[v] = {"lr": max(s, key=s.get), "budget": "B", "validation_at_B": s}
    (O / "choices.json").write_text(json.dumps(choices, indent=2))
    print("choices", choices, flush=True)
    # the budget axis, at each variant's better lr: half of B (2B would not have fitted the session)
    for v in ("inbatch_only", "full"):
        run(choices[v]["lr"], 0.5, v)
        lr = choices[v]["lr"]
        s = {"B2": score(lr, "B2", v), "B": score(lr, "B", v)}
        choices[v]["budget"] = max(s, key=s.get)
        choices[v]["validation_at_lr"] = s
        (O / "choices.json").write_text(json.dumps(choices, indent=2))
    print("choices", choices, flush=True)
    lr = choices["full"]["lr"]
    tag = choices["full"]["budget"]
    run(lr, {"B": 1, "B2": 0.5}[tag], "full_batch")
    choices["full_batch"] = {"lr": lr, "budget": tag, "validation": score(lr, tag, "full_batch")}
    (O / "choices.json").write_text(json.dumps(choices, indent=2))
    print("choices", choices, flush=True)
