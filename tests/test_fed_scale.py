"""Client count is not a cost: partitions in CSR form built in one pass over the samples, equal to the
per-client reference implementations they replace (written out below), and a LEAF-style synthetic
data set whose build is linear in its samples."""

from __future__ import annotations

import numpy as np
import pytest

from distsched.data import Partition, dirichlet, iid, label_counts, leaf_synthetic, power_law, shards
from distsched.federated import ClientSampler, to_csr


# ---------------------------------------------------------------- references: the per-client code
def _ref_iid(n, k, rng):
    return [np.sort(p) for p in np.array_split(rng.permutation(n), k)]


def _ref_dirichlet(labels, k, alpha, rng, min_size=1):
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    while True:
        parts = [[] for _ in range(k)]
        for idx in by_class:
            idx = rng.permutation(idx)
            shares = rng.dirichlet(np.full(k, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(np.int64)
            for j, piece in enumerate(np.split(idx, cuts)):
                parts[j].append(piece)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in out) >= min_size:
            return out


def _ref_shards(labels, k, per, rng):
    order = np.argsort(labels, kind="stable")
    pieces = np.array_split(order, k * per)
    assignment = rng.permutation(len(pieces)).reshape(k, per)
    return [np.sort(np.concatenate([pieces[s] for s in row])) for row in assignment]


def _ref_power_law(n, k, exponent, rng, min_size=1):
    w = rng.pareto(exponent, k) + 1.0
    sizes = min_size + rng.multinomial(n - min_size * k, w / w.sum())
    perm = rng.permutation(n)
    return [np.sort(p) for p in np.split(perm, np.cumsum(sizes)[:-1])]


def _same(parts, ref):
    assert isinstance(parts, Partition)
    assert len(parts) == len(ref)
    for a, b in zip(parts, ref):
        np.testing.assert_array_equal(a, b)


LABELS = np.random.default_rng(3).integers(0, 7, 1003)


def test_iid_equals_reference():
    _same(iid(1003, 37, np.random.default_rng(1)), _ref_iid(1003, 37, np.random.default_rng(1)))


@pytest.mark.parametrize("alpha,min_size", [(0.3, 1), (5.0, 10)])
def test_dirichlet_equals_reference(alpha, min_size):
    got = dirichlet(LABELS, 23, alpha, np.random.default_rng(2), min_size=min_size)
    _same(got, _ref_dirichlet(LABELS, 23, alpha, np.random.default_rng(2), min_size=min_size))


def test_shards_equals_reference():
    _same(shards(LABELS, 41, 3, np.random.default_rng(4)), _ref_shards(LABELS, 41, 3, np.random.default_rng(4)))


def test_power_law_equals_reference():
    got = power_law(1003, 29, 1.2, np.random.default_rng(5), min_size=3)
    _same(got, _ref_power_law(1003, 29, 1.2, np.random.default_rng(5), min_size=3))


def test_partition_is_csr_and_a_sequence():
    lists = [np.array([4, 1]), np.array([], dtype=np.int64), np.array([0, 2, 3])]
    p = Partition.from_lists(lists)
    np.testing.assert_array_equal(p.order, [4, 1, 0, 2, 3])
    np.testing.assert_array_equal(p.offsets, [0, 2, 2, 5])
    np.testing.assert_array_equal(p.sizes, [2, 0, 3])
    np.testing.assert_array_equal(p.owner(), [0, 0, 2, 2, 2])
    np.testing.assert_array_equal(p[-1], [0, 2, 3])
    assert [list(x) for x in p[0:2]] == [[4, 1], []]
    with pytest.raises(IndexError):
        p[3]
    order, offsets = to_csr(p)
    assert order is p.order and offsets is p.offsets  # no copy for the simulator
    q = Partition.from_owner(np.array([2, 0, 2, 2, 0]), 4)
    assert [list(x) for x in q] == [[1, 4], [], [0, 2, 3], []]
    with pytest.raises(ValueError, match="offsets"):
        Partition(np.arange(3), np.array([0, 2]))


def test_label_counts_equals_per_client_bincount():
    parts = dirichlet(LABELS, 11, 0.5, np.random.default_rng(6))
    ref = np.stack([np.bincount(LABELS[p], minlength=7) for p in parts])
    np.testing.assert_array_equal(label_counts(parts, LABELS, 7), ref)
    np.testing.assert_array_equal(label_counts(list(parts), LABELS, 7), ref)


def test_synthetic_natural_clients_are_contiguous_ranges():
    d = leaf_synthetic(num_clients=300, dim=5, num_classes=3, mean_samples=20, test_fraction=0.2, seed=1)
    p = d.natural_partition
    assert isinstance(p, Partition) and len(p) == 300
    np.testing.assert_array_equal(p.order, np.arange(len(d.y_train)))  # stored client after client
    # the test split is about test_fraction of all samples, by client (binomial, 6 sigma)
    n = len(d.y_train) + len(d.y_test)
    assert abs(len(d.y_test) - 0.2 * n) < 6 * np.sqrt(0.2 * 0.8 * n)
    # y = argmax(W_k x + b_k) with one (W_k, b_k) per client: a client's labels are separable by a linear
    # model, so a per-client least-squares fit of one-hot labels separates most of its samples
    hits = total = 0
    for k in range(0, 300, 10):
        x, y = d.x_train[p[k]], d.y_train[p[k]]
        if len(y) < 15:
            continue
        feats = np.hstack([x, np.ones((len(x), 1))])
        coef = np.linalg.lstsq(feats, np.eye(3)[y], rcond=None)[0]
        hits += int((np.argmax(feats @ coef, axis=1) == y).sum())
        total += len(y)
    assert hits / total > 0.85
    # same seed, same data
    e = leaf_synthetic(num_clients=300, dim=5, num_classes=3, mean_samples=20, test_fraction=0.2, seed=1)
    np.testing.assert_array_equal(e.x_train, d.x_train)


def test_synthetic_at_many_clients_holds_nothing_per_client_but_an_offset():
    d = leaf_synthetic(num_clients=50_000, dim=4, num_classes=3, mean_samples=2, test_fraction=0.0, seed=0)
    p = d.natural_partition
    assert len(p) == 50_000 and p.offsets.shape == (50_001,)
    assert p.sizes.min() >= 2 and p.sizes.sum() == len(d.y_train)


@pytest.mark.parametrize("poisson", [False, True])
def test_cohort_among_ten_million_clients_is_drawn_without_a_pass_over_them(poisson):
    """NumPy traces its allocations (tracemalloc): a draw that touched every client would allocate at
    least N bytes (80 MB for float64 draws); an O(cohort) draw allocates kilobytes."""
    import tracemalloc

    n = 10_000_000
    s = ClientSampler(n, cohort_size=None if poisson else 1000, fraction=1e-4 if poisson else None,
                      poisson=poisson, dropout=0.1, seed=0)
    tracemalloc.start()
    try:
        draws = [s.sample(r) for r in range(5)]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, peak
    sizes = [len(d.sampled) for d in draws]
    assert all(len(np.unique(d.sampled)) == len(d.sampled) for d in draws)
    if not poisson:
        assert sizes == [1000] * 5
    else:  # Binomial(N, 1e-4): mean 1000, sd ~31.6
        assert all(abs(k - 1000) < 6 * 31.7 for k in sizes)
    ids = np.concatenate([d.sampled for d in draws])  # uniform on [0, N)
    assert abs(ids.mean() - n / 2) < 5 * n / np.sqrt(12 * ids.size)


def test_availability_draw_is_the_one_pass_over_all_clients():
    """Documented exception: with availability < 1 the reachable set is drawn over every client
    (N uniforms per round); the test pins that cost so that a change to it is deliberate."""
    import tracemalloc

    s = ClientSampler(1_000_000, cohort_size=100, availability=0.5, seed=0)
    tracemalloc.start()
    try:
        s.sample(0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak >= 8_000_000
