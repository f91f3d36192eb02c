"""Training records: loading and validation, and the seeded draws of shots and negatives.

Two record shapes are accepted, one JSON object per line:

* mining output: ``{query, pos: [..], neg: [..], pos_scores: [..], neg_scores: [..], task, type,
  instruction}`` (scores optional, but when present one finite number per text; a record without them
  gets NaN, the one representation of an unknown teacher score from here to the loss);
* plain pairs: ``{query, positive, negative?, task?}`` (``negative`` a string or a list).

``task`` may instead come from the data source (config), and so may a bi-encoder teacher's vectors of every
text (``teacher_embeddings``, written by ``anna-embed mine --teacher-embeddings``): batches then carry them
for the batch-scope soft labels (``loss.distill_scope = "batch"``).

A ``label`` field, when present, is the text a few-shot example answers with (classification / clustering
answer with the label, as BGE-EN-ICL does); otherwise the example answers with the record's first positive.

Every random choice is a pure function of ``(seed, epoch, index)`` (:func:`rng_for`): which positive,
which negatives, how many few-shot examples and which. The trainer only asks for "batch ``i`` of epoch
``e``" (:mod:`anna_embed.train.batches` plans and collates them), so a resumed run sees exactly the
batches an uninterrupted one would.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anna_embed.io import InputError, iter_jsonl, text_list
from anna_embed.records import TeacherEmbeddings
from anna_embed.tasks import TASK_TYPES, TaskSpec, find_task
from anna_embed.train.config import DataSource

logger = logging.getLogger(__name__)

#: Task types whose batches score only each query's own group (other queries' positives are often the
#: same label, i.e. false negatives).
GROUP_ONLY_TYPES: frozenset[str] = frozenset({"Classification", "Clustering"})

# Domain-separation tags so the different draws for one record are independent streams.
STREAM_BATCHES, STREAM_RECORD = 0, 1


@dataclass(frozen=True)
class TrainRecord:
    """One validated training record.

    ``pos_scores`` / ``neg_scores`` hold one teacher score per positive / negative, NaN where the file
    gives none (the one representation of an unknown score, up to the loss).
    """

    query: str
    positives: tuple[str, ...]
    task: TaskSpec
    pos_scores: tuple[float, ...]
    negatives: tuple[str, ...] = ()
    neg_scores: tuple[float, ...] = ()
    instruction: str | None = None
    label: str | None = None
    where: str = ""

    @property
    def response(self) -> str:
        """What a few-shot example built from this record answers with."""
        return self.label if self.label is not None else self.positives[0]


def rng_for(seed: int, epoch: int, index: int, stream: int = STREAM_RECORD) -> np.random.Generator:
    """The random generator for one ``(seed, epoch, index)``; independent of any global state."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, index, stream]))


def _scores(value: Any, n: int, path: Path, line: int, name: str) -> tuple[float, ...]:
    """``n`` finite scores from the file, or ``n`` NaN (unknown) when it gives none."""
    if value is None:
        return (math.nan,) * n
    if not isinstance(value, list) or len(value) != n:
        raise InputError(path, line, f"expected a list of {n} numbers (one per text)", field=name)
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise InputError(path, line, f"not a finite number: {v!r}", field=name)
        out.append(float(v))
    return tuple(out)


def _task_spec(rec: dict[str, Any], default: str | None, path: Path, line: int) -> TaskSpec:
    name = rec.get("task", default)
    if not isinstance(name, str) or not name:
        raise InputError(path, line, "missing (and the data source names no task)", field="task")
    spec = find_task(name)
    if spec is None:
        type_, instr = rec.get("type"), rec.get("instruction")
        if not (isinstance(type_, str) and isinstance(instr, str)):
            raise InputError(
                path, line, f"unknown task {name!r}; give 'type' and 'instruction' with it", field="task"
            )
        if type_ not in TASK_TYPES:
            known = list(TASK_TYPES)
            raise InputError(path, line, f"{type_!r} is not one of {known}", field="type")
        return TaskSpec(name=name, type=type_, instruction=instr)  # type: ignore[arg-type]
    if isinstance(rec.get("type"), str) and rec["type"] != spec.type:
        raise InputError(path, line, f"{rec['type']!r} contradicts task {name}'s type {spec.type!r}", "type")
    return spec


def parse_record(rec: dict[str, Any], *, path: Path, line: int, task: str | None = None) -> TrainRecord:
    """Validate one JSON object and turn it into a :class:`TrainRecord` (errors name file:line:field)."""
    query = rec.get("query")
    if not isinstance(query, str) or not query.strip():
        raise InputError(path, line, "missing or empty", field="query")
    pos_key = "pos" if "pos" in rec else "positive"
    if pos_key not in rec:
        raise InputError(path, line, "missing (need 'pos' or 'positive')", field="pos")
    positives = tuple(text_list(rec[pos_key], path, line, pos_key))
    neg_key = "neg" if "neg" in rec else "negative"
    negatives = (
        tuple(text_list(rec[neg_key], path, line, neg_key)) if rec.get(neg_key) not in (None, []) else ()
    )
    label = rec.get("label_text", rec.get("label"))
    instruction = rec.get("instruction")
    if instruction is not None and not isinstance(instruction, str):
        raise InputError(path, line, "expected a string", field="instruction")
    return TrainRecord(
        query=query,
        positives=positives,
        negatives=negatives,
        pos_scores=_scores(rec.get("pos_scores"), len(positives), path, line, "pos_scores"),
        neg_scores=_scores(rec.get("neg_scores"), len(negatives), path, line, "neg_scores"),
        task=_task_spec(rec, task, path, line),
        instruction=instruction,
        label=None if label is None else str(label),
        where=f"{path}:{line}",
    )


def load_records(source: DataSource) -> list[TrainRecord]:
    """Read and validate one data source."""
    path = Path(source.path)
    out: list[TrainRecord] = []
    for line, rec in iter_jsonl(path, skip_blank=True):
        if source.max_records is not None and len(out) >= source.max_records:
            break
        out.append(parse_record(rec, path=path, line=line, task=source.task))
    if not out:
        raise InputError(path, None, "no training records")
    return out


class TrainingSet:
    """Records plus the per-task pools that shot and random-negative sampling draw from.

    Args:
        records: The records.
        teacher_query: Per record, the teacher's ``[Dt]`` query vector (None where unknown).
        teacher_documents: The teacher's ``[Dt]`` document vector of each ``(task name, text)``.
        teacher: The teacher's name (None: no teacher vectors).
    """

    def __init__(
        self,
        records: Sequence[TrainRecord],
        *,
        teacher_query: Sequence[np.ndarray | None] | None = None,
        teacher_documents: dict[tuple[str, str], np.ndarray] | None = None,
        teacher: str | None = None,
    ):
        self.records = list(records)
        pools: dict[str, list[int]] = defaultdict(list)
        for i, rec in enumerate(self.records):
            pools[rec.task.name].append(i)
        self.pools = dict(pools)
        self.teacher_query = list(teacher_query) if teacher_query is not None else [None] * len(self.records)
        self.teacher_documents = teacher_documents or {}
        self.teacher = teacher

    @classmethod
    def from_sources(cls, sources: Sequence[DataSource]) -> TrainingSet:
        """Load and concatenate every source (and the teacher vectors of those that name a file)."""
        records: list[TrainRecord] = []
        t_query: list[np.ndarray | None] = []
        t_docs: dict[tuple[str, str], np.ndarray] = {}
        teacher: str | None = None
        for src in sources:
            recs = load_records(src)
            records.extend(recs)
            if src.teacher_embeddings is None:
                t_query += [None] * len(recs)
                continue
            name, queries = _load_teacher_vectors(src, recs, t_docs)
            if teacher is not None and name != teacher:
                raise InputError(
                    Path(src.teacher_embeddings),
                    None,
                    f"teacher {name!r} differs from another source's {teacher!r}",
                )
            teacher = name
            t_query += queries
        return cls(records, teacher_query=t_query, teacher_documents=t_docs, teacher=teacher)

    def teacher_vectors(
        self, indices: Sequence[int], doc_texts: Sequence[str]
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The teacher's ``[B, Dt]`` query and ``[B * G, Dt]`` document vectors of a batch of one task.

        ``(None, None)`` unless every query and every document has one (a random negative drawn from a
        source without teacher vectors, for instance).
        """
        if self.teacher is None or not indices:
            return None, None
        task = self.records[indices[0]].task.name
        queries = [self.teacher_query[i] for i in indices]
        docs = [self.teacher_documents.get((task, text)) for text in doc_texts]
        if any(v is None for v in queries) or any(v is None for v in docs):
            return None, None
        return np.stack(queries), np.stack(docs)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.records)

    def _excluded(self, own: TrainRecord, cand: TrainRecord) -> bool:
        """A candidate shot that would leak the query's own pair.

        Same query text always; a shared positive too, except on classification / clustering, where
        records of one class share their label text and such examples are legitimate.
        """
        if cand.query == own.query:
            return True
        return own.task.type not in GROUP_ONLY_TYPES and bool(set(cand.positives) & set(own.positives))

    def sample_shots(self, index: int, *, seed: int, epoch: int, max_shots: int) -> list[int]:
        """Few-shot example indices for record ``index``: ``k ~ U{0..max_shots}`` others of the same task.

        Never the record itself nor one that leaks its pair (:meth:`_excluded`). A pure function of
        ``(seed, epoch, index)``; fewer than ``k`` when the task has too few eligible records.
        """
        if max_shots <= 0:
            return []
        own = self.records[index]
        pool = self.pools[own.task.name]
        rng = rng_for(seed, epoch, index)
        k = int(rng.integers(0, max_shots + 1))
        chosen: list[int] = []
        for _ in range(8 * k + 8):  # bounded rejection sampling
            if len(chosen) == k:
                break
            cand = pool[int(rng.integers(len(pool)))]
            if cand == index or cand in chosen or self._excluded(own, self.records[cand]):
                continue
            chosen.append(cand)
        return chosen

    def sample_group(
        self, index: int, *, seed: int, epoch: int, group_size: int
    ) -> tuple[list[str], list[float]]:
        """The document group of record ``index``: one positive, then ``group_size - 1`` negatives.

        Mined negatives are drawn without replacement; when a record has too few, the rest are positives
        of other records of the same task (random negatives). The teacher score of each document comes
        with it, NaN where unknown (a record without scores, a random negative): the loss leaves a group
        with any NaN out of its KL term.
        """
        rec = self.records[index]
        rng = rng_for(seed, epoch, index, stream=STREAM_RECORD + 1)
        p = int(rng.integers(len(rec.positives)))
        docs, teacher = [rec.positives[p]], [rec.pos_scores[p]]
        n_neg = group_size - 1
        take = rng.permutation(len(rec.negatives))[:n_neg]
        for j in take:
            docs.append(rec.negatives[int(j)])
            teacher.append(rec.neg_scores[int(j)])
        pool = self.pools[rec.task.name]
        own_texts = set(rec.positives)
        for _ in range(16 * n_neg + 16):
            if len(docs) == group_size:
                break
            other = self.records[pool[int(rng.integers(len(pool)))]]
            text = other.positives[0]
            if other is rec or text in own_texts or text in docs:
                continue
            docs.append(text)
            teacher.append(math.nan)  # a random negative: no teacher score
        if len(docs) < group_size:
            raise ValueError(
                f"{rec.where}: cannot fill a group of {group_size} for task {rec.task.name} "
                f"(only {len(pool)} records); lower group_size or add data"
            )
        return docs, teacher


def _load_teacher_vectors(
    src: DataSource, records: Sequence[TrainRecord], documents: dict[tuple[str, str], np.ndarray]
) -> tuple[str, list[np.ndarray | None]]:
    """Read ``src.teacher_embeddings``: adds its document vectors to ``documents`` (keyed by task name and
    text) and returns the teacher's name and the query vector of each record (row ``i`` = record ``i``)."""
    path = Path(src.teacher_embeddings or "")
    te = TeacherEmbeddings.load(path)
    if te.score_kind != "cosine":
        raise InputError(
            path, None, f"teacher {te.teacher!r} gives {te.score_kind} scores, not a bi-encoder's"
        )
    if len(te.query_texts) < len(records):
        raise InputError(
            path, None, f"{len(te.query_texts)} queries for {len(records)} records of {src.path}"
        )
    for row, rec in enumerate(records):
        if te.query_texts[row] != rec.query:
            raise InputError(
                path, None, f"query row {row} does not match {rec.where}: mined from another file?"
            )
    for text, task, vec in zip(te.document_texts, te.document_tasks, te.document_emb, strict=True):
        documents[(task or src.task or "", text)] = vec
    return te.teacher, list(te.query_emb[: len(records)])
