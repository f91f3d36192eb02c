"""Mining stage 3, pure functions: normalise teacher scores, filter by an adaptive margin, pick negatives.

A candidate is dropped when it is a known positive or when its normalised teacher score exceeds the
threshold derived from the query's lowest-scoring positive (:func:`margin_filter`); ``num_negatives`` are
then taken from a rank window of what is left (:func:`select_negatives`).

Score scale (:func:`normalise_scores`): the margins apply in the teacher's own score scale, as in
sentence-transformers' ``mine_hard_negatives`` and NV-Retriever's TopK-PercPos: with a cosine teacher and
a 5% relative margin a candidate is dropped above ``0.95 * cos(query, positive)``. Cosines and
probabilities are therefore used as they are (``normalisation="auto"``). Logits have no fixed zero, so
"95% of the positive" means nothing on them: ``auto`` maps a cross-encoder's logits through a sigmoid
first, and the margin is then 95% of the positive's probability of relevance. For scores that stay signed
the relative threshold is ``pos - relative_margin * |pos|``, which is ``pos * (1 - relative_margin)`` for
a positive score and still lies *below* a negative one. ``"affine"`` (``(1 + s) / 2``) is kept for those
who want the old, stricter rule; it is never chosen by ``auto``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from anna_embed.mine.config import FilterResult, Normalisation


def normalise_scores(scores: np.ndarray, kind: str, method: Normalisation = "auto") -> np.ndarray:
    """Map raw teacher scores to the scale the margins are measured on (NaN stays NaN).

    Args:
        scores: Raw scores, any shape.
        kind: The teacher's ``score_kind``: ``"logit"``, ``"cosine"`` or ``"probability"``.
        method: ``auto`` (logit -> sigmoid, cosine and probability -> as they are), or force
            ``sigmoid``, ``affine`` (``(1 + s) / 2``) or ``identity``.

    Example:
        >>> normalise_scores(np.array([0.0, -2.0]), "logit").round(3).tolist()
        [0.5, 0.119]
        >>> normalise_scores(np.array([0.6, -0.2]), "cosine").tolist()
        [0.6, -0.2]
    """
    x = np.asarray(scores, dtype=np.float64)
    if method == "auto":
        method = {"logit": "sigmoid", "cosine": "identity", "probability": "identity"}[kind]  # type: ignore[assignment]
    if method == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    if method == "affine":
        return (1.0 + x) / 2.0
    if method == "identity":
        return x
    raise ValueError(f"unknown normalisation {method!r}")


def margin_filter(
    pos_scores: np.ndarray,
    cand_scores: np.ndarray,
    *,
    cand_is_positive: np.ndarray | None = None,
    relative_margin: float | None = 0.05,
    absolute_margin: float | None = None,
) -> FilterResult:
    """Adaptive margin filter (NV-Retriever's TopK-PercPos and TopK-MarginPos) on normalised scores.

    The reference of query ``q`` is its lowest-scoring positive, ``ref = nanmin(pos_scores[q])``. Its
    threshold is the smaller of ``ref - relative_margin * |ref|`` (= ``ref * (1 - relative_margin)`` for
    ``ref >= 0``) and ``ref - absolute_margin``; a candidate is dropped when its score *exceeds* it.

    Args:
        pos_scores: ``[Q, P]`` positive scores, NaN-padded (queries may have different numbers of
            positives); every row needs at least one finite score.
        cand_scores: ``[Q, C]`` candidate scores, NaN-padded.
        cand_is_positive: ``[Q, C]`` True where the candidate is one of the query's positives.
        relative_margin: In ``[0, 1)``; 0.05 is NV-Retriever's "95% of the positive". None disables it.
        absolute_margin: Non-negative score margin. None disables it.

    Example:
        >>> r = margin_filter(np.array([[0.8, 0.6]]), np.array([[0.9, 0.58, 0.5]]))
        >>> r.threshold.round(3).tolist(), r.keep.tolist()
        ([0.57], [[False, False, True]])
    """
    pos = np.asarray(pos_scores, dtype=np.float64)  # [Q, P]
    cand = np.asarray(cand_scores, dtype=np.float64)  # [Q, C]
    if pos.ndim != 2 or cand.ndim != 2 or pos.shape[0] != cand.shape[0]:
        raise ValueError(f"expected [Q, P] and [Q, C] scores, got {pos.shape} and {cand.shape}")
    if relative_margin is not None and not 0.0 <= relative_margin < 1.0:
        raise ValueError(f"relative_margin must be in [0, 1), got {relative_margin}")
    if absolute_margin is not None and absolute_margin < 0:
        raise ValueError(f"absolute_margin must be >= 0, got {absolute_margin}")
    has_pos = np.isfinite(pos).any(axis=1)
    if not has_pos.all():
        raise ValueError(f"queries {np.flatnonzero(~has_pos).tolist()[:10]} have no positive score")
    ref = np.nanmin(np.where(np.isfinite(pos), pos, np.nan), axis=1)  # [Q]
    threshold = np.full(ref.shape, np.inf)
    if relative_margin is not None:
        threshold = np.minimum(threshold, ref - relative_margin * np.abs(ref))
    if absolute_margin is not None:
        threshold = np.minimum(threshold, ref - absolute_margin)
    valid = np.isfinite(cand)
    is_pos = np.zeros_like(valid) if cand_is_positive is None else np.asarray(cand_is_positive, bool) & valid
    with np.errstate(invalid="ignore"):
        over = valid & ~is_pos & (cand > threshold[:, None])
    return FilterResult(
        keep=valid & ~is_pos & ~over, dropped_positive=is_pos, dropped_margin=over, threshold=threshold
    )


def select_negatives(
    keep: np.ndarray,
    rank_scores: np.ndarray,
    *,
    num_negatives: int,
    window: tuple[int, int | None] = (0, None),
    sampling: Literal["top", "random"] = "top",
    seed: int = 0,
    query_ids: Sequence[int] | None = None,
) -> list[np.ndarray]:
    """Pick each query's negatives among its kept candidates.

    The kept candidates of a query are ordered by ``rank_scores`` (higher first; ties by column), the
    window ``[start, end)`` is cut from that order, and ``top`` takes its first ``num_negatives`` while
    ``random`` draws ``num_negatives`` without replacement with ``np.random.default_rng((seed, id))``,
    ``id`` being the query's id (its row by default), and returns them in rank order.

    Returns:
        One array of candidate columns per query (shorter than ``num_negatives`` when too few survive).
    """
    keep = np.asarray(keep, bool)  # [Q, C]
    start, end = window
    ids = range(keep.shape[0]) if query_ids is None else query_ids
    out = []
    for row, qid in enumerate(ids):
        cols = np.flatnonzero(keep[row])
        order = cols[np.argsort(-np.asarray(rank_scores[row, cols], np.float64), kind="stable")]
        pool = order[start:end]
        if sampling == "top" or len(pool) <= num_negatives:
            out.append(pool[:num_negatives])
        elif sampling == "random":
            rng = np.random.default_rng((seed, int(qid)))
            picked = np.sort(rng.choice(len(pool), size=num_negatives, replace=False))
            out.append(pool[picked])
        else:
            raise ValueError(f"unknown sampling {sampling!r}")
    return out


def pad(rows: Sequence[Sequence[float]], fill: float = np.nan) -> np.ndarray:
    """Rows of unequal length as one ``[N, max_len]`` array, ``fill``-padded (at least one column)."""
    width = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), max(width, 1)), fill)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out
