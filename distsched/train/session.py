"""What the worker loop needs from whoever launched it: its rank, the checkpoint to resume from,
a way to save a checkpoint and a way to report metrics.

:class:`LocalSession` serves torchrun and plain processes (checkpoints written straight into the run
folder); the Ray Train session lives in :mod:`distsched.cluster.session`, so that this package never
imports Ray.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from distsched.train import checkpoint as ckpt

#: writes one worker's files into the given folder
WriteFn = Callable[[Path], None]


class Session(Protocol):
    rank: int
    world_size: int
    local_rank: int

    def restore_dir(self) -> Path | None:
        """The checkpoint folder to resume from, or None for a fresh start."""

    def save(self, step: int, write: WriteFn, metrics: Mapping[str, Any]) -> None:
        """Collective: every worker calls it at the same step; ``write(folder)`` writes its files."""

    def report(self, metrics: Mapping[str, Any]) -> None:
        """Collective: metrics of a finished run (rank 0's are kept)."""


class LocalSession:
    """torchrun / plain processes: checkpoints go to ``<run>/checkpoints/step_<N>/``.

    Saving: every rank writes its file, the ranks all-gather the files' checksums, then rank 0 writes
    ``meta.json`` with them (which marks the checkpoint complete) and prunes old ones.
    """

    def __init__(self, checkpoints: str | os.PathLike, rank: int, world_size: int, local_rank: int = 0,
                 keep: int = 2, resume: bool = True) -> None:
        self.root = Path(checkpoints)
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.keep = keep
        self.resume = resume

    def restore_dir(self) -> Path | None:
        return ckpt.latest_checkpoint(self.root) if self.resume else None

    def _barrier(self) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()

    def save(self, step: int, write: WriteFn, metrics: Mapping[str, Any]) -> None:
        folder = self.root / ckpt.checkpoint_name(step)
        folder.mkdir(parents=True, exist_ok=True)
        write(folder)
        sums = ckpt.gather_digests(folder, self.rank, self.world_size)  # collective: all files are written
        if self.rank == 0:
            ckpt.write_meta(folder, {"step": step, "world_size": self.world_size, "sha256": sums, **dict(metrics)})
            ckpt.prune(self.root, self.keep)
        self._barrier()

    def report(self, metrics: Mapping[str, Any]) -> None:
        return None
