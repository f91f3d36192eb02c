"""``anna-embed models list|pull NAME``: the offline short names, and provisioning one into the cache."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from anna_embed.model.weights import CACHE_ENV, OFFLINE_MODELS, cache_dir, list_models, resolve


def add_cli(verb: str, parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """``anna-embed models list|pull NAME``."""
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="the offline short names and whether they are pulled")
    pull_p = sub.add_parser("pull", help="provision a short name into the cache")
    pull_p.add_argument("name", help=f"one of {', '.join(OFFLINE_MODELS)}, a hub id or a folder")

    def run(args: argparse.Namespace) -> int:
        if args.action == "list":
            print(f"cache: {cache_dir()}  (override with ${CACHE_ENV})")
            for row in list_models():
                print(f"{row['name']:<24} {row['kind']:<8} {row['status']:<16} {row['description']}")
                print(f"{'':<24} packages: {row['packages']}")
            return 0
        print(resolve(args.name))
        return 0

    return run
