"""Mining settings and the types the mining stages hand each other.

:class:`MineConfig` holds every setting (build it with :func:`anna_embed.config.load`); a
:class:`MiningQuery` is one training query with all its positives (:mod:`anna_embed.mine.inputs` reads
them); a :class:`FilterResult` is what the margin filter kept and dropped
(:func:`anna_embed.mine.filter.margin_filter`). The two teacher interfaces live here too: a
:class:`Retriever` finds candidates, a :class:`Reranker` scores pairs and says what kind of number its
score is (:data:`ScoreKind`), so the filter can normalise it (implementations in
:mod:`anna_embed.mine.teachers` and :mod:`anna_embed.mine.rerankers`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from anna_embed.config import ConfigError

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
        normalisation: How raw teacher scores are mapped before the margins
            (:func:`anna_embed.mine.filter.normalise_scores`).
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

    def __post_init__(self) -> None:
        """Check every number before any model loads; errors name the field (``MineConfig.top_k: ...``).

        Raises:
            ConfigError: (a ``ValueError``) A count, size or length below its minimum, a window that
                selects nothing, ``min_negatives`` above ``num_negatives`` (no record could be written),
                or a margin outside its range.
        """
        at_least = {
            "top_k": 1,
            "hnsw_m": 1,
            "ef_search": 1,
            "ivf_nlist": 1,
            "ivf_nprobe": 1,
            "rrf_k": 0,
            "num_negatives": 1,
            "window_start": 0,
            "min_negatives": 0,
            "shard_size": 1,
            "query_shard_size": 1,
            "batch_size": 1,
            "max_length": 1,
            "reranker_max_length": 1,
            "seed": 0,
        }
        for name, minimum in at_least.items():
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                _invalid(name, f"must be an integer, got {value!r}")
            if value is not None and value < minimum:
                _invalid(name, f"must be >= {minimum}, got {value}")
        if self.window_end is not None and self.window_end <= self.window_start:
            _invalid("window_end", f"must be > window_start ({self.window_start}), got {self.window_end}")
        if self.min_negatives > self.num_negatives:
            _invalid(
                "min_negatives",
                f"must be <= num_negatives ({self.num_negatives}), got {self.min_negatives}: "
                "no record could be written",
            )
        if self.relative_margin is not None and not 0.0 <= self.relative_margin < 1.0:
            _invalid("relative_margin", f"must be in [0, 1) or None, got {self.relative_margin}")
        if self.absolute_margin is not None and not self.absolute_margin >= 0.0:
            _invalid("absolute_margin", f"must be >= 0 or None, got {self.absolute_margin}")


def _invalid(name: str, message: str) -> None:
    raise ConfigError(f"MineConfig.{name}: {message}")


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


ScoreKind = Literal["cosine", "logit", "probability"]
TeacherKind = Literal["bi", "cross", "judge"]
TEACHER_KINDS: tuple[str, ...] = ("bi", "cross", "judge")


@runtime_checkable
class Retriever(Protocol):
    """Embeds queries and documents for candidate search (inner product of L2-normalised vectors)."""

    name: str

    def encode_queries(
        self, texts: Sequence[str], *, task: str | None = None, instruction: str | None = None
    ) -> np.ndarray:
        """Return ``[N, D]`` float32 L2-normalised query embeddings."""
        ...

    def encode_documents(self, texts: Sequence[str], *, task: str | None = None) -> np.ndarray:
        """Return ``[N, D]`` float32 L2-normalised document embeddings."""
        ...


@runtime_checkable
class Reranker(Protocol):
    """Scores (query, document) pairs; higher means more relevant."""

    name: str
    score_kind: ScoreKind

    def score(
        self,
        queries: Sequence[str],
        documents: Sequence[str],
        *,
        task: str | None = None,
        instruction: str | None = None,
    ) -> np.ndarray:
        """Return ``[N]`` float scores, one per pair ``(queries[i], documents[i])``."""
        ...


@runtime_checkable
class PlansBatches(Protocol):
    """A reranker told every pair it will score before scoring starts (the bi-encoder teacher).

    It then fixes the batches its texts are encoded in from the texts alone, so a text's vector, and every
    score made from it, does not depend on which shards were already scored (a resumed run) or on what was
    already in memory.
    """

    def plan(
        self,
        queries: Sequence[str],
        documents: Sequence[str],
        *,
        task: str | None = None,
        instruction: str | None = None,
    ) -> None:
        """Announce pairs :meth:`Reranker.score` will be called with, in the order it will be called."""
        ...


def check_pairs(queries: Sequence[str], documents: Sequence[str]) -> None:
    """A reranker's input check: one document per query."""
    if len(queries) != len(documents):
        raise ValueError(f"{len(queries)} queries for {len(documents)} documents")
