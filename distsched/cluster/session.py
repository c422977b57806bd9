"""The worker loop's session under Ray Train: checkpoints through ``ray.train.report`` (Ray merges
the workers' folders into ``<run>/checkpoints/step_<N>/``), resume through ``ray.train.get_checkpoint``."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from distsched.train import checkpoint as ckpt
from distsched.train.session import WriteFn


class RaySession:
    """Rank and world size from Ray Train's context.

    ``restore_dir``: the checkpoint Ray Train hands back after a worker failure (or when the same
    run folder is trained again) if it is intact (checksums); otherwise, or when Ray has none and
    ``resume`` is set, the newest intact checkpoint on disk (e.g. one written by a torchrun run).
    """

    def __init__(self, checkpoints: str | os.PathLike, resume: bool = False) -> None:
        import ray.train

        ctx = ray.train.get_context()
        self.rank, self.world_size, self.local_rank = ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank()
        self.root = Path(checkpoints)
        self.resume = resume
        self._scratch: tempfile.TemporaryDirectory | None = None

    def restore_dir(self) -> Path | None:
        import ray.train

        found = ray.train.get_checkpoint()
        if found is not None:
            if os.path.isdir(found.path):
                path = Path(found.path)
            else:
                self._scratch = tempfile.TemporaryDirectory(prefix="distsched-restore-")
                path = Path(found.to_directory(self._scratch.name))
            problem = ckpt.damage(path)
            if problem is None:
                return path
            if self.rank == 0:
                sys.stderr.write(f"distsched: warning: skipping damaged checkpoint {found.path} ({problem})\n")
            return ckpt.latest_checkpoint(self.root, warn=self.rank == 0)
        return ckpt.latest_checkpoint(self.root, warn=self.rank == 0) if self.resume else None

    def save(self, step: int, write: WriteFn, metrics: Mapping[str, Any]) -> None:
        import ray.train

        with tempfile.TemporaryDirectory(prefix="distsched-ckpt-") as tmp:
            write(Path(tmp))
            sums = ckpt.gather_digests(tmp, self.rank, self.world_size)  # collective
            if self.rank == 0:
                ckpt.write_meta(tmp, {"step": step, "world_size": self.world_size, "sha256": sums, **dict(metrics)})
            ray.train.report(
                dict(metrics),
                checkpoint=ray.train.Checkpoint.from_directory(tmp),
                checkpoint_dir_name=ckpt.checkpoint_name(step),
            )

    def report(self, metrics: Mapping[str, Any]) -> None:
        import ray.train

        ray.train.report(dict(metrics))
