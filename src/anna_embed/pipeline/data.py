"""The pipeline's data stage: every training source as training records, and whether it is mined."""

from __future__ import annotations

import logging
from typing import Any

from anna_embed import convert
from anna_embed.io import write_jsonl
from anna_embed.pipeline.config import PipelineConfig, SourceSpec, demo_path
from anna_embed.records import negatives_that_are_positives
from anna_embed.stage import Stage
from anna_embed.tasks import get_task

logger = logging.getLogger(__name__)


def mines(src: SourceSpec, rows: list[dict[str, Any]], *, symmetric: bool) -> bool:
    """Whether the pipeline mines a prepared source (the rule of :attr:`SourceSpec.mine`).

    Args:
        src: The source.
        rows: Its training records.
        symmetric: Whether its task is symmetric (STS, pair classification, ...).
    """
    if src.kind == "classification":
        if src.mine:
            logger.warning("%s: classification sources are never mined (mine = true ignored)", src.path)
        return False
    curated = src.kind == "nli" or (symmetric and bool(rows) and all(r.get("negative") for r in rows))
    if src.mine is None:
        return not curated
    if src.mine and curated:
        logger.warning(
            "%s: mining a source with curated negatives (kind %s); mined negatives of symmetric pairs are "
            "often true matches (e.g. entailed hypotheses of other premises) that the margin filter "
            "cannot catch",
            src.path,
            src.kind,
        )
    return src.mine


def prepare_sources(cfg: PipelineConfig, stage: Stage) -> list[dict[str, Any]]:
    """Turn every source into training records: ``[{path, task, mine}]`` in ``data/``."""
    stage.dir.mkdir(parents=True, exist_ok=True)
    out = []
    for i, src in enumerate(cfg.sources):
        path = demo_path(src.path)
        target = stage.dir / f"{i:02d}-{path.stem}.jsonl"
        task = src.task
        if task is None:
            raise ValueError(f"source {src.path}: give its task (the registry name of its records)")
        spec = get_task(task)
        if src.kind == "classification":
            records = convert.label_triplets(
                convert.labelled_texts(path),
                task=spec.name,
                type_=spec.type,
                seed=cfg.seed,
                num_negatives=max(1, cfg.train.data.group_size - 1),
                layout=src.layout or cfg.classification_layout,
            )
        elif src.kind == "nli":
            records = convert.nli_triplets(path, task=spec.name)
        else:
            records = convert.pair_records(path, task=spec.name, type_=spec.type)
        rows = list(records)
        if src.max_records is not None:
            rows = rows[: src.max_records]
        write_jsonl(target, rows)
        mined = mines(src, rows, symmetric=spec.symmetric)
        overlap = negatives_that_are_positives(rows)
        if not mined:
            logger.info(
                "%s (%s, curated negatives): %d of %d negatives are another record's positive",
                src.path,
                task,
                overlap["other_positive"],
                overlap["negatives"],
            )
        out.append(
            {
                "path": str(target),
                "task": task,
                "mine": mined,
                "records": len(rows),
                "curated_negatives": overlap,
            }
        )
    return out
