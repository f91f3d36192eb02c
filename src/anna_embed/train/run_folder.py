"""Whose run a run folder holds: one training run per folder, so two runs never mix.

A run folder (``run.output_dir``) belongs to the config that first trained in it (its ``config.json``).
Before any model loads, :func:`check_run_folder` decides whether this run may use it:

* a fresh start (no ``--resume``) into a folder that holds checkpoints or an exported model is refused,
  whatever the config (the new run's checkpoints would sort before the old ones and be pruned, the metrics
  would mix, ``--resume`` would continue the other run); so is one whose ``config.json`` is another
  config's. A folder holding only this config's ``config.json`` (a run killed before its first
  checkpoint) starts afresh;
* ``--force`` deletes the earlier run's files (:data:`RUN_FILES`, nothing else) first;
* ``--resume`` requires the same config: the differing keys are named, except :data:`HARMLESS_KEYS`.

Keys the model fills in when it loads (:data:`RESOLVED_AT_LOAD`, "the model's own") are compared once
resolved (:func:`check_saved_config`, and :func:`anna_embed.train.resume.load_checkpoint` against the
checkpoint's own config). No torch: the ``Accelerator`` is only waited on.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from anna_embed import config as C
from anna_embed.train.config import TrainConfig

logger = logging.getLogger(__name__)

#: What a training run writes into its folder; ``--force`` deletes these and nothing else.
RUN_FILES = (
    "checkpoints",
    "model",
    "adapter",
    "metrics.jsonl",
    "config.json",
    "data_manifest.json",
    "loss.png",
    "prompt_stats.json",
    "tensorboard",
)

#: Keys that may change between the sessions of one run: where the folder is, how often the run checkpoints,
#: logs and evaluates, and two memory knobs that compute the same gradients (GradCache's chunk size and
#: gradient checkpointing: the same maths, up to float rounding). Every other key changes what is trained.
HARMLESS_KEYS = frozenset(
    {
        "run.output_dir",
        "run.save_every",
        "run.keep_checkpoints",
        "run.log_every",
        "run.eval_every",
        "run.eval_file",
        "run.eval_task",
        "run.eval_max_pairs",
        "model.gradient_checkpointing",
        "loss.grad_cache_chunk",
    }
)

#: Keys whose ``None`` / ``auto`` / empty value the model resolves when it loads (the saved configs hold
#: the resolved values): left out of the comparison made before the model loads.
RESOLVED_AT_LOAD = frozenset(
    {
        "model.pooling",
        "model.max_length",
        "model.instructions",
        "model.dtype",
        "lora.enabled",
        "lora.target_modules",
    }
)

_MISSING = object()


class RunFolderError(ValueError):
    """The run folder holds another run (or this run differs from the one it holds)."""


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(
    saved: Mapping[str, Any], current: Mapping[str, Any], *, skip: Iterable[str] = ()
) -> list[str]:
    """The dotted keys whose values differ between two config dicts, sorted, with both values.

    :data:`HARMLESS_KEYS` and ``skip`` are left out; lists (``data.sources``) compare whole.

    Args:
        saved: The saved config (as :func:`anna_embed.config.to_dict` writes it).
        current: This run's config, the same way.
        skip: More keys to leave out (:data:`RESOLVED_AT_LOAD` before the model loads).

    Example:
        >>> config_differences({"optim": {"lr": 1e-4, "epochs": 1}}, {"optim": {"lr": 2e-3, "epochs": 1}})
        ['optim.lr (0.0001 -> 0.002)']
    """
    a, b = _flatten(saved), _flatten(current)
    ignored = HARMLESS_KEYS | set(skip)
    keys = sorted(
        k for k in a.keys() | b.keys() if k not in ignored and a.get(k, _MISSING) != b.get(k, _MISSING)
    )
    show = lambda v: "(absent)" if v is _MISSING else json.dumps(v)  # noqa: E731
    return [f"{k} ({show(a.get(k, _MISSING))} -> {show(b.get(k, _MISSING))})" for k in keys]


def read_saved_config(path: Path) -> dict[str, Any]:
    """A ``config.json`` that :func:`anna_embed.config.save` wrote (``{"type": "TrainConfig", "config":
    {...}}``) as a full config dict: fields added since it was written get their defaults.

    Raises:
        RunFolderError: The file is not JSON or not a training config; the message names it.
    """
    try:
        saved = json.loads(path.read_text())
        if not (
            isinstance(saved, dict)
            and saved.get("type") == "TrainConfig"
            and isinstance(saved.get("config"), dict)
        ):
            raise C.ConfigError(f"expected {{'type': 'TrainConfig', 'config': ...}}, got {str(saved)[:80]}")
        return C.to_dict(C.build(TrainConfig, saved.get("config")))
    except (json.JSONDecodeError, UnicodeDecodeError, C.ConfigError) as err:
        raise RunFolderError(f"{path}: not a training config ({err})") from None


def _remedy(run_dir: Path) -> str:
    return (
        f"continue it with --resume and its settings, pass --force to delete that run's "
        f"{', '.join(RUN_FILES)} from {run_dir} and start afresh, or choose another run.output_dir"
    )


def check_saved_config(run_dir: Path, current: Mapping[str, Any], *, skip: Iterable[str] = ()) -> None:
    """Refuse when ``run_dir/config.json`` (the run the folder holds) differs from ``current``.

    Args:
        run_dir: The run folder.
        current: This run's config dict (:func:`anna_embed.config.to_dict`).
        skip: Keys not compared (:data:`RESOLVED_AT_LOAD` before the model has loaded).

    Raises:
        RunFolderError: Naming the differing keys with both values.
    """
    saved = run_dir / "config.json"
    if not saved.is_file():
        return
    diffs = config_differences(read_saved_config(saved), current, skip=skip)
    if diffs:
        raise RunFolderError(
            f"{run_dir} holds a training run with another config ({saved}); differing keys: "
            f"{'; '.join(diffs)}. A run folder holds one run: {_remedy(run_dir)}"
        )


def check_run_folder(run_dir: Path, current: Mapping[str, Any], *, resume: bool, force: bool) -> list[Path]:
    """Check that this run may use ``run_dir`` (see the module docstring); returns what ``force`` deletes.

    Reads only (:func:`claim_run_folder` deletes).

    Args:
        run_dir: The run folder.
        current: This run's config dict, before the model resolves its own values.
        resume: ``--resume``: continue the run the folder holds.
        force: ``--force``: start afresh, deleting the earlier run's files.

    Raises:
        ValueError: ``resume`` and ``force`` together.
        RunFolderError: Another run's folder, or ``--resume`` with another config.
    """
    if resume and force:
        raise ValueError("--resume continues the run in the folder and --force deletes it: give one of them")
    if force:
        return [run_dir / name for name in RUN_FILES if (run_dir / name).exists()]
    if not resume:
        steps = sorted((run_dir / "checkpoints").glob("step-*")) if (run_dir / "checkpoints").is_dir() else []
        held = [p.name for p in steps[-1:]] + [n for n in ("model", "adapter") if (run_dir / n).exists()]
        if held:
            raise RunFolderError(
                f"{run_dir} already holds a training run ({', '.join(held)}): {_remedy(run_dir)}"
            )
    check_saved_config(run_dir, current, skip=RESOLVED_AT_LOAD)
    return []


def claim_run_folder(
    acc: Any, run_dir: Path, current: Mapping[str, Any], *, resume: bool, force: bool
) -> None:
    """:func:`check_run_folder` on every process, then, under ``force``, the main process deletes the
    earlier run's files (:data:`RUN_FILES`); every process must call it.

    Args:
        acc: The run's ``Accelerator``.
        run_dir: The run folder.
        current: This run's config dict, before the model resolves its own values.
        resume: ``--resume``.
        force: ``--force``.

    Raises:
        ValueError: See :func:`check_run_folder`.
    """
    doomed = check_run_folder(run_dir, current, resume=resume, force=force)
    acc.wait_for_everyone()  # every process has looked before anything is deleted
    if doomed and acc.is_main_process:
        for path in doomed:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        logger.warning(
            "--force: deleted the earlier run's %s from %s", ", ".join(p.name for p in doomed), run_dir
        )
    acc.wait_for_everyone()
