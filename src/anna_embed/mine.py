"""Hard-negative mining with soft labels: encode -> search -> rescore -> filter.

1. **Candidates** (:func:`anna_embed.search.search_candidates`). The retriever teacher embeds the
   corpus (in shards cached on disk) and the queries; faiss finds the ``top_k`` nearest documents (exact
   inner product, or HNSW / IVF for big corpora), optionally fused with BM25 by reciprocal-rank fusion.
2. **Soft labels** (:func:`anna_embed.search.rescore`). The reranker teacher scores every
   (query, positive) and (query, candidate) pair (per query shard, cached on disk).
3. **Adaptive margin filter** (:func:`margin_filter`, a pure function): a candidate is dropped when it is
   a known positive or when its normalised teacher score exceeds the threshold derived from the query's
   lowest-scoring positive; ``num_negatives`` are then taken from a rank window (:func:`select_negatives`).

Score scale (:func:`normalise_scores`): the margins apply in the teacher's own score scale, as in
sentence-transformers' ``mine_hard_negatives`` and NV-Retriever's TopK-PercPos: with a cosine teacher and
a 5% relative margin a candidate is dropped above ``0.95 * cos(query, positive)``. Cosines and
probabilities are therefore used as they are (``normalisation="auto"``). Logits have no fixed zero, so
"95% of the positive" means nothing on them: ``auto`` maps a cross-encoder's logits through a sigmoid
first, and the margin is then 95% of the positive's probability of relevance. For scores that stay signed
the relative threshold is ``pos - relative_margin * |pos|``, which is ``pos * (1 - relative_margin)`` for
a positive score and still lies *below* a negative one. ``"affine"`` (``(1 + s) / 2``) is kept for those
who want the old, stricter rule; it is never chosen by ``auto``.

The output is FlagEmbedding's teacher-score format, one JSON object per query:
``{query, pos, neg, pos_scores, neg_scores, task, type, instruction}`` (raw teacher scores by default),
with a manifest, a summary and a score histogram beside it (:mod:`anna_embed.mine_report`). With
``teacher_embeddings`` and a bi-encoder reranker, the teacher's vectors of every query and every written
``pos`` / ``neg`` text go beside it too (``NAME.teacher.npz``,
:class:`anna_embed.teachers.TeacherEmbeddings`), for the batch-scope soft labels of training
(``loss.distill_scope = "batch"``).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from anna_embed import search
from anna_embed.io import InputError, atomic_write, file_sha256, iter_jsonl, text_list
from anna_embed.mine_report import (
    mining_counts,
    negatives_that_are_positives,
    summary_lines,
    write_reports,
)
from anna_embed.search import ProgressHook

logger = logging.getLogger(__name__)

Normalisation = Literal["auto", "sigmoid", "affine", "identity"]


@dataclass(frozen=True)
class MineConfig:
    """Mining settings (build with :func:`anna_embed.config.load`).

    Attributes:
        retriever: Retriever teacher spec (``bi:NAME`` or NAME: offline short name, folder or hub id).
        reranker: Reranker teacher spec: ``bi:NAME``, ``cross:NAME`` or ``judge:NAME``.
        task: Task of records that name none; also the task documents are encoded for.
        top_k: Candidates per query from stage 1.
        index: ``flat`` (exact inner product), ``hnsw`` or ``ivf`` (approximate, for ~1M+ documents).
        hnsw_m: HNSW graph degree.
        ef_search: HNSW search breadth.
        ivf_nlist: IVF cells (None: ``sqrt(N)``).
        ivf_nprobe: IVF cells visited per query.
        bm25: Fuse BM25 candidates with the dense ones (reciprocal-rank fusion).
        rrf_k: RRF constant: a document at 1-based rank r in a list adds ``1 / (rrf_k + r)``.
        relative_margin: Drop candidates scoring above ``pos * (1 - relative_margin)`` (None: off).
        absolute_margin: Drop candidates scoring above ``pos - absolute_margin`` (None: off).
        normalisation: How raw teacher scores are mapped before the margins (see module docstring).
        num_negatives: Negatives kept per query.
        window_start: First rank (0-based, among the kept candidates) the negatives may come from.
        window_end: End of the rank window (exclusive; None: no end).
        sampling: ``top``: the first ``num_negatives`` of the window; ``random``: a seeded sample of it.
        rank_by: Order of the kept candidates: by ``teacher`` score or by ``retriever`` rank.
        min_negatives: Queries with fewer kept negatives are left out of the output.
        include_given_negatives: Add a record's own negatives to its candidates (they are filtered too).
        shard_size: Corpus documents per cached embedding shard.
        query_shard_size: Queries per cached rescoring shard.
        batch_size: Teacher batch size.
        max_length: Retriever truncation length in tokens (None: the model's).
        reranker_max_length: Reranker truncation length (None: ``max_length``).
        dtype: Bi-encoder teachers' weights: ``float32``, ``bfloat16`` or ``auto`` (bf16 on GPUs and on CPUs
            with AVX512/AMX: EmbeddingGemma runs about 3x faster on an AVX512-BF16 CPU); the scores and
            vectors are float32 either way.
        seed: Seed of random sampling; query ``i`` uses ``(seed, i)``.
        output_scores: Write ``raw`` teacher scores or the ``normalised`` ones.
        teacher_embeddings: Also write the reranker's vectors of every query and ``pos`` / ``neg`` text
            to ``NAME.teacher.npz`` beside the output; needs a bi-encoder reranker (``bi:NAME``).
    """

    retriever: str = "all-minilm-l6-v2"
    reranker: str = "bi:all-mpnet-base-v2"
    task: str | None = None
    top_k: int = 50
    index: Literal["flat", "hnsw", "ivf"] = "flat"
    hnsw_m: int = 32
    ef_search: int = 128
    ivf_nlist: int | None = None
    ivf_nprobe: int = 16
    bm25: bool = False
    rrf_k: int = 60
    relative_margin: float | None = 0.05
    absolute_margin: float | None = None
    normalisation: Normalisation = "auto"
    num_negatives: int = 7
    window_start: int = 0
    window_end: int | None = None
    sampling: Literal["top", "random"] = "top"
    rank_by: Literal["teacher", "retriever"] = "teacher"
    min_negatives: int = 1
    include_given_negatives: bool = True
    shard_size: int = 4096
    query_shard_size: int = 256
    batch_size: int = 32
    max_length: int | None = 256
    reranker_max_length: int | None = None
    dtype: Literal["float32", "bfloat16", "auto"] = "float32"
    seed: int = 0
    output_scores: Literal["raw", "normalised"] = "raw"
    teacher_embeddings: bool = False


# ----------------------------------------------------------------------------- pure functions


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


@dataclass(frozen=True)
class FilterResult:
    """Outcome of :func:`margin_filter`; all masks are ``[Q, C]`` and disjoint.

    Attributes:
        keep: Valid candidates that survive.
        dropped_positive: Candidates that are known positives.
        dropped_margin: Candidates scoring above the query's threshold.
        threshold: ``[Q]`` score above which a candidate is dropped (``inf`` with no margin set).
    """

    keep: np.ndarray
    dropped_positive: np.ndarray
    dropped_margin: np.ndarray
    threshold: np.ndarray


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


# ----------------------------------------------------------------------------- inputs


@dataclass
class MiningQuery:
    """One query with all its positives (records with the same query, task and instruction merged)."""

    text: str
    positives: list[str]
    negatives: list[str] = field(default_factory=list)
    task: str | None = None
    instruction: str | None = None
    lines: list[int] = field(default_factory=list)
    type: str | None = None


def load_training(path: str | Path, *, default_task: str | None = None) -> list[MiningQuery]:
    """Read training records ``{query, positive, negative?, task?, type?, instruction?}``; merge duplicates.

    Records sharing (query, task, instruction) become one query whose positives are the union, so the
    other positives of a query are never mined as its negatives.

    Raises:
        InputError: A malformed record, naming file, line and field.
    """
    p = Path(path)
    merged: dict[tuple[str, str | None, str | None], MiningQuery] = {}
    for line, rec in iter_jsonl(p, required=("query", "positive")):
        query = rec["query"]
        if not isinstance(query, str) or not query.strip():
            raise InputError(p, line, "expected a non-empty string", field="query")
        positives = text_list(rec["positive"], p, line, "positive")
        negatives = text_list(rec["negative"], p, line, "negative") if rec.get("negative") else []
        task, instruction, type_ = rec.get("task", default_task), rec.get("instruction"), rec.get("type")
        for name, value in (("task", task), ("instruction", instruction), ("type", type_)):
            if value is not None and not isinstance(value, str):
                raise InputError(p, line, "expected a string", field=name)
        key = (query, task, instruction)
        item = merged.setdefault(key, MiningQuery(query, [], [], task, instruction, type=type_))
        item.positives += [x for x in positives if x not in item.positives]
        item.negatives += [x for x in negatives if x not in item.negatives]
        item.lines.append(line)
    if not merged:
        raise InputError(p, None, "no training records")
    return list(merged.values())


def load_corpus(path: str | Path) -> list[str]:
    """Documents of a corpus JSONL: BEIR ``{_id, title, text}`` or ``{text}``; duplicates removed."""
    from anna_embed.convert import document_text

    p = Path(path)
    seen: dict[str, None] = {}
    for line, rec in iter_jsonl(p, required=("text",)):
        if not isinstance(rec["text"], str):
            raise InputError(p, line, "expected a string", field="text")
        seen.setdefault(document_text(rec), None)
    return list(seen)


# ----------------------------------------------------------------------------- the run


def _pad(rows: Sequence[Sequence[float]], fill: float = np.nan) -> np.ndarray:
    width = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), max(width, 1)), fill)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def _same_bi_encoder(cfg: MineConfig) -> bool:
    """Whether the reranker is the retriever itself: the same bi-encoder at the same truncation length."""
    from anna_embed.teachers import parse_spec

    kind, name = parse_spec(cfg.reranker)
    length = cfg.reranker_max_length or cfg.max_length
    return kind == "bi" and parse_spec(cfg.retriever) == (kind, name) and length == cfg.max_length


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
    """
    from anna_embed import __version__, teachers
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
    retriever = retriever or teachers.load_retriever(
        cfg.retriever, batch_size=cfg.batch_size, max_length=cfg.max_length, dtype=cfg.dtype
    )
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
    ranked, search_key = search.search_candidates(cfg, retriever, queries, docs, n_corpus, cache, on_progress)
    if reranker is retriever and isinstance(retriever, teachers.BiEncoder):
        # the candidates' vectors are the corpus shards just encoded (read back from the cache)
        d_emb = search.corpus_embeddings(cfg, retriever, docs[:n_corpus], cache)
        retriever.remember(docs[:n_corpus], d_emb, role="document", task=cfg.task)
    timings["candidates_s"] = time.perf_counter() - t
    cands: list[list[int]] = []
    for q, row in zip(queries, ranked, strict=True):
        ids = [int(i) for i in row if i >= 0]
        if cfg.include_given_negatives:
            ids += [doc_index[n] for n in q.negatives if doc_index[n] not in ids]
        cands.append(ids)

    t = time.perf_counter()
    key = [
        reranker.name,
        search_key,
        search.content_hash(docs[n_corpus:]),
        str(cfg.query_shard_size),
        str(cfg.include_given_negatives),
    ]
    folder = cache / f"rerank-{search.content_hash(key)[:16]}"
    pos_raw, cand_raw = search.rescore(cfg, reranker, queries, cands, docs, folder, on_progress)
    timings["rescore_s"] = time.perf_counter() - t

    # Stage 3: adaptive margin filter, then selection.
    pos_norm = normalise_scores(_pad(pos_raw), reranker.score_kind, cfg.normalisation)  # [Q, P]
    cand_norm = normalise_scores(_pad(cand_raw), reranker.score_kind, cfg.normalisation)  # [Q, C]
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
    with atomic_write(out) as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    teacher_file = None
    if cfg.teacher_embeddings:
        t = time.perf_counter()
        teacher_file = teachers.embed_mined_records(reranker, records).save(
            teachers.teacher_embeddings_path(out)
        )
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
    from anna_embed.tasks import UnknownTaskError, get_task

    spec = None
    if q.task is not None:
        try:
            spec = get_task(q.task)
        except UnknownTaskError:
            spec = None
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


# ----------------------------------------------------------------------------- CLI

#: Flags that are shortcuts for ``--set field=value``.
_FLAGS = {
    "retriever": str,
    "reranker": str,
    "task": str,
    "top_k": int,
    "index": str,
    "relative_margin": str,
    "absolute_margin": str,
    "num_negatives": int,
    "sampling": str,
    "seed": int,
    "batch_size": int,
    "max_length": str,
    "reranker_max_length": str,
    "shard_size": int,
    "dtype": str,
}


def add_cli(verb: str, parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """Register ``anna-embed mine``."""
    parser.description = "Mine hard negatives with soft labels: encode -> search -> rescore -> filter."
    parser.add_argument("--train", required=True, help="training JSONL {query, positive, negative?, task?}")
    parser.add_argument("--corpus", help="corpus JSONL ({_id, title, text} or {text}); default: positives")
    parser.add_argument("--out", required=True, help="mined JSONL (FlagEmbedding teacher-score format)")
    parser.add_argument("--config", help="TOML/JSON file with MineConfig fields")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a field")
    parser.add_argument("--bm25", action="store_true", help="fuse BM25 candidates (reciprocal-rank fusion)")
    parser.add_argument(
        "--teacher-embeddings",
        action="store_true",
        help="also write the bi-encoder reranker's vectors of every text to OUT-stem.teacher.npz",
    )
    parser.add_argument("--cache-dir", help="shard cache (default OUT.cache); reruns resume from it")
    parser.add_argument("--report-dir", help="where manifest, summary and histogram go (default: beside OUT)")
    for name, tp in _FLAGS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=tp, default=None, help=f"MineConfig.{name}")

    def main(args: argparse.Namespace) -> int:
        from anna_embed.config import load

        overrides = list(args.set)
        overrides += [f"{n}={getattr(args, n)}" for n in _FLAGS if getattr(args, n) is not None]
        if args.bm25:
            overrides.append("bm25=true")
        if args.teacher_embeddings:
            overrides.append("teacher_embeddings=true")
        cfg = load(MineConfig, args.config, overrides)
        manifest = run(
            cfg,
            args.train,
            args.out,
            corpus=args.corpus,
            cache_dir=args.cache_dir,
            report_dir=args.report_dir,
        )
        for line in manifest["summary"]:
            print(line)
        return 0

    return main
