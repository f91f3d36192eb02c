"""Few-shot examples for ``encode`` and ``eval``: candidates from a task folder's training data, and the
seeded draw that picks them.

The draw returns examples whole; the model clips and fits them to its token budgets
(:mod:`anna_embed.model.prompting`), the rule training uses too.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path

from anna_embed.beir import iter_qrels, queries_file, read_documents
from anna_embed.io import iter_jsonl

#: Default seed of the few-shot draw of ``anna-embed encode`` and ``anna-embed eval`` (one value for both).
DEFAULT_SHOT_SEED = 42


def few_shot_pool(task_type: str, folder: str | os.PathLike[str] | None) -> tuple[list[tuple[str, str]], str]:
    """Candidate ``(query, response)`` few-shot pairs from a task folder's *training* data, and their file.

    Per type (the first file that yields pairs wins):

    * Classification: ``(text, label text)`` from ``train.jsonl``;
    * STS: ``(sentence1, sentence2)`` pairs scoring at least 80% of the scale's top from ``train.jsonl``,
      else ``validation.jsonl``;
    * PairClassification: positive pairs of ``train.jsonl``, ``dev.jsonl`` or ``validation.jsonl`` (never
      TwitterURLCorpus' ``train_lowercased.jsonl``, which MTEB scores as test data);
    * Reranking: ``(query, first positive)`` from ``train.jsonl``;
    * Retrieval: ``(query, first relevant document)`` from ``qrels/train.tsv``, the train queries
      (:func:`anna_embed.beir.queries_file`) and ``corpus.jsonl``, the document joined as mteb joins it
      (:func:`anna_embed.beir.document_text`).

    Test data is never used. Clustering, Summarization and folders without training data give ``[]``;
    callers then encode zero-shot (the documented fallback) and record it.

    Args:
        task_type: The task's type (:data:`anna_embed.tasks.TASK_TYPES`).
        folder: The task's local folder (None: no pool).
    """
    if folder is None:
        return [], "none (no local folder)"
    folder = Path(folder)
    for name in ("train.jsonl", "dev.jsonl", "validation.jsonl"):
        path = folder / name
        if not path.is_file() or (task_type == "Classification" and name != "train.jsonl"):
            continue
        rows = [r for _, r in iter_jsonl(path, skip_blank=True)]
        pool: list[tuple[str, str]] = []
        if task_type == "Classification":
            pool = [(str(r["text"]), str(r.get("label_text", r.get("label")))) for r in rows if r.get("text")]
        elif task_type == "STS" and rows:
            top = max(float(r["score"]) for r in rows)
            pool = [(r["sentence1"], r["sentence2"]) for r in rows if float(r["score"]) >= 0.8 * top]
        elif task_type == "PairClassification":
            pool = [(r["sentence1"], r["sentence2"]) for r in rows if int(r.get("label", 0)) == 1]
        elif task_type == "Reranking":
            pool = [(r["query"], r["positive"][0]) for r in rows if r.get("positive")]
        if pool:
            return pool, name
    qrels_path = folder / "qrels" / "train.tsv"
    if task_type == "Retrieval" and qrels_path.is_file():
        queries_path = queries_file(folder, "train")
        queries = {str(r["_id"]): r["text"] for _, r in iter_jsonl(queries_path, required=("_id", "text"))}
        wanted: dict[str, str] = {}  # query -> its relevant document with the smallest id
        for j in iter_qrels(qrels_path):
            if j.score > 0 and j.query_id in queries:
                wanted[j.query_id] = min(j.document_id, wanted.get(j.query_id, j.document_id))
        docs = read_documents(folder / "corpus.jsonl", ids=set(wanted.values()))
        pool = [(queries[q], docs[d]) for q, d in wanted.items() if d in docs]
        return pool, f"{queries_path.name} + qrels/train.tsv"
    return [], "none (no training split)"


def sample_examples(
    pool: Sequence[tuple[str, str]], k: int, *, seed: int = DEFAULT_SHOT_SEED, task: str = ""
) -> list[tuple[str, str]]:
    """``k`` examples drawn without replacement from ``pool``, by a RNG seeded with ``(seed, task)``.

    Distinct responses come first (for classification: one example per label before any repeat). The
    examples come back whole: the model clips and fits them by tokens
    (:meth:`anna_embed.model.embedder.Embedder.query_prefix`), the rule training uses too. The same arguments
    always give the same examples, so every query of an evaluation shares one prefix (and its KV cache).

    Args:
        pool: Candidate ``(query, response)`` pairs (:func:`few_shot_pool`).
        k: How many to draw (0: none).
        seed: The draw's seed.
        task: The task's name, mixed into the seed.
    """
    if k <= 0 or not pool:
        return []
    rng = random.Random(f"{seed}:{task}")
    order = list(range(len(pool)))
    rng.shuffle(order)
    chosen: list[int] = []
    seen: set[str] = set()
    for i in order:  # distinct responses first
        if len(chosen) == k:
            break
        if pool[i][1] not in seen:
            chosen.append(i)
            seen.add(pool[i][1])
    for i in order:  # then anything not yet chosen
        if len(chosen) == k:
            break
        if i not in chosen:
            chosen.append(i)
    return [pool[i] for i in chosen]
