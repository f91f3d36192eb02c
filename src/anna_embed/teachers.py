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
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
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
            loads LLMs (instructions applied) and sentence-transformers folders (no instructions).
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
    def load(cls, name: str, *, batch_size: int = 32, max_length: int | None = None) -> BiEncoder:
        """Load from an offline short name, a local folder or a hub id."""
        from anna_embed.embedder import Embedder

        encoder = Embedder.from_pretrained(name, max_length=max_length)
        suffix = "" if max_length is None else f"@{max_length}"
        return cls(encoder, name=f"bi:{name}{suffix}", batch_size=batch_size)

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

    def _cached(
        self, texts: Sequence[str], role: str, task: str | None, instruction: str | None
    ) -> np.ndarray:
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
        q_emb = self._cached(queries, "query", task, instruction)  # [N, D]
        d_emb = self._cached(documents, "document", task, None)  # [N, D]
        return np.einsum("nd,nd->n", q_emb, d_emb).astype(np.float32)


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


def load_retriever(spec: str, *, batch_size: int = 32, max_length: int | None = None) -> Retriever:
    """Load a retriever teacher; only bi-encoders retrieve (``bi:NAME`` or a bare ``NAME``)."""
    kind, name = parse_spec(spec)
    if kind != "bi":
        raise ValueError(f"Retriever {spec!r}: only bi-encoders can retrieve (use bi:NAME)")
    return BiEncoder.load(name, batch_size=batch_size, max_length=max_length)


def load_reranker(spec: str, *, batch_size: int = 32, max_length: int | None = None) -> Reranker:
    """Load a reranker teacher from ``bi:NAME``, ``cross:NAME`` or ``judge:NAME`` (bare NAME = ``bi``)."""
    kind, name = parse_spec(spec)
    if kind == "cross":
        return CrossEncoderReranker.load(name, batch_size=batch_size, max_length=max_length)
    if kind == "judge":
        return LLMJudgeReranker.load(name, batch_size=max(1, batch_size // 4), max_length=max_length)
    return BiEncoder.load(name, batch_size=batch_size, max_length=max_length)
