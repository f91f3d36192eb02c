"""What the chains of stages (``anna-embed pipeline``, ``anna-embed adapt``) share: the run folder
(:func:`start_run`), stage folders with a completion marker keyed by a fingerprint of their settings and
inputs (:class:`Stage`), a step timer, and the report's pieces (:func:`copy_figure`,
:func:`summary_section`, :func:`write_report_files`).

A stage whose ``stage.json`` holds the fingerprint of this run's settings and inputs is finished and is
skipped on a re-run (``force`` reruns it), so an interrupted run continues at the stage it stopped in.
Training, the one stage that checkpoints, resumes the unfinished work of its own fingerprint and replaces
anyone else's (:meth:`Stage.resume_or_restart`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from anna_embed import config as C
from anna_embed.io import atomic_write, file_sha256, write_json

T = TypeVar("T")

logger = logging.getLogger(__name__)


def fingerprint(*parts: Any) -> str:
    """16 hex digits of SHA-256 over ``parts``: a file's bytes (an existing file path), else its JSON."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path) and part.is_file():
            h.update(file_sha256(part).encode())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


class Timer:
    """Wall seconds of a run's named steps (0.1 s), for its report: ``timer(name, fn)`` runs ``fn`` and
    logs one ``NAME: done in N s`` line (the one line per stage a quiet run shows)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        result = fn()
        self.seconds[name] = round(time.perf_counter() - start, 1)
        logger.info("%s: done in %.1f s", name, self.seconds[name])
        return result


class Stage:
    """A stage folder with a completion marker (``stage.json``) keyed by a fingerprint."""

    def __init__(self, root: Path, name: str, fingerprint: str, *, force: bool):
        self.dir = root / name
        self.name, self.fingerprint, self.force = name, fingerprint, force

    def done(self) -> bool:
        marker = self.dir / "stage.json"
        if self.force or not marker.is_file():
            return False
        return json.loads(marker.read_text()).get("fingerprint") == self.fingerprint

    def resumable(self) -> bool:
        """True when the unfinished work in this folder was started with this fingerprint (so its
        checkpoints may be resumed); else claims the folder for this fingerprint (``pending.json``) and
        returns False: the caller starts afresh, replacing what another configuration left there."""
        pending = self.dir / "pending.json"
        mine = {"fingerprint": self.fingerprint}
        if not self.force and pending.is_file() and json.loads(pending.read_text()) == mine:
            return True
        write_json(pending, mine)
        return False

    def resume_or_restart(self) -> dict[str, bool]:
        """The ``resume`` / ``force`` arguments of :func:`anna_embed.train.train` for this stage's folder:
        resume the unfinished run this fingerprint started (:meth:`resumable`), else start afresh, the
        trainer deleting what another configuration (or a forced run) left there."""
        resume = self.resumable()
        return {"resume": resume, "force": not resume}

    def finish(self, info: dict[str, Any]) -> None:
        write_json(self.dir / "stage.json", {"fingerprint": self.fingerprint, **info})

    def info(self) -> dict[str, Any]:
        return json.loads((self.dir / "stage.json").read_text())

    def run(
        self,
        timed: Timer,
        label: str,
        work: Callable[[], T],
        describe: Callable[[T], dict[str, Any]],
        *,
        recall_time: bool = False,
    ) -> dict[str, Any]:
        """The stage's marker, after running ``work`` unless the stage is done.

        ``work`` runs in the created stage folder, timed as ``label``; the marker then holds
        ``describe(result)`` and the seconds it took.

        Args:
            timed: The run's timer.
            label: The step's name in the timings and the log.
            work: What the stage does.
            describe: What the marker keeps of ``work``'s result.
            recall_time: A finished stage's seconds go into the timings too (those of the run that did it).
        """
        if not self.done():
            self.dir.mkdir(parents=True, exist_ok=True)
            result = timed(label, work)
            self.finish({**describe(result), "seconds": timed.seconds[label]})
        info = self.info()
        if recall_time:
            timed.seconds.setdefault(label, info.get("seconds", 0.0))
        return info


@dataclass(frozen=True)
class Run:
    """The folder of one run of a chain of stages: ``root``, its embedding caches and its timer."""

    root: Path
    cache: Path
    timed: Timer


def start_run(cfg: Any, saved_as: str) -> Run:
    """Create the run folder ``cfg.output_dir`` and save ``cfg`` in it as ``saved_as``.

    Args:
        cfg: The chain's config (a frozen dataclass with ``output_dir`` and ``cache_dir``).
        saved_as: File name of the resolved config in the run folder.

    Returns:
        The folder, the cache (``cfg.cache_dir``, default ``OUT/cache``) and a fresh :class:`Timer`.
    """
    root = Path(cfg.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    C.save(cfg, root / saved_as)
    return Run(root, Path(cfg.cache_dir) if cfg.cache_dir else root / "cache", Timer())


def copy_figure(src: Path, dst: Path) -> bool:
    """Copy a chart a stage drew into the report folder; False (and nothing copied) when there is none.

    Args:
        src: The chart (``train/loss.png``...).
        dst: Its name in the report folder.
    """
    if not src.is_file():
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return True


def summary_section(heading: str, summaries: Sequence[str], *, empty: str | None = None) -> list[str]:
    """A report's section of summary lines (mining's), indented as a markdown code block.

    Args:
        heading: The section's heading line.
        summaries: The lines, as the stage wrote them.
        empty: The text shown when there are none (None: the section stays empty).
    """
    body = [f"    {line}" for line in summaries] or ([empty] if empty else [])
    return [heading, "", *body, ""]


def write_report_files(
    folder: Path, text: Sequence[str], timings: Mapping[str, float], timing_heading: str, scores: Any
) -> Path:
    """Write a run's ``README.md`` and ``scores.json`` into ``folder``, atomically.

    Args:
        folder: The report folder.
        text: The README's lines, before the wall-time section.
        timings: Seconds per step (:class:`Timer`), listed under ``timing_heading``.
        timing_heading: The wall-time section's heading (it says what a skipped stage shows).
        scores: What ``scores.json`` holds.

    Returns:
        The README's path.
    """
    lines = [*text, timing_heading, "", *[f"- {k}: {v}" for k, v in timings.items()]]
    readme = folder / "README.md"
    with atomic_write(readme) as fh:
        fh.write("\n".join(lines) + "\n")
    write_json(folder / "scores.json", scores)
    return readme
