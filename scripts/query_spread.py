"""How spread out a model's query vectors are: the mean pairwise cosine of N queries of a BEIR folder.

A model whose query vectors all point the same way (mean cosine near 1) cannot rank documents apart,
whatever its training loss says. Used in docs/RESULTS.md (issue 11) on SciFact claims.

    python scripts/query_spread.py MODEL [--data ../shared/data/mteb/SciFact] [--task SciFact] [-n 32]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def mean_pairwise_cosine(vectors: np.ndarray) -> float:
    """Mean cosine over all ordered pairs ``i != j`` of L2-normalised rows."""
    n = len(vectors)
    sims = vectors @ vectors.T
    return float((sims.sum() - np.trace(sims)) / (n * (n - 1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/mteb/SciFact"))
    parser.add_argument("--task", default="SciFact")
    parser.add_argument("-n", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()
    from anna_embed.model.embedder import Embedder

    emb = Embedder.from_pretrained(args.model, dtype="auto", max_length=args.max_length)
    with (args.data / "queries.jsonl").open(encoding="utf-8") as fh:
        queries = [json.loads(line)["text"] for _, line in zip(range(args.n), fh, strict=False)]
    vectors = emb.encode_queries(queries, task=args.task)
    print(
        json.dumps(
            {
                "model": args.model,
                "queries": len(queries),
                "mean_pairwise_cosine": round(mean_pairwise_cosine(vectors), 4),
            }
        )
    )


if __name__ == "__main__":
    main()
