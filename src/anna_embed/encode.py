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
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from anna_embed.tasks import DEFAULT_SHOT_SEED

if TYPE_CHECKING:
    import numpy as np

    from anna_embed.model.embedder import Embedder

logger = logging.getLogger(__name__)


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


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer ``>= minimum`` (argparse names the option in its error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def add_cli(verb: str, parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """``anna-embed encode``: exit code 0 on success, 2 on bad input or options, 143 on SIGTERM and 130 on
    Ctrl-C (both leave any previous output untouched)."""
    parser.add_argument("--model", required=True, help="short name, local folder or hub id")
    parser.add_argument("--input", required=True, help=".jsonl (field 'text') or .txt (one per line)")
    parser.add_argument("--output", required=True, help="output .npy (ids go to <output>.ids.txt)")
    parser.add_argument("--task", help="registry task whose instruction to use")
    parser.add_argument("--instruction", help="explicit instruction (overrides the task's)")
    parser.add_argument("--role", choices=("query", "document"), default="query")
    parser.add_argument(
        "--shots", type=_at_least(0), default=0, help="few-shot examples from the task's train split"
    )
    parser.add_argument("--data-dir", help="folder of task folders (for --shots)")
    parser.add_argument("--examples", help=".jsonl of {query, response} few-shot examples (for --shots)")
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SHOT_SEED, help="seed for choosing the examples (as eval's)"
    )
    parser.add_argument("--batch-size", type=_at_least(1), default=16, help="texts per forward pass")
    parser.add_argument("--max-length", type=_at_least(1), default=None, help="token budget per text")
    parser.add_argument("--dimensions", type=_at_least(1), default=None, help="Matryoshka truncation")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "auto"), default="float32")

    def run(args: argparse.Namespace) -> int:
        try:
            with sigterm_as_interrupt():
                return _run(args)
        except Terminated:
            logger.warning("Terminated by SIGTERM: %s left as it was", args.output)
            return Terminated.exit_code

    return run


def _run(args: argparse.Namespace) -> int:
    """The body of ``anna-embed encode`` (see :func:`add_cli`)."""
    from anna_embed.model.embedder import Embedder
    from anna_embed.tasks import few_shot_pool, get_task, sample_examples

    check_output(args.input, args.output)
    if args.task and args.instruction is None:
        get_task(args.task)  # one policy for every model: an unknown name is an error ("did you mean")
    total = sum(1 for _ in iter_inputs(args.input))  # validate the whole file before loading anything
    if not total:
        raise InputError(args.input, None, "no texts")
    if args.shots and args.role != "query":
        raise ValueError("--shots applies to --role query")
    examples: list[tuple[str, str]] = []
    if args.shots:
        if args.examples:
            pool = [
                (r["query"], r["response"]) for r in read_jsonl(args.examples, required=("query", "response"))
            ]
        elif args.data_dir and args.task:
            spec = get_task(args.task)
            pool, _ = few_shot_pool(spec.type, Path(args.data_dir) / spec.folder)
        else:
            raise ValueError("--shots needs --examples FILE or --task with --data-dir")
        examples = sample_examples(pool, args.shots, seed=args.seed, task=args.task or "")
        if not examples:
            logger.warning("No training examples for %s: encoding zero-shot", args.task)
    ranks = launch()  # under torchrun: this process's GPU is chosen before the model loads
    emb = Embedder.from_pretrained(args.model, max_length=args.max_length, dtype=args.dtype)
    if args.role == "query":
        prefix = emb.query_prefix(args.task, instruction=args.instruction, examples=examples)
    else:
        prefix = emb.document_prefix(args.task, instruction=args.instruction)
    n = encode_rows(
        emb,
        iter_inputs(args.input),
        args.output,
        total=total,
        prefix=prefix,
        batch_size=args.batch_size,
        dimensions=args.dimensions,
        ranks=ranks,
    )
    if ranks.is_main:
        logger.info("Wrote %d vectors to %s (ids: %s)", n, args.output, ids_path(args.output))
    return 0
