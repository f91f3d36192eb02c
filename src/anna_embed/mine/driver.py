"""Hard-negative mining with soft labels, the stage driver: encode -> search -> rescore -> filter.

1. **Candidates** (:func:`anna_embed.mine.corpus.corpus_vectors`,
   :func:`anna_embed.mine.search.search_candidates`). The retriever teacher embeds the corpus (in shards
   cached on disk, spread over the processes of a ``torchrun`` launch) and the queries; faiss finds the
   ``top_k`` nearest documents (exact inner product, or HNSW / IVF for big corpora), optionally fused with
   BM25 by reciprocal-rank fusion.
2. **Soft labels** (:func:`anna_embed.mine.search.rescore`). The reranker teacher scores every
   (query, positive) and (query, candidate) pair (per query shard, cached on disk).
3. **Adaptive margin filter** (:func:`anna_embed.mine.filter.margin_filter`, a pure function): a candidate
   is dropped when it is a known positive or when its normalised teacher score exceeds the threshold
   derived from the query's lowest-scoring positive; ``num_negatives`` are then taken from a rank window
   (:func:`anna_embed.mine.filter.select_negatives`). The score scale is explained in
   :mod:`anna_embed.mine.filter`.

The output is FlagEmbedding's teacher-score format, one JSON object per query:
``{query, pos, neg, pos_scores, neg_scores, task, type, instruction}`` (raw teacher scores by default),
with a manifest, a summary and a score histogram beside it (:mod:`anna_embed.mine.report`). With
``teacher_embeddings`` and a bi-encoder reranker, the teacher's vectors of every query and every written
``pos`` / ``neg`` text go beside it too (``NAME.teacher.npz``,
:class:`anna_embed.records.TeacherEmbeddings`), for the batch-scope soft labels of training
(``loss.distill_scope = "batch"``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anna_embed import distributed
from anna_embed.io import file_sha256, write_jsonl
from anna_embed.mine import search, teachers
from anna_embed.mine.config import MineConfig, MiningQuery
from anna_embed.mine.corpus import ProgressHook, corpus_vectors
from anna_embed.mine.filter import margin_filter, normalise_scores, pad, select_negatives
from anna_embed.mine.inputs import load_corpus, load_training
from anna_embed.mine.report import mining_counts, summary_lines, write_reports
from anna_embed.records import negatives_that_are_positives, teacher_embeddings_path
from anna_embed.tasks import find_task

logger = logging.getLogger(__name__)


def _same_bi_encoder(cfg: MineConfig) -> bool:
    """Whether the reranker is the retriever itself: the same bi-encoder at the same truncation length."""
    kind, name = teachers.parse_spec(cfg.reranker)
    length = cfg.reranker_max_length or cfg.max_length
    return kind == "bi" and teachers.parse_spec(cfg.retriever) == (kind, name) and length == cfg.max_length


def run(
    cfg: MineConfig,
    train: str | Path,
    out: str | Path,
    *,
    corpus: str | Path | None = None,
    retriever: Any = None,
    reranker: Any = None,
    cache_dir: str | Path | None = None,
    report_dir: str | Path | None = None,
    on_progress: ProgressHook | None = None,
) -> dict[str, Any]:
    """Mine ``train`` into ``out`` (written atomically); returns the run manifest.

    Teachers default to ``cfg.retriever`` / ``cfg.reranker``; tests pass objects. Corpus embeddings,
    candidates and rescoring results are cached under ``cache_dir`` (default ``OUT.cache``), so a killed
    run resumes where it stopped and writes the same bytes. ``on_progress(stage, shard)`` is called after
    each corpus and rescoring shard.

    Under ``torchrun`` / ``accelerate launch`` (:func:`anna_embed.distributed.launch`) every process loads
    the retriever and encodes its share of the corpus shards first; rank 0 alone writes the cache, then
    loads the reranker, searches, rescores, filters and writes ``out``. The other ranks return as soon as
    the corpus is encoded, with a manifest that only names their rank (its ``summary`` is empty).
    """
    from anna_embed import __version__
    from anna_embed.config import to_dict

    t0 = time.perf_counter()
    out = Path(out)
    cache = Path(cache_dir) if cache_dir else Path(f"{out}.cache")
    queries = load_training(train, default_task=cfg.task)
    if corpus is not None:
        docs = load_corpus(corpus)
    else:
        docs = list(dict.fromkeys(t for q in queries for t in q.positives + q.negatives))
    n_corpus = len(docs)  # given negatives outside the corpus are appended: rescored, never searched
    doc_index = {t: i for i, t in enumerate(docs)}
    for neg in (n for q in queries for n in q.negatives) if cfg.include_given_negatives else ():
        if neg not in doc_index:
            doc_index[neg] = len(docs)
            docs.append(neg)
    ranks = distributed.launch()  # under torchrun: this process's GPU is chosen before a teacher loads
    retriever = retriever or teachers.load_retriever(
        cfg.retriever, batch_size=cfg.batch_size, max_length=cfg.max_length, dtype=cfg.dtype
    )
    corpus, corpus_s = None, 0.0
    if ranks.active:  # the corpus first: no rank waits while rank 0 loads the reranker
        t = time.perf_counter()
        corpus = corpus_vectors(cfg, retriever, docs[:n_corpus], cache, on_progress=on_progress, ranks=ranks)
        corpus_s = time.perf_counter() - t
        if not ranks.is_main:  # a helper of rank 0: its share of the corpus is done
            return {"command": "mine", "rank": ranks.rank, "world_size": ranks.world, "summary": []}
    if reranker is None and _same_bi_encoder(cfg):
        reranker = retriever  # one model in memory; its corpus vectors are reused for rescoring below
    reranker = reranker or teachers.load_reranker(
        cfg.reranker,
        batch_size=cfg.batch_size,
        max_length=cfg.reranker_max_length or cfg.max_length,
        dtype=cfg.dtype,
    )
    if cfg.teacher_embeddings and not isinstance(reranker, teachers.BiEncoder):
        raise ValueError(
            f"teacher_embeddings needs a bi-encoder reranker (bi:NAME), not {reranker.name!r}: only a "
            "bi-encoder's scores are dot products of vectors that can be saved"
        )
    timings: dict[str, float] = {}

    t = time.perf_counter()
    d_emb, corpus_key = corpus or corpus_vectors(
        cfg, retriever, docs[:n_corpus], cache, on_progress=on_progress
    )
    assert d_emb is not None  # rank 0's
    ranked, search_key = search.search_candidates(
        cfg, retriever, queries, docs, n_corpus, d_emb, corpus_key, cache
    )
    if reranker is retriever and isinstance(retriever, teachers.BiEncoder):
        # the vectors of the texts rescoring needs (candidates, positives in the corpus) are the corpus
        # vectors just searched; only those are kept in the teacher's cache
        needed = {int(i) for i in ranked.ravel() if i >= 0}
        positives = (doc_index.get(p, n_corpus) for q in queries for p in q.positives)
        needed |= {i for i in positives if i < n_corpus}
        rows = sorted(needed)
        retriever.remember([docs[i] for i in rows], d_emb[rows], role="document", task=cfg.task)
    timings["candidates_s"] = corpus_s + time.perf_counter() - t
    cands: list[list[int]] = []
    for q, row in zip(queries, ranked, strict=True):
        ids = [int(i) for i in row if i >= 0]
        if cfg.include_given_negatives:
            ids += [doc_index[n] for n in q.negatives if doc_index[n] not in ids]
        cands.append(ids)

    t = time.perf_counter()
    folder = cache / f"rerank-{search.rescore_key(cfg, reranker, queries, cands, docs, search_key)}"
    pos_raw, cand_raw = search.rescore(cfg, reranker, queries, cands, docs, folder, on_progress)
    timings["rescore_s"] = time.perf_counter() - t

    # Stage 3: adaptive margin filter, then selection.
    pos_norm = normalise_scores(pad(pos_raw), reranker.score_kind, cfg.normalisation)  # [Q, P]
    cand_norm = normalise_scores(pad(cand_raw), reranker.score_kind, cfg.normalisation)  # [Q, C]
    is_pos = np.zeros(cand_norm.shape, bool)  # [Q, C]
    for row, (q, ids) in enumerate(zip(queries, cands, strict=True)):
        is_pos[row, : len(ids)] = [docs[c] in q.positives for c in ids]
    result = margin_filter(
        pos_norm,
        cand_norm,
        cand_is_positive=is_pos,
        relative_margin=cfg.relative_margin,
        absolute_margin=cfg.absolute_margin,
    )
    by_retriever = np.broadcast_to(
        -np.arange(cand_norm.shape[1]), cand_norm.shape
    )  # columns: retrieval order
    picks = select_negatives(
        result.keep,
        cand_norm if cfg.rank_by == "teacher" else by_retriever,
        num_negatives=cfg.num_negatives,
        window=(cfg.window_start, cfg.window_end),
        sampling=cfg.sampling,
        seed=cfg.seed,
    )
    shown_pos, shown_neg = (pos_raw, cand_raw) if cfg.output_scores == "raw" else (pos_norm, cand_norm)
    records = [
        _record(q, [docs[ids[c]] for c in cols], shown_pos[row][: len(q.positives)], shown_neg[row][cols])
        for row, (q, ids, cols) in enumerate(zip(queries, cands, picks, strict=True))
        if len(cols) >= cfg.min_negatives
    ]
    write_jsonl(out, records)
    teacher_file = None
    if cfg.teacher_embeddings:
        t = time.perf_counter()
        teacher_file = teachers.embed_mined_records(reranker, records).save(teacher_embeddings_path(out))
        timings["teacher_embeddings_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0

    counts = mining_counts(
        queries, cands, is_pos, ranked, result, picks, len(records), num_negatives=cfg.num_negatives
    )
    counts["negatives_other_positive"] = negatives_that_are_positives(records)["other_positive"]
    manifest = {
        "command": "mine",
        "train": str(train),
        "corpus": None if corpus is None else str(corpus),
        "out": str(out),
        "teachers": {
            "retriever": retriever.name,
            "reranker": reranker.name,
            "reranker_score_kind": reranker.score_kind,
        },
        "config": to_dict(cfg),
        "counts": counts,
        "anna_embed_version": __version__,
        "output_sha256": file_sha256(out),
        "teacher_embeddings": None
        if teacher_file is None
        else {"path": str(teacher_file), "sha256": file_sha256(teacher_file)},
        "timings": {k: round(v, 2) for k, v in timings.items()},
    }
    manifest["summary"] = summary_lines(manifest, n_corpus, len(docs) - n_corpus)
    for line in manifest["summary"]:
        logger.info("%s", line)
    write_reports(
        manifest,
        Path(report_dir) if report_dir else out.parent,
        out.name.removesuffix(".jsonl"),
        pos=pos_norm,
        cand=cand_norm,
        result=result,
        picks=picks,
    )
    return manifest


def _record(
    q: MiningQuery, negs: list[str], pos_scores: Sequence[float], neg_scores: Sequence[float]
) -> dict[str, Any]:
    spec = None if q.task is None else find_task(q.task)
    return {
        "query": q.text,
        "pos": q.positives,
        "neg": negs,
        "pos_scores": [round(float(s), 6) for s in pos_scores],
        "neg_scores": [round(float(s), 6) for s in neg_scores],
        "task": q.task,
        "type": q.type if spec is None else spec.type,  # a user's own task keeps the type it came with
        # only a user's own instruction travels with the record: a registry task's is read at training
        # time from the registry, so training and evaluation never disagree after an edit
        "instruction": q.instruction,
    }
