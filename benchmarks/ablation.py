"""The recipe's ablation: five training variants, same base model, data, steps and seed.

Variants (each a set of config overrides on one pipeline config):

* ``full``: few-shot prompts, mined hard negatives after the margin filter, soft-label distillation;
* ``no_shots``: no few-shot examples in training or evaluation (instructions kept);
* ``no_soft_labels``: InfoNCE only (``train.loss.kl_weight = 0``);
* ``no_margin_filter``: raw top-k mined negatives (both margins off);
* ``inbatch_only``: plain InfoNCE with in-batch negatives only (no hard negatives, no KL, no shots).

Every variant runs :func:`anna_embed.pipeline.run` in ``OUT/<variant>`` with one shared cache, so teacher
scores and the base model's and teacher's evaluation embeddings are computed once. The table ranks the
five students, the untrained base and the teacher by Borda count (mteb's rule) and writes
``OUT/ablation.md``.

    python benchmarks/ablation.py --config configs/ablation.toml --output outputs/ablation \
        [--set train.optim.max_steps=200 ...] [--only full,no_shots]
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path

VARIANTS: dict[str, list[str]] = {
    "full": [],
    "no_shots": ["train.data.max_shots=0", "eval.shots=0"],
    "no_soft_labels": ["train.loss.kl_weight=0"],
    "no_margin_filter": ["mine.relative_margin=none", "mine.absolute_margin=none"],
    "inbatch_only": [
        "train.data.group_size=1",
        "train.loss.kl_weight=0",
        "train.data.max_shots=0",
        "train.data.in_batch=always",
        "eval.shots=0",
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="pipeline TOML shared by all variants")
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--set", action="append", default=[], help="override applied to every variant")
    parser.add_argument("--only", help="comma-separated subset of the variants")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from anna_embed import config as C
    from anna_embed.evaluate_report import format_leaderboard, leaderboard
    from anna_embed.pipeline import PipelineConfig, run

    names = args.only.split(",") if args.only else list(VARIANTS)
    shared_cache = args.output / "cache"
    folders: dict[str, Path] = {}
    for name in names:
        cfg = C.load(PipelineConfig, args.config, [*args.set, *VARIANTS[name]])
        cfg = replace(cfg, output_dir=str(args.output / name), cache_dir=str(shared_cache))
        run(cfg, force=args.force)
        root = Path(cfg.output_dir) / "eval"
        folders[name] = root / "student"
        folders.setdefault("base (untrained)", root / "base")
        if (root / "teacher").is_dir():
            folders.setdefault("teacher", root / "teacher")
    rows = leaderboard([str(p) for p in folders.values()])
    table = format_leaderboard(rows)
    labels = "\n".join(f"- `{p}`: {name}" for name, p in folders.items())
    text = f"# Ablation\n\nConfig: `{args.config}` + {args.set or 'no overrides'}\n\n{labels}\n\n{table}\n"
    (args.output / "ablation.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
