"""Result folders: what a run may add to one, the scores out of them, and what ``eval`` and
``leaderboard`` write from them (summaries, charts, the Borda leaderboard).

A result folder holds the results of one model under one set of settings (:data:`SETTINGS`): a run of
the same model and settings adds its tasks to the folder (the summary covers them all), any other run is
refused unless ``force`` replaces the folder's results (:func:`plan_folder`, :func:`check_model`).

The aggregation itself (Mean(Task), Mean(TaskType), Borda, markdown tables) is the pure functions of
:mod:`anna_embed.scores`, which follow mteb's leaderboard.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from anna_embed.io import InputError, atomic_write
from anna_embed.scores import borda, fmt_score, mean_per_type, mean_task, mean_type
from anna_embed.tasks import TASK_TYPES, find_task

logger = logging.getLogger(__name__)

#: What ``eval`` writes beside the per-task result JSONs (replaced with them, never mixed).
RUN_FILES = ("run.json", "model_meta.json", "summary.md", "summary.csv", "summary.png")

#: The ``run.json`` settings that results sharing a folder have in common (besides the model). The batch
#: size, the progress bars and which tasks each run evaluated may differ.
SETTINGS = ("backend", "split", "shots", "seed", "limit", "dtype", "max_length", "instructions")


def task_type(name: str) -> str:
    """The type of a task name: registry, then mteb, else ``"Unknown"``."""
    spec = find_task(name)
    if spec is not None:
        return spec.type
    try:
        import mteb

        return mteb.get_task(name).metadata.type
    except Exception:
        return "Unknown"


def main_score(result: Mapping[str, Any], split: str = "test") -> float | None:
    """The main score (x100) of an mteb result JSON: the registry's subset, else the mean over subsets."""
    entries = result.get("scores", {}).get(split) or []
    spec = find_task(result["task_name"]) if "task_name" in result else None
    subset = None if spec is None else spec.subset
    if subset is not None:
        entries = [e for e in entries if e.get("hf_subset") == subset] or entries
    vals = [e["main_score"] for e in entries if e.get("main_score") is not None]
    return 100 * sum(vals) / len(vals) if vals else None


def read_json(path: Path) -> Any:
    """A JSON file of a result folder; malformed JSON is an :class:`~anna_embed.io.InputError` naming the
    file, line and column."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(path, err.lineno, f"malformed JSON ({err.msg} at column {err.colno})") from None


def result_files(folder: Path) -> dict[str, Path]:
    """Task name -> its mteb result JSON in ``folder``: each ``*.json`` with ``task_name`` and ``scores``."""
    found: dict[str, Path] = {}
    for path in sorted(folder.glob("*.json")):
        if path.name in RUN_FILES:
            continue
        data = read_json(path)
        if isinstance(data, dict) and "task_name" in data and "scores" in data:
            found[data["task_name"]] = path
    return found


def read_results(folder: str | Path) -> tuple[str, dict[str, float | None], dict[str, Any]]:
    """``(model name, task -> main score, run.json)`` of a result folder written by ``anna-embed eval``.

    Also reads any folder of mteb result JSONs (``model_meta.json`` and ``run.json`` optional).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a result folder")
    run = read_json(folder / "run.json") if (folder / "run.json").is_file() else {}
    scores = {task: main_score(read_json(path)) for task, path in result_files(folder).items()}
    return str(run.get("model", folder.name)), scores, run


# ------------------------------------------------------------------------------ what a folder may hold


class ResultFolderError(ValueError):
    """An output folder holding results that a run must not mix with its own (another model or settings)."""


@dataclass(frozen=True)
class FolderPlan:
    """What a run does with the results already in its output folder.

    Attributes:
        earlier: Task name -> result file already in the folder.
        run: Their ``run.json`` when this run's results join them (``{}`` when none or when replaced).
        replace: Remove the earlier results (and summaries) once this run has succeeded, not before.
    """

    earlier: dict[str, Path]
    run: dict[str, Any]
    replace: bool

    @property
    def kept(self) -> dict[str, Path]:
        """The earlier results that stay beside this run's (none when they are replaced)."""
        return {} if self.replace else self.earlier


def _refusal(out: Path, what: str) -> ResultFolderError:
    return ResultFolderError(
        f"{out}: {what}. A folder holds one model's results under one set of settings (its summary and "
        "leaderboard row average them all): pass --force (force=True) to replace them once this run has "
        "succeeded, or choose another output folder."
    )


def plan_folder(out: Path, *, model: str, settings: Mapping[str, Any], force: bool) -> FolderPlan:
    """Decide, before the model loads, what a run of ``model`` with ``settings`` does in ``out``.

    Results of the same model and settings stay and this run's join them; a folder of another model or
    other settings is refused unless ``force``, which replaces its results (once the run has succeeded).
    Settings an older ``run.json`` did not record are not compared.

    Raises:
        ResultFolderError: ``out`` holds results of another model or settings, or results without a
            ``run.json`` (whose model is unknown), and ``force`` is not set.
    """
    if not out.is_dir():
        return FolderPlan({}, {}, replace=False)
    earlier = result_files(out)
    run = read_json(out / "run.json") if (out / "run.json").is_file() else {}
    run = run if isinstance(run, dict) else {}
    if force or not earlier:
        if force and earlier:
            logger.warning(
                "--force: the %d earlier result(s) in %s (model %r) are replaced once this run succeeds",
                len(earlier),
                out,
                run.get("model", "unknown"),
            )
        return FolderPlan(earlier, {}, replace=bool(earlier or run))
    names = ", ".join(sorted(earlier))
    if not run:
        raise _refusal(out, f"holds results ({names}) but no run.json, so whose they are is unknown")
    diffs = [f"model {run.get('model')!r} there, {model!r} now"] if run.get("model") != model else []
    diffs += [
        f"{k}: {run[k]!r} there, {settings[k]!r} now" for k in SETTINGS if k in run and run[k] != settings[k]
    ]
    if diffs:
        raise _refusal(
            out,
            f"holds the results of model {run.get('model')!r} ({names}); this run differs: "
            + "; ".join(diffs),
        )
    return FolderPlan(earlier, run, replace=False)


def check_model(
    plan: FolderPlan, out: Path, *, model: str, model_id: str, tasks: Sequence[str]
) -> FolderPlan:
    """Once the model is loaded: the same name may now stand for other weights or another saved config
    (a retrained model). Its earlier results are then replaced when this run evaluates every one of their
    tasks again, and refused when some would stay beside the new ones.

    Raises:
        ResultFolderError: The model changed and earlier results of tasks this run skips would stay.
    """
    before = plan.run.get("model_id")
    if plan.replace or not plan.earlier or before is None or before == model_id:
        return plan
    stale = sorted(set(plan.earlier) - set(tasks))
    if stale:
        raise _refusal(
            out,
            f"the model behind {model!r} changed since its results there were made (other weights or saved "
            f"config), and this run leaves {', '.join(stale)} from the earlier version: evaluate those too",
        )
    logger.warning(
        "%s: the model behind %r changed since the earlier results (other weights or saved config); this "
        "run evaluates all their tasks again, so they are replaced",
        out,
        model,
    )
    return replace(plan, run={}, replace=True)


def commit_results(out: Path, results: Mapping[str, Any], plan: FolderPlan) -> None:
    """Write this run's mteb ``TaskResult``s into ``out`` as ``<task>.json``, each atomically, then remove
    the earlier results that do not stay (all of them when the plan replaces them; a task's older file of
    another name). The summaries are rewritten next; files ``eval`` does not write (the embedding cache,
    your notes) are left alone."""
    written = set()
    for name, result in results.items():
        target = out / f"{name}.json"
        tmp = out / f".{name}.json.tmp"
        result.to_disk(tmp)
        tmp.replace(target)
        written.add(target)
    for name, path in plan.earlier.items():
        if path not in written and (plan.replace or name in results):
            path.unlink(missing_ok=True)


def summary_rows(scores: Mapping[str, float | None], types: Mapping[str, str]) -> list[dict[str, Any]]:
    """One row per task, sorted by type then name."""
    return [
        {"task": t, "type": types[t], "main_score": scores.get(t)}
        for t in sorted(scores, key=lambda t: (types[t], t))
    ]


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
        path.unlink(missing_ok=True)  # no chart rather than an earlier run's
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
