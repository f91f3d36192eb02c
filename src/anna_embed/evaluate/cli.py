"""``anna-embed eval`` and ``anna-embed leaderboard``: their arguments, then
:func:`~anna_embed.evaluate.driver.run_eval` or the Borda ranking of result folders
(:func:`~anna_embed.evaluate.report.leaderboard`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from anna_embed import distributed
from anna_embed.evaluate.driver import resolve_tasks, run_eval
from anna_embed.evaluate.report import leaderboard
from anna_embed.io import atomic_write, write_json
from anna_embed.scores import format_leaderboard
from anna_embed.tasks import DEFAULT_SHOT_SEED, TASK_TYPES


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
    parser.add_argument(
        "--output",
        required=True,
        help="result folder (created; one of the same model and settings collects more tasks)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace the results of another model or other settings in --output (once this run succeeds)",
    )
    parser.add_argument("--backend", choices=["embedder", "sentence-transformers"], default="embedder")
    parser.add_argument("--shots", type=int, default=0, help="few-shot examples per task (train split)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SHOT_SEED, help="seed of the few-shot draw")
    parser.add_argument("--limit", type=int, help="first N test items only (smoke run, NOT comparable)")
    parser.add_argument(
        "--split",
        default="test",
        help="split scored in STS/PairClassification folders (validation, dev: tune off the test set)",
    )
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
        split=args.split,
        force=args.force,
    )
    if distributed.launch().is_main:  # the process group run_eval joined: one summary, not one per rank
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
