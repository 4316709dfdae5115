"""The little of torch.distributed that evaluation needs: who am I, and sum across ranks."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_and_world_size() -> tuple[int, int]:
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Element-wise sums over ranks, returned on each tensor's own device.

    NCCL reduces on the GPU; other backends (gloo) get CPU copies.
    """
    if not is_distributed():
        return tensors
    on_gpu = dist.get_backend() == "nccl"
    out = []
    for t in tensors:
        work = t.detach().clone() if on_gpu else t.detach().to("cpu", copy=True)
        if on_gpu and work.device.type != "cuda":
            work = work.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(work, op=dist.ReduceOp.SUM)
        out.append(work.to(t.device))
    return tuple(out)


def init_from_environment(device_type: str) -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1); returns True if this call created it."""
    if is_distributed() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return True
