"""``anna-embed eval`` and ``anna-embed leaderboard``: their arguments, then
:func:`~anna_embed.evaluate.driver.run_eval` or the Borda ranking of result folders
(:func:`~anna_embed.evaluate.report.leaderboard`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from anna_embed import distributed
from anna_embed.cli_args import add_arguments, from_args
from anna_embed.evaluate.config import EvalConfig
from anna_embed.evaluate.driver import resolve_tasks, run_eval
from anna_embed.evaluate.report import leaderboard
from anna_embed.io import atomic_write, write_json
from anna_embed.scores import format_leaderboard


def add_cli(verb: str, parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """Arguments of ``eval`` (:class:`~anna_embed.evaluate.config.EvalConfig`'s fields, then the run's own
    switches) / ``leaderboard``; returns the function that runs the verb."""
    if verb == "leaderboard":
        parser.add_argument("folders", nargs="+", help="result folders written by `anna-embed eval`")
        parser.add_argument("--tasks", help="comma-separated tasks to rank on (default: all found)")
        parser.add_argument("--output", help="also write the table (.md) and rows (.json) here")
        return _run_leaderboard
    add_arguments(parser, EvalConfig)
    parser.add_argument("--benchmark", help='benchmark name, e.g. "MTEB(eng, v2)" (its tasks join --tasks)')
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace the results of another model or other settings in --output (once this run succeeds)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return _run_eval


def _run_eval(args: argparse.Namespace) -> int:
    cfg = from_args(EvalConfig, args, tasks=tuple(resolve_tasks(args.tasks, args.benchmark)))
    run = run_eval(cfg, show_progress=not args.no_progress, force=args.force)
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
