"""Mining stages 1 and 2: candidate search and teacher rescoring, both cached on disk in shards.

* **Candidates** (:func:`search_candidates`): given the corpus vectors (embedded shard by shard, over
  every process of a distributed launch: :mod:`anna_embed.mine.corpus`), the retriever teacher embeds
  the queries; faiss (:func:`build_index`) finds the nearest documents, optionally fused with BM25
  (:func:`bm25_candidates`) by :func:`reciprocal_rank_fusion`. This and all that follows runs on one
  process (rank 0).
* **Soft labels** (:func:`rescore`): the reranker teacher scores every (query, positive) and
  (query, candidate) pair, one cached file per query shard.

The stage driver is :mod:`anna_embed.mine.driver`, the filter :mod:`anna_embed.mine.filter`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from anna_embed.io import atomic_write
from anna_embed.mine.config import PlansBatches
from anna_embed.mine.corpus import ProgressHook, content_hash, finite_matrix, load_cached

if TYPE_CHECKING:
    from anna_embed.mine.config import MineConfig, MiningQuery

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- stage 1: candidates


def build_index(d_emb: np.ndarray, cfg: MineConfig) -> Any:
    """A faiss inner-product index over ``d_emb`` (``[N, D]`` float32): flat, HNSW or IVF."""
    import faiss

    n, dim = d_emb.shape
    if cfg.index == "flat":
        index = faiss.IndexFlatIP(dim)
    elif cfg.index == "hnsw":
        index = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = cfg.ef_search
    elif cfg.index == "ivf":
        nlist = cfg.ivf_nlist or max(1, min(n // 39, int(math.sqrt(n))))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng((cfg.seed, n))
        sample = d_emb[np.sort(rng.choice(n, size=min(n, 64 * nlist), replace=False))]
        index.train(sample)
        index.nprobe = cfg.ivf_nprobe
    else:
        raise ValueError(f"unknown index {cfg.index!r}")
    index.add(d_emb)
    return index


def bm25_candidates(queries: Sequence[str], documents: Sequence[str], k: int) -> np.ndarray:
    """``[Q, k]`` document ids by BM25 (bm25s, Lucene variant, English stop words), ``-1``-padded."""
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(list(documents), stopwords="en", show_progress=False), show_progress=False)
    q_tokens = bm25s.tokenize(list(queries), stopwords="en", return_ids=False, show_progress=False)
    k = min(k, len(documents))
    ids, scores = retriever.retrieve(q_tokens, k=k, show_progress=False)
    return np.where(scores > 0, ids, -1).astype(np.int64)


def reciprocal_rank_fusion(rankings: Sequence[np.ndarray], *, k: int = 60, top: int) -> np.ndarray:
    """Fuse ranked id lists: a document at 1-based rank ``r`` of a list adds ``1 / (k + r)``.

    Args:
        rankings: ``[Q, K_i]`` arrays of document ids, best first, ``-1`` for padding.
        k: The RRF constant (60, as Cormack et al. 2009).
        top: Length of the fused lists.

    Returns:
        ``[Q, top]`` fused ids, ``-1``-padded; ties go to the document met first (earlier list, rank).
    """
    n_queries = rankings[0].shape[0]
    out = np.full((n_queries, top), -1, dtype=np.int64)
    for q in range(n_queries):
        score: dict[int, float] = {}
        for ranking in rankings:
            for r, doc in enumerate(ranking[q]):
                if doc >= 0:
                    score[int(doc)] = score.get(int(doc), 0.0) + 1.0 / (k + r + 1)
        best = sorted(score, key=lambda d: -score[d])[:top]  # sorted() is stable: first-met wins ties
        out[q, : len(best)] = best
    return out


def _by_prompt(queries: Sequence[MiningQuery]) -> dict[tuple[str | None, str | None], list[int]]:
    """Positions of ``queries`` grouped by (task, instruction): each group is one teacher call."""
    groups: dict[tuple[str | None, str | None], list[int]] = {}
    for i, q in enumerate(queries):
        groups.setdefault((q.task, q.instruction), []).append(i)
    return groups


def _encode_queries(retriever: Any, queries: Sequence[MiningQuery]) -> np.ndarray:
    """Query embeddings, encoded per (task, instruction) group so each group gets its instruction."""
    out: np.ndarray | None = None
    for (task, instruction), rows in _by_prompt(queries).items():
        vecs = retriever.encode_queries([queries[i].text for i in rows], task=task, instruction=instruction)
        if out is None:
            out = np.zeros((len(queries), vecs.shape[1]), np.float32)
        out[rows] = vecs
    if out is None:
        raise ValueError("no queries to encode")
    return out


def search_candidates(
    cfg: MineConfig,
    retriever: Any,
    queries: Sequence[MiningQuery],
    docs: Sequence[str],
    n_corpus: int,
    d_emb: np.ndarray,
    corpus_key: str,
    cache: Path,
) -> tuple[np.ndarray, str]:
    """Stage 1: ``[Q, k]`` retrieved document ids (``-1``-padded) and the search's cache key.

    ``d_emb`` are the ``[N, D]`` vectors of the corpus ``docs[:n_corpus]`` and ``corpus_key`` their cache
    key (:func:`anna_embed.mine.corpus.corpus_vectors`). ``k`` is ``top_k`` plus the most positives any
    query has in the corpus, so excluding the positives still leaves ``top_k`` candidates. The result is
    cached under ``cache``.
    """
    in_corpus = set(docs[:n_corpus])
    k = min(cfg.top_k + max(sum(p in in_corpus for p in q.positives) for q in queries), n_corpus)
    settings = [
        k,
        cfg.top_k,
        cfg.index,
        cfg.hnsw_m,
        cfg.ef_search,
        cfg.ivf_nlist,
        cfg.ivf_nprobe,
        cfg.bm25,
        cfg.rrf_k,
        cfg.seed,
    ]
    query_hash = content_hash([f"{q.text}\0{q.task}\0{q.instruction}" for q in queries])
    search_key = content_hash([corpus_key, query_hash, json.dumps(settings)])[:16]
    cand_file = cache / f"candidates-{search_key}.npy"

    def valid(ids: Any) -> bool:
        return (
            isinstance(ids, np.ndarray)
            and ids.shape == (len(queries), k)
            and np.issubdtype(ids.dtype, np.integer)
            and bool(((ids >= -1) & (ids < n_corpus)).all())
        )

    ranked = load_cached(cand_file, valid)
    if ranked is not None:
        return ranked, search_key
    q_emb = _encode_queries(retriever, queries)
    if not finite_matrix(q_emb, len(queries)):
        raise ValueError(f"the retriever returned non-finite query vectors (shape {q_emb.shape})")
    _, ranked = build_index(d_emb, cfg).search(q_emb, k)
    if cfg.bm25:
        lexical = bm25_candidates([q.text for q in queries], docs[:n_corpus], k)
        ranked = reciprocal_rank_fusion([ranked, lexical], k=cfg.rrf_k, top=k)
    ranked = ranked.astype(np.int64)
    if not valid(ranked):
        raise ValueError(f"the search returned ids outside [-1, {n_corpus}) or a {ranked.shape} array")
    with atomic_write(cand_file, "wb") as fh:
        np.save(fh, ranked.astype(np.int64))
    return ranked, search_key


# ----------------------------------------------------------------------------- stage 2: soft labels


def _shard_groups(
    queries: Sequence[MiningQuery], cands: Sequence[list[int]], docs: Sequence[str]
) -> tuple[list[tuple[tuple[str | None, str | None], list[int], list[str], list[str]]], np.ndarray]:
    """The pairs of a query shard, one group per teacher call.

    Returns:
        ``[((task, instruction), positions, query texts, documents)]`` and the ``[pairs]`` mask of
        positive slots; pairs are numbered in query order, each query's positives then its candidates.
    """
    pairs: list[tuple[int, str, bool]] = []  # (query row, document, is positive slot)
    for row, (q, cand) in enumerate(zip(queries, cands, strict=True)):
        pairs += [(row, p, True) for p in q.positives] + [(row, docs[c], False) for c in cand]
    groups = [
        (prompt, idx, [queries[pairs[i][0]].text for i in idx], [pairs[i][1] for i in idx])
        for prompt, idx in _by_prompt([queries[row] for row, _, _ in pairs]).items()
    ]
    return groups, np.array([p[2] for p in pairs], bool)


def _rescore_shard(
    reranker: Any, queries: Sequence[MiningQuery], cands: Sequence[list[int]], docs: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Flat ``(pos_scores, cand_scores)`` of a query shard, in query order then column order."""
    groups, is_pos = _shard_groups(queries, cands, docs)
    scores = np.zeros(len(is_pos), np.float32)
    for (task, instruction), idx, q_texts, d_texts in groups:
        scores[idx] = reranker.score(q_texts, d_texts, task=task, instruction=instruction)
    return scores[is_pos], scores[~is_pos]


def rescore_key(
    cfg: MineConfig,
    reranker: Any,
    queries: Sequence[MiningQuery],
    cands: Sequence[list[int]],
    docs: Sequence[str],
    search_key: str,
) -> str:
    """The key of the rescoring cache: everything its scores depend on.

    The reranker (name, batch size), the query shard size, the search that found the candidates (whose
    key covers the corpus vectors a reranker that is the retriever reuses), and every query's text, task,
    instruction, positives and candidates (as ids into ``docs``, whose texts are hashed too).
    """
    pairs = [
        json.dumps([q.text, q.task, q.instruction, q.positives, ids], ensure_ascii=False)
        for q, ids in zip(queries, cands, strict=True)
    ]
    parts = [reranker.name, str(cfg.batch_size), str(cfg.query_shard_size), search_key]
    return content_hash([*parts, content_hash(docs), content_hash(pairs)])[:16]


def rescore(
    cfg: MineConfig,
    reranker: Any,
    queries: Sequence[MiningQuery],
    cands: Sequence[list[int]],
    docs: Sequence[str],
    folder: Path,
    on_progress: ProgressHook | None,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Stage 2: raw teacher scores of each query's positives and candidates, cached per query shard.

    ``folder`` should be keyed by :func:`rescore_key`. A reranker that :class:`PlansBatches` is first
    told every pair of every shard, so its texts are encoded in the same batches whichever shards are
    already cached (a resumed run writes the same bytes). A shard is cached only when all its scores are
    finite; a cached shard of the wrong shape or with non-finite scores is recomputed.

    Raises:
        ValueError: The reranker returned non-finite scores.
    """
    size = cfg.query_shard_size
    shards = [
        (queries[i * size : (i + 1) * size], cands[i * size : (i + 1) * size])
        for i in range(math.ceil(len(queries) / size))
    ]
    if isinstance(reranker, PlansBatches):
        for shard_q, shard_c in shards:
            for (task, instruction), _, q_texts, d_texts in _shard_groups(shard_q, shard_c, docs)[0]:
                reranker.plan(q_texts, d_texts, task=task, instruction=instruction)
    pos_raw: list[np.ndarray] = []
    cand_raw: list[np.ndarray] = []
    for i, (shard_q, shard_c) in enumerate(shards):
        n_pos = [len(q.positives) for q in shard_q]
        n_cand = [len(c) for c in shard_c]

        def valid(saved: Any, n_pos: list[int] = n_pos, n_cand: list[int] = n_cand) -> bool:
            return (
                saved.keys() >= {"pos", "cand"}
                and saved["pos"].shape == (sum(n_pos),)
                and saved["cand"].shape == (sum(n_cand),)
                and bool(np.isfinite(saved["pos"]).all() and np.isfinite(saved["cand"]).all())
            )

        target = folder / f"shard_{i:05d}.npz"
        saved = load_cached(target, valid)
        if saved is not None:
            pos_flat, cand_flat = saved["pos"], saved["cand"]
        else:
            pos_flat, cand_flat = _rescore_shard(reranker, shard_q, shard_c, docs)
            bad = int((~np.isfinite(pos_flat)).sum() + (~np.isfinite(cand_flat)).sum())
            if bad:
                raise ValueError(
                    f"rescoring shard {i}: the reranker returned {bad} non-finite score(s) of "
                    f"{pos_flat.size + cand_flat.size}; nothing was cached"
                )
            folder.mkdir(parents=True, exist_ok=True)
            with atomic_write(target, "wb") as fh:
                np.savez(fh, pos=pos_flat, cand=cand_flat)
        pos_raw += np.split(pos_flat, np.cumsum(n_pos)[:-1])
        cand_raw += np.split(cand_flat, np.cumsum(n_cand)[:-1])
        if on_progress is not None:
            on_progress("rerank", i)
    return pos_raw, cand_raw
