"""Memory-saving and multi-process helpers of the training step, each equal to the plain computation.

* :func:`gather_with_grad`: all processes' documents for in-batch negatives, with a backward that gives
  every process the gradient of its own rows (equal to one process on the concatenated batch).
* :func:`grad_cache_backward`: GradCache, the loss of a batch larger than memory with exact parameter
  gradients (equal to one plain backward pass; ``loss.grad_cache_chunk``).
* :func:`sum_over_processes`: element-wise sums of per-process counts (the tokens of a step).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor

from anna_embed.train.losses import LossOutput


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums every process's gradient into the local slice."""

    @staticmethod
    def forward(ctx: Any, local: Tensor) -> Tensor:  # local [B, D] -> [W * B, D]
        import torch.distributed as dist

        world = dist.get_world_size()
        ctx.rank, ctx.rows = dist.get_rank(), local.shape[0]
        parts = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(parts, local.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # grad [W * B, D] -> [B, D]
        import torch.distributed as dist

        grad = grad.contiguous()
        dist.all_reduce(grad)  # every process's loss depends on our rows
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(local: Tensor) -> Tensor:
    """Concatenate ``local`` ``[B, ...]`` from all processes (rank order); identity without distributed.

    The backward all-reduces the full gradient and keeps our slice, so summing the per-process losses'
    gradients (what DDP's averaging does, up to the ``1 / world`` factor that turns the sum of per-process
    means into the global mean) equals the single-process gradient on the concatenated batch.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local
    return _GatherWithGrad.apply(local)


class _RngState:
    """CPU (and CUDA) RNG state captured before a forward, so a recomputation sees the same dropout."""

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


def grad_cache_backward(
    encode: Callable[[Any], Tensor],
    query_chunks: Sequence[Any],
    document_chunks: Sequence[Any],
    loss_fn: Callable[[Tensor, Tensor], LossOutput],
    *,
    no_sync: Callable[[], AbstractContextManager[Any]] | None = None,
    backward: Callable[[Tensor], None] | None = None,
) -> LossOutput:
    """Compute ``loss_fn`` over a batch larger than memory and accumulate exact parameter gradients.

    GradCache (Gao et al., 2021): (1) embed every chunk without a graph, (2) compute the loss on the
    detached embeddings and take its gradient with respect to them, (3) re-embed each chunk with a graph
    and back-propagate that cached gradient. The RNG state of each chunk's first pass is replayed in the
    second, so dropout masks agree and the gradients equal those of one plain backward pass.

    Every backward pass that reaches the parameters goes through ``backward`` (in training,
    ``accelerator.backward``, which divides by the accumulation steps, applies an fp16 loss scaler or runs
    DeepSpeed's engine). Step (3) back-propagates the surrogate scalar ``(emb * g).sum()``, ``g`` the cached
    gradient: its gradient with respect to ``emb`` is exactly ``g``, so its parameter gradients equal
    ``emb.backward(g)``, and a scaler that multiplies it by ``S`` scales the parameter gradients once, by
    ``S``, which is what ``clip_grad_norm_`` and the optimizer step later divide out. Step (2) touches no
    parameter (``torch.autograd.grad`` with respect to the detached embeddings only) and is deliberately
    *not* passed to ``backward``: scaling it too would scale ``g``, and with it the parameter gradients,
    a second time. ``g`` is computed unscaled in the embeddings' dtype; accelerate returns fp32 outputs
    under mixed precision, so the small cached gradients do not underflow before step (3) scales them.

    Args:
        encode: Chunk of model inputs -> embeddings ``[b, D]`` with grad.
        query_chunks: Query inputs, in order; their embeddings concatenate to ``q_emb``.
        document_chunks: Document inputs, in order (concatenate to ``d_emb``).
        loss_fn: ``(q_emb, d_emb) -> LossOutput``; a pure function of the embeddings (parameters of its
            own would get no gradient: only the embeddings receive it).
        no_sync: Context factory that suspends DDP gradient sync; used for every re-embedding but the last.
        backward: Runs the backward pass of a scalar, once per re-embedded chunk; ``None``:
            ``Tensor.backward`` (use without accelerate).

    Returns:
        The :class:`LossOutput` (its ``loss`` detached); parameter ``.grad`` fields are accumulated.
    """
    run_backward = backward if backward is not None else Tensor.backward
    chunks = [*query_chunks, *document_chunks]
    states: list[_RngState] = []
    cached: list[Tensor] = []
    with torch.no_grad():
        for chunk in chunks:
            states.append(_RngState())
            cached.append(encode(chunk))  # [b, D]
    leaves = [c.detach().requires_grad_(True) for c in cached]
    n_q = len(query_chunks)
    out = loss_fn(torch.cat(leaves[:n_q]), torch.cat(leaves[n_q:]))
    # unscaled d loss / d emb, one [b, D] per chunk (zeros for a chunk no loss term reads)
    grads = torch.autograd.grad(out.loss, leaves, allow_unused=True, materialize_grads=True)
    after = _RngState()
    for i, (chunk, state, grad) in enumerate(zip(chunks, states, grads, strict=True)):
        state.restore()
        last = i == len(chunks) - 1
        ctx = no_sync() if (no_sync is not None and not last) else nullcontext()
        with ctx:
            emb = encode(chunk)  # [b, D]
            run_backward((emb * grad).sum())  # same parameter grads as emb.backward(grad)
    after.restore()
    return LossOutput(loss=out.loss.detach(), contrastive=out.contrastive, kl=out.kl)


def grad_cache_step(
    module: Any,
    emb: Any,
    batch: Any,
    acc: Any,
    *,
    chunk: int,
    loss_fn: Callable[[Tensor, Tensor], LossOutput],
) -> LossOutput:
    """One training step's tokens -> embeddings -> loss -> backward with ``chunk`` texts per forward
    (``loss.grad_cache_chunk``): :func:`grad_cache_backward` over the batch's queries and documents.

    Args:
        module: The (DDP-wrapped) model whose forward returns pooled embeddings.
        emb: The embedder (its ``tokenize``).
        batch: A :class:`~anna_embed.train.batches.TrainBatch`.
        acc: The run's ``Accelerator`` (its ``backward`` and ``no_sync``).
        chunk: Texts per forward.
        loss_fn: ``(q_emb, d_emb) -> LossOutput``.
    """

    def encode(part: list[tuple[str, int]]) -> Tensor:  # (prompt, few-shot tokens) pairs
        return module(**emb.tokenize([t for t, _ in part], extra=[n for _, n in part]))

    def split(xs: list[str], extra: list[int]) -> list[list[tuple[str, int]]]:
        pairs = list(zip(xs, extra or [0] * len(xs), strict=True))
        return [pairs[i : i + chunk] for i in range(0, len(pairs), chunk)]

    return grad_cache_backward(
        encode,
        split(batch.queries, batch.query_extra),
        split(batch.documents, batch.document_extra),
        loss_fn,
        no_sync=lambda: acc.no_sync(module),
        backward=acc.backward,
    )


def sum_over_processes(acc: Any, values: list[int]) -> list[int]:
    """Element-wise sum of ``values`` over all processes (every process must call it).

    Args:
        acc: The run's ``Accelerator``.
        values: This process's counts.
    """
    if acc.num_processes == 1:
        return values
    t = torch.tensor(values, dtype=torch.long, device=acc.device)
    return acc.reduce(t, reduction="sum").tolist()
