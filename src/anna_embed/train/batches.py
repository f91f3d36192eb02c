"""Batches: the epoch's plan (task-homogeneous, seeded), and collation of record indices into prompt strings.

:func:`plan_batches` cuts an epoch into batches of one task each, a pure function of ``(seed, epoch)``;
:func:`collate` turns a batch's records into the :class:`TrainBatch` the training step feeds the model
(prompts through :mod:`anna_embed.prompts`, shots fitted to the model's budgets, the group of documents of
each query drawn by :meth:`anna_embed.train.data.TrainingSet.sample_group`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from anna_embed.prompts import Example
from anna_embed.tasks import TaskSpec
from anna_embed.train.data import GROUP_ONLY_TYPES, STREAM_BATCHES, TrainingSet, rng_for

if TYPE_CHECKING:
    from anna_embed.model.tokenization import FittedExamples

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainBatch:
    """What one process feeds the model for one step.

    Attributes:
        queries: ``B`` full query prompts (few-shot block + instruction + query).
        documents: ``B * G`` full document prompts, query ``i``'s group at ``[i * G, (i + 1) * G)``.
        teacher_scores: ``[B, G]`` teacher scores of each query's group, NaN where unknown.
        task: The batch's task.
        in_batch: Whether other queries' documents serve as negatives.
        group_size: ``G`` (documents per query), the geometry the batch was drawn with.
        indices: The record indices in this batch.
        doc_texts: The ``B * G`` documents' raw texts (no prompt), same order as ``documents``.
        positives: Each query's own positive texts (every one the record lists, not only the one drawn).
        query_extra: Per query, the tokens its few-shot block adds (allowed on top of ``max_length``).
        document_extra: The same per document (symmetric tasks carry their query's examples).
        zero_shot_queries: The query prompts without examples (to check examples never cut a query).
        examples_dropped: Whole examples dropped in this batch because the block exceeded its budget.
        teacher_q_emb: ``[B, Dt]`` the teacher's query vectors (None unless every query and document of
            the batch has one, see :meth:`TrainingSet.teacher_vectors`).
        teacher_d_emb: ``[B * G, Dt]`` the teacher's document vectors, same order as ``documents``.
    """

    queries: list[str]
    documents: list[str]
    teacher_scores: np.ndarray
    task: str
    in_batch: bool
    group_size: int
    indices: list[int] = field(default_factory=list)
    doc_texts: list[str] = field(default_factory=list)
    positives: list[tuple[str, ...]] = field(default_factory=list)
    query_extra: list[int] = field(default_factory=list)
    document_extra: list[int] = field(default_factory=list)
    zero_shot_queries: list[str] = field(default_factory=list)
    examples_dropped: int = 0
    teacher_q_emb: np.ndarray | None = None
    teacher_d_emb: np.ndarray | None = None


class Prompter(Protocol):
    """Builds a model's prompts with its few-shot budget (the
    :class:`~anna_embed.model.embedder.Embedder` is one)."""

    def fit_examples(
        self, task: TaskSpec, *, instruction: str | None = None, examples: Sequence[Example] = ()
    ) -> FittedExamples: ...

    def document_prefix(
        self, task: TaskSpec, *, instruction: str | None = None, examples: Sequence[Example] = ()
    ) -> str: ...

    def example_tokens(self, prefix: str) -> int: ...


def collate(
    data: TrainingSet,
    indices: Sequence[int],
    *,
    seed: int,
    epoch: int,
    group_size: int,
    max_shots: int,
    prompter: Prompter | None = None,
    in_batch: str = "by_type",
    instructions: bool = True,
) -> TrainBatch:
    """Turn record indices of ``data`` (all of one task) into prompt strings (:mod:`anna_embed.prompts`).

    Args:
        data: The training set.
        indices: Records of one task.
        seed: Run seed.
        epoch: Epoch number.
        group_size: ``G``.
        max_shots: ``K`` of ``k ~ U{0..K}``.
        prompter: The model (its tokenizer, templates and few-shot budgets; required with
            ``instructions``): shots are fitted by ``prompter.fit_examples``, the rule ``encode`` and
            ``eval`` follow, so a query never loses a token of its own to examples.
        in_batch: ``"by_type"`` (in-batch negatives except for classification/clustering),
            ``"always"`` or ``"never"``.
        instructions: False for models without instructions (encoders): raw texts, no shots.
    """
    if instructions and prompter is None:
        raise ValueError("collate needs a prompter (the Embedder) to fit few-shot examples")
    q_extra: list[int] = []
    d_extra: list[int] = []
    zero_shot: list[str] = []
    dropped = 0
    tasks = {data.records[i].task.name for i in indices}
    if len(tasks) != 1:
        raise ValueError(f"a batch must hold one task, got {sorted(tasks)}")
    queries, documents, teacher, raw_docs = [], [], [], []
    for i in indices:
        rec = data.records[i]
        docs, scores = data.sample_group(i, seed=seed, epoch=epoch, group_size=group_size)
        teacher.append(scores)
        raw_docs.extend(docs)
        if not instructions or prompter is None:
            queries.append(rec.query)
            documents.extend(docs)
            zero_shot.append(rec.query)
            q_extra.append(0)
            d_extra.extend([0] * len(docs))
            continue
        shots = [
            (data.records[s].query, data.records[s].response)
            for s in data.sample_shots(i, seed=seed, epoch=epoch, max_shots=max_shots)
        ]
        fitted = prompter.fit_examples(rec.task, instruction=rec.instruction, examples=shots)
        queries.append(fitted.prefix + rec.query)
        q_extra.append(fitted.example_tokens)
        dropped += fitted.dropped
        zero_shot.append(prompter.fit_examples(rec.task, instruction=rec.instruction).prefix + rec.query)
        # symmetric tasks: every text is a query, with the same examples (as mteb evaluates them)
        d_prefix = prompter.document_prefix(
            rec.task, instruction=rec.instruction, examples=shots if rec.task.symmetric else ()
        )
        documents.extend(d_prefix + d for d in docs)
        d_extra.extend([prompter.example_tokens(d_prefix)] * len(docs))
    spec = data.records[indices[0]].task
    use_in_batch = uses_in_batch(spec, in_batch)
    t_q, t_d = data.teacher_vectors(indices, raw_docs)
    return TrainBatch(
        queries=queries,
        documents=documents,
        teacher_scores=np.asarray(teacher, dtype=np.float64).reshape(len(indices), group_size),  # [B, G]
        task=spec.name,
        in_batch=use_in_batch,
        group_size=group_size,
        indices=list(indices),
        doc_texts=raw_docs,
        positives=[data.records[i].positives for i in indices],
        query_extra=q_extra,
        document_extra=d_extra,
        zero_shot_queries=zero_shot,
        examples_dropped=dropped,
        teacher_q_emb=t_q,
        teacher_d_emb=t_d,
    )


def uses_in_batch(task: TaskSpec, mode: str) -> bool:
    """Whether a batch of ``task`` scores other queries' documents: ``mode`` ``always``/``never``, or
    ``by_type`` (every type but :data:`GROUP_ONLY_TYPES`)."""
    return {"always": True, "never": False}.get(mode, task.type not in GROUP_ONLY_TYPES)


def own_positive_mask(
    positives: Sequence[Sequence[str]],
    doc_texts: Sequence[str],
    *,
    group_size: int,
    query_offset: int = 0,
) -> list[list[bool]]:
    """``[B][N]``: True where document ``j``'s text equals one of query ``i``'s own positives.

    ``doc_texts`` are the ``N = M * G`` raw document texts the queries are scored against (all processes'
    under data parallelism, in rank order; ``query_offset`` is the group index of ``positives[0]``). The
    query's target column (its drawn positive, ``(query_offset + i) * G``) is never marked; every other
    copy of a positive is, so the loss does not push a query away from its own positive (mining draws
    negatives from other records' positives, and a duplicate pair can sit in the same batch).

    Example:
        >>> own_positive_mask([("a",), ("b",)], ["a", "b", "b", "a"], group_size=2)
        [[False, False, False, True], [False, True, False, False]]
    """
    out = []
    for i, pos in enumerate(positives):
        own = set(pos)
        target = (query_offset + i) * group_size
        out.append([j != target and text in own for j, text in enumerate(doc_texts)])
    return out


def plan_batches(task_names: Sequence[str], *, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Task-homogeneous batches of one epoch, a pure function of ``(seed, epoch)``.

    Records are shuffled within their task and cut into full batches (a task's remainder is dropped for
    this epoch; another epoch draws a different remainder); the batches of all tasks are then shuffled
    together, so tasks are mixed in proportion to their size.

    Args:
        task_names: Task of each record (index = record index).
        batch_size: Global batch size (all processes together).
        seed: Run seed.
        epoch: Epoch number.
    """
    by_task: dict[str, list[int]] = defaultdict(list)
    for i, name in enumerate(task_names):
        by_task[name].append(i)
    rng = rng_for(seed, epoch, 0, stream=STREAM_BATCHES)
    batches: list[list[int]] = []
    for name in sorted(by_task):
        members = np.asarray(by_task[name])[rng.permutation(len(by_task[name]))]
        n_full = len(members) // batch_size
        if n_full == 0:
            logger.warning("task %s has %d records < batch size %d: skipped", name, len(members), batch_size)
        batches.extend(members[k * batch_size : (k + 1) * batch_size].tolist() for k in range(n_full))
    order = rng.permutation(len(batches))
    return [batches[int(k)] for k in order]
