"""Teachers for hard-negative mining: a retriever that finds candidates and a reranker that scores them.

Two small interfaces (:class:`~anna_embed.mine.config.Retriever` embeds queries and documents into one
space, :class:`~anna_embed.mine.config.Reranker` gives one relevance score per (query, document) pair and
says what kind of number that score is, ``score_kind``, so mining can normalise it before the margin
filter), several implementations:

* :class:`BiEncoder` (retriever and reranker), ``"cosine"``: cosine of the two L2-normalised embeddings;
* :class:`~anna_embed.mine.rerankers.CrossEncoderReranker`, ``"logit"``: the cross-encoder's raw logit;
* :class:`~anna_embed.mine.rerankers.LLMJudgeReranker`, ``"logit"``: ``logit("yes") - logit("no")``
  after a relevance prompt.

Teachers are named by a spec string ``KIND:NAME`` (:func:`load_retriever`, :func:`load_reranker`) where
``KIND`` is ``bi``, ``cross`` or ``judge`` and ``NAME`` an offline short name, a local folder or a hub id.
A ``bi`` teacher runs through our :class:`~anna_embed.model.embedder.Embedder`, except a sentence-transformers
folder with modules the Embedder cannot reproduce (EmbeddingGemma's Dense layers), which
:class:`SentenceTransformerEncoder` runs through sentence-transformers with the folder's own
``query`` / ``document`` prompts.

A bi-encoder teacher's vectors of every text of a mined file can be saved beside it
(:func:`embed_mined_records` -> :class:`anna_embed.records.TeacherEmbeddings`, ``NAME.teacher.npz``), so
training can score the whole batch with the teacher.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from anna_embed.mine.config import TEACHER_KINDS, Reranker, Retriever, ScoreKind, TeacherKind, check_pairs
from anna_embed.mine.rerankers import CrossEncoderReranker, LLMJudgeReranker
from anna_embed.records import TeacherEmbeddings
from anna_embed.tasks import find_task

logger = logging.getLogger(__name__)


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _text_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


#: An in-memory cache entry of :class:`BiEncoder`: (role, task, instruction, text digest).
_Key = tuple[str, str | None, str | None, bytes]


def _known_task(task: str | None) -> str | None:
    """``task`` when the registry knows it, else None (the record's own instruction still applies)."""
    return task if task is not None and find_task(task) is not None else None


class BiEncoder:
    """A bi-encoder teacher: retriever, and reranker by cosine similarity.

    As a reranker it keeps an in-memory cache of text embeddings, so a document that is a candidate for
    many queries is encoded once. Told the pairs ahead (:meth:`plan`, which mining does), it encodes the
    texts in batches fixed by the texts alone, so a text's vector is the same whatever was cached before
    it was needed: a resumed mining run writes the same bytes as an uninterrupted one.

    Args:
        encoder: Anything with ``encode_queries(texts, task=, instruction=, batch_size=)`` and
            ``encode_documents(texts, task=, batch_size=)`` returning arrays: our ``Embedder``, which
            loads LLMs (instructions applied) and sentence-transformers folders (no instructions), or a
            :class:`SentenceTransformerEncoder` for folders the Embedder cannot reproduce.
        name: Stable identifier (part of the corpus-embedding cache key).
        batch_size: Texts per forward pass, passed to the encoder where it accepts it.
    """

    score_kind: ScoreKind = "cosine"

    def __init__(self, encoder: Any, *, name: str, batch_size: int = 32):
        self.encoder = encoder
        self.name = name
        self.batch_size = batch_size
        self._cache: dict[_Key, np.ndarray] = {}
        #: Planned batches (:meth:`plan`), each a list of (key, text); emptied once encoded.
        self._batches: list[list[tuple[_Key, str]]] = []
        self._batch_of: dict[_Key, int] = {}

    @classmethod
    def load(
        cls, name: str, *, batch_size: int = 32, max_length: int | None = None, dtype: str = "float32"
    ) -> BiEncoder:
        """Load from an offline short name, a local folder or a hub id.

        A sentence-transformers folder with modules the Embedder cannot reproduce
        (:func:`anna_embed.model.folder.sentence_transformers_only`) runs through sentence-transformers
        (:class:`SentenceTransformerEncoder`); everything else through
        :class:`~anna_embed.model.embedder.Embedder`.
        ``dtype`` is that of the weights (``auto``: bf16 where the CPU/GPU runs it fast); the vectors are
        float32 either way. A non-float32 dtype is part of :attr:`name`, so cached vectors never mix dtypes.
        """
        from anna_embed.model.embedder import Embedder
        from anna_embed.model.folder import sentence_transformers_only
        from anna_embed.model.weights import resolve, resolve_dtype

        folder = resolve(name)
        torch_dtype = resolve_dtype(dtype)
        encoder: Any
        if sentence_transformers_only(folder):
            encoder = SentenceTransformerEncoder.load(folder, max_length=max_length, dtype=torch_dtype)
        else:
            encoder = Embedder.from_pretrained(name, max_length=max_length, dtype=dtype)
        suffix = "" if max_length is None else f"@{max_length}"
        if str(torch_dtype) != "torch.float32":
            suffix += "#" + str(torch_dtype).split(".")[-1]
        return cls(encoder, name=f"bi:{name}{suffix}", batch_size=batch_size)

    def remember(
        self,
        texts: Sequence[str],
        vectors: np.ndarray,
        *,
        role: Literal["query", "document"],
        task: str | None = None,
        instruction: str | None = None,
    ) -> None:
        """Put vectors this teacher already computed (``[N, D]``, L2-normalised) into its cache.

        Mining calls it with the retriever's corpus vectors when the same bi-encoder also rescores, so the
        candidates are not encoded a second time.
        """
        if len(texts) != len(vectors):
            raise ValueError(f"remember: {len(texts)} texts but {len(vectors)} vectors")
        for text, vec in zip(texts, vectors, strict=True):
            self._cache[(role, task, instruction, _text_key(text))] = np.asarray(vec, np.float32)

    def plan(
        self,
        queries: Sequence[str],
        documents: Sequence[str],
        *,
        task: str | None = None,
        instruction: str | None = None,
    ) -> None:
        """Fix now the batches in which the texts of these pairs will be encoded by :meth:`score`.

        The texts not yet cached or planned, per role and in order of first appearance, are sorted by
        length (longest first, ties in that order) and cut into batches of ``batch_size``; when
        :meth:`embed` then needs one of them, it encodes that whole batch. The batches depend only on the
        pairs announced, in the order they were announced, never on what was cached in between, so
        each vector comes from the same forward pass in every run.
        """
        self._plan(queries, ("query", task, instruction))
        self._plan(documents, ("document", task, None))

    def _plan(self, texts: Sequence[str], prompt: tuple[str, str | None, str | None]) -> None:
        new: dict[_Key, str] = {}
        for text in texts:
            key = (*prompt, _text_key(text))
            if key not in self._cache and key not in self._batch_of:
                new.setdefault(key, text)
        keys = sorted(new, key=lambda k: -len(new[k]))  # stable sort
        for start in range(0, len(keys), self.batch_size):
            batch = keys[start : start + self.batch_size]
            self._batch_of.update(dict.fromkeys(batch, len(self._batches)))
            self._batches.append([(key, new[key]) for key in batch])

    def _encode(self, role: str, texts: list[str], task: str | None, instruction: str | None) -> np.ndarray:
        if role == "query":
            return self.encode_queries(texts, task=task, instruction=instruction)
        return self.encode_documents(texts, task=task)

    def encode_queries(
        self, texts: Sequence[str], *, task: str | None = None, instruction: str | None = None
    ) -> np.ndarray:
        vecs = self.encoder.encode_queries(
            list(texts), task=_known_task(task), instruction=instruction, batch_size=self.batch_size
        )
        return _l2_normalise(vecs)

    def encode_documents(self, texts: Sequence[str], *, task: str | None = None) -> np.ndarray:
        vecs = self.encoder.encode_documents(list(texts), task=_known_task(task), batch_size=self.batch_size)
        return _l2_normalise(vecs)

    def embed(
        self,
        texts: Sequence[str],
        *,
        role: Literal["query", "document"],
        task: str | None = None,
        instruction: str | None = None,
    ) -> np.ndarray:
        """``[N, D]`` L2-normalised embeddings through the in-memory cache (what :meth:`score` uses).

        A missing text that was planned (:meth:`plan`) is encoded with the rest of its planned batch;
        the others missing are encoded together.
        """
        keys: list[_Key] = [(role, task, instruction, _text_key(t)) for t in texts]
        missing: dict[_Key, str] = {}
        for key, text in zip(keys, texts, strict=True):
            if key not in self._cache:
                missing.setdefault(key, text)
        for b in sorted({self._batch_of[k] for k in missing if k in self._batch_of}):
            batch = self._batches[b]
            (b_role, b_task, b_instruction, _), _ = batch[0]
            vecs = self._encode(b_role, [text for _, text in batch], b_task, b_instruction)
            for (key, _), vec in zip(batch, vecs, strict=True):
                self._cache.setdefault(key, vec)  # a vector given by remember() stays
            self._batches[b] = []  # every key of it is cached now: the texts are no longer needed
        rest = {k: t for k, t in missing.items() if k not in self._cache}
        if rest:
            vecs = self._encode(role, list(rest.values()), task, instruction)
            for key, vec in zip(rest, vecs, strict=True):
                self._cache[key] = vec
        return np.stack([self._cache[k] for k in keys])

    def score(
        self,
        queries: Sequence[str],
        documents: Sequence[str],
        *,
        task: str | None = None,
        instruction: str | None = None,
    ) -> np.ndarray:
        """Cosine similarity per pair; each distinct text is encoded once per teacher lifetime."""
        check_pairs(queries, documents)
        if not queries:
            return np.zeros(0, np.float32)
        q_emb = self.embed(queries, role="query", task=task, instruction=instruction)  # [N, D]
        d_emb = self.embed(documents, role="document", task=task)  # [N, D]
        return np.einsum("nd,nd->n", q_emb, d_emb).astype(np.float32)


class SentenceTransformerEncoder:
    """A sentence-transformers model run by sentence-transformers itself (the encoder of a ``bi`` teacher).

    For folders whose modules :class:`~anna_embed.model.embedder.Embedder` cannot reproduce, such as
    EmbeddingGemma (bidirectional Gemma 3, mean pooling, two Dense layers, Normalize). Queries get the
    folder's ``query`` prompt and documents its ``document`` prompt (EmbeddingGemma:
    ``"task: search result | query: "`` and ``"title: none | text: "``); a folder without one of them
    encodes that side with its default prompt. Task instructions are not applied: the model was trained
    with its own prompts.

    Args:
        model: A ``SentenceTransformer``.
    """

    QUERY_PROMPT = "query"
    DOCUMENT_PROMPT = "document"

    def __init__(self, model: Any):
        self.model = model

    @classmethod
    def load(
        cls, folder: str | os.PathLike[str], *, max_length: int | None = None, dtype: Any = None
    ) -> SentenceTransformerEncoder:
        """``SentenceTransformer(folder)``; ``max_length`` overrides its ``max_seq_length``, ``dtype`` (a
        ``torch.dtype``; None: as saved) that of its weights."""
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(folder))
        if dtype is not None:
            model = model.to(dtype)
        if max_length is not None:
            model.max_seq_length = max_length
        return cls(model)

    def _encode(self, texts: Sequence[str], prompt: str, batch_size: int) -> np.ndarray:
        name = prompt if prompt in (self.model.prompts or {}) else None
        vecs = self.model.encode(
            list(texts),
            prompt_name=name,
            batch_size=batch_size,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vecs, dtype=np.float32)  # [N, D]

    def encode_queries(
        self,
        texts: Sequence[str],
        *,
        task: str | None = None,
        instruction: str | None = None,
        batch_size: int = 32,
    ) -> np.ndarray:
        """``[N, D]`` query vectors (the folder's ``query`` prompt; ``task``/``instruction`` ignored)."""
        return self._encode(texts, self.QUERY_PROMPT, batch_size)

    def encode_documents(
        self, texts: Sequence[str], *, task: str | None = None, batch_size: int = 32
    ) -> np.ndarray:
        """``[N, D]`` document vectors (the folder's ``document`` prompt; ``task`` ignored)."""
        return self._encode(texts, self.DOCUMENT_PROMPT, batch_size)


def parse_spec(spec: str, *, default_kind: TeacherKind = "bi") -> tuple[TeacherKind, str]:
    """Split ``"KIND:NAME"`` into its parts; a spec without a known kind prefix is ``default_kind``.

    Example:
        >>> parse_spec("cross:/models/ms-marco")
        ('cross', '/models/ms-marco')
        >>> parse_spec("all-mpnet-base-v2")
        ('bi', 'all-mpnet-base-v2')
    """
    head, sep, rest = spec.partition(":")
    if sep and head in TEACHER_KINDS:
        if not rest:
            raise ValueError(f"Teacher spec {spec!r} names no model")
        return head, rest  # type: ignore[return-value]
    return default_kind, spec


def load_retriever(
    spec: str, *, batch_size: int = 32, max_length: int | None = None, dtype: str = "float32"
) -> Retriever:
    """Load a retriever teacher; only bi-encoders retrieve (``bi:NAME`` or a bare ``NAME``)."""
    kind, name = parse_spec(spec)
    if kind != "bi":
        raise ValueError(f"Retriever {spec!r}: only bi-encoders can retrieve (use bi:NAME)")
    return BiEncoder.load(name, batch_size=batch_size, max_length=max_length, dtype=dtype)


def load_reranker(
    spec: str, *, batch_size: int = 32, max_length: int | None = None, dtype: str = "float32"
) -> Reranker:
    """Load a reranker teacher from ``bi:NAME``, ``cross:NAME`` or ``judge:NAME`` (bare NAME = ``bi``).

    ``dtype`` applies to bi-encoders; cross-encoders and judges load as they always do (float32).
    """
    kind, name = parse_spec(spec)
    if kind == "cross":
        return CrossEncoderReranker.load(name, batch_size=batch_size, max_length=max_length)
    if kind == "judge":
        return LLMJudgeReranker.load(name, batch_size=max(1, batch_size // 4), max_length=max_length)
    return BiEncoder.load(name, batch_size=batch_size, max_length=max_length, dtype=dtype)


def embed_mined_records(teacher: BiEncoder, records: Sequence[dict[str, Any]]) -> TeacherEmbeddings:
    """The teacher's vectors of every query and every ``pos`` / ``neg`` text of mined ``records``.

    Queries are embedded with their record's task and instruction, documents with their record's task,
    through the teacher's cache, so the vectors are those its scores came from.
    """
    q_rows: dict[tuple[str | None, str | None], list[int]] = {}
    for i, rec in enumerate(records):
        q_rows.setdefault((rec.get("task"), rec.get("instruction")), []).append(i)
    query_emb: np.ndarray | None = None
    for (task, instruction), rows in q_rows.items():
        vecs = teacher.embed(
            [records[i]["query"] for i in rows], role="query", task=task, instruction=instruction
        )
        if query_emb is None:
            query_emb = np.zeros((len(records), vecs.shape[1]), np.float32)
        query_emb[rows] = vecs
    docs: dict[tuple[str | None, str], None] = {}
    for rec in records:
        for text in [*rec["pos"], *rec["neg"]]:
            docs.setdefault((rec.get("task"), text), None)
    keys = list(docs)
    by_task: dict[str | None, list[int]] = {}
    for j, (task, _) in enumerate(keys):
        by_task.setdefault(task, []).append(j)
    document_emb: np.ndarray | None = None
    for task, rows in by_task.items():
        vecs = teacher.embed([keys[j][1] for j in rows], role="document", task=task)
        if document_emb is None:
            document_emb = np.zeros((len(keys), vecs.shape[1]), np.float32)
        document_emb[rows] = vecs
    empty = np.zeros((0, 0), np.float32)
    return TeacherEmbeddings(
        teacher=teacher.name,
        score_kind=teacher.score_kind,
        query_texts=tuple(r["query"] for r in records),
        query_emb=empty if query_emb is None else query_emb,
        document_texts=tuple(text for _, text in keys),
        document_tasks=tuple(task for task, _ in keys),
        document_emb=empty if document_emb is None else document_emb,
    )
