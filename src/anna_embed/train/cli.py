"""``anna-embed train``: the command line of the training stage (the loop is :mod:`anna_embed.train.loop`)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

from anna_embed import config as C
from anna_embed.train.config import TrainConfig

logger = logging.getLogger(__name__)


def add_cli(verb: str, parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """``anna-embed train --config FILE [--set key=value ...] [--resume | --force]``."""
    parser.add_argument("--config", help="TOML config (see configs/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.lr=5e-5 (repeatable)",
    )
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in run.output_dir from its newest loadable checkpoint (same config)",
    )
    start.add_argument(
        "--force",
        action="store_true",
        help="run.output_dir holds another run: delete its checkpoints, metrics and model, start afresh",
    )

    def run(args: argparse.Namespace) -> int:
        from anna_embed.train.loop import TrainingDivergedError, train  # torch and accelerate: only to run

        cfg = C.load(TrainConfig, args.config, args.overrides)
        try:
            out = train(cfg, resume=args.resume, force=args.force)
        except TrainingDivergedError as err:
            logger.error("%s", err)
            return 3
        logger.info("done: %s", out)
        return 0

    return run
