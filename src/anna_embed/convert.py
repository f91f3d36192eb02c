"""Converters from public data layouts into training records ``{query, positive, negative?, task, ...}``.

The recipe trains on non-retrieval tasks too, each turned into (query, positive, negatives) triples:

* **classification** (``{text, label}``): the positive is another text with the same label, the
  negatives are texts with other labels (BGE-EN-ICL's symmetric classification); ``label`` is kept so
  few-shot examples can answer with it.
* **clustering** (``{sentence, label}`` rows or ``{sentences, labels}`` sets): as classification.
* **sts** (``{sentence1, sentence2, score}`` or ``{query, positive, score}``): pairs scoring at least
  a threshold become (query, positive), both ways round by default.
* **nli**: triplets ``{query, positive, negative}`` pass through; labelled pairs
  ``{premise|sentence1, hypothesis|sentence2, label}`` are grouped by premise, entailments becoming
  positives and contradictions negatives.
* **beir** (``corpus.jsonl`` + ``queries.jsonl`` + ``qrels/*.tsv``): one record per query with all its
  relevant documents as positives.
* **pairs** (``{query, positive, negative?, ...}``, the layout of ``data/train``): the task is added and
  other fields dropped.

Every record carries its task name and type (and the instruction when the task is not registered).
Random choices for record ``i`` come from ``np.random.default_rng((seed, i))``.
"""

from __future__ import annotations

import argparse
import logging
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from anna_embed.beir import iter_qrels, read_documents
from anna_embed.io import InputError, iter_jsonl, write_jsonl
from anna_embed.tasks import find_task

logger = logging.getLogger(__name__)

Record = dict[str, Any]
#: SNLI/MNLI integer labels (0 entailment, 1 neutral, 2 contradiction) and their names.
NLI_LABELS: dict[Any, str] = {0: "entailment", 1: "neutral", 2: "contradiction"}


def _task_fields(task: str, type_: str, instruction: str | None) -> Record:
    """``task``/``type`` (+ ``instruction``), checked against the registry."""
    spec = find_task(task)
    if spec is None:
        if instruction is None:
            raise ValueError(f"task {task!r} is not registered: give an instruction for it")
        return {"task": task, "type": type_, "instruction": instruction}
    if spec.type != type_:
        raise ValueError(f"task {spec.name!r} is a {spec.type} task, not {type_}")
    return {"task": spec.name, "type": spec.type} | (
        {} if instruction is None else {"instruction": instruction}
    )


def _string(rec: Record, name: str, path: Path, line: int) -> str:
    value = rec.get(name)
    if not isinstance(value, str) or not value.strip():
        raise InputError(path, line, "expected a non-empty string", field=name)
    return value


def _label(rec: Record, path: Path, line: int, names: tuple[str, ...] = ("label_text", "label")) -> str:
    for name in names:
        value = rec.get(name)
        if isinstance(value, str) and value.strip():
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
    raise InputError(path, line, "missing, or not a string or integer", field=names[-1])


def labelled_texts(path: str | Path) -> list[tuple[str, str]]:
    """``(text, label)`` rows from ``{text, label}``, ``{sentence, label}`` or ``{sentences, labels}``."""
    p = Path(path)
    rows: list[tuple[str, str]] = []
    for line, rec in iter_jsonl(p, skip_blank=True):
        if "sentences" in rec:
            texts, labels = rec.get("sentences"), rec.get("labels")
            if not isinstance(texts, list) or not isinstance(labels, list) or len(texts) != len(labels):
                raise InputError(p, line, "expected 'sentences' and 'labels' lists of equal length", "labels")
            for text, label in zip(texts, labels, strict=True):
                if not isinstance(text, str) or not text.strip() or isinstance(label, bool | float | None):
                    raise InputError(p, line, f"bad item ({text!r}, {label!r})", field="sentences")
                rows.append((text, str(label)))
        else:
            rows.append(
                (_string(rec, "sentence" if "sentence" in rec else "text", p, line), _label(rec, p, line))
            )
    return rows


def label_triplets(
    rows: list[tuple[str, str]],
    *,
    task: str,
    type_: str,
    instruction: str | None = None,
    num_negatives: int = 7,
    max_per_label: int | None = None,
    seed: int = 0,
    layout: Literal["text", "label"] = "text",
) -> Iterator[Record]:
    """Classification / clustering rows -> records: positive of the same label, negatives of others.

    ``layout="text"``: the positive is another text with the query's label, the negatives texts of other
    labels. ``layout="label"`` (BGE-EN-ICL's classification data): the positive is the label's own text,
    the negatives other labels' texts (so the group is a choice between labels). A label with a single
    text yields no record in the ``text`` layout (there is no positive for it). With ``max_per_label``
    only the first that-many texts of each label become queries (all texts stay eligible as positives
    and negatives).
    """
    if layout not in ("text", "label"):
        raise ValueError(f"layout must be 'text' or 'label', got {layout!r}")
    fields = _task_fields(task, type_, instruction)
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, (_, label) in enumerate(rows):
        by_label[label].append(i)
    if len(by_label) < 2:
        raise ValueError(f"{task}: need at least two labels, got {len(by_label)}")
    labels = np.array([label for _, label in rows])
    used: dict[str, int] = defaultdict(int)
    names = sorted(by_label)
    for i, (text, label) in enumerate(rows):
        same = by_label[label]
        if max_per_label is not None and used[label] >= max_per_label:
            continue
        rng = np.random.default_rng((seed, i))
        if layout == "label":
            used[label] += 1
            other = [n for n in names if n != label]
            picked = rng.choice(len(other), size=min(num_negatives, len(other)), replace=False)
            yield {
                "query": text,
                "positive": label,
                "negative": [other[int(j)] for j in picked],
                "label": label,
            } | fields
            continue
        if len(same) < 2:
            continue
        used[label] += 1
        pos = same[int(rng.integers(len(same) - 1))]
        pos = pos if pos != i else same[-1]  # skip the query itself: draw from the others
        others = np.flatnonzero(labels != label)
        negs = rng.choice(others, size=min(num_negatives, len(others)), replace=False)
        yield {
            "query": text,
            "positive": rows[pos][0],
            "negative": [rows[int(j)][0] for j in negs],
            "label": label,
        } | fields


def sts_pairs(
    path: str | Path,
    *,
    task: str,
    instruction: str | None = None,
    threshold: float = 4.0,
    both_directions: bool = True,
) -> Iterator[Record]:
    """STS pairs scoring at least ``threshold`` (0-5 scale) -> (query, positive) records."""
    p = Path(path)
    fields = _task_fields(task, "STS", instruction)
    for line, rec in iter_jsonl(p, skip_blank=True):
        a_key, b_key = ("sentence1", "sentence2") if "sentence1" in rec else ("query", "positive")
        a, b = _string(rec, a_key, p, line), _string(rec, b_key, p, line)
        score = rec.get("score")
        if isinstance(score, bool) or not isinstance(score, int | float):
            raise InputError(p, line, "expected a number", field="score")
        if score >= threshold:
            yield {"query": a, "positive": b} | fields
            if both_directions:
                yield {"query": b, "positive": a} | fields


def nli_triplets(path: str | Path, *, task: str = "NLI", instruction: str | None = None) -> Iterator[Record]:
    """NLI triplets (passed through) or labelled pairs grouped by premise -> records."""
    p = Path(path)
    fields = _task_fields(task, "STS", instruction)
    grouped: dict[str, dict[str, list[str]]] = {}
    for line, rec in iter_jsonl(p, skip_blank=True):
        if "query" in rec:
            out = {"query": _string(rec, "query", p, line), "positive": _string(rec, "positive", p, line)}
            if rec.get("negative") is not None:
                out["negative"] = _string(rec, "negative", p, line)
            yield out | fields
            continue
        premise = _string(rec, "premise" if "premise" in rec else "sentence1", p, line)
        hypothesis = _string(rec, "hypothesis" if "hypothesis" in rec else "sentence2", p, line)
        label = NLI_LABELS.get(rec.get("label"), rec.get("label"))
        if label not in ("entailment", "neutral", "contradiction"):
            raise InputError(
                p, line, f"expected entailment/neutral/contradiction or 0/1/2, got {label!r}", "label"
            )
        group = grouped.setdefault(premise, {"entailment": [], "contradiction": [], "neutral": []})
        group[label].append(hypothesis)
    for premise, group in grouped.items():
        if group["entailment"]:
            out = {"query": premise, "positive": group["entailment"]}
            if group["contradiction"]:
                out["negative"] = group["contradiction"]
            yield out | fields


def beir_records(
    corpus: str | Path,
    queries: str | Path,
    qrels: str | Path,
    *,
    task: str,
    instruction: str | None = None,
    min_score: int = 1,
) -> Iterator[Record]:
    """BEIR retrieval data -> one record per judged query, all documents with ``score >= min_score``.

    Documents are joined by :func:`anna_embed.beir.document_text` (as mteb's evaluator joins them); the
    qrels file is read by :func:`anna_embed.beir.iter_qrels`, and each of its lines must name a query and
    a document the other files hold.
    """
    fields = _task_fields(task, "Retrieval", instruction)
    docs = read_documents(corpus)
    texts = {
        str(rec["_id"]): _string(rec, "text", Path(queries), line)
        for line, rec in iter_jsonl(queries, required=("_id",))
    }
    relevant: dict[str, list[str]] = defaultdict(list)
    for j in iter_qrels(qrels):
        if j.document_id not in docs:
            raise InputError(
                qrels, j.line, f"document {j.document_id!r} is not in {corpus}", field="corpus-id"
            )
        if j.query_id not in texts:
            raise InputError(qrels, j.line, f"query {j.query_id!r} is not in {queries}", field="query-id")
        if j.score >= min_score:
            relevant[j.query_id].append(docs[j.document_id])
    for qid, positives in relevant.items():
        yield {"query": texts[qid], "positive": positives} | fields


def pair_records(
    path: str | Path, *, task: str, type_: str, instruction: str | None = None
) -> Iterator[Record]:
    """``{query, positive, negative?, ...}`` records with the task added and other fields dropped."""
    p = Path(path)
    fields = _task_fields(task, type_, instruction)
    for line, rec in iter_jsonl(p, required=("query", "positive"), skip_blank=True):
        out = {"query": _string(rec, "query", p, line), "positive": rec["positive"]}
        if rec.get("negative") not in (None, [], ""):
            out["negative"] = rec["negative"]
        yield out | fields


def add_cli(verb: str, parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """Register ``anna-embed convert KIND``."""
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="KIND")

    def common(name: str, help_: str, task_default: str | None = None) -> argparse.ArgumentParser:
        sub = kinds.add_parser(name, help=help_, description=help_)
        sub.add_argument("--out", required=True, help="training records JSONL")
        sub.add_argument("--task", required=task_default is None, default=task_default, help="task name")
        sub.add_argument("--instruction", help="instruction (required for tasks the registry lacks)")
        if name != "beir":
            sub.add_argument("--input", required=True, help="input JSONL")
        return sub

    for name, type_ in (("classification", "Classification"), ("clustering", "Clustering")):
        sub = common(name, f"{type_} data -> same-label positive, other-label negatives")
        sub.add_argument("--num-negatives", type=int, default=7)
        sub.add_argument("--max-per-label", type=int, default=None, help="queries per label (default: all)")
        sub.add_argument("--seed", type=int, default=0)
        sub.set_defaults(type_=type_)
    sub = common("sts", "STS pairs above a score threshold -> (query, positive)")
    sub.add_argument("--threshold", type=float, default=4.0)
    sub.add_argument("--one-direction", action="store_true", help="do not add the swapped pair")
    common("nli", "NLI triplets or labelled pairs -> (premise, entailment, contradiction)", "NLI")
    sub = common("beir", "BEIR corpus + queries + qrels -> (query, relevant documents)")
    for flag in ("--corpus", "--queries", "--qrels"):
        sub.add_argument(flag, required=True)
    sub = common("pairs", "{query, positive, negative?} records -> add the task")
    sub.add_argument("--type", dest="type_", default="Retrieval", help="task type for unregistered tasks")

    def main(args: argparse.Namespace) -> int:
        if args.kind in ("classification", "clustering"):
            records = label_triplets(
                labelled_texts(args.input),
                task=args.task,
                type_=args.type_,
                instruction=args.instruction,
                num_negatives=args.num_negatives,
                max_per_label=args.max_per_label,
                seed=args.seed,
            )
        elif args.kind == "sts":
            records = sts_pairs(
                args.input,
                task=args.task,
                instruction=args.instruction,
                threshold=args.threshold,
                both_directions=not args.one_direction,
            )
        elif args.kind == "nli":
            records = nli_triplets(args.input, task=args.task, instruction=args.instruction)
        elif args.kind == "beir":
            records = beir_records(
                args.corpus, args.queries, args.qrels, task=args.task, instruction=args.instruction
            )
        else:
            records = pair_records(args.input, task=args.task, type_=args.type_, instruction=args.instruction)
        n = write_jsonl(args.out, records)
        logger.info("convert %s: %d records -> %s", args.kind, n, args.out)
        return 0

    return main
