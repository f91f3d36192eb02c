"""The run's schedule, all functions of the step (so a resumed run is exact): the learning-rate factor, the
curriculum's phase (``data.hard_negatives_after``) and the step budget (``optim.max_steps`` / ``epochs``,
or equal compute by encoded tokens, ``optim.max_tokens``)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Literal

from anna_embed.train.config import DataSection, OptimSection

logger = logging.getLogger(__name__)

#: Steps whose token counts one reduction across processes sums (``optim.max_tokens``'s planning pass).
COUNT_BLOCK = 256

#: The curriculum's phases (``data.hard_negatives_after``).
Phase = Literal["in_batch_only", "full"]


def lr_factor(step: int, *, warmup: int, total: int, kind: str) -> float:
    """Multiplier of the peak learning rate at 0-based ``step``: linear warm-up, then ``kind`` decay."""
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant" or total <= warmup:
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return max(0.0, 1.0 - progress)


def phase(step: int, hard_negatives_after: int) -> Phase:
    """The curriculum's phase of 0-based ``step``: ``in_batch_only`` before ``hard_negatives_after`` (as
    the ablation's ``inbatch_only`` variant trains), ``full`` from then on."""
    return "in_batch_only" if step < hard_negatives_after else "full"


def group_size(data: DataSection, *, in_batch: bool, phase: Phase) -> int:
    """``G`` (positive + negatives per query) of a batch in the curriculum's ``phase``.

    Batches that use in-batch negatives take 1 in the ``in_batch_only`` phase, else
    ``data.in_batch_group_size`` (when set); group-only batches (classification, clustering) always take
    ``data.group_size``, their label negatives.
    """
    if not in_batch:
        return data.group_size
    if phase == "in_batch_only":
        return 1
    return data.in_batch_group_size if data.in_batch_group_size is not None else data.group_size


def plan_steps(
    optim: OptimSection, steps_per_epoch: int, count: Callable[[Sequence[int]], list[int]]
) -> tuple[int, list[int]]:
    """``total_steps``, and with ``optim.max_tokens`` the cumulative tokens after each step up to it.

    The step limit is ``optim.max_steps`` (else ``optim.epochs`` passes over the data); which setting is in
    force is logged once when there is a choice (the values were checked by
    :func:`anna_embed.train.config.validate`). With ``max_tokens`` the run ends at the first step whose
    cumulative count reaches it: ``count(steps)`` gives each step's tokens, all processes together
    (:func:`anna_embed.train.report.batch_tokens` of every process's share, collated and tokenized as the
    step will do it, without a forward), so the count is exact and the same on every restart.
    """
    o = optim
    epochs_limit = o.epochs * steps_per_epoch
    limit = o.max_steps if o.max_steps is not None else epochs_limit
    if o.max_tokens is not None:
        cap = f"optim.max_steps={o.max_steps}" if o.max_steps is not None else f"optim.epochs={o.epochs}"
        logger.info("optim.max_tokens=%d is in force, capped at %d steps by %s", o.max_tokens, limit, cap)
    elif o.max_steps is not None:
        logger.info(
            "optim.max_steps=%d is in force (optim.epochs=%d, %d steps, is ignored)",
            o.max_steps,
            o.epochs,
            epochs_limit,
        )
    if o.max_tokens is None:
        return limit, []
    t0, total, cumulative = time.perf_counter(), 0, []
    for start in range(0, limit, COUNT_BLOCK):  # one reduction per block of steps
        for n in count(range(start, min(limit, start + COUNT_BLOCK))):
            total += n
            cumulative.append(total)
            if total >= o.max_tokens:
                logger.info(
                    "optim.max_tokens=%d: %d steps (%d tokens; counted in %.1f s)",
                    o.max_tokens,
                    len(cumulative),
                    total,
                    time.perf_counter() - t0,
                )
                return len(cumulative), cumulative
    cap = f"optim.max_steps={o.max_steps}" if o.max_steps is not None else f"the data ({o.epochs} epoch(s))"
    logger.warning(
        "optim.max_tokens=%d not reached: %s ends after %d steps and %d tokens (raise optim.epochs)",
        o.max_tokens,
        cap,
        limit,
        total,
    )
    return limit, cumulative
