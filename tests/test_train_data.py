"""Data shards, the resumable batch sampler, built-in data sets and models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distsched.data import ShardBatches, digits, iid_shards, label_skew_shards
from distsched.data import blobs as synthetic
from distsched.data import bundle_from_factory as from_import_path
from distsched.train import DataConfig, ModelConfig


def _is_partition(shards, n):
    allidx = np.concatenate(shards)
    return len(allidx) == n and np.array_equal(np.sort(allidx), np.arange(n))


@pytest.mark.parametrize("n, workers", [(10, 3), (1437, 2), (100, 7)])
def test_iid_shards_partition_evenly(n, workers):
    shards = iid_shards(n, workers, seed=3)
    assert _is_partition(shards, n)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert all(np.array_equal(a, b) for a, b in zip(shards, iid_shards(n, workers, seed=3)))


def _class_share(targets, shard, classes):
    return np.bincount(targets[shard], minlength=classes) / len(shard)


def test_label_skew_partition_and_skew_grows_as_alpha_shrinks():
    targets = np.repeat(np.arange(10), 100)
    rng = np.random.default_rng(0)
    targets = targets[rng.permutation(len(targets))]
    glob = np.bincount(targets) / len(targets)

    def mean_tv(alpha):  # mean total-variation distance of shard label mix from the global mix
        shards = label_skew_shards(targets, 4, alpha, seed=1, min_size=10)
        assert _is_partition(shards, len(targets))
        return np.mean([0.5 * np.abs(_class_share(targets, s, 10) - glob).sum() for s in shards])

    near_iid, skewed = mean_tv(1000.0), mean_tv(0.1)
    assert near_iid < 0.05
    assert skewed > 0.4


def test_label_skew_too_small_alpha_names_alpha():
    targets = np.repeat(np.arange(2), 50)  # 100 samples: 8 shards of >= 5 exist, but not at alpha=0.01
    with pytest.raises(ValueError, match="alpha"):
        label_skew_shards(targets, 8, 0.01, seed=0, min_size=5, tries=3)


def test_shard_batches_cover_each_epoch_and_resume_exactly():
    shard = np.arange(100, 140)  # 40 samples, batch 8 -> 5 batches per epoch
    s = ShardBatches(shard, 8, seed=4, rank=1)
    it = iter(s)
    full = [next(it) for _ in range(23)]
    for e in range(4):
        epoch = sum(full[5 * e : 5 * e + 5], [])
        assert sorted(epoch) == list(range(100, 140))  # every sample exactly once per epoch
    assert full[0:5] != full[5:10]  # reshuffled
    # stop after 12 batches, restore into a fresh sampler, continue
    t = ShardBatches(shard, 8, seed=4, rank=1)
    it2 = iter(t)
    head = [next(it2) for _ in range(12)]
    u = ShardBatches(shard, 8, seed=4, rank=1)
    u.load_state_dict(t.state_dict())
    it3 = iter(u)
    assert head + [next(it3) for _ in range(11)] == full
    other_rank = ShardBatches(shard, 8, seed=4, rank=0)
    assert next(iter(other_rank)) != full[0]


def test_digits_equal_sklearn_load_digits():
    from sklearn.datasets import load_digits

    from distsched.data import digits_arrays

    pixels, labels = digits_arrays()
    ref = load_digits()
    assert np.array_equal(pixels, ref.data) and np.array_equal(labels, ref.target)


def test_digits_and_synthetic_bundles():
    d = digits(test_fraction=0.2, seed=0)
    assert len(d.train) + len(d.test) == 1797 and len(d.test) == 359
    assert d.input_shape == (1, 8, 8) and d.num_classes == 10
    x, _ = d.train.tensors
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    s = synthetic(samples=500, features=5, classes=3, noise=0.1, test_fraction=0.2, seed=1)
    assert s.input_shape == (5,) and s.num_classes == 3 and len(s.train) == 400
    # with little noise the classes are separable: nearest class mean is almost always right
    xs, ys = s.train.tensors
    means = torch.stack([xs[ys == c].mean(0) for c in range(3)])
    pred = torch.cdist(xs, means).argmin(1)
    assert (pred == ys).float().mean() > 0.95


def _factory(n: int = 30):
    x = torch.randn(n, 3)
    y = torch.arange(n) % 3
    return torch.utils.data.TensorDataset(x, y)


def test_import_path_data_and_models():
    b = from_import_path(f"{__name__}:_factory", {"n": 12})
    assert b.num_classes == 3 and b.input_shape == (3,) and b.test is None
    assert DataConfig(name=f"{__name__}:_factory").name.endswith("_factory")
    with pytest.raises(ValueError, match="data.name"):
        from_import_path("no_such_module_xyz:f")


def test_models_shapes_and_errors():
    x = torch.zeros(5, 1, 8, 8)
    assert ModelConfig(name="mlp", hidden=[16, 8]).build((1, 8, 8), 10)(x).shape == (5, 10)
    assert ModelConfig(name="cnn", hidden=[4, 8]).build((1, 8, 8), 10)(x).shape == (5, 10)
    with pytest.raises(ValueError, match="cnn"):
        ModelConfig(name="cnn", hidden=[4, 8]).build((16,), 4)
    m = ModelConfig(name="torch.nn:Identity").build((3,), 3)
    assert isinstance(m, torch.nn.Identity)
