"""File helpers every stage shares: validated JSONL/text reading and atomic writes.

Errors name the file, the 1-based line and the field, e.g.
``data/train.jsonl:17: field 'query': missing``.

:func:`atomic_write` builds a file ``NAME`` under the fixed temporary name ``.NAME.partial`` beside it
(:func:`partial_path`) and renames it into place; a hard-killed writer leaves at most that one file, which
the next write of ``NAME`` removes. :func:`sigterm_as_interrupt` turns SIGTERM
into an exception, so the writes clean up after it as after Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, TextIO


class InputError(ValueError):
    """Bad input, located by file, line and field."""

    def __init__(
        self, path: str | os.PathLike[str], line: int | None, message: str, field: str | None = None
    ):
        self.path, self.line, self.field = str(path), line, field
        where = self.path if line is None else f"{self.path}:{line}"
        what = f"field {field!r}: {message}" if field else message
        super().__init__(f"{where}: {what}")


def _decode(raw: bytes, path: Path, lineno: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(path, lineno, f"invalid UTF-8 at byte {err.start}") from None


def iter_jsonl(
    path: str | os.PathLike[str], *, required: Sequence[str] = (), skip_blank: bool = False
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` for each line of a JSONL file, validating as it goes.

    Args:
        path: The file.
        required: Fields every record must have, with a non-empty value.
        skip_blank: Skip empty lines instead of rejecting them.

    Raises:
        InputError: Invalid UTF-8, malformed JSON, a non-object line, an empty line or a missing field.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(p, None, "file not found")
    with p.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = _decode(raw, p, lineno).strip()
            if not line:
                if skip_blank:
                    continue
                raise InputError(p, lineno, "empty line")
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(p, lineno, f"malformed JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(record, dict):
                raise InputError(p, lineno, f"expected a JSON object, got {type(record).__name__}")
            for name in required:
                value = record.get(name)
                if value is None:
                    raise InputError(p, lineno, "missing", field=name)
                if isinstance(value, str | list) and len(value) == 0:
                    raise InputError(p, lineno, "empty", field=name)
            yield lineno, record


def text_list(value: Any, path: str | os.PathLike[str], line: int, field: str) -> list[str]:
    """A record field holding one text or a list of texts, as a list; anything else is an InputError."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(t, str) and t.strip() for t in items):
        raise InputError(
            path, line, "expected a non-empty string or a list of non-empty strings", field=field
        )
    return list(items)


def read_jsonl(path: str | os.PathLike[str], *, required: Sequence[str] = ()) -> list[dict[str, Any]]:
    """All records of a JSONL file (see :func:`iter_jsonl`)."""
    return [rec for _, rec in iter_jsonl(path, required=required)]


def iter_text_lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for a plain text file with one text per line; empty lines are errors."""
    p = Path(path)
    if not p.is_file():
        raise InputError(p, None, "file not found")
    with p.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            text = _decode(raw, p, lineno).rstrip("\r\n")
            if not text.strip():
                raise InputError(p, lineno, "empty line")
            yield lineno, text


def partial_path(path: str | os.PathLike[str]) -> Path:
    """The fixed temporary name of ``path`` while it is being written: ``.NAME.partial`` beside it.

    Fixed, not random, so a run killed with SIGKILL leaves at most one such file per target, and the next
    write of the same target replaces it. Two processes must not write the same target at once; different
    targets in one folder (the ranks of a distributed run) never share a temporary name.
    """
    target = Path(path)
    return target.with_name(f".{target.name}.partial")


def _clear_leftovers(target: Path) -> None:
    """Remove what a killed write of ``target`` left: its ``.NAME.partial`` and the randomly named
    ``.NAME.XXXXXXXX.tmp`` files earlier versions used."""
    import glob
    import re

    partial_path(target).unlink(missing_ok=True)
    legacy = re.compile(rf"\.{re.escape(target.name)}\.[a-z0-9_]{{8}}\.tmp")
    for old in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        if legacy.fullmatch(old.name) and old.is_file():
            old.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w") -> Iterator[TextIO | BinaryIO]:
    """Open a temporary file beside ``path``; rename it over ``path`` only if the block succeeds.

    The temporary file is :func:`partial_path` (``.NAME.partial``). An exception (``KeyboardInterrupt``
    and :class:`Terminated` included) leaves any previous ``path`` untouched and no temporary file behind;
    a hard kill leaves ``.NAME.partial``, which the next write of ``path`` removes first.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _clear_leftovers(target)
    tmp = partial_path(target)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a folder in a temporary sibling; it replaces ``path`` only if the block succeeds.

    An interrupted or failed build leaves any previous ``path`` untouched and no partial folder behind.
    The sibling has a random name (``.NAME.XXXXXXXX``), unlike :func:`atomic_write`'s fixed one: the
    processes of a distributed run may all provision the same model folder at once.
    """
    import shutil
    import tempfile

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM inside :func:`sigterm_as_interrupt`.

    A ``KeyboardInterrupt``, so everything that cleans up after Ctrl-C (atomic writes, ``finally``
    blocks) does so after SIGTERM too.
    """

    exit_code = 128 + 15  # 143, the shell's code for a process ended by SIGTERM


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` instead of ending the process on the spot.

    The previous handler is restored afterwards. Outside the main thread (where Python cannot install
    signal handlers) the block runs unchanged.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated(f"received signal {signum} (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (manifests, stage fingerprints)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write JSON atomically, pretty-printed."""
    with atomic_write(path) as fh:
        json.dump(data, fh, indent=2, ensure_ascii=False)
        fh.write("\n")


def write_jsonl(path: str | os.PathLike[str], records: Iterable[dict[str, Any]]) -> int:
    """Write records as JSONL (one ``json.dumps(record, ensure_ascii=False)`` per line), atomically;
    returns how many. ``records`` may be a generator: it is consumed as the file is written, and an
    error it raises leaves no file behind (and any previous one untouched)."""
    n = 0
    with atomic_write(path) as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n
