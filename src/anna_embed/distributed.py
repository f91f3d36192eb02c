"""Encoding spread over the processes of ``torchrun`` / ``accelerate launch``: shard, encode, gather.

:func:`launch` joins the process group the launcher set up (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
``MASTER_ADDR`` in the environment; gloo on CPU, NCCL on CUDA with one GPU per ``LOCAL_RANK``), or reuses
one already initialised (an ``Accelerator``'s), and returns the :class:`Ranks` of this process. Without a
launcher it returns :data:`SINGLE`, imports nothing and every method of :data:`SINGLE` is a no-op, so a
plain run behaves exactly as before.

Sharding is opt-in: a stage hands its :class:`Ranks` to the encoding call that should be spread
(``encode_rows``, the mining corpus, the evaluation adapter); nothing spreads on its own, so code that
runs on one rank of a distributed job (a training loop's quick evaluation) never waits on the others.

The rules every caller follows:

* a rank's share of ``n`` rows is the contiguous block :func:`shard_bounds` gives it;
* rows come back in rank order, trimmed of the padding the collectives need (:func:`assemble`):
  :meth:`Ranks.gather_rows` on rank 0 only (it writes), :meth:`Ranks.all_gather_rows` on every rank;
* only rank 0 writes files; it learns what is already cached and tells the others
  (:meth:`Ranks.broadcast`), so ranks on machines that see different disks still agree.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import numpy as np

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: What ``torchrun`` (and ``accelerate launch``, which runs it) puts in every worker's environment.
_LAUNCHER_ENV = ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT")


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """The contiguous block ``[start, stop)`` of ``n`` rows that ``rank`` of ``world`` processes takes.

    Blocks are balanced (sizes differ by at most one; the first ``n % world`` ranks take one more) and
    cover ``range(n)`` in rank order; with ``n < world`` the last ranks get empty blocks.

    Example:
        >>> [shard_bounds(5, r, 3) for r in range(3)]
        [(0, 2), (2, 4), (4, 5)]

    Raises:
        ValueError: ``n < 0``, ``world < 1`` or ``rank`` outside ``[0, world)``.
    """
    if n < 0 or world < 1 or not 0 <= rank < world:
        raise ValueError(f"shard_bounds: need n >= 0 and 0 <= rank < world, got {n=}, {rank=}, {world=}")
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def assemble(blocks: Sequence[np.ndarray], rows: Sequence[int]) -> np.ndarray:
    """Concatenate the first ``rows[r]`` rows of each rank's padded block ``blocks[r]``, in rank order.

    Args:
        blocks: One ``[R_max, D]`` block per rank (what an all-gather of padded blocks returns).
        rows: The real row count of each block.

    Returns:
        ``[sum(rows), D]`` float32.
    """
    if len(blocks) != len(rows):
        raise ValueError(f"assemble: {len(blocks)} blocks but {len(rows)} row counts")
    dim = blocks[0].shape[1] if blocks else 0
    parts = [np.asarray(b[:r], dtype=np.float32) for b, r in zip(blocks, rows, strict=True)]
    return np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)


def _as_rows(local: Any) -> np.ndarray:
    """A numpy array or torch tensor as a float32 ``[R, D]`` array (an empty input as ``[0, 0]``)."""
    if hasattr(local, "detach"):
        local = local.detach().float().cpu().numpy()
    arr = np.ascontiguousarray(local, dtype=np.float32)
    if arr.size == 0 and arr.ndim != 2:
        arr = arr.reshape(0, 0)
    if arr.ndim != 2:
        raise ValueError(f"expected a [rows, D] matrix, got shape {arr.shape}")
    return arr


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes an encoding is spread over.

    Attributes:
        rank: This process, ``0 <= rank < world``; rank 0 writes the files.
        world: How many processes there are; 1 (:data:`SINGLE`) makes every method a no-op.
    """

    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        """Whether there is more than one process (and so a process group to talk through)."""
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the one that reads caches and writes outputs."""
        return self.rank == 0

    def bounds(self, n: int) -> tuple[int, int]:
        """This rank's contiguous share ``[start, stop)`` of ``n`` rows (:func:`shard_bounds`)."""
        return shard_bounds(n, self.rank, self.world)

    def _device(self) -> Any:
        import torch
        import torch.distributed as dist

        return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"

    def _padded(self, local: Any) -> tuple[Any, list[int]]:
        """This rank's rows as a tensor padded to the longest block, and every rank's row count."""
        import torch
        import torch.distributed as dist

        arr = _as_rows(local)
        dev = self._device()
        shape = torch.tensor(arr.shape, dtype=torch.long, device=dev)
        shapes = [torch.zeros_like(shape) for _ in range(self.world)]
        dist.all_gather(shapes, shape)
        rows = [int(s[0]) for s in shapes]
        dims = sorted({int(s[1]) for s, r in zip(shapes, rows, strict=True) if r > 0})
        if len(dims) > 1:
            raise ValueError(f"ranks hold vectors of different sizes {dims}")
        dim = dims[0] if dims else max(int(s[1]) for s in shapes)
        block = torch.zeros((max(rows), dim), dtype=torch.float32, device=dev)
        if arr.shape[0]:
            block[: arr.shape[0]] = torch.from_numpy(arr).to(dev)
        return block, rows

    def all_gather_rows(self, local: Any) -> np.ndarray:
        """Every rank's ``[R_r, D]`` rows (numpy or torch), concatenated in rank order, on every rank.

        Ranks may hold different row counts (zero included); blocks are padded to the longest for the
        collective and trimmed again. Returns ``[sum R_r, D]`` float32.
        """
        if not self.active:
            return _as_rows(local)
        import torch
        import torch.distributed as dist

        block, rows = self._padded(local)
        if not max(rows):
            return np.zeros((0, block.shape[1]), np.float32)
        blocks = [torch.empty_like(block) for _ in range(self.world)]
        dist.all_gather(blocks, block)
        return assemble([b.cpu().numpy() for b in blocks], rows)

    def gather_rows(self, local: Any) -> np.ndarray | None:
        """As :meth:`all_gather_rows`, but only rank 0 receives the rows; the other ranks get None."""
        if not self.active:
            return _as_rows(local)
        import torch
        import torch.distributed as dist

        block, rows = self._padded(local)
        if not max(rows):
            return np.zeros((0, block.shape[1]), np.float32) if self.is_main else None
        blocks = [torch.empty_like(block) for _ in range(self.world)] if self.is_main else None
        dist.gather(block, blocks, dst=0)
        return None if blocks is None else assemble([b.cpu().numpy() for b in blocks], rows)

    def broadcast_rows(self, rows: Any) -> np.ndarray:
        """Rank 0's ``[N, D]`` matrix on every rank (the others pass None)."""
        if not self.active:
            return _as_rows(rows)
        import torch
        import torch.distributed as dist

        dev = self._device()
        arr = _as_rows(rows) if self.is_main else None
        shape = torch.tensor(arr.shape if arr is not None else (0, 0), dtype=torch.long, device=dev)
        dist.broadcast(shape, src=0)
        data = torch.empty(tuple(int(s) for s in shape), dtype=torch.float32, device=dev)
        if arr is not None:
            data.copy_(torch.from_numpy(arr))
        if data.numel():
            dist.broadcast(data, src=0)
        return data.cpu().numpy()

    def broadcast(self, obj: T) -> T:
        """Rank 0's picklable ``obj`` on every rank (what the others pass is ignored)."""
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]  # type: ignore[return-value]

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.active:
            import torch.distributed as dist

            dist.barrier()


#: One process: no sharding, no collectives.
SINGLE = Ranks()


def launch() -> Ranks:
    """This process's :class:`Ranks`: joins the launcher's process group, once, when there is one.

    An initialised process group (ours from an earlier call, or an ``Accelerator``'s) is reused. Otherwise,
    when ``torchrun`` / ``accelerate launch`` started more than one process (``WORLD_SIZE > 1``, with
    ``RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set), a group is initialised: NCCL with this process on
    GPU ``LOCAL_RANK`` (so models loaded afterwards on ``"cuda"`` land there) when CUDA is available, gloo
    otherwise; it is destroyed when the interpreter exits. Anything else is :data:`SINGLE` (torch is not
    even imported). Call it before loading a model.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not all(k in os.environ for k in _LAUNCHER_ENV):
        return SINGLE
    import torch
    import torch.distributed as dist

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend)
    close_at_exit()
    ranks = Ranks(dist.get_rank(), dist.get_world_size())
    logger.debug("Rank %d of %d (%s)", ranks.rank, ranks.world, backend)
    return ranks


_CLOSE_REGISTERED = False


def close_at_exit() -> None:
    """Destroy the default process group when the interpreter exits (registered once per process), for
    the group :func:`launch` creates and the trainer's ``Accelerator`` alike.

    Without it a gloo worker can abort at interpreter teardown ("terminate called without an active
    exception": the group's threads are still joinable when static destructors run).
    """
    global _CLOSE_REGISTERED
    if not _CLOSE_REGISTERED:
        _CLOSE_REGISTERED = True
        atexit.register(_close)


def _close() -> None:
    """Destroy the default process group if there is one. No barrier first: a rank may finish long
    before rank 0 (mining's workers leave after the corpus), and destroying a group does not wait for the
    other ranks."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def finish(code: int) -> NoReturn:
    """End the process with ``code``; a rank of a multi-process launch leaves through ``os._exit``.

    gloo's worker threads can abort the interpreter's own teardown ("terminate called without an active
    exception", SIGABRT) even after the group is destroyed, turning a finished rank into a failed launch.
    So a process in a process group destroys it, flushes its logs and output, and skips the teardown.
    Every output is already written (atomically) by then. One process exits normally.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        raise SystemExit(code)
    _close()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
