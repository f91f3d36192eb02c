"""The recipe's ablation: five training variants, same base model, data, steps, batch and seed.

Variants (each a set of config overrides on one pipeline config):

* ``full``: few-shot prompts, mined hard negatives after the margin filter, soft-label distillation;
* ``no_shots``: no few-shot examples in training or evaluation (instructions kept);
* ``no_soft_labels``: InfoNCE only (``train.loss.kl_weight = 0``);
* ``no_margin_filter``: raw top-k mined negatives (both margins off);
* ``inbatch_only``: plain InfoNCE with in-batch negatives only (no hard negatives, no KL, no shots);
  classification keeps the same group-only rule and label negatives as every other variant;
* ``label_layout``: the full recipe with BGE-EN-ICL's classification records (positive = the label's
  text, negatives = other labels' texts) instead of another text of the same label (not run by
  default: ``--only full,label_layout``);
* ``full_batch``: the full recipe with soft labels over every candidate of the batch
  (``train.loss.distill_scope = "batch"``: a bi-encoder reranker's vectors, saved by mining, give the
  teacher's score of every (query, document) pair the student scores; not run by default; the same as
  ``full`` under ``configs/ablation.toml``, which sets the batch scope since 2026-12-06);
* ``full_group``: the full recipe with the paper's soft labels over each query's own group only
  (``train.loss.distill_scope = "group"``; not run by default);
* ``hardneg_only``: ``inbatch_only`` plus the mined hard negatives (no examples, no KL): the hard-negative
  pillar alone (not run by default);
* ``inbatch_shots``: ``inbatch_only`` with the few-shot examples kept (training and evaluation): the
  examples pillar alone (not run by default);
* ``inbatch_distill``: ``inbatch_only`` plus batch-wide soft labels: the same texts and tokens, and the
  teacher's scores of every in-batch candidate (its vectors, saved by mining) distilled beside InfoNCE
  (not run by default);
* ``curriculum``: the full recipe after ``inbatch_only`` for its first third of ``train.optim.max_steps``
  (``train.data.hard_negatives_after``; not run by default). Under ``train.optim.max_tokens`` the switch
  step must be given (``--set train.data.hard_negatives_after=N``).

Every variant runs :func:`anna_embed.pipeline.run` in ``OUT/<variant>`` with one shared cache, so teacher
scores and the base model's and teacher's evaluation embeddings are computed once. The untrained base is
evaluated once per prompt setting (with and without few-shot examples). ``OUT/ablation.md`` ranks the five
students, the base and the teacher by Borda count (mteb's rule) and lists every task's score and what
removing each pillar costs, and each variant's training cost (tokens encoded, steps, training wall
seconds, from ``OUT/<variant>/train/model/training.json``); ``OUT/ablation.json`` holds the same numbers.
Equal compute by tokens instead of steps: ``--set train.optim.max_tokens=N`` (every variant trains until it
has encoded N tokens; ``max_steps`` stays an upper bound).

    python benchmarks/ablation.py --config configs/ablation.toml --output outputs/ablation \
        [--set train.optim.max_steps=200 ...] [--only full,no_shots] [--report-only]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any


def _curriculum(base: Any) -> list[str]:
    """In-batch negatives only (no mined negatives, no KL) for the first third of the steps.

    Under ``train.optim.max_tokens`` the step count is only known once training plans it, so the switch
    must then be given: ``--set train.data.hard_negatives_after=N`` (a third of the planned steps that
    ``optim.max_tokens=...: N steps`` in the training log prints is the same rule).
    """
    if base.train.data.hard_negatives_after > 0:
        return []  # the user's switch step
    if base.train.optim.max_tokens is not None:
        raise ValueError(
            "the curriculum variant under train.optim.max_tokens needs its switch step: "
            "--set train.data.hard_negatives_after=N (steps)"
        )
    steps = base.train.optim.max_steps
    if not steps:
        raise ValueError("the curriculum variant switches at a third of train.optim.max_steps: set it")
    return [f"train.data.hard_negatives_after={steps // 3}"]


#: Each variant's overrides, or a function of the base config that returns them.
VARIANTS: dict[str, list[str] | Callable[[Any], list[str]]] = {
    "full": [],
    "no_shots": ["train.data.max_shots=0", "eval.shots=0"],
    "no_soft_labels": ["train.loss.kl_weight=0"],
    "no_margin_filter": ["mine.relative_margin=none", "mine.absolute_margin=none"],
    "inbatch_only": [
        "train.data.in_batch_group_size=1",
        "train.loss.kl_weight=0",
        "train.data.max_shots=0",
        "eval.shots=0",
    ],
    "label_layout": ["classification_layout=label"],
    "full_batch": ["train.loss.distill_scope=batch"],
    "full_group": ["train.loss.distill_scope=group"],
    "hardneg_only": ["train.loss.kl_weight=0", "train.data.max_shots=0", "eval.shots=0"],
    "inbatch_shots": ["train.data.in_batch_group_size=1", "train.loss.kl_weight=0"],
    "inbatch_distill": [
        "train.data.in_batch_group_size=1",
        "train.loss.distill_scope=batch",
        "train.data.max_shots=0",
        "eval.shots=0",
    ],
    "curriculum": _curriculum,
}
#: The variants run without ``--only``: the recipe and one removal per pillar.
PILLARS = ("full", "no_shots", "no_soft_labels", "no_margin_filter", "inbatch_only")


def variant_config(
    config: str | Path, name: str, sets: Sequence[str], output: Path, cache: Path | None = None
) -> Any:
    """The pipeline config of one variant: ``config`` + ``sets`` + the variant's overrides."""
    from anna_embed import config as C
    from anna_embed.pipeline import PipelineConfig

    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    overrides = VARIANTS[name]
    if callable(overrides):
        overrides = overrides(C.load(PipelineConfig, config, list(sets)))
    cfg = C.load(PipelineConfig, config, [*sets, *overrides])
    return replace(cfg, output_dir=str(output / name), cache_dir=str(cache or output / "cache"))


def result_folders(output: Path, names: Sequence[str]) -> dict[str, Path]:
    """Row label -> evaluation folder: the students, the base once per prompt setting, the teacher."""
    rows: dict[str, Path] = {}
    for name in names:
        root = output / name / "eval"
        rows[name] = root / "student"
        if (root / "base" / "run.json").is_file():  # absent with eval.base = false
            shots = json.loads((root / "base" / "run.json").read_text()).get("shots", 0)
            rows.setdefault(f"base, untrained ({shots}-shot prompts)", root / "base")
    for name in names:
        folder = output / name / "eval" / "teacher"
        if folder.is_dir():
            teacher = json.loads((folder / "run.json").read_text()).get("model", "?")
            rows.setdefault(f"teacher ({teacher})", folder)
            break
    return rows


def pillar_costs(rows: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """Mean(Task) of each variant minus the full recipe's (negative: removing the pillar costs points),
    plus ``full_vs_inbatch_only``: the full recipe minus plain in-batch InfoNCE."""
    mean = {r["model"]: r["mean_task"] for r in rows}
    full = mean.get("full")

    def diff(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round(a - b, 2)

    out = {name: diff(mean.get(name), full) for name in VARIANTS if name != "full" and name in mean}
    out["full_vs_inbatch_only"] = diff(full, mean.get("inbatch_only"))
    return out


def training_costs(output: Path, names: Sequence[str]) -> dict[str, dict[str, Any] | None]:
    """Variant -> ``{tokens, steps, train_seconds}`` from ``train/model/training.json`` (None: no model)."""
    out: dict[str, dict[str, Any] | None] = {}
    for name in names:
        path = output / name / "train" / "model" / "training.json"
        meta = json.loads(path.read_text()) if path.is_file() else None
        out[name] = None if meta is None else {k: meta.get(k) for k in ("tokens", "steps", "train_seconds")}
    return out


def format_costs(costs: Mapping[str, Mapping[str, Any] | None]) -> str:
    """Markdown table of :func:`training_costs` (``n/a`` where a run or a field is missing)."""

    def cell(row: Mapping[str, Any] | None, key: str, fmt: str) -> str:
        value = None if row is None else row.get(key)
        return "n/a" if value is None else format(value, fmt)

    lines = ["| variant | tokens encoded | steps | training wall s |", "|---|---:|---:|---:|"]
    for name, row in costs.items():
        cells = [cell(row, "tokens", ","), cell(row, "steps", "d"), cell(row, "train_seconds", ".1f")]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="pipeline TOML shared by all variants")
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--set", action="append", default=[], help="override applied to every variant")
    parser.add_argument("--only", help="comma-separated subset of the variants, run in this order")
    parser.add_argument("--force", action="store_true")
    parser.add_argument(
        "--cache", type=Path, help="cache folder shared with other outputs (default OUTPUT/cache)"
    )
    parser.add_argument("--report-only", action="store_true", help="rebuild the tables from finished runs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from anna_embed.evaluate.report import leaderboard
    from anna_embed.io import atomic_write, write_json
    from anna_embed.pipeline import run
    from anna_embed.scores import format_leaderboard, task_table

    names = args.only.split(",") if args.only else list(PILLARS)
    configs = {name: variant_config(args.config, name, args.set, args.output, args.cache) for name in names}
    wall: dict[str, float] = {}
    if not args.report_only:
        for name, cfg in configs.items():
            t0 = time.perf_counter()
            run(cfg, force=args.force)
            wall[name] = round(time.perf_counter() - t0, 1)

    folders = result_folders(args.output, names)
    tasks = list(next(iter(configs.values())).eval.tasks)
    rows = leaderboard(list(folders.values()), tasks=tasks, names=list(folders))
    trained_on = {
        label: set(json.loads((p / "run.json").read_text()).get("training_datasets") or ())
        for label, p in folders.items()
    }
    costs = pillar_costs(rows)
    spent = training_costs(args.output, names)
    cost_lines = "\n".join(f"- {k}: {v:+.2f}" if v is not None else f"- {k}: n/a" for k, v in costs.items())
    labels = "\n".join(f"- {label}: `{p}`" for label, p in folders.items())
    per_task = task_table({r["model"]: r["per_task"] for r in rows}, tasks, trained_on=trained_on)
    head = f"Config: `{args.config}` + {args.set or 'no overrides'}; variants: {', '.join(names)}"
    text = (
        f"# Ablation\n\n{head}\n\n"
        f"{format_leaderboard(rows)}\n\n## Per task\n\n{per_task}\n\n"
        f"(* trained on this task's data)\n\n## Mean(Task) against the full recipe\n\n{cost_lines}\n\n"
        f"## Training cost\n\n{format_costs(spent)}\n\n"
        f"## Result folders\n\n{labels}\n"
    )
    with atomic_write(args.output / "ablation.md") as fh:
        fh.write(text)
    write_json(
        args.output / "ablation.json",
        {
            "config": str(args.config),
            "sets": args.set,
            "rows": rows,
            "costs": costs,
            "training_costs": spent,
            "wall_s": wall,
        },
    )
    print(text)


if __name__ == "__main__":
    main()
