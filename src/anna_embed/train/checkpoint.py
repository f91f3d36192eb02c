"""What a training run writes to survive and to deliver: checkpoints (written atomically, resumed exactly)
and the final model folder.

A checkpoint ``checkpoints/step-NNNNNNN`` holds the trainable weights, the optimizer and scheduler states,
every process's RNG state, the position (``state.json``), the resolved config and the data manifest; it is
built under a temporary name and renamed, so a partial one never carries the final name. A sharded run
(``run.distributed = "fsdp"``) writes the same files, gathered to the main process
(:mod:`anna_embed.train.fsdp`); its ``optimizer.pt`` keys the state by parameter name.

Every ``.pt`` file holds tensors and plain data only (the RNG states too: tensors and lists of ints), so
:mod:`anna_embed.train.resume` reads them all with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anna_embed import config as C
from anna_embed.io import write_json
from anna_embed.train import fsdp
from anna_embed.train.config import TrainConfig
from anna_embed.train.report import plot_run

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "step-"

#: Prefix of a checkpoint ``--resume`` skipped (kept for inspection; never resumed, never pruned).
SKIPPED_PREFIX = ".skipped-"


def checkpoints(run_dir: Path) -> list[Path]:
    """The complete checkpoint folders of a run, oldest first (partial ones never carry the final name)."""
    folder = run_dir / "checkpoints"
    return sorted(folder.glob(f"{CHECKPOINT_PREFIX}*")) if folder.is_dir() else []


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint folder (partial ones never carry the final name)."""
    found = checkpoints(run_dir)
    return found[-1] if found else None


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain data, loadable with ``weights_only=True`` (restored
    by :func:`anna_embed.train.resume.set_rng_state`)."""
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def save_checkpoint(
    acc: Any,
    run_dir: Path,
    *,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    cfg: TrainConfig,
    manifest: dict[str, Any],
    step: int,
    steps_per_epoch: int,
    total_steps: int,
    tokens: int,
    train_seconds: Callable[[], float],
    keep: int,
    sharded: bool = False,
) -> Path:
    """Write ``checkpoints/step-NNNNNNN`` atomically (built under a temporary name, then renamed); every
    process must call it.

    Args:
        acc: The run's ``Accelerator``.
        run_dir: The run folder.
        model: The backbone (its trainable parameters are saved).
        optimizer: The optimizer.
        scheduler: The learning-rate scheduler.
        cfg: The resolved config.
        manifest: The data manifest.
        step: Optimizer steps done.
        steps_per_epoch: Steps of one epoch (``state.json`` records the epoch and the batch within it).
        total_steps: Steps of the whole run.
        tokens: Tokens encoded so far, all processes.
        train_seconds: The run's training wall time so far, read when ``state.json`` is written.
        keep: Newest checkpoints kept (older ones are removed).
        sharded: The model is sharded with FSDP: its weights and optimizer state are gathered first.
    """
    final = run_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}{step:07d}"
    tmp = final.with_name(f".tmp-{final.name}")
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    torch.save(rng_state(), tmp / f"rng-{acc.process_index}.pt")  # per process: dropout streams differ
    if sharded:  # collective: every process takes part, the main one receives the full tensors
        weights, optimizer_state = fsdp.gather_trainable(model), fsdp.gather_optimizer(model, optimizer)
    elif acc.is_main_process:
        weights, optimizer_state = _trainable_state(model), optimizer.state_dict()
    if acc.is_main_process:
        torch.save(weights, tmp / "trainable.pt")
        torch.save(optimizer_state, tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        epoch, i = divmod(step, steps_per_epoch)
        write_json(
            tmp / "state.json",
            {
                "step": step,
                "epoch": epoch,
                "batch_in_epoch": i,
                "total_steps": total_steps,
                "world_size": acc.num_processes,
                "sharded": sharded,
                "tokens": tokens,
                "train_seconds": train_seconds(),
            },
        )
        C.save(cfg, tmp / "config.json")
        write_json(tmp / "data_manifest.json", manifest)
    acc.wait_for_everyone()
    if acc.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _prune(run_dir, keep)
        plot_run(run_dir)
    acc.wait_for_everyone()
    return final


def _prune(run_dir: Path, keep: int) -> None:
    found = checkpoints(run_dir)
    for old in found[: max(0, len(found) - max(1, keep))]:
        shutil.rmtree(old, ignore_errors=True)


def save_model(
    acc: Any,
    run_dir: Path,
    emb: Any,
    peft_model: Any,
    *,
    cfg: TrainConfig,
    manifest: dict[str, Any],
    training_datasets: list[str],
    steps: int,
    tokens: int,
    train_seconds: Callable[[], float],
    unsharded: Callable[[], tuple[Any, Any]] | None = None,
) -> Path:
    """Merge the adapter and save the embedder folder ``run_dir/model`` (plus ``adapter/`` and
    ``training.json``: the config, data manifest, training datasets, steps, tokens and wall time); every
    process must call it, the main process writes.

    ``unsharded`` (a sharded run): builds an unsharded ``(embedder, peft model)`` like the student; every
    process gathers the full weights, the main process loads them into that copy and exports it.
    """
    out = run_dir / "model"
    if unsharded is not None:
        full = fsdp.gather_full(emb.model)  # collective
        if acc.is_main_process:
            emb, peft_model = unsharded()
            emb.model.load_state_dict(full, strict=True)  # every weight, frozen ones too
    if not acc.is_main_process:
        acc.wait_for_everyone()
        return out
    if peft_model is not None:
        peft_model.save_pretrained(run_dir / "adapter")
        peft_model.merge_and_unload()  # in place: emb.model now holds merged weights
    emb.save(out, training_datasets=training_datasets)
    write_json(
        out / "training.json",
        {
            "config": C.to_dict(cfg),
            "data_manifest": manifest,
            "training_datasets": training_datasets,
            "steps": steps,
            "tokens": tokens,
            "train_seconds": round(train_seconds(), 1),
        },
    )
    from anna_embed.model.card import write_card  # the card reads training.json: written after it

    write_card(out)
    plot_run(run_dir)
    acc.wait_for_everyone()
    logger.info("model written to %s", out)
    return out
