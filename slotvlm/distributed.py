"""torchrun helpers: rank/world from the environment, a process group (gloo on CPU, NCCL on CUDA)."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def env_rank_world() -> tuple[int, int, int]:
    """``(rank, local_rank, world_size)`` as set by torchrun (``(0, 0, 1)`` when run directly)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def init(device: str | None = None, backend: str | None = None) -> tuple[int, int, torch.device]:
    """Join the process group when launched by torchrun. Returns ``(rank, world_size, device)``:
    ``cuda:LOCAL_RANK`` when CUDA is available (or asked for), else CPU. Backend: NCCL for CUDA
    devices, gloo for CPU, unless ``backend`` is given."""
    rank, local, world = env_rank_world()
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if dev.type == "cuda" else "gloo"))
    return rank, world, dev


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float], device=None) -> list[float]:
    """Sum of ``values`` over ranks (identity when not distributed)."""
    if not dist.is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device or "cpu")
    dist.all_reduce(t)
    return t.tolist()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
