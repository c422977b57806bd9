"""The worker loop's session under Ray Train: checkpoints through ``ray.train.report`` (Ray merges
the workers' folders into ``<run>/checkpoints/step_<N>/``), resume through ``ray.train.get_checkpoint``.

An elastic run (:mod:`distsched.cluster.elastic`) hands the session a ``stop_file``: when the driver has
written it (capacity for more workers appeared), every worker stops right after the next checkpoint it
saved (:class:`ResizeRequested`), so that the driver restarts the group at the new size from that step."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from distsched.train import checkpoint as ckpt
from distsched.train.session import WriteFn


class ResizeRequested(Exception):
    """Raised by :meth:`RaySession.save` on every worker, after checkpoint ``step`` was reported, when the
    driver asked the group to stop for a resize."""

    def __init__(self, step: int) -> None:
        super().__init__(f"stopped after the checkpoint of step {step} for a resize")
        self.step = step


class RaySession:
    """Rank and world size from Ray Train's context.

    ``restore_dir``: the checkpoint Ray Train hands back after a worker failure (or when the same
    run folder is trained again) if it is intact (checksums); otherwise, or when Ray has none and
    ``resume`` is set, the newest intact checkpoint on disk (e.g. one written by a torchrun run).
    ``newest``: take the newest intact checkpoint on disk when it is newer than Ray's (an elastic restart:
    a report made just before a worker was lost may not be registered by Ray, yet every rank's file of it
    is written and checksummed). ``stop_file``/``total_steps``: see the module docstring (no stop at the
    last step).
    """

    def __init__(self, checkpoints: str | os.PathLike, resume: bool = False, *, newest: bool = False,
                 stop_file: str | os.PathLike | None = None, total_steps: int | None = None) -> None:
        import ray.train

        ctx = ray.train.get_context()
        self.rank, self.world_size, self.local_rank = ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank()
        self.root = Path(checkpoints)
        self.resume = resume
        self.newest = newest
        self.stop_file = Path(stop_file) if stop_file is not None else None
        self.total_steps = total_steps
        self._scratch: tempfile.TemporaryDirectory | None = None
        self._restore: tuple[Path | None] | None = None

    def restore_dir(self) -> Path | None:
        """The checkpoint to resume from (decided once; later calls return the same folder)."""
        if self._restore is None:
            found = self._find_restore()
            if self.newest and self.resume:
                on_disk = ckpt.latest_checkpoint(self.root, warn=False)
                if on_disk is not None and (found is None or _step(on_disk) > _step(found)):
                    found = on_disk
            self._restore = (found,)
        return self._restore[0]

    def _find_restore(self) -> Path | None:
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
        if self.stop_file is not None and (self.total_steps is None or step < self.total_steps) \
                and self._stop_requested():
            raise ResizeRequested(step)

    def _stop_requested(self) -> bool:
        """Rank 0 reads the stop file and tells every rank (collective): all stop at the same step."""
        flag = [self.rank == 0 and self.stop_file is not None and self.stop_file.exists()]
        if self.world_size > 1:
            import torch.distributed as dist

            dist.broadcast_object_list(flag, src=0)
        return bool(flag[0])

    def report(self, metrics: Mapping[str, Any]) -> None:
        import ray.train

        ray.train.report(dict(metrics))


def _step(folder: Path) -> int:
    return int(ckpt.read_meta(folder)["step"])
