"""torch.distributed set-up: the backend chosen from the hardware, process groups on loopback."""

from __future__ import annotations

import os
import socket
from datetime import timedelta

from distsched._checks import check_choice, check_int, check_positive

LOOPBACK = "127.0.0.1"
BACKENDS = ("gloo", "nccl")


def default_backend() -> str:
    """``"nccl"`` when CUDA is available, ``"gloo"`` otherwise."""
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port free on ``host`` right now (for a ``tcp://127.0.0.1:<port>`` rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def init_process_group(
    rank: int,
    world_size: int,
    init_method: str,
    backend: str | None = None,
    timeout_s: float = 300.0,
) -> str:
    """Join the default process group; returns the backend used.

    ``backend=None`` picks :func:`default_backend`. With NCCL, ``TORCH_NCCL_ASYNC_ERROR_HANDLING=1``
    is set unless already set (a failed peer aborts the job instead of hanging it) and the process
    uses CUDA device ``rank % device_count``.
    """
    import torch
    import torch.distributed as dist

    check_int("world_size", world_size, 1)
    check_int("rank", rank, 0)
    if rank >= world_size:
        raise ValueError(f"rank must be in [0, {world_size - 1}], got {rank!r}")
    check_positive("timeout_s", timeout_s)
    backend = default_backend() if backend is None else check_choice("backend", backend, BACKENDS)
    if backend == "nccl":
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group(
        backend=backend,
        init_method=init_method,
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=timeout_s),
    )
    return backend
