"""A batch's labels as tensors for the loss, besides its targets (the positive's column, which the loss
knows from the batch geometry): the teacher's soft labels and the candidates no query may be pushed from.

* :func:`soft_labels`: the mined scores of each query's group (NaN where unknown) and, with
  ``loss.distill_scope = "batch"``, the teacher's scores of every candidate the student scores (from the
  bi-encoder teacher's vectors that mining saved, gathered across processes in rank order);
* :func:`own_positives`: the candidates that are copies of a query's own positives (all processes'
  documents when they are gathered for in-batch negatives).
"""

from __future__ import annotations

from typing import Any

import torch

from anna_embed.train.batches import TrainBatch, own_positive_mask


def soft_labels(
    batch: TrainBatch, acc: Any, *, scope: str, vectors: str | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(teacher [B, G], teacher_batch [B, M * G] or None)`` of one process's batch.

    ``teacher`` holds each group's mined scores, NaN where unknown (the loss leaves such rows out of the
    KL term); ``teacher_batch`` is ``t_q @ t_d.T`` over every process's documents when ``scope`` is
    ``batch`` and the batch uses in-batch negatives (every process must call this: the gather is
    collective), else None (the group KL applies).

    Args:
        batch: This process's batch.
        acc: The run's ``Accelerator``.
        scope: ``loss.distill_scope``.
        vectors: The name of the teacher whose vectors the training set carries (None: none).

    Raises:
        ValueError: ``scope`` is ``batch`` but the training set has no teacher vectors.
    """
    world = acc.num_processes
    teacher = torch.as_tensor(batch.teacher_scores, dtype=torch.float32, device=acc.device)  # [B, G]
    teacher_batch = None  # [B, M * G]: loss.distill_scope = "batch" on a batch with in-batch negatives
    if scope == "batch" and batch.in_batch:
        if vectors is None:
            raise ValueError(
                'loss.distill_scope = "batch" needs teacher vectors: mine with --teacher-embeddings '
                "(a bi:NAME reranker) and set teacher_embeddings on the data source"
            )
        have = batch.teacher_q_emb is not None  # else this batch keeps the group KL
        if world > 1:  # every process takes the same branch (the gather below is collective)
            flag = torch.tensor([float(have)], device=acc.device)
            have = bool(acc.reduce(flag, reduction="sum").item() == world)
        if have:
            dev = acc.device
            t_q = torch.as_tensor(batch.teacher_q_emb, dtype=torch.float32, device=dev)  # [B, Dt]
            t_d = torch.as_tensor(batch.teacher_d_emb, dtype=torch.float32, device=dev)  # [B * G, Dt]
            t_d = acc.gather(t_d)  # [M * G, Dt], rank order like the student's (plain, no grad)
            teacher_batch = t_q @ t_d.T  # [B, M * G]
    return teacher, teacher_batch


def own_positives(batch: TrainBatch, acc: Any, offset: int) -> torch.Tensor:
    """``[B, N]`` True where candidate ``j`` is a copy of one of query ``i``'s own positives (the target
    excepted, see :func:`anna_embed.train.batches.own_positive_mask`); ``N`` counts every process's
    documents when the batch uses in-batch negatives (``offset``: this process's first query)."""
    texts = batch.doc_texts
    if batch.in_batch and acc.num_processes > 1:  # the gathered documents: every process's, in rank order
        from accelerate.utils import gather_object

        texts = gather_object(list(batch.doc_texts))
    rows = own_positive_mask(batch.positives, texts, group_size=batch.group_size, query_offset=offset)
    return torch.tensor(rows, dtype=torch.bool, device=acc.device)  # [B, N]
