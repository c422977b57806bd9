"""Checkpoints of a simulation: everything a resumed run needs to continue bit for bit.

Global model, server optimizer (strategy) state (with DP: the inner strategy's, the clipping norm and the
accountant/guard history), FedBuff's event queue (clients in flight, their trained updates, simulated
time), the number of completed rounds and the seed. All randomness of a round (cohort, dropout, jitter,
client batches, DP noise) is drawn from generators seeded by ``(seed, round, stream)``, so the
seed and the round *are* the RNG state (FedBuff's launches draw from ``(seed, wave)``, the wave in its
queue's state).

``round_NNNNNN.pt`` is written atomically (temporary name, fsync, rename) with tensors and plain
types only, and loaded with ``torch.load(weights_only=True)``; its SHA-256 is in
``round_NNNNNN.sha256``, written after it. Resuming takes the newest checkpoint whose checksum
matches and skips damaged ones with a one-line warning.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from distsched.report.durable import load_tensors, save_tensors, sha256_of

_PREFIX = "round_"


def checkpoint_path(folder: str | os.PathLike, round_: int) -> Path:
    return Path(folder) / f"{_PREFIX}{round_:06d}.pt"


def _digest_path(path: Path) -> Path:
    return path.with_suffix(".sha256")


def save_checkpoint(folder: str | os.PathLike, round_: int, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically as ``round_NNNNNN.pt`` (``round_`` = completed rounds), then its
    checksum."""
    path = checkpoint_path(folder, round_)
    digest = save_tensors(path, {**state, "round": round_})
    tmp = _digest_path(path).with_suffix(".sha256.tmp")
    tmp.write_text(digest + "\n", encoding="ascii")
    os.replace(tmp, _digest_path(path))
    return path


def damage(path: str | os.PathLike) -> str | None:
    """Why the checkpoint file ``path`` cannot be used (None: its checksum matches)."""
    path = Path(path)
    sidecar = _digest_path(path)
    if not sidecar.exists():
        return f"no checksum file {sidecar.name}"
    if sidecar.read_text(encoding="ascii", errors="replace").strip() != sha256_of(path):
        return "does not match its checksum"
    return None


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The intact checkpoint with the most completed rounds, or ``None`` when there is none at all.

    Damaged ones are skipped with a one-line warning; ValueError when all are damaged."""
    files = sorted(Path(folder).glob(f"{_PREFIX}*.pt"), reverse=True)
    for k, path in enumerate(files):
        if damage(path) is None:
            for bad in files[:k]:
                sys.stderr.write(f"distsched: warning: skipping damaged checkpoint {bad} ({damage(bad)})\n")
            return path
    if files:
        raise ValueError(f"no intact checkpoint in {folder} ({files[0].name}: {damage(files[0])})")
    return None


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return load_tensors(path)
