"""What ``anna-embed eval`` puts behind mteb's protocol: the model backends and an on-disk vector cache.

The protocol itself is :class:`anna_embed.model.mteb.MtebEncoder` (the one adapter: prompts per task and
role, cache lookups, sharding). This module supplies what it serves: the backends, ``embedder``
(:class:`anna_embed.model.embedder.Embedder`: decoder LLMs, sentence-transformers folders, our saved
models; :func:`load_embedder`) and ``sentence-transformers`` (``SentenceTransformer`` itself, for
checking), each under a cache id of its folder's files and settings; and the :class:`EmbeddingCache`, where
every ``(model, prefix, text)`` is looked up before anything is encoded (re-running a task, or adding one
that shares texts with another, MassiveIntent/MassiveScenario, re-encodes nothing). Each task's few-shot
examples come from :mod:`anna_embed.shots`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from anna_embed import prompts as P
from anna_embed.model.mteb import EmbedderBackend, TextBackend
from anna_embed.tasks import TaskSpec

logger = logging.getLogger(__name__)

Backend = Literal["embedder", "sentence-transformers"]


def _folder_fingerprint(folder: Path) -> str:
    """Hash of the names, sizes and modification times of a model folder's files (cache invalidation)."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(folder)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def load_embedder(
    name: str,
    *,
    dtype: str = "float32",
    max_length: int | None = None,
    instructions: bool | None = None,
) -> EmbedderBackend:
    """Our :class:`~anna_embed.model.embedder.Embedder` (instructions per its saved config unless
    ``instructions`` says), under a cache id of its folder's files, dtype and config."""
    from dataclasses import replace

    from anna_embed.model.embedder import Embedder
    from anna_embed.model.weights import resolve

    emb = Embedder.from_pretrained(name, dtype=dtype, max_length=max_length)
    if instructions is not None:
        emb.config = replace(emb.config, use_instructions=instructions)
    cfg = json.dumps(emb.config.to_dict(), sort_keys=True)
    return EmbedderBackend(emb, f"embedder|{name}|{_folder_fingerprint(resolve(name))}|{dtype}|{cfg}")


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

    def query_prefix(self, task: TaskSpec, *, examples: Sequence[P.Example] = ()) -> str:
        return P.query_prefix(task, examples=examples) if self.instructions else ""

    def document_prefix(self, task: TaskSpec, *, examples: Sequence[P.Example] = ()) -> str:
        return P.document_prefix(task, examples=examples) if self.instructions else ""

    def encode(self, texts: list[str], *, prefix: str, batch_size: int, show_progress: bool) -> np.ndarray:
        return np.asarray(
            self.model.encode(
                texts,
                prompt=prefix or None,
                batch_size=batch_size,
                convert_to_numpy=True,
                show_progress_bar=show_progress,
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
    return load_embedder(name, dtype=dtype, max_length=max_length, instructions=instructions)


class EmbeddingCache:
    """Vectors on disk (SQLite), keyed by :func:`anna_embed.model.mteb.vector_key` (a ``VectorCache``).

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
