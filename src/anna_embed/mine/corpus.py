"""Mining stage 1a: the retriever's corpus vectors, cached on disk in shards and spread over processes.

:func:`corpus_vectors` keys a cache folder by everything that changes the vectors and fills it with
:func:`encode_corpus_cached`, one ``shard_NNNNN.npy`` per ``shard_size`` documents. Under ``torchrun`` the
missing shards are dealt out in rounds, one whole shard per rank per round: each shard is still one
``encode`` call of the same texts, so its vectors, and the cache, are the same whatever the number of
processes; rank 0 gathers each round, writes its shards and goes on alone with the search
(:mod:`anna_embed.mine.search`). The cache helpers (:func:`content_hash`, :func:`load_cached`,
:func:`finite_matrix`) serve the rescoring cache too.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from anna_embed.distributed import SINGLE, Ranks
from anna_embed.io import atomic_write

if TYPE_CHECKING:
    from anna_embed.mine.config import MineConfig

logger = logging.getLogger(__name__)

ProgressHook = Callable[[str, int], None]


def content_hash(parts: Sequence[str] | str) -> str:
    """SHA-256 hex digest of ``parts`` (each followed by a NUL byte): the key of a cache folder or file."""
    h = hashlib.sha256()
    for part in [parts] if isinstance(parts, str) else parts:
        h.update(part.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def load_cached(path: Path, valid: Callable[[Any], bool]) -> Any:
    """A cached ``.npy`` array or ``.npz`` dict of arrays, or None when it is missing, unreadable or not
    ``valid`` (it is then recomputed and replaced: a bad entry never poisons a rerun)."""
    if not path.is_file():
        return None
    try:
        if path.suffix == ".npz":
            with np.load(path) as saved:
                data: Any = {name: saved[name] for name in saved.files}
        else:
            data = np.load(path)
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
        logger.warning("%s: unreadable cache entry (%s); recomputing it", path, err)
        return None
    if not valid(data):
        logger.warning("%s: cache entry does not fit this run or holds non-finite values; recomputing", path)
        return None
    return data


def finite_matrix(arr: Any, rows: int) -> bool:
    """Whether ``arr`` is a finite float ``[rows, D]`` matrix with ``D >= 1``."""
    return (
        isinstance(arr, np.ndarray)
        and arr.ndim == 2
        and arr.shape[0] == rows
        and arr.shape[1] >= 1
        and bool(np.isfinite(arr).all())
    )


def _looks_cached(path: Path, rows: int) -> bool:
    """Whether ``path`` holds a ``[rows, D]`` array, reading only its header (the values are checked when
    rank 0 loads it; a bad one is then encoded again there)."""
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError):
        return False
    return arr.ndim == 2 and arr.shape[0] == rows and arr.shape[1] >= 1


def _encode_shard(encode: Callable[[list[str]], np.ndarray], chunk: list[str], i: int) -> np.ndarray:
    """The vectors of corpus shard ``i``, checked to be a finite ``[len(chunk), D]`` matrix."""
    arr = np.ascontiguousarray(encode(chunk), dtype=np.float32)
    if not finite_matrix(arr, len(chunk)):
        bad = int((~np.isfinite(arr)).any(axis=-1).sum()) if arr.ndim == 2 else arr.size
        raise ValueError(
            f"corpus shard {i}: the retriever returned a {arr.shape} array with {bad} non-finite "
            f"row(s) for {len(chunk)} texts (expected finite [{len(chunk)}, D]); nothing was cached"
        )
    return arr


def _save(arr: np.ndarray, target: Path) -> None:
    with atomic_write(target, "wb") as fh:
        np.save(fh, arr)


def encode_corpus_cached(
    encode: Callable[[list[str]], np.ndarray],
    texts: Sequence[str],
    folder: Path,
    *,
    shard_size: int,
    on_progress: ProgressHook | None = None,
    ranks: Ranks = SINGLE,
) -> np.ndarray | None:
    """Embed ``texts`` shard by shard, each shard saved atomically as ``shard_NNNNN.npy`` in ``folder``.

    Shards already on disk are loaded, not recomputed, when they are finite ``[len(shard), D]`` matrices;
    ``folder`` should be keyed by everything that changes the vectors (teacher, batch size, corpus hash,
    shard size). A shard is written only when all its vectors are finite. ``on_progress("corpus", i)`` is
    called on rank 0 after each shard ``i``.

    With ``ranks`` of several processes, rank 0 says which shards are missing; in each round rank ``r``
    encodes the ``r``-th of the next ``world`` missing shards and rank 0 gathers and writes them. Every
    rank must call this; rank 0 returns the ``[N, D]`` vectors, the others None.

    Raises:
        ValueError: The encoder returned a shard that is not a finite ``[len(shard), D]`` matrix.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    n_shards = max(1, math.ceil(len(texts) / shard_size))
    chunks = [list(texts[i * shard_size : (i + 1) * shard_size]) for i in range(n_shards)]
    targets = [folder / f"shard_{i:05d}.npy" for i in range(n_shards)]
    if ranks.is_main:
        folder.mkdir(parents=True, exist_ok=True)
    fresh: dict[int, np.ndarray] = {}
    if ranks.active:
        missing = ranks.broadcast(
            [i for i in range(n_shards) if not _looks_cached(targets[i], len(chunks[i]))]
            if ranks.is_main
            else None
        )
        for start in range(0, len(missing), ranks.world):
            shards = missing[start : start + ranks.world]  # rank r takes shards[r]
            mine = shards[ranks.rank] if ranks.rank < len(shards) else None
            local = _encode_shard(encode, chunks[mine], mine) if mine is not None else np.zeros((0, 0))
            rows = ranks.gather_rows(local)
            if rows is None:
                continue
            offsets = np.cumsum([0, *(len(chunks[i]) for i in shards)])
            for k, i in enumerate(shards):
                fresh[i] = rows[offsets[k] : offsets[k + 1]]
                _save(fresh[i], targets[i])
        if not ranks.is_main:
            logger.info("Rank %d: encoded its corpus shards; rank 0 goes on with the search", ranks.rank)
            return None
    parts = []
    for i, (chunk, target) in enumerate(zip(chunks, targets, strict=True)):
        arr = fresh.get(i)
        if arr is None:
            arr = load_cached(target, functools.partial(finite_matrix, rows=len(chunk)))
        if arr is None:
            arr = _encode_shard(encode, chunk, i)
            _save(arr, target)
        parts.append(arr)
        if on_progress is not None:
            on_progress("corpus", i)
    return np.concatenate(parts)


def corpus_vectors(
    cfg: MineConfig,
    retriever: Any,
    documents: Sequence[str],
    cache: Path,
    *,
    on_progress: ProgressHook | None = None,
    ranks: Ranks = SINGLE,
) -> tuple[np.ndarray | None, str]:
    """The retriever's ``[N, D]`` vectors of ``documents`` (None on ranks other than 0) and their cache
    key, which names the folder ``cache/corpus-KEY`` (:func:`encode_corpus_cached`)."""
    corpus_key = content_hash(
        [
            retriever.name,
            str(cfg.task),
            str(cfg.shard_size),
            str(cfg.batch_size),  # a batch's composition moves a real model's floats
            content_hash(documents),
        ]
    )[:16]
    d_emb = encode_corpus_cached(
        functools.partial(retriever.encode_documents, task=cfg.task),
        documents,
        cache / f"corpus-{corpus_key}",
        shard_size=cfg.shard_size,
        on_progress=on_progress,
        ranks=ranks,
    )
    return d_emb, corpus_key
