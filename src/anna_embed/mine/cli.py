"""``anna-embed mine``: the command line of the mining stage (flags become :class:`MineConfig` overrides).

Exit codes: 0 done, 2 bad input or settings (checked before any teacher loads), 143 on SIGTERM and 130 on
Ctrl-C; an interrupted run leaves no partial output, and a rerun resumes from its shard cache.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from anna_embed.config import load
from anna_embed.io import Terminated, sigterm_as_interrupt
from anna_embed.mine import driver
from anna_embed.mine.config import MineConfig

#: Flags that are shortcuts for ``--set field=value``.
_FLAGS = {
    "retriever": str,
    "reranker": str,
    "task": str,
    "top_k": int,
    "index": str,
    "relative_margin": str,
    "absolute_margin": str,
    "num_negatives": int,
    "sampling": str,
    "seed": int,
    "batch_size": int,
    "max_length": str,
    "reranker_max_length": str,
    "shard_size": int,
    "dtype": str,
}


def add_cli(verb: str, parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """Register ``anna-embed mine``."""
    parser.description = "Mine hard negatives with soft labels: encode -> search -> rescore -> filter."
    parser.add_argument("--train", required=True, help="training JSONL {query, positive, negative?, task?}")
    parser.add_argument("--corpus", help="corpus JSONL ({_id, title, text} or {text}); default: positives")
    parser.add_argument("--out", required=True, help="mined JSONL (FlagEmbedding teacher-score format)")
    parser.add_argument("--config", help="TOML/JSON file with MineConfig fields")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a field")
    parser.add_argument("--bm25", action="store_true", help="fuse BM25 candidates (reciprocal-rank fusion)")
    parser.add_argument(
        "--teacher-embeddings",
        action="store_true",
        help="also write the bi-encoder reranker's vectors of every text to OUT-stem.teacher.npz",
    )
    parser.add_argument("--cache-dir", help="shard cache (default OUT.cache); reruns resume from it")
    parser.add_argument("--report-dir", help="where manifest, summary and histogram go (default: beside OUT)")
    for name, tp in _FLAGS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=tp, default=None, help=f"MineConfig.{name}")

    def main(args: argparse.Namespace) -> int:
        overrides = list(args.set)
        overrides += [f"{n}={getattr(args, n)}" for n in _FLAGS if getattr(args, n) is not None]
        if args.bm25:
            overrides.append("bm25=true")
        if args.teacher_embeddings:
            overrides.append("teacher_embeddings=true")
        cfg = load(MineConfig, args.config, overrides)
        try:
            with sigterm_as_interrupt():
                manifest = driver.run(
                    cfg,
                    args.train,
                    args.out,
                    corpus=args.corpus,
                    cache_dir=args.cache_dir,
                    report_dir=args.report_dir,
                )
        except Terminated:
            return Terminated.exit_code
        for line in manifest["summary"]:
            print(line)
        return 0

    return main
