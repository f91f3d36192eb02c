"""Issue 11 follow-up (2026-12-06): merge this session's single-pillar runs with the final ablation's rows.

Reads each variant's student result folder under /work/exp11/s{0,1}/ (written by drive.py), adds the rows of
docs/results/ablation/final_B/seed{S}.json (inbatch_only, full, full_batch, base, teacher: the 2026-11-30
runs on a Zen 5 CPU), and writes seed{S}.json / tables.md beside this file: Mean(Task) on the ten tasks
(nine + SciFact) and on the nine tasks, per-task scores, Borda ranks over all rows, training cost.

    PYTHONPATH=/work/main/src python docs/results/ablation/followup/collect.py
"""

import json
from pathlib import Path

from anna_embed.evaluate.report import read_results
from anna_embed.scores import borda, mean_task

EXP = Path("/work/exp11")
HERE = Path(__file__).resolve().parent
FINAL = HERE.parent / "final_B"
TEN = ["STS12", "STS16", "STS17", "STSBenchmark", "SICK-R", "Banking77Classification",
       "MassiveScenarioClassification", "TwitterSemEval2015", "SummEvalSummarization.v2", "SciFact"]
NINE = TEN[:-1]
NEW = ["inbatch_distill", "curriculum", "no_shots", "inbatch_shots", "hardneg_only", "inbatch_only"]


def rows_of(seed: int) -> tuple[list[dict], dict]:
    old = json.loads((FINAL / f"seed{seed}.json").read_text())
    rows = [{"model": r["model"], "per_task": r["per_task"], "run": "2026-11-30 (AMD EPYC Zen 5)"} for r in old["rows"]]
    costs = dict(old.get("training_costs") or {})
    for name in NEW:
        folder = EXP / f"s{seed}" / name / "eval" / "student"
        if not (folder / "run.json").is_file():
            continue
        _, scores, _ = read_results(folder)
        label = name if not any(r["model"] == name for r in rows) else f"{name} (rerun 2026-12-06)"
        rows.append({"model": label, "per_task": {t: scores.get(t) for t in TEN}, "run": "2026-12-06 (Intel Xeon, AVX512-BF16)"})
        meta = json.loads((EXP / f"s{seed}" / name / "train" / "model" / "training.json").read_text())
        costs[label] = {k: meta[k] for k in ("tokens", "steps", "train_seconds")}
    for r in rows:
        r["mean_task"] = mean_task(r["per_task"], TEN)
        r["mean_task_nine"] = mean_task(r["per_task"], NINE)
    ranks = borda({r["model"]: r["per_task"] for r in rows})
    for r in rows:
        r["borda_points"], r["rank"] = ranks[r["model"]]
    rows.sort(key=lambda r: r["rank"])
    return rows, costs


def fmt(v):
    return "n/a" if v is None else f"{v:.2f}"


if __name__ == "__main__":
    md = ["# Issue 11 follow-up: single-pillar variants (2026-12-06)", ""]
    for seed in (0, 1):
        rows, costs = rows_of(seed)
        ref = {r["model"]: r for r in rows}
        ib = ref.get("inbatch_only", {}).get("mean_task_nine")
        full = ref.get("full", {}).get("mean_task_nine")
        json.dump({"seed": seed, "tasks": TEN, "rows": rows, "training_costs": costs,
                   "vs_inbatch_only_nine": {r["model"]: round(r["mean_task_nine"] - ib, 2) for r in rows if ib is not None and r["mean_task_nine"] is not None},
                   "vs_full_nine": {r["model"]: round(r["mean_task_nine"] - full, 2) for r in rows if full is not None and r["mean_task_nine"] is not None}},
                  open(HERE / f"seed{seed}.json", "w"), indent=1)
        md += [f"## Seed {seed}", "", "| rank | model | Mean(Task) ten | Mean(Task) nine | vs inbatch_only (nine) | " + " | ".join(TEN) + " | run |",
               "|---|---|---:|---:|---:|" + "---:|" * len(TEN) + "---|"]
        for r in rows:
            d = None if ib is None or r["mean_task_nine"] is None else r["mean_task_nine"] - ib
            md.append(f"| {r['rank']} | {r['model']} | {fmt(r['mean_task'])} | {fmt(r['mean_task_nine'])} | "
                      f"{'n/a' if d is None else f'{d:+.2f}'} | " + " | ".join(fmt(r['per_task'].get(t)) for t in TEN) + f" | {r['run']} |")
        md += ["", "| variant | tokens | steps | train s |", "|---|---:|---:|---:|"]
        md += [f"| {k} | {v['tokens']:,} | {v['steps']} | {v['train_seconds']} |" for k, v in costs.items() if v]
        md.append("")
    (HERE / "tables.md").write_text("\n".join(md))
    print("\n".join(md))
