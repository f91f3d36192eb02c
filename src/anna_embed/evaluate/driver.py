"""``anna-embed eval``: a thin adapter to mteb (its command line is :mod:`anna_embed.evaluate.cli`).

:func:`run_eval` reads each task from a local folder (:mod:`anna_embed.evaluate.tasks`), hands the mteb
task object to ``mteb.evaluate`` with our model behind mteb's encoder protocol
(:mod:`anna_embed.evaluate.adapter`), and writes one mteb result JSON per task, ``summary.md`` /
``summary.csv`` (main scores, Mean(Task), Mean(TaskType)), ``summary.png`` and ``run.json``. Scoring is
mteb's own; the means and the Borda count (:mod:`anna_embed.scores`) follow mteb's leaderboard.

A run writes its results only once every task has been scored: a failed run changes no result in a folder
it reuses and leaves no new folder behind (:func:`run_eval`); what a reused folder may hold is the rule
of :mod:`anna_embed.evaluate.report`.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anna_embed import distributed
from anna_embed.evaluate.config import EvalConfig
from anna_embed.evaluate.report import (
    FolderPlan,
    check_model,
    commit_results,
    main_score,
    plan_folder,
    read_json,
    result_files,
    task_type,
    write_summary,
)
from anna_embed.evaluate.tasks import check_data_dir
from anna_embed.io import write_json
from anna_embed.scores import fmt_score
from anna_embed.tasks import benchmark_tasks

if TYPE_CHECKING:
    from anna_embed.distributed import Ranks
    from anna_embed.evaluate.adapter import EmbeddingCache
    from anna_embed.evaluate.tasks import LocalTask
    from anna_embed.model.mteb import MtebEncoder, TextBackend

logger = logging.getLogger(__name__)

BENCHMARK_ALIASES = {"mteb-eng-v2": "MTEB(eng, v2)", "eng-v2": "MTEB(eng, v2)"}


def resolve_tasks(tasks: str | Sequence[str] | None, benchmark: str | None) -> list[str]:
    """Task names from ``--tasks T1,T2`` (or a list of names) and/or ``--benchmark NAME``."""
    given = (tasks or "").split(",") if isinstance(tasks, str | None) else tasks
    names = [t.strip() for t in given if t.strip()]
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
    cfg: EvalConfig,
    *,
    backend: TextBackend | None = None,
    show_progress: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Evaluate ``cfg.model`` on ``cfg.tasks`` with mteb's evaluators; write results into ``cfg.output``.

    ``cfg.split`` other than ``test`` scores each STS / PairClassification folder's ``{split}.jsonl`` instead
    (choosing settings on validation data); it is recorded in ``run.json``.

    ``cfg.backend`` (``"embedder"`` or ``"sentence-transformers"``) loads the model; an already-built
    :class:`~anna_embed.model.mteb.TextBackend` given as ``backend`` is used instead (then
    ``cfg.model`` is only the name recorded). ``show_progress`` shows progress bars.

    A folder that already holds results of the same model and settings keeps them: this run's tasks
    join (or replace) them and ``summary.md`` / ``run.json`` are rebuilt from every result in the folder.
    Results of another model or settings are refused before the model loads, unless ``force``, which
    replaces them once this run has succeeded. Results are written only when every task has been scored,
    so a failure changes nothing a reused folder held; a folder the run created is removed again (but for
    its embedding cache, when vectors were encoded into it: a rerun then encodes nothing twice).

    Under ``torchrun`` / ``accelerate launch`` (:func:`anna_embed.distributed.launch`) every process loads
    the model and runs mteb on every task, each encoding its contiguous share of the texts of every
    encode call (all ranks then hold all vectors, so their scores are the same); rank 0 alone reads and
    writes the embedding cache and the result folder, and every rank returns rank 0's ``run.json``.

    Returns:
        ``run.json``'s content: settings, per-task main scores (every task in the folder), wall times,
        shots used, aggregates.

    Raises:
        FileNotFoundError: ``cfg.data_dir`` is not a folder (checked first: nothing is tried on the hub).
        TaskFolderError: An unknown task name (with the closest names) or a bad task folder, before the
            model loads.
        ResultFolderError: ``cfg.output`` holds results of another model or settings and ``force`` is not set.
    """
    model, data_dir, batch_size, limit, split = cfg.model, cfg.data_dir, cfg.batch_size, cfg.limit, cfg.split
    out = Path(cfg.output)
    check_data_dir(data_dir)  # before mteb and torch are even imported

    from anna_embed.evaluate.adapter import EmbeddingCache, load_backend
    from anna_embed.evaluate.tasks import load_task

    settings = {
        "backend": cfg.backend if backend is None else type(backend).__name__,
        "split": split,
        "shots": cfg.shots,
        "seed": cfg.seed,
        "limit": limit,
        "dtype": cfg.dtype,
        "max_length": cfg.max_length,
        "instructions": cfg.use_instructions,
    }
    plan = plan_folder(out, model=model, settings=settings, force=force)
    t_load = time.monotonic()
    local = {}
    for name in cfg.tasks:  # read every folder first: a bad name or file fails before the model loads
        lt = load_task(name, data_dir, limit=limit, type_=cfg.task_type, split=split)
        local[lt.name] = lt
    ranks = distributed.launch()  # under torchrun: this process's GPU is chosen before the model loads
    be = (
        backend
        if backend is not None
        else load_backend(
            model, cfg.backend, dtype=cfg.dtype, max_length=cfg.max_length, instructions=cfg.use_instructions
        )
    )
    plan = check_model(plan, out, model=model, model_id=be.model_id, tasks=list(local))
    if not ranks.is_main:  # a helper: encodes its share of every mteb call, writes nothing
        _score(model, be, local, None, settings, batch_size=batch_size, show_progress=False, ranks=ranks)
        return ranks.broadcast(None)
    created = next((p for p in reversed([out, *out.parents]) if not p.exists()), None)  # new, to undo
    out.mkdir(parents=True, exist_ok=True)
    cache_path = Path(cfg.cache_dir) if cfg.cache_dir else out / "cache" / "embeddings.sqlite"
    try:
        with EmbeddingCache(cache_path) as cache:
            logger.info("Loaded %d task(s) and the model in %.1fs", len(local), time.monotonic() - t_load)
            enc, results, this_run = _score(
                model,
                be,
                local,
                cache,
                settings,
                batch_size=batch_size,
                show_progress=show_progress,
                ranks=ranks,
            )
        commit_results(out, results, plan)
        info = {
            "model": model,
            **settings,
            "model_id": be.model_id,
            "batch_size": batch_size,
            "training_datasets": list(be.training_datasets),
        }
        run = _summarize(out, plan, info, this_run)
        write_json(out / "model_meta.json", enc.mteb_model_meta.model_dump(mode="json"))
    except BaseException:
        if created is not None:
            _discard(created, keep=cache_path if _has_vectors(cache_path, created) else None)
        raise
    return ranks.broadcast(run)


def _score(
    model: str,
    be: TextBackend,
    local: dict[str, LocalTask],
    cache: EmbeddingCache | None,
    settings: dict[str, Any],
    *,
    batch_size: int,
    show_progress: bool,
    ranks: Ranks,
) -> tuple[MtebEncoder, dict[str, Any], dict[str, dict[str, Any]]]:
    """Score every task with mteb; nothing is written but the cache (rank 0's; the other ranks have none
    and encode their share of each call, :class:`~anna_embed.model.mteb.MtebEncoder`).

    Returns:
        The encoder, the mteb ``TaskResult`` per task scored, and this run's per-task records for
        ``run.json`` (``types``, ``data``, ``shot_sources``, ``wall_seconds``, ``errors``).
    """
    import mteb

    from anna_embed.model.mteb import MtebEncoder
    from anna_embed.shots import few_shot_pool, sample_examples

    shots, seed = settings["shots"], settings["seed"]
    examples, sources = {}, {}
    for name, lt in local.items():
        pool, source = few_shot_pool(lt.type, lt.folder) if shots > 0 else ([], "")
        examples[name] = sample_examples(pool, shots, seed=seed, task=name)
        sources[name] = source
        if shots > 0 and len(examples[name]) < shots:
            logger.warning("%s: %d of %d shots (%s)", name, len(examples[name]), shots, source)
    enc = MtebEncoder(
        be,
        examples=examples,
        instructions={name: lt.instruction for name, lt in local.items()},
        cache=cache,
        model_name=model.strip("/"),
        batch_size=batch_size,
        show_progress=show_progress,
        ranks=ranks,
    )
    results: dict[str, Any] = {}
    timing: dict[str, float] = {}
    errors: dict[str, str] = {}
    # a prompt too long for max_length fails here, before any task is encoded
    enc.check_prompts({name: lt.type for name, lt in local.items()})
    for name, lt in local.items():
        t0 = time.monotonic()
        logger.debug("Evaluating %s (%s, %s)", name, lt.type, lt.folder or "hub")
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
            errors[name] = f"{type(err).__name__}: {err}"
            continue
        results[name] = res.task_results[0]
        timing[name] = round(time.monotonic() - t0, 1)
        if cache is not None:
            logger.info(
                "%s: main score %s (%.0fs; cache %d hits, %d misses so far)",
                name,
                fmt_score(main_score(results[name].to_dict())),
                timing[name],
                cache.hits,
                cache.misses,
            )
    this_run = {
        "types": {n: lt.type for n, lt in local.items()},
        "data": {n: str(lt.folder) if lt.folder else "hub" for n, lt in local.items()},
        "shot_sources": sources if shots else {},
        "wall_seconds": timing,
        "errors": errors,
    }
    return enc, results, this_run


def _summarize(
    out: Path, plan: FolderPlan, info: dict[str, Any], this_run: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Write ``summary.*`` and ``run.json`` over every result in ``out`` (this run's and the earlier ones
    the plan keeps) and return ``run.json``'s content.

    Args:
        out: The result folder, this run's results already in it.
        plan: What the folder held before (:func:`~anna_embed.evaluate.report.plan_folder`).
        info: The model, its settings, its cache id, the batch size and its training datasets.
        this_run: This run's per-task records (see :func:`_score`).
    """
    earlier = plan.run if plan.kept else {}
    files = result_files(out)
    now = list(this_run["types"])
    errors = {  # an earlier task still without a result stays missing
        **{t: e for t, e in (earlier.get("errors") or {}).items() if t not in now and t not in files},
        **this_run["errors"],
    }
    order = [t for t in dict.fromkeys([*earlier.get("tasks", []), *now, *files]) if t in files or t in errors]
    scores = {t: main_score(read_json(files[t])) if t in files else None for t in order}

    def merged(key: str) -> dict[str, Any]:
        both = {**(earlier.get(key) or {}), **this_run[key]}
        return {t: v for t, v in both.items() if t in order}

    types = {t: merged("types").get(t) or task_type(t) for t in order}
    limit = info["limit"]
    notes = {t: f"--limit {limit}" for t in order} if limit is not None else {}
    notes.update({t: "missing (no local folder, hub unreachable)" for t in errors})
    agg = write_summary(out, info["model"], scores, types, notes=notes, limit=limit)
    kept = [t for t in order if t not in now]
    if kept:
        logger.info(
            "summary.md and run.json cover all %d tasks in %s: %d from this run, %d from an earlier run "
            "of the same model and settings (%s)",
            len(order),
            out,
            len(order) - len(kept),
            len(kept),
            ", ".join(kept),
        )
    run = {
        **info,
        "tasks": order,
        "tasks_this_run": now,
        "types": types,
        "data": merged("data"),
        "shot_sources": merged("shot_sources"),
        "comparable": limit is None,
        "scores": scores,
        "wall_seconds": merged("wall_seconds"),
        "errors": errors,
        **agg,
    }
    write_json(out / "run.json", run)
    return run


def _has_vectors(cache_path: Path, created: Path) -> bool:
    """Whether the embedding cache lies in the folder a run created and holds vectors (worth keeping)."""
    if not cache_path.is_file() or not cache_path.is_relative_to(created):
        return False
    from anna_embed.evaluate.adapter import EmbeddingCache

    with EmbeddingCache(cache_path) as cache:
        return len(cache) > 0


def _discard(created: Path, *, keep: Path | None) -> None:
    """Remove the folder a failed run created, all but ``keep`` (the embedding cache, with its journal
    files) when given."""
    if keep is None:
        shutil.rmtree(created, ignore_errors=True)
        logger.info("Removed %s: a failed run leaves no new folder behind", created)
        return
    for path in sorted(created.rglob("*"), key=lambda p: len(p.parts), reverse=True):  # deepest first
        if path.is_dir() and not path.is_symlink():
            if not any(path.iterdir()):
                path.rmdir()
        elif not (path.parent == keep.parent and path.name.startswith(keep.name)):
            path.unlink()
    logger.warning(
        "The run failed: %s holds no results, only the embedding cache %s, so that a rerun encodes "
        "nothing twice (delete the folder if you do not want it)",
        created,
        keep,
    )
