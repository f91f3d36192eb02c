"""``anna-embed``: argument parsing and dispatch only.

Each verb lives in the ``cli`` module of its stage's package (or in its own module: ``encode``,
``convert``), which exposes ``add_cli(verb, parser) -> run(args) -> int``. Only the chosen verb's module is
imported, so ``anna-embed --help`` and ``--version`` stay fast. The output is quiet by default and complete
with ``-v`` (:func:`anna_embed.logs.setup_logging`).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from anna_embed import __version__
from anna_embed.logs import setup_logging

#: verb -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("anna_embed.model.cli", "list or pull the offline models (short names)"),
    "encode": ("anna_embed.encode", "embed a .jsonl/.txt file into a .npy (+ ids)"),
    "eval": ("anna_embed.evaluate.cli", "evaluate a model on MTEB tasks from local folders"),
    "leaderboard": ("anna_embed.evaluate.cli", "rank result folders by Borda count"),
    "mine": ("anna_embed.mine.cli", "mine hard negatives with teacher soft labels"),
    "convert": ("anna_embed.convert", "turn classification/clustering/STS/NLI data into training records"),
    "train": ("anna_embed.train.cli", "train the embedder (LoRA contrastive + distillation)"),
    "pipeline": ("anna_embed.pipeline.cli", "mine -> train -> evaluate from one config"),
    "adapt": (
        "anna_embed.adapt.cli",
        "adapt a model to a corpus: teacher mining, training, scores before/after",
    ),
    "demo": ("anna_embed.pipeline.cli", "the end-to-end demo on the embedded defaults"),
    "serve": ("anna_embed.serve.cli", "serve a model over an OpenAI-compatible HTTP API"),
}


VERBOSE_HELP = "everything: debug lines, the dependencies' own lines and warnings, every progress bar"


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anna-embed",
        description="Turn a decoder-only LLM into an instruction-following, few-shot text embedder.",
        epilog="verbs:\n" + "\n".join(f"  {v:<12} {h}" for v, (_, h) in COMMANDS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("verb", choices=list(COMMANDS), metavar="VERB", help="what to do (see below)")
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    parser.add_argument("-V", "--version", action="version", version=f"anna-embed {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``anna-embed`` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"anna-embed {__version__}")
        return 0
    verbose = argv[0] in ("-v", "--verbose")  # `anna-embed -v VERB ...` as well as `anna-embed VERB -v`
    verb, rest = (argv[1], argv[2:]) if verbose and len(argv) > 1 else (argv[0], argv[1:])
    if verb not in COMMANDS:
        top.error(f"unknown verb {verb!r}")
    module = importlib.import_module(COMMANDS[verb][0])
    parser = argparse.ArgumentParser(prog=f"anna-embed {verb}", description=COMMANDS[verb][1])
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    run = module.add_cli(verb, parser)
    args = parser.parse_args(rest)
    args.verbose = args.verbose or verbose
    setup_logging(args.verbose)
    try:
        return int(run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ValueError, RuntimeError, FileNotFoundError, KeyError) as err:
        if args.verbose:
            raise
        print(f"anna-embed {verb}: error: {err}", file=sys.stderr)
        return 2


def entry() -> None:
    """The ``anna-embed`` command (and ``python -m anna_embed.cli``): :func:`main`, then exit through
    :func:`anna_embed.distributed.finish`, so a ``torchrun`` rank that finished never aborts at teardown."""
    from anna_embed.distributed import finish

    finish(main())


if __name__ == "__main__":
    entry()
