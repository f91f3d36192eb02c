"""Sharded data parallelism for the trainer (``run.distributed = "fsdp"``): PyTorch's FSDP2
(``torch.distributed.fsdp.fully_shard``) applied by the project itself, on CPU (gloo) and GPU alike.

Why not accelerate's FSDP plugin: on CPU accelerate ignores it (every process then trains a full DDP
replica), so the sharded path could not be tested here; the project's own wrapper is a few calls and runs
the same on both (docs/results/scale/fsdp_deepspeed_cpu_feasibility.md). The ``Accelerator`` still owns
the process group, the launch and the reductions.

* :func:`shard`: one FSDP unit per transformer layer (the model's ``_no_split_modules``), then the
  backbone as the root, so every call of the backbone (training, the quick evaluation) gathers its weights.
  The optimizer is built afterwards, on the sharded parameters.
* :func:`gather_trainable` / :func:`gather_optimizer` / :func:`gather_full`: collective; the full,
  unsharded state on rank 0 (CPU tensors), ``{}`` elsewhere. Keys are the backbone's parameter names, the
  optimizer's state is keyed by them too (``optimizer.pt`` of a sharded run).
* :func:`restore`: rank 0's full state scattered into every rank's shards.
* :func:`configure_launch`: refuses the launches whose sharding the trainer would not see.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from anna_embed.train.config import TrainConfig

logger = logging.getLogger(__name__)


def layer_classes(model: torch.nn.Module) -> set[str]:
    """Class names of the model's transformer layers (every ``_no_split_modules`` it or a submodule
    declares; peft wraps the transformers model, so the submodules are searched too)."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or ())
    return names


def shard(model: torch.nn.Module, *, world: int, mixed_precision: str = "no") -> int:
    """``fully_shard`` each transformer layer of ``model`` over ``world`` processes, then ``model`` itself
    (in place); returns the number of layer units.

    Args:
        model: The backbone (a peft model under LoRA), already on its device.
        world: Processes in the default process group.
        mixed_precision: ``optim.mixed_precision``: ``bf16``/``fp16`` compute with float32 gradient
            reduction (FSDP's mixed precision policy; the unsharded module is not autocast by accelerate).

    Raises:
        ValueError: The model declares no transformer layer class, so there is nothing to shard per layer.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    classes = layer_classes(model)
    units = [m for m in model.modules() if type(m).__name__ in classes]
    if not units:
        raise ValueError(
            f"run.distributed = 'fsdp': {type(model).__name__} declares no transformer layer class "
            "(_no_split_modules), so it cannot be sharded per layer; use run.distributed = 'ddp'"
        )
    device = next(model.parameters()).device.type
    mesh = init_device_mesh(device, (world,))
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    policy = (
        MixedPrecisionPolicy(param_dtype=dtypes[mixed_precision], reduce_dtype=torch.float32)
        if mixed_precision in dtypes
        else MixedPrecisionPolicy()
    )
    for unit in units:
        fully_shard(unit, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    logger.info(
        "FSDP: %d layer units (%s) + the root over %d processes", len(units), ", ".join(classes), world
    )
    return len(units)


def clip_gradients(acc: Any, module: torch.nn.Module, max_norm: float, *, sharded: bool) -> None:
    """Clip the global gradient norm: over every shard's DTensor gradients (torch's clip computes the norm
    across processes), else through accelerate (which unscales fp16 gradients first)."""
    if sharded:
        torch.nn.utils.clip_grad_norm_([p for p in module.parameters() if p.requires_grad], max_norm)
    else:
        acc.clip_grad_norm_(module.parameters(), max_norm)


def _options(**kw: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, **kw)


def gather_trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters, unsharded, on rank 0 (``{}`` elsewhere); every process must call it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(ignore_frozen_params=True))


def gather_optimizer(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state keyed by parameter name, unsharded, on rank 0 (``{}`` elsewhere); collective."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options())


def gather_full(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every weight (frozen ones too), unsharded, on rank 0 (``{}`` elsewhere); collective. The model
    export loads it into an unsharded copy of the backbone."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options())


def restore(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    weights: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    *,
    rank: int,
) -> None:
    """Scatter rank 0's ``weights`` (trainable parameters) and ``optimizer_state`` into every process's
    shards; collective. Other ranks' arguments are ignored.

    Raises:
        ValueError: ``weights`` lacks a trainable parameter or names an unknown one.
    """
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    # frozen weights are not in a checkpoint (they come from the base model): non-strict, then checked.
    # The model and the optimizer are set by separate calls: the combined one skips the model broadcast on
    # ranks whose model_state_dict is empty and leaves rank 0 waiting.
    opts = _options(broadcast_from_rank0=True, strict=False)
    result = set_model_state_dict(model, weights if rank == 0 else {}, options=opts)
    set_optimizer_state_dict(model, optimizer, optimizer_state if rank == 0 else {}, options=opts)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(set(result.missing_keys) & trainable)
    if missing or result.unexpected_keys:
        raise ValueError(
            f"lacks trainable parameters {missing[:3]} / has unknown {result.unexpected_keys[:3]}"
        )


def configure_launch(acc: Any, cfg: TrainConfig) -> None:
    """Check the launch against ``run.distributed`` and fill in what DeepSpeed cannot infer.

    Refused: accelerate's FSDP plugin (use ``run.distributed = "fsdp"`` under a plain multi-process
    launch), DeepSpeed ZeRO-3 (its partitioned weights are not gathered by the checkpoints and the export)
    and ``run.distributed = "fsdp"`` with any DeepSpeed. Under DeepSpeed ZeRO-1/2 the micro-batch size is
    set from ``optim.batch_size`` (no DataLoader is prepared, so DeepSpeed cannot infer it).

    Raises:
        ValueError: One of the refused launches; the message says what to use instead.
    """
    from accelerate.utils import DistributedType

    if acc.distributed_type == DistributedType.FSDP:
        raise ValueError(
            "accelerate's FSDP plugin is not supported by the trainer: launch with a plain multi-process "
            "config (configs/accelerate/ddp.yaml, or torchrun) and set run.distributed = 'fsdp'"
        )
    ds = acc.state.deepspeed_plugin
    if ds is None:
        return
    if ds.zero_stage == 3 or cfg.run.distributed == "fsdp":
        raise ValueError(
            "DeepSpeed ZeRO-3 (and DeepSpeed with run.distributed = 'fsdp') is not supported by the "
            "trainer: its checkpoints and export read unpartitioned weights. Shard with "
            "run.distributed = 'fsdp' under a plain multi-process launch (docs/TRAINING.md)"
        )
    ds.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.optim.batch_size
    ds.deepspeed_config["train_batch_size"] = cfg.optim.batch_size * acc.num_processes
