"""Resuming a run safely: every checkpoint file is read with ``torch.load(weights_only=True)``, checked,
and only then applied; a checkpoint that cannot be loaded is skipped for the one before it.

A ``.pt`` file may hold tensors and plain data only (what :func:`anna_embed.train.checkpoint.save_checkpoint`
writes: the RNG states too are lists of ints and tensors); one that holds anything else is refused and no
code in it runs. ``--resume`` takes the newest checkpoint whose files all load: one that does not
(truncated, damaged, unsafe, missing a file) is skipped with a warning naming the file and the reason, and
set aside as ``.skipped-step-NNNNNNN`` once an older one is restored; with none left, the error names every
file. A checkpoint of another config, other data or another step plan is refused, not skipped
(:mod:`anna_embed.train.run_folder`).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anna_embed.io import atomic_write
from anna_embed.train import fsdp
from anna_embed.train.checkpoint import SKIPPED_PREFIX, checkpoints
from anna_embed.train.run_folder import RunFolderError, config_differences, read_saved_config

logger = logging.getLogger(__name__)

#: The numpy types the RNG file of a checkpoint written before the states were stored as plain data needs
#: (numpy's ``uint32`` key array); allowed for ``rng-*.pt`` only (no object arrays).
_OLD_RNG_GLOBALS = (np.ndarray((0,)).__reduce__()[0], np.ndarray, np.dtype, type(np.dtype(np.uint32)))


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded, or not safely; the message names the file."""


def set_rng_state(rng: Mapping[str, Any]) -> None:
    """Restore the RNG states :func:`anna_embed.train.checkpoint.rng_state` saved (or the raw tuples that
    checkpoints written before it pickled).

    Args:
        rng: The loaded ``rng-R.pt``.
    """
    py, npy = rng["python"], rng["numpy"]
    if isinstance(py, Mapping):
        py = (py["version"], tuple(int(x) for x in py["state"]), py["gauss_next"])
    if isinstance(npy, Mapping):
        keys = np.asarray(npy["keys"].numpy(), dtype=np.uint32)
        npy = (npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    torch.set_rng_state(rng["torch"])
    random.setstate(py)
    np.random.set_state(npy)
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _reason(err: BaseException) -> str:
    """The first line of a loading error."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return (lines or [type(err).__name__])[0]


def _load_pt(path: Path, *, allow: tuple[Any, ...] = ()) -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain data only, else :class:`CheckpointError`."""
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        if allow and hasattr(torch.serialization, "safe_globals"):
            with torch.serialization.safe_globals(list(allow)):
                return torch.load(path, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):
            raise CheckpointError(
                f"{path}: cannot be loaded ({_reason(err)}): damaged or incomplete"
            ) from None
        # torch's message advises loading with weights_only=False: not repeated, only what the file names
        named = re.search(r"GLOBAL ([\w.]+)", str(err))
        raise CheckpointError(
            f"{path}: refused: it holds objects other than tensors and plain data"
            f"{f' (it names {named.group(1)})' if named else ''}, so it was not loaded and no code in it ran"
        ) from None
    except Exception as err:  # any failure to read the bytes: truncated zip, bad header, EOF, I/O
        raise CheckpointError(f"{path}: cannot be loaded ({_reason(err)}): damaged or incomplete") from None


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: cannot be loaded ({err}): damaged or incomplete") from None


def _expect(path: Path, ok: bool, what: str) -> None:
    if not ok:
        raise CheckpointError(f"{path}: cannot be loaded: not {what}")


@dataclass(frozen=True)
class _Checkpoint:
    """Every file of one checkpoint, read (nothing applied yet)."""

    folder: Path
    state: dict[str, Any]
    config: dict[str, Any]
    manifest: dict[str, Any]
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]  # this process's


def _read(ckpt: Path, *, rank: int, world: int) -> _Checkpoint:
    """Read and check every file of ``ckpt`` (every process reads every process's RNG file, so all of them
    take the same decision).

    Raises:
        CheckpointError: A file is missing, damaged, unsafe or of the wrong shape; the message names it.
        ValueError: The checkpoint was saved with another number of processes.
    """
    state = _load_json(ckpt / "state.json")
    _expect(
        ckpt / "state.json",
        isinstance(state, dict) and all(isinstance(state.get(k), int) for k in ("step", "world_size")),
        "a checkpoint state with integer step and world_size",
    )
    if state["world_size"] != world:
        raise ValueError(f"{ckpt}: saved with {state['world_size']} processes, resuming with {world}")
    try:
        config = read_saved_config(ckpt / "config.json") if (ckpt / "config.json").is_file() else None
    except RunFolderError as err:
        raise CheckpointError(str(err)) from None
    if config is None:
        raise CheckpointError(f"{ckpt / 'config.json'}: missing")
    manifest = _load_json(ckpt / "data_manifest.json")
    _expect(ckpt / "data_manifest.json", isinstance(manifest, dict), "a data manifest")
    weights = _load_pt(ckpt / "trainable.pt")
    _expect(
        ckpt / "trainable.pt",
        isinstance(weights, dict) and all(isinstance(v, torch.Tensor) for v in weights.values()),
        "a dict of tensors",
    )
    optimizer = _load_pt(ckpt / "optimizer.pt")
    _expect(ckpt / "optimizer.pt", isinstance(optimizer, dict) and "state" in optimizer, "an optimizer state")
    scheduler = _load_pt(ckpt / "scheduler.pt")
    _expect(
        ckpt / "scheduler.pt", isinstance(scheduler, dict) and "last_epoch" in scheduler, "a scheduler state"
    )
    rngs = [_load_pt(ckpt / f"rng-{r}.pt", allow=_OLD_RNG_GLOBALS) for r in range(world)]
    for r, rng in enumerate(rngs):
        _expect(
            ckpt / f"rng-{r}.pt",
            isinstance(rng, dict) and {"torch", "python", "numpy"} <= rng.keys(),
            "an RNG state",
        )
    return _Checkpoint(ckpt, state, config, manifest, weights, optimizer, scheduler, rngs[rank])


def _check_same_run(
    ck: _Checkpoint, *, config: Mapping[str, Any], manifest: Mapping[str, Any], total_steps: int
) -> None:
    """Refuse a checkpoint of another config, other data or another step plan (:class:`RunFolderError`)."""
    remedy = "resume with the run's settings and data, or start afresh with --force"
    diffs = config_differences(ck.config, config)
    if diffs:
        raise RunFolderError(
            f"{ck.folder / 'config.json'}: the checkpoint's config differs from this run's: "
            f"{'; '.join(diffs)}. A run folder holds one run: {remedy}"
        )
    for then, now in zip(ck.manifest.get("files", []), manifest.get("files", []), strict=False):
        if then.get("sha256") != now.get("sha256"):
            raise RunFolderError(
                f"{now['path']}: changed since checkpoint {ck.folder} was written (sha256 "
                f"{str(then.get('sha256'))[:12]}... then, {str(now.get('sha256'))[:12]}... now): resuming "
                f"would continue on other data; {remedy}"
            )
    if ck.state.get("total_steps", total_steps) != total_steps or ck.state["step"] > total_steps:
        raise RunFolderError(
            f"{ck.folder / 'state.json'}: step {ck.state['step']} of {ck.state.get('total_steps')}, but this "
            f"run plans {total_steps} steps; {remedy}"
        )


def _restore(
    ck: _Checkpoint, *, model: torch.nn.Module, optimizer: Any, scheduler: Any, sharded: bool, rank: int
) -> None:
    """Apply a read checkpoint: trainable weights, optimizer, scheduler, this process's RNG."""
    if sharded:  # collective: the main process's copy is scattered into every process's shards
        try:
            fsdp.restore(model, optimizer, ck.weights, ck.optimizer, rank=rank)
        except (ValueError, KeyError, TypeError, RuntimeError) as err:
            raise CheckpointError(f"{ck.folder / 'trainable.pt'}: does not fit the model ({err})") from None
        _restore_schedule_and_rng(ck, scheduler)
        return
    params = dict(model.named_parameters())
    path = ck.folder / "trainable.pt"
    missing = [n for n, p in params.items() if p.requires_grad and n not in ck.weights]
    unknown = [n for n in ck.weights if n not in params]
    if missing or unknown:
        raise CheckpointError(f"{path}: lacks trainable parameters {missing[:3]} / has unknown {unknown[:3]}")
    bad = [n for n, v in ck.weights.items() if v.shape != params[n].shape]
    if bad:
        raise CheckpointError(f"{path}: shapes differ from the model's for {bad[:3]}")
    with torch.no_grad():
        for name, value in ck.weights.items():
            params[name].copy_(value)
    try:
        optimizer.load_state_dict(ck.optimizer)
    except (ValueError, KeyError, TypeError, RuntimeError) as err:
        raise CheckpointError(f"{ck.folder / 'optimizer.pt'}: does not fit the optimizer ({err})") from None
    _restore_schedule_and_rng(ck, scheduler)


def _restore_schedule_and_rng(ck: _Checkpoint, scheduler: Any) -> None:
    scheduler.load_state_dict(ck.scheduler)
    try:
        set_rng_state(ck.rng)
    except (ValueError, KeyError, TypeError, RuntimeError, AttributeError) as err:
        raise CheckpointError(f"{ck.folder}/rng-*.pt: not an RNG state ({err})") from None


def load_checkpoint(
    acc: Any,
    run_dir: Path,
    *,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    config: Mapping[str, Any],
    manifest: Mapping[str, Any],
    total_steps: int,
    sharded: bool = False,
) -> tuple[Path, dict[str, Any]] | None:
    """Restore the newest checkpoint whose files all load, in place (trainable weights, optimizer,
    scheduler, this process's RNG), and drop the metrics rows logged after it; returns
    ``(folder, state.json)``, or None when there is no checkpoint. Every process must call it.

    A checkpoint that cannot be loaded is skipped with a warning (file and reason) and set aside as
    ``.skipped-step-NNNNNNN`` once an older one has been restored.

    Args:
        acc: The run's ``Accelerator``.
        run_dir: The run folder.
        model: The backbone (its trainable parameters are restored).
        optimizer: The optimizer.
        scheduler: The learning-rate scheduler.
        config: This run's resolved config dict; the checkpoint's must match (but for
            :data:`~anna_embed.train.run_folder.HARMLESS_KEYS`).
        manifest: This run's data manifest; the files' SHA-256 must match the checkpoint's.
        total_steps: This run's planned steps; must match the checkpoint's.
        sharded: The model is sharded with FSDP (``run.distributed``, part of the config, so a checkpoint
            is only resumed by a run that shards the same way).

    Raises:
        CheckpointError: No checkpoint can be loaded; the message names each file and why.
        RunFolderError: The checkpoint is another config's, other data's or another plan's.
        ValueError: The checkpoint was saved with another number of processes.
    """
    found = checkpoints(run_dir)
    if not found:
        logger.warning("--resume: no checkpoint under %s; starting from scratch", run_dir)
        return None
    skipped: list[tuple[Path, CheckpointError]] = []
    for ckpt in reversed(found):
        try:
            ck = _read(ckpt, rank=acc.process_index, world=acc.num_processes)
            _check_same_run(ck, config=config, manifest=manifest, total_steps=total_steps)
            _restore(
                ck,
                model=model,
                optimizer=optimizer,
                scheduler=scheduler,
                sharded=sharded,
                rank=acc.process_index,
            )
        except CheckpointError as err:
            skipped.append((ckpt, err))
            older = found[found.index(ckpt) - 1] if found.index(ckpt) > 0 else None
            if older is not None:
                logger.warning(
                    "--resume: skipping checkpoint %s: %s; falling back to %s", ckpt, err, older.name
                )
            continue
        break
    else:
        reasons = "\n  ".join(str(err) for _, err in skipped)
        raise CheckpointError(
            f"--resume: no checkpoint under {run_dir / 'checkpoints'} can be loaded:\n  {reasons}\n"
            "Start afresh with --force (deletes the run's checkpoints, metrics and model)."
        )
    acc.wait_for_everyone()  # every process has read the skipped ones before they are set aside
    state = ck.state
    if acc.is_main_process:
        for bad, _ in skipped:
            aside = bad.with_name(f"{SKIPPED_PREFIX}{bad.name}")
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(bad, aside)
        metrics = run_dir / "metrics.jsonl"
        if metrics.is_file():  # drop rows logged after the checkpoint
            rows = [
                r for r in metrics.read_text().splitlines() if r and json.loads(r)["step"] <= state["step"]
            ]
            with atomic_write(metrics) as fh:
                fh.write("".join(r + "\n" for r in rows))
    return ckpt, state
