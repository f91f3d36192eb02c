"""Collect the issue-16 SciFact runs (val/*/report/scores.json) into results.json and results.md."""
import json, statistics
from pathlib import Path

OUT = Path("/work/exp16/val")
rows = {}
for f in sorted(OUT.glob("*/report/scores.json")):
    d = json.loads(f.read_text())
    name = f.parent.parent.name
    arm, _, rest = name.partition("-lr")
    lr, _, seed = rest.partition("-s")
    rows[name] = {
        "arm": arm, "lr": lr, "seed": int(seed or 0),
        "validation": d["scores"]["validation"]["after"], "test": d["scores"]["held-out"]["after"],
        "base_validation": d["scores"]["validation"]["before"], "base_test": d["scores"]["held-out"]["before"],
        "steps": d["training"]["steps"], "tokens": d["training"]["tokens"],
        "train_s": d["training"]["train_seconds"], "mine_s": d["timings"].get("mine"),
        "eval_s": d["timings"]["eval"],
    }
lines = ["| run | arm | lr | seed | validation nDCG@10 | test nDCG@10 | steps | tokens | train s | mine s |",
         "|---|---|---|---|---|---|---|---|---|---|"]
for n, r in rows.items():
    lines.append(f"| {n} | {r['arm']} | {r['lr']} | {r['seed']} | {r['validation']:.2f} | {r['test']:.2f} | "
                 f"{r['steps']} | {r['tokens']} | {r['train_s']:.0f} | {r['mine_s'] if r['mine_s'] is None else round(r['mine_s'])} |")
means = {}
for n, r in rows.items():
    if r["lr"] == "2e-4":
        means.setdefault(r["arm"], []).append(r)
lines += ["", "| arm (lr 2e-4) | seeds | test mean | test per seed | validation mean |", "|---|---|---|---|---|"]
summary = {}
for arm, rs in means.items():
    t = [r["test"] for r in sorted(rs, key=lambda r: r["seed"])]
    v = [r["validation"] for r in sorted(rs, key=lambda r: r["seed"])]
    summary[arm] = {"test_mean": statistics.mean(t), "test": t, "validation_mean": statistics.mean(v), "validation": v}
    lines.append(f"| {arm} | {len(t)} | {statistics.mean(t):.2f} | {' / '.join(f'{x:.2f}' for x in t)} | {statistics.mean(v):.2f} |")
Path("/work/exp16/results.json").write_text(json.dumps({"runs": rows, "lr2e-4_means": summary}, indent=1))
Path("/work/exp16/results.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
