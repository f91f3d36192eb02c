"""Scores out of result folders, and what is computed from them: means, Borda, summaries, charts.

Pure functions that follow mteb's leaderboard (``mteb/benchmarks/_create_table.py``):

* Mean(Task): the unweighted mean of the task scores; ``None`` if any task is missing (``skipna=False``).
* Mean(TaskType): the mean of the per-type means (each ``None`` if one of its tasks is missing).
* Borda: per task, each model gets ``n_models - rank`` points, rank taken with ties averaged (descending
  scores); a model without a score on a task gets 0 for it; the final rank is the ``min`` rank of the
  summed points (descending), so tied sums share the better rank.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from anna_embed.io import atomic_write
from anna_embed.tasks import TASK_TYPES, UnknownTaskError, get_task

logger = logging.getLogger(__name__)

Table = Mapping[str, Mapping[str, float | None]]  # model -> task -> score (x100)

# ------------------------------------------------------------------------------------- aggregation


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks of ``values`` in descending order, ties sharing the mean of their positions.

    Example:
        >>> average_ranks([0.9, 0.5, 0.9, 0.1])
        [1.5, 3.0, 1.5, 4.0]
    """
    order = sorted(range(len(values)), key=lambda i: -values[i])
    ranks = [0.0] * len(values)
    pos = 0
    while pos < len(order):
        end = pos
        while end + 1 < len(order) and values[order[end + 1]] == values[order[pos]]:
            end += 1
        for j in range(pos, end + 1):
            ranks[order[j]] = (pos + end) / 2 + 1
        pos = end + 1
    return ranks


def min_ranks(values: Sequence[float]) -> list[int]:
    """1-based descending ranks where ties share the best (``min``) position: [5, 7, 7, 1] -> [3, 1, 1, 4]."""
    return [1 + sum(v > x for v in values) for x in values]


def borda(table: Table) -> dict[str, tuple[float, int]]:
    """Borda points and rank per model, exactly as mteb's leaderboard computes them.

    Args:
        table: model -> task -> score; a missing or ``None`` score means the model did not run the task.

    Returns:
        model -> (points, rank). Points: for each task, ``n_models - average_rank`` among the models that
        have a score there (``n_models`` counts all models). Rank: ``min`` rank of the points, descending.
    """
    models = list(table)
    n = len(models)
    points = dict.fromkeys(models, 0.0)
    tasks = sorted({t for row in table.values() for t, v in row.items() if _present(v)})
    for task in tasks:
        have = [m for m in models if _present(table[m].get(task))]
        ranks = average_ranks([float(table[m][task]) for m in have])  # type: ignore[arg-type]
        for m, r in zip(have, ranks, strict=True):
            points[m] += n - r
    final = min_ranks([points[m] for m in models])
    return {m: (points[m], r) for m, r in zip(models, final, strict=True)}


def _present(v: float | None) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def mean_task(scores: Mapping[str, float | None], tasks: Sequence[str] | None = None) -> float | None:
    """Unweighted mean over ``tasks`` (default: all keys); ``None`` if any is missing."""
    names = list(tasks) if tasks is not None else list(scores)
    vals = [scores.get(t) for t in names]
    if not names or not all(_present(v) for v in vals):
        return None
    return sum(vals) / len(vals)  # type: ignore[arg-type]


def mean_per_type(scores: Mapping[str, float | None], types: Mapping[str, str]) -> dict[str, float | None]:
    """Mean per task type (``None`` for a type with a missing task), over the tasks listed in ``types``."""
    by_type: dict[str, list[str]] = defaultdict(list)
    for task, ttype in types.items():
        by_type[ttype].append(task)
    return {t: mean_task(scores, names) for t, names in by_type.items()}


def mean_type(per_type: Mapping[str, float | None]) -> float | None:
    """Mean(TaskType): the mean of the per-type means; ``None`` if one is missing."""
    return mean_task(per_type)


# ------------------------------------------------------------------------------------------ results


def task_type(name: str) -> str:
    """The type of a task name: registry, then mteb, else ``"Unknown"``."""
    try:
        return get_task(name).type
    except UnknownTaskError:
        pass
    try:
        import mteb

        return mteb.get_task(name).metadata.type
    except Exception:
        return "Unknown"


def main_score(result: Mapping[str, Any], split: str = "test") -> float | None:
    """The main score (x100) of an mteb result JSON: the registry's subset, else the mean over subsets."""
    entries = result.get("scores", {}).get(split) or []
    try:
        subset = get_task(result["task_name"]).subset
    except (UnknownTaskError, KeyError):
        subset = None
    if subset is not None:
        entries = [e for e in entries if e.get("hf_subset") == subset] or entries
    vals = [e["main_score"] for e in entries if e.get("main_score") is not None]
    return 100 * sum(vals) / len(vals) if vals else None


def read_results(folder: str | Path) -> tuple[str, dict[str, float | None], dict[str, Any]]:
    """``(model name, task -> main score, run.json)`` of a result folder written by ``anna-embed eval``.

    Also reads any folder of mteb result JSONs (``model_meta.json`` and ``run.json`` optional).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a result folder")
    run = json.loads((folder / "run.json").read_text()) if (folder / "run.json").is_file() else {}
    scores: dict[str, float | None] = {}
    for path in sorted(folder.glob("*.json")):
        if path.name in ("run.json", "model_meta.json"):
            continue
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "task_name" in data and "scores" in data:
            scores[data["task_name"]] = main_score(data)
    return str(run.get("model", folder.name)), scores, run


def summary_rows(scores: Mapping[str, float | None], types: Mapping[str, str]) -> list[dict[str, Any]]:
    """One row per task, sorted by type then name."""
    return [
        {"task": t, "type": types[t], "main_score": scores.get(t)}
        for t in sorted(scores, key=lambda t: (types[t], t))
    ]


def fmt_score(v: float | None) -> str:
    return "" if v is None else f"{v:.2f}"


def write_summary(
    out: Path,
    model: str,
    scores: Mapping[str, float | None],
    types: Mapping[str, str],
    *,
    notes: Mapping[str, str] | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """Write ``summary.md``, ``summary.csv`` and ``summary.png``; return the aggregate numbers."""
    notes = notes or {}
    per_type = mean_per_type(scores, types)
    agg = {"mean_task": mean_task(scores), "mean_type": mean_type(per_type), "per_type": per_type}
    rows = summary_rows(scores, types)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["task", "type", "main_score", "note"])
    for r in rows:
        w.writerow([r["task"], r["type"], fmt_score(r["main_score"]), notes.get(r["task"], "")])
    w.writerow(["Mean(Task)", "", fmt_score(agg["mean_task"]), ""])
    w.writerow(["Mean(TaskType)", "", fmt_score(agg["mean_type"]), ""])
    with atomic_write(out / "summary.csv") as fh:
        fh.write(buf.getvalue())
    lines = [f"# {model}", ""]
    if limit is not None:
        lines += [f"**--limit {limit}: smoke run on a subsample, NOT comparable to published scores.**", ""]
    lines += ["| task | type | main score | note |", "|---|---|---:|---|"]
    lines += [
        f"| {r['task']} | {r['type']} | {fmt_score(r['main_score'])} | {notes.get(r['task'], '')} |"
        for r in rows
    ]
    lines += [
        "",
        "| aggregate | score |",
        "|---|---:|",
        f"| Mean(Task) | {fmt_score(agg['mean_task'])} |",
        f"| Mean(TaskType) | {fmt_score(agg['mean_type'])} |",
    ]
    lines += [f"| {t} (mean) | {fmt_score(v)} |" for t, v in sorted(per_type.items())]
    with atomic_write(out / "summary.md") as fh:
        fh.write("\n".join(lines) + "\n")
    bar_chart(out / "summary.png", model, rows, limit=limit)
    return agg


def bar_chart(path: Path, title: str, rows: Sequence[Mapping[str, Any]], *, limit: int | None = None) -> None:
    """Horizontal bar chart of the main scores, coloured by task type."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["main_score"] is not None]
    if not rows:
        return
    colours = {t: plt.get_cmap("tab10")(i) for i, t in enumerate(TASK_TYPES)}
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.2))
    ax.barh(
        [r["task"] for r in rows],
        [r["main_score"] for r in rows],
        color=[colours.get(r["type"], "grey") for r in rows],
    )
    for i, r in enumerate(rows):
        ax.text(r["main_score"], i, f" {r['main_score']:.2f}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("main score (x100)")
    ax.set_title(title + (f"  [--limit {limit}: not comparable]" if limit else ""), fontsize=10)
    present = [t for t in TASK_TYPES if any(r["type"] == t for r in rows)]
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[t]) for t in present]
    ax.legend(handles, present, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_xlim(0, max(100.0, max(r["main_score"] for r in rows) + 8))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def leaderboard(
    folders: Sequence[str | Path], *, tasks: Sequence[str] | None = None, names: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Rank result folders by Borda count; rows carry points, rank, Mean(Task), Mean(TaskType).

    ``names`` labels the rows (one per folder); by default a row is named by the model of its run.
    """
    if names is not None and len(names) != len(folders):
        raise ValueError(f"{len(names)} names for {len(folders)} result folders")
    table: dict[str, dict[str, float | None]] = {}
    types: dict[str, str] = {}
    for i, folder in enumerate(folders):
        name, scores, run = read_results(folder)
        name = names[i] if names is not None else name
        if name in table:
            name = f"{name} ({folder})"
        table[name] = dict(scores)
        types.update(run.get("types") or {})
        if not run.get("comparable", True):
            logger.warning("%s was run with --limit: its scores are not comparable", folder)
    all_tasks = list(tasks) if tasks else sorted({t for row in table.values() for t in row})
    table = {m: {t: row.get(t) for t in all_tasks} for m, row in table.items()}
    types = {t: types.get(t) or task_type(t) for t in all_tasks}
    ranks = borda(table)
    rows = []
    for m, row in table.items():
        per_type = mean_per_type(row, types)
        rows.append(
            {
                "model": m,
                "rank": ranks[m][1],
                "borda_points": ranks[m][0],
                "mean_task": mean_task(row),
                "mean_type": mean_type(per_type),
                "per_type": per_type,
                "per_task": row,
            }
        )
    return sorted(rows, key=lambda r: (r["rank"], r["model"]))


def task_table(
    scores: Mapping[str, Mapping[str, float | None]],
    tasks: Sequence[str],
    *,
    trained_on: Mapping[str, Sequence[str] | set[str]] | None = None,
    mean: bool = False,
) -> str:
    """Markdown table: a row per model (``scores``: label -> task -> score x100), a column per task.

    A missing score shows as ``—``; a ``*`` marks a task the model was trained on (``trained_on``: label ->
    task names); ``mean`` adds a Mean(Task) column.
    """
    fmt = lambda v: fmt_score(v) or "—"  # noqa: E731
    head = ["model", *tasks, *(["Mean(Task)"] if mean else [])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, row in scores.items():
        seen = set((trained_on or {}).get(label, ()))
        cells = [fmt(row.get(t)) + ("*" if t in seen else "") for t in tasks]
        if mean:
            cells.append(fmt(mean_task(row, tasks)))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_leaderboard(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table of :func:`leaderboard` rows."""
    types = [t for t in TASK_TYPES if any(t in r["per_type"] for r in rows)]
    head = ["rank", "model", "Borda points", "Mean(Task)", "Mean(TaskType)", *types]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            str(r["rank"]),
            r["model"],
            f"{r['borda_points']:g}",
            fmt_score(r["mean_task"]),
            fmt_score(r["mean_type"]),
            *[fmt_score(r["per_type"].get(t)) for t in types],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
