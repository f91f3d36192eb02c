"""What stages hand each other besides model folders: training records and the teacher's vectors.

Mining writes records ``{query, pos, neg, pos_scores, neg_scores, task, type, instruction}`` (the training
stage reads them, see :mod:`anna_embed.train.data`) and, with ``teacher_embeddings``, the bi-encoder
teacher's vectors of every text beside them (:class:`TeacherEmbeddings`, ``NAME.teacher.npz``), so training
can score the whole batch with the teacher. :func:`negatives_that_are_positives` checks any record file,
mined or prepared, for negatives that are another record's positive.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anna_embed.io import atomic_write


def negatives_that_are_positives(records: Sequence[dict[str, Any]]) -> dict[str, int]:
    """How many negatives are some record's positive (in the same file).

    For symmetric pair data (NLI, STS, paraphrases) such a negative is usually a true match of the
    query: a curated-negative source should show about 0. Accepts mined records (``pos``/``neg``) and
    prepared ones (``positive``/``negative``, a string or a list).

    Example:
        >>> negatives_that_are_positives([{"pos": ["a"], "neg": ["b"]}, {"pos": ["b"], "neg": ["c"]}])
        {'negatives': 2, 'other_positive': 1}
    """

    def texts(rec: dict[str, Any], *keys: str) -> list[str]:
        for key in keys:
            if rec.get(key) is not None:
                value = rec[key]
                return [value] if isinstance(value, str) else list(value)
        return []

    positives = {t for rec in records for t in texts(rec, "pos", "positive")}
    negs = [t for rec in records for t in texts(rec, "neg", "negative")]
    return {"negatives": len(negs), "other_positive": sum(t in positives for t in negs)}


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
