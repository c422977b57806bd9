"""The run folder every long job writes:
``config.yaml``, ``metrics.jsonl``, ``checkpoints/``, ``plots/*.png``, ``summary.json``."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml


@dataclasses.dataclass(frozen=True)
class RunFolder:
    root: Path

    @classmethod
    def create(cls, parent: str | os.PathLike, name: str) -> RunFolder:
        """A new folder ``parent/name-YYYYmmdd-HHMMSS[-k]`` with its sub-folders."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = Path(parent) / f"{name}-{stamp}"
        root, k = base, 1
        while root.exists():
            root, k = Path(f"{base}-{k}"), k + 1
        return cls.open(root)

    @classmethod
    def open(cls, root: str | os.PathLike) -> RunFolder:
        """An existing or new run folder at ``root`` (sub-folders created)."""
        root = Path(root)
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

    def write_config(self, config: Mapping[str, Any]) -> None:
        self.config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False), encoding="utf-8")

    def read_config(self) -> dict[str, Any]:
        if not self.config_path.exists():
            raise FileNotFoundError(f"not a run folder (no config.yaml): {self.root}")
        return yaml.safe_load(self.config_path.read_text(encoding="utf-8")) or {}

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        tmp = self.summary_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dict(summary), indent=2, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.summary_path)
