"""The BEIR folder layout, read one way by every stage: relevance judgements, documents, queries files.

A BEIR folder holds ``corpus.jsonl`` (``{_id, title?, text}``), ``queries.jsonl`` (``{_id, text}``; a split
other than ``test`` may have its own ``queries_{split}.jsonl``) and ``qrels/{split}.tsv``::

    query-id<TAB>corpus-id<TAB>score
    q1<TAB>d7<TAB>1

:func:`iter_qrels` is the one reader of a qrels file (evaluation, ``convert beir``, ``adapt``, few-shot
pools), strict so that a mistake stops the run instead of dropping judgements: the header is required, every
other line is exactly three tab-separated fields with non-empty ids and an integer score, and a (query,
document) pair is judged once. Zero and negative scores are kept: each caller decides what counts as
relevant. Errors name the file, the 1-based line and the field (:class:`anna_embed.io.InputError`).

:func:`document_text` is the one way a document's title and text become one string. It is mteb's
(``_corpus_to_dict``), so training records, mining corpora and few-shot examples hold a document exactly as
mteb's retrieval evaluator encodes it.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Container, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from anna_embed.io import InputError, iter_jsonl, iter_text_lines

#: The header of a qrels file, field by field.
QRELS_HEADER = ("query-id", "corpus-id", "score")
_HEADER_TEXT = "query-id<TAB>corpus-id<TAB>score"
_INTEGER = re.compile(r"-?\d+")


class Judgement(NamedTuple):
    """One line of a qrels file: ``query_id`` judged against ``document_id`` with ``score``."""

    line: int
    query_id: str
    document_id: str
    score: int


def iter_qrels(path: str | os.PathLike[str]) -> Iterator[Judgement]:
    """Yield the judgements of a qrels TSV file in file order, validating as it goes.

    Args:
        path: The file (``qrels/{split}.tsv`` of a BEIR folder).

    Raises:
        InputError: No file, invalid UTF-8, a missing or other header, an empty line, a line that is not
            three tab-separated fields, an empty id or one with white space around it, a score that is not
            an integer (``1.0`` included), or a pair judged twice (both lines named).
    """
    p = Path(path)
    first: dict[tuple[str, str], int] = {}
    header = False
    for lineno, text in iter_text_lines(p):
        row = next(csv.reader([text], delimiter="\t"))
        if lineno == 1:
            if tuple(h.strip() for h in row) != QRELS_HEADER:
                raise InputError(p, 1, f"expected the header '{_HEADER_TEXT}', got {text!r}")
            header = True
            continue
        if len(row) != 3:
            raise InputError(p, lineno, f"expected 3 tab-separated fields ({_HEADER_TEXT}), got {row!r}")
        for field, value in zip(QRELS_HEADER, row[:2], strict=False):
            if not value.strip():
                raise InputError(p, lineno, "empty", field=field)
            if value != value.strip():
                raise InputError(p, lineno, f"white space around the id {value!r}", field=field)
        if not _INTEGER.fullmatch(row[2].strip()):
            raise InputError(p, lineno, f"expected an integer, got {row[2]!r}", field="score")
        pair = (row[0], row[1])
        if pair in first:
            raise InputError(p, lineno, f"{pair} judged again (first on line {first[pair]})", "corpus-id")
        first[pair] = lineno
        yield Judgement(lineno, row[0], row[1], int(row[2]))
    if not header:
        raise InputError(p, 1, f"expected the header '{_HEADER_TEXT}', got an empty file")


def read_qrels(path: str | os.PathLike[str]) -> dict[str, dict[str, int]]:
    """``{query_id: {document_id: score}}`` of a qrels file (:func:`iter_qrels`), in file order.

    Args:
        path: The file.
    """
    qrels: dict[str, dict[str, int]] = {}
    for j in iter_qrels(path):
        qrels.setdefault(j.query_id, {})[j.document_id] = j.score
    return qrels


def document_text(rec: Mapping[str, Any]) -> str:
    """A document as one string: ``"{title} {text}"`` stripped, the text alone without a title.

    The rule of mteb's retrieval evaluator, byte for byte: white space inside (a title ending in a space)
    is kept, the ends are stripped; a missing or null title or text counts as ``""``.

    Args:
        rec: A corpus record (``title`` and ``text`` strings, either may be absent).

    Example:
        >>> document_text({"title": "Coffee ", "text": "Caffeine is safe. "})
        'Coffee  Caffeine is safe.'
        >>> document_text({"title": "", "text": " Caffeine"})
        'Caffeine'
    """
    return f"{rec.get('title') or ''} {rec.get('text') or ''}".strip()


def document_fields(path: str | os.PathLike[str], line: int, rec: Mapping[str, Any]) -> tuple[str, str, str]:
    """``(id, title, text)`` of one corpus record, checked: ``text`` a string, ``title`` a string or null.

    Args:
        path: The corpus file (for errors).
        line: The record's line (for errors).
        rec: The record, read with ``_id`` required (:func:`anna_embed.io.iter_jsonl`).

    Raises:
        InputError: ``text`` missing or not a string, ``title`` neither a string nor null.
    """
    text, title = rec.get("text"), rec.get("title")
    if not isinstance(text, str):
        raise InputError(
            path, line, "missing" if text is None else f"expected a string, got {text!r}", "text"
        )
    if title is not None and not isinstance(title, str):
        raise InputError(path, line, f"expected a string or null, got {title!r}", field="title")
    return str(rec["_id"]), title or "", text


def read_documents(path: str | os.PathLike[str], *, ids: Container[str] | None = None) -> dict[str, str]:
    """``{id: document_text}`` of a ``corpus.jsonl`` (records checked by :func:`document_fields`).

    Args:
        path: The corpus file.
        ids: Keep only these documents (None: all).
    """
    docs: dict[str, str] = {}
    for line, rec in iter_jsonl(path, required=("_id",)):
        did, title, text = document_fields(path, line, rec)
        if ids is None or did in ids:
            docs[did] = document_text({"title": title, "text": text})
    return docs


def queries_file(folder: str | os.PathLike[str], split: str) -> Path:
    """The queries file of a split: ``queries_{split}.jsonl`` for a split other than ``test`` where the
    folder has one, else ``queries.jsonl`` (BEIR's one file for every split).

    Args:
        folder: The BEIR folder.
        split: ``test``, ``train``, ``dev``...
    """
    own = Path(folder) / f"queries_{split}.jsonl"
    return own if split != "test" and own.is_file() else Path(folder) / "queries.jsonl"
