"""``anna-embed eval`` and ``anna-embed leaderboard``: a thin adapter to mteb, plus the aggregation.

``eval`` reads each task from a local folder (:mod:`anna_embed.evaluate_data`), hands the mteb task object
to ``mteb.evaluate`` with our model behind mteb's encoder protocol (:mod:`anna_embed.evaluate_model`), and
writes one mteb result JSON per task, ``summary.md``/``summary.csv`` (main scores, Mean(Task),
Mean(TaskType)), ``summary.png`` and ``run.json``. Scoring is mteb's own; only the means and the Borda
count are computed here, as pure functions that follow mteb's leaderboard:

* Mean(Task): the unweighted mean of the task scores; ``None`` if any task is missing.
* Mean(TaskType): the mean of the per-type means (each ``None`` if one of its tasks is missing).
* Borda: per task, each model gets ``n_models - rank`` points, rank taken with ties averaged (descending
  scores); a model without a score on a task gets 0 for it; the final rank is the ``min`` rank of the
  summed points (descending), so tied sums share the better rank.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from anna_embed.io import atomic_write, write_json
from anna_embed.tasks import TASK_TYPES, UnknownTaskError, benchmark_tasks, get_task

logger = logging.getLogger(__name__)

Table = Mapping[str, Mapping[str, float | None]]  # model -> task -> score (x100)
BENCHMARK_ALIASES = {"mteb-eng-v2": "MTEB(eng, v2)", "eng-v2": "MTEB(eng, v2)"}


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


def _fmt(v: float | None) -> str:
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
        w.writerow([r["task"], r["type"], _fmt(r["main_score"]), notes.get(r["task"], "")])
    w.writerow(["Mean(Task)", "", _fmt(agg["mean_task"]), ""])
    w.writerow(["Mean(TaskType)", "", _fmt(agg["mean_type"]), ""])
    with atomic_write(out / "summary.csv") as fh:
        fh.write(buf.getvalue())
    lines = [f"# {model}", ""]
    if limit is not None:
        lines += [f"**--limit {limit}: smoke run on a subsample, NOT comparable to published scores.**", ""]
    lines += ["| task | type | main score | note |", "|---|---|---:|---|"]
    lines += [
        f"| {r['task']} | {r['type']} | {_fmt(r['main_score'])} | {notes.get(r['task'], '')} |" for r in rows
    ]
    lines += [
        "",
        "| aggregate | score |",
        "|---|---:|",
        f"| Mean(Task) | {_fmt(agg['mean_task'])} |",
        f"| Mean(TaskType) | {_fmt(agg['mean_type'])} |",
    ]
    lines += [f"| {t} (mean) | {_fmt(v)} |" for t, v in sorted(per_type.items())]
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
    ax.legend(handles, present, fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


# -------------------------------------------------------------------------------------------- run


def resolve_tasks(tasks: str | None, benchmark: str | None) -> list[str]:
    """Task names from ``--tasks T1,T2`` and/or ``--benchmark NAME``."""
    names = [t.strip() for t in (tasks or "").split(",") if t.strip()]
    if benchmark:
        key = BENCHMARK_ALIASES.get(benchmark, benchmark)
        if key == "MTEB(eng, v2)":
            names += [t.name for t in benchmark_tasks()]
        else:
            import mteb

            names += [t.metadata.name for t in mteb.get_benchmark(key).tasks]
    if not names:
        raise ValueError("give --tasks and/or --benchmark")
    return list(dict.fromkeys(names))


def run_eval(
    model: str,
    tasks: Sequence[str],
    *,
    data_dir: str | Path | None,
    output: str | Path,
    backend: Any = "embedder",
    shots: int = 0,
    seed: int = 42,
    limit: int | None = None,
    batch_size: int = 32,
    cache_dir: str | Path | None = None,
    dtype: str = "float32",
    max_length: int | None = None,
    instructions: bool | None = None,
    task_type_override: str | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``tasks`` with mteb's evaluators; write results into ``output``.

    ``backend`` is ``"embedder"``, ``"sentence-transformers"`` or an already-built
    :class:`~anna_embed.evaluate_model.TextBackend` (then ``model`` is only the name recorded).

    Returns:
        ``run.json``'s content: settings, per-task main scores, wall times, shots used, aggregates.
    """
    import mteb

    from anna_embed.evaluate_data import load_task
    from anna_embed.evaluate_model import (
        EmbeddingCache,
        EvalEncoder,
        example_pool,
        load_backend,
        pick_examples,
    )

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    t_load = time.monotonic()
    local = {}
    for name in tasks:  # read every folder first: a bad file fails before any encoding
        lt = load_task(name, data_dir, limit=limit, type_=task_type_override)
        local[lt.name] = lt
    be = (
        backend
        if not isinstance(backend, str)
        else load_backend(model, backend, dtype=dtype, max_length=max_length, instructions=instructions)
    )  # type: ignore[arg-type]
    examples, sources = {}, {}
    for name, lt in local.items():
        pool, source = example_pool(lt) if shots > 0 else ([], "")
        examples[name] = pick_examples(pool, shots, seed=seed, task=name)
        sources[name] = source
        if shots > 0 and len(examples[name]) < shots:
            logger.warning("%s: %d of %d shots (%s)", name, len(examples[name]), shots, source)
    cache = EmbeddingCache(Path(cache_dir) if cache_dir else out / "cache" / "embeddings.sqlite")
    enc = EvalEncoder(
        be,
        tasks=local,
        examples=examples,
        cache=cache,
        model_name=model.strip("/"),
        batch_size=batch_size,
        show_progress=show_progress,
    )
    logger.info("Loaded %d task(s) and the model in %.1fs", len(local), time.monotonic() - t_load)
    scores: dict[str, float | None] = {}
    timing: dict[str, float] = {}
    errors: dict[str, str] = {}
    for name, lt in local.items():
        t0 = time.monotonic()
        logger.info("Evaluating %s (%s, %s)", name, lt.type, lt.folder or "hub")
        try:
            res = mteb.evaluate(
                enc,
                [lt.task],
                cache=None,
                overwrite_strategy="always",
                co2_tracker=False,
                show_progress_bar=False,
                encode_kwargs={"batch_size": batch_size},
            )
        except Exception as err:
            if lt.folder is not None:
                raise
            # no local folder and the hub failed (offline): record the task as missing and go on
            logger.error("%s: no folder under --data-dir and hub loading failed: %s", name, err)
            scores[name], errors[name] = None, f"{type(err).__name__}: {err}"
            continue
        result = res.task_results[0]
        tmp = out / f".{name}.json.tmp"
        result.to_disk(tmp)
        tmp.replace(out / f"{name}.json")
        scores[name] = main_score(json.loads((out / f"{name}.json").read_text()))
        timing[name] = round(time.monotonic() - t0, 1)
        logger.info(
            "%s: main score %s (%.0fs; cache %d hits, %d misses so far)",
            name,
            _fmt(scores[name]),
            timing[name],
            cache.hits,
            cache.misses,
        )
    cache.close()
    types = {n: lt.type for n, lt in local.items()}
    notes = {n: f"--limit {limit}" for n in local} if limit is not None else {}
    notes.update({n: "missing (no local folder, hub unreachable)" for n in errors})
    agg = write_summary(out, model, scores, types, notes=notes, limit=limit)
    run = {
        "model": model,
        "backend": backend if isinstance(backend, str) else type(backend).__name__,
        "model_id": be.model_id,
        "tasks": list(local),
        "types": types,
        "data": {n: str(lt.folder) if lt.folder else "hub" for n, lt in local.items()},
        "shots": shots,
        "shot_sources": sources if shots else {},
        "seed": seed,
        "limit": limit,
        "comparable": limit is None,
        "batch_size": batch_size,
        "dtype": dtype,
        "scores": scores,
        "wall_seconds": timing,
        "errors": errors,
        "training_datasets": list(be.training_datasets),
        **agg,
    }
    write_json(out / "run.json", run)
    write_json(out / "model_meta.json", enc.mteb_model_meta.model_dump(mode="json"))
    return run


def leaderboard(folders: Sequence[str | Path], *, tasks: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Rank result folders by Borda count; rows carry points, rank, Mean(Task), Mean(TaskType)."""
    table: dict[str, dict[str, float | None]] = {}
    types: dict[str, str] = {}
    for folder in folders:
        name, scores, run = read_results(folder)
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
            _fmt(r["mean_task"]),
            _fmt(r["mean_type"]),
            *[_fmt(r["per_type"].get(t)) for t in types],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- CLI


def add_cli(verb: str, parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """Arguments of ``eval`` / ``leaderboard``; returns the function that runs the verb."""
    if verb == "leaderboard":
        parser.add_argument("folders", nargs="+", help="result folders written by `anna-embed eval`")
        parser.add_argument("--tasks", help="comma-separated tasks to rank on (default: all found)")
        parser.add_argument("--output", help="also write the table (.md) and rows (.json) here")
        return _run_leaderboard
    parser.add_argument("--model", required=True, help="short name, model folder or hub id")
    parser.add_argument("--tasks", help="comma-separated task names (mteb names, folder names or your own)")
    parser.add_argument("--benchmark", help='benchmark name, e.g. "MTEB(eng, v2)"')
    parser.add_argument("--data-dir", help="folder holding one sub-folder per task (docs/EVALUATION.md)")
    parser.add_argument("--output", required=True, help="result folder (created)")
    parser.add_argument("--backend", choices=["embedder", "sentence-transformers"], default="embedder")
    parser.add_argument("--shots", type=int, default=0, help="few-shot examples per task (train split)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the few-shot draw")
    parser.add_argument("--limit", type=int, help="first N test items only (smoke run, NOT comparable)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cache-dir", help="embedding cache file (default OUTPUT/cache/embeddings.sqlite)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "auto"], default="float32")
    parser.add_argument("--max-length", type=int, help="token budget override")
    parser.add_argument(
        "--instructions",
        choices=["auto", "on", "off"],
        default="auto",
        help="task instructions: auto = the model's saved setting",
    )
    parser.add_argument("--task-type", choices=list(TASK_TYPES), help="type of your own task folder(s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return _run_eval


def _run_eval(args: argparse.Namespace) -> int:
    tasks = resolve_tasks(args.tasks, args.benchmark)
    instructions = {"auto": None, "on": True, "off": False}[args.instructions]
    run = run_eval(
        args.model,
        tasks,
        data_dir=args.data_dir,
        output=args.output,
        backend=args.backend,
        shots=args.shots,
        seed=args.seed,
        limit=args.limit,
        batch_size=args.batch_size,
        cache_dir=args.cache_dir,
        dtype=args.dtype,
        max_length=args.max_length,
        instructions=instructions,
        task_type_override=args.task_type,
        show_progress=not args.no_progress,
    )
    print((Path(args.output) / "summary.md").read_text())
    return 0 if all(v is not None for v in run["scores"].values()) else 1


def _run_leaderboard(args: argparse.Namespace) -> int:
    tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks else None
    rows = leaderboard(args.folders, tasks=tasks)
    table = format_leaderboard(rows)
    print(table)
    if args.output:
        out = Path(args.output)
        with atomic_write(out.with_suffix(".md")) as fh:
            fh.write(table + "\n")
        write_json(out.with_suffix(".json"), rows)
    return 0
