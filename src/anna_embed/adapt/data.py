"""The data stage of ``anna-embed adapt``: the user's training data as records, a validation split, checks.

A BEIR folder becomes one record per judged training query (:func:`anna_embed.convert.beir_records`); a
pairs JSONL passes through :func:`anna_embed.convert.pair_records`. The validation queries are chosen by a
hash of their id (:func:`is_validation`) and written as a BEIR folder of their own, scored like the held-out
queries. Every input is checked before anything heavy runs; errors name the file, line and field.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

from anna_embed.adapt.config import AdaptConfig, PreparedData
from anna_embed.beir import QRELS_HEADER, iter_qrels, queries_file, read_qrels
from anna_embed.io import InputError, atomic_write, iter_jsonl, write_jsonl
from anna_embed.tasks import find_task

logger = logging.getLogger(__name__)

#: Instruction of a user's own retrieval task (used only by models that take instructions).
GENERIC_INSTRUCTION = "Given a query, find the documents that answer it."


def is_validation(query_id: str, fraction: float) -> bool:
    """Whether a query is held out for validation: the first 8 bytes of ``sha256(id)`` as a fraction of
    2^64 fall below ``fraction`` (a pure function of the id, so every run and seed holds out the same)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"data.validation_fraction must be in [0, 1), got {fraction}")
    return int.from_bytes(hashlib.sha256(query_id.encode("utf-8")).digest()[:8]) < fraction * 2**64


def _beir_parts(folder: Path, split: str) -> tuple[Path, Path, Path]:
    """``(corpus, queries, qrels)`` of a BEIR folder's split, each checked to exist; the queries file is
    :func:`anna_embed.beir.queries_file` (as the evaluation's reader has it)."""
    corpus, qrels = folder / "corpus.jsonl", folder / "qrels" / f"{split}.tsv"
    queries = queries_file(folder, split)
    for path in (corpus, queries, qrels):
        if not path.is_file():
            raise InputError(path, None, f"file not found (a BEIR folder's {split} split needs it)")
    return corpus, queries, qrels


def _split_qrels(qrels: Path, fraction: float, train_out: Path, val_out: Path) -> set[str]:
    """Copy ``qrels``' judgements into a training and a validation file (by :func:`is_validation` of the
    query id); returns the validation query ids."""
    judgements = list(iter_qrels(qrels))
    held = {j.query_id for j in judgements if is_validation(j.query_id, fraction)}
    for path, keep in ((train_out, False), (val_out, True)):
        with atomic_write(path) as fh:
            fh.write("\t".join(QRELS_HEADER) + "\n")
            fh.writelines(
                f"{j.query_id}\t{j.document_id}\t{j.score}\n"
                for j in judgements
                if (j.query_id in held) == keep
            )
    return held


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.unlink(missing_ok=True)
    try:
        dst.symlink_to(src.resolve())
    except OSError:
        shutil.copyfile(src, dst)


def prepare_data(cfg: AdaptConfig, out: Path) -> PreparedData:
    """The data stage: training records (and the validation folder) under ``out``; checks every input first.

    Raises:
        InputError: A missing file, or a malformed record or qrels line (file, line and field named).
        ValueError: Held-out queries that are the training queries themselves.
    """
    from anna_embed import convert

    d = cfg.data
    if not d.train:
        raise ValueError("give the training data: --train (a BEIR folder or a pairs JSONL)")
    src = Path(d.train)
    if not src.exists():
        raise InputError(src, None, "not found (expected a BEIR folder or a pairs JSONL file)")
    task = d.task or (src.name if src.is_dir() else src.stem)
    instruction = d.instruction if find_task(task) is not None else d.instruction or GENERIC_INSTRUCTION
    held_out = Path(d.eval) if d.eval else None
    if held_out is not None:
        _beir_parts(held_out, "test")
        if src.is_dir() and held_out.resolve() == src.resolve() and d.train_split == "test":
            raise ValueError(f"{held_out}: the held-out queries (qrels/test.tsv) are the training queries")
    folder = out / "data"
    folder.mkdir(parents=True, exist_ok=True)
    records_path, validation = folder / f"{task}.jsonl", None
    if src.is_dir():
        corpus, queries, qrels = _beir_parts(src, d.train_split)
        corpus = Path(d.corpus) if d.corpus else corpus
        if d.validation_fraction > 0:
            validation = folder / f"{task}-validation"
            (validation / "qrels").mkdir(parents=True, exist_ok=True)
            held = _split_qrels(
                qrels, d.validation_fraction, folder / "qrels-train.tsv", validation / "qrels" / "test.tsv"
            )
            if not held:
                raise ValueError(
                    f"data.validation_fraction = {d.validation_fraction} holds out none of the training "
                    f"queries of {qrels}: raise it or set it to 0"
                )
            _link_or_copy(corpus, validation / "corpus.jsonl")
            write_jsonl(
                validation / "queries.jsonl", (r for _, r in iter_jsonl(queries) if str(r.get("_id")) in held)
            )
            qrels = folder / "qrels-train.tsv"
        records = convert.beir_records(corpus, queries, qrels, task=task, instruction=instruction)
    else:
        if d.validation_fraction > 0:
            raise ValueError("data.validation_fraction needs BEIR training data (query ids and qrels)")
        corpus = Path(d.corpus) if d.corpus else None
        records = convert.pair_records(src, task=task, type_="Retrieval", instruction=instruction)
    if corpus is not None and not corpus.is_file():
        raise InputError(corpus, None, "file not found")
    n = write_jsonl(records_path, records)
    if n == 0:
        raise InputError(src, None, "no training queries (no query has a relevance judgement)")
    overlap = 0
    if held_out is not None:
        trained = {
            json.loads(line)["query"] for line in records_path.read_text(encoding="utf-8").splitlines()
        }
        _, test_queries, test_qrels = _beir_parts(held_out, "test")
        judged = read_qrels(test_qrels)
        overlap = sum(
            str(r.get("_id")) in judged and str(r.get("text")) in trained for _, r in iter_jsonl(test_queries)
        )
        if overlap:
            logger.warning("%d held-out queries of %s are also training queries", overlap, held_out)
    logger.info("data: %d training queries (task %s) -> %s", n, task, records_path)
    return PreparedData(records_path, corpus, task, n, validation, held_out, overlap)
