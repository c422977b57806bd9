"""Federated data: partitions against closed forms, data sets, client sampling, stragglers."""

from __future__ import annotations

import numpy as np
import pytest

from distsched.data import arrays_from_factory as from_factory
from distsched.data import digits_flat as digits
from distsched.data import (
    dirichlet,
    iid,
    load_arrays,
    make_partition,
    partition_stats,
    power_law,
    shards,
)
from distsched.data import leaf_synthetic as synthetic
from distsched.federated import ClientSampler, Stragglers


def _labels(per_class: int, classes: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(classes), per_class))


def _is_exact_cover(parts, n):
    allidx = np.concatenate(parts)
    return len(allidx) == n and np.array_equal(np.sort(allidx), np.arange(n))


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards", "power_law"])
def test_partitions_cover_every_sample_once(scheme):
    labels = _labels(200, 10)
    parts = make_partition(scheme, labels, 40, seed=3, alpha=0.3, shards_per_client=2, min_size=2)
    assert len(parts) == 40
    assert _is_exact_cover(parts, len(labels))
    again = make_partition(scheme, labels, 40, seed=3, alpha=0.3, shards_per_client=2, min_size=2)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def test_dirichlet_share_variance_matches_closed_form():
    # For each class, the shares over N clients are Dir(alpha * 1_N): Var = (1/N)(1 - 1/N) / (N alpha + 1).
    n_clients, alpha, per_class, classes = 20, 0.5, 20_000, 10
    labels = _labels(per_class, classes)
    shares = []
    for seed in range(20):
        parts = dirichlet(labels, n_clients, alpha, np.random.default_rng(seed), min_size=0)
        counts = np.stack([np.bincount(labels[p], minlength=classes) for p in parts])
        shares.append(counts / per_class)
    shares = np.concatenate(shares)
    expected = (1 / n_clients) * (1 - 1 / n_clients) / (n_clients * alpha + 1)
    assert shares.mean() == pytest.approx(1 / n_clients, rel=1e-9)
    assert shares.var() == pytest.approx(expected, rel=0.1)


def test_label_skew_orders_partitions_and_matches_hand_count():
    labels = _labels(300, 10)
    rng = np.random.default_rng(1)
    skew_iid = partition_stats(iid(len(labels), 30, rng), labels, 10).label_skew
    skew_10 = partition_stats(dirichlet(labels, 30, 10.0, rng), labels, 10).label_skew
    skew_01 = partition_stats(dirichlet(labels, 30, 0.1, rng), labels, 10).label_skew
    assert skew_iid < skew_10 < skew_01
    # hand count: labels [0,0,1,1]; client A {0,1} has (1, 0), client B {2,3} has (0, 1); global (1/2, 1/2).
    stats = partition_stats([np.array([0, 1]), np.array([2, 3])], np.array([0, 0, 1, 1]), 2)
    assert stats.label_skew == pytest.approx(0.5)  # TV = 1/2 (|1 - 1/2| + |0 - 1/2|)
    assert stats.classes_per_client == 1.0
    assert (stats.size_min, stats.size_max, stats.num_samples) == (2, 2, 4)


def test_shards_give_equal_sizes_and_few_classes():
    labels = _labels(100, 10)
    parts = shards(labels, 50, 2, np.random.default_rng(0))
    assert {len(p) for p in parts} == {20}
    classes = [len(np.unique(labels[p])) for p in parts]
    assert max(classes) <= 4 and np.mean(classes) <= 2.5


def test_power_law_sizes_are_heavy_tailed():
    parts = power_law(20_000, 200, 1.2, np.random.default_rng(0), min_size=5)
    sizes = np.array([len(p) for p in parts])
    assert sizes.min() >= 5 and sizes.sum() == 20_000
    assert sizes.max() > 5 * np.median(sizes)


def test_partition_errors_name_the_parameter():
    with pytest.raises(ValueError, match="alpha"):
        dirichlet(np.zeros(10, dtype=int), 2, 0.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="num_clients"):
        iid(5, 6, np.random.default_rng(0))
    with pytest.raises(ValueError, match="partition.scheme"):
        make_partition("nope", np.zeros(10, dtype=int), 2, 0)


def test_digits_split_and_scaling():
    data = digits(test_size=297, seed=0)
    assert data.x_train.shape == (1500, 64) and data.x_test.shape == (297, 64)
    assert data.x_train.min() >= 0.0 and data.x_train.max() == 1.0
    again = digits(test_size=297, seed=0)
    assert np.array_equal(data.y_test, again.y_test)


def test_synthetic_natural_partition():
    data = synthetic(alpha=0.5, beta=0.5, num_clients=30, seed=2)
    parts = data.natural_partition
    assert len(parts) == 30 and _is_exact_cover(list(parts), len(data.y_train))
    assert data.x_train.shape[1] == 60 and data.y_train.max() < 10
    # beta > 0 shifts clients' feature means apart: per-client means differ more than within-client noise.
    means = np.stack([data.x_train[p].mean(axis=0) for p in parts if len(p) > 5])
    assert means.std(axis=0).mean() > 0.3


def _factory_data(n: int = 40):
    rng = np.random.default_rng(0)
    return rng.random((n, 3)), rng.integers(0, 3, n), rng.random((10, 3)), rng.integers(0, 3, 10)


def _torch_datasets():
    import torch
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(0)
    train = TensorDataset(torch.rand(30, 2, 2, generator=g), torch.randint(0, 4, (30,), generator=g))
    test = TensorDataset(torch.rand(6, 2, 2, generator=g), torch.tensor([0, 1, 2, 3, 3, 1]))
    return train, test


def test_user_factory_of_torch_datasets():
    data = from_factory("tests.test_fed_data:_torch_datasets")
    train, test = _torch_datasets()
    assert data.x_train.shape == (30, 2, 2) and data.num_features == 4 and data.num_classes == 4
    assert np.array_equal(data.x_train[7], train[7][0].numpy()) and data.y_test.tolist() == [0, 1, 2, 3, 3, 1]


def test_user_factory_by_import_path():
    data = from_factory("tests.test_fed_data:_factory_data", {"n": 25})
    assert data.x_train.shape == (25, 3) and data.num_classes == 3
    assert load_arrays("tests.test_fed_data:_factory_data").x_train.shape == (40, 3)
    with pytest.raises(ValueError, match="data.name"):
        from_factory("no_colon")


def test_poisson_sampling_rate_and_variance():
    n, q, rounds = 1000, 0.05, 2000
    sampler = ClientSampler(n, fraction=q, poisson=True, seed=4)
    sizes = np.array([len(sampler.sample(r).sampled) for r in range(rounds)])
    hits = np.zeros(n)
    for r in range(rounds):
        hits[sampler.sample(r).sampled] += 1
    assert sizes.mean() == pytest.approx(n * q, rel=0.02)
    assert sizes.var() == pytest.approx(n * q * (1 - q), rel=0.1)
    assert hits.mean() / rounds == pytest.approx(q, rel=0.02)
    assert sampler.sample_rate == q


def test_fixed_cohort_availability_and_dropout():
    sampler = ClientSampler(200, cohort_size=20, availability=0.5, dropout=0.2, seed=1)
    drawn = [sampler.sample(r) for r in range(500)]
    assert all(len(d.sampled) == 20 and len(np.unique(d.sampled)) == 20 for d in drawn)
    dropped = sum(len(d.dropped) for d in drawn) / (20 * 500)
    assert dropped == pytest.approx(0.2, abs=0.02)
    hits = np.bincount(np.concatenate([d.sampled for d in drawn]), minlength=200) / 500
    assert hits.mean() == pytest.approx(0.1, rel=1e-9) and hits.std() < 0.04
    assert np.array_equal(sampler.sample(7).sampled, drawn[7].sampled)  # a pure function of the round
    with pytest.raises(ValueError, match="cohort_size"):
        ClientSampler(10, cohort_size=11)
    with pytest.raises(ValueError, match="dropout"):
        ClientSampler(10, cohort_size=2, dropout=1.0)


def test_stragglers_drop_and_downweight_by_deadline():
    clients = np.arange(0, 400, 3)
    steps = np.full(len(clients), 10)
    drop = Stragglers(1000, speed_sigma=0.5, deadline=12.0, policy="drop", seed=0)
    down = Stragglers(1000, speed_sigma=0.5, deadline=12.0, policy="downweight", seed=0)
    speeds = drop.speeds(clients)
    times = drop.times(0, clients, steps)
    assert np.allclose(times, 10 / speeds)
    assert np.array_equal(drop.speeds(clients[::2]), speeds[::2])  # a client's speed is its own
    late = times > 12.0
    assert 0 < late.sum() < len(clients)
    assert np.array_equal(drop.weights(times), np.where(late, 0.0, 1.0))
    assert np.allclose(down.weights(times), np.where(late, 12.0 / times, 1.0))
