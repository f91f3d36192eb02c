"""The quick validation signal of a training run (``run.eval_every``): Spearman of cosine vs gold score on an
STS file, with the model's own query / document prompts. A dev signal only, not mteb's evaluation."""

from __future__ import annotations

from typing import TYPE_CHECKING

from anna_embed.io import iter_jsonl

if TYPE_CHECKING:
    from anna_embed.model.embedder import Embedder


def quick_sts_eval(emb: Embedder, path: str, *, task: str, max_pairs: int) -> float:
    """Spearman of cosine vs gold score on an STS JSONL (a quick dev signal, not mteb's evaluation)."""
    import numpy as np
    from scipy.stats import spearmanr

    rows = []
    for _, r in iter_jsonl(path, required=("sentence1", "sentence2", "score"), skip_blank=True):
        rows.append(r)
        if len(rows) >= max_pairs:
            break
    was_training = emb.model.training
    emb.model.eval()
    try:
        a = emb.encode_queries([r["sentence1"] for r in rows], task=task, batch_size=16)
        b = emb.encode_documents([r["sentence2"] for r in rows], task=task, batch_size=16)
    finally:
        emb.model.train(was_training)
    cos = (a * b).sum(1)
    return float(spearmanr(cos, np.asarray([float(r["score"]) for r in rows])).statistic)
