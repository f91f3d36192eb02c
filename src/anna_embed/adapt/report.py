"""What ``anna-embed adapt`` measures and writes: base vs adapted scores, and ``OUT/report/README.md``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from anna_embed.adapt.config import AdaptConfig, PreparedData, eval_config, mine_config
from anna_embed.scores import markdown_table, score_cell
from anna_embed.stage import copy_figure, summary_section, write_report_files
from anna_embed.tasks import find_task

logger = logging.getLogger(__name__)


def _task_view(folder: Path, views: Path) -> tuple[str, Path]:
    """``(task name, data dir)`` under which :func:`anna_embed.evaluate.driver.run_eval` finds ``folder``.

    A registry task is looked up in ``data_dir / spec.folder``; a folder named otherwise (``scifact``
    for SciFact) is reached through a symbolic link of that name under ``views``.
    """
    spec = find_task(folder.name)
    if spec is None:
        return folder.name, folder.parent
    name = spec.folder
    if name == folder.name:
        return name, folder.parent
    views.mkdir(parents=True, exist_ok=True)
    link = views / name
    link.unlink(missing_ok=True)
    link.symlink_to(folder.resolve(), target_is_directory=True)
    return name, views


def evaluate(cfg: AdaptConfig, data: PreparedData, out: Path, cache: Path) -> dict[str, dict[str, Any]]:
    """Score the base and the adapted model on the held-out and the validation queries (mteb's evaluator).

    Returns:
        ``{split: {"task": name, "folder": path, "before": score, "after": score}}`` for the splits present
        (``held-out``, ``validation``); scores are mteb main scores (nDCG@10) x100.
    """
    from anna_embed.evaluate import run_eval

    models = {"before": cfg.train.model.name, "after": str(out / "model")}
    results: dict[str, dict[str, Any]] = {}
    for split, folder in (("held-out", data.held_out), ("validation", data.validation)):
        if folder is None:
            continue
        task, data_dir = _task_view(folder, out / "eval" / "views")
        row: dict[str, Any] = {"task": task, "folder": str(folder)}
        for label, model in models.items():
            output = out / "eval" / f"{split}-{label}"
            run = run_eval(
                eval_config(cfg, model, task, data_dir, output, cache),
                show_progress=False,
                force=True,  # every adapt run re-scores into the same folders (no stage marker)
            )
            row[label] = run["scores"][task]
        logger.info("%s (%s): %s -> %s", split, task, row["before"], row["after"])
        results[split] = row
    return results


def score_table(evals: dict[str, dict[str, Any]]) -> str:
    """Markdown: a row per split, base / adapted / change columns (nDCG@10 x100).

    Args:
        evals: What :func:`evaluate` returns.

    Example:
        >>> print(score_table({"held-out": {"task": "SciFact", "before": 64.5, "after": 66.0}}))
        | queries | task | base | adapted | change |
        |---|---|---|---|---|
        | held-out | SciFact | 64.50 | 66.00 | +1.50 |
    """
    rows = []
    for split, r in evals.items():
        before, after = r.get("before"), r.get("after")
        change = "—" if before is None or after is None else f"{after - before:+.2f}"
        rows.append([split, r["task"], score_cell(before), score_cell(after), change])
    return markdown_table(["queries", "task", "base", "adapted", "change"], rows)


def write_report(
    cfg: AdaptConfig,
    data: PreparedData,
    out: Path,
    evals: dict[str, dict[str, Any]],
    timings: dict[str, float],
) -> dict[str, Any]:
    """``OUT/report/README.md`` (scores, training and mining summaries, loss curve, mining histogram) and
    ``scores.json``; returns the table and the report's path."""
    rep = out / "report"
    table = score_table(evals) if evals else "No held-out queries given (--eval) and no validation split."
    training = json.loads((out / "model" / "training.json").read_text())
    mining: list[str] = []
    marker = out / "mine" / "stage.json"
    mining_png = False
    if cfg.negatives == "mined" and marker.is_file():
        mining = json.loads(marker.read_text()).get("summary", [])
        mining_png = copy_figure(out / "mine" / "mined.scores.png", rep / "mining.png")
    copy_figure(out / "train" / "loss.png", rep / "loss.png")
    teacher = mine_config(cfg, data.task)
    m, lora = training["config"]["model"], training["config"]["lora"]  # as resolved for the model
    limited = f" (eval.limit = {cfg.eval.limit}: NOT comparable)" if cfg.eval.limit else ""
    overlap = f" {data.overlap} of them are also training queries." if data.overlap else ""
    text = [
        "# anna-embed adapt report",
        "",
        f"Model `{cfg.train.model.name}` adapted on `{cfg.data.train}` ({data.train_queries} training "
        f"queries, task `{data.task}`), seed {cfg.seed}.",
        "",
        f"## Retrieval scores (mteb main score, nDCG@10 x100){limited}",
        "",
        table,
        "",
        f"Held-out queries: `{cfg.data.eval or '-'}` (qrels/test.tsv).{overlap} Validation: "
        f"`{data.validation or '-'}` (a share of the training queries, never trained on).",
        "",
        "## Training",
        "",
        f"- negatives: {cfg.negatives}"
        + (
            f"; teacher `{teacher.reranker}` (retriever `{teacher.retriever}`)"
            if cfg.negatives == "mined"
            else ""
        ),
        f"- model: {m['pooling']} pooling, max_length {m['max_length']}, instructions "
        f"{'on' if m['instructions'] else 'off'}, "
        + (f"LoRA r={lora['r']}" if lora["enabled"] else f"full fine-tuning ({m['dtype']})"),
        f"- steps {training['steps']}, tokens {training['tokens']}, {training['train_seconds']} s",
        f"- resolved configs: training `{out / 'model' / 'training.json'}`, this run `{out / 'adapt.json'}`",
        "",
        "![loss](loss.png)",
        "",
        *summary_section("## Mining", mining, empty="No mining (negatives = in_batch)."),
        *(["![mining](mining.png)", ""] if mining_png else []),
    ]
    scores = {
        "scores": evals,
        "training": {k: training[k] for k in ("steps", "tokens", "train_seconds")},
        "timings": timings,
    }
    heading = "## Wall time (seconds; a stage this run skipped shows the time of the run that did it)"
    readme = write_report_files(rep, text, timings, heading, scores)
    return {"table": table, "scores": evals, "report": str(readme)}
