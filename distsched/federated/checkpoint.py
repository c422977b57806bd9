"""Checkpoints of a simulation: everything a resumed run needs to continue bit for bit.

Global model, server optimizer (strategy) state, DP clipping norm and accountant/guard history,
the number of completed rounds and the seed. All randomness of a round (cohort, dropout, jitter,
client batches, DP noise) is drawn from generators seeded by ``(seed, round, stream)``, so the
seed and the round *are* the RNG state; nothing else carries over between rounds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

_PREFIX = "round_"


def checkpoint_path(folder: str | os.PathLike, round_: int) -> Path:
    return Path(folder) / f"{_PREFIX}{round_:06d}.pt"


def save_checkpoint(folder: str | os.PathLike, round_: int, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically as ``round_NNNNNN.pt`` (``round_`` = completed rounds)."""
    path = checkpoint_path(folder, round_)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({**state, "round": round_}, tmp)
    os.replace(tmp, path)
    return path


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The checkpoint with the most completed rounds, or ``None``."""
    files = sorted(Path(folder).glob(f"{_PREFIX}*.pt"))
    return files[-1] if files else None


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=False)
