"""Issue 11 follow-up driver (session 2026-12-06): runs the queue in order, one at a time; a run whose
ablation report already lists its variant is skipped.

Queue line: VARIANT SEED TOKENS [KEY=VALUE ...]. Every run: configs/ablation.toml (SmolLM2-135M-Instruct +
LoRA r 8, lr 1e-3, batch 8, EmbeddingGemma-300M rescoring), the nine tasks + SciFact on the test sets,
the teacher and the base model not re-evaluated (their scores are in docs/results/ablation/final_B/).
"""
import json, os, subprocess, sys, time
from pathlib import Path

ROOT = Path("/work/exp11")
NINE = ("STS12,STS16,STS17,STSBenchmark,SICK-R,Banking77Classification,MassiveScenarioClassification,"
        "TwitterSemEval2015,SummEvalSummarization.v2")
TEN = NINE + ",SciFact"


def cmd(variant, seed, tokens, extra):
    sets = [f"seed={seed}", f"train.optim.max_tokens={tokens}", "train.optim.max_steps=2000",
            "eval.teacher=", "eval.base=false", f"eval.tasks={TEN}", *extra]
    return [sys.executable, "benchmarks/ablation.py", "--config", "configs/ablation.toml",
            "--cache", str(ROOT / "cache"), "--output", str(ROOT / f"s{seed}"), "--only", variant,
            *[a for s in sets for a in ("--set", s)]]


def done(variant, seed):
    p = ROOT / f"s{seed}" / variant / "eval" / "student" / "stage.json"
    return p.is_file()


if __name__ == "__main__":
    env = {**os.environ, "PYTHONPATH": "/work/x11/src", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    while True:
        queue = [l.split() for l in Path(sys.argv[1]).read_text().splitlines() if l.strip() and not l.startswith("#")]
        todo = [q for q in queue if not done(q[0], int(q[1]))]
        if not todo:
            break
        variant, seed, tokens, *extra = todo[0]
        c = cmd(variant, int(seed), int(tokens), extra)
        with open(ROOT / "commands.txt", "a") as fh:
            fh.write("cd /work/x11 && PYTHONPATH=/work/x11/src " + " ".join(c[1:]).join(["python ", ""]) + "\n")
        t = time.time()
        with open(ROOT / "logs" / f"{variant}-s{seed}.log", "a") as log:
            rc = subprocess.call(c, stdout=log, stderr=subprocess.STDOUT, cwd="/work/x11", env=env)
        print(f"{time.strftime('%H:%M:%S')} {variant} s{seed} rc={rc} {time.time() - t:.0f}s", flush=True)
        if rc != 0:
            break
    print("queue done", flush=True)
