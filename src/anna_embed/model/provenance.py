"""Where a model's weights and training data came from: hub ids of base models, the mining manifest
beside a mined file, and the licence and source a data folder's notes record (read by the model card,
:mod:`anna_embed.model.card`)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Hub ids of the offline short names (``anna_embed.model.weights.OFFLINE_MODELS``), for ``base_model``.
HUB_IDS = {
    "smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "all-minilm-l6-v2": "sentence-transformers/all-MiniLM-L6-v2",
    "all-mpnet-base-v2": "sentence-transformers/all-mpnet-base-v2",
    "embeddinggemma-300m": "google/embeddinggemma-300m",
}
#: Notes files of a data folder that may record licences and sources (see :func:`recorded_data_notes`).
NOTES_FILES = ("LICENSES.md", "SOURCES.md", "README.md")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_LICENCE_LINE = re.compile(r"^\s*[*-]?\s*\**licen[cs]es?\**\s*:\s*(.+?)\.?\s*$", re.IGNORECASE)
_LICENCE_TEXT = re.compile(r"\bLicen[cs]es?:?\s+(.+?)\.?\s*$")
#: File names that are a task folder's splits: the notes name the folder, not the file.
_SPLIT_NAMES = frozenset({"train", "test", "validation", "dev", "corpus", "queries"})


def hub_id(name: str) -> str | None:
    """The Hugging Face id of a base model name: a short name's, a hub id itself, None for a local path."""
    if name in HUB_IDS:
        return HUB_IDS[name]
    return name if _HUB_ID.match(name) and not Path(name).exists() else None


@dataclass(frozen=True)
class DataNotes:
    """What a data folder's notes say of one file: its licence and source (None: not recorded)."""

    licence: str | None
    source: str | None
    notes: Path


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _names(cell: str, rel: str, name: str | None) -> bool:
    """Whether a table cell names the file: its path relative to the notes, or its name as a word."""
    if rel in cell:
        return True
    word = rf"(?<![\w/.-]){re.escape(name)}(?![\w.-])" if name else None
    return word is not None and re.search(word, cell.replace("`", " ")) is not None


def _from_notes(notes: Path, path: Path) -> DataNotes | None:
    rel = path.resolve().relative_to(notes.parent.resolve()).as_posix()
    parts = rel.split("/")
    # a split file (train.jsonl, corpus.jsonl) is named by its task folder, any other file by itself
    generic = Path(parts[-1]).stem in _SPLIT_NAMES and len(parts) > 1
    name = None if generic else parts[-1]
    heading = parts[-2] if generic else Path(parts[-1]).stem
    lines = notes.read_text(encoding="utf-8", errors="replace").splitlines()
    header: list[str] = []
    for line in lines:  # tables: a licence column, or "License: X" in the row naming the file
        if not line.lstrip().startswith("|"):
            header = []
            continue
        cells = _cells(line)
        if not header:
            header = [c.lower() for c in cells]
            continue
        if set("".join(cells)) <= set("-: ") or not _names(cells[0], rel, name):
            continue
        col = {h: i for i, h in enumerate(header)}
        licence = next((cells[i] for h, i in col.items() if "licen" in h and i < len(cells)), None)
        if licence is None:
            licence = next((m.group(1) for c in cells if (m := _LICENCE_TEXT.search(c))), None)
        source = next((cells[i] for h, i in col.items() if h.startswith("source") and i < len(cells)), None)
        return DataNotes(licence, source, notes)
    section: str | None = None
    for line in lines:  # sections: a heading that names the file or its folder, then "License: X"
        if line.startswith("#"):
            found = re.search(rf"(?<![\w-]){re.escape(heading)}(?![\w-])", line)
            section = line.lstrip("#").strip() if found else None
        elif section is not None and (m := _LICENCE_LINE.match(line)):
            return DataNotes(m.group(1), section, notes)
    return None


def recorded_data_notes(path: str | os.PathLike[str], *, levels: int = 3) -> DataNotes | None:
    """The licence and source a data folder's notes record for a training file or folder, or None.

    Looks in ``LICENSES.md``, ``SOURCES.md`` and ``README.md`` of the file's folder and up to ``levels``
    folders above it, nearest first, for:

    * a markdown table row whose first cell names the file (its path relative to the notes, or its name):
      the row's licence column (a header containing "licen"), else a ``License: X`` / ``License X`` in
      the row, and its source column (a header beginning with "source");
    * a section whose heading names the file or its folder (a task folder), holding a ``License: X`` line.

    Example:
        The demo data's ``LICENSES.md`` has the row
        ``| `train/qnli.jsonl` (400) | GLUE QNLI dev split ... | CC BY-SA 4.0 |``, so
        ``recorded_data_notes(".../demo_data/train/qnli.jsonl").licence == "CC BY-SA 4.0"``.
    """
    p = Path(path)
    if not p.exists():
        return None
    folder = p if p.is_dir() else p.parent
    for d in [folder, *list(folder.parents)[:levels]]:
        for name in NOTES_FILES:
            notes = d / name
            if notes.is_file() and notes.resolve() != p.resolve():
                found = _from_notes(notes, p)
                if found is not None:
                    return found
    return None


def mining_manifest(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The mining manifest written beside a mined training file (``STEM.manifest.json``), if any."""
    p = Path(path)
    manifest = _read_json(p.with_name(p.name.removesuffix(".jsonl") + ".manifest.json"))
    return manifest if manifest.get("command") == "mine" else None


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}
