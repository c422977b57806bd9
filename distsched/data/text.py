"""``stdlib_text``: the running interpreter's own standard library as a byte-level language-modelling
corpus (vocabulary 256), which ships with every Python: nothing is downloaded.

The corpus is every ``.py`` file under ``sysconfig.get_paths()["stdlib"]`` except those under ``test/``
and ``site-packages/`` (about 13 MB for CPython 3.11). A file goes to the validation split when
``sha256(relative path)`` mod 10_000 < ``val_fraction * 10_000``: deterministic, independent of the seed
and of the other files. Natural federated clients: one per top-level module or package (``json/``,
``asyncio/``, ``os.py``...), heavy-tailed in size and genuinely non-IID.

The bytes are concatenated once into a cache file (``<cache>/stdlib-<key>.u8``, train files grouped by
client, then the validation files) with a manifest beside it (file list, per-file offsets, sha256 of
the contents); ``key`` hashes the paths, sizes and modification times, so a changed stdlib gets a new
cache. Workers memory-map that file: an example is a window of ``context`` bytes ``x = a[s:s+T]`` with the
next bytes as targets ``y = a[s+1:s+T+1]``; windows never straddle two clients (nor the split).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from distsched._checks import check_int, check_range
from distsched.data.partitions import Partition

VOCAB = 256
TASK = "lm"


# ------------------------------------------------------------------------------------- the corpus
def stdlib_root() -> Path:
    """The running interpreter's standard library folder."""
    return Path(sysconfig.get_paths()["stdlib"]).resolve()


def stdlib_files(root: str | os.PathLike | None = None) -> list[str]:
    """Relative paths (POSIX, sorted) of the ``.py`` files under ``root``, without ``test/`` and
    ``site-packages/`` at any depth."""
    base = Path(root) if root is not None else stdlib_root()
    out = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if d not in ("test", "site-packages", "__pycache__"))
        rel = Path(dirpath).relative_to(base)
        out += [(rel / f).as_posix() for f in filenames if f.endswith(".py")]
    return sorted(out)


def client_of(path: str) -> str:
    """The top-level module or package a relative path belongs to (``json/decoder.py`` -> ``json``,
    ``os.py`` -> ``os``)."""
    head = path.split("/", 1)[0]
    return head[:-3] if head.endswith(".py") else head


def is_validation(path: str, val_fraction: float) -> bool:
    """``sha256(path) mod 10_000 < val_fraction * 10_000``."""
    h = int.from_bytes(hashlib.sha256(path.encode()).digest()[:8], "big")
    return h % 10_000 < round(val_fraction * 10_000)


@dataclasses.dataclass(frozen=True)
class Corpus:
    """The cached corpus: ``path`` (the uint8 file), the train part ``[0, train_bytes)`` cut by
    ``client_offsets`` into ``clients``, the validation part ``[train_bytes, total)``; ``manifest``
    (what a run records: file list, sha256, sizes)."""

    path: Path
    clients: tuple[str, ...]
    client_offsets: np.ndarray
    train_bytes: int
    total_bytes: int
    manifest: dict[str, Any]

    @property
    def sha256(self) -> str:
        return str(self.manifest["sha256"])


def _cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("DISTSCHED_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "distsched"


def _fingerprint(root: Path, files: list[str], val_fraction: float) -> str:
    h = hashlib.sha256(f"{root}\n{val_fraction!r}\n".encode())
    for f in files:
        st = (root / f).stat()
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def load_corpus(
    val_fraction: float = 0.05,
    cache_dir: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
) -> Corpus:
    """The corpus of ``root`` (default the running stdlib), built into the cache on first use.

    The cache file and its manifest are written to temporary names and renamed, so workers that build
    it at the same time never read a half-written file.
    """
    check_range("val_fraction", val_fraction, 0.0, 1.0, low_open=True, high_open=True)
    base = Path(root).resolve() if root is not None else stdlib_root()
    files = stdlib_files(base)
    if not files:
        raise ValueError(f"stdlib_text: no .py files under {base}")
    key = _fingerprint(base, files, val_fraction)
    folder = _cache_dir(cache_dir)
    data_path, meta_path = folder / f"stdlib-{key}.u8", folder / f"stdlib-{key}.json"
    if not (data_path.exists() and meta_path.exists()):
        _build(base, files, val_fraction, data_path, meta_path)
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    return Corpus(
        data_path, tuple(meta["clients"]), np.asarray(meta["client_offsets"], dtype=np.int64),
        int(meta["train_bytes"]), int(meta["total_bytes"]), meta,
    )


def _build(base: Path, files: list[str], val_fraction: float, data_path: Path, meta_path: Path) -> None:
    train = sorted((f for f in files if not is_validation(f, val_fraction)), key=lambda f: (client_of(f), f))
    val = [f for f in files if is_validation(f, val_fraction)]
    if not train or not val:
        raise ValueError(f"stdlib_text: val_fraction={val_fraction!r} leaves an empty split of {len(files)} files")
    digest = hashlib.sha256()
    clients: list[str] = []
    client_offsets: list[int] = []
    file_offsets: list[int] = []
    pos = 0
    data_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=data_path.parent, prefix=".stdlib-")
    with os.fdopen(fd, "wb") as out:

        def put(f: str) -> None:
            nonlocal pos
            raw = (base / f).read_bytes()
            digest.update(f"{f}\0{len(raw)}\0".encode())
            digest.update(raw)
            file_offsets.append(pos)
            out.write(raw)
            pos += len(raw)

        for f in train:
            if not clients or clients[-1] != client_of(f):
                clients.append(client_of(f))
                client_offsets.append(pos)
            put(f)
        train_bytes = pos
        for f in val:
            put(f)
    os.replace(tmp, data_path)
    meta = {
        "name": "stdlib_text", "root": str(base), "val_fraction": val_fraction, "sha256": digest.hexdigest(),
        "files": train + val, "file_offsets": file_offsets, "train_files": len(train), "val_files": len(val),
        "clients": clients, "client_offsets": [*client_offsets, train_bytes], "train_bytes": train_bytes,
        "total_bytes": pos,
    }
    fd, tmp = tempfile.mkstemp(dir=data_path.parent, prefix=".stdlib-")
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(meta, out)
    os.replace(tmp, meta_path)


def corpus_record(corpus: Corpus) -> dict[str, Any]:
    """What a run folder records about its corpus (``corpus.json``): the file list and the content hash."""
    m = corpus.manifest
    return {k: m[k] for k in ("name", "root", "sha256", "val_fraction", "train_files", "val_files",
                              "train_bytes", "total_bytes", "files")} | {"clients": len(corpus.clients)}


# ------------------------------------------------------------------------------------- windows
def window_starts(lo: int, hi: int, context: int) -> np.ndarray:
    """Starts ``lo + j * context`` of the non-overlapping windows that fit with their targets in
    ``[lo, hi)`` (a window needs ``context + 1`` bytes)."""
    n = max(0, (hi - lo - 1) // context)
    return lo + context * np.arange(n, dtype=np.int64)


class ByteWindows(Dataset):
    """Map-style dataset over a memory-mapped byte file: item ``i`` is ``(a[s_i:s_i+T], a[s_i+1:s_i+T+1])``
    as int64 tensors. Pickles as (path, starts): the file is opened lazily in each process."""

    def __init__(self, path: str | os.PathLike, starts: np.ndarray, context: int, groups: np.ndarray | None = None):
        self.path = str(path)
        self.starts = np.asarray(starts, dtype=np.int64)
        self.context = check_int("context", context, 1)
        #: the client (top-level module) of every window
        self.targets = np.zeros(len(self.starts), dtype=np.int64) if groups is None else np.asarray(groups)
        self._mm: np.memmap | None = None

    def _bytes(self) -> np.memmap:
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        return self._mm

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = int(self.starts[i])
        w = torch.from_numpy(np.array(self._bytes()[s : s + self.context + 1], dtype=np.int64))
        return w[:-1], w[1:]

    def arrays(self, idx: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` uint8 arrays of shape ``(n, T)`` for windows ``idx`` (all by default), one gather."""
        starts = self.starts if idx is None else self.starts[np.asarray(idx)]
        w = self._bytes()[starts[:, None] + np.arange(self.context + 1)]
        return np.ascontiguousarray(w[:, :-1]), np.ascontiguousarray(w[:, 1:])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_mm": None}


@dataclasses.dataclass(frozen=True)
class TextSplits:
    """Train windows (with their client of origin), validation windows, the corpus."""

    train: ByteWindows
    validation: ByteWindows
    corpus: Corpus
    clients: tuple[str, ...]

    def natural_partition(self) -> Partition:
        """Train window indices of every client that holds at least one window (one ``argsort``)."""
        present, owner = np.unique(np.asarray(self.train.targets), return_inverse=True)
        return Partition.from_owner(owner.reshape(-1), len(present))


def stdlib_windows(
    context: int = 128,
    val_fraction: float = 0.05,
    val_windows: int | None = 256,
    cache_dir: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
) -> TextSplits:
    """Windows of ``context`` bytes over the corpus (see the module docstring). ``val_windows``: the
    validation set is that many windows evenly spaced over the validation files (None: all of them),
    so that evaluating a model costs the same whatever the corpus size."""
    check_int("context", context, 1)
    if val_windows is not None:
        check_int("val_windows", val_windows, 1)
    corpus = load_corpus(val_fraction, cache_dir, root)
    offs = corpus.client_offsets
    parts = [window_starts(int(offs[k]), int(offs[k + 1]), context) for k in range(len(corpus.clients))]
    groups = np.concatenate([np.full(len(p), k, dtype=np.int64) for k, p in enumerate(parts)])
    train = ByteWindows(corpus.path, np.concatenate(parts), context, groups)
    val_starts = window_starts(corpus.train_bytes, corpus.total_bytes, context)
    if val_windows is not None and len(val_starts) > val_windows:
        val_starts = val_starts[np.linspace(0, len(val_starts) - 1, val_windows).round().astype(np.int64)]
    if len(train) == 0 or len(val_starts) == 0:
        raise ValueError(f"stdlib_text: context={context} leaves no train or no validation window")
    return TextSplits(train, ByteWindows(corpus.path, val_starts, context), corpus, corpus.clients)
