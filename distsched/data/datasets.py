"""Data sets shared by ``train`` and ``simulate``: scikit-learn's digits, Gaussian blobs, LEAF-style
synthetic(alpha, beta) and user factories given by import path.

Two shapes of the same data: a :class:`DataBundle` of torch datasets (what a training worker's
loader reads) and an :class:`ArrayData` of plain arrays (what the simulator ships once to every
executor). Nothing is downloaded: ``digits`` ships with scikit-learn.

The factory contract (one for both commands): ``name: "package.module:function"`` with ``kwargs``;
``function(**kwargs)`` returns a map-style dataset of ``(features, label)`` pairs, a pair
``(train, test)`` of them, or ``(x_train, y_train, x_test, y_test)`` arrays.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from distsched._checks import check_int, check_non_negative
from distsched.config import check_kwargs, import_object
from distsched.data.partitions import Partition


# ------------------------------------------------------------------------------------------- shapes
@dataclasses.dataclass
class DataBundle:
    """A train split, an optional test split, the train labels (for sharding) and the shapes."""

    train: Dataset
    test: Dataset | None
    targets: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]
    #: ``"classify"`` (one label per example) or ``"lm"`` (a target per position: ``y`` has the shape of ``x``)
    task: str = "classify"
    #: what a run records about its data (``corpus.json``: file list, content hash), or None
    manifest: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class ArrayData:
    """Train and test arrays; ``natural_partition`` holds per-client train indices when the data set
    comes already split by client (synthetic), else ``None``."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    natural_partition: Sequence[np.ndarray] | None = None
    #: ``"classify"`` or ``"lm"`` (``y`` holds a target per position, ``(n, T)``)
    task: str = "classify"
    #: a group per train sample (the client it came from) used instead of ``y_train`` to partition and
    #: describe a partition when ``y_train`` is not one label per sample; None = ``y_train``
    groups: np.ndarray | None = None
    #: what a run records about its data (``corpus.json``), or None
    manifest: dict[str, Any] | None = None

    @property
    def partition_labels(self) -> np.ndarray:
        """One label per train sample: ``groups`` when given, else ``y_train``."""
        return self.groups if self.groups is not None else self.y_train

    @property
    def partition_classes(self) -> int:
        return int(self.groups.max()) + 1 if self.groups is not None else self.num_classes

    @property
    def num_features(self) -> int:
        return int(np.prod(self.x_train.shape[1:]))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x_train.shape[1:])


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


# ------------------------------------------------------------------------------------------- digits
def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits ``(pixels 0..16 as (n, 64), labels)``, read from the CSV that ships with
    scikit-learn without importing ``sklearn.datasets`` (seconds of start-up in every worker);
    ``load_digits()`` when the file is not where it is expected (the same numbers)."""
    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is not None and path.exists():
        raw = np.loadtxt(path, delimiter=",")
        return raw[:, :-1], raw[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.data, bunch.target.astype(np.int64)


def digits(test_fraction: float = 0.2, seed: int = 0) -> DataBundle:
    """scikit-learn's 8x8 digits as ``(1, 8, 8)`` images scaled to [0, 1], 10 classes; a fixed-seed
    permutation holds out ``round(1797 * test_fraction)`` images as the test split."""
    pixels, labels = digits_arrays()
    x = (pixels / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    return _bundle(x, labels, test_fraction, seed)


def digits_flat(test_size: int = 297, seed: int = 0) -> ArrayData:
    """The 1797 digits as flat 64-pixel rows scaled to [0, 1] (``x / 16``); a fixed-seed permutation puts
    ``test_size`` images in the test set and the rest in the train set."""
    x, y = digits_arrays()
    n = len(y)
    check_int("test_size", test_size, 1)
    if test_size >= n:
        raise ValueError(f"test_size must be in [1, {n - 1}], got {test_size!r}")
    perm = np.random.default_rng(seed).permutation(n)
    test, train = perm[:test_size], perm[test_size:]
    x = (x / 16.0).astype(np.float32)
    y = y.astype(np.int64)
    return ArrayData("digits", x[train], y[train], x[test], y[test], 10)


# ---------------------------------------------------------------------------------------- synthetic
def blobs(
    samples: int = 2048, features: int = 16, classes: int = 4, noise: float = 1.0, test_fraction: float = 0.2,
    seed: int = 0,
) -> DataBundle:
    """Gaussian blobs: class centres ``mu_c ~ N(0, 4 I)``, samples ``x = mu_y + noise * N(0, I)``."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 2.0, size=(classes, features))
    y = rng.integers(0, classes, size=samples)
    x = (centres[y] + noise * rng.normal(size=(samples, features))).astype(np.float32)
    return _bundle(x, y.astype(np.int64), test_fraction, seed)


def leaf_synthetic(
    alpha: float = 1.0,
    beta: float = 1.0,
    num_clients: int = 100,
    dim: int = 60,
    num_classes: int = 10,
    mean_samples: float = 50.0,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> ArrayData:
    """Synthetic(alpha, beta) in the style of LEAF / FedProx (Li et al. 2020, "Federated Optimization in
    Heterogeneous Networks", Sec. 5.1). For client ``k``:
    ``u_k ~ N(0, alpha)``, ``W_k, b_k ~ N(u_k, 1)``, ``B_k ~ N(0, beta)``, ``v_k ~ N(B_k, 1)``,
    ``x ~ N(v_k, diag(j^-1.2))``, ``y = argmax(softmax(W_k x + b_k))``.
    ``alpha`` controls how much the local models differ, ``beta`` how much the local data differ.
    Sizes are log-normal (mean about ``mean_samples``, at least 2); ``test_fraction`` of each client's
    samples form the central test set. The client split is kept as ``natural_partition`` (a CSR
    :class:`~distsched.data.Partition`: the train samples are stored client after client).

    Generated in blocks of clients (about :data:`_SYNTHETIC_BLOCK` samples each), vectorized, in float32:
    time and memory are linear in the number of samples (``K * classes * dim`` normal draws for the
    local models plus ``n * dim`` for the samples)."""
    check_non_negative("alpha", alpha)
    check_non_negative("beta", beta)
    check_int("num_clients", num_clients, 1)
    check_int("dim", dim, 1)
    check_int("num_classes", num_classes, 2)
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    rng = np.random.default_rng(seed)
    sigma32 = np.sqrt(np.arange(1, dim + 1, dtype=np.float64) ** -1.2).astype(np.float32)
    sizes = np.maximum(2, rng.lognormal(np.log(mean_samples) - 0.5, 1.0, num_clients).astype(np.int64))
    starts = np.concatenate([[0], np.cumsum(sizes)])
    total = int(starts[-1])
    is_test = rng.random(total) < test_fraction
    # train samples per client, and where each client's train samples start in the train arrays
    train_counts = np.add.reduceat((~is_test).astype(np.int64), starts[:-1])
    train_starts = np.concatenate([[0], np.cumsum(train_counts)])
    test_starts = starts - train_starts
    n_train = int(train_starts[-1])
    x_train = np.empty((n_train, dim), dtype=np.float32)
    y_train = np.empty(n_train, dtype=np.int64)
    x_test = np.empty((total - n_train, dim), dtype=np.float32)
    y_test = np.empty(total - n_train, dtype=np.int64)
    # client blocks of about _SYNTHETIC_BLOCK samples (at least one client each)
    cuts = np.unique(np.searchsorted(starts, np.arange(0, total, _SYNTHETIC_BLOCK), side="right") - 1)
    edges = np.concatenate([cuts, [num_clients]])
    for a, b in zip(edges[:-1].tolist(), edges[1:].tolist()):
        nb = b - a
        u = (rng.normal(0.0, np.sqrt(alpha), nb) if alpha > 0 else np.zeros(nb)).astype(np.float32)
        w = u[:, None, None] + rng.standard_normal((nb, num_classes, dim), dtype=np.float32)
        bias = u[:, None] + rng.standard_normal((nb, num_classes), dtype=np.float32)
        big_b = (rng.normal(0.0, np.sqrt(beta), nb) if beta > 0 else np.zeros(nb)).astype(np.float32)
        v = big_b[:, None] + rng.standard_normal((nb, dim), dtype=np.float32)
        owner = np.repeat(np.arange(nb), sizes[a:b])
        x = v[owner] + sigma32 * rng.standard_normal((len(owner), dim), dtype=np.float32)
        y = np.argmax(np.einsum("nd,ncd->nc", x, w[owner]) + bias[owner], axis=1)
        t = is_test[starts[a] : starts[b]]
        x_train[train_starts[a] : train_starts[b]] = x[~t]
        y_train[train_starts[a] : train_starts[b]] = y[~t]
        x_test[test_starts[a] : test_starts[b]] = x[t]
        y_test[test_starts[a] : test_starts[b]] = y[t]
    return ArrayData(
        f"synthetic({alpha},{beta})",
        x_train,
        y_train,
        x_test,
        y_test,
        num_classes,
        natural_partition=Partition(np.arange(n_train, dtype=np.int64), train_starts),
    )


#: samples generated per vectorized block by :func:`leaf_synthetic` (bounds its working memory)
_SYNTHETIC_BLOCK = 8192


# ------------------------------------------------------------------------------------- stdlib text
def stdlib_text(
    context: int = 128, val_fraction: float = 0.05, val_windows: int | None = 256,
    cache_dir: str | None = None,
) -> DataBundle:
    """Next-byte prediction on the interpreter's standard library (:mod:`distsched.data.text`): train
    windows memory-mapped from the cache, the validation windows as the test split; ``targets`` is the
    client (top-level module) of every train window."""
    from distsched.data.text import VOCAB, corpus_record, stdlib_windows

    s = stdlib_windows(context, val_fraction, val_windows, cache_dir)
    return DataBundle(s.train, s.validation, s.train.targets, VOCAB, (context,), task="lm",
                      manifest=corpus_record(s.corpus))


def stdlib_text_arrays(
    context: int = 128, val_fraction: float = 0.05, val_windows: int | None = 256,
    cache_dir: str | None = None, seed: int = 0,
) -> ArrayData:
    """:func:`stdlib_text` as ``(n, context)`` uint8 arrays for the simulator, with one natural client per
    top-level module or package. The split is by file and does not depend on ``seed``."""
    from distsched.data.text import TASK, VOCAB, corpus_record, stdlib_windows

    s = stdlib_windows(context, val_fraction, val_windows, cache_dir)
    x_tr, y_tr = s.train.arrays()
    x_te, y_te = s.validation.arrays()
    return ArrayData("stdlib_text", x_tr, y_tr, x_te, y_te, VOCAB, natural_partition=s.natural_partition(),
                     task=TASK, groups=s.train.targets, manifest=corpus_record(s.corpus))


# ---------------------------------------------------------------------------------------- factories
def _call_factory(path: str, kwargs: Mapping[str, Any] | None) -> Any:
    return import_object(path, "data.name")(**dict(kwargs or {}))


def _labels(ds: Dataset) -> np.ndarray:
    targets = getattr(ds, "targets", None)
    if targets is None:
        targets = [int(ds[i][1]) for i in range(len(ds))]  # type: ignore[arg-type]
    return np.asarray(torch.as_tensor(targets), dtype=np.int64)


def _is_arrays(out: Any) -> bool:
    return isinstance(out, tuple) and len(out) == 4


def _materialize(dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` arrays from a map-style dataset of ``(features, label)`` pairs."""
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise ValueError(f"data.name: expected a map-style dataset, got {type(dataset).__name__}")
    pairs = [dataset[i] for i in range(len(dataset))]
    x = np.stack([np.asarray(p[0], dtype=np.float32) for p in pairs])
    y = np.asarray([int(p[1]) for p in pairs], dtype=np.int64)
    return x, y


def _arrays_of(path: str, out: Any) -> ArrayData:
    if isinstance(out, ArrayData):
        return out
    if isinstance(out, tuple) and len(out) == 2:
        out = (*_materialize(out[0]), *_materialize(out[1]))
    if not _is_arrays(out):
        raise ValueError(
            f"data.name {path!r} must return (train, test) datasets or (x_train, y_train, x_test, y_test) arrays"
        )
    x_tr, y_tr, x_te, y_te = (np.asarray(a) for a in out)
    y_tr, y_te = y_tr.astype(np.int64), y_te.astype(np.int64)
    num_classes = int(max(y_tr.max(), y_te.max())) + 1
    return ArrayData(path.partition(":")[2], x_tr.astype(np.float32), y_tr, x_te.astype(np.float32), y_te, num_classes)


def bundle_from_factory(path: str, kwargs: Mapping[str, Any] | None = None) -> DataBundle:
    """The user's data set (see the module's factory contract) as a :class:`DataBundle`."""
    out = _call_factory(path, kwargs)
    if _is_arrays(out):
        x_tr, y_tr, x_te, y_te = (torch.as_tensor(np.asarray(a)) for a in out)
        train = TensorDataset(x_tr.float(), y_tr.long())
        test = TensorDataset(x_te.float(), y_te.long()) if len(y_te) else None
        out = (train, test)
    train, test = (out if isinstance(out, tuple) else (out, None))
    targets = _labels(train)
    x0 = train[0][0]
    return DataBundle(train, test, targets, int(targets.max()) + 1, tuple(torch.as_tensor(x0).shape))


def arrays_from_factory(path: str, kwargs: Mapping[str, Any] | None = None) -> ArrayData:
    """The user's data set (see the module's factory contract, or an :class:`ArrayData`) as arrays,
    map-style datasets read once."""
    return _arrays_of(path, _call_factory(path, kwargs))


# ------------------------------------------------------------------------------------------- by name
def load_bundle(
    name: str, seed: int, *, test_fraction: float = 0.2, blobs_params: Mapping[str, Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
) -> DataBundle:
    """``digits``, ``synthetic`` (:func:`blobs` with ``blobs_params``), ``stdlib_text`` (with ``kwargs``)
    or a factory path with ``kwargs``
    (same on every worker for the same seed)."""
    if name == "digits":
        return digits(test_fraction, seed)
    if name == "synthetic":
        return blobs(**dict(blobs_params or {}), test_fraction=test_fraction, seed=seed)
    if name == "stdlib_text":
        check_kwargs(stdlib_text, dict(kwargs or {}), "data.kwargs")
        return stdlib_text(**dict(kwargs or {}))
    return bundle_from_factory(name, kwargs)


def load_arrays(name: str, params: Mapping[str, Any] | None = None, seed: int = 0) -> ArrayData:
    """``digits`` (:func:`digits_flat`), ``synthetic`` (:func:`leaf_synthetic`), ``stdlib_text``
    (:func:`stdlib_text_arrays`) with ``params``, or a
    factory path called with ``params`` as its kwargs."""
    params = dict(params or {})
    if name in ("digits", "synthetic", "stdlib_text"):
        build = {"digits": digits_flat, "synthetic": leaf_synthetic, "stdlib_text": stdlib_text_arrays}[name]
        check_kwargs(build, {**params, "seed": seed}, "data.params")
        return build(seed=seed, **params)
    return arrays_from_factory(name, params)
