"""The student for training: the embedder loaded with the run's budgets, wrapped with LoRA (peft) or
unfrozen for full fine-tuning, and the Module that DDP / FSDP / DeepSpeed wrap.

LoRA targets default to every attention and MLP projection of the architecture
(:data:`LORA_TARGET_MODULES`); ``None`` / empty config values mean "the model's own" and are resolved
here (:func:`resolve_lora`, :func:`load_student`), so checkpoints and the model folder save what ran.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import torch

from anna_embed.model.embedder import Embedder
from anna_embed.model.folder import folder_config
from anna_embed.model.weights import resolve
from anna_embed.train.config import LoraSection, TrainConfig

logger = logging.getLogger(__name__)

_DECODER_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_BERT_PROJECTIONS = ("query", "key", "value", "output.dense", "intermediate.dense")

#: LoRA targets per ``config.model_type``: every attention and MLP projection, as module-name suffixes
#: (peft adapts a Linear whose name is a suffix or ends with ``.`` + a suffix). An encoder's ``pooler`` is
#: left out: embeddings never use its output. ``output.dense`` covers both BERT's attention output
#: (``attention.output.dense``) and its MLP output (``layer.N.output.dense``).
LORA_TARGET_MODULES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gemma3_text", "olmo2"),
        _DECODER_PROJECTIONS,
    ),
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    **dict.fromkeys(("bert", "roberta", "xlm-roberta", "camembert", "electra"), _BERT_PROJECTIONS),
    "mpnet": ("attn.q", "attn.k", "attn.v", "attn.o", "intermediate.dense", "output.dense"),
    "distilbert": ("q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"),
}


def lora_target_modules(model_type: str) -> tuple[str, ...]:
    """The default LoRA targets of an architecture (:data:`LORA_TARGET_MODULES`).

    Raises:
        ValueError: An architecture without defaults; the message says to set ``lora.target_modules``.
    """
    try:
        return LORA_TARGET_MODULES[model_type]
    except KeyError:
        raise ValueError(
            f"no default LoRA target modules for model_type {model_type!r} (known: "
            f"{', '.join(sorted(LORA_TARGET_MODULES))}): set lora.target_modules to the names of its "
            "attention and MLP Linear layers, or lora.enabled = false"
        ) from None


def load_student(cfg: TrainConfig, *, device: str) -> tuple[TrainConfig, Embedder, Any]:
    """Load the backbone, resolve the config's "the model's own" values (None) and wrap it for training.

    Returns ``(resolved config, embedder, peft model or None)``: the resolved config is what checkpoints
    and the model folder save: pooling, ``max_length`` and instructions as the model has them, LoRA on or
    off by the model's kind, the LoRA targets of its architecture, and float32 weights for full
    fine-tuning under ``dtype = auto``.
    """
    m, d = cfg.model, cfg.data
    lora = resolve_lora(cfg.lora, kind=folder_config(resolve(m.name)).kind, model_type=None)
    dtype = "float32" if m.dtype == "auto" and not lora.enabled else m.dtype
    emb = Embedder.from_pretrained(
        m.name, pooling=m.pooling, max_length=m.max_length, dtype=dtype, device=device
    )
    # the few-shot budgets travel with the saved model, so eval applies them too
    emb.config = replace(
        emb.config,
        shot_max_tokens=d.shot_max_tokens,
        examples_max_length=d.examples_max_length,
        use_instructions=emb.config.use_instructions if m.instructions is None else m.instructions,
    )
    lora = resolve_lora(lora, kind=emb.config.kind, model_type=emb.model.config.model_type)
    c = emb.config
    model = replace(
        m, pooling=c.pooling, max_length=c.max_length, instructions=c.use_instructions, dtype=dtype
    )
    cfg = replace(cfg, model=model, lora=lora)
    logger.info(
        "%s (%s): %s pooling, max_length %d, instructions %s, %s",
        m.name,
        c.kind,
        c.pooling,
        c.max_length,
        "on" if c.use_instructions else "off",
        f"LoRA r={lora.r}" if lora.enabled else f"full fine-tuning ({dtype})",
    )
    return (cfg, *prepare_for_training(emb, lora, gradient_checkpointing=m.gradient_checkpointing))


class EmbedModule(torch.nn.Module):
    """The backbone as a Module whose forward returns pooled embeddings (what DDP/FSDP wrap)."""

    def __init__(self, emb: Embedder):
        super().__init__()
        self.backbone = emb.model
        self._emb = (emb,)  # not a submodule

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:  # -> [B, D]
        return self._emb[0].embed(batch)


def resolve_lora(lora: LoraSection, *, kind: str, model_type: str | None) -> LoraSection:
    """``lora`` with its "the model's own" values filled in: ``enabled`` (None: LoRA for decoders, full
    fine-tuning for encoders) and, when LoRA is on and ``model_type`` is known, ``target_modules`` (empty:
    :func:`lora_target_modules`)."""
    enabled = lora.enabled if lora.enabled is not None else kind == "decoder"
    targets = lora.target_modules
    if enabled and not targets and model_type is not None:
        targets = lora_target_modules(model_type)
    return replace(lora, enabled=enabled, target_modules=targets)


def prepare_for_training(
    emb: Embedder, lora: LoraSection, *, gradient_checkpointing: bool = False
) -> tuple[Embedder, Any]:
    """Wrap the embedder's backbone with LoRA in place (or unfreeze it); returns ``(emb, peft_model)``.

    ``lora``'s None / empty values are resolved by :func:`resolve_lora`. Full fine-tuning trains every
    weight except an encoder's ``pooler`` (embeddings never use its output; an unused trainable weight
    would also stall DDP's gradient reduction).
    """
    model = emb.model
    lora = resolve_lora(lora, kind=emb.config.kind, model_type=model.config.model_type)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if not lora.enabled:
        for name, p in model.named_parameters():
            p.requires_grad_(not name.startswith("pooler."))
        model.train()
        return emb, None
    from peft import LoraConfig, get_peft_model

    peft_cfg = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
    )
    peft_model = get_peft_model(model, peft_cfg)  # injects adapters into `model` itself
    if gradient_checkpointing:
        model.enable_input_require_grads()
    model.train()
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    logger.info("LoRA r=%d on %s: %d trainable of %d parameters", lora.r, lora.target_modules, n_train, n_all)
    return emb, peft_model
