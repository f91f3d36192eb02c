"""Issue 16 SciFact experiment driver: runs the queue in order, one at a time; a finished run is skipped.

Every run: all-minilm-l6-v2, SciFact training claims with 15% held out by query-id hash (validation,
for choosing settings), the test claims as held-out (--eval), equal budget of 250,000 encoded tokens,
3 warm-up steps; mined arms: G=2 (1 positive + 1 hard negative) with soft labels over the whole batch.
"""
import os, subprocess, sys, time, json
from pathlib import Path

ROOT = Path("/work/exp16"); OUT = ROOT / "val"
D = "/work/shared/data/mteb/SciFact"
BASE = ["/work/main/.venv/bin/anna-embed", "adapt", "--model", "all-minilm-l6-v2", "--train", D, "--eval", D,
        "--set", f"cache_dir={OUT}/cache", "--set", "data.validation_fraction=0.15",
        "--set", "train.optim.epochs=100", "--set", "train.optim.max_tokens=250000",
        "--set", "train.optim.warmup_steps=3"]
MINED = ["--set", "train.data.group_size=2", "--set", "train.loss.distill_scope=batch"]
ARMS = {
    "a": ["--set", "negatives=in_batch"],
    "b-minilm": MINED + ["--set", "train.loss.kl_weight=0"],
    "c-minilm": MINED,
    "b-gemma": MINED + ["--teacher", "embeddinggemma-300m", "--set", "train.loss.kl_weight=0"],
    "c-gemma": MINED + ["--teacher", "embeddinggemma-300m"],
}

def name(arm, lr, seed):
    return f"{arm}-lr{lr}" + ("" if seed == 0 else f"-s{seed}")

def cmd(arm, lr, seed):
    return BASE + ARMS[arm] + ["--set", f"train.optim.lr={lr}", "--set", f"seed={seed}",
                               "--out", str(OUT / name(arm, lr, seed))]

def done(n):
    p = OUT / n / "report" / "scores.json"
    return p.is_file() and "held-out" in json.loads(p.read_text())["scores"]

def run(arm, lr, seed):
    n = name(arm, lr, seed)
    if done(n):
        return
    c = cmd(arm, lr, seed)
    with open(ROOT / "commands.txt", "a") as fh:
        fh.write(" ".join(c) + "\n")
    t = time.time()
    with open(OUT / f"{n}.log", "a") as log:
        rc = subprocess.call(c, stdout=log, stderr=subprocess.STDOUT)
    print(f"{time.strftime('%H:%M:%S')} {n} rc={rc} {time.time() - t:.0f}s", flush=True)

if __name__ == "__main__":
    os.environ.update(PYTHONPATH="/work/x16b/src", HF_HUB_OFFLINE="1")
    queue = [l.split() for l in Path(sys.argv[1]).read_text().splitlines() if l.strip() and not l.startswith("#")]
    # wait for any adapt still running from the first sweep
    while subprocess.run(["pgrep", "-f", "anna-embed adapt"], capture_output=True).stdout:
        time.sleep(20)
    for arm, lr, seed in queue:
        run(arm, lr, int(seed))
    print("queue done", flush=True)
