"""Process placement in one place: which device this process uses, its rank, sums across ranks.

Works the same under torchrun (RANK / WORLD_SIZE / LOCAL_RANK), under Lightning (which
initialises torch.distributed itself) and in a single process.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from mvq.errors import UserError


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_and_world_size() -> tuple[int, int]:
    """(rank, world size) from torch.distributed when initialised, else RANK/WORLD_SIZE, else (0, 1)."""
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def mps_available() -> bool:
    """Whether Apple's Metal (MPS) device is usable."""
    return torch.backends.mps.is_available()


def gpu_available() -> bool:
    """Whether training has a GPU: a CUDA GPU or Apple's MPS device, what Lightning's `gpu` accelerator uses."""
    return torch.cuda.is_available() or mps_available()


# Training accelerators that need a device, and what PyTorch must find for each.
_ACCELERATOR_DEVICES = {"gpu": (gpu_available, "CUDA GPU and no Apple MPS device"),
                        "cuda": (torch.cuda.is_available, "CUDA GPU"),
                        "mps": (mps_available, "Apple MPS device")}


def check_accelerator(accelerator: str, option: str, cpu_option: str, available: bool | None = None) -> None:
    """Refuse a training accelerator this machine cannot give, in one line naming `option` and the CPU alternative.

    `gpu` is a CUDA GPU or Apple's MPS device (as Lightning maps it); `cuda` and `mps` are those only.
    `available` overrides asking PyTorch (for callers that were told).
    """
    device = _ACCELERATOR_DEVICES.get(str(accelerator))
    if device is not None and not (device[0]() if available is None else available):
        raise UserError(f"{option}: this machine has no usable GPU (PyTorch finds no {device[1]}); "
                        f"train on the CPU with {cpu_option}")


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` → this process's GPU (`cuda:LOCAL_RANK`) when there is one, else the CPU.

    An explicit `cuda` without a GPU is an error, not a silent fallback.
    """
    if name == "auto":
        return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: this machine has no usable GPU; use --device cpu (or auto)")
        if device.index is None:
            device = torch.device("cuda", local_rank())
    return device


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


def raise_on_every_rank(error: str | None, source: int = 0) -> None:
    """Make a refusal found on rank `source` (its message, or None) a one-line UserError on every rank.

    Without it the other ranks would go on to the next collective and die there with a traceback.
    """
    if is_distributed():
        message = [error]
        dist.broadcast_object_list(message, src=source)
        error = message[0]
    if error is not None:
        raise UserError(error)


def barrier() -> None:
    """Wait until every process of the group gets here (nothing to wait for in a single process)."""
    if is_distributed():
        dist.barrier()
