"""The quick validation signal of a training run (``run.eval_every``): Spearman of cosine vs gold score on an
STS file, with the model's own query / document prompts. A dev signal only, not mteb's evaluation."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from anna_embed.io import iter_jsonl
from anna_embed.train.config import RunSection

if TYPE_CHECKING:
    from anna_embed.model.embedder import Embedder

logger = logging.getLogger(__name__)


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


def quick_eval_row(emb: Embedder, run: RunSection, *, step: int, tokens: int) -> dict[str, Any]:
    """The metrics row of the quick validation at ``step``: :func:`quick_sts_eval` of ``run.eval_file``
    with ``run.eval_task``'s prompts (logged too).

    Args:
        emb: The student.
        run: The run section (``eval_file``, ``eval_task``, ``eval_max_pairs``).
        step: Optimizer steps done.
        tokens: Tokens encoded so far.
    """
    if run.eval_file is None:
        raise ValueError("run.eval_file is not set: nothing to evaluate")
    score = quick_sts_eval(emb, run.eval_file, task=run.eval_task, max_pairs=run.eval_max_pairs)
    logger.info("step %d: quick eval %s Spearman %.4f", step, run.eval_task, score)
    return {"step": step, "tokens": tokens, "eval_task": run.eval_task, "eval_spearman": score}
