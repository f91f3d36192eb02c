"""The training run's typed config: model, LoRA, data, loss, optimiser and run sections.

``TrainConfig`` is what ``anna-embed train --config`` loads (see :mod:`anna_embed.config`) and what every
checkpoint and the final model folder carry as ``config.json``; a :class:`DataSource` is one training file.
:func:`validate` refuses numeric settings that make no sense (one place, called before any model loads).
Pure dataclasses: importing this module loads neither torch nor transformers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Literal


@dataclass(frozen=True)
class DataSource:
    """One training file.

    Attributes:
        path: A JSONL file of records.
        task: Task name for records without a ``task`` field.
        max_records: Keep only the first this-many records (None: all).
        teacher_embeddings: The ``NAME.teacher.npz`` mining wrote beside the file
            (:class:`anna_embed.records.TeacherEmbeddings`), or None.
    """

    path: str
    task: str | None = None
    max_records: int | None = None
    teacher_embeddings: str | None = None


@dataclass(frozen=True)
class ModelSection:
    """The backbone: a decoder LLM or a sentence-transformers / BERT-like encoder.

    ``None`` means "the model's own": what the folder's ``anna_embed.json`` saved, else what its layout says
    (:func:`anna_embed.model.folder.folder_config`): decoders pool the EOS token, take instructions and 512
    tokens; a sentence-transformers encoder keeps its Pooling module, its ``max_seq_length`` and no
    instructions. The resolved values are what the run saves.

    Attributes:
        name: Short name, local folder or hub id (see :func:`anna_embed.model.weights.resolve`).
        pooling: ``last`` (the EOS token, the recipe's choice), ``mean`` or ``cls``; None: the model's own.
        dtype: Dtype of the base weights: ``auto`` picks bf16 where the CPU/GPU supports it for frozen base
            weights (LoRA), and float32 when every weight trains (bf16 weights would lose small updates).
        max_length: Token budget per text, prompt included (the few-shot block is on top); None: the
            model's own.
        instructions: Task instructions (and few-shot examples) in the prompts; None: the model's own
            (on for decoders, off for encoders, which were trained without them).
        gradient_checkpointing: Recompute activations in the backward pass (less memory, ~30% slower).
    """

    name: str = "smollm2-135m-instruct"
    pooling: Literal["last", "mean", "cls"] | None = None
    dtype: Literal["float32", "bfloat16", "auto"] = "auto"
    max_length: int | None = None
    instructions: bool | None = None
    gradient_checkpointing: bool = False


@dataclass(frozen=True)
class LoraSection:
    """LoRA adapter (peft), or full fine-tuning.

    Defaults: rank 16 and alpha 32 (alpha = 2 * rank keeps the update scale fixed when the rank changes)
    on every attention and MLP projection, as E5-Mistral and BGE-EN-ICL train their decoders; dropout 0.05
    is a light regulariser for the small data mixes this runs on.

    Attributes:
        enabled: True: LoRA; False: every weight trains; None: LoRA for decoders, full fine-tuning for
            encoders (small enough to train whole, as sentence-transformers fine-tunes them).
        r: Rank.
        alpha: Scale numerator (the update is scaled by ``alpha / r``).
        dropout: Dropout on the adapter's input.
        target_modules: Module-name suffixes that get adapters; empty: every attention and MLP projection
            of the architecture (:data:`anna_embed.train.lora.LORA_TARGET_MODULES`).
    """

    enabled: bool | None = None
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ()


@dataclass(frozen=True)
class DataSection:
    """Training data and how batches are formed (see :mod:`anna_embed.train.data`).

    Attributes:
        sources: The JSONL files (``[[data.sources]] path = ..., task = ..., max_records = ...``).
        group_size: ``G``: 1 positive + ``G - 1`` negatives per query.
        max_shots: ``K``: each query gets ``k ~ U{0..K}`` few-shot examples of its task (0: none).
        shot_max_tokens: Each example's query and response are clipped to this many tokens (marked
            `` ...``); saved with the model, so ``encode``/``eval`` clip the same way.
        examples_max_length: Tokens the few-shot block may add on top of ``model.max_length`` (whole
            examples dropped, last first, to fit); the query keeps its own ``max_length``. Saved too.
        in_batch: ``by_type`` (in-batch negatives except classification/clustering), ``always``, ``never``.
        in_batch_group_size: ``G`` of the batches that use in-batch negatives (None: ``group_size``); 1
            trains those tasks on (query, positive) and the other queries' positives only, while
            group-only types (classification, clustering) keep ``group_size`` (the ablation's
            ``inbatch_only``: the same per-type rule as the full recipe, no hard negatives).
        hard_negatives_after: A curriculum: steps ``0 .. N-1`` train as ``inbatch_only`` does (batches
            that use in-batch negatives get ``G = 1``, group-only types keep ``group_size``, no KL term),
            later steps the full recipe. 0: off. The phase is a function of the step alone, so resume is
            exact.
    """

    sources: tuple[DataSource, ...] = ()
    group_size: int = 4
    max_shots: int = 3
    shot_max_tokens: int = 64
    examples_max_length: int = 256
    in_batch: Literal["by_type", "always", "never"] = "by_type"
    in_batch_group_size: int | None = None
    hard_negatives_after: int = 0


@dataclass(frozen=True)
class LossSection:
    """Loss = InfoNCE(scores / tau_s) + kl_weight * KL(softmax(teacher / tau_t) || softmax(student / tau_s)).

    Attributes:
        student_temperature: ``tau_s`` (0.02, as the recipe).
        teacher_temperature: ``tau_t``; teacher scores are divided by it as written by the mining step. The
            default fits the default mining teacher (cosine scores of a bi-encoder, range [-1, 1]); use about
            1.0 for a cross-encoder's logits.
        kl_weight: ``lambda``; 0 disables distillation.
        grad_cache_chunk: Texts per forward in GradCache mode (0: plain, all texts in one forward).
        distill_scope: The candidates the KL term covers: ``group`` (each query's own group, with the
            mined scores) or ``batch`` (every document the student scores in batches with in-batch
            negatives, teacher scores from the bi-encoder teacher's vectors that mining saved, see
            ``DataSource.teacher_embeddings``; group-only types keep ``group``).
    """

    student_temperature: float = 0.02
    teacher_temperature: float = 0.05
    kl_weight: float = 1.0
    grad_cache_chunk: int = 0
    distill_scope: Literal["group", "batch"] = "group"


@dataclass(frozen=True)
class OptimSection:
    """Optimiser and schedule.

    Attributes:
        batch_size: Queries per process per step (the global batch is ``batch_size * processes``).
        lr: AdamW peak learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: Linear warm-up steps.
        scheduler: Decay after warm-up.
        epochs: Passes over the data (ignored when ``max_steps`` is set).
        max_steps: Total optimisation steps (with ``max_tokens``: an upper bound).
        max_tokens: Equal compute by encoded tokens: train until the non-pad tokens of every query (few-shot
            block included) and document, over all processes, reach this many; the step count is fixed
            up front by collating and tokenizing the batch plan (no forward). None: off.
        grad_clip: Max global gradient norm (0: off).
        mixed_precision: Autocast for the forward (``bf16`` on GPUs that support it).
    """

    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 10
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    epochs: int = 1
    max_steps: int | None = None
    max_tokens: int | None = None
    grad_clip: float = 1.0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"


@dataclass(frozen=True)
class RunSection:
    """Where and how the run reports and survives.

    Attributes:
        output_dir: Run folder: checkpoints/, metrics.jsonl, loss.png, model/.
        seed: Seed of everything random (batches, shots, negatives, init, dropout).
        save_every: Checkpoint every this many steps (0: only at the end).
        keep_checkpoints: Newest checkpoints kept.
        log_every: Metrics row every this many steps.
        eval_every: Quick dev evaluation every this many steps (0: off).
        eval_file: STS-style JSONL ``{sentence1, sentence2, score}`` for the quick evaluation.
        eval_task: Task whose instruction the quick evaluation uses.
        eval_max_pairs: Pairs used by the quick evaluation.
        distributed: How several processes share the model: ``ddp`` (every process holds all weights;
            also one process) or ``fsdp`` (weights, gradients and optimizer state sharded per transformer
            layer with FSDP2, :mod:`anna_embed.train.fsdp`; launch with ``torchrun`` or a plain multi-GPU
            accelerate config, not accelerate's FSDP plugin).
    """

    output_dir: str = "outputs/train"
    seed: int = 0
    save_every: int = 50
    keep_checkpoints: int = 2
    log_every: int = 1
    eval_every: int = 0
    eval_file: str | None = None
    eval_task: str = "STSBenchmark"
    eval_max_pairs: int = 200
    distributed: Literal["ddp", "fsdp"] = "ddp"


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; saved beside every checkpoint and the final model."""

    model: ModelSection = field(default_factory=ModelSection)
    lora: LoraSection = field(default_factory=LoraSection)
    data: DataSection = field(default_factory=DataSection)
    loss: LossSection = field(default_factory=LossSection)
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=RunSection)


#: The smallest sensible value of every numeric setting: ``(bound, inclusive)``. ``None`` (where a field
#: allows it) means "not set" and is never checked. ``tests/test_train_hardening.py`` checks that every
#: numeric field of :class:`TrainConfig` is listed here.
LOWER_BOUNDS: dict[str, tuple[float, bool]] = {
    "model.max_length": (1, True),
    "lora.r": (1, True),
    "lora.alpha": (0, False),
    "lora.dropout": (0, True),
    "data.group_size": (1, True),
    "data.max_shots": (0, True),
    "data.shot_max_tokens": (1, True),
    "data.examples_max_length": (0, True),
    "data.in_batch_group_size": (1, True),
    "data.hard_negatives_after": (0, True),
    "loss.student_temperature": (0, False),
    "loss.teacher_temperature": (0, False),
    "loss.kl_weight": (0, True),
    "loss.grad_cache_chunk": (0, True),
    "optim.batch_size": (1, True),
    "optim.lr": (0, False),
    "optim.weight_decay": (0, True),
    "optim.warmup_steps": (0, True),
    "optim.epochs": (1, True),
    "optim.max_steps": (1, True),
    "optim.max_tokens": (1, True),
    "optim.grad_clip": (0, True),
    "run.seed": (0, True),
    "run.save_every": (0, True),
    "run.keep_checkpoints": (1, True),
    "run.log_every": (1, True),
    "run.eval_every": (0, True),
    "run.eval_max_pairs": (1, True),
}

#: Upper bounds, where there is one: ``(bound, inclusive)``.
UPPER_BOUNDS: dict[str, tuple[float, bool]] = {"lora.dropout": (1, False)}


def _check_number(name: str, value: Any, *, integer: bool) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a finite number within its bounds."""
    kind = "an integer" if integer else "a number"
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (integer and not isinstance(value, int))
    ):
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    low, low_inclusive = LOWER_BOUNDS[name]
    if value < low or (value == low and not low_inclusive):
        unset = " (or unset)" if name in _OPTIONAL else ""
        raise ValueError(f"{name} must be {'>=' if low_inclusive else '>'} {low:g}{unset}, got {value!r}")
    if name in UPPER_BOUNDS:
        high, high_inclusive = UPPER_BOUNDS[name]
        if value > high or (value == high and not high_inclusive):
            raise ValueError(f"{name} must be {'<=' if high_inclusive else '<'} {high:g}, got {value!r}")


#: The numeric settings whose ``None`` means "not set".
_OPTIONAL = frozenset({"model.max_length", "data.in_batch_group_size", "optim.max_steps", "optim.max_tokens"})


def validate(cfg: TrainConfig) -> None:
    """Refuse numeric settings that make no sense, naming the field (``optim.max_steps must be >= 1 (or
    unset), got 0``); ``None`` keeps meaning "not set". The trainer calls it first, before any model loads.

    Args:
        cfg: The config to check.

    Raises:
        ValueError: The first setting out of range (:data:`LOWER_BOUNDS`, :data:`UPPER_BOUNDS`), not a
            number, or not finite; also a data source with ``max_records`` below 1.
    """
    for section in fields(cfg):
        part = getattr(cfg, section.name)
        for f in fields(part):
            name = f"{section.name}.{f.name}"
            if name not in LOWER_BOUNDS:
                continue
            value = getattr(part, f.name)
            if value is None and name in _OPTIONAL:
                continue
            _check_number(name, value, integer=isinstance(f.type, str) and "int" in f.type)
    for i, src in enumerate(cfg.data.sources):
        if src.max_records is not None and (isinstance(src.max_records, bool) or src.max_records < 1):
            raise ValueError(
                f"data.sources[{i}].max_records must be >= 1 (or unset), got {src.max_records!r}"
            )
