"""Data: built-in data sets (scikit-learn digits, synthetic blobs) or an import path, worker shards
(IID or label-skewed) and a resumable batch sampler.

Nothing is downloaded: ``digits`` ships with scikit-learn.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from distsched._checks import check_int
from distsched.config import import_object
from distsched.federated import partitions
from distsched.train.config import DataConfig


@dataclasses.dataclass
class DataBundle:
    """A train split, an optional test split, the train labels (for sharding) and the shapes."""

    train: Dataset
    test: Dataset | None
    targets: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]


def _split(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    return order[n_test:], order[:n_test]


def _bundle(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> DataBundle:
    train_idx, test_idx = _split(len(y), test_fraction, seed)
    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64)
    train = TensorDataset(xt[train_idx], yt[train_idx])
    test = TensorDataset(xt[test_idx], yt[test_idx]) if len(test_idx) else None
    return DataBundle(train, test, y[train_idx].astype(np.int64), int(y.max()) + 1, tuple(x.shape[1:]))


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits ``(pixels 0..16 as (n, 64), labels)``, read from the CSV that ships with
    scikit-learn without importing ``sklearn.datasets`` (seconds of start-up in every worker);
    ``load_digits()`` when the file is not where it is expected."""
    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is not None and path.exists():
        raw = np.loadtxt(path, delimiter=",")
        return raw[:, :-1], raw[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.data, bunch.target.astype(np.int64)


def digits(test_fraction: float = 0.2, seed: int = 0) -> DataBundle:
    """scikit-learn's 8x8 digits as ``(1, 8, 8)`` images scaled to [0, 1], 10 classes."""
    pixels, labels = _digits_arrays()
    x = (pixels / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    return _bundle(x, labels, test_fraction, seed)


def synthetic(
    samples: int = 2048, features: int = 16, classes: int = 4, noise: float = 1.0, test_fraction: float = 0.2,
    seed: int = 0,
) -> DataBundle:
    """Gaussian blobs: class centres ``mu_c ~ N(0, 4 I)``, samples ``x = mu_y + noise * N(0, I)``."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 2.0, size=(classes, features))
    y = rng.integers(0, classes, size=samples)
    x = (centres[y] + noise * rng.normal(size=(samples, features))).astype(np.float32)
    return _bundle(x, y.astype(np.int64), test_fraction, seed)


def _labels(ds: Dataset) -> np.ndarray:
    targets = getattr(ds, "targets", None)
    if targets is None:
        targets = [int(ds[i][1]) for i in range(len(ds))]  # type: ignore[arg-type]
    return np.asarray(torch.as_tensor(targets), dtype=np.int64)


def from_import_path(path: str, **kwargs: Any) -> DataBundle:
    """``package.module:factory``; ``factory(**kwargs)`` returns a Dataset of ``(x, label)`` pairs or
    ``(train, test)``."""
    out = import_object(path, "data.name")(**kwargs)
    train, test = (out if isinstance(out, tuple) else (out, None))
    targets = _labels(train)
    x0 = train[0][0]
    return DataBundle(train, test, targets, int(targets.max()) + 1, tuple(torch.as_tensor(x0).shape))


def load_data(cfg: DataConfig, seed: int) -> DataBundle:
    """The data set named by ``cfg`` (same on every worker for the same seed)."""
    if cfg.name == "digits":
        return digits(cfg.test_fraction, seed)
    if cfg.name == "synthetic":
        return synthetic(cfg.samples, cfg.features, cfg.classes, cfg.noise, cfg.test_fraction, seed)
    return from_import_path(cfg.name, **cfg.kwargs)


def iid_shards(n: int, workers: int, seed: int) -> list[np.ndarray]:
    """A random permutation of ``range(n)`` cut into ``workers`` near-equal shards
    (the federated simulator's ``iid`` partitioner, one client per worker)."""
    check_int("workers", workers, 1)
    return partitions.iid(n, workers, np.random.default_rng(seed))


def label_skew_shards(
    targets: np.ndarray, workers: int, alpha: float, seed: int, min_size: int = 1, tries: int = 100
) -> list[np.ndarray]:
    """Per class ``c``, worker shares ``p_c ~ Dirichlet(alpha * 1_K)`` of that class's samples
    (Hsu, Qi & Brown 2019): the federated simulator's ``dirichlet`` partitioner, one client per
    worker. Redrawn until every shard holds at least ``min_size`` samples."""
    check_int("workers", workers, 1)
    return partitions.dirichlet(
        np.asarray(targets), workers, alpha, np.random.default_rng(seed), min_size=min_size, max_tries=tries
    )


def make_shards(bundle: DataBundle, cfg: DataConfig, workers: int, batch_size: int, seed: int) -> list[np.ndarray]:
    """The index shard of every worker, identical on all workers."""
    if cfg.partition == "iid":
        shards = iid_shards(len(bundle.targets), workers, seed)
    else:
        try:
            shards = label_skew_shards(bundle.targets, workers, cfg.alpha, seed, min_size=batch_size)
        except ValueError as exc:  # say it in the config's words (min_size is the batch size here)
            raise ValueError(f"data.alpha={cfg.alpha!r}, {workers} workers, batch_size={batch_size}: {exc}") from None
    small = min(len(s) for s in shards)
    if small < batch_size:
        raise ValueError(f"batch_size must be <= the smallest shard ({small} samples), got {batch_size}")
    return shards


class ShardBatches:
    """Endless batches of indices from one shard, reshuffled every epoch, resumable.

    Epoch ``e`` visits ``shard[perm_e]`` with ``perm_e = randperm(n, seed=hash(seed, rank, e))`` in
    ``n // batch_size`` full batches. The whole state is ``(epoch, batch)``: a run restored from
    :meth:`state_dict` draws the same batches as one that never stopped.
    """

    def __init__(self, shard: np.ndarray, batch_size: int, seed: int, rank: int) -> None:
        self.shard = torch.as_tensor(np.asarray(shard), dtype=torch.int64)
        self.batch_size = check_int("batch_size", batch_size, 1)
        if len(self.shard) < self.batch_size:
            raise ValueError(f"batch_size must be <= the shard size {len(self.shard)}, got {batch_size}")
        self.seed, self.rank = int(seed), int(rank)
        self.epoch = 0
        self.batch = 0

    @property
    def batches_per_epoch(self) -> int:
        return len(self.shard) // self.batch_size

    def _order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.rank * 10_007 + epoch)
        return self.shard[torch.randperm(len(self.shard), generator=g)]

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            order = self._order(self.epoch)
            while self.batch < self.batches_per_epoch:
                start = self.batch * self.batch_size
                self.batch += 1
                yield order[start : start + self.batch_size].tolist()
            self.epoch, self.batch = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
