"""Federated data sets: scikit-learn's bundled digits, LEAF-style synthetic(alpha, beta), a user factory.

A data set is plain arrays (``float32`` features, ``int64`` labels) so that Ray ships it once to the
object store and every actor reads it zero-copy. Nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from distsched._checks import check_int, check_non_negative
from distsched.config import check_kwargs, import_object


@dataclasses.dataclass(frozen=True)
class FedData:
    """Train and test arrays; ``natural_partition`` holds per-client train indices when the data set
    comes already split by client (synthetic), else ``None``."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    natural_partition: tuple[np.ndarray, ...] | None = None

    @property
    def num_features(self) -> int:
        return int(np.prod(self.x_train.shape[1:]))


def digits(test_size: int = 297, seed: int = 0) -> FedData:
    """sklearn's 8x8 digits (1797 images), pixels scaled to [0, 1] (``x / 16``); a fixed-seed permutation
    puts ``test_size`` images in the test set and the rest in the train set."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    n = len(y)
    check_int("test_size", test_size, 1)
    if test_size >= n:
        raise ValueError(f"test_size must be in [1, {n - 1}], got {test_size!r}")
    perm = np.random.default_rng(seed).permutation(n)
    test, train = perm[:test_size], perm[test_size:]
    x = (x / 16.0).astype(np.float32)
    y = y.astype(np.int64)
    return FedData("digits", x[train], y[train], x[test], y[test], 10)


def synthetic(
    alpha: float = 1.0,
    beta: float = 1.0,
    num_clients: int = 100,
    dim: int = 60,
    num_classes: int = 10,
    mean_samples: float = 50.0,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> FedData:
    """Synthetic(alpha, beta) in the style of LEAF / FedProx (Li et al. 2020, "Federated Optimization in
    Heterogeneous Networks", Sec. 5.1). For client ``k``:
    ``u_k ~ N(0, alpha)``, ``W_k, b_k ~ N(u_k, 1)``, ``B_k ~ N(0, beta)``, ``v_k ~ N(B_k, 1)``,
    ``x ~ N(v_k, diag(j^-1.2))``, ``y = argmax(softmax(W_k x + b_k))``.
    ``alpha`` controls how much the local models differ, ``beta`` how much the local data differ.
    Sizes are log-normal (mean about ``mean_samples``, at least 2); ``test_fraction`` of each client's
    samples form the central test set. The client split is kept as ``natural_partition``."""
    check_non_negative("alpha", alpha)
    check_non_negative("beta", beta)
    check_int("num_clients", num_clients, 1)
    check_int("dim", dim, 1)
    check_int("num_classes", num_classes, 2)
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    rng = np.random.default_rng(seed)
    sigma = np.sqrt(np.arange(1, dim + 1, dtype=np.float64) ** -1.2)
    sizes = np.maximum(2, rng.lognormal(np.log(mean_samples) - 0.5, 1.0, num_clients).astype(np.int64))
    xs, ys, owner = [], [], []
    for k in range(num_clients):
        u = rng.normal(0.0, np.sqrt(alpha)) if alpha > 0 else 0.0
        w = rng.normal(u, 1.0, (num_classes, dim))
        b = rng.normal(u, 1.0, num_classes)
        big_b = rng.normal(0.0, np.sqrt(beta)) if beta > 0 else 0.0
        v = rng.normal(big_b, 1.0, dim)
        x = v + sigma * rng.standard_normal((sizes[k], dim))
        xs.append(x)
        ys.append(np.argmax(x @ w.T + b, axis=1))
        owner.append(np.full(sizes[k], k))
    x_all = np.concatenate(xs).astype(np.float32)
    y_all = np.concatenate(ys).astype(np.int64)
    owner_all = np.concatenate(owner)
    is_test = rng.random(len(y_all)) < test_fraction
    train_idx = np.flatnonzero(~is_test)
    parts = tuple(np.flatnonzero(owner_all[train_idx] == k) for k in range(num_clients))
    return FedData(
        f"synthetic({alpha},{beta})",
        x_all[train_idx],
        y_all[train_idx],
        x_all[is_test],
        y_all[is_test],
        num_classes,
        natural_partition=parts,
    )


def from_factory(path: str, kwargs: Mapping[str, Any] | None = None) -> FedData:
    """A user data set: ``path = "package.module:function"`` returning a :class:`FedData`, a tuple
    ``(x_train, y_train, x_test, y_test)`` of array-likes (labels integer classes), or a tuple
    ``(train, test)`` of map-style datasets (``torch.utils.data.Dataset``: ``len`` and ``[i] -> (x, y)``),
    read once into arrays."""
    out = import_object(path, "data.factory")(**dict(kwargs or {}))
    if isinstance(out, FedData):
        return out
    if isinstance(out, tuple) and len(out) == 2:
        out = (*_materialize(out[0]), *_materialize(out[1]))
    if not (isinstance(out, tuple) and len(out) == 4):
        raise ValueError(f"data.factory {path!r} must return FedData or (x_train, y_train, x_test, y_test)")
    x_tr, y_tr, x_te, y_te = (np.asarray(a) for a in out)
    y_tr, y_te = y_tr.astype(np.int64), y_te.astype(np.int64)
    num_classes = int(max(y_tr.max(), y_te.max())) + 1
    return FedData(path.partition(":")[2], x_tr.astype(np.float32), y_tr, x_te.astype(np.float32), y_te, num_classes)


def _materialize(dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` arrays from a map-style dataset of ``(features, label)`` pairs."""
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise ValueError(f"data.factory: expected a map-style dataset, got {type(dataset).__name__}")
    pairs = [dataset[i] for i in range(len(dataset))]
    x = np.stack([np.asarray(p[0], dtype=np.float32) for p in pairs])
    y = np.asarray([int(p[1]) for p in pairs], dtype=np.int64)
    return x, y


def load_dataset(name: str, params: Mapping[str, Any] | None = None, seed: int = 0) -> FedData:
    """``digits``, ``synthetic`` or ``factory`` (with ``params["factory"] = "module:function"``)."""
    params = dict(params or {})
    if name in ("digits", "synthetic"):
        build = digits if name == "digits" else synthetic
        check_kwargs(build, {**params, "seed": seed}, "data.params")
        return build(seed=seed, **params)
    if name == "factory":
        if "factory" not in params:
            raise ValueError("data.params.factory is required when data.name is 'factory'")
        path = params.pop("factory")
        return from_factory(path, params)
    raise ValueError(f"data.name must be one of 'digits', 'synthetic', 'factory', got {name!r}")
