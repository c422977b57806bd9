"""Checkpoints: one folder per saved step, one file per worker, plus a ``meta.json`` from rank 0.

Local SGD keeps a different model on every worker between two syncs, so every worker saves its own
state: model, optimizer, schedule step, controller state (``"controller"``, None without one), sync-engine
state (rule state included), RNG states, data position and the metrics offset.
``checkpoints/step_00000100/rank_1.pt`` is rank 1 after 100 steps.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

META = "meta.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def rank_file(rank: int) -> str:
    return f"rank_{rank}.pt"


def capture_rng() -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA) generator states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_rank_state(folder: str | os.PathLike, rank: int, state: dict[str, Any]) -> Path:
    """Write ``rank_<rank>.pt`` atomically (temp file, then rename)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / rank_file(rank)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_rank_state(folder: str | os.PathLike, rank: int) -> dict[str, Any]:
    path = Path(folder) / rank_file(rank)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint has no state for rank {rank}: {path}")
    return torch.load(path, map_location="cpu", weights_only=False)


def write_meta(folder: str | os.PathLike, meta: dict[str, Any]) -> None:
    path = Path(folder) / META
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def read_meta(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / META
    if not path.exists():
        raise FileNotFoundError(f"not a complete checkpoint (no {META}): {folder}")
    return json.loads(path.read_text(encoding="utf-8"))


def complete_checkpoints(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every complete checkpoint under ``root`` (meta plus all rank files),
    oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _STEP_DIR.match(child.name)
        if not (m and child.is_dir() and (child / META).exists()):
            continue
        try:
            meta = read_meta(child)
        except (OSError, ValueError):
            continue
        if all((child / rank_file(r)).exists() for r in range(int(meta.get("world_size", 1)))):
            found.append((int(m.group(1)), child))
    return sorted(found)


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder under ``root``, or None."""
    found = complete_checkpoints(root)
    return found[-1][1] if found else None


def prune(root: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints."""
    for _, folder in complete_checkpoints(root)[:-keep]:
        shutil.rmtree(folder, ignore_errors=True)
