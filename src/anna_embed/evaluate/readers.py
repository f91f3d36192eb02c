"""Readers for the local task-folder layout: one function per task type, each validating as it reads.

Every reader returns plain columns (lists) in the structure the mteb evaluator of that type needs; errors
name the file, the 1-based line and the field (:class:`anna_embed.io.InputError`). The layout is
documented in ``docs/EVALUATION.md``; :mod:`anna_embed.evaluate.tasks` turns the columns into mteb tasks.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from anna_embed.beir import document_fields, queries_file, read_qrels
from anna_embed.io import InputError, iter_jsonl
from anna_embed.tasks import TASK_TYPES

#: Extra files appended to a task's test split, when the MTEB test set is the union of several local files.
EXTRA_TEST_FILES: dict[str, tuple[str, ...]] = {
    # MTEB's TwitterURLCorpus "test" is the official test (cased) plus the official train (lowercased).
    "TwitterURLCorpus": ("train_lowercased.jsonl",),
}


class TaskFolderError(InputError):
    """A task folder that is missing, incomplete or does not match the task's type."""


def _records(path: Path, required: tuple[str, ...], limit: int | None = None) -> Iterator[tuple[int, dict]]:
    for n, (lineno, rec) in enumerate(iter_jsonl(path, required=required)):
        if limit is not None and n >= limit:
            return
        yield lineno, rec


def _number(path: Path, lineno: int, rec: dict, field: str) -> float:
    value = rec[field]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(path, lineno, f"expected a number, got {value!r}", field=field)
    return float(value)


def _string(path: Path, lineno: int, rec: dict, field: str) -> str:
    value = rec[field]
    if not isinstance(value, str):
        raise InputError(path, lineno, f"expected a string, got {type(value).__name__}", field=field)
    return value


#: Other names a held-out split goes by: ``validation`` reads ``dev.jsonl`` where no ``validation.jsonl`` is.
SPLIT_ALIASES = {"validation": ("dev",)}


def _test_files(folder: Path, name: str, split: str) -> list[Path]:
    main = folder / f"{split}.jsonl"
    for alias in SPLIT_ALIASES.get(split, ()):
        if not main.is_file() and (folder / f"{alias}.jsonl").is_file():
            main = folder / f"{alias}.jsonl"
    if not main.is_file():
        raise TaskFolderError(main, None, "file not found")
    extra = [folder / f for f in EXTRA_TEST_FILES.get(name, ()) if split == "test"]
    return [main, *[p for p in extra if p.is_file()]]


# --------------------------------------------------------------------------------------------- readers


def read_sts(folder: Path, name: str, split: str = "test", limit: int | None = None) -> dict[str, dict]:
    """``{lang: {"sentence1": [...], "sentence2": [...], "score": [...]}}`` (lang ``default`` when absent)."""
    out: dict[str, dict[str, list]] = defaultdict(lambda: {"sentence1": [], "sentence2": [], "score": []})
    for path in _test_files(folder, name, split):
        for lineno, rec in _records(path, ("sentence1", "sentence2", "score"), limit):
            cols = out[str(rec.get("lang", "default"))]
            cols["sentence1"].append(_string(path, lineno, rec, "sentence1"))
            cols["sentence2"].append(_string(path, lineno, rec, "sentence2"))
            cols["score"].append(_number(path, lineno, rec, "score"))
    return dict(out)


def read_pairs(folder: Path, name: str, split: str = "test", limit: int | None = None) -> dict[str, list]:
    """``{"sentence1", "sentence2", "labels"}`` columns; labels must be 0 or 1."""
    cols: dict[str, list] = {"sentence1": [], "sentence2": [], "labels": []}
    for path in _test_files(folder, name, split):
        for lineno, rec in _records(path, ("sentence1", "sentence2", "label"), limit):
            if rec["label"] not in (0, 1) or isinstance(rec["label"], bool):
                raise InputError(path, lineno, f"expected 0 or 1, got {rec['label']!r}", field="label")
            cols["sentence1"].append(_string(path, lineno, rec, "sentence1"))
            cols["sentence2"].append(_string(path, lineno, rec, "sentence2"))
            cols["labels"].append(int(rec["label"]))
    return cols


def read_classification(folder: Path, split: str, limit: int | None = None) -> dict[str, dict[str, list]]:
    """``{lang: {"text": [...], "label": [...]}}`` for one split (string or integer labels, not mixed)."""
    path = folder / f"{split}.jsonl"
    if not path.is_file():
        raise TaskFolderError(path, None, f"file not found (a Classification task needs its {split} split)")
    out: dict[str, dict[str, list]] = defaultdict(lambda: {"text": [], "label": []})
    kind: type | None = None
    for lineno, rec in _records(path, ("text", "label"), limit):
        label = rec["label"]
        if isinstance(label, bool) or not isinstance(label, int | str):
            raise InputError(path, lineno, f"expected a string or integer, got {label!r}", field="label")
        if kind is not None and type(label) is not kind:
            raise InputError(path, lineno, "labels mix strings and integers", field="label")
        kind = type(label)
        cols = out[str(rec.get("lang", "default"))]
        cols["text"].append(_string(path, lineno, rec, "text"))
        cols["label"].append(label)
    return dict(out)


def read_clustering_sets(folder: Path, split: str = "test", limit: int | None = None) -> dict[str, list]:
    """``{"sentences": [[...], ...], "labels": [[...], ...]}``: one entry per set; ``limit`` caps each set.

    A flat file (one ``{sentence|text, label}`` per line) is read as a single set.
    """
    path = folder / f"{split}.jsonl"
    if not path.is_file():
        raise TaskFolderError(path, None, "file not found")
    sets: dict[str, list] = {"sentences": [], "labels": []}
    flat_s: list[str] = []
    flat_l: list = []
    for lineno, rec in iter_jsonl(path):
        if isinstance(rec.get("sentences"), list):
            labels = rec.get("labels")
            if not isinstance(labels, list) or len(labels) != len(rec["sentences"]):
                raise InputError(path, lineno, "missing or not as long as 'sentences'", field="labels")
            sets["sentences"].append(rec["sentences"][:limit])
            sets["labels"].append([str(x) for x in labels][:limit])
        else:
            text_field = "sentence" if "sentence" in rec else "text"
            for field in (text_field, "label"):
                if field not in rec:
                    raise InputError(path, lineno, "missing (or use 'sentences' lists)", field=field)
            flat_s.append(_string(path, lineno, rec, text_field))
            flat_l.append(str(rec["label"]))
    if flat_s:
        sets["sentences"].append(flat_s[:limit])
        sets["labels"].append(flat_l[:limit])
    return sets


def read_beir(folder: Path, split: str = "test", limit: int | None = None) -> dict[str, Any]:
    """BEIR folder -> ``{"corpus": cols, "queries": cols, "relevant_docs": {qid: {did: score}}}``.

    Queries without a qrel are dropped (as mteb's hub loader does). ``limit`` keeps the first ``limit``
    queries and a corpus of their relevant documents plus the first ``20 * limit`` other documents.
    """
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        raise TaskFolderError(qrels_path, None, "file not found")
    qrels = read_qrels(qrels_path)
    queries_path = queries_file(folder, split)
    queries: dict[str, list] = {"id": [], "text": []}
    for lineno, rec in iter_jsonl(queries_path, required=("_id", "text")):
        qid = str(rec["_id"])
        if qid in qrels and (limit is None or len(queries["id"]) < limit):
            queries["id"].append(qid)
            queries["text"].append(_string(queries_path, lineno, rec, "text"))
    keep_docs = {d for q in queries["id"] for d in qrels[q]} if limit is not None else None
    corpus: dict[str, list] = {"id": [], "title": [], "text": []}
    corpus_path = folder / "corpus.jsonl"
    n_other = 0
    for lineno, rec in iter_jsonl(corpus_path, required=("_id",)):
        did, title, text = document_fields(corpus_path, lineno, rec)  # mteb joins them (beir.document_text)
        if keep_docs is not None and did not in keep_docs:
            if n_other >= 20 * (limit or 0):
                continue
            n_other += 1
        corpus["id"].append(did)
        corpus["title"].append(title)
        corpus["text"].append(text)
    relevant = {q: qrels[q] for q in queries["id"]}
    return {"corpus": corpus, "queries": queries, "relevant_docs": relevant}


def read_reranking(folder: Path, split: str = "test", limit: int | None = None) -> dict[str, Any]:
    """``{query, positive, negative}`` lines -> corpus/queries/relevant_docs/top_ranked, ids as mteb's.

    Mirrors mteb's old-format reranking conversion: query ``{split}_query{i}``, positives first
    (``apositive_...``) then negatives, lines without a positive or a negative skipped.
    """
    if (folder / "corpus.jsonl").is_file():
        data = read_beir(folder, split, limit)
        data["top_ranked"] = _read_top_ranked(folder / "top_ranked" / f"{split}.jsonl")
        return data
    path = folder / f"{split}.jsonl"
    corpus: dict[str, list] = {"id": [], "title": [], "text": []}
    queries: dict[str, list] = {"id": [], "text": []}
    relevant: dict[str, dict[str, int]] = {}
    top_ranked: dict[str, list[str]] = {}
    for lineno, rec in iter_jsonl(path, required=("query",)):
        if limit is not None and len(queries["id"]) >= limit:
            break
        for field in ("positive", "negative"):
            if not isinstance(rec.get(field), list):
                raise InputError(path, lineno, "missing or not a list of texts", field=field)
        if not rec["positive"] or not rec["negative"]:
            continue  # mteb drops queries without a positive or without a negative
        qid = f"{split}_query{len(queries['id'])}"  # numbered after skipping, as mteb does
        queries["id"].append(qid)
        queries["text"].append(_string(path, lineno, rec, "query"))
        relevant[qid], top_ranked[qid] = {}, []
        for prefix, docs, rel in (("apositive", rec["positive"], 1), ("negative", rec["negative"], 0)):
            for i, text in enumerate(docs):
                did = f"{prefix}_{qid}_{i:05d}"
                corpus["id"].append(did)
                corpus["title"].append("")
                corpus["text"].append(text)
                relevant[qid][did] = rel
                top_ranked[qid].append(did)
    return {"corpus": corpus, "queries": queries, "relevant_docs": relevant, "top_ranked": top_ranked}


def _read_top_ranked(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for lineno, rec in iter_jsonl(path, required=("query-id", "corpus-ids")):
        if not isinstance(rec["corpus-ids"], list):
            raise InputError(path, lineno, "expected a list of document ids", field="corpus-ids")
        out[str(rec["query-id"])] = [str(d) for d in rec["corpus-ids"]]
    return out


def read_summarization(folder: Path, split: str = "test", limit: int | None = None) -> dict[str, list]:
    """``{"text", "human_summaries", "machine_summaries", "relevance"}`` columns."""
    path = folder / f"{split}.jsonl"
    fields = ("text", "human_summaries", "machine_summaries", "relevance")
    cols: dict[str, list] = {f: [] for f in fields}
    for lineno, rec in _records(path, fields, limit):
        if len(rec["relevance"]) != len(rec["machine_summaries"]):
            raise InputError(path, lineno, "must have one score per machine summary", field="relevance")
        for f in fields:
            cols[f].append(rec[f])
    return cols


def read_task_info(path: Path) -> dict[str, Any]:
    """A user's folder's optional ``task.json`` (``{"type": ..., "instruction": ...}``); ``{}`` without one.

    Raises:
        TaskFolderError: Malformed JSON (line and column named), not an object, an unknown ``type`` or an
            ``instruction`` that is not a string (field named).
    """
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise TaskFolderError(path, err.lineno, f"malformed JSON ({err.msg} at column {err.colno})") from None
    except UnicodeDecodeError as err:
        raise TaskFolderError(path, None, f"invalid UTF-8 at byte {err.start}") from None
    if not isinstance(info, dict):
        raise TaskFolderError(path, None, f"expected a JSON object, got {type(info).__name__}")
    ttype = info.get("type")
    if ttype is not None and ttype not in TASK_TYPES:
        raise TaskFolderError(path, None, f"{ttype!r} is not one of {', '.join(TASK_TYPES)}", field="type")
    instruction = info.get("instruction")
    if instruction is not None and not isinstance(instruction, str):
        raise TaskFolderError(path, None, f"expected a string, got {instruction!r}", field="instruction")
    return info
