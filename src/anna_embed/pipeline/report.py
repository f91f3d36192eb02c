"""The pipeline's report: ``report/README.md`` (scores table, mining summaries, timings) and its charts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from anna_embed.pipeline.config import PipelineConfig
from anna_embed.scores import mean_task, task_table
from anna_embed.stage import copy_figure, summary_section, write_report_files


def write_report(
    root: Path, cfg: PipelineConfig, evals: dict[str, dict[str, Any]], timings: dict[str, float]
) -> dict[str, Any]:
    """``report/README.md`` (table, timings, mining summaries) and PNGs; returns the table."""
    rep = root / "report"
    rep.mkdir(parents=True, exist_ok=True)
    tasks = list(cfg.eval.tasks)
    rows = []
    for label, info in evals.items():
        s = info.get("scores", {})
        trained_on = set(info.get("run", {}).get("training_datasets") or ())
        rows.append(
            {
                "model": label,
                "name": info.get("model", ""),
                **{t: s.get(t) for t in tasks},
                "mean": mean_task(s, tasks),
                "in_training": sorted(t for t in tasks if t in trained_on),
            }
        )
    lines = [
        task_table(
            {r["model"]: r for r in rows},
            tasks,
            trained_on={r["model"]: r["in_training"] for r in rows},
            mean=True,
        )
    ]
    if any(r["in_training"] for r in rows):
        lines += ["", "\\* the model was trained on this task's training split (in-domain, not zero-shot)."]
    table = "\n".join(lines)
    mining = []
    data_marker = root / "data" / "stage.json"
    for src in json.loads(data_marker.read_text())["sources"] if data_marker.is_file() else []:
        if not src["mine"] and "curated_negatives" in src:
            c = src["curated_negatives"]
            mining.append(
                f"{src['task']}: not mined (curated negatives kept); negatives that are another "
                f"record's positive: {c['other_positive']} of {c['negatives']}"
            )
    for marker in sorted((root / "mine").glob("*/stage.json")):
        mining += json.loads(marker.read_text()).get("summary", [])
        for png in marker.parent.glob("*.png"):
            copy_figure(png, rep / f"mining-{marker.parent.name}-{png.name}")
    copy_figure(root / "train" / "loss.png", rep / "loss.png")
    _score_chart(rep / "scores.png", rows, tasks)
    text = [
        "# anna-embed pipeline report",
        "",
        f"Models: base = `{cfg.train.model.name}`, student = `{root / 'train' / 'model'}`, "
        f"teacher = `{cfg.eval.teacher or '-'}`. Scores are mteb main scores (x100) on `{cfg.eval.data_dir}`"
        + (" (--limit: NOT comparable)" if cfg.eval.limit else "")
        + ".",
        "",
        table,
        "",
        "![scores](scores.png) ![loss](loss.png)",
        "",
        *summary_section("## Mining", mining),
    ]
    heading = "## Wall time of this run (seconds; skipped stages are absent)"
    write_report_files(rep, text, timings, heading, {"rows": rows, "timings": timings})
    return {"rows": rows, "table": table, "timings": timings, "report": str(rep)}


def _score_chart(path: Path, rows: list[dict[str, Any]], tasks: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cols = [*tasks, "mean"]
    x = np.arange(len(cols))
    width = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(2 + 1.6 * len(cols), 4))
    for i, r in enumerate(rows):
        vals = [r[c] or 0.0 for c in cols]
        ax.bar(x + i * width, vals, width, label=r["model"])
    ax.set_xticks(
        x + width * (len(rows) - 1) / 2, [c.replace("Classification", "") for c in cols], fontsize=8
    )
    ax.set_ylabel("main score x100")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
