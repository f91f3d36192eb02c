"""The main job: provision -> prepare data -> mine -> train -> evaluate -> card -> report, from one config.

``anna-embed demo`` runs :data:`DEMO_CONFIG` (``configs/demo.toml`` holds the same values) on the small
licensed data shipped in ``anna_embed/demo_data``; ``anna-embed pipeline --config configs/full.toml`` runs
a bigger recipe on data directories the user names. Every stage writes a ``stage.json`` marker holding a
fingerprint of its settings and inputs; a re-run skips stages whose fingerprint matches (``--force``
reruns everything), so an interrupted run continues at the stage it stopped in.

The other stages are seen only through their package faces (:func:`anna_embed.mine.run`,
:func:`anna_embed.train.train`, :func:`anna_embed.evaluate.run_eval`) and their configs.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from anna_embed import config as C
from anna_embed.model.card import write_card
from anna_embed.model.weights import resolve
from anna_embed.pipeline.config import PipelineConfig, demo_path, eval_config
from anna_embed.pipeline.data import prepare_sources
from anna_embed.pipeline.report import write_report
from anna_embed.records import teacher_embeddings_path
from anna_embed.stage import Stage, fingerprint, start_run
from anna_embed.train.config import DataSource

logger = logging.getLogger(__name__)


def run(cfg: PipelineConfig, *, force: bool = False) -> dict[str, Any]:
    """Run every stage (skipping finished ones); returns the report's data."""
    from anna_embed import evaluate, mine, train  # the stages' faces, looked up when called

    folder = start_run(cfg, "config.json")
    root, cache, timed = folder.root, folder.cache, folder.timed  # timed logs one line per stage

    # 1. provision the models (offline packages are converted once into the cache)
    teachers = [cfg.mine.retriever.split(":", 1)[-1], cfg.mine.reranker.split(":", 1)[-1]]
    timed(
        "provision",
        lambda: [
            resolve(m)
            for m in {cfg.train.model.name, *teachers, *([cfg.eval.teacher] if cfg.eval.teacher else [])}
        ],
    )

    # 2. training records
    src_files = [demo_path(s.path) for s in cfg.sources]
    prep = Stage(
        root,
        "data",
        fingerprint(
            C.to_dict(cfg)["sources"],
            cfg.seed,
            cfg.train.data.group_size,
            cfg.classification_layout,
            *src_files,
        ),
        force=force,
    )
    info = prep.run(timed, "prepare", lambda: prepare_sources(cfg, prep), lambda s: {"sources": s})
    prepared = info["sources"]

    # 3. mining
    mined: list[dict[str, Any]] = []
    for i, src in enumerate(prepared):
        if not src["mine"]:
            mined.append({"path": src["path"], "task": src["task"]})
            continue
        mcfg = replace(
            cfg.mine,
            seed=cfg.seed,
            task=src["task"] or cfg.mine.task,
            # batch-wide soft labels need the teacher's vectors of every mined text
            teacher_embeddings=cfg.mine.teacher_embeddings or cfg.train.loss.distill_scope == "batch",
        )
        stage = Stage(root / "mine", f"{i:02d}", fingerprint(C.to_dict(mcfg), Path(src["path"])), force=force)
        out = stage.dir / "mined.jsonl"
        stage.run(
            timed,
            f"mine[{i}]",
            lambda m=mcfg, s=src, o=out, d=stage.dir, c=cache / "mine" / f"{i:02d}": mine.run(
                m, s["path"], o, cache_dir=c, report_dir=d
            ),
            lambda manifest: {"summary": manifest.get("summary", [])},
        )
        vectors = teacher_embeddings_path(out) if mcfg.teacher_embeddings else None
        mined.append({"path": str(out), "task": src["task"], "teacher": vectors and str(vectors)})

    # 4. training
    tcfg = replace(
        cfg.train,
        data=replace(
            cfg.train.data,
            sources=tuple(
                DataSource(path=m["path"], task=m["task"], teacher_embeddings=m.get("teacher")) for m in mined
            ),
        ),
        run=replace(cfg.train.run, output_dir=str(root / "train"), seed=cfg.seed),
    )
    tstage = Stage(
        root, "train", fingerprint(C.to_dict(tcfg), *[Path(m["path"]) for m in mined]), force=force
    )
    info = tstage.run(
        timed,
        "train",
        # another config's (or a forced run's) checkpoints are never resumed
        lambda: train.train(tcfg, **tstage.resume_or_restart()),
        lambda _: {"model": str(tstage.dir / "model")},
    )
    student = info["model"]

    # 5. evaluation: base, student, teacher
    models = {"base": cfg.train.model.name} if cfg.eval.base else {}
    models["student"] = student
    if cfg.eval.teacher:
        models["teacher"] = cfg.eval.teacher
    scores: dict[str, dict[str, Any]] = {}
    for label, model in models.items():
        # the student is identified by its training stage's fingerprint (config + data), not its path
        fp = fingerprint(C.to_dict(cfg.eval), model, tstage.fingerprint if label == "student" else "")
        stage = Stage(root / "eval", label, fp, force=force)
        scores[label] = stage.run(
            timed,
            f"eval[{label}]",
            lambda m=model, d=stage.dir, lab=label: evaluate.run_eval(
                eval_config(cfg, lab, m, d, cache / "eval" / "embeddings.sqlite"),
                show_progress=False,
                force=True,  # the stage decided to redo this folder: its old results go
            ),
            lambda result, m=model: {"model": m, "scores": result.get("scores", {}), "run": result},
        )

    # 6. the student's model card, with its scores and the sources its training files came from
    origins = {src["path"]: str(path) for src, path in zip(prepared, src_files, strict=True)}
    write_card(Path(student), results={"": root / "eval" / "student"}, origins=origins)
    return write_report(root, cfg, scores, timed.seconds)
