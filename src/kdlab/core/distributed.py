"""Process-group helpers for ``torchrun``: init from the environment, rank queries, reductions."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_enabled() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_enabled() else 0


def world_size() -> int:
    return dist.get_world_size() if is_enabled() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env(device_kind: str) -> torch.device | None:
    """Join the process group when launched by ``torchrun`` (WORLD_SIZE > 1); returns the local device.

    NCCL on CUDA (one GPU per local rank), gloo on CPU.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_enabled():
        return None
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_kind == "cuda":
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl")
        return torch.device("cuda", local_rank)
    dist.init_process_group("gloo")
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if is_enabled():
        tensor = tensor.clone()
        dist.all_reduce(tensor)
    return tensor


def all_reduce_(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """``tensor`` reduced in place over all processes (``"sum"``, ``"mean"`` or ``"max"``)."""
    if is_enabled():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        if op == "mean":
            tensor /= world_size()
    return tensor


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """The concatenation of ``tensor`` (same shape on every rank) over all processes along dim 0, in
    rank order; ``tensor`` itself without a process group."""
    if not is_enabled():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def broadcast_object(obj: object) -> object:
    """Rank 0's value of ``obj`` on every rank."""
    if not is_enabled():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if is_enabled():
        dist.barrier()


def shutdown() -> None:
    if is_enabled():
        dist.destroy_process_group()
