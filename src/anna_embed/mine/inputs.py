"""Mining inputs: training records merged into queries with all their positives, and the corpus."""

from __future__ import annotations

from pathlib import Path

from anna_embed.beir import document_text
from anna_embed.io import InputError, iter_jsonl, text_list
from anna_embed.mine.config import MiningQuery


def load_training(path: str | Path, *, default_task: str | None = None) -> list[MiningQuery]:
    """Read training records ``{query, positive, negative?, task?, type?, instruction?}``; merge duplicates.

    Records sharing (query, task, instruction) become one query whose positives are the union, so the
    other positives of a query are never mined as its negatives.

    Raises:
        InputError: A malformed record, naming file, line and field.
    """
    p = Path(path)
    merged: dict[tuple[str, str | None, str | None], MiningQuery] = {}
    for line, rec in iter_jsonl(p, required=("query", "positive")):
        query = rec["query"]
        if not isinstance(query, str) or not query.strip():
            raise InputError(p, line, "expected a non-empty string", field="query")
        positives = text_list(rec["positive"], p, line, "positive")
        negatives = text_list(rec["negative"], p, line, "negative") if rec.get("negative") else []
        task, instruction, type_ = rec.get("task", default_task), rec.get("instruction"), rec.get("type")
        for name, value in (("task", task), ("instruction", instruction), ("type", type_)):
            if value is not None and not isinstance(value, str):
                raise InputError(p, line, "expected a string", field=name)
        key = (query, task, instruction)
        item = merged.setdefault(key, MiningQuery(query, [], [], task, instruction, type=type_))
        item.positives += [x for x in positives if x not in item.positives]
        item.negatives += [x for x in negatives if x not in item.negatives]
        item.lines.append(line)
    if not merged:
        raise InputError(p, None, "no training records")
    return list(merged.values())


def load_corpus(path: str | Path) -> list[str]:
    """Documents of a corpus JSONL: BEIR ``{_id, title, text}`` or ``{text}``; duplicates removed."""
    p = Path(path)
    seen: dict[str, None] = {}
    for line, rec in iter_jsonl(p, required=("text",)):
        if not isinstance(rec["text"], str):
            raise InputError(p, line, "expected a string", field="text")
        seen.setdefault(document_text(rec), None)
    return list(seen)
