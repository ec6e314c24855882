"""Small helpers for running on several processes (DDP through Accelerate, or ``torchrun``).

Everything here is a no-op in a single process, so library code can call these helpers unconditionally:

- :func:`main_process_first` -- rank 0 runs the block first (e.g. builds a cache on disk) while the other ranks
  wait at a barrier; then they run it (and find the cache ready).
- :func:`barrier`, :func:`rank`, :func:`world_size`, :func:`is_main_process`, :func:`run_device`.
- :func:`all_gather_cat` -- concatenate a tensor's rows from every rank (in rank order), e.g. the memory-bank
  updates of a contrastive method, so every rank applies the whole global batch's update.
- :func:`all_reduce_mean` -- average a tensor in place across ranks (e.g. gradients of state kept in buffers).
- :func:`broadcast_state` -- copy rank 0's buffers (or any tensors) to every rank.

The process group is the one Accelerate (or ``torch.distributed.init_process_group``) created; on CPU that is
the ``gloo`` backend.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator

import torch
import torch.distributed as dist
from torch import nn


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def launched_distributed() -> bool:
    """True when the environment says this process is one of several (``torchrun`` / ``accelerate launch``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _ensure_group() -> None:
    """Create the process group from the launcher's environment if nobody has yet (Accelerate's way)."""
    if launched_distributed() and not (dist.is_available() and dist.is_initialized()):
        from accelerate import PartialState

        PartialState(cpu=not torch.cuda.is_available())


def run_device(cpu: bool = False) -> torch.device:
    """The device of this process's work: its own GPU under a launcher (Accelerate's choice by local rank), else the
    GPU when there is one and ``cpu`` is not set, else the CPU."""
    if launched_distributed():
        from accelerate import PartialState

        return PartialState(cpu=cpu or not torch.cuda.is_available()).device
    return torch.device("cuda" if torch.cuda.is_available() and not cpu else "cpu")


def world_size() -> int:
    _ensure_group()
    return dist.get_world_size() if _active() else 1


def rank() -> int:
    _ensure_group()
    return dist.get_rank() if _active() else 0


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    """Wait until every rank reaches this point (no-op in one process)."""
    _ensure_group()
    if _active():
        dist.barrier()


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Run the block on rank 0 first; the other ranks enter it only once rank 0 has left it.

    Typical use: building a file cache that every rank then reads::

        with main_process_first():
            cache = build_or_load_cache(path)   # rank 0 builds, the others load the finished files
    """
    _ensure_group()
    if not _active():
        yield
        return
    main = dist.get_rank() == 0
    if not main:
        dist.barrier()
    try:
        yield
    finally:
        if main:
            dist.barrier()


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """The rows of ``tensor`` from every rank, concatenated in rank order (ranks may hold different row counts).

    Not differentiable: use it for state updates, not for losses."""
    if not _active():
        return tensor
    world = dist.get_world_size()
    n = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    counts = [int(s) for s in sizes]
    largest = max(counts)
    padded = tensor.new_zeros((largest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:c] for p, c in zip(parts, counts)])


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average ``tensor`` across ranks, in place; returns it."""
    if _active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(dist.get_world_size())
    return tensor


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` across ranks, in place; returns it."""
    if _active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_state(tensors: Iterable[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` on every rank with rank ``src``'s values (in place)."""
    if not _active():
        return
    for t in tensors:
        dist.broadcast(t.data, src=src)


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Make every buffer of ``module`` (BatchNorm statistics, methods' state) equal to rank ``src``'s."""
    broadcast_state([b for b in module.buffers() if b.numel()], src=src)


def max_abs_difference_across_ranks(tensors: Iterable[torch.Tensor]) -> float:
    """Largest |x_rank - x_rank0| over the given tensors and ranks (0.0 in one process): a consistency check."""
    if not _active():
        return 0.0
    worst = torch.zeros(())
    for t in tensors:
        ref = t.detach().clone()
        dist.broadcast(ref, src=0)
        if t.numel():
            worst = torch.maximum(worst, (t.detach().float() - ref.float()).abs().max().cpu())
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return float(worst)
