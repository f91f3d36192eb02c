"""Training losses: pure functions of embeddings and score matrices.

Batch geometry, stated once for the whole package:

* ``B`` queries, ``q_emb`` ``[B, D]``, L2-normalised.
* Each query ``i`` owns a *group* of ``G`` documents: its positive first, then ``G - 1`` hard negatives,
  flattened so that ``d_emb[i * G : (i + 1) * G]`` is query ``i``'s group; ``d_emb`` is ``[B * G, D]``.
* **In-batch mode** (retrieval-like tasks): ``scores = q_emb @ d_emb.T`` is ``[B, B * G]`` and
  ``targets = arange(B) * G``; every other query's documents act as extra negatives.
* **Group mode** (classification / clustering, where another query's positive is often the same label and
  therefore a false negative): ``scores[i, j] = q_emb[i] . d_emb[i * G + j]`` is ``[B, G]`` and
  ``targets = 0``.

Under data parallelism ``d_emb`` is the documents of *all* processes (gathered, see
:func:`anna_embed.train.gradcache.gather_with_grad`) and ``query_offset`` is the global index of this
process's first query, so the targets become ``(query_offset + arange(B)) * G``.

The soft-label term is the KL divergence from the teacher's distribution over a query's candidates to the
student's, ``KL(softmax(teacher / tau_t) || softmax(student / tau_s))``, row by row (:func:`distill_kl`).
Its scope (``loss.distill_scope``):

* ``group``: the candidates are the query's own group, ``[B, G]``, with the teacher scores the mining step
  wrote (raw reranker logits or cosine similarities).
* ``batch`` (in-batch batches with a bi-encoder teacher): every candidate the student scores, ``[B, M * G]``;
  the teacher's score matrix is ``t_q @ t_d.T`` of the teacher's own query and document vectors (saved by
  mining beside the data), with the same exclusions as InfoNCE. Group-only batches keep the group scope.

The only normalisation of teacher scores is the division by ``tau_t``, so ``tau_t`` must match the
teacher's scale (about 1 for logit-scale rerankers, 0.02-0.05 for cosine teachers).

An unknown teacher score is NaN, from the mined file to the loss (a record without scores, a random
negative): a row with any non-finite teacher score is left out of the KL term, which averages over the
rows that remain (:func:`distill_kl`); InfoNCE still covers every row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class LossOutput:
    """The total loss and its parts (the parts are detached, for logging).

    Attributes:
        loss: ``contrastive + kl_weight * kl``, with grad.
        contrastive: The InfoNCE term.
        kl: The distillation term (0 when no row has teacher scores).
    """

    loss: Tensor
    contrastive: Tensor
    kl: Tensor


def in_batch_scores(q_emb: Tensor, d_emb: Tensor) -> Tensor:
    """Cosine scores of every query against every document: ``[B, D] x [N, D] -> [B, N]``."""
    return q_emb @ d_emb.T  # [B, N]


def group_scores(q_emb: Tensor, d_emb: Tensor, group_size: int, *, query_offset: int = 0) -> Tensor:
    """Scores of each query against its own group only.

    Args:
        q_emb: ``[B, D]`` queries.
        d_emb: ``[M * G, D]`` documents, ``M >= query_offset + B`` groups of ``G``.
        group_size: ``G``.
        query_offset: Index of the group that belongs to ``q_emb[0]``.

    Returns:
        ``[B, G]``; column 0 is the positive.
    """
    b, dim = q_emb.shape
    start = query_offset * group_size
    groups = d_emb[start : start + b * group_size].view(b, group_size, dim)  # [B, G, D]
    return torch.einsum("bd,bgd->bg", q_emb, groups)  # [B, G]


def info_nce(scores: Tensor, targets: Tensor, *, temperature: float, exclude: Tensor | None = None) -> Tensor:
    """Cross-entropy of ``scores / temperature`` against the positive's column, averaged over queries.

    ``exclude`` (``[B, N]`` bool, never True at a target) removes candidates from the softmax: a copy of
    the query's own positive is not a negative.

    Example:
        Two queries, two documents, positives on the diagonal, temperature 1:
        ``-(log(e^1 / (e^1 + e^0)) + log(e^1 / (e^0 + e^1))) / 2 = log(1 + e^-1) ~ 0.3133``.
    """
    logits = scores / temperature  # [B, N]
    if exclude is not None:
        logits = logits.masked_fill(exclude, float("-inf"))
    return F.cross_entropy(logits, targets)  # logits [B, N], targets [B]


def distill_kl(
    student_scores: Tensor,
    teacher_scores: Tensor,
    *,
    student_temperature: float,
    teacher_temperature: float,
    exclude: Tensor | None = None,
) -> Tensor:
    """``KL(softmax(teacher / tau_t) || softmax(student / tau_s))`` per row, averaged over kept rows.

    The candidates of a row are its ``N`` columns: a query's own group (``N = G``, ``distill_scope =
    "group"``) or every document of the batch (``N = M * G``, ``"batch"``, see :func:`embedding_loss`).
    A row is kept when every one of its ``N`` teacher scores is finite: NaN marks an unknown score, and a
    row with one (excluded column or not) contributes nothing, neither value nor gradient.

    Args:
        student_scores: ``[B, N]`` student scores.
        teacher_scores: ``[B, N]`` teacher scores, same columns; NaN where unknown.
        student_temperature: ``tau_s``.
        teacher_temperature: ``tau_t``.
        exclude: ``[B, N]`` bool, True for candidates left out of both distributions (a copy of one of
            the query's own positives, see :func:`embedding_loss`); never the positive's column.

    Returns:
        A scalar: the sum of the kept rows' KL divided by their number; 0 (with grad) when no row is kept.

    Example:
        One query, three candidates, the third excluded, both temperatures 1, student ``[0, 0, 5]``,
        teacher ``[log 3, 0, 9]``: the teacher's distribution over the two kept candidates is
        ``(3/4, 1/4)``, the student's ``(1/2, 1/2)``, so the loss is
        ``3/4 log(3/2) + 1/4 log(1/2) ~ 0.1308``; the excluded column adds nothing. A second row with
        teacher ``[NaN, 0, 0]`` would leave the result unchanged (kept rows: 1).
    """
    kept = torch.isfinite(teacher_scores).all(dim=-1)  # [B]
    s = student_scores / student_temperature  # [B, N]
    # unknown rows become zeros (any finite value: the row is dropped below), so no NaN reaches a gradient
    t = teacher_scores.to(s.dtype).masked_fill(~kept[:, None], 0.0) / teacher_temperature  # [B, N]
    if exclude is not None:  # excluded candidates leave both distributions
        s = s.masked_fill(exclude, float("-inf"))
        t = t.masked_fill(exclude, float("-inf"))
    log_p_s = F.log_softmax(s, dim=-1)  # [B, N]
    log_p_t = F.log_softmax(t, dim=-1)  # [B, N]
    terms = log_p_t.exp() * (log_p_t - log_p_s)  # [B, N]; NaN (0 * (-inf + inf)) where excluded
    if exclude is not None:
        terms = terms.masked_fill(exclude, 0.0)
    per_row = terms.sum(dim=-1)  # [B]
    weight = kept.to(per_row.dtype)  # [B]
    return (per_row * weight).sum() / weight.sum().clamp(min=1.0)


def embedding_loss(
    q_emb: Tensor,
    d_emb: Tensor,
    *,
    group_size: int,
    in_batch: bool,
    student_temperature: float = 0.02,
    teacher_scores: Tensor | None = None,
    teacher_temperature: float = 1.0,
    kl_weight: float = 0.0,
    query_offset: int = 0,
    own_positive: Tensor | None = None,
    teacher_batch_scores: Tensor | None = None,
) -> LossOutput:
    """InfoNCE (+ optional soft-label KL) for one batch in the geometry of the module docstring.

    Args:
        q_emb: ``[B, D]`` this process's queries.
        d_emb: ``[M * G, D]`` documents: this process's ``B`` groups, or all processes' groups when
            gathered for in-batch negatives (then ``query_offset`` locates ours).
        group_size: ``G`` (1 positive + ``G - 1`` negatives).
        in_batch: True: score against all documents ``[B, M * G]``; False: only the own group ``[B, G]``.
        student_temperature: ``tau_s``.
        teacher_scores: ``[B, G]`` teacher scores of each query's group, NaN where unknown (None: no
            teacher at all). A row with any non-finite score is left out of the KL term, which averages
            over the remaining rows (:func:`distill_kl`); InfoNCE still covers it.
        teacher_temperature: ``tau_t``.
        kl_weight: ``lambda``; the KL term is skipped when 0 or without teacher scores.
        query_offset: Global index of ``q_emb[0]``'s group inside ``d_emb``.
        own_positive: ``[B, M * G]`` bool, True where a document's text equals one of query ``i``'s own
            positives (:func:`anna_embed.train.batches.own_positive_mask`). Those candidates, other than the
            target, are left out of InfoNCE and KL: mining draws negatives from other records'
            positives, so a query can meet a copy of its own positive among its candidates.
        teacher_batch_scores: ``[B, M * G]`` teacher scores of every query against every document
            (``distill_scope = "batch"``: ``t_q @ t_d.T`` of the teacher's vectors). With ``in_batch`` the
            KL term then covers every candidate InfoNCE scores, with the same exclusions, instead of the
            group; ignored without ``in_batch`` (group-only batches keep the group KL).

    Returns:
        :class:`LossOutput`.
    """
    b = q_emb.shape[0]
    own = group_scores(q_emb, d_emb, group_size, query_offset=query_offset)  # [B, G]
    rows = torch.arange(b, device=q_emb.device)  # [B]
    own_ex = None
    if own_positive is not None:
        ex = own_positive.to(device=q_emb.device, dtype=torch.bool).clone()  # [B, M * G]
        ex[rows, (query_offset + rows) * group_size] = False  # the target itself always stays
        cols = (query_offset + rows)[:, None] * group_size + torch.arange(group_size, device=ex.device)
        own_ex = ex.gather(1, cols)  # [B, G]
    if in_batch:
        scores = in_batch_scores(q_emb, d_emb)  # [B, M * G]
        targets = (query_offset + rows) * group_size  # [B]
        exclude = None if own_positive is None else ex
    else:
        scores = own  # [B, G]
        targets = torch.zeros(b, dtype=torch.long, device=q_emb.device)  # [B]
        exclude = own_ex
    ce = info_nce(scores, targets, temperature=student_temperature, exclude=exclude)
    if in_batch and teacher_batch_scores is not None and kl_weight > 0:
        kl = distill_kl(
            scores,  # [B, M * G]
            teacher_batch_scores,  # [B, M * G]
            student_temperature=student_temperature,
            teacher_temperature=teacher_temperature,
            exclude=exclude,
        )
    elif teacher_scores is not None and kl_weight > 0:
        kl = distill_kl(
            own,
            teacher_scores,
            student_temperature=student_temperature,
            teacher_temperature=teacher_temperature,
            exclude=own_ex,
        )
    else:
        kl = ce.new_zeros(())
    loss = ce + kl_weight * kl
    return LossOutput(loss=loss, contrastive=ce.detach(), kl=kl.detach())
