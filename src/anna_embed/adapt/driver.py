"""``anna-embed adapt``, the chain of stages: data -> mine -> train -> eval -> report (settings in
:mod:`anna_embed.adapt.config`, what each stage does in the module docstring there).

Mining and training write stage markers (:class:`anna_embed.stage.Stage`: settings and input hashes), so a
rerun skips what is finished unless ``force``; training resumes only the unfinished run of its own settings
(:meth:`anna_embed.stage.Stage.resume_or_restart`, as the pipeline's). The other stages are seen only
through their package faces (:func:`anna_embed.mine.run`, :func:`anna_embed.train.train`,
:func:`anna_embed.evaluate.run_eval`).
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

from anna_embed import config as C
from anna_embed.adapt.config import AdaptConfig, mine_config, train_config
from anna_embed.adapt.data import prepare_data
from anna_embed.adapt.report import evaluate, write_report
from anna_embed.model.card import write_card
from anna_embed.records import teacher_embeddings_path
from anna_embed.stage import Stage, fingerprint, start_run

logger = logging.getLogger(__name__)


def run(cfg: AdaptConfig, *, force: bool = False) -> dict[str, Any]:
    """Run every stage (skipping finished ones unless ``force``); returns the report's data.

    Args:
        cfg: The run's settings.
        force: Rerun the finished stages too.
    """
    from anna_embed import mine, train  # the stages' faces, looked up when called

    folder = start_run(cfg, "adapt.json")
    out, cache, timed = folder.root, folder.cache, folder.timed  # timed logs one line per stage

    data = timed("data", lambda: prepare_data(cfg, out))
    mined = vectors = None
    if cfg.negatives == "mined":
        mcfg = mine_config(cfg, data.task)
        stage = Stage(out, "mine", fingerprint(C.to_dict(mcfg), data.records, data.corpus or ""), force=force)
        mined = stage.dir / "mined.jsonl"
        stage.run(
            timed,
            "mine",
            lambda: mine.run(
                mcfg, data.records, mined, corpus=data.corpus, cache_dir=cache / "mine", report_dir=stage.dir
            ),
            lambda manifest: {"summary": manifest["summary"], "counts": manifest["counts"]},
            recall_time=True,  # a finished stage: its own run's time
        )
        vectors = teacher_embeddings_path(mined) if mcfg.teacher_embeddings else None
    tcfg = train_config(cfg, data, mined, vectors)
    inputs = [p for p in (mined or data.records, vectors) if p is not None]
    tstage = Stage(out, "train", fingerprint(C.to_dict(tcfg), *inputs), force=force)

    def train_and_move() -> None:
        model = train.train(tcfg, **tstage.resume_or_restart())
        shutil.rmtree(out / "model", ignore_errors=True)
        os.replace(model, out / "model")

    tstage.run(timed, "train", train_and_move, lambda _: {"model": str(out / "model")}, recall_time=True)
    evals = timed("eval", lambda: evaluate(cfg, data, out, cache))
    results = {split: out / "eval" / f"{split}-after" for split in evals}  # the adapted model's scores
    write_card(out / "model", results=results, origins={str(data.records): cfg.data.train})
    return write_report(cfg, data, out, evals, timed.seconds)
