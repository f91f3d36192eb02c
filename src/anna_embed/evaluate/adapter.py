"""The model mteb sees during ``anna-embed eval``: any backend behind mteb's encoder protocol, plus a cache.

mteb hands :class:`EvalEncoder` a DataLoader, the task metadata and the role (``prompt_type``); the encoder
builds the exact prompt prefix for that task and role (instruction and few-shot examples, through the
backend's own prompt functions, which defer to :mod:`anna_embed.prompts`), then looks every
``(model, prefix, text)`` up in an on-disk :class:`EmbeddingCache` and encodes only the misses. Re-running
a task, or adding one that shares texts with another (MassiveIntent/MassiveScenario), re-encodes nothing.

Backends: ``embedder`` (:class:`anna_embed.model.embedder.Embedder`: decoder LLMs, sentence-transformers
folders, our saved models) and ``sentence-transformers`` (``SentenceTransformer`` itself, for checking).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from mteb.models import ModelMeta
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ScoringFunction

from anna_embed import prompts as P
from anna_embed.distributed import SINGLE, Ranks
from anna_embed.evaluate.tasks import LocalTask
from anna_embed.model.mteb import mteb_prefix, mteb_texts
from anna_embed.shots import few_shot_pool, sample_examples
from anna_embed.tasks import TaskSpec, task_or_custom

logger = logging.getLogger(__name__)

Backend = Literal["embedder", "sentence-transformers"]


class TextBackend(Protocol):
    """What :class:`EvalEncoder` needs from a model."""

    model_id: str
    training_datasets: tuple[str, ...]

    def query_prefix(self, task: TaskSpec, examples: Sequence[P.Example]) -> str: ...

    def document_prefix(self, task: TaskSpec, examples: Sequence[P.Example] = ()) -> str: ...

    def encode(self, texts: list[str], prefix: str, batch_size: int) -> np.ndarray: ...


def _folder_fingerprint(folder: Path) -> str:
    """Hash of the names, sizes and modification times of a model folder's files (cache invalidation)."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(folder)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


class EmbedderBackend:
    """Our :class:`~anna_embed.model.embedder.Embedder` (instructions per its saved config)."""

    def __init__(
        self,
        name: str,
        *,
        dtype: str = "float32",
        max_length: int | None = None,
        instructions: bool | None = None,
    ):
        from dataclasses import replace

        from anna_embed.model.embedder import Embedder
        from anna_embed.model.weights import resolve

        self.emb = Embedder.from_pretrained(name, dtype=dtype, max_length=max_length)
        if instructions is not None:
            self.emb.config = replace(self.emb.config, use_instructions=instructions)
        folder = resolve(name)
        cfg = json.dumps(self.emb.config.to_dict(), sort_keys=True)
        self.model_id = f"embedder|{name}|{_folder_fingerprint(folder)}|{dtype}|{cfg}"
        self.training_datasets = tuple(self.emb.config.training_datasets)

    @classmethod
    def wrap(cls, emb: Any, model_id: str) -> EmbedderBackend:
        """An already-built Embedder (tests, training loops) under an explicit cache id."""
        self = cls.__new__(cls)
        self.emb, self.model_id = emb, model_id
        self.training_datasets = tuple(emb.config.training_datasets)
        return self

    def query_prefix(self, task: TaskSpec, examples: Sequence[P.Example]) -> str:
        return self.emb.query_prefix(task, examples=examples)

    def document_prefix(self, task: TaskSpec, examples: Sequence[P.Example] = ()) -> str:
        return self.emb.document_prefix(task, examples=examples)

    def encode(self, texts: list[str], prefix: str, batch_size: int) -> np.ndarray:
        return self.emb.encode(texts, prefix=prefix, batch_size=batch_size, show_progress=False)

    def check_prefix(self, prefix: str) -> None:
        self.emb.check_prefix(prefix)


class SentenceTransformerBackend:
    """``SentenceTransformer`` itself; no instructions unless asked (as in published MTEB runs)."""

    def __init__(self, name: str, *, instructions: bool | None = None, max_length: int | None = None):
        from sentence_transformers import SentenceTransformer

        from anna_embed.model.weights import resolve

        folder = resolve(name)
        self.model = SentenceTransformer(str(folder))
        if max_length is not None:
            self.model.max_seq_length = max_length
        self.instructions = bool(instructions)
        self.model_id = f"st|{name}|{_folder_fingerprint(folder)}|{self.model.max_seq_length}"
        self.training_datasets = ()

    def query_prefix(self, task: TaskSpec, examples: Sequence[P.Example]) -> str:
        return P.query_prefix(task, examples=examples) if self.instructions else ""

    def document_prefix(self, task: TaskSpec, examples: Sequence[P.Example] = ()) -> str:
        return P.document_prefix(task, examples=examples) if self.instructions else ""

    def encode(self, texts: list[str], prefix: str, batch_size: int) -> np.ndarray:
        return np.asarray(
            self.model.encode(
                texts,
                prompt=prefix or None,
                batch_size=batch_size,
                convert_to_numpy=True,
                show_progress_bar=False,
            ),
            dtype=np.float32,
        )


def load_backend(
    name: str,
    backend: Backend = "embedder",
    *,
    dtype: str = "float32",
    max_length: int | None = None,
    instructions: bool | None = None,
) -> TextBackend:
    """Load ``name`` (short name, folder or hub id) behind the chosen backend."""
    if backend == "sentence-transformers":
        return SentenceTransformerBackend(name, instructions=instructions, max_length=max_length)
    return EmbedderBackend(name, dtype=dtype, max_length=max_length, instructions=instructions)


class EmbeddingCache:
    """Vectors on disk (SQLite), keyed by ``sha256(model_id, prefix, text)``.

    Args:
        path: The database file (created with its folder).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=120)  # several runs may share one cache file
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS vec (key BLOB PRIMARY KEY, dim INTEGER, data BLOB)")
        self.hits = self.misses = 0

    @staticmethod
    def key(model_id: str, prefix: str, text: str) -> bytes:
        return hashlib.sha256("\x00".join((model_id, prefix, text)).encode("utf-8")).digest()

    def get_many(self, keys: list[bytes]) -> dict[bytes, np.ndarray]:
        found: dict[bytes, np.ndarray] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            rows = self.db.execute(
                f"SELECT key, data FROM vec WHERE key IN ({','.join('?' * len(chunk))})", chunk
            ).fetchall()
            found.update({k: np.frombuffer(d, dtype=np.float32) for k, d in rows})
        return found

    def put_many(self, items: list[tuple[bytes, np.ndarray]]) -> None:
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO vec VALUES (?, ?, ?)",
                [(k, int(v.shape[0]), np.ascontiguousarray(v, dtype=np.float32).tobytes()) for k, v in items],
            )

    def __len__(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM vec").fetchone()[0])

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EvalEncoder(AbsEncoder):
    """mteb ``EncoderProtocol`` over a :class:`TextBackend`, with prompts per task/role and a cache.

    Args:
        backend: The model.
        tasks: The tasks of the run by name (their type and instruction).
        examples: Few-shot ``(query, response)`` pairs per task name.
        cache: The embedding cache, or ``None``.
        model_name: Name recorded in the results (``org/name`` form).
        batch_size: Texts per forward pass.
        show_progress: One progress bar per encode call.
        ranks: The processes to spread encoding over (:func:`anna_embed.distributed.launch`): every rank
            must make the same calls (mteb runs the same tasks on each); each encodes its share of the
            texts rank 0 did not find in its cache, and every rank gets all the vectors. The cache is rank
            0's alone (the others pass None).
    """

    def __init__(
        self,
        backend: TextBackend,
        *,
        tasks: dict[str, LocalTask],
        examples: dict[str, list[P.Example]] | None = None,
        cache: EmbeddingCache | None = None,
        model_name: str = "local/model",
        batch_size: int = 32,
        show_progress: bool = True,
        ranks: Ranks = SINGLE,
    ):
        self.model = backend
        self.ranks = ranks
        self.tasks = tasks
        self.examples = examples or {}
        self.cache = cache
        self.batch_size = batch_size
        self.show_progress = show_progress
        if "/" not in model_name:
            model_name = f"local/{model_name}"
        self.mteb_model_meta = ModelMeta.create_empty(
            overwrites={
                "name": model_name,
                "revision": hashlib.sha256(backend.model_id.encode()).hexdigest()[:12],
                "similarity_fn_name": ScoringFunction.COSINE,
                "training_datasets": set(backend.training_datasets) or None,
            }
        )

    def prefix(self, task_name: str, task_type: str, prompt_type: Any) -> str:
        """The prompt prefix for a task and mteb ``prompt_type`` (``None``: symmetric, query-side prompt).

        An unregistered task (a user's own folder) uses its local instruction.
        """
        local = self.tasks.get(task_name)
        spec = task_or_custom(task_name, task_type, local.instruction if local is not None else None)
        return mteb_prefix(self.model, spec, self.examples.get(task_name, ()), prompt_type)

    def check_prompts(self) -> None:
        """Build every task's query-side prompt (the one carrying examples) before anything is encoded, so
        a prompt that leaves no room for text within ``max_length`` fails at once, naming the task."""
        check = getattr(self.model, "check_prefix", None)
        if check is None:
            return
        for name, local in self.tasks.items():
            try:
                check(self.prefix(name, local.type, None))
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
        texts = mteb_texts(inputs)
        prefix = self.prefix(task_metadata.name, task_metadata.type, prompt_type)
        return self.encode_texts(texts, prefix, desc=f"{task_metadata.name} ({hf_split})")

    def encode_texts(self, texts: list[str], prefix: str, *, desc: str = "encode") -> np.ndarray:
        """Embed ``prefix + text`` for each text, through the cache (spread over :attr:`ranks`)."""
        from tqdm.auto import tqdm

        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        mid = self.model.model_id
        keys = [EmbeddingCache.key(mid, prefix, t) for t in texts]
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
                vecs = self.model.encode(share, prefix, self.batch_size) if share else np.zeros((0, 0))
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


# ------------------------------------------------------------------------------------------- few-shot


def example_pool(local: LocalTask) -> tuple[list[P.Example], str]:
    """Few-shot candidates from a local task's training data (see :func:`anna_embed.shots.few_shot_pool`)."""
    return few_shot_pool(local.type, local.folder)


def pick_examples(pool: Sequence[P.Example], k: int, *, seed: int, task: str) -> list[P.Example]:
    """``k`` seeded examples (:func:`anna_embed.shots.sample_examples`; the model clips them by tokens)."""
    return sample_examples(pool, k, seed=seed, task=task)
