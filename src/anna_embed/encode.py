"""``anna-embed encode``: embed a file of texts into a ``.npy`` matrix, streaming in chunks.

Input is ``.jsonl`` (a ``text`` field per line, optional ``id``/``_id``) or ``.txt`` (one text per line).
The whole file is validated before anything is written, so bad input fails fast with file, line and
field; vectors are then written chunk by chunk into a memory-mapped ``.npy`` beside the output
(``.NAME.npy.partial``, a fixed name the next run reuses) and renamed into place at the end, with the ids
in ``<output>.ids.txt``. Numeric options are checked and an output that would overwrite the input is
refused before any model loads; SIGTERM, like Ctrl-C, leaves the previous output as it was and no
temporary file (exit code 143; 130 for Ctrl-C).

Under ``torchrun`` / ``accelerate launch`` each process encodes its contiguous share of every chunk and
rank 0 alone writes the output (:mod:`anna_embed.distributed`).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from anna_embed.cli_args import MIN, add_arguments, from_args
from anna_embed.distributed import SINGLE, Ranks, launch
from anna_embed.io import (
    InputError,
    Terminated,
    atomic_write,
    iter_jsonl,
    iter_text_lines,
    partial_path,
    read_jsonl,
    sigterm_as_interrupt,
)
from anna_embed.shots import DEFAULT_SHOT_SEED, few_shot_pool, sample_examples
from anna_embed.tasks import get_task

if TYPE_CHECKING:
    import numpy as np

    from anna_embed.model.embedder import Embedder

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodeConfig:
    """What ``anna-embed encode`` runs with (its flags are generated from these fields,
    :mod:`anna_embed.cli_args`).

    Attributes:
        model: Short name, local folder or hub id.
        input: .jsonl (field 'text') or .txt (one per line).
        output: Output .npy (ids go to <output>.ids.txt).
        task: Registry task whose instruction to use.
        instruction: Explicit instruction (overrides the task's).
        role: Whether the texts are encoded as queries or as documents.
        shots: Few-shot examples from the task's train split.
        data_dir: Folder of task folders (for --shots).
        examples: .jsonl of {query, response} few-shot examples (for --shots).
        seed: Seed for choosing the examples (as eval's).
        batch_size: Texts per forward pass.
        max_length: Token budget per text.
        dimensions: Matryoshka truncation.
        dtype: Encoding dtype (``auto``: bf16 where supported).
    """

    model: str
    input: str
    output: str
    task: str | None = None
    instruction: str | None = None
    role: Literal["query", "document"] = "query"
    shots: int = field(default=0, metadata={MIN: 0})
    data_dir: str | None = None
    examples: str | None = None
    seed: int = DEFAULT_SHOT_SEED
    batch_size: int = field(default=16, metadata={MIN: 1})
    max_length: int | None = field(default=None, metadata={MIN: 1})
    dimensions: int | None = field(default=None, metadata={MIN: 1})
    dtype: Literal["float32", "bfloat16", "auto"] = "float32"


def iter_inputs(path: str | os.PathLike[str]) -> Iterator[tuple[str, str]]:
    """Yield ``(id, text)`` from a ``.jsonl`` or ``.txt`` file (errors name file, line and field)."""
    p = Path(path)
    if p.suffix == ".jsonl":
        for lineno, rec in iter_jsonl(p, required=("text",)):
            if not isinstance(rec["text"], str):
                raise InputError(p, lineno, "expected a string", field="text")
            yield str(rec.get("id", rec.get("_id", lineno))), rec["text"]
    elif p.suffix == ".txt":
        for lineno, text in iter_text_lines(p):
            yield str(lineno), text
    else:
        raise InputError(p, None, "input must be a .jsonl or .txt file")


def ids_path(output: str | os.PathLike[str]) -> Path:
    """Where the ids of ``output`` are written."""
    out = Path(output)
    return out.with_name(out.name.removesuffix(".npy") + ".ids.txt")


def check_output(input_path: str | os.PathLike[str], output_path: str | os.PathLike[str]) -> None:
    """Refuse an output whose vectors or ids file would replace the input (paths compared resolved, so
    ``a/../in.txt`` and symbolic links count), or that is a folder.

    Raises:
        ValueError: Naming the option and both paths.
    """
    source = Path(input_path).resolve()
    targets = (("--output", Path(output_path)), ("the ids file of --output", ids_path(output_path)))
    for option, target in targets:
        if target.resolve() == source:
            raise ValueError(f"{option} {str(target)!r} would overwrite the input {str(input_path)!r}")
    if Path(output_path).is_dir():
        raise ValueError(f"--output {str(output_path)!r} is a folder; give a .npy file name")


def encode_rows(
    embedder: Embedder,
    rows: Iterable[tuple[str, str]],
    output_path: str | os.PathLike[str],
    *,
    total: int | None = None,
    prefix: str = "",
    batch_size: int = 16,
    chunk_size: int = 10_000,
    dimensions: int | None = None,
    ranks: Ranks = SINGLE,
) -> int:
    """Embed ``(id, text)`` rows (e.g. :func:`iter_inputs`) into ``output_path`` (``.npy``), streaming.

    Only one chunk of texts is in memory at a time: vectors go into a memory-mapped ``.npy`` and ids into
    ``<output>.ids.txt`` as they are produced. ``total`` (the row count) sizes the matrix; it defaults to
    ``len(rows)``. Returns the number of texts. Nothing is left at ``output_path`` (or its ids file)
    unless every chunk succeeded.

    With ``ranks`` of several processes (:func:`anna_embed.distributed.launch`), every rank reads the same
    ``rows`` and encodes its contiguous share of each chunk; rank 0 gathers the vectors in order and is
    the only one that writes.

    Raises:
        ValueError: ``batch_size``, ``chunk_size`` or ``dimensions`` below 1, or a row count that does not
            match ``total``.
    """
    for name, value in (("batch_size", batch_size), ("chunk_size", chunk_size), ("dimensions", dimensions)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    n = len(rows) if total is None else total  # type: ignore[arg-type]
    if n < 0:
        raise ValueError(f"total must be >= 0, got {n}")
    before = embedder.truncated_count
    chunks = _encoded_chunks(
        embedder,
        rows,
        n,
        chunk_size=chunk_size,
        ranks=ranks,
        prefix=prefix,
        batch_size=batch_size,
        dimensions=dimensions,
    )
    if ranks.is_main:
        dim = min(dimensions or embedder.dimension, embedder.dimension)
        _write(chunks, Path(output_path), n, dim=dim, progress=n > chunk_size)
    else:
        for _ in chunks:  # this rank's share of each chunk goes to rank 0, which writes
            pass
    truncated = embedder.truncated_count - before
    if truncated and ranks.active:
        logger.warning("Rank %d: %d of its texts were truncated to max_length", ranks.rank, truncated)
    elif truncated:
        logger.warning("%d of %d texts were truncated to max_length", truncated, n)
    return n


def _write(
    chunks: Iterable[tuple[list[tuple[str, str]], np.ndarray]], out: Path, n: int, *, dim: int, progress: bool
) -> None:
    """Stream ``n`` vectors of ``dim`` values into ``out`` (``.npy``) and their ids into the ids file;
    nothing is left at ``out`` (or its ids file) unless every chunk arrived."""
    import numpy as np
    from tqdm.auto import tqdm

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(out)  # fixed name: a killed run's leftover is overwritten by the next run
    matrix = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
    done = 0
    try:
        with (
            atomic_write(ids_path(out)) as ids_fh,
            tqdm(total=n, desc="encode", unit="text", disable=not progress) as bar,
        ):
            for chunk, vecs in chunks:
                matrix[done : done + len(chunk)] = vecs
                ids_fh.writelines(f"{i}\n" for i, _ in chunk)
                done += len(chunk)
                bar.update(len(chunk))
            matrix.flush()
            del matrix
            os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _encoded_chunks(
    embedder: Embedder,
    rows: Iterable[tuple[str, str]],
    total: int,
    *,
    chunk_size: int,
    ranks: Ranks,
    **encode_kw: Any,
) -> Iterator[tuple[list[tuple[str, str]], np.ndarray | None]]:
    """``(chunk of rows, their vectors)`` in order; each rank encodes its share of a chunk and rank 0
    receives the chunk's vectors (the other ranks None).

    Raises:
        ValueError: More or fewer rows than ``total`` (on every rank alike).
    """
    done = 0
    for chunk in _chunks(rows, chunk_size):
        if done + len(chunk) > total:
            raise ValueError(f"more rows than the announced {total}")
        start, stop = ranks.bounds(len(chunk))
        vecs = embedder.encode([t for _, t in chunk[start:stop]], **encode_kw)
        yield chunk, ranks.gather_rows(vecs) if ranks.active else vecs
        done += len(chunk)
    if done != total:
        raise ValueError(f"expected {total} rows, got {done}")


def _chunks(rows: Iterable[tuple[str, str]], size: int) -> Iterator[list[tuple[str, str]]]:
    chunk: list[tuple[str, str]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def add_cli(verb: str, parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """``anna-embed encode``: exit code 0 on success, 2 on bad input or options, 143 on SIGTERM and 130 on
    Ctrl-C (both leave any previous output untouched)."""
    add_arguments(parser, EncodeConfig)

    def run(args: argparse.Namespace) -> int:
        try:
            with sigterm_as_interrupt():
                return encode_file(from_args(EncodeConfig, args))
        except Terminated:
            logger.warning("Terminated by SIGTERM: %s left as it was", args.output)
            return Terminated.exit_code

    return run


def encode_file(cfg: EncodeConfig) -> int:
    """``anna-embed encode``: embed ``cfg.input`` into ``cfg.output`` (see :func:`add_cli`); returns 0.

    Raises:
        InputError: A bad or empty input file (checked before the model loads).
        ValueError: An output that would replace the input, or ``--shots`` without examples or not for
            queries.
    """
    from anna_embed.model.embedder import Embedder

    check_output(cfg.input, cfg.output)
    if cfg.task and cfg.instruction is None:
        get_task(cfg.task)  # one policy for every model: an unknown name is an error ("did you mean")
    total = sum(1 for _ in iter_inputs(cfg.input))  # validate the whole file before loading anything
    if not total:
        raise InputError(cfg.input, None, "no texts")
    if cfg.shots and cfg.role != "query":
        raise ValueError("--shots applies to --role query")
    examples: list[tuple[str, str]] = []
    if cfg.shots:
        if cfg.examples:
            pool = [
                (r["query"], r["response"]) for r in read_jsonl(cfg.examples, required=("query", "response"))
            ]
        elif cfg.data_dir and cfg.task:
            spec = get_task(cfg.task)
            pool, _ = few_shot_pool(spec.type, Path(cfg.data_dir) / spec.folder)
        else:
            raise ValueError("--shots needs --examples FILE or --task with --data-dir")
        examples = sample_examples(pool, cfg.shots, seed=cfg.seed, task=cfg.task or "")
        if not examples:
            logger.warning("No training examples for %s: encoding zero-shot", cfg.task)
    ranks = launch()  # under torchrun: this process's GPU is chosen before the model loads
    emb = Embedder.from_pretrained(cfg.model, max_length=cfg.max_length, dtype=cfg.dtype)
    if cfg.role == "query":
        prefix = emb.query_prefix(cfg.task, instruction=cfg.instruction, examples=examples)
    else:
        prefix = emb.document_prefix(cfg.task, instruction=cfg.instruction)
    n = encode_rows(
        emb,
        iter_inputs(cfg.input),
        cfg.output,
        total=total,
        prefix=prefix,
        batch_size=cfg.batch_size,
        dimensions=cfg.dimensions,
        ranks=ranks,
    )
    if ranks.is_main:
        logger.info("Wrote %d vectors to %s (ids: %s)", n, cfg.output, ids_path(cfg.output))
    return 0
