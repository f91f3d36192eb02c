"""mteb's encoder protocol, once: :class:`MtebEncoder`, the one adapter between mteb and a model here.

mteb calls ``encode(DataLoader, task_metadata=, hf_split=, hf_subset=, prompt_type=)``. The adapter takes
the task's instruction from the registry (a task of the caller's own: the instruction the caller gave for
it, else its mteb description), the role from ``prompt_type`` (:func:`anna_embed.prompts.role_of`; mteb
gives a symmetric task's texts no role: they take the query-side prompt) and the few-shot examples from
what the caller set per task (:func:`mteb_prefix`); then it looks every ``(model_id, prefix, text)`` up in
an optional vector cache and has the backend encode only the misses, optionally spread over processes.

Who uses it: ``anna-embed eval`` (:mod:`anna_embed.evaluate.driver`, over an :class:`EmbedderBackend` or a
sentence-transformers backend, with its SQLite cache) and the :class:`~anna_embed.model.embedder.Embedder`
itself, which :class:`MtebMixin` makes an mteb ``EncoderProtocol`` by handing mteb's calls to an adapter
over itself (so ``mteb.evaluate(embedder, tasks)`` works and builds the same prompts).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from mteb.models import ModelMeta
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ScoringFunction

from anna_embed import prompts as P
from anna_embed.distributed import SINGLE, Ranks
from anna_embed.tasks import TaskSpec, task_or_custom


class MtebPrompter(Protocol):
    """What :func:`mteb_prefix` needs of a model: its query and document prefixes for a task."""

    def query_prefix(self, task: TaskSpec, *, examples: Sequence[P.Example] = ()) -> str: ...

    def document_prefix(self, task: TaskSpec, *, examples: Sequence[P.Example] = ()) -> str: ...


class TextBackend(MtebPrompter, Protocol):
    """A model :class:`MtebEncoder` can serve: its prompt prefixes, a batch encoder and its identity.

    Attributes:
        model_id: What the vectors depend on (weights, dtype, settings): the cache's namespace.
        training_datasets: Datasets the model was trained on (mteb's ``ModelMeta``).
    """

    model_id: str
    training_datasets: tuple[str, ...]

    def encode(
        self, texts: list[str], *, prefix: str, batch_size: int, show_progress: bool
    ) -> np.ndarray: ...


class VectorCache(Protocol):
    """Vectors by :func:`vector_key` (e.g. :class:`anna_embed.evaluate.adapter.EmbeddingCache`)."""

    hits: int
    misses: int

    def get_many(self, keys: list[bytes]) -> dict[bytes, np.ndarray]: ...

    def put_many(self, items: list[tuple[bytes, np.ndarray]]) -> None: ...


def vector_key(model_id: str, prefix: str, text: str) -> bytes:
    """The cache key of ``prefix + text`` embedded by ``model_id``."""
    return hashlib.sha256("\x00".join((model_id, prefix, text)).encode("utf-8")).digest()


def mteb_prefix(model: MtebPrompter, spec: TaskSpec, examples: Sequence[P.Example], prompt_type: Any) -> str:
    """The prompt prefix of an mteb ``encode`` call for ``spec`` in the role ``prompt_type`` names.

    A query takes the task's few-shot ``examples``; a document takes them only on a symmetric task (it is
    another query there), none on an asymmetric one.
    """
    if P.role_of(prompt_type) == "query":
        return model.query_prefix(spec, examples=examples)
    return model.document_prefix(spec, examples=examples if spec.symmetric else ())


def mteb_texts(inputs: Iterable[Any]) -> list[str]:
    """The texts of mteb's DataLoader, whose batches are ``{"text": [...]}``."""
    return [text for batch in inputs for text in batch["text"]]


class EmbedderBackend:
    """An :class:`~anna_embed.model.embedder.Embedder` as a :class:`TextBackend`.

    Args:
        emb: The embedder (its prompts follow its config's ``use_instructions``).
        model_id: The cache namespace of its vectors (the caller knows what they depend on).
    """

    def __init__(self, emb: Any, model_id: str):
        self.emb, self.model_id = emb, model_id
        self.training_datasets = tuple(emb.config.training_datasets)

    def query_prefix(self, task: TaskSpec, *, examples: Sequence[P.Example] = ()) -> str:
        return self.emb.query_prefix(task, examples=examples)

    def document_prefix(self, task: TaskSpec, *, examples: Sequence[P.Example] = ()) -> str:
        return self.emb.document_prefix(task, examples=examples)

    def encode(self, texts: list[str], *, prefix: str, batch_size: int, show_progress: bool) -> np.ndarray:
        return self.emb.encode(texts, prefix=prefix, batch_size=batch_size, show_progress=show_progress)

    def check_prefix(self, prefix: str) -> None:
        self.emb.check_prefix(prefix)


class MtebEncoder(AbsEncoder):
    """mteb ``EncoderProtocol`` over a :class:`TextBackend`: prompts per task and role, an optional cache.

    Args:
        backend: The model.
        examples: Few-shot ``(query, response)`` pairs per task name (read at each call: the caller may
            fill the mapping later).
        instructions: The instruction of each task of the caller's own (not in the registry) by name; an
            unregistered task missing here takes its mteb description.
        cache: Where vectors are looked up and stored, or ``None``.
        model_name: Name recorded in the results (``org/name`` form; ``local/`` is added otherwise).
        batch_size: Texts per forward pass.
        show_progress: One progress bar per encode call.
        ranks: The processes to spread encoding over (:func:`anna_embed.distributed.launch`): every rank
            must make the same calls (mteb runs the same tasks on each); each encodes its share of the
            texts rank 0 did not find in its cache, and every rank gets all the vectors. The cache is rank
            0's alone (the others pass None).
        meta: Further ``ModelMeta`` fields (``embed_dim``, ``max_tokens``, ...); ``revision`` defaults to a
            hash of the backend's ``model_id``.
    """

    def __init__(
        self,
        backend: TextBackend,
        *,
        examples: Mapping[str, Sequence[P.Example]] | None = None,
        instructions: Mapping[str, str] | None = None,
        cache: VectorCache | None = None,
        model_name: str = "local/model",
        batch_size: int = 32,
        show_progress: bool = True,
        ranks: Ranks = SINGLE,
        meta: Mapping[str, Any] | None = None,
    ):
        self.model = backend
        self.examples = examples if examples is not None else {}
        self.instructions = dict(instructions or {})
        self.cache = cache
        self.batch_size = batch_size
        self.show_progress = show_progress
        self.ranks = ranks
        if "/" not in model_name:
            model_name = f"local/{model_name}"
        self.mteb_model_meta = ModelMeta.create_empty(
            overwrites={
                "name": model_name,
                "revision": hashlib.sha256(backend.model_id.encode()).hexdigest()[:12],
                "similarity_fn_name": ScoringFunction.COSINE,
                "training_datasets": set(backend.training_datasets) or None,
                **(meta or {}),
            }
        )

    def prefix(self, task_name: str, task_type: str, prompt_type: Any, description: str | None = None) -> str:
        """The prompt prefix for a task and mteb ``prompt_type`` (``None``: symmetric, query-side prompt)."""
        spec = task_or_custom(task_name, task_type, self.instructions.get(task_name) or description)
        return mteb_prefix(self.model, spec, self.examples.get(task_name, ()), prompt_type)

    def check_prompts(self, task_types: Mapping[str, str]) -> None:
        """Build each task's query-side prompt (the one carrying examples) before anything is encoded, so
        a prompt that leaves no room for text within ``max_length`` fails at once, naming the task.

        Args:
            task_types: The type of each task by name.
        """
        check = getattr(self.model, "check_prefix", None)
        if check is None:
            return
        for name, type_ in task_types.items():
            try:
                check(self.prefix(name, type_, None))
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None

    def encode(
        self,
        inputs: Any,
        *,
        task_metadata: Any,
        hf_split: str,
        hf_subset: str,
        prompt_type: Any = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """mteb's ``encode``: the texts of ``inputs`` with the prefix of the task and role."""
        texts = mteb_texts(inputs)
        description = getattr(task_metadata, "description", None)
        prefix = self.prefix(task_metadata.name, task_metadata.type, prompt_type, description)
        return self.encode_texts(texts, prefix, desc=f"{task_metadata.name} ({hf_split})")

    def encode_texts(self, texts: list[str], prefix: str, *, desc: str = "encode") -> np.ndarray:
        """Embed ``prefix + text`` for each text, through the cache (spread over :attr:`ranks`)."""
        from tqdm.auto import tqdm

        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        mid = self.model.model_id
        keys = [vector_key(mid, prefix, t) for t in texts]
        found = self.cache.get_many(list(set(keys))) if self.cache is not None else {}
        todo: dict[bytes, int] = {}  # key -> its first text
        for i, k in enumerate(keys):
            if k not in found:
                todo.setdefault(k, i)
        if self.cache is not None:
            self.cache.hits += len(texts) - len(todo)  # texts served without encoding
            self.cache.misses += len(todo)
        pending = sorted(todo.values(), key=lambda i: -len(texts[i]))  # similar lengths together
        pending = self.ranks.broadcast(pending)  # rank 0's cache decides what is encoded
        chunk = max(self.batch_size * 16, 256) * self.ranks.world
        with tqdm(
            total=len(pending),
            desc=desc,
            unit="text",
            disable=not self.show_progress or not pending or not self.ranks.is_main,
            leave=False,
        ) as bar:
            for start in range(0, len(pending), chunk):
                part = pending[start : start + chunk]
                lo, hi = self.ranks.bounds(len(part))
                share = [texts[i] for i in part[lo:hi]]
                vecs = (
                    self.model.encode(share, prefix=prefix, batch_size=self.batch_size, show_progress=False)
                    if share
                    else np.zeros((0, 0))
                )
                if self.ranks.active:
                    vecs = self.ranks.gather_rows(vecs)
                if vecs is not None:  # rank 0 (or the only process)
                    new = [
                        (keys[i], np.asarray(v, dtype=np.float32)) for i, v in zip(part, vecs, strict=True)
                    ]
                    found.update(new)
                    if self.cache is not None:
                        self.cache.put_many(new)
                bar.update(len(part))
        if not self.ranks.active:
            return np.stack([found[k] for k in keys]).astype(np.float32)
        return self.ranks.broadcast_rows(np.stack([found[k] for k in keys]) if self.ranks.is_main else None)


class MtebMixin:
    """Makes the :class:`~anna_embed.model.embedder.Embedder` an mteb ``EncoderProtocol`` by handing
    mteb's calls to one :class:`MtebEncoder` over itself (no cache; examples from :attr:`task_examples`)."""

    name: str
    config: Any
    dimension: int
    #: Few-shot examples per task name, used when mteb calls ``encode`` (set by the caller).
    task_examples: dict[str, list[P.Example]]

    def as_mteb(self, batch_size: int = 32) -> MtebEncoder:
        """This embedder behind mteb's protocol (the adapter ``anna-embed eval`` uses, without a cache)."""
        name = self.name if "/" in self.name else f"local/{self.name}"
        return MtebEncoder(
            EmbedderBackend(self, model_id=f"embedder|{name}"),
            examples=self.task_examples,
            model_name=name,
            batch_size=batch_size,
            show_progress=False,
            meta={
                "revision": "local",
                "embed_dim": self.dimension,
                "max_tokens": self.config.max_length,
                "use_instructions": self.config.use_instructions,
            },
        )

    @property
    def mteb_model_meta(self) -> Any:
        """mteb's ``ModelMeta`` for this model (name, embedding size, instruction use, training data)."""
        return self.as_mteb().mteb_model_meta

    def similarity(self, a: Any, b: Any) -> Any:
        """Cosine similarity matrix (mteb protocol)."""
        return self.as_mteb().similarity(a, b)

    def similarity_pairwise(self, a: Any, b: Any) -> Any:
        """Cosine similarity of aligned rows (mteb protocol)."""
        return self.as_mteb().similarity_pairwise(a, b)

    def _encode_mteb(
        self, inputs: Iterable[Any], task_metadata: Any, prompt_type: Any, *, batch_size: int, **kwargs: Any
    ) -> np.ndarray:
        return self.as_mteb(batch_size).encode(
            inputs,
            task_metadata=task_metadata,
            hf_split=kwargs.get("hf_split", ""),
            hf_subset=kwargs.get("hf_subset", ""),
            prompt_type=prompt_type,
        )
