"""Checkpoints: one folder per saved step, one file per worker, plus a ``meta.json`` from rank 0.

Local SGD keeps a different model on every worker between two syncs, so every worker saves its own
state: model, optimizer, schedule step, controller state (``"controller"``, None without one), sync-engine
state (rule state included), RNG states, data position and the metrics offset.
``checkpoints/step_00000100/rank_1.pt`` is rank 1 after 100 steps.

Every file is written atomically (temporary name, fsync, rename) and holds tensors and plain types
only (it loads with ``torch.load(weights_only=True)``, and is loaded that way). ``meta.json`` records
the SHA-256 of every rank file (``"sha256": {"rank_0.pt": ...}``); a checkpoint is *intact* when its
meta, all its rank files and their checksums agree. Resuming takes the newest intact checkpoint and
skips damaged ones with a one-line warning.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distsched.report.durable import load_tensors, save_json, save_tensors, sha256_of

META = "meta.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def rank_file(rank: int) -> str:
    return f"rank_{rank}.pt"


def capture_rng() -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA) generator states, as tensors and plain types."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(_as_tuples(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(obj: Any) -> Any:
    return tuple(_as_tuples(v) for v in obj) if isinstance(obj, (list, tuple)) else obj


def save_rank_state(folder: str | os.PathLike, rank: int, state: dict[str, Any]) -> Path:
    """Write ``rank_<rank>.pt`` atomically (temp file, fsync, rename)."""
    path = Path(folder) / rank_file(rank)
    save_tensors(path, state)
    return path


def load_rank_state(folder: str | os.PathLike, rank: int) -> dict[str, Any]:
    path = Path(folder) / rank_file(rank)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint has no state for rank {rank}: {path}")
    return load_tensors(path)


def write_meta(folder: str | os.PathLike, meta: dict[str, Any]) -> None:
    save_json(Path(folder) / META, meta)


def read_meta(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / META
    if not path.exists():
        raise FileNotFoundError(f"not a complete checkpoint (no {META}): {folder}")
    return json.loads(path.read_text(encoding="utf-8"))


def digests(folder: str | os.PathLike, ranks: range) -> dict[str, str]:
    """``{"rank_<r>.pt": sha256}`` for ``ranks`` of the files in ``folder``."""
    return {rank_file(r): sha256_of(Path(folder) / rank_file(r)) for r in ranks}


def gather_digests(folder: str | os.PathLike, rank: int, world_size: int) -> dict[str, str]:
    """Every rank's file checksum, ``{"rank_<r>.pt": sha256}``: each rank hashes its own file and
    the process group (if any) all-gathers them, so this is collective when ``world_size > 1``."""
    own = digests(folder, range(rank, rank + 1))
    if world_size == 1:
        return own
    import torch.distributed as dist

    parts: list[Any] = [None] * world_size
    dist.all_gather_object(parts, own)
    return {k: v for part in parts for k, v in part.items()}


def damage(folder: str | os.PathLike) -> str | None:
    """Why the checkpoint in ``folder`` cannot be used (None: it is intact)."""
    folder = Path(folder)
    try:
        meta = read_meta(folder)
        world = int(meta.get("world_size", 1))
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        return f"unreadable {META} ({type(exc).__name__})"
    sums = meta.get("sha256")
    if not isinstance(sums, dict):
        return f"no checksums in {META}"
    for r in range(world):
        path = folder / rank_file(r)
        if not path.exists():
            return f"{path.name} missing"
        if sums.get(path.name) != sha256_of(path):
            return f"{path.name} does not match its checksum"
    return None


def complete_checkpoints(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every checkpoint under ``root`` that has a meta and all rank files,
    oldest first (checksums not verified: see :func:`latest_checkpoint`)."""
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


def step_folders(root: str | os.PathLike) -> list[Path]:
    """Every ``step_*`` folder under ``root``, newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((c for c in root.iterdir() if _STEP_DIR.match(c.name) and c.is_dir()), reverse=True)


def latest_checkpoint(root: str | os.PathLike, *, warn: bool = True) -> Path | None:
    """The newest intact checkpoint folder under ``root``, or None.

    A folder without ``meta.json`` is a save that never finished and is passed over silently; a
    damaged one (see :func:`damage`) is skipped with a one-line warning on stderr. Raises ValueError
    when checkpoints were saved but none is intact (resuming would silently start over)."""
    damaged = []
    for folder in step_folders(root):
        if not (folder / META).exists():
            continue
        problem = damage(folder)
        if problem is None:
            if warn:
                for line in damaged:
                    sys.stderr.write(f"distsched: warning: skipping damaged checkpoint {line}\n")
            return folder
        damaged.append(f"{folder.name}: {problem}")
    if damaged:
        raise ValueError(f"no intact checkpoint in {root} ({damaged[0]})")
    return None


def prune(root: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints."""
    for _, folder in complete_checkpoints(root)[:-keep]:
        shutil.rmtree(folder, ignore_errors=True)
