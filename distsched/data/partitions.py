"""Partitioners: split a data set's train indices among clients (``simulate``) or workers (``train``).

Each returns a :class:`Partition`: client ``k`` owns ``order[offsets[k]:offsets[k+1]]`` (CSR), sorted,
disjoint, covering every sample exactly once (except ``natural``, which is the data set's own split).
Every partitioner is one pass over the samples: it draws the owner of every sample and groups the
samples by owner with one stable ``argsort`` (``O(samples log samples)``, nothing per client but its
offset), so the number of clients is not a cost. A :class:`Partition` is also a sequence of index
arrays (views), so code written for lists of arrays keeps working.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np

from distsched._checks import check_choice, check_int, check_positive

SCHEMES = ("iid", "dirichlet", "shards", "power_law", "natural")


class Partition(Sequence[np.ndarray]):
    """Client index lists in CSR form: ``order`` (int64, the train indices grouped by client) and
    ``offsets`` (int64, ``num_clients + 1``); ``self[k]`` is a view ``order[offsets[k]:offsets[k+1]]``."""

    __slots__ = ("order", "offsets")

    def __init__(self, order: np.ndarray, offsets: np.ndarray) -> None:
        self.order = np.asarray(order, dtype=np.int64)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        off = self.offsets
        if off.ndim != 1 or len(off) < 1 or off[0] != 0 or off[-1] != len(self.order):
            raise ValueError("Partition: offsets must start at 0 and end at len(order)")

    @classmethod
    def from_owner(cls, owner: np.ndarray, num_clients: int) -> Partition:
        """Group the samples by ``owner[i]`` (the client of sample ``i``), indices ascending within a
        client: one stable ``argsort`` and one ``bincount``."""
        owner = np.asarray(owner, dtype=np.int64)
        order = np.argsort(owner, kind="stable")
        counts = np.bincount(owner, minlength=num_clients)
        return cls(order, np.concatenate([[0], np.cumsum(counts)]))

    @classmethod
    def from_lists(cls, parts: Sequence[np.ndarray]) -> Partition:
        """From one index array per client (kept as given, not re-sorted)."""
        if isinstance(parts, Partition):
            return parts
        sizes = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
        order = np.concatenate([np.asarray(p, dtype=np.int64) for p in parts]) if len(parts) else np.zeros(0, np.int64)
        return cls(order, np.concatenate([[0], np.cumsum(sizes)]))

    @property
    def sizes(self) -> np.ndarray:
        """Samples per client (int64)."""
        return np.diff(self.offsets)

    def owner(self) -> np.ndarray:
        """The client of every entry of ``order`` (``np.repeat(arange(K), sizes)``)."""
        return np.repeat(np.arange(len(self), dtype=np.int64), self.sizes)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @overload
    def __getitem__(self, k: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, k: slice) -> list[np.ndarray]: ...
    def __getitem__(self, k: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        n = len(self)
        k = int(k)
        if k < 0:
            k += n
        if not 0 <= k < n:
            raise IndexError(f"client {k} out of range for {n} clients")
        return self.order[self.offsets[k] : self.offsets[k + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        for k in range(len(self)):
            yield self.order[self.offsets[k] : self.offsets[k + 1]]


def _cut_owner(perm: np.ndarray, sizes: np.ndarray, num_samples: int) -> np.ndarray:
    """``owner[perm[offsets[k]:offsets[k+1]]] = k``: consecutive pieces of ``perm`` of ``sizes``."""
    owner = np.empty(num_samples, dtype=np.int64)
    owner[perm] = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)
    return owner


def _split_sizes(n: int, parts: int) -> np.ndarray:
    """The sizes ``np.array_split`` gives: the first ``n % parts`` pieces one longer."""
    base, extra = divmod(n, parts)
    return np.full(parts, base, dtype=np.int64) + (np.arange(parts) < extra)


def iid(num_samples: int, num_clients: int, rng: np.random.Generator) -> Partition:
    """A uniform random permutation cut into ``num_clients`` near-equal parts."""
    _check_counts(num_samples, num_clients)
    perm = rng.permutation(num_samples)
    return Partition.from_owner(_cut_owner(perm, _split_sizes(num_samples, num_clients), num_samples), num_clients)


def dirichlet(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
    min_size: int = 1,
    max_tries: int = 1000,
) -> Partition:
    """Label skew: for each class ``c``, the shares ``p_c ~ Dir(alpha * 1_N)`` over the ``N`` clients
    decide how class ``c``'s samples are cut (Yurochkin et al. 2019; Hsu et al. 2019). Small ``alpha``:
    each client sees few classes. Redrawn until every client holds at least ``min_size`` samples."""
    check_positive("alpha", alpha)
    check_int("min_size", min_size, 0)
    labels = np.asarray(labels)
    _check_counts(len(labels), num_clients)
    if min_size * num_clients > len(labels):
        raise ValueError(f"min_size must be <= samples / clients = {len(labels) // num_clients}, got {min_size!r}")
    classes, inverse = np.unique(labels, return_inverse=True)
    grouped = np.argsort(inverse.reshape(-1), kind="stable")  # the samples of each class, ascending
    bounds = np.concatenate([[0], np.cumsum(np.bincount(inverse.reshape(-1), minlength=len(classes)))])
    owner = np.empty(len(labels), dtype=np.int64)
    clients = np.arange(num_clients, dtype=np.int64)
    for _ in range(max_tries):
        for c in range(len(classes)):
            idx = rng.permutation(grouped[bounds[c] : bounds[c + 1]])
            shares = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(np.int64)
            owner[idx] = np.repeat(clients, np.diff(np.concatenate([[0], cuts, [len(idx)]])))
        if np.bincount(owner, minlength=num_clients).min() >= min_size:
            return Partition.from_owner(owner, num_clients)
    raise ValueError(
        f"dirichlet: no draw in {max_tries} gave every client >= min_size={min_size} samples; "
        f"lower min_size or raise alpha (got alpha={alpha!r})"
    )


def shards(labels: np.ndarray, num_clients: int, shards_per_client: int, rng: np.random.Generator) -> Partition:
    """Pathological non-IID (McMahan et al. 2017): sort by label, cut into ``num_clients * k`` equal
    shards, give each client ``k`` random shards; a client sees at most ``2k`` classes (usually ``k``)."""
    check_int("shards_per_client", shards_per_client, 1)
    labels = np.asarray(labels)
    _check_counts(len(labels), num_clients * shards_per_client)
    order = np.argsort(labels, kind="stable")
    num_shards = num_clients * shards_per_client
    assignment = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
    shard_owner = np.empty(num_shards, dtype=np.int64)
    shard_owner[assignment.reshape(-1)] = np.repeat(np.arange(num_clients, dtype=np.int64), shards_per_client)
    owner = np.empty(len(labels), dtype=np.int64)
    owner[order] = np.repeat(shard_owner, _split_sizes(len(labels), num_shards))
    return Partition.from_owner(owner, num_clients)


def power_law(
    num_samples: int, num_clients: int, exponent: float, rng: np.random.Generator, min_size: int = 1
) -> Partition:
    """IID labels, power-law sizes: client weights ``w_k ~ Pareto(exponent) + 1`` (density
    ``~ w^-(exponent+1)``); each client gets ``min_size`` samples plus a multinomial share of the rest."""
    check_positive("exponent", exponent)
    check_int("min_size", min_size, 0)
    _check_counts(num_samples, num_clients)
    if min_size * num_clients > num_samples:
        raise ValueError(f"min_size must be <= samples / clients = {num_samples // num_clients}, got {min_size!r}")
    w = rng.pareto(exponent, num_clients) + 1.0
    sizes = min_size + rng.multinomial(num_samples - min_size * num_clients, w / w.sum())
    perm = rng.permutation(num_samples)
    return Partition.from_owner(_cut_owner(perm, sizes, num_samples), num_clients)


def make_partition(
    scheme: str,
    labels: np.ndarray,
    num_clients: int,
    seed: int,
    *,
    alpha: float = 0.5,
    shards_per_client: int = 2,
    exponent: float = 1.5,
    min_size: int = 1,
    natural: Sequence[np.ndarray] | None = None,
) -> Partition:
    """Dispatch on ``scheme`` (one of :data:`SCHEMES`) with a generator seeded by ``seed``."""
    check_choice("partition.scheme", scheme, SCHEMES)
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        return iid(len(labels), num_clients, rng)
    if scheme == "dirichlet":
        return dirichlet(labels, num_clients, alpha, rng, min_size=min_size)
    if scheme == "shards":
        return shards(labels, num_clients, shards_per_client, rng)
    if scheme == "power_law":
        return power_law(len(labels), num_clients, exponent, rng, min_size=min_size)
    if natural is None:
        raise ValueError("partition.scheme 'natural' needs a data set with its own client split (synthetic)")
    return Partition.from_lists(natural)


def iid_shards(n: int, workers: int, seed: int) -> list[np.ndarray]:
    """A random permutation of ``range(n)`` cut into ``workers`` near-equal shards (:func:`iid`, one
    client per worker)."""
    check_int("workers", workers, 1)
    return list(iid(n, workers, np.random.default_rng(seed)))


def label_skew_shards(
    targets: np.ndarray, workers: int, alpha: float, seed: int, min_size: int = 1, tries: int = 100
) -> list[np.ndarray]:
    """Per class ``c``, worker shares ``p_c ~ Dirichlet(alpha * 1_K)`` of that class's samples
    (Hsu, Qi & Brown 2019): :func:`dirichlet`, one client per worker. Redrawn until every shard holds
    at least ``min_size`` samples."""
    check_int("workers", workers, 1)
    rng = np.random.default_rng(seed)
    return list(dirichlet(np.asarray(targets), workers, alpha, rng, min_size=min_size, max_tries=tries))


def make_shards(
    targets: np.ndarray, partition: str, workers: int, batch_size: int, seed: int, alpha: float = 0.5
) -> list[np.ndarray]:
    """The index shard of every training worker (``partition``: ``iid`` or ``label_skew``), identical on
    all workers; every shard holds at least one batch."""
    if partition == "iid":
        out = iid_shards(len(targets), workers, seed)
    else:
        try:
            out = label_skew_shards(targets, workers, alpha, seed, min_size=batch_size)
        except ValueError as exc:  # say it in the config's words (min_size is the batch size here)
            raise ValueError(f"data.alpha={alpha!r}, {workers} workers, batch_size={batch_size}: {exc}") from None
    small = min(len(s) for s in out)
    if small < batch_size:
        raise ValueError(f"batch_size must be <= the smallest shard ({small} samples), got {batch_size}")
    return out


def _check_counts(num_samples: int, num_clients: int) -> None:
    check_int("num_clients", num_clients, 1)
    if num_clients > num_samples:
        raise ValueError(f"num_clients must be <= number of samples {num_samples}, got {num_clients!r}")


@dataclasses.dataclass(frozen=True)
class PartitionStats:
    """Sizes and label skew of a partition.

    ``label_skew`` is the mean total-variation distance between a client's label distribution and
    the global one, ``TV_k = 1/2 * sum_c |p_kc - p_c|`` (0: IID, near 1: one class per client).
    """

    num_clients: int
    num_samples: int
    size_mean: float
    size_std: float
    size_min: int
    size_max: int
    classes_per_client: float
    label_skew: float

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def label_counts(parts: Sequence[np.ndarray], labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``(clients, classes)`` matrix of label counts: one ``bincount`` of ``client * classes + label``."""
    labels = np.asarray(labels)
    if not len(parts):
        return np.zeros((0, 0))
    p = Partition.from_lists(parts)
    flat = p.owner() * num_classes + labels[p.order]
    return np.bincount(flat, minlength=len(p) * num_classes).reshape(len(p), num_classes)


def partition_stats(parts: Sequence[np.ndarray], labels: np.ndarray, num_classes: int) -> PartitionStats:
    counts = label_counts(parts, labels, num_classes).astype(np.float64)
    sizes = counts.sum(axis=1)
    glob = counts.sum(axis=0) / max(counts.sum(), 1.0)
    local = counts / np.maximum(sizes[:, None], 1.0)
    tv = 0.5 * np.abs(local - glob).sum(axis=1)
    return PartitionStats(
        num_clients=len(parts),
        num_samples=int(sizes.sum()),
        size_mean=float(sizes.mean()),
        size_std=float(sizes.std()),
        size_min=int(sizes.min()),
        size_max=int(sizes.max()),
        classes_per_client=float((counts > 0).sum(axis=1).mean()),
        label_skew=float(tv.mean()),
    )


def partition_figure(parts: Sequence[np.ndarray], labels: np.ndarray, num_classes: int, shown: int = 50) -> Any:
    """Two panels: histogram of samples per client (all clients), and the label mix of the first
    ``shown`` clients; the titles say when that is a subset. A pyplot-free ``Figure``
    (see :mod:`distsched.report.plots`)."""
    from matplotlib.figure import Figure

    counts = label_counts(parts, labels, num_classes)
    fig = Figure(figsize=(11, 4), dpi=110)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.hist(counts.sum(axis=1), bins=30)
    ax1.set_title(f"samples per client (all {len(counts)} clients)")
    ax1.set_xlabel("samples per client")
    ax1.set_ylabel("clients")
    subset = counts[:shown]
    bottom = np.zeros(len(subset))
    edges = np.arange(len(subset) + 1) - 0.5
    for c in range(num_classes):  # one filled step patch per label, not a bar per client (500 patches: ~1 s)
        top = bottom + subset[:, c]
        patch = ax2.stairs(top, edges, baseline=bottom, fill=True, label=str(c), color=f"C{c % 10}")
        patch.sticky_edges.y[:] = bottom  # autoscale as stacked bars do: every bar's bottom is a sticky edge
        bottom = top
    ax2.set_title(f"label mix of the first {len(subset)} of {len(counts)} clients" if len(subset) < len(counts)
                  else f"label mix of all {len(counts)} clients")
    ax2.set_xlabel("client")
    ax2.set_ylabel("samples by label")
    if num_classes <= 20:
        ax2.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


def plot_partition(path: str | os.PathLike, parts: Sequence[np.ndarray], labels: np.ndarray, num_classes: int) -> Path:
    """Write :func:`partition_figure` (first 50 clients in the label panel) as a PNG; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partition_figure(parts, labels, num_classes).savefig(path)
    return path
