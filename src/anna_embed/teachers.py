"""Teachers for hard-negative mining: a retriever that finds candidates and a reranker that scores them.

Two small interfaces, several implementations:

* :class:`Retriever` – embeds queries and documents into one space (``BiEncoder``).
* :class:`Reranker` – gives one relevance score per (query, document) pair and says what kind of number
  that score is (``score_kind``), so :mod:`anna_embed.mine` can normalise it before the margin filter:

  ============================  ==============  ==============================================
  implementation                ``score_kind``  score
  ============================  ==============  ==============================================
  :class:`BiEncoder`            ``"cosine"``    cosine of the two L2-normalised embeddings
  :class:`CrossEncoderReranker` ``"logit"``     the cross-encoder's raw relevance logit
  :class:`LLMJudgeReranker`     ``"logit"``     ``logit("yes") - logit("no")`` after a relevance prompt
  ============================  ==============  ==============================================

Teachers are named by a spec string ``KIND:NAME`` (:func:`load_retriever`, :func:`load_reranker`) where
``KIND`` is ``bi``, ``cross`` or ``judge`` and ``NAME`` an offline short name, a local folder or a hub id.
A ``bi`` teacher runs through our :class:`~anna_embed.embedder.Embedder`, except a sentence-transformers
folder with modules the Embedder cannot reproduce (EmbeddingGemma's Dense layers), which
:class:`SentenceTransformerEncoder` runs through sentence-transformers with the folder's own
``query`` / ``document`` prompts.

A bi-encoder teacher's vectors of every text of a mined file can be saved beside it
(:class:`TeacherEmbeddings`, ``NAME.teacher.npz``), so training can score the whole batch with the teacher.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

logger = logging.getLogger(__name__)

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


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _check_pairs(queries: Sequence[str], documents: Sequence[str]) -> None:
    if len(queries) != len(documents):
        raise ValueError(f"{len(queries)} queries for {len(documents)} documents")


def _text_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def _known_task(task: str | None) -> str | None:
    """``task`` when the registry knows it, else None (the record's own instruction still applies)."""
    from anna_embed.tasks import UnknownTaskError, get_task

    if task is None:
        return None
    try:
        get_task(task)
    except UnknownTaskError:
        return None
    return task


class BiEncoder:
    """A bi-encoder teacher: retriever, and reranker by cosine similarity.

    As a reranker it keeps an in-memory cache of text embeddings, so a document that is a candidate for
    many queries is encoded once.

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
        self._cache: dict[tuple[str, str | None, str | None, bytes], np.ndarray] = {}

    @classmethod
    def load(
        cls, name: str, *, batch_size: int = 32, max_length: int | None = None, dtype: str = "float32"
    ) -> BiEncoder:
        """Load from an offline short name, a local folder or a hub id.

        A sentence-transformers folder with modules the Embedder cannot reproduce
        (:func:`anna_embed.embedder.sentence_transformers_only`) runs through sentence-transformers
        (:class:`SentenceTransformerEncoder`); everything else through :class:`~anna_embed.embedder.Embedder`.
        ``dtype`` is that of the weights (``auto``: bf16 where the CPU/GPU runs it fast); the vectors are
        float32 either way. A non-float32 dtype is part of :attr:`name`, so cached vectors never mix dtypes.
        """
        from anna_embed.embedder import Embedder, resolve_dtype, sentence_transformers_only

        folder = _resolve(name)
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
        """``[N, D]`` L2-normalised embeddings through the in-memory cache (what :meth:`score` uses)."""
        keys = [(role, task, instruction, _text_key(t)) for t in texts]
        missing: dict[tuple[str, str | None, str | None, bytes], str] = {}
        for key, text in zip(keys, texts, strict=True):
            if key not in self._cache:
                missing.setdefault(key, text)
        if missing:
            new_texts = list(missing.values())
            if role == "query":
                vecs = self.encode_queries(new_texts, task=task, instruction=instruction)
            else:
                vecs = self.encode_documents(new_texts, task=task)
            for key, vec in zip(missing, vecs, strict=True):
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
        _check_pairs(queries, documents)
        if not queries:
            return np.zeros(0, np.float32)
        q_emb = self.embed(queries, role="query", task=task, instruction=instruction)  # [N, D]
        d_emb = self.embed(documents, role="document", task=task)  # [N, D]
        return np.einsum("nd,nd->n", q_emb, d_emb).astype(np.float32)


class SentenceTransformerEncoder:
    """A sentence-transformers model run by sentence-transformers itself (the encoder of a ``bi`` teacher).

    For folders whose modules :class:`~anna_embed.embedder.Embedder` cannot reproduce, such as
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


class CrossEncoderReranker:
    """A sentence-transformers ``CrossEncoder`` (path or hub id) giving one raw logit per pair.

    The logit is read without the model's activation (``activation_fn=Identity``): the mining stage
    normalises scores itself (sigmoid for ``"logit"``), and the raw logit is the soft label.
    """

    score_kind: ScoreKind = "logit"

    def __init__(self, model: Any, *, name: str, batch_size: int = 32):
        num_labels = getattr(getattr(model, "model", None), "config", None)
        num_labels = getattr(num_labels, "num_labels", 1)
        if num_labels != 1:
            raise ValueError(f"{name}: a reranker cross-encoder needs one output label, not {num_labels}")
        self.model = model
        self.name = name
        self.batch_size = batch_size

    @classmethod
    def load(cls, name: str, *, batch_size: int = 32, max_length: int | None = None) -> CrossEncoderReranker:
        """Load a CrossEncoder from a local folder (or a hub id when the hub is reachable)."""
        from pathlib import Path

        from sentence_transformers import CrossEncoder

        source = name if Path(name).expanduser().is_dir() else str(_resolve(name))
        model = CrossEncoder(source, device="cpu", max_length=max_length)
        suffix = "" if max_length is None else f"@{max_length}"
        return cls(model, name=f"cross:{name}{suffix}", batch_size=batch_size)

    def score(
        self,
        queries: Sequence[str],
        documents: Sequence[str],
        *,
        task: str | None = None,
        instruction: str | None = None,
    ) -> np.ndarray:
        """Raw relevance logits; ``task``/``instruction`` are ignored (cross-encoders take no prompt)."""
        import torch

        _check_pairs(queries, documents)
        if not queries:
            return np.zeros(0, np.float32)
        pairs = list(zip(queries, documents, strict=True))
        out = self.model.predict(
            pairs,
            batch_size=self.batch_size,
            activation_fn=torch.nn.Identity(),
            show_progress_bar=False,
            convert_to_numpy=True,
        )
        return np.asarray(out, dtype=np.float32).reshape(len(pairs))


#: The judge's relevance question; ``{instruction}`` is the task's instruction (or a generic one).
JUDGE_PROMPT = (
    "Judge whether the document is relevant to the query.\n"
    "Task: {instruction}\n"
    "Query: {query}\n"
    "Document: {document}\n"
    "Is the document relevant to the query? Answer yes or no."
)
JUDGE_DEFAULT_INSTRUCTION = "Given a query, find documents that answer it."
#: Answer prefix used when the tokenizer has no chat template.
JUDGE_PLAIN_SUFFIX = "\nAnswer:"


def judge_prompt(query: str, document: str, *, instruction: str | None = None) -> str:
    """The relevance question put to the causal-LM judge (before any chat template)."""
    return JUDGE_PROMPT.format(
        instruction=instruction or JUDGE_DEFAULT_INSTRUCTION, query=query, document=document
    )


class LLMJudgeReranker:
    """A causal LM used as a pointwise yes/no relevance judge: score = ``logit(yes) - logit(no)``.

    The prompt is :func:`judge_prompt`, wrapped in the tokenizer's chat template (assistant turn opened)
    when it has one, otherwise followed by ``"\\nAnswer:"``. Documents are truncated to
    ``max_document_tokens`` before the prompt is built, so the question always survives. Batches are
    left-padded with explicit position ids, so a pair's score does not depend on its batch.

    Args:
        model: A ``transformers`` causal LM.
        tokenizer: Its tokenizer.
        name: Stable identifier.
        batch_size: Pairs per forward pass.
        max_document_tokens: Document truncation length, in tokens.
    """

    score_kind: ScoreKind = "logit"

    def __init__(
        self, model: Any, tokenizer: Any, *, name: str, batch_size: int = 8, max_document_tokens: int = 256
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.batch_size = batch_size
        self.max_document_tokens = max_document_tokens
        self.use_chat = bool(getattr(tokenizer, "chat_template", None))
        lead = "" if self.use_chat else " "
        self.yes_id = self._first_token(lead + "yes")
        self.no_id = self._first_token(lead + "no")
        if self.yes_id == self.no_id:
            raise ValueError(f"{name}: 'yes' and 'no' start with the same token")

    def _first_token(self, word: str) -> int:
        ids = self.tokenizer(word, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"{self.name}: the tokenizer maps {word!r} to no token")
        return int(ids[0])

    @classmethod
    def load(
        cls, name: str, *, batch_size: int = 8, max_length: int | None = None, dtype: str = "float32"
    ) -> LLMJudgeReranker:
        """Load an offline short name (e.g. ``smollm2-135m-instruct``), a folder or a hub id."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = _resolve(name)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype))
        suffix = "" if max_length is None else f"@{max_length}"
        return cls(
            model,
            tokenizer,
            name=f"judge:{name}{suffix}",
            batch_size=batch_size,
            max_document_tokens=max_length or 256,
        )

    def build_inputs(self, query: str, document: str, instruction: str | None) -> str:
        """The exact string fed to the model for one pair."""
        ids = self.tokenizer(document, add_special_tokens=False)["input_ids"]
        if len(ids) > self.max_document_tokens:
            document = self.tokenizer.decode(ids[: self.max_document_tokens])
        question = judge_prompt(query, document, instruction=instruction)
        if self.use_chat:
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
            )
        return question + JUDGE_PLAIN_SUFFIX

    def score(
        self,
        queries: Sequence[str],
        documents: Sequence[str],
        *,
        task: str | None = None,
        instruction: str | None = None,
    ) -> np.ndarray:
        """``logit(yes) - logit(no)`` at the last prompt position, per pair."""
        import torch

        _check_pairs(queries, documents)
        if instruction is None and task is not None:
            from anna_embed.tasks import get_task

            instruction = get_task(task).instruction
        texts = [self.build_inputs(q, d, instruction) for q, d in zip(queries, documents, strict=True)]
        tok = self.tokenizer
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        out = np.zeros(len(texts), np.float32)
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start : start + self.batch_size]
            seqs = [tok(t, add_special_tokens=False)["input_ids"] for t in batch]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)  # [B, L], left-padded
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for i, s in enumerate(seqs):
                ids[i, width - len(s) :] = torch.tensor(s)
                mask[i, width - len(s) :] = 1
            positions = (mask.cumsum(dim=1) - 1).clamp(min=0)  # [B, L]
            with torch.inference_mode():
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
            last = logits[:, -1, :].float()  # [B, V]
            out[start : start + len(seqs)] = (last[:, self.yes_id] - last[:, self.no_id]).numpy()
        return out


def _resolve(name: str) -> Any:
    from anna_embed.models import resolve

    return resolve(name)


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


# ----------------------------------------------------------------------------- teacher embeddings file

TEACHER_EMBEDDINGS_SUFFIX = ".teacher.npz"


def teacher_embeddings_path(mined: str | os.PathLike[str]) -> Path:
    """``NAME.teacher.npz`` beside a mined ``NAME.jsonl``.

    Example:
        >>> teacher_embeddings_path("data/mined.jsonl").as_posix()
        'data/mined.teacher.npz'
    """
    path = Path(mined)
    return path.with_name(path.name.removesuffix(".jsonl") + TEACHER_EMBEDDINGS_SUFFIX)


def _texts_to_bytes(texts: Sequence[str]) -> np.ndarray:
    """Texts as one UTF-8 JSON byte array (numpy's fixed-width strings would cost 4 bytes per char)."""
    return np.frombuffer(json.dumps(list(texts), ensure_ascii=False).encode("utf-8"), dtype=np.uint8)


def _texts_from_bytes(data: np.ndarray) -> tuple[str, ...]:
    return tuple(json.loads(data.tobytes().decode("utf-8")))


@dataclass(frozen=True)
class TeacherEmbeddings:
    """A bi-encoder teacher's vectors of every text of a mined file, saved beside it (``NAME.teacher.npz``).

    Written by ``anna-embed mine --teacher-embeddings`` with the vectors that produced the file's soft
    labels, so ``query_emb[i] @ document_emb[j]`` is the teacher score of (record ``i``'s query,
    document ``j``), also for pairs the file never scored: training uses it to score the whole batch.

    Attributes:
        teacher: The reranker teacher's name (``bi:...``).
        score_kind: Its ``score_kind`` (``cosine``).
        query_texts: ``[Q]`` the query of mined record ``i`` (line ``i + 1``).
        query_emb: ``[Q, D]`` float32, L2-normalised, with the query prompt (the record's task and
            instruction, as in rescoring).
        document_texts: ``[N]`` every text that appears as a ``pos`` or ``neg``.
        document_tasks: ``[N]`` the task each was embedded for (an instruction model's document prompt
            depends on it for symmetric tasks); None when the record named none.
        document_emb: ``[N, D]`` float32, L2-normalised, with the document prompt.
    """

    teacher: str
    score_kind: str
    query_texts: tuple[str, ...]
    query_emb: np.ndarray
    document_texts: tuple[str, ...]
    document_tasks: tuple[str | None, ...]
    document_emb: np.ndarray

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the ``.npz`` atomically."""
        from anna_embed.io import atomic_write

        path = Path(path)
        with atomic_write(path, "wb") as fh:
            np.savez(
                fh,
                teacher=np.array(self.teacher),
                score_kind=np.array(self.score_kind),
                query_texts=_texts_to_bytes(self.query_texts),
                query_emb=np.asarray(self.query_emb, np.float32),
                document_texts=_texts_to_bytes(self.document_texts),
                document_tasks=_texts_to_bytes([t or "" for t in self.document_tasks]),
                document_emb=np.asarray(self.document_emb, np.float32),
            )
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TeacherEmbeddings:
        """Read a file written by :meth:`save` (no pickle)."""
        with np.load(Path(path), allow_pickle=False) as z:
            out = cls(
                teacher=str(z["teacher"]),
                score_kind=str(z["score_kind"]),
                query_texts=_texts_from_bytes(z["query_texts"]),
                query_emb=z["query_emb"],
                document_texts=_texts_from_bytes(z["document_texts"]),
                document_tasks=tuple(t or None for t in _texts_from_bytes(z["document_tasks"])),
                document_emb=z["document_emb"],
            )
        if out.query_emb.shape[0] != len(out.query_texts) or out.document_emb.shape[0] != len(
            out.document_texts
        ):
            raise ValueError(f"{path}: embedding rows do not match the texts")
        return out


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
