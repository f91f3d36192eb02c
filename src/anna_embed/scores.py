"""Score tables and what is computed from them: Mean(Task), Mean(TaskType), Borda ranks, markdown tables.

Pure functions on ``model -> task -> score`` tables that follow mteb's leaderboard
(``mteb/benchmarks/_create_table.py``); ``anna-embed eval`` / ``leaderboard``
(:mod:`anna_embed.evaluate.report`), the pipeline's report and the ablation all aggregate with them:

* Mean(Task): the unweighted mean of the task scores; ``None`` if any task is missing (``skipna=False``).
* Mean(TaskType): the mean of the per-type means (each ``None`` if one of its tasks is missing).
* Borda: per task, each model gets ``n_models - rank`` points, rank taken with ties averaged (descending
  scores); a model without a score on a task gets 0 for it; the final rank is the ``min`` rank of the
  summed points (descending), so tied sums share the better rank.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from anna_embed.tasks import TASK_TYPES

Table = Mapping[str, Mapping[str, float | None]]  # model -> task -> score (x100)


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


def fmt_score(v: float | None) -> str:
    """A score (x100) as tables show it: two decimals; empty for a missing one."""
    return "" if v is None else f"{v:.2f}"


def score_cell(v: float | None) -> str:
    """A score (x100) in a report's table cell: two decimals; ``—`` for a missing one."""
    return fmt_score(v) or "—"


def markdown_table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A markdown table: the header line, the ``---`` rule, a line per row of cells.

    Args:
        head: The column names.
        rows: The rows' cells, as text.

    Example:
        >>> print(markdown_table(["model", "SciFact"], [["base", "64.50"]]))
        | model | SciFact |
        |---|---|
        | base | 64.50 |
    """
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


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
    rows = []
    for label, row in scores.items():
        seen = set((trained_on or {}).get(label, ()))
        cells = [label, *[score_cell(row.get(t)) + ("*" if t in seen else "") for t in tasks]]
        rows.append([*cells, *([score_cell(mean_task(row, tasks))] if mean else [])])
    return markdown_table(["model", *tasks, *(["Mean(Task)"] if mean else [])], rows)


def format_leaderboard(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table of :func:`leaderboard` rows."""
    types = [t for t in TASK_TYPES if any(t in r["per_type"] for r in rows)]
    head = ["rank", "model", "Borda points", "Mean(Task)", "Mean(TaskType)", *types]
    cells = [
        [
            str(r["rank"]),
            r["model"],
            f"{r['borda_points']:g}",
            fmt_score(r["mean_task"]),
            fmt_score(r["mean_type"]),
            *[fmt_score(r["per_type"].get(t)) for t in types],
        ]
        for r in rows
    ]
    return markdown_table(head, cells)
