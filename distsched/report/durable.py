"""Files that survive a crash and load without running code.

* :func:`save_tensors` writes a checkpoint under a temporary name, fsyncs it, renames it into place
  and fsyncs the folder (POSIX ``rename`` is atomic: a reader sees the old file or the whole new
  one); it returns the file's SHA-256, which the caller records so that a load can verify it.
* Everything is first turned into tensors and plain Python values (:func:`to_plain`), so the file
  loads with ``torch.load(weights_only=True)``, which refuses to unpickle anything else (a
  checkpoint from someone else cannot run code when opened).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

_CHUNK = 1 << 20


def to_plain(obj: Any) -> Any:
    """``obj`` with NumPy arrays as tensors and NumPy scalars as Python numbers (dicts, lists and
    tuples walked)."""
    if isinstance(obj, Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_plain(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(folder: str | os.PathLike) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_durably(tmp: Path, path: Path) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def save_tensors(path: str | os.PathLike, obj: Any) -> str:
    """Write ``to_plain(obj)`` with ``torch.save`` atomically and durably; returns its SHA-256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(to_plain(obj), tmp)
    digest = sha256_of(tmp)
    _replace_durably(tmp, path)
    return digest


def save_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON atomically and durably."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, sort_keys=True), encoding="utf-8")
    _replace_durably(tmp, path)


def load_tensors(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: tensors and plain types only."""
    return torch.load(path, map_location="cpu", weights_only=True)
