"""torchrun support: process-group set-up, rank helpers, example sharding and result gathering.

Without torchrun (no ``WORLD_SIZE`` in the environment) everything degrades to one process.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def launched_with_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: torch.device) -> None:
    """Join the process group torchrun describes (nccl on CUDA, gloo on CPU), once."""
    if launched_with_torchrun() and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main_process() -> bool:
    """Only the main process writes files and prints."""
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """Under torchrun each process takes the GPU of its ``LOCAL_RANK``."""
    if device.type == "cuda" and launched_with_torchrun():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def shard_slice(n: int) -> slice:
    """This rank's contiguous share of ``range(n)`` (shares differ in size by at most one)."""
    size, extra = divmod(n, world_size())
    start = rank() * size + min(rank(), extra)
    return slice(start, start + size + (1 if rank() < extra else 0))


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (a one-element list without a process group)."""
    if not dist.is_initialized():
        return [obj]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
