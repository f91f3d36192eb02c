"""``anna-embed demo`` and ``anna-embed pipeline``: the command line, then :func:`anna_embed.pipeline.run`."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from anna_embed import config as C
from anna_embed.pipeline import driver
from anna_embed.pipeline.config import DEMO_CONFIG, PipelineConfig


def add_cli(verb: str, parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """``anna-embed demo [--force]`` and ``anna-embed pipeline --config FILE [--set k=v ...] [--force]``."""
    if verb == "pipeline":
        parser.add_argument("--config", required=True, help="pipeline TOML (e.g. configs/full.toml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field")
    parser.add_argument("--output-dir", help="run folder (default: the config's output_dir)")
    parser.add_argument("--force", action="store_true", help="rerun finished stages")

    def run_cli(args: argparse.Namespace) -> int:
        if verb == "pipeline":
            cfg = C.load(PipelineConfig, args.config, args.set)
        else:
            cfg = C.build(PipelineConfig, C.to_dict(DEMO_CONFIG), args.set)
        if args.output_dir:
            cfg = replace(cfg, output_dir=args.output_dir)
        start = time.perf_counter()
        report = driver.run(cfg, force=args.force)
        print(report["table"])
        print(
            f"\nreport: {report['report']}/README.md   model: {Path(cfg.output_dir) / 'train' / 'model'}"
            f"   wall time: {time.perf_counter() - start:.0f} s"
        )
        return 0

    return run_cli
