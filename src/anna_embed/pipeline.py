"""The main job: provision -> prepare data -> mine -> train -> evaluate -> report, from one config.

``anna-embed demo`` runs :data:`DEMO_CONFIG` (``configs/demo.toml`` holds the same values) on the small
licensed data shipped in ``anna_embed/demo_data``; ``anna-embed pipeline --config configs/full.toml`` runs
a bigger recipe on data directories the user names. Every stage writes a ``stage.json`` marker holding a
fingerprint of its settings and inputs; a re-run skips stages whose fingerprint matches (``--force``
reruns everything), so an interrupted run continues at the stage it stopped in.

Paths beginning with ``demo:`` point inside the package's ``demo_data`` folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from anna_embed import config as C
from anna_embed.data import DataSource
from anna_embed.io import atomic_write, file_sha256, write_json
from anna_embed.mine import MineConfig
from anna_embed.train_config import (
    DataSection,
    LoraSection,
    ModelSection,
    OptimSection,
    RunSection,
    TrainConfig,
)

logger = logging.getLogger(__name__)

DEMO_DATA = Path(__file__).resolve().parent / "demo_data"
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def demo_path(path: str) -> Path:
    """Resolve a ``demo:``-prefixed path into the packaged demo data; other paths are returned as is."""
    return DEMO_DATA / path.removeprefix("demo:") if path.startswith("demo:") else Path(path)


@dataclass(frozen=True)
class SourceSpec:
    """One training source and how it becomes training records.

    Attributes:
        path: JSONL file (``demo:`` prefix: packaged demo data).
        kind: ``pairs`` ({query, positive, negative?}), ``nli`` (triplets or labelled pairs),
            ``classification`` ({text, label}: positives share the label, negatives do not).
        task: Registry task of the records (instruction and type).
        mine: Mine hard negatives with teacher scores. None (default): by kind, see :func:`mines`:
            ``pairs`` sources are mined unless they are symmetric and every record carries a curated
            negative; ``nli`` sources keep their curated contradiction (mined NLI negatives are mostly
            entailed hypotheses of other premises, which the margin filter cannot catch); classification
            sources use the other labels' texts as negatives and are never mined. ``true`` on a source
            with curated negatives mines it anyway, with a warning.
        max_records: Keep only the first this-many records.
        layout: Classification records: ``text`` (positive = another text of the label) or ``label``
            (positive = the label's text, negatives = other labels' texts; BGE-EN-ICL's layout). None:
            the pipeline's ``classification_layout``.
    """

    path: str
    kind: Literal["pairs", "nli", "classification"] = "pairs"
    task: str | None = None
    mine: bool | None = None
    max_records: int | None = None
    layout: Literal["text", "label"] | None = None


@dataclass(frozen=True)
class EvalSection:
    """Evaluation of the base model, the trained student and the teacher.

    Attributes:
        data_dir: Folder of task folders (``demo:eval``: the packaged demo evaluation set).
        tasks: Task names (registry names; folders under ``data_dir``).
        teacher: A reference model evaluated alongside (empty: none).
        shots: Few-shot examples for the student's and base model's queries.
        batch_size: Encoding batch size.
        limit: Subsample each task (smoke runs only; results are marked not comparable).
        dtype: Encoding dtype of the LLMs (``auto``: bf16 where supported).
        max_length: Token budget at evaluation (the student folder keeps its shorter training budget).
        split: ``test``, or ``validation`` / ``dev`` to choose settings without a test set (STS and
            PairClassification tasks only; see :func:`anna_embed.evaluate_data.load_task`).
    """

    data_dir: str = "demo:eval"
    tasks: tuple[str, ...] = ("Banking77Classification", "MassiveScenarioClassification", "QNLIRetrieval")
    teacher: str = "all-minilm-l6-v2"
    shots: int = 0
    batch_size: int = 32
    limit: int | None = None
    dtype: Literal["float32", "bfloat16", "auto"] = "auto"
    max_length: int | None = 512
    split: str = "test"


@dataclass(frozen=True)
class PipelineConfig:
    """The whole recipe; saved as ``config.json`` in the output folder.

    Attributes:
        output_dir: Run folder: data/, mine/, train/, eval/, report/.
        cache_dir: Cache shared between runs (teacher embeddings and scores, evaluation embeddings), so
            runs that differ only in training settings (the ablation) mine and encode once. Default:
            inside ``output_dir``.
        seed: Seed for every stage (mining samples, conversion, training).
        sources: Training sources.
        mine: Mining settings (teachers, margins, negatives).
        train: Training settings (its ``data.sources`` and ``run.output_dir`` are filled in by the pipeline).
        eval: Evaluation settings.
        classification_layout: Layout of classification sources that set none (see
            :attr:`SourceSpec.layout`).
    """

    output_dir: str = "outputs/demo"
    cache_dir: str | None = None
    seed: int = 0
    sources: tuple[SourceSpec, ...] = ()
    mine: MineConfig = field(default_factory=MineConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalSection = field(default_factory=EvalSection)
    classification_layout: Literal["text", "label"] = "text"


#: The demo: about 10 minutes on 2 CPU cores (see docs/RESULTS.md for the measured wall time).
DEMO_CONFIG = PipelineConfig(
    output_dir="outputs/demo",
    sources=(
        SourceSpec("demo:train/qnli.jsonl", kind="pairs", task="QNLI"),
        SourceSpec("demo:train/snli.jsonl", kind="nli", task="NLI"),
        SourceSpec("demo:train/banking77.jsonl", kind="classification", task="Banking77Classification"),
    ),
    mine=MineConfig(top_k=30, num_negatives=3, batch_size=64, max_length=128),
    train=TrainConfig(
        model=ModelSection(name="smollm2-135m-instruct", dtype="auto", max_length=96),
        lora=LoraSection(r=8, alpha=16),
        data=DataSection(group_size=2, max_shots=1, shot_max_tokens=32, examples_max_length=96),
        optim=OptimSection(batch_size=8, lr=2e-4, warmup_steps=3, max_steps=30),
        run=RunSection(save_every=10),
    ),
)


def _fingerprint(*parts: Any) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path) and part.is_file():
            h.update(file_sha256(part).encode())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


class Timer:
    """Wall seconds of a run's named steps (0.1 s), for its report: ``timer(name, fn)`` runs ``fn``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        result = fn()
        self.seconds[name] = round(time.perf_counter() - start, 1)
        return result


class Stage:
    """A pipeline stage folder with a completion marker (``stage.json``) keyed by a fingerprint."""

    def __init__(self, root: Path, name: str, fingerprint: str, *, force: bool):
        self.dir = root / name
        self.name, self.fingerprint, self.force = name, fingerprint, force

    def done(self) -> bool:
        marker = self.dir / "stage.json"
        if self.force or not marker.is_file():
            return False
        return json.loads(marker.read_text()).get("fingerprint") == self.fingerprint

    def finish(self, info: dict[str, Any]) -> None:
        write_json(self.dir / "stage.json", {"fingerprint": self.fingerprint, **info})

    def info(self) -> dict[str, Any]:
        return json.loads((self.dir / "stage.json").read_text())


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


def _prepare(cfg: PipelineConfig, stage: Stage) -> list[dict[str, Any]]:
    """Turn every source into training records: ``[{path, task, mine}]`` in ``data/``."""
    from anna_embed import convert
    from anna_embed.mine_report import negatives_that_are_positives
    from anna_embed.tasks import get_task

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
        convert.write_records(iter(rows), target)
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


def run(cfg: PipelineConfig, *, force: bool = False) -> dict[str, Any]:
    """Run every stage (skipping finished ones); returns the report's data."""
    from anna_embed import mine, train
    from anna_embed.evaluate import run_eval
    from anna_embed.models import resolve
    from anna_embed.teachers import teacher_embeddings_path

    root = Path(cfg.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    cache = Path(cfg.cache_dir) if cfg.cache_dir else root / "cache"
    C.save(cfg, root / "config.json")
    timed = Timer()
    timings = timed.seconds

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
        _fingerprint(
            C.to_dict(cfg)["sources"],
            cfg.seed,
            cfg.train.data.group_size,
            cfg.classification_layout,
            *src_files,
        ),
        force=force,
    )
    if not prep.done():
        prep.finish({"sources": timed("prepare", lambda: _prepare(cfg, prep))})
    prepared = prep.info()["sources"]

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
        stage = Stage(
            root / "mine", f"{i:02d}", _fingerprint(C.to_dict(mcfg), Path(src["path"])), force=force
        )
        out = stage.dir / "mined.jsonl"
        if not stage.done():
            stage.dir.mkdir(parents=True, exist_ok=True)
            manifest = timed(
                f"mine[{i}]",
                lambda m=mcfg, s=src, o=out, d=stage.dir, c=cache / "mine" / f"{i:02d}": mine.run(
                    m, s["path"], o, cache_dir=c, report_dir=d
                ),
            )
            stage.finish({"summary": manifest.get("summary", [])})
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
        root, "train", _fingerprint(C.to_dict(tcfg), *[Path(m["path"]) for m in mined]), force=force
    )
    if not tstage.done():
        timed("train", lambda: train.train(tcfg, resume=not force and (tstage.dir / "checkpoints").is_dir()))
        tstage.finish({"model": str(tstage.dir / "model")})
    student = tstage.info()["model"]

    # 5. evaluation: base, student, teacher
    data_dir = demo_path(cfg.eval.data_dir)
    models = {"base": cfg.train.model.name, "student": student}
    if cfg.eval.teacher:
        models["teacher"] = cfg.eval.teacher
    scores: dict[str, dict[str, Any]] = {}
    for label, model in models.items():
        # the student is identified by its training stage's fingerprint (config + data), not its path
        fp = _fingerprint(C.to_dict(cfg.eval), model, tstage.fingerprint if label == "student" else "")
        stage = Stage(root / "eval", label, fp, force=force)
        if not stage.done():
            result = timed(
                f"eval[{label}]",
                lambda m=model, d=stage.dir, lab=label: run_eval(
                    m,
                    list(cfg.eval.tasks),
                    data_dir=data_dir,
                    output=d,
                    shots=cfg.eval.shots if lab != "teacher" else 0,
                    seed=cfg.seed,
                    limit=cfg.eval.limit,
                    batch_size=cfg.eval.batch_size,
                    dtype=cfg.eval.dtype if lab != "teacher" else "float32",
                    cache_dir=cache / "eval" / "embeddings.sqlite",
                    max_length=cfg.eval.max_length if lab != "teacher" else None,
                    show_progress=False,
                    split=cfg.eval.split,
                ),
            )
            stage.finish({"model": model, "scores": result.get("scores", {}), "run": result})
        scores[label] = stage.info()
    report = write_report(root, cfg, scores, timings)
    return report


def write_report(
    root: Path, cfg: PipelineConfig, evals: dict[str, dict[str, Any]], timings: dict[str, float]
) -> dict[str, Any]:
    """``report/README.md`` (table, timings, mining summaries) and PNGs; returns the table."""
    from anna_embed.evaluate_report import mean_task, task_table

    rep = root / "report"
    rep.mkdir(parents=True, exist_ok=True)
    tasks = list(cfg.eval.tasks)
    rows = []
    for label, info in evals.items():
        s = info.get("scores", {})
        trained_on = set(info.get("run", {}).get("training_datasets") or ())
        rows.append(
            {
                "model": label,
                "name": info.get("model", ""),
                **{t: s.get(t) for t in tasks},
                "mean": mean_task(s, tasks),
                "in_training": sorted(t for t in tasks if t in trained_on),
            }
        )
    lines = [
        task_table(
            {r["model"]: r for r in rows},
            tasks,
            trained_on={r["model"]: r["in_training"] for r in rows},
            mean=True,
        )
    ]
    if any(r["in_training"] for r in rows):
        lines += ["", "\\* the model was trained on this task's training split (in-domain, not zero-shot)."]
    table = "\n".join(lines)
    mining = []
    data_marker = root / "data" / "stage.json"
    for src in json.loads(data_marker.read_text())["sources"] if data_marker.is_file() else []:
        if not src["mine"] and "curated_negatives" in src:
            c = src["curated_negatives"]
            mining.append(
                f"{src['task']}: not mined (curated negatives kept); negatives that are another "
                f"record's positive: {c['other_positive']} of {c['negatives']}"
            )
    for marker in sorted((root / "mine").glob("*/stage.json")):
        mining += json.loads(marker.read_text()).get("summary", [])
        for png in marker.parent.glob("*.png"):
            shutil.copyfile(png, rep / f"mining-{marker.parent.name}-{png.name}")
    loss_png = root / "train" / "loss.png"
    if loss_png.is_file():
        shutil.copyfile(loss_png, rep / "loss.png")
    _score_chart(rep / "scores.png", rows, tasks)
    text = [
        "# anna-embed pipeline report",
        "",
        f"Models: base = `{cfg.train.model.name}`, student = `{root / 'train' / 'model'}`, "
        f"teacher = `{cfg.eval.teacher or '-'}`. Scores are mteb main scores (x100) on `{cfg.eval.data_dir}`"
        + (" (--limit: NOT comparable)" if cfg.eval.limit else "")
        + ".",
        "",
        table,
        "",
        "![scores](scores.png) ![loss](loss.png)",
        "",
        "## Mining",
        "",
        *[f"    {line}" for line in mining],
        "",
        "## Wall time of this run (seconds; skipped stages are absent)",
        "",
        *[f"- {k}: {v}" for k, v in timings.items()],
    ]
    with atomic_write(rep / "README.md") as fh:
        fh.write("\n".join(text) + "\n")
    write_json(rep / "scores.json", {"rows": rows, "timings": timings})
    return {"rows": rows, "table": table, "timings": timings, "report": str(rep)}


def _score_chart(path: Path, rows: list[dict[str, Any]], tasks: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cols = [*tasks, "mean"]
    x = np.arange(len(cols))
    width = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(2 + 1.6 * len(cols), 4))
    for i, r in enumerate(rows):
        vals = [r[c] or 0.0 for c in cols]
        ax.bar(x + i * width, vals, width, label=r["model"])
    ax.set_xticks(
        x + width * (len(rows) - 1) / 2, [c.replace("Classification", "") for c in cols], fontsize=8
    )
    ax.set_ylabel("main score x100")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def add_cli(verb: str, parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """``anna-embed demo [--force]`` and ``anna-embed pipeline --config FILE [--set k=v ...] [--force]``."""
    if verb == "pipeline":
        parser.add_argument("--config", required=True, help="pipeline TOML (e.g. configs/full.toml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field")
    parser.add_argument("--output-dir", help="run folder (default: the config's output_dir)")
    parser.add_argument("--force", action="store_true", help="rerun finished stages")

    def run_cli(args: argparse.Namespace) -> int:
        if verb == "pipeline":
            cfg = C.load(PipelineConfig, args.config, args.set)
        else:
            cfg = C.build(PipelineConfig, C.to_dict(DEMO_CONFIG), args.set)
        if args.output_dir:
            cfg = replace(cfg, output_dir=args.output_dir)
        start = time.perf_counter()
        report = run(cfg, force=args.force)
        print(report["table"])
        print(
            f"\nreport: {report['report']}/README.md   model: {Path(cfg.output_dir) / 'train' / 'model'}"
            f"   wall time: {time.perf_counter() - start:.0f} s"
        )
        return 0

    return run_cli
