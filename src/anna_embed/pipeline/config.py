"""``anna-embed pipeline`` and ``anna-embed demo``: the recipe's settings (:class:`PipelineConfig`) and the
demo's (:data:`DEMO_CONFIG`, which ``configs/demo.toml`` repeats).

Paths beginning with ``demo:`` point inside the package's ``demo_data`` folder (:func:`demo_path`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from anna_embed.evaluate.config import EvalConfig, EvalDtype
from anna_embed.mine.config import MineConfig
from anna_embed.train.config import (
    DataSection,
    LoraSection,
    LossSection,
    ModelSection,
    OptimSection,
    RunSection,
    TrainConfig,
)

DEMO_DATA = Path(__file__).resolve().parents[1] / "demo_data"
CONFIGS = Path(__file__).resolve().parents[3] / "configs"


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
        mine: Mine hard negatives with teacher scores. None (default): by kind, see
            :func:`anna_embed.pipeline.data.mines`: ``pairs`` sources are mined unless they are symmetric
            and every record carries a curated negative; ``nli`` sources keep their curated contradiction
            (mined NLI negatives are mostly entailed hypotheses of other premises, which the margin filter
            cannot catch); classification sources use the other labels' texts as negatives and are never
            mined. ``true`` on a source with curated negatives mines it anyway, with a warning.
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
    """Evaluation of the base model, the trained student and the teacher (each run is an
    :class:`~anna_embed.evaluate.config.EvalConfig`, :func:`eval_config`; the defaults this section does not
    change are that class's).

    Attributes:
        data_dir: Folder of task folders (``demo:eval``: the packaged demo evaluation set).
        tasks: Task names (registry names; folders under ``data_dir``).
        teacher: A reference model evaluated alongside (empty: none).
        base: Evaluate the untrained base model too (False: skip it, e.g. when an earlier run with the
            same data and prompts already scored it).
        shots: Few-shot examples for the student's and base model's queries.
        batch_size: Encoding batch size.
        limit: Subsample each task (smoke runs only; results are marked not comparable).
        dtype: Encoding dtype of the LLMs (``auto``: bf16 where supported).
        max_length: Token budget at evaluation (the student folder keeps its shorter training budget).
        split: ``test``, or ``validation`` / ``dev`` to choose settings without a test set (STS and
            PairClassification tasks only; see :func:`anna_embed.evaluate.tasks.load_task`).
    """

    data_dir: str = "demo:eval"
    tasks: tuple[str, ...] = ("Banking77Classification", "MassiveScenarioClassification", "QNLIRetrieval")
    teacher: str = "all-minilm-l6-v2"
    base: bool = True
    shots: int = EvalConfig.shots
    batch_size: int = EvalConfig.batch_size
    limit: int | None = EvalConfig.limit
    dtype: EvalDtype = "auto"
    max_length: int | None = 512
    split: str = EvalConfig.split


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


#: The demo: about 3 minutes on 2 CPU cores with the models cached (measured times: docs/RESULTS.md).
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
        # The recipe that measured best at small budgets (docs/RESULTS.md, issue 11): in-batch InfoNCE plus
        # the teacher's soft labels over the whole batch; no few-shot examples and no mined negatives for
        # pairs (both cost points for a 135M student this short); classification keeps its label negatives.
        data=DataSection(group_size=2, max_shots=0, in_batch_group_size=1),
        loss=LossSection(teacher_temperature=0.1, distill_scope="batch"),
        optim=OptimSection(batch_size=8, lr=1e-3, warmup_steps=3, max_steps=30),
        run=RunSection(save_every=10),
    ),
)


def eval_config(cfg: PipelineConfig, label: str, model: str, output: Path, cache_dir: Path) -> EvalConfig:
    """The evaluation of ``model`` (``label``: ``base``, ``student`` or ``teacher``) into ``output``.

    The teacher is a reference scored as published: zero-shot, float32, its own token budget.
    """
    e = cfg.eval
    teacher = label == "teacher"
    return EvalConfig(
        model=model,
        output=str(output),
        tasks=tuple(e.tasks),
        data_dir=str(demo_path(e.data_dir)),
        shots=0 if teacher else e.shots,
        seed=cfg.seed,
        limit=e.limit,
        split=e.split,
        batch_size=e.batch_size,
        cache_dir=str(cache_dir),
        dtype="float32" if teacher else e.dtype,
        max_length=None if teacher else e.max_length,
    )
