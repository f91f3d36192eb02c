"""What ``anna-embed eval`` runs with (:class:`EvalConfig`): the flags of the ``eval`` verb are generated from
it (:mod:`anna_embed.cli_args`), and ``pipeline`` and ``adapt`` derive theirs from it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from anna_embed.shots import DEFAULT_SHOT_SEED
from anna_embed.tasks import TaskType

#: Encoding dtypes of an evaluated model (``auto``: bf16 where the CPU/GPU supports it).
EvalDtype = Literal["float32", "bfloat16", "auto"]


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation: a model, its tasks, the settings recorded in ``run.json``.

    Attributes:
        model: Short name, model folder or hub id.
        output: Result folder (created; one of the same model and settings collects more tasks).
        tasks: Task names (mteb names, folder names or your own); the flag takes them comma-separated.
        data_dir: Folder holding one sub-folder per task (docs/EVALUATION.md).
        backend: What loads and encodes the model: our ``Embedder`` or sentence-transformers.
        shots: Few-shot examples per task (train split).
        seed: Seed of the few-shot draw.
        limit: First N test items only (smoke run, NOT comparable).
        split: Split scored in STS/PairClassification folders (validation, dev: tune off the test set).
        batch_size: Texts per forward pass.
        cache_dir: Embedding cache file (default OUTPUT/cache/embeddings.sqlite).
        dtype: Encoding dtype.
        max_length: Token budget override.
        instructions: Task instructions: auto = the model's saved setting.
        task_type: Type of your own task folder(s).
    """

    model: str
    output: str
    tasks: tuple[str, ...] = ()
    data_dir: str | None = None
    backend: Literal["embedder", "sentence-transformers"] = "embedder"
    shots: int = 0
    seed: int = DEFAULT_SHOT_SEED
    limit: int | None = None
    split: str = "test"
    batch_size: int = 32
    cache_dir: str | None = None
    dtype: EvalDtype = "float32"
    max_length: int | None = None
    instructions: Literal["auto", "on", "off"] = "auto"
    task_type: TaskType | None = None

    @property
    def use_instructions(self) -> bool | None:
        """``instructions`` as the backend takes it: None (the model's setting), True or False."""
        return {"auto": None, "on": True, "off": False}[self.instructions]
