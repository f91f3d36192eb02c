"""``anna-embed eval``: a thin adapter to mteb (its command line is :mod:`anna_embed.evaluate.cli`).

:func:`run_eval` reads each task from a local folder (:mod:`anna_embed.evaluate.tasks`), hands the mteb
task object to ``mteb.evaluate`` with our model behind mteb's encoder protocol
(:mod:`anna_embed.evaluate.adapter`), and writes one mteb result JSON per task, ``summary.md`` /
``summary.csv`` (main scores, Mean(Task), Mean(TaskType)), ``summary.png`` and ``run.json``. Scoring is
mteb's own; the means and the Borda count (:mod:`anna_embed.scores`) follow mteb's leaderboard.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anna_embed.evaluate.report import main_score, write_summary
from anna_embed.io import write_json
from anna_embed.scores import fmt_score
from anna_embed.tasks import DEFAULT_SHOT_SEED, benchmark_tasks

logger = logging.getLogger(__name__)

BENCHMARK_ALIASES = {"mteb-eng-v2": "MTEB(eng, v2)", "eng-v2": "MTEB(eng, v2)"}


def resolve_tasks(tasks: str | None, benchmark: str | None) -> list[str]:
    """Task names from ``--tasks T1,T2`` and/or ``--benchmark NAME``."""
    names = [t.strip() for t in (tasks or "").split(",") if t.strip()]
    if benchmark:
        key = BENCHMARK_ALIASES.get(benchmark, benchmark)
        if key == "MTEB(eng, v2)":
            names += [t.name for t in benchmark_tasks()]
        else:
            import mteb

            names += [t.metadata.name for t in mteb.get_benchmark(key).tasks]
    if not names:
        raise ValueError("give --tasks and/or --benchmark")
    return list(dict.fromkeys(names))


def run_eval(
    model: str,
    tasks: Sequence[str],
    *,
    data_dir: str | Path | None,
    output: str | Path,
    backend: Any = "embedder",
    shots: int = 0,
    seed: int = DEFAULT_SHOT_SEED,
    limit: int | None = None,
    batch_size: int = 32,
    cache_dir: str | Path | None = None,
    dtype: str = "float32",
    max_length: int | None = None,
    instructions: bool | None = None,
    task_type_override: str | None = None,
    show_progress: bool = True,
    split: str = "test",
) -> dict[str, Any]:
    """Evaluate ``model`` on ``tasks`` with mteb's evaluators; write results into ``output``.

    ``split`` other than ``test`` scores each STS / PairClassification folder's ``{split}.jsonl`` instead
    (choosing settings on validation data); it is recorded in ``run.json``.

    ``backend`` is ``"embedder"``, ``"sentence-transformers"`` or an already-built
    :class:`~anna_embed.evaluate.adapter.TextBackend` (then ``model`` is only the name recorded).

    Returns:
        ``run.json``'s content: settings, per-task main scores, wall times, shots used, aggregates.
    """
    import mteb

    from anna_embed.evaluate.adapter import (
        EmbeddingCache,
        EvalEncoder,
        example_pool,
        load_backend,
        pick_examples,
    )
    from anna_embed.evaluate.tasks import load_task

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    t_load = time.monotonic()
    local = {}
    for name in tasks:  # read every folder first: a bad file fails before any encoding
        lt = load_task(name, data_dir, limit=limit, type_=task_type_override, split=split)
        local[lt.name] = lt
    be = (
        backend
        if not isinstance(backend, str)
        else load_backend(model, backend, dtype=dtype, max_length=max_length, instructions=instructions)
    )  # type: ignore[arg-type]
    examples, sources = {}, {}
    for name, lt in local.items():
        pool, source = example_pool(lt) if shots > 0 else ([], "")
        examples[name] = pick_examples(pool, shots, seed=seed, task=name)
        sources[name] = source
        if shots > 0 and len(examples[name]) < shots:
            logger.warning("%s: %d of %d shots (%s)", name, len(examples[name]), shots, source)
    cache = EmbeddingCache(Path(cache_dir) if cache_dir else out / "cache" / "embeddings.sqlite")
    enc = EvalEncoder(
        be,
        tasks=local,
        examples=examples,
        cache=cache,
        model_name=model.strip("/"),
        batch_size=batch_size,
        show_progress=show_progress,
    )
    logger.info("Loaded %d task(s) and the model in %.1fs", len(local), time.monotonic() - t_load)
    scores: dict[str, float | None] = {}
    timing: dict[str, float] = {}
    errors: dict[str, str] = {}
    try:
        enc.check_prompts()  # a prompt too long for max_length fails here, before any task is encoded
        for name, lt in local.items():
            t0 = time.monotonic()
            logger.info("Evaluating %s (%s, %s)", name, lt.type, lt.folder or "hub")
            try:
                res = mteb.evaluate(
                    enc,
                    [lt.task],
                    cache=None,
                    overwrite_strategy="always",
                    co2_tracker=False,
                    show_progress_bar=False,
                    encode_kwargs={"batch_size": batch_size},
                )
            except Exception as err:
                if lt.folder is not None:
                    raise
                # no local folder and the hub failed (offline): record the task as missing and go on
                logger.error("%s: no folder under --data-dir and hub loading failed: %s", name, err)
                scores[name], errors[name] = None, f"{type(err).__name__}: {err}"
                continue
            result = res.task_results[0]
            tmp = out / f".{name}.json.tmp"
            result.to_disk(tmp)
            tmp.replace(out / f"{name}.json")
            scores[name] = main_score(json.loads((out / f"{name}.json").read_text()))
            timing[name] = round(time.monotonic() - t0, 1)
            logger.info(
                "%s: main score %s (%.0fs; cache %d hits, %d misses so far)",
                name,
                fmt_score(scores[name]),
                timing[name],
                cache.hits,
                cache.misses,
            )
    finally:
        cache.close()
    types = {n: lt.type for n, lt in local.items()}
    notes = {n: f"--limit {limit}" for n in local} if limit is not None else {}
    notes.update({n: "missing (no local folder, hub unreachable)" for n in errors})
    agg = write_summary(out, model, scores, types, notes=notes, limit=limit)
    run = {
        "model": model,
        "backend": backend if isinstance(backend, str) else type(backend).__name__,
        "model_id": be.model_id,
        "tasks": list(local),
        "types": types,
        "data": {n: str(lt.folder) if lt.folder else "hub" for n, lt in local.items()},
        "split": split,
        "shots": shots,
        "shot_sources": sources if shots else {},
        "seed": seed,
        "limit": limit,
        "comparable": limit is None,
        "batch_size": batch_size,
        "dtype": dtype,
        "scores": scores,
        "wall_seconds": timing,
        "errors": errors,
        "training_datasets": list(be.training_datasets),
        **agg,
    }
    write_json(out / "run.json", run)
    write_json(out / "model_meta.json", enc.mteb_model_meta.model_dump(mode="json"))
    return run
