"""The run folder every long job writes:
``config.yaml``, ``metrics.jsonl``, ``checkpoints/``, ``plots/*.png``, ``summary.json`` and, once
finished, ``model.pt`` (the final model's plain ``state_dict``)."""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

#: run folders this process holds (:meth:`RunFolder.claim`): resolved path -> the locked descriptor, kept open
#: until the process ends (the kernel then drops the lock, also after ``kill -9``).
_HELD: dict[Path, int] = {}


@dataclasses.dataclass(frozen=True)
class RunFolder:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def create(cls, parent: str | os.PathLike, name: str) -> RunFolder:
        """A new folder ``parent/name-YYYYmmdd-HHMMSS[-k]`` with its sub-folders.

        The folder is claimed with an exclusive ``mkdir`` (atomic), so two runs started at the same
        second never share it: the loser takes the next suffix ``-k``; then held (:meth:`claim`).
        """
        parent = Path(parent)
        _refuse_non_folder(parent)
        parent.mkdir(parents=True, exist_ok=True)
        base = parent / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        for k in range(10_000):
            root = base if k == 0 else Path(f"{base}-{k}")
            try:
                root.mkdir()
            except FileExistsError:
                continue
            return cls.open(root).claim()  # a --resume of it while this process runs: refused
        raise FileExistsError(f"no free run folder name under {parent} for {base.name}")

    @classmethod
    def fresh(cls, root: str | os.PathLike) -> RunFolder:
        """Exactly ``root`` for a new run: refused (ValueError) when it already holds a run
        (``config.yaml``, ``summary.json``, ``metrics.jsonl`` or a checkpoint), when another process holds
        it (:meth:`claim`, taken before the check: two runs started together cannot both pass it) or is not
        a folder."""
        root = Path(root)
        _refuse_non_folder(root)
        root.mkdir(parents=True, exist_ok=True)
        folder = cls(root).claim()
        if folder.holds_run():
            raise _holds_a_run(root)
        return cls.open(root)

    @classmethod
    def check_fresh(cls, root: str | os.PathLike) -> None:
        """What :meth:`fresh` refuses about ``root`` itself (not a folder, already a run), checked without
        creating, holding or writing anything (``distsched train --check``)."""
        root = Path(root).resolve()
        _refuse_non_folder(root)
        if root.is_dir() and cls(root).holds_run():
            raise _holds_a_run(root)

    def claim(self) -> RunFolder:
        """Hold the folder for this process until it ends: an exclusive, non-blocking ``flock`` on the folder
        itself (nothing is written into it). ValueError (one line) when another process holds it, e.g. a
        second ``--resume`` of a run that is still training; taken again by the same process, a no-op. Where
        the file system has no such locks (some network file systems) the folder is used unlocked."""
        root = self.root.resolve()
        if root in _HELD:
            return self
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise ValueError(f"{root} is in use by another distsched process (a run training there now); "
                                 "wait for it to end, or stop it first") from None
            return self  # no flock here (e.g. NFS without it): unlocked, as before
        _HELD[root] = fd
        return self

    def holds_run(self) -> bool:
        """Whether anything of a run is here (config, summary, metrics or checkpoints)."""
        if any(p.exists() for p in (self.config_path, self.summary_path, self.metrics_path)):
            return True
        return self.checkpoints.is_dir() and any(self.checkpoints.iterdir())

    @classmethod
    def open(cls, root: str | os.PathLike) -> RunFolder:
        """An existing or new run folder at ``root`` (sub-folders created)."""
        root = Path(root)
        _refuse_non_folder(root)
        (root / "checkpoints").mkdir(parents=True, exist_ok=True)
        (root / "plots").mkdir(exist_ok=True)
        return cls(root)

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def summary_path(self) -> Path:
        return self.root / "summary.json"

    @property
    def model_path(self) -> Path:
        return self.root / "model.pt"

    def write_model(self, state_dict: Mapping[str, Any]) -> Path:
        """The final model as a plain ``state_dict`` (``model.pt``, written atomically): load it with
        ``torch.load(path, weights_only=True)`` and ``model.load_state_dict``."""
        from distsched.report.durable import save_tensors

        save_tensors(self.model_path, {k: v.detach().cpu() for k, v in state_dict.items()})
        return self.model_path

    def write_config(self, config: Mapping[str, Any]) -> None:
        self.config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False), encoding="utf-8")

    def read_config(self) -> dict[str, Any]:
        if not self.config_path.exists():
            raise FileNotFoundError(f"not a run folder (no config.yaml): {self.root}")
        from distsched.config import safe_load

        return safe_load(self.config_path.read_text(encoding="utf-8")) or {}

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        tmp = self.summary_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dict(summary), indent=2, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.summary_path)


def _refuse_non_folder(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"not a directory: {root}")


def _holds_a_run(root: Path) -> ValueError:
    return ValueError(f"{root} already holds a run; resume it with --resume {root} or choose another folder")
