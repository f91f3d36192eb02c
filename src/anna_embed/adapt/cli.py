"""``anna-embed adapt``: its command line (shortcuts for ``--set``), then :func:`anna_embed.adapt.run`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from anna_embed.adapt import driver
from anna_embed.adapt.config import load_config

#: Flags that are shortcuts for ``--set key=value``.
_FLAGS = {
    "model": "train.model.name",
    "train": "data.train",
    "corpus": "data.corpus",
    "eval": "data.eval",
    "teacher": "teacher",
    "out": "output_dir",
}


def overrides_from_args(args: argparse.Namespace) -> list[str]:
    """The ``--set`` list a command line amounts to: its shortcut flags first, then its own ``--set``."""
    flags = [
        f"{key}={getattr(args, name)}" for name, key in _FLAGS.items() if getattr(args, name) is not None
    ]
    return flags + list(args.overrides)


def add_cli(verb: str, parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """``anna-embed adapt --model NAME --train DATA [--corpus F] [--teacher NAME] [--eval DIR] --out OUT``."""
    parser.add_argument("--model", help="the model to adapt (default all-minilm-l6-v2; train.model.name)")
    parser.add_argument("--train", help="BEIR folder (queries + qrels/train.tsv) or pairs JSONL (data.train)")
    parser.add_argument("--corpus", help="corpus JSONL mined for negatives (default: the BEIR folder's)")
    parser.add_argument("--teacher", help="mining teacher and soft labels (default: the model itself)")
    parser.add_argument("--eval", help="BEIR folder whose qrels/test.tsv queries are held out (data.eval)")
    parser.add_argument("--out", help="output folder (output_dir)")
    parser.add_argument("--config", help="TOML/JSON file of AdaptConfig fields")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a field"
    )
    parser.add_argument("--force", action="store_true", help="rerun finished stages")

    def main(args: argparse.Namespace) -> int:
        cfg = load_config(args.config, overrides_from_args(args))
        report = driver.run(cfg, force=args.force)
        print(report["table"])
        print(f"\nreport: {report['report']}   model: {Path(cfg.output_dir) / 'model'}")
        return 0

    return main
